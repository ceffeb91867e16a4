//! The PostgreSQL store against a real PostgreSQL (a private cluster per test).

use bridge::record::{DeadLetter, Record};
use bridge::store::{Store, StoreError, WriteStats};
use bytes::Bytes;
use testkit::postgres::TestPostgres;

const DAY_MS: i64 = 86_400_000;
/// 2024-11-21T00:00:00Z
const DAY_START: i64 = 1_732_147_200_000;
/// 2024-11-21T12:00:00Z
const NOON: i64 = DAY_START + DAY_MS / 2;

async fn setup() -> anyhow::Result<(TestPostgres, Store)> {
    let pg = TestPostgres::start()?;
    let mut store = Store::connect(&pg.url()).await?;
    store.migrate().await?;
    store.ensure_partitions(NOON, 30, 3).await?;
    Ok((pg, store))
}

fn position(taxi: &str, seq: u64, ts_ms: i64) -> Record {
    Record::Position {
        taxi: taxi.to_owned(),
        position: wire::Position {
            seq,
            ts_ms,
            lat: 52.5 + seq as f64 * 1e-5,
            lon: 13.4,
            speed_kmh: Some(30.0),
            heading_deg: if seq.is_multiple_of(2) {
                Some(90.0)
            } else {
                None
            },
            accuracy_m: Some(4.0),
        },
        received_ms: ts_ms + 150,
    }
}

/// `per_taxi` fixes a second apart for each of `taxis` taxis; `seq` counts seconds.
fn positions(taxis: usize, per_taxi: usize, start_ms: i64) -> Vec<Record> {
    let mut records = Vec::with_capacity(taxis * per_taxi);
    for i in 0..per_taxi {
        let ts_ms = start_ms + i as i64 * 1_000;
        for t in 0..taxis {
            let seq = (ts_ms - DAY_START) as u64 / 1_000;
            records.push(position(&format!("taxi-{t:05}"), seq, ts_ms));
        }
    }
    records
}

async fn count(store: &Store, sql: &str) -> anyhow::Result<i64> {
    Ok(store.client().query_one(sql, &[]).await?.try_get(0)?)
}

#[tokio::test]
async fn migrations_apply_once_even_concurrently() -> anyhow::Result<()> {
    let pg = TestPostgres::start()?;
    let mut a = Store::connect(&pg.url()).await?;
    let mut b = Store::connect(&pg.url()).await?;
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))?
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".sql"))
        })
        .count();
    assert_eq!(ra? + rb?, migrations, "each migration applied exactly once");
    assert_eq!(a.migrate().await?, 0);
    assert_eq!(b.migrate().await?, 0);
    assert_eq!(a.count_positions().await?, 0);
    Ok(())
}

#[tokio::test]
async fn each_position_is_stored_once() -> anyhow::Result<()> {
    let (_pg, mut store) = setup().await?;
    let batch = positions(50, 20, NOON);
    let first = store.write(&batch).await?;
    assert_eq!(first.positions_inserted, 1_000);
    assert_eq!(first.positions_duplicate, 0);
    assert_eq!(first.latest_positions, 50);

    let again = store.write(&batch).await?;
    assert_eq!(again.positions_inserted, 0);
    assert_eq!(again.positions_duplicate, 1_000);
    assert_eq!(again.latest_positions, 0);
    assert_eq!(store.count_positions().await?, 1_000);

    // Half stored already, half new, and a message twice in the same batch.
    let mut mixed = positions(50, 30, NOON);
    mixed.drain(..500);
    mixed.push(mixed[0].clone());
    let stats = store.write(&mixed).await?;
    assert_eq!(stats.positions_inserted, 500);
    assert_eq!(stats.positions_duplicate, 501);
    assert_eq!(store.count_positions().await?, 1_500);
    assert_eq!(store.count_positions_of("taxi-00007").await?, 30);

    // New positions after a clean batch, with one already stored and one twice.
    let clean = positions(50, 1, NOON + 100_000);
    assert_eq!(store.write(&clean).await?.positions_duplicate, 0);
    let mut new = positions(50, 2, NOON + 200_000);
    new.push(clean[7].clone());
    new.push(new[3].clone());
    let stats = store.write(&new).await?;
    assert_eq!(
        (stats.positions_inserted, stats.positions_duplicate),
        (100, 2)
    );
    assert_eq!(store.count_positions().await?, 1_650);

    // Exact values round-trip.
    let row = store
        .client()
        .query_one(
            "SELECT extract(epoch FROM ts)::float8 * 1000, lat, heading_deg, speed_kmh,
                    extract(epoch FROM received_at)::float8 * 1000
             FROM positions WHERE taxi_id = 'taxi-00003' AND seq = 43201",
            &[],
        )
        .await?;
    assert_eq!(row.try_get::<_, f64>(0)?, (NOON + 1_000) as f64);
    assert_eq!(row.try_get::<_, f64>(1)?, 52.5 + 43201.0 * 1e-5);
    assert_eq!(row.try_get::<_, Option<f32>>(2)?, None);
    assert_eq!(row.try_get::<_, Option<f32>>(3)?, Some(30.0));
    assert_eq!(row.try_get::<_, f64>(4)?, (NOON + 1_150) as f64);
    Ok(())
}

