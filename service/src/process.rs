//! The life of a service process: run its main future, wait for a stop signal, exit with a
//! status that says whether it failed.

use std::future::Future;
use std::process::ExitCode;

/// Runs `main` on a new multi-threaded runtime and turns its result into the exit status,
/// printing the whole error chain on failure.
pub fn run<F>(main: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(main));
    exit_status(result)
}

/// `SUCCESS`, or the error chain on stderr and `FAILURE`.
pub fn exit_status(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn stopped() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping");
    Ok(())
}
