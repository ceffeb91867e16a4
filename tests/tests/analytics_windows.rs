//! The speed layer end to end: taxis publish through the broker, a bridge stores what they
//! send, the `analytics` process closes windows of device time into PostgreSQL and publishes
//! them on `analytics/windows`, where an operator reads them with `mosquitto_sub`.
//!
//! The tests use 2-second windows with 1 s of allowed lateness (the defaults are 10 s and
//! 2 s), so that a window closes about 4 s after it began. A
//! test's own window starts after everything it did before (the probe positions telling that
//! the bridge consumes), so its figures are known exactly.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bridge::store::types::Timestamp;
use serde_json::{json, Value};
use tests::analytics_process::{analytics_config, AnalyticsProcess};
use tests::dispatch::{
    answer, dispatch_config, inbox_taxi, next_new_inbox, wait_dispatch_subscribed, DispatchApi,
    RestartableBroker,
};
use tests::platform::{bounded, eventually, Db, Platform, Progress, Taxi, ARRIVAL};
use tests::{unix_ms, TestPki};

/// Upper bound of one test.
const LIMIT: Duration = Duration::from_secs(150);

const LENGTH_MS: i64 = 2_000;
const LATENESS_MS: i64 = 1_000;
const TOPIC: &str = "analytics/windows";

/// Two H3 cells of resolution 8 in Berlin (ids from the reference H3 library), and a point
/// well inside each.
const ALEX_ZONE: &str = "881f1d4897fffff";
const ALEX: (f64, f64) = (52.5185, 13.4121);
const GATE_ZONE: &str = "881f1d4887fffff";
const GATE: (f64, f64) = (52.5164, 13.3768);

/// The test windows: 2 s long, 1 s of lateness, closed 800 ms after that, late events
/// looked for every 100 ms, recounted 1.5 s after the lateness.
fn with_test_windows(config: &mut analytics::Config) {
    config.windows.length_ms = LENGTH_MS as u64;
    config.windows.allowed_lateness_ms = LATENESS_MS as u64;
    config.windows.commit_grace_ms = 800;
    config.windows.recount_after_ms = 1_500;
    config.windows.late_scan_interval_ms = 100;
    config.windows.h3_resolution = 8;
}

/// A platform with an in-process bridge that consumes.
async fn platform_with_bridge() -> Result<(Platform, bridge::RunningBridge)> {
    let platform = Platform::start().await?;
    let config = platform.bridge_config("b1", platform.embedded_archive("s3-b1"));
    let running = platform.start_bridge(&config).await?;
    platform.wait_until_consuming().await?;
    Ok((platform, running))
}

/// Starts an analytics process and waits until it runs and has begun its first window.
async fn start_analytics(config: &analytics::Config) -> Result<AnalyticsProcess> {
    let mut process = AnalyticsProcess::spawn(config)?;
    process.wait_ready().await?;
    let url = config.postgres.url.clone();
    let started = eventually("the windows' progress row", ARRIVAL, || {
        let url = url.clone();
        async move {
            let db = Db::connect(&url).await?;
            Ok(match progress(&db).await? {
                Some(progress) => Progress::Done(progress),
                None => Progress::Waiting("no progress row yet".to_owned()),
            })
        }
    })
    .await;
    if let Err(e) = started {
        process.ensure_running()?;
        anyhow::bail!("{e:#}\nits log ends with:\n{}", process.log_tail(30));
    }
    Ok(process)
}

/// The analytics process of a test (`a1`) on the platform's database, test windows.
async fn platform_analytics(platform: &Platform) -> Result<AnalyticsProcess> {
    let mut config = analytics_config(platform, "a1")?;
    with_test_windows(&mut config);
    start_analytics(&config).await
}

/// `windows_progress` as (first window, closed until, late until, recounted until), ms.
async fn progress(db: &Db) -> Result<Option<(i64, i64, i64, i64)>> {
    let row: Option<(Timestamp, Timestamp, Timestamp, Timestamp)> = db
        .row_opt(
            "SELECT first_window_start, closed_until, late_until, recounted_until \
             FROM windows_progress",
            &[],
        )
        .await?;
    Ok(row.map(|(a, b, c, d)| (a.ms(), b.ms(), c.ms(), d.ms())))
}

