//! `bench`: benchmark commands that each measure one part of the platform against a baseline
//! measured on the same machine in the same run, and print the ratios.
//!
//! The broker, bridge and dispatch benchmarks live in `simulator` (they drive simulated
//! taxis); the analytics benchmark is here.

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
    /// The analytics layer: import against DuckDB, daily aggregation against DuckDB, the speed
    /// layer's window latency.
    Analytics,
}

fn main() -> ExitCode {
    service::logging::init();
    service::process::run(run(Cli::parse()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Analytics => anyhow::bail!("not built yet"),
    }
}
