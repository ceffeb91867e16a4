//! Mosquitto, a broker and clients no one here wrote.
//!
//! The command-line clients as independent peers: `mosquitto_sub` runs in the background
//! with its output lines on a channel, `mosquitto_pub` runs to completion. Both run with
//! `-d`, so the protocol exchange (CONNACK, SUBACK, ...) is visible next to the `-v` message
//! lines (`<topic> <payload>`). Processes are killed when dropped.
//!
//! [`MosquittoBroker`]: the Mosquitto 2.0 broker as the platform's broker, configured with
//! exactly what `broker export-acl` prints (ACL and `mosquitto.conf`) for the test PKI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use broker::acl_export::{mosquitto_conf, AclExport, MosquittoFiles, DEFAULT_DEVICE_ROLE};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::broker::MqttBroker;
use crate::pki::{ClientCert, TestPki};
use crate::WAIT;

/// One output line of a client process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Stdout(String),
    Stderr(String),
}

impl Line {
    /// A `-v` message line as `(topic, payload)`: stdout, first word a topic with a `/`.
    pub fn message(&self) -> Option<(String, String)> {
        let Line::Stdout(text) = self else {
            return None;
        };
        if text.starts_with("Client ") {
            return None;
        }
        let (topic, payload) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        topic
            .contains('/')
            .then(|| (topic.to_owned(), payload.to_owned()))
    }
}

/// Arguments shared by both tools: where, with which certificate, which protocol.
#[derive(Clone)]
struct Common {
    addr: SocketAddr,
    ca_path: PathBuf,
    cert: ClientCert,
    client_id: String,
    v5: bool,
    qos: u8,
    extra: Vec<String>,
}

impl Common {
    fn new(addr: SocketAddr, ca_path: &Path, cert: &ClientCert) -> Common {
        Common {
            addr,
            ca_path: ca_path.to_owned(),
            cert: cert.clone(),
            client_id: cert.id.clone(),
            v5: false,
            qos: 0,
            extra: Vec::new(),
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "-h".to_owned(),
            self.addr.ip().to_string(),
            "-p".to_owned(),
            self.addr.port().to_string(),
            "--cafile".to_owned(),
            path(&self.ca_path),
            "--cert".to_owned(),
            path(&self.cert.cert_path),
            "--key".to_owned(),
            path(&self.cert.key_path),
            "-i".to_owned(),
            self.client_id.clone(),
            "-q".to_owned(),
            self.qos.to_string(),
            "-d".to_owned(),
        ];
        if self.v5 {
            args.extend(["-V".to_owned(), "mqttv5".to_owned()]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }
}

fn path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A `mosquitto_sub` to be spawned; see [`crate::TestBroker::mosquitto_sub`].
pub struct MosquittoSub {
    common: Common,
    topics: Vec<String>,
}

impl MosquittoSub {
    pub(crate) fn new(addr: SocketAddr, ca_path: &Path, cert: &ClientCert) -> MosquittoSub {
        MosquittoSub {
            common: Common::new(addr, ca_path, cert),
            topics: Vec::new(),
        }
    }

    /// A filter to subscribe to (`-t`); several may be given.
    pub fn topic(mut self, filter: &str) -> MosquittoSub {
        self.topics.push(filter.to_owned());
        self
    }

    /// Subscription QoS (`-q`).
    pub fn qos(mut self, qos: u8) -> MosquittoSub {
        self.common.qos = qos;
        self
    }

    /// MQTT 5 (`-V mqttv5`).
    pub fn v5(mut self) -> MosquittoSub {
        self.common.v5 = true;
        self
    }

    /// Persistent session (`-c`).
    pub fn persistent(mut self) -> MosquittoSub {
        self.common.extra.push("-c".to_owned());
        self
    }

    /// Exit after this many messages (`-C`).
    pub fn count(mut self, count: u32) -> MosquittoSub {
        self.common
            .extra
            .extend(["-C".to_owned(), count.to_string()]);
        self
    }

    pub fn client_id(mut self, client_id: &str) -> MosquittoSub {
        self.common.client_id = client_id.to_owned();
        self
    }

    /// More command-line arguments (`-D subscribe subscription-identifier 7`, `-F %P`, ...).
    pub fn args(mut self, args: &[&str]) -> MosquittoSub {
        self.common
            .extra
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// A last will (`--will-topic` ...).
    pub fn will(mut self, topic: &str, payload: &str, qos: u8, retain: bool) -> MosquittoSub {
        self.common.extra.extend([
            "--will-topic".to_owned(),
            topic.to_owned(),
            "--will-payload".to_owned(),
            payload.to_owned(),
            "--will-qos".to_owned(),
            qos.to_string(),
        ]);
        if retain {
            self.common.extra.push("--will-retain".to_owned());
        }
        self
    }

    /// Starts the process. It gives up on its own after a minute (`-W 60`).
    ///
    /// Its standard output is a pipe, which C stdio buffers in blocks; `stdbuf -oL` (GNU
    /// coreutils) makes it line-buffered so that each line arrives when it is printed.
    pub fn spawn(self) -> Result<SubProcess> {
        let mut args = vec!["-oL".to_owned(), "mosquitto_sub".to_owned()];
        args.extend(self.common.args());
        args.extend(["-v".to_owned(), "-W".to_owned(), "60".to_owned()]);
        for topic in &self.topics {
            args.extend(["-t".to_owned(), topic.clone()]);
        }
        let mut child = Command::new("stdbuf")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting stdbuf -oL mosquitto_sub (apt-get install mosquitto-clients)")?;
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_lines(stdout, tx.clone(), Line::Stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_lines(stderr, tx, Line::Stderr));
        }
        Ok(SubProcess {
            name: format!("mosquitto_sub -i {}", self.common.client_id),
            child,
            lines: rx,
            seen: Vec::new(),
        })
    }
}

async fn forward_lines<R: AsyncRead + Unpin>(
    reader: R,
    tx: mpsc::UnboundedSender<Line>,
    wrap: fn(String) -> Line,
) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(wrap(line)).is_err() {
            return;
        }
    }
}

