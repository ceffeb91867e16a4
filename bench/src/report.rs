//! The benchmark report: the configuration, then one table with each metric for our broker
//! and for Mosquitto side by side, their ratio and which direction is better, then each
//! target (a bound on ours relative to Mosquitto's in the same run) met or missed.

use std::fmt::Write;

use crate::brokers::burst::BurstReport;
use crate::brokers::direct::DirectReport;
use crate::brokers::Phase;
use crate::connections::{HandshakeReport, IdleReport};
use crate::load::LoadReport;

/// What was run, for the header of the report.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub taxis: usize,
    pub rate: f64,
    pub warmup_s: f64,
    pub seconds: f64,
    pub payload_bytes: usize,
    pub packet_bytes: usize,
    pub handshakes: usize,
    pub idle: usize,
    pub concurrency: usize,
    pub cpus: usize,
    pub persistent_subscriber: bool,
    pub direct_taxis: usize,
    pub direct_position_rate: f64,
    pub direct_rate: f64,
    pub burst_publishers: usize,
    pub burst_messages: u64,
    pub burst_bytes: usize,
    /// The phases run.
    pub phases: Vec<Phase>,
}

/// One system's results: `None` for a phase not run, an error for one that failed.
pub struct SystemResult {
    pub name: &'static str,
    pub load: Option<Result<LoadReport, String>>,
    pub handshakes: Option<Result<HandshakeReport, String>>,
    pub idle: Option<Result<IdleReport, String>>,
    pub direct: Option<Result<DirectReport, String>>,
    pub burst: Option<Result<BurstReport, String>>,
}

/// One cell of the table.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cell {
    Value(f64),
    Failed,
    NotRun,
}

impl Cell {
    fn of<T>(phase: &Option<Result<T, String>>, f: &dyn Fn(&T) -> f64) -> Cell {
        match phase {
            Some(Ok(report)) => Cell::Value(f(report)),
            Some(Err(_)) => Cell::Failed,
            None => Cell::NotRun,
        }
    }

