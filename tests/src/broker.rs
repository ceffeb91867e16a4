//! The broker under test, started in-process on ephemeral loopback ports, with the clients
//! that talk to it built from here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http;
use crate::mosquitto::{MosquittoPub, MosquittoSub};
use crate::mqtt::ClientBuilder;
use crate::pki::{ClientCert, TestPki};

/// How often the test broker looks at its certificate and CRL files.
pub const RELOAD_INTERVAL_MS: u64 = 200;

/// What the harness needs of a broker under test, ours or another (see
/// [`crate::mosquitto::MosquittoBroker`]): where it listens and the CA its certificate is from,
/// hence how to build clients for it.
pub trait MqttBroker {
    /// Its mTLS MQTT listener.
    fn mqtt_addr(&self) -> SocketAddr;
    /// The CA of the PKI, PEM text and file.
    fn ca_pem(&self) -> &str;
    fn ca_path(&self) -> &Path;

    /// A rumqttc client presenting `cert`, with the client id of its CN unless changed.
    fn client(&self, cert: &ClientCert) -> ClientBuilder {
        ClientBuilder::new(
            self.mqtt_addr(),
            self.ca_pem(),
            &cert.id,
            Some((cert.cert_pem.clone(), cert.key_pem.clone())),
        )
    }

    /// A `mosquitto_sub` presenting `cert`.
    fn mosquitto_sub(&self, cert: &ClientCert) -> MosquittoSub {
        MosquittoSub::new(self.mqtt_addr(), self.ca_path(), cert)
    }

    /// A `mosquitto_pub` presenting `cert`.
    fn mosquitto_pub(&self, cert: &ClientCert) -> MosquittoPub {
        MosquittoPub::new(self.mqtt_addr(), self.ca_path(), cert)
    }
}

impl MqttBroker for TestBroker {
    fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn ca_path(&self) -> &Path {
        &self.ca_path
    }
}

/// A broker running on the current tokio runtime (it stops with the runtime).
pub struct TestBroker {
    pub mqtt_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub running: broker::RunningBroker,
    ca_pem: String,
    ca_path: PathBuf,
    /// The router's spill area (`router.spill_dir`): a temporary directory of its own
    /// unless the test chose another (a directory is locked by its broker).
    spill_dir: PathBuf,
    _spill_tmp: tempfile::TempDir,
}

impl TestBroker {
    /// Starts a broker with the default configuration and the PKI's certificates.
    pub async fn start(pki: &TestPki) -> Result<TestBroker> {
        TestBroker::start_with(pki, |_| {}).await
    }

    /// Starts a broker after `tweak` has adjusted its configuration.
    pub async fn start_with(
        pki: &TestPki,
        tweak: impl FnOnce(&mut broker::Config),
    ) -> Result<TestBroker> {
        crate::init();
        let mut config = broker::Config::default();
        config.mqtt.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.tls.server_cert = pki.server_cert_path().to_owned();
        config.tls.server_key = pki.server_key_path().to_owned();
        config.tls.client_ca = vec![pki.ca_path().to_owned()];
        config.tls.crl = vec![pki.crl_path().to_owned()];
        config.tls.reload_interval_ms = RELOAD_INTERVAL_MS;
        let spill_tmp = tempfile::Builder::new()
            .prefix("broker-spill-")
            .tempdir()
            .context("creating the broker's spill directory")?;
        config.router.spill_dir = spill_tmp.path().to_owned();
        // Disk durability, as deployed. The router is a thread of the test process that
        // outlives this value (and the test's runtime): its log directory must outlive it
        // too, or the router stops at its next write and takes the process down (exit 70).
        // It is left in the temporary directory.
        config.router.log_dir = tempfile::Builder::new()
            .prefix("broker-log-")
            .tempdir()
            .context("creating the broker's log directory")?
            .keep();
        tweak(&mut config);
        let spill_dir = config.router.spill_dir.clone();
        let running = broker::start(config).await.context("starting the broker")?;
        Ok(TestBroker {
            mqtt_addr: running.mqtt_addr,
            http_addr: running.http_addr,
            running,
            ca_pem: pki.ca_pem().to_owned(),
            ca_path: pki.ca_path().to_owned(),
            spill_dir,
            _spill_tmp: spill_tmp,
        })
    }

    /// The router's spill area (`router.spill_dir`).
    pub fn spill_dir(&self) -> &Path {
        &self.spill_dir
    }

    /// A rumqttc client presenting `cert`, with the client id of its CN unless changed.
    pub fn client(&self, cert: &ClientCert) -> ClientBuilder {
        ClientBuilder::new(
            self.mqtt_addr,
            &self.ca_pem,
            &cert.id,
            Some((cert.cert_pem.clone(), cert.key_pem.clone())),
        )
    }

    /// A rumqttc client that presents no certificate at all.
    pub fn client_without_certificate(&self, client_id: &str) -> ClientBuilder {
        ClientBuilder::new(self.mqtt_addr, &self.ca_pem, client_id, None)
    }

    /// A `mosquitto_sub` presenting `cert`.
    pub fn mosquitto_sub(&self, cert: &ClientCert) -> MosquittoSub {
        MosquittoSub::new(self.mqtt_addr, &self.ca_path, cert)
    }

    /// A `mosquitto_pub` presenting `cert`.
    pub fn mosquitto_pub(&self, cert: &ClientCert) -> MosquittoPub {
        MosquittoPub::new(self.mqtt_addr, &self.ca_path, cert)
    }

    /// A raw MQTT-over-TLS connection presenting `cert`.
    pub async fn raw(&self, cert: &ClientCert) -> Result<crate::raw::RawClient> {
        crate::raw::RawClient::connect(self.mqtt_addr, &self.ca_pem, cert).await
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> Result<String> {
        let (status, body) = http::get(self.http_addr, "/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
        Ok(body)
    }

    /// One sample of `/metrics` (0 when the series does not exist yet).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(http::sample(&self.metrics().await?, name, labels).unwrap_or(0.0))
    }

    /// Waits (at most `timeout`) until a sample of `/metrics` reaches `at_least`; returns it.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
        timeout: Duration,
    ) -> Result<f64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let value = self.metric(name, labels).await?;
            if value >= at_least {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{name}{labels:?} is {value}, expected at least {at_least} within {timeout:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most `timeout`) until `/health` counts exactly `sessions` live sessions.
    pub async fn wait_for_sessions(&self, sessions: u64, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let health = self.health().await?;
            if health["sessions"].as_u64() == Some(sessions) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "expected {sessions} sessions within {timeout:?}, /health says {health}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `/health` JSON.
    pub async fn health(&self) -> Result<serde_json::Value> {
        let (status, body) = http::get(self.http_addr, "/health").await?;
        anyhow::ensure!(status == 200, "/health answered {status}: {body}");
        serde_json::from_str(&body).with_context(|| format!("/health is not JSON: {body}"))
    }
}
