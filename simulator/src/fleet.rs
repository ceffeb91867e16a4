//! `fleet`: N simulated taxis driving around the city and publishing their positions to a
//! running broker until Ctrl-C. Missing taxi certificates are issued from the development PKI.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::client;
use crate::measure;
use crate::motion::{Walker, BERLIN};
use crate::pki::{self, Client};

/// Everything `fleet` is told.
#[derive(Clone, Debug)]
pub struct FleetArgs {
    pub taxis: usize,
    /// Positions per second per taxi.
    pub rate: f64,
    pub host: String,
    pub port: u16,
    pub certs: PathBuf,
}

/// Fleet-wide counters.
#[derive(Default)]
struct Counters {
    connected: AtomicI64,
    sent: AtomicU64,
    acked: AtomicU64,
    /// Positions not handed to the client because its queue was full (broker unreachable).
    skipped: AtomicU64,
}

const STATS_EVERY: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs the fleet until Ctrl-C.
pub async fn run(args: FleetArgs) -> Result<()> {
    if args.taxis == 0 || args.taxis > 20_000 {
        bail!("--taxis must be between 1 and 20000");
    }
    if !(args.rate > 0.0 && args.rate <= 1_000.0) {
        bail!("--rate must be above 0 and at most 1000 positions per second per taxi");
    }
    let (dir, count) = (args.certs.clone(), args.taxis);
    let clients = tokio::task::spawn_blocking(move || pki::dev_taxis(&dir, count))
        .await
        .context("certificate task failed")??;
    println!(
        "fleet: {} taxis, {} positions/s each, broker {}:{}, certificates in {}",
        args.taxis,
        args.rate,
        args.host,
        args.port,
        args.certs.display()
    );

    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(clients.len());
    for (index, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(taxi(
            client,
            index,
            args.clone(),
            counters.clone(),
            stop_rx.clone(),
        )));
    }

    let started = Instant::now();
    let mut ticker = tokio::time::interval(STATS_EVERY);
    ticker.tick().await;
    let mut last_sent = 0;
    loop {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                signal.context("waiting for Ctrl-C")?;
                break;
            }
            _ = ticker.tick() => {
                let sent = counters.sent.load(Ordering::Relaxed);
                println!(
                    "{:>6.0} s  connected {}/{}  sent {} ({:.1}/s)  acked {}  skipped {}",
                    started.elapsed().as_secs_f64(),
                    counters.connected.load(Ordering::Relaxed),
                    args.taxis,
                    sent,
                    (sent - last_sent) as f64 / STATS_EVERY.as_secs_f64(),
                    counters.acked.load(Ordering::Relaxed),
                    counters.skipped.load(Ordering::Relaxed),
                );
                last_sent = sent;
            }
        }
    }
    println!("stopping");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for task in tasks {
            let _ = task.await;
        }
    })
    .await;
    println!(
        "sent {} positions, {} acknowledged, {} skipped while offline",
        counters.sent.load(Ordering::Relaxed),
        counters.acked.load(Ordering::Relaxed),
        counters.skipped.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One taxi: drives its connection (reconnecting with back-off) and publishes its positions.
async fn taxi(
    client: Client,
    index: usize,
    args: FleetArgs,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
) {
    let (mqtt, events) = client::new(&client, &args.host, args.port, Duration::from_secs(30));
    let mut driver = tokio::spawn(drive(
        events,
        client.id.clone(),
        counters.clone(),
        stop.clone(),
    ));
    publish(&mqtt, &client.id, index, args.rate, &counters, stop).await;
    let _ = mqtt.try_disconnect();
    if tokio::time::timeout(Duration::from_secs(2), &mut driver)
        .await
        .is_err()
    {
        driver.abort();
    }
}

async fn publish(
    mqtt: &AsyncClient,
    id: &str,
    index: usize,
    rate: f64,
    counters: &Counters,
    mut stop: watch::Receiver<bool>,
) {
    let topic = format!("taxi/{id}/position");
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut walker = Walker::new(BERLIN, rand::random::<u64>() ^ index as u64);
    // No stored counter: start at the boot time in unix milliseconds (see topics.md).
    let mut seq = measure::unix_ms().max(0) as u64;
    let first = period.mul_f64(rand::random::<f64>());
    let mut ticker = tokio::time::interval_at((Instant::now() + first).into(), period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticker.tick() => {}
        }
        seq += 1;
        let fix = walker.step(period);
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
        match mqtt.try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload) {
            Ok(()) => counters.sent.fetch_add(1, Ordering::Relaxed),
            Err(_) => counters.skipped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Polls the connection: counts acks, reconnects after errors with exponential back-off.
async fn drive(
    mut events: EventLoop,
    id: String,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connected = false;
    let mut backoff = Duration::from_secs(1);
    loop {
        // After a stop the publisher has queued a DISCONNECT: polling sends it.
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if !connected {
                    connected = true;
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                }
                backoff = Duration::from_secs(1);
                info!(id, "connected");
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) if *stop.borrow() => break,
            Ok(_) => {}
            Err(e) => {
                if connected {
                    connected = false;
                    counters.connected.fetch_sub(1, Ordering::Relaxed);
                }
                if *stop.borrow() {
                    break;
                }
                warn!(id, error = %client::describe(e), retry_in_s = backoff.as_secs(), "connection failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|stop| *stop) => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    if connected {
        counters.connected.fetch_sub(1, Ordering::Relaxed);
    }
}
