//! A tiny HTTP/1.1 GET over a tokio `TcpStream`, and a reader for Prometheus text samples.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// `GET path` with `Connection: close`; returns the status code and the body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .with_context(|| format!("GET {path}: no answer within {WAIT:?}"))??;
    parse_response(&response).with_context(|| format!("GET {path}"))
}

fn parse_response(response: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("incomplete HTTP response: {text:?}");
    };
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else {
            bail!("truncated chunked body");
        };
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let Some(chunk) = rest.get(..size) else {
            bail!("truncated chunk");
        };
        out.push_str(chunk);
        body = rest.get(size..).unwrap_or("").trim_start_matches("\r\n");
    }
}

/// The value of the sample `name{labels}` in a Prometheus text page; the labels must match
/// exactly (order does not matter).
pub fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    wanted.sort();
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(parse_sample)
        .find(|(sample_name, sample_labels, _)| sample_name == name && *sample_labels == wanted)
        .map(|(_, _, value)| value)
}

/// A sample: name, labels (sorted), value.
type Sample = (String, Vec<(String, String)>, f64);

/// `name{k="v",...} value` into its parts (labels sorted).
fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.trim().rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let mut parsed = Vec::new();
    for pair in labels.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=')?;
        let value = value.strip_prefix('"')?.strip_suffix('"')?;
        parsed.push((key.trim().to_owned(), value.to_owned()));
    }
    parsed.sort();
    Some((name.to_owned(), parsed, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_with_and_without_labels() {
        let page = "# TYPE x counter\nx_total{reason=\"expired\"} 3\nx_total{reason=\"revoked\"} 1\ny 2.5\n";
        assert_eq!(sample(page, "x_total", &[("reason", "revoked")]), Some(1.0));
        assert_eq!(sample(page, "x_total", &[("reason", "expired")]), Some(3.0));
        assert_eq!(sample(page, "y", &[]), Some(2.5));
        assert_eq!(sample(page, "x_total", &[]), None);
    }

    #[test]
    fn reads_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parse_response(plain).ok(), Some((200, "ok".to_owned())));
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).ok(), Some((200, "abc".to_owned())));
    }
}
