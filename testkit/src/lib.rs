//! Real services for tests, started on free loopback ports and stopped on drop.
//!
//! - [`postgres`]: a private PostgreSQL cluster from the system's binaries.
//! - [`s3`]: `moto_server`, an independent S3 implementation.
//! - [`prometheus`]: Prometheus over HTTPS with basic auth, and its configuration files.
//! - [`oidc`]: `oidc-provider`, a certified OpenID provider (Node.js).

pub mod oidc;
pub mod postgres;
pub mod prometheus;
pub mod s3;

/// A free TCP port on 127.0.0.1 (bound then released), for a server started afterwards.
///
/// Taken at random below the kernel's ephemeral range when there is room: a port from that
/// range can be handed, between its release here and the server's bind, to any outgoing
/// connection of any process (a client of PostgreSQL, say), and the server then fails with
/// "address already in use".
pub fn free_port() -> std::io::Result<u16> {
    use rand::Rng;
    const LOWEST: u16 = 20_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(LOWEST);
    if ephemeral_start > LOWEST + 1_000 {
        let mut rng = rand::rng();
        for _ in 0..100 {
            let port = rng.random_range(LOWEST..ephemeral_start);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
