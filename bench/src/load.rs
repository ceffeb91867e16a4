//! The throughput and latency scenario: one operator subscribed to `taxi/+/position` with
//! QoS 1 and N taxis publishing QoS 1 positions to their own topics, at a fixed rate or as fast
//! as they can. Each payload's `seq` is the send time on a shared clock, so the subscriber
//! measures publish-to-receive latency; after the measured window everything is drained and
//! every acknowledged message that never arrived is counted as lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::{oneshot, watch};

use crate::limit::run_bounded;
use simulator::client;
use simulator::measure::{self, Clock, CpuMeter, CpuUse, Latency, LatencySummary};
use simulator::motion::{Walker, BERLIN};
use simulator::pki::BenchPki;

/// Filter of the subscriber.
pub const FILTER: &str = "taxi/+/position";
/// Taxis connecting at once.
const CONNECT_CONCURRENCY: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// After the window: how long to wait for the last acks and deliveries.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// ... and how long without any progress ends the wait early.
const DRAIN_QUIET: Duration = Duration::from_secs(3);
/// Errors kept for the report.
const KEPT_ERRORS: usize = 5;
/// Requests (its PUBACKs) the subscriber's client queues (the simulator's default).
const SUBSCRIBER_REQUESTS: usize = 64;

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct LoadSpec {
    pub taxis: usize,
    /// Messages per second per taxi; 0 publishes as fast as the client allows.
    pub rate: f64,
    pub warmup: Duration,
    pub measure: Duration,
    /// The subscriber keeps its session (`clean_session = false`), as a durable consumer does.
    pub persistent_subscriber: bool,
}

/// What was measured.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub window: Duration,
    /// Publishes handed to the clients during the measured window.
    pub sent_in_window: u64,
    /// Messages the subscriber received during the measured window.
    pub delivered_in_window: u64,
    /// Publish-to-receive latency of messages sent during the window.
    pub latency: LatencySummary,
    /// Over the whole run (warm-up, window, drain).
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub duplicates: u64,
    /// Acknowledged with a PUBACK but never delivered to the subscriber.
    pub lost: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// The broker's CPU use during the window.
    pub broker_cpu: CpuUse,
    /// The load generator's own CPU use during the window.
    pub generator_cpu: CpuUse,
    pub broker_peak_rss_kib: u64,
}

impl LoadReport {
    pub fn offered_per_s(&self) -> f64 {
        per_second(self.sent_in_window, self.window)
    }

    pub fn delivered_per_s(&self) -> f64 {
        per_second(self.delivered_in_window, self.window)
    }

    /// Broker CPU time per delivered message, in microseconds.
    pub fn broker_cpu_us_per_msg(&self) -> f64 {
        if self.delivered_in_window == 0 {
            return 0.0;
        }
        self.broker_cpu.cpu.as_secs_f64() * 1e6 / self.delivered_in_window as f64
    }
}

fn per_second(count: u64, window: Duration) -> f64 {
    if window.is_zero() {
        0.0
    } else {
        count as f64 / window.as_secs_f64()
    }
}

/// Counters shared by the tasks of one run.
struct Counters {
    sent: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    received: AtomicU64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Counters {
    fn new(taxis: usize) -> Counters {
        Counters {
            sent: (0..taxis).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..taxis).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_errors: Mutex::new(Vec::new()),
        }
    }

    fn error(&self, error: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut kept) = self.first_errors.lock() {
            if kept.len() < KEPT_ERRORS {
                kept.push(error);
            }
        }
    }

    fn total(counts: &[AtomicU64]) -> u64 {
        counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// When the publishers run and when they are measured, on the shared clock.
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    pub clock: Clock,
    /// Publishing starts.
    pub start: Instant,
    /// The measured window; publishing stops at its end.
    pub window_start: Instant,
    pub window_end: Instant,
}

impl Timeline {
    /// Publishing from shortly after now: `warmup`, then the measured `window`.
    pub fn starting_soon(warmup: Duration, window: Duration) -> Timeline {
        let start = Instant::now() + Duration::from_millis(100);
        Timeline {
            clock: Clock::new(),
            start,
            window_start: start + warmup,
            window_end: start + warmup + window,
        }
    }

    fn window_us(&self) -> std::ops::Range<u64> {
        self.clock.at_us(self.window_start)..self.clock.at_us(self.window_end)
    }
}

