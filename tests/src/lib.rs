//! Harness for the broker's integration tests: a throw-away PKI, an in-process broker on
//! ephemeral ports, and real MQTT clients (rumqttc, `mosquitto_sub`/`mosquitto_pub`, raw
//! MQTT over TLS) whose events can be awaited with bounded timeouts.
//!
//! - [`pki`]: [`TestPki`], a CA, a server certificate, client certificates of every kind, CRLs.
//! - [`broker`]: [`TestBroker`], the broker started in-process with short reload intervals.
//! - [`mqtt`]: [`MqttClient`], rumqttc (MQTT 3.1.1 and 5) with its events on a channel.
//! - [`mosquitto`]: the `mosquitto_sub` and `mosquitto_pub` command-line clients, and
//!   Mosquitto 2.0 as the platform's broker with the exported ACL and configuration.
//! - [`raw`]: hand-written MQTT 3.1.1 packets over mutual TLS, for what clients refuse to send.
//! - [`http`]: a tiny HTTP/1.1 GET and a Prometheus text parser.
//! - [`platform`]: broker, PostgreSQL, taxis and bridges together, for end-to-end tests.
//! - [`service_process`]: a service program as a child process (to kill and restart):
//!   [`bridge_process`] and [`analytics_process`] say how for the bridge and analytics.
//! - [`reporting`]: the reporting service over HTTPS, its database rows, a Redis.
//! - [`archive`]: a bridge's raw archive read back from S3.
//! - [`tours`]: a bridge judging tours with a known tariff, a known route, invoices read back.
//! - [`dispatch`]: the orders API, taxis on their inbox, a broker restartable in place.
//! - [`conformance`]: the Eclipse paho interoperability suite through an mTLS shim.
//! - [`dashboard`]: headless Chromium over the DevTools protocol, and the platform the
//!   reporting dashboard shows (taxis moving, figures, orders, the provider's sign-in page).
//! - [`files`]: the reporting service's file API with its lake in the embedded S3 server,
//!   and requests written by hand over TLS.
//! - [`monitoring`]: the files of `monitoring/`, `promtool`, and a real Prometheus over HTTPS.
//!
//! Every wait is bounded: [`WAIT`] for things that must happen.

pub mod analytics_process;
pub mod archive;
pub mod bridge_process;
pub mod broker;
pub mod broker_process;
pub mod conformance;
pub mod dashboard;
pub mod dispatch;
pub mod files;
pub mod http;
pub mod monitoring;
pub mod mosquitto;
pub mod mqtt;
pub mod pki;
pub mod platform;
pub mod raw;
pub mod reporting;
pub mod service_process;
pub mod tours;

use std::sync::Once;
use std::time::Duration;

pub use broker::TestBroker;
pub use mosquitto::{MosquittoPub, MosquittoSub, PubOutput, SubProcess};
pub use mqtt::{ClientBuilder, Closed, Event, Message, MqttClient, Version};
pub use pki::{ClientCert, TestPki};

/// How long a test waits for something that must happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// SUBACK code of a refused filter in MQTT 3.1.1.
pub const SUBACK_FAILURE_V4: u8 = 0x80;
/// SUBACK reason code "not authorized" in MQTT 5.
pub const SUBACK_NOT_AUTHORIZED_V5: u8 = 0x87;
/// CONNACK return code "not authorized" in MQTT 3.1.1.
pub const CONNACK_NOT_AUTHORIZED_V4: u8 = 0x05;
/// CONNACK reason code "not authorized" in MQTT 5.
pub const CONNACK_NOT_AUTHORIZED_V5: u8 = 0x87;
/// DISCONNECT reason code "not authorized" in MQTT 5.
pub const DISCONNECT_NOT_AUTHORIZED_V5: u8 = 0x87;

/// Process-wide set-up, done once: the rustls crypto provider and log output.
///
/// Logs go to the test's captured output (shown for failing tests); `RUST_LOG` overrides the
/// default filter.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only when a provider is installed already, which is what we want.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("broker=info,rumqttd=warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A JSON `Position` payload (valid per `topics.md`) carrying `seq`.
pub fn position_json(seq: u64) -> Vec<u8> {
    serde_json::json!({
        "seq": seq,
        "ts_ms": unix_ms(),
        "lat": 52.520008,
        "lon": 13.404954,
    })
    .to_string()
    .into_bytes()
}

/// A JSON `InboxMessage` payload (valid per `topics.md`) with the given order id.
pub fn inbox_json(order_id: &str, text: &str) -> Vec<u8> {
    serde_json::json!({
        "order_id": order_id,
        "kind": "message",
        "text": text,
        "created_ms": unix_ms(),
    })
    .to_string()
    .into_bytes()
}

/// An inbox `order` JSON payload valid until `expires_ms`.
pub fn expiring_order_json(order_id: &str, expires_ms: i64) -> Vec<u8> {
    serde_json::json!({
        "order_id": order_id,
        "kind": "order",
        "text": format!("order {order_id}"),
        "created_ms": unix_ms(),
        "expires_ms": expires_ms,
    })
    .to_string()
    .into_bytes()
}

/// The `state` field of a `Status` JSON payload (`online` / `offline`).
pub fn status_state(payload: &[u8]) -> anyhow::Result<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
        anyhow::anyhow!(
            "status payload {:?} is not JSON: {e}",
            String::from_utf8_lossy(payload)
        )
    })?;
    value
        .get("state")
        .and_then(|s| s.as_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "status payload {:?} has no string `state`",
                String::from_utf8_lossy(payload)
            )
        })
}

/// Declares the tests `<name>::v311` and `<name>::v5`, running the async function `name` with
/// `Version::V311` and `Version::V5`, and optionally one more argument for each version:
/// `both_versions!(refused, CONNACK_NOT_AUTHORIZED_V4, CONNACK_NOT_AUTHORIZED_V5);`
#[macro_export]
macro_rules! both_versions {
    ($test:ident $(, $v311:expr, $v5:expr)?) => {
        mod $test {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v311() -> anyhow::Result<()> {
                super::$test($crate::Version::V311 $(, $v311)?).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v5() -> anyhow::Result<()> {
                super::$test($crate::Version::V5 $(, $v5)?).await
            }
        }
    };
}
