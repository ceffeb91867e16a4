//! `broker`: runs the broker, or manages the development PKI.

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
    /// Development certificates (never for production keys).
    Certs {
        /// Directory holding the development PKI.
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
        #[command(subcommand)]
        command: CertsCommand,
    },
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
    })
}

fn run(config: Option<PathBuf>, dev: bool) -> anyhow::Result<()> {
    if dev {
        certs(PathBuf::from("certs/dev"), CertsCommand::Init)?;
    }
    let config = broker::Config::load(config.as_deref())?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        broker::start(config).await?;
        service::process::stopped().await
    })
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
