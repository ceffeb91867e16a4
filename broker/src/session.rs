//! One authenticated client from CONNECT to the end: the authorization front of the router.
//!
//! Reads the CONNECT, checks that the client id is the certificate's id (an empty one becomes
//! the certificate's id, returned as Assigned Client Identifier in MQTT 5) and that the last
//! will is a topic the client may publish, then attaches the client to rumqttd's router
//! through an in-process link, with its MQTT 5 session expiry, Receive Maximum and Maximum
//! Packet Size. Every packet from the client passes through here: topic aliases are resolved,
//! PUBLISH topics and SUBSCRIBE filters are checked against the role's rules before the router
//! sees them, so no path into the router bypasses authorization. Packets from the router are
//! written back to the client. The broker itself publishes the client's retained status and
//! its last will (after the will delay, unless the client comes back first).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectProperties,
    DisconnectReasonCode, Filter, LastWill, LastWillProperties, Packet, PingResp,
    PublishProperties, QoS, SubAck, Subscribe, SubscribeReasonCode,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::acl::{ClientRules, PayloadFormat};
use crate::connection::{Connection, ReadError, Version};
use crate::identity::Identity;
use crate::publisher::Message;
use crate::registry::{StopReason, WillFate};
use crate::{expiry, payload};
use crate::{LinkOptions, Shared};

/// Notifications written to the client in one go before flushing.
const WRITE_BATCH: usize = 256;
/// How long attaching to the router may take before the client is told to come back later.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new session waits for an older one of the same id to leave.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// Bytes of a client's publishes the router may hold back (its log is full of messages a
/// durable subscriber has not read) before the session stops reading from the client.
const HELD_READ_LIMIT: usize = 64 * 1024;
/// How often a session that stopped reading looks whether the router has taken them.
const HELD_POLL: Duration = Duration::from_millis(5);

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT: no will.
    ClientDisconnected,
    /// The client sent DISCONNECT asking for its will (MQTT 5 reason code 0x04).
    ClientDisconnectedWithWill,
    /// The connection failed or timed out.
    Network(ReadError),
    /// The client broke a rule or the protocol and was disconnected.
    Refused(String),
    /// Told to stop: taken over or revoked.
    Stopped(StopReason),
    /// The router dropped the connection.
    RouterClosed,
}

