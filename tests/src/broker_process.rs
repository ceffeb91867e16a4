//! The `broker` program as a child process, to kill with SIGKILL and start again on the same
//! configuration, data directories and ports: what a crash of the broker's machine does to
//! its clients (every connection drops, whatever was only in memory is gone) and what its
//! restart must bring back.
//!
//! The configuration is the in-process test broker's (the test PKI, short reload intervals)
//! with `router.durability` and `router.log_dir` set, written once as a TOML file and passed
//! with `broker run --config`; inherited `BROKER_*` variables are removed, so nothing from the
//! environment changes it. Both ports are free ports picked once, so clients reconnect to the
//! same address after a restart. Standard output and error go to `broker.log` in the broker's
//! directory, appended across restarts.
//!
//! [`AckedPublisher`] is a QoS 1 publisher that knows which of its messages the broker
//! acknowledged (PUBACK), which a crash test needs: what was acknowledged must survive.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tempfile::TempDir;
use tokio::process::Child;
use tokio::task::JoinHandle;

use crate::broker::{MqttBroker, RELOAD_INTERVAL_MS};
use crate::http;
use crate::pki::{ClientCert, TestPki};
use crate::platform::{eventually, Progress};
use crate::service_process::{logged_command, program_binary, to_toml};

/// How long a broker process may take to answer on its ports after a start.
pub const START: Duration = Duration::from_secs(30);

/// Where the router keeps what it must deliver (`router.durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// In memory (and the spill area): a crash loses it.
    Memory,
    /// In the durable log under `router.log_dir`: a PUBACK means it is on disk.
    Disk,
}

impl Durability {
    /// The value of `router.durability`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Memory => "memory",
            Durability::Disk => "disk",
        }
    }
}

/// A running (or killed) `broker run` process.
pub struct BrokerProcess {
    pub mqtt_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub durability: Durability,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// `router.log_dir`: the durable log.
    pub log_dir: PathBuf,
    ca_pem: String,
    ca_path: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
    /// Starts so far (1 after [`BrokerProcess::start`]).
    starts: usize,
    _dir: TempDir,
}

impl BrokerProcess {
    /// Starts a broker with the test configuration and `durability`.
    pub async fn start(pki: &TestPki, durability: Durability) -> Result<BrokerProcess> {
        BrokerProcess::start_with(pki, durability, |_| {}).await
    }

