//! What every analytics test starts from: a PostgreSQL with the bridge's and the analytics
//! layer's schema (every migration, as the service applies them), its rows read back as
//! text, the embedded S3 server, and DuckDB for reading the lake as plain files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use analytics::Config;
use anyhow::{bail, Context};
use testkit::postgres::TestPostgres;

/// A database with the bridge's tables and the analytics migrations.
pub struct Database {
    pub postgres: TestPostgres,
    pub client: tokio_postgres::Client,
}

impl Database {
    pub async fn start() -> Database {
        let postgres = TestPostgres::builder().fsync(false).start().unwrap();
        let url = postgres.url();
        let mut store = bridge::store::Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let mut config = Config::default();
        config.postgres.url = url.clone();
        analytics::db::migrate(&config.postgres).await.unwrap();
        let client = analytics::db::connect_once(&url).await.unwrap();
        Database { postgres, client }
    }

    /// The URL of the database.
    pub fn url(&self) -> String {
        self.postgres.url()
    }

    /// Creates the `positions` partitions of `days` UTC days from `first`.
    pub async fn position_partitions(&mut self, first: jiff::civil::Date, days: i64) {
        let first = first
            .to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_millisecond()
            / bridge::store::partitions::DAY_MS;
        let days: Vec<i64> = (first..first + days).collect();
        bridge::store::partitions::create(&mut self.client, &days)
            .await
            .unwrap();
    }

    /// Rows of a query as text: columns joined with `|`, NULL as an empty string.
    pub async fn rows(&self, sql: &str) -> Vec<String> {
        text_rows(&self.client, sql).await
    }
}

/// Rows of `sql` on `client` as text: columns joined with `|`, NULL as an empty string.
pub async fn text_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| row.get::<_, Option<String>>(i).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

pub fn date(text: &str) -> jiff::civil::Date {
    text.parse().unwrap()
}

/// The analytics configuration of the tests: the database, a scratch directory, days of
/// Europe/Berlin, the lake at `endpoint` with quick retries.
pub fn config(db_url: &str, data_dir: PathBuf, endpoint: &str, access: (&str, &str)) -> Config {
    let mut config = Config::default();
    config.postgres.url = db_url.to_owned();
    config.data_dir = data_dir;
    config.time_zone = "Europe/Berlin".to_owned();
    config.lake.endpoint = endpoint.to_owned();
    config.lake.access_key_id = access.0.to_owned();
    config.lake.secret_access_key = access.1.to_owned();
    config.lake.publish_attempts = 3;
    config.lake.min_backoff_ms = 50;
    config.lake.max_backoff_ms = 200;
    config.lake.connect_timeout_ms = 1_000;
    config.lake.request_timeout_ms = 10_000;
    config.validate().unwrap();
    config
}

/// The embedded S3 server over `dir` on `addr` (port 0: any).
pub async fn embedded_on(dir: &Path, addr: &str) -> bridge::archive::EmbeddedS3 {
    bridge::archive::start_embedded(dir, addr.parse().unwrap())
        .await
        .unwrap()
}

/// The embedded S3 server over `dir` on any free loopback port.
pub async fn embedded(dir: &Path) -> bridge::archive::EmbeddedS3 {
    embedded_on(dir, "127.0.0.1:0").await
}

/// Runs `sql` in DuckDB (Python); its rows as `|`-joined text (NULL: empty), or DuckDB's
/// error.
pub fn try_duckdb(sql: &str) -> anyhow::Result<Vec<String>> {
    let script = "import sys, duckdb\n\
                  for row in duckdb.sql(sys.argv[1]).fetchall():\n    \
                  print('|'.join('' if v is None else str(v) for v in row))";
    let output = Command::new("python3")
        .args(["-c", script, sql])
        .output()
        .context("running python3 (with duckdb: scripts/setup installs it)")?;
    if !output.status.success() {
        bail!(
            "duckdb failed on {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// [`try_duckdb`] that must succeed.
pub fn duckdb(sql: &str) -> Vec<String> {
    try_duckdb(sql).unwrap_or_else(|e| panic!("{e:#}"))
}
