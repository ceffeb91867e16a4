//! The `bridge` program as a child process (see [`crate::service_process`]): killed with
//! SIGKILL and started again on the same data directory.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;

#[cfg(test)]
use crate::service_process::to_toml;
use crate::service_process::{ServiceConfig, ServiceProcess};

/// A running (or killed) `bridge run` process.
pub type BridgeProcess = ServiceProcess<bridge::Config>;

impl ServiceConfig for bridge::Config {
    const PROGRAM: &'static str = "bridge";
    const ENV_PREFIX: &'static str = "BRIDGE_";

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
        Ok(())
    }

    /// Every MQTT connection of the process has connected.
    fn ready_when(&self) -> (&'static str, f64) {
        ("bridge_mqtt_connects_total", self.mqtt.connections as f64)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn the_toml_file_reads_back_as_the_same_configuration() {
        let mut config = bridge::Config {
            id: "b-7".to_owned(),
            data_dir: PathBuf::from("/tmp/a \"quoted\" dir"),
            ..bridge::Config::default()
        };
        config.postgres.url = "postgres://postgres@127.0.0.1:5/x".to_owned();
        config.mqtt.topics = vec!["position".to_owned(), "tour".to_owned()];
        config.mqtt.connections = 3;
        config.validation.max_speed_kmh = 123.5;
        config.archive.embedded = false;
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 4567));
        let text = to_toml(&serde_json::to_value(&config).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        std::fs::write(&path, &text).unwrap();
        // The bridge's own loader, with an environment prefix nobody sets.
        let loaded: bridge::Config = service::load(
            bridge::Config::default(),
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
