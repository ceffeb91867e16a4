//! MQTT clients over mutual TLS with rumqttc: a taxi that publishes its positions and a
//! subscriber, both MQTT 3.1.1, with the options every client of the simulator shares and the
//! waits for the broker's CONNACK and SUBACK.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};

use crate::pki::Client;

/// QoS 1 messages in flight per client, each way (rumqttc's default, rumqttd's fixed limit).
pub const INFLIGHT: u16 = 100;
/// Requests queued inside a client before `publish` waits.
const REQUEST_CAPACITY: usize = 64;

/// A new, not yet connected client; `connect` makes the connection.
pub fn new(
    client: &Client,
    host: &str,
    port: u16,
    keep_alive: Duration,
) -> (AsyncClient, EventLoop) {
    with_options(options(client, host, port, keep_alive), REQUEST_CAPACITY)
}

/// A new, not yet connected client with these options (from [`options`], changed as needed)
/// and room for `requests` queued requests (publishes, acks) before the client waits.
pub fn with_options(options: MqttOptions, requests: usize) -> (AsyncClient, EventLoop) {
    let (client, mut events) = AsyncClient::new(options, requests);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    events.set_network_options(network);
    (client, events)
}

/// The options every client of the simulator shares: mTLS with `client`'s certificate,
/// MQTT 3.1.1, a clean session, [`INFLIGHT`] messages in flight.
pub fn options(client: &Client, host: &str, port: u16, keep_alive: Duration) -> MqttOptions {
    let mut options = MqttOptions::new(client.id.clone(), host, port);
    options
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            client.tls.clone(),
        )))
        .set_keep_alive(keep_alive.max(Duration::from_secs(1)))
        .set_clean_session(true)
        .set_inflight(INFLIGHT)
        .set_max_packet_size(
            wire::MAX_PAYLOAD_BYTES + 1024,
            wire::MAX_PAYLOAD_BYTES + 1024,
        );
    options
}

/// Connects and waits for a successful CONNACK.
pub async fn connect(events: &mut EventLoop, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.poll())
            .await
            .context("no CONNACK in time")?;
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(describe(e)),
        }
    }
}

/// Subscribes to `filter` with QoS 1 and waits for the SUBACK granting it.
pub async fn subscribe(
    client: &AsyncClient,
    events: &mut EventLoop,
    filter: &str,
    timeout: Duration,
) -> Result<()> {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .context("queueing SUBSCRIBE")?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.poll())
            .await
            .with_context(|| format!("no SUBACK for {filter} in time"))?;
        match event {
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                return match ack.return_codes.first() {
                    Some(SubscribeReasonCode::Success(_)) => Ok(()),
                    _ => bail!("subscription to {filter} refused"),
                };
            }
            Ok(_) => {}
            Err(e) => return Err(describe(e)),
        }
    }
}

/// A connection error with what it most likely means.
pub fn describe(error: ConnectionError) -> anyhow::Error {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            anyhow::anyhow!("the broker refused the connection: {code:?}")
        }
        other => anyhow::anyhow!("MQTT connection failed: {other}"),
    }
}
