//! rumqttc clients (MQTT 3.1.1 and 5) over mutual TLS, driven by a task that forwards what
//! the broker sends to a channel, so that a test can wait for one event with a timeout.
//!
//! The driver never reconnects: the first connection error (refusal, disconnect, lost
//! network) is reported as the last event and the task ends. Reconnecting is starting a new
//! client. Dropping a client (or [`MqttClient::kill`]) drops its socket without a
//! DISCONNECT, like a taxi losing power.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The MQTT protocol version a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// MQTT 5 publish properties (user properties, message expiry, subscription ids, ...).
pub type PublishProperties = rumqttc::v5::mqttbytes::v5::PublishProperties;
/// MQTT 5 CONNACK properties (assigned client id, server keep alive, ...).
pub type ConnAckProperties = rumqttc::v5::mqttbytes::v5::ConnAckProperties;
/// An MQTT 5 subscription filter with its options (no local, retain as published, ...).
pub type FilterV5 = rumqttc::v5::mqttbytes::v5::Filter;

/// A PUBLISH received from the broker.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// Packet id (QoS 1 and 2), to acknowledge it by hand.
    pub pkid: u16,
    /// MQTT 5 only.
    pub properties: Option<PublishProperties>,
}

impl Message {
    pub fn payload_str(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

impl std::fmt::Debug for Message {
    /// The payload as text, shortened: failure messages stay readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.payload_str();
        let shown: String = text.chars().take(120).collect();
        let more = text.chars().count().saturating_sub(120);
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field(
                "payload",
                &if more > 0 {
                    format!("{shown}... ({more} more characters)")
                } else {
                    shown
                },
            )
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("properties", &self.properties)
            .finish()
    }
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// What the client library reported.
    pub reason: String,
    /// The reason code of the broker's DISCONNECT (MQTT 5 only), if one arrived.
    pub disconnect_reason: Option<u8>,
}

/// Something the broker did, as seen by the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// CONNACK with success.
    ConnAck {
        session_present: bool,
        /// MQTT 5 only.
        properties: Option<ConnAckProperties>,
    },
    /// CONNACK with a failure code (the raw code: 0x05 or 0x87 for "not authorized").
    Refused {
        code: u8,
    },
    Publish(Message),
    PubAck {
        pkid: u16,
    },
    /// PUBCOMP: the end of a QoS 2 publish.
    PubComp {
        pkid: u16,
    },
    /// SUBACK with the raw return codes (0x00..0x02 granted QoS, 0x80 / 0x87 failures).
    SubAck {
        pkid: u16,
        codes: Vec<u8>,
    },
    /// The connection is over; no event follows.
    Closed(Closed),
}

struct Will {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
}

/// Adjusts the rumqttc MQTT 5 options before connecting.
type V5Options = Box<dyn FnOnce(&mut rumqttc::v5::MqttOptions) + Send>;

/// Options of a client to be started; see [`crate::TestBroker::client`].
pub struct ClientBuilder {
    addr: SocketAddr,
    ca_pem: String,
    client_id: String,
    identity: Option<(String, String)>,
    version: Version,
    clean_session: bool,
    keep_alive: Duration,
    will: Option<Will>,
    v5_options: Option<V5Options>,
    manual_acks: bool,
}

impl ClientBuilder {
    pub(crate) fn new(
        addr: SocketAddr,
        ca_pem: &str,
        client_id: &str,
        identity: Option<(String, String)>,
    ) -> ClientBuilder {
        ClientBuilder {
            addr,
            ca_pem: ca_pem.to_owned(),
            client_id: client_id.to_owned(),
            identity,
            version: Version::V311,
            clean_session: true,
            keep_alive: Duration::from_secs(30),
            will: None,
            v5_options: None,
            manual_acks: false,
        }
    }

    /// Messages are acknowledged only by [`MqttClient::ack`].
    pub fn manual_acks(mut self) -> ClientBuilder {
        self.manual_acks = true;
        self
    }

