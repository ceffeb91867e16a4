//! The reporting API against a real PostgreSQL (and a real Redis): who gets in, exact
//! reports over known rows, pages that neither skip nor repeat while rows arrive, CSV that
//! streams a large range in bounded memory, and cached answers dropped when their day is
//! recomputed.

use std::collections::BTreeSet;

use analytics::daily::{DaySummary, Source, Totals};
use anyhow::{ensure, Context, Result};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use tests::pki::TestPki;
use tests::platform::{eventually, Progress};
use tests::reporting::{
    config, start_in_process, Database, Redis, ReportingProcess, ADMIN, ANALYST, DISPATCHER, VIEWER,
};

fn at(text: &str) -> Timestamp {
    text.parse().expect("a test instant")
}

fn range(from: &str, to: &str) -> String {
    format!("from={from}&to={to}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_need_a_valid_token_and_the_permission() -> Result<()> {
    tests::init();
    let database = Database::start().await?;
    let pki = TestPki::new()?;
    let api = start_in_process(config(&database.url(), &pki), &pki).await?;

    // No credentials, a token nobody was given, another scheme: 401 with a challenge.
    let none = api.get("/v1/fleet", None).await?;
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(none
        .header("www-authenticate")
        .is_some_and(|c| c.starts_with("Bearer")));
    let unknown = api.get("/v1/fleet", Some("not-a-token-of-ours")).await?;
    assert_eq!(unknown.status, 401);
    assert!(unknown
        .header("www-authenticate")
        .is_some_and(|c| c.contains("invalid_token")));
    let forged_jwt = api
        .get(
            "/v1/fleet",
            Some("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln"),
        )
        .await?;
    assert_eq!(
        forged_jwt.status, 401,
        "single sign-on is off: {}",
        forged_jwt.body
    );

    // Each role sees what it may.
    let me = api.get("/v1/me", Some(VIEWER)).await?.json()?;
    assert_eq!(me["name"], "token:viewer-app");
    assert_eq!(me["permissions"], serde_json::json!(["fleet", "reports"]));
    let day = range("2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z");
    for (token, path, status) in [
        (VIEWER, "/v1/fleet".to_owned(), 200),
        (VIEWER, format!("/v1/windows?{day}"), 200),
        (VIEWER, format!("/v1/invoices?{day}"), 403),
        (VIEWER, format!("/v1/trips?{day}"), 403),
        (VIEWER, format!("/v1/orders?{day}"), 403),
        (DISPATCHER, format!("/v1/orders?{day}"), 200),
        (DISPATCHER, format!("/v1/invoices?{day}"), 403),
        (ANALYST, format!("/v1/invoices?{day}"), 200),
        (ADMIN, format!("/v1/invoices?{day}"), 200),
        (ADMIN, format!("/v1/taxis/taxi-1/route?{day}"), 200),
    ] {
        let answer = api.get(&path, Some(token)).await?;
        assert_eq!(answer.status, status, "{token} {path}: {}", answer.body);
    }

    // Bad parameters: 400 or 422, naming the parameter.
    for (path, status, parameter) in [
        ("/v1/windows?form=2026-06-01T00:00:00Z", 400, "form"),
        ("/v1/windows?from=yesterday", 400, "from"),
        (
            "/v1/windows?from=2026-06-02T00:00:00Z&to=2026-06-01T00:00:00Z",
            422,
            "from",
        ),
        ("/v1/windows?limit=0", 422, "limit"),
        ("/v1/windows?limit=many", 400, "limit"),
        ("/v1/windows?zone=Berlin", 400, "zone"),
        ("/v1/windows?cursor=bogus", 400, "cursor"),
        ("/v1/daily?from=2026-13-01", 400, "from"),
        ("/v1/daily?source=paris", 400, "source"),
        ("/v1/taxis/taxi%2F..%2Fx/route", 400, "taxi"),
        (
            "/v1/taxis/taxi-1/stops?min_duration_s=-5",
            422,
            "min_duration_s",
        ),
    ] {
        let answer = api.get(path, Some(ADMIN)).await?;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert_eq!(answer.json()?["parameter"], parameter, "{path}");
    }
    assert_eq!(api.get("/v2/fleet", Some(ADMIN)).await?.status, 404);
    ensure!(
        api.metric("reporting_unauthenticated_total", &[("reason", "unknown")])
            .await?
            >= 1.0
    );
    Ok(())
}

/// Taxi-1 between 10:00 and 10:20 UTC, a fix every 10 s: standing at A for 5 minutes, driving
/// north at 36 km/h (100 m per fix) for 10 minutes, standing at B for 5 minutes.
fn known_route() -> Vec<(&'static str, i64, Timestamp, f64, f64, f32)> {
    let start = at("2026-06-10T10:00:00Z");
    let metres_per_degree = 6_371_008.8 * std::f64::consts::PI / 180.0;
    let mut rows = Vec::new();
    let mut lat = 52.5;
    for i in 0..=120i64 {
        let moving = (31..=90).contains(&i);
        if moving {
            lat += 100.0 / metres_per_degree;
        }
        let ts = start + SignedDuration::from_secs(i * 10);
        rows.push(("taxi-1", i, ts, lat, 13.4, if moving { 36.0 } else { 0.0 }));
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_taxi_reports_are_exact_over_a_known_route() -> Result<()> {
    tests::init();
    let mut database = Database::start().await?;
    database.positions(&known_route()).await?;
    database
        .client
        .batch_execute(
            "INSERT INTO tours (tour_id, taxi_id, state, started_seq, started_at, start_lat,
                                start_lon, ended_seq, ended_at, end_lat, end_lon, meter_cents,
                                updated_at)
             VALUES ('tour-1', 'taxi-1', 'ended', 1, '2026-06-10T10:05:00Z', 52.5, 13.4, 2,
                     '2026-06-10T10:15:00Z', 52.554, 13.4, 1650, now());
             INSERT INTO invoices (tour_id, taxi_id, started_at, ended_at, track_points,
                                   distance_m, driving_s, waiting_s, base_cents, distance_cents,
                                   driving_cents, waiting_cents, night_cents, zone_cents, zones,
                                   fare_cents, currency, meter_cents, difference_cents, flagged,
                                   order_id, issued_at)
             VALUES ('tour-1', 'taxi-1', '2026-06-10T10:05:00Z', '2026-06-10T10:15:00Z', 61,
                     6000, 600, 0, 400, 1200, 0, 0, 0, 0, '{}', 1600, 'EUR', 1650, 50, false,
                     'invoice-tour-1', now());",
        )
        .await?;
    let pki = TestPki::new()?;
    let api = start_in_process(config(&database.url(), &pki), &pki).await?;
    let window = range("2026-06-10T10:00:00Z", "2026-06-10T11:00:00Z");

    let summary = api
        .get(&format!("/v1/taxis/taxi-1/summary?{window}"), Some(ADMIN))
        .await?
        .json()?;
    assert_eq!(summary["positions"], 121);
    let distance = summary["distance_m"].as_f64().context("distance_m")?;
    assert!((distance - 6000.0).abs() < 1.0, "{summary}");
    assert_eq!(summary["driving_s"], 600.0);
    assert_eq!(summary["max_speed_kmh"], 36.0);
    assert_eq!(summary["tours"], 1);
    assert_eq!(summary["revenue_cents"], 1600);
    assert_eq!(summary["first_at"], "2026-06-10T10:00:00.000000Z");
    assert_eq!(summary["last_at"], "2026-06-10T10:20:00.000000Z");

    let stops = api
        .all_pages(&format!("/v1/taxis/taxi-1/stops?{window}"), ADMIN)
        .await?;
    let spans: Vec<(&str, &str, f64)> = stops
        .iter()
        .map(|s| {
            (
                s["started_at"].as_str().unwrap_or_default(),
                s["ended_at"].as_str().unwrap_or_default(),
                s["duration_s"].as_f64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        spans,
        [(
            "2026-06-10T10:00:00.000000Z",
            "2026-06-10T10:05:00.000000Z",
            300.0
        )],
        "the second stand, 4 min 50 s, is shorter than the 5 minute default"
    );
    let short = api
        .all_pages(
            &format!("/v1/taxis/taxi-1/stops?{window}&min_duration_s=60"),
            ADMIN,
        )
        .await?;
    assert_eq!(short.len(), 2, "{short:?}");

    // The route in pages of 50: every fix once, in order.
    let route = api
        .all_pages(&format!("/v1/taxis/taxi-1/route?{window}&limit=50"), ADMIN)
        .await?;
    let seqs: Vec<i64> = route.iter().filter_map(|p| p["seq"].as_i64()).collect();
    assert_eq!(seqs, (0..=120).collect::<Vec<i64>>());

    let trips = api
        .get(&format!("/v1/taxis/taxi-1/trips?{window}"), Some(ADMIN))
        .await?
        .json()?;
    assert_eq!(trips["items"][0]["tour_id"], "tour-1");
    assert_eq!(trips["items"][0]["fare_cents"], 1600);
    assert_eq!(trips["next"], Value::Null);

    let fleet = api.get("/v1/fleet", Some(VIEWER)).await?.json()?;
    assert_eq!(
        fleet["count"], 0,
        "no latest_positions row was written: {fleet}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_neither_skip_nor_repeat_rows_while_rows_are_inserted() -> Result<()> {
    tests::init();
    let mut database = Database::start().await?;
    let t0 = at("2026-06-10T12:00:00Z");
    // 300 fixes, one per second, with odd sequence numbers.
    let first: Vec<_> = (0..300i64)
        .map(|i| {
            (
                "taxi-2",
                2 * i + 1,
                t0 + SignedDuration::from_secs(i),
                52.5,
                13.4,
                10.0,
            )
        })
        .collect();
    database.positions(&first).await?;
    let pki = TestPki::new()?;
    let mut settings = config(&database.url(), &pki);
    settings.cache.enabled = false;
    let api = start_in_process(settings, &pki).await?;

    let mut seen: Vec<i64> = Vec::new();
    let mut next = Some(format!(
        "/v1/taxis/taxi-2/route?{}&limit=25",
        range("2026-06-10T12:00:00Z", "2026-06-10T13:00:00Z")
    ));
    let mut pages = 0;
    let mut inserted_after = BTreeSet::new();
    while let Some(path) = next {
        let page = api.get(&path, Some(ADMIN)).await?.json()?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        seen.extend(items.iter().filter_map(|p| p["seq"].as_i64()));
        next = page["next"].as_str().map(str::to_owned);
        pages += 1;
        // Between pages, new rows: one at the same second as a row already served (it sorts
        // before the cursor: never served), one later (after the cursor: served once).
        if next.is_some() {
            let i = pages * 20;
            let second = |s: i64| t0 + SignedDuration::from_secs(s);
            let behind = ("taxi-2", 10_000 + 2 * i, second(i - 15), 52.5, 13.4, 10.0);
            let ahead = ("taxi-2", 20_000 + 2 * i, second(i + 100), 52.5, 13.4, 10.0);
            database.positions(&[behind, ahead]).await?;
            inserted_after.insert(ahead.1);
        }
    }
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a row was served twice: {seen:?}");
    for row in &first {
        assert!(unique.contains(&row.1), "row {} was skipped", row.1);
    }
    for seq in &seen {
        assert!(
            seq % 2 == 1 || *seq >= 20_000,
            "row {seq} was inserted behind the cursor yet served"
        );
    }
    let served_later: BTreeSet<i64> = seen.iter().copied().filter(|s| *s >= 20_000).collect();
    assert_eq!(
        served_later, inserted_after,
        "every row inserted ahead of the cursor shows up on a later page"
    );
    assert!(pages >= 12, "{pages} pages");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_streams_a_large_range_in_bounded_memory() -> Result<()> {
    tests::init();
    let mut database = Database::start().await?;
    const ROWS: i64 = 300_000;
    let t0 = at("2026-06-11T00:00:00Z");
    database
        .partitions(t0, t0 + SignedDuration::from_secs(ROWS / 10))
        .await?;
    database
        .client
        .execute(
            "INSERT INTO positions (taxi_id, seq, ts, lat, lon, speed_kmh, received_at)
             SELECT 'taxi-3', i, $1::timestamptz + i * interval '100 milliseconds',
                    52.5 + i * 1e-7, 13.4, 30, now()
               FROM generate_series(1, $2::bigint) AS i",
            &[&t0, &ROWS],
        )
        .await?;
    let pki = TestPki::new()?;
    let service = ReportingProcess::spawn(config(&database.url(), &pki), &pki).await?;
    let idle_kib = service.peak_rss_kib()?;
    let path = format!(
        "/v1/taxis/taxi-3/route?{}",
        range("2026-06-11T00:00:00Z", "2026-06-12T00:00:00Z")
    );
    let (status, lines, bytes, header) = service.api.csv_lines(&path, ADMIN).await?;
    assert_eq!(status, 200);
    assert_eq!(lines, ROWS as u64 + 1, "a header and every row");
    assert_eq!(
        header,
        "ts,seq,lat,lon,speed_kmh,heading_deg,accuracy_m,received_at"
    );
    let peak_kib = service.peak_rss_kib()?;
    let grown_mib = (peak_kib.saturating_sub(idle_kib)) as f64 / 1024.0;
    eprintln!(
        "CSV of {ROWS} rows, {:.1} MiB: peak RSS {idle_kib} KiB -> {peak_kib} KiB (+{grown_mib:.1} MiB)",
        bytes as f64 / 1048576.0
    );
    assert!(
        grown_mib < (bytes as f64 / 1048576.0) / 2.0 && grown_mib < 24.0,
        "memory grew by {grown_mib:.1} MiB for a {:.1} MiB export: it is not streamed",
        bytes as f64 / 1048576.0
    );
    // The same report as JSON is paged, not whole.
    let page = service.api.get(&path, Some(ADMIN)).await?.json()?;
    assert_eq!(page["count"], 100);
    assert!(page["next"].as_str().is_some());
    Ok(())
}

/// Writes `trips` for `day` through the analytics layer's own store (which notifies).
async fn write_day(client: &mut tokio_postgres::Client, day: &str, trips: i64) -> Result<()> {
    let summary = DaySummary {
        day: day.parse()?,
        source: Source::Fleet,
        totals: Totals {
            trips,
            revenue_cents: trips * 1500,
            distance_m: trips as f64 * 4000.0,
            active_taxis: Some(3),
            positions: Some(trips * 100),
            avg_fare_cents: Some(1500.0),
            flagged_invoices: Some(0),
            orders: None,
        },
        zones: Vec::new(),
    };
    analytics::daily::store::replace_day(client, &summary).await?;
    Ok(())
}

/// The days' trips and the cache's verdict (`x-cache`).
async fn daily_trips(
    api: &tests::reporting::Api,
    token: &str,
) -> Result<(Vec<i64>, Vec<i64>, String)> {
    let answer = api
        .get(
            "/v1/daily?from=2026-05-01&to=2026-05-03&source=fleet",
            Some(token),
        )
        .await?;
    ensure!(answer.status == 200, "{}", answer.body);
    let page = answer.json()?;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    Ok((
        items.iter().filter_map(|d| d["trips"].as_i64()).collect(),
        items
            .iter()
            .filter_map(|d| d["cumulative_trips"].as_i64())
            .collect(),
        answer.header("x-cache").unwrap_or_default().to_owned(),
    ))
}

async fn cached_days_are_dropped_when_recomputed(redis_url: Option<String>) -> Result<()> {
    let mut database = Database::start().await?;
    for (day, trips) in [("2026-05-01", 10), ("2026-05-02", 20), ("2026-05-03", 30)] {
        write_day(&mut database.client, day, trips).await?;
    }
    let pki = TestPki::new()?;
    let mut settings = config(&database.url(), &pki);
    settings.cache.redis_url = redis_url.clone();
    let first = start_in_process(settings.clone(), &pki).await?;
    // With Redis, a second instance shares the answers.
    let second = match redis_url {
        Some(_) => Some(start_in_process(settings, &pki).await?),
        None => None,
    };

    let (trips, cumulative, cache) = daily_trips(&first, VIEWER).await?;
    assert_eq!((trips, cumulative), (vec![10, 20, 30], vec![10, 30, 60]));
    assert_eq!(cache, "miss");
    assert_eq!(daily_trips(&first, VIEWER).await?.2, "hit");
    if let Some(second) = &second {
        assert_eq!(
            daily_trips(second, ANALYST).await?.2,
            "hit",
            "shared through Redis"
        );
    }
    let backend = if second.is_some() { "redis" } else { "memory" };
    let hits = first
        .metric(
            "reporting_cache_requests_total",
            &[("result", "hit"), ("backend", backend)],
        )
        .await?;
    assert!(hits >= 1.0, "hits counted: {hits}");

    // The analytics layer recomputes 2026-05-02: the answer covering it goes, everywhere.
    write_day(&mut database.client, "2026-05-02", 25).await?;
    for api in std::iter::once(&first).chain(second.as_ref()) {
        let (trips, cumulative) = eventually(
            "the recomputed day served",
            std::time::Duration::from_secs(10),
            || async {
                let (trips, cumulative, _) = daily_trips(api, VIEWER).await?;
                Ok(if trips == [10, 25, 30] {
                    Progress::Done((trips, cumulative))
                } else {
                    Progress::Waiting(format!("{trips:?}"))
                })
            },
        )
        .await?;
        assert_eq!(trips, [10, 25, 30]);
        assert_eq!(cumulative, [10, 35, 65], "later days' running totals too");
    }
    assert_eq!(daily_trips(&first, VIEWER).await?.2, "hit", "cached again");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_days_are_dropped_when_recomputed_in_process() -> Result<()> {
    tests::init();
    cached_days_are_dropped_when_recomputed(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_days_are_dropped_when_recomputed_in_a_shared_redis() -> Result<()> {
    tests::init();
    let mut redis = Redis::start().await?;
    cached_days_are_dropped_when_recomputed(Some(redis.url.clone())).await?;
    redis.stop().await
}
