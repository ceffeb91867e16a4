//! The durable phase: what crash durability costs. The throughput phase's workload (N taxis
//! publishing QoS 1 positions, one operator subscribed with QoS 1, here always with a
//! persistent session, so that every message is one the broker must keep for it) runs against
//! our broker twice in the same run, with `router.durability = "memory"` and with `"disk"`
//! (a PUBACK only once the message is synced to the durable log), each on a fresh process,
//! and, for reference, against Mosquitto with its persistence on. The report puts the two
//! modes side by side with their ratio disk/memory: publish-to-receive latency and delivered
//! messages per second, and how many messages one sync of the log covered.
//!
//! Mosquitto's persistence is not the same promise: it writes a snapshot of its whole state
//! every `autosave_interval` (1 s here) and acknowledges a message before it is on disk, so a
//! crash loses up to the last second. It is there to show what its disk writes cost it, not
//! as an equal.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::load::{self, LoadReport, LoadSpec};
use simulator::pki::BenchPki;

/// One broker set-up measured by the phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Ours, `router.durability = "memory"`.
    Memory,
    /// Ours, `router.durability = "disk"`.
    Disk,
    /// Mosquitto with `persistence true`.
    MosquittoPersistent,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Memory => "ours, memory",
            Mode::Disk => "ours, disk",
            Mode::MosquittoPersistent => "mosquitto, persistence",
        }
    }
}

/// The measurement of one mode.
pub struct DurableRun {
    pub mode: Mode,
    pub load: Result<LoadReport, String>,
    /// `broker_log_fsyncs_total` at the end of the run (ours only, when exported).
    pub fsyncs: Option<f64>,
}

/// What the phase measured, in the order run.
pub struct DurableReport {
    pub spec: LoadSpec,
    pub runs: Vec<DurableRun>,
}

/// Where the brokers are and what they run with.
pub struct DurableSetup<'a> {
    pub broker_bin: &'a Path,
    /// Mosquitto's binary, when it is measured too.
    pub mosquitto_bin: Option<&'a Path>,
    pub pki: &'a BenchPki,
    pub max_connections: usize,
    /// Each run's bound.
    pub limit: Duration,
}

/// Runs the workload against each mode in turn (memory, disk, then Mosquitto if given);
/// `first_run` numbers the brokers' log files.
pub async fn run(
    setup: &DurableSetup<'_>,
    spec: LoadSpec,
    first_run: usize,
    progress: &dyn Fn(String),
) -> DurableReport {
    let spec = LoadSpec {
        persistent_subscriber: true,
        ..spec
    };
    let mut modes = vec![Mode::Memory, Mode::Disk];
    if setup.mosquitto_bin.is_some() {
        modes.push(Mode::MosquittoPersistent);
    }
    let mut runs = Vec::new();
    for (n, mode) in modes.into_iter().enumerate() {
        progress(format!(
            "durable: {}: {} taxis, {}",
            mode.name(),
            spec.taxis,
            if spec.rate > 0.0 {
                format!("{} msg/s each", spec.rate)
            } else {
                "as fast as possible".to_owned()
            }
        ));
        let (load, fsyncs) = match measure(setup, mode, spec, first_run + n, progress).await {
            Ok((load, fsyncs)) => (Ok(load), fsyncs),
            Err(e) => (Err(format!("{e:#}")), None),
        };
        match &load {
            Ok(r) => progress(format!(
                "durable: {}: delivered {:.0} msg/s, p50 {:.2} ms, p99 {:.2} ms, lost {}",
                mode.name(),
                r.delivered_per_s(),
                r.latency.p50_us as f64 / 1000.0,
                r.latency.p99_us as f64 / 1000.0,
                r.lost
            )),
            Err(e) => progress(format!("durable: {}: failed: {e}", mode.name())),
        }
        runs.push(DurableRun { mode, load, fsyncs });
    }
    DurableReport { spec, runs }
}

