//! One simulated taxi: its own certificate and a persistent MQTT session (clean session off,
//! so that inbox messages sent while it is offline wait for it), positions along a random walk
//! ([`crate::motion`]), answers to every inbox message ([`inbox`]), tours with a running meter
//! ([`tour`], [`meter`]), and connection losses after which it comes back. What it does is
//! set by a [`Behaviour`].
//!
//! Two tasks per taxi: the connection task owns rumqttc's event loop and only polls it (so a
//! handshake is never cut short), the taxi task does everything else and publishes through
//! queues that are handed to the client only while connected: a message produced offline
//! (an answer, a tour event, positions up to a bound) goes out after the reconnect.

pub mod behaviour;
pub mod inbox;
pub mod meter;
pub mod tour;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::client;
use crate::measure;
use crate::motion::{Walker, BERLIN};
use crate::pki::Client;
pub use behaviour::Behaviour;
use behaviour::{happens, pick};
use inbox::{Answer, Inbox, Plan, Verdict};
use tour::{Change, Tours};

/// Requests queued inside the MQTT client before the taxi keeps them in its own queues.
const CLIENT_QUEUE: usize = 256;
/// Reconnect back-off after a failed connection.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a stopping taxi waits for its DISCONNECT to go out.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// The reason a driver on a tour (or on the way to a pickup) gives for rejecting an order.
pub const BUSY: &str = "busy";
/// The reason a free driver gives for rejecting an order.
pub const DECLINED: &str = "declined";

