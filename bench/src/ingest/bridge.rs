//! The bridge under test, in this process on a runtime of its own (threads named `bridge`,
//! so that its CPU use can be told apart from the load generator's), with the embedded S3
//! archive and its spool in a temporary directory; and its `/metrics`, read over HTTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::runtime::Runtime;

/// Prefix of the bridge runtime's thread names.
pub const THREAD_NAME: &str = "bridge";

/// How the bridge is set up for a run.
#[derive(Clone, Debug)]
pub struct BridgeSettings {
    pub broker_port: u16,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub postgres_url: String,
    /// `mqtt.connections`.
    pub connections: usize,
    /// `batch.max_messages`.
    pub batch: usize,
    /// `batch.max_delay_ms`; `None` keeps the default.
    pub batch_delay_ms: Option<u64>,
}

/// A running bridge; stopped (its runtime shut down) by [`BridgeUnderTest::stop`] or on drop.
pub struct BridgeUnderTest {
    runtime: Option<Runtime>,
    running: Option<bridge::RunningBridge>,
    pub config: bridge::Config,
    _dir: tempfile::TempDir,
}

impl BridgeUnderTest {
    /// Starts the bridge: migrations, partitions, archive, MQTT connections, `/metrics`.
    pub async fn start(settings: &BridgeSettings) -> Result<BridgeUnderTest> {
        BridgeUnderTest::start_with(settings, |_| {}).await
    }

    /// Starts the bridge with its configuration changed by `adjust` first (e.g. to enable
    /// the dispatch API).
    pub async fn start_with(
        settings: &BridgeSettings,
        adjust: impl FnOnce(&mut bridge::Config),
    ) -> Result<BridgeUnderTest> {
        let dir = tempfile::Builder::new()
            .prefix("bridge-bench-")
            .tempdir()
            .context("creating the bridge's directory")?;
        let mut config = config(settings, dir.path().to_owned());
        adjust(&mut config);
        config.validate().context("bridge configuration")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(THREAD_NAME)
            // Blocking threads (spool writes and fsyncs) live on, so their CPU stays counted.
            .thread_keep_alive(Duration::from_secs(3600))
            .enable_all()
            .build()
            .context("starting the bridge's runtime")?;
        let started = runtime
            .spawn(bridge::start(config.clone()))
            .await
            .context("bridge start task failed")?;
        let running = match started {
            Ok(running) => running,
            Err(e) => {
                runtime.shutdown_background();
                return Err(e.context("starting the bridge"));
            }
        };
        Ok(BridgeUnderTest {
            runtime: Some(runtime),
            running: Some(running),
            config,
            _dir: dir,
        })
    }