#[tokio::test]
async fn latest_position_is_the_newest_by_device_time() -> anyhow::Result<()> {
    let (_pg, mut store) = setup().await?;
    // In one batch, out of order: the newest wins.
    store
        .write(&[
            position("a", 10, NOON + 10_000),
            position("a", 12, NOON + 30_000),
            position("a", 11, NOON + 20_000),
        ])
        .await?;
    assert_eq!(
        store.latest_position("a").await?.map(|p| (p.0, p.1)),
        Some((12, NOON + 30_000))
    );
    // An older fix arriving later is stored but does not move the latest position back.
    let stats = store.write(&[position("a", 9, NOON + 5_000)]).await?;
    assert_eq!((stats.positions_inserted, stats.latest_positions), (1, 0));
    assert_eq!(store.latest_position("a").await?.map(|p| p.0), Some(12));
    // A newer one does.
    let stats = store.write(&[position("a", 13, NOON + 40_000)]).await?;
    assert_eq!(stats.latest_positions, 1);
    let latest = store.latest_position("a").await?;
    assert_eq!(latest.map(|p| (p.0, p.1)), Some((13, NOON + 40_000)));
    assert_eq!(latest.map(|p| p.2), Some(52.5 + 13.0 * 1e-5));
    assert_eq!(store.latest_position("nobody").await?, None);
    Ok(())
}

#[tokio::test]
async fn partitions_per_day_ahead_and_on_demand() -> anyhow::Result<()> {
    let (_pg, mut store) = setup().await?;
    let parts = store.partitions().await?;
    assert_eq!(parts.len(), 34, "30 days back, today, 3 ahead");
    assert_eq!(
        parts.first().map(String::as_str),
        Some("positions_20241022")
    );
    assert_eq!(parts.last().map(String::as_str), Some("positions_20241124"));
    // Creating again creates nothing.
    assert!(store.ensure_partitions(NOON, 30, 3).await?.is_empty());

    // Across midnight: two partitions.
    let midnight = DAY_START + DAY_MS;
    let batch = vec![
        position("m", 1, midnight - 1_000),
        position("m", 2, midnight - 1),
        position("m", 3, midnight),
        position("m", 4, midnight + 1_000),
    ];
    assert_eq!(store.write(&batch).await?.positions_inserted, 4);
    assert_eq!(
        count(&store, "SELECT count(*) FROM positions_20241121").await?,
        2
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM positions_20241122").await?,
        2
    );

    // A day without a partition gets one, from a new connection that knows nothing yet.
    let far = DAY_START + 40 * DAY_MS; // 2024-12-31
    let mut other = Store::connect(&_pg.url()).await?;
    let stats = other
        .write(&[position("f", 1, far), position("f", 2, far + 1)])
        .await?;
    assert_eq!(stats.positions_inserted, 2);
    assert_eq!(
        count(&store, "SELECT count(*) FROM positions_20241231").await?,
        2
    );
    // No default partition exists.
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM pg_partitioned_table WHERE partdefid <> 0"
        )
        .await?,
        0
    );
    // A partition dropped behind a connection's back: a retryable error, then it is back.
    store
        .client()
        .batch_execute("DROP TABLE positions_20241231")
        .await?;
    let err = other.write(&[position("f", 3, far + 2)]).await.err();
    assert!(
        err.as_ref().is_some_and(StoreError::is_retryable),
        "{err:?}"
    );
    assert_eq!(
        other
            .write(&[position("f", 3, far + 2)])
            .await?
            .positions_inserted,
        1
    );

    // Concurrent writers needing the same new day.
    let next = far + DAY_MS;
    let mut a = Store::connect(&_pg.url()).await?;
    let mut b = Store::connect(&_pg.url()).await?;
    let batch_a = [position("x", 1, next)];
    let batch_b = [position("y", 1, next)];
    let (ra, rb) = tokio::join!(a.write(&batch_a), b.write(&batch_b));
    assert_eq!(ra?.positions_inserted + rb?.positions_inserted, 2);
    Ok(())
}

