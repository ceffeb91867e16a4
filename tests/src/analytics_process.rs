//! The `analytics` program as a child process (see [`crate::service_process`]): killed with
//! SIGKILL and started again on the same database.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};

use crate::platform::Platform;
#[cfg(test)]
use crate::service_process::to_toml;
use crate::service_process::{ServiceConfig, ServiceProcess};

/// An analytics configuration for `platform`: its own data directory, the platform's
/// database, the daily aggregation off, windows published with the certificate `CN=<id>,
/// OU=analytics` (made here), short back-offs.
pub fn analytics_config(platform: &Platform, id: &str) -> Result<analytics::Config> {
    let cert = platform.pki.client("analytics", "analytics")?;
    let mut config = analytics::Config {
        id: id.to_owned(),
        data_dir: platform.dir.path().join(format!("analytics-{id}")),
        ..analytics::Config::default()
    };
    config.postgres.url = platform.database_url();
    config.postgres.min_backoff_ms = 50;
    config.postgres.max_backoff_ms = 500;
    config.mqtt.host = "127.0.0.1".to_owned();
    config.mqtt.port = platform.broker.mqtt_addr.port();
    config.mqtt.ca = platform.pki.ca_path().to_owned();
    config.mqtt.cert = cert.cert_path;
    config.mqtt.key = cert.key_path;
    config.mqtt.client_id = cert.id;
    config.daily.enabled = false;
    Ok(config)
}

/// A running (or killed) `analytics run` process.
pub type AnalyticsProcess = ServiceProcess<analytics::Config>;

impl ServiceConfig for analytics::Config {
    const PROGRAM: &'static str = "analytics";
    const ENV_PREFIX: &'static str = "ANALYTICS_";

    fn id(&self) -> &str {
        &self.id
    }

    fn database_url(&self) -> &str {
        &self.postgres.url
    }

    fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn set_http_listen(&mut self, addr: SocketAddr) {
        self.http.listen = addr;
    }

    fn check(&self) -> Result<()> {
        self.validate().context("invalid analytics configuration")
    }

    /// `/metrics` answers once the migrations are applied and the windows started; when it
    /// publishes, its MQTT connection is up too.
    fn ready_when(&self) -> (&'static str, f64) {
        let connects = if self.mqtt.enabled { 1.0 } else { 0.0 };
        ("analytics_mqtt_connects_total", connects)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn the_toml_file_reads_back_as_the_same_configuration() {
        let mut config = analytics::Config {
            id: "a-7".to_owned(),
            data_dir: PathBuf::from("/tmp/a \"quoted\" dir"),
            ..analytics::Config::default()
        };
        config.postgres.url = "postgres://postgres@127.0.0.1:5/x".to_owned();
        config.windows.length_ms = 2_000;
        config.windows.h3_resolution = 9;
        config.mqtt.enabled = false;
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 4567));
        let text = to_toml(&serde_json::to_value(&config).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("analytics.toml");
        std::fs::write(&path, &text).unwrap();
        let loaded: analytics::Config = service::load(
            analytics::Config::default(),
            Some(&path),
            "TOML_ROUND_TRIP_UNSET_",
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            serde_json::to_value(&loaded).unwrap(),
            serde_json::to_value(&config).unwrap()
        );
    }
}
