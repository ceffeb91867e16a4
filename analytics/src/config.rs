//! Analytics configuration: one TOML file plus `ANALYTICS_`-prefixed environment overrides.
//!
//! Each part has its own section, defined next to the code it configures: `[lake]`
//! ([`crate::lake::LakeConfig`]), `[windows]` ([`crate::speed::WindowsConfig`]), `[daily]`
//! ([`crate::daily::DailyConfig`]), `[import]` ([`crate::import::ImportConfig`]); shared ones
//! (`[postgres]`, `[mqtt]`, `[http]`) are here. Every key has a default for a local
//! development platform; unknown keys are errors naming the key and the file. `DATABASE_URL`
//! overrides `postgres.url`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole analytics configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this analytics process (logs, MQTT client id suffix).
    pub id: String,
    /// Local scratch space: Parquet files being written before upload, import state.
    pub data_dir: PathBuf,
    /// IANA time zone whose calendar days are the lake's `dt=` partitions and the daily
    /// aggregates (e.g. `Europe/Berlin`, `America/New_York`, `UTC`).
    pub time_zone: String,
    pub postgres: PostgresConfig,
    pub mqtt: MqttConfig,
    pub lake: crate::lake::LakeConfig,
    pub windows: crate::speed::WindowsConfig,
    pub daily: crate::daily::DailyConfig,
    pub import: crate::import::ImportConfig,
    pub http: HttpConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database` (or `DATABASE_URL`): the bridge's
    /// database, whose tables the analytics layer reads and where it keeps its own.
    pub url: String,
    /// First retry delay after a failure; doubles up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

/// The broker connection the speed layer publishes its windows on.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Publish each closed window on `topic`; off: PostgreSQL and the lake only.
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// The analytics client certificate (`OU=analytics`) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate's id (CN).
    pub client_id: String,
    /// Where windows are published (QoS 1).
    pub topic: String,
    pub keep_alive_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `/metrics` and `/health`.
    pub listen: SocketAddr,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            id: "analytics-1".to_owned(),
            data_dir: PathBuf::from("data/analytics"),
            time_zone: "Europe/Berlin".to_owned(),
            postgres: PostgresConfig {
                url: String::new(),
                min_backoff_ms: 100,
                max_backoff_ms: 5_000,
            },
            mqtt: MqttConfig {
                enabled: true,
                host: "localhost".to_owned(),
                port: 8883,
                ca: PathBuf::from("certs/dev/ca.pem"),
                cert: PathBuf::from("certs/dev/analytics.pem"),
                key: PathBuf::from("certs/dev/analytics.key"),
                client_id: "analytics".to_owned(),
                topic: "analytics/windows".to_owned(),
                keep_alive_secs: 30,
            },
            lake: crate::lake::LakeConfig::default(),
            windows: crate::speed::WindowsConfig::default(),
            daily: crate::daily::DailyConfig::default(),
            import: crate::import::ImportConfig::default(),
            http: HttpConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9886)),
            },
        }
    }
}

impl Config {
    /// Loads the defaults, `file` and the environment, then checks every rule.
    pub fn load(file: Option<&Path>) -> Result<Config, service::ConfigError> {
        Config::load_with_defaults(Config::default(), file)
    }

    /// Like [`Config::load`] over other defaults (the platform's).
    pub fn load_with_defaults(
        defaults: Config,
        file: Option<&Path>,
    ) -> Result<Config, service::ConfigError> {
        service::config::load_with_database(defaults, file, "ANALYTICS_", Config::validate)
    }

    /// Checks the rules serde cannot: one message naming the key.
    pub fn validate(&self) -> Result<(), service::ConfigError> {
        use service::ConfigError as E;
        if self.id.trim().is_empty() {
            return Err(E::invalid("id", "must not be empty"));
        }
        if self.postgres.min_backoff_ms == 0
            || self.postgres.min_backoff_ms > self.postgres.max_backoff_ms
        {
            return Err(E::invalid(
                "postgres.min_backoff_ms",
                "must be at least 1 and at most postgres.max_backoff_ms",
            ));
        }
        if jiff::tz::TimeZone::get(&self.time_zone).is_err() {
            return Err(E::invalid(
                "time_zone",
                format!("{:?} is not a known IANA time zone", self.time_zone),
            ));
        }
        if self.mqtt.enabled && self.mqtt.topic.trim().is_empty() {
            return Err(E::invalid("mqtt.topic", "must not be empty"));
        }
        self.lake.validate()?;
        self.windows.validate()?;
        self.daily.validate()?;
        self.import.validate()?;
        Ok(())
    }

    /// Checks that a database is configured: everything but `analytics sql` needs one.
    pub fn require_database(&self) -> Result<(), service::ConfigError> {
        if self.postgres.url.trim().is_empty() {
            return Err(service::ConfigError::invalid(
                "postgres.url",
                "must be set (or DATABASE_URL): the bridge's database",
            ));
        }
        Ok(())
    }

    /// The configured time zone (checked by [`Config::validate`]).
    pub fn tz(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.time_zone).unwrap_or(jiff::tz::TimeZone::UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_file() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/analytics.toml")
    }

    #[test]
    fn the_documented_file_shows_every_default() {
        let loaded = service::load(
            Config::default(),
            Some(&sample_file()),
            "ANALYTICS_TEST_NONE_",
            &[],
        )
        .expect("config/analytics.toml loads");
        let loaded = serde_json::to_value(&loaded).expect("serializes");
        let defaults = serde_json::to_value(Config::default()).expect("serializes");
        assert_eq!(loaded, defaults);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("analytics.toml");
        std::fs::write(&path, "[windows]\nlateness = 5\n").expect("written");
        let error = Config::load(Some(&path)).expect_err("refused").to_string();
        assert!(error.contains("lateness"), "{error}");
        assert!(error.contains("analytics.toml"), "{error}");
    }

    #[test]
    fn a_bad_time_zone_is_named() {
        let config = Config {
            time_zone: "Mars/Olympus".to_owned(),
            ..Config::default()
        };
        let error = config.validate().expect_err("refused").to_string();
        assert!(error.contains("time_zone"), "{error}");
    }

    #[test]
    fn commands_that_use_postgresql_need_its_url() {
        let error = Config::default()
            .require_database()
            .expect_err("refused")
            .to_string();
        assert!(error.contains("postgres.url"), "{error}");
    }
}
