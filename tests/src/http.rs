//! GET on the services' HTTP ports, and a reader for Prometheus text samples.

use std::net::SocketAddr;

use anyhow::{Context, Result};

use crate::WAIT;

/// `GET path` on a service's plain-HTTP port (the loopback); returns the status code and the
/// body.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let response = simulator::http::client(0)?
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .with_context(|| format!("GET {path} on {addr}"))?;
        let status = response.status().as_u16();
        let body = response.text().await.context("reading the body")?;
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .with_context(|| format!("GET {path}: no answer within {WAIT:?}"))?
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
}
