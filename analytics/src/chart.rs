//! Charts of the daily aggregates. (Being built.)

use std::path::{Path, PathBuf};

use crate::Config;

pub async fn render(_config: &Config, _out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::bail!("not built yet")
}
