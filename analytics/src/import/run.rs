//! Importing files one after the other. For each: hash it and recognise its format; skip it
//! if `nyc_imports` has it; otherwise read it on a blocking thread (rows to local day files,
//! rejects streamed to PostgreSQL meanwhile), publish the day files to the lake (a few at a
//! time), and only then record the file in `nyc_imports`. A failure anywhere leaves the file
//! unrecorded, so importing it again redoes it whole, writing the same objects (no doubles).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_postgres::Client;

use super::day_writers::{DayFile, DayWriters};
use super::intake::{Intake, Intook, Rejected};
use super::layout::Layout;
use super::ledger;
use super::output::Output;
use super::source::{self, Format, Source};
use super::summary::{FileSummary, Outcome};
use super::trip::Reason;
use super::zones::ZoneLookup;
use super::{read_csv, read_parquet};
use crate::lake::Lake;
use crate::Config;

/// The lake dataset the trips go to.
pub const DATASET: &str = "trips_nyc";

/// Where summaries go: printed on stdout (and a bar drawn when stderr is a terminal), or
/// logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Show {
    Terminal,
    Logs,
}

/// Imports `files` in order. Only a problem with the zone table, the lake's client or the
/// scratch directory stops the whole call; a file's failure is in its summary.
pub(crate) async fn import_all(
    config: &Config,
    files: &[PathBuf],
    zones: Option<&Path>,
    show: Show,
) -> anyhow::Result<Vec<FileSummary>> {
    let zones = match zones {
        Some(path) => {
            let path = path.to_owned();
            let table = tokio::task::spawn_blocking(move || ZoneLookup::load(&path))
                .await
                .context("loading the taxi zone lookup")??;
            Some(Arc::new(table))
        }
        None => None,
    };
    let lake = Lake::open(&config.lake).await?;
    let mut client: Option<Client> = None;
    let mut summaries = Vec::with_capacity(files.len());
    for path in files {
        let started = Instant::now();
        if client.as_ref().is_none_or(Client::is_closed) {
            client = Some(crate::db::connect(&config.postgres).await);
        }
        let Some(db) = client.as_ref() else {
            continue;
        };
        let summary = match import_one(config, &lake, db, path, zones.clone(), show, started).await
        {
            Ok(summary) => summary,
            Err(error) => FileSummary::failed(path.clone(), &error, started.elapsed()),
        };
        report(&summary, show);
        summaries.push(summary);
    }
    Ok(summaries)
}

fn report(summary: &FileSummary, show: Show) {
    let outcome = match &summary.outcome {
        Outcome::Imported => "imported",
        Outcome::Skipped { .. } => "skipped",
        Outcome::Failed(_) => "failed",
    };
    metrics::counter!("analytics_import_files_total", "outcome" => outcome).increment(1);
    let line = summary.line();
    match (show, &summary.outcome) {
        (Show::Terminal, _) => println!("{line}"),
        (Show::Logs, Outcome::Failed(_)) => tracing::error!("{line}"),
        (Show::Logs, _) => tracing::info!("{line}"),
    }
}

async fn import_one(
    config: &Config,
    lake: &Lake,
    client: &Client,
    path: &Path,
    zones: Option<Arc<ZoneLookup>>,
    show: Show,
    started: Instant,
) -> anyhow::Result<FileSummary> {
    let inspected = path.to_owned();
    let source = tokio::task::spawn_blocking(move || source::inspect(&inspected))
        .await
        .context("hashing the file")??;
    ledger::lock(client, &source.sha256).await?;
    let result = import_locked(config, lake, client, &source, zones, show, started).await;
    ledger::unlock(client, &source.sha256).await;
    result
}

