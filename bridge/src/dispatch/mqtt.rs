//! Dispatch's own MQTT connection (the bridge certificate, client id
//! `<client_id>.<bridge id>-dispatch`, persistent session, manual acks).
//!
//! - [`Publisher`]: publishes orders QoS 1 on `taxi/<id>/inbox`, never an expired one, at
//!   most [`MAX_IN_FLIGHT`] at a time not acknowledged by the broker yet: a publisher waits for
//!   room (back-pressure), so publishes never crowd the connection's request queue and the
//!   connection always has room left for its acknowledgements.
//! - The connection subscribes `$share/<group>/taxi/+/inbox` and `$share/<group>/taxi/+/status`:
//!   every inbox message (ours or a backoffice app's) is recorded in PostgreSQL before it is
//!   acknowledged (which also marks a queued order `sent`); a taxi's `online` status triggers
//!   the resend of its unconfirmed orders.
//! - After each (re)connection every unconfirmed order is published again: the broker keeps
//!   sessions only in memory, so after its restart nothing of the old ones is left.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, Publish, QoS, SubscribeFilter};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

use super::orders::{Orders, Outgoing, Seen};
use crate::config::{DispatchConfig, MqttConfig};
use crate::source::now_ms;

/// Requests queued towards the broker at most (publishes and acks).
const REQUEST_CAPACITY: usize = 10_000;
/// Publishes handed to the connection and not acknowledged by the broker yet, at most.
/// Below the connection's own limit ([`CONNECTION_INFLIGHT`]), so the connection never
/// stops taking requests from its queue, and acknowledgements of received messages queued
/// behind publishes always go out promptly.
pub const MAX_IN_FLIGHT: usize = 200;
/// rumqttc's limit of unacknowledged outgoing publishes (it stops reading its request queue,
/// acknowledgements included, when it is reached).
const CONNECTION_INFLIGHT: u16 = 256;
/// How long a publisher waits for room before giving up (the order is then made due again
/// and the sweep publishes it).
const PUBLISH_WAIT: Duration = Duration::from_secs(2);
/// Inbox messages recorded together before their acks.
const RECORD_BATCH: usize = 100;

/// Publishes orders on the dispatch connection.
#[derive(Clone)]
pub struct Publisher {
    client: AsyncClient,
    /// One permit per publish that may still be handed to the connection; taken by
    /// [`Publisher::publish`], given back when the broker acknowledges a publish.
    room: Arc<Semaphore>,
}

/// Why an order was (not) published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    Queued,
    /// Its expiry has passed: never published.
    Expired,
    /// No room for it within [`PUBLISH_WAIT`] (the broker is unreachable or slow for a
    /// while): try again later.
    Busy,
}

