//! The monitoring shipped in `monitoring/`: its files (dashboards, provisioning and rule
//! files read as data), `promtool`, the metric selectors inside PromQL expressions, and a
//! real Prometheus serving HTTPS with basic auth ([`TestPrometheus`]) that scrapes a test's
//! services and is queried over its HTTP API.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tempfile::TempDir;
use testkit::prometheus::{Options, Prometheus, ScrapeSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::pki::TestPki;
use crate::WAIT;

/// The user the tests' Prometheus knows.
pub const USER: &str = "prometheus";

/// `monitoring/` of the workspace.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new(".."))
        .join("monitoring")
}

/// The files of `monitoring/<sub>` ending in `.<extension>`, sorted.
pub fn files(sub: &str, extension: &str) -> Result<Vec<PathBuf>> {
    let folder = dir().join(sub);
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(&folder).with_context(|| format!("listing {}", folder.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == extension) {
            found.push(path);
        }
    }
    found.sort();
    ensure!(
        !found.is_empty(),
        "no .{extension} file in {}",
        folder.display()
    );
    Ok(found)
}

/// Runs `promtool` with `args` in `monitoring/`; its output, or an error with that output.
pub fn promtool(args: &[&str]) -> Result<String> {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .with_context(|| format!("running promtool: {}", testkit::prometheus::INSTALL_HINT))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        output.status
    );
    Ok(text)
}

/// A YAML file as JSON, read by PyYAML (`python3`).
pub fn yaml(path: &Path) -> Result<Value> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .output()
        .context("running python3 (with PyYAML)")?;
    ensure!(
        output.status.success(),
        "{} is not YAML PyYAML reads: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("reading PyYAML's JSON")
}

/// A JSON file.
pub fn json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// One query of a dashboard panel.
#[derive(Clone, Debug)]
pub struct PanelQuery {
    pub dashboard: String,
    pub panel: String,
    pub expr: String,
}

/// Every query of every dashboard in `monitoring/grafana/dashboards/`.
pub fn dashboard_queries() -> Result<Vec<PanelQuery>> {
    let mut queries = Vec::new();
    for path in files("grafana/dashboards", "json")? {
        let board = json(&path)?;
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into());
        for panel in board["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                queries.push(PanelQuery {
                    dashboard: name.clone(),
                    panel: panel["title"].as_str().unwrap_or_default().to_owned(),
                    expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    }
    Ok(queries)
}

/// One rule of `monitoring/rules/`.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The alert's name, or the recorded series' name.
    pub name: String,
    pub recording: bool,
    pub expr: String,
}

/// Every rule of every file in `monitoring/rules/`.
pub fn rules() -> Result<Vec<Rule>> {
    let mut rules = Vec::new();
    for path in files("rules", "yml")? {
        let file = yaml(&path)?;
        for group in file["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let (name, recording) = match (rule["alert"].as_str(), rule["record"].as_str()) {
                    (Some(alert), None) => (alert, false),
                    (None, Some(record)) => (record, true),
                    _ => bail!(
                        "{}: a rule is neither an alert nor a record: {rule}",
                        path.display()
                    ),
                };
                rules.push(Rule {
                    name: name.to_owned(),
                    recording,
                    expr: rule["expr"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    }
    Ok(rules)
}

/// A label matcher: label name, operator (`=`, `!=`, `=~`, `!~`), value.
pub type Matcher = (String, String, String);

/// A series selector in a PromQL expression: the metric name and its label matchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

impl Selector {
    /// The job it selects with `job="..."`, if it does.
    pub fn job(&self) -> Option<&str> {
        self.matchers
            .iter()
            .find(|(name, op, _)| name == "job" && op == "=")
            .map(|(_, _, value)| value.as_str())
    }
}

/// The series selectors of a PromQL expression (names of functions, aggregations, keywords,
/// grouping labels, ranges and strings are not selectors).
pub fn selectors(expr: &str) -> Result<Vec<Selector>> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset"];
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i)?;
        } else if c == '[' {
            i = skip_until(&chars, i, ']')?;
        } else if c == '{' {
            bail!("a selector without a metric name in {expr:?}");
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let opens = chars.get(next) == Some(&'(');
            // `sum by (x) (...)`: an aggregation with its grouping first.
            let grouped = GROUPING[..2].iter().any(|g| {
                let rest: String = chars[next..].iter().take(g.len() + 1).collect();
                rest.strip_prefix(g).is_some_and(|after| {
                    after.is_empty()
                        || !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                })
            });
            if GROUPING.contains(&word.as_str()) {
                if opens {
                    i = skip_until(&chars, next, ')')?;
                }
            } else if !KEYWORDS.contains(&word.as_str()) && !opens && !grouped {
                // Not a keyword, nor a function or aggregation applied to what follows.
                let mut matchers = Vec::new();
                if chars.get(next) == Some(&'{') {
                    let (parsed, end) = matchers_at(&chars, next)?;
                    matchers = parsed;
                    i = end;
                }
                found.push(Selector {
                    metric: word,
                    matchers,
                });
            }
        } else {
            i += 1;
        }
    }
    Ok(found)
}

