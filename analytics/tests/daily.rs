//! The daily aggregation end to end: the bridge's tables in PostgreSQL, exported to the lake
//! (the embedded S3 server), aggregated by DataFusion, stored in `daily_fleet` and
//! `daily_zone`, published back to the lake and read there by DuckDB. Days of Europe/Berlin
//! around the autumn change (2026-10-25 has 25 hours), counted by hand in daily/world.rs.

#[path = "support/mod.rs"]
mod support;
#[path = "daily/world.rs"]
mod world;

use std::sync::Arc;

use analytics::daily::schedule::DayJobs;
use analytics::daily::{self, Aggregator};
use analytics::lake::{schema, Lake};
use arrow::array::TimestampMicrosecondArray;
use arrow::array::{new_null_array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use world::{date, zone, Database, A, B};

/// Every stored column but the times, as text, by day and source.
const FLEET_ROWS: &str = "SELECT day::text, source, trips::text, revenue_cents::text, \
    distance_m::text, active_taxis::text, positions::text, avg_fare_cents::text, \
    flagged_invoices::text, orders_accepted::text, orders_rejected::text, \
    orders_expired::text, orders_open::text, cumulative_trips::text \
    FROM daily_fleet ORDER BY day, source";

const ZONE_ROWS: &str = "SELECT day::text, source, zone, trips::text, revenue_cents::text, \
    distance_m::text, active_taxis::text, positions::text, avg_fare_cents::text \
    FROM daily_zone ORDER BY day, source, zone";

fn lines(rows: &[&str]) -> Vec<String> {
    rows.iter().map(|r| r.to_string()).collect()
}

/// The zone rows of the world's fleet days, sorted like [`ZONE_ROWS`].
fn expected_zones(late_tour: bool) -> Vec<String> {
    let (a, b) = (zone(A), zone(B));
    let day_24_b = if late_tour {
        // t8 started at B: two trips, 2000 + 700 cents, 4500.5 + 1500 m.
        format!("2026-10-24|fleet|{b}|2|2700|6000.5|1|1|1350")
    } else {
        format!("2026-10-24|fleet|{b}|1|2000|4500.5|1|1|2000")
    };
    let mut rows = vec![
        format!("2026-10-23|fleet|{a}|0|0|0|1|1|"),
        format!("2026-10-24|fleet|{a}|1|1500|3000|1|2|1500"),
        day_24_b,
        // t3 (invoiced) and t5 (not) started at A; t4 at B. Positions: taxi-1 and taxi-3 at
        // A; taxi-2 twice (both 02:30s) and taxi-3 at B.
        format!("2026-10-25|fleet|{a}|2|1234|2000.25|2|2|1234"),
        format!("2026-10-25|fleet|{b}|1|3000|10000|2|3|3000"),
        format!("2026-10-26|fleet|{b}|1|999|1000|1|1|999"),
    ];
    rows.sort();
    rows
}

/// What the lake's daily_fleet says, read by DuckDB from the embedded server's directory.
fn lake_fleet(bucket_dir: &std::path::Path) -> Vec<String> {
    world::duckdb(&format!(
        "SELECT CAST(dt AS VARCHAR), CAST(day AS VARCHAR), source, trips, revenue_cents, \
                positions, orders_open, cumulative_trips, filename LIKE '%/' || source || '.parquet' \
         FROM read_parquet('{}/lake/daily_fleet/*/*.parquet', hive_partitioning = true, \
                           filename = true) \
         ORDER BY day, source",
        bucket_dir.display()
    ))
}

fn lake_zone_count(bucket_dir: &std::path::Path) -> Vec<String> {
    world::duckdb(&format!(
        "SELECT CAST(dt AS VARCHAR), count(*), sum(trips), sum(positions) \
         FROM read_parquet('{}/lake/daily_zone/*/*.parquet', hive_partitioning = true) \
         GROUP BY dt ORDER BY dt",
        bucket_dir.display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_around_the_autumn_change_are_exact_idempotent_and_a_late_row_moves_only_its_day() {
    let mut db = Database::start().await;
    world::add_fleet_rows(&mut db).await;
    let dir = tempfile::tempdir().unwrap();
    let s3 = world::embedded(&dir.path().join("s3")).await;
    let config = world::config(
        &db.postgres.url(),
        dir.path().join("data"),
        &s3.endpoint,
        (&s3.access_key_id, &s3.secret_access_key),
    );
    let bucket_dir = dir.path().join("s3").join(&config.lake.bucket);

    // Catching up at start: from the oldest data (a position at 23:59:59 on 10-23) to
    // yesterday.
    let mut aggregator = Aggregator::new(Arc::new(config.clone())).await.unwrap();
    assert_eq!(
        aggregator
            .missing_fleet_days(date("2026-10-26"))
            .await
            .unwrap(),
        vec![
            date("2026-10-23"),
            date("2026-10-24"),
            date("2026-10-25"),
            date("2026-10-26")
        ]
    );
    aggregator.catch_up(date("2026-10-26")).await.unwrap();
    assert!(aggregator
        .missing_fleet_days(date("2026-10-26"))
        .await
        .unwrap()
        .is_empty());

    // day|source|trips|revenue|distance|taxis|positions|avg fare|flagged|orders
    // accepted|rejected|expired|open|cumulative trips
    let first_run = lines(&[
        "2026-10-23|fleet|0|0|0|1|1||0|0|0|0|0|0",
        // t1, t2 (ended at 23:59:59); o1 at 00:00:00, o2, o3 at 23:59:59 (m1 is a message).
        "2026-10-24|fleet|2|3500|7500.5|2|3|1750|1|1|1|0|1|2",
        // 25 hours: t3 (ended 00:10), t4 (repeated hour), t5 (25th hour, no invoice);
        // positions at 00:00:00, 02:30 CEST, 02:30 CET, 23:30 and 23:59:59 CET.
        "2026-10-25|fleet|3|4234|12000.25|3|5|2117|1|1|0|1|2|5",
        "2026-10-26|fleet|1|999|1000|1|1|999|0|1|0|0|0|6",
    ]);
    assert_eq!(db.rows(FLEET_ROWS).await, first_run);
    assert_eq!(db.rows(ZONE_ROWS).await, expected_zones(false));
    // The lake has the same rows, one `fleet` part per day.
    let lake_first = lines(&[
        "2026-10-23|2026-10-23|fleet|0|0|1|0|0|True",
        "2026-10-24|2026-10-24|fleet|2|3500|3|1|2|True",
        "2026-10-25|2026-10-25|fleet|3|4234|5|2|5|True",
        "2026-10-26|2026-10-26|fleet|1|999|1|0|6|True",
    ]);
    assert_eq!(lake_fleet(&bucket_dir), lake_first);
    assert_eq!(
        lake_zone_count(&bucket_dir),
        lines(&[
            "2026-10-23|1|0|1",
            "2026-10-24|2|2|3",
            "2026-10-25|2|3|5",
            "2026-10-26|1|1|1"
        ])
    );
    assert!(db
        .rows("SELECT day::text FROM daily_fleet WHERE published_at IS NULL OR zones_published_at IS NULL")
        .await
        .is_empty());

    // Running the days again (`analytics aggregate`) replaces them with the same rows.
    daily::recompute(&config, date("2026-10-23"), date("2026-10-26"))
        .await
        .unwrap();
    assert_eq!(db.rows(FLEET_ROWS).await, first_run);
    assert_eq!(db.rows(ZONE_ROWS).await, expected_zones(false));
    assert_eq!(lake_fleet(&bucket_dir), lake_first);

    // A tour of 10-24 stored late: recomputing 10-24 changes that day and the running total
    // of the days after it, nothing else; the lake follows.
    let before = db
        .rows("SELECT day::text, computed_at::text FROM daily_fleet WHERE day <> '2026-10-24' ORDER BY day")
        .await;
    db.client
        .batch_execute(
            "INSERT INTO tours (tour_id, taxi_id, state, started_seq, started_at, start_lat, start_lon,
                                ended_seq, ended_at, end_lat, end_lon, meter_cents, updated_at)
             VALUES ('t8', 'taxi-2', 'ended', 9, '2026-10-24T05:00:00Z', 52.507, 13.332, 10,
                     '2026-10-24T05:20:00Z', 52.52, 13.405, 700, now());
             INSERT INTO invoices (tour_id, taxi_id, started_at, ended_at, track_points, distance_m,
                                   driving_s, waiting_s, base_cents, distance_cents, driving_cents,
                                   waiting_cents, night_cents, zone_cents, zones, fare_cents,
                                   currency, meter_cents, difference_cents, flagged, flag_reason,
                                   order_id, issued_at)
             SELECT tour_id, taxi_id, started_at, ended_at, 5, 1500, 600, 60, 390, 0, 0, 0, 0, 0,
                    ARRAY[]::text[], 700, 'EUR', 700, 0, false, NULL, 'invoice-t8', ended_at
             FROM tours WHERE tour_id = 't8';",
        )
        .await
        .unwrap();
    daily::recompute(&config, date("2026-10-24"), date("2026-10-24"))
        .await
        .unwrap();
    assert_eq!(
        db.rows(FLEET_ROWS).await,
        lines(&[
            "2026-10-23|fleet|0|0|0|1|1||0|0|0|0|0|0",
            "2026-10-24|fleet|3|4200|9000.5|2|3|1400|1|1|1|0|1|3",
            "2026-10-25|fleet|3|4234|12000.25|3|5|2117|1|1|0|1|2|6",
            "2026-10-26|fleet|1|999|1000|1|1|999|0|1|0|0|0|7",
        ])
    );
    assert_eq!(db.rows(ZONE_ROWS).await, expected_zones(true));
    let after = db
        .rows("SELECT day::text, computed_at::text FROM daily_fleet WHERE day <> '2026-10-24' ORDER BY day")
        .await;
    assert_eq!(after, before, "only 10-24 was aggregated again");
    assert_eq!(
        lake_fleet(&bucket_dir),
        lines(&[
            "2026-10-23|2026-10-23|fleet|0|0|1|0|0|True",
            "2026-10-24|2026-10-24|fleet|3|4200|3|1|3|True",
            "2026-10-25|2026-10-25|fleet|3|4234|5|2|6|True",
            "2026-10-26|2026-10-26|fleet|1|999|1|0|7|True",
        ])
    );
}

/// A trips_nyc part for `day` with `trips`: (zone, total, fare, distance).
fn nyc_part(path: &std::path::Path, day: &str, trips: &[(Option<&str>, i64, i64, f64)]) {
    let schema = schema::trips_nyc();
    let n = trips.len();
    let pickup: i64 = format!("{day}T15:00:00-05:00")
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_microsecond();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| -> ArrayRef {
            match field.name().as_str() {
                "source_file" => Arc::new(StringArray::from(vec!["f"; n])),
                "line" => Arc::new(Int64Array::from_iter_values(0..n as i64)),
                "pickup_at" | "dropoff_at" => {
                    Arc::new(TimestampMicrosecondArray::from(vec![pickup; n]).with_timezone("UTC"))
                }
                "distance_m" => Arc::new(Float64Array::from_iter_values(trips.iter().map(|t| t.3))),
                "zone" => Arc::new(StringArray::from(
                    trips.iter().map(|t| t.0).collect::<Vec<_>>(),
                )),
                "fare_cents" => Arc::new(Int64Array::from_iter_values(trips.iter().map(|t| t.2))),
                "tip_cents" | "tolls_cents" => Arc::new(Int64Array::from(vec![0; n])),
                "total_cents" => Arc::new(Int64Array::from_iter_values(trips.iter().map(|t| t.1))),
                _ => new_null_array(field.data_type(), n),
            }
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        file,
        schema,
        Some(analytics::lake::writer_properties()),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_nyc_days_are_aggregated_apart_from_the_fleet_and_caught_up() {
    let db = Database::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s3 = world::embedded(&dir.path().join("s3")).await;
    let config = world::config(
        &db.postgres.url(),
        dir.path().join("data"),
        &s3.endpoint,
        (&s3.access_key_id, &s3.secret_access_key),
    );
    let lake = Lake::open(&config.lake).await.unwrap();
    let file = dir.path().join("trips.parquet");
    nyc_part(
        &file,
        "2025-01-05",
        &[
            (Some("tlc:132"), 2_000, 1_500, 1_000.0),
            (Some("tlc:132"), 3_050, 2_400, 2_000.5),
            (None, 1_500, 900, 500.0),
        ],
    );
    lake.publish_file("trips_nyc", date("2025-01-05"), "f", &file)
        .await
        .unwrap();
    nyc_part(&file, "2025-01-06", &[(Some("tlc:48"), 1_000, 800, 300.0)]);
    lake.publish_file("trips_nyc", date("2025-01-06"), "f", &file)
        .await
        .unwrap();

    // What the import does once its files are in the lake.
    daily::aggregate_nyc_days(&config, &[date("2025-01-05")])
        .await
        .unwrap();
    assert_eq!(
        db.rows(FLEET_ROWS).await,
        // Revenue is the total paid; the average fare the metered fare (4800 / 3). No taxis,
        // positions, invoices or orders in the TLC records.
        lines(&["2025-01-05|nyc|3|6550|3500.5|||1600||||||3"])
    );
    assert_eq!(
        db.rows(ZONE_ROWS).await,
        lines(&[
            "2025-01-05|nyc|tlc:132|2|5050|3000.5|||1950",
            "2025-01-05|nyc|unknown|1|1500|500|||900",
        ])
    );

    // At start, the NYC days in the lake without a row are caught up (there is no fleet data).
    let mut aggregator = Aggregator::new(Arc::new(config.clone())).await.unwrap();
    assert_eq!(
        aggregator.missing_nyc_days().await.unwrap(),
        vec![date("2025-01-06")]
    );
    aggregator.catch_up(date("2026-10-26")).await.unwrap();
    assert_eq!(
        db.rows(FLEET_ROWS).await,
        lines(&[
            "2025-01-05|nyc|3|6550|3500.5|||1600||||||3",
            "2025-01-06|nyc|1|1000|300|||800||||||4",
        ])
    );
    let bucket_dir = dir.path().join("s3").join(&config.lake.bucket);
    assert_eq!(
        lake_fleet(&bucket_dir),
        lines(&[
            "2025-01-05|2025-01-05|nyc|3|6550|||3|True",
            "2025-01-06|2025-01-06|nyc|1|1000|||4|True",
        ])
    );
}