impl Publisher {
    /// Queues the order as a QoS 1 publish on `taxi/<id>/inbox` unless it has expired,
    /// waiting up to [`PUBLISH_WAIT`] for fewer than [`MAX_IN_FLIGHT`] publishes to be
    /// unacknowledged by the broker. `reason` labels the metric (`api`, `sweep`, `online`,
    /// `reconnect`).
    pub async fn publish(&self, order: &Outgoing, reason: &'static str) -> Published {
        if order.expires_ms.is_some_and(|expires| expires <= now_ms()) {
            metrics::counter!("dispatch_publish_skipped_expired_total").increment(1);
            return Published::Expired;
        }
        let kind = match order.kind.as_str() {
            "order" => wire::InboxKind::Order,
            "invoice" => wire::InboxKind::Invoice,
            _ => wire::InboxKind::Message,
        };
        let message = wire::InboxMessage {
            order_id: order.order_id.clone(),
            kind,
            text: order.text.clone(),
            created_ms: order.created_ms,
            expires_ms: order.expires_ms,
        };
        let topic = format!("taxi/{}/inbox", order.taxi_id);
        match tokio::time::timeout(PUBLISH_WAIT, self.room.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) | Err(_) => {
                metrics::counter!("dispatch_publish_failures_total").increment(1);
                debug!(
                    order_id = order.order_id,
                    "no room for the publish: the broker is slow or unreachable"
                );
                return Published::Busy;
            }
        }
        match self
            .client
            .publish(topic, QoS::AtLeastOnce, false, wire::encode_json(&message))
            .await
        {
            Ok(()) => {
                metrics::counter!("dispatch_publishes_total", "reason" => reason).increment(1);
                Published::Queued
            }
            Err(e) => {
                // Only when the connection's task is gone.
                self.release();
                metrics::counter!("dispatch_publish_failures_total").increment(1);
                warn!(order_id = order.order_id, error = %e, "publish not queued");
                Published::Busy
            }
        }
    }

    /// Gives back the room of one publish (the broker acknowledged one), never above
    /// [`MAX_IN_FLIGHT`] (a publish sent again after a reconnection is acknowledged again).
    fn release(&self) {
        if self.room.available_permits() < MAX_IN_FLIGHT {
            self.room.add_permits(1);
        }
    }

    /// Publishes each order in turn; once one finds no room, it and the rest are made due
    /// again (the sweep publishes them when the broker takes publishes again).
    pub async fn publish_all(&self, orders: &Orders, claimed: &[Outgoing], reason: &'static str) {
        for (n, order) in claimed.iter().enumerate() {
            if self.publish(order, reason).await == Published::Busy {
                let rest: Vec<String> = claimed[n..].iter().map(|o| o.order_id.clone()).collect();
                if let Err(e) = orders.unclaim_all(&rest).await {
                    warn!(orders = rest.len(), error = %e, "cannot mark orders due again; they are published again after the resend interval");
                }
                return;
            }
        }
    }
}

/// A received message and how to acknowledge it on the connection it came from.
struct Received {
    publish: Publish,
    generation: u64,
}

/// Opens the connection; returns the publisher. The connection lives as long as the process.
pub fn start(
    mqtt: &MqttConfig,
    bridge_id: &str,
    config: &DispatchConfig,
    orders: Arc<Orders>,
) -> anyhow::Result<Publisher> {
    let client_id = format!("{}.{bridge_id}-dispatch", mqtt.client_id);
    let mut options = crate::source::mtls_options(mqtt, &client_id)?;
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_inflight(CONNECTION_INFLIGHT)
        .set_request_channel_capacity(REQUEST_CAPACITY);
    let (client, eventloop) = crate::source::client(options, REQUEST_CAPACITY);
    let publisher = Publisher {
        client: client.clone(),
        room: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
    };
    let filters = vec![
        SubscribeFilter::new(
            format!("$share/{}/taxi/+/inbox", config.group),
            QoS::AtLeastOnce,
        ),
        SubscribeFilter::new(
            format!("$share/{}/taxi/+/status", config.group),
            QoS::AtLeastOnce,
        ),
    ];
    let generation = Arc::new(AtomicU64::new(0));
    // Unbounded, so that the connection never waits for the recorder (it must keep reading
    // the broker's acknowledgements meanwhile); the broker bounds what it delivers to us
    // unacknowledged.
    let (received_tx, received_rx) = mpsc::unbounded_channel();
    tokio::spawn(handle_received(
        received_rx,
        client.clone(),
        generation.clone(),
        publisher.clone(),
        orders.clone(),
        Duration::from_millis(config.online_resend_delay_ms),
    ));
    tokio::spawn(run_connection(
        client_id,
        client,
        eventloop,
        filters,
        generation,
        received_tx,
        publisher.clone(),
        orders,
        Duration::from_millis(config.online_resend_delay_ms),
    ));
    Ok(publisher)
}