/// The index after the string literal starting at `start`.
fn skip_string(chars: &[char], start: usize) -> Result<usize> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    bail!("an unterminated string");
}

/// The index after the `close` that ends the group opened at `start`.
fn skip_until(chars: &[char], start: usize, close: char) -> Result<usize> {
    chars[start..]
        .iter()
        .position(|c| *c == close)
        .map(|offset| start + offset + 1)
        .with_context(|| format!("no {close:?} after position {start}"))
}

/// The label matchers of the `{...}` at `start`, and the index after it.
fn matchers_at(chars: &[char], start: usize) -> Result<(Vec<Matcher>, usize)> {
    let mut matchers = Vec::new();
    let mut i = start + 1;
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        match chars.get(i) {
            Some('}') => return Ok((matchers, i + 1)),
            None => bail!("an unterminated label matcher list"),
            _ => {}
        }
        let name_start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let name: String = chars[name_start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < chars.len() && matches!(chars[i], '=' | '!' | '~') {
            i += 1;
        }
        let op: String = chars[op_start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        ensure!(
            !name.is_empty() && chars.get(i) == Some(&'"'),
            "a label matcher that is not name{op}\"value\""
        );
        let end = skip_string(chars, i)?;
        let value: String = chars[i + 1..end - 1].iter().collect();
        matchers.push((name, op, value));
        i = end;
    }
}

/// A real Prometheus for a test: its configuration made from `monitoring/prometheus.yml`
/// (scraping every second the addresses given), the rules of `monitoring/rules/`, HTTPS
/// with the test PKI's server certificate, and basic auth for [`USER`] with a random
/// password.
pub struct TestPrometheus {
    /// The password of [`USER`].
    pub password: String,
    ca_pem: String,
    /// Stopped before its files are removed.
    prometheus: Option<Prometheus>,
    dir: TempDir,
}

impl TestPrometheus {
    /// Starts it; `targets` gives each job of `monitoring/prometheus.yml` an address to
    /// scrape, or `None` to leave the job out.
    pub async fn start(pki: &TestPki, targets: &[(&str, Option<SocketAddr>)]) -> Result<Self> {
        crate::init();
        let dir = tempfile::Builder::new()
            .prefix("prometheus-")
            .tempdir()
            .context("creating Prometheus' directory")?;
        let template = std::fs::read_to_string(dir_file("prometheus.yml"))?;
        let settings = ScrapeSettings {
            targets: targets
                .iter()
                .map(|(job, addr)| ((*job).to_owned(), addr.map(|a| a.to_string())))
                .collect(),
            ca_file: pki.ca_path().to_owned(),
            interval: Some("1s".to_owned()),
        };
        let config_file = dir.path().join("prometheus.yml");
        write(
            &config_file,
            &testkit::prometheus::scrape_config(&template, &settings)?,
        )?;
        std::fs::create_dir(dir.path().join("rules"))?;
        for rule_file in files("rules", "yml")? {
            let name = rule_file
                .file_name()
                .context("a rule file without a name")?;
            std::fs::copy(&rule_file, dir.path().join("rules").join(name))
                .with_context(|| format!("copying {}", rule_file.display()))?;
        }
        let password = testkit::prometheus::random_password()?;
        let hash = testkit::prometheus::bcrypt_hash(&password)?;
        let web_config_file = dir.path().join("web.yml");
        write(
            &web_config_file,
            &testkit::prometheus::web_config(
                &std::fs::read_to_string(dir_file("web.yml"))?,
                pki.server_cert_path(),
                pki.server_key_path(),
                &[(USER, &hash)],
            )?,
        )?;
        let port = testkit::free_port().context("finding a free port for Prometheus")?;
        let options = Options {
            config_file,
            web_config_file,
            storage: dir.path().join("data"),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            log_file: dir.path().join("prometheus.log"),
        };
        let prometheus = tokio::task::spawn_blocking(move || Prometheus::start(&options))
            .await
            .context("starting Prometheus")??;
        Ok(TestPrometheus {
            password,
            ca_pem: pki.ca_pem().to_owned(),
            prometheus: Some(prometheus),
            dir,
        })
    }

    /// Where it listens (HTTPS).
    pub fn addr(&self) -> Result<SocketAddr> {
        Ok(self.running()?.addr())
    }

    fn running(&self) -> Result<&Prometheus> {
        self.prometheus.as_ref().context("Prometheus is stopped")
    }

    /// The configuration it runs on.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("prometheus.yml")
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        self.prometheus
            .as_ref()
            .map(|p| p.log_tail(30))
            .unwrap_or_default()
    }

    /// `GET path` over HTTPS (trusting only the test CA, `localhost` as the server name),
    /// with basic auth if `credentials` are given; the status and the body.
    pub async fn get(
        &self,
        path: &str,
        credentials: Option<(&str, &str)>,
    ) -> Result<(u16, String)> {
        https_get(self.addr()?, &self.ca_pem, path, credentials).await
    }

    /// The result of an instant query, with the password: each series' labels and value.
    pub async fn query(&self, promql: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", url_encode(promql)))
            .await
            .with_context(|| format!("query {promql}"))?;
        let mut samples = Vec::new();
        for item in data["result"].as_array().into_iter().flatten() {
            let labels: BTreeMap<String, String> = item["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value = item["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("no value in {item}"))?;
            samples.push((labels, value));
        }
        Ok(samples)
    }

    /// The names of the series it has stored from `job`.
    pub async fn metric_names(&self, job: &str) -> Result<BTreeSet<String>> {
        let selector = format!("{{job=\"{job}\"}}");
        let data = self
            .api(&format!(
                "/api/v1/label/__name__/values?match[]={}",
                url_encode(&selector)
            ))
            .await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// `GET path` of its API with the password: the `data` of a `success` answer.
    pub async fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = self.get(path, Some((USER, &self.password))).await?;
        let answer: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {path} answered {status} with {body:?}"))?;
        ensure!(
            status == 200 && answer["status"] == "success",
            "GET {path} answered {status}: {body}"
        );
        Ok(answer["data"].clone())
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        // Stops the process (on drop) before the directory goes.
        self.prometheus.take();
    }
}