    fn value(self) -> Option<f64> {
        match self {
            Cell::Value(v) => Some(v),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
    /// Context, not a score.
    Neither,
}

struct Row {
    metric: &'static str,
    better: Better,
    decimals: usize,
    values: Vec<Cell>,
}

/// The whole report as text.
pub fn render(config: &BenchConfig, results: &[SystemResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nConfiguration");
    let offered = if config.rate > 0.0 {
        format!(
            "{} msg/s per taxi, {} msg/s offered",
            trim(config.rate),
            trim(config.rate * config.taxis as f64)
        )
    } else {
        "as fast as possible (each taxi publishes as soon as its client accepts)".to_owned()
    };
    let lines = [
        (
            "taxis",
            format!(
                "{} QoS 1 publishers, one connection each, MQTT 3.1.1",
                config.taxis
            ),
        ),
        ("rate", offered),
        (
            "duration",
            format!(
                "{} s warm-up, then {} s measured",
                trim(config.warmup_s),
                trim(config.seconds)
            ),
        ),
        (
            "message",
            format!(
                "postcard Position, {} B payload, {} B PUBLISH packet",
                config.payload_bytes, config.packet_bytes
            ),
        ),
        (
            "subscriber",
            format!(
                "1 operator, QoS 1, taxi/+/position, {}",
                if config.persistent_subscriber {
                    "persistent session"
                } else {
                    "clean session"
                }
            ),
        ),
        (
            "handshakes",
            format!(
                "{} x (TCP + full mTLS handshake + CONNECT/CONNACK + DISCONNECT), {} at a time",
                config.handshakes, config.concurrency
            ),
        ),
        (
            "idle",
            format!(
                "{} idle mTLS MQTT connections, {} opened at a time, keep-alive 600 s",
                config.idle, config.concurrency
            ),
        ),
        (
            "direct",
            format!(
                "{} taxis ({} positions/s each) listening on their inboxes; a backoffice \
                 publishes {} QoS 1 orders/s to random ones",
                config.direct_taxis,
                trim(config.direct_position_rate),
                trim(config.direct_rate)
            ),
        ),
        (
            "burst",
            format!(
                "{} publishers x {} QoS 1 messages of {} B, flat out ({:.0} MB), to one \
                 persistent QoS 1 subscriber",
                config.burst_publishers,
                config.burst_messages,
                config.burst_bytes,
                config.burst_publishers as f64
                    * config.burst_messages as f64
                    * config.burst_bytes as f64
                    / 1e6
            ),
        ),
        (
            "machine",
            format!(
                "{} CPUs shared by the load generator and the broker; loopback only",
                config.cpus
            ),
        ),
    ];
    for (name, value) in lines {
        // Only the phases that ran (a configuration without phases describes them all).
        let phase = match name {
            "taxis" | "rate" | "duration" | "message" | "subscriber" => Some(Phase::Throughput),
            "handshakes" => Some(Phase::Handshakes),
            "idle" => Some(Phase::Idle),
            "direct" => Some(Phase::Direct),
            "burst" => Some(Phase::Burst),
            _ => None,
        };
        if phase.is_some_and(|phase| !config.phases.is_empty() && !config.phases.contains(&phase)) {
            continue;
        }
        let _ = writeln!(out, "  {name:<12} {value}");
    }
    for result in results {
        if let Some(Ok(report)) = &result.handshakes {
            if let Some(tls) = &report.tls {
                let _ = writeln!(out, "  {:<12} {}: {tls}", "TLS", result.name);
            }
        }
    }

    let rows = rows(results);
    let _ = writeln!(out);
    out.push_str(&table(&rows, results));
    out.push_str(&targets(results));
    out.push_str(&failures(results));
    out
}

/// A target: ours at most (or at least) `factor` times Mosquitto's, and nothing lost.
struct Target {
    what: &'static str,
    /// (ours, Mosquitto's) when both phases succeeded.
    values: Option<(f64, f64)>,
    unit: &'static str,
    better: Better,
    factor: f64,
}

impl Target {
    fn met(&self) -> Option<bool> {
        let (ours, theirs) = self.values?;
        Some(match self.better {
            Better::Lower => ours <= theirs * self.factor,
            Better::Higher => ours >= theirs * self.factor,
            Better::Neither => true,
        })
    }
}

/// The targets, for a run of ours against Mosquitto (in either order).
fn targets(results: &[SystemResult]) -> String {
    let ours = results.iter().find(|r| r.name == "ours");
    let theirs = results.iter().find(|r| r.name == "mosquitto");
    let (Some(ours), Some(theirs)) = (ours, theirs) else {
        return String::new();
    };
    fn both<T>(
        a: &Option<Result<T, String>>,
        b: &Option<Result<T, String>>,
        f: impl Fn(&T) -> f64,
    ) -> Option<Option<(f64, f64)>> {
        match (a, b) {
            (None, _) | (_, None) => None,
            (Some(Ok(a)), Some(Ok(b))) => Some(Some((f(a), f(b)))),
            _ => Some(None),
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    let mut list: Vec<Target> = Vec::new();
    let mut add = |what: &'static str,
                   values: Option<Option<(f64, f64)>>,
                   unit: &'static str,
                   better: Better,
                   factor: f64| {
        if let Some(values) = values {
            list.push(Target {
                what,
                values,
                unit,
                better,
                factor,
            });
        }
    };
    use Better::{Higher, Lower};
    add(
        "throughput: latency p50 at most Mosquitto's",
        both(&ours.load, &theirs.load, |r| ms(r.latency.p50_us)),
        "ms",
        Lower,
        1.0,
    );
    add(
        "throughput: latency p99 at most Mosquitto's",
        both(&ours.load, &theirs.load, |r| ms(r.latency.p99_us)),
        "ms",
        Lower,
        1.0,
    );
    add(
        "throughput: broker CPU per delivered message at most Mosquitto's",
        both(&ours.load, &theirs.load, |r| r.broker_cpu_us_per_msg()),
        "us",
        Lower,
        1.0,
    );
    add(
        "throughput: nothing acknowledged lost (ours; Mosquitto's for reference)",
        both(&ours.load, &theirs.load, |r| r.lost as f64),
        "lost",
        Lower,
        0.0,
    );
    add(
        "idle: memory per idle connection at most Mosquitto's",
        both(&ours.idle, &theirs.idle, |r| r.kib_per_connection()),
        "KiB",
        Lower,
        1.0,
    );
    add(
        "direct: order p99 at most 1.5x Mosquitto's",
        both(&ours.direct, &theirs.direct, |r| {
            ms(r.delivery.latency.p99_us)
        }),
        "ms",
        Lower,
        1.5,
    );
    add(
        "direct: every order delivered (ours; Mosquitto's for reference)",
        both(&ours.direct, &theirs.direct, |r| {
            r.delivery.missing() as f64
        }),
        "missing",
        Lower,
        0.0,
    );
    add(
        "burst: every acknowledged message delivered (ours; Mosquitto's for reference)",
        both(&ours.burst, &theirs.burst, |r| r.lost as f64),
        "lost",
        Lower,
        0.0,
    );
    add(
        "burst: delivery rate at least Mosquitto's",
        both(&ours.burst, &theirs.burst, |r| r.delivered_per_s()),
        "msg/s",
        Higher,
        1.0,
    );
    if list.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(out, "\nTargets (ours against Mosquitto in this run)");
    let mut missed = Vec::new();
    for target in &list {
        let (verdict, detail) = match (target.met(), target.values) {
            (Some(met), Some((a, b))) => {
                let ratio = if b != 0.0 {
                    format!(", {:.2}x", a / b)
                } else {
                    String::new()
                };
                (
                    if met { "met" } else { "MISSED" },
                    format!(
                        "ours {a:.2} {u}, Mosquitto {b:.2} {u}{ratio}",
                        u = target.unit
                    ),
                )
            }
            _ => ("MISSED", "a phase failed".to_owned()),
        };
        if verdict == "MISSED" {
            missed.push(target.what);
        }
        let _ = writeln!(out, "  {verdict:<7} {}: {detail}", target.what);
    }
    if missed.is_empty() {
        let _ = writeln!(out, "All {} targets met.", list.len());
    } else {
        let _ = writeln!(
            out,
            "Missed {} of {} targets: {}.",
            missed.len(),
            list.len(),
            missed.join("; ")
        );
    }
    out
}

fn rows(results: &[SystemResult]) -> Vec<Row> {
    let load = |f: &dyn Fn(&LoadReport) -> f64| -> Vec<Cell> {
        results.iter().map(|r| Cell::of(&r.load, f)).collect()
    };
    let handshake = |f: &dyn Fn(&HandshakeReport) -> f64| -> Vec<Cell> {
        results.iter().map(|r| Cell::of(&r.handshakes, f)).collect()
    };
    let idle = |f: &dyn Fn(&IdleReport) -> f64| -> Vec<Cell> {
        results.iter().map(|r| Cell::of(&r.idle, f)).collect()
    };
    let direct = |f: &dyn Fn(&DirectReport) -> f64| -> Vec<Cell> {
        results.iter().map(|r| Cell::of(&r.direct, f)).collect()
    };
    let burst = |f: &dyn Fn(&BurstReport) -> f64| -> Vec<Cell> {
        results.iter().map(|r| Cell::of(&r.burst, f)).collect()
    };
    let ms = |us: u64| us as f64 / 1000.0;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let row = |metric, better, decimals, values| Row {
        metric,
        better,
        decimals,
        values,
    };
    use Better::{Higher, Lower, Neither};
    vec![
        row("offered msgs/s", Neither, 0, load(&|r| r.offered_per_s())),
        row(
            "delivered msgs/s",
            Higher,
            0,
            load(&|r| r.delivered_per_s()),
        ),
        row(
            "latency p50 (ms)",
            Lower,
            2,
            load(&|r| ms(r.latency.p50_us)),
        ),
        row(
            "latency p99 (ms)",
            Lower,
            2,
            load(&|r| ms(r.latency.p99_us)),
        ),
        row(
            "latency max (ms)",
            Lower,
            2,
            load(&|r| ms(r.latency.max_us)),
        ),
        row(
            "messages sent (whole run)",
            Neither,
            0,
            load(&|r| r.sent as f64),
        ),
        row("acked by PUBACK", Neither, 0, load(&|r| r.acked as f64)),
        row(
            "delivered (whole run)",
            Neither,
            0,
            load(&|r| r.received as f64),
        ),
        row(
            "lost (acked, never delivered)",
            Lower,
            0,
            load(&|r| r.lost as f64),
        ),
        row(
            "sent but never acked",
            Lower,
            0,
            load(&|r| r.sent.saturating_sub(r.acked) as f64),
        ),
        row(
            "duplicates delivered",
            Lower,
            0,
            load(&|r| r.duplicates as f64),
        ),
        row("client errors", Lower, 0, load(&|r| r.errors as f64)),
        row(
            "broker CPU (% of a core)",
            Lower,
            0,
            load(&|r| r.broker_cpu.percent()),
        ),
        row(
            "broker CPU per msg (us)",
            Lower,
            1,
            load(&|r| r.broker_cpu_us_per_msg()),
        ),
        row(
            "generator CPU (% of a core)",
            Neither,
            0,
            load(&|r| r.generator_cpu.percent()),
        ),
        row(
            "broker peak RSS (MiB)",
            Lower,
            1,
            load(&|r| mib(r.broker_peak_rss_kib)),
        ),
        row("handshakes/s", Higher, 0, handshake(&|r| r.per_second())),
        row(
            "connect p50 (ms)",
            Lower,
            1,
            handshake(&|r| ms(r.latency.p50_us)),
        ),
        row(
            "connect p99 (ms)",
            Lower,
            1,
            handshake(&|r| ms(r.latency.p99_us)),
        ),
        row(
            "failed connects",
            Lower,
            0,
            handshake(&|r| (r.attempted - r.succeeded) as f64),
        ),
        row(
            "broker CPU per connect (ms)",
            Lower,
            2,
            handshake(&|r| r.broker_cpu_ms_per_connection()),
        ),
        row(
            "generator CPU, connects (%)",
            Neither,
            0,
            handshake(&|r| r.generator_cpu.percent()),
        ),
        row(
            "idle connections open",
            Higher,
            0,
            idle(&|r| r.opened as f64),
        ),
        row(
            "failed idle connects",
            Lower,
            0,
            idle(&|r| r.requested.saturating_sub(r.opened) as f64),
        ),
        row(
            "idle opened/s (growing)",
            Higher,
            0,
            idle(&|r| r.opened_per_second()),
        ),
        row(
            "RSS before (MiB)",
            Neither,
            1,
            idle(&|r| mib(r.rss_before_kib)),
        ),
        row(
            "RSS with idle conns (MiB)",
            Neither,
            1,
            idle(&|r| mib(r.rss_after_kib)),
        ),
        row(
            "memory per idle conn (KiB)",
            Lower,
            1,
            idle(&|r| r.kib_per_connection()),
        ),
        row(
            "direct: orders sent",
            Neither,
            0,
            direct(&|r| r.delivery.sent as f64),
        ),
        row(
            "direct: orders delivered",
            Higher,
            0,
            direct(&|r| r.delivery.received as f64),
        ),
        row(
            "direct: p50 (ms)",
            Lower,
            2,
            direct(&|r| ms(r.delivery.latency.p50_us)),
        ),
        row(
            "direct: p99 (ms)",
            Lower,
            2,
            direct(&|r| ms(r.delivery.latency.p99_us)),
        ),
        row(
            "direct: max (ms)",
            Lower,
            2,
            direct(&|r| ms(r.delivery.latency.max_us)),
        ),
        row(
            "direct: broker CPU (% of a core)",
            Lower,
            0,
            direct(&|r| r.broker_cpu.percent()),
        ),
        row("burst: sent", Neither, 0, burst(&|r| r.sent as f64)),
        row(
            "burst: acked by PUBACK",
            Neither,
            0,
            burst(&|r| r.acked as f64),
        ),
        row(
            "burst: delivered",
            Higher,
            0,
            burst(&|r| r.delivered as f64),
        ),
        row(
            "burst: lost (acked, never delivered)",
            Lower,
            0,
            burst(&|r| r.lost as f64),
        ),
        row(
            "burst: duplicates delivered",
            Lower,
            0,
            burst(&|r| r.duplicates as f64),
        ),
        row(
            "burst: acked msgs/s",
            Higher,
            0,
            burst(&|r| r.acked_per_s()),
        ),
        row(
            "burst: delivered msgs/s",
            Higher,
            0,
            burst(&|r| r.delivered_per_s()),
        ),
        row(
            "burst: broker CPU per msg (us)",
            Lower,
            1,
            burst(&|r| r.broker_cpu.cpu.as_secs_f64() * 1e6 / r.delivered.max(1) as f64),
        ),
        row(
            "burst: broker peak RSS (MiB)",
            Lower,
            1,
            burst(&|r| mib(r.broker_peak_rss_kib)),
        ),
    ]
}

fn table(rows: &[Row], results: &[SystemResult]) -> String {
    let compare = results.len() == 2;
    let mut header: Vec<String> = vec!["metric".to_owned()];
    header.extend(results.iter().map(|r| r.name.to_owned()));
    if compare {
        header.push(format!("{}/{}", results[0].name, results[1].name));
        header.push("better".to_owned());
    }
    let mut cells: Vec<Vec<String>> = vec![header];
    for row in rows
        .iter()
        .filter(|row| row.values.iter().any(|v| *v != Cell::NotRun))
    {
        let mut line = vec![row.metric.to_owned()];
        for value in &row.values {
            line.push(match value {
                Cell::Value(v) => format!("{v:.prec$}", prec = row.decimals),
                Cell::Failed => "failed".to_owned(),
                Cell::NotRun => "not run".to_owned(),
            });
        }
        if compare {
            let (ratio, verdict) = judge(row, results);
            line.push(ratio);
            line.push(verdict);
        }
        cells.push(line);
    }
    let columns = cells.first().map_or(0, Vec::len);
    crate::table::markdown(&cells, |c| c == 0 || c + 1 == columns && compare)
}

/// The ratio first/second and, for scored metrics, which side is better.
fn judge(row: &Row, results: &[SystemResult]) -> (String, String) {
    let values = (
        row.values.first().and_then(|c| c.value()),
        row.values.get(1).and_then(|c| c.value()),
    );
    let (Some(a), Some(b)) = values else {
        return ("-".to_owned(), String::new());
    };
    let ratio = if b != 0.0 {
        format!("{:.2}x", a / b)
    } else if a == 0.0 {
        "=".to_owned()
    } else {
        "-".to_owned()
    };
    let direction = match row.better {
        Better::Higher => "higher",
        Better::Lower => "lower",
        Better::Neither => return (ratio, String::new()),
    };
    let scale = a.abs().max(b.abs());
    let winner = if scale == 0.0 || (a - b).abs() / scale < 0.03 {
        "about equal"
    } else if (a > b) == (row.better == Better::Higher) {
        results[0].name
    } else {
        results[1].name
    };
    (ratio, format!("{direction}: {winner}"))
}

fn failures(results: &[SystemResult]) -> String {
    let mut out = String::new();
    for result in results {
        let mut notes: Vec<String> = Vec::new();
        match &result.load {
            Some(Err(e)) => notes.push(format!("throughput phase failed: {e}")),
            Some(Ok(r)) => notes.extend(r.first_errors.iter().map(|e| format!("throughput: {e}"))),
            None => {}
        }
        match &result.handshakes {
            Some(Err(e)) => notes.push(format!("handshake phase failed: {e}")),
            Some(Ok(r)) => notes.extend(r.first_errors.iter().map(|e| format!("handshakes: {e}"))),
            None => {}
        }
        match &result.idle {
            Some(Err(e)) => notes.push(format!("idle phase failed: {e}")),
            Some(Ok(r)) => notes.extend(r.first_errors.iter().map(|e| format!("idle: {e}"))),
            None => {}
        }
        match &result.direct {
            Some(Err(e)) => notes.push(format!("direct phase failed: {e}")),
            Some(Ok(r)) => notes.extend(r.sent.first_errors.iter().map(|e| format!("direct: {e}"))),
            None => {}
        }
        match &result.burst {
            Some(Err(e)) => notes.push(format!("burst phase failed: {e}")),
            Some(Ok(r)) => notes.extend(r.first_errors.iter().map(|e| format!("burst: {e}"))),
            None => {}
        }
        if !notes.is_empty() {
            let _ = writeln!(out, "\n{} errors (first few):", result.name);
            for note in notes {
                let _ = writeln!(out, "  {note}");
            }
        }
    }
    out
}

/// A number without a trailing `.0`.
fn trim(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BenchConfig {
        BenchConfig {
            taxis: 10,
            rate: 50.0,
            warmup_s: 3.0,
            seconds: 5.0,
            payload_bytes: 40,
            packet_bytes: 66,
            handshakes: 100,
            idle: 50,
            concurrency: 64,
            cpus: 2,
            persistent_subscriber: false,
            direct_taxis: 1000,
            direct_position_rate: 1.0,
            direct_rate: 50.0,
            burst_publishers: 100,
            burst_messages: 5000,
            burst_bytes: 1024,
            phases: Vec::new(),
        }
    }

    #[test]
    fn table_compares_and_marks_failures() {
        let ours = SystemResult {
            name: "ours",
            load: Some(Ok(LoadReport {
                window: std::time::Duration::from_secs(5),
                delivered_in_window: 5_000,
                ..LoadReport::default()
            })),
            handshakes: Some(Err("broker exited".to_owned())),
            idle: Some(Ok(IdleReport {
                opened: 100,
                rss_before_kib: 1_000,
                rss_after_kib: 3_000,
                ..IdleReport::default()
            })),
            direct: None,
            burst: None,
        };
        let mosquitto = SystemResult {
            name: "mosquitto",
            load: Some(Ok(LoadReport {
                window: std::time::Duration::from_secs(5),
                delivered_in_window: 4_000,
                ..LoadReport::default()
            })),
            handshakes: Some(Ok(HandshakeReport::default())),
            idle: Some(Ok(IdleReport {
                opened: 100,
                rss_before_kib: 1_000,
                rss_after_kib: 2_000,
                ..IdleReport::default()
            })),
            direct: None,
            burst: None,
        };
        let text = render(&config(), &[ours, mosquitto]);
        let delivered = text
            .lines()
            .find(|l| l.contains("delivered msgs/s"))
            .unwrap_or_default();
        assert!(delivered.contains("1000"), "{delivered}");
        assert!(delivered.contains("800"), "{delivered}");
        assert!(delivered.contains("1.25x"), "{delivered}");
        assert!(delivered.contains("higher: ours"), "{delivered}");
        let memory = text
            .lines()
            .find(|l| l.contains("memory per idle conn"))
            .unwrap_or_default();
        assert!(
            memory.contains("20.0") && memory.contains("10.0"),
            "{memory}"
        );
        assert!(memory.contains("lower: mosquitto"), "{memory}");
        assert!(text.contains("handshake phase failed: broker exited"));
        assert!(
            text.contains("MISSED  idle: memory per idle connection at most Mosquitto's"),
            "{text}"
        );
        assert!(text.contains("Missed 1 of 5 targets"), "{text}");
        assert!(text.contains("50 msg/s per taxi, 500 msg/s offered"));
    }

    #[test]
    fn phases_not_run_are_left_out() {
        let only_idle = |name| SystemResult {
            name,
            load: None,
            handshakes: None,
            idle: Some(Ok(IdleReport {
                opened: 10,
                rss_before_kib: 100,
                rss_after_kib: 200,
                ..IdleReport::default()
            })),
            direct: None,
            burst: None,
        };
        let text = render(&config(), &[only_idle("ours"), only_idle("mosquitto")]);
        assert!(!text.contains("delivered msgs/s"), "{text}");
        assert!(!text.contains("handshakes/s"), "{text}");
        assert!(text.contains("memory per idle conn"), "{text}");
    }
}
