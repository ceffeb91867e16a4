//! The connection-heavy scenarios: how many full mTLS handshakes with MQTT CONNECT/CONNACK a
//! broker completes per second, and how much broker memory each idle connection holds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::limit::run_bounded;
use crate::raw::RawConnection;
use simulator::measure::{self, CpuMeter, CpuUse, Latency, LatencySummary};
use simulator::pki::Client;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive of idle connections: far longer than the measurement.
pub const IDLE_KEEP_ALIVE_S: u16 = 600;
/// Errors kept for the report.
const KEPT_ERRORS: usize = 5;

/// Results of the handshake scenario.
#[derive(Debug, Default)]
pub struct HandshakeReport {
    pub attempted: usize,
    pub succeeded: usize,
    pub first_errors: Vec<String>,
    pub elapsed: Duration,
    /// From TCP connect to CONNACK.
    pub latency: LatencySummary,
    pub broker_cpu: CpuUse,
    /// The load generator's own CPU use.
    pub generator_cpu: CpuUse,
    /// Negotiated TLS version and cipher suite.
    pub tls: Option<String>,
}

impl HandshakeReport {
    pub fn per_second(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.succeeded as f64 / self.elapsed.as_secs_f64()
    }

    /// Broker CPU time per successful connection, in milliseconds.
    pub fn broker_cpu_ms_per_connection(&self) -> f64 {
        if self.succeeded == 0 {
            return 0.0;
        }
        self.broker_cpu.cpu.as_secs_f64() * 1e3 / self.succeeded as f64
    }
}

/// Opens `count` connections, `concurrency` at a time, each with a full handshake (no session
/// resumption), CONNECT, CONNACK and DISCONNECT. Client `i` uses identity `i % clients.len()`.
pub async fn handshakes(
    addr: SocketAddr,
    clients: &[Client],
    count: usize,
    concurrency: usize,
    broker_pid: u32,
) -> Result<HandshakeReport> {
    if clients.is_empty() {
        bail!("no client identities");
    }
    let meter = CpuMeter::start(broker_pid)?;
    let own_meter = CpuMeter::start(std::process::id())?;
    let started = Instant::now();
    let results = run_bounded(count, concurrency, |i| {
        let client = clients[i % clients.len()].clone();
        async move {
            let begun = Instant::now();
            let connection =
                RawConnection::open(addr, client.tls, &client.id, 60, CONNECT_TIMEOUT).await?;
            let elapsed = begun.elapsed();
            let tls = (i == 0).then(|| connection.tls_description());
            connection.disconnect().await?;
            Ok((elapsed, tls))
        }
    })
    .await;
    let elapsed = started.elapsed();
    let broker_cpu = meter.stop()?;
    let generator_cpu = own_meter.stop()?;

    let mut report = HandshakeReport {
        attempted: count,
        elapsed,
        broker_cpu,
        generator_cpu,
        ..HandshakeReport::default()
    };
    let mut latency = Latency::new()?;
    for (_, result) in results {
        match result {
            Ok((took, tls)) => {
                report.succeeded += 1;
                latency.record(took);
                if tls.is_some() {
                    report.tls = tls;
                }
            }
            Err(e) => keep_error(&mut report.first_errors, &e),
        }
    }
    report.latency = latency.summary();
    Ok(report)
}

/// Results of the idle-connection scenario.
#[derive(Debug, Default)]
pub struct IdleReport {
    pub requested: usize,
    pub opened: usize,
    pub first_errors: Vec<String>,
    pub open_elapsed: Duration,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

impl IdleReport {
    /// Connections opened per second while the broker holds more and more of them.
    pub fn opened_per_second(&self) -> f64 {
        if self.open_elapsed.is_zero() {
            return 0.0;
        }
        self.opened as f64 / self.open_elapsed.as_secs_f64()
    }

    /// Broker memory per open idle connection, in KiB.
    pub fn kib_per_connection(&self) -> f64 {
        if self.opened == 0 {
            return 0.0;
        }
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.opened as f64
    }
}

/// Measures the broker's resident memory before and after opening `count` idle connections
/// (`concurrency` at a time, distinct client ids, keep-alive 600 s). A first round of
/// `concurrency` connections is opened and closed before the baseline reading so that one-off
/// start-up allocations (thread pools, buffers) are not counted per connection.
pub async fn idle(
    addr: SocketAddr,
    clients: &[Client],
    count: usize,
    concurrency: usize,
    broker_pid: u32,
    progress: &dyn Fn(String),
) -> Result<IdleReport> {
    if count > clients.len() {
        bail!(
            "{count} idle connections need as many identities, have {}",
            clients.len()
        );
    }
    let warmup = run_bounded(concurrency.min(count), concurrency, |i| {
        let client = clients[i].clone();
        async move {
            RawConnection::open(addr, client.tls, &client.id, 60, CONNECT_TIMEOUT)
                .await?
                .disconnect()
                .await
        }
    })
    .await;
    if let Some((_, Err(e))) = warmup.into_iter().find(|(_, r)| r.is_err()) {
        bail!("warm-up connection failed: {e:#}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = measure::settled_rss_kib(broker_pid, Duration::from_secs(10)).await?;

    let started = Instant::now();
    let results = run_bounded(count, concurrency, |i| {
        let client = clients[i].clone();
        async move {
            RawConnection::open(
                addr,
                client.tls,
                &client.id,
                IDLE_KEEP_ALIVE_S,
                CONNECT_TIMEOUT,
            )
            .await
        }
    })
    .await;
    let open_elapsed = started.elapsed();
    let mut report = IdleReport {
        requested: count,
        open_elapsed,
        rss_before_kib,
        ..IdleReport::default()
    };
    let mut open = Vec::with_capacity(count);
    for (_, result) in results {
        match result {
            Ok(connection) => open.push(connection),
            Err(e) => keep_error(&mut report.first_errors, &e),
        }
    }
    report.opened = open.len();
    progress(format!(
        "{} idle connections open after {:.1} s; waiting for the broker's memory to settle",
        open.len(),
        open_elapsed.as_secs_f64()
    ));
    report.rss_after_kib = measure::settled_rss_kib(broker_pid, Duration::from_secs(15)).await?;
    drop(open);
    Ok(report)
}

fn keep_error(kept: &mut Vec<String>, error: &anyhow::Error) {
    if kept.len() < KEPT_ERRORS {
        kept.push(format!("{error:#}"));
    }
}
