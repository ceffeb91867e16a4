//! `bench broker`: the same phases (throughput and latency, handshakes, idle memory, direct
//! publishes to one taxi among many, a burst to a persistent subscriber) against our broker
//! and against Mosquitto, on one machine with one set of certificates. Every phase gets a
//! fresh broker process, so no phase inherits another's memory or state. The durable phase
//! ([`durable`]) compares our broker with itself: the throughput workload in memory mode and
//! in disk mode, the cost of crash durability.

pub mod burst;
pub mod direct;
pub mod durable;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::connections;
use crate::load::{self, LoadSpec};
use crate::process::BrokerProcess;
use crate::report::{self, BenchConfig, SystemResult};
use crate::{baseline, target};
use burst::BurstSpec;
use direct::DirectSpec;
use durable::DurableSetup;
use simulator::pki::BenchPki;

/// A broker to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// Our broker (`broker run`).
    Ours,
    /// Mosquitto, configured the same way.
    Mosquitto,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Ours => "ours",
            System::Mosquitto => "mosquitto",
        }
    }
}

/// A part of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Publishers and a subscriber: delivered messages per second, latency, losses.
    Throughput,
    /// Full mTLS handshakes with CONNECT/CONNACK per second.
    Handshakes,
    /// Broker memory per idle connection.
    Idle,
    /// Orders published by a backoffice straight to one taxi's inbox among many connected.
    Direct,
    /// Publishers flat out into one persistent QoS 1 subscriber: all acknowledged delivered?
    Burst,
    /// The throughput workload (persistent subscriber) against our broker with
    /// `router.durability` "memory" and "disk" (and Mosquitto with persistence, when it is
    /// among the systems): what a PUBACK on disk costs. Run once, not per system.
    Durable,
}

/// Everything `bench broker` is told.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    pub taxis: usize,
    pub rate: f64,
    pub seconds: f64,
    pub warmup: f64,
    pub idle: usize,
    pub handshakes: usize,
    pub concurrency: usize,
    pub broker_bin: PathBuf,
    pub mosquitto_bin: PathBuf,
    /// The throughput subscriber keeps its session (`clean_session = false`).
    pub persistent_subscriber: bool,
    /// Direct phase: connected taxis, their positions per second, orders per second.
    pub direct_taxis: usize,
    pub direct_position_rate: f64,
    pub direct_rate: f64,
    /// Burst phase: publishers, messages each, payload bytes.
    pub burst_publishers: usize,
    pub burst_messages: u64,
    pub burst_bytes: usize,
    pub systems: Vec<System>,
    pub phases: Vec<Phase>,
    /// Keep the temporary directory with certificates, configurations and broker logs.
    pub keep: bool,
}

/// Descriptors the load generator keeps for itself besides the connections.
const SPARE_FILES: u64 = 512;

