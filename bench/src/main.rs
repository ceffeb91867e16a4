//! `bench`: the command line of the benchmarks (the library `bench::*` holds them).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use bench::brokers::{BenchArgs, Phase, System};
use bench::dispatch::{DispatchArgs, DispatchPhase};
use bench::ingest::{IngestArgs, IngestPhase};
use bench::{analytics, baseline, brokers, dispatch, ingest, reporting, target};

#[derive(Parser)]
#[command(about = "Benchmarks of the platform, each against a baseline measured in the same run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measures our broker against Mosquitto on this machine: throughput and latency,
    /// handshakes per second, memory per idle connection, direct publishes to one taxi among
    /// many, and a burst into a persistent subscriber. `--phases durable` measures what crash
    /// durability costs: the throughput workload against our broker in memory and disk mode.
    Broker {
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
        /// The throughput subscriber keeps its session (clean_session = false).
        #[arg(long)]
        persistent_subscriber: bool,
        /// Direct phase: taxis connected and listening on their inboxes.
        #[arg(long, default_value_t = 1_000)]
        direct_taxis: usize,
        /// Direct phase: positions per second per taxi.
        #[arg(long, default_value_t = 1.0)]
        direct_position_rate: f64,
        /// Direct phase: orders per second published by the backoffice, each to a random taxi.
        #[arg(long, default_value_t = 50.0)]
        direct_rate: f64,
        /// Burst phase: publishers, each with its own connection.
        #[arg(long, default_value_t = 100)]
        burst_publishers: usize,
        /// Burst phase: QoS 1 messages per publisher.
        #[arg(long, default_value_t = 5_000)]
        burst_messages: u64,
        /// Burst phase: payload bytes per message.
        #[arg(long, default_value_t = 1_024)]
        burst_bytes: usize,
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
            default_value = "throughput,handshakes,idle,direct,burst"
        )]
        phases: Vec<Phase>,
        #[command(flatten)]
        temp: TempDir,
    },
    /// Measures the bridge: taxis publish through the broker, the bridge commits to a private
    /// PostgreSQL; sustained positions per second, publish-to-commit delay and losses, against
    /// PostgreSQL's own binary COPY rate and a naive one-INSERT-per-message bridge.
    Bridge {
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
    Dispatch {
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
    /// Measures the analytics layer: `analytics import` and the daily aggregation against
    /// DuckDB on the same files, and the speed layer's window delay through the broker.
    Analytics {
        /// Parts to run, in this order.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "import,aggregate,windows"
        )]
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
        /// Publishing taxis of the speed layer phase.
        #[arg(long, default_value_t = 500)]
        taxis: usize,
        /// Measured seconds of publishing.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// The speed layer's allowed lateness, milliseconds.
        #[arg(long, default_value_t = 2_000)]
        lateness_ms: u64,
        #[command(flatten)]
        broker: OurBroker,
    },
    /// Measures the reporting API (its own process, over HTTPS): the daily report cached and
    /// uncached and the live fleet against pgbench on the same SQL, a CSV export against
    /// `psql \copy`, and the file API against `aws s3 cp`.
    Reporting {
        /// Parts to run, in this order.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "daily,fleet,csv,files"
        )]
        phases: Vec<reporting::Phase>,
        /// Concurrent clients (and pgbench clients).
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Measured seconds of each request phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Taxis of the live fleet.
        #[arg(long, default_value_t = 1_000)]
        taxis: u64,
        /// Positions of the exported route.
        #[arg(long, default_value_t = 1_000_000)]
        positions: u64,
        /// Size of the file API's file, MiB.
        #[arg(long, default_value_t = 1_024)]
        file_mib: u64,
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
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
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
                Command::Broker {
                    taxis,
                    rate,
                    seconds,
                    warmup,
                    idle,
                    handshakes,
                    concurrency,
                    persistent_subscriber,
                    direct_taxis,
                    direct_position_rate,
                    direct_rate,
                    burst_publishers,
                    burst_messages,
                    burst_bytes,
                    broker,
                    mosquitto,
                    systems,
                    phases,
                    temp,
                } => {
                    brokers::run(BenchArgs {
                        taxis,
                        rate,
                        seconds,
                        warmup,
                        idle,
                        handshakes,
                        concurrency,
                        persistent_subscriber,
                        direct_taxis,
                        direct_position_rate,
                        direct_rate,
                        burst_publishers,
                        burst_messages,
                        burst_bytes,
                        broker_bin: broker.binary()?,
                        mosquitto_bin: mosquitto.mosquitto_bin,
                        systems,
                        phases,
                        keep: temp.keep,
                    })
                    .await
                }
                Command::Bridge {
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
                Command::Dispatch {
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
                Command::Analytics {
                    phases,
                    rows,
                    positions,
                    rate,
                    taxis,
                    seconds,
                    lateness_ms,
                    broker,
                } => {
                    analytics::run(analytics::Args {
                        phases,
                        rows,
                        positions,
                        rate,
                        taxis,
                        seconds,
                        lateness_ms,
                        broker_bin: broker.binary()?,
                    })
                    .await
                }
                Command::Reporting {
                    phases,
                    clients,
                    seconds,
                    taxis,
                    positions,
                    file_mib,
                } => {
                    reporting::run(reporting::Args {
                        phases,
                        clients,
                        seconds,
                        taxis,
                        positions,
                        file_mib,
                    })
                    .await
                }
            }
        };
        tokio::select! {
            result = command => result,
            // Dropping the running phase kills its broker.
            _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
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
