//! Historical NYC TLC trip records. (Being built.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Config;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// Files imported at start (each once: a file already imported is skipped).
    pub files: Vec<PathBuf>,
    /// The TLC taxi zone lookup table, joined to zone ids.
    pub zone_lookup: Option<PathBuf>,
}

impl ImportConfig {
    pub fn validate(&self) -> Result<(), service::ConfigError> {
        Ok(())
    }
}

pub async fn start(_config: Arc<Config>) -> anyhow::Result<()> {
    Ok(())
}

pub async fn import_files(
    _config: &Config,
    _files: &[PathBuf],
    _zones: Option<&Path>,
) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
