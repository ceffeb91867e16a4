//! The baselines the reporting API is measured against, each a program no one here wrote:
//! `pgbench` running the report's own SQL straight on PostgreSQL with as many clients, `psql
//! \copy` of the export's query, and `aws s3 cp` to and from the S3 server the file API
//! writes to. `curl` is the client of the file API (so both sides of that comparison are
//! measured with a stock command-line client).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

use crate::child;

/// `pgbench` over `script` for `seconds` with `clients` connections: transactions per
/// second and per-transaction latency (from its log).
pub fn pgbench(
    url: &str,
    script: &str,
    clients: usize,
    seconds: u64,
    dir: &Path,
) -> Result<(f64, Histogram<u64>)> {
    let bin = testkit::postgres::bindir()?.join("pgbench");
    let script_path = dir.join("report.sql");
    std::fs::write(&script_path, script).context("writing the pgbench script")?;
    let log_prefix = dir.join("pgbench-log");
    let output = Command::new(&bin)
        .args(["-n", "-M", "prepared", "-l"])
        .arg(format!("--log-prefix={}", log_prefix.display()))
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ])
        .arg("-f")
        .arg(&script_path)
        .arg(url)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench's output: {stdout}"))?;
    let mut latency = Histogram::<u64>::new(3)?;
    for entry in std::fs::read_dir(dir).context("reading pgbench's logs")? {
        let path = entry?.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("pgbench-log"));
        if !is_log {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            // client_id transaction_no time_us script_no time_epoch time_us
            if let Some(us) = line.split_whitespace().nth(2).and_then(|t| t.parse().ok()) {
                latency.record(us)?;
            }
        }
        std::fs::remove_file(&path)?;
    }
    Ok((tps, latency))
}

/// `psql -c "\copy (<query>) TO STDOUT (FORMAT csv, HEADER)"` into nothing: wall time and
/// peak memory of psql.
pub fn psql_copy(url: &str, query: &str) -> Result<child::Finished> {
    let mut command = Command::new("psql");
    command
        .arg(url)
        .arg("-X")
        .arg("-q")
        .arg("-c")
        .arg(format!("\\copy ({query}) TO STDOUT (FORMAT csv, HEADER)"));
    child::run_discarding_output(command).context("psql \\copy")
}

/// The AWS CLI's environment for the S3 server at `endpoint`.
pub struct Aws<'a> {
    pub endpoint: &'a str,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
}

impl Aws<'_> {
    /// `aws s3 cp <from> <to>` (one side an `s3://` URL, `-` for standard output).
    pub fn cp(&self, from: &str, to: &str) -> Result<child::Finished> {
        let mut command = Command::new("aws");
        command
            .args([
                "s3",
                "cp",
                "--only-show-errors",
                "--endpoint-url",
                self.endpoint,
            ])
            .args([from, to])
            .env("AWS_ACCESS_KEY_ID", self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", self.secret_access_key)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env_remove("AWS_PROFILE");
        child::run_discarding_output(command).with_context(|| format!("aws s3 cp {from} {to}"))
    }
}

/// `curl` against the file API: an upload of `file` (`PUT`) or a download into nothing.
pub fn curl(
    url: &str,
    token: &str,
    ca: &Path,
    upload: Option<&Path>,
) -> Result<(Duration, child::Finished)> {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--fail-with-body", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-o", "/dev/null"]);
    if let Some(file) = upload {
        command
            .args(["-H", "Content-Type: application/octet-stream", "-T"])
            .arg(file);
    }
    command.arg(url);
    let finished = child::run(command).with_context(|| format!("curl {url}"))?;
    Ok((finished.elapsed, finished))
}
