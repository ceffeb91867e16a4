//! The reporting service under test: a PostgreSQL with every migration of the platform, the
//! service over HTTPS with a throw-away certificate (in this process, or as a child process
//! to measure its memory), an HTTPS client trusting that certificate, static tokens for
//! each role, and writers for the rows reports are made of.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jiff::Timestamp;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION};
use serde_json::Value;
use testkit::postgres::TestPostgres;
use tokio::process::{Child, Command};

use crate::pki::TestPki;
use crate::platform::{eventually, Progress, ARRIVAL};
use crate::service_process::{program_binary, to_toml};

/// Static tokens of the tests, by role.
pub const VIEWER: &str = "viewer-token-0123456789";
pub const ANALYST: &str = "analyst-token-0123456789";
pub const DISPATCHER: &str = "dispatcher-token-0123456789";
pub const ADMIN: &str = "admin-token-0123456789";

/// A PostgreSQL with the bridge's and the analytics layer's tables.
pub struct Database {
    pub postgres: TestPostgres,
    pub client: tokio_postgres::Client,
}

impl Database {
    pub async fn start() -> Result<Database> {
        let postgres = TestPostgres::builder().fsync(false).start()?;
        let url = postgres.url();
        let mut store = bridge::store::Store::connect(&url).await?;
        store.migrate().await?;
        let mut config = analytics::Config::default();
        config.postgres.url = url.clone();
        analytics::db::migrate(&config.postgres).await?;
        let client = analytics::db::connect_once(&url).await?;
        Ok(Database { postgres, client })
    }

    pub fn url(&self) -> String {
        self.postgres.url()
    }

    /// Makes sure the `positions` partitions of the UTC days from `from` to `to` exist.
    pub async fn partitions(&mut self, from: Timestamp, to: Timestamp) -> Result<()> {
        let day = |t: Timestamp| t.as_millisecond() / bridge::store::partitions::DAY_MS;
        let days: Vec<i64> = (day(from)..=day(to)).collect();
        bridge::store::partitions::create(&mut self.client, &days).await?;
        Ok(())
    }

    /// Inserts positions `(taxi, seq, ts, lat, lon, speed_kmh)`, received when sent.
    pub async fn positions(
        &mut self,
        rows: &[(&str, i64, Timestamp, f64, f64, f32)],
    ) -> Result<()> {
        if let (Some(first), Some(last)) = (
            rows.iter().map(|r| r.2).min(),
            rows.iter().map(|r| r.2).max(),
        ) {
            self.partitions(first, last).await?;
        }
        let taxis: Vec<&str> = rows.iter().map(|r| r.0).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.1).collect();
        let ts: Vec<i64> = rows.iter().map(|r| r.2.as_microsecond()).collect();
        let lats: Vec<f64> = rows.iter().map(|r| r.3).collect();
        let lons: Vec<f64> = rows.iter().map(|r| r.4).collect();
        let speeds: Vec<f32> = rows.iter().map(|r| r.5).collect();
        self.client
            .execute(
                "INSERT INTO positions (taxi_id, seq, ts, lat, lon, speed_kmh, received_at)
                 SELECT taxi, seq, to_timestamp(us / 1e6), lat, lon, speed, to_timestamp(us / 1e6)
                   FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::float8[],
                               $5::float8[], $6::real[]) AS r(taxi, seq, us, lat, lon, speed)",
                &[&taxis, &seqs, &ts, &lats, &lons, &speeds],
            )
            .await
            .context("inserting positions")?;
        Ok(())
    }
}

/// The reporting configuration of the tests: HTTPS with the PKI's server certificate, the
/// four static tokens, the in-process cache.
pub fn config(database_url: &str, pki: &TestPki) -> reporting::Config {
    let mut config = reporting::Config::default();
    config.postgres.url = database_url.to_owned();
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http.tls_cert = Some(pki.server_cert_path().to_owned());
    config.http.tls_key = Some(pki.server_key_path().to_owned());
    config.ops.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.time_zone = "Europe/Berlin".to_owned();
    config.auth.tokens = [
        ("viewer-app", VIEWER, "viewer"),
        ("analyst-app", ANALYST, "analyst"),
        ("dispatcher-app", DISPATCHER, "dispatcher"),
        ("admin-app", ADMIN, "admin"),
    ]
    .iter()
    .map(|(name, token, role)| reporting::config::StaticToken {
        name: (*name).to_owned(),
        sha256: reporting::auth::tokens::token_sha256(token),
        role: (*role).to_owned(),
    })
    .collect();
    config
}