/// Runs the benchmark and prints the report.
pub async fn run(args: BenchArgs) -> Result<()> {
    validate(&args)?;
    for system in &args.systems {
        match system {
            System::Ours => target::check_binary(&args.broker_bin)?,
            System::Mosquitto => baseline::check_binary(&args.mosquitto_bin)?,
        }
    }
    let clients = args.taxis.max(args.direct_taxis).max(args.burst_publishers);
    let needed = (args.idle.max(args.concurrency) + clients + 2) as u64 + SPARE_FILES;
    raise_open_files(needed)?;

    let identities = clients.max(args.idle).max(args.concurrency);
    progress(
        "setup",
        format!("creating a CA, a server certificate and {identities} client certificates"),
    );
    let started = Instant::now();
    let needs_backoffice = args.phases.contains(&Phase::Direct);
    let (pki, backoffice) = tokio::task::spawn_blocking(move || -> Result<_> {
        let pki = BenchPki::create(identities)?;
        let backoffice = if needs_backoffice {
            Some(pki.issue("backoffice", "backoffice")?)
        } else {
            None
        };
        Ok((pki, backoffice))
    })
    .await
    .context("certificate task failed")??;
    progress(
        "setup",
        format!(
            "certificates ready in {:.1} s in {}",
            started.elapsed().as_secs_f64(),
            pki.dir().display()
        ),
    );

    let (payload_bytes, packet_bytes) = load::message_size(args.taxis);
    let config = BenchConfig {
        taxis: args.taxis,
        rate: args.rate,
        warmup_s: args.warmup,
        seconds: args.seconds,
        payload_bytes,
        packet_bytes,
        handshakes: args.handshakes,
        idle: args.idle,
        concurrency: args.concurrency,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        persistent_subscriber: args.persistent_subscriber,
        direct_taxis: args.direct_taxis,
        direct_position_rate: args.direct_position_rate,
        direct_rate: args.direct_rate,
        burst_publishers: args.burst_publishers,
        burst_messages: args.burst_messages,
        burst_bytes: args.burst_bytes,
        phases: args.phases.clone(),
    };
    let spec = LoadSpec {
        taxis: args.taxis,
        rate: args.rate,
        warmup: Duration::from_secs_f64(args.warmup),
        measure: Duration::from_secs_f64(args.seconds),
        persistent_subscriber: args.persistent_subscriber,
    };
    let direct_spec = DirectSpec {
        taxis: args.direct_taxis,
        position_rate: args.direct_position_rate,
        order_rate: args.direct_rate,
        warmup: Duration::from_secs_f64(args.warmup),
        measure: Duration::from_secs_f64(args.seconds),
    };
    let burst_spec = BurstSpec {
        publishers: args.burst_publishers,
        messages: args.burst_messages,
        bytes: args.burst_bytes,
        limit: Duration::from_secs(600),
    };
    let direct_limit = Duration::from_secs(240) + direct_spec.warmup + direct_spec.measure;
    let burst_limit = burst_spec.limit + Duration::from_secs(120);
    // Generous bounds: every phase ends, whatever the broker does.
    let load_limit = spec.warmup + spec.measure + Duration::from_secs(120);
    let connect_limit = Duration::from_secs(60 + (args.handshakes.max(args.idle) as u64) / 10);

    let mut results = Vec::new();
    let mut run_number = 0;
    for &system in &args.systems {
        let name = system.name();
        let say = |text: String| progress(name, text);
        let runs = |phase: Phase| args.phases.contains(&phase);
        let mut result = SystemResult {
            name,
            load: None,
            handshakes: None,
            idle: None,
            direct: None,
            burst: None,
        };
        if runs(Phase::Throughput) {
            run_number += 1;
            say(format!(
                "throughput: {} taxis, {}",
                args.taxis,
                rate_text(args.rate)
            ));
            let load = with_broker(system, &args, &pki, run_number, load_limit, |addr, pid| {
                load::run(addr, &pki, spec, pid, &say)
            })
            .await;
            result.load = Some(outcome(&say, load, |r| {
                format!(
                    "delivered {:.0} msg/s, p99 {:.2} ms, lost {}",
                    r.delivered_per_s(),
                    r.latency.p99_us as f64 / 1000.0,
                    r.lost
                )
            }));
        }
        if runs(Phase::Handshakes) {
            run_number += 1;
            say(format!(
                "handshakes: {} connections, {} at a time",
                args.handshakes, args.concurrency
            ));
            let (count, concurrency) = (args.handshakes, args.concurrency);
            let handshakes = with_broker(
                system,
                &args,
                &pki,
                run_number,
                connect_limit,
                |addr, pid| connections::handshakes(addr, &pki.taxis, count, concurrency, pid),
            )
            .await;
            result.handshakes = Some(outcome(&say, handshakes, |r| {
                format!("{:.0} connections/s", r.per_second())
            }));
        }
        if runs(Phase::Idle) {
            run_number += 1;
            say(format!(
                "idle memory: {} connections, {} at a time",
                args.idle, args.concurrency
            ));
            let (count, concurrency) = (args.idle, args.concurrency);
            let idle = with_broker(
                system,
                &args,
                &pki,
                run_number,
                connect_limit,
                |addr, pid| connections::idle(addr, &pki.taxis, count, concurrency, pid, &say),
            )
            .await;
            result.idle = Some(outcome(&say, idle, |r| {
                format!("{:.1} KiB per idle connection", r.kib_per_connection())
            }));
        }
        if runs(Phase::Direct) {
            run_number += 1;
            let outcome_direct = match &backoffice {
                Some(backoffice) => {
                    with_broker(
                        system,
                        &args,
                        &pki,
                        run_number,
                        direct_limit,
                        |addr, pid| direct::run(addr, &pki, backoffice, direct_spec, pid, &say),
                    )
                    .await
                }
                None => Err(anyhow::anyhow!("no backoffice identity")),
            };
            result.direct = Some(outcome(&say, outcome_direct, |r| {
                format!(
                    "{} of {} orders delivered, p50 {:.2} ms, p99 {:.2} ms",
                    r.delivery.received,
                    r.delivery.sent,
                    r.delivery.latency.p50_us as f64 / 1000.0,
                    r.delivery.latency.p99_us as f64 / 1000.0
                )
            }));
        }
        if runs(Phase::Burst) {
            run_number += 1;
            let burst = with_broker(system, &args, &pki, run_number, burst_limit, |addr, pid| {
                burst::run(addr, &pki, burst_spec, pid, &say)
            })
            .await;
            result.burst = Some(outcome(&say, burst, |r| {
                format!(
                    "{} acknowledged, {} delivered at {:.0} msg/s, lost {}",
                    r.acked,
                    r.delivered,
                    r.delivered_per_s(),
                    r.lost
                )
            }));
        }
        results.push(result);
    }
    let durable = if args.phases.contains(&Phase::Durable) {
        target::check_binary(&args.broker_bin)?;
        let mosquitto = args.systems.contains(&System::Mosquitto);
        let setup = DurableSetup {
            broker_bin: &args.broker_bin,
            mosquitto_bin: mosquitto.then_some(args.mosquitto_bin.as_path()),
            pki: &pki,
            max_connections: args.taxis + 1_000,
            limit: load_limit,
        };
        let say = |text: String| progress("durable", text);
        Some(durable::run(&setup, spec, run_number + 1, &say).await)
    } else {
        None
    };
    if args.phases.iter().any(|phase| *phase != Phase::Durable) {
        print!("{}", report::render(&config, &results));
    }
    if let Some(durable) = &durable {
        print!("{}", durable::render(durable));
    }
    if args.keep {
        let dir = pki.keep();
        eprintln!(
            "certificates, broker configurations and logs kept in {}",
            dir.display()
        );
    }
    Ok(())
}

