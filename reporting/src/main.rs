//! `reporting`: the reporting API, or a token hash for its configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "The fleet's reports over HTTPS, behind single sign-on")]
struct Cli {
    /// TOML configuration file; every key has a default. `REPORTING_*` variables and
    /// `DATABASE_URL` override it.
    #[arg(long, env = "REPORTING_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the API until stopped.
    Run,
    /// Prints the SHA-256 of a static token, for `[[auth.tokens]] sha256`.
    HashToken { token: String },
}

fn main() -> ExitCode {
    service::logging::init();
    service::process::run(run(Cli::parse()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::HashToken { token } => {
            println!("{}", reporting::auth::tokens::token_sha256(&token));
            Ok(())
        }
        Command::Run => {
            let config = reporting::Config::load(cli.config.as_deref())?;
            let _running = reporting::start(config).await?;
            service::process::stopped().await
        }
    }
}
