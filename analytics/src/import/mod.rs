//! The historical import: NYC TLC yellow-taxi trip records into the lake's `trips_nyc`
//! dataset, so that the batch layer compares the fleet with years of New York trips.
//!
//! Both TLC layouts are read, recognised by their columns ([`layout`]): the 2015 to mid-2016
//! CSV files with longitude/latitude points, and the current files with taxi zone ids
//! (Parquet, or CSV), whose ids are named with the TLC's zone lookup table when one is given
//! ([`zones`]). A CSV may be gzip-compressed (told by its first bytes). Files are streamed:
//! memory depends on the number of days a file touches, not on its length
//! ([`day_writers`]). A large plain CSV is parsed by one thread per core ([`split`]).
//!
//! Each accepted row becomes one `trips_nyc` row: times converted from New York wall-clock
//! time to UTC ([`nyc_time`], which documents the daylight-saving rule), miles to metres,
//! dollars to cents, and `zone` set to the H3 cell of the pickup point
//! (`windows.h3_resolution`; [`cells`] finds most without trigonometry) or to
//! `tlc:<PULocationID>`. Every other row is rejected with a reason ([`trip::Reason`]),
//! counted and kept in PostgreSQL; a bad row never stops a file.
//!
//! One lake object per (New York day of pickup, file): `trips_nyc/dt=<day>/<first 16 hex
//! digits of the file's SHA-256>.parquet`. A file is imported once ([`ledger`]): importing
//! it again is a no-op, and an import that stopped half-way is redone whole over the same
//! objects. Files are imported by command (`analytics import`) and, at start, from
//! `import.files` (as the batch layer of the lambda architecture starts from the master
//! data set).

mod cells;
mod day_writers;
mod fields;
mod intake;
mod layout;
mod ledger;
mod nyc_time;
mod output;
mod progress;
mod read_csv;
mod read_parquet;
mod run;
mod source;
mod split;
mod summary;
mod trip;
mod zones;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Config;

pub use intake::Rejected;
pub use layout::{Layout, COORDINATES_HEADER, ZONE_IDS_HEADER};
pub use run::DATASET;
pub use source::Format;
pub use summary::{all_imported, touched_days, FileSummary, Outcome};
pub use trip::{Reason, Rect, NYC_BOX};
pub use zones::ZoneLookup;

/// The `[import]` section.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportConfig {
    /// TLC files imported at start, in the background, in this order (each once: a file
    /// already imported is skipped).
    pub files: Vec<PathBuf>,
    /// The TLC taxi zone lookup table (`taxi_zone_lookup.csv`), joined to the zone ids of
    /// the files imported at start.
    pub zone_lookup: Option<PathBuf>,
}

impl ImportConfig {
    /// The rules that need no file system: no empty path.
    pub fn validate(&self) -> Result<(), service::ConfigError> {
        use service::ConfigError as E;
        if self.files.iter().any(|f| f.as_os_str().is_empty()) {
            return Err(E::invalid("import.files", "a path is empty"));
        }
        if self
            .zone_lookup
            .as_ref()
            .is_some_and(|f| f.as_os_str().is_empty())
        {
            return Err(E::invalid("import.zone_lookup", "the path is empty"));
        }
        Ok(())
    }

    /// Every configured file can be opened (checked at start, before anything runs).
    pub fn check_readable(&self) -> Result<(), service::ConfigError> {
        use service::ConfigError as E;
        for file in &self.files {
            if let Err(e) = std::fs::File::open(file) {
                return Err(E::invalid(
                    "import.files",
                    format!("cannot read {}: {e}", file.display()),
                ));
            }
        }
        if let Some(file) = &self.zone_lookup {
            if let Err(e) = std::fs::File::open(file) {
                return Err(E::invalid(
                    "import.zone_lookup",
                    format!("cannot read {}: {e}", file.display()),
                ));
            }
        }
        Ok(())
    }
}

/// Checks the configured files, then imports them in the background (a file already
/// imported is skipped). A file that fails is logged, naming it; the others go on.
pub async fn start(config: Arc<Config>) -> anyhow::Result<()> {
    if config.import.files.is_empty() {
        return Ok(());
    }
    config.import.check_readable()?;
    tokio::spawn(async move {
        let import = &config.import;
        match run::import_all(
            &config,
            &import.files,
            import.zone_lookup.as_deref(),
            run::Show::Logs,
        )
        .await
        {
            Ok(summaries) => {
                let days = touched_days(&summaries);
                tracing::info!(
                    files = summaries.len(),
                    days = days.len(),
                    "configured imports done"
                );
                // The daily schedule catches up on NYC days only at start: aggregate these now.
                if config.daily.enabled && !days.is_empty() {
                    if let Err(e) = crate::daily::aggregate_nyc_days(&config, &days).await {
                        tracing::error!(error = %format!("{e:#}"), "aggregating the imported days failed; `analytics aggregate` runs them again");
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the configured imports did not run")
            }
        }
    });
    Ok(())
}

/// Imports `files` (CSV, gzip CSV or Parquet; the layout is detected), joining zone ids with
/// the lookup table `zones` if given. Prints one line per file (and a progress bar on a
/// terminal). A file's failure is in its summary (see [`all_imported`]); only a problem
/// with the zone table or the lake's client is an error of the whole call.
pub async fn import_files(
    config: &Config,
    files: &[PathBuf],
    zones: Option<&Path>,
) -> anyhow::Result<Vec<FileSummary>> {
    run::import_all(config, files, zones, run::Show::Terminal).await
}