async fn import_locked(
    config: &Config,
    lake: &Lake,
    client: &Client,
    source: &Source,
    zones: Option<Arc<ZoneLookup>>,
    show: Show,
    started: Instant,
) -> anyhow::Result<FileSummary> {
    let name = source.path.display().to_string();
    if let Some(earlier) = ledger::find(client, &source.sha256).await? {
        tracing::info!(file = %name, sha256 = %source.sha256, imported_at = %earlier.imported_at, "already imported");
        let mut rejected = BTreeMap::new();
        for (code, count) in ledger::rejects_by_reason(client, &source.sha256).await? {
            if let Some(reason) = Reason::from_code(&code) {
                rejected.insert(reason, count as u64);
            }
        }
        return Ok(FileSummary {
            path: source.path.clone(),
            outcome: Outcome::Skipped {
                imported_at: earlier.imported_at,
            },
            sha256: Some(source.sha256.clone()),
            format: Some(source.format),
            layout: Layout::from_name(&earlier.layout),
            rows: earlier.rows as u64,
            rejected,
            days: earlier.days.iter().filter_map(|d| d.parse().ok()).collect(),
            elapsed: started.elapsed(),
        });
    }
    let cleared = ledger::clear_rejects(client, &source.sha256).await?;
    if cleared > 0 {
        tracing::info!(file = %name, rows = cleared, "removed the rejects of an interrupted import of this file");
    }

    let scratch = Scratch::new(config.data_dir.join("import").join(source.part()))?;
    let cancel = Arc::new(AtomicBool::new(false));
    let (rejects, mut incoming) = tokio::sync::mpsc::channel::<Vec<Rejected>>(4);
    let reading = {
        let source = source.clone();
        let dir = scratch.dir.clone();
        let cancel = cancel.clone();
        let resolution = config.windows.h3_resolution;
        let progress = show == Show::Terminal;
        tokio::task::spawn_blocking(move || {
            read_file(&source, &dir, resolution, zones, rejects, cancel, progress)
        })
    };
    let stored: anyhow::Result<()> = async {
        while let Some(chunk) = incoming.recv().await {
            ledger::store_rejects(client, &source.sha256, &chunk)
                .await
                .with_context(|| format!("{name}: storing rejected rows"))?;
        }
        Ok(())
    }
    .await;
    if stored.is_err() {
        cancel.store(true, Ordering::Relaxed);
        drop(incoming);
    }
    let read = reading.await.context("the import's reading thread")?;
    stored?;
    let (layout, intook) = read?;

    publish_days(lake, source, &name, &intook.files).await?;
    let days: Vec<String> = intook.files.iter().map(|f| f.day.to_string()).collect();
    let rejected_total: u64 = intook.counted.rejected.iter().sum();
    ledger::record(
        client,
        &ledger::Record {
            sha256: &source.sha256,
            path: &name,
            format: source.format.name(),
            layout: layout.name(),
            bytes: source.bytes as i64,
            rows: intook.counted.rows as i64,
            rejected: rejected_total as i64,
            days,
        },
    )
    .await?;
    drop(scratch);

    metrics::counter!("analytics_import_rows_total").increment(intook.counted.rows);
    let mut rejected = BTreeMap::new();
    for reason in Reason::ALL {
        let count = intook.counted.rejected[reason.index()];
        if count > 0 {
            metrics::counter!("analytics_import_rejected_total", "reason" => reason.code())
                .increment(count);
            rejected.insert(reason, count);
        }
    }
    Ok(FileSummary {
        path: source.path.clone(),
        outcome: Outcome::Imported,
        sha256: Some(source.sha256.clone()),
        format: Some(source.format),
        layout: Some(layout),
        rows: intook.counted.rows,
        rejected,
        days: intook.files.iter().map(|f| f.day).collect(),
        elapsed: started.elapsed(),
    })
}

/// Day files uploaded at once: an upload mostly waits (on the object store, on a footer
/// read), and a small file is held in memory while it travels, so a few at a time.
const CONCURRENT_UPLOADS: usize = 4;

/// Publishes every day file, [`CONCURRENT_UPLOADS`] at a time. After a failure no upload
/// starts, those under way end (none is left half-done), and the first failure is the
/// result: the file is then not recorded, and its next import rewrites the same objects.
async fn publish_days(
    lake: &Lake,
    source: &Source,
    name: &str,
    files: &[DayFile],
) -> anyhow::Result<()> {
    let mut waiting = files.iter();
    let mut uploads = FuturesUnordered::new();
    for file in waiting.by_ref().take(CONCURRENT_UPLOADS) {
        uploads.push(publish_day(lake, source, name, file));
    }
    let mut failed = None;
    while let Some(published) = uploads.next().await {
        match published {
            Ok(()) if failed.is_none() => {
                if let Some(file) = waiting.next() {
                    uploads.push(publish_day(lake, source, name, file));
                }
            }
            Ok(()) => {}
            Err(error) => {
                failed.get_or_insert(error);
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

async fn publish_day(
    lake: &Lake,
    source: &Source,
    name: &str,
    file: &DayFile,
) -> anyhow::Result<()> {
    lake.publish_file(DATASET, file.day, source.part(), &file.path)
        .await
        .with_context(|| format!("{name}: publishing the trips of {}", file.day))
}

/// Reads the whole file from the current (blocking) thread: readers (one, or one per part
/// of a large plain CSV) and the day writers.
fn read_file(
    source: &Source,
    dir: &Path,
    h3_resolution: u8,
    zones: Option<Arc<ZoneLookup>>,
    rejects: tokio::sync::mpsc::Sender<Vec<Rejected>>,
    cancel: Arc<AtomicBool>,
    progress: bool,
) -> anyhow::Result<(Layout, Intook)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let writers = DayWriters::start(dir, cores)?;
    let new_intake = || -> anyhow::Result<Intake> {
        let output = Output::new(&writers, &source.sha256, h3_resolution, zones.clone())?;
        Intake::new(output, rejects.clone(), cancel.clone())
    };
    let read = match source.format {
        Format::Parquet => new_intake().and_then(|mut intake| {
            let layout = read_parquet::read(source, &mut intake, progress)?;
            Ok((layout, intake.finish()?))
        }),
        Format::Csv | Format::GzipCsv => read_csv::read(source, &new_intake, progress),
    };
    // Every reader's sink is gone: the writers finish. Their error explains a reader's
    // "the writer stopped", so it comes first.
    let files = writers.finish()?;
    let (layout, counted) = read?;
    Ok((layout, Intook { counted, files }))
}

/// The local day files of one import: an empty directory at the start, removed at the end
/// whatever happened (they are rebuilt from the source file when needed).
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(dir: PathBuf) -> anyhow::Result<Scratch> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the leftovers in {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| {
            format!("creating the import's scratch directory {}", dir.display())
        })?;
        Ok(Scratch { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the import's scratch directory");
        }
    }
}