    /// MQTT 5, with rumqttc's options adjusted by `adjust` (session expiry, Receive Maximum,
    /// Maximum Packet Size, a will with properties, ...) after the builder's own.
    pub fn v5_with(
        mut self,
        adjust: impl FnOnce(&mut rumqttc::v5::MqttOptions) + Send + 'static,
    ) -> ClientBuilder {
        self.v5_options = Some(Box::new(adjust));
        self.version(Version::V5)
    }

    /// The keep-alive the client asks for.
    pub fn keep_alive(mut self, keep_alive: Duration) -> ClientBuilder {
        self.keep_alive = keep_alive;
        self
    }

    /// Speak MQTT 5 instead of 3.1.1.
    pub fn v5(self) -> ClientBuilder {
        self.version(Version::V5)
    }

    pub fn version(mut self, version: Version) -> ClientBuilder {
        self.version = version;
        self
    }

    /// Use another client id than the certificate's CN.
    pub fn client_id(mut self, client_id: &str) -> ClientBuilder {
        self.client_id = client_id.to_owned();
        self
    }

    /// `false`: a persistent session (MQTT 5: clean start off and a session that does not
    /// expire).
    pub fn clean_session(mut self, clean_session: bool) -> ClientBuilder {
        self.clean_session = clean_session;
        self
    }

    pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> ClientBuilder {
        self.will = Some(Will {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            qos,
            retain,
        });
        self
    }

    /// Opens the connection in the background; the outcome arrives as an event.
    pub fn start(self) -> Result<MqttClient> {
        let (tx, rx) = mpsc::unbounded_channel();
        let tls = rumqttc::Transport::tls(
            self.ca_pem.into_bytes(),
            self.identity
                .map(|(cert, key)| (cert.into_bytes(), key.into_bytes())),
            None,
        );
        let host = self.addr.ip().to_string();
        let port = self.addr.port();
        let (handle, driver) = match self.version {
            Version::V311 => {
                let mut options = rumqttc::MqttOptions::new(&self.client_id, host, port);
                options
                    .set_transport(tls)
                    .set_clean_session(self.clean_session)
                    .set_keep_alive(self.keep_alive)
                    .set_manual_acks(self.manual_acks)
                    .set_max_packet_size(1024 * 1024, 1024 * 1024);
                if let Some(will) = self.will {
                    options.set_last_will(rumqttc::LastWill::new(
                        will.topic,
                        will.payload,
                        qos_v4(will.qos)?,
                        will.retain,
                    ));
                }
                let (client, eventloop) = rumqttc::AsyncClient::new(options, 100);
                (Handle::V4(client), tokio::spawn(drive_v4(eventloop, tx)))
            }
            Version::V5 => {
                let mut options = rumqttc::v5::MqttOptions::new(&self.client_id, host, port);
                options
                    .set_transport(tls)
                    .set_clean_start(self.clean_session)
                    .set_manual_acks(self.manual_acks)
                    .set_keep_alive(self.keep_alive);
                if !self.clean_session {
                    options.set_session_expiry_interval(Some(u32::MAX));
                }
                if let Some(will) = self.will {
                    options.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                        will.topic,
                        will.payload,
                        qos_v5(will.qos)?,
                        will.retain,
                        None,
                    ));
                }
                if let Some(adjust) = self.v5_options {
                    adjust(&mut options);
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
                (Handle::V5(client), tokio::spawn(drive_v5(eventloop, tx)))
            }
        };
        Ok(MqttClient {
            client_id: self.client_id,
            handle,
            events: rx,
            driver,
            seen: Vec::new(),
        })
    }

    /// Connects and waits for a successful CONNACK.
    pub async fn connect(self) -> Result<MqttClient> {
        let mut client = self.start()?;
        client.expect_connack().await?;
        Ok(client)
    }
}

