//! The speed layer under load: taxis publish positions through the broker at a given rate,
//! the bridge commits them, the speed layer closes 10-second windows. Measured from outside:
//! for each window, the delay from its end plus the allowed lateness to its fleet row being
//! visible in PostgreSQL (polled every 10 ms). The baseline, in the same run, is the bridge's
//! own receive-to-commit delay: a window cannot be right before its last position is stored.
//! The bridge and the speed layer each run on their own runtime, as their own processes do.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::ingest::bridge::{BridgeSettings, BridgeUnderTest};
use crate::ingest::database::Database;
use crate::load::{self, Taxis, Timeline};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use simulator::pki::BenchPki;

use super::say;

/// How the phase runs.
#[derive(Clone, Debug)]
pub struct WindowsArgs {
    pub taxis: usize,
    /// Positions per second, all taxis together.
    pub rate: f64,
    /// Seconds of publishing measured (after a warm-up of one window).
    pub seconds: f64,
    /// The speed layer's `windows.allowed_lateness_ms`.
    pub lateness_ms: u64,
    pub broker_bin: PathBuf,
}

/// What the phase measured.
#[derive(Clone, Debug)]
pub struct WindowsResult {
    /// Windows measured (whole windows inside the publishing period).
    pub windows: u64,
    /// Delay from window end + allowed lateness to the row visible, milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Positions per second offered and per window on average.
    pub offered_per_s: f64,
    pub positions_per_window: f64,
    /// The bridge's receive-to-commit p99 over the same run, milliseconds.
    pub bridge_commit_p99_ms: Option<f64>,
}

pub async fn run(args: &WindowsArgs) -> Result<WindowsResult> {
    let taxis = args.taxis;
    say(
        "windows",
        format!("creating certificates for {taxis} taxis"),
    );
    let (pki, bridge_files, analytics_files) = tokio::task::spawn_blocking(move || -> Result<_> {
        let pki = BenchPki::create(taxis)?;
        let bridge = pki.issue_files("bridge", "bridge")?;
        let analytics = pki.issue_files("analytics", "analytics")?;
        Ok((pki, bridge, analytics))
    })
    .await
    .context("certificate task failed")??;
    say(
        "windows",
        "starting PostgreSQL, the broker, the bridge".to_owned(),
    );
    let database = Database::start().await?;
    let url = database.create("windows").await?;
    let broker = crate::target::start(&args.broker_bin, &pki, taxis + 200, 1).await?;
    let addr = broker.addr();
    let bridge = BridgeUnderTest::start(&BridgeSettings {
        broker_port: addr.port(),
        ca: pki.ca_cert.clone(),
        cert: bridge_files.0.clone(),
        key: bridge_files.1.clone(),
        postgres_url: url.clone(),
        connections: 32,
        batch: 1000,
        batch_delay_ms: None,
    })
    .await?;
    let scratch = tempfile::tempdir().context("creating the analytics directory")?;
    let mut config = analytics::Config::default();
    config.postgres.url = url.clone();
    config.data_dir = scratch.path().to_owned();
    config.mqtt.host = "127.0.0.1".to_owned();
    config.mqtt.port = addr.port();
    config.mqtt.ca = pki.ca_cert.clone();
    config.mqtt.cert = analytics_files.0.clone();
    config.mqtt.key = analytics_files.1.clone();
    config.daily.enabled = false;
    config.windows.allowed_lateness_ms = args.lateness_ms;
    config.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.validate().context("analytics configuration")?;
    // Its own runtime, as `analytics run` is its own process: the taxis' load generator
    // in this process does not take its turns.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("analytics")
        .enable_all()
        .build()
        .context("starting the analytics runtime")?;
    let _analytics = runtime
        .spawn(analytics::start(config))
        .await
        .context("analytics start task failed")??;

    let outcome = measure(args, &pki, addr, &url, &bridge).await;
    runtime.shutdown_background();
    bridge.stop().await;
    broker.stop(Duration::from_secs(5)).await;
    drop(database);
    outcome
}

async fn measure(
    args: &WindowsArgs,
    pki: &BenchPki,
    addr: SocketAddr,
    url: &str,
    bridge: &BridgeUnderTest,
) -> Result<WindowsResult> {
    let client = analytics::db::connect_once(url).await?;
    let connections = load::connect_taxis(addr, &pki.taxis[..args.taxis]).await?;
    let ids: Vec<String> = pki.taxis[..args.taxis]
        .iter()
        .map(|t| t.id.clone())
        .collect();
    let warmup = Duration::from_secs(10);
    let timeline = Timeline::starting_soon(warmup, Duration::from_secs_f64(args.seconds));
    let measured_from_ms = unix_ms() + warmup.as_millis() as i64 + 100;
    let measured_to_ms = measured_from_ms + (args.seconds * 1000.0) as i64;
    let taxis = Taxis::start(connections, &ids, args.rate / args.taxis as f64, timeline);
    say(
        "windows",
        format!(
            "{} taxis publishing {:.0} positions/s for {:.0} s (+{} s warm-up)",
            args.taxis,
            args.rate,
            args.seconds,
            warmup.as_secs()
        ),
    );
    let mut delays = Histogram::<u64>::new(3).context("histogram")?;
    let mut positions = 0i64;
    let mut last_end_ms = 0i64;
    let deadline =
        Instant::now() + warmup + Duration::from_secs_f64(args.seconds + 30.0) + lateness(args);
    while Instant::now() < deadline {
        let rows = client
            .query(
                "SELECT (extract(epoch FROM window_start) * 1000)::float8,
                        (extract(epoch FROM window_end) * 1000)::float8, positions
                   FROM windows WHERE zone = 'fleet' AND window_end > to_timestamp($1::float8 / 1000)
                  ORDER BY window_start",
                &[&(last_end_ms as f64)],
            )
            .await
            .context("polling the windows table")?;
        let seen_ms = unix_ms();
        for row in rows {
            let start_ms = row.get::<_, f64>(0) as i64;
            let end_ms = row.get::<_, f64>(1) as i64;
            last_end_ms = last_end_ms.max(end_ms);
            if start_ms >= measured_from_ms && end_ms <= measured_to_ms {
                let due = end_ms + args.lateness_ms as i64;
                delays.record(u64::try_from(seen_ms - due).unwrap_or(0))?;
                positions += row.get::<_, i64>(2);
            }
        }
        if last_end_ms > measured_to_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let offered = taxis.acked() as f64 / (warmup.as_secs_f64() + args.seconds);
    taxis.stop().await;
    let metrics = bridge.metrics().await?;
    let windows = delays.len();
    if windows == 0 {
        anyhow::bail!("no window of the measured period appeared in PostgreSQL");
    }
    Ok(WindowsResult {
        windows,
        p50_ms: delays.value_at_quantile(0.5) as f64,
        p99_ms: delays.value_at_quantile(0.99) as f64,
        max_ms: delays.max() as f64,
        offered_per_s: offered,
        positions_per_window: positions as f64 / windows as f64,
        bridge_commit_p99_ms: metrics
            .quantile("bridge_receive_to_commit_seconds", "0.99")
            .map(|s| s * 1000.0),
    })
}

fn lateness(args: &WindowsArgs) -> Duration {
    Duration::from_millis(args.lateness_ms)
}

fn unix_ms() -> i64 {
    simulator::measure::unix_ms()
}
