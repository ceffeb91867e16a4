//! What every process of the platform shares.
//!
//! - [`config`]: defaults + one TOML file + environment overrides, with precise errors.
//! - [`ops`]: the Prometheus recorder and the HTTP port serving `/metrics` and `/health`.
//! - [`logging`]: `tracing` to stderr, filtered by `RUST_LOG`.

pub mod config;
pub mod logging;
pub mod ops;

pub use config::{load, ConfigError};
