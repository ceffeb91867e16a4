//! `bench bridge`: the ingest benchmark. Simulated taxis publish QoS 1 positions through the
//! broker (a child process); the bridge (in this process, on its own runtime) stores them in a
//! private PostgreSQL cluster and archives them through its embedded S3 server. Measured in
//! one run, each phase on a database of its own:
//!
//! 1. `ceiling`: PostgreSQL's own binary COPY rate for the same rows, and the rate of the
//!    bridge's `Store::write` without MQTT ([`ceiling`]);
//! 2. `bridge`: sustained positions per second committed, publish-to-commit delay seen by a
//!    probe taxi ([`probe`]), backlog, losses, and the CPU of each process ([`bridge`]);
//! 3. `naive`: a bridge with one autocommit INSERT per message on the same stream, the floor
//!    ([`naive`]).
//!
//! The table is rendered by [`report`]; PostgreSQL is set up by [`database`].

pub mod bridge;
pub mod ceiling;
pub mod database;
pub mod naive;
pub mod probe;
pub mod report;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::oneshot;

use crate::brokers::raise_open_files;
use crate::load::{self, Taxis, Timeline};
use crate::process::BrokerProcess;
use crate::target;
use bridge::{BridgeSettings, BridgeUnderTest, Metrics};
use ceiling::WriteRate;
use database::Database;
use naive::NaiveBridge;
use probe::{Probe, ProbeReport, ProbeWindow};
use simulator::measure::{CpuMeter, CpuUse, ThreadCpuMeter};
use simulator::pki::{BenchPki, Client};

/// A part of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IngestPhase {
    /// PostgreSQL's binary COPY rate and the bridge's Store::write rate, without MQTT.
    Ceiling,
    /// Taxis through the broker into the bridge: sustained rate, delay, losses.
    Bridge,
    /// One autocommit INSERT per message on the same stream.
    Naive,
}

/// Everything `bench bridge` is told.
#[derive(Clone, Debug)]
pub struct IngestArgs {
    /// Publishing taxis, one connection each.
    pub taxis: usize,
    /// Positions per second offered by all taxis together.
    pub rate: f64,
    /// Measured seconds of the bridge phase, after the warm-up.
    pub seconds: f64,
    pub warmup: f64,
    /// Measured seconds of the naive phase.
    pub naive_seconds: f64,
    /// `mqtt.connections` of the bridge.
    pub connections: usize,
    /// `batch.max_messages` of the bridge (and the batch size of the ceiling phase).
    pub batch: usize,
    /// `batch.max_delay_ms` of the bridge; `None` keeps its default.
    pub batch_delay_ms: Option<u64>,
    /// Rows of the ceiling phase; `None`: as many as the bridge phase offers in its window.
    pub ceiling_rows: Option<u64>,
    pub broker_bin: PathBuf,
    pub phases: Vec<IngestPhase>,
    /// Keep the certificates, broker configurations and logs.
    pub keep: bool,
}

impl IngestArgs {
    fn ceiling_rows(&self) -> u64 {
        self.ceiling_rows
            .unwrap_or((self.rate * self.seconds) as u64)
            .max(1)
    }

    fn runs(&self, phase: IngestPhase) -> bool {
        self.phases.contains(&phase)
    }
}

/// The ceiling phase's results.
#[derive(Clone, Copy, Debug, Default)]
pub struct CeilingResult {
    pub copy: WriteRate,
    pub store_one: WriteRate,
    pub store_two: WriteRate,
}

