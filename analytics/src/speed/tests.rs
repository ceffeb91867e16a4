//! The closer against a real PostgreSQL holding the bridge's schema, written through the
//! bridge's own store, with the clock set by each test: which rows a window holds, late
//! events, rows committed after their window closed, and a run stopped and resumed against
//! one that never stopped.

use bridge::record::Record;
use bridge::store::Store;
use testkit::postgres::TestPostgres;
use tokio_postgres::Client;

use super::aggregate::WindowRow;
use super::closer::{Closer, Settings, TickReport};
use super::store;
use super::window::Window;
use super::zone::Zones;
use crate::config::PostgresConfig;

/// A window boundary (2027-01-15T08:00:00Z).
const T0: i64 = 1_800_000_000_000;
const ALEX: (f64, f64) = (52.5185, 13.4121);
const ALEX_ZONE: &str = "881f1d4897fffff";
const GATE: (f64, f64) = (52.5164, 13.3768);
const GATE_ZONE: &str = "881f1d4887fffff";

/// 10 s windows, 2 s allowed lateness, 300 ms grace, recount 5 s after the deadline.
fn settings() -> Settings {
    Settings {
        length_ms: 10_000,
        allowed_lateness_ms: 2_000,
        commit_grace_ms: 300,
        recount_after_ms: 5_000,
        zones: Zones::new(8).unwrap(),
    }
}

async fn connect(url: &str) -> Client {
    crate::db::connect_once(url).await.unwrap()
}

/// The bridge's schema and ours in database `url`; the bridge's store on it.
async fn prepare(url: &str) -> Store {
    let mut store = Store::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    crate::db::migrate(&PostgresConfig {
        url: url.to_owned(),
        min_backoff_ms: 10,
        max_backoff_ms: 100,
    })
    .await
    .unwrap();
    store
}

async fn cluster() -> TestPostgres {
    tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .unwrap()
}

fn position(
    taxi: &str,
    seq: u64,
    ts_ms: i64,
    (lat, lon): (f64, f64),
    speed_kmh: Option<f32>,
    received_ms: i64,
) -> Record {
    Record::Position {
        taxi: taxi.to_owned(),
        position: wire::Position {
            seq,
            ts_ms,
            lat,
            lon,
            speed_kmh,
            heading_deg: None,
            accuracy_m: None,
        },
        received_ms,
    }
}

#[allow(clippy::too_many_arguments)]
fn tour(
    taxi: &str,
    seq: u64,
    tour_id: &str,
    ended: bool,
    ts_ms: i64,
    (lat, lon): (f64, f64),
    meter_cents: Option<u64>,
    received_ms: i64,
) -> Record {
    Record::Tour {
        taxi: taxi.to_owned(),
        event: wire::TourEvent {
            seq,
            tour_id: tour_id.to_owned(),
            kind: if ended {
                wire::TourEventKind::Ended
            } else {
                wire::TourEventKind::Started
            },
            ts_ms,
            lat,
            lon,
            meter_cents,
        },
        received_ms,
    }
}

fn at(ms: i64) -> bridge::store::types::Timestamp {
    bridge::store::types::Timestamp::new(ms).unwrap()
}

/// An order of `kind` recorded as sent at `sent_ms`, accepted at `accepted_ms` if given.
async fn order(db: &Client, id: &str, kind: &str, sent_ms: i64, accepted_ms: Option<i64>) {
    db.execute(
        "INSERT INTO orders (order_id, taxi_id, kind, text, sender, created_at, state, updated_at)
         VALUES ($1, 'a', $2, 'x', 'test', $3, 'sent', $3)",
        &[&id, &kind, &at(sent_ms)],
    )
    .await
    .unwrap();
    if let Some(accepted) = accepted_ms {
        db.execute(
            "SELECT order_advance($1, 'a', 'accepted', $2, 'test', NULL)",
            &[&id, &at(accepted)],
        )
        .await
        .unwrap();
    }
}

async fn rows(db: &Client, window_start_ms: i64) -> Vec<WindowRow> {
    store::window_rows(db, window_start_ms, false)
        .await
        .unwrap()
}

fn closed(report: &TickReport) -> Vec<i64> {
    report.closed.iter().map(|w| w.start_ms).collect()
}