/// `monitoring/<name>`.
fn dir_file(name: &str) -> PathBuf {
    dir().join(name)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Percent-encoding of a query-string value.
pub fn url_encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One HTTP/1.1 `GET` over TLS to `addr`, trusting the CA(s) in `ca_pem` for the name
/// `localhost`; the status and the body.
pub async fn https_get(
    addr: SocketAddr,
    ca_pem: &str,
    path: &str,
    credentials: Option<(&str, &str)>,
) -> Result<(u16, String)> {
    crate::init();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(ca.context("reading the CA certificate")?)
            .context("adding the CA certificate")?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let name = ServerName::try_from("localhost")?;
        let mut stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n",
            addr.port()
        );
        if let Some((user, password)) = credentials {
            let token = base64(format!("{user}:{password}").as_bytes());
            request.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                // The server may close without a TLS close_notify after `Connection: close`.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
                Err(e) => return Err(e).context("reading the answer"),
            }
        }
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .with_context(|| format!("GET {path} on {addr}: no answer within {WAIT:?}"))??;
    parse_response(&raw)
}

/// Status and body of an HTTP/1.1 answer (body by length, chunked, or to the end).
fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("an answer without a header end")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The body of a chunked transfer encoding.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without its size line")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("a chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(body.len() >= size + 2, "a truncated chunk");
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<(String, Option<String>)> {
        selectors(expr)
            .unwrap()
            .into_iter()
            .map(|s| (s.metric.clone(), s.job().map(str::to_owned)))
            .collect()
    }

    #[test]
    fn finds_the_selectors_of_an_expression() {
        assert_eq!(
            names(
                r#"sum by (route, status) (rate(dispatch_api_requests_total{job="bridge",status=~"5.."}[$__rate_interval])) / on(job) group_left sum(rate(x_total{job!="a"}[5m])) > 0.05 and up == 0 or instance:y:rate1m"#
            ),
            vec![
                (
                    "dispatch_api_requests_total".to_owned(),
                    Some("bridge".to_owned())
                ),
                ("x_total".to_owned(), None),
                ("up".to_owned(), None),
                ("instance:y:rate1m".to_owned(), None),
            ]
        );
        assert_eq!(
            names(r#"max(q{quantile="0.99", job = "analytics"}) > 1e3"#),
            vec![("q".to_owned(), Some("analytics".to_owned()))]
        );
        assert!(selectors(r#"{job="x"}"#).is_err());
    }

    #[test]
    fn encodes_base64_and_query_strings() {
        assert_eq!(base64(b"prometheus:secret"), "cHJvbWV0aGV1czpzZWNyZXQ=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(url_encode(r#"up{job="a"}"#), "up%7Bjob%3D%22a%22%7D");
    }

    #[test]
    fn reads_chunked_and_plain_answers() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (200, "abcdef".to_owned()));
        let plain = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n\r\nUnauthorized\n";
        assert_eq!(
            parse_response(plain).unwrap(),
            (401, "Unauthorized\n".to_owned())
        );
    }
}
