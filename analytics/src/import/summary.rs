//! What an import did with each file, as data (for the caller: the days whose daily
//! aggregates must be recomputed) and as the one line printed per file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use super::layout::Layout;
use super::source::Format;
use super::trip::Reason;

/// What happened to one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Read and published now.
    Imported,
    /// Imported before (same bytes): nothing was done. The counts are those of that import.
    Skipped {
        /// When it was imported (PostgreSQL's text of `nyc_imports.imported_at`).
        imported_at: String,
    },
    /// Not imported; the message names the file. Nothing of it is recorded as imported, so
    /// the next import of the file starts over.
    Failed(String),
}

/// One file's result.
#[derive(Clone, Debug)]
pub struct FileSummary {
    pub path: PathBuf,
    pub outcome: Outcome,
    /// Lowercase hex SHA-256 of the file (once it could be read).
    pub sha256: Option<String>,
    pub format: Option<Format>,
    pub layout: Option<Layout>,
    /// Rows written to the lake.
    pub rows: u64,
    /// Rows rejected, per reason (reasons with none are left out).
    pub rejected: BTreeMap<Reason, u64>,
    /// New York days the file's trips are on (its `dt` partitions), sorted.
    pub days: Vec<jiff::civil::Date>,
    pub elapsed: Duration,
}

impl FileSummary {
    pub(crate) fn failed(path: PathBuf, error: &anyhow::Error, elapsed: Duration) -> FileSummary {
        let mut message = format!("{error:#}");
        let name = path.display().to_string();
        if !message.contains(&name) {
            message = format!("{name}: {message}");
        }
        FileSummary {
            path,
            outcome: Outcome::Failed(message),
            sha256: None,
            format: None,
            layout: None,
            rows: 0,
            rejected: BTreeMap::new(),
            days: Vec::new(),
            elapsed,
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// The summary as one line.
    pub fn line(&self) -> String {
        let name = self.path.display();
        let rejected = if self.rejected.is_empty() {
            "0 rejected".to_owned()
        } else {
            let reasons: Vec<String> = self
                .rejected
                .iter()
                .map(|(reason, n)| format!("{} {n}", reason.code()))
                .collect();
            format!(
                "{} rejected ({})",
                self.rejected_total(),
                reasons.join(", ")
            )
        };
        let days = match (self.days.first(), self.days.last()) {
            (Some(first), Some(last)) => format!("{} days ({first} to {last})", self.days.len()),
            _ => "no day".to_owned(),
        };
        let layout = self.layout.map_or("?", Layout::name);
        let format = self.format.map_or("?", Format::name);
        match &self.outcome {
            Outcome::Imported => {
                let seconds = self.elapsed.as_secs_f64();
                let rate = (self.rows + self.rejected_total()) as f64 / seconds.max(1e-3);
                format!(
                    "{name}: imported {} rows into {days}, {rejected}; {format}, {layout} layout; {seconds:.1} s, {rate:.0} rows/s",
                    self.rows
                )
            }
            Outcome::Skipped { imported_at } => format!(
                "{name}: already imported at {imported_at} ({} rows into {days}, {rejected}); skipped",
                self.rows
            ),
            Outcome::Failed(error) => format!("{name}: not imported: {error}"),
        }
    }
}

/// The days that files imported now (not skipped ones) wrote: their daily aggregates are due.
pub fn touched_days(summaries: &[FileSummary]) -> Vec<jiff::civil::Date> {
    summaries
        .iter()
        .filter(|s| s.outcome == Outcome::Imported)
        .flat_map(|s| s.days.iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// An error naming every file that was not imported (the others were), or `Ok`.
pub fn all_imported(summaries: &[FileSummary]) -> anyhow::Result<()> {
    let failed: Vec<&str> = summaries
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::Failed(error) => Some(error.as_str()),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} of {} files not imported: {}",
        failed.len(),
        summaries.len(),
        failed.join("; ")
    )
}
