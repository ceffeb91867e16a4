//! The daily aggregates in the lake: `daily_fleet` and `daily_zone`, one part per source
//! (`dt=<day>/fleet.parquet`, `dt=<day>/nyc.parquet`), so that each source replaces its own
//! object and never the other's. A day with no zones gets an empty part rather than keeping
//! a stale one. What is published is read back from PostgreSQL, the aggregates' own store,
//! so the lake shows exactly the committed rows; the rows PostgreSQL marks unpublished are
//! the ones sent ([`publish_unpublished`]).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use jiff::civil::Date;
use parquet::arrow::ArrowWriter;
use tokio_postgres::GenericClient;

use super::calendar::epoch_days;
use super::store;
use super::summary::{Source, StoredDay, ZoneRow};
use crate::lake::{self, schema, Lake};
use crate::Config;

/// Publishes every day of `source` whose lake copy is out of date (see
/// [`store::unpublished`]), oldest first; returns how many. The caller holds
/// [`store::lock`].
pub async fn publish_unpublished(
    config: &Config,
    lake: &Lake,
    client: &tokio_postgres::Client,
    source: Source,
) -> anyhow::Result<usize> {
    let days = store::unpublished(client, source).await?;
    for day in &days {
        if day.row {
            publish_fleet_day(config, lake, client, day.day, source).await?;
        }
        if day.zones {
            publish_zone_day(config, lake, client, day.day, source).await?;
        }
        store::mark_published(client, day.day, source).await?;
    }
    Ok(days.len())
}

/// Publishes the `daily_fleet` row of `day` and `source` (an empty part if it has none).
pub async fn publish_fleet_day(
    config: &Config,
    lake: &Lake,
    client: &impl GenericClient,
    day: Date,
    source: Source,
) -> anyhow::Result<()> {
    let rows: Vec<StoredDay> = store::stored_day(client, day, source)
        .await?
        .into_iter()
        .collect();
    let batch = fleet_batch(&rows)?;
    publish(config, lake, "daily_fleet", day, source, batch).await
}

/// Publishes the `daily_zone` rows of `day` and `source`.
pub async fn publish_zone_day(
    config: &Config,
    lake: &Lake,
    client: &impl GenericClient,
    day: Date,
    source: Source,
) -> anyhow::Result<()> {
    let zones = store::stored_zones(client, day, source).await?;
    let batch = zone_batch(day, source, &zones)?;
    publish(config, lake, "daily_zone", day, source, batch).await
}

async fn publish(
    config: &Config,
    lake: &Lake,
    dataset: &str,
    day: Date,
    source: Source,
    batch: RecordBatch,
) -> anyhow::Result<()> {
    let dir = config.data_dir.join("daily");
    tokio::fs::create_dir_all(&dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("{dataset}-{day}-{source}.parquet"));
    write_parquet(&file, &batch)?;
    let published = lake.publish_file(dataset, day, source.name(), &file).await;
    if published.is_ok() {
        if let Err(e) = tokio::fs::remove_file(&file).await {
            tracing::debug!(file = %file.display(), error = %e, "cannot remove a published file");
        }
    }
    published
}

fn write_parquet(file: &Path, batch: &RecordBatch) -> anyhow::Result<()> {
    let write = |file: &Path| -> anyhow::Result<()> {
        let handle = std::fs::File::create(file)?;
        let mut writer =
            ArrowWriter::try_new(handle, batch.schema(), Some(lake::writer_properties()))?;
        writer.write(batch)?;
        writer.close()?;
        Ok(())
    };
    write(file).with_context(|| format!("writing {}", file.display()))
}

fn fleet_batch(rows: &[StoredDay]) -> anyhow::Result<RecordBatch> {
    let ints = |f: &dyn Fn(&StoredDay) -> Option<i64>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Int64Array>())
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Date32Array::from_iter_values(
            rows.iter().map(|r| epoch_days(r.day)),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.source.name()),
        )),
        ints(&|r| Some(r.totals.trips)),
        ints(&|r| Some(r.totals.revenue_cents)),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.totals.distance_m),
        )),
        ints(&|r| r.totals.active_taxis),
        ints(&|r| r.totals.positions),
        Arc::new(
            rows.iter()
                .map(|r| r.totals.avg_fare_cents)
                .collect::<Float64Array>(),
        ),
        ints(&|r| r.totals.flagged_invoices),
        ints(&|r| r.totals.orders.map(|o| o.accepted)),
        ints(&|r| r.totals.orders.map(|o| o.rejected)),
        ints(&|r| r.totals.orders.map(|o| o.expired)),
        ints(&|r| r.totals.orders.map(|o| o.open)),
        ints(&|r| Some(r.cumulative_trips)),
    ];
    batch(schema::daily_fleet(), columns, "daily_fleet")
}

fn zone_batch(day: Date, source: Source, zones: &[ZoneRow]) -> anyhow::Result<RecordBatch> {
    let ints = |f: &dyn Fn(&ZoneRow) -> Option<i64>| -> ArrayRef {
        Arc::new(zones.iter().map(f).collect::<Int64Array>())
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Date32Array::from(vec![epoch_days(day); zones.len()])),
        Arc::new(StringArray::from(vec![source.name(); zones.len()])),
        Arc::new(StringArray::from_iter_values(
            zones.iter().map(|z| z.zone.as_str()),
        )),
        ints(&|z| Some(z.trips)),
        ints(&|z| Some(z.revenue_cents)),
        Arc::new(Float64Array::from_iter_values(
            zones.iter().map(|z| z.distance_m),
        )),
        ints(&|z| z.active_taxis),
        ints(&|z| z.positions),
        Arc::new(
            zones
                .iter()
                .map(|z| z.avg_fare_cents)
                .collect::<Float64Array>(),
        ),
    ];
    batch(schema::daily_zone(), columns, "daily_zone")
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>, dataset: &str) -> anyhow::Result<RecordBatch> {
    RecordBatch::try_new(schema, columns)
        .with_context(|| format!("building a {dataset} record batch"))
}
