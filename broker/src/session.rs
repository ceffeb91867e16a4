//! One authenticated client from CONNECT to the end: the authorization front of the router.
//!
//! Reads the CONNECT, checks that the client id is the certificate's id and that the last
//! will is a topic the client may publish, then attaches the client to rumqttd's router
//! through an in-process link. Every packet from the client passes through here: PUBLISH
//! topics and SUBSCRIBE filters are checked against the role's rules before the router sees
//! them, so no path into the router bypasses authorization. Packets from the router are
//! written back to the client. The broker itself publishes the client's retained status and
//! its last will.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectProperties, DisconnectReasonCode, Filter,
    LastWill, Packet, PingResp, Publish, SubAck, Subscribe, SubscribeReasonCode,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::acl::ClientRules;
use crate::connection::{Connection, ReadError, Version};
use crate::expiry;
use crate::identity::Identity;
use crate::registry::StopReason;
use crate::Shared;

/// Notifications written to the client in one go before flushing.
const WRITE_BATCH: usize = 256;
/// How long attaching to the router may take before the client is told to come back later.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new session waits for an older one of the same id to leave.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The client sent DISCONNECT: no will.
    ClientDisconnected,
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
    let write_timeout = Duration::from_millis(shared.config.mqtt.write_timeout_ms);
    let mut conn = Connection::new(stream, shared.config.mqtt.max_packet_size, write_timeout);
    let connect_timeout = Duration::from_millis(shared.config.mqtt.connect_timeout_ms);
    let first = conn
        .read_packet(Some(Instant::now() + connect_timeout))
        .await;
    let Ok(Packet::Connect(connect, _props, will, _will_props, _login)) = first else {
        let reason = match first {
            Err(ReadError::Timeout) => "connect_timeout",
            _ => "no_connect",
        };
        count_refused_connection(reason);
        info!(%peer, id = identity.id, reason, "connection closed before a valid CONNECT");
        return;
    };

    let Some(rules) = shared.config.acl.get(&identity.role) else {
        return refuse_connect(conn, &identity, "unknown_role", "role has no rules").await;
    };
    if !rules.accepts_client_id(&identity.id, &connect.client_id) {
        warn!(
            certificate_id = identity.id,
            client_id = connect.client_id,
            "refused: client id differs from the certificate"
        );
        return refuse_connect(conn, &identity, "client_id_mismatch", "client id mismatch").await;
    }
    let will = match will {
        Some(will) => match std::str::from_utf8(&will.topic) {
            Ok(topic) if rules.may_publish(&identity.id, topic) => Some(will),
            _ => {
                refusal("will", &identity, &String::from_utf8_lossy(&will.topic));
                return refuse_connect(conn, &identity, "will_refused", "last will refused").await;
            }
        },
        None => None,
    };

    let registration = shared
        .registry
        .register(&connect.client_id, &identity.serial, TAKEOVER_WAIT)
        .await;

    let links = shared.links.clone();
    let client_id = connect.client_id.clone();
    let clean_session = connect.clean_session;
    let attach = tokio::task::spawn_blocking(move || links(&client_id, clean_session));
    let built = match tokio::time::timeout(ATTACH_TIMEOUT, attach).await {
        Ok(built) => built,
        Err(_) => {
            warn!(id = identity.id, "the router did not answer");
            shared
                .registry
                .unregister(&connect.client_id, registration.generation);
            return refuse_connect(conn, &identity, "router_full", "server unavailable").await;
        }
    };
    let (link_tx, link_rx, connack) = match built {
        Ok(Ok(link)) => link,
        Ok(Err(e)) => {
            warn!(id = identity.id, error = %e, "router refused the connection");
            shared
                .registry
                .unregister(&connect.client_id, registration.generation);
            return refuse_connect(conn, &identity, "router_full", "server unavailable").await;
        }
        Err(e) => {
            warn!(id = identity.id, error = %e, "attaching to the router failed");
            shared
                .registry
                .unregister(&connect.client_id, registration.generation);
            return;
        }
    };

    // The router's CONNACK offers topic aliases; aliases would hide the topic from
    // authorization, so the offer is withdrawn (absent means none, MQTT 5 3.2.2.3.8).
    let Some(Packet::ConnAck(ack, mut props)) = Option::<Packet>::from(connack) else {
        warn!(id = identity.id, "router answered without a CONNACK");
        return;
    };
    if let Some(props) = props.as_mut() {
        props.topic_alias_max = None;
        props.max_packet_size = u32::try_from(shared.config.mqtt.max_packet_size).ok();
    }
    if conn.version() == Some(Version::V311) {
        props = None;
    }

    metrics::gauge!("broker_sessions").increment(1.0);
    info!(
        id = identity.id,
        role = identity.role,
        %peer,
        clean_session,
        session_present = ack.session_present,
        "connected"
    );

    let publishes_status = shared.config.status.roles.contains(&identity.role);
    let keep_alive = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
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
    };
    let written = session.conn.write_packet(Packet::ConnAck(ack, props)).await;
    if session.publishes_status {
        session.publish_status("online").await;
    }
    let end = match written {
        Ok(()) => session.serve(&registration).await,
        Err(e) => End::Network(ReadError::Io(e)),
    };
    session
        .close(end, will, &connect.client_id, registration.generation)
        .await;
    registration.finish();
    shared
        .registry
        .unregister(&connect.client_id, registration.generation);
    metrics::gauge!("broker_sessions").decrement(1.0);
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

