//! One client's byte stream turned into MQTT packets and back.
//!
//! Owns the TLS stream, the read and write buffers and the protocol codec (MQTT 3.1.1 or 5,
//! chosen from the CONNECT packet, so both versions share one port). Parsing and encoding
//! are rumqttd's own (`rumqttd::protocol`).

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{self, v4::V4, v5::V5, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Smallest room made for a read (a CONNECT fits), and the most made at once.
const MIN_READ: usize = 256;
const MAX_READ: usize = 16 * 1024;

/// The MQTT version spoken on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// Why reading a packet failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("connection closed by the client")]
    Closed,
    #[error("no packet within the keep-alive time")]
    Timeout,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("packet larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("not an MQTT 3.1.1 or 5 CONNECT")]
    NotMqtt,
}

/// A client connection that reads and writes whole MQTT packets.
pub struct Connection<S> {
    stream: S,
    read: BytesMut,
    /// Room made in `read` before a read: the largest packet seen, within bounds.
    read_chunk: usize,
    write: BytesMut,
    version: Option<Version>,
    max_packet_size: usize,
    /// A write must complete within this time, or the client is taken for gone.
    write_timeout: Duration,
    /// A write was cut short (timeout or cancellation): the stream is no longer usable.
    broken: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S, max_packet_size: usize, write_timeout: Duration) -> Connection<S> {
        Connection {
            stream,
            // Both grow with what passes through them: an idle connection keeps little.
            read: BytesMut::new(),
            read_chunk: MIN_READ,
            write: BytesMut::new(),
            version: None,
            max_packet_size,
            write_timeout,
            broken: false,
        }
    }

    /// Changes how long a write may take (once the client's keep-alive is known).
    pub fn set_write_timeout(&mut self, write_timeout: Duration) {
        self.write_timeout = write_timeout;
    }

    /// The version, known once the CONNECT has been read.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// Waits for the next packet until `deadline` (None: no limit). Cancel-safe: bytes read
    /// so far stay in the buffer.
    pub async fn read_packet(&mut self, deadline: Option<Instant>) -> Result<Packet, ReadError> {
        loop {
            if let Some(packet) = self.parse_buffered()? {
                return Ok(packet);
            }
            let read = match deadline {
                Some(deadline) => {
                    self.make_room();
                    tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.read))
                        .await
                        .map_err(|_| ReadError::Timeout)??
                }
                None => {
                    self.make_room();
                    self.stream.read_buf(&mut self.read).await?
                }
            };
            if read == 0 {
                return Err(ReadError::Closed);
            }
        }
    }

    /// Room for the next read: a whole packet of the largest size seen so far, so that a
    /// large packet does not take many small reads, and an idle connection holds little.
    fn make_room(&mut self) {
        if self.read.capacity() - self.read.len() < MIN_READ / 2 {
            self.read.reserve(self.read_chunk);
        }
    }

    /// A packet already in the buffer, if a whole one is there.
    pub fn parse_buffered(&mut self) -> Result<Option<Packet>, ReadError> {
        let version = match self.version {
            Some(version) => version,
            None => match detect_version(&self.read)? {
                Some(version) => {
                    self.version = Some(version);
                    version
                }
                None => return Ok(None),
            },
        };
        let parsed = match version {
            Version::V311 => V4.read_mut(&mut self.read, self.max_packet_size),
            Version::V5 => V5.read_mut(&mut self.read, self.max_packet_size),
        };
        let before = self.read.len();
        match parsed {
            Ok(packet) => {
                let size = before - self.read.len();
                if size > self.read_chunk {
                    self.read_chunk = size.min(MAX_READ);
                }
                Ok(Some(packet))
            }
            Err(protocol::Error::InsufficientBytes(_)) => Ok(None),
            Err(protocol::Error::PayloadSizeLimitExceeded(_)) => {
                Err(ReadError::TooLarge(self.max_packet_size))
            }
            Err(e) => Err(ReadError::Malformed(e.to_string())),
        }
    }

    /// Encodes a packet into the write buffer; `flush` sends it.
    pub fn buffer_packet(&mut self, packet: Packet) -> io::Result<()> {
        let version = self.version.unwrap_or(Version::V311);
        let written = match version {
            Version::V311 => V4.write(packet, &mut self.write),
            Version::V5 => V5.write(packet, &mut self.write),
        };
        written
            .map(|_| ())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// Sends everything buffered, within the write timeout: a client that stops reading
    /// cannot hold its session (and the router's messages for it) forever.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier write did not complete",
            ));
        }
        self.broken = true;
        let write = async {
            if !self.write.is_empty() {
                self.stream.write_all(&self.write).await?;
            }
            self.stream.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(Ok(())) => {
                self.write.clear();
                self.broken = false;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read what was sent to it",
            )),
        }
    }

    /// Encodes and sends one packet.
    pub async fn write_packet(&mut self, packet: Packet) -> io::Result<()> {
        self.buffer_packet(packet)?;
        self.flush().await
    }

    /// Closes the TLS session politely, without waiting long.
    pub async fn shutdown(&mut self) {
        if !self.broken {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        }
    }
}