/// Runs the scenario against the broker at `addr` (process `broker_pid`).
pub async fn run(
    addr: SocketAddr,
    pki: &BenchPki,
    spec: LoadSpec,
    broker_pid: u32,
    progress: &dyn Fn(String),
) -> Result<LoadReport> {
    if spec.taxis == 0 || spec.taxis > pki.taxis.len() {
        bail!("need between 1 and {} taxis", pki.taxis.len());
    }
    let counters = Arc::new(Counters::new(spec.taxis));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (timeline_tx, timeline_rx) = oneshot::channel();
    let mut options = client::options(
        &pki.operator,
        &addr.ip().to_string(),
        addr.port(),
        CONNECT_TIMEOUT,
    );
    options.set_clean_session(!spec.persistent_subscriber);
    let (taxis, subscriber_counters, subscriber_stop) =
        (spec.taxis, counters.clone(), stop_rx.clone());
    let (subscribed, mut subscriber) = SubscriberThread::start(
        "subscriber",
        options,
        SUBSCRIBER_REQUESTS,
        timeline_rx,
        move |events, timeline| {
            receive(
                events,
                taxis,
                timeline,
                subscriber_counters,
                subscriber_stop,
            )
        },
    )?;
    match subscribed.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.context("subscriber")),
        Err(_) => bail!("the subscriber thread ended before subscribing"),
    }

    let taxis = connect_taxis(addr, &pki.taxis[..spec.taxis]).await?;

    let clock = Clock::new();
    let start = Instant::now() + Duration::from_millis(100);
    let timeline = Timeline {
        clock,
        start,
        window_start: start + spec.warmup,
        window_end: start + spec.warmup + spec.measure,
    };
    if timeline_tx.send(timeline).is_err() {
        bail!("the subscriber thread ended early");
    }
    let mut drivers = Vec::with_capacity(spec.taxis);
    let mut publishers = Vec::with_capacity(spec.taxis);
    for (index, (taxi, events)) in taxis.into_iter().enumerate() {
        let id = pki.taxis[index].id.clone();
        drivers.push(tokio::spawn(drive(
            events,
            id.clone(),
            index,
            counters.clone(),
            stop_rx.clone(),
        )));
        publishers.push(tokio::spawn(publish(
            taxi,
            id,
            index,
            spec.rate,
            timeline,
            counters.clone(),
        )));
    }

    tokio::time::sleep_until(timeline.window_start.into()).await;
    let sent_at_window_start = Counters::total(&counters.sent);
    let meter = CpuMeter::start(broker_pid)?;
    let own_meter = CpuMeter::start(std::process::id())?;
    progress(format!(
        "measuring {} s after {} s of warm-up",
        spec.measure.as_secs_f64(),
        spec.warmup.as_secs_f64()
    ));
    tokio::time::sleep_until(timeline.window_end.into()).await;
    let sent_in_window = Counters::total(&counters.sent) - sent_at_window_start;
    let broker_cpu = meter.stop()?;
    let generator_cpu = own_meter.stop()?;
    let broker_peak_rss_kib = measure::peak_rss_kib(broker_pid)?;

    for publisher in publishers {
        if let Err(e) = publisher.await {
            counters.error(format!("publisher task failed: {e}"));
        }
    }
    drain(&counters).await;
    let _ = stop_tx.send(true);
    let stats = subscriber.finish().await?;
    for driver in drivers {
        let _ = driver.await;
    }

    let mut lost = 0;
    let mut acked = 0;
    for (index, acks) in counters.acked.iter().enumerate() {
        let acks = acks.load(Ordering::Relaxed);
        acked += acks;
        lost += acks.saturating_sub(stats.unique[index]);
    }
    let first_errors = counters
        .first_errors
        .lock()
        .map(|kept| kept.clone())
        .unwrap_or_default();
    Ok(LoadReport {
        window: timeline.window_end - timeline.window_start,
        sent_in_window,
        delivered_in_window: stats.delivered_in_window,
        latency: stats.latency.summary(),
        sent: Counters::total(&counters.sent),
        acked,
        received: stats.unique.iter().sum(),
        duplicates: stats.duplicates,
        lost,
        errors: counters.errors.load(Ordering::Relaxed),
        first_errors,
        broker_cpu,
        generator_cpu,
        broker_peak_rss_kib,
    })
}

