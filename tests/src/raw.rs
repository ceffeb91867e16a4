//! Hand-written MQTT 3.1.1 packets over mutual TLS: for exchanges a well-behaved client
//! library will not produce (packets sent before the CONNACK, oversized or malformed ones).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::pki::ClientCert;

/// MQTT packet types (the high nibble of the first byte).
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const SUBACK: u8 = 9;
pub const DISCONNECT: u8 = 14;

/// One packet read back from the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPacket {
    /// Packet type, e.g. [`CONNACK`].
    pub kind: u8,
    pub flags: u8,
    /// Everything after the fixed header.
    pub body: Vec<u8>,
}

/// A TLS connection on which the test writes and reads bytes itself.
pub struct RawClient {
    stream: TlsStream<TcpStream>,
    buffer: Vec<u8>,
}

impl RawClient {
    /// Opens TCP and completes the TLS handshake presenting `cert`.
    pub async fn connect(addr: SocketAddr, ca_pem: &str, cert: &ClientCert) -> Result<RawClient> {
        RawClient::connect_with(addr, ca_pem, cert, None).await
    }

    /// [`Self::connect`] with a small socket receive buffer: a client that stops reading
    /// holds up the broker's writes after a few kilobytes instead of megabytes.
    pub async fn connect_with_receive_buffer(
        addr: SocketAddr,
        ca_pem: &str,
        cert: &ClientCert,
        bytes: u32,
    ) -> Result<RawClient> {
        RawClient::connect_with(addr, ca_pem, cert, Some(bytes)).await
    }

    async fn connect_with(
        addr: SocketAddr,
        ca_pem: &str,
        cert: &ClientCert,
        receive_buffer: Option<u32>,
    ) -> Result<RawClient> {
        crate::init();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(ca.context("reading the CA certificate")?)
                .context("adding the CA certificate")?;
        }
        let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("reading the client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
            .context("reading the client key")?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("client certificate")?;
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .context("opening a socket")?;
        if let Some(bytes) = receive_buffer {
            socket
                .set_recv_buffer_size(bytes)
                .context("setting the receive buffer")?;
        }
        let tcp = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = tokio::time::timeout(
            crate::WAIT,
            TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
        Ok(RawClient {
            stream,
            buffer: Vec::new(),
        })
    }

    /// Writes bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next packet, or `None` once the broker has closed the connection.
    pub async fn read_packet(&mut self, timeout: Duration) -> Result<Option<RawPacket>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(packet) = self.parse()? {
                return Ok(Some(packet));
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .with_context(|| format!("no packet and no close within {timeout:?}"))?;
            match read {
                Ok(0) => return Ok(None),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if is_closed(&e) => return Ok(None),
                Err(e) => return Err(e).context("reading from the broker"),
            }
        }
    }

    /// Reads packets until the broker closes the connection; returns them all.
    pub async fn read_until_closed(&mut self, timeout: Duration) -> Result<Vec<RawPacket>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut packets = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_packet(left).await.with_context(|| {
                format!("the broker did not close the connection; packets so far: {packets:?}")
            })? {
                Some(packet) => packets.push(packet),
                None => return Ok(packets),
            }
        }
    }

    /// Every byte the broker sends until it closes the connection, unparsed (bytes already
    /// buffered by [`Self::read_packet`] come first).
    pub async fn read_bytes_until_closed(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut bytes = std::mem::take(&mut self.buffer);
        loop {
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .with_context(|| {
                    format!("the broker did not close the connection; bytes so far: {bytes:02x?}")
                })?;
            match read {
                Ok(0) => return Ok(bytes),
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if is_closed(&e) => return Ok(bytes),
                Err(e) => return Err(e).context("reading from the broker"),
            }
        }
    }

    fn parse(&mut self) -> Result<Option<RawPacket>> {
        let Some(&first) = self.buffer.first() else {
            return Ok(None);
        };
        let mut length = 0usize;
        let mut shift = 0;
        let mut offset = 1;
        loop {
            let Some(&byte) = self.buffer.get(offset) else {
                return Ok(None);
            };
            offset += 1;
            length |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            anyhow::ensure!(shift <= 21, "malformed remaining length from the broker");
        }
        if self.buffer.len() < offset + length {
            return Ok(None);
        }
        let body = self.buffer[offset..offset + length].to_vec();
        self.buffer.drain(..offset + length);
        Ok(Some(RawPacket {
            kind: first >> 4,
            flags: first & 0x0f,
            body,
        }))
    }
}

fn is_closed(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// The variable-length "remaining length" of the fixed header.
pub fn remaining_length(mut length: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if length == 0 {
            return out;
        }
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(remaining_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// MQTT 3.1.1 CONNECT without will or login.
pub fn connect(client_id: &str, clean_session: bool, keep_alive_secs: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(4);
    body.push(if clean_session { 0x02 } else { 0x00 });
    body.extend_from_slice(&keep_alive_secs.to_be_bytes());
    string(&mut body, client_id);
    packet(0x10, &body)
}

/// MQTT 5 CONNECT without properties, will or login.
pub fn connect_v5(client_id: &str, clean_start: bool, keep_alive_secs: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(5);
    body.push(if clean_start { 0x02 } else { 0x00 });
    body.extend_from_slice(&keep_alive_secs.to_be_bytes());
    body.push(0); // no properties
    string(&mut body, client_id);
    packet(0x10, &body)
}

/// MQTT 5 PUBLISH without properties (QoS 0 ignores `pkid`).
pub fn publish_v5(topic: &str, payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.push(0); // no properties
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// MQTT 3.1.1 SUBSCRIBE with one filter.
pub fn subscribe(pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    string(&mut body, filter);
    body.push(qos);
    packet(0x82, &body)
}

/// MQTT 3.1.1 PUBLISH (QoS 0 ignores `pkid`).
pub fn publish(topic: &str, payload: &[u8], qos: u8, pkid: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// Only the fixed header of a PUBLISH that announces `length` more bytes.
pub fn publish_header(length: usize) -> Vec<u8> {
    let mut out = vec![0x30];
    out.extend(remaining_length(length));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_remaining_lengths() {
        assert_eq!(remaining_length(0), [0x00]);
        assert_eq!(remaining_length(127), [0x7f]);
        assert_eq!(remaining_length(128), [0x80, 0x01]);
        assert_eq!(remaining_length(16_384), [0x80, 0x80, 0x01]);
    }

    #[test]
    fn encodes_a_connect() {
        let bytes = connect("a", true, 30);
        assert_eq!(
            bytes,
            [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 1, b'a']
        );
    }
}
