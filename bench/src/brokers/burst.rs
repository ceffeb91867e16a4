//! The burst phase: N taxis publish M QoS 1 messages of B bytes each as fast as their clients
//! allow (100 x 5,000 x 1 KiB: 500 MB by default) to one QoS 1 subscriber with a persistent
//! session (`clean_session = false`). Counts what the broker acknowledged against what the
//! subscriber got (every acknowledged message must arrive), and the rates of both.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::{oneshot, watch};

use crate::load::SubscriberThread;
use simulator::client;
use simulator::measure::{self, CpuMeter, CpuUse};
use simulator::pki::BenchPki;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// First byte of every payload: neither postcard (1) nor JSON, so no broker converts it.
const MARKER: u8 = 0xB5;
/// Requests a publisher's client queues before `publish` waits.
const REQUESTS: usize = 256;
/// After the last PUBACK: how long without a delivery ends the wait for the rest.
const DRAIN_QUIET: Duration = Duration::from_secs(10);
/// Errors kept for the report.
const KEPT_ERRORS: usize = 5;

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct BurstSpec {
    pub publishers: usize,
    /// Messages per publisher.
    pub messages: u64,
    /// Payload bytes per message.
    pub bytes: usize,
    /// How long the whole burst (publishing and delivery) may take.
    pub limit: Duration,
}

impl BurstSpec {
    pub fn total(&self) -> u64 {
        self.publishers as u64 * self.messages
    }
}

/// What was measured.
#[derive(Debug, Default)]
pub struct BurstReport {
    pub sent: u64,
    /// Acknowledged by PUBACK.
    pub acked: u64,
    /// Distinct messages the subscriber got.
    pub delivered: u64,
    pub duplicates: u64,
    /// Acknowledged but never delivered.
    pub lost: u64,
    /// From the first publish to the last PUBACK, and to the last delivery.
    pub ack_elapsed: Duration,
    pub delivery_elapsed: Duration,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub broker_cpu: CpuUse,
    pub broker_peak_rss_kib: u64,
}

impl BurstReport {
    pub fn acked_per_s(&self) -> f64 {
        per_second(self.acked, self.ack_elapsed)
    }

    pub fn delivered_per_s(&self) -> f64 {
        per_second(self.delivered, self.delivery_elapsed)
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        count as f64 / elapsed.as_secs_f64()
    }
}

/// Shared by the tasks of a run.
struct Counters {
    sent: AtomicU64,
    acked: Vec<AtomicU64>,
    delivered: AtomicU64,
    last_ack_us: AtomicU64,
    errors: AtomicU64,
    first_errors: std::sync::Mutex<Vec<String>>,
}

impl Counters {
    fn error(&self, error: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut kept) = self.first_errors.lock() {
            if kept.len() < KEPT_ERRORS {
                kept.push(error);
            }
        }
    }

    fn acked(&self) -> u64 {
        self.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }
}