/// Connects one taxi per client (at most [`CONNECT_CONCURRENCY`] handshakes at once) and
/// returns the connections in the clients' order.
pub async fn connect_taxis(
    addr: SocketAddr,
    clients: &[simulator::pki::Client],
) -> Result<Vec<(AsyncClient, EventLoop)>> {
    let host = addr.ip().to_string();
    let connected = run_bounded(clients.len(), CONNECT_CONCURRENCY, |i| {
        let (taxi, mut events) =
            client::new(&clients[i], &host, addr.port(), Duration::from_secs(30));
        let id = clients[i].id.clone();
        async move {
            client::connect(&mut events, CONNECT_TIMEOUT)
                .await
                .with_context(|| format!("connecting {id}"))?;
            Ok((taxi, events))
        }
    })
    .await;
    let mut taxis: Vec<Option<(AsyncClient, EventLoop)>> =
        (0..clients.len()).map(|_| None).collect();
    for (index, result) in connected {
        let connection = result?;
        if let Some(slot) = taxis.get_mut(index) {
            *slot = Some(connection);
        }
    }
    taxis
        .into_iter()
        .enumerate()
        .map(|(index, slot)| slot.with_context(|| format!("taxi {} did not connect", index + 1)))
        .collect()
}

/// Taxis publishing QoS 1 positions on a timeline with nobody watching them: for scenarios
/// that observe the messages elsewhere (in a database, for example). Each taxi publishes from
/// the timeline's start until the end of its window, then waits for its last PUBACKs.
pub struct Taxis {
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    drivers: Vec<tokio::task::JoinHandle<()>>,
    publishers: Vec<tokio::task::JoinHandle<()>>,
}

impl Taxis {
    /// Starts publishing on connections from [`connect_taxis`] (same order as `ids`), each taxi
    /// at `rate` messages per second (0: as fast as its client allows).
    pub fn start(
        connections: Vec<(AsyncClient, EventLoop)>,
        ids: &[String],
        rate: f64,
        timeline: Timeline,
    ) -> Taxis {
        let counters = Arc::new(Counters::new(connections.len()));
        let (stop, stop_rx) = watch::channel(false);
        let mut drivers = Vec::with_capacity(connections.len());
        let mut publishers = Vec::with_capacity(connections.len());
        for (index, ((taxi, events), id)) in connections.into_iter().zip(ids).enumerate() {
            drivers.push(tokio::spawn(drive(
                events,
                id.clone(),
                index,
                counters.clone(),
                stop_rx.clone(),
            )));
            publishers.push(tokio::spawn(publish(
                taxi,
                id.clone(),
                index,
                rate,
                timeline,
                counters.clone(),
            )));
        }
        Taxis {
            counters,
            stop,
            drivers,
            publishers,
        }
    }

    /// Publishes handed to the clients so far.
    pub fn sent(&self) -> u64 {
        Counters::total(&self.counters.sent)
    }

    /// Publishes the broker has acknowledged so far (PUBACK).
    pub fn acked(&self) -> u64 {
        Counters::total(&self.counters.acked)
    }

    /// Publishes the broker has acknowledged so far, per taxi (in the order of `ids`).
    pub fn acked_each(&self) -> Vec<u64> {
        self.counters
            .acked
            .iter()
            .map(|acked| acked.load(Ordering::Relaxed))
            .collect()
    }

    /// Connection and publish errors so far, and the first few of them.
    pub fn errors(&self) -> (u64, Vec<String>) {
        let kept = self
            .counters
            .first_errors
            .lock()
            .map(|kept| kept.clone())
            .unwrap_or_default();
        (self.counters.errors.load(Ordering::Relaxed), kept)
    }

    /// Waits until every taxi has stopped publishing (the window has ended), then until every
    /// publish is acknowledged, nothing has moved for [`DRAIN_QUIET`], or [`DRAIN_LIMIT`] has
    /// passed. The connections stay open.
    pub async fn wait_acked(&mut self) {
        for publisher in self.publishers.drain(..) {
            if let Err(e) = publisher.await {
                self.counters.error(format!("publisher task failed: {e}"));
            }
        }
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut last = self.acked();
        let mut last_change = Instant::now();
        while Instant::now() < deadline {
            let acked = self.acked();
            if acked >= self.sent() {
                return;
            }
            if acked != last {
                last = acked;
                last_change = Instant::now();
            } else if last_change.elapsed() >= DRAIN_QUIET {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every taxi and closes the connections.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for publisher in self.publishers.drain(..) {
            publisher.abort();
        }
        for driver in self.drivers.drain(..) {
            let _ = driver.await;
        }
    }
}

impl Drop for Taxis {
    /// Taxis not stopped (a failed run) stop publishing and disconnect.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in self.publishers.iter().chain(&self.drivers) {
            task.abort();
        }
    }
}

