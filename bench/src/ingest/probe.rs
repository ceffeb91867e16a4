//! Publish-to-commit delay, measured from outside the bridge.
//!
//! A probe taxi (its own certificate, its own connection) publishes one QoS 1 position every
//! [`PUBLISH_EVERY`] with a unique `seq` and notes when it handed each to its client. Another
//! task asks PostgreSQL every [`POLL_EVERY`] which of the outstanding `seq`s are in
//! `positions` now, and notes when it first sees each. The delay is seen minus published: an
//! upper bound of the true publish-to-commit delay by at most the poll interval plus one
//! query's time (both reported). Both run on a thread of their own, so that the busy load
//! generator does not delay them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bridge::store::types::Timestamp;
use rumqttc::QoS;
use tokio::sync::{oneshot, watch};

use simulator::client;
use simulator::measure::{self, Clock, Latency, LatencySummary};
use simulator::motion::{Walker, BERLIN};
use simulator::pki::Client;

/// How often the probe publishes.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// How often PostgreSQL is asked.
pub const POLL_EVERY: Duration = Duration::from_millis(5);
/// How long a readiness check may take.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// What the probe measured.
#[derive(Clone, Debug, Default)]
pub struct ProbeReport {
    /// Probe positions published during the window.
    pub published: u64,
    /// ... of which seen in PostgreSQL.
    pub seen: u64,
    pub delay: LatencySummary,
    /// Median and slowest time of one poll query.
    pub query_p50_us: u64,
    pub query_max_us: u64,
}

/// The probe's thread; [`Probe::finish`] waits for its report.
pub struct Probe {
    thread: Option<std::thread::JoinHandle<Result<ProbeReport>>>,
    /// Probe positions handed to the client so far (readiness check included).
    pub published: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

/// When to publish: during `[start, end)`; afterwards, how long to wait for the last ones.
#[derive(Clone, Copy, Debug)]
pub struct ProbeWindow {
    pub start: Instant,
    pub end: Instant,
    pub drain: Duration,
}

impl Probe {
    /// Connects the probe to the broker and PostgreSQL, then publishes one position and waits
    /// until it is stored: the returned receiver tells when the whole path works (or why it
    /// does not). The measured publishing starts when `window` arrives.
    pub fn start(
        identity: Client,
        addr: SocketAddr,
        postgres_url: String,
        window: oneshot::Receiver<ProbeWindow>,
    ) -> Result<(oneshot::Receiver<Result<Duration>>, Probe)> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let published = Arc::new(AtomicU64::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let counter = published.clone();
        let thread = std::thread::Builder::new()
            .name("probe".to_owned())
            .spawn(move || -> Result<ProbeReport> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("probe runtime")?;
                runtime.block_on(run(
                    identity,
                    addr,
                    postgres_url,
                    window,
                    ready_tx,
                    counter,
                    stop_rx,
                ))
            })
            .context("starting the probe thread")?;
        Ok((
            ready_rx,
            Probe {
                thread: Some(thread),
                published,
                stop,
            },
        ))
    }

