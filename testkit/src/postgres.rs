//! A private PostgreSQL cluster for tests, from the system's PostgreSQL binaries.
//!
//! [`TestPostgres::start`] creates a cluster in a temporary directory, listening on a free
//! loopback port with `trust` authentication for the `postgres` superuser, and [`Drop`] stops
//! it and removes its data. The cluster can be stopped and started again on the same port with
//! the same data, to test what a client does while the server restarts.
//!
//! `initdb` refuses to run as root: when the tests run as root, the cluster's processes run as
//! the `postgres` system user, which owns the temporary directory. The first cluster on a
//! machine is made with `initdb`; later ones copy that fresh cluster, which is much faster.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tempfile::TempDir;

/// The system user running the cluster when the tests run as root.
const SYSTEM_USER: &str = "postgres";

/// How to run a cluster. Defaults: a temporary directory, a free port, `fsync=on`,
/// 200 connections.
#[derive(Clone, Debug)]
pub struct Builder {
    fsync: bool,
    max_connections: u32,
    settings: Vec<(String, String)>,
    kept: Option<(PathBuf, u16)>,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            fsync: true,
            max_connections: 200,
            settings: Vec::new(),
            kept: None,
        }
    }
}

impl Builder {
    /// `fsync=off` is faster, but a cluster killed with `stop_immediately` may then lose
    /// committed data: keep it on where durability is tested.
    pub fn fsync(mut self, on: bool) -> Builder {
        self.fsync = on;
        self
    }

    pub fn max_connections(mut self, n: u32) -> Builder {
        self.max_connections = n;
        self
    }

