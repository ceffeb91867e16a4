//! The `bench bridge` report: the configuration, a table (metric | value | baseline |
//! ratio), the product's targets with what was reached, and where the CPU went.

use std::fmt::Write as _;

use super::{BridgeResult, CeilingResult, IngestArgs, IngestResults, NaiveResult};
use simulator::measure::CpuUse;

/// Sustained positions per second the product asks for.
pub const TARGET_RATE: f64 = 50_000.0;
/// Largest p99 publish-to-commit delay the product accepts, in milliseconds.
pub const TARGET_P99_MS: f64 = 500.0;
/// Share of the raw COPY rate the bridge should reach.
pub const TARGET_COPY_SHARE: f64 = 0.70;

/// One line of the table.
pub(crate) struct Row {
    metric: String,
    value: String,
    baseline: String,
    ratio: String,
}

impl Row {
    pub(crate) fn new(metric: impl Into<String>, value: impl Into<String>) -> Row {
        Row {
            metric: metric.into(),
            value: value.into(),
            baseline: String::new(),
            ratio: String::new(),
        }
    }

    /// With a baseline value and the ratio value / baseline.
    pub(crate) fn against(
        mut self,
        value: f64,
        baseline: f64,
        baseline_text: impl Into<String>,
    ) -> Row {
        self.baseline = baseline_text.into();
        self.ratio = if baseline > 0.0 {
            format!("{:.2}", value / baseline)
        } else {
            "-".to_owned()
        };
        self
    }

    pub(crate) fn baseline(mut self, text: impl Into<String>) -> Row {
        self.baseline = text.into();
        self
    }
}

/// The whole report as text.
pub fn render(args: &IngestArgs, postgres: &str, results: &IngestResults) -> String {
    let mut out = String::new();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = writeln!(out, "\nConfiguration");
    let per_taxi = args.rate / args.taxis as f64;
    let delay = args
        .batch_delay_ms
        .unwrap_or_else(|| bridge::Config::default().batch.max_delay_ms);
    let lines = [
        (
            "taxis",
            format!(
                "{} QoS 1 publishers over mTLS, {} positions/s each, {} positions/s offered \
                 in all (postcard Position)",
                args.taxis,
                trim(per_taxi),
                thousands(args.rate)
            ),
        ),
        (
            "bridge",
            format!(
                "in process: mqtt.connections = {}, batch.max_messages = {}, \
                 batch.max_delay_ms = {delay}, 2 commits at once, embedded S3 archive \
                 (spool fsynced per batch)",
                args.connections, args.batch
            ),
        ),
        (
            "broker",
            "our broker, child process, default router settings".to_owned(),
        ),
        ("postgres", format!("private cluster, {postgres}")),
        (
            "duration",
            format!(
                "{} s warm-up, then {} s measured (naive: {} s); ceiling: {} rows",
                trim(args.warmup),
                trim(args.seconds),
                trim(args.naive_seconds),
                args.ceiling_rows()
            ),
        ),
        (
            "delay",
            format!(
                "a probe taxi publishes every {} ms; PostgreSQL is asked every {} ms which of \
                 its positions are stored: delay = first seen - published (an upper bound)",
                super::probe::PUBLISH_EVERY.as_millis(),
                super::probe::POLL_EVERY.as_millis()
            ),
        ),
        (
            "machine",
            format!("{cpus} CPUs shared by taxis, broker, bridge and PostgreSQL; loopback only"),
        ),
    ];
    for (name, value) in lines {
        let _ = writeln!(out, "  {name:<10} {value}");
    }

    let bridge = ok(&results.bridge);
    let ceiling = ok(&results.ceiling);
    let naive = ok(&results.naive);
    let rows = rows(args, bridge, ceiling, naive);
    let _ = writeln!(out);
    out.push_str(&table(&rows));
    out.push_str(&targets(bridge, ceiling));
    if let Some(bridge) = bridge {
        out.push_str(&cpu(bridge, cpus));
    }
    out.push_str(&failures(results));
    out
}

fn ok<T>(result: &Option<Result<T, String>>) -> Option<&T> {
    result.as_ref().and_then(|r| r.as_ref().ok())
}