/// Answers the CONNECT with "not authorized" (or "server unavailable") and closes.
async fn refuse_connect<S>(
    mut conn: Connection<S>,
    identity: &Identity,
    reason: &'static str,
    what: &str,
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
    let code = if reason == "router_full" {
        ConnectReturnCode::ServiceUnavailable
    } else {
        ConnectReturnCode::NotAuthorized
    };
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
    async fn serve(&mut self, registration: &crate::registry::Registration) -> End {
        let mut last_read = Instant::now();
        loop {
            let deadline = self.keep_alive.map(|keep_alive| last_read + keep_alive);
            tokio::select! {
                biased;
                reason = registration.stopped() => return End::Stopped(reason),
                read = self.conn.read_packet(deadline) => {
                    last_read = Instant::now();
                    let packet = match read {
                        Ok(packet) => packet,
                        Err(e) => return End::Network(e),
                    };
                    tokio::select! {
                        biased;
                        reason = registration.stopped() => return End::Stopped(reason),
                        handled = self.handle_client_packets(packet) => {
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
                        reason = registration.stopped() => return End::Stopped(reason),
                        handled = self.handle_router_notifications(notification) => {
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
            Packet::Publish(publish, props) => {
                let aliased = props.as_ref().is_some_and(|p| p.topic_alias.is_some());
                let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
                if aliased || !self.rules.may_publish(topic) {
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
            Packet::Disconnect(..) => return Err(End::ClientDisconnected),
            packet @ (Packet::PubAck(..)
            | Packet::PubRec(..)
            | Packet::PubRel(..)
            | Packet::PubComp(..)
            | Packet::Unsubscribe(..)) => forward.push(packet),
            other => {
                self.send_disconnect(DisconnectReasonCode::ProtocolError);
                return Err(End::Refused(format!("unexpected packet {other:?}")));
            }
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

    /// Hands packets to the router, notifying it once for the whole batch.
    async fn forward(&mut self, mut packets: Vec<Packet>) -> Result<(), End> {
        let Some(last) = packets.pop() else {
            return Ok(());
        };
        self.link_tx.buffer().extend(packets);
        self.link_tx
            .send(last)
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
            next = match self.link_rx.next().now_or_never() {
                Some(Ok(notification)) => notification,
                Some(Err(_)) => return Err(End::RouterClosed),
                None => None,
            };
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
            Some(packet @ Packet::Publish(..)) => {
                self.counters.messages_out.increment(1);
                self.buffer(packet)
            }
            Some(packet) => self.buffer(packet),
            None => Ok(()),
        }
    }

    /// Publishes the retained `taxi/<id>/status` on the client's behalf.
    async fn publish_status(&mut self, state: &str) {
        let topic = format!("taxi/{}/status", self.identity.id);
        let payload = serde_json::json!({ "state": state, "at_ms": unix_ms() }).to_string();
        let _ = self
            .forward(vec![Packet::Publish(
                Publish::new(topic.into_bytes(), payload.into_bytes(), true),
                None,
            )])
            .await;
    }

    /// Ends the session: the will if it ended badly, the offline status, leaving the router.
    async fn close(&mut self, end: End, will: Option<LastWill>, client_id: &str, generation: u64) {
        let id = self.identity.id.clone();
        match &end {
            End::ClientDisconnected => debug!(id, "disconnected by the client"),
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
        let mut last = Vec::new();
        if let (Some(will), false) = (will, matches!(end, End::ClientDisconnected)) {
            last.push(Packet::Publish(
                Publish::new(will.topic, will.message, will.retain),
                None,
            ));
        }
        if self.publishes_status && self.shared.registry.is_current(client_id, generation) {
            let payload = serde_json::json!({ "state": "offline", "at_ms": unix_ms() });
            last.push(Packet::Publish(
                Publish::new(
                    format!("taxi/{id}/status").into_bytes(),
                    payload.to_string().into_bytes(),
                    true,
                ),
                None,
            ));
        }
        last.push(Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        ));
        let _ = self.forward(last).await;
        let _ = self.conn.flush().await;
        self.conn.shutdown().await;
    }
}

/// An MQTT 5 DISCONNECT with a human-readable reason.
fn disconnect_packet(reason_code: DisconnectReasonCode) -> Packet {
    let reason = match reason_code {
        DisconnectReasonCode::NotAuthorized => "not authorized",
        DisconnectReasonCode::ProtocolError => "protocol error",
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