/// One mode: a fresh broker, the workload within the bound, the log's syncs read from
/// `/metrics`, and the broker stopped.
async fn measure(
    setup: &DurableSetup<'_>,
    mode: Mode,
    spec: LoadSpec,
    run: usize,
    progress: &dyn Fn(String),
) -> Result<(LoadReport, Option<f64>)> {
    let dir = setup.pki.dir().join(format!("durable-{run}"));
    let (mut broker, http) = match mode {
        Mode::Memory | Mode::Disk => {
            let durability = if mode == Mode::Disk { "disk" } else { "memory" };
            let (broker, http) = crate::target::start_in(
                setup.broker_bin,
                setup.pki,
                setup.max_connections,
                run,
                durability,
                &dir,
            )
            .await?;
            (broker, Some(http))
        }
        Mode::MosquittoPersistent => {
            let binary = setup
                .mosquitto_bin
                .context("no Mosquitto binary for the persistent reference")?;
            let broker = crate::baseline::start_in(binary, setup.pki, run, &dir, true).await?;
            (broker, None)
        }
    };
    let outcome = tokio::time::timeout(
        setup.limit,
        load::run(broker.addr(), setup.pki, spec, broker.pid(), progress),
    )
    .await;
    let alive = broker.check_running();
    let fsyncs = match http {
        Some(http) if alive.is_ok() => crate::ingest::bridge::Metrics::fetch(http)
            .await
            .ok()
            .and_then(|metrics| metrics.sample("broker_log_fsyncs_total")),
        _ => None,
    };
    broker.stop(Duration::from_secs(5)).await;
    alive?;
    let report = outcome.map_err(|_| {
        anyhow::anyhow!("the run did not finish within {} s", setup.limit.as_secs())
    })??;
    Ok((report, fsyncs))
}

/// One row of the phase's table.
struct Row {
    metric: &'static str,
    decimals: usize,
    /// A ratio disk/memory is shown.
    ratio: bool,
    values: Vec<Option<f64>>,
}

/// The phase's section of the report: what ran, one table with the modes side by side and
/// the ratio disk/memory, then the cost of durability in one line.
pub fn render(report: &DurableReport) -> String {
    let mut out = String::new();
    let spec = &report.spec;
    let _ = writeln!(
        out,
        "\nDurability: the throughput workload against our broker with router.durability = \
         \"memory\" and \"disk\""
    );
    let rate = if spec.rate > 0.0 {
        format!(
            "{} msg/s per taxi, {} msg/s offered",
            spec.rate,
            spec.rate * spec.taxis as f64
        )
    } else {
        "as fast as possible".to_owned()
    };
    for (name, value) in [
        (
            "taxis",
            format!("{} QoS 1 publishers, one connection each", spec.taxis),
        ),
        ("rate", rate),
        (
            "duration",
            format!(
                "{} s warm-up, then {} s measured",
                spec.warmup.as_secs_f64(),
                spec.measure.as_secs_f64()
            ),
        ),
        (
            "subscriber",
            "1 operator, QoS 1, taxi/+/position, persistent session".to_owned(),
        ),
        (
            "disk",
            "a PUBACK once the message is synced to the durable log (one sync per router \
             round)"
                .to_owned(),
        ),
    ] {
        let _ = writeln!(out, "  {name:<12} {value}");
    }
    if report
        .runs
        .iter()
        .any(|run| run.mode == Mode::MosquittoPersistent)
    {
        let _ = writeln!(
            out,
            "  {:<12} Mosquitto with persistence true, a snapshot every {} s \
             (acknowledges before the disk: for reference, not the same promise)",
            "reference",
            crate::baseline::PERSISTENT_AUTOSAVE_S
        );
    }

    let value = |mode: Mode, f: &dyn Fn(&DurableRun, &LoadReport) -> Option<f64>| {
        report
            .runs
            .iter()
            .find(|run| run.mode == mode)
            .and_then(|run| run.load.as_ref().ok().and_then(|load| f(run, load)))
    };
    let modes: Vec<Mode> = report.runs.iter().map(|run| run.mode).collect();
    let row = |metric: &'static str,
               decimals: usize,
               ratio: bool,
               f: &dyn Fn(&DurableRun, &LoadReport) -> Option<f64>| Row {
        metric,
        decimals,
        ratio,
        values: modes.iter().map(|mode| value(*mode, f)).collect(),
    };
    let ms = |us: u64| Some(us as f64 / 1000.0);
    let rows = vec![
        row("offered msgs/s", 0, false, &|_, r| Some(r.offered_per_s())),
        row("delivered msgs/s", 0, true, &|_, r| {
            Some(r.delivered_per_s())
        }),
        row("latency p50 (ms)", 2, true, &|_, r| ms(r.latency.p50_us)),
        row("latency p99 (ms)", 2, true, &|_, r| ms(r.latency.p99_us)),
        row("latency max (ms)", 2, true, &|_, r| ms(r.latency.max_us)),
        row("acked by PUBACK", 0, false, &|_, r| Some(r.acked as f64)),
        row("lost (acked, never delivered)", 0, false, &|_, r| {
            Some(r.lost as f64)
        }),
        row("duplicates delivered", 0, false, &|_, r| {
            Some(r.duplicates as f64)
        }),
        row("client errors", 0, false, &|_, r| Some(r.errors as f64)),
        row("broker CPU (% of a core)", 0, true, &|_, r| {
            Some(r.broker_cpu.percent())
        }),
        row("broker CPU per msg (us)", 1, true, &|_, r| {
            Some(r.broker_cpu_us_per_msg())
        }),
        row("broker peak RSS (MiB)", 1, true, &|_, r| {
            Some(r.broker_peak_rss_kib as f64 / 1024.0)
        }),
        row("log syncs (whole run)", 0, false, &|run, _| run.fsyncs),
        row("messages per log sync", 1, false, &|run, r| {
            run.fsyncs
                .filter(|syncs| *syncs > 0.0)
                .map(|syncs| r.acked as f64 / syncs)
        }),
    ];
    out.push('\n');
    out.push_str(&table(&modes, &rows));

    let memory = modes.iter().position(|m| *m == Mode::Memory);
    let disk = modes.iter().position(|m| *m == Mode::Disk);
    let ratio_of = |metric: &str| -> Option<f64> {
        let row = rows.iter().find(|row| row.metric == metric)?;
        let (m, d) = (row.values[memory?]?, row.values[disk?]?);
        (m != 0.0).then_some(d / m)
    };
    let shown = |ratio: Option<f64>| match ratio {
        Some(ratio) => format!("{ratio:.2}x"),
        None => "n/a".to_owned(),
    };
    let _ = writeln!(
        out,
        "Cost of durability (disk/memory): latency p50 {}, p99 {}, delivered msgs/s {}.",
        shown(ratio_of("latency p50 (ms)")),
        shown(ratio_of("latency p99 (ms)")),
        shown(ratio_of("delivered msgs/s"))
    );
    for run in &report.runs {
        if let Err(e) = &run.load {
            let _ = writeln!(out, "  {} failed: {e}", run.mode.name());
        }
    }
    out
}

