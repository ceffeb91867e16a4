//! Broker configuration: one TOML file plus `BROKER_`-prefixed environment overrides.
//!
//! Every key has a default, so an empty file (or none) runs a development broker. Unknown keys
//! are errors, and every error names the key and where it came from (file or variable).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::acl::RoleRules;

/// The whole broker configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub tls: TlsConfig,
    pub http: HttpConfig,
    pub router: RouterConfig,
    pub status: StatusConfig,
    /// Authorization rules per role; `%c` stands for the client's own id.
    pub acl: BTreeMap<String, RoleRules>,
}

/// The MQTT-over-TLS listener and the limits that protect it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Address of the mTLS MQTT listener (MQTT 3.1.1 and 5 on the same port).
    pub listen: SocketAddr,
    /// Connections held at once, handshakes included; more are closed at once.
    pub max_connections: usize,
    /// A TLS handshake must finish within this time.
    pub handshake_timeout_ms: u64,
    /// The MQTT CONNECT must arrive within this time after the handshake.
    pub connect_timeout_ms: u64,
    /// Largest MQTT packet accepted, in bytes; a larger one closes the connection.
    pub max_packet_size: usize,
    /// A write to a client must complete within this time (and within 1.5 times the client's
    /// keep-alive), or the client is taken for gone and disconnected.
    pub write_timeout_ms: u64,
    /// Longest keep-alive a client may use, in seconds; 0: no limit. An MQTT 5 client asking
    /// for more (or for none) is told this value (Server Keep Alive); an MQTT 3.1.1 client
    /// asking for more is refused.
    pub max_keep_alive_s: u16,
    /// Topic aliases an MQTT 5 client may define on its connection (0: none). The broker
    /// resolves them and authorizes the resolved topic.
    pub max_topic_alias: u16,
    /// QoS 1 and 2 publishes an MQTT 5 client may have unacknowledged at once (its Receive
    /// Maximum, announced in the CONNACK); one more closes the connection.
    pub receive_maximum: u16,
}

/// Certificates: the broker's own, the CAs that sign client certificates, and the CRL.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain the broker presents.
    pub server_cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the broker.
    pub server_key: PathBuf,
    /// PEM files of the CAs whose client certificates are accepted (several during a rotation).
    pub client_ca: Vec<PathBuf>,
    /// Optional PEM CRL file(s); reloaded when they change, without a restart.
    pub crl: Vec<PathBuf>,
    /// How often certificate, CA and CRL files are checked for changes.
    pub reload_interval_ms: u64,
}

/// The HTTP port for `/metrics` and `/health`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

/// Sizes of the embedded rumqttd router's in-memory logs, and the spill area behind them.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Bytes per segment of each subscribed filter's log.
    pub max_segment_size: usize,
    /// Segments kept in memory per filter; the oldest is dropped when full, unless a durable
    /// subscriber has not read it: then it is written to the spill area, or, when that is
    /// full (or off), the filter's publishers wait.
    pub max_segment_count: usize,
    /// Messages sent to one connection per scheduling round.
    pub max_outgoing_packet_count: u64,
    /// Directory of the spill area (created if missing, locked while the broker runs; spill
    /// files a previous run left are removed at start).
    pub spill_dir: PathBuf,
    /// Disk budget of the spill area in bytes; 0 turns spilling off. In `disk` durability
    /// it bounds the files of segments that have left memory.
    pub spill_max_bytes: u64,
    /// `memory`: acknowledged messages live in memory (and the spill area) while the broker
    /// runs, and a crash loses them. `disk`: a PUBACK means the message is synced to
    /// `log_dir`; after a crash the logs, persistent sessions, shared groups and retained
    /// messages come back.
    #[serde(default)]
    pub durability: Durability,
    /// Directory of the durable log (`disk` durability; created if missing, locked while the
    /// broker runs). It also holds the segments that leave memory, instead of `spill_dir`.
    #[serde(default = "default_log_dir")]
    pub log_dir: PathBuf,
}

/// Whether the broker's acknowledgements survive a crash ([`RouterConfig::durability`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Memory,
    #[default]
    Disk,
}

fn default_log_dir() -> PathBuf {
    PathBuf::from("data/broker/log")
}

/// The broker-owned `taxi/<id>/status` topic.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Publish retained online/offline for every connection of these roles.
    pub roles: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        let dev = PathBuf::from("certs/dev");
        Config {
            mqtt: MqttConfig {
                listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
                max_connections: 15_000,
                handshake_timeout_ms: 10_000,
                connect_timeout_ms: 10_000,
                max_packet_size: 256 * 1024,
                write_timeout_ms: 30_000,
                max_keep_alive_s: 0,
                max_topic_alias: 10,
                receive_maximum: 1000,
            },
            tls: TlsConfig {
                server_cert: dev.join("server.pem"),
                server_key: dev.join("server.key"),
                client_ca: vec![dev.join("ca.pem")],
                crl: vec![dev.join("crl.pem")],
                reload_interval_ms: 2_000,
            },
            http: HttpConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9883)),
            },
            router: RouterConfig {
                max_segment_size: 4 * 1024 * 1024,
                max_segment_count: 64,
                max_outgoing_packet_count: 200,
                spill_dir: PathBuf::from("data/broker/spill"),
                spill_max_bytes: 4 * 1024 * 1024 * 1024,
                durability: Durability::Disk,
                log_dir: default_log_dir(),
            },
            status: StatusConfig {
                roles: vec!["taxi".to_owned()],
            },
            acl: crate::acl::default_rules(),
        }
    }
}

