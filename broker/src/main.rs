//! `broker`: runs the broker, manages the development PKI, or exports the authorization
//! rules for another broker (`export-acl`, see [`broker::acl_export`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Taxi fleet MQTT broker with mutual TLS and per-taxi authorization")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the broker.
    Run {
        /// TOML configuration file; every key has a default. `BROKER_*` variables override it.
        #[arg(long, env = "BROKER_CONFIG")]
        config: Option<PathBuf>,
        /// Development mode: create the development PKI in `certs/dev` if it is missing.
        #[arg(long)]
        dev: bool,
    },
    /// Prints the configured role rules as another broker's configuration: Mosquitto's ACL
    /// file (`--format mosquitto`) or the matching `mosquitto.conf` (`--format
    /// mosquitto-conf`). The rules stay in one place: the broker configuration.
    ExportAcl {
        /// TOML configuration file whose `[acl.*]` (and, for the conf, `[mqtt]` and `[tls]`)
        /// are exported; without it, the defaults.
        #[arg(long, env = "BROKER_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "mosquitto")]
        format: ExportFormat,
        /// The role of the devices (any number of them), exported as patterns with the
        /// client's own id.
        #[arg(long, default_value = broker::acl_export::DEFAULT_DEVICE_ROLE)]
        device_role: String,
        /// A service identity as `<cn>=<role>` (repeatable); none given: one per other role,
        /// named like the role (`bridge=bridge`, `operator=operator`, ...).
        #[arg(long = "user", value_name = "CN=ROLE")]
        users: Vec<broker::acl_export::ServiceUser>,
        /// For the conf: where the ACL file will be.
        #[arg(long, default_value = "/etc/mosquitto/taxi-fleet.acl")]
        acl_file: PathBuf,
        /// For the conf: Mosquitto's persistence directory.
        #[arg(long, default_value = "/var/lib/mosquitto/")]
        persistence_dir: PathBuf,
    },
    /// Development certificates (never for production keys).
    Certs {
        /// Directory holding the development PKI.
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    /// Mosquitto's `acl_file`.
    Mosquitto,
    /// The `mosquitto.conf` that goes with it.
    MosquittoConf,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Creates the CA, the server certificate (localhost, 127.0.0.1) and an empty CRL, and
    /// client certificates for a bridge, a backoffice, an operator and taxis `taxi-1`..`taxi-3`.
    Init,
    /// Issues `<id>.pem` and `<id>.key` with `CN=<id>`, `OU=<role>`.
    Issue {
        id: String,
        #[arg(long, default_value = "taxi")]
        role: String,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Adds the current certificate of `<id>` to `crl.pem`; a running broker picks it up.
    Revoke { id: String },
}

fn main() -> ExitCode {
    service::logging::init();
    let cli = Cli::parse();
    service::process::exit_status(match cli.command {
        Command::Run { config, dev } => run(config, dev),
        Command::Certs { dir, command } => certs(dir, command),
        Command::ExportAcl {
            config,
            format,
            device_role,
            users,
            acl_file,
            persistence_dir,
        } => export_acl(
            config,
            format,
            &device_role,
            &users,
            broker::acl_export::MosquittoFiles {
                acl_file,
                persistence_dir,
            },
        ),
    })
}

fn export_acl(
    config: Option<PathBuf>,
    format: ExportFormat,
    device_role: &str,
    users: &[broker::acl_export::ServiceUser],
    files: broker::acl_export::MosquittoFiles,
) -> anyhow::Result<()> {
    let config = broker::Config::load(config.as_deref())?;
    let export = broker::acl_export::AclExport::new(&config.acl, device_role, users)?;
    let text = match format {
        ExportFormat::Mosquitto => export.mosquitto_acl(),
        ExportFormat::MosquittoConf => broker::acl_export::mosquitto_conf(&config, &files)?,
    };
    print!("{text}");
    Ok(())
}

fn run(config: Option<PathBuf>, dev: bool) -> anyhow::Result<()> {
    if dev {
        certs(PathBuf::from("certs/dev"), CertsCommand::Init)?;
    }
    let config = broker::Config::load(config.as_deref())?;
    let runtime = session_runtime()?;
    runtime.block_on(async {
        broker::start(config).await?;
        service::process::stopped().await
    })
}

/// The runtime of the client sessions: with one thread, a single-threaded runtime (no work
/// stealing, no queues shared between threads), which measured 0.78x the CPU per message of
/// a multi-threaded runtime with one worker, and a lower latency
/// (`bench broker --taxis 100 --rate 50 --phases throughput`, two cores).
fn session_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    match session_threads() {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        threads => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
    }
}

/// Threads for the client sessions (TLS, packets) and, in memory mode, the router's task:
/// one per core but one (the router's thread in disk mode, the rest of the system
/// otherwise), at least one; `TOKIO_WORKER_THREADS` overrides. A thread more than there are
/// free cores only adds wake-ups and thread switches to every message.
fn session_threads() -> usize {
    if let Some(threads) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|value| value.trim().parse::<usize>().ok())
        .filter(|threads| *threads > 0)
    {
        return threads;
    }
    std::thread::available_parallelism()
        .map_or(1, |cores| cores.get())
        .saturating_sub(1)
        .max(1)
}

fn certs(dir: PathBuf, command: CertsCommand) -> anyhow::Result<()> {
    let pki = broker::pki::DevPki::open_or_create(&dir)?;
    match command {
        CertsCommand::Init => {
            for (id, role) in [
                ("bridge", "bridge"),
                ("backoffice", "backoffice"),
                ("operator", "operator"),
                ("taxi-1", "taxi"),
                ("taxi-2", "taxi"),
                ("taxi-3", "taxi"),
            ] {
                if !dir.join(format!("{id}.pem")).exists() {
                    pki.issue_client(id, role, 365)?;
                }
            }
            println!("development PKI ready in {}", dir.display());
        }
        CertsCommand::Issue { id, role, days } => {
            let (cert, key) = pki.issue_client(&id, &role, days)?;
            println!("{}\n{}", cert.display(), key.display());
        }
        CertsCommand::Revoke { id } => {
            pki.revoke(&id)?;
            println!("revoked {id}; {} updated", dir.join("crl.pem").display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn export_acl_takes_service_users_and_a_format() {
        let cli = Cli::try_parse_from([
            "broker",
            "export-acl",
            "--format",
            "mosquitto-conf",
            "--user",
            "bridge-eu=bridge",
            "--user",
            "ops=operator",
            "--acl-file",
            "/etc/x.acl",
        ])
        .expect("parses");
        let Command::ExportAcl {
            format,
            users,
            device_role,
            acl_file,
            ..
        } = cli.command
        else {
            panic!("not export-acl");
        };
        assert!(matches!(format, ExportFormat::MosquittoConf));
        assert_eq!(device_role, "taxi");
        assert_eq!(acl_file, PathBuf::from("/etc/x.acl"));
        assert_eq!(
            users
                .iter()
                .map(|u| (u.name.as_str(), u.role.as_str()))
                .collect::<Vec<_>>(),
            [("bridge-eu", "bridge"), ("ops", "operator")]
        );
        assert!(Cli::try_parse_from(["broker", "export-acl", "--user", "bridge"]).is_err());
    }
}
