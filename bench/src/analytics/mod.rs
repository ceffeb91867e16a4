//! `bench analytics`: the analytics layer against DuckDB and its targets, in one run.
//!
//! - `import` ([`import`]): rows/s of `analytics import` of a generated 2015-layout CSV
//!   against DuckDB converting the same file to Parquet, and both peaks of memory at two
//!   file sizes (ours must not grow with the file). Target: at least DuckDB's rate.
//! - `aggregate` ([`aggregate`]): one day of N positions (and tours, orders) in the lake,
//!   aggregated by the batch layer against DuckDB running the same aggregates over the same
//!   Parquet files. Target: within 1.5x of DuckDB.
//! - `windows` ([`windows`]): the speed layer at a given rate through the broker: delay from
//!   a window's end plus the allowed lateness to its row in PostgreSQL. Target: p99 < 1 s.

pub mod aggregate;
pub mod duckdb;
pub mod import;
pub mod tlc;
pub mod windows;

use std::path::PathBuf;

use anyhow::Result;

/// A part of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Import,
    Aggregate,
    Windows,
}

/// Everything `bench analytics` is told.
#[derive(Clone, Debug)]
pub struct Args {
    pub phases: Vec<Phase>,
    /// Rows of the larger import file.
    pub rows: u64,
    /// Positions of the aggregated day.
    pub positions: u64,
    /// Speed layer: positions/s, taxis, measured seconds, allowed lateness.
    pub rate: f64,
    pub taxis: usize,
    pub seconds: f64,
    pub lateness_ms: u64,
    pub broker_bin: PathBuf,
}

/// Progress on stderr, one line per step.
pub fn say(phase: &str, text: String) {
    eprintln!("[{phase}] {text}");
}

pub async fn run(args: Args) -> Result<()> {
    let mut report = Vec::new();
    let mut missed = Vec::new();
    if args.phases.contains(&Phase::Import) {
        match import::run(args.rows).await {
            Ok(runs) => {
                for run in &runs {
                    let ratio = run.ours_rows_per_s() / run.duckdb_rows_per_s();
                    report.push(format!(
                        "| import {} rows ({:.0} MB), rows/s | {:.0} | DuckDB CSV->Parquet {:.0} | {:.2}x |",
                        run.rows,
                        run.bytes as f64 / 1e6,
                        run.ours_rows_per_s(),
                        run.duckdb_rows_per_s(),
                        ratio
                    ));
                    report.push(format!(
                        "| import {} rows, peak memory | {:.0} MiB | DuckDB {:.0} MiB | {:.2}x |",
                        run.rows,
                        run.ours_peak_kib as f64 / 1024.0,
                        run.duckdb_peak_kib as f64 / 1024.0,
                        run.ours_peak_kib as f64 / run.duckdb_peak_kib.max(1) as f64
                    ));
                }
                if let Some(big) = runs.last() {
                    if big.ours_rows_per_s() < big.duckdb_rows_per_s() {
                        missed.push(format!(
                            "import rate: {:.0} rows/s is below DuckDB's {:.0}",
                            big.ours_rows_per_s(),
                            big.duckdb_rows_per_s()
                        ));
                    }
                }
                if let [small, big] = runs.as_slice() {
                    let growth = big.ours_peak_kib as f64 / small.ours_peak_kib.max(1) as f64;
                    report.push(format!(
                        "| import peak memory, {}x the rows | {:.2}x the memory | | |",
                        big.rows / small.rows.max(1),
                        growth
                    ));
                    if growth > 1.25 {
                        missed.push(format!(
                            "import memory grows with the file ({growth:.2}x for {}x the rows)",
                            big.rows / small.rows.max(1)
                        ));
                    }
                }
            }
            Err(e) => missed.push(format!("import phase failed: {e:#}")),
        }
    }
    if args.phases.contains(&Phase::Aggregate) {
        match aggregate::run(args.positions).await {
            Ok(result) => {
                let ratio = result.ours_s / result.duckdb_s;
                report.push(format!(
                    "| daily aggregation of {} positions, s | {:.2} | DuckDB {:.2} | {:.2}x |",
                    result.positions, result.ours_s, result.duckdb_s, ratio
                ));
                if ratio > 1.5 {
                    missed.push(format!(
                        "aggregation: {ratio:.2}x DuckDB's time (target 1.5x)"
                    ));
                }
            }
            Err(e) => missed.push(format!("aggregate phase failed: {e:#}")),
        }
    }
    if args.phases.contains(&Phase::Windows) {
        let windows_args = windows::WindowsArgs {
            taxis: args.taxis,
            rate: args.rate,
            seconds: args.seconds,
            lateness_ms: args.lateness_ms,
            broker_bin: args.broker_bin.clone(),
        };
        match windows::run(&windows_args).await {
            Ok(result) => {
                report.push(format!(
                    "| windows at {:.0} positions/s ({} windows, {:.0} positions each): end+lateness -> row, p50 / p99 / max ms | {:.0} / {:.0} / {:.0} | bridge receive->commit p99 {} | target p99 < 1000 |",
                    result.offered_per_s,
                    result.windows,
                    result.positions_per_window,
                    result.p50_ms,
                    result.p99_ms,
                    result.max_ms,
                    result
                        .bridge_commit_p99_ms
                        .map(|ms| format!("{ms:.0} ms"))
                        .unwrap_or_else(|| "n/a".to_owned()),
                ));
                if result.p99_ms >= 1000.0 {
                    missed.push(format!(
                        "windows: p99 {:.0} ms beyond the allowed lateness (target < 1000)",
                        result.p99_ms
                    ));
                }
            }
            Err(e) => missed.push(format!("windows phase failed: {e:#}")),
        }
    }
    println!("\n| measure | analytics | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    for line in &report {
        println!("{line}");
    }
    if missed.is_empty() {
        println!("\nEvery target met.");
    } else {
        println!("\nTargets missed:");
        for line in &missed {
            println!("- {line}");
        }
    }
    Ok(())
}