#[tokio::test]
async fn retention_drops_only_archived_old_days() -> anyhow::Result<()> {
    let (_pg, mut store) = setup().await?;
    let retention = 30;
    // Rows on the oldest days.
    let oldest = DAY_START - 30 * DAY_MS; // 2024-10-22
    store
        .write(&[
            position("r", 1, oldest + 1),
            position("r", 2, oldest + DAY_MS + 1),
        ])
        .await?;
    // 2024-10-22 ends 2024-10-23; nothing of it can arrive after 2024-11-22 00:00.
    let now = DAY_START + DAY_MS + 3_600_000; // 2024-11-22T01:00Z
    assert!(
        store
            .drop_expired_partitions(now, retention)
            .await?
            .is_empty(),
        "no watermark: nothing is dropped"
    );
    store
        .set_archive_watermark("b1", now - 2 * 3_600_000)
        .await?;
    assert!(
        store
            .drop_expired_partitions(now, retention)
            .await?
            .is_empty(),
        "archived only up to 23:00: not yet"
    );
    store.set_archive_watermark("b1", now).await?;
    store.set_archive_watermark("b2", DAY_START).await?;
    assert!(
        store
            .drop_expired_partitions(now, retention)
            .await?
            .is_empty(),
        "another bridge is behind"
    );
    store.set_archive_watermark("b2", now).await?;
    // Moving back is ignored.
    store.set_archive_watermark("b2", 0).await?;
    assert_eq!(
        store.archive_watermarks().await?,
        vec![("b1".to_owned(), now), ("b2".to_owned(), now)]
    );
    let dropped = store.drop_expired_partitions(now, retention).await?;
    assert_eq!(dropped, vec!["positions_20241022".to_owned()]);
    assert_eq!(store.count_positions().await?, 1);
    let parts = store.partitions().await?;
    assert_eq!(
        parts.first().map(String::as_str),
        Some("positions_20241023")
    );
    // A partition detached but not dropped (a run failed in between) is dropped too.
    store
        .client()
        .batch_execute("ALTER TABLE positions DETACH PARTITION positions_20241023")
        .await?;
    let later = now + DAY_MS;
    store.set_archive_watermark("b1", later).await?;
    store.set_archive_watermark("b2", later).await?;
    assert_eq!(
        store.drop_expired_partitions(later, retention).await?,
        vec!["positions_20241023".to_owned()]
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM pg_class WHERE relname = 'positions_20241023'"
        )
        .await?,
        0
    );
    // Already gone: nothing more, and ensure_partitions does not bring it back.
    assert!(store
        .drop_expired_partitions(now, retention)
        .await?
        .is_empty());
    store.ensure_partitions(now, retention, 3).await?;
    assert_eq!(
        store.partitions().await?.first().map(String::as_str),
        Some("positions_20241023")
    );
    // A bridge gone for good no longer holds retention back.
    store.set_archive_watermark("b3", 0).await?;
    let later = now + 2 * DAY_MS;
    store.set_archive_watermark("b1", later).await?;
    store.set_archive_watermark("b2", later).await?;
    assert!(store
        .drop_expired_partitions(later, retention)
        .await?
        .is_empty());
    assert!(store.remove_archive_watermark("b3").await?);
    assert_eq!(
        store.drop_expired_partitions(later, retention).await?,
        vec![
            "positions_20241023".to_owned(),
            "positions_20241024".to_owned()
        ]
    );
    assert_eq!(store.count_positions().await?, 0);
    Ok(())
}

