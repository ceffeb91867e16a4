//! `simulator`: simulated taxis over mutual TLS, and the broker benchmark.
//!
//! - `simulator fleet`: N simulated taxis against a running broker until Ctrl-C.
//! - `simulator bench-broker`: our broker against Mosquitto, same machine, same certificates:
//!   throughput and latency, handshakes per second, memory per idle connection.
//! - `simulator bench-bridge`: taxis through the broker into the bridge and PostgreSQL,
//!   against PostgreSQL's own COPY rate and a naive bridge.
//! - `simulator bench-dispatch`: order delivery with 1,000 taxis connected, directly and
//!   through the dispatch API, against Mosquitto.
//!
//! The library (`simulator::*`) holds the code; this is the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use simulator::bench::{BenchArgs, Phase, System};
use simulator::dispatch::{DispatchArgs, DispatchPhase};
use simulator::fleet::FleetArgs;
use simulator::ingest::{IngestArgs, IngestPhase};
use simulator::taxi::Behaviour;
use simulator::{baseline, bench, dispatch, fleet, ingest, target};

#[derive(Parser)]
#[command(about = "Simulated taxi fleet, broker benchmark and bridge benchmark over mutual TLS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measures our broker against Mosquitto on this machine: throughput and latency,
    /// handshakes per second and memory per idle connection.
    BenchBroker {
        /// Publishing taxis, one connection each.
        #[arg(long, default_value_t = 100)]
        taxis: usize,
        /// QoS 1 positions per second per taxi; 0 publishes as fast as possible.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Measured seconds of publishing (after the warm-up).
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Seconds of publishing before the measurement starts.
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        /// Idle connections opened to measure memory per connection.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Connections opened and closed to measure handshakes per second.
        #[arg(long, default_value_t = 2_000)]
        handshakes: usize,
        /// Connections being opened at once in the handshake and idle phases.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[command(flatten)]
        broker: OurBroker,
        #[command(flatten)]
        mosquitto: Mosquitto,
        /// Brokers to measure, in this order.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "ours,mosquitto"
        )]
        systems: Vec<System>,
        /// Phases to run, in this order for each broker.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "throughput,handshakes,idle"
        )]
        phases: Vec<Phase>,
        #[command(flatten)]
        temp: TempDir,
    },
    /// Measures the bridge: taxis publish through the broker, the bridge commits to a private
    /// PostgreSQL; sustained positions per second, publish-to-commit delay and losses, against
    /// PostgreSQL's own binary COPY rate and a naive one-INSERT-per-message bridge.
    BenchBridge {
        /// Publishing taxis, one connection each.
        #[arg(long, default_value_t = 500)]
        taxis: usize,
        /// QoS 1 positions per second offered by all taxis together.
        #[arg(long, default_value_t = 60_000.0)]
        rate: f64,
        /// Measured seconds of the bridge phase (after the warm-up).
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Seconds of publishing before the measurement starts.
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        /// Measured seconds of the naive bridge.
        #[arg(long, default_value_t = 10.0)]
        naive_seconds: f64,
        /// The bridge's MQTT connections (`mqtt.connections`).
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// The bridge's batch size (`batch.max_messages`), also used by the ceiling phase.
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// The bridge's `batch.max_delay_ms` [default: the bridge's].
        #[arg(long)]
        batch_delay_ms: Option<u64>,
        /// Rows written in the ceiling phase [default: rate x seconds].
        #[arg(long)]
        ceiling_rows: Option<u64>,
        #[command(flatten)]
        broker: OurBroker,
        /// Phases to run, in this order.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "ceiling,bridge,naive"
        )]
        phases: Vec<IngestPhase>,
        #[command(flatten)]
        temp: TempDir,
    },
    /// Measures how fast an order reaches its taxi with 1,000 taxis connected: published
    /// directly by a backoffice application (against Mosquitto as the baseline) and through
    /// the dispatch HTTP API; and the orders per second the API accepts.
    BenchDispatch {
        /// Connected taxis, one connection each.
        #[arg(long, default_value_t = 1_000)]
        taxis: usize,
        /// Positions per second per taxi.
        #[arg(long, default_value_t = 1.0)]
        position_rate: f64,
        /// Orders per second in the latency phases.
        #[arg(long, default_value_t = 50.0)]
        order_rate: f64,
        /// Measured seconds of each latency phase.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Seconds of position traffic before the first phase.
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        /// Seconds of the API throughput phase.
        #[arg(long, default_value_t = 5.0)]
        throughput_seconds: f64,
        /// API connections of the throughput phase.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[command(flatten)]
        broker: OurBroker,
        #[command(flatten)]
        mosquitto: Mosquitto,
        /// Phases to run, in this order.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "mosquitto,mqtt,api,api-throughput"
        )]
        phases: Vec<DispatchPhase>,
        #[command(flatten)]
        temp: TempDir,
    },
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

