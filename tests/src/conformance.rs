//! The Eclipse paho interoperability suite (`tests/conformance/paho`, its own licence) run
//! against the broker through `tests/conformance/tls_shim.py`.
//!
//! The suite speaks plain MQTT with fixed client ids (`myclientid`, `myclientid2`,
//! `clean_retained` and an empty one); the shim opens mutual TLS for each of its connections
//! with the certificate of that id (CN = id, OU = `conformance`), and an empty id with the
//! certificate `anonymous` (whose id the broker assigns to it). The broker gets a
//! `conformance` role that may publish and subscribe on every topic and use shared
//! subscriptions, and a keep-alive cap of 60 s: only in this configuration.
//!
//! Each case runs alone in its own `python3` process, bounded by [`CASE_TIMEOUT`]; a case
//! passes when the suite's runner prints `1/1 paho interoperability tests pass`. The suite
//! waits with fixed sleeps and has races of its own (`test_request_response` publishes while
//! its second client's SUBSCRIBE may still be on its way to the broker), so [`run_case`] gives
//! a failing case up to [`ATTEMPTS`] runs, each on a fresh broker, and shows every output if
//! none passes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{TestBroker, TestPki, WAIT};

/// How long one case of the suite may take (the slowest pass in about 20 s).
pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// The role of the suite's certificates.
pub const ROLE: &str = "conformance";

/// Client ids the suite uses, each with a certificate; `anonymous` is what an empty id presents.
const IDS: [&str; 4] = ["myclientid", "myclientid2", "clean_retained", "anonymous"];

/// Runs of a case before it counts as failed.
pub const ATTEMPTS: usize = 3;

/// Runs one case on a broker of its own configured by `tweak`; a failing case is run again on
/// a fresh broker, up to [`ATTEMPTS`] times in all.
pub async fn run_case(suite: Suite, case: &str, tweak: impl Fn(&mut broker::Config)) -> Result<()> {
    let mut failures = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let mut conformance = Conformance::start_with(&tweak).await?;
        match conformance.run(suite, case).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                eprintln!("attempt {attempt} of {ATTEMPTS} failed: {e:#}");
                failures.push(format!("attempt {attempt}: {e:#}"));
            }
        }
    }
    bail!(
        "{suite:?} {case} failed {ATTEMPTS} times:\n{}",
        failures.join("\n")
    )
}

/// Which of the two suites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// `client_test.py`, MQTT 3.1.1.
    V311,
    /// `client_test5.py`, MQTT 5.
    V5,
}

/// Where the suite, the shim and the runner are.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

/// A broker configured for the suite, with the shim in front of it.
pub struct Conformance {
    pub broker: TestBroker,
    _pki: TestPki,
    shim: Child,
    shim_port: u16,
}

impl Conformance {
    /// Starts the broker (with `tweak` applied after the suite's own settings) and the shim.
    pub async fn start_with(tweak: impl Fn(&mut broker::Config)) -> Result<Conformance> {
        let pki = TestPki::new()?;
        let shim_pki = pki.dir().join("shim");
        std::fs::create_dir_all(&shim_pki).context("creating the shim's certificate directory")?;
        std::fs::copy(pki.ca_path(), shim_pki.join("ca.crt")).context("copying the CA")?;
        for id in IDS {
            let cert = pki.client(id, ROLE)?;
            std::fs::write(shim_pki.join(format!("{id}.crt")), &cert.cert_pem)
                .with_context(|| format!("writing {id}.crt"))?;
            std::fs::write(shim_pki.join(format!("{id}.key")), &cert.key_pem)
                .with_context(|| format!("writing {id}.key"))?;
        }
        let broker = TestBroker::start_with(&pki, |config| {
            config.acl.insert(
                ROLE.to_owned(),
                broker::acl::RoleRules {
                    publish: vec!["#".to_owned()],
                    subscribe: vec!["#".to_owned()],
                    shared: true,
                    ..Default::default()
                },
            );
            config.mqtt.max_keep_alive_s = 60;
            tweak(config);
        })
        .await?;
        let mut shim = Command::new("python3")
            .arg(dir().join("tls_shim.py"))
            .args(["--listen", "0", "--broker"])
            .arg(broker.mqtt_addr.port().to_string())
            .arg("--pki")
            .arg(&shim_pki)
            .args(["--anonymous", "anonymous"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting python3 tls_shim.py")?;
        let stdout = shim.stdout.take().context("the shim's standard output")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .context("the shim did not start listening")?
            .context("reading the shim's output")?
            .context("the shim exited before listening")?;
        let shim_port = line
            .strip_prefix("listening on ")
            .and_then(|port| port.trim().parse().ok())
            .with_context(|| format!("unexpected first line from the shim: {line:?}"))?;
        Ok(Conformance {
            broker,
            _pki: pki,
            shim,
            shim_port,
        })
    }

    /// Runs one case (`test_basic`, ...) of a suite once; fails with the suite's output unless
    /// it passes within [`CASE_TIMEOUT`].
    pub async fn run(&mut self, suite: Suite, case: &str) -> Result<()> {
        if let Ok(Some(status)) = self.shim.try_wait() {
            bail!("the shim has exited ({status})");
        }
        let dir = dir();
        let mut command = Command::new("python3");
        command
            .arg(dir.join("run.py"))
            .arg("--suite")
            .arg(dir.join("paho").join("interoperability"))
            .args(["--port", &self.shim_port.to_string()]);
        if suite == Suite::V5 {
            command.arg("--v5");
        }
        let child = command
            .arg(format!("Test.{case}"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting python3 run.py")?;
        let output = tokio::time::timeout(CASE_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("{suite:?} {case} did not finish within {CASE_TIMEOUT:?}"))?
            .context("running the suite")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let verdict = stdout.lines().last().unwrap_or("");
        if verdict != "1/1 paho interoperability tests pass" {
            bail!(
                "{suite:?} {case} failed: {verdict:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
            );
        }
        Ok(())
    }
}
