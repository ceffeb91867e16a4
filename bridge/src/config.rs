//! Bridge configuration: one TOML file plus `BRIDGE_`-prefixed environment overrides.
//!
//! Each stage has its own section: `[mqtt]` (the source), `[validation]` (the transform),
//! `[postgres]` and `[archive]` (the sinks), `[batch]`, `[retention]`, `[tours]` (tour
//! lifecycle, tariff, invoices), `[http]`, and `[dispatch]` (orders to taxis, with its HTTP
//! API in `[dispatch.api]`). Every key has a default for a local development platform;
//! unknown keys are errors naming the key and the file. `DATABASE_URL` overrides
//! `postgres.url`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole bridge configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Unique name of this bridge process: names its archive objects and MQTT sessions.
    pub id: String,
    /// Local state: the archive spool lives here.
    pub data_dir: PathBuf,
    pub mqtt: MqttConfig,
    pub batch: BatchConfig,
    pub validation: ValidationConfig,
    pub postgres: PostgresConfig,
    pub archive: ArchiveConfig,
    pub retention: RetentionConfig,
    pub tours: ToursConfig,
    pub http: HttpConfig,
    pub dispatch: DispatchConfig,
}

/// The MQTT source: a group of connections sharing subscriptions.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// The bridge's client certificate (`OU=bridge`) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate's id (CN); connections use `<client_id>.<bridge id>-<n>`.
    pub client_id: String,
    /// Shared subscription group: bridges in one group split the messages.
    pub group: String,
    /// Connections per bridge; each has at most 100 unacknowledged messages in flight.
    pub connections: usize,
    /// Topic kinds consumed (`position`, `tour`, `ack`, `status`).
    pub topics: Vec<String>,
    pub keep_alive_secs: u64,
    /// Largest packet accepted from the broker.
    pub max_packet_size: usize,
}

/// When a batch is committed: whichever comes first.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_messages: usize,
    pub max_delay_ms: u64,
}

