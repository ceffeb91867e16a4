//! The batch layer: daily aggregates. (Being built.)

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Config;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailyConfig {
    pub enabled: bool,
}

impl Default for DailyConfig {
    fn default() -> DailyConfig {
        DailyConfig { enabled: true }
    }
}

impl DailyConfig {
    pub fn validate(&self) -> Result<(), service::ConfigError> {
        Ok(())
    }
}

pub async fn start(_config: Arc<Config>) -> anyhow::Result<()> {
    Ok(())
}

pub async fn recompute(
    _config: &Config,
    _from: jiff::civil::Date,
    _to: jiff::civil::Date,
) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