fn rows(
    args: &IngestArgs,
    bridge: Option<&BridgeResult>,
    ceiling: Option<&CeilingResult>,
    naive: Option<&NaiveResult>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(b) = bridge {
        rows.push(
            Row::new("offered positions/s (PUBACKed)", thousands(b.offered_per_s)).against(
                b.offered_per_s,
                args.rate,
                format!("{} asked", thousands(args.rate)),
            ),
        );
        rows.push(
            Row::new(
                "committed positions/s, sustained",
                thousands(b.committed_per_s),
            )
            .against(
                b.committed_per_s,
                b.offered_per_s,
                format!("{} offered", thousands(b.offered_per_s)),
            ),
        );
        rows.push(Row::new(
            "  slowest / fastest second",
            format!(
                "{} / {}",
                thousands(b.committed_min_s),
                thousands(b.committed_max_s)
            ),
        ));
        rows.push(
            Row::new("committed vs target", thousands(b.committed_per_s)).against(
                b.committed_per_s,
                TARGET_RATE,
                format!("{} target", thousands(TARGET_RATE)),
            ),
        );
    }
    if let Some(c) = ceiling {
        let copy = c.copy.per_second();
        rows.push(Row::new(
            "raw binary COPY rows/s (ceiling)",
            thousands(copy),
        ));
        if let Some(b) = bridge {
            rows.push(
                Row::new("committed / COPY", thousands(b.committed_per_s)).against(
                    b.committed_per_s,
                    copy,
                    format!("{} COPY", thousands(copy)),
                ),
            );
        }
        for (name, rate) in [
            ("Store::write rows/s, 1 connection", c.store_one),
            ("Store::write rows/s, 2 connections", c.store_two),
        ] {
            rows.push(Row::new(name, thousands(rate.per_second())).against(
                rate.per_second(),
                copy,
                format!("{} COPY", thousands(copy)),
            ));
        }
    }
    if let Some(n) = naive {
        let row = Row::new(
            "naive INSERT bridge rows/s (floor)",
            thousands(n.inserted_per_s),
        );
        rows.push(match bridge {
            Some(b) => row.against(
                n.inserted_per_s,
                b.committed_per_s,
                format!("{} bridge", thousands(b.committed_per_s)),
            ),
            None => row.baseline(format!("{} offered", thousands(n.offered_per_s))),
        });
    }
    if let Some(b) = bridge {
        let ms = |us: u64| us as f64 / 1000.0;
        rows.push(Row::new(
            "probe publish-to-commit p50 ms",
            format!("{:.0}", ms(b.probe.delay.p50_us)),
        ));
        rows.push(
            Row::new(
                "probe publish-to-commit p99 ms",
                format!("{:.0}", ms(b.probe.delay.p99_us)),
            )
            .against(
                ms(b.probe.delay.p99_us),
                TARGET_P99_MS,
                format!("< {TARGET_P99_MS:.0} target"),
            ),
        );
        rows.push(Row::new(
            "probe publish-to-commit max ms",
            format!("{:.0}", ms(b.probe.delay.max_us)),
        ));
        rows.push(
            Row::new(
                "probe positions seen / published",
                format!("{} / {}", b.probe.seen, b.probe.published),
            )
            .baseline(format!(
                "query p50 {:.1} ms, max {:.0} ms",
                ms(b.probe.query_p50_us),
                ms(b.probe.query_max_us)
            )),
        );
        let window = b.window.as_secs_f64().max(1e-9);
        rows.push(
            Row::new("backlog at window end", thousands(b.backlog_end as f64)).baseline(format!(
                "{} at start, {:+.0}/s",
                thousands(b.backlog_start as f64),
                (b.backlog_end - b.backlog_start) as f64 / window
            )),
        );
        rows.push(
            Row::new("lost (PUBACKed, never stored)", b.lost.to_string()).against(
                b.lost as f64,
                b.acked as f64,
                format!("{} PUBACKed", thousands(b.acked as f64)),
            ),
        );
        rows.push(Row::new(
            "stored without a PUBACK seen",
            b.stored_unacked.to_string(),
        ));
        rows.push(Row::new(
            "duplicates dropped by key",
            b.duplicates.to_string(),
        ));
        rows.push(Row::new("dead letters", b.dead_letters.to_string()));
        rows.push(
            Row::new(
                "drain after the window s",
                format!("{:.1}", b.drain.took.as_secs_f64()),
            )
            .baseline(if b.drain.caught_up {
                "caught up"
            } else {
                "not caught up"
            }),
        );
        if let Some(rate) = b.drain.per_second() {
            rows.push(
                Row::new("catch-up positions/s, nobody publishing", thousands(rate)).baseline(
                    format!("machine {:.0}% busy", b.drain.machine_cpu.percent()),
                ),
            );
        }
        if let Some(mean) = b.batch_mean {
            rows.push(
                Row::new("bridge batch size, mean", format!("{mean:.0}")).against(
                    mean,
                    args.batch as f64,
                    format!("{} max", args.batch),
                ),
            );
        }
        if let Some(mean) = b.commit_mean_s {
            rows.push(
                Row::new("bridge commit ms, mean", format!("{:.1}", mean * 1000.0)).baseline(
                    b.commit_p99_s
                        .map(|p99| format!("p99 {:.0} ms at window end", p99 * 1000.0))
                        .unwrap_or_default(),
                ),
            );
        }
        if let Some(p99) = b.receive_to_commit_p99_s {
            rows.push(
                Row::new(
                    "bridge receive-to-commit p99 ms",
                    format!("{:.0}", p99 * 1000.0),
                )
                .baseline("at window end"),
            );
        }
    }
    rows.push(Row::new(
        "connections (mqtt.connections)",
        args.connections.to_string(),
    ));
    rows.push(Row::new(
        "batch (batch.max_messages)",
        args.batch.to_string(),
    ));
    rows
}