/// The table in the style of the report's main table: one column per mode, and disk/memory
/// after the disk column where the ratio says something.
fn table(modes: &[Mode], rows: &[Row]) -> String {
    let memory = modes.iter().position(|m| *m == Mode::Memory);
    let disk = modes.iter().position(|m| *m == Mode::Disk);
    let compare = memory.is_some() && disk.is_some();
    let mut header = vec!["metric".to_owned()];
    for (n, mode) in modes.iter().enumerate() {
        header.push(mode.name().to_owned());
        if compare && Some(n) == disk {
            header.push("disk/memory".to_owned());
        }
    }
    let mut cells = vec![header];
    for row in rows {
        if row.values.iter().all(Option::is_none) {
            continue;
        }
        let mut line = vec![row.metric.to_owned()];
        for (n, value) in row.values.iter().enumerate() {
            line.push(match value {
                Some(v) => format!("{v:.prec$}", prec = row.decimals),
                None => "-".to_owned(),
            });
            if compare && Some(n) == disk {
                let ratio = match (memory.and_then(|m| row.values[m]), *value) {
                    (Some(m), Some(d)) if row.ratio && m != 0.0 => format!("{:.2}x", d / m),
                    _ => String::new(),
                };
                line.push(ratio);
            }
        }
        cells.push(line);
    }
    crate::table::markdown(&cells, |c| c == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_the_ratio_disk_over_memory() {
        let load = |p50_us: u64, delivered: u64| LoadReport {
            window: Duration::from_secs(10),
            delivered_in_window: delivered,
            latency: simulator::measure::LatencySummary {
                p50_us,
                p99_us: p50_us * 4,
                max_us: p50_us * 10,
            },
            ..Default::default()
        };
        let report = DurableReport {
            spec: LoadSpec {
                taxis: 10,
                rate: 100.0,
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(10),
                persistent_subscriber: true,
            },
            runs: vec![
                DurableRun {
                    mode: Mode::Memory,
                    load: Ok(load(1_000, 10_000)),
                    fsyncs: Some(0.0),
                },
                DurableRun {
                    mode: Mode::Disk,
                    load: Ok(load(3_000, 9_000)),
                    fsyncs: Some(500.0),
                },
            ],
        };
        let text = render(&report);
        assert!(text.contains("disk/memory"), "{text}");
        assert!(
            text.contains("latency p50 3.00x, p99 3.00x, delivered msgs/s 0.90x"),
            "{text}"
        );
    }
}
