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

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