/// The rows as a Markdown table: metric | value | baseline | ratio.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut cells = vec![[
        "metric".to_owned(),
        "value".to_owned(),
        "baseline".to_owned(),
        "ratio".to_owned(),
    ]];
    for row in rows {
        cells.push([
            row.metric.clone(),
            row.value.clone(),
            row.baseline.clone(),
            row.ratio.clone(),
        ]);
    }
    crate::table::markdown(&cells, |c| c == 0)
}

/// The product's targets, each reached or not.
fn targets(bridge: Option<&BridgeResult>, ceiling: Option<&CeilingResult>) -> String {
    let Some(b) = bridge else {
        return String::new();
    };
    let mut out = String::from("\nTargets\n");
    let verdict = |reached: bool| if reached { "reached" } else { "MISSED " };
    let _ = writeln!(
        out,
        "  {} >= {} positions/s sustained: {} committed/s",
        verdict(b.committed_per_s >= TARGET_RATE),
        thousands(TARGET_RATE),
        thousands(b.committed_per_s)
    );
    let p99 = b.probe.delay.p99_us as f64 / 1000.0;
    let _ = writeln!(
        out,
        "  {} p99 publish-to-commit < {TARGET_P99_MS:.0} ms: {p99:.0} ms",
        verdict(p99 < TARGET_P99_MS && b.probe.seen > 0)
    );
    if let Some(c) = ceiling {
        let share = b.committed_per_s / c.copy.per_second().max(1e-9);
        let _ = writeln!(
            out,
            "  {} >= {:.0}% of the raw COPY rate: {:.0}%",
            verdict(share >= TARGET_COPY_SHARE),
            TARGET_COPY_SHARE * 100.0,
            share * 100.0
        );
    }
    let window = b.window.as_secs_f64().max(1e-9);
    let growth = (b.backlog_end - b.backlog_start) as f64 / window;
    let kept_up = growth <= 0.01 * b.offered_per_s.max(1.0);
    let _ = writeln!(
        out,
        "  {} kept up with the offered rate: backlog {:+.0} positions/s over the window",
        verdict(kept_up),
        growth
    );
    let _ = writeln!(
        out,
        "  {} nothing lost: {} of {} PUBACKed positions never stored",
        verdict(b.lost == 0),
        thousands(b.lost as f64),
        thousands(b.acked as f64)
    );
    out
}

