//! `bridge`: runs the bridge, or replays archived raw data into PostgreSQL.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bridge::archive::object::Class;
use clap::{Parser, Subcommand};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Parser)]
#[command(about = "Taxi telemetry from the MQTT broker into PostgreSQL and an S3 raw archive")]
struct Cli {
    /// TOML configuration file; every key has a default. `BRIDGE_*` variables and
    /// `DATABASE_URL` override it.
    #[arg(long, env = "BRIDGE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consumes, archives, validates and stores until stopped.
    Run,
    /// Reprocesses archived raw messages received in [FROM, TO) into PostgreSQL (idempotent).
    Replay {
        /// Start, RFC 3339 (e.g. 2026-11-20T00:00:00Z).
        #[arg(long)]
        from: String,
        /// End (exclusive), RFC 3339.
        #[arg(long)]
        to: String,
        /// Classes to replay (position, tour, ack, status); all by default.
        #[arg(long = "class")]
        classes: Vec<String>,
    },
}

fn main() -> ExitCode {
    service::logging::init();
    service::process::run(run(Cli::parse()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = bridge::Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run => {
            let _running = bridge::start(config).await?;
            service::process::stopped().await
        }
        Command::Replay { from, to, classes } => {
            let from_ms = parse_time("--from", &from)?;
            let to_ms = parse_time("--to", &to)?;
            let classes = if classes.is_empty() {
                vec![Class::Position, Class::Tour, Class::Ack, Class::Status]
            } else {
                classes
                    .iter()
                    .map(|c| {
                        Class::parse(c).with_context(|| format!("--class: unknown class {c:?}"))
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            let (archive, _embedded) = bridge::archive_endpoint(&config.archive).await?;
            let stats = bridge::replay::replay(&config, &archive, from_ms, to_ms, &classes).await?;
            println!(
                "replayed {} messages from {} objects: {} positions inserted, {} already stored, {} invalid",
                stats.messages, stats.objects, stats.positions_inserted, stats.positions_duplicate, stats.dead_letters
            );
            Ok(())
        }
    }
}

fn parse_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    let time = OffsetDateTime::parse(text, &Rfc3339)
        .with_context(|| format!("{flag}: {text:?} is not an RFC 3339 time"))?;
    Ok((time.unix_timestamp_nanos() / 1_000_000) as i64)
}
