//! The lake tests' world: a PostgreSQL with the bridge's and the analytics layer's schema,
//! known rows around a daylight-saving change in Europe/Berlin, S3 servers, and DuckDB.

use std::path::Path;

pub use crate::support::{config, date, embedded_on as embedded, try_duckdb as duckdb, Database};

/// 2026-03-29: clocks go from 02:00 to 03:00 in Berlin, a day of 23 hours.
pub const DST_DAY: &str = "2026-03-29";
/// The ordinary day after it.
pub const NEXT_DAY: &str = "2026-03-30";

/// The database of the lake tests: every migration, position partitions for the UTC days
/// 2026-03-27 ..= 2026-04-01, and the fixture's rows.
pub async fn database() -> Database {
    let mut db = Database::start().await;
    db.position_partitions(jiff::civil::date(2026, 3, 27), 6)
        .await;
    db.client.batch_execute(ROWS).await.unwrap();
    db
}

/// Three taxis from 2026-03-28 22:00 UTC (23:00 in Berlin) for about 67 hours: positions
/// every 97 s, a tour every 2 hours (most invoiced, some flagged, the last one still
/// running), an order every 90 minutes in every final state, windows every 30 minutes.
const ROWS: &str = "
INSERT INTO positions (taxi_id, seq, ts, lat, lon, speed_kmh, heading_deg, accuracy_m, received_at)
SELECT 'taxi-' || t, s,
       timestamptz '2026-03-28 22:00:00+00' + s * interval '97 seconds' + t * interval '1 second',
       52.45 + t * 0.01 + (s % 50) * 0.001, 13.35 + (s % 70) * 0.001,
       CASE WHEN s % 7 = 0 THEN NULL ELSE (s % 60)::real END,
       CASE WHEN s % 11 = 0 THEN NULL ELSE (s % 360)::real END,
       5.0,
       timestamptz '2026-03-28 22:00:00+00' + s * interval '97 seconds' + interval '2 seconds'
FROM generate_series(1, 3) t, generate_series(0, 2500) s;

INSERT INTO tours (tour_id, taxi_id, state, started_seq, started_at, start_lat, start_lon,
                   ended_seq, ended_at, end_lat, end_lon, meter_cents, updated_at)
SELECT 'tour-' || t || '-' || k, 'taxi-' || t,
       CASE WHEN k = 30 THEN 'started' ELSE 'ended' END,
       k * 2, timestamptz '2026-03-28 21:00:00+00' + k * interval '2 hours',
       52.5 + t * 0.01, 13.4,
       CASE WHEN k = 30 THEN NULL ELSE k * 2 + 1 END,
       CASE WHEN k = 30 THEN NULL
            ELSE timestamptz '2026-03-28 21:00:00+00' + k * interval '2 hours' + interval '50 minutes' END,
       CASE WHEN k = 30 THEN NULL ELSE 52.52 END,
       CASE WHEN k = 30 THEN NULL ELSE 13.41 + t * 0.01 END,
       CASE WHEN k = 30 THEN NULL ELSE 1000 + k * 10 + t END,
       now()
FROM generate_series(1, 3) t, generate_series(0, 30) k;

INSERT INTO invoices (tour_id, taxi_id, started_at, ended_at, track_points, distance_m, driving_s,
                      waiting_s, base_cents, distance_cents, driving_cents, waiting_cents,
                      night_cents, zone_cents, zones, fare_cents, currency, meter_cents,
                      difference_cents, flagged, flag_reason, order_id, issued_at)
SELECT tour_id, taxi_id, started_at, ended_at, 10, 4200.5, 2400, 600, 390, 500, 0, 100,
       0, (meter_cents - 990 - (ended_seq % 4)), ARRAY['881f1d4887fffff'],
       meter_cents - (ended_seq % 4), 'EUR', meter_cents, ended_seq % 4,
       (ended_seq % 5 = 0), CASE WHEN ended_seq % 5 = 0 THEN 'meter differs' END,
       'invoice-' || tour_id, ended_at + interval '10 seconds'
FROM tours WHERE state = 'ended' AND started_seq % 6 <> 0;

INSERT INTO orders (order_id, taxi_id, kind, text, sender, created_at, expires_at, state,
                    updated_at, attempts)
SELECT 'order-' || t || '-' || k, 'taxi-' || t, 'order', 'pick up', 'dispatcher',
       timestamptz '2026-03-28 21:30:00+00' + k * interval '90 minutes',
       timestamptz '2026-03-28 21:30:00+00' + k * interval '90 minutes' + interval '5 minutes',
       'queued', timestamptz '2026-03-28 21:30:00+00' + k * interval '90 minutes', k % 3
FROM generate_series(1, 3) t, generate_series(0, 39) k;

SELECT order_advance(order_id, taxi_id, 'sent', created_at + interval '1 second', 'test', NULL)
FROM orders WHERE (split_part(order_id, '-', 3))::int % 4 <> 3;
SELECT order_advance(order_id, taxi_id, 'received', created_at + interval '2 seconds', 'test', NULL)
FROM orders WHERE (split_part(order_id, '-', 3))::int % 4 = 0;
SELECT order_advance(order_id, taxi_id, 'accepted', created_at + interval '3 seconds', 'test', NULL)
FROM orders WHERE (split_part(order_id, '-', 3))::int % 4 = 0;
SELECT order_advance(order_id, taxi_id, 'rejected', created_at + interval '4 seconds', 'test', 'busy')
FROM orders WHERE (split_part(order_id, '-', 3))::int % 4 = 1;
SELECT order_advance(order_id, taxi_id, 'expired', created_at + interval '5 minutes', 'test', NULL)
FROM orders WHERE (split_part(order_id, '-', 3))::int % 4 = 2;