/// The bridge phase's results.
#[derive(Clone, Debug, Default)]
pub struct BridgeResult {
    pub window: Duration,
    /// Positions handed to the taxis' clients, per second of the window.
    pub published_per_s: f64,
    /// Positions acknowledged by the broker (PUBACK), per second of the window.
    pub offered_per_s: f64,
    /// Positions committed by the bridge, per second of the window.
    pub committed_per_s: f64,
    /// Slowest and fastest second of the window.
    pub committed_min_s: f64,
    pub committed_max_s: f64,
    /// Acknowledged by the broker but not committed yet, at the window's start and end.
    pub backlog_start: i64,
    pub backlog_end: i64,
    /// From the first probe position's publish to its commit, before the load started.
    pub ready_after: Duration,
    pub probe: ProbeReport,
    /// After the window: how long until everything acknowledged was committed (or gave up).
    pub drain: Drain,
    /// Over the whole run: acknowledged by the broker, stored, acknowledged but not stored,
    /// stored without a PUBACK seen.
    pub acked: u64,
    pub stored: u64,
    pub lost: u64,
    pub stored_unacked: u64,
    /// Redeliveries the bridge dropped by key, and messages refused by validation.
    pub duplicates: u64,
    pub dead_letters: u64,
    pub broker_cpu: CpuUse,
    /// The broker's busiest threads (its router is one of them).
    pub broker_threads: Vec<(String, CpuUse)>,
    pub bridge_cpu: CpuUse,
    pub postgres_cpu: CpuUse,
    pub generator_cpu: CpuUse,
    /// The whole machine, all CPUs: this run's processes and anything else running.
    pub machine_cpu: CpuUse,
    /// From the bridge's own metrics, over the whole run.
    pub batch_mean: Option<f64>,
    pub commit_mean_s: Option<f64>,
    pub commit_p99_s: Option<f64>,
    pub receive_to_commit_p99_s: Option<f64>,
    pub errors: u64,
    pub first_errors: Vec<String>,
}

/// The naive phase's results.
#[derive(Clone, Copy, Debug, Default)]
pub struct NaiveResult {
    pub window: Duration,
    pub offered_per_s: f64,
    pub inserted_per_s: f64,
    pub failed: u64,
}

/// Everything measured; a phase not run is `None`, a failed one holds its error.
#[derive(Debug, Default)]
pub struct IngestResults {
    pub ceiling: Option<Result<CeilingResult, String>>,
    pub bridge: Option<Result<BridgeResult, String>>,
    pub naive: Option<Result<NaiveResult, String>>,
}

/// The probe taxi's id (and certificate CN).
const PROBE_ID: &str = "probe";

/// Runs the benchmark and prints the report.
pub async fn run(args: IngestArgs) -> Result<()> {
    validate(&args)?;
    if args.runs(IngestPhase::Bridge) || args.runs(IngestPhase::Naive) {
        target::check_binary(&args.broker_bin)?;
    }
    raise_open_files((args.taxis + args.connections + 1024) as u64)?;

    progress(
        "setup",
        format!(
            "creating a CA, a server certificate, {} taxi certificates, the probe's and the \
             bridge's",
            args.taxis
        ),
    );
    let taxis = args.taxis;
    let (pki, probe_identity, bridge_files, bridge_identity) =
        tokio::task::spawn_blocking(move || -> Result<_> {
            let pki = BenchPki::create(taxis)?;
            let probe = pki.issue(PROBE_ID, "taxi")?;
            let files = pki.issue_files("bridge", "bridge")?;
            let bridge = pki.issue("bridge", "bridge")?;
            Ok((pki, probe, files, bridge))
        })
        .await
        .context("certificate task failed")??;
    progress("setup", "starting a private PostgreSQL cluster".to_owned());
    let database = Database::start().await?;
    let postgres = database.describe().await?;
    progress("setup", postgres.clone());

    let mut results = IngestResults::default();
    if args.runs(IngestPhase::Ceiling) {
        let limit = Duration::from_secs(600 + args.ceiling_rows() / 5_000);
        let outcome = bounded(limit, ceiling(&args, &database)).await;
        results.ceiling = Some(report_outcome("ceiling", outcome, |r| {
            format!(
                "COPY {:.0} rows/s, Store::write {:.0} rows/s (1 connection), {:.0} rows/s (2)",
                r.copy.per_second(),
                r.store_one.per_second(),
                r.store_two.per_second()
            )
        }));
    }
    if args.runs(IngestPhase::Bridge) {
        let limit = Duration::from_secs_f64(args.warmup + args.seconds + 400.0);
        let phase = bridge_phase(
            &args,
            &database,
            &pki,
            &bridge_files,
            probe_identity.clone(),
        );
        let outcome = bounded(limit, phase).await;
        results.bridge = Some(report_outcome("bridge", outcome, |r| {
            format!(
                "committed {:.0} positions/s of {:.0} offered, probe p99 {:.0} ms, lost {}",
                r.committed_per_s,
                r.offered_per_s,
                r.probe.delay.p99_us as f64 / 1000.0,
                r.lost
            )
        }));
    }
    if args.runs(IngestPhase::Naive) {
        let limit = Duration::from_secs_f64(args.warmup + args.naive_seconds + 200.0);
        let outcome = bounded(
            limit,
            naive_phase(&args, &database, &pki, bridge_identity.clone()),
        )
        .await;
        results.naive = Some(report_outcome("naive", outcome, |r| {
            format!(
                "inserted {:.0} positions/s of {:.0} offered",
                r.inserted_per_s, r.offered_per_s
            )
        }));
    }

    print!("{}", report::render(&args, &postgres, &results));
    if args.keep {
        let dir = pki.keep();
        eprintln!(
            "certificates, broker configurations and logs kept in {}",
            dir.display()
        );
    }
    drop(database);
    Ok(())
}

