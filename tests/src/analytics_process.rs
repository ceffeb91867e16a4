//! The `analytics` program as a child process, so that a test can kill it with SIGKILL and
//! start it again on the same database.
//!
//! The configuration is written as a TOML file (every key of `analytics::Config`) and passed
//! with `--config`; `DATABASE_URL` is set to the same URL and inherited `ANALYTICS_*`
//! variables are removed, so that nothing from the environment changes it. The HTTP port is a
//! fixed free port (known before the process starts, the same across restarts). Standard
//! error goes to `<data_dir>.log`, appended across restarts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::dispatch::workspace_binary;
use crate::http;
use crate::platform::{eventually, Platform, Progress, ARRIVAL};

/// The `analytics` binary next to the test executable (`target/<profile>/analytics`), or the
/// one in `ANALYTICS_BIN`.
pub fn analytics_binary() -> Result<PathBuf> {
    match std::env::var_os("ANALYTICS_BIN") {
        Some(path) => Ok(PathBuf::from(path)),
        None => workspace_binary("analytics"),
    }
}

/// An analytics configuration for `platform`: its own data directory, the platform's
/// database, the daily aggregation off, windows published with the certificate `CN=<id>,
/// OU=analytics` (made here), short back-offs.
pub fn analytics_config(platform: &Platform, id: &str) -> Result<analytics::Config> {
    let cert = platform.pki.client("analytics", "analytics")?;
    let mut config = analytics::Config {
        id: id.to_owned(),
        data_dir: platform.dir.path().join(format!("analytics-{id}")),
        ..analytics::Config::default()
    };
    config.postgres.url = platform.database_url();
    config.postgres.min_backoff_ms = 50;
    config.postgres.max_backoff_ms = 500;
    config.mqtt.host = "127.0.0.1".to_owned();
    config.mqtt.port = platform.broker.mqtt_addr.port();
    config.mqtt.ca = platform.pki.ca_path().to_owned();
    config.mqtt.cert = cert.cert_path;
    config.mqtt.key = cert.key_path;
    config.mqtt.client_id = cert.id;
    config.daily.enabled = false;
    Ok(config)
}

/// A running (or killed) `analytics run` process.
pub struct AnalyticsProcess {
    pub config: analytics::Config,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub http_addr: SocketAddr,
    binary: PathBuf,
    child: Option<Child>,
}

impl AnalyticsProcess {
    /// Writes the configuration (with `http.listen` on a free port) and starts the process.
    pub fn spawn(config: &analytics::Config) -> Result<AnalyticsProcess> {
        let binary = analytics_binary()?;
        let mut config = config.clone();
        let port = testkit::free_port().context("finding a free port for analytics' HTTP")?;
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], port));
        config
            .validate()
            .context("the test's analytics configuration")?;
        let base = config.data_dir.clone();
        let config_path = base.with_extension("toml");
        let log_path = base.with_extension("log");
        std::fs::write(&config_path, to_toml(&config)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut process = AnalyticsProcess {
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

    /// Starts the process (again), with the same configuration.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("analytics {} is already running", self.config.id);
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
            if name.to_string_lossy().starts_with("ANALYTICS_") {
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
            child.start_kill().context("sending SIGKILL to analytics")?;
            tokio::time::timeout(crate::WAIT, child.wait())
                .await
                .context("the killed analytics process did not exit")??;
        }
        Ok(())
    }

    /// Fails if the process has exited (with the end of its log).
    pub fn ensure_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("analytics {} is not started", self.config.id);
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "analytics {} exited with {status}; its log ends with:\n{}",
                self.config.id,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Waits until `/metrics` answers (the migrations are applied and the windows started)
    /// and, if it publishes, its MQTT connection is up (its counters start at 0 with each
    /// start).
    pub async fn wait_ready(&mut self) -> Result<()> {
        self.ensure_running()?;
        let id = self.config.id.clone();
        let addr = self.http_addr;
        let connects_needed = if self.config.mqtt.enabled { 1.0 } else { 0.0 };
        let ready = eventually(&format!("analytics {id} ready"), ARRIVAL, || async move {
            let (status, page) = http::get(addr, "/metrics").await?;
            let connects = http::sample(&page, "analytics_mqtt_connects_total", &[]).unwrap_or(0.0);
            Ok(if status == 200 && connects >= connects_needed {
                Progress::Done(())
            } else {
                Progress::Waiting(format!("HTTP {status}, {connects} MQTT connects"))
            })
        })
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

/// `analytics::Config` as a TOML file: top-level keys, then one table per section (nested
/// sections as `[a.b]`); unset optional keys are left out.
pub fn to_toml(config: &analytics::Config) -> Result<String> {
    let value = serde_json::to_value(config).context("serializing the analytics configuration")?;
    let Value::Object(fields) = value else {
        bail!("the analytics configuration is not a table");
    };
    let mut text = String::new();
    write_table(&mut text, "", &fields)?;
    Ok(text)
}

/// The keys of `table` (under the header `path`, none at the top), then its sub-tables.
fn write_table(out: &mut String, path: &str, table: &serde_json::Map<String, Value>) -> Result<()> {
    if !path.is_empty() {
        out.push_str(&format!("\n[{path}]\n"));
    }
    for (key, value) in table {
        if value.is_null() || value.is_object() {
            continue;
        }
        out.push_str(&format!("{} = {}\n", toml_key(key), toml_value(value)?));
    }
    for (key, value) in table {
        if let Value::Object(inner) = value {
            let inner_path = if path.is_empty() {
                toml_key(key)
            } else {
                format!("{path}.{}", toml_key(key))
            };
            write_table(out, &inner_path, inner)?;
        }
    }
    Ok(())
}

fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        serde_json::to_string(key).unwrap_or_default()
    }
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
        Value::Object(fields) => {
            let fields: Result<Vec<String>> = fields
                .iter()
                .filter(|(_, value)| !value.is_null())
                .map(|(key, value)| Ok(format!("{} = {}", toml_key(key), toml_value(value)?)))
                .collect();
            format!("{{ {} }}", fields?.join(", "))
        }
        Value::Null => bail!("no TOML for {value}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_toml_file_reads_back_as_the_same_configuration() {
        let mut config = analytics::Config {
            id: "a-7".to_owned(),
            data_dir: PathBuf::from("/tmp/a \"quoted\" dir"),
            ..analytics::Config::default()
        };
        config.postgres.url = "postgres://postgres@127.0.0.1:5/x".to_owned();
        config.windows.length_ms = 2_000;
        config.windows.h3_resolution = 9;
        config.mqtt.enabled = false;
        config.http.listen = SocketAddr::from(([127, 0, 0, 1], 4567));
        let text = to_toml(&config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("analytics.toml");
        std::fs::write(&path, &text).unwrap();
        let loaded: analytics::Config = service::load(
            analytics::Config::default(),
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
