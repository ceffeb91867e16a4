//! DuckDB, the baseline: the `duckdb` Python package run as a child process, so that its
//! time and peak memory are measured like ours. Each script prints one JSON line with the
//! time of the work itself (without the interpreter's start) and what it computed.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::child::{self, Finished};

/// Fails early, with the way out, when the package is missing.
pub fn check() -> Result<()> {
    let status = Command::new("python3")
        .args(["-c", "import duckdb"])
        .status()
        .context("running python3")?;
    if !status.success() {
        anyhow::bail!(
            "the DuckDB baseline needs `python3 -m pip install duckdb` (scripts/setup installs it)"
        );
    }
    Ok(())
}

/// Runs `script` with `args` (as `sys.argv[1:]`).
pub fn run(script: &str, args: &[&Path]) -> Result<(Finished, serde_json::Value)> {
    let mut command = Command::new("python3");
    command.arg("-c").arg(script);
    for arg in args {
        command.arg(arg);
    }
    let finished = child::run(command).context("DuckDB")?;
    let line = finished
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    let value: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("DuckDB printed {line:?}, not the expected JSON line"))?;
    Ok((finished, value))
}

/// CSV to Parquet (zstd), as an analyst would convert a TLC file with DuckDB.
pub const CSV_TO_PARQUET: &str = r#"
import json, sys, time, duckdb
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
started = time.perf_counter()
con.execute(f"COPY (SELECT * FROM read_csv('{sys.argv[1]}', header=true)) TO '{sys.argv[2]}' (FORMAT parquet, COMPRESSION zstd)")
seconds = time.perf_counter() - started
rows = con.execute(f"SELECT count(*) FROM read_parquet('{sys.argv[2]}')").fetchone()[0]
print(json.dumps({"seconds": seconds, "rows": rows}))
"#;