fn validate(args: &IngestArgs) -> Result<()> {
    if args.taxis == 0 || args.taxis > 10_000 {
        bail!("--taxis must be between 1 and 10000");
    }
    if !(args.rate > 0.0 && args.rate <= 1_000_000.0) {
        bail!("--rate must be above 0 and at most 1000000 positions per second in all");
    }
    if args.rate / args.taxis as f64 > 1_000.0 {
        bail!("at most 1000 positions per second per taxi: use more --taxis");
    }
    if !(1.0..=3600.0).contains(&args.seconds)
        || !(0.0..=600.0).contains(&args.warmup)
        || !(1.0..=3600.0).contains(&args.naive_seconds)
    {
        bail!("--seconds and --naive-seconds must be 1 to 3600, --warmup 0 to 600");
    }
    if args.connections == 0 || args.connections > 256 {
        bail!("--connections must be between 1 and 256");
    }
    if args.batch == 0 || args.batch > 1_000_000 {
        bail!("--batch must be between 1 and 1000000");
    }
    if args.phases.is_empty() {
        bail!("--phases must name at least one phase");
    }
    Ok(())
}

/// The ceiling: COPY, then `Store::write` from one and from two connections, each into a
/// fresh database after a checkpoint.
async fn ceiling(args: &IngestArgs, database: &Database) -> Result<CeilingResult> {
    let rows = args.ceiling_rows();
    let say = |text: String| progress("ceiling", text);
    say(format!(
        "generating {rows} positions of {} taxis in batches of {}",
        args.taxis, args.batch
    ));
    let (taxis, batch, rate) = (args.taxis, args.batch, args.rate);
    let batches = tokio::task::spawn_blocking(move || ceiling::generate(taxis, rows, batch, rate))
        .await
        .context("generating rows")?;
    let batches = Arc::new(batches);

    let url = database.create("ceiling_copy").await?;
    database.checkpoint().await?;
    say("binary COPY, one connection, one COPY per batch".to_owned());
    let copy = ceiling::copy(&url, &batches).await?;
    say(format!(
        "COPY: {} rows in {:.2} s, {:.0} rows/s",
        copy.rows,
        copy.elapsed.as_secs_f64(),
        copy.per_second()
    ));

    let mut store = [WriteRate::default(); 2];
    for (slot, connections) in store.iter_mut().zip([1, 2]) {
        let url = database
            .create(&format!("ceiling_store_{connections}"))
            .await?;
        database.checkpoint().await?;
        say(format!("Store::write, {connections} connection(s)"));
        *slot = ceiling::store_write(&url, batches.clone(), connections).await?;
        say(format!(
            "Store::write x{connections}: {} rows in {:.2} s, {:.0} rows/s",
            slot.rows,
            slot.elapsed.as_secs_f64(),
            slot.per_second()
        ));
    }
    Ok(CeilingResult {
        copy,
        store_one: store[0],
        store_two: store[1],
    })
}

