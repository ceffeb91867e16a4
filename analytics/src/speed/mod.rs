//! The speed layer: live 10-second windows. (Being built.)

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Config;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowsConfig {
    pub enabled: bool,
    /// Events whose window closed longer ago than this are late: counted, not aggregated.
    pub allowed_lateness_ms: u64,
    /// H3 resolution of the per-zone windows (0 to 15).
    pub h3_resolution: u8,
}

impl Default for WindowsConfig {
    fn default() -> WindowsConfig {
        WindowsConfig {
            enabled: true,
            allowed_lateness_ms: 2_000,
            h3_resolution: 8,
        }
    }
}

impl WindowsConfig {
    pub fn validate(&self) -> Result<(), service::ConfigError> {
        if self.h3_resolution > 15 {
            return Err(service::ConfigError::invalid(
                "windows.h3_resolution",
                "must be between 0 and 15",
            ));
        }
        Ok(())
    }
}

pub async fn start(_config: Arc<Config>) -> anyhow::Result<()> {
    Ok(())
}