    /// Any other server setting, passed as `-c name=value`.
    pub fn setting(mut self, name: &str, value: &str) -> Builder {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Keeps the cluster in `dir` (created on first use, reused afterwards) on a fixed
    /// `port`; dropping stops the server cleanly and keeps the data. For the platform's
    /// local database.
    pub fn kept_in(mut self, dir: &Path, port: u16) -> Builder {
        self.kept = Some((dir.to_owned(), port));
        self
    }

    pub fn start(self) -> anyhow::Result<TestPostgres> {
        TestPostgres::start_with(self)
    }
}

/// Where a cluster lives: removed with it, or kept.
#[derive(Debug)]
enum Home {
    Temporary(TempDir),
    Kept(PathBuf),
}

impl Home {
    fn path(&self) -> &Path {
        match self {
            Home::Temporary(dir) => dir.path(),
            Home::Kept(dir) => dir,
        }
    }
}

/// A running throw-away PostgreSQL cluster. Stopped (immediately) and deleted on drop.
#[derive(Debug)]
pub struct TestPostgres {
    bindir: PathBuf,
    /// Holds `data/` (the cluster), the server's unix socket and `server.log`.
    dir: Home,
    port: u16,
    as_system_user: bool,
    options: String,
    /// Serialises stop / start.
    state: Mutex<()>,
}

impl TestPostgres {
    /// A new cluster with the default settings (see [`Builder`]).
    pub fn start() -> anyhow::Result<TestPostgres> {
        Builder::default().start()
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    fn start_with(builder: Builder) -> anyhow::Result<TestPostgres> {
        let bindir = bindir()?;
        let as_system_user = is_root();
        if let Some((dir, port)) = &builder.kept {
            return TestPostgres::start_kept(&builder, bindir, as_system_user, dir, *port);
        }
        let dir = Home::Temporary(tempfile::Builder::new().prefix("testkit-pg-").tempdir()?);
        if as_system_user {
            chown_to_system_user(dir.path())?;
        }
        let data = dir.path().join("data");
        create_cluster(&bindir, &data, as_system_user)?;

        let mut pg = TestPostgres {
            bindir,
            dir,
            port: 0,
            as_system_user,
            options: String::new(),
            state: Mutex::new(()),
        };
        let mut last_error = None;
        // The port is free when chosen but may be taken before the server binds it.
        for _ in 0..5 {
            pg.port = crate::free_port()?;
            pg.options = pg.server_options(&builder);
            match pg.pg_ctl_start() {
                Ok(()) => return Ok(pg),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("PostgreSQL did not start")))
    }

    fn start_kept(
        builder: &Builder,
        bindir: PathBuf,
        as_system_user: bool,
        dir: &Path,
        port: u16,
    ) -> anyhow::Result<TestPostgres> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
        if as_system_user {
            chown_to_system_user(&dir)?;
        }
        let data = dir.join("data");
        if !data.join("PG_VERSION").exists() {
            create_cluster(&bindir, &data, as_system_user)?;
        }
        let mut pg = TestPostgres {
            bindir,
            dir: Home::Kept(dir),
            port,
            as_system_user,
            options: String::new(),
            state: Mutex::new(()),
        };
        pg.options = pg.server_options(builder);
        if data.join("postmaster.pid").exists() {
            // Left by a process that died: pg_ctl start refuses while the file names a live
            // server, and recovers otherwise.
            let _ = pg.pg_ctl_stop("fast");
        }
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    /// `recovery_init_sync_method=syncfs`: after a crash the server syncs the data directory's
    /// file system in one call instead of each file, which takes seconds otherwise.
    fn server_options(&self, builder: &Builder) -> String {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c max_connections={} \
             -c recovery_init_sync_method=syncfs",
            self.port,
            self.dir.path().display(),
            if builder.fsync { "on" } else { "off" },
            builder.max_connections,
        );
        for (name, value) in &builder.settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        options
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of another database of this cluster.
    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The server's log, for diagnosing a failed test.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Creates a database and returns its URL.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .context("connecting to the test cluster")?;
        let task = tokio::spawn(connection);
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let result = client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await;
        drop(client);
        let _ = task.await;
        result.with_context(|| format!("creating database {name}"))?;
        Ok(self.database_url(name))
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`): clients are disconnected.
    pub fn stop(&self) -> anyhow::Result<()> {
        let _guard = self.lock();
        self.pg_ctl_stop("fast")
    }

    /// Stops the server like a crash (`pg_ctl stop -m immediate`): no checkpoint, recovery on
    /// the next start.
    pub fn stop_immediately(&self) -> anyhow::Result<()> {
        let _guard = self.lock();
        self.pg_ctl_stop("immediate")
    }

    /// Starts a stopped server again, on the same port with the same data.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let _guard = self.lock();
        self.pg_ctl_start()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let log = self.log_path();
        let output = self.run(
            "pg_ctl",
            [
                OsStr::new("-D"),
                data.as_os_str(),
                OsStr::new("-l"),
                log.as_os_str(),
                OsStr::new("-o"),
                OsStr::new(&self.options),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("30"),
                OsStr::new("start"),
            ],
        )?;
        if !output.status.success() {
            let log = fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "pg_ctl start failed: {}{}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                tail(&log, 20),
            );
        }
        Ok(())
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let data = self.data_dir();
        let output = self.run(
            "pg_ctl",
            [
                OsStr::new("-D"),
                data.as_os_str(),
                OsStr::new("-m"),
                OsStr::new(mode),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("30"),
                OsStr::new("stop"),
            ],
        )?;
        if !output.status.success() {
            bail!(
                "pg_ctl stop failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
        }
        Ok(())
    }

    fn run<'a>(
        &self,
        program: &str,
        args: impl IntoIterator<Item = &'a OsStr>,
    ) -> anyhow::Result<Output> {
        run(&self.bindir, program, args, self.as_system_user)
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _guard = self.lock();
        let data = self.data_dir();
        let mode = match self.dir {
            Home::Temporary(_) => "immediate",
            Home::Kept(_) => "fast",
        };
        if data.join("postmaster.pid").exists() {
            if let Err(e) = self.pg_ctl_stop(mode) {
                tracing::warn!("stopping PostgreSQL: {e:#}");
            }
        }
    }
}

/// The directory of `initdb`, `pg_ctl`, `postgres` and the other server programs (`pgbench`).
pub fn bindir() -> anyhow::Result<PathBuf> {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        if output.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
            if dir.join("initdb").exists() {
                return Ok(dir);
            }
        }
    }
    // Debian's layout, newest version first.
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .filter(|(_, bin)| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        anyhow!("PostgreSQL server binaries not found (pg_config, /usr/lib/postgresql)")
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn chown_to_system_user(path: &Path) -> anyhow::Result<()> {
    let output = Command::new("chown")
        .arg("-R")
        .arg(format!("{SYSTEM_USER}:"))
        .arg(path)
        .output()
        .context("running chown")?;
    if !output.status.success() {
        bail!(
            "chown {SYSTEM_USER} {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Runs a PostgreSQL program, as the `postgres` user when `as_system_user`.
fn run<'a>(
    bindir: &Path,
    program: &str,
    args: impl IntoIterator<Item = &'a OsStr>,
    as_system_user: bool,
) -> anyhow::Result<Output> {
    let exe = bindir.join(program);
    let mut command = if as_system_user {
        let mut c = Command::new("runuser");
        c.args(["-u", SYSTEM_USER, "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    command.args(args);
    // The server inherits these; keep it from holding the test's output pipes open.
    command.stdin(std::process::Stdio::null());
    command
        .output()
        .with_context(|| format!("running {}", exe.display()))
}

/// Puts a new cluster into `data`: a copy of a cached fresh cluster when there is one,
/// otherwise `initdb` (and the result is cached for the next time).
fn create_cluster(bindir: &Path, data: &Path, as_system_user: bool) -> anyhow::Result<()> {
    let template = template_dir(bindir, as_system_user);
    if template.join("PG_VERSION").exists() && copy_dir(&template, data).is_ok() {
        return Ok(());
    }
    let _ = fs::remove_dir_all(data);
    initdb(bindir, data, as_system_user)?;
    cache_template(data, &template);
    Ok(())
}

fn initdb(bindir: &Path, data: &Path, as_system_user: bool) -> anyhow::Result<()> {
    let output = run(
        bindir,
        "initdb",
        [
            OsStr::new("-D"),
            data.as_os_str(),
            OsStr::new("-U"),
            OsStr::new("postgres"),
            OsStr::new("--auth=trust"),
            OsStr::new("-E"),
            OsStr::new("UTF8"),
            OsStr::new("--no-locale"),
            // Only the cluster's creation skips fsync; the server's `fsync` is separate.
            OsStr::new("--no-sync"),
            OsStr::new("--no-instructions"),
        ],
        as_system_user,
    )?;
    if !output.status.success() {
        bail!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Where a fresh cluster is cached, per PostgreSQL installation and user.
fn template_dir(bindir: &Path, as_system_user: bool) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bindir.hash(&mut hasher);
    fs::metadata(bindir.join("postgres"))
        .and_then(|m| m.modified())
        .ok()
        .hash(&mut hasher);
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!(
        "testkit-pg-template-{}-{euid}-{:016x}",
        if as_system_user { SYSTEM_USER } else { "self" },
        hasher.finish()
    ))
}

/// Keeps a copy of a fresh cluster. Best effort: the copy appears atomically (rename) or not
/// at all, so concurrent test processes never see half a template.
fn cache_template(data: &Path, template: &Path) {
    if template.exists() {
        return;
    }
    let Some(parent) = template.parent() else {
        return;
    };
    let Ok(staging) = tempfile::Builder::new()
        .prefix("testkit-pg-template-new-")
        .tempdir_in(parent)
    else {
        return;
    };
    let copy = staging.path().join("data");
    if copy_dir(data, &copy).is_ok() && fs::rename(&copy, template).is_err() {
        // Another process was faster; the staging directory is removed on drop.
    }
}

/// `cp -a`: keeps owners and modes (the server insists on a private data directory).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let output = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .context("running cp")?;
    if !output.status.success() {
        let _ = fs::remove_dir_all(to);
        bail!("cp -a failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until `url` accepts connections, up to `timeout`.
pub async fn wait_ready(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                drop(client);
                let _ = connection.await;
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(anyhow!("PostgreSQL at {url} not ready: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn query_one(url: &str, sql: &str) -> anyhow::Result<String> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let task = tokio::spawn(connection);
        let row = client.query_one(sql, &[]).await?;
        let value: String = row.try_get(0)?;
        drop(client);
        let _ = task.await;
        Ok(value)
    }

    #[tokio::test]
    async fn starts_restarts_and_cleans_up() -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let pg = TestPostgres::start()?;
        eprintln!("started in {:?}", started.elapsed());
        assert_eq!(query_one(&pg.url(), "SHOW fsync").await?, "on");

        let url = pg.create_database("store \"test\"").await?;
        assert_eq!(
            query_one(&url, "SELECT current_database()::text").await?,
            "store \"test\""
        );
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        let task = tokio::spawn(connection);
        client
            .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
            .await?;

        pg.stop()?;
        assert!(client.simple_query("SELECT 1").await.is_err());
        let _ = task.await;
        assert!(tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .is_err());

        pg.start_again()?;
        assert_eq!(query_one(&url, "SELECT x::text FROM t").await?, "42");
        pg.stop_immediately()?;
        pg.start_again()?;
        assert_eq!(query_one(&url, "SELECT x::text FROM t").await?, "42");

        let dir = pg.dir.path().to_owned();
        drop(pg);
        assert!(!dir.exists());
        Ok(())
    }

    #[tokio::test]
    async fn builder_settings() -> anyhow::Result<()> {
        let pg = TestPostgres::builder()
            .fsync(false)
            .max_connections(50)
            .setting("work_mem", "8MB")
            .start()?;
        assert_eq!(query_one(&pg.url(), "SHOW fsync").await?, "off");
        assert_eq!(query_one(&pg.url(), "SHOW max_connections").await?, "50");
        assert_eq!(query_one(&pg.url(), "SHOW work_mem").await?, "8MB");
        Ok(())
    }
}
