//! `analytics`: runs the analytics layer, or one of its jobs by hand.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    about = "Live windows, daily aggregates, historical trip imports and SQL over the Parquet lake"
)]
struct Cli {
    /// TOML configuration file; every key has a default. `ANALYTICS_*` variables and
    /// `DATABASE_URL` override it.
    #[arg(long, env = "ANALYTICS_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the speed layer and the daily aggregation (and the configured imports) until stopped.
    Run,
    /// Imports NYC TLC trip record files (CSV, CSV.gz or Parquet; the layout is detected).
    Import {
        /// Files to import.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The TLC taxi zone lookup table (taxi_zone_lookup.csv), joined to zone ids.
        #[arg(long)]
        zones: Option<PathBuf>,
        /// Import only: leave the days' aggregates to the next start or `analytics aggregate`.
        #[arg(long)]
        no_aggregate: bool,
    },
    /// Recomputes the daily aggregates (and republishes the lake's days) of [FROM, TO].
    Aggregate {
        /// First day, YYYY-MM-DD (in the configured time zone).
        #[arg(long)]
        from: String,
        /// Last day (inclusive), YYYY-MM-DD; FROM by default.
        #[arg(long)]
        to: Option<String>,
    },
    /// Runs SQL over the lake's datasets (tables: positions, tours, orders, windows,
    /// trips_nyc, daily_fleet, daily_zone).
    Sql {
        query: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Draws cumulative trips per day and daily revenue as line charts (SVG and PNG).
    Chart {
        /// Directory the charts are written to.
        #[arg(long, default_value = "charts")]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
}

fn main() -> ExitCode {
    service::logging::init();
    service::process::run(run(Cli::parse()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = analytics::Config::load(cli.config.as_deref())?;
    if !matches!(cli.command, Command::Sql { .. }) {
        config.require_database()?;
    }
    match cli.command {
        Command::Run => {
            let _running = analytics::start(config).await?;
            service::process::stopped().await
        }
        Command::Import {
            files,
            zones,
            no_aggregate,
        } => {
            analytics::db::migrate(&config.postgres).await?;
            let summaries =
                analytics::import::import_files(&config, &files, zones.as_deref()).await?;
            let days = analytics::import::touched_days(&summaries);
            if !no_aggregate && !days.is_empty() {
                analytics::daily::aggregate_nyc_days(&config, &days).await?;
            }
            analytics::import::all_imported(&summaries)
        }
        Command::Aggregate { from, to } => {
            let from = parse_day("--from", &from)?;
            let to = match to {
                Some(to) => parse_day("--to", &to)?,
                None => from,
            };
            analytics::db::migrate(&config.postgres).await?;
            analytics::daily::recompute(&config, from, to).await
        }
        Command::Sql { query, format } => {
            let format = match format {
                Format::Table => analytics::sql::Format::Table,
                Format::Csv => analytics::sql::Format::Csv,
            };
            analytics::sql::run(&config, &query, format, &mut std::io::stdout()).await
        }
        Command::Chart { out } => {
            for path in analytics::chart::render(&config, &out).await? {
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}

fn parse_day(flag: &str, text: &str) -> anyhow::Result<jiff::civil::Date> {
    text.parse()
        .with_context(|| format!("{flag}: {text:?} is not a day (YYYY-MM-DD)"))
}
