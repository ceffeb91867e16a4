//! The PostgreSQL side of the ingest benchmark: a private cluster with the default settings
//! (`fsync` and `synchronous_commit` on), one database per phase with the bridge's schema, and
//! the cluster's CPU use read from `/proc`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bridge::store::Store;
use testkit::postgres::TestPostgres;
use tokio_postgres::{Client, NoTls};

use simulator::measure::{self, CpuUse};

/// A private PostgreSQL cluster; stopped and removed on drop.
pub struct Database {
    cluster: TestPostgres,
}

impl Database {
    /// Starts a cluster from the system's binaries (defaults: `fsync` on).
    pub async fn start() -> Result<Database> {
        let cluster = tokio::task::spawn_blocking(|| TestPostgres::builder().start())
            .await
            .context("PostgreSQL start task failed")?
            .context("starting PostgreSQL")?;
        Ok(Database { cluster })
    }

    /// Version and the settings that decide write speed, in one line.
    pub async fn describe(&self) -> Result<String> {
        let client = connect(&self.cluster.url()).await?;
        let version: String = client
            .query_one("SHOW server_version", &[])
            .await?
            .try_get(0)?;
        let mut text = format!("PostgreSQL {version}");
        for name in [
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "shared_buffers",
            "max_wal_size",
        ] {
            let value: String = client
                .query_one(&format!("SHOW {name}"), &[])
                .await?
                .try_get(0)?;
            text.push_str(&format!(", {name}={value}"));
        }
        Ok(text)
    }

    /// Creates database `name` with the bridge's schema (its migrations, run through
    /// [`Store::migrate`]) and today's day partitions; returns its URL.
    pub async fn create(&self, name: &str) -> Result<String> {
        let url = self.cluster.create_database(name).await?;
        let mut store = Store::connect(&url)
            .await
            .with_context(|| format!("connecting to {name}"))?;
        store
            .migrate()
            .await
            .with_context(|| format!("migrating {name}"))?;
        let retention = bridge::Config::default().retention;
        store
            .ensure_partitions(measure::unix_ms(), retention.days, retention.days_ahead)
            .await
            .with_context(|| format!("creating the day partitions of {name}"))?;
        Ok(url)
    }

    /// Writes every dirty page out, so that a phase does not pay for the previous one's.
    pub async fn checkpoint(&self) -> Result<()> {
        let client = connect(&self.cluster.url()).await?;
        client
            .batch_execute("CHECKPOINT")
            .await
            .context("CHECKPOINT")?;
        Ok(())
    }

    /// Starts measuring the CPU used by the cluster's processes.
    pub fn cpu_meter(&self) -> Result<ClusterCpuMeter> {
        let postmaster = self.postmaster_pid()?;
        Ok(ClusterCpuMeter {
            postmaster,
            start: measure::family_cpu_times(postmaster)?,
            wall_start: Instant::now(),
        })
    }

    fn postmaster_pid(&self) -> Result<u32> {
        let path = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .with_context(|| format!("no process id in {}", path.display()))
    }

    fn data_dir(&self) -> PathBuf {
        let log = self.cluster.log_path();
        log.parent().map_or(log.clone(), |dir| dir.join("data"))
    }
}

/// CPU used by the postmaster and its children (backends, WAL writer, checkpointer, ...)
/// since [`Database::cpu_meter`]. Processes that ended meanwhile are not counted.
pub struct ClusterCpuMeter {
    postmaster: u32,
    start: HashMap<u32, Duration>,
    wall_start: Instant,
}

impl ClusterCpuMeter {
    pub fn stop(&self) -> Result<CpuUse> {
        let now = measure::family_cpu_times(self.postmaster)?;
        let cpu = now
            .iter()
            .map(|(pid, cpu)| cpu.saturating_sub(self.start.get(pid).copied().unwrap_or_default()))
            .sum();
        Ok(CpuUse {
            cpu,
            wall: self.wall_start.elapsed(),
        })
    }
}

/// A plain connection (no TLS, loopback); the connection task runs on the current runtime.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Stored positions per taxi (the probe excluded).
pub async fn positions_per_taxi(url: &str) -> Result<HashMap<String, u64>> {
    let client = connect(url).await?;
    let rows = client
        .query(
            "SELECT taxi_id, count(*) FROM positions GROUP BY taxi_id",
            &[],
        )
        .await
        .context("counting positions per taxi")?;
    let mut counts = HashMap::new();
    for row in rows {
        let taxi: String = row.try_get(0)?;
        let count: i64 = row.try_get(1)?;
        counts.insert(taxi, u64::try_from(count).unwrap_or(0));
    }
    Ok(counts)
}

/// Rows in `dead_letters`.
pub async fn dead_letters(url: &str) -> Result<u64> {
    let client = connect(url).await?;
    let count: i64 = client
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await?
        .try_get(0)?;
    Ok(u64::try_from(count).unwrap_or(0))
}
