//! The publisher: each closed window, read back from PostgreSQL, on `mqtt.topic`
//! (`analytics/windows`), QoS 1 and retained, in window order.
//!
//! It runs beside the closer and never holds it up: while the broker is unreachable windows
//! keep closing into PostgreSQL, and once the connection is back the publisher sends the ones
//! it missed, oldest first. A window counts as published once the broker has acknowledged it
//! (`windows_progress.published_until`), so after a crash or a lost connection the same
//! window may be sent twice (at least once; the payload says which window it is).
//!
//! The connection is an mTLS client built like the bridge's (`bridge::source::mtls_options`,
//! MQTT 3.1.1, clean session) with the analytics certificate (`OU=analytics`) and client id
//! `<mqtt.client_id>.<id>`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch, Notify};
use tokio_postgres::Client;
use tracing::{info, warn};

use super::message;
use super::store::{self, Mark};
use crate::config::{MqttConfig, PostgresConfig};
use crate::Config;

/// How long the broker has to acknowledge one window.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the publisher looks for unpublished windows without being told.
const POLL: Duration = Duration::from_secs(1);

/// Windows read from PostgreSQL at a time.
const BATCH: i64 = 50;

/// What the connection task tells the publisher.
#[derive(Clone, Copy, Debug)]
enum Delivery {
    /// Our PUBLISH went out with this packet id.
    Sent(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
}

/// Checks the certificate files and starts the connection and the publisher; `closed` wakes
/// the publisher when windows were closed.
pub fn start(config: &Config, closed: Arc<Notify>) -> anyhow::Result<()> {
    let client_id = format!("{}.{}", config.mqtt.client_id, config.id);
    let options = options(&config.mqtt, &client_id, config.windows.max_message_bytes)?;
    let (client, eventloop) = bridge::source::client(options, 16);
    let (deliveries, received) = mpsc::channel(64);
    let (connected_tx, connected) = watch::channel(false);
    tokio::spawn(drive(eventloop, client_id, deliveries, connected_tx));
    let publisher = Publisher {
        client,
        topic: config.mqtt.topic.clone(),
        max_message_bytes: config.windows.max_message_bytes,
        postgres: config.postgres.clone(),
        db: None,
        deliveries: received,
        connected,
        closed,
    };
    tokio::spawn(publisher.run());
    Ok(())
}

/// The bridge's mTLS options, with the analytics certificate and room for the largest window.
fn options(
    mqtt: &MqttConfig,
    client_id: &str,
    max_message_bytes: usize,
) -> anyhow::Result<rumqttc::MqttOptions> {
    let as_bridge = bridge::config::MqttConfig {
        host: mqtt.host.clone(),
        port: mqtt.port,
        ca: mqtt.ca.clone(),
        cert: mqtt.cert.clone(),
        key: mqtt.key.clone(),
        client_id: client_id.to_owned(),
        group: String::new(),
        connections: 1,
        topics: Vec::new(),
        keep_alive_secs: mqtt.keep_alive_secs,
        max_packet_size: max_message_bytes + mqtt.topic.len() + 64,
    };
    bridge::source::mtls_options(&as_bridge, client_id)
}

/// Keeps the connection up for ever, reconnecting with back-off; reports our publishes and
/// their acknowledgements.
async fn drive(
    mut eventloop: EventLoop,
    client_id: String,
    deliveries: mpsc::Sender<Delivery>,
    connected: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                info!(client_id, "connected to the broker");
                metrics::counter!("analytics_mqtt_connects_total").increment(1);
                backoff = Duration::from_millis(100);
                connected.send_replace(true);
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let _ = deliveries.try_send(Delivery::Sent(pkid));
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let _ = deliveries.try_send(Delivery::Acked(ack.pkid));
            }
            Ok(_) => {}
            Err(e) => {
                if connected.send_replace(false) {
                    warn!(client_id, error = %e, "connection to the broker lost");
                } else {
                    warn!(client_id, error = %e, retry_in_ms = backoff.as_millis() as u64,
                          "cannot connect to the broker");
                }
                metrics::counter!("analytics_mqtt_errors_total").increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

struct Publisher {
    client: AsyncClient,
    topic: String,
    max_message_bytes: usize,
    postgres: PostgresConfig,
    db: Option<Client>,
    deliveries: mpsc::Receiver<Delivery>,
    connected: watch::Receiver<bool>,
    closed: Arc<Notify>,
}

impl Publisher {
    async fn run(mut self) {
        let min_backoff = Duration::from_millis(self.postgres.min_backoff_ms);
        let mut backoff = min_backoff;
        loop {
            tokio::select! {
                _ = self.closed.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            if !*self.connected.borrow() {
                continue;
            }
            match self.publish_pending().await {
                Ok(()) => backoff = min_backoff,
                Err(e) => {
                    warn!(
                        error = %format!("{e:#}"),
                        retry_in_ms = backoff.as_millis() as u64,
                        "windows: publishing failed; retrying"
                    );
                    metrics::counter!("analytics_windows_errors_total", "stage" => "publish")
                        .increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff =
                        (backoff * 2).min(Duration::from_millis(self.postgres.max_backoff_ms));
                }
            }
        }
    }

    /// Publishes every closed window not published yet, oldest first.
    async fn publish_pending(&mut self) -> anyhow::Result<()> {
        loop {
            let db = self.db().await;
            let Some(progress) = store::read(db).await? else {
                return Ok(());
            };
            let windows = store::unpublished(db, &progress, BATCH).await?;
            if windows.is_empty() {
                return Ok(());
            }
            for (window, computed_ms) in windows {
                let db = self.db().await;
                let rows = store::window_rows(db, window.start_ms, false).await?;
                let payload = message::encode(window, computed_ms, &rows, self.max_message_bytes)
                    .context("encoding a window")?;
                self.publish(payload).await?;
                let db = self.db().await;
                store::advance(db, Mark::PublishedUntil, window.end_ms).await?;
                metrics::counter!("analytics_windows_published_total").increment(1);
            }
        }
    }

    /// Publishes one message and waits for the broker's acknowledgement.
    async fn publish(&mut self, payload: Vec<u8>) -> anyhow::Result<()> {
        // Left over from an attempt that timed out.
        while self.deliveries.try_recv().is_ok() {}
        self.client
            .publish(self.topic.clone(), QoS::AtLeastOnce, true, payload)
            .await
            .context("queueing a window for the broker")?;
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        let mut sent = None;
        loop {
            let delivery = tokio::time::timeout_at(deadline, self.deliveries.recv())
                .await
                .with_context(|| format!("the broker did not acknowledge within {ACK_TIMEOUT:?}"))?
                .context("the broker connection task ended")?;
            match delivery {
                Delivery::Sent(pkid) => sent = Some(pkid),
                Delivery::Acked(pkid) if sent == Some(pkid) => return Ok(()),
                Delivery::Acked(_) => {}
            }
        }
    }

    /// The PostgreSQL connection, (re)connected with back-off when needed.
    async fn db(&mut self) -> &Client {
        let client = match self.db.take() {
            Some(client) if !client.is_closed() => client,
            _ => crate::db::connect(&self.postgres).await,
        };
        self.db.insert(client)
    }
}