    /// Where `/metrics` is served.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().map(|running| running.http_addr)
    }

    /// Where the dispatch HTTP API listens, if enabled.
    pub fn dispatch_api_addr(&self) -> Option<SocketAddr> {
        self.running
            .as_ref()
            .and_then(|running| running.dispatch_api)
    }

    /// The bridge's metrics now.
    pub async fn metrics(&self) -> Result<Metrics> {
        let addr = self.http_addr().context("the bridge is stopped")?;
        Metrics::fetch(addr).await
    }

    /// Stops every task of the bridge (whatever is in flight is abandoned, as in a crash).
    pub async fn stop(mut self) {
        self.running = None;
        if let Some(runtime) = self.runtime.take() {
            let _ = tokio::task::spawn_blocking(move || {
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .await;
        }
    }
}

impl Drop for BridgeUnderTest {
    fn drop(&mut self) {
        self.running = None;
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The bridge's configuration: defaults, with the benchmark's broker, certificates, database,
/// temporary directories, free loopback ports, and the connections and batch size asked for.
fn config(settings: &BridgeSettings, dir: PathBuf) -> bridge::Config {
    let mut config = bridge::Config {
        id: "bench".to_owned(),
        data_dir: dir.join("data"),
        ..bridge::Config::default()
    };
    config.mqtt.host = "127.0.0.1".to_owned();
    config.mqtt.port = settings.broker_port;
    config.mqtt.ca = settings.ca.clone();
    config.mqtt.cert = settings.cert.clone();
    config.mqtt.key = settings.key.clone();
    config.mqtt.connections = settings.connections;
    config.batch.max_messages = settings.batch;
    if let Some(delay) = settings.batch_delay_ms {
        config.batch.max_delay_ms = delay;
    }
    config.postgres.url = settings.postgres_url.clone();
    config.archive.embedded = true;
    config.archive.embedded_dir = dir.join("s3");
    config.archive.embedded_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config
}

/// A scrape of Prometheus text: each sample by its name with labels, as printed.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    samples: HashMap<String, f64>,
}

impl Metrics {
    /// `GET /metrics` over plain HTTP/1.1, answer read within five seconds.
    pub async fn fetch(addr: SocketAddr) -> Result<Metrics> {
        let exchange = async {
            let response = simulator::http::client(0)?
                .get(format!("http://{addr}/metrics"))
                .timeout(Duration::from_secs(5))
                .send()
                .await?;
            let status = response.status();
            if status != reqwest::StatusCode::OK {
                bail!("/metrics answered {}", status.as_u16());
            }
            Ok(Metrics::parse(&response.text().await?))
        };
        exchange.await.context("reading /metrics")
    }

    /// Parses Prometheus text format samples (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.trim().rsplit_once(' ')?;
                Some((name.trim().to_owned(), value.parse().ok()?))
            })
            .collect();
        Metrics { samples }
    }

    /// A sample, if the page has it.
    pub fn sample(&self, name: &str) -> Option<f64> {
        self.samples.get(name).copied()
    }

    /// A sample, 0 when absent (a counter not incremented yet).
    pub fn get(&self, name: &str) -> f64 {
        self.sample(name).unwrap_or(0.0)
    }

    /// A counter as an integer.
    pub fn count(&self, name: &str) -> u64 {
        self.get(name).max(0.0) as u64
    }

    /// The mean of a summary or histogram (`_sum / _count`), if it has samples.
    pub fn mean(&self, name: &str) -> Option<f64> {
        let count = self.get(&format!("{name}_count"));
        (count > 0.0).then(|| self.get(&format!("{name}_sum")) / count)
    }

    /// A quantile of a summary, if exported.
    pub fn quantile(&self, name: &str, quantile: &str) -> Option<f64> {
        self.samples
            .get(&format!("{name}{{quantile=\"{quantile}\"}}"))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_parsed() {
        let metrics = Metrics::parse(
            "# TYPE bridge_positions_committed_total counter\n\
             bridge_positions_committed_total 12345\n\
             bridge_commit_seconds{quantile=\"0.99\"} 0.25\n\
             bridge_commit_seconds_sum 10\n\
             bridge_commit_seconds_count 40\n",
        );
        assert_eq!(metrics.count("bridge_positions_committed_total"), 12345);
        assert_eq!(metrics.count("bridge_duplicates_total"), 0);
        assert_eq!(
            metrics.quantile("bridge_commit_seconds", "0.99"),
            Some(0.25)
        );
        assert_eq!(metrics.mean("bridge_commit_seconds"), Some(0.25));
        assert_eq!(metrics.mean("bridge_batch_messages"), None);
    }

    #[test]
    fn configuration_is_valid() {
        let settings = BridgeSettings {
            broker_port: 18883,
            ca: "ca.pem".into(),
            cert: "bridge.pem".into(),
            key: "bridge.key".into(),
            postgres_url: "postgres://postgres@127.0.0.1:5432/bench".to_owned(),
            connections: 32,
            batch: 2000,
            batch_delay_ms: Some(20),
        };
        let config = config(&settings, PathBuf::from("/tmp/x"));
        config.validate().expect("valid");
        assert_eq!(config.mqtt.connections, 32);
        assert_eq!(config.batch.max_messages, 2000);
        assert_eq!(config.batch.max_delay_ms, 20);
        assert!(config.archive.embedded);
    }
}