    /// Starts a broker after `tweak` has adjusted its configuration (ports, certificates,
    /// spill and log directories are set by the harness).
    pub async fn start_with(
        pki: &TestPki,
        durability: Durability,
        tweak: impl FnOnce(&mut broker::Config),
    ) -> Result<BrokerProcess> {
        crate::init();
        let binary = program_binary("broker")?;
        let dir = tempfile::Builder::new()
            .prefix("broker-process-")
            .tempdir()
            .context("creating the broker's directory")?;
        let mqtt_addr = SocketAddr::from((
            [127, 0, 0, 1],
            testkit::free_port().context("finding a free port for MQTT")?,
        ));
        let http_addr = SocketAddr::from((
            [127, 0, 0, 1],
            testkit::free_port().context("finding a free port for HTTP")?,
        ));
        let mut config = broker::Config::default();
        tweak(&mut config);
        config.mqtt.listen = mqtt_addr;
        config.http.listen = http_addr;
        config.tls.server_cert = pki.server_cert_path().to_owned();
        config.tls.server_key = pki.server_key_path().to_owned();
        config.tls.client_ca = vec![pki.ca_path().to_owned()];
        config.tls.crl = vec![pki.crl_path().to_owned()];
        config.tls.reload_interval_ms = RELOAD_INTERVAL_MS;
        config.router.spill_dir = dir.path().join("spill");
        let log_dir = dir.path().join("log");
        let config_path = dir.path().join("broker.toml");
        std::fs::write(&config_path, config_text(&config, durability, &log_dir)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut process = BrokerProcess {
            mqtt_addr,
            http_addr,
            durability,
            config_path,
            log_path: dir.path().join("broker.log"),
            log_dir,
            ca_pem: pki.ca_pem().to_owned(),
            ca_path: pki.ca_path().to_owned(),
            binary,
            child: None,
            starts: 0,
            _dir: dir,
        };
        process.start_again().await?;
        Ok(process)
    }

    /// Starts the (killed) process again with the same configuration, directories and
    /// ports; waits until it answers on both ports. A port the killed process held may take
    /// a moment to be free again: a start that fails on it is retried.
    pub async fn start_again(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + START;
        loop {
            self.spawn()?;
            match self.wait_ready(deadline).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let exited = self
                        .child
                        .as_mut()
                        .map(|child| matches!(child.try_wait(), Ok(Some(_))))
                        .unwrap_or(true);
                    let port_busy = self.log_since_start().contains("in use");
                    if exited && port_busy && tokio::time::Instant::now() < deadline {
                        self.child = None;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the broker is already running");
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        self.starts += 1;
        // A marker line, so that the log of one start can be told from the previous ones'.
        std::io::Write::write_all(&mut log, start_marker(self.starts).as_bytes())?;
        let mut command = logged_command(&self.binary, log, "BROKER_")?;
        command.arg("run").arg("--config").arg(&self.config_path);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/metrics` answers and the MQTT port accepts connections.
    async fn wait_ready(&mut self, deadline: tokio::time::Instant) -> Result<()> {
        let (http_addr, mqtt_addr) = (self.http_addr, self.mqtt_addr);
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        let child = self.child.as_mut().context("the broker is not started")?;
        let ready = eventually("the broker process ready", timeout, || {
            let exited = child.try_wait();
            async move {
                if let Ok(Some(status)) = exited {
                    bail!("the broker exited with {status}");
                }
                let (status, _) = http::get(http_addr, "/metrics").await?;
                ensure!(status == 200, "/metrics answered {status}");
                tokio::net::TcpStream::connect(mqtt_addr)
                    .await
                    .with_context(|| format!("connecting to {mqtt_addr}"))?;
                Ok(Progress::Done(()))
            }
        })
        .await;
        if let Err(e) = ready {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "the broker exited with {status}; its log since the start:\n{}",
                        self.log_since_start()
                    );
                }
            }
            bail!(
                "{e:#}; its log since the start:\n{}",
                self.log_since_start()
            );
        }
        Ok(())
    }

    /// SIGKILL, then waits for the process to be gone: nothing of it runs any more.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .start_kill()
                .context("sending SIGKILL to the broker")?;
            tokio::time::timeout(crate::WAIT, child.wait())
                .await
                .context("the killed broker did not exit")??;
        }
        Ok(())
    }

    /// [`BrokerProcess::kill`], then [`BrokerProcess::start_again`].
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        self.start_again().await
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Fails if the process has exited (with the end of its log).
    pub fn ensure_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("the broker is not started");
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "the broker exited with {status}; its log ends with:\n{}",
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// Its whole log, every start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Its log since the latest start.
    pub fn log_since_start(&self) -> String {
        let log = self.log();
        let marker = start_marker(self.starts);
        match log.rfind(&marker) {
            Some(at) => log[at + marker.len()..].to_owned(),
            None => log,
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The log lines (every start) at level WARN or ERROR.
    pub fn warnings(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .map(str::to_owned)
            .collect()
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> Result<String> {
        let (status, body) = http::get(self.http_addr, "/metrics").await?;
        ensure!(status == 200, "/metrics answered {status}: {body}");
        Ok(body)
    }

    /// One sample of `/metrics` (0 when the series does not exist yet).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(http::sample(&self.metrics().await?, name, labels).unwrap_or(0.0))
    }

    /// The `broker_log_*` samples of `/metrics`, one per line: what a failing test shows.
    pub async fn log_metrics(&self) -> String {
        match self.metrics().await {
            Ok(page) => page
                .lines()
                .filter(|line| {
                    !line.starts_with('#')
                        && (line.starts_with("broker_log_")
                            || line.starts_with("broker_messages_")
                            || line.starts_with("broker_durable_"))
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("/metrics unreadable: {e:#}"),
        }
    }

    /// Waits (at most `timeout`) until a sample of `/metrics` reaches `at_least`; returns it.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
        timeout: Duration,
    ) -> Result<f64> {
        eventually(&format!("{name} >= {at_least}"), timeout, || async {
            let value = self.metric(name, labels).await?;
            Ok(if value >= at_least {
                Progress::Done(value)
            } else {
                Progress::Waiting(format!("{value}"))
            })
        })
        .await
    }

    /// The segment files (`*.seg`) anywhere under the log directory, with their sizes.
    pub fn segment_files(&self) -> Result<Vec<(PathBuf, u64)>> {
        let mut found = Vec::new();
        let mut pending = vec![self.log_dir.clone()];
        while let Some(dir) = pending.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
            };
            for entry in entries {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if entry.file_name().to_string_lossy().ends_with(".seg") {
                    found.push((entry.path(), entry.metadata()?.len()));
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// The segment file written last (the latest modification time; of equal times, the
    /// last name), with what else the log directory holds, for messages.
    pub fn newest_segment(&self) -> Result<PathBuf> {
        let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
        for (path, _) in self.segment_files()? {
            let modified = std::fs::metadata(&path)?.modified()?;
            if newest
                .as_ref()
                .is_none_or(|(time, name)| (modified, &path) > (*time, name))
            {
                newest = Some((modified, path));
            }
        }
        match newest {
            Some((_, path)) => Ok(path),
            None => bail!(
                "no *.seg file under {}: {:?}",
                self.log_dir.display(),
                self.log_dir_listing()
            ),
        }
    }

    /// Every file under the log directory with its size, for messages.
    pub fn log_dir_listing(&self) -> Vec<String> {
        let mut listing = Vec::new();
        let mut pending = vec![self.log_dir.clone()];
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                    let name = path.strip_prefix(&self.log_dir).unwrap_or(&path);
                    listing.push(format!("{} ({size} B)", name.display()));
                }
            }
        }
        listing.sort();
        listing
    }
}

impl MqttBroker for BrokerProcess {
    fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn ca_path(&self) -> &Path {
        &self.ca_path
    }
}

fn start_marker(start: usize) -> String {
    format!("==== broker process start {start} ====\n")
}

/// The broker's configuration as a TOML file, with `router.durability` and `router.log_dir`.
fn config_text(config: &broker::Config, durability: Durability, log_dir: &Path) -> Result<String> {
    let mut value = serde_json::to_value(config).context("serializing the configuration")?;
    let router = value
        .get_mut("router")
        .and_then(Value::as_object_mut)
        .context("the configuration has no [router]")?;
    router.insert(
        "durability".to_owned(),
        Value::String(durability.as_str().to_owned()),
    );
    router.insert(
        "log_dir".to_owned(),
        Value::String(log_dir.to_string_lossy().into_owned()),
    );
    to_toml(&value)
}

/// What an [`AckedPublisher`] has seen.
#[derive(Default)]
struct PublisherState {
    /// Tags of the publishes handed to the client, not yet sent (in order).
    queued: VecDeque<u64>,
    /// Tags of sent publishes waiting for their PUBACK, by packet id (oldest first).
    in_flight: HashMap<u16, VecDeque<u64>>,
    /// Tags sent, in order.
    sent: Vec<u64>,
    /// Tags acknowledged, in the order of the PUBACKs.
    acked: Vec<u64>,
    /// CONNACK's session_present, once connected.
    connected: Option<bool>,
    /// Why the connection ended.
    closed: Option<String>,
}

/// A rumqttc (MQTT 3.1.1) client over mutual TLS publishing QoS 1, which tells which of its
/// publishes the broker acknowledged. Each publish carries a tag (a sequence number, say);
/// the packet id rumqttc gives it when it goes out is matched with the PUBACKs. Like the
/// other test clients it never reconnects: after the connection ends, a device starts a new
/// one and publishes again what was not acknowledged.
pub struct AckedPublisher {
    pub client_id: String,
    client: rumqttc::AsyncClient,
    state: Arc<Mutex<PublisherState>>,
    driver: JoinHandle<()>,
}

impl Drop for AckedPublisher {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl AckedPublisher {
    /// Connects (clean session) presenting `cert`, with its CN as the client id; waits for
    /// the CONNACK.
    pub async fn connect(broker: &impl MqttBroker, cert: &ClientCert) -> Result<AckedPublisher> {
        crate::init();
        let addr = broker.mqtt_addr();
        let mut options = rumqttc::MqttOptions::new(&cert.id, addr.ip().to_string(), addr.port());
        options
            .set_transport(rumqttc::Transport::tls(
                broker.ca_pem().as_bytes().to_vec(),
                Some((
                    cert.cert_pem.as_bytes().to_vec(),
                    cert.key_pem.as_bytes().to_vec(),
                )),
                None,
            ))
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, eventloop) = rumqttc::AsyncClient::new(options, 100);
        let state = Arc::new(Mutex::new(PublisherState::default()));
        let driver = tokio::spawn(drive_publisher(eventloop, state.clone()));
        let publisher = AckedPublisher {
            client_id: cert.id.clone(),
            client,
            state,
            driver,
        };
        eventually(&format!("{} connected", cert.id), crate::WAIT, || async {
            let state = publisher.lock();
            if state.connected.is_some() {
                return Ok(Progress::Done(()));
            }
            if let Some(reason) = &state.closed {
                bail!("the connection ended before the CONNACK: {reason}");
            }
            Ok(Progress::Waiting("no CONNACK yet".to_owned()))
        })
        .await?;
        Ok(publisher)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PublisherState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a QoS 1 publish tagged `tag`. Publishes must be made one after the other (not
    /// from concurrent tasks): the tags are matched with the packets in the order given.
    /// Fails once the connection has ended.
    pub async fn publish(&self, topic: &str, retain: bool, payload: &[u8], tag: u64) -> Result<()> {
        self.lock().queued.push_back(tag);
        let queued = self
            .client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec())
            .await;
        if let Err(e) = queued {
            let mut state = self.lock();
            state.queued.retain(|queued| *queued != tag);
            bail!(
                "{}: publish {tag} not queued ({e}); the connection ended: {}",
                self.client_id,
                state.closed.as_deref().unwrap_or("not yet")
            );
        }
        Ok(())
    }

    /// Tags acknowledged so far.
    pub fn acked(&self) -> BTreeSet<u64> {
        self.lock().acked.iter().copied().collect()
    }

    /// How many publishes were acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.lock().acked.len()
    }

    /// Tags sent to the broker so far (acknowledged or not).
    pub fn sent(&self) -> BTreeSet<u64> {
        self.lock().sent.iter().copied().collect()
    }

    /// Why the connection ended, once it has.
    pub fn closed(&self) -> Option<String> {
        self.lock().closed.clone()
    }

    /// Waits (at most `timeout`) until every publish so far is acknowledged.
    pub async fn wait_all_acked(&self, timeout: Duration) -> Result<()> {
        eventually(
            &format!("every publish of {} acknowledged", self.client_id),
            timeout,
            || async {
                let state = self.lock();
                let outstanding =
                    state.queued.len() + state.in_flight.values().map(VecDeque::len).sum::<usize>();
                if outstanding == 0 {
                    return Ok(Progress::Done(()));
                }
                if let Some(reason) = &state.closed {
                    bail!(
                        "{outstanding} publishes not acknowledged; the connection ended: {reason}"
                    );
                }
                Ok(Progress::Waiting(format!(
                    "{outstanding} not acknowledged, {} acknowledged",
                    state.acked.len()
                )))
            },
        )
        .await
    }

    /// Sends DISCONNECT and waits (briefly) for the connection to end.
    pub async fn disconnect(self) -> Result<()> {
        self.client
            .disconnect()
            .await
            .context("queueing a disconnect")?;
        let _ = eventually("the publisher disconnected", crate::WAIT, || async {
            Ok(match self.closed() {
                Some(_) => Progress::Done(()),
                None => Progress::Waiting("connected".to_owned()),
            })
        })
        .await;
        Ok(())
    }
}

async fn drive_publisher(mut eventloop: rumqttc::EventLoop, state: Arc<Mutex<PublisherState>>) {
    use rumqttc::{Event, Outgoing, Packet};
    let lock = || {
        state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != rumqttc::ConnectReturnCode::Success {
                    lock().closed = Some(format!("CONNACK refused: {:?}", ack.code));
                    return;
                }
                lock().connected = Some(ack.session_present);
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let mut state = lock();
                let tag = state
                    .in_flight
                    .get_mut(&ack.pkid)
                    .and_then(VecDeque::pop_front);
                match tag {
                    Some(tag) => state.acked.push(tag),
                    None => {
                        state.closed = Some(format!("a PUBACK for packet {} not sent", ack.pkid));
                        return;
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut state = lock();
                if let Some(tag) = state.queued.pop_front() {
                    state.in_flight.entry(pkid).or_default().push_back(tag);
                    state.sent.push(tag);
                }
            }
            Ok(_) => {}
            Err(e) => {
                lock().closed = Some(e.to_string());
                return;
            }
        }
    }
}