/// Waits until every sent message is acknowledged and every acknowledged one delivered, or
/// nothing has moved for a while, or the limit has passed.
async fn drain(counters: &Counters) {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut last = (0, 0);
    let mut last_change = Instant::now();
    while Instant::now() < deadline {
        let sent = Counters::total(&counters.sent);
        let acked = Counters::total(&counters.acked);
        let received = counters.received.load(Ordering::Relaxed);
        if acked >= sent && received >= acked {
            return;
        }
        if (acked, received) != last {
            last = (acked, received);
            last_change = Instant::now();
        } else if last_change.elapsed() >= DRAIN_QUIET {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One taxi's publishing: positions along its path, stamped with the shared clock.
async fn publish(
    taxi: AsyncClient,
    id: String,
    index: usize,
    rate: f64,
    timeline: Timeline,
    counters: Arc<Counters>,
) {
    let topic = format!("taxi/{id}/position");
    let mut walker = Walker::new(BERLIN, index as u64);
    let period = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    // Spread the taxis over one period so that they do not publish in lockstep.
    let phase = period.map_or(Duration::ZERO, |p| p.mul_f64(rand::random::<f64>()));
    let mut next = timeline.start + phase;
    let step = period.unwrap_or(Duration::from_millis(100));
    let mut last_seq = 0;
    loop {
        if let Some(period) = period {
            if next >= timeline.window_end {
                break;
            }
            tokio::time::sleep_until(next.into()).await;
            next += period;
            // After a stall, catch up by at most one second's worth of messages.
            let now = Instant::now();
            if next + Duration::from_secs(1) < now {
                next = now;
            }
        } else if Instant::now() >= timeline.window_end {
            break;
        }
        let seq = timeline.clock.now_us().max(last_seq + 1);
        last_seq = seq;
        let fix = walker.step(step);
        let position = wire::Position {
            seq,
            ts_ms: measure::unix_ms(),
            lat: fix.lat,
            lon: fix.lon,
            speed_kmh: Some(fix.speed_kmh),
            heading_deg: Some(fix.heading_deg),
            accuracy_m: Some(fix.accuracy_m),
        };
        let payload = wire::encode_postcard(&position);
        let send = taxi.publish(topic.as_str(), QoS::AtLeastOnce, false, payload);
        let limit = timeline.window_end + Duration::from_secs(10);
        match tokio::time::timeout_at(limit.into(), send).await {
            Ok(Ok(())) => {
                counters.sent[index].fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                counters.error(format!("{id}: publish failed: {e}"));
                break;
            }
            Err(_) => {
                counters.error(format!("{id}: publish blocked for 10 s after the window"));
                break;
            }
        }
    }
}

/// Drives one taxi's connection and counts its PUBACKs until told to stop.
async fn drive(
    mut events: EventLoop,
    id: String,
    index: usize,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return,
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counters.acked[index].fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    counters.error(format!("{id}: {e}"));
                    return;
                }
            },
        }
    }
}

/// What the subscriber saw.
struct Received {
    /// Distinct messages per taxi.
    unique: Vec<u64>,
    duplicates: u64,
    delivered_in_window: u64,
    latency: Latency,
}

/// A subscriber to [`FILTER`] on a thread of its own with its own runtime, so that
/// publishers saturating the load generator's runtime do not delay its reading and skew the
/// latency. It connects and subscribes, tells so, waits for its start signal (a value of
/// type `S`), then runs `receive` over its events until that returns.
pub(crate) struct SubscriberThread<R> {
    thread: Option<std::thread::JoinHandle<Result<R>>>,
}

