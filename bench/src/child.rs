//! A child process measured from the outside: its wall time and its peak resident memory
//! (the kernel's `ru_maxrss` for the waited child), so that our programs and the baselines
//! are measured the same way.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How a finished child did.
#[derive(Clone, Debug)]
pub struct Finished {
    pub elapsed: Duration,
    /// Peak resident set size, KiB.
    pub peak_rss_kib: u64,
    pub stdout: String,
}

/// Runs `command` to its end (stdout captured, stderr inherited) and measures it. A non-zero
/// exit is an error naming the program.
pub fn run(command: Command) -> Result<Finished> {
    run_with(command, true)
}

/// Like [`run`], with the child's standard output thrown away (a large output is part of
/// what is measured, not kept).
pub fn run_discarding_output(command: Command) -> Result<Finished> {
    run_with(command, false)
}

fn run_with(mut command: Command, capture: bool) -> Result<Finished> {
    let program = format!("{:?}", command.get_program());
    let stdout_file = tempfile::tempfile().context("creating a file for the child's output")?;
    if capture {
        command.stdout(stdout_file.try_clone().context("sharing the output file")?);
    } else {
        command.stdout(std::process::Stdio::null());
    }
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not waited for yet; both pointers are valid.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed();
    if waited != pid {
        bail!("waiting for {program}: {}", std::io::Error::last_os_error());
    }
    let stdout = read_all(stdout_file)?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{program} failed (wait status {status}); its output:\n{stdout}");
    }
    Ok(Finished {
        elapsed,
        peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        stdout,
    })
}

fn read_all(mut file: std::fs::File) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))
        .context("rewinding the child's output")?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .context("reading the child's output")?;
    Ok(text)
}

/// A program beside this executable (`target/<profile>/<name>`).
pub fn sibling_binary(name: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("this executable has no directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first (cargo build --release -p {name})",
            path.display()
        );
    }
    Ok(path)
}