/// Serves one client whose TLS handshake succeeded, until it goes away.
pub async fn run<S>(stream: S, identity: Identity, peer: SocketAddr, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Connecting takes more room than being connected (the CONNECT, the attach, the
    // refusals): it runs on the heap, so that only the session stays in the task for as long
    // as the connection lasts; so does the end.
    let Some(opened) = Box::pin(open(stream, identity, peer, shared.clone())).await else {
        return;
    };
    let Opened {
        mut session,
        mut registration,
        will,
        will_props,
        client_id,
        written,
    } = opened;
    let end = match written {
        Ok(()) => session.serve(&mut registration).await,
        Err(e) => End::Network(ReadError::Io(e)),
    };
    Box::pin(session.close(end, will, will_props, &client_id, registration.generation)).await;
    registration.finish();
    shared
        .registry
        .unregister(&client_id, registration.generation);
    metrics::gauge!("broker_sessions").decrement(1.0);
}

/// A client connected: its session, and what its end needs.
struct Opened<S> {
    session: Session<S>,
    registration: crate::registry::Registration,
    will: Option<LastWill>,
    will_props: Option<LastWillProperties>,
    client_id: String,
    /// Whether the CONNACK went out.
    written: std::io::Result<()>,
}

/// From the CONNECT to the CONNACK: checks, registration, attaching to the router. `None`
/// if the connection was refused or failed.
async fn open<S>(
    stream: S,
    identity: Identity,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Option<Opened<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let write_timeout = Duration::from_millis(shared.config.mqtt.write_timeout_ms);
    let mut conn = Connection::new(stream, shared.config.mqtt.max_packet_size, write_timeout);
    let connect_timeout = Duration::from_millis(shared.config.mqtt.connect_timeout_ms);
    let first = conn
        .read_packet(Some(Instant::now() + connect_timeout))
        .await;
    let Ok(Packet::Connect(connect, props, will, will_props, _login)) = first else {
        let reason = match first {
            Err(ReadError::Timeout) => "connect_timeout",
            _ => "no_connect",
        };
        count_refused_connection(reason);
        info!(%peer, id = identity.id, reason, "connection closed before a valid CONNECT");
        return None;
    };

    let Some(rules) = shared.config.acl.get(&identity.role) else {
        refuse_connect(
            conn,
            &identity,
            "unknown_role",
            "role has no rules",
            ConnectReturnCode::NotAuthorized,
        )
        .await;
        return None;
    };
    let version = conn.version().unwrap_or(Version::V311);

    // An empty client id is the certificate's id. MQTT 3.1.1 allows it only with a clean
    // session (3.1.3-7); MQTT 5 returns it as the Assigned Client Identifier.
    let assigned = connect.client_id.is_empty();
    let client_id = if assigned {
        if version == Version::V311 && !connect.clean_session {
            refuse_connect(
                conn,
                &identity,
                "client_id_empty",
                "empty client id without a clean session",
                ConnectReturnCode::ClientIdentifierNotValid,
            )
            .await;
            return None;
        }
        identity.id.clone()
    } else if rules.accepts_client_id(&identity.id, &connect.client_id) {
        connect.client_id.clone()
    } else {
        warn!(
            certificate_id = identity.id,
            client_id = connect.client_id,
            "refused: client id differs from the certificate"
        );
        refuse_connect(
            conn,
            &identity,
            "client_id_mismatch",
            "client id mismatch",
            ConnectReturnCode::NotAuthorized,
        )
        .await;
        return None;
    };

    // The keep-alive cap: MQTT 5 clients are told (Server Keep Alive), MQTT 3.1.1 clients
    // cannot be and are refused if they ask for more.
    let cap = shared.config.mqtt.max_keep_alive_s;
    let mut keep_alive_s = connect.keep_alive;
    let mut server_keep_alive = None;
    if cap > 0 && (keep_alive_s == 0 || keep_alive_s > cap) {
        if version == Version::V5 {
            keep_alive_s = cap;
            server_keep_alive = Some(cap);
        } else if keep_alive_s > cap {
            refuse_connect(
                conn,
                &identity,
                "keep_alive_too_long",
                "keep-alive longer than mqtt.max_keep_alive_s",
                ConnectReturnCode::ClientIdentifierNotValid,
            )
            .await;
            return None;
        }
    }

    // How long the session outlives the connection, and what the client can take.
    let session_expiry = match version {
        Version::V311 if connect.clean_session => 0,
        Version::V311 => u32::MAX,
        Version::V5 => props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0),
    };
    let options = LinkOptions {
        client_id: client_id.clone(),
        clean_start: connect.clean_session,
        session_expiry,
        receive_maximum: props
            .as_ref()
            .and_then(|p| p.receive_maximum)
            .unwrap_or(u16::MAX),
        max_packet_size: props
            .as_ref()
            .and_then(|p| p.max_packet_size)
            .and_then(|max| usize::try_from(max).ok()),
    };

    let will = match will {
        Some(will) => match std::str::from_utf8(&will.topic) {
            Ok(topic) if rules.may_publish(&identity.id, topic) => Some(will),
            _ => {
                refusal("will", &identity, &String::from_utf8_lossy(&will.topic));
                refuse_connect(
                    conn,
                    &identity,
                    "will_refused",
                    "last will refused",
                    ConnectReturnCode::NotAuthorized,
                )
                .await;
                return None;
            }
        },
        None => None,
    };

    let registration = shared
        .registry
        .register(
            &client_id,
            &identity.serial,
            TAKEOVER_WAIT,
            connect.clean_session,
        )
        .await;

    let links = shared.links.clone();
    let client_max_packet_size = options.max_packet_size;
    let attach = tokio::task::spawn_blocking(move || links(&options));
    let built = match tokio::time::timeout(ATTACH_TIMEOUT, attach).await {
        Ok(built) => built,
        Err(_) => {
            warn!(id = identity.id, "the router did not answer");
            shared
                .registry
                .unregister(&client_id, registration.generation);
            refuse_connect(
                conn,
                &identity,
                "router_full",
                "server unavailable",
                ConnectReturnCode::ServiceUnavailable,
            )
            .await;
            return None;
        }
    };
    let (link_tx, link_rx, connack) = match built {
        Ok(Ok(link)) => link,
        Ok(Err(e)) => {
            warn!(id = identity.id, error = %e, "router refused the connection");
            shared
                .registry
                .unregister(&client_id, registration.generation);
            refuse_connect(
                conn,
                &identity,
                "router_full",
                "server unavailable",
                ConnectReturnCode::ServiceUnavailable,
            )
            .await;
            return None;
        }
        Err(e) => {
            warn!(id = identity.id, error = %e, "attaching to the router failed");
            shared
                .registry
                .unregister(&client_id, registration.generation);
            return None;
        }
    };

    // The CONNACK's MQTT 5 properties are the front's: the router's topic-alias offer is
    // replaced by the aliases the front resolves itself.
    let Some(Packet::ConnAck(ack, router_props)) = Option::<Packet>::from(connack) else {
        warn!(id = identity.id, "router answered without a CONNACK");
        return None;
    };
    let max_topic_alias = shared.config.mqtt.max_topic_alias;
    let receive_maximum = shared.config.mqtt.receive_maximum;
    let props = match version {
        Version::V311 => None,
        Version::V5 => Some(ConnAckProperties {
            topic_alias_max: (max_topic_alias > 0).then_some(max_topic_alias),
            max_packet_size: u32::try_from(shared.config.mqtt.max_packet_size).ok(),
            assigned_client_identifier: assigned.then(|| client_id.clone()),
            server_keep_alive,
            receive_max: Some(receive_maximum),
            ..router_props.unwrap_or_default()
        }),
    };
    metrics::gauge!("broker_sessions").increment(1.0);
    info!(
        id = identity.id,
        client_id,
        role = identity.role,
        %peer,
        clean_session = connect.clean_session,
        session_expiry,
        session_present = ack.session_present,
        "connected"
    );

    let publishes_status = shared.config.status.roles.contains(&identity.role);
    let keep_alive =
        (keep_alive_s > 0).then(|| Duration::from_millis(u64::from(keep_alive_s) * 1500));
    // A client that reads nothing for its keep-alive time is as gone as one that sends nothing.
    if let Some(keep_alive) = keep_alive {
        conn.set_write_timeout(keep_alive.min(write_timeout));
    }
    let mut session = Session {
        conn,
        link_tx,
        link_rx,
        rules: rules.for_client(&identity.id),
        identity,
        shared: shared.clone(),
        pending_subacks: HashMap::new(),
        keep_alive,
        publishes_status,
        counters: Counters::new(),
        version,
        aliases: HashMap::new(),
        max_topic_alias,
        connect_session_expiry: session_expiry,
        session_expiry,
        json_payloads: rules.payload == PayloadFormat::Json,
        inbound_in_flight: 0,
        receive_maximum: u32::from(receive_maximum),
        max_packet_size: client_max_packet_size,
        outbound_in_flight: 0,
    };
    let written = session.conn.write_packet(Packet::ConnAck(ack, props)).await;
    if session.publishes_status {
        shared
            .publisher
            .status(&session.identity.id, "online", unix_ms());
    }
    Some(Opened {
        session,
        registration,
        will,
        will_props,
        client_id,
        written,
    })
}