#[tokio::test]
async fn dead_letters_keep_the_exact_payload() -> anyhow::Result<()> {
    let (_pg, mut store) = setup().await?;
    let payload = Bytes::from_static(b"\xff\xfe{\"seq\":\0 not utf-8 \xc3\x28");
    let dead = |taxi: Option<&str>, payload: Bytes| {
        Record::DeadLetter(DeadLetter {
            received_ms: NOON,
            topic: "taxi/t-1/position".to_owned(),
            taxi: taxi.map(str::to_owned),
            reason_code: "json".to_owned(),
            reason: "expected value at line 1 column 1\0".to_owned(),
            payload,
        })
    };
    let batch = vec![
        dead(Some("t-1"), payload.clone()),
        dead(None, Bytes::new()),
        position("t-1", 1, NOON),
    ];
    let stats = store.write(&batch).await?;
    assert_eq!((stats.dead_letters, stats.positions_inserted), (2, 1));
    let rows = store
        .client()
        .query(
            "SELECT payload, taxi_id, topic, reason_code, reason,
                    extract(epoch FROM received_at)::float8 * 1000
             FROM dead_letters ORDER BY id",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].try_get::<_, &[u8]>(0)?, &payload[..]);
    assert_eq!(rows[0].try_get::<_, Option<&str>>(1)?, Some("t-1"));
    assert_eq!(rows[0].try_get::<_, &str>(2)?, "taxi/t-1/position");
    assert_eq!(rows[0].try_get::<_, &str>(3)?, "json");
    assert_eq!(
        rows[0].try_get::<_, &str>(4)?,
        "expected value at line 1 column 1\u{FFFD}"
    );
    assert_eq!(rows[0].try_get::<_, f64>(5)?, NOON as f64);
    assert_eq!(rows[1].try_get::<_, &[u8]>(0)?, b"");
    assert_eq!(rows[1].try_get::<_, Option<&str>>(1)?, None);

    // Values PostgreSQL cannot hold become dead letters instead of failing the batch.
    let stats = store
        .write(&[position("t-1", u64::MAX, NOON), position("t-1", 2, NOON)])
        .await?;
    assert_eq!((stats.positions_inserted, stats.dead_letters), (1, 1));
    assert_eq!(store.count_dead_letters().await?, 3);

    // The same refused message delivered again (later, or twice in one batch) is stored once;
    // the same bytes on another topic are another message.
    let mut again = dead(Some("t-1"), payload.clone());
    if let Record::DeadLetter(d) = &mut again {
        d.received_ms = NOON + 60_000;
    }
    let mut elsewhere = dead(Some("t-1"), payload.clone());
    if let Record::DeadLetter(d) = &mut elsewhere {
        d.topic = "taxi/t-1/tour".to_owned();
    }
    let stats = store.write(&[again.clone(), again, elsewhere]).await?;
    assert_eq!(stats.dead_letters, 1);
    assert_eq!(store.count_dead_letters().await?, 4);
    Ok(())
}

#[tokio::test]
async fn tours_acks_and_statuses() -> anyhow::Result<()> {
    let (_pg, mut store) = setup().await?;
    let tour = |seq: u64, id: &str, kind: wire::TourEventKind, ts_ms: i64, meter: Option<u64>| {
        Record::Tour {
            taxi: "t-1".to_owned(),
            event: wire::TourEvent {
                seq,
                tour_id: id.to_owned(),
                kind,
                ts_ms,
                lat: 52.0 + seq as f64,
                lon: 13.0,
                meter_cents: meter,
            },
            received_ms: ts_ms + 10,
        }
    };
    let ack = |seq: u64, state: wire::AckState, reason: Option<&str>| Record::Ack {
        taxi: "t-1".to_owned(),
        ack: wire::Ack {
            seq,
            order_id: "o-981".to_owned(),
            state,
            ts_ms: NOON + seq as i64,
            reason: reason.map(str::to_owned),
        },
        received_ms: NOON + 100,
    };
    let status = |taxi: &str, state: wire::StatusState, at_ms: i64| Record::Status {
        taxi: taxi.to_owned(),
        status: wire::Status { state, at_ms },
        received_ms: at_ms + 5,
    };
    use wire::{AckState::*, StatusState::*, TourEventKind::*};

    // A tour started and ended in one batch, another only started.
    let batch = vec![
        tour(1, "tour-a", Started, NOON, Some(390)),
        tour(2, "tour-a", Ended, NOON + 60_000, Some(2_340)),
        tour(3, "tour-b", Started, NOON + 120_000, None),
        ack(1, Received, None),
        ack(2, Rejected, Some("busy\0")),
        status("t-1", Online, NOON),
        status("t-1", Offline, NOON + 1_000),
        status("t-2", Online, NOON),
    ];
    let stats = store.write(&batch).await?;
    assert_eq!(
        stats,
        WriteStats {
            tour_events: 3,
            acks: 2,
            statuses: 2,
            ..WriteStats::default()
        }
    );
    // The same again: all duplicates, nothing changes.
    let stats = store.write(&batch).await?;
    assert_eq!(
        stats,
        WriteStats {
            tour_events_duplicate: 3,
            acks_duplicate: 2,
            ..WriteStats::default()
        }
    );
    // tour-b ends later; a stale "online" changes nothing.
    let stats = store
        .write(&[
            tour(4, "tour-b", Ended, NOON + 600_000, Some(1_200)),
            status("t-1", Online, NOON + 500),
            status("t-2", Offline, NOON + 2_000),
        ])
        .await?;
    assert_eq!((stats.tour_events, stats.statuses), (1, 1));

    // Every tour event once, waiting for the tour processor's judgement.
    let rows = store
        .client()
        .query(
            "SELECT tour_id, kind, lat, meter_cents, judged_at IS NULL
             FROM tour_events ORDER BY seq",
            &[],
        )
        .await?;
    type EventRow = (String, String, f64, Option<i64>, bool);
    let events: Vec<EventRow> = rows
        .iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
            ))
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    assert_eq!(
        events,
        vec![
            ("tour-a".into(), "started".into(), 53.0, Some(390), true),
            ("tour-a".into(), "ended".into(), 54.0, Some(2_340), true),
            ("tour-b".into(), "started".into(), 55.0, None, true),
            ("tour-b".into(), "ended".into(), 56.0, Some(1_200), true),
        ]
    );
    let reason: Option<String> = store
        .client()
        .query_one("SELECT reason FROM acks WHERE seq = 2", &[])
        .await?
        .try_get(0)?;
    assert_eq!(reason.as_deref(), Some("busy\u{FFFD}"));
    let states: Vec<(String, String)> = store
        .client()
        .query(
            "SELECT taxi_id, state FROM taxi_status ORDER BY taxi_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    assert_eq!(
        states,
        vec![
            ("t-1".to_owned(), "offline".to_owned()),
            ("t-2".to_owned(), "offline".to_owned())
        ]
    );
    Ok(())
}

