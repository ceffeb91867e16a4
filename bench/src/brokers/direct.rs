//! The direct phase: with N simulated taxis connected (each reporting positions and
//! listening on its inbox), a backoffice application publishes QoS 1 orders straight to
//! random taxis' `taxi/<id>/inbox`; each order's time from publish to its taxi's client.
//! The same taxis, backoffice and pace as `bench dispatch`'s Mosquitto phase, run against
//! either broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::dispatch::listening_fleet;
use crate::dispatch::senders::{self, Orders, Sent};
use crate::dispatch::tracker::{Delivery, Tracker};
use simulator::measure::{CpuMeter, CpuUse};
use simulator::pki::{BenchPki, Client};
use simulator::taxi;

/// How long the taxis may take to connect and subscribe.
const LISTEN_LIMIT: Duration = Duration::from_secs(180);
/// After the last order: how long to wait for the last deliveries, and how long without any
/// ends the wait early.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
const DRAIN_QUIET: Duration = Duration::from_secs(3);
/// The tracker's name of the phase (also the prefix of the order ids).
const PHASE: &str = "direct";

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct DirectSpec {
    /// Connected taxis, one connection each.
    pub taxis: usize,
    /// Positions per second per taxi.
    pub position_rate: f64,
    /// Orders per second, each to a random taxi.
    pub order_rate: f64,
    /// Position traffic before the first order.
    pub warmup: Duration,
    /// How long orders are sent.
    pub measure: Duration,
}

/// What was measured.
#[derive(Debug, Default)]
pub struct DirectReport {
    pub sent: Sent,
    pub delivery: Delivery,
    /// The broker's CPU use while orders were sent.
    pub broker_cpu: CpuUse,
}

/// Runs the phase against the broker at `addr` (process `broker_pid`).
pub async fn run(
    addr: SocketAddr,
    pki: &BenchPki,
    backoffice: &Client,
    spec: DirectSpec,
    broker_pid: u32,
    say: &dyn Fn(String),
) -> Result<DirectReport> {
    let tracker = Arc::new(Tracker::default());
    let started = Instant::now();
    let fleet = listening_fleet(
        &pki.taxis[..spec.taxis.min(pki.taxis.len())],
        addr,
        spec.position_rate,
        &tracker,
        LISTEN_LIMIT,
    )
    .await?;
    say(format!(
        "{} taxis listening after {:.1} s; {} s of position traffic, then {} orders/s for {} s",
        fleet.len(),
        started.elapsed().as_secs_f64(),
        spec.warmup.as_secs_f64(),
        spec.order_rate,
        spec.measure.as_secs_f64()
    ));
    tokio::time::sleep(spec.warmup).await;

    let orders = Orders {
        taxis: Arc::new(fleet.iter().map(|t| t.id().to_owned()).collect()),
        phase: PHASE,
        tracker: tracker.clone(),
    };
    let meter = CpuMeter::start(broker_pid)?;
    let sent = senders::publish_directly(
        backoffice.clone(),
        addr,
        orders,
        spec.order_rate,
        spec.measure,
    )
    .await;
    let broker_cpu = meter.stop()?;
    let delivery = match &sent {
        Ok(_) => drain(&tracker).await,
        Err(_) => Delivery::default(),
    };
    taxi::stop_all(fleet).await;
    Ok(DirectReport {
        sent: sent?,
        delivery,
        broker_cpu,
    })
}

/// Waits until every order has arrived, or nothing arrived for a while, or the limit.
async fn drain(tracker: &Tracker) -> Delivery {
    let started = Instant::now();
    let mut last = tracker.delivery(PHASE);
    let mut last_change = Instant::now();
    loop {
        let now = tracker.delivery(PHASE);
        if now.missing() == 0
            || last_change.elapsed() >= DRAIN_QUIET
            || started.elapsed() >= DRAIN_LIMIT
        {
            return now;
        }
        if now.received != last.received {
            last_change = Instant::now();
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