/// Reports a phase's outcome in one progress line and keeps it for the table.
fn outcome<T>(
    say: &dyn Fn(String),
    result: Result<T>,
    summary: impl Fn(&T) -> String,
) -> Result<T, String> {
    match &result {
        Ok(report) => say(summary(report)),
        Err(e) => say(format!("failed: {e:#}")),
    }
    result.map_err(|e| format!("{e:#}"))
}

fn validate(args: &BenchArgs) -> Result<()> {
    if args.taxis == 0 || args.taxis > 20_000 {
        bail!("--taxis must be between 1 and 20000");
    }
    if !(0.0..=100_000.0).contains(&args.rate) {
        bail!("--rate must be between 0 (as fast as possible) and 100000 msg/s per taxi");
    }
    if !(1.0..=3600.0).contains(&args.seconds) || !(0.0..=600.0).contains(&args.warmup) {
        bail!("--seconds must be 1 to 3600 and --warmup 0 to 600");
    }
    if args.concurrency == 0 || args.concurrency > 4096 {
        bail!("--concurrency must be between 1 and 4096");
    }
    if args.idle == 0 || args.handshakes == 0 {
        bail!("--idle and --handshakes must be at least 1");
    }
    if args.direct_taxis == 0 || args.direct_taxis > 20_000 {
        bail!("--direct-taxis must be between 1 and 20000");
    }
    let position_rate_ok = args.direct_position_rate > 0.0 && args.direct_position_rate <= 100.0;
    if !(0.1..=10_000.0).contains(&args.direct_rate) || !position_rate_ok {
        bail!(
            "--direct-rate must be 0.1 to 10000 orders/s and --direct-position-rate above 0 and \
             at most 100"
        );
    }
    if args.burst_publishers == 0 || args.burst_publishers > 20_000 || args.burst_messages == 0 {
        bail!("--burst-publishers must be between 1 and 20000 and --burst-messages at least 1");
    }
    if !(16..=65_536).contains(&args.burst_bytes) {
        bail!("--burst-bytes must be between 16 and 65536");
    }
    if args.systems.is_empty() || args.phases.is_empty() {
        bail!("--systems and --phases must name at least one each");
    }
    Ok(())
}

/// Starts a fresh broker, runs `scenario` against it within `limit`, checks that the broker
/// survived, and stops it.
async fn with_broker<'a, T, F, Fut>(
    system: System,
    args: &BenchArgs,
    pki: &BenchPki,
    run: usize,
    limit: Duration,
    scenario: F,
) -> Result<T>
where
    F: FnOnce(SocketAddr, u32) -> Fut,
    Fut: Future<Output = Result<T>> + 'a,
{
    let mut broker: BrokerProcess = match system {
        System::Ours => {
            let clients = args.taxis.max(args.direct_taxis).max(args.burst_publishers);
            let max_connections = args.idle.max(args.concurrency) + clients + 1_000;
            target::start(&args.broker_bin, pki, max_connections, run).await?
        }
        System::Mosquitto => baseline::start(&args.mosquitto_bin, pki, run).await?,
    };
    let outcome = tokio::time::timeout(limit, scenario(broker.addr(), broker.pid())).await;
    let alive = broker.check_running();
    broker.stop(Duration::from_secs(5)).await;
    let result = match outcome {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!(
            "phase did not finish within {} s",
            limit.as_secs()
        )),
    };
    match (result, alive) {
        (Ok(value), Ok(())) => Ok(value),
        (Err(e), Ok(())) => Err(e),
        (_, Err(died)) => Err(died),
    }
}

/// Makes sure this process (and the brokers it starts) may open `needed` files, raising the
/// soft limit up to the hard one if necessary.
pub fn raise_open_files(needed: u64) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the open files limit");
    }
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    if limit.rlim_max < needed {
        bail!(
            "need {needed} open files but the hard limit is {}: use fewer connections (--taxis, --idle)",
            limit.rlim_max
        );
    }
    limit.rlim_cur = needed.max(limit.rlim_cur);
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("raising the open files limit");
    }
    Ok(())
}

fn rate_text(rate: f64) -> String {
    if rate > 0.0 {
        format!("{rate} msg/s each")
    } else {
        "as fast as possible".to_owned()
    }
}

/// One progress line on stderr.
fn progress(system: &str, text: String) {
    eprintln!("[{system:>9}] {text}");
}
