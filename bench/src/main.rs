//! `bench`: benchmark commands that each measure one part of the platform against a baseline
//! measured on the same machine in the same run, print the ratios and say which targets were
//! missed.
//!
//! - `bench analytics` ([`analytics`]): import and daily aggregation against DuckDB, the speed
//!   layer's window latency.
//!
//! The broker, bridge and dispatch benchmarks drive simulated taxis and live in `simulator`
//! (`bench-broker`, `bench-bridge`, `bench-dispatch`). [`child`] measures child processes.

mod analytics;
mod child;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks of the platform, each against a baseline measured in the same run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The analytics layer: import and daily aggregation against DuckDB on the same files, the
    /// speed layer's window latency through the broker.
    Analytics {
        /// Parts to run.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [analytics::Phase::Import, analytics::Phase::Aggregate, analytics::Phase::Windows])]
        phases: Vec<analytics::Phase>,
        /// Rows of the larger generated CSV (a fifth as many are imported first).
        #[arg(long, default_value_t = 5_000_000)]
        rows: u64,
        /// Positions of the aggregated day.
        #[arg(long, default_value_t = 10_000_000)]
        positions: u64,
        /// Positions per second through the broker for the speed layer.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        /// Publishing taxis.
        #[arg(long, default_value_t = 500)]
        taxis: usize,
        /// Measured seconds of publishing.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// The speed layer's allowed lateness, milliseconds.
        #[arg(long, default_value_t = 2_000)]
        lateness_ms: u64,
        /// The broker binary [default: `broker` beside this executable].
        #[arg(long)]
        broker_bin: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    service::logging::init();
    service::process::run(run(Cli::parse()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::Analytics {
            phases,
            rows,
            positions,
            rate,
            taxis,
            seconds,
            lateness_ms,
            broker_bin,
        } => {
            let broker_bin = match broker_bin {
                Some(path) => path,
                None => child::sibling_binary("broker")?,
            };
            analytics::run(analytics::Args {
                phases,
                rows,
                positions,
                rate,
                taxis,
                seconds,
                lateness_ms,
                broker_bin,
            })
            .await
        }
    }
}