#[tokio::test]
async fn server_restart_gives_retryable_errors_then_works_again() -> anyhow::Result<()> {
    let (pg, mut store) = setup().await?;
    store.write(&positions(10, 10, NOON)).await?;

    pg.stop()?;
    let err = store
        .write(&positions(10, 10, NOON + 60_000))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("write to a stopped server succeeded"))?;
    assert!(err.is_retryable(), "{err}");
    assert!(store.is_closed());
    let err = Store::connect(&pg.url()).await.err();
    assert!(
        err.as_ref().is_some_and(StoreError::is_retryable),
        "{err:?}"
    );

    pg.start_again()?;
    let mut store = Store::connect(&pg.url()).await?;
    let stats = store.write(&positions(10, 20, NOON)).await?;
    assert_eq!(
        (stats.positions_inserted, stats.positions_duplicate),
        (100, 100)
    );

    // A crash keeps what was committed.
    pg.stop_immediately()?;
    pg.start_again()?;
    let store = Store::connect(&pg.url()).await?;
    assert_eq!(store.count_positions().await?, 200);

    // Not retryable: a database that does not exist, a missing schema.
    let err = Store::connect(&pg.database_url("nope")).await.err();
    assert!(err.as_ref().is_some_and(|e| !e.is_retryable()), "{err:?}");
    let url = pg.create_database("empty").await?;
    let mut empty = Store::connect(&url).await?;
    let err = empty.write(&positions(1, 1, NOON)).await.err();
    assert!(err.as_ref().is_some_and(|e| !e.is_retryable()), "{err:?}");
    let text = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        text.contains(r#"relation "positions" does not exist"#),
        "{text}"
    );
    Ok(())
}

