//! Logs through `tracing` to stderr; `RUST_LOG` filters (default: `info`, rumqttd quiet).

use tracing_subscriber::EnvFilter;

/// Installs the process-wide subscriber; later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off,rumqttc=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
