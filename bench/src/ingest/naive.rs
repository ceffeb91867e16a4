//! The floor: the bridge anyone would write first. One MQTT connection subscribed to
//! `taxi/+/position` with QoS 1, and for each message one `INSERT ... ON CONFLICT DO NOTHING`
//! in autocommit (one transaction, one WAL flush each), acknowledged once inserted: as
//! durable as the real bridge, without batching. No archive, no validation beyond decoding.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bridge::store::types::Timestamp;
use rumqttc::{Event, Packet, Publish};
use tokio::sync::{oneshot, watch};
use tokio_postgres::{Client as PgClient, Statement};

use crate::load::FILTER;
use simulator::client;
use simulator::measure;
use simulator::pki::Client;

const INSERT: &str = "INSERT INTO positions \
     (taxi_id, seq, ts, lat, lon, speed_kmh, heading_deg, accuracy_m, received_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING";

/// The naive consumer on a thread of its own.
pub struct NaiveBridge {
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    stop: watch::Sender<bool>,
    /// Rows inserted so far.
    pub inserted: Arc<AtomicU64>,
    /// Messages that could not be decoded or inserted.
    pub failed: Arc<AtomicU64>,
}

impl NaiveBridge {
    /// Connects (client id `<identity>.naive`) and subscribes; the receiver tells when the
    /// subscription is in place.
    pub fn start(
        identity: Client,
        addr: SocketAddr,
        postgres_url: String,
    ) -> Result<(oneshot::Receiver<Result<()>>, NaiveBridge)> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop, stop_rx) = watch::channel(false);
        let inserted = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let counters = (inserted.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name("naive".to_owned())
            .spawn(move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("naive bridge runtime")?;
                runtime.block_on(run(
                    identity,
                    addr,
                    postgres_url,
                    ready_tx,
                    counters,
                    stop_rx,
                ))
            })
            .context("starting the naive bridge thread")?;
        Ok((
            ready_rx,
            NaiveBridge {
                thread: Some(thread),
                stop,
                inserted,
                failed,
            },
        ))
    }

    /// Stops consuming and waits for the thread.
    pub async fn stop(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("joining the naive bridge thread")?
            .map_err(|_| anyhow::anyhow!("the naive bridge thread panicked"))?
    }
}

impl Drop for NaiveBridge {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn run(
    identity: Client,
    addr: SocketAddr,
    postgres_url: String,
    ready: oneshot::Sender<Result<()>>,
    (inserted, failed): (Arc<AtomicU64>, Arc<AtomicU64>),
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let setup = async {
        let db = super::database::connect(&postgres_url).await?;
        let insert = db.prepare(INSERT).await.context("preparing INSERT")?;
        let consumer = Client {
            id: format!("{}.naive", identity.id),
            tls: identity.tls.clone(),
        };
        let mut options = client::options(
            &consumer,
            &addr.ip().to_string(),
            addr.port(),
            Duration::from_secs(30),
        );
        options.set_manual_acks(true);
        // Room for an ack of every message in flight: the event loop hands over a whole read
        // of messages before it sends anything queued.
        let (mqtt, mut events) = client::with_options(options, 4 * usize::from(client::INFLIGHT));
        client::connect(&mut events, Duration::from_secs(30))
            .await
            .context("connecting")?;
        client::subscribe(&mqtt, &mut events, FILTER, Duration::from_secs(30))
            .await
            .context("subscribing")?;
        anyhow::Ok((db, insert, mqtt, events))
    };
    let (db, insert, mqtt, mut events) = match setup.await {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!("{e:#}")));
            return Err(e);
        }
    };
    let _ = ready.send(Ok(()));
    loop {
        let publish = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(publish))) => publish,
                Ok(_) => continue,
                Err(e) => bail!("naive bridge connection failed: {e}"),
            },
        };
        match store(&db, &insert, &publish).await {
            Ok(n) => {
                inserted.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(error = %format!("{e:#}"), "naive bridge: message not stored");
                }
            }
        }
        // Acknowledged in arrival order, after the insert committed (or failed for good).
        if let Err(e) = mqtt.try_ack(&publish) {
            bail!("naive bridge cannot acknowledge: {e}");
        }
    }
}

/// Decodes one position and inserts it in its own transaction; returns the rows inserted.
async fn store(db: &PgClient, insert: &Statement, publish: &Publish) -> Result<u64> {
    let (taxi, _) = wire::parse_topic(&publish.topic).context("topic")?;
    let taxi = taxi.into_string();
    let position: wire::Position = wire::decode(&publish.payload).context("payload")?;
    let seq = i64::try_from(position.seq).context("seq")?;
    let ts = Timestamp::new(position.ts_ms).context("device time")?;
    let received = Timestamp::clamped(measure::unix_ms());
    let rows = db
        .execute(
            insert,
            &[
                &taxi,
                &seq,
                &ts,
                &position.lat,
                &position.lon,
                &position.speed_kmh,
                &position.heading_deg,
                &position.accuracy_m,
                &received,
            ],
        )
        .await
        .context("INSERT")?;
    Ok(rows)
}