/// A running `mosquitto_sub`.
pub struct SubProcess {
    name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<Line>,
    seen: Vec<Line>,
}

impl SubProcess {
    /// Waits for the next line matching `pick` (at most `timeout`), keeping every line.
    pub async fn expect_line<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&Line) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    let picked = pick(&line);
                    self.seen.push(line);
                    if let Some(picked) = picked {
                        return Ok(picked);
                    }
                }
                Ok(None) => bail!(
                    "{}: output ended while waiting for {what}; output: {:#?}",
                    self.name,
                    self.seen
                ),
                Err(_) => bail!(
                    "{}: no {what} within {timeout:?}; output: {:#?}",
                    self.name,
                    self.seen
                ),
            }
        }
    }

    /// Waits for `Subscribed (mid: N): c1, c2, ...`; returns the granted QoS / reason codes.
    pub async fn expect_subscribed(&mut self) -> Result<Vec<u32>> {
        self.expect_line("SUBACK", WAIT, |line| match line {
            Line::Stdout(text) => text
                .strip_prefix("Subscribed (mid: ")
                .and_then(|rest| rest.split_once("): "))
                .map(|(_, codes)| {
                    codes
                        .split(',')
                        .filter_map(|code| code.trim().parse().ok())
                        .collect()
                }),
            Line::Stderr(_) => None,
        })
        .await
    }

    /// Waits for a message on `topic`; returns its payload.
    pub async fn expect_message(&mut self, topic: &str) -> Result<String> {
        self.expect_line(&format!("message on {topic}"), WAIT, |line| {
            line.message()
                .filter(|(t, _)| t == topic)
                .map(|(_, payload)| payload)
        })
        .await
    }

    /// Waits for a message on `topic` with exactly this payload.
    pub async fn expect_message_payload(&mut self, topic: &str, payload: &str) -> Result<()> {
        self.expect_line(&format!("message {payload:?} on {topic}"), WAIT, |line| {
            line.message().filter(|m| m.0 == topic && m.1 == payload)
        })
        .await
        .map(|_| ())
    }

    /// Every message line so far, after taking in what has arrived.
    pub fn messages(&mut self) -> Vec<(String, String)> {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.iter().filter_map(Line::message).collect()
    }

    /// Every output line so far.
    pub fn output(&self) -> &[Line] {
        &self.seen
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self) -> Result<ExitStatus> {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within {WAIT:?}", self.name))?
            .with_context(|| format!("waiting for {}", self.name))?;
        // The remaining output is already buffered in the pipe readers.
        while let Ok(Some(line)) = tokio::time::timeout(WAIT, self.lines.recv()).await {
            self.seen.push(line);
        }
        Ok(status)
    }

    /// Kills the process (SIGKILL: no DISCONNECT is sent) and waits for it.
    pub async fn kill(mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.name))
    }
}

/// A `mosquitto_pub` to be run; see [`crate::TestBroker::mosquitto_pub`].
pub struct MosquittoPub {
    common: Common,
    topic: String,
    message: String,
    retain: bool,
}

/// What a finished `mosquitto_pub` left behind.
#[derive(Debug)]
pub struct PubOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl MosquittoPub {
    pub(crate) fn new(addr: SocketAddr, ca_path: &Path, cert: &ClientCert) -> MosquittoPub {
        MosquittoPub {
            common: Common::new(addr, ca_path, cert),
            topic: String::new(),
            message: String::new(),
            retain: false,
        }
    }

    pub fn topic(mut self, topic: &str) -> MosquittoPub {
        self.topic = topic.to_owned();
        self
    }

    pub fn message(mut self, message: &str) -> MosquittoPub {
        self.message = message.to_owned();
        self
    }

    pub fn qos(mut self, qos: u8) -> MosquittoPub {
        self.common.qos = qos;
        self
    }

    pub fn v5(mut self) -> MosquittoPub {
        self.common.v5 = true;
        self
    }

