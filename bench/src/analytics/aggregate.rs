//! The batch layer's daily aggregation under measure: one day of N positions (plus tours
//! with invoices and orders) written to the lake as the export writes them, then aggregated
//! by the batch layer (DataFusion over the lake's S3 objects) and by DuckDB running the same
//! aggregates over the same Parquet files (from the embedded server's directory: DuckDB's
//! S3 extension cannot be downloaded here). Each side runs three times; the median counts.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use arrow::array::{
    new_null_array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{duckdb, say};

/// The aggregated day.
const DAY: &str = "2026-06-10";
/// Local midnight of [`DAY`] in Europe/Berlin (UTC+2 in June), in microseconds.
const DAY_START_US: i64 = 1_781_042_400_000_000;
const TAXIS: usize = 2_000;
const ROWS_PER_BATCH: usize = 1 << 20;

/// What the phase measured.
#[derive(Clone, Debug)]
pub struct AggregateResult {
    pub positions: u64,
    pub ours_s: f64,
    pub duckdb_s: f64,
}

pub async fn run(positions: u64) -> Result<AggregateResult> {
    duckdb::check()?;
    let dir = tempfile::Builder::new()
        .prefix("bench-aggregate-")
        .tempdir()
        .context("creating a scratch directory")?;
    let s3_dir = dir.path().join("s3");
    let s3 =
        bridge::archive::embedded::start_embedded(&s3_dir, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await?;
    let mut config = analytics::Config::default();
    config.lake.endpoint = s3.endpoint.clone();
    config.lake.access_key_id = s3.access_key_id.clone();
    config.lake.secret_access_key = s3.secret_access_key.clone();
    config.data_dir = dir.path().join("analytics");
    std::fs::create_dir_all(&config.data_dir).context("creating the data directory")?;
    let lake = analytics::lake::Lake::open(&config.lake).await?;
    let day: jiff::civil::Date = DAY.parse().context("the benchmark's day")?;
    let resolution = config.windows.h3_resolution;

    say(
        "aggregate",
        format!("writing {positions} positions of {TAXIS} taxis for {DAY} to the lake"),
    );
    for (dataset, rows) in [
        ("positions", positions),
        ("tours", positions / 200),
        ("orders", positions / 400),
    ] {
        let file = config.data_dir.join(format!("{dataset}.parquet"));
        let file_for_task = file.clone();
        let dataset_name = dataset.to_owned();
        tokio::task::spawn_blocking(move || {
            write_dataset(&dataset_name, rows, resolution, &file_for_task)
        })
        .await
        .context("writing a dataset")??;
        lake.publish_file(dataset, day, "part-0", &file).await?;
        let _ = std::fs::remove_file(&file);
    }

    say(
        "aggregate",
        "the batch layer (DataFusion over the lake), 3 runs".to_owned(),
    );
    let mut ours = Vec::new();
    let mut trips = 0;
    for _ in 0..3 {
        let started = Instant::now();
        // The session the daily job aggregates with: the datasets only, no file area.
        let ctx = lake.session_of(analytics::lake::schema::DATASETS).await?;
        let summary = analytics::daily::fleet::summarize(&ctx, day).await?;
        ours.push(started.elapsed().as_secs_f64());
        trips = summary.totals.trips;
        if summary.totals.positions != Some(positions as i64) {
            anyhow::bail!(
                "the batch layer counted {:?} positions of {positions}",
                summary.totals.positions
            );
        }
    }
    say(
        "aggregate",
        "DuckDB, the same aggregates over the same files, 3 runs".to_owned(),
    );
    let lake_dir = s3_dir
        .join(&config.lake.bucket)
        .join(config.lake.prefix.trim_matches('/'));
    let day_arg = Path::new(DAY);
    let (_, value) = tokio::task::spawn_blocking(move || {
        duckdb::run(AGGREGATE_SQL, &[lake_dir.as_path(), day_arg])
    })
    .await
    .context("DuckDB task")??;
    let duckdb_runs: Vec<f64> = value["seconds"]
        .as_array()
        .map(|runs| runs.iter().filter_map(|s| s.as_f64()).collect())
        .unwrap_or_default();
    let duckdb_positions = value["positions"].as_i64().unwrap_or(-1);
    let duckdb_trips = value["trips"].as_i64().unwrap_or(-1);
    if duckdb_positions != positions as i64 || duckdb_trips != trips {
        anyhow::bail!(
            "DuckDB counted {duckdb_positions} positions and {duckdb_trips} trips; the batch layer {positions} and {trips}"
        );
    }
    drop(s3);
    Ok(AggregateResult {
        positions,
        ours_s: median(ours),
        duckdb_s: median(duckdb_runs),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The batch layer's three queries (`daily::fleet`), in DuckDB over the local files.
const AGGREGATE_SQL: &str = r#"
import json, sys, time, duckdb
lake, day = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
def table(name):
    return f"read_parquet('{lake}/{name}/*/*.parquet', hive_partitioning=true)"
runs = []
for _ in range(3):
    started = time.perf_counter()
    zones = con.execute(f"SELECT zone, taxi_id, count(*) AS n FROM {table('positions')} WHERE dt = DATE '{day}' GROUP BY zone, taxi_id").fetchall()
    tours = con.execute(f"SELECT start_zone, count(*), sum(fare_cents), count(fare_cents), sum(distance_m), sum(CASE WHEN flagged THEN 1 ELSE 0 END) FROM {table('tours')} WHERE dt = DATE '{day}' GROUP BY start_zone").fetchall()
    orders = con.execute(f"SELECT state, count(*) FROM {table('orders')} WHERE dt = DATE '{day}' AND kind = 'order' GROUP BY state").fetchall()
    runs.append(time.perf_counter() - started)
print(json.dumps({"seconds": runs, "positions": sum(r[2] for r in zones), "trips": sum(r[1] for r in tours)}))
"#;

/// Writes `rows` rows of `dataset` for the day, in the lake's schema and sort order.
fn write_dataset(dataset: &str, rows: u64, resolution: u8, path: &Path) -> Result<()> {
    let schema = analytics::lake::schema::of(dataset).context("unknown dataset")?;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = ArrowWriter::try_new(
        file,
        schema.clone(),
        Some(analytics::lake::writer_properties()),
    )?;
    let mut rng = StdRng::seed_from_u64(7);
    let resolution = h3o::Resolution::try_from(resolution).context("H3 resolution")?;
    let rows = rows as usize;
    let per_taxi = rows.div_ceil(TAXIS);
    let mut written = 0;
    while written < rows {
        let n = ROWS_PER_BATCH.min(rows - written);
        let batch = match dataset {
            "positions" => positions(&schema, written, n, per_taxi, resolution, &mut rng)?,
            "tours" => tours(&schema, written, n, per_taxi, resolution, &mut rng)?,
            _ => orders(&schema, written, n, per_taxi, &mut rng)?,
        };
        writer.write(&batch)?;
        written += n;
    }
    writer.close()?;
    Ok(())
}

fn taxi_of(row: usize, per_taxi: usize) -> String {
    format!("taxi-{:05}", row / per_taxi.max(1))
}

/// A time of the day: rows of one taxi in order through the day.
fn time_of(row: usize, per_taxi: usize) -> i64 {
    let index = (row % per_taxi.max(1)) as i64;
    DAY_START_US + index * (86_400_000_000 / per_taxi.max(1) as i64)
}

fn point(rng: &mut StdRng) -> (f64, f64) {
    (
        rng.random_range(52.40..52.62),
        rng.random_range(13.20..13.60),
    )
}

fn zone(lat: f64, lon: f64, resolution: h3o::Resolution) -> Result<String> {
    let cell = h3o::LatLng::new(lat, lon)
        .context("coordinates")?
        .to_cell(resolution);
    Ok(cell.to_string())
}

fn positions(
    schema: &SchemaRef,
    first: usize,
    n: usize,
    per_taxi: usize,
    resolution: h3o::Resolution,
    rng: &mut StdRng,
) -> Result<RecordBatch> {
    let rows = first..first + n;
    let mut lat = Vec::with_capacity(n);
    let mut lon = Vec::with_capacity(n);
    let mut zones = Vec::with_capacity(n);
    for _ in rows.clone() {
        let (a, b) = point(rng);
        zones.push(zone(a, b, resolution)?);
        lat.push(a);
        lon.push(b);
    }
    let ts: Vec<i64> = rows.clone().map(|r| time_of(r, per_taxi)).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.clone().map(|r| taxi_of(r, per_taxi)),
        )),
        Arc::new(Int64Array::from_iter_values(rows.clone().map(|r| r as i64))),
        Arc::new(TimestampMicrosecondArray::from(ts.clone()).with_timezone("UTC")),
        Arc::new(Float64Array::from(lat)),
        Arc::new(Float64Array::from(lon)),
        Arc::new(Float32Array::from_iter_values(
            (0..n).map(|_| rng.random_range(0.0..60.0f32)),
        )),
        Arc::new(Float32Array::from_iter_values((0..n).map(|_| 90.0f32))),
        Arc::new(Float32Array::from_iter_values((0..n).map(|_| 5.0f32))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(ts.iter().map(|t| t + 50_000))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from(zones)),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn tours(
    schema: &SchemaRef,
    first: usize,
    n: usize,
    per_taxi: usize,
    resolution: h3o::Resolution,
    rng: &mut StdRng,
) -> Result<RecordBatch> {
    let rows = first..first + n;
    let ended: Vec<i64> = rows.clone().map(|r| time_of(r, per_taxi)).collect();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for field in schema.fields() {
        let column: ArrayRef = match field.name().as_str() {
            "tour_id" => Arc::new(StringArray::from_iter_values(
                rows.clone().map(|r| format!("tour-{r}")),
            )),
            "taxi_id" => Arc::new(StringArray::from_iter_values(
                rows.clone().map(|r| taxi_of(r, per_taxi)),
            )),
            "started_at" => Arc::new(
                TimestampMicrosecondArray::from_iter_values(ended.iter().map(|t| t - 600_000_000))
                    .with_timezone("UTC"),
            ),
            "ended_at" | "issued_at" => {
                Arc::new(TimestampMicrosecondArray::from(ended.clone()).with_timezone("UTC"))
            }
            "start_lat" | "end_lat" => {
                Arc::new(Float64Array::from_iter_values((0..n).map(|_| 52.52)))
            }
            "start_lon" | "end_lon" => {
                Arc::new(Float64Array::from_iter_values((0..n).map(|_| 13.40)))
            }
            "start_zone" | "end_zone" => {
                let mut zones = Vec::with_capacity(n);
                for _ in 0..n {
                    let (a, b) = point(rng);
                    zones.push(zone(a, b, resolution)?);
                }
                Arc::new(StringArray::from(zones))
            }
            "meter_cents" | "fare_cents" => Arc::new(Int64Array::from_iter_values(
                (0..n).map(|i| 800 + (i as i64 % 3000)),
            )),
            "distance_m" => Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| 1000.0 + i as f64 % 9000.0),
            )),
            "flagged" => Arc::new(BooleanArray::from_iter((0..n).map(|i| Some(i % 20 == 0)))),
            "currency" => Arc::new(StringArray::from_iter_values((0..n).map(|_| "EUR"))),
            _ => new_null_array(field.data_type(), n),
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn orders(
    schema: &SchemaRef,
    first: usize,
    n: usize,
    per_taxi: usize,
    rng: &mut StdRng,
) -> Result<RecordBatch> {
    let rows = first..first + n;
    let created: Vec<i64> = rows.clone().map(|r| time_of(r, per_taxi)).collect();
    let states = ["accepted", "rejected", "expired", "sent"];
    let mut columns: Vec<ArrayRef> = Vec::new();
    for field in schema.fields() {
        let column: ArrayRef = match field.name().as_str() {
            "order_id" => Arc::new(StringArray::from_iter_values(
                rows.clone().map(|r| format!("o-{r}")),
            )),
            "taxi_id" => Arc::new(StringArray::from_iter_values(
                rows.clone().map(|r| taxi_of(r, per_taxi)),
            )),
            "kind" => Arc::new(StringArray::from_iter_values((0..n).map(|_| "order"))),
            "sender" => Arc::new(StringArray::from_iter_values((0..n).map(|_| "bench"))),
            "created_at" => {
                Arc::new(TimestampMicrosecondArray::from(created.clone()).with_timezone("UTC"))
            }
            "state" => Arc::new(StringArray::from_iter_values(
                (0..n).map(|_| states[rng.random_range(0..states.len())]),
            )),
            "attempts" => Arc::new(Int32Array::from_iter_values((0..n).map(|_| 1))),
            _ => new_null_array(field.data_type(), n),
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