/// Reads the protocol level from the start of a CONNECT packet: `None` until enough bytes
/// have arrived.
fn detect_version(buf: &[u8]) -> Result<Option<Version>, ReadError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(ReadError::NotMqtt);
    }
    // Remaining length: 1 to 4 bytes, 7 bits each.
    let mut offset = 1;
    loop {
        let Some(&byte) = buf.get(offset) else {
            return Ok(None);
        };
        offset += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if offset > 4 {
            return Err(ReadError::NotMqtt);
        }
    }
    // Protocol name "MQTT" (length-prefixed) then the level byte.
    let header = [0x00, 0x04, b'M', b'Q', b'T', b'T'];
    let available = &buf[offset..];
    let compared = available.len().min(header.len());
    if available[..compared] != header[..compared] {
        return Err(ReadError::NotMqtt);
    }
    match available.get(header.len()) {
        None => Ok(None),
        Some(4) => Ok(Some(Version::V311)),
        Some(5) => Ok(Some(Version::V5)),
        Some(_) => Err(ReadError::NotMqtt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_both_versions_and_waits_for_bytes() {
        let v4 = [0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04];
        let v5 = [0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05];
        assert_eq!(detect_version(&v4).ok().flatten(), Some(Version::V311));
        assert_eq!(detect_version(&v5).ok().flatten(), Some(Version::V5));
        assert!(matches!(detect_version(&v4[..5]), Ok(None)));
        assert!(matches!(detect_version(&[]), Ok(None)));
    }

    #[tokio::test]
    async fn reads_packets_larger_than_the_room_it_starts_with() -> Result<(), ReadError> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut conn = Connection::new(server, 64 * 1024, Duration::from_secs(5));
        let connect = [
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x04,
            b't', b'e', b's', b't',
        ];
        let mut bytes = BytesMut::from(&connect[..]);
        for size in [5_000, 40, 20_000] {
            let publish = rumqttd::protocol::Publish::new(b"a/b".to_vec(), vec![7u8; size], false);
            V4.write(Packet::Publish(publish, None), &mut bytes)
                .map_err(|e| ReadError::Malformed(e.to_string()))?;
        }
        client.write_all(&bytes).await?;
        assert!(matches!(conn.read_packet(None).await?, Packet::Connect(..)));
        for size in [5_000, 40, 20_000] {
            match conn.read_packet(None).await? {
                Packet::Publish(publish, _) => assert_eq!(publish.payload.len(), size),
                other => panic!("expected a publish, got {other:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn refuses_other_first_packets_and_levels() {
        assert!(detect_version(&[0x30, 0x00]).is_err());
        assert!(detect_version(b"GET / HTTP/1.1").is_err());
        let v31 = [
            0x10, 0x10, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03,
        ];
        assert!(detect_version(&v31).is_err());
    }
}