/// An HTTPS client of the API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub ops: SocketAddr,
    client: reqwest::Client,
}

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Api {
    /// A client of the service at `api` (HTTPS, trusting `pki`'s CA).
    pub fn new(api: SocketAddr, ops: SocketAddr, pki: &TestPki) -> Result<Api> {
        Ok(Api {
            base: format!("https://localhost:{}", api.port()),
            ops,
            client: https_client(pki)?,
        })
    }

    /// `GET path` with `token` (none: no `Authorization`), JSON.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<Answer> {
        self.request(path, token, "application/json").await
    }

    pub async fn request(&self, path: &str, token: Option<&str>, accept: &str) -> Result<Answer> {
        let mut request = self
            .client
            .get(format!("{}{path}", self.base))
            .header(ACCEPT, accept);
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// `GET path` as CSV, streamed: the number of lines and bytes, and the first line.
    pub async fn csv_lines(&self, path: &str, token: &str) -> Result<(u16, u64, u64, String)> {
        let mut response = self
            .client
            .get(format!("{}{path}", self.base))
            .header(ACCEPT, "text/csv")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .send()
            .await?;
        let status = response.status().as_u16();
        let (mut lines, mut bytes) = (0u64, 0u64);
        let mut first = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            bytes += chunk.len() as u64;
            for &b in chunk.iter() {
                if lines == 0 && b != b'\n' {
                    first.push(b);
                }
                if b == b'\n' {
                    lines += 1;
                }
            }
        }
        Ok((
            status,
            lines,
            bytes,
            String::from_utf8_lossy(&first).into_owned(),
        ))
    }

    /// Every item of a paged report, following `next` links, with `limit` per page.
    pub async fn all_pages(&self, path: &str, token: &str) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(path) = next {
            let answer = self.get(&path, Some(token)).await?;
            if answer.status != 200 {
                bail!("GET {path}: {} {}", answer.status, answer.body);
            }
            let page = answer.json()?;
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            next = page["next"].as_str().map(str::to_owned);
        }
        Ok(items)
    }

    /// One sample of the service's `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let (_, page) = crate::http::get(self.ops, "/metrics").await?;
        Ok(crate::http::sample(&page, name, labels).unwrap_or(0.0))
    }
}

/// An HTTPS client trusting the PKI's CA.
pub fn https_client(pki: &TestPki) -> Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls_pki_types::CertificateDer::from(
        rustls_pki_types::pem::PemObject::from_pem_slice(pki.ca_pem().as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
            .context("the test CA")?,
    );
    roots.add(ca)?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// The service in this process.
pub async fn start_in_process(config: reporting::Config, pki: &TestPki) -> Result<Api> {
    let running = reporting::start(config).await?;
    Api::new(running.api_addr, running.ops_addr, pki)
}

/// The `reporting` program as a child process (to measure its memory).
pub struct ReportingProcess {
    pub api: Api,
    child: Child,
    _dir: tempfile::TempDir,
}

impl ReportingProcess {
    pub async fn spawn(mut config: reporting::Config, pki: &TestPki) -> Result<ReportingProcess> {
        let dir = tempfile::tempdir()?;
        let api_port = testkit::free_port()?;
        let ops_port = testkit::free_port()?;
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], api_port));
        config.ops.listen = SocketAddr::from(([127, 0, 0, 1], ops_port));
        let path: PathBuf = dir.path().join("reporting.toml");
        std::fs::write(&path, to_toml(&serde_json::to_value(&config)?)?)?;
        let log = std::fs::File::create(dir.path().join("reporting.log"))?;
        let mut command = Command::new(program_binary("reporting")?);
        command
            .arg("--config")
            .arg(&path)
            .arg("run")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("REPORTING_") {
                command.env_remove(name);
            }
        }
        let child = command.spawn().context("starting reporting")?;
        let api = Api::new(config.http.listen, config.ops.listen, pki)?;
        let ready = api.clone();
        eventually("reporting ready", ARRIVAL, || {
            let api = ready.clone();
            async move {
                Ok(match crate::http::get(api.ops, "/health").await {
                    Ok((200, _)) => Progress::Done(()),
                    other => Progress::Waiting(format!("{other:?}")),
                })
            }
        })
        .await?;
        Ok(ReportingProcess {
            api,
            child,
            _dir: dir,
        })
    }

    /// What the process has logged so far.
    pub fn log(&self) -> Result<String> {
        Ok(std::fs::read_to_string(
            self._dir.path().join("reporting.log"),
        )?)
    }

    /// The process's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let pid = self.child.id().context("the process has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/<pid>/status")
    }
}

/// A throw-away `redis-server` on a free port.
pub struct Redis {
    pub url: String,
    child: Child,
}

impl Redis {
    pub async fn start() -> Result<Redis> {
        let port = testkit::free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context(
                "starting redis-server (Debian package redis-server; scripts/setup installs it)",
            )?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        eventually("redis-server ready", ARRIVAL, || async move {
            Ok(match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => Progress::Done(()),
                Err(e) => Progress::Waiting(e.to_string()),
            })
        })
        .await?;
        Ok(Redis {
            url: format!("redis://127.0.0.1:{port}/0"),
            child,
        })
    }

    pub async fn stop(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}