/// The window after the current one: it holds nothing that happened before this call.
fn next_window() -> (i64, i64) {
    let start = (unix_ms() / LENGTH_MS + 1) * LENGTH_MS;
    (start, start + LENGTH_MS)
}

fn at(ms: i64) -> Result<Timestamp> {
    Timestamp::new(ms).context("instant out of range")
}

/// A row of `windows` (without its window and `computed_at`).
#[derive(Clone, Debug, PartialEq)]
struct WindowRow {
    zone: String,
    positions: i64,
    taxis: i64,
    avg_speed_kmh: Option<f64>,
    max_speed_kmh: Option<f64>,
    tours_started: i64,
    tours_ended: i64,
    revenue_cents: i64,
    orders_sent: i64,
    orders_accepted: i64,
    late_events: i64,
}

/// Every row of the windows starting in `[from_ms, to_ms)` of `windows` in `schema`, by
/// window start, then the fleet row and the zones by id.
async fn windows_in(
    db: &Db,
    schema: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(i64, WindowRow)>> {
    let rows = db
        .client()
        .query(
            &format!(
                "SELECT window_start, zone, positions, taxis, avg_speed_kmh, max_speed_kmh,
                        tours_started, tours_ended, revenue_cents, orders_sent,
                        orders_accepted, late_events
                   FROM {schema}.windows
                  WHERE window_start >= $1 AND window_start < $2
                  ORDER BY window_start, zone <> 'fleet', zone"
            ),
            &[&at(from_ms)?, &at(to_ms)?],
        )
        .await
        .context("reading windows")?;
    rows.iter()
        .map(|row| {
            let start: Timestamp = row.try_get(0)?;
            Ok((
                start.ms(),
                WindowRow {
                    zone: row.try_get(1)?,
                    positions: row.try_get(2)?,
                    taxis: row.try_get(3)?,
                    avg_speed_kmh: row.try_get(4)?,
                    max_speed_kmh: row.try_get(5)?,
                    tours_started: row.try_get(6)?,
                    tours_ended: row.try_get(7)?,
                    revenue_cents: row.try_get(8)?,
                    orders_sent: row.try_get(9)?,
                    orders_accepted: row.try_get(10)?,
                    late_events: row.try_get(11)?,
                },
            ))
        })
        .collect()
}

/// The rows of one window (fleet row first), once it is closed.
async fn wait_for_window(platform: &Platform, start_ms: i64) -> Result<Vec<WindowRow>> {
    let url = platform.database_url();
    let rows = eventually(&format!("window {start_ms} closed"), ARRIVAL, || {
        let url = url.clone();
        async move {
            let db = Db::connect(&url).await?;
            let rows = windows_in(&db, "public", start_ms, start_ms + 1).await?;
            Ok(if rows.is_empty() {
                Progress::Waiting(format!("progress {:?}", progress(&db).await?))
            } else {
                Progress::Done(rows)
            })
        }
    })
    .await?;
    Ok(rows.into_iter().map(|(_, row)| row).collect())
}

/// Waits until the progress row says `done` (closed, late-scanned, recounted...).
async fn wait_for_progress(
    url: &str,
    what: &str,
    done: impl Fn((i64, i64, i64, i64)) -> bool + Copy,
) -> Result<()> {
    eventually(what, ARRIVAL, || async move {
        let db = Db::connect(url).await?;
        Ok(match progress(&db).await? {
            Some(p) if done(p) => Progress::Done(()),
            p => Progress::Waiting(format!("{p:?}")),
        })
    })
    .await
}

fn position(seq: u64, ts_ms: i64, (lat, lon): (f64, f64), speed_kmh: Option<f32>) -> Vec<u8> {
    wire::encode_json(&wire::Position {
        seq,
        ts_ms,
        lat,
        lon,
        speed_kmh,
        heading_deg: None,
        accuracy_m: Some(4.0),
    })
}

fn tour_event(
    seq: u64,
    tour_id: &str,
    ended: bool,
    ts_ms: i64,
    (lat, lon): (f64, f64),
    meter_cents: u64,
) -> Vec<u8> {
    wire::encode_json(&wire::TourEvent {
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
        meter_cents: Some(meter_cents),
    })
}

fn row(zone: &str, positions: i64, taxis: i64, speeds: (Option<f64>, Option<f64>)) -> WindowRow {
    WindowRow {
        zone: zone.to_owned(),
        positions,
        taxis,
        avg_speed_kmh: speeds.0,
        max_speed_kmh: speeds.1,
        tours_started: 0,
        tours_ended: 0,
        revenue_cents: 0,
        orders_sent: 0,
        orders_accepted: 0,
        late_events: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_holds_each_zone_exactly_and_reaches_operators() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge) = platform_with_bridge().await?;
        let analytics = platform_analytics(&platform).await?;
        let operator_cert = platform.pki.client("operator", "operator")?;
        let mut operator = platform
            .broker
            .mosquitto_sub(&operator_cert)
            .topic(TOPIC)
            .qos(1)
            .spawn()?;
        ensure!(
            operator.expect_subscribed().await? == [1],
            "an operator may not read {TOPIC}"
        );

        // Three taxis, two zones, one window; each message received long before the
        // window's deadline (its end + 1 s, at least 3 s from now).
        let (start, end) = next_window();
        let mut a = platform.taxi("taxi-a").await?;
        let mut b = platform.taxi("taxi-b").await?;
        let mut c = platform.taxi("taxi-c").await?;
        let a2 = position(2, start + 600, ALEX, Some(40.0));
        a.publish("position", &position(1, start + 100, ALEX, Some(20.0)))
            .await?;
        a.publish("position", &a2).await?;
        // The same message again (same seq): stored once, counted once.
        a.publish("position", &a2).await?;
        a.publish(
            "tour",
            &tour_event(1, "tour-a", false, start + 150, ALEX, 390),
        )
        .await?;
        b.publish("position", &position(1, start + 200, ALEX, Some(30.0)))
            .await?;
        b.publish("position", &position(2, start + 700, ALEX, None))
            .await?;
        b.publish(
            "tour",
            &tour_event(1, "tour-b", false, start + 250, ALEX, 390),
        )
        .await?;
        b.publish(
            "tour",
            &tour_event(2, "tour-b", true, start + 1_500, ALEX, 1_250),
        )
        .await?;
        c.publish("position", &position(1, start + 300, GATE, Some(50.0)))
            .await?;
        c.publish("position", &position(2, start + 800, GATE, Some(70.0)))
            .await?;
        c.publish(
            "tour",
            &tour_event(1, "tour-c", false, start + 350, GATE, 390),
        )
        .await?;
        c.publish(
            "tour",
            &tour_event(2, "tour-c", true, start + 1_600, GATE, 2_340),
        )
        .await?;
        // The end again with another seq (a taxi that lost its counters): one tour ended.
        c.publish(
            "tour",
            &tour_event(3, "tour-c", true, start + 1_600, GATE, 2_340),
        )
        .await?;
        for taxi in [&mut a, &mut b, &mut c] {
            taxi.wait_acked().await?;
        }

        let rows = wait_for_window(&platform, start).await?;
        let fleet = WindowRow {
            tours_started: 3,
            tours_ended: 2,
            revenue_cents: 3_590,
            ..row("fleet", 6, 3, (Some(42.0), Some(70.0)))
        };
        let alex = WindowRow {
            tours_started: 2,
            tours_ended: 1,
            revenue_cents: 1_250,
            ..row(ALEX_ZONE, 4, 2, (Some(30.0), Some(40.0)))
        };
        let gate = WindowRow {
            tours_started: 1,
            tours_ended: 1,
            revenue_cents: 2_340,
            ..row(GATE_ZONE, 2, 1, (Some(60.0), Some(70.0)))
        };
        ensure!(
            rows == [fleet, gate, alex],
            "window {start}: {rows:#?}\nanalytics log:\n{}",
            analytics.log_tail(20)
        );

        // The operator gets the same window on analytics/windows.
        let published = operator
            .expect_line(&format!("the window {start} on {TOPIC}"), ARRIVAL, |line| {
                let (topic, payload) = line.message()?;
                let json: Value = serde_json::from_str(&payload).ok()?;
                (topic == TOPIC && json["window_start_ms"] == start).then_some(json)
            })
            .await?;
        let computed = published["computed_ms"].as_i64().unwrap_or(0);
        ensure!(
            computed >= end + LATENESS_MS,
            "closed at {computed}, before the deadline {}",
            end + LATENESS_MS
        );
        let mut without_time = published.clone();
        if let Some(fields) = without_time.as_object_mut() {
            fields.remove("computed_ms");
        }
        let expected = json!({
            "window_start_ms": start,
            "window_end_ms": end,
            "fleet": {
                "positions": 6, "taxis": 3, "avg_speed_kmh": 42.0, "max_speed_kmh": 70.0,
                "tours_started": 3, "tours_ended": 2, "revenue_cents": 3590,
                "orders_sent": 0, "orders_accepted": 0, "late_events": 0
            },
            "zones": [
                {"zone": ALEX_ZONE, "positions": 4, "taxis": 2, "avg_speed_kmh": 30.0,
                 "max_speed_kmh": 40.0, "tours_started": 2, "tours_ended": 1,
                 "revenue_cents": 1250},
                {"zone": GATE_ZONE, "positions": 2, "taxis": 1, "avg_speed_kmh": 60.0,
                 "max_speed_kmh": 70.0, "tours_started": 1, "tours_ended": 1,
                 "revenue_cents": 2340}
            ],
            "zones_omitted": 0
        });
        ensure!(without_time == expected, "published: {published}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_event_is_counted_and_leaves_the_values_alone() -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge) = platform_with_bridge().await?;
        let analytics = platform_analytics(&platform).await?;
        let (start, end) = next_window();
        let mut taxi = platform.taxi("taxi-late").await?;
        taxi.publish("position", &position(1, start + 100, ALEX, Some(25.0)))
            .await?;
        taxi.wait_acked().await?;
        let before = wait_for_window(&platform, start).await?;
        let on_time = row("fleet", 1, 1, (Some(25.0), Some(25.0)));
        ensure!(
            before
                == [
                    on_time.clone(),
                    row(ALEX_ZONE, 1, 1, (Some(25.0), Some(25.0)))
                ],
            "{before:#?}"
        );

        // The window has closed: a position and a tour event of its time come in now.
        ensure!(
            unix_ms() > end + LATENESS_MS,
            "the window is not closed yet"
        );
        taxi.publish("position", &position(2, start + 500, GATE, Some(90.0)))
            .await?;
        taxi.publish(
            "tour",
            &tour_event(1, "tour-late", false, start + 600, GATE, 390),
        )
        .await?;
        taxi.wait_acked().await?;

        let url = platform.database_url();
        let late = eventually("2 late events", ARRIVAL, || {
            let url = url.clone();
            async move {
                let db = Db::connect(&url).await?;
                let rows = windows_in(&db, "public", start, start + 1).await?;
                Ok(match rows.iter().find(|(_, row)| row.zone == "fleet") {
                    Some((_, fleet)) if fleet.late_events >= 2 => Progress::Done(rows),
                    other => Progress::Waiting(format!("{other:?}")),
                })
            }
        })
        .await?;
        // And still 2 once the window has been recounted.
        wait_for_progress(&url, "the window recounted", |(_, _, _, recounted)| {
            recounted >= end
        })
        .await?;
        let db = platform.db().await?;
        let after = windows_in(&db, "public", start, start + 1).await?;
        ensure!(after == late, "recounting changed the window: {after:#?}");
        let after: Vec<WindowRow> = after.into_iter().map(|(_, row)| row).collect();
        let late_fleet = WindowRow {
            late_events: 2,
            ..on_time
        };
        ensure!(
            after == [late_fleet, row(ALEX_ZONE, 1, 1, (Some(25.0), Some(25.0)))],
            "the late events changed the values: {after:#?}"
        );
        let counted = analytics.metric("analytics_late_events_total").await?;
        ensure!(counted == 2.0, "analytics_late_events_total = {counted}");
        let stragglers = analytics.metric("analytics_straggler_events_total").await?;
        ensure!(stragglers == 0.0, "stragglers: {stragglers}");
        Ok(())
    })
    .await
}

