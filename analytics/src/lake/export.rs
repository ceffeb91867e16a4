//! Exporting the platform's own tables (positions, tours, orders, windows) to the lake, one
//! local day at a time.
//!
//! A day is `[00:00, next 00:00)` in the configured time zone: 23 or 25 hours on the days
//! clocks change. Each dataset's rows are streamed out of PostgreSQL with a binary `COPY`
//! (constant memory, whatever the day's size), already sorted by the query, turned into Arrow
//! batches (with the H3 zone of each point), written to one local zstd Parquet file under
//! `data_dir/lake/` and published as the day's only part, `part-0`. Exporting a day again
//! (late data, a replay) replaces it; a day that has no rows any more loses its object.
//! Each publication is recorded in `lake_exports`.

mod datasets;
mod rows;

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use futures_util::{pin_mut, TryStreamExt};
use parquet::arrow::AsyncArrowWriter;
use tokio_postgres::binary_copy::BinaryCopyOutStream;

use crate::lake::{schema, writer_properties, Lake};
use crate::Config;

use datasets::{Export, Source, EXPORTS};
use rows::{pg_type, Batcher};

/// Rows per Arrow batch handed to the Parquet writer.
const BATCH_ROWS: usize = 8_192;

/// The part every exported day is published as.
pub const PART: &str = "part-0";

/// What one day's export did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportStats {
    pub day: jiff::civil::Date,
    /// One entry per dataset, in export order.
    pub datasets: Vec<DatasetExport>,
}

/// One dataset of one day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetExport {
    pub dataset: &'static str,
    /// Rows published (0: the day's object was removed, or there was none).
    pub rows: u64,
    /// Size of the published object.
    pub bytes: u64,
    /// The dataset's table does not exist (yet): nothing was done.
    pub skipped: bool,
}

impl ExportStats {
    /// Rows published for `dataset`, if it was exported.
    pub fn rows(&self, dataset: &str) -> Option<u64> {
        self.datasets
            .iter()
            .find(|d| d.dataset == dataset && !d.skipped)
            .map(|d| d.rows)
    }
}

/// Publishes positions, tours, orders and windows of the local `day` (in `config.tz()`).
pub async fn export_day(
    config: &Config,
    lake: &Lake,
    client: &tokio_postgres::Client,
    day: jiff::civil::Date,
) -> anyhow::Result<ExportStats> {
    let tz = config.tz();
    let start = day
        .to_zoned(tz.clone())
        .with_context(|| format!("lake export: the start of {day} in {}", config.time_zone))?
        .timestamp();
    let end = day
        .tomorrow()
        .and_then(|next| next.to_zoned(tz))
        .with_context(|| format!("lake export: the end of {day} in {}", config.time_zone))?
        .timestamp();
    let resolution = h3o::Resolution::try_from(config.windows.h3_resolution)
        .map_err(|e| anyhow!("windows.h3_resolution: {e}"))?;
    let dir = config.data_dir.join("lake");
    tokio::fs::create_dir_all(&dir)
        .await
        .with_context(|| format!("lake export: creating {}", dir.display()))?;
    let mut stats = ExportStats {
        day,
        datasets: Vec::new(),
    };
    for export in EXPORTS {
        if let Some(table) = export.optional_table {
            let exists: Option<String> = client
                .query_one("SELECT to_regclass($1)::text", &[&table])
                .await
                .with_context(|| format!("lake export: looking for the table {table}"))?
                .get(0);
            if exists.is_none() {
                tracing::warn!(
                    dataset = export.dataset,
                    table,
                    "lake export: no such table yet; skipped"
                );
                stats.datasets.push(DatasetExport {
                    dataset: export.dataset,
                    rows: 0,
                    bytes: 0,
                    skipped: true,
                });
                continue;
            }
        }
        let file = dir.join(format!("{}-{day}.parquet", export.dataset));
        let (rows, bytes) = export_one(export, client, lake, day, start, end, resolution, &file)
            .await
            .with_context(|| format!("lake export of {} for {day}", export.dataset))?;
        record(client, export.dataset, day, rows, bytes).await?;
        stats.datasets.push(DatasetExport {
            dataset: export.dataset,
            rows,
            bytes,
            skipped: false,
        });
    }
    tracing::info!(day = %day, ?stats.datasets, "lake export done");
    Ok(stats)
}

