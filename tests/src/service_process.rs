//! A service program (`bridge`, `analytics`) as a child process, so that a test can kill it
//! with SIGKILL and start it again on the same data directory and database.
//!
//! The configuration is written as a TOML file (every key of the service's `Config`) and
//! passed with `--config`; `DATABASE_URL` is set to the same URL and inherited variables of
//! the service's prefix (`BRIDGE_*`, `ANALYTICS_*`) are removed, so that nothing from the
//! environment changes it. The HTTP port is a fixed free port (it must be known before the
//! process starts, and stays the same across restarts). Standard error goes to
//! `<data_dir>.log`, appended across restarts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::dispatch::workspace_binary;
use crate::http;
use crate::platform::{eventually, Progress, ARRIVAL};

/// What the harness needs to know of a service's configuration.
pub trait ServiceConfig: Serialize + Clone {
    /// The program (and package) name: `bridge`, `analytics`.
    const PROGRAM: &'static str;
    /// Its environment variables' prefix: `BRIDGE_`, `ANALYTICS_`.
    const ENV_PREFIX: &'static str;
    fn id(&self) -> &str;
    fn database_url(&self) -> &str;
    fn data_dir(&self) -> &Path;
    fn set_http_listen(&mut self, addr: SocketAddr);
    /// The rules the service checks at start-up, checked here first.
    fn check(&self) -> Result<()>;
    /// The process is ready once `/metrics` answers and this counter (it starts at 0 with
    /// each start) has reached this value: e.g. its MQTT connections.
    fn ready_when(&self) -> (&'static str, f64);
}

/// The program next to the test executable (`target/<profile>/<program>`), or the one in
/// `<PROGRAM>_BIN` (e.g. `BRIDGE_BIN`).
pub fn program_binary(program: &str) -> Result<PathBuf> {
    match std::env::var_os(format!("{}_BIN", program.to_uppercase())) {
        Some(path) => Ok(PathBuf::from(path)),
        None => workspace_binary(program),
    }
}

/// A running (or killed) `<program> run` process.
pub struct ServiceProcess<C: ServiceConfig> {
    pub config: C,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub http_addr: SocketAddr,
    binary: PathBuf,
    child: Option<Child>,
}

/// A command for `binary` with its standard output and error appended to `log`, the test's
/// `RUST_LOG` (info by default), killed when dropped, and no inherited variable starting with
/// `env_prefix`: the written configuration is the whole configuration.
pub(crate) fn logged_command(
    binary: &Path,
    log: std::fs::File,
    env_prefix: &str,
) -> Result<Command> {
    let mut command = Command::new(binary);
    command
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with(env_prefix) {
            command.env_remove(name);
        }
    }
    Ok(command)
}

impl<C: ServiceConfig> ServiceProcess<C> {
    /// Writes the configuration (with `http.listen` on a free port) and starts the process.
    pub fn spawn(config: &C) -> Result<ServiceProcess<C>> {
        let binary = program_binary(C::PROGRAM)?;
        let mut config = config.clone();
        let port = testkit::free_port()
            .with_context(|| format!("finding a free port for the {}'s HTTP", C::PROGRAM))?;
        let http_addr = SocketAddr::from(([127, 0, 0, 1], port));
        config.set_http_listen(http_addr);
        config
            .check()
            .with_context(|| format!("the test's {} configuration", C::PROGRAM))?;
        let base = config.data_dir().to_owned();
        let config_path = base.with_extension("toml");
        let log_path = base.with_extension("log");
        write_config(&config, &config_path)?;
        let mut process = ServiceProcess {
            config,
            config_path,
            log_path,
            http_addr,
            binary,
            child: None,
        };
        process.start()?;
        Ok(process)
    }

    /// `<program> <id>`, for messages.
    fn name(&self) -> String {
        format!("{} {}", C::PROGRAM, self.config.id())
    }

    /// Starts the process (again), with the same configuration and data directory.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let mut command = logged_command(&self.binary, log, C::ENV_PREFIX)?;
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg("run")
            .env("DATABASE_URL", self.config.database_url());
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the process (SIGKILL) and starts it again on the same data directory and HTTP
    /// port, with `config` instead of its old configuration; waits until it is ready.
    pub async fn restart_with(&mut self, mut config: C) -> Result<()> {
        self.kill().await?;
        config.set_http_listen(self.http_addr);
        write_config(&config, &self.config_path)?;
        self.config = config;
        self.start()?;
        self.wait_ready().await
    }

    /// SIGKILL, then waits for the process to be gone.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .start_kill()
                .with_context(|| format!("sending SIGKILL to {}", self.name()))?;
            tokio::time::timeout(crate::WAIT, child.wait())
                .await
                .with_context(|| format!("the killed {} did not exit", self.name()))??;
        }
        Ok(())
    }

    /// Fails if the process has exited (with the end of its log).
    pub fn ensure_running(&mut self) -> Result<()> {
        let name = self.name();
        let Some(child) = self.child.as_mut() else {
            bail!("{name} is not started");
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "{name} exited with {status}; its log ends with:\n{}",
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Waits until `/metrics` answers and the service's readiness counter has reached its
    /// value (see [`ServiceConfig::ready_when`]).
    pub async fn wait_ready(&mut self) -> Result<()> {
        self.ensure_running()?;
        let (metric, needed) = self.config.ready_when();
        let addr = self.http_addr;
        let ready = eventually(&format!("{} ready", self.name()), ARRIVAL, || async move {
            let (status, page) = http::get(addr, "/metrics").await?;
            let value = http::sample(&page, metric, &[]).unwrap_or(0.0);
            Ok(if status == 200 && value >= needed {
                Progress::Done(())
            } else {
                Progress::Waiting(format!("HTTP {status}, {metric} {value}"))
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

    /// Waits (at most `timeout`) for a metric of the process to reach `at_least`.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        at_least: f64,
        timeout: Duration,
    ) -> Result<f64> {
        eventually(
            &format!("{name} >= {at_least} on {}", self.name()),
            timeout,
            || async {
                let value = self.metric(name).await?;
                Ok(if value >= at_least {
                    Progress::Done(value)
                } else {
                    Progress::Waiting(format!("{value}"))
                })
            },
        )
        .await
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Writes `config` as the TOML file at `path`.
fn write_config<C: ServiceConfig>(config: &C, path: &Path) -> Result<()> {
    let value = serde_json::to_value(config)
        .with_context(|| format!("serializing the {} configuration", C::PROGRAM))?;
    std::fs::write(path, to_toml(&value)?).with_context(|| format!("writing {}", path.display()))
}

/// A configuration (as JSON) as a TOML file: top-level keys, then one table per section
/// (nested sections as `[a.b]`); unset optional keys are left out.
pub fn to_toml(config: &Value) -> Result<String> {
    let Value::Object(fields) = config else {
        bail!("the configuration is not a table");
    };
    let mut text = String::new();
    write_table(&mut text, "", fields)?;
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
        // Tables inside arrays (e.g. `[[dispatch.api.tokens]]`) as inline tables.
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
