//! The reporting service's file API under test: a PostgreSQL, the embedded S3 server (the
//! lake's store, in this process), the `reporting` program as a child process (to measure
//! its memory) with its lake there, a static token of the role that may write
//! (`data-engineer`), and requests written by hand over TLS for what HTTP clients will not
//! send (`..` in a path, a body longer than it says, a body generated on the fly).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pki::TestPki;
use crate::reporting::{config, Answer, Database, ReportingProcess};

/// The static token of the role `data-engineer` (files.read and files.write).
pub const ENGINEER: &str = "data-engineer-token-0123456789";

/// The multipart threshold of the tests: S3's smallest part.
pub const THRESHOLD: u64 = 5 * 1024 * 1024;

/// A database, the lake's store and the service.
pub struct FileWorld {
    pub database: Database,
    pub s3: bridge::archive::EmbeddedS3,
    pub pki: TestPki,
    pub service: ReportingProcess,
    /// The embedded server's directory.
    pub s3_dir: tempfile::TempDir,
    /// Scratch space (analytics' data directory, files to import).
    pub scratch: tempfile::TempDir,
    client: reqwest::Client,
}

impl FileWorld {
    /// Starts everything; `change` adjusts the reporting configuration first.
    pub async fn start(change: impl FnOnce(&mut reporting::Config)) -> Result<FileWorld> {
        let database = Database::start().await?;
        let s3_dir = tempfile::tempdir()?;
        let s3 = bridge::archive::start_embedded(s3_dir.path(), ([127, 0, 0, 1], 0).into()).await?;
        let pki = TestPki::new()?;
        let mut config = config(&database.url(), &pki);
        config.auth.tokens.push(reporting::config::StaticToken {
            name: "engineer-app".to_owned(),
            sha256: reporting::auth::tokens::token_sha256(ENGINEER),
            role: "data-engineer".to_owned(),
        });
        config.lake = lake(&s3);
        config.files.multipart_threshold_bytes = THRESHOLD;
        change(&mut config);
        let service = ReportingProcess::spawn(config, &pki).await?;
        let client = crate::reporting::https_client(&pki)?;
        Ok(FileWorld {
            database,
            s3,
            pki,
            service,
            s3_dir,
            scratch: tempfile::tempdir()?,
            client,
        })
    }

    /// The analytics configuration over the same database and lake (for `analytics sql`
    /// and the NYC import).
    pub fn analytics(&self) -> Result<analytics::Config> {
        let mut config = analytics::Config::default();
        config.postgres.url = self.database.url();
        config.data_dir = self.scratch.path().join("analytics");
        config.lake = lake(&self.s3);
        config.validate()?;
        Ok(config)
    }

    /// `analytics sql` over the lake, as CSV lines.
    pub async fn sql(&self, query: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        analytics::sql::run(
            &self.analytics()?,
            query,
            analytics::sql::Format::Csv,
            &mut out,
        )
        .await?;
        Ok(String::from_utf8(out)?.lines().map(str::to_owned).collect())
    }

    /// Where the embedded server keeps an object of the bucket.
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.s3_dir.path().join("taxi-lake").join(key)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.service.api.base)
    }

    /// A request with `token` and `headers`, `body` if given.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<(u16, HeaderMap, Vec<u8>)> {
        let mut request = self.client.request(method.clone(), self.url(path));
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        Ok((status, headers, body))
    }

    /// `PUT path` with the engineer's token.
    pub async fn put(&self, path: &str, content_type: &str, body: Vec<u8>) -> Result<Answer> {
        let (status, headers, body) = self
            .send(
                reqwest::Method::PUT,
                path,
                Some(ENGINEER),
                &[("content-type", content_type)],
                Some(body),
            )
            .await?;
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// `GET path` with `token` and `headers`: status, headers, bytes.
    pub async fn get(
        &self,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, HeaderMap, Vec<u8>)> {
        self.send(reqwest::Method::GET, path, Some(token), headers, None)
            .await
    }

    /// `GET path` read as it streams: the status and the number of bytes.
    pub async fn download_len(&self, path: &str, token: &str) -> Result<(u16, u64)> {
        let mut response = self
            .client
            .get(self.url(path))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .send()
            .await?;
        let status = response.status().as_u16();
        let mut total = 0;
        while let Some(chunk) = response.chunk().await? {
            total += chunk.len() as u64;
        }
        Ok((status, total))
    }

    /// A request written by hand over TLS: the request line with `target` exactly as given,
    /// `headers`, then `body` chunks as they are generated (HTTP/1.1 chunked unless a
    /// `content-length` header is among `headers`). A write the server cuts off ends the
    /// body; the answer is read either way.
    pub async fn raw(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, String)],
        mut body: impl FnMut() -> Option<Vec<u8>>,
    ) -> Result<RawAnswer> {
        let port: u16 = self
            .service
            .api
            .base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("the API's port")?;
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls_pki_types::CertificateDer::from(
            rustls_pki_types::pem::PemObject::from_pem_slice(self.pki.ca_pem().as_bytes())
                .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
                .context("the test CA")?,
        ))?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        let mut tls = connector.connect(name, stream).await?;
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
        let chunked = !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if chunked {
            head.push_str("transfer-encoding: chunked\r\n");
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).await?;
        let mut sent = 0u64;
        let mut cut = false;
        while let Some(chunk) = body() {
            let written = if chunked {
                let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                framed.extend_from_slice(&chunk);
                framed.extend_from_slice(b"\r\n");
                tls.write_all(&framed).await
            } else {
                tls.write_all(&chunk).await
            };
            if written.is_err() {
                cut = true;
                break;
            }
            sent += chunk.len() as u64;
        }
        if chunked && !cut {
            cut = tls.write_all(b"0\r\n\r\n").await.is_err();
        }
        let _ = tls.flush().await;
        let mut answer = Vec::new();
        // The server may close without TLS close_notify after an early answer.
        let _ = tls.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            bail!("no HTTP answer to {method} {target} (sent {sent} bytes, cut {cut}): {text:?}");
        };
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("status line of {head:?}"))?;
        Ok(RawAnswer {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
            sent,
        })
    }
}

/// An answer to a hand-written request.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
    /// Body bytes written before the end (or before the server cut the connection).
    pub sent: u64,
}

impl RawAnswer {
    /// The body as JSON (a chunked body's framing removed).
    pub fn json(&self) -> Result<serde_json::Value> {
        let start = self.body.find('{').context("no JSON object in the body")?;
        let end = self.body.rfind('}').context("no JSON object in the body")?;
        serde_json::from_str(&self.body[start..=end])
            .with_context(|| format!("not JSON: {}", self.body))
    }
}

/// The lake configuration of the tests: the embedded server, quick retries.
pub fn lake(s3: &bridge::archive::EmbeddedS3) -> analytics::lake::LakeConfig {
    analytics::lake::LakeConfig {
        endpoint: s3.endpoint.clone(),
        access_key_id: s3.access_key_id.clone(),
        secret_access_key: s3.secret_access_key.clone(),
        publish_attempts: 3,
        min_backoff_ms: 50,
        max_backoff_ms: 200,
        connect_timeout_ms: 1_000,
        request_timeout_ms: 30_000,
        ..analytics::lake::LakeConfig::default()
    }
}

/// `n` bytes of a fixed pseudo-random pattern (so that a shifted or repeated part shows).
pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}
