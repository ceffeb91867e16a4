//! The source stage: MQTT connections to the broker, one shared-subscription group.
//!
//! Each bridge opens `mqtt.connections` connections with its `bridge` certificate and client
//! ids `<id>.<bridge>-<n>`, persistent sessions and QoS 1 subscriptions to
//! `$share/<group>/taxi/+/<kind>`, so that the broker splits the messages over every
//! connection of every bridge in the group. Acknowledgements are manual: a message is acked
//! only once the pipeline has made it durable, in the order it arrived on its connection
//! (the broker holds at most 100 unacknowledged messages per connection, so more
//! connections mean more messages in flight).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeFilter, Transport,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::MqttConfig;
use crate::record::RawMessage;

/// Unacknowledged messages the broker sends one connection at most.
pub const BROKER_INFLIGHT: usize = 100;

/// A received message and the way to acknowledge it.
pub struct Delivery {
    pub message: RawMessage,
    pub ack: AckToken,
}

/// Acknowledges one message on the connection it came from, unless that connection has been
/// replaced meanwhile (the broker then sends the message again, and the store drops the
/// duplicate).
pub struct AckToken {
    client: AsyncClient,
    publish: Publish,
    generation: u64,
    current: Arc<AtomicU64>,
}

impl AckToken {
    /// Queues the acknowledgement without waiting (the request channel has room for every
    /// message the broker may have in flight on this connection).
    pub fn ack(self) {
        if self.current.load(Ordering::Acquire) != self.generation {
            return;
        }
        if let Err(e) = self.client.try_ack(&self.publish) {
            warn!(error = %e, "acknowledgement not sent; the message will be redelivered");
        }
    }
}

/// A client and its event loop for `options`, with Nagle's algorithm off: orders, acks and
/// invoices are small packets that must not wait for more to send.
pub fn client(options: MqttOptions, capacity: usize) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}

/// Options for one mTLS connection of the bridge to the broker (`mqtt.host`, `mqtt.port`, the
/// bridge certificate, keep-alive and packet size from `config`), as `client_id`, which must
/// be `mqtt.client_id` or `<mqtt.client_id>.<suffix>`. Every connection of the bridge, not
/// only the source's, starts from these.
pub fn mtls_options(config: &MqttConfig, client_id: &str) -> anyhow::Result<MqttOptions> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("mqtt.{key} ({}): cannot read", path.display()))
    };
    let ca = read("ca", &config.ca)?;
    let cert = read("cert", &config.cert)?;
    let key = read("key", &config.key)?;
    let mut options = MqttOptions::new(client_id, config.host.clone(), config.port);
    options
        .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
        .set_max_packet_size(config.max_packet_size, config.max_packet_size)
        .set_transport(Transport::tls(ca, Some((cert, key)), None));
    Ok(options)
}

/// Starts the connections; deliveries arrive on `deliveries` in per-connection order.
pub fn start(
    config: &MqttConfig,
    bridge_id: &str,
    deliveries: mpsc::Sender<Delivery>,
) -> anyhow::Result<()> {
    let filters: Vec<SubscribeFilter> = config
        .topics
        .iter()
        .map(|kind| {
            SubscribeFilter::new(
                format!("$share/{}/taxi/+/{kind}", config.group),
                QoS::AtLeastOnce,
            )
        })
        .collect();
    for n in 0..config.connections {
        let client_id = format!("{}.{bridge_id}-{n}", config.client_id);
        let mut options = mtls_options(config, &client_id)?;
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_request_channel_capacity(BROKER_INFLIGHT * 2);
        tokio::spawn(run_connection(
            client_id,
            options,
            filters.clone(),
            deliveries.clone(),
        ));
    }
    Ok(())
}

/// Keeps one connection alive forever, reconnecting with back-off.
async fn run_connection(
    client_id: String,
    options: MqttOptions,
    filters: Vec<SubscribeFilter>,
    deliveries: mpsc::Sender<Delivery>,
) {
    let (client, mut eventloop) = self::client(options, BROKER_INFLIGHT * 2);
    let generation = Arc::new(AtomicU64::new(0));
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
                    "connected to the broker"
                );
                metrics::counter!("bridge_mqtt_connects_total").increment(1);
                // Subscribing again is harmless when the session kept the subscriptions.
                if let Err(e) = client.subscribe_many(filters.clone()).await {
                    warn!(client_id, error = %e, "subscribe request failed");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(suback))) => {
                let refused = suback
                    .return_codes
                    .iter()
                    .filter(|code| matches!(code, rumqttc::SubscribeReasonCode::Failure))
                    .count();
                if refused > 0 {
                    warn!(
                        client_id,
                        refused,
                        "the broker refused subscriptions: check the bridge certificate's role"
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                metrics::counter!("bridge_messages_consumed_total").increment(1);
                let message = RawMessage {
                    topic: publish.topic.clone(),
                    payload: publish.payload.clone(),
                    received_ms: now_ms(),
                };
                let mut ack_publish = publish;
                ack_publish.payload = bytes::Bytes::new();
                let ack = AckToken {
                    client: client.clone(),
                    publish: ack_publish,
                    generation: generation.load(Ordering::Acquire),
                    current: generation.clone(),
                };
                if deliveries.send(Delivery { message, ack }).await.is_err() {
                    return; // The pipeline is gone: the bridge is stopping.
                }
            }
            Ok(_) => {}
            Err(e) => {
                if connected {
                    warn!(client_id, error = %e, "connection to the broker lost");
                    connected = false;
                } else {
                    warn!(client_id, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot connect to the broker");
                }
                // Whatever was received on the old connection is redelivered by the broker.
                generation.fetch_add(1, Ordering::AcqRel);
                metrics::counter!("bridge_mqtt_errors_total").increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The bridge clock in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
