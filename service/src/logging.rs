//! Logs through `tracing` to stderr (stdout stays for what a command prints: a table, CSV);
//! `RUST_LOG` filters (default: `info`, rumqttd quiet). Colours only on a terminal, so that a
//! log file or journal holds plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the process-wide subscriber; later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off,rumqttc=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