#[tokio::test]
async fn a_window_holds_what_was_received_by_its_deadline() {
    let pg = cluster().await;
    let url = pg.url();
    let mut bridge = prepare(&url).await;
    let db = connect(&url).await;
    let mut closer = Closer::new(connect(&url).await, settings());
    assert!(closer.tick(T0 + 1).await.unwrap().closed.is_empty());

    bridge
        .write(&[
            position("a", 1, T0 + 1_000, ALEX, Some(20.0), T0 + 1_100),
            position("a", 2, T0 + 2_000, ALEX, Some(40.0), T0 + 2_100),
            position("b", 1, T0 + 3_000, ALEX, None, T0 + 3_100),
            position("c", 1, T0 + 4_000, GATE, Some(50.0), T0 + 4_100),
            // In time: received exactly at the deadline.
            position("c", 2, T0 + 9_999, GATE, Some(70.0), T0 + 12_000),
            // The next window's.
            position("c", 3, T0 + 10_000, GATE, Some(90.0), T0 + 10_100),
            tour(
                "a",
                1,
                "t-a",
                false,
                T0 + 1_500,
                ALEX,
                Some(390),
                T0 + 1_600,
            ),
            tour(
                "b",
                1,
                "t-b",
                false,
                T0 + 2_500,
                ALEX,
                Some(390),
                T0 + 2_600,
            ),
            tour(
                "b",
                2,
                "t-b",
                true,
                T0 + 5_500,
                ALEX,
                Some(1_250),
                T0 + 5_600,
            ),
            tour(
                "c",
                1,
                "t-c",
                true,
                T0 + 6_000,
                GATE,
                Some(2_340),
                T0 + 6_100,
            ),
            // The same event again after a reboot (another seq): one tour ended.
            tour(
                "c",
                2,
                "t-c",
                true,
                T0 + 6_000,
                GATE,
                Some(2_340),
                T0 + 6_200,
            ),
        ])
        .await
        .unwrap();
    bridge
        .write(&[position("b", 2, T0 + 2_000, ALEX, Some(99.0), T0 + 12_001)])
        .await
        .unwrap();
    order(&db, "o-1", "order", T0 + 3_000, Some(T0 + 4_000)).await;
    order(&db, "o-2", "order", T0 + 5_000, None).await;
    order(&db, "m-1", "message", T0 + 5_000, Some(T0 + 6_000)).await;
    order(&db, "o-3", "order", T0 + 9_000, Some(T0 + 10_500)).await;

    // Due at end + lateness + grace, not a millisecond earlier.
    assert!(closer.tick(T0 + 12_299).await.unwrap().closed.is_empty());
    let report = closer.tick(T0 + 12_300).await.unwrap();
    assert_eq!(closed(&report), [T0]);

    let window = rows(&db, T0).await;
    let expected_fleet = WindowRow {
        zone: "fleet".to_owned(),
        positions: 5,
        taxis: 3,
        avg_speed_kmh: Some(45.0),
        max_speed_kmh: Some(70.0),
        tours_started: 2,
        tours_ended: 2,
        revenue_cents: 3_590,
        orders_sent: 3,
        orders_accepted: 1,
        late_events: 0,
    };
    let alex = WindowRow {
        zone: ALEX_ZONE.to_owned(),
        positions: 3,
        taxis: 2,
        avg_speed_kmh: Some(30.0),
        max_speed_kmh: Some(40.0),
        tours_started: 2,
        tours_ended: 1,
        revenue_cents: 1_250,
        orders_sent: 0,
        orders_accepted: 0,
        late_events: 0,
    };
    let gate = WindowRow {
        zone: GATE_ZONE.to_owned(),
        positions: 2,
        taxis: 1,
        avg_speed_kmh: Some(60.0),
        max_speed_kmh: Some(70.0),
        tours_started: 0,
        tours_ended: 1,
        revenue_cents: 2_340,
        orders_sent: 0,
        orders_accepted: 0,
        late_events: 0,
    };
    assert_eq!(window, [expected_fleet.clone(), gate, alex]);

    // The late position (received 1 ms after the deadline) is counted once the scan has
    // passed its receipt, in the fleet row only.
    let report = closer.tick(T0 + 12_301).await.unwrap();
    assert_eq!(report.late_events, 1);
    assert_eq!(closer.tick(T0 + 12_400).await.unwrap().late_events, 0);
    let window = rows(&db, T0).await;
    assert_eq!(
        window[0],
        WindowRow {
            late_events: 1,
            ..expected_fleet
        }
    );
    assert_eq!(window[1].late_events + window[2].late_events, 0);

    // The next window: its own position and order; an empty one after it has a fleet row.
    let report = closer.tick(T0 + 32_300).await.unwrap();
    assert_eq!(closed(&report), [T0 + 10_000, T0 + 20_000]);
    let next = rows(&db, T0 + 10_000).await;
    assert_eq!((next[0].positions, next[0].max_speed_kmh), (1, Some(90.0)));
    assert_eq!((next[0].orders_sent, next[0].orders_accepted), (0, 1));
    let empty = rows(&db, T0 + 20_000).await;
    assert_eq!(empty.len(), 1);
    assert_eq!(
        (
            empty[0].zone.as_str(),
            empty[0].positions,
            empty[0].avg_speed_kmh
        ),
        ("fleet", 0, None)
    );
}