enum Handle {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A connected (or connecting) client and everything it has received.
pub struct MqttClient {
    client_id: String,
    handle: Handle,
    events: mpsc::UnboundedReceiver<Event>,
    driver: JoinHandle<()>,
    /// Every event taken from the channel so far, in order.
    seen: Vec<Event>,
}

impl Drop for MqttClient {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl MqttClient {
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Sends a PUBLISH.
    pub async fn publish(&self, topic: &str, qos: u8, retain: bool, payload: &[u8]) -> Result<()> {
        match &self.handle {
            Handle::V4(client) => client
                .publish(topic, qos_v4(qos)?, retain, payload.to_vec())
                .await
                .context("queueing a publish"),
            Handle::V5(client) => client
                .publish(topic, qos_v5(qos)?, retain, payload.to_vec())
                .await
                .context("queueing a publish"),
        }
    }

    /// Sends one SUBSCRIBE with all these filters and QoS.
    pub async fn subscribe(&self, filters: &[(&str, u8)]) -> Result<()> {
        match &self.handle {
            Handle::V4(client) => {
                let filters = filters
                    .iter()
                    .map(|(f, q)| Ok(rumqttc::SubscribeFilter::new((*f).to_owned(), qos_v4(*q)?)))
                    .collect::<Result<Vec<_>>>()?;
                client
                    .subscribe_many(filters)
                    .await
                    .context("queueing a subscribe")
            }
            Handle::V5(client) => {
                let filters = filters
                    .iter()
                    .map(|(f, q)| Ok(rumqttc::v5::mqttbytes::v5::Filter::new(*f, qos_v5(*q)?)))
                    .collect::<Result<Vec<_>>>()?;
                client
                    .subscribe_many(filters)
                    .await
                    .context("queueing a subscribe")
            }
        }
    }

    /// Acknowledges a message (with [`ClientBuilder::manual_acks`]).
    pub async fn ack(&self, message: &Message) -> Result<()> {
        match &self.handle {
            Handle::V4(client) => {
                let mut publish = rumqttc::Publish::new(
                    &message.topic,
                    qos_v4(message.qos)?,
                    message.payload.clone(),
                );
                publish.pkid = message.pkid;
                client.ack(&publish).await.context("queueing an ack")
            }
            Handle::V5(client) => {
                let mut publish = rumqttc::v5::mqttbytes::v5::Publish::new(
                    &message.topic,
                    qos_v5(message.qos)?,
                    message.payload.clone(),
                    None,
                );
                publish.pkid = message.pkid;
                client.ack(&publish).await.context("queueing an ack")
            }
        }
    }

    /// Sends an MQTT 5 PUBLISH with properties.
    pub async fn publish_v5(
        &self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: &[u8],
        properties: PublishProperties,
    ) -> Result<()> {
        let Handle::V5(client) = &self.handle else {
            bail!("publish_v5 on an MQTT 3.1.1 client");
        };
        client
            .publish_with_properties(topic, qos_v5(qos)?, retain, payload.to_vec(), properties)
            .await
            .context("queueing a publish")
    }

    /// Sends one MQTT 5 SUBSCRIBE with these filters (and their options), with a subscription
    /// identifier if `id` is given; waits for the SUBACK and returns its codes.
    pub async fn subscribe_v5(
        &mut self,
        filters: Vec<FilterV5>,
        id: Option<usize>,
    ) -> Result<Vec<u8>> {
        let Handle::V5(client) = &self.handle else {
            bail!("subscribe_v5 on an MQTT 3.1.1 client");
        };
        let properties = rumqttc::v5::mqttbytes::v5::SubscribeProperties {
            id,
            user_properties: Vec::new(),
        };
        client
            .subscribe_many_with_properties(filters, properties)
            .await
            .context("queueing a subscribe")?;
        self.expect_suback().await
    }

    /// Subscribes and waits for the SUBACK; returns its codes.
    pub async fn subscribe_and_wait(&mut self, filters: &[(&str, u8)]) -> Result<Vec<u8>> {
        self.subscribe(filters).await?;
        self.expect_suback().await
    }

