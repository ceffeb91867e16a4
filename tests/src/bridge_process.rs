//! The `bridge` program as a child process, so that a test can kill it with SIGKILL and start
//! it again on the same data directory.
//!
//! The configuration is written as a TOML file (every key of `bridge::Config`) and passed with
//! `--config`; `DATABASE_URL` is set to the same URL and inherited `BRIDGE_*` variables are
//! removed, so that nothing from the environment changes it. The HTTP port is a fixed free
//! port (it must be known before the process starts, and stays the same across restarts).
//! Standard error goes to `<data_dir>.log`, appended across restarts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::http;
use crate::platform::{eventually, Progress};

/// The `bridge` binary next to the test executable (`target/<profile>/bridge`), or the one in
/// `BRIDGE_BIN`.
pub fn bridge_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("BRIDGE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test> -> target/<profile>/bridge
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not in target/<profile>/deps")?;
    let binary = profile_dir.join(format!("bridge{}", std::env::consts::EXE_SUFFIX));
    if !binary.exists() {
        bail!(
            "{} is missing: build it with `cargo build -p bridge` (same profile as the tests), \
             or run the whole workspace's tests, which builds it",
            binary.display()
        );
    }
    Ok(binary)
}

/// A running (or killed) `bridge run` process.
pub struct BridgeProcess {
    pub config: bridge::Config,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub http_addr: SocketAddr,
    binary: PathBuf,
    child: Option<Child>,
}

impl BridgeProcess {
    /// Writes the configuration (with `http.listen` on a free port) and starts the process.
    pub fn spawn(config: &bridge::Config) -> Result<BridgeProcess> {
        let binary = bridge_binary()?;
        let mut config = config.clone();
        let port = testkit::free_port().context("finding a free port for the bridge's HTTP")?;
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], port));
        let base = config.data_dir.clone();
        let config_path = base.with_extension("toml");
        let log_path = base.with_extension("log");
        std::fs::write(&config_path, to_toml(&config)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut process = BridgeProcess {
            http_addr: config.http.listen,
            config,
            config_path,
            log_path,
            binary,
            child: None,
        };
        process.start()?;
        Ok(process)
    }

    /// Starts the process (again), with the same configuration and data directory.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("bridge {} is already running", self.config.id);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg("run")
            .env("DATABASE_URL", &self.config.postgres.url)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BRIDGE_") {
                command.env_remove(name);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, then waits for the process to be gone.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .start_kill()
                .context("sending SIGKILL to the bridge")?;
            tokio::time::timeout(crate::WAIT, child.wait())
                .await
                .context("the killed bridge did not exit")??;
        }
        Ok(())
    }

    /// Fails if the process has exited (with the end of its log).
    pub fn ensure_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("bridge {} is not started", self.config.id);
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "bridge {} exited with {status}; its log ends with:\n{}",
                self.config.id,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Waits until `/metrics` answers and every MQTT connection of this process has
    /// connected (its counters start at 0 with each start).
    pub async fn wait_ready(&mut self) -> Result<()> {
        self.ensure_running()?;
        let connections = self.config.mqtt.connections as f64;
        let id = self.config.id.clone();
        let addr = self.http_addr;
        let ready = eventually(
            &format!("bridge {id} connected"),
            crate::platform::ARRIVAL,
            || async move {
                let (status, page) = http::get(addr, "/metrics").await?;
                let connects =
                    http::sample(&page, "bridge_mqtt_connects_total", &[]).unwrap_or(0.0);
                Ok(if status == 200 && connects >= connections {
                    Progress::Done(())
                } else {
                    Progress::Waiting(format!("HTTP {status}, {connects} connects"))
                })
            },
        )
        .await;
        if let Err(e) = ready {
            self.ensure_running()?;
            bail!("{e:#}\nits log ends with:\n{}", self.log_tail(30));
        }
        Ok(())
    }

    /// One sample of its `/metrics` (0 when the series does not exist yet).
    pub async fn metric(&self, name: &str) -> Result<f64> {
        let (status, page) = http::get(self.http_addr, "/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(http::sample(&page, name, &[]).unwrap_or(0.0))
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// `bridge::Config` as a TOML file: top-level keys, then one table per section.
pub fn to_toml(config: &bridge::Config) -> Result<String> {
    let value = serde_json::to_value(config).context("serializing the bridge configuration")?;
    let Value::Object(fields) = value else {
        bail!("the bridge configuration is not a table");
    };
    let mut top = String::new();
    let mut tables = String::new();
    for (key, value) in &fields {
        match value {
            Value::Object(section) => {
                tables.push_str(&format!("\n[{key}]\n"));
                for (key, value) in section {
                    tables.push_str(&format!("{key} = {}\n", toml_value(value)?));
                }
            }
            value => top.push_str(&format!("{key} = {}\n", toml_value(value)?)),
        }
    }
    Ok(top + &tables)
}

fn toml_value(value: &Value) -> Result<String> {
    Ok(match value {
        // JSON string escapes are valid TOML basic-string escapes.
        Value::String(s) => serde_json::to_string(s)?,
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let items: Result<Vec<String>> = items.iter().map(toml_value).collect();
            format!("[{}]", items?.join(", "))
        }
        // A nested section (e.g. `[dispatch.api]`) as an inline table.
        Value::Object(fields) => {
            let fields: Result<Vec<String>> = fields
                .iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| Ok(format!("{key} = {}", toml_value(value)?)))
                .collect();
            format!("{{ {} }}", fields?.join(", "))
        }
        Value::Null => bail!("no TOML for {value}"),
    })
}

/// Waits (at most `timeout`) for a metric of a bridge process to reach `at_least`.
pub async fn wait_for_metric(
    process: &BridgeProcess,
    name: &str,
    at_least: f64,
    timeout: Duration,
) -> Result<f64> {
    eventually(
        &format!("{name} >= {at_least} on bridge {}", process.config.id),
        timeout,
        || async {
            let value = process.metric(name).await?;
            Ok(if value >= at_least {
                Progress::Done(value)
            } else {
                Progress::Waiting(format!("{value}"))
            })
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_toml_file_reads_back_as_the_same_configuration() {
        let mut config = bridge::Config {
            id: "b-7".to_owned(),
            data_dir: PathBuf::from("/tmp/a \"quoted\" dir"),
            ..bridge::Config::default()
        };
        config.postgres.url = "postgres://postgres@127.0.0.1:5/x".to_owned();
        config.mqtt.topics = vec!["position".to_owned(), "tour".to_owned()];
        config.mqtt.connections = 3;
        config.validation.max_speed_kmh = 123.5;
        config.archive.embedded = false;
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 4567));
        let text = to_toml(&config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        std::fs::write(&path, &text).unwrap();
        // The bridge's own loader, with an environment prefix nobody sets.
        let loaded: bridge::Config = service::load(
            bridge::Config::default(),
            Some(&path),
            "TOML_ROUND_TRIP_UNSET_",
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(
            serde_json::to_value(&loaded).unwrap(),
            serde_json::to_value(&config).unwrap()
        );
    }
}
