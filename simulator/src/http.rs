//! A small HTTP/1.1 client over plain TCP, enough for the services' local endpoints: one-shot
//! `GET`s (`/metrics`) and keep-alive connections sending JSON requests (the dispatch API).
//! Bodies are read by `Content-Length` or chunked transfer encoding.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest answer read, headers and body.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` on a connection of its own, within `timeout`.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Answer> {
    let exchange = async {
        let mut connection = Connection::open(addr).await?;
        connection.request("GET", path, &[], None).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("no answer to GET {path} within {timeout:?}"))?
}

/// A keep-alive connection; reopened by the next request if the server closed it.
pub struct Connection {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Connection {
    /// Opens the TCP connection.
    pub async fn open(addr: SocketAddr) -> Result<Connection> {
        let mut connection = Connection { addr, stream: None };
        connection.stream = Some(connection.connect().await?);
        Ok(connection)
    }

    async fn connect(&self) -> Result<BufReader<TcpStream>> {
        let stream = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to http://{}", self.addr))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        Ok(BufReader::new(stream))
    }

    /// `POST path` with a JSON body and these extra headers.
    pub async fn post_json(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer> {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        self.request("POST", path, &all, Some(body)).await
    }

    /// Sends one request and reads its answer.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Answer> {
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => self.connect().await?,
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        stream
            .get_mut()
            .write_all(&bytes)
            .await
            .with_context(|| format!("sending {method} {path}"))?;
        let (answer, keep_alive) = read_answer(&mut stream)
            .await
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        if keep_alive {
            self.stream = Some(stream);
        }
        Ok(answer)
    }
}

/// Reads status line, headers and body; also says whether the connection stays open.
async fn read_answer(stream: &mut BufReader<TcpStream>) -> Result<(Answer, bool)> {
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("malformed status line {line:?}"))?;
    let (mut length, mut chunked, mut keep_alive) = (None, false, true);
    let mut read = line.len();
    loop {
        line.clear();
        let n = stream.read_line(&mut line).await?;
        read += n;
        if n == 0 {
            bail!("connection closed inside the headers");
        }
        if read > MAX_ANSWER_BYTES {
            bail!("headers longer than {MAX_ANSWER_BYTES} bytes");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(stream).await?
    } else if let Some(length) = length {
        if length > MAX_ANSWER_BYTES {
            bail!("body of {length} bytes is too long");
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        body
    } else {
        // No length: the body ends with the connection.
        keep_alive = false;
        let mut body = Vec::new();
        stream
            .take(MAX_ANSWER_BYTES as u64)
            .read_to_end(&mut body)
            .await?;
        body
    };
    Ok((Answer { status, body }, keep_alive))
}

async fn read_chunked(stream: &mut BufReader<TcpStream>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await?;
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("malformed chunk size {line:?}"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if stream.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_ANSWER_BYTES {
            bail!("chunked body longer than {MAX_ANSWER_BYTES} bytes");
        }
        let start = body.len();
        body.resize(start + size, 0);
        stream.read_exact(&mut body[start..]).await?;
        line.clear();
        stream.read_line(&mut line).await?;
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers each request on a connection with the next canned answer.
    async fn serve(answers: Vec<&'static str>) -> Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let mut stream = BufReader::new(stream);
            for answer in answers {
                // Read one request: headers, then Content-Length bytes.
                let mut length = 0;
                let mut line = String::new();
                loop {
                    line.clear();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    if line.trim().is_empty() {
                        break;
                    }
                }
                let mut body = vec![0; length];
                let _ = stream.read_exact(&mut body).await;
                let _ = stream.get_mut().write_all(answer.as_bytes()).await;
            }
        });
        Ok(addr)
    }

    #[tokio::test]
    async fn keep_alive_requests_with_length_and_chunked_bodies() -> Result<()> {
        let addr = serve(vec![
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        ])
        .await?;
        let mut connection = Connection::open(addr).await?;
        let first = connection
            .post_json("/v1/orders", &[("Authorization", "Bearer x")], b"{}")
            .await?;
        assert_eq!(first.status, 201);
        assert_eq!(first.text(), "{\"ok\":true}");
        let second = connection.request("GET", "/", &[], None).await?;
        assert_eq!(
            (second.status, second.text().as_str()),
            (200, "hello world")
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_body_without_length_ends_with_the_connection() -> Result<()> {
        let addr = serve(vec![
            "HTTP/1.1 404 Not Found\r\nconnection: close\r\n\r\nnothing here",
        ])
        .await?;
        let answer = get(addr, "/missing", Duration::from_secs(5)).await?;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (404, "nothing here")
        );
        Ok(())
    }
}