INSERT INTO windows (window_start, window_end, zone, positions, taxis, avg_speed_kmh,
                     max_speed_kmh, tours_started, tours_ended, revenue_cents, orders_sent,
                     orders_accepted, late_events, computed_at)
SELECT timestamptz '2026-03-28 22:00:00+00' + k * interval '30 minutes',
       timestamptz '2026-03-28 22:00:00+00' + k * interval '30 minutes' + interval '10 seconds',
       z, k + 1, 3, CASE WHEN k % 3 = 0 THEN NULL ELSE 30.5 END,
       CASE WHEN k % 3 = 0 THEN NULL ELSE 50.0 END, k % 2, k % 3, k * 100, k % 4, k % 5, k % 2,
       now()
FROM generate_series(0, 120) k, unnest(ARRAY['fleet', '881f1d4887fffff']) z;
";

/// What PostgreSQL says each dataset holds per local day (Berlin) of `days`: the same
/// figures as [`LAKE_TOTALS`], as `dataset|day|figures...` lines.
pub async fn postgres_totals(db: &Database, days: &[&str]) -> Vec<String> {
    let days = days
        .iter()
        .map(|d| format!("DATE '{d}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let queries = [
        format!(
            "SELECT 'positions', d::text, count(*)::text, sum(seq)::text, count(speed_kmh)::text,
                    sum((round(lat * 1000000))::bigint)::text
             FROM (SELECT *, (ts AT TIME ZONE 'Europe/Berlin')::date AS d FROM positions) p
             WHERE d IN ({days}) GROUP BY d ORDER BY d"
        ),
        format!(
            "SELECT 'tours', d::text, count(*)::text, sum(t.meter_cents)::text,
                    count(i.fare_cents)::text, coalesce(sum(i.fare_cents), 0)::text,
                    sum(CASE WHEN i.flagged THEN 1 ELSE 0 END)::text
             FROM (SELECT *, (ended_at AT TIME ZONE 'Europe/Berlin')::date AS d FROM tours
                   WHERE state = 'ended') t
             LEFT JOIN invoices i ON i.tour_id = t.tour_id
             WHERE d IN ({days}) GROUP BY d ORDER BY d"
        ),
        format!(
            "SELECT 'orders', d::text, count(*)::text, sum(attempts)::text,
                    count(*) FILTER (WHERE EXISTS (SELECT 1 FROM order_events e
                        WHERE e.order_id = o.order_id AND e.state = 'sent'))::text,
                    count(*) FILTER (WHERE EXISTS (SELECT 1 FROM order_events e
                        WHERE e.order_id = o.order_id AND e.state IN ('accepted', 'rejected')))::text,
                    count(*) FILTER (WHERE EXISTS (SELECT 1 FROM order_events e
                        WHERE e.order_id = o.order_id AND e.state = 'expired'))::text,
                    sum(CASE WHEN state = 'accepted' THEN 1 ELSE 0 END)::text
             FROM (SELECT *, (created_at AT TIME ZONE 'Europe/Berlin')::date AS d FROM orders) o
             WHERE d IN ({days}) GROUP BY d ORDER BY d"
        ),
        format!(
            "SELECT 'windows', d::text, count(*)::text, sum(positions)::text,
                    sum(revenue_cents)::text, sum(late_events)::text
             FROM (SELECT *, (window_start AT TIME ZONE 'Europe/Berlin')::date AS d FROM windows) w
             WHERE d IN ({days}) GROUP BY d ORDER BY d"
        ),
    ];
    let mut lines = Vec::new();
    for query in queries {
        lines.extend(db.rows(&query).await);
    }
    lines
}

/// The same figures over the lake, per dataset: `{table}` is the dataset's table (a DuckDB
/// `read_parquet(...)` or a DataFusion table name). Valid in DuckDB and DataFusion alike.
pub const LAKE_TOTALS: &[(&str, &str)] = &[
    (
        "positions",
        "SELECT 'positions' AS dataset, CAST(dt AS VARCHAR) AS day, count(*), sum(seq), count(speed_kmh),
                sum(CAST(round(lat * 1000000) AS BIGINT))
         FROM {table} GROUP BY dt ORDER BY dt",
    ),
    (
        "tours",
        "SELECT 'tours' AS dataset, CAST(dt AS VARCHAR) AS day, count(*), sum(meter_cents), count(fare_cents),
                coalesce(sum(fare_cents), 0), sum(CASE WHEN flagged THEN 1 ELSE 0 END)
         FROM {table} GROUP BY dt ORDER BY dt",
    ),
    (
        "orders",
        "SELECT 'orders' AS dataset, CAST(dt AS VARCHAR) AS day, count(*), sum(attempts), count(sent_at),
                count(answered_at), count(expired_at),
                sum(CASE WHEN state = 'accepted' THEN 1 ELSE 0 END)
         FROM {table} GROUP BY dt ORDER BY dt",
    ),
    (
        "windows",
        "SELECT 'windows' AS dataset, CAST(dt AS VARCHAR) AS day, count(*), sum(positions), sum(revenue_cents),
                sum(late_events)
         FROM {table} GROUP BY dt ORDER BY dt",
    ),
];

/// DuckDB's totals of the lake objects of `bucket_dir` (the embedded server's directory of
/// the bucket), read as plain Hive-partitioned files.
pub fn duckdb_totals(bucket_dir: &Path, prefix: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for (dataset, query) in LAKE_TOTALS {
        let glob = bucket_dir
            .join(prefix)
            .join(dataset)
            .join("*")
            .join("*.parquet");
        let table = format!(
            "read_parquet('{}', hive_partitioning = true)",
            glob.display()
        );
        lines.extend(duckdb(&query.replace("{table}", &table)).unwrap());
    }
    lines
}