/// Timing of `write()` against a raw binary COPY of the same rows into a bare table with the
/// same primary key. Run with
/// `cargo test --release -p bridge --test store -- --ignored --nocapture write_timing`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn write_timing() -> anyhow::Result<()> {
    use std::pin::pin;
    use std::time::{Duration, Instant};
    use tokio_postgres::binary_copy::BinaryCopyInWriter;

    let pg = TestPostgres::start()?;
    let mut store = Store::connect(&pg.url()).await?;
    store.migrate().await?;
    store.ensure_partitions(NOON, 30, 3).await?;
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE bare (taxi_id text, seq bigint, ts timestamptz,
                lat double precision, lon double precision, speed_kmh real, heading_deg real,
                accuracy_m real, received_at timestamptz, PRIMARY KEY (taxi_id, ts, seq))",
        )
        .await?;
    let to_time = |ms: i64| std::time::UNIX_EPOCH + Duration::from_millis(ms as u64);

    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    for size in [5_000usize, 20_000] {
        let taxis = 5_000;
        let rounds = 10;
        let mut write_times = Vec::new();
        let mut duplicate_times = Vec::new();
        let mut copy_times = Vec::new();
        // `size` fixes of 5,000 taxis, newer each round.
        let batches: Vec<Vec<Record>> = (0..rounds)
            .map(|round| {
                let start = NOON + size as i64 * 1_000 + round as i64 * 100_000;
                positions(taxis, size / taxis, start)
            })
            .collect();
        for batch in &batches {
            let t = Instant::now();
            let stats = store.write(batch).await?;
            write_times.push(t.elapsed());
            assert_eq!(stats.positions_inserted, size as u64);
        }
        // Redelivered after a crash: all duplicates.
        for batch in &batches {
            let t = Instant::now();
            let stats = store.write(batch).await?;
            duplicate_times.push(t.elapsed());
            assert_eq!(stats.positions_duplicate, size as u64);
        }
        for batch in &batches {
            let t = Instant::now();
            // One COPY is one transaction.
            let sink = client
                .copy_in(
                    "COPY bare (taxi_id, seq, ts, lat, lon, speed_kmh, heading_deg, accuracy_m,
                     received_at) FROM STDIN (FORMAT binary)",
                )
                .await?;
            let mut writer = pin!(BinaryCopyInWriter::new(
                sink,
                &bridge::store::POSITION_TYPES
            ));
            for record in batch {
                let Record::Position {
                    taxi,
                    position: p,
                    received_ms,
                } = record
                else {
                    continue;
                };
                writer
                    .as_mut()
                    .write(&[
                        &taxi.as_str(),
                        &(p.seq as i64),
                        &to_time(p.ts_ms),
                        &p.lat,
                        &p.lon,
                        &p.speed_kmh,
                        &p.heading_deg,
                        &p.accuracy_m,
                        &to_time(*received_ms),
                    ])
                    .await?;
            }
            writer.finish().await?;
            copy_times.push(t.elapsed());
        }
        eprintln!(
            "{size} positions: write {:?} (duplicates {:?}), raw COPY into a bare table {:?} \
             (median of {rounds})",
            median(write_times),
            median(duplicate_times),
            median(copy_times),
        );
    }

    // Two connections committing at once, the same 5,000 taxis in both (as with a shared
    // subscription): throughput.
    let mut stores = vec![
        Store::connect(&pg.url()).await?,
        Store::connect(&pg.url()).await?,
    ];
    let rounds = 10;
    let batches: Vec<Vec<Vec<Record>>> = (0..2)
        .map(|s| {
            (0..rounds)
                .map(|round| positions(5_000, 1, NOON + 50_000_000 + (round * 2 + s) * 1_000))
                .collect()
        })
        .collect();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (mut store, batches) in stores.drain(..).zip(batches) {
        tasks.push(tokio::spawn(async move {
            for batch in &batches {
                store.write(batch).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = t.elapsed();
    eprintln!(
        "2 connections, {} batches of 5000: {:?}, {:.0} positions/s",
        2 * rounds,
        elapsed,
        (2 * rounds * 5_000) as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