/// Plausibility rules for incoming messages.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// Device time may be ahead of the bridge clock by at most this much.
    pub max_future_ms: i64,
    /// Reported speed limit.
    pub max_speed_kmh: f64,
    /// Speed implied by two consecutive fixes of one taxi.
    pub max_implied_speed_kmh: f64,
    /// Fixes closer than this in time are not checked for implied speed (GPS jitter).
    pub min_implied_interval_ms: i64,
    /// Taxis whose last fix is remembered for the implied-speed check.
    pub remembered_taxis: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database` (or `DATABASE_URL`). Required; the
    /// `platform` command fills it in with its local cluster.
    pub url: String,
    /// First retry delay after a failure; doubles up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

/// The raw archive: a local spool uploaded to S3-compatible storage.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// S3 endpoint URL; empty: AWS's default endpoint for the region, unless `embedded`.
    pub endpoint: String,
    /// Serve the archive from an embedded S3-compatible server over `embedded_dir`.
    pub embedded: bool,
    pub embedded_dir: PathBuf,
    pub embedded_listen: SocketAddr,
    pub bucket: String,
    pub region: String,
    /// Credentials; empty: the AWS default chain (environment, profile, instance role).
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Key prefix inside the bucket.
    pub prefix: String,
    /// A segment is closed and uploaded at this size (bytes, before compression)...
    pub roll_bytes: u64,
    /// ... or this long after its first record.
    pub roll_interval_ms: u64,
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days of positions kept in PostgreSQL; older day partitions are dropped once archived.
    pub days: u32,
    /// Day partitions created ahead of today.
    pub days_ahead: u32,
    /// How often partitions are created and dropped.
    pub check_interval_ms: u64,
}

/// The tour processor: lifecycle, fares, invoices.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToursConfig {
    /// Judge tour events and issue invoices. With several bridges on one database, one of
    /// them does it at a time.
    pub enabled: bool,
    /// A tour event is judged once it has been stored this long, together with the taxi's
    /// events up to its device time: events arriving out of order within this delay are
    /// judged in device-time order.
    pub settle_delay_ms: u64,
    /// How often stored events are looked at.
    pub poll_interval_ms: u64,
    /// The fare is flagged when it and the meter reading differ by more than this many
    /// cents...
    pub meter_tolerance_cents: u64,
    /// ... and by more than this percentage of the fare.
    pub meter_tolerance_percent: f64,
    /// Publish each invoice on `backoffice/invoices` (QoS 1, with the bridge certificate).
    pub publish_invoices: bool,
    pub tariff: crate::tours::tariff::Tariff,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `/metrics` and `/health`.
    pub listen: SocketAddr,
}

/// Orders to taxis: delivery over MQTT, recording, resends, expiry, and the HTTP API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// Deliver orders, record inbox messages published by backoffice apps, resend, expire.
    pub enabled: bool,
    /// Shared subscription group of dispatch (`$share/<group>/taxi/+/inbox` and `.../status`):
    /// bridges in one group split the recording and the resends on reconnect.
    pub group: String,
    /// How often queued orders are picked up and expired ones marked.
    pub sweep_interval_ms: u64,
    /// An order its taxi has not confirmed yet is published again after this long, then
    /// after twice as long, and so on up to 32 times as long (0: only when the taxi comes
    /// online and when dispatch reconnects).
    pub resend_interval_ms: u64,
    /// Pause between a taxi's `online` status and the resend of its orders (the taxi
    /// subscribes to its inbox just after connecting).
    pub online_resend_delay_ms: u64,
    /// Longest `text` accepted by the API, in bytes.
    pub max_text_bytes: usize,
    /// Longest expiry accepted by the API (`expires_in_s`, or `expires_ms` from now).
    pub max_expires_in_s: u64,
    pub api: DispatchApiConfig,
}

/// The dispatch HTTP API (JSON, bearer tokens).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchApiConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// HTTPS with this certificate chain and key (PEM). Both unset: plain HTTP, allowed on a
    /// loopback address only (bearer tokens must not cross a network in clear).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Who may call it: `[[dispatch.api.tokens]] name = "...", sha256 = "<hex>"`.
    pub tokens: Vec<ApiToken>,
}

/// One API caller: a name (logged and stored as the order's sender) and the SHA-256 (hex)
/// of its bearer token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    pub name: String,
    pub sha256: String,
}

impl Default for Config {
    fn default() -> Config {
        let dev = PathBuf::from("certs/dev");
        Config {
            id: "b1".to_owned(),
            data_dir: PathBuf::from("data/bridge"),
            mqtt: MqttConfig {
                host: "localhost".to_owned(),
                port: 8883,
                ca: dev.join("ca.pem"),
                cert: dev.join("bridge.pem"),
                key: dev.join("bridge.key"),
                client_id: "bridge".to_owned(),
                group: "ingest".to_owned(),
                connections: 32,
                topics: vec!["position".to_owned(), "tour".to_owned(), "ack".to_owned()],
                keep_alive_secs: 30,
                max_packet_size: 256 * 1024,
            },
            batch: BatchConfig {
                max_messages: 1_000,
                max_delay_ms: 50,
            },
            validation: ValidationConfig {
                max_future_ms: 5 * 60 * 1000,
                max_speed_kmh: 250.0,
                max_implied_speed_kmh: 300.0,
                min_implied_interval_ms: 1_000,
                remembered_taxis: 100_000,
            },
            postgres: PostgresConfig {
                url: String::new(),
                min_backoff_ms: 100,
                max_backoff_ms: 10_000,
            },
            archive: ArchiveConfig {
                endpoint: String::new(),
                embedded: true,
                embedded_dir: PathBuf::from("data/s3"),
                embedded_listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
                bucket: "taxi-raw".to_owned(),
                region: "us-east-1".to_owned(),
                access_key_id: String::new(),
                secret_access_key: String::new(),
                prefix: "raw".to_owned(),
                roll_bytes: 8 * 1024 * 1024,
                roll_interval_ms: 60_000,
                min_backoff_ms: 200,
                max_backoff_ms: 30_000,
            },
            retention: RetentionConfig {
                days: 30,
                days_ahead: 3,
                check_interval_ms: 60_000,
            },
            tours: ToursConfig {
                enabled: true,
                settle_delay_ms: 2_000,
                poll_interval_ms: 250,
                meter_tolerance_cents: 100,
                meter_tolerance_percent: 10.0,
                publish_invoices: true,
                tariff: crate::tours::tariff::Tariff::default(),
            },
            http: HttpConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9884)),
            },
            dispatch: DispatchConfig {
                enabled: true,
                group: "dispatch".to_owned(),
                sweep_interval_ms: 500,
                resend_interval_ms: 30_000,
                online_resend_delay_ms: 200,
                max_text_bytes: 4096,
                max_expires_in_s: 7 * 24 * 3600,
                api: DispatchApiConfig {
                    enabled: false,
                    listen: SocketAddr::from(([127, 0, 0, 1], 9885)),
                    tls_cert: None,
                    tls_key: None,
                    tokens: Vec::new(),
                },
            },
        }
    }
}

pub use service::ConfigError;

impl Config {
    /// Defaults, then the TOML file (if any), then `BRIDGE_*` variables
    /// (`BRIDGE_MQTT__CONNECTIONS=16`), then `DATABASE_URL`.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with_defaults(Config::default(), file)
    }

    /// Like [`Config::load`], over other defaults (the platform's, for example).
    pub fn load_with_defaults(
        defaults: Config,
        file: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let extra: Vec<(&str, String)> = std::env::var("DATABASE_URL")
            .map(|url| vec![("postgres.url", url)])
            .unwrap_or_default();
        let config: Config = service::load(defaults, file, "BRIDGE_", &extra)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, why: &str| Err(ConfigError::invalid(key, why));
        if !wire::is_valid_device_id(&self.id) {
            return invalid("id", "use 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'");
        }
        if self.mqtt.connections == 0 || self.mqtt.connections > 256 {
            return invalid("mqtt.connections", "must be between 1 and 256");
        }
        if !wire::is_valid_device_id(&self.mqtt.group) {
            return invalid("mqtt.group", "use characters of A-Z, a-z, 0-9, '_' and '-'");
        }
        for topic in &self.mqtt.topics {
            if !matches!(topic.as_str(), "position" | "tour" | "ack" | "status") {
                return invalid(
                    "mqtt.topics",
                    &format!("unknown topic kind {topic:?} (position, tour, ack, status)"),
                );
            }
        }
        if self.mqtt.topics.is_empty() {
            return invalid("mqtt.topics", "at least one topic kind is required");
        }
        if self.postgres.url.is_empty() {
            return invalid(
                "postgres.url",
                "required: set it in the file, as BRIDGE_POSTGRES__URL, or as DATABASE_URL",
            );
        }
        if self.batch.max_messages == 0 {
            return invalid("batch.max_messages", "must be at least 1");
        }
        if self.retention.days == 0 {
            return invalid("retention.days", "must be at least 1");
        }
        if self.archive.bucket.is_empty() {
            return invalid("archive.bucket", "must not be empty");
        }
        if !self.archive.embedded
            && self.archive.endpoint.is_empty()
            && self.archive.region.is_empty()
        {
            return invalid("archive", "set endpoint or region, or embedded = true");
        }
        if self.postgres.min_backoff_ms == 0 || self.archive.min_backoff_ms == 0 {
            return invalid("min_backoff_ms", "must be at least 1");
        }
        if self.tours.poll_interval_ms == 0 {
            return invalid("tours.poll_interval_ms", "must be at least 1");
        }
        let percent = self.tours.meter_tolerance_percent;
        if !(percent.is_finite() && percent >= 0.0) {
            return invalid("tours.meter_tolerance_percent", "must be a number >= 0");
        }
        if let Some((key, why)) = self.tours.tariff.problem() {
            return invalid(&format!("tours.tariff.{key}"), why);
        }
        self.dispatch.validate()
    }
}

impl DispatchConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, why: &str| Err(ConfigError::invalid(key, why));
        if !wire::is_valid_device_id(&self.group) {
            return invalid(
                "dispatch.group",
                "use 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
            );
        }
        if self.sweep_interval_ms < 10 || self.sweep_interval_ms > 60_000 {
            return invalid(
                "dispatch.sweep_interval_ms",
                "must be between 10 and 60000 (queued orders wait this long at most)",
            );
        }
        if self.resend_interval_ms != 0 && self.resend_interval_ms < 100 {
            return invalid(
                "dispatch.resend_interval_ms",
                "must be 0 (no periodic resend) or at least 100",
            );
        }
        if self.online_resend_delay_ms > 60_000 {
            return invalid("dispatch.online_resend_delay_ms", "must be at most 60000");
        }
        if self.max_text_bytes == 0 || self.max_text_bytes > 60_000 {
            return invalid(
                "dispatch.max_text_bytes",
                "must be between 1 and 60000 (an inbox payload is at most 64 KiB)",
            );
        }
        if self.max_expires_in_s == 0 {
            return invalid("dispatch.max_expires_in_s", "must be at least 1");
        }
        if self.api.enabled && !self.enabled {
            return invalid(
                "dispatch.api.enabled",
                "the API needs dispatch: set dispatch.enabled = true",
            );
        }
        match (&self.api.tls_cert, &self.api.tls_key) {
            (Some(_), Some(_)) => {}
            (None, None) if self.api.enabled && !self.api.listen.ip().is_loopback() => {
                return invalid(
                    "dispatch.api.listen",
                    &format!(
                        "plain HTTP is allowed on a loopback address only, not {}: set \
                         dispatch.api.tls_cert and dispatch.api.tls_key",
                        self.api.listen
                    ),
                );
            }
            (None, None) => {}
            _ => {
                return invalid(
                    "dispatch.api.tls_cert",
                    "dispatch.api.tls_cert and dispatch.api.tls_key go together",
                );
            }
        }
        if self.api.enabled && self.api.tokens.is_empty() {
            return invalid(
                "dispatch.api.tokens",
                "at least one [[dispatch.api.tokens]] (name, sha256) is required when the API is enabled",
            );
        }
        for (n, token) in self.api.tokens.iter().enumerate() {
            if token.name.is_empty()
                || token.name.len() > 64
                || !token.name.chars().all(|c| c.is_ascii_graphic())
            {
                return invalid(
                    &format!("dispatch.api.tokens[{n}].name"),
                    "use 1 to 64 printable ASCII characters without spaces",
                );
            }
            if token.sha256.len() != 64 || !token.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return invalid(
                    &format!("dispatch.api.tokens[{n}].sha256"),
                    "must be the SHA-256 of the token as 64 hexadecimal characters \
                     (`taxictl token hash <token>` or `printf %s <token> | sha256sum`)",
                );
            }
            let earlier = &self.api.tokens[..n];
            if earlier.iter().any(|t| t.name == token.name) {
                return invalid(
                    &format!("dispatch.api.tokens[{n}].name"),
                    &format!("{:?} is used by another token", token.name),
                );
            }
            if earlier
                .iter()
                .any(|t| t.sha256.eq_ignore_ascii_case(&token.sha256))
            {
                return invalid(
                    &format!("dispatch.api.tokens[{n}].sha256"),
                    "the same token is listed twice",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_documents_the_defaults() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/bridge.toml");
        let text = std::fs::read_to_string(example).expect("config/bridge.toml exists");
        let mut defaults = Config::default();
        defaults.postgres.url = "postgres://example".to_owned();
        let loaded: Config = service::load(
            defaults.clone(),
            Some(Path::new(example)),
            "BRIDGE_TEST_UNUSED_",
            &[("postgres.url", "postgres://example".to_owned())],
        )
        .expect("example config is valid");
        assert_eq!(format!("{loaded:?}"), format!("{defaults:?}"), "{text}");
    }

    #[test]
    fn dispatch_api_problems_are_named_precisely() {
        let mut config = Config::default();
        config.postgres.url = "postgres://example".to_owned();
        config.dispatch.api.enabled = true;
        let error = config.validate().expect_err("tokens are required");
        assert!(error.to_string().contains("dispatch.api.tokens"), "{error}");
        config.dispatch.api.tokens = vec![
            ApiToken {
                name: "office".to_owned(),
                sha256: "a".repeat(64),
            },
            ApiToken {
                name: "app".to_owned(),
                sha256: "not hex".to_owned(),
            },
        ];
        let error = config.validate().expect_err("bad hash");
        assert!(
            error.to_string().contains("dispatch.api.tokens[1].sha256"),
            "{error}"
        );
        config.dispatch.api.tokens[1].sha256 = "A".repeat(64);
        let error = config.validate().expect_err("same token twice");
        assert!(error.to_string().contains("listed twice"), "{error}");
        config.dispatch.api.tokens[1].sha256 = "b".repeat(64);
        config.validate().expect("valid");
        // Plain HTTP only on loopback; TLS files go together.
        config.dispatch.api.listen = SocketAddr::from(([0, 0, 0, 0], 9885));
        let error = config
            .validate()
            .expect_err("plain HTTP on every interface");
        assert!(error.to_string().contains("dispatch.api.listen"), "{error}");
        config.dispatch.api.tls_cert = Some(PathBuf::from("dispatch.pem"));
        let error = config
            .validate()
            .expect_err("a certificate without its key");
        assert!(
            error.to_string().contains("dispatch.api.tls_cert"),
            "{error}"
        );
        config.dispatch.api.tls_key = Some(PathBuf::from("dispatch.key"));
        config.validate().expect("HTTPS on every interface");
        config.dispatch.enabled = false;
        let error = config.validate().expect_err("API without dispatch");
        assert!(
            error.to_string().contains("dispatch.api.enabled"),
            "{error}"
        );
    }

    #[test]
    fn invalid_tariff_is_named() {
        let mut config = Config::default();
        config.postgres.url = "postgres://example".to_owned();
        config.tours.tariff.night.until_hour = 25;
        let error = config.validate().expect_err("hour 25");
        assert!(
            error.to_string().contains("tours.tariff.night.until_hour"),
            "{error}"
        );
    }

    #[test]
    fn missing_database_url_is_named() {
        let error = Config::default().validate().expect_err("url is required");
        assert!(error.to_string().contains("postgres.url"), "{error}");
    }
}