/// The broker, the bridge, the probe and the taxis; measured, drained and checked.
async fn bridge_phase(
    args: &IngestArgs,
    database: &Database,
    pki: &BenchPki,
    (bridge_cert, bridge_key): &(PathBuf, PathBuf),
    probe_identity: Client,
) -> Result<BridgeResult> {
    let say = |text: String| progress("bridge", text);
    let url = database.create("bridge").await?;
    database.checkpoint().await?;
    let max_connections = args.taxis + args.connections + 100;
    let mut broker = target::start(&args.broker_bin, pki, max_connections, 1).await?;
    let addr = broker.addr();
    say(format!(
        "broker on {addr}; starting the bridge: {} connections, batches of {}",
        args.connections, args.batch
    ));
    let bridge = BridgeUnderTest::start(&BridgeSettings {
        broker_port: addr.port(),
        ca: pki.ca_cert.clone(),
        cert: bridge_cert.clone(),
        key: bridge_key.clone(),
        postgres_url: url.clone(),
        connections: args.connections,
        batch: args.batch,
        batch_delay_ms: args.batch_delay_ms,
    })
    .await?;
    let outcome = bridge_load(
        args,
        database,
        pki,
        &mut broker,
        &bridge,
        &url,
        probe_identity,
    )
    .await;
    bridge.stop().await;
    let alive = broker.check_running();
    broker.stop(Duration::from_secs(5)).await;
    let result = outcome?;
    alive?;
    Ok(result)
}