impl<R: Send + 'static> SubscriberThread<R> {
    /// Starts the thread; the returned receiver tells when the subscription is in place.
    pub(crate) fn start<S, F, Fut>(
        name: &str,
        options: rumqttc::MqttOptions,
        requests: usize,
        start: oneshot::Receiver<S>,
        receive: F,
    ) -> Result<(oneshot::Receiver<Result<()>>, Self)>
    where
        S: Send + 'static,
        F: FnOnce(EventLoop, S) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<R>>,
    {
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || -> Result<R> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("subscriber runtime")?;
                runtime.block_on(async move {
                    let (client, mut events) = client::with_options(options, requests);
                    let setup = async {
                        client::connect(&mut events, CONNECT_TIMEOUT)
                            .await
                            .context("connecting")?;
                        client::subscribe(&client, &mut events, FILTER, CONNECT_TIMEOUT)
                            .await
                            .context("subscribing")
                    };
                    if let Err(e) = setup.await {
                        let message = format!("{e:#}");
                        let _ = ready_tx.send(Err(e));
                        bail!(message);
                    }
                    let _ = ready_tx.send(Ok(()));
                    let start = start.await.context("no start signal")?;
                    let received = receive(events, start).await;
                    drop(client);
                    received
                })
            })
            .context("starting the subscriber thread")?;
        Ok((
            ready_rx,
            SubscriberThread {
                thread: Some(thread),
            },
        ))
    }

    /// Waits for the thread (after the stop signal) and returns what it saw.
    pub(crate) async fn finish(&mut self) -> Result<R> {
        let Some(thread) = self.thread.take() else {
            bail!("subscriber already finished");
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("joining the subscriber thread")?
            .map_err(|_| anyhow::anyhow!("the subscriber thread panicked"))?
    }
}

/// The subscriber: checks each message, counts it, and measures its latency.
async fn receive(
    mut events: EventLoop,
    taxis: usize,
    timeline: Timeline,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Result<Received> {
    let window = timeline.window_us();
    let mut last_seq = vec![0u64; taxis];
    let mut received = Received {
        unique: vec![0; taxis],
        duplicates: 0,
        delivered_in_window: 0,
        latency: Latency::new()?,
    };
    loop {
        let publish = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return Ok(received),
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(publish))) => publish,
                Ok(_) => continue,
                Err(e) => {
                    counters.error(format!("subscriber: {e}"));
                    return Ok(received);
                }
            },
        };
        let now = timeline.clock.now_us();
        let Some(index) = taxi_index(&publish.topic).filter(|&i| i < taxis) else {
            counters.error(format!("subscriber: unexpected topic {:?}", publish.topic));
            continue;
        };
        let seq = match wire::decode::<wire::Position>(&publish.payload) {
            Ok(position) => position.seq,
            Err(e) => {
                counters.error(format!("subscriber: undecodable payload: {e}"));
                continue;
            }
        };
        // Per-topic order is kept by both brokers: an old seq is a redelivery.
        if seq <= last_seq[index] {
            received.duplicates += 1;
            continue;
        }
        last_seq[index] = seq;
        received.unique[index] += 1;
        counters.received.fetch_add(1, Ordering::Relaxed);
        if window.contains(&now) {
            received.delivered_in_window += 1;
        }
        if window.contains(&seq) {
            received.latency.record_us(now.saturating_sub(seq));
        }
    }
}

/// `taxi/taxi-<n>/position` to the index `n - 1`.
fn taxi_index(topic: &str) -> Option<usize> {
    let number = topic
        .strip_prefix("taxi/taxi-")?
        .strip_suffix("/position")?
        .parse::<usize>()
        .ok()?;
    number.checked_sub(1)
}

/// A typical payload and the size of its PUBLISH packet, for the report.
pub fn message_size(taxis: usize) -> (usize, usize) {
    let clock = Clock::new();
    let fix = Walker::new(BERLIN, 1).step(Duration::from_secs(1));
    let payload = wire::encode_postcard(&wire::Position {
        seq: clock.now_us(),
        ts_ms: measure::unix_ms(),
        lat: fix.lat,
        lon: fix.lon,
        speed_kmh: Some(fix.speed_kmh),
        heading_deg: Some(fix.heading_deg),
        accuracy_m: Some(fix.accuracy_m),
    });
    let topic = format!("taxi/{}/position", simulator::pki::taxi_id(taxis.max(1)));
    let remaining = 2 + topic.len() + 2 + payload.len();
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        _ => 3,
    };
    (payload.len(), 1 + length_bytes + remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taxi_index_from_topic() {
        assert_eq!(taxi_index("taxi/taxi-1/position"), Some(0));
        assert_eq!(taxi_index("taxi/taxi-100/position"), Some(99));
        assert_eq!(taxi_index("taxi/taxi-0/position"), None);
        assert_eq!(taxi_index("taxi/taxi-1/status"), None);
        assert_eq!(taxi_index("taxi/other/position"), None);
    }

    #[test]
    fn message_is_small() {
        let (payload, packet) = message_size(100);
        assert!((30..64).contains(&payload), "{payload}");
        assert_eq!(packet, payload + 2 + 2 + "taxi/taxi-100/position".len() + 2);
    }
}