#[tokio::test]
async fn a_window_read_ahead_in_slices_has_the_figures_of_one_read_whole() {
    let pg = cluster().await;
    let url = pg.url();
    let mut bridge = prepare(&url).await;
    let db = connect(&url).await;
    let mut closer = Closer::new(connect(&url).await, settings());
    assert!(closer.tick(T0 + 1).await.unwrap().closed.is_empty());

    // First slice: read ahead up to T0 + 4 700 (now - grace) at T0 + 5 000.
    bridge
        .write(&[
            position("a", 1, T0 + 1_000, ALEX, Some(20.0), T0 + 1_100),
            position("b", 1, T0 + 2_000, ALEX, Some(40.0), T0 + 2_100),
        ])
        .await
        .unwrap();
    assert!(closer.tick(T0 + 5_000).await.unwrap().closed.is_empty());
    // Second slice, (4 700, 7 700]; then the rest up to the deadline, when it closes.
    bridge
        .write(&[position("a", 2, T0 + 6_000, ALEX, Some(60.0), T0 + 6_100)])
        .await
        .unwrap();
    assert!(closer.tick(T0 + 8_000).await.unwrap().closed.is_empty());
    bridge
        .write(&[
            position("c", 1, T0 + 9_999, GATE, Some(80.0), T0 + 12_000),
            // Too late: received after the deadline.
            position("c", 2, T0 + 9_000, GATE, Some(99.0), T0 + 12_001),
        ])
        .await
        .unwrap();
    assert_eq!(closed(&closer.tick(T0 + 12_300).await.unwrap()), [T0]);

    let window = rows(&db, T0).await;
    let fleet = &window[0];
    assert_eq!(
        (
            fleet.positions,
            fleet.taxis,
            fleet.avg_speed_kmh,
            fleet.max_speed_kmh
        ),
        (4, 3, Some(50.0), Some(80.0)),
        "every position once: none read twice across slices, none left out"
    );
    let zones: Vec<(&str, i64, i64)> = window[1..]
        .iter()
        .map(|z| (z.zone.as_str(), z.positions, z.taxis))
        .collect();
    assert_eq!(zones, [(GATE_ZONE, 1, 1), (ALEX_ZONE, 3, 2)]);

    // A fresh closer on the same rows (as after a restart) reads the window whole: the same.
    db.execute("DELETE FROM windows", &[]).await.unwrap();
    db.execute(
        "UPDATE windows_progress SET closed_until = to_timestamp($1::float8 / 1000)",
        &[&(T0 as f64)],
    )
    .await
    .unwrap();
    let mut fresh = Closer::new(connect(&url).await, settings());
    assert_eq!(closed(&fresh.tick(T0 + 12_300).await.unwrap()), [T0]);
    assert_eq!(rows(&db, T0).await, window);
}

#[tokio::test]
async fn late_rows_and_rows_committed_after_the_close_become_late_events_once() {
    let pg = cluster().await;
    let url = pg.url();
    let mut bridge = prepare(&url).await;
    let db = connect(&url).await;
    let mut closer = Closer::new(connect(&url).await, settings());
    closer.tick(T0 + 1).await.unwrap();
    bridge
        .write(&[
            position("a", 1, T0 + 1_000, ALEX, Some(30.0), T0 + 1_100),
            tour("a", 1, "t-a", false, T0 + 1_500, ALEX, None, T0 + 1_600),
        ])
        .await
        .unwrap();
    assert_eq!(closed(&closer.tick(T0 + 12_300).await.unwrap()), [T0]);
    let before = rows(&db, T0).await;

    // Received after the deadline: a position and a tour event.
    bridge
        .write(&[
            position("a", 2, T0 + 5_000, ALEX, Some(80.0), T0 + 13_000),
            tour("b", 1, "t-b", false, T0 + 6_000, GATE, None, T0 + 13_000),
        ])
        .await
        .unwrap();
    assert_eq!(closer.tick(T0 + 13_300).await.unwrap().late_events, 2);
    assert_eq!(closer.tick(T0 + 14_000).await.unwrap().late_events, 0);

    // Committed after the scan had passed them: one received in time (the bridge was slow
    // to commit), one late.
    bridge
        .write(&[
            position("b", 1, T0 + 7_000, GATE, Some(10.0), T0 + 11_000),
            position("c", 1, T0 + 8_000, GATE, Some(10.0), T0 + 12_500),
        ])
        .await
        .unwrap();
    assert_eq!(closer.tick(T0 + 16_999).await.unwrap().recounted, []);
    let report = closer.tick(T0 + 17_000).await.unwrap();
    assert_eq!(
        report.recounted,
        [Window {
            start_ms: T0,
            end_ms: T0 + 10_000
        }]
    );
    assert_eq!(report.stragglers, 1);
    // Recounted once only.
    assert_eq!(closer.tick(T0 + 18_000).await.unwrap().recounted, []);

    let after = rows(&db, T0).await;
    assert_eq!(after[0].late_events, 4);
    let values = |rows: &[WindowRow]| -> Vec<WindowRow> {
        rows.iter()
            .map(|row| WindowRow {
                late_events: 0,
                ..row.clone()
            })
            .collect()
    };
    assert_eq!(values(&after), values(&before), "the values never change");
}

