//! `simulator fleet`: N simulated taxis over mutual TLS against a running broker until
//! Ctrl-C. (The benchmarks that drive these taxis are the `bench` command.)
//!
//! The library (`simulator::*`) holds the code; this is the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use simulator::fleet;
use simulator::fleet::FleetArgs;
use simulator::taxi::Behaviour;

#[derive(Parser)]
#[command(about = "A simulated taxi fleet over mutual TLS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs N simulated taxis against a running broker until Ctrl-C: positions, answers to
    /// inbox messages, tours, connection losses.
    Fleet {
        #[arg(long, default_value_t = 10)]
        taxis: usize,
        /// Positions per second per taxi.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 8883)]
        port: u16,
        /// Development PKI directory; missing taxi certificates are issued there.
        #[arg(long, default_value = "certs/dev")]
        certs: PathBuf,
        /// Mean seconds between a taxi's connection losses (0: never).
        #[arg(long, default_value_t = 1800.0)]
        offline_every: f64,
        /// Mean seconds between street hails of a free taxi (0: tours only from orders).
        #[arg(long, default_value_t = 300.0)]
        hail_every: f64,
        /// Share of orders a free driver accepts.
        #[arg(long, default_value_t = 0.8)]
        accept: f64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let command = async {
            match cli.command {
                Command::Fleet {
                    taxis,
                    rate,
                    host,
                    port,
                    certs,
                    offline_every,
                    hail_every,
                    accept,
                } => {
                    let every = |seconds: f64| {
                        (seconds > 0.0 && seconds.is_finite())
                            .then(|| std::time::Duration::from_secs_f64(seconds))
                    };
                    let behaviour = Behaviour {
                        rate,
                        offline_every: every(offline_every),
                        hail_every: every(hail_every),
                        accept_share: accept,
                        ..Behaviour::default()
                    };
                    fleet::run(FleetArgs {
                        taxis,
                        host,
                        port,
                        certs,
                        behaviour,
                    })
                    .await
                }
            }
        };
        // The fleet handles Ctrl-C itself.
        command.await
    });
    // Connections still closing must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