/// Keeps the connection alive forever, reconnecting with back-off.
#[allow(clippy::too_many_arguments)]
async fn run_connection(
    client_id: String,
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    filters: Vec<SubscribeFilter>,
    generation: Arc<AtomicU64>,
    received: mpsc::UnboundedSender<Received>,
    publisher: Publisher,
    orders: Arc<Orders>,
    settle: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connected = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                generation.fetch_add(1, Ordering::AcqRel);
                backoff = Duration::from_millis(100);
                connected = true;
                info!(
                    client_id,
                    session_present = ack.session_present,
                    "dispatch connected to the broker"
                );
                metrics::counter!("dispatch_mqtt_connects_total").increment(1);
                // Queued from another task: this one must keep polling the connection, which
                // is what empties the request queue.
                let (subscriber, filters, id) =
                    (client.clone(), filters.clone(), client_id.clone());
                tokio::spawn(async move {
                    if let Err(e) = subscriber.subscribe_many(filters).await {
                        warn!(client_id = id, error = %e, "dispatch subscribe request failed");
                    }
                });
                // What the broker held for offline taxis may be gone (a restart): publish
                // every unconfirmed order again, once taxis had a moment to subscribe.
                let (publisher, orders) = (publisher.clone(), orders.clone());
                let connected_ms = now_ms();
                tokio::spawn(async move {
                    tokio::time::sleep(settle).await;
                    resend_unconfirmed(&publisher, &orders, connected_ms).await;
                });
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                let refused = suback
                    .return_codes
                    .iter()
                    .filter(|code| matches!(code, rumqttc::SubscribeReasonCode::Failure))
                    .count();
                if refused > 0 {
                    warn!(client_id, refused, "the broker refused dispatch's subscriptions: check the bridge certificate's role");
                }
                metrics::counter!("dispatch_mqtt_subscribed_total").increment(1);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let message = Received {
                    publish,
                    generation: generation.load(Ordering::Acquire),
                };
                if received.send(message).is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => publisher.release(),
            Ok(_) => {}
            Err(e) => {
                if connected {
                    warn!(client_id, error = %e, "dispatch lost its connection to the broker");
                    connected = false;
                } else {
                    warn!(client_id, error = %e, retry_in_ms = backoff.as_millis() as u64, "dispatch cannot connect to the broker");
                }
                generation.fetch_add(1, Ordering::AcqRel);
                metrics::counter!("dispatch_mqtt_errors_total").increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Publishes every unconfirmed, unexpired order not published since `connected_ms` again,
/// in chunks.
async fn resend_unconfirmed(publisher: &Publisher, orders: &Orders, connected_ms: i64) {
    const CHUNK: i64 = 1_000;
    let mut total = 0usize;
    // Each claim marks its orders as just sent, so the next one gets others.
    loop {
        match orders.claim_unconfirmed(connected_ms, CHUNK).await {
            Ok(claimed) => {
                total += claimed.len();
                publisher.publish_all(orders, &claimed, "reconnect").await;
                if (claimed.len() as i64) < CHUNK {
                    break;
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot read unconfirmed orders; the periodic resend will catch up");
                break;
            }
        }
    }
    if total > 0 {
        info!(
            orders = total,
            "published unconfirmed orders again after connecting"
        );
    }
}

/// Records inbox messages and reacts to statuses, in arrival order, acknowledging each only
/// when done.
async fn handle_received(
    mut received: mpsc::UnboundedReceiver<Received>,
    client: AsyncClient,
    generation: Arc<AtomicU64>,
    publisher: Publisher,
    orders: Arc<Orders>,
    online_delay: Duration,
) {
    // Awaited, never dropped: the broker wants acknowledgements in order and sends nothing
    // again before a reconnection, so a lost one would stop its deliveries to dispatch.
    let ack = |message: Received| {
        let (client, generation) = (&client, &generation);
        async move {
            if message.generation != generation.load(Ordering::Acquire) {
                return; // That connection is gone: the broker sends the message again.
            }
            let mut publish = message.publish;
            publish.payload = bytes::Bytes::new();
            if let Err(e) = client.ack(&publish).await {
                warn!(error = %e, "dispatch acknowledgement not sent: the connection is gone");
            }
        }
    };
    let mut batch: Vec<Received> = Vec::with_capacity(RECORD_BATCH);
    while let Some(first) = received.recv().await {
        batch.push(first);
        while batch.len() < RECORD_BATCH {
            match received.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let work = batch
            .iter()
            .map(|message| handle_one(message, &publisher, &orders, online_delay));
        futures_util::future::join_all(work).await;
        for message in batch.drain(..) {
            ack(message).await;
        }
    }
}

/// One message: an inbox message is recorded (retrying until PostgreSQL takes it), an
/// `online` status schedules the taxi's resend.
async fn handle_one(
    message: &Received,
    publisher: &Publisher,
    orders: &Arc<Orders>,
    online_delay: Duration,
) {
    let topic = &message.publish.topic;
    let Ok((taxi, kind)) = wire::parse_topic(topic) else {
        warn!(topic, "dispatch received a message on an unexpected topic");
        return;
    };
    match kind {
        wire::TopicKind::Inbox => {
            let inbox = match wire::decode::<wire::InboxMessage>(&message.publish.payload) {
                Ok(inbox) => inbox,
                Err(e) => {
                    metrics::counter!("dispatch_inbox_invalid_total").increment(1);
                    warn!(topic, error = %e, "an inbox message that taxis cannot read either: not recorded");
                    return;
                }
            };
            if !super::orders::is_valid_order_id(&inbox.order_id) {
                metrics::counter!("dispatch_inbox_invalid_total").increment(1);
                warn!(topic, order_id = inbox.order_id, "an inbox message whose order id is not 1 to 128 characters of A-Z, a-z, 0-9, '_', '.', ':', '-': not recorded");
                return;
            }
            let mut backoff = Duration::from_millis(50);
            loop {
                match orders.seen_on_inbox(taxi.as_str(), &inbox).await {
                    Ok(seen) => {
                        let outcome = match seen {
                            Seen::Recorded => "recorded",
                            Seen::Sent => "sent",
                            Seen::Known => "known",
                            Seen::OtherTaxi => "other_taxi",
                        };
                        if seen == Seen::OtherTaxi {
                            warn!(topic, order_id = inbox.order_id, "an inbox message reuses the order id of another taxi's order: not recorded");
                        }
                        if seen == Seen::Recorded {
                            info!(
                                topic,
                                order_id = inbox.order_id,
                                "recorded an order published over MQTT"
                            );
                        }
                        metrics::counter!("dispatch_inbox_seen_total", "outcome" => outcome)
                            .increment(1);
                        return;
                    }
                    Err(e) if !super::orders::is_retryable(&e) => {
                        metrics::counter!("dispatch_postgres_errors_total").increment(1);
                        warn!(topic, order_id = inbox.order_id, error = %e, "PostgreSQL refused an inbox message: not recorded");
                        return;
                    }
                    Err(e) => {
                        metrics::counter!("dispatch_postgres_errors_total").increment(1);
                        warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot record an inbox message");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        wire::TopicKind::Status => {
            let Ok(status) = wire::decode::<wire::Status>(&message.publish.payload) else {
                return;
            };
            if status.state != wire::StatusState::Online {
                return;
            }
            let (publisher, orders, taxi) =
                (publisher.clone(), orders.clone(), taxi.as_str().to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(online_delay).await;
                match orders.claim_for_taxi(&taxi).await {
                    Ok(claimed) => {
                        if !claimed.is_empty() {
                            info!(
                                taxi,
                                orders = claimed.len(),
                                "taxi online: publishing its unconfirmed orders again"
                            );
                        }
                        publisher.publish_all(&orders, &claimed, "online").await;
                    }
                    Err(e) => {
                        metrics::counter!("dispatch_postgres_errors_total").increment(1);
                        warn!(taxi, error = %e, "cannot read the orders of a taxi that came online; the periodic resend will catch up");
                    }
                }
            });
        }
        _ => {}
    }
}