pub use service::ConfigError;

impl Config {
    /// Loads defaults, then the TOML file (if given), then `BROKER_*` environment variables
    /// (`BROKER_MQTT__LISTEN=0.0.0.0:8883`: sections separated by a double underscore).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let config: Config = service::load(Config::default(), file, "BROKER_", &[])?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, why: &str| Err(ConfigError::invalid(key, why));
        if self.mqtt.max_connections == 0 {
            return invalid("mqtt.max_connections", "must be at least 1");
        }
        if self.mqtt.write_timeout_ms == 0 {
            return invalid("mqtt.write_timeout_ms", "must be at least 1");
        }
        if self.mqtt.receive_maximum == 0 {
            return invalid("mqtt.receive_maximum", "must be at least 1");
        }
        if self.mqtt.max_packet_size < 64 {
            return invalid("mqtt.max_packet_size", "must be at least 64 bytes");
        }
        if self.tls.client_ca.is_empty() {
            return invalid("tls.client_ca", "at least one CA file is required");
        }
        if self.router.max_segment_count == 0 || self.router.max_segment_size < 1024 {
            return invalid(
                "router",
                "max_segment_count must be >= 1 and max_segment_size >= 1024",
            );
        }
        if self.router.durability == Durability::Disk && self.router.log_dir.as_os_str().is_empty()
        {
            return invalid(
                "router.log_dir",
                "a directory is required with router.durability = \"disk\"",
            );
        }
        if self.router.spill_max_bytes > 0 {
            if self.router.spill_dir.as_os_str().is_empty()
                && self.router.durability == Durability::Memory
            {
                return invalid(
                    "router.spill_dir",
                    "a directory is required while router.spill_max_bytes is above 0",
                );
            }
            // A spilled segment takes a little more than its size on disk.
            if self.router.spill_max_bytes < 2 * self.router.max_segment_size as u64 {
                return invalid(
                    "router.spill_max_bytes",
                    "must be 0 (spilling off) or at least two segments \
                     (2 x router.max_segment_size)",
                );
            }
        }
        for (role, rules) in &self.acl {
            rules
                .validate()
                .map_err(|why| ConfigError::invalid(&format!("acl.{role}"), why))?;
        }
        for role in &self.status.roles {
            if !self.acl.contains_key(role) {
                return invalid("status.roles", &format!("unknown role {role:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Config::load(Some(&path))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = load_text("").expect("defaults are valid");
        assert_eq!(config.mqtt.listen.port(), 8883);
        assert!(config.acl.contains_key("taxi"));
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let error = load_text("[mqtt]\nlisten_port = 1\n").expect_err("unknown key");
        let text = error.to_string();
        assert!(text.contains("listen_port"), "{text}");
        assert!(text.contains("broker.toml"), "{text}");
    }

    #[test]
    fn bad_listen_address_is_named() {
        let error = load_text("[mqtt]\nlisten = \"nowhere:x\"\n").expect_err("bad address");
        let text = error.to_string();
        assert!(text.contains("mqtt.listen"), "{text}");
    }

    #[test]
    fn example_file_matches_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/broker.toml");
        let config = Config::load(Some(Path::new(example))).expect("example config is valid");
        let defaults = Config::default();
        assert_eq!(
            toml_value(&config),
            toml_value(&defaults),
            "config/broker.toml documents the defaults"
        );
    }

    fn toml_value(config: &Config) -> String {
        format!("{config:?}")
    }

    #[test]
    fn missing_file_is_reported() {
        let error = Config::load(Some(Path::new("/nonexistent/broker.toml"))).expect_err("x");
        assert!(error.to_string().contains("/nonexistent/broker.toml"));
    }

    #[test]
    fn disk_durability_needs_a_log_directory_and_other_modes_are_refused() {
        let config = load_text("[router]\ndurability = \"disk\"\n").expect("disk mode");
        assert_eq!(config.router.durability, Durability::Disk);
        assert_eq!(config.router.log_dir, PathBuf::from("data/broker/log"));
        let error = load_text("[router]\ndurability = \"disk\"\nlog_dir = \"\"\n")
            .expect_err("no directory");
        assert!(error.to_string().contains("router.log_dir"), "{error}");
        let error = load_text("[router]\ndurability = \"sometimes\"\n").expect_err("unknown");
        assert!(error.to_string().contains("durability"), "{error}");
        assert_eq!(Config::default().router.durability, Durability::Disk);
    }

    #[test]
    fn a_spill_budget_below_two_segments_is_refused_and_zero_turns_it_off() {
        let error = load_text("[router]\nspill_max_bytes = 1000\n").expect_err("too small");
        let text = error.to_string();
        assert!(text.contains("router.spill_max_bytes"), "{text}");
        let error = load_text("[router]\ndurability = \"memory\"\nspill_dir = \"\"\n")
            .expect_err("no directory");
        assert!(error.to_string().contains("router.spill_dir"), "{error}");
        let off = load_text("[router]\nspill_dir = \"\"\nspill_max_bytes = 0\n")
            .expect("spilling off needs no directory");
        assert_eq!(off.router.spill_max_bytes, 0);
    }

    #[test]
    fn acl_pattern_with_bad_wildcard_is_refused() {
        let error = load_text("[acl.taxi]\npublish = [\"taxi/%c/#/x\"]\nsubscribe = []\n")
            .expect_err("bad pattern");
        assert!(error.to_string().contains("acl.taxi"), "{error}");
    }
}
