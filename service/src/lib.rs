//! What every process of the platform shares.
//!
//! - [`config`]: defaults + one TOML file + environment overrides, with precise errors.
//! - [`ops`]: the Prometheus recorder and the HTTP port serving `/metrics` and `/health`.
//! - [`logging`]: `tracing` to stderr, filtered by `RUST_LOG`.
//! - [`process`]: runtime, stop signals and exit status of a service binary.
//! - [`tls`]: HTTPS terminated by the service itself, for its HTTP API.

pub mod config;
pub mod logging;
pub mod ops;
pub mod process;
pub mod tls;

pub use config::{load, ConfigError};