    /// Publishes with QoS 1 and waits for the PUBACK.
    pub async fn publish_acked(&mut self, topic: &str, retain: bool, payload: &[u8]) -> Result<()> {
        self.publish(topic, 1, retain, payload).await?;
        self.expect_puback()
            .await
            .with_context(|| format!("no PUBACK for a publish to {topic}"))?;
        Ok(())
    }

    /// Publishes with QoS 2 and waits for the PUBCOMP that ends the exchange.
    pub async fn publish_completed(
        &mut self,
        topic: &str,
        retain: bool,
        payload: &[u8],
    ) -> Result<()> {
        self.publish(topic, 2, retain, payload).await?;
        self.expect("PUBCOMP", crate::WAIT, |event| match event {
            Event::PubComp { .. } => Some(()),
            _ => None,
        })
        .await
        .with_context(|| format!("no PUBCOMP for a publish to {topic}"))
    }

    /// Sends DISCONNECT and waits until the connection is closed.
    pub async fn disconnect(mut self) -> Result<()> {
        match &self.handle {
            Handle::V4(client) => client.disconnect().await.context("queueing a disconnect")?,
            Handle::V5(client) => client.disconnect().await.context("queueing a disconnect")?,
        }
        self.expect_disconnected().await?;
        Ok(())
    }

    /// Drops the connection without a DISCONNECT (the socket just closes).
    pub async fn kill(mut self) {
        self.driver.abort();
        let driver = std::mem::replace(&mut self.driver, tokio::spawn(async {}));
        drop(self);
        let _ = driver.await;
    }