    pub fn retain(mut self) -> MosquittoPub {
        self.retain = true;
        self
    }

    pub fn client_id(mut self, client_id: &str) -> MosquittoPub {
        self.common.client_id = client_id.to_owned();
        self
    }

    /// More command-line arguments (`-D publish user-property k v`, ...).
    pub fn args(mut self, args: &[&str]) -> MosquittoPub {
        self.common
            .extra
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Runs `mosquitto_pub` to completion (killed after [`WAIT`]).
    pub async fn run(self) -> Result<PubOutput> {
        let mut args = self.common.args();
        args.extend([
            "-t".to_owned(),
            self.topic.clone(),
            "-m".to_owned(),
            self.message.clone(),
        ]);
        if self.retain {
            args.push("-r".to_owned());
        }
        let child = Command::new("mosquitto_pub")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting mosquitto_pub (apt-get install mosquitto-clients)")?;
        let output = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .with_context(|| format!("mosquitto_pub to {} did not finish", self.topic))?
            .context("running mosquitto_pub")?;
        Ok(PubOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs it and requires a PUBACK (QoS 1) and exit code 0.
    pub async fn run_acked(self) -> Result<PubOutput> {
        let topic = self.topic.clone();
        let output = self.qos(1).run().await?;
        anyhow::ensure!(
            output.status.success() && output.stdout.contains("received PUBACK"),
            "mosquitto_pub to {topic} was not acknowledged: {output:?}"
        );
        Ok(output)
    }
}

/// Where Debian installs the broker; `MOSQUITTO_BIN` overrides it.
pub const MOSQUITTO_BIN: &str = "/usr/sbin/mosquitto";

/// Mosquitto as the platform's broker, a child process on a free loopback port (killed when
/// dropped). Its ACL and configuration are what `broker export-acl` prints for the broker's
/// default rules and a configuration with the test PKI's files, plus two lines for the test:
/// stay root (to read the temporary key files) and log everything to a file.
pub struct MosquittoBroker {
    pub mqtt_addr: SocketAddr,
    /// The ACL file's text, as exported.
    pub acl: String,
    /// The exported `mosquitto.conf` (before the test's own lines).
    pub conf: String,
    pub log_path: PathBuf,
    ca_pem: String,
    ca_path: PathBuf,
    child: tokio::process::Child,
    _dir: TempDir,
}

impl MosquittoBroker {
    /// Starts Mosquitto with the exported ACL and configuration; waits until it listens.
    pub async fn start(pki: &TestPki) -> Result<MosquittoBroker> {
        crate::init();
        let binary =
            PathBuf::from(std::env::var("MOSQUITTO_BIN").unwrap_or(MOSQUITTO_BIN.to_owned()));
        ensure!(
            binary.is_file(),
            "Mosquitto not found at {} (scripts/setup installs it; MOSQUITTO_BIN overrides)",
            binary.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("mosquitto-")
            .tempdir()
            .context("creating Mosquitto's directory")?;
        let port = testkit::free_port().context("finding a free port for Mosquitto")?;
        let mqtt_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut config = broker::Config::default();
        config.mqtt.listen = mqtt_addr;
        config.tls.server_cert = pki.server_cert_path().to_owned();
        config.tls.server_key = pki.server_key_path().to_owned();
        config.tls.client_ca = vec![pki.ca_path().to_owned()];
        config.tls.crl = vec![pki.crl_path().to_owned()];
        let acl = AclExport::new(&config.acl, DEFAULT_DEVICE_ROLE, &[])?.mosquitto_acl();
        let files = MosquittoFiles {
            acl_file: dir.path().join("taxi-fleet.acl"),
            persistence_dir: dir.path().join("data/"),
        };
        std::fs::create_dir_all(&files.persistence_dir)
            .with_context(|| format!("creating {}", files.persistence_dir.display()))?;
        std::fs::write(&files.acl_file, &acl)
            .with_context(|| format!("writing {}", files.acl_file.display()))?;
        let conf = mosquitto_conf(&config, &files)?;
        let conf_path = dir.path().join("mosquitto.conf");
        let text =
            format!("# The test's own lines.\nuser root\nlog_dest stderr\nlog_type all\n\n{conf}");
        std::fs::write(&conf_path, text)
            .with_context(|| format!("writing {}", conf_path.display()))?;
        let log_path = dir.path().join("mosquitto.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut broker = MosquittoBroker {
            mqtt_addr,
            acl,
            conf,
            log_path,
            ca_pem: pki.ca_pem().to_owned(),
            ca_path: pki.ca_path().to_owned(),
            child,
            _dir: dir,
        };
        broker.wait_listening().await?;
        Ok(broker)
    }

    async fn wait_listening(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("Mosquitto exited with {status}; its log:\n{}", self.log());
            }
            if tokio::net::TcpStream::connect(self.mqtt_addr).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "Mosquitto does not listen on {} within {WAIT:?}; its log:\n{}",
                    self.mqtt_addr,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

impl MqttBroker for MosquittoBroker {
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