/// `--broker-bin`, of the benchmarks that start our broker.
#[derive(Args)]
struct OurBroker {
    /// Our broker binary [default: `broker` beside this executable].
    #[arg(long)]
    broker_bin: Option<PathBuf>,
}

impl OurBroker {
    /// The binary given, or `broker` beside this executable.
    fn binary(self) -> anyhow::Result<PathBuf> {
        match self.broker_bin {
            Some(path) => Ok(path),
            None => target::default_binary(),
        }
    }
}

/// `--mosquitto-bin`, of the benchmarks that measure Mosquitto as the baseline.
#[derive(Args)]
struct Mosquitto {
    /// The Mosquitto binary.
    #[arg(long, default_value = baseline::DEFAULT_BINARY)]
    mosquitto_bin: PathBuf,
}

/// `--keep`, of the benchmarks that work in a temporary directory.
#[derive(Args)]
struct TempDir {
    /// Keep the temporary directory with the certificates, broker configurations and logs.
    #[arg(long)]
    keep: bool,
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
    let fleet_handles_ctrl_c = matches!(cli.command, Command::Fleet { .. });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The commands run on this (the main) thread; brokers started from it die with it.
    let result = runtime.block_on(async {
        let command = async {
            match cli.command {
                Command::BenchBroker {
                    taxis,
                    rate,
                    seconds,
                    warmup,
                    idle,
                    handshakes,
                    concurrency,
                    broker,
                    mosquitto,
                    systems,
                    phases,
                    temp,
                } => {
                    bench::run(BenchArgs {
                        taxis,
                        rate,
                        seconds,
                        warmup,
                        idle,
                        handshakes,
                        concurrency,
                        broker_bin: broker.binary()?,
                        mosquitto_bin: mosquitto.mosquitto_bin,
                        systems,
                        phases,
                        keep: temp.keep,
                    })
                    .await
                }
                Command::BenchBridge {
                    taxis,
                    rate,
                    seconds,
                    warmup,
                    naive_seconds,
                    connections,
                    batch,
                    batch_delay_ms,
                    ceiling_rows,
                    broker,
                    phases,
                    temp,
                } => {
                    ingest::run(IngestArgs {
                        taxis,
                        rate,
                        seconds,
                        warmup,
                        naive_seconds,
                        connections,
                        batch,
                        batch_delay_ms,
                        ceiling_rows,
                        broker_bin: broker.binary()?,
                        phases,
                        keep: temp.keep,
                    })
                    .await
                }
                Command::BenchDispatch {
                    taxis,
                    position_rate,
                    order_rate,
                    seconds,
                    warmup,
                    throughput_seconds,
                    concurrency,
                    broker,
                    mosquitto,
                    phases,
                    temp,
                } => {
                    dispatch::run(DispatchArgs {
                        taxis,
                        position_rate,
                        order_rate,
                        seconds,
                        warmup,
                        throughput_seconds,
                        concurrency,
                        broker_bin: broker.binary()?,
                        mosquitto_bin: mosquitto.mosquitto_bin,
                        phases,
                        keep: temp.keep,
                    })
                    .await
                }
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
        tokio::select! {
            result = command => result,
            // The fleet handles Ctrl-C itself; for the benchmark it stops everything, and
            // dropping the running phase kills its broker.
            _ = interrupted(), if !fleet_handles_ctrl_c => Err(anyhow::anyhow!("interrupted")),
        }
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

async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