    /// Waits for the next event matching `pick`, keeping every event in [`Self::seen`].
    /// Fails after `timeout`, or once the connection is closed without a match.
    pub async fn expect<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => bail!(
                    "{}: waiting for {what}, but the client has stopped; events: {:?}",
                    self.client_id,
                    self.seen
                ),
                Err(_) => bail!(
                    "{}: no {what} within {timeout:?}; events: {:?}",
                    self.client_id,
                    self.seen
                ),
            };
            let picked = pick(&event);
            let closed = matches!(event, Event::Closed(_));
            self.seen.push(event);
            if let Some(picked) = picked {
                return Ok(picked);
            }
            if closed {
                bail!(
                    "{}: connection closed while waiting for {what}; events: {:?}",
                    self.client_id,
                    self.seen
                );
            }
        }
    }

    /// Waits for a successful CONNACK; returns `session_present`.
    pub async fn expect_connack(&mut self) -> Result<bool> {
        Ok(self.expect_connack_v5().await?.0)
    }

    /// Waits for a successful CONNACK; returns `session_present` and its MQTT 5 properties.
    pub async fn expect_connack_v5(&mut self) -> Result<(bool, Option<ConnAckProperties>)> {
        let outcome = self
            .expect("CONNACK", crate::WAIT, |event| match event {
                Event::ConnAck {
                    session_present,
                    properties,
                } => Some(Ok((*session_present, properties.clone()))),
                Event::Refused { code } => Some(Err(*code)),
                _ => None,
            })
            .await?;
        outcome.map_err(|code| {
            anyhow::anyhow!("{}: CONNACK refused with code {code:#04x}", self.client_id)
        })
    }

    /// Waits until the connection attempt fails: `Ok(Some(code))` for a CONNACK refusal,
    /// `Ok(None)` for a connection closed without one. A successful CONNACK is an error.
    pub async fn expect_refused(&mut self) -> Result<Option<u8>> {
        let outcome = self
            .expect("refusal", crate::WAIT, |event| match event {
                Event::ConnAck { .. } => Some(Err(())),
                Event::Refused { code } => Some(Ok(Some(*code))),
                Event::Closed(_) => Some(Ok(None)),
                _ => None,
            })
            .await?;
        outcome.map_err(|()| {
            anyhow::anyhow!(
                "{}: expected a refusal but the broker accepted the connection",
                self.client_id
            )
        })
    }

    /// Waits for a SUBACK; returns its codes.
    pub async fn expect_suback(&mut self) -> Result<Vec<u8>> {
        self.expect("SUBACK", crate::WAIT, |event| match event {
            Event::SubAck { codes, .. } => Some(codes.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for a PUBACK; returns its packet id.
    pub async fn expect_puback(&mut self) -> Result<u16> {
        self.expect("PUBACK", crate::WAIT, |event| match event {
            Event::PubAck { pkid } => Some(*pkid),
            _ => None,
        })
        .await
    }

    /// Waits for a PUBLISH on `topic`.
    pub async fn expect_publish(&mut self, topic: &str) -> Result<Message> {
        self.expect_publish_within(topic, crate::WAIT).await
    }

    pub async fn expect_publish_within(
        &mut self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Message> {
        self.expect(
            &format!("PUBLISH on {topic}"),
            timeout,
            |event| match event {
                Event::Publish(message) if message.topic == topic => Some(message.clone()),
                _ => None,
            },
        )
        .await
    }

    /// Waits for a PUBLISH on `topic` with exactly this payload.
    pub async fn expect_message(&mut self, topic: &str, payload: &[u8]) -> Result<Message> {
        let what = format!(
            "PUBLISH on {topic} with payload {:?}",
            String::from_utf8_lossy(payload)
        );
        self.expect(&what, crate::WAIT, |event| match event {
            Event::Publish(message) if message.topic == topic && message.payload == payload => {
                Some(message.clone())
            }
            _ => None,
        })
        .await
    }

    /// Waits until the connection is closed.
    pub async fn expect_disconnected(&mut self) -> Result<Closed> {
        self.expect_disconnected_within(crate::WAIT).await
    }

    pub async fn expect_disconnected_within(&mut self, timeout: Duration) -> Result<Closed> {
        if let Some(Event::Closed(closed)) = self.seen.last() {
            return Ok(closed.clone());
        }
        self.expect("connection close", timeout, |event| match event {
            Event::Closed(closed) => Some(closed.clone()),
            _ => None,
        })
        .await
    }

    /// Moves events that have already arrived into [`Self::seen`], without waiting.
    pub fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
    }

    /// Every event received so far (call [`Self::drain`] first to include the newest).
    pub fn seen(&self) -> &[Event] {
        &self.seen
    }

    /// Every PUBLISH received so far, after draining what has arrived.
    pub fn messages(&mut self) -> Vec<Message> {
        self.drain();
        self.seen
            .iter()
            .filter_map(|event| match event {
                Event::Publish(message) => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every PUBLISH received so far on `topic`.
    pub fn messages_on(&mut self, topic: &str) -> Vec<Message> {
        self.messages()
            .into_iter()
            .filter(|message| message.topic == topic)
            .collect()
    }
}

fn qos_v4(qos: u8) -> Result<rumqttc::QoS> {
    rumqttc::qos(qos).map_err(|e| anyhow::anyhow!("QoS {qos}: {e:?}"))
}

fn qos_v5(qos: u8) -> Result<rumqttc::v5::mqttbytes::QoS> {
    rumqttc::v5::mqttbytes::qos(qos).ok_or_else(|| anyhow::anyhow!("invalid QoS {qos}"))
}

async fn drive_v4(mut eventloop: rumqttc::EventLoop, tx: mpsc::UnboundedSender<Event>) {
    use rumqttc::{ConnectionError, Packet};
    loop {
        let event = match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(packet)) => match packet {
                Packet::ConnAck(ack) => Event::ConnAck {
                    session_present: ack.session_present,
                    properties: None,
                },
                Packet::Publish(publish) => Event::Publish(Message {
                    topic: publish.topic,
                    payload: publish.payload.to_vec(),
                    qos: publish.qos as u8,
                    retain: publish.retain,
                    pkid: publish.pkid,
                    properties: None,
                }),
                Packet::PubAck(ack) => Event::PubAck { pkid: ack.pkid },
                Packet::PubComp(comp) => Event::PubComp { pkid: comp.pkid },
                Packet::SubAck(ack) => Event::SubAck {
                    pkid: ack.pkid,
                    codes: ack
                        .return_codes
                        .iter()
                        .map(|code| match code {
                            rumqttc::SubscribeReasonCode::Success(qos) => *qos as u8,
                            rumqttc::SubscribeReasonCode::Failure => 0x80,
                        })
                        .collect(),
                },
                _ => continue,
            },
            Ok(rumqttc::Event::Outgoing(_)) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => {
                let _ = tx.send(Event::Refused { code: code as u8 });
                return;
            }
            Err(e) => {
                let _ = tx.send(Event::Closed(Closed {
                    reason: e.to_string(),
                    disconnect_reason: None,
                }));
                return;
            }
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}

async fn drive_v5(mut eventloop: rumqttc::v5::EventLoop, tx: mpsc::UnboundedSender<Event>) {
    use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
    use rumqttc::v5::{ConnectionError, StateError};
    loop {
        let event = match eventloop.poll().await {
            Ok(rumqttc::v5::Event::Incoming(packet)) => match packet {
                Packet::ConnAck(ack) => Event::ConnAck {
                    session_present: ack.session_present,
                    properties: ack.properties,
                },
                Packet::Publish(publish) => Event::Publish(Message {
                    topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                    payload: publish.payload.to_vec(),
                    qos: publish.qos as u8,
                    retain: publish.retain,
                    pkid: publish.pkid,
                    properties: publish.properties,
                }),
                Packet::PubAck(ack) => Event::PubAck { pkid: ack.pkid },
                Packet::PubComp(comp) => Event::PubComp { pkid: comp.pkid },
                Packet::SubAck(ack) => Event::SubAck {
                    pkid: ack.pkid,
                    codes: ack
                        .return_codes
                        .iter()
                        .map(|code| match code {
                            SubscribeReasonCode::Success(qos) => *qos as u8,
                            SubscribeReasonCode::Failure | SubscribeReasonCode::Unspecified => 0x80,
                            SubscribeReasonCode::ImplementationSpecific => 0x83,
                            SubscribeReasonCode::NotAuthorized => 0x87,
                            SubscribeReasonCode::TopicFilterInvalid => 0x8F,
                            SubscribeReasonCode::PkidInUse => 0x91,
                            SubscribeReasonCode::QuotaExceeded => 0x97,
                            SubscribeReasonCode::SharedSubscriptionsNotSupported => 0x9E,
                            SubscribeReasonCode::SubscriptionIdNotSupported => 0xA1,
                            SubscribeReasonCode::WildcardSubscriptionsNotSupported => 0xA2,
                        })
                        .collect(),
                },
                _ => continue,
            },
            Ok(rumqttc::v5::Event::Outgoing(_)) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => {
                let _ = tx.send(Event::Refused {
                    code: connack_code_v5(code),
                });
                return;
            }
            Err(e) => {
                let disconnect_reason = match &e {
                    ConnectionError::MqttState(StateError::ServerDisconnect {
                        reason_code,
                        ..
                    }) => Some(*reason_code as u8),
                    _ => None,
                };
                let _ = tx.send(Event::Closed(Closed {
                    reason: e.to_string(),
                    disconnect_reason,
                }));
                return;
            }
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}

/// The MQTT 5 reason code byte of a CONNACK.
fn connack_code_v5(code: rumqttc::v5::mqttbytes::v5::ConnectReturnCode) -> u8 {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
    match code {
        C::Success => 0x00,
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => 0x84,
        C::BadClientId | C::ClientIdentifierNotValid => 0x85,
        C::ServiceUnavailable | C::ServerUnavailable => 0x88,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::BadAuthenticationMethod => 0x8C,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9A,
        C::QoSNotSupported => 0x9B,
        C::UseAnotherServer => 0x9C,
        C::ServerMoved => 0x9D,
        C::ConnectionRateExceeded => 0x9F,
    }
}