/// What one taxi, or a whole fleet sharing them, has done so far.
#[derive(Debug, Default)]
pub struct Counters {
    /// Taxis connected now.
    pub connected: AtomicI64,
    pub connects: AtomicU64,
    /// Connections lost on purpose (the taxi went offline) or by error.
    pub offline: AtomicU64,
    pub positions_sent: AtomicU64,
    /// Positions dropped because the offline buffer was full.
    pub positions_dropped: AtomicU64,
    /// Publishes of any kind acknowledged by the broker.
    pub acked: AtomicU64,
    /// Inbox messages seen for the first time, and repeats of known ones.
    pub inbox_new: AtomicU64,
    pub inbox_repeats: AtomicU64,
    /// Inbox payloads that could not be read (logged and skipped).
    pub inbox_invalid: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    /// Rejected because the message was void (included in `rejected`).
    pub expired: AtomicU64,
    pub tours_started: AtomicU64,
    pub tours_ended: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Something a taxi did, for whoever watches it (tests, benchmarks).
#[derive(Clone, Debug)]
pub enum Observation {
    /// Connected and subscribed to its inbox (or its session still had the subscription).
    Listening,
    /// An inbox message arrived (`at`: when the connection handed it over).
    Received {
        order_id: String,
        at: Instant,
        first: bool,
    },
    /// An answer was queued for `taxi/<id>/ack`.
    Answered(Answer),
    /// A tour started or ended.
    Tour(Change),
    /// The connection was lost or dropped on purpose.
    Offline,
}

/// An observation and the taxi it is about.
#[derive(Clone, Debug)]
pub struct Observed {
    pub taxi: String,
    pub what: Observation,
}

/// Where to send observations; `None` sends none.
pub type Observer = Option<mpsc::UnboundedSender<Observed>>;

/// How to start one taxi.
#[derive(Clone)]
pub struct TaxiSpec {
    pub client: Client,
    pub host: String,
    pub port: u16,
    pub behaviour: Behaviour,
    /// Seed of its route and its driver's choices.
    pub seed: u64,
}

enum Command {
    GoOffline(Duration),
    Stop,
}

/// A running simulated taxi; [`SimulatedTaxi::stop`] disconnects it, dropping it aborts it.
pub struct SimulatedTaxi {
    id: String,
    commands: mpsc::UnboundedSender<Command>,
    listening: watch::Receiver<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimulatedTaxi {
    /// Starts the taxi on the current runtime; it connects in the background.
    pub fn spawn(spec: TaxiSpec, counters: Arc<Counters>, observer: Observer) -> SimulatedTaxi {
        let id = spec.client.id.clone();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (listening_tx, listening) = watch::channel(false);
        let task = tokio::spawn(run(spec, counters, observer, commands_rx, listening_tx));
        SimulatedTaxi {
            id,
            commands,
            listening,
            task: Some(task),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether it is connected and subscribed to its inbox now.
    pub fn is_listening(&self) -> bool {
        *self.listening.borrow()
    }

    /// Waits until it is connected and subscribed to its inbox.
    pub async fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let id = self.id.clone();
        tokio::time::timeout(timeout, self.listening.wait_for(|listening| *listening))
            .await
            .with_context(|| format!("{id} did not listen on its inbox within {timeout:?}"))?
            .with_context(|| format!("{id} has stopped"))?;
        Ok(())
    }

    /// Drops the connection (no DISCONNECT, like losing the network) and stays offline for
    /// `duration`; the persistent session keeps what arrives meanwhile.
    pub fn go_offline(&self, duration: Duration) {
        let _ = self.commands.send(Command::GoOffline(duration));
    }

    /// Disconnects cleanly and waits for the taxi's tasks to end.
    pub async fn stop(mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(STOP_GRACE * 2, task).await;
        }
    }
}

impl Drop for SimulatedTaxi {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the connection task tells the taxi task.
enum Link {
    Connected { session_present: bool },
    Subscribed { granted: bool },
    Message { payload: Vec<u8>, at: Instant },
    Lost,
}

/// What the taxi task tells the connection task.
enum Control {
    GoOffline(Duration),
    Stop,
}

async fn run(
    spec: TaxiSpec,
    counters: Arc<Counters>,
    observer: Observer,
    mut commands: mpsc::UnboundedReceiver<Command>,
    listening: watch::Sender<bool>,
) {
    let mut options = client::options(
        &spec.client,
        &spec.host,
        spec.port,
        spec.behaviour.keep_alive,
    );
    options.set_clean_session(false);
    let (mqtt, events) = client::with_options(options, CLIENT_QUEUE);
    let (link_tx, link_rx) = mpsc::unbounded_channel();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let connection = tokio::spawn(drive(
        events,
        spec.client.id.clone(),
        counters.clone(),
        link_tx,
        control_rx,
    ));
    let mut taxi = Taxi::new(&spec, mqtt, counters, observer, listening, control_tx);
    taxi.live(link_rx, &mut commands).await;
    taxi.shut_down();
    if tokio::time::timeout(STOP_GRACE * 2, connection)
        .await
        .is_err()
    {
        debug!(id = %spec.client.id, "connection task did not end in time");
    }
}

/// The connection task: polls the event loop, reconnects with back-off, goes offline when
/// told, and forwards what matters to the taxi task.
async fn drive(
    mut events: EventLoop,
    id: String,
    counters: Arc<Counters>,
    link: mpsc::UnboundedSender<Link>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut connected = false;
    loop {
        let event = tokio::select! {
            command = control.recv() => match command {
                Some(Control::GoOffline(duration)) => {
                    // Drop the socket without a DISCONNECT; unacknowledged publishes are kept
                    // for the resumed session.
                    events.clean();
                    if connected {
                        connected = false;
                        let _ = link.send(Link::Lost);
                    }
                    info!(id, offline_s = duration.as_secs_f64(), "going offline");
                    if pause(&mut control, duration).await {
                        return;
                    }
                    continue;
                }
                Some(Control::Stop) | None => {
                    if connected {
                        finish_disconnect(&mut events).await;
                    }
                    return;
                }
            },
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                connected = true;
                backoff = MIN_BACKOFF;
                let _ = link.send(Link::Connected {
                    session_present: connack.session_present,
                });
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let _ = link.send(Link::Message {
                    payload: publish.payload.to_vec(),
                    at: Instant::now(),
                });
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                let _ = link.send(Link::Subscribed { granted });
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => Counters::add(&counters.acked),
            Ok(_) => {}
            Err(e) => {
                if connected {
                    connected = false;
                    let _ = link.send(Link::Lost);
                }
                warn!(id, error = %client::describe(e), retry_in_ms = backoff.as_millis() as u64, "connection failed");
                if pause(&mut control, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Waits `duration` without polling; `true` if told to stop meanwhile.
async fn pause(control: &mut mpsc::UnboundedReceiver<Control>, duration: Duration) -> bool {
    let until = tokio::time::Instant::now() + duration;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return false,
            command = control.recv() => match command {
                Some(Control::GoOffline(_)) => {}
                Some(Control::Stop) | None => return true,
            },
        }
    }
}

/// Polls until the queued DISCONNECT has gone out, at most [`STOP_GRACE`].
async fn finish_disconnect(events: &mut EventLoop) {
    let _ = tokio::time::timeout(STOP_GRACE, async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// The taxi task's state.
struct Taxi {
    id: String,
    behaviour: Behaviour,
    mqtt: AsyncClient,
    counters: Arc<Counters>,
    observer: Observer,
    listening: watch::Sender<bool>,
    control: mpsc::UnboundedSender<Control>,
    rng: StdRng,
    walker: Walker,
    inbox: Inbox,
    tours: Tours,
    /// An order the driver has decided to accept but not answered yet.
    promised: bool,
    connected: bool,
    /// Answers and tour events not yet handed to the client, oldest first.
    outbox: VecDeque<(String, Vec<u8>)>,
    /// Positions not yet handed to the client, at most `behaviour.offline_buffer`.
    positions: VecDeque<Vec<u8>>,
    topics: Topics,
    position_seq: u64,
    tour_seq: u64,
    ack_seq: u64,
}

struct Topics {
    inbox: String,
    position: String,
    tour: String,
    ack: String,
}

impl Taxi {
    fn new(
        spec: &TaxiSpec,
        mqtt: AsyncClient,
        counters: Arc<Counters>,
        observer: Observer,
        listening: watch::Sender<bool>,
        control: mpsc::UnboundedSender<Control>,
    ) -> Taxi {
        let id = spec.client.id.clone();
        // No stored counters: each starts at the boot time in unix milliseconds (topics.md).
        let boot_ms = measure::unix_ms().max(0);
        Taxi {
            topics: Topics {
                inbox: format!("taxi/{id}/inbox"),
                position: format!("taxi/{id}/position"),
                tour: format!("taxi/{id}/tour"),
                ack: format!("taxi/{id}/ack"),
            },
            tours: Tours::new(&id, boot_ms),
            id,
            behaviour: spec.behaviour.clone(),
            mqtt,
            counters,
            observer,
            listening,
            control,
            rng: StdRng::seed_from_u64(spec.seed),
            walker: Walker::new(BERLIN, spec.seed),
            inbox: Inbox::default(),
            promised: false,
            connected: false,
            outbox: VecDeque::new(),
            positions: VecDeque::new(),
            position_seq: boot_ms as u64,
            tour_seq: boot_ms as u64,
            ack_seq: boot_ms as u64,
        }
    }

    /// Runs until told to stop (or the handle is gone).
    async fn live(
        &mut self,
        mut link: mpsc::UnboundedReceiver<Link>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) {
        let period = self.behaviour.period();
        let first = Instant::now() + period.mul_f64(self.rng.random::<f64>());
        let mut ticker = tokio::time::interval_at(first.into(), period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = self.inbox.next_due_ms().map(instant_of_unix_ms);
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::GoOffline(duration)) => self.go_offline(duration),
                    Some(Command::Stop) | None => return,
                },
                event = link.recv() => match event {
                    Some(event) => self.on_link(event),
                    None => return,
                },
                _ = ticker.tick() => self.on_tick(period),
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                    self.decide();
                }
            }
        }
    }

    fn on_link(&mut self, event: Link) {
        match event {
            Link::Connected { session_present } => {
                self.connected = true;
                self.counters.connected.fetch_add(1, Ordering::Relaxed);
                Counters::add(&self.counters.connects);
                debug!(id = %self.id, session_present, "connected");
                if session_present {
                    self.now_listening();
                } else if let Err(e) = self
                    .mqtt
                    .try_subscribe(&self.topics.inbox, QoS::AtLeastOnce)
                {
                    warn!(id = %self.id, error = %e, "cannot queue the inbox subscription");
                }
                self.flush();
            }
            Link::Subscribed { granted } => {
                if granted {
                    self.now_listening();
                } else {
                    warn!(id = %self.id, "the broker refused the inbox subscription");
                }
            }
            Link::Message { payload, at } => self.on_inbox(&payload, at),
            Link::Lost => self.lost(),
        }
    }

    fn now_listening(&mut self) {
        let _ = self.listening.send(true);
        self.observe(Observation::Listening);
    }

    fn lost(&mut self) {
        if self.connected {
            self.connected = false;
            self.counters.connected.fetch_sub(1, Ordering::Relaxed);
            Counters::add(&self.counters.offline);
            let _ = self.listening.send(false);
            self.observe(Observation::Offline);
        }
    }

    fn go_offline(&mut self, duration: Duration) {
        self.lost();
        let _ = self.control.send(Control::GoOffline(duration));
    }

    /// An inbox message: answered at once, and remembered for the driver's decision.
    fn on_inbox(&mut self, payload: &[u8], at: Instant) {
        let message = match wire::decode::<wire::InboxMessage>(payload) {
            Ok(message) => message,
            Err(e) => {
                Counters::add(&self.counters.inbox_invalid);
                warn!(id = %self.id, error = %e, "unreadable inbox message skipped");
                return;
            }
        };
        let now_ms = measure::unix_ms();
        let decide_in = pick(&mut self.rng, &self.behaviour.decide_after);
        let serves = self.behaviour.orders_become_tours;
        let busy = serves && (self.tours.busy() || self.promised);
        let accept = self.rng.random_bool(self.behaviour.accept_share);
        let mut promised = false;
        let arrival = self.inbox.receive(&message, now_ms, |message| Plan {
            decide_at_ms: now_ms + decide_in.as_millis() as i64,
            verdict: match message.kind {
                wire::InboxKind::Order if busy => Verdict::Reject(BUSY.to_owned()),
                wire::InboxKind::Order if accept => {
                    promised = serves;
                    Verdict::Accept
                }
                wire::InboxKind::Order => Verdict::Reject(DECLINED.to_owned()),
                wire::InboxKind::Message | wire::InboxKind::Invoice => Verdict::Accept,
            },
        });
        self.promised |= promised;
        if arrival.first {
            Counters::add(&self.counters.inbox_new);
            info!(id = %self.id, order_id = %message.order_id, kind = ?message.kind, text = %message.text, "inbox message");
        } else {
            Counters::add(&self.counters.inbox_repeats);
            debug!(id = %self.id, order_id = %message.order_id, "inbox message again");
        }
        self.observe(Observation::Received {
            order_id: message.order_id.clone(),
            at,
            first: arrival.first,
        });
        for answer in arrival.answers {
            self.answer(answer, arrival.first);
        }
    }

    /// The driver's decisions that came due.
    fn decide(&mut self) {
        let now_ms = measure::unix_ms();
        for decision in self.inbox.decide_due(now_ms) {
            if decision.kind == wire::InboxKind::Order {
                self.promised = false;
                if decision.answer.state == wire::AckState::Accepted
                    && self.behaviour.orders_become_tours
                {
                    let pickup = pick(&mut self.rng, &self.behaviour.pickup_after);
                    self.tours.book(now_ms + pickup.as_millis() as i64);
                }
            }
            self.answer(decision.answer, true);
        }
    }

    /// Queues an answer on `taxi/<id>/ack`; `fresh`: counted (a repeat is not).
    fn answer(&mut self, answer: Answer, fresh: bool) {
        if fresh {
            match answer.state {
                wire::AckState::Received => {}
                wire::AckState::Accepted => Counters::add(&self.counters.accepted),
                wire::AckState::Rejected => {
                    Counters::add(&self.counters.rejected);
                    if answer.reason.as_deref() == Some(inbox::EXPIRED) {
                        Counters::add(&self.counters.expired);
                    }
                }
            }
        }
        self.ack_seq += 1;
        let ack = wire::Ack {
            seq: self.ack_seq,
            order_id: answer.order_id.clone(),
            state: answer.state,
            ts_ms: measure::unix_ms(),
            reason: answer.reason.clone(),
        };
        self.outbox
            .push_back((self.topics.ack.clone(), wire::encode_json(&ack)));
        self.flush();
        self.observe(Observation::Answered(answer));
    }

    /// One step along the route: a position, maybe a tour event, maybe a connection loss.
    fn on_tick(&mut self, period: Duration) {
        let fix = self.walker.step(period);
        let ts_ms = measure::unix_ms();
        self.position_seq += 1;
        let position = wire::Position {
            seq: self.position_seq,
            ts_ms,
            lat: fix.lat,
            lon: fix.lon,
            speed_kmh: Some(fix.speed_kmh),
            heading_deg: Some(fix.heading_deg),
            accuracy_m: Some(fix.accuracy_m),
        };
        if self.positions.len() >= self.behaviour.offline_buffer.max(1) {
            self.positions.pop_front();
            Counters::add(&self.counters.positions_dropped);
        }
        self.positions.push_back(wire::encode_postcard(&position));

        let change = self.tours.step(
            (fix.lat, fix.lon),
            ts_ms,
            period,
            &self.behaviour,
            &mut self.rng,
        );
        if let Some(change) = change {
            self.tour_event(change);
        }
        self.flush();
        if self.connected && happens(&mut self.rng, self.behaviour.offline_every, period) {
            let duration = pick(&mut self.rng, &self.behaviour.offline_for);
            self.go_offline(duration);
        }
    }

    fn tour_event(&mut self, change: Change) {
        match change.kind {
            wire::TourEventKind::Started => Counters::add(&self.counters.tours_started),
            wire::TourEventKind::Ended => Counters::add(&self.counters.tours_ended),
        }
        info!(id = %self.id, tour_id = %change.tour_id, kind = ?change.kind, meter_cents = change.meter_cents, "tour");
        self.tour_seq += 1;
        let event = wire::TourEvent {
            seq: self.tour_seq,
            tour_id: change.tour_id.clone(),
            kind: change.kind,
            ts_ms: change.ts_ms,
            lat: change.lat,
            lon: change.lon,
            meter_cents: Some(change.meter_cents),
        };
        self.outbox
            .push_back((self.topics.tour.clone(), wire::encode_json(&event)));
        self.observe(Observation::Tour(change));
    }

    /// Hands queued messages to the client while connected: answers and tour events first,
    /// then positions, oldest first; what the client has no room for waits for the next try.
    fn flush(&mut self) {
        if !self.connected {
            return;
        }
        while let Some((topic, payload)) = self.outbox.pop_front() {
            if let Err(e) = self
                .mqtt
                .try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
            {
                let payload = unsent_payload(e);
                self.outbox.push_front((topic, payload));
                return;
            }
        }
        while let Some(payload) = self.positions.pop_front() {
            if let Err(e) = self.mqtt.try_publish(
                self.topics.position.as_str(),
                QoS::AtLeastOnce,
                false,
                payload,
            ) {
                self.positions.push_front(unsent_payload(e));
                return;
            }
            Counters::add(&self.counters.positions_sent);
        }
    }

    fn observe(&self, what: Observation) {
        if let Some(observer) = &self.observer {
            let _ = observer.send(Observed {
                taxi: self.id.clone(),
                what,
            });
        }
    }

    /// Stops: a clean DISCONNECT if connected, then the connection task ends.
    fn shut_down(&mut self) {
        if self.connected {
            let _ = self.mqtt.try_disconnect();
        }
        self.lost();
        let _ = self.control.send(Control::Stop);
    }
}

/// The payload of a publish the client refused (its queue full), to try again later.
fn unsent_payload(error: rumqttc::ClientError) -> Vec<u8> {
    match error {
        rumqttc::ClientError::Request(rumqttc::Request::Publish(publish))
        | rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(publish)) => {
            publish.payload.to_vec()
        }
        _ => Vec::new(),
    }
}

/// The instant at which the wall clock will read `unix_ms` (now if it already has).
fn instant_of_unix_ms(unix_ms: i64) -> Instant {
    let ahead = unix_ms.saturating_sub(measure::unix_ms()).max(0);
    Instant::now() + Duration::from_millis(ahead as u64)
}

/// Starts `specs` taxis, at most `connecting` of them not yet listening at a time, and waits
/// until every one listens on its inbox (all within `timeout`).
pub async fn spawn_listening(
    specs: Vec<TaxiSpec>,
    counters: Arc<Counters>,
    observer: Observer,
    connecting: usize,
    timeout: Duration,
) -> Result<Vec<SimulatedTaxi>> {
    if specs.is_empty() {
        bail!("no taxis to start");
    }
    let connecting = connecting.max(1);
    let deadline = Instant::now() + timeout;
    let mut taxis: Vec<SimulatedTaxi> = Vec::with_capacity(specs.len());
    for spec in specs {
        if taxis.len() >= connecting {
            let index = taxis.len() - connecting;
            let left = deadline.saturating_duration_since(Instant::now());
            taxis[index].wait_listening(left).await?;
        }
        taxis.push(SimulatedTaxi::spawn(
            spec,
            counters.clone(),
            observer.clone(),
        ));
    }
    for taxi in &mut taxis {
        let left = deadline.saturating_duration_since(Instant::now());
        taxi.wait_listening(left).await?;
    }
    Ok(taxis)
}

/// Stops every taxi (each disconnects cleanly), all at once.
pub async fn stop_all(taxis: Vec<SimulatedTaxi>) {
    let mut stopping = tokio::task::JoinSet::new();
    for taxi in taxis {
        stopping.spawn(taxi.stop());
    }
    while stopping.join_next().await.is_some() {}
}