async fn bridge_load(
    args: &IngestArgs,
    database: &Database,
    pki: &BenchPki,
    broker: &mut BrokerProcess,
    bridge: &BridgeUnderTest,
    url: &str,
    probe_identity: Client,
) -> Result<BridgeResult> {
    let say = |text: String| progress("bridge", text);
    let addr = broker.addr();
    // Every connection of the bridge has connected (and subscribes right after).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connects = bridge.metrics().await?.count("bridge_mqtt_connects_total");
        if connects >= args.connections as u64 {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "only {connects} of {} bridge connections reached the broker within 30 s",
                args.connections
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (window_tx, window_rx) = oneshot::channel();
    let (ready, probe) = Probe::start(probe_identity, addr, url.to_owned(), window_rx)?;
    let ready_after = ready
        .await
        .context("the probe ended before its readiness check")?
        .context("probe readiness check")?;
    say(format!(
        "path ready: a probe position was committed {:.0} ms after its publish; connecting {} \
         taxis",
        ready_after.as_secs_f64() * 1000.0,
        args.taxis
    ));
    let connections = load::connect_taxis(addr, &pki.taxis[..args.taxis]).await?;
    let ids: Vec<String> = pki.taxis[..args.taxis]
        .iter()
        .map(|taxi| taxi.id.clone())
        .collect();
    let timeline = Timeline::starting_soon(
        Duration::from_secs_f64(args.warmup),
        Duration::from_secs_f64(args.seconds),
    );
    let _ = window_tx.send(ProbeWindow {
        start: timeline.window_start,
        end: timeline.window_end,
        drain: Duration::from_secs(60),
    });
    let mut taxis = Taxis::start(connections, &ids, args.rate / args.taxis as f64, timeline);
    say(format!(
        "{} taxis publishing {:.0} positions/s in all: {} s warm-up, then {} s measured",
        args.taxis, args.rate, args.warmup, args.seconds
    ));

    // The window: a sample every second.
    tokio::time::sleep_until(timeline.window_start.into()).await;
    let sample = |metrics: &Metrics| Sample {
        at: Instant::now(),
        sent: taxis.sent(),
        acked: taxis.acked(),
        probe: probe.published.load(std::sync::atomic::Ordering::Relaxed),
        committed: metrics.count("bridge_positions_committed_total"),
    };
    let mut window_metrics = bridge.metrics().await?;
    let first = sample(&window_metrics);
    let broker_meter = CpuMeter::start(broker.pid())?;
    let broker_threads_meter = ThreadCpuMeter::start(broker.pid())?;
    let own_meter = CpuMeter::start(std::process::id())?;
    let bridge_meter = ThreadsMeter::start(bridge::THREAD_NAME)?;
    let postgres_meter = database.cpu_meter()?;
    let machine_start = simulator::measure::machine_busy_time()?;
    let mut samples = vec![first];
    let mut tick = timeline.window_start;
    while tick < timeline.window_end {
        tick = (tick + Duration::from_secs(1)).min(timeline.window_end);
        tokio::time::sleep_until(tick.into()).await;
        window_metrics = bridge.metrics().await?;
        let now = sample(&window_metrics);
        let elapsed = now.at - first.at;
        if (elapsed.as_secs_f64().round() as u64).is_multiple_of(5) || tick == timeline.window_end {
            let last = samples[samples.len() - 1];
            say(format!(
                "+{:>3.0} s: offered {:>7.0}/s, committed {:>7.0}/s, backlog {}",
                elapsed.as_secs_f64(),
                now.rate(&last, |s| s.acked),
                now.rate(&last, |s| s.committed),
                now.backlog()
            ));
        }
        samples.push(now);
    }
    let last = samples[samples.len() - 1];
    let broker_cpu = broker_meter.stop()?;
    let broker_threads = broker_threads_meter.stop(3)?;
    let own_cpu = own_meter.stop()?;
    let bridge_cpu = bridge_meter.stop()?;
    let postgres_cpu = postgres_meter.stop()?;
    let machine_cpu = CpuUse {
        cpu: simulator::measure::machine_busy_time()?.saturating_sub(machine_start),
        wall: own_cpu.wall,
    };
    let per_second: Vec<f64> = samples
        .windows(2)
        .map(|pair| pair[1].rate(&pair[0], |s| s.committed))
        .collect();

    // Drain: everything the broker acknowledged should end up committed.
    say("window over; waiting for the last PUBACKs and commits".to_owned());
    taxis.wait_acked().await;
    let drain = drain(bridge, &taxis, &probe).await?;
    say(format!(
        "{} {} positions in {:.1} s{}",
        if drain.caught_up {
            "caught up:"
        } else {
            "not caught up (nothing more came):"
        },
        drain.committed,
        drain.took.as_secs_f64(),
        drain
            .per_second()
            .map(|rate| format!(", {rate:.0}/s with nothing being published"))
            .unwrap_or_default()
    ));
    let probe_report = probe.finish(false).await?;
    let metrics = bridge.metrics().await?;

    // Losses, taxi by taxi: acknowledged by the broker but not stored.
    let stored = database::positions_per_taxi(url).await?;
    let (mut lost, mut stored_unacked, mut stored_total) = (0, 0, 0);
    for (id, acked) in ids.iter().zip(taxis.acked_each()) {
        let kept = stored.get(id).copied().unwrap_or(0);
        stored_total += kept;
        lost += acked.saturating_sub(kept);
        stored_unacked += kept.saturating_sub(acked);
    }
    let acked = taxis.acked();
    let (errors, first_errors) = taxis.errors();
    taxis.stop().await;
    let window = last.at - first.at;
    let generator_cpu = CpuUse {
        cpu: own_cpu.cpu.saturating_sub(bridge_cpu.cpu),
        wall: own_cpu.wall,
    };
    Ok(BridgeResult {
        window,
        published_per_s: last.rate(&first, |s| s.sent),
        offered_per_s: last.rate(&first, |s| s.acked),
        committed_per_s: last.rate(&first, |s| s.committed),
        committed_min_s: per_second.iter().copied().fold(f64::INFINITY, f64::min),
        committed_max_s: per_second.iter().copied().fold(0.0, f64::max),
        backlog_start: first.backlog(),
        backlog_end: last.backlog(),
        ready_after,
        probe: probe_report,
        drain,
        acked,
        stored: stored_total,
        lost,
        stored_unacked,
        duplicates: metrics.count("bridge_duplicates_total"),
        dead_letters: database::dead_letters(url).await?,
        broker_cpu,
        broker_threads,
        bridge_cpu,
        postgres_cpu,
        generator_cpu,
        machine_cpu,
        batch_mean: metrics.mean("bridge_batch_messages"),
        commit_mean_s: metrics.mean("bridge_commit_seconds"),
        // The exporter's quantiles cover a recent stretch of time: read at the window's end.
        commit_p99_s: window_metrics.quantile("bridge_commit_seconds", "0.99"),
        receive_to_commit_p99_s: window_metrics
            .quantile("bridge_receive_to_commit_seconds", "0.99"),
        errors,
        first_errors,
    })
}

/// Counters at one moment of the window.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    sent: u64,
    acked: u64,
    probe: u64,
    committed: u64,
}

