//! The import under measure: `analytics import` of a generated 2015-layout CSV (a child
//! process, so that its peak memory is its own) into the lake on the embedded S3 server,
//! against DuckDB converting the same file to Parquet. Two file sizes show whether memory
//! grows with the file.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use crate::ingest::database::Database;
use anyhow::{Context, Result};

use super::{duckdb, say, tlc};
use crate::child;

/// One import measured.
#[derive(Clone, Debug)]
pub struct ImportRun {
    pub rows: u64,
    pub bytes: u64,
    pub ours_s: f64,
    pub ours_peak_kib: u64,
    pub duckdb_s: f64,
    pub duckdb_peak_kib: u64,
}

impl ImportRun {
    pub fn ours_rows_per_s(&self) -> f64 {
        self.rows as f64 / self.ours_s
    }
    pub fn duckdb_rows_per_s(&self) -> f64 {
        self.rows as f64 / self.duckdb_s
    }
}

/// Imports a file of `rows / 5` rows, then one of `rows`.
pub async fn run(rows: u64) -> Result<Vec<ImportRun>> {
    let binary = child::sibling_binary("analytics")?;
    duckdb::check()?;
    let dir = tempfile::Builder::new()
        .prefix("bench-import-")
        .tempdir()
        .context("creating a scratch directory")?;
    say(
        "import",
        "starting PostgreSQL and the embedded S3 server".to_owned(),
    );
    let database = Database::start().await?;
    let url = database.create("import").await?;
    let s3 = bridge::archive::embedded::start_embedded(
        &dir.path().join("s3"),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await?;
    let mut runs = Vec::new();
    for (index, rows) in [(rows / 5).max(1), rows].into_iter().enumerate() {
        let csv = dir
            .path()
            .join(format!("yellow_tripdata_2015-01-{index}.csv"));
        say(
            "import",
            format!("generating {rows} trips in the 2015 CSV layout"),
        );
        let csv_for_task = csv.clone();
        let bytes = tokio::task::spawn_blocking(move || tlc::write_2015_csv(&csv_for_task, rows))
            .await
            .context("generating the CSV")??;
        say(
            "import",
            format!("{:.0} MB; analytics import", bytes as f64 / 1e6),
        );
        let mut command = Command::new(&binary);
        command
            .arg("import")
            .arg("--no-aggregate")
            .arg(&csv)
            .env("DATABASE_URL", &url)
            .env("ANALYTICS_DATA_DIR", dir.path().join("analytics"))
            .env("ANALYTICS_MQTT__ENABLED", "false")
            .env("ANALYTICS_LAKE__ENDPOINT", &s3.endpoint)
            .env("ANALYTICS_LAKE__ACCESS_KEY_ID", &s3.access_key_id)
            .env("ANALYTICS_LAKE__SECRET_ACCESS_KEY", &s3.secret_access_key)
            .env("RUST_LOG", "warn");
        let ours = tokio::task::spawn_blocking(move || child::run(command))
            .await
            .context("import task")??;
        say("import", "DuckDB: the same CSV to Parquet".to_owned());
        let parquet = dir.path().join(format!("duckdb-{index}.parquet"));
        let (csv_arg, parquet_arg) = (csv.clone(), parquet.clone());
        let (theirs, value) = tokio::task::spawn_blocking(move || {
            duckdb::run(duckdb::CSV_TO_PARQUET, &[&csv_arg, &parquet_arg])
        })
        .await
        .context("DuckDB task")??;
        let duckdb_rows = value["rows"].as_u64().unwrap_or(0);
        if duckdb_rows != rows {
            anyhow::bail!("DuckDB read {duckdb_rows} rows of {rows}");
        }
        let _ = std::fs::remove_file(&parquet);
        remove(&csv);
        runs.push(ImportRun {
            rows,
            bytes,
            ours_s: ours.elapsed.as_secs_f64(),
            ours_peak_kib: ours.peak_rss_kib,
            // The process's whole time, like ours (interpreter start included: ~0.1 s).
            duckdb_s: theirs.elapsed.as_secs_f64(),
            duckdb_peak_kib: theirs.peak_rss_kib,
        });
    }
    drop(s3);
    drop(database);
    Ok(runs)
}

fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}