fn count_refused_connection(reason: &'static str) {
    metrics::counter!("broker_connect_refusals_total", "reason" => reason).increment(1);
}

fn refusal(kind: &'static str, identity: &Identity, topic: &str) {
    warn!(
        id = identity.id,
        role = identity.role,
        topic,
        kind,
        "refused: not authorized"
    );
    metrics::counter!("broker_refusals_total", "kind" => kind, "role" => identity.role.clone())
        .increment(1);
}

/// Answers the CONNECT with a refusal and closes.
async fn refuse_connect<S>(
    mut conn: Connection<S>,
    identity: &Identity,
    reason: &'static str,
    what: &str,
    code: ConnectReturnCode,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    count_refused_connection(reason);
    info!(
        id = identity.id,
        role = identity.role,
        reason = what,
        "CONNECT refused"
    );
    let ack = ConnAck {
        session_present: false,
        code,
    };
    let _ = conn.write_packet(Packet::ConnAck(ack, None)).await;
    conn.shutdown().await;
}

struct Session<S> {
    conn: Connection<S>,
    link_tx: LinkTx,
    link_rx: LinkRx,
    identity: Identity,
    rules: ClientRules,
    shared: Arc<Shared>,
    /// For SUBSCRIBEs with refused filters: the refusal codes by position, keyed by packet
    /// id, merged into the router's SUBACK for the allowed ones.
    pending_subacks: HashMap<u16, Vec<Option<SubscribeReasonCode>>>,
    keep_alive: Option<Duration>,
    publishes_status: bool,
    counters: Counters,
    version: Version,
    /// The client's topic aliases (MQTT 5), for this connection only.
    aliases: HashMap<u16, Bytes>,
    max_topic_alias: u16,
    /// The session expiry the client connected with, and the current one (its DISCONNECT
    /// may change it).
    connect_session_expiry: u32,
    session_expiry: u32,
    /// The role gets taxi payloads as JSON.
    json_payloads: bool,
    /// QoS 1 and 2 publishes of the client not yet acknowledged, and how many it may have
    /// (the Receive Maximum announced to MQTT 5 clients).
    inbound_in_flight: u32,
    receive_maximum: u32,
    /// The client's Maximum Packet Size (MQTT 5).
    max_packet_size: Option<usize>,
    /// QoS 1 and 2 messages written to the client and not yet acknowledged by it: while
    /// there are any, the client is read even if the router holds its publishes, so that the
    /// acknowledgements the router may be waiting for get through.
    outbound_in_flight: u32,
}