/// Writes one dataset's day to `file` and publishes it (or removes the day if it is empty).
#[allow(clippy::too_many_arguments)]
async fn export_one(
    export: &Export,
    client: &tokio_postgres::Client,
    lake: &Lake,
    day: jiff::civil::Date,
    start: jiff::Timestamp,
    end: jiff::Timestamp,
    resolution: h3o::Resolution,
    file: &PathBuf,
) -> anyhow::Result<(u64, u64)> {
    let schema =
        schema::of(export.dataset).ok_or_else(|| anyhow!("{} has no schema", export.dataset))?;
    let mut select = Vec::new();
    let mut types = Vec::new();
    for ((name, source), field) in export.columns.iter().zip(schema.fields()) {
        if let Source::Sql(expr) = source {
            let (ty, cast) = pg_type(field.data_type())?;
            select.push(format!("({expr})::{cast} AS {name}"));
            types.push(ty);
        }
    }
    // COPY takes no parameters: the bounds are literals we format ourselves.
    let from_where = export
        .from_where
        .replace("{start}", &format!("'{start}'::timestamptz"))
        .replace("{end}", &format!("'{end}'::timestamptz"));
    let sql = format!(
        "COPY (SELECT {} {from_where} ORDER BY {}) TO STDOUT (FORMAT binary)",
        select.join(", "),
        export.order_by
    );
    let copy = client
        .copy_out(sql.as_str())
        .await
        .context("reading from PostgreSQL")?;
    let stream = BinaryCopyOutStream::new(copy, &types);
    pin_mut!(stream);

    let output = tokio::fs::File::create(file)
        .await
        .with_context(|| format!("creating {}", file.display()))?;
    let mut writer = AsyncArrowWriter::try_new(output, schema.clone(), Some(writer_properties()))
        .with_context(|| format!("writing {}", file.display()))?;
    let mut batcher = Batcher::new(export, schema, resolution)?;
    let mut rows: u64 = 0;
    while let Some(row) = stream.try_next().await.context("reading from PostgreSQL")? {
        rows += 1;
        batcher.push(&row, rows)?;
        if batcher.len() >= BATCH_ROWS {
            writer
                .write(&batcher.finish()?)
                .await
                .with_context(|| format!("writing {}", file.display()))?;
        }
    }
    if batcher.len() > 0 {
        writer
            .write(&batcher.finish()?)
            .await
            .with_context(|| format!("writing {}", file.display()))?;
    }
    writer
        .close()
        .await
        .with_context(|| format!("finishing {}", file.display()))?;

    if rows == 0 {
        remove_local(file).await;
        lake.remove_day(export.dataset, day).await?;
        return Ok((0, 0));
    }
    let bytes = tokio::fs::metadata(file)
        .await
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    lake.publish_file(export.dataset, day, PART, file).await?;
    // A day exported earlier with more parts (none today, but any engine may have left one)
    // keeps only this one.
    lake.retain_parts(export.dataset, day, &[PART]).await?;
    remove_local(file).await;
    metrics::counter!("analytics_lake_exported_rows_total", "dataset" => export.dataset)
        .increment(rows);
    Ok((rows, bytes))
}

async fn remove_local(file: &PathBuf) {
    if let Err(e) = tokio::fs::remove_file(file).await {
        tracing::warn!(file = %file.display(), error = %e, "cannot remove a local lake file");
    }
}

/// Notes the publication in `lake_exports`.
async fn record(
    client: &tokio_postgres::Client,
    dataset: &str,
    day: jiff::civil::Date,
    rows: u64,
    bytes: u64,
) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO lake_exports (dataset, day, rows, bytes, exported_at) \
             VALUES ($1, $2::text::date, $3, $4, now()) \
             ON CONFLICT (dataset, day) DO UPDATE \
             SET rows = EXCLUDED.rows, bytes = EXCLUDED.bytes, exported_at = EXCLUDED.exported_at",
            &[&dataset, &day.to_string(), &(rows as i64), &(bytes as i64)],
        )
        .await
        .with_context(|| format!("lake export: recording {dataset} {day} in lake_exports"))?;
    Ok(())
}