/// Runs the burst against the broker at `addr` (process `broker_pid`).
pub async fn run(
    addr: SocketAddr,
    pki: &BenchPki,
    spec: BurstSpec,
    broker_pid: u32,
    say: &dyn Fn(String),
) -> Result<BurstReport> {
    if spec.publishers == 0 || spec.publishers > pki.taxis.len() {
        bail!("need between 1 and {} publishers", pki.taxis.len());
    }
    if spec.bytes < 16 {
        bail!("burst messages need at least 16 bytes");
    }
    let counters = Arc::new(Counters {
        sent: AtomicU64::new(0),
        acked: (0..spec.publishers).map(|_| AtomicU64::new(0)).collect(),
        delivered: AtomicU64::new(0),
        last_ack_us: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_errors: std::sync::Mutex::new(Vec::new()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (start_tx, start_rx) = oneshot::channel();
    let mut options = client::options(
        &pki.operator,
        &addr.ip().to_string(),
        addr.port(),
        CONNECT_TIMEOUT,
    );
    options.set_clean_session(false);
    let (publishers, subscriber_counters, subscriber_stop) =
        (spec.publishers, counters.clone(), stop_rx.clone());
    let (ready, mut subscriber) = SubscriberThread::start(
        "burst-subscriber",
        options,
        REQUESTS,
        start_rx,
        move |events, started| async move {
            Ok(receive(
                events,
                publishers,
                started,
                subscriber_counters,
                subscriber_stop,
            )
            .await)
        },
    )?;
    match ready.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.context("subscriber")),
        Err(_) => bail!("the subscriber thread ended before subscribing"),
    }
    let mut connections = Vec::with_capacity(spec.publishers);
    for (index, client) in pki.taxis[..spec.publishers].iter().enumerate() {
        let options = client::options(client, &addr.ip().to_string(), addr.port(), CONNECT_TIMEOUT);
        connections.push((index, client.id.clone(), options));
    }
    let connected = crate::limit::run_bounded(connections.len(), 64, |i| {
        let (index, id, options) = connections[i].clone();
        async move {
            let (mqtt, mut events) = client::with_options(options, REQUESTS);
            client::connect(&mut events, CONNECT_TIMEOUT)
                .await
                .with_context(|| format!("connecting {id}"))?;
            Ok((index, id, mqtt, events))
        }
    })
    .await;
    let mut publishers = Vec::with_capacity(spec.publishers);
    for (_, result) in connected {
        publishers.push(result?);
    }
    say(format!(
        "{} publishers x {} messages of {} B ({:.0} MB) to one persistent QoS 1 subscriber",
        spec.publishers,
        spec.messages,
        spec.bytes,
        (spec.total() as f64 * spec.bytes as f64) / 1e6
    ));

    let started = Instant::now();
    if start_tx.send(started).is_err() {
        bail!("the subscriber thread ended early");
    }
    let meter = CpuMeter::start(broker_pid)?;
    let mut tasks = Vec::with_capacity(spec.publishers * 2);
    for (index, id, mqtt, events) in publishers {
        tasks.push(tokio::spawn(drive(
            events,
            id.clone(),
            index,
            started,
            counters.clone(),
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(publish(
            mqtt,
            id,
            index,
            spec,
            counters.clone(),
        )));
    }

    // Everything acknowledged and delivered, or no delivery for a while after the last
    // acknowledgement, or the limit.
    let deadline = started + spec.limit;
    let mut last_delivered = 0;
    let mut last_change = Instant::now();
    let mut reported = Instant::now();
    loop {
        let (acked, delivered) = (counters.acked(), counters.delivered.load(Ordering::Relaxed));
        if acked >= spec.total() && delivered >= acked {
            break;
        }
        if delivered != last_delivered {
            last_delivered = delivered;
            last_change = Instant::now();
        } else if acked >= counters.sent.load(Ordering::Relaxed)
            && last_change.elapsed() >= DRAIN_QUIET
        {
            break;
        }
        if Instant::now() >= deadline {
            counters.error(format!(
                "the burst did not finish within {} s",
                spec.limit.as_secs()
            ));
            break;
        }
        if reported.elapsed() >= Duration::from_secs(10) {
            reported = Instant::now();
            say(format!(
                "{:.0} s: {} acknowledged, {} delivered",
                started.elapsed().as_secs_f64(),
                acked,
                delivered
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let broker_cpu = meter.stop()?;
    let broker_peak_rss_kib = measure::peak_rss_kib(broker_pid)?;
    let _ = stop_tx.send(true);
    for task in tasks {
        task.abort();
    }
    let seen = subscriber.finish().await?;

    let mut report = BurstReport {
        sent: counters.sent.load(Ordering::Relaxed),
        acked: counters.acked(),
        delivered: seen.unique.iter().map(|s| s.count).sum(),
        duplicates: seen.duplicates,
        ack_elapsed: Duration::from_micros(counters.last_ack_us.load(Ordering::Relaxed)),
        delivery_elapsed: seen.last_at,
        errors: counters.errors.load(Ordering::Relaxed),
        first_errors: counters
            .first_errors
            .lock()
            .map(|kept| kept.clone())
            .unwrap_or_default(),
        broker_cpu,
        broker_peak_rss_kib,
        ..BurstReport::default()
    };
    for (acked, arrived) in counters.acked.iter().zip(&seen.unique) {
        report.lost += acked.load(Ordering::Relaxed).saturating_sub(arrived.count);
    }
    Ok(report)
}

/// One publisher: its messages back to back, as fast as its client takes them.
async fn publish(
    mqtt: AsyncClient,
    id: String,
    index: usize,
    spec: BurstSpec,
    counters: Arc<Counters>,
) {
    let topic = format!("taxi/{id}/position");
    for seq in 1..=spec.messages {
        let payload = payload(index, seq, spec.bytes);
        if let Err(e) = mqtt
            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
            .await
        {
            counters.error(format!("{id}: publish failed: {e}"));
            return;
        }
        counters.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// Drives a publisher's connection, counting its PUBACKs, until told to stop.
async fn drive(
    mut events: EventLoop,
    id: String,
    index: usize,
    started: Instant,
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
                    counters
                        .last_ack_us
                        .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
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

/// A payload: the marker, the publisher's index and the message's number, then filler.
fn payload(index: usize, seq: u64, bytes: usize) -> Vec<u8> {
    let mut payload = vec![0u8; bytes];
    payload[0] = MARKER;
    payload[1..5].copy_from_slice(&(index as u32).to_be_bytes());
    payload[5..13].copy_from_slice(&seq.to_be_bytes());
    payload
}

/// The publisher's index and the message's number, from a payload made by [`payload`].
fn parse(payload: &[u8]) -> Option<(usize, u64)> {
    if payload.len() < 13 || payload[0] != MARKER {
        return None;
    }
    let index = u32::from_be_bytes(payload[1..5].try_into().ok()?) as usize;
    let seq = u64::from_be_bytes(payload[5..13].try_into().ok()?);
    Some((index, seq))
}

/// Which of one publisher's messages arrived.
#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
    count: u64,
}

impl Seen {
    /// Notes message `seq` (1-based); false if it had arrived already.
    fn note(&mut self, seq: u64) -> bool {
        let bit = seq.saturating_sub(1) as usize;
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & mask != 0 {
            return false;
        }
        self.bits[word] |= mask;
        self.count += 1;
        true
    }
}

/// What the subscriber saw.
struct Received {
    unique: Vec<Seen>,
    duplicates: u64,
    /// When the last new message arrived, after the start.
    last_at: Duration,
}

async fn receive(
    mut events: EventLoop,
    publishers: usize,
    started: Instant,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Received {
    let mut received = Received {
        unique: (0..publishers).map(|_| Seen::default()).collect(),
        duplicates: 0,
        last_at: Duration::ZERO,
    };
    loop {
        let publish = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return received,
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(publish))) => publish,
                Ok(_) => continue,
                Err(e) => {
                    counters.error(format!("subscriber: {e}"));
                    return received;
                }
            },
        };
        let Some((index, seq)) = parse(&publish.payload).filter(|(i, _)| *i < publishers) else {
            counters.error(format!(
                "subscriber: unexpected message on {:?}",
                publish.topic
            ));
            continue;
        };
        if received.unique[index].note(seq) {
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            received.last_at = started.elapsed();
        } else {
            received.duplicates += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let p = payload(42, 4_999, 1024);
        assert_eq!(p.len(), 1024);
        assert_eq!(parse(&p), Some((42, 4_999)));
        assert_eq!(parse(b"\x01abc"), None);
    }

    #[test]
    fn seen_counts_each_message_once() {
        let mut seen = Seen::default();
        assert!(seen.note(1));
        assert!(seen.note(200));
        assert!(!seen.note(1));
        assert_eq!(seen.count, 2);
    }
}