/// Per-message counters, looked up once per session.
struct Counters {
    messages_in: metrics::Counter,
    messages_out: metrics::Counter,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            messages_in: metrics::counter!("broker_messages_in_total"),
            messages_out: metrics::counter!("broker_messages_out_total"),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    async fn serve(&mut self, registration: &mut crate::registry::Registration) -> End {
        // Made once and kept for the whole session: a future made anew for every packet
        // registers and unregisters itself every time.
        let stopped = registration.stopped();
        tokio::pin!(stopped);
        // The keep-alive: one timer, moved only when it fires before the deadline (reads
        // move the deadline, not the timer).
        let mut last_read = Instant::now();
        let keep_alive = tokio::time::sleep_until(
            last_read + self.keep_alive.unwrap_or(Duration::from_secs(86_400)),
        );
        tokio::pin!(keep_alive);
        let mut paused = false;
        loop {
            // Back-pressure: while the router holds many of this client's publishes (a log
            // they go to is full of messages a durable subscriber has not read), the client
            // is not read, unless it owes acknowledgements. The keep-alive restarts after.
            let hold = self.outbound_in_flight == 0 && self.link_tx.held_bytes() > HELD_READ_LIMIT;
            if hold != paused {
                paused = hold;
                if paused {
                    metrics::counter!("broker_backpressure_read_pauses_total").increment(1);
                } else {
                    last_read = Instant::now();
                }
            }
            tokio::select! {
                biased;
                reason = &mut stopped => return End::Stopped(reason),
                () = &mut keep_alive, if self.keep_alive.is_some() && !paused => {
                    let deadline = last_read + self.keep_alive.unwrap_or_default();
                    if Instant::now() >= deadline {
                        return End::Network(ReadError::Timeout);
                    }
                    keep_alive.as_mut().reset(deadline);
                }
                () = async { tokio::time::sleep(HELD_POLL).await }, if paused => {}
                read = self.conn.read_packet(None), if !paused => {
                    last_read = Instant::now();
                    let packet = match read {
                        Ok(packet) => packet,
                        Err(e) => return End::Network(e),
                    };
                    tokio::select! {
                        biased;
                        reason = &mut stopped => return End::Stopped(reason),
                        // On the heap while it runs: the task keeps only what an idle
                        // connection needs.
                        handled = Box::pin(self.handle_client_packets(packet)) => {
                            if let Err(end) = handled {
                                return end;
                            }
                        }
                    }
                }
                notification = self.link_rx.next() => {
                    let notification = match notification {
                        Ok(Some(notification)) => notification,
                        Ok(None) => continue,
                        Err(_) => return End::RouterClosed,
                    };
                    tokio::select! {
                        biased;
                        reason = &mut stopped => return End::Stopped(reason),
                        handled = Box::pin(self.handle_router_notifications(notification)) => {
                            if let Err(end) = handled {
                                return end;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Checks and forwards one packet from the client and any others already buffered.
    async fn handle_client_packets(&mut self, first: Packet) -> Result<(), End> {
        let mut forward = Vec::new();
        let mut outcome = Ok(());
        let mut next = Some(first);
        while let Some(packet) = next.take() {
            if let Err(end) = self.check_client_packet(packet, &mut forward) {
                outcome = Err(end);
                break;
            }
            match self.conn.parse_buffered() {
                Ok(packet) => next = packet,
                Err(e) => {
                    outcome = Err(End::Network(e));
                    break;
                }
            }
        }
        // What was allowed before a refusal still reaches the router, in order.
        self.forward(forward).await?;
        if let Err(e) = self.conn.flush().await {
            return Err(End::Network(ReadError::Io(e)));
        }
        outcome
    }

    /// Decides about one client packet: queued for the router, answered here, or refused.
    fn check_client_packet(
        &mut self,
        packet: Packet,
        forward: &mut Vec<Packet>,
    ) -> Result<(), End> {
        match packet {
            Packet::Publish(mut publish, mut props) => {
                // Receive Maximum (MQTT 5): QoS 1 and 2 publishes not yet acknowledged.
                if publish.qos != QoS::AtMostOnce && self.version == Version::V5 {
                    self.inbound_in_flight += 1;
                    if self.inbound_in_flight > self.receive_maximum {
                        self.send_disconnect(DisconnectReasonCode::ReceiveMaximumExceeded);
                        return Err(End::Refused("receive maximum exceeded".to_owned()));
                    }
                }
                // A topic alias is resolved here, so that the resolved topic is the one
                // authorized; the router never sees aliases.
                if let Some(alias) = props.as_mut().and_then(|p| p.topic_alias.take()) {
                    self.resolve_alias(alias, &mut publish.topic)?;
                }
                let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
                if !self.rules.may_publish(topic) {
                    refusal("publish", &self.identity, topic);
                    self.send_disconnect(DisconnectReasonCode::NotAuthorized);
                    return Err(End::Refused(format!("publish to {topic:?}")));
                }
                self.counters.messages_in.increment(1);
                let props = expiry::apply(topic, &publish.payload, props, unix_ms());
                forward.push(Packet::Publish(publish, props));
            }
            Packet::Subscribe(subscribe, props) => {
                let mut codes = Vec::with_capacity(subscribe.filters.len());
                let mut allowed: Vec<Filter> = Vec::new();
                for filter in subscribe.filters {
                    if self.rules.may_subscribe(&filter.path) {
                        codes.push(None);
                        allowed.push(filter);
                    } else {
                        refusal("subscribe", &self.identity, &filter.path);
                        codes.push(Some(self.refused_subscription_code()));
                    }
                }
                if allowed.is_empty() {
                    let suback = SubAck {
                        pkid: subscribe.pkid,
                        return_codes: codes.into_iter().flatten().collect(),
                    };
                    self.buffer(Packet::SubAck(suback, None))?;
                } else {
                    if codes.iter().any(Option::is_some) {
                        self.pending_subacks.insert(subscribe.pkid, codes);
                    }
                    let subscribe = Subscribe {
                        pkid: subscribe.pkid,
                        filters: allowed,
                    };
                    forward.push(Packet::Subscribe(subscribe, props));
                }
            }
            Packet::PingReq(_) => self.buffer(Packet::PingResp(PingResp))?,
            Packet::Disconnect(disconnect, props) => {
                // MQTT 5: the client may change its session expiry as it leaves, but not
                // from none to some (3.14.2.2.2).
                if let Some(expiry) = props.and_then(|p| p.session_expiry_interval) {
                    if self.connect_session_expiry > 0 {
                        self.session_expiry = expiry;
                    }
                }
                if disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage {
                    return Err(End::ClientDisconnectedWithWill);
                }
                return Err(End::ClientDisconnected);
            }
            packet @ (Packet::PubAck(..) | Packet::PubComp(..)) => {
                self.outbound_in_flight = self.outbound_in_flight.saturating_sub(1);
                forward.push(packet)
            }
            packet @ (Packet::PubRec(..) | Packet::PubRel(..) | Packet::Unsubscribe(..)) => {
                forward.push(packet)
            }
            other => {
                self.send_disconnect(DisconnectReasonCode::ProtocolError);
                return Err(End::Refused(format!("unexpected packet {other:?}")));
            }
        }
        Ok(())
    }

    /// Resolves a client's topic alias (MQTT 5 3.3.2.3.4): a publish with a topic and an alias
    /// sets the alias, one with an empty topic uses it.
    fn resolve_alias(&mut self, alias: u16, topic: &mut Bytes) -> Result<(), End> {
        if alias == 0 || alias > self.max_topic_alias {
            self.send_disconnect(DisconnectReasonCode::TopicAliasInvalid);
            return Err(End::Refused(format!("topic alias {alias} out of range")));
        }
        if topic.is_empty() {
            let Some(known) = self.aliases.get(&alias) else {
                self.send_disconnect(DisconnectReasonCode::ProtocolError);
                return Err(End::Refused(format!("unknown topic alias {alias}")));
            };
            *topic = known.clone();
        } else {
            self.aliases.insert(alias, topic.clone());
        }
        Ok(())
    }

    fn refused_subscription_code(&self) -> SubscribeReasonCode {
        match self.conn.version() {
            Some(Version::V5) => SubscribeReasonCode::NotAuthorized,
            _ => SubscribeReasonCode::Failure,
        }
    }

    /// Tells an MQTT 5 client why it is being disconnected (MQTT 3.1.1 has no such packet).
    fn send_disconnect(&mut self, reason_code: DisconnectReasonCode) {
        if self.conn.version() == Some(Version::V5) {
            let _ = self.conn.buffer_packet(disconnect_packet(reason_code));
        }
    }

    fn buffer(&mut self, packet: Packet) -> Result<(), End> {
        self.conn
            .buffer_packet(packet)
            .map_err(|e| End::Network(ReadError::Io(e)))
    }

    /// Hands packets to the router, waking it at most once for the whole batch.
    async fn forward(&mut self, packets: Vec<Packet>) -> Result<(), End> {
        if packets.is_empty() {
            return Ok(());
        }
        self.link_tx
            .send_all(packets)
            .await
            .map(|_| ())
            .map_err(|_| End::RouterClosed)
    }

    /// Writes one notification from the router and any others already waiting.
    async fn handle_router_notifications(&mut self, first: Notification) -> Result<(), End> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(notification) = next.take() {
            self.write_notification(notification).await?;
            written += 1;
            if written >= WRITE_BATCH {
                break;
            }
            next = self.link_rx.try_next().map_err(|_| End::RouterClosed)?;
        }
        self.conn
            .flush()
            .await
            .map_err(|e| End::Network(ReadError::Io(e)))
    }

    async fn write_notification(&mut self, notification: Notification) -> Result<(), End> {
        match notification {
            Notification::Unschedule => {
                return self.link_rx.wake().await.map_err(|_| End::RouterClosed);
            }
            Notification::Disconnect(disconnect, _) => {
                if self.conn.version() == Some(Version::V5) {
                    self.buffer(disconnect_packet(disconnect.reason_code))?;
                }
                let _ = self.conn.flush().await;
                return Err(End::RouterClosed);
            }
            _ => {}
        }
        match Option::<Packet>::from(notification) {
            Some(Packet::SubAck(mut suback, props)) => {
                if let Some(codes) = self.pending_subacks.remove(&suback.pkid) {
                    let mut granted = suback.return_codes.into_iter();
                    suback.return_codes = codes
                        .into_iter()
                        .map(|code| {
                            code.or_else(|| granted.next())
                                .unwrap_or(SubscribeReasonCode::Unspecified)
                        })
                        .collect();
                }
                self.buffer(Packet::SubAck(suback, props))
            }
            Some(Packet::Publish(mut publish, properties)) => {
                self.counters.messages_out.increment(1);
                if publish.qos != QoS::AtMostOnce {
                    self.outbound_in_flight += 1;
                }
                if self.json_payloads {
                    if let Some(json) = payload::to_json(&publish.topic, &publish.payload) {
                        let original = std::mem::replace(&mut publish.payload, Bytes::from(json));
                        // The router checked the size of the message as published; a JSON
                        // copy too large for the client goes as published.
                        let size =
                            rumqttd::protocol::v5::publish_packet_size(&publish, &properties);
                        if self.max_packet_size.is_some_and(|max| size > max) {
                            publish.payload = original;
                        }
                    }
                }
                self.buffer(Packet::Publish(publish, properties))
            }
            Some(packet) => {
                // The end of an exchange the client started (QoS 1: PUBACK, QoS 2: PUBCOMP).
                if matches!(packet, Packet::PubAck(..) | Packet::PubComp(..)) {
                    self.inbound_in_flight = self.inbound_in_flight.saturating_sub(1);
                }
                self.buffer(packet)
            }
            None => Ok(()),
        }
    }

    /// Ends the session: leaving the router (with the session expiry as it stands), the will
    /// if it ended badly and the offline status, both after the will delay if there is one.
    async fn close(
        &mut self,
        end: End,
        will: Option<LastWill>,
        will_props: Option<LastWillProperties>,
        client_id: &str,
        generation: u64,
    ) {
        let id = self.identity.id.clone();
        match &end {
            End::ClientDisconnected => debug!(id, "disconnected by the client"),
            End::ClientDisconnectedWithWill => {
                debug!(id, "disconnected by the client, with its will")
            }
            End::Network(e) => info!(id, reason = %e, "connection lost"),
            End::Refused(why) => warn!(id, why, "disconnected: refused"),
            End::Stopped(StopReason::TakenOver) => info!(id, "replaced by a newer connection"),
            End::Stopped(StopReason::Revoked) => warn!(id, "disconnected: certificate revoked"),
            End::RouterClosed => info!(id, "dropped by the router"),
        }
        if matches!(end, End::RouterClosed) {
            // The router has forgotten this connection already.
            return;
        }
        match &end {
            End::Network(ReadError::TooLarge(_)) => {
                self.send_disconnect(DisconnectReasonCode::PacketTooLarge)
            }
            End::Stopped(StopReason::TakenOver) => {
                self.send_disconnect(DisconnectReasonCode::SessionTakenOver)
            }
            _ => {}
        }

        let properties = (self.version == Version::V5).then(|| DisconnectProperties {
            session_expiry_interval: Some(self.session_expiry),
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        });
        let _ = self
            .forward(vec![Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                properties,
            )])
            .await;
        let _ = self.conn.flush().await;
        self.conn.shutdown().await;

        let will = will
            .filter(|_| !matches!(end, End::ClientDisconnected))
            .map(|will| will_message(will, will_props.as_ref()));
        let offline = (self.publishes_status
            && self.shared.registry.is_current(client_id, generation))
        .then_some(id);
        // The will waits for its delay, but not beyond the session (MQTT 5 3.1.3.2.2); so does
        // the offline status, so that a short loss of network does not show.
        let delay = will_props
            .as_ref()
            .and_then(|props| props.delay_interval)
            .filter(|_| will.is_some())
            .unwrap_or(0)
            .min(self.session_expiry);
        if delay == 0 {
            if let Some(will) = will {
                self.shared.publisher.publish(will);
            }
            if let Some(id) = offline {
                self.shared.publisher.status(&id, "offline", unix_ms());
            }
        } else if !matches!(end, End::Stopped(StopReason::TakenOver)) {
            // (Taken over: the client is back already, its will is void.)
            defer_will(
                self.shared.clone(),
                client_id.to_owned(),
                Duration::from_secs(u64::from(delay)),
                will,
                offline,
            );
        }
    }
}

/// A last will as the message it becomes, with its properties (MQTT 5 3.1.3.2).
fn will_message(will: LastWill, props: Option<&LastWillProperties>) -> Message {
    let properties = props.map(|props| PublishProperties {
        payload_format_indicator: props.payload_format_indicator,
        message_expiry_interval: props.message_expiry_interval,
        response_topic: props.response_topic.clone(),
        correlation_data: props.correlation_data.clone(),
        user_properties: props.user_properties.clone(),
        content_type: props.content_type.clone(),
        ..Default::default()
    });
    let topic = String::from_utf8_lossy(&will.topic).into_owned();
    let properties = expiry::apply(&topic, &will.message, properties, unix_ms());
    Message {
        topic,
        payload: will.message.to_vec(),
        qos: will.qos,
        retain: will.retain,
        properties,
    }
}

/// Publishes a will (and the offline status) after `delay`, unless a connection with the same
/// client id comes first: then the will is dropped, or, if that connection starts a clean
/// session (which ends the old one), published at once without the status.
fn defer_will(
    shared: Arc<Shared>,
    client_id: String,
    delay: Duration,
    will: Option<Message>,
    offline: Option<String>,
) {
    let token = shared.registry.next_token();
    let mut fate = shared.registry.defer_will(&client_id, token);
    tokio::spawn(async move {
        let decided = tokio::select! {
            _ = tokio::time::sleep(delay) => None,
            fate = &mut fate => Some(fate.unwrap_or(WillFate::Cancelled)),
        };
        let (publish_will, publish_status) = match decided {
            Some(WillFate::Cancelled) => (false, false),
            Some(WillFate::PublishNow) => (true, false),
            // The delay is over, unless a new connection took the will in the meantime.
            None if shared.registry.will_done(&client_id, token) => (true, true),
            None => match fate.await {
                Ok(WillFate::PublishNow) => (true, false),
                _ => (false, false),
            },
        };
        if publish_will {
            if let Some(will) = will {
                shared.publisher.publish(will);
            }
        }
        if let (true, Some(id)) = (publish_status, offline) {
            shared.publisher.status(&id, "offline", unix_ms());
        }
    });
}

/// An MQTT 5 DISCONNECT with a human-readable reason.
fn disconnect_packet(reason_code: DisconnectReasonCode) -> Packet {
    let reason = match reason_code {
        DisconnectReasonCode::NotAuthorized => "not authorized",
        DisconnectReasonCode::ProtocolError => "protocol error",
        DisconnectReasonCode::PacketTooLarge => "packet too large",
        DisconnectReasonCode::TopicAliasInvalid => "topic alias invalid",
        DisconnectReasonCode::SessionTakenOver => "session taken over",
        DisconnectReasonCode::ReceiveMaximumExceeded => "receive maximum exceeded",
        _ => "disconnected by the server",
    };
    Packet::Disconnect(
        Disconnect { reason_code },
        Some(DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(reason.to_owned()),
            user_properties: Vec::new(),
            server_reference: None,
        }),
    )
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