/// Where the CPU went during the window.
fn cpu(b: &BridgeResult, cpus: usize) -> String {
    let per_position = |use_: &CpuUse| {
        let committed = b.committed_per_s * b.window.as_secs_f64();
        if committed <= 0.0 {
            0.0
        } else {
            use_.cpu.as_secs_f64() * 1e6 / committed
        }
    };
    let parts = [
        ("broker (child process)", &b.broker_cpu),
        ("bridge (its runtime's threads)", &b.bridge_cpu),
        ("PostgreSQL (all its processes)", &b.postgres_cpu),
        ("taxis, probe, measuring", &b.generator_cpu),
    ];
    let mut out =
        String::from("\nCPU during the window (% of one core; CPU time per committed position)\n");
    let mut total = 0.0;
    for (name, use_) in parts {
        total += use_.percent();
        let _ = writeln!(
            out,
            "  {name:<32} {:>5.0}%  {:>6.1} µs",
            use_.percent(),
            per_position(use_)
        );
    }
    let _ = writeln!(
        out,
        "  {:<32} {:>5.0}%  of {} available",
        "all of the above",
        total,
        cpus * 100
    );
    let others = (b.machine_cpu.percent() - total).max(0.0);
    let _ = writeln!(
        out,
        "  {:<32} {:>5.0}%  (other processes and the kernel; the machine was {:.0}% busy)",
        "not part of this run",
        others,
        b.machine_cpu.percent()
    );
    if !b.broker_threads.is_empty() {
        let threads: Vec<String> = b
            .broker_threads
            .iter()
            .map(|(name, use_)| format!("{name} {:.0}%", use_.percent()))
            .collect();
        let _ = writeln!(out, "  broker's busiest threads: {}", threads.join(", "));
    }
    out
}

fn failures(results: &IngestResults) -> String {
    let mut out = String::new();
    for (phase, error) in [
        (
            "ceiling",
            results.ceiling.as_ref().and_then(|r| r.as_ref().err()),
        ),
        (
            "bridge",
            results.bridge.as_ref().and_then(|r| r.as_ref().err()),
        ),
        (
            "naive",
            results.naive.as_ref().and_then(|r| r.as_ref().err()),
        ),
    ] {
        if let Some(error) = error {
            let _ = writeln!(out, "\n{phase} phase failed: {error}");
        }
    }
    if let Some(Ok(b)) = &results.bridge {
        if b.errors > 0 {
            let _ = writeln!(out, "\ntaxi errors: {} (first few):", b.errors);
            for error in &b.first_errors {
                let _ = writeln!(out, "  {error}");
            }
        }
    }
    if let Some(Ok(n)) = &results.naive {
        if n.failed > 0 {
            let _ = writeln!(out, "\nnaive bridge: {} messages not stored", n.failed);
        }
    }
    out
}

/// A whole number with thin thousands separators: `61,234`.
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "-".to_owned();
    }
    let rounded = value.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if rounded < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A number without a trailing `.0`.
fn trim(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(61_234.0), "61,234");
        assert_eq!(thousands(-1_234_567.0), "-1,234,567");
        assert_eq!(thousands(f64::INFINITY), "-");
    }

    #[test]
    fn report_shows_every_phase_and_the_targets() {
        let args = IngestArgs {
            taxis: 500,
            rate: 60_000.0,
            seconds: 20.0,
            warmup: 3.0,
            naive_seconds: 10.0,
            connections: 32,
            batch: 2_000,
            batch_delay_ms: None,
            ceiling_rows: None,
            broker_bin: "broker".into(),
            phases: vec![],
            keep: false,
        };
        let rate = |rows, secs| super::super::ceiling::WriteRate {
            rows,
            elapsed: Duration::from_secs(secs),
        };
        let results = IngestResults {
            ceiling: Some(Ok(CeilingResult {
                copy: rate(1_200_000, 8),
                store_one: rate(1_200_000, 10),
                store_two: rate(1_200_000, 9),
            })),
            bridge: Some(Ok(BridgeResult {
                window: Duration::from_secs(20),
                offered_per_s: 59_000.0,
                committed_per_s: 45_000.0,
                backlog_end: 280_000,
                acked: 1_000_000,
                ..BridgeResult::default()
            })),
            naive: Some(Err("broker died".to_owned())),
        };
        let text = render(&args, "PostgreSQL 15", &results);
        assert!(
            text.contains("| raw binary COPY rows/s (ceiling)"),
            "{text}"
        );
        assert!(text.contains("150,000"), "{text}");
        assert!(
            text.contains("MISSED  >= 50,000 positions/s sustained"),
            "{text}"
        );
        assert!(text.contains("naive phase failed: broker died"), "{text}");
        assert!(text.contains("0.30"), "{text}");
    }
}