impl Sample {
    /// Per second since `earlier`, of the counter `value`.
    fn rate(&self, earlier: &Sample, value: impl Fn(&Sample) -> u64) -> f64 {
        let elapsed = (self.at - earlier.at).as_secs_f64();
        if elapsed <= 0.0 {
            return 0.0;
        }
        value(self).saturating_sub(value(earlier)) as f64 / elapsed
    }

    /// Acknowledged by the broker (taxis and probe) but not committed.
    fn backlog(&self) -> i64 {
        (self.acked + self.probe) as i64 - self.committed as i64
    }
}

/// How the backlog was worked off after the publishers stopped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Drain {
    /// Everything the broker acknowledged was committed.
    pub caught_up: bool,
    /// From the start of the drain to the last commit seen.
    pub took: Duration,
    /// Positions committed in that time.
    pub committed: u64,
    /// The machine's CPU use over that time.
    pub machine_cpu: CpuUse,
}

impl Drain {
    /// Positions committed per second while nothing was being published, if the backlog
    /// lasted long enough to say (one second).
    pub fn per_second(&self) -> Option<f64> {
        (self.took >= Duration::from_secs(1))
            .then(|| self.committed as f64 / self.took.as_secs_f64())
    }
}

/// Waits until the bridge has committed everything the broker acknowledged, or nothing has
/// moved for 10 s, or 120 s have passed.
async fn drain(bridge: &BridgeUnderTest, taxis: &Taxis, probe: &Probe) -> Result<Drain> {
    const QUIET: Duration = Duration::from_secs(10);
    const LIMIT: Duration = Duration::from_secs(120);
    let started = Instant::now();
    let machine_start = simulator::measure::machine_busy_time()?;
    let committed = || async {
        anyhow::Ok(
            bridge
                .metrics()
                .await?
                .count("bridge_positions_committed_total"),
        )
    };
    let first = committed().await?;
    let mut last = (first, started, machine_start);
    loop {
        let now = committed().await?;
        let expected = taxis.acked() + probe.published.load(std::sync::atomic::Ordering::Relaxed);
        if now != last.0 || now >= expected {
            last = (
                now,
                Instant::now(),
                simulator::measure::machine_busy_time()?,
            );
        }
        let caught_up = now >= expected;
        if caught_up || last.1.elapsed() >= QUIET || started.elapsed() >= LIMIT {
            let took = last.1 - started;
            return Ok(Drain {
                caught_up,
                took,
                committed: last.0 - first,
                machine_cpu: CpuUse {
                    cpu: last.2.saturating_sub(machine_start),
                    wall: took,
                },
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CPU of this process's threads whose names start with a prefix.
struct ThreadsMeter {
    prefix: &'static str,
    start: Duration,
    wall_start: Instant,
}

impl ThreadsMeter {
    fn start(prefix: &'static str) -> Result<ThreadsMeter> {
        Ok(ThreadsMeter {
            prefix,
            start: simulator::measure::threads_cpu_time(std::process::id(), prefix)?,
            wall_start: Instant::now(),
        })
    }

    fn stop(&self) -> Result<CpuUse> {
        let now = simulator::measure::threads_cpu_time(std::process::id(), self.prefix)?;
        Ok(CpuUse {
            cpu: now.saturating_sub(self.start),
            wall: self.wall_start.elapsed(),
        })
    }
}

/// The naive bridge on a fresh broker and database.
async fn naive_phase(
    args: &IngestArgs,
    database: &Database,
    pki: &BenchPki,
    identity: Client,
) -> Result<NaiveResult> {
    let say = |text: String| progress("naive", text);
    let url = database.create("naive").await?;
    database.checkpoint().await?;
    let mut broker = target::start(&args.broker_bin, pki, args.taxis + 100, 2).await?;
    let addr = broker.addr();
    let (ready, consumer) = NaiveBridge::start(identity, addr, url)?;
    let outcome = async {
        ready
            .await
            .context("the naive bridge ended before subscribing")??;
        say(format!(
            "one connection, one INSERT per message; connecting {} taxis",
            args.taxis
        ));
        let connections = load::connect_taxis(addr, &pki.taxis[..args.taxis]).await?;
        let ids: Vec<String> = pki.taxis[..args.taxis]
            .iter()
            .map(|taxi| taxi.id.clone())
            .collect();
        let timeline = Timeline::starting_soon(
            Duration::from_secs_f64(args.warmup),
            Duration::from_secs_f64(args.naive_seconds),
        );
        let taxis = Taxis::start(connections, &ids, args.rate / args.taxis as f64, timeline);
        say(format!(
            "{} taxis publishing {:.0} positions/s in all: {} s warm-up, then {} s measured",
            args.taxis, args.rate, args.warmup, args.naive_seconds
        ));
        let inserted = || consumer.inserted.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep_until(timeline.window_start.into()).await;
        let (start, acked_start, inserted_start) = (Instant::now(), taxis.acked(), inserted());
        tokio::time::sleep_until(timeline.window_end.into()).await;
        let window = start.elapsed();
        let (acked_end, inserted_end) = (taxis.acked(), inserted());
        taxis.stop().await;
        let per_second = |count: u64| count as f64 / window.as_secs_f64().max(1e-9);
        anyhow::Ok(NaiveResult {
            window,
            offered_per_s: per_second(acked_end - acked_start),
            inserted_per_s: per_second(inserted_end - inserted_start),
            failed: consumer.failed.load(std::sync::atomic::Ordering::Relaxed),
        })
    }
    .await;
    let stopped = consumer.stop().await;
    let alive = broker.check_running();
    broker.stop(Duration::from_secs(5)).await;
    let result = outcome?;
    stopped?;
    alive?;
    Ok(result)
}

/// Runs a phase within `limit`.
pub(crate) async fn bounded<T>(
    limit: Duration,
    phase: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, phase).await {
        Ok(result) => result,
        Err(_) => bail!("phase did not finish within {} s", limit.as_secs()),
    }
}

/// Reports a phase's outcome in one progress line and keeps it for the table.
fn report_outcome<T>(
    phase: &str,
    result: Result<T>,
    summary: impl Fn(&T) -> String,
) -> Result<T, String> {
    match &result {
        Ok(value) => progress(phase, summary(value)),
        Err(e) => progress(phase, format!("failed: {e:#}")),
    }
    result.map_err(|e| format!("{e:#}"))
}

/// One progress line on stderr.
pub(crate) fn progress(phase: &str, text: String) {
    eprintln!("[{phase:>9}] {text}");
}