/// A stream over 40 s: five taxis, one fix every 250 ms, received 0 to 1.75 s after
/// their device time, every 13th one 4 s late; tour events now and then.
fn stream_at(step: i64) -> Vec<Record> {
    let received = T0 + step * 250;
    let taxi = format!("taxi-{}", step % 5);
    let delay = if step % 13 == 0 {
        4_000
    } else {
        (step % 8) * 250
    };
    let ts = received - delay;
    let place = if step % 3 == 0 { GATE } else { ALEX };
    let speed = (step % 4 != 0).then_some((step % 7) as f32 * 10.5);
    let mut records = vec![position(&taxi, step as u64, ts, place, speed, received)];
    if step % 17 == 0 {
        let tour_id = format!("t-{}", step / 34);
        let ended = step % 34 != 0;
        let meter = ended.then_some(1_000 + step as u64);
        records.push(tour(
            &taxi,
            step as u64,
            &tour_id,
            ended,
            ts,
            place,
            meter,
            received,
        ));
    }
    records
}

fn device_ms(record: &Record) -> i64 {
    match record {
        Record::Position { position, .. } => position.ts_ms,
        Record::Tour { event, .. } => event.ts_ms,
        _ => unreachable!("the stream has positions and tour events only"),
    }
}

/// Every row of `windows`, without `computed_at`.
async fn all_windows(db: &Client) -> Vec<(i64, WindowRow)> {
    let starts = db
        .query("SELECT DISTINCT window_start FROM windows ORDER BY 1", &[])
        .await
        .unwrap();
    let mut all = Vec::new();
    for row in starts {
        let start: bridge::store::types::Timestamp = row.get(0);
        for window_row in rows(db, start.ms()).await {
            all.push((start.ms(), window_row));
        }
    }
    all
}

#[tokio::test]
async fn a_run_stopped_and_resumed_computes_the_windows_of_one_that_never_stopped() {
    let pg = cluster().await;
    let stopped_url = pg.create_database("stopped").await.unwrap();
    let steady_url = pg.create_database("steady").await.unwrap();
    let mut stopped_bridge = prepare(&stopped_url).await;
    let mut steady_bridge = prepare(&steady_url).await;
    let mut steady = Closer::new(connect(&steady_url).await, settings());
    let mut stopped = Some(Closer::new(connect(&stopped_url).await, settings()));

    let last_step = 160; // 40 s
    let mut written = 0;
    for step in 0..=last_step {
        let now = T0 + step * 250;
        let records = stream_at(step);
        // The first window starts at T0: earlier device times are not the layer's.
        written += records.iter().filter(|r| device_ms(r) >= T0).count() as i64;
        stopped_bridge.write(&records).await.unwrap();
        steady_bridge.write(&records).await.unwrap();
        steady.tick(now).await.unwrap();
        // Down (as if killed) from 15 s to 28 s, then a new process resumes.
        if step == 60 {
            stopped = None;
        }
        if step == 112 {
            stopped = Some(Closer::new(connect(&stopped_url).await, settings()));
        }
        if let Some(closer) = stopped.as_mut() {
            closer.tick(now).await.unwrap();
        }
    }
    // Long after the end: every window of the stream closed, scanned and recounted.
    let end = T0 + last_step * 250 + 30_000;
    let steady_report = steady.tick(end).await.unwrap();
    stopped.as_mut().unwrap().tick(end).await.unwrap();
    assert!(!steady_report.recounted.is_empty());

    let steady_windows = all_windows(&connect(&steady_url).await).await;
    let stopped_windows = all_windows(&connect(&stopped_url).await).await;
    assert_eq!(stopped_windows, steady_windows);

    // Every row written (from the first window on) is in a window's values or among its
    // late events.
    let fleet: Vec<&WindowRow> = steady_windows
        .iter()
        .filter(|(_, row)| row.zone == "fleet")
        .map(|(_, row)| row)
        .collect();
    let counted: i64 = fleet
        .iter()
        .map(|row| row.positions + row.late_events)
        .sum::<i64>();
    let late: i64 = fleet.iter().map(|row| row.late_events).sum();
    let tours: i64 = fleet
        .iter()
        .map(|row| row.tours_started + row.tours_ended)
        .sum();
    assert!(late > 0, "the stream has late events");
    assert_eq!(counted + tours, written, "{late} late");
}