    /// Waits for the report (the probe ends by itself after its window and drain); a stop
    /// request ends the drain early.
    pub async fn finish(mut self, stop_now: bool) -> Result<ProbeReport> {
        if stop_now {
            let _ = self.stop.send(true);
        }
        let Some(thread) = self.thread.take() else {
            bail!("probe already finished");
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("joining the probe thread")?
            .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Positions published and not seen yet: seq to (publish instant, device time).
type Pending = Arc<Mutex<BTreeMap<i64, (Instant, i64)>>>;

async fn run(
    identity: Client,
    addr: SocketAddr,
    postgres_url: String,
    window: oneshot::Receiver<ProbeWindow>,
    ready: oneshot::Sender<Result<Duration>>,
    published: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Result<ProbeReport> {
    let taxi = identity.id.clone();
    let setup = async {
        let (client, mut events) = client::new(
            &identity,
            &addr.ip().to_string(),
            addr.port(),
            Duration::from_secs(30),
        );
        client::connect(&mut events, Duration::from_secs(30))
            .await
            .context("probe connecting to the broker")?;
        let db = super::database::connect(&postgres_url).await?;
        let query = db
            .prepare("SELECT seq FROM positions WHERE taxi_id = $1 AND ts >= $2")
            .await
            .context("preparing the probe query")?;
        anyhow::Ok((client, events, db, query))
    };
    let (client, mut events, db, query) = match setup.await {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!("{e:#}")));
            return Err(e);
        }
    };
    // The connection is driven on its own task until the end.
    let (driver_stop, mut driver_stopped) = watch::channel(false);
    let driver = tokio::spawn(async move {
        loop {
            let failed = tokio::select! {
                _ = driver_stopped.wait_for(|stop| *stop) => return,
                event = events.poll() => event.err(),
            };
            if let Some(e) = failed {
                tracing::warn!(error = %e, "probe connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    let clock = Clock::new();
    let topic = format!("taxi/{taxi}/position");
    let mut walker = Walker::new(BERLIN, u64::MAX);
    let mut last_seq = 0;
    let mut next_position = move || {
        let seq = clock.now_us().max(last_seq + 1);
        last_seq = seq;
        let fix = walker.step(PUBLISH_EVERY);
        wire::Position {
            seq,
            ts_ms: measure::unix_ms(),
            lat: fix.lat,
            lon: fix.lon,
            speed_kmh: Some(fix.speed_kmh),
            heading_deg: Some(fix.heading_deg),
            accuracy_m: Some(fix.accuracy_m),
        }
    };
    let seen_in_db = |since_ms: i64| {
        let (db, query, taxi) = (&db, &query, &taxi);
        async move {
            let since = Timestamp::clamped(since_ms);
            let rows = db.query(query, &[taxi, &since]).await?;
            rows.iter()
                .map(|row| row.try_get::<_, i64>(0))
                .collect::<Result<Vec<i64>, _>>()
        }
    };

    // Readiness: one position all the way into PostgreSQL.
    let check = async {
        let position = next_position();
        let seq = i64::try_from(position.seq)?;
        let sent = Instant::now();
        client
            .publish(
                topic.as_str(),
                QoS::AtLeastOnce,
                false,
                wire::encode_postcard(&position),
            )
            .await?;
        published.fetch_add(1, Ordering::Relaxed);
        while sent.elapsed() < READY_LIMIT {
            if seen_in_db(position.ts_ms).await?.contains(&seq) {
                return Ok(sent.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "a probe position was not stored within {} s",
            READY_LIMIT.as_secs()
        )
    };
    let checked: Result<Duration> = check.await;
    let failed = checked.as_ref().err().map(|e| format!("{e:#}"));
    let _ = ready.send(checked);
    if let Some(e) = failed {
        let _ = driver_stop.send(true);
        let _ = driver.await;
        bail!(e);
    }

    let window = window.await.context("no probe window")?;
    let pending: Pending = Arc::new(Mutex::new(BTreeMap::new()));
    let publisher = {
        let (client, pending, published) = (client.clone(), pending.clone(), published.clone());
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut count = 0;
            let mut next = window.start;
            while next < window.end {
                tokio::time::sleep_until(next.into()).await;
                next += PUBLISH_EVERY;
                let position = next_position();
                let Ok(seq) = i64::try_from(position.seq) else {
                    continue;
                };
                let payload = wire::encode_postcard(&position);
                let sent = Instant::now();
                if let Ok(mut pending) = pending.lock() {
                    pending.insert(seq, (sent, position.ts_ms));
                }
                if client
                    .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
                published.fetch_add(1, Ordering::Relaxed);
                count += 1;
            }
            count
        })
    };

    let mut delays = Latency::new()?;
    let mut queries = Latency::new()?;
    let mut seen = 0;
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let give_up = window.end + window.drain;
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        let oldest = pending
            .lock()
            .ok()
            .and_then(|pending| pending.values().map(|(_, ts)| *ts).min());
        let Some(oldest_ms) = oldest else {
            if Instant::now() >= window.end && publisher.is_finished() {
                break;
            }
            continue;
        };
        let asked = Instant::now();
        let found = seen_in_db(oldest_ms).await?;
        let now = Instant::now();
        queries.record(now - asked);
        if let Ok(mut pending) = pending.lock() {
            for seq in found {
                if let Some((sent, _)) = pending.remove(&seq) {
                    delays.record(now - sent);
                    seen += 1;
                }
            }
        }
        if now >= give_up {
            break;
        }
    }
    publisher.abort();
    let published_in_window = match publisher.await {
        Ok(count) => count,
        Err(_) => seen + pending.lock().map(|p| p.len() as u64).unwrap_or(0),
    };
    let _ = driver_stop.send(true);
    let _ = driver.await;
    drop(client);
    let queries = queries.summary();
    Ok(ProbeReport {
        published: published_in_window,
        seen,
        delay: delays.summary(),
        query_p50_us: queries.p50_us,
        query_max_us: queries.max_us,
    })
}
