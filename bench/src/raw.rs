//! A minimal mTLS MQTT 3.1.1 connection for the connection-heavy scenarios: TCP, TLS with a
//! client certificate, a hand-built CONNECT, wait for the CONNACK; then either hold the
//! connection idle or send DISCONNECT. No event loop, no buffers beyond rustls' own, so
//! thousands of them cost the load generator little.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// An open, accepted MQTT connection.
pub struct RawConnection {
    stream: TlsStream<TcpStream>,
}

impl RawConnection {
    /// Connects, handshakes, sends CONNECT and waits for a successful CONNACK, all within
    /// `timeout`.
    pub async fn open(
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
        client_id: &str,
        keep_alive_s: u16,
        timeout: Duration,
    ) -> Result<RawConnection> {
        tokio::time::timeout(timeout, Self::open_now(addr, tls, client_id, keep_alive_s))
            .await
            .with_context(|| format!("no CONNACK within {} ms", timeout.as_millis()))?
    }

    async fn open_now(
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
        client_id: &str,
        keep_alive_s: u16,
    ) -> Result<RawConnection> {
        let tcp = TcpStream::connect(addr).await.context("TCP connect")?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        // Closing resets the connection instead of leaving a socket in TIME_WAIT: tens of
        // thousands of those would slow down the connections of the next phase.
        tcp.set_zero_linger().context("SO_LINGER")?;
        let server_name = ServerName::IpAddress(addr.ip().into());
        let mut stream = TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .context("TLS handshake")?;
        stream
            .write_all(&connect_packet(client_id, keep_alive_s)?)
            .await
            .context("sending CONNECT")?;
        stream.flush().await.context("sending CONNECT")?;
        let mut connack = [0u8; 4];
        stream
            .read_exact(&mut connack)
            .await
            .context("reading CONNACK (refused during or after the handshake?)")?;
        match connack {
            [0x20, 0x02, _, 0] => Ok(RawConnection { stream }),
            [0x20, 0x02, _, code] => bail!("CONNACK refused the connection with code {code}"),
            other => bail!("expected a CONNACK, got bytes {other:02x?}"),
        }
    }

    /// The negotiated TLS version and cipher suite, e.g. `TLSv1_3 / TLS13_AES_256_GCM_SHA384`.
    pub fn tls_description(&self) -> String {
        let session = self.stream.get_ref().1;
        let version = session
            .protocol_version()
            .map_or("unknown".to_owned(), |v| format!("{v:?}"));
        let suite = session
            .negotiated_cipher_suite()
            .map_or("unknown".to_owned(), |s| format!("{:?}", s.suite()));
        format!("{version} / {suite}")
    }

    /// Sends DISCONNECT and waits (briefly) until the broker closes the connection, so the
    /// broker sees a clean disconnect before the socket is dropped.
    pub async fn disconnect(mut self) -> Result<()> {
        self.stream
            .write_all(&[0xE0, 0x00])
            .await
            .context("sending DISCONNECT")?;
        self.stream.flush().await.context("sending DISCONNECT")?;
        let mut sink = [0u8; 256];
        let closed = async {
            // TLS alerts or a reset also end the connection.
            while let Ok(read) = self.stream.read(&mut sink).await {
                if read == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), closed).await;
        Ok(())
    }
}

/// An MQTT 3.1.1 CONNECT with a clean session, no credentials and no will.
fn connect_packet(client_id: &str, keep_alive_s: u16) -> Result<Vec<u8>> {
    let id = client_id.as_bytes();
    let id_len = u16::try_from(id.len()).context("client id too long")?;
    // Variable header: protocol name, level 4, flags (clean session), keep-alive.
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02];
    body.extend_from_slice(&keep_alive_s.to_be_bytes());
    body.extend_from_slice(&id_len.to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10];
    encode_remaining_length(body.len(), &mut packet)?;
    packet.extend_from_slice(&body);
    Ok(packet)
}

fn encode_remaining_length(mut len: usize, out: &mut Vec<u8>) -> Result<()> {
    if len > 268_435_455 {
        bail!("packet too large");
    }
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_layout() -> Result<()> {
        let packet = connect_packet("taxi-1", 600)?;
        assert_eq!(
            packet,
            [
                0x10, 18, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x02, 0x58, 0x00, 6,
                b't', b'a', b'x', b'i', b'-', b'1'
            ]
        );
        Ok(())
    }

    #[test]
    fn remaining_length_uses_continuation_bytes() -> Result<()> {
        let mut out = Vec::new();
        encode_remaining_length(321, &mut out)?;
        assert_eq!(out, [0xC1, 0x02]);
        Ok(())
    }
}