/// What a stream published: positions (late ones included) and tour events.
#[derive(Default)]
struct Published {
    positions: i64,
    tour_events: i64,
}

/// One step (every 100 ms) of four taxis driving: a fix each (speeds varying, two taxis in
/// each zone); every tenth step one taxi sends a fix 4 s late; each taxi starts a tour at
/// step 5 + 20 n and ends it 10 steps later.
async fn publish_step(taxis: &mut [Taxi], step: u64, published: &mut Published) -> Result<()> {
    let now = unix_ms();
    for (n, taxi) in taxis.iter_mut().enumerate() {
        let n64 = n as u64;
        let place = if n % 2 == 0 { ALEX } else { GATE };
        let speed = (!step.is_multiple_of(5)).then_some(((step * 7 + n64 * 13) % 90) as f32);
        taxi.publish("position", &position(step * 2, now, place, speed))
            .await?;
        published.positions += 1;
        if step.is_multiple_of(10) && n64 == step / 10 % 4 {
            let late = position(step * 2 + 1, now - 4_000, place, Some(1.0));
            taxi.publish("position", &late).await?;
            published.positions += 1;
        }
        let trip = format!("trip-{n}");
        if step == 5 + n64 * 20 {
            taxi.publish("tour", &tour_event(step, &trip, false, now, place, 390))
                .await?;
            published.tour_events += 1;
        }
        if step == 15 + n64 * 20 {
            taxi.publish(
                "tour",
                &tour_event(step, &trip, true, now, place, 1_000 + n64),
            )
            .await?;
            published.tour_events += 1;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_and_restarted_it_computes_the_windows_of_an_uninterrupted_run(
) -> Result<()> {
    bounded(LIMIT, async {
        let (platform, _bridge) = platform_with_bridge().await?;
        // The uninterrupted run reads the same committed rows and keeps its own tables in
        // another schema of the same database.
        let db = platform.db().await?;
        db.client()
            .batch_execute("CREATE SCHEMA uninterrupted")
            .await
            .context("creating the schema of the uninterrupted run")?;
        let mut killed = platform_analytics(&platform).await?;
        let mut steady_config = analytics_config(&platform, "a2")?;
        with_test_windows(&mut steady_config);
        steady_config.mqtt.enabled = false;
        steady_config.postgres.url = format!(
            "{}?options=-c%20search_path%3Duninterrupted%2Cpublic",
            platform.database_url()
        );
        let steady_url = steady_config.postgres.url.clone();
        let _steady = start_analytics(&steady_config).await?;
        let steady_db = Db::connect(&steady_url).await?;
        let first = [progress(&db).await?, progress(&steady_db).await?]
            .iter()
            .flatten()
            .map(|p| p.0)
            .max()
            .context("no progress rows")?;

        // The stream starts once late fixes (4 s old) fall in both runs' windows, at a
        // window boundary, and lasts 10 s.
        let stream_start = ((first + 5_000).max(unix_ms()) / LENGTH_MS + 1) * LENGTH_MS;
        let stream_end = stream_start + 10_000;
        let mut taxis = Vec::new();
        for n in 0..4 {
            taxis.push(platform.taxi(&format!("taxi-{n}")).await?);
        }
        tokio::time::sleep(Duration::from_millis(
            (stream_start - unix_ms()).max(0) as u64
        ))
        .await;
        let mut published = Published::default();
        let (mut killed_closed, mut steady_closed) = (None, None);
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        let mut step = 0;
        while unix_ms() < stream_end {
            ticker.tick().await;
            step += 1;
            publish_step(&mut taxis, step, &mut published).await?;
            // kill -9 in the middle of the stream, start again 3 s later.
            let now = unix_ms();
            if killed_closed.is_none() && now >= stream_start + 3_000 {
                killed.kill().await?;
                killed_closed = progress(&db).await?.map(|p| p.1);
            }
            if steady_closed.is_none() && now >= stream_start + 6_000 {
                steady_closed = progress(&steady_db).await?.map(|p| p.1);
                killed.start()?;
            }
        }
        for taxi in &mut taxis {
            taxi.wait_acked().await?;
        }
        killed.wait_ready().await?;
        let (killed_closed, steady_closed) = (
            killed_closed.context("never killed")?,
            steady_closed.context("never restarted")?,
        );
        ensure!(
            steady_closed > killed_closed,
            "no window fell due while the process was down ({killed_closed} / {steady_closed})"
        );

        // Everything closed, scanned for late events and recounted by both.
        let last = stream_end + LENGTH_MS;
        for url in [platform.database_url(), steady_url.clone()] {
            wait_for_progress(&url, "every window of the stream recounted", |p| {
                p.3 >= last
            })
            .await?;
        }
        let from = first;
        let restarted = windows_in(&db, "public", from, last).await?;
        let uninterrupted = windows_in(&db, "uninterrupted", from, last).await?;
        ensure!(
            restarted == uninterrupted,
            "the restarted run differs:\n{restarted:#?}\nthe uninterrupted one:\n{uninterrupted:#?}"
        );

        // And they are right: every fix is in a window's values or among its late events.
        // (The first window may hold the probe positions sent before the runs started; the
        // stream's fixes, late ones included, are all in later windows.)
        let fleet: Vec<&WindowRow> = restarted
            .iter()
            .filter(|(start, row)| row.zone == "fleet" && *start >= first + LENGTH_MS)
            .map(|(_, row)| row)
            .collect();
        let counted: i64 = fleet.iter().map(|r| r.positions + r.late_events).sum();
        let tours: i64 = fleet.iter().map(|r| r.tours_started + r.tours_ended).sum();
        let late: i64 = fleet.iter().map(|r| r.late_events).sum();
        ensure!(late > 0, "no late events in the stream");
        ensure!(
            (counted, tours) == (published.positions, published.tour_events),
            "{counted} positions and late events, {tours} tours; published {} positions, {} \
             tour events",
            published.positions,
            published.tour_events
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_sent_and_accepted_are_counted_in_their_windows() -> Result<()> {
    bounded(LIMIT, async {
        let platform = Platform::start().await?;
        let config = dispatch_config(&platform, "d1", 30_000)?;
        let running = platform.start_bridge(&config).await?;
        let api = DispatchApi {
            addr: running
                .dispatch_api
                .context("the dispatch API is not running")?,
        };
        wait_dispatch_subscribed(running.http_addr, 1.0).await?;
        platform.wait_until_consuming().await?;
        let _analytics = platform_analytics(&platform).await?;

        let cert = platform.pki.client("taxi-o", "taxi")?;
        let mut taxi = inbox_taxi(&platform, &cert, false).await?;
        // Three orders (two accepted, one rejected) and a message, which is not an order.
        let answers: BTreeMap<&str, &str> = BTreeMap::from([
            ("o-1", "accepted"),
            ("o-2", "rejected"),
            ("o-3", "accepted"),
            ("m-1", "accepted"),
        ]);
        let mut seen = Vec::new();
        for (seq, (&id, &state)) in answers.iter().enumerate() {
            let kind = if id.starts_with('m') {
                "message"
            } else {
                "order"
            };
            api.send(json!({
                "taxi_id": "taxi-o", "kind": kind, "text": format!("{id} please"),
                "order_id": id
            }))
            .await?;
            // Copies of the ones answered may come first: the platform sends an order
            // again until its taxi's answer is stored.
            let received = next_new_inbox(&mut taxi, "taxi-o", &seen).await?;
            ensure!(received.order_id == id, "{received:?}");
            seen.push(id);
            answer(&mut taxi, "taxi-o", seq as u64 + 1, id, state, None).await?;
            api.wait_for_state(id, state).await?;
        }

        // Once the windows of every order event are closed: exactly three sent, two accepted.
        let db = platform.db().await?;
        let (last,): (Timestamp,) = db.row("SELECT max(at) FROM order_events", &[]).await?;
        let last_end = (last.ms() / LENGTH_MS + 1) * LENGTH_MS;
        wait_for_progress(
            &platform.database_url(),
            "the orders' windows closed",
            |p| p.1 >= last_end,
        )
        .await?;
        let (first, ..) = progress(&db).await?.context("no progress")?;
        let rows = windows_in(&db, "public", first, last_end).await?;
        let fleet = rows.iter().filter(|(_, row)| row.zone == "fleet");
        let sent: i64 = fleet.clone().map(|(_, row)| row.orders_sent).sum();
        let accepted: i64 = fleet.map(|(_, row)| row.orders_accepted).sum();
        ensure!(
            (sent, accepted) == (3, 2),
            "sent {sent}, accepted {accepted}"
        );
        ensure!(
            rows.iter()
                .filter(|(_, row)| row.zone != "fleet")
                .all(|(_, row)| row.orders_sent == 0 && row.orders_accepted == 0),
            "orders in a zone row: {rows:#?}"
        );
        Ok(())
    })
    .await
}

/// `windows_progress.published_until`, ms.
async fn published_until(db: &Db) -> Result<i64> {
    let (published,): (Timestamp,) = db
        .row("SELECT published_until FROM windows_progress", &[])
        .await?;
    Ok(published.ms())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_keep_closing_while_the_broker_is_down_and_are_published_when_it_is_back(
) -> Result<()> {
    bounded(LIMIT, async {
        let pki = TestPki::new()?;
        let (mut broker, running) = RestartableBroker::start(&pki)?;
        let platform = Platform::with_broker(pki, running).await?;
        let config = platform.bridge_config("b1", platform.embedded_archive("s3-b1"));
        let _bridge = platform.start_bridge(&config).await?;
        platform.wait_until_consuming().await?;
        let analytics = platform_analytics(&platform).await?;
        let url = platform.database_url();
        let db = platform.db().await?;
        let (first, ..) = progress(&db).await?.context("no progress")?;
        eventually("a first window published", ARRIVAL, || async {
            let published = published_until(&db).await?;
            Ok(if published > first {
                Progress::Done(())
            } else {
                Progress::Waiting(format!("published until {published}"))
            })
        })
        .await?;

        broker.stop();
        let published_before = published_until(&db).await?;
        let sent_before = analytics
            .metric("analytics_windows_published_total")
            .await?;
        let (_, closed_before, ..) = progress(&db).await?.context("no progress")?;
        // Two more windows are closed into PostgreSQL, none is published.
        wait_for_progress(&url, "two windows closed without the broker", |p| {
            p.1 >= closed_before + 2 * LENGTH_MS
        })
        .await?;
        ensure!(
            published_until(&db).await? == published_before,
            "published while the broker was down"
        );

        let _broker = broker.restart(&platform.pki)?;
        let (_, closed, ..) = progress(&db).await?.context("no progress")?;
        eventually("the missed windows published", ARRIVAL, || async {
            let published = published_until(&db).await?;
            Ok(if published >= closed {
                Progress::Done(())
            } else {
                Progress::Waiting(format!("published until {published}, closed {closed}"))
            })
        })
        .await?;
        let sent = analytics
            .metric("analytics_windows_published_total")
            .await?
            - sent_before;
        let missed = (closed - published_before) / LENGTH_MS;
        ensure!(
            sent >= missed as f64,
            "{sent} windows published for {missed} missed"
        );

        // The latest window is retained: an operator subscribing now gets it at once.
        let operator_cert = platform.pki.client("operator", "operator")?;
        let mut operator = platform
            .broker
            .mosquitto_sub(&operator_cert)
            .topic(TOPIC)
            .qos(1)
            .spawn()?;
        let latest = operator.expect_message(TOPIC).await?;
        let latest: Value = serde_json::from_str(&latest).context("not JSON")?;
        let start = latest["window_start_ms"].as_i64().unwrap_or(0);
        ensure!(
            start >= closed - LENGTH_MS,
            "the retained window starts at {start}, the last closed one ended at {closed}"
        );
        Ok(())
    })
    .await
}
