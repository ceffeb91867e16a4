use crate::protocol::{
    matches, ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    LastWill, LastWillProperties, Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason,
    PubRec, PubRecReason, PubRel, PubRelReason, Publish, PublishProperties, QoS, RetainForwardRule,
    SubAck, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use crate::router::alertlog::alert;
use crate::router::connection::SubscriptionOptions;
use crate::router::scheduler::{PauseReason, Tracker};
use crate::router::{ConnectionEvents, Forward};
use crate::segments::spill::{Spill, SpillArea};
use crate::segments::Position;
use crate::*;
use flume::{bounded, Receiver, RecvError, RecvTimeoutError, Sender, TryRecvError};
use slab::Slab;
use std::collections::{HashMap, HashSet, VecDeque};
use std::str::Utf8Error;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};
use thiserror::Error;
use tracing::{debug, error, info, trace, warn};

use super::alertlog::{Alert, AlertLog};
use super::durability::{DropReason, Lag, NoObserver, Observer};
use super::graveyard::Graveyard;
use super::iobufs::{Incoming, Outgoing};
use super::logs::{AckLog, DataLog, PublishData};
use super::persist;
use super::scheduler::{ScheduleReason, Scheduler};
use super::shared_subs::SharedGroup;
use super::{
    packetid, Connection, DataRequest, Event, FilterIdx, Meter, Notification, Print, RouterMeter,
    ShadowRequest, MAX_CHANNEL_CAPACITY, MAX_SCHEDULE_ITERATIONS,
};

#[derive(Error, Debug)]
pub enum RouterError {
    #[error("Receive error = {0}")]
    Recv(#[from] RecvError),
    #[error("Try Receive error = {0}")]
    TryRecv(#[from] TryRecvError),
    #[error("Disconnection")]
    Disconnected,
    #[error("Topic not utf-8")]
    NonUtf8Topic(#[from] Utf8Error),
    #[cfg(feature = "validate-tenant-prefix")]
    #[error("Bad Tenant")]
    BadTenant(String, String),
    #[error("No matching filters to topic {0}")]
    NoMatchingFilters(String),
    #[error("Invalid filter prefix {0}")]
    InvalidFilterPrefix(Filter),
    #[error("Invalid client_id {0}")]
    InvalidClientId(String),
    #[error("Disconnection (Reason: {0:?})")]
    Disconnect(DisconnectReasonCode),
    #[error("durable log: {0}")]
    Durable(std::io::Error),
}

// TODO: set this to some appropriate value
const TOPIC_ALIAS_MAX: u16 = 4096;

pub struct Router {
    id: RouterId,
    /// Id of this router. Used to index native commitlog to store data from
    /// local connections
    config: RouterConfig,
    /// Saved state of dead persistent connections
    graveyard: Graveyard,
    /// List of MetersLink's senders
    meters: Slab<Sender<Vec<Meter>>>,
    /// List of AlertsLink's senders with their respective subscription Filter
    alerts: Slab<Sender<Vec<Alert>>>,
    /// List of connections
    connections: Slab<Connection>,
    /// Connection map from device id to connection id
    connection_map: HashMap<String, ConnectionId>,
    /// Subscription map to interested connection ids
    subscription_map: HashMap<Filter, HashSet<ConnectionId>>,
    /// Incoming data grouped by connection
    ibufs: Slab<Incoming>,
    /// Outgoing data grouped by connection
    obufs: Slab<Outgoing>,
    /// Data log of all the subscriptions
    datalog: DataLog,
    /// Data log of all the alert subscriptions
    alertlog: AlertLog,
    /// Acks log per connection
    ackslog: Slab<AckLog>,
    /// Scheduler to schedule connections
    scheduler: Scheduler,
    /// Parked requests that are ready because of new data on the subscription
    notifications: VecDeque<(ConnectionId, DataRequest)>,
    /// Channel receiver to receive data from all the active connections and
    /// replicators. Each connection will have a tx handle which they use
    /// to send data and requests to router
    router_rx: Receiver<(ConnectionId, Event)>,
    /// Channel sender to send data to this router. This is given to active
    /// network connections, local connections and replicators to communicate
    /// with this router
    router_tx: Sender<(ConnectionId, Event)>,
    /// Router metrics
    router_meters: RouterMeter,
    /// Buffer for cache exchange of incoming packets
    cache: Option<VecDeque<Packet>>,
    /// Shared subscriptions map <group-name, group>
    shared_subscriptions: HashMap<String, SharedGroup>,
    /// Will messages per client_id
    last_wills: HashMap<String, (LastWill, Option<LastWillProperties>)>,
    /// Number of the last publish appended (one number per publish, whatever the number of
    /// filters it is appended to)
    publish_seq: u64,
    /// Reports drops, held publishers and the durable subscribers' lag
    observer: Arc<dyn Observer>,
    /// Connections with held packets, in the order they get another try
    held: VecDeque<ConnectionId>,
    /// Logs that are full of messages a durable subscriber has not read
    blocked: HashSet<FilterIdx>,
    /// Something happened that may let a held publisher go on (a read, an ack, a client
    /// leaving or coming): held connections get another try soon
    progress: bool,
    last_release: Instant,
    last_lag_report: Instant,
    /// Shared groups and saved sessions whose drops have been logged (a live connection has
    /// its own flag)
    drops_logged: HashSet<String>,
    /// Durable mode: when the sessions, positions and groups were last saved
    last_state_save: Instant,
    /// Durable mode: the state last saved (saved again only when it differs)
    saved_state: persist::State,
    /// Durable mode: a persistent session came, subscribed or unsubscribed since the last
    /// save; the state is saved before any acknowledgement goes out (a SUBACK, or the PUBACK
    /// of a message published for the new subscription), not at the next interval
    sessions_changed: bool,
}

/// What durable mode found in its directory at start (PATCHES.md, 21).
#[derive(Debug, Default)]
pub struct Recovery {
    /// Messages in the logs (acknowledged before the restart, not necessarily delivered).
    pub messages: u64,
    /// Bytes cut from the tails of segment files (writes torn by a crash).
    pub truncated_bytes: u64,
    /// Files that could not be used, and why (removed).
    pub discarded: Vec<String>,
    /// Persistent sessions, shared groups and retained messages restored.
    pub sessions: usize,
    pub groups: usize,
    pub retained: usize,
}

/// How often durable mode saves the readers' positions while they move.
const STATE_SAVE_INTERVAL: Duration = Duration::from_millis(200);

impl Router {
    pub fn new(router_id: RouterId, config: RouterConfig) -> Router {
        let (router_tx, router_rx) = bounded(1000);

        let meters = Slab::with_capacity(10);
        let alerts = Slab::with_capacity(10);
        let connections = Slab::with_capacity(config.max_connections);
        let ibufs = Slab::with_capacity(config.max_connections);
        let obufs = Slab::with_capacity(config.max_connections);
        let ackslog = Slab::with_capacity(config.max_connections);

        let router_metrics = RouterMeter {
            router_id,
            ..RouterMeter::default()
        };

        let max_connections = config.max_connections;
        Router {
            id: router_id,
            config: config.clone(),
            graveyard: Graveyard::new(),
            meters,
            alerts,
            connections,
            connection_map: Default::default(),
            subscription_map: Default::default(),
            ibufs,
            obufs,
            datalog: DataLog::new(config.clone()).unwrap(),
            alertlog: AlertLog::new(config),
            ackslog,
            scheduler: Scheduler::with_capacity(max_connections),
            notifications: VecDeque::with_capacity(1024),
            router_rx,
            router_tx,
            router_meters: router_metrics,
            cache: Some(VecDeque::with_capacity(MAX_CHANNEL_CAPACITY)),
            shared_subscriptions: HashMap::new(),
            last_wills: HashMap::new(),
            publish_seq: 0,
            observer: Arc::new(NoObserver),
            held: VecDeque::new(),
            blocked: HashSet::new(),
            progress: false,
            last_release: Instant::now(),
            last_lag_report: Instant::now(),
            drops_logged: HashSet::new(),
            last_state_save: Instant::now(),
            saved_state: persist::State::default(),
            sessions_changed: false,
        }
    }

    /// Reports the router's durability events (drops, held publishers, lag, spills) to
    /// `observer`.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Router {
        if let Some(spill) = self.datalog.spill.as_mut() {
            spill.observer = observer.clone();
        }
        self.observer = observer;
        self
    }

    /// Writes the segments a full log would drop while a durable reader still needs them to
    /// `area`, instead of holding the publishers, as long as its budget lasts (PATCHES.md,
    /// 18).
    pub fn spill(mut self, area: SpillArea) -> Router {
        self.datalog.spill = Some(Spill::new(area, self.observer.clone()));
        self
    }

    /// Durable mode (PATCHES.md, 21): every log is written to `area`'s directory and synced
    /// before the acknowledgements of the publishes appended to it are sent; persistent
    /// sessions, shared groups' positions and retained messages are saved there too. What a
    /// previous process left there (after a crash, say) is read back first: the logs go on
    /// from their files (torn tails cut), and the sessions, groups and retained messages are
    /// restored. The area's budget bounds the files of segments that have left memory.
    pub fn durable(mut self, area: SpillArea) -> std::io::Result<(Router, Recovery)> {
        let dir = area.dir().to_owned();
        let recovered = crate::segments::durable::recover(&dir)?;
        let mut recovery = Recovery {
            messages: recovered.logs.iter().map(|log| log.messages()).sum(),
            truncated_bytes: recovered.truncated_bytes,
            discarded: recovered.discarded.clone(),
            ..Recovery::default()
        };
        self.datalog.spill = Some(Spill::new(area, self.observer.clone()));
        self.datalog.durable(&dir, recovered)?;
        let retained = persist::load_retained(&dir)?;
        recovery.retained = retained.len();
        self.datalog.restore_retained(retained);
        let state = persist::load_state(&dir)?;
        recovery.sessions = state.sessions.len();
        self.restore_state(&state);
        recovery.groups = self.shared_subscriptions.len();
        self.saved_state = state;
        Ok((self, recovery))
    }

    /// Restores the persistent sessions (as saved sessions whose clients are away) and the
    /// shared groups of `state`, each reader at its saved position.
    fn restore_state(&mut self, state: &persist::State) {
        let positions: HashMap<(&str, &str), u64> = state
            .positions
            .iter()
            .map(|(client, filter, offset)| ((client.as_str(), filter.as_str()), *offset))
            .collect();
        let groups: HashMap<&str, u64> = state
            .groups
            .iter()
            .map(|(name, offset)| (name.as_str(), *offset))
            .collect();
        let strategy = self.config.shared_subscriptions_strategy.clone();
        for session in &state.sessions {
            let mut tracker = Tracker::new(session.client_id.clone());
            let mut subscriptions = HashSet::new();
            let mut sub_options = HashMap::new();
            for (full, options) in &session.subscriptions {
                let (group, filter) = match extract_group(full) {
                    Some((share, filter)) => (Some(format!("{share}/{filter}")), filter),
                    None => (None, full.clone()),
                };
                let (filter_idx, next) = self.datalog.next_native_offset(&filter);
                let saved = match &group {
                    Some(name) => groups.get(name.as_str()).copied(),
                    None => positions
                        .get(&(session.client_id.as_str(), filter.as_str()))
                        .copied(),
                };
                let cursor = match (saved, self.datalog.native.get(filter_idx)) {
                    (Some(offset), Some(data)) => data.log.cursor_at(offset),
                    _ => next,
                };
                if let Some(name) = &group {
                    self.shared_subscriptions
                        .entry(name.clone())
                        .or_insert_with(|| SharedGroup::new(cursor, strategy.clone()));
                }
                tracker.register_data_request(DataRequest {
                    filter: full.clone(),
                    filter_idx,
                    qos: options.qos,
                    cursor,
                    read_count: 0,
                    max_count: 100,
                    forward_retained: false,
                    group,
                });
                subscriptions.insert(full.clone());
                sub_options.insert(full.clone(), *options);
            }
            let expires_at = (session.expiry != u32::MAX)
                .then(|| Instant::now() + Duration::from_secs(u64::from(session.expiry)));
            self.graveyard.save_state(
                tracker,
                subscriptions,
                sub_options,
                ConnectionEvents::default(),
                VecDeque::new(),
                expires_at,
            );
        }
    }

    /// The persistent sessions, the durable readers' positions and the shared groups now.
    fn durable_state(&self) -> persist::State {
        let mut state = persist::State::default();
        for (_, connection) in self.connections.iter() {
            if connection.session_expiry == 0 {
                continue;
            }
            let mut subscriptions: Vec<(String, SubscriptionOptions)> = connection
                .sub_options
                .iter()
                .map(|(filter, options)| (filter.clone(), *options))
                .collect();
            subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
            state.sessions.push(persist::SavedSession {
                client_id: connection.client_id.clone(),
                expiry: connection.session_expiry,
                subscriptions,
            });
        }
        let now = Instant::now();
        for (client_id, session, expires_at) in self.graveyard.sessions() {
            let expiry = expires_at.map_or(u32::MAX, |at| {
                u32::try_from(at.saturating_duration_since(now).as_secs()).unwrap_or(u32::MAX - 1)
            });
            let mut subscriptions: Vec<(String, SubscriptionOptions)> = session
                .sub_options
                .iter()
                .map(|(filter, options)| (filter.clone(), *options))
                .collect();
            subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
            state.sessions.push(persist::SavedSession {
                client_id: client_id.to_owned(),
                expiry,
                subscriptions,
            });
        }
        state.sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let mut positions = Vec::new();
        self.durable_positions(None, |subscriber, filter_idx, position| {
            if subscriber.starts_with("$share/") {
                return;
            }
            if let Some(data) = self.datalog.native.get(filter_idx) {
                positions.push((subscriber.to_owned(), data.filter().clone(), position));
            }
        });
        positions.sort();
        state.positions = positions;
        for (name, group) in self.shared_subscriptions.iter() {
            let Some((_, filter)) = name.split_once('/') else {
                continue;
            };
            let Some(filter_idx) = self.datalog.filter_idx(filter) else {
                continue;
            };
            let (_, position) = self.group_position(name, group, filter_idx);
            state.groups.push((name.clone(), position));
        }
        state.groups.sort();
        state
    }

    /// Durable mode: writes and syncs what was appended (and the retained messages, if they
    /// changed) before any acknowledgement of it is sent. A failure stops the router: the
    /// broker must not acknowledge what may not be on disk.
    fn sync_durable(&mut self) -> Result<(), RouterError> {
        if !self.datalog.needs_sync() {
            return Ok(());
        }
        let started = Instant::now();
        let synced = self.datalog.sync().map_err(RouterError::Durable)?;
        let dir = self.datalog.durable_dir().map(|dir| dir.to_owned());
        if let (Some(dir), Some(retained)) = (dir, self.datalog.retained_if_changed()) {
            persist::save_retained(&dir, retained).map_err(RouterError::Durable)?;
        }
        self.observer.log_synced(synced, started.elapsed());
        Ok(())
    }

    /// Durable mode, before a round's acknowledgements go out: what was appended is on disk,
    /// and so are the subscriptions of persistent sessions acknowledged in this round.
    fn make_durable(&mut self) -> Result<(), RouterError> {
        self.sync_durable()?;
        if self.sessions_changed {
            self.save_state()?;
        }
        Ok(())
    }

    /// Durable mode: saves the sessions, positions and groups when they changed, a few
    /// times a second at most, or at once when a persistent session's subscriptions changed
    /// (readers' positions alone may lag: a position saved late means a redelivery, never
    /// a loss).
    fn save_state(&mut self) -> Result<(), RouterError> {
        let Some(dir) = self.datalog.durable_dir().map(|dir| dir.to_owned()) else {
            return Ok(());
        };
        if !self.sessions_changed && self.last_state_save.elapsed() < STATE_SAVE_INTERVAL {
            return Ok(());
        }
        self.sessions_changed = false;
        self.last_state_save = Instant::now();
        let state = self.durable_state();
        if state != self.saved_state {
            persist::save_state(&dir, &state).map_err(RouterError::Durable)?;
            self.saved_state = state;
        }
        Ok(())
    }

    /// Durable mode: `id`'s subscriptions are about to change; if its session is persistent,
    /// the state is saved before this round's acknowledgements go out.
    fn note_session_change(&mut self, id: ConnectionId) {
        if self.datalog.is_durable()
            && self
                .connections
                .get(id)
                .is_some_and(|connection| connection.session_expiry > 0)
        {
            self.sessions_changed = true;
        }
    }

    /// Gets handle to the router. This is not a public method to ensure that link
    /// is created only after the router starts
    fn link(&self) -> Sender<(ConnectionId, Event)> {
        self.router_tx.clone()
    }

    // pub(crate) fn get_replica_handle(&mut self, _replica_id: NodeId) -> (LinkTx, LinkRx) {
    //     unimplemented!()
    // }

    /// Starts the router in a background thread and returns link to it. Link
    /// to communicate with router should only be returned only after it starts.
    /// For that reason, all the public methods should start the router in the
    /// background
    #[tracing::instrument(skip_all)]
    pub fn spawn(mut self) -> Sender<(ConnectionId, Event)> {
        let router = thread::Builder::new().name(format!("router-{}", self.id));
        let link = self.link();
        router
            .spawn(move || {
                let e = self.run(0);
                error!(reason=?e, "Router done!");
            })
            .unwrap();
        link
    }

    /// Starts the router as a task of the current tokio runtime (see `run_async`) and
    /// returns the link to it. Must be called from within that runtime.
    pub fn spawn_task(self) -> Sender<(ConnectionId, Event)> {
        let link = self.link();
        tokio::spawn(async move {
            let e = self.run_async().await;
            error!(reason=?e, "Router done!");
        });
        link
    }

    /// Waits on incoming events when ready queue is empty.
    /// After pulling 1 event, tries to pull 500 more events
    /// before polling ready queue 100 times (connections)
    #[tracing::instrument(skip_all)]
    fn run(&mut self, count: usize) -> Result<(), RouterError> {
        match count {
            0 => loop {
                self.run_inner()?;
            },
            n => {
                for _ in 0..n {
                    self.run_inner()?;
                }
            }
        };

        Ok(())
    }

    fn run_inner(&mut self) -> Result<(), RouterError> {
        // Block on incoming events if there are no ready connections for consumption
        if self.consume().is_none() {
            match self.router_rx.recv_timeout(self.idle_wait()) {
                Ok((id, data)) => self.events(id, data),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(RouterError::Disconnected),
            }
        }
        self.round()
    }

    /// Runs the router as a task of the tokio runtime it is spawned on, returning only when
    /// it stops. The sessions' wake-ups of the router, and the router's of the sessions, are
    /// then task wake-ups: on a worker that is busy anyway they need no thread switch. A round
    /// that finds work waiting yields afterwards, so the sessions on the same worker run
    /// between rounds (the router's channel does not count towards tokio's budget).
    pub async fn run_async(mut self) -> RouterError {
        loop {
            let waited = self.consume().is_none();
            if waited {
                let wait = self.idle_wait();
                match tokio::time::timeout(wait, self.router_rx.recv_async()).await {
                    Ok(Ok((id, data))) => self.events(id, data),
                    Ok(Err(_)) => return RouterError::Disconnected,
                    Err(_) => {}
                }
            }
            if let Err(e) = self.round() {
                return e;
            }
            if !waited {
                tokio::task::yield_now().await;
            }
        }
    }

    /// How long the router waits for an event when no connection is ready: not for ever,
    /// since held publishers get another try and the lag is reported.
    fn idle_wait(&self) -> Duration {
        if self.held.is_empty() {
            LAG_INTERVAL
        } else if self.progress {
            RELEASE_INTERVAL
        } else {
            IDLE_RELEASE_INTERVAL
        }
    }

    /// One round after the first event (or ready connection): the events already queued,
    /// the disk, the ready connections, held publishers, saved state and lag.
    fn round(&mut self) -> Result<(), RouterError> {
        // Try reading more from connections in a non-blocking
        // fashion to accumulate data and handle subscriptions.
        // Accumulating more data lets requests retrieve bigger
        // bulks which in turn increases efficiency
        for _ in 0..500 {
            // All these methods will handle state and errors
            match self.router_rx.try_recv() {
                Ok((id, data)) => self.events(id, data),
                Err(TryRecvError::Disconnected) => return Err(RouterError::Disconnected),
                Err(TryRecvError::Empty) => break,
            }
        }

        // A connection should not be scheduled multiple times
        #[cfg(debug_assertions)]
        if let Some(readyqueue) = self.scheduler.check_readyqueue_duplicates() {
            warn!(
                "Connection was scheduled multiple times in readyqueue: {:?}",
                readyqueue
            );
        }

        self.make_durable()?;

        // Poll 100 connections which are ready in ready queue
        for _ in 0..100 {
            self.consume();
        }

        if !self.held.is_empty() {
            let since = self.last_release.elapsed();
            if (self.progress && since >= RELEASE_INTERVAL) || since >= IDLE_RELEASE_INTERVAL {
                self.release_held();
                self.sync_durable()?;
            }
        }
        self.save_state()?;
        if self.last_lag_report.elapsed() >= LAG_INTERVAL {
            self.report_lag();
            self.delete_spilled();
        }

        // self.send_all_alerts();
        Ok(())
    }

    fn events(&mut self, id: ConnectionId, data: Event) {
        let span = tracing::error_span!("[>] incoming", connection_id = id);
        let _guard = span.enter();

        match data {
            Event::Connect {
                connection,
                incoming,
                outgoing,
            } => self.handle_new_connection(connection, incoming, outgoing),
            Event::NewMeter(tx) => self.handle_new_meter(tx),
            Event::NewAlert(tx) => self.handle_new_alert(tx),
            Event::DeviceData => self.handle_device_payload(id),
            Event::Disconnect => self.handle_disconnection(id, None),
            Event::Ready => self.scheduler.reschedule(id, ScheduleReason::Ready),
            Event::Shadow(request) => {
                retrieve_shadow(&mut self.datalog, &mut self.obufs[id], request)
            }
            Event::SendAlerts => {
                self.send_alerts();
            }
            Event::SendMeters => {
                self.send_meters();
            }
            Event::PrintStatus(metrics) => print_status(self, metrics),
            Event::PublishWill((client_id, _tenant_id)) => self.handle_last_will(
                client_id,
                #[cfg(feature = "validate-tenant-prefix")]
                _tenant_id,
            ),
        }
    }

    fn handle_new_connection(
        &mut self,
        mut connection: Connection,
        incoming: Incoming,
        mut outgoing: Outgoing,
    ) {
        self.progress = true;
        let client_id = outgoing.client_id.clone();
        if let Err(err) = validate_clientid(&client_id) {
            error!("Invalid client_id: {}", err);
            return;
        };

        let span = tracing::info_span!("incoming_connect", client_id);
        let _guard = span.enter();

        if cfg!(not(feature = "allow-duplicate-clientid")) {
            // Check if same client_id already exists and if so, replace it with this new connection
            // ref: https://docs.oasis-open.org/mqtt/mqtt/v3.1.1/os/mqtt-v3.1.1-os.html#_Toc398718032

            let connection_id = self.connection_map.get(&client_id);
            if let Some(connection_id) = connection_id {
                error!(
                    "Duplicate client_id, dropping previous connection with connection_id: {}",
                    connection_id
                );
                self.handle_disconnection(*connection_id, None);
            }
        }

        if self.connections.len() >= self.config.max_connections {
            error!("no space for new connection");
            // let ack = ConnectionAck::Failure("No space for new connection".to_owned());
            // let message = Notification::ConnectionAck(ack);
            return;
        }

        // A resumed session's drops are logged again, as a live connection's.
        self.drops_logged.remove(&format!("session {client_id}"));

        // Retrieve previous connection state from graveyard (sessions past their expiry are
        // forgotten first)
        self.graveyard.sweep(std::time::Instant::now());
        let saved = self.graveyard.retrieve(&client_id);
        outgoing.set_max_inflight(connection.max_inflight);
        let clean_session = connection.clean;
        let previous_session = saved.as_ref().is_some_and(|s| s.session_state.is_some());
        // for qos2 pending pubrels
        let mut pending_acks = VecDeque::new();

        let tracker = if !clean_session {
            // if there was some saved state, restore the metrics
            // and get the session's state if present
            let saved_state = saved.and_then(|saved| {
                connection.events = saved.metrics;
                saved.session_state
            });

            // if session's state is present, restore that session
            // otherwise, just start new one
            saved_state.map_or_else(
                || Tracker::new(client_id.clone()),
                |session_state| {
                    connection.subscriptions = session_state.subscriptions;
                    connection.sub_options = session_state.sub_options;
                    // for using in acklog
                    pending_acks.clone_from(&session_state.unacked_pubrels);
                    outgoing.unacked_pubrels = session_state.unacked_pubrels;
                    session_state.tracker
                },
            )
        } else {
            // Only retrieve metrics in clean session
            connection.events = saved.map_or_else(ConnectionEvents::default, |s| s.metrics);
            Tracker::new(client_id.clone())
        };

        // A resumed session is a member of the shared groups it subscribed to, whether or not
        // the client subscribes again: otherwise its restored requests would wait for a turn
        // that never comes.
        for request in tracker.data_requests.iter() {
            if let Some(group_name) = &request.group {
                self.shared_subscriptions
                    .entry(group_name.clone())
                    .or_insert(SharedGroup::new(
                        request.cursor,
                        self.config.shared_subscriptions_strategy.clone(),
                    ))
                    .add_client(client_id.clone());
            }
        }

        let ackslog = AckLog::new();

        let time = match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
            Ok(v) => v.as_millis().to_string(),
            Err(e) => format!("Time error = {e:?}"),
        };

        let event = "connection at ".to_owned() + &time + ", clean = " + &clean_session.to_string();
        connection.events.events.push_back(event);

        if connection.events.events.len() > 10 {
            connection.events.events.pop_front();
        }

        if let Some(will) = connection.last_will.take() {
            self.last_wills.insert(
                client_id.clone(),
                (will, connection.last_will_properties.take()),
            );
        }

        let connection_id = self.connections.insert(connection);
        assert_eq!(self.ibufs.insert(incoming), connection_id);
        assert_eq!(self.obufs.insert(outgoing), connection_id);

        self.connection_map.insert(client_id.clone(), connection_id);
        info!(connection_id, "Client connection registered");

        assert_eq!(self.ackslog.insert(ackslog), connection_id);
        assert_eq!(self.scheduler.add(tracker), connection_id);

        // Check if there are multiple data requests on same filter.
        debug_assert!(self
            .scheduler
            .check_tracker_duplicates(connection_id)
            .is_none());

        let ack = ConnAck {
            session_present: !clean_session && previous_session,
            code: ConnectReturnCode::Success,
        };

        let properties = ConnAckProperties {
            topic_alias_max: Some(TOPIC_ALIAS_MAX),
            ..Default::default()
        };

        let ackslog = self.ackslog.get_mut(connection_id).unwrap();
        ackslog.connack(connection_id, ack, Some(properties));

        pending_acks.into_iter().for_each(|pkid| {
            // NOTE: will it be better if we store the whole PubRel
            // instead of pkid in pending acks
            let pubrel = PubRel {
                pkid,
                reason: PubRelReason::Success,
            };
            ackslog.pubrel(pubrel)
        });

        self.scheduler
            .reschedule(connection_id, ScheduleReason::Init);

        self.router_meters.total_connections += 1;
    }

    fn handle_new_meter(&mut self, tx: Sender<Vec<Meter>>) {
        let _meter_id = self.meters.insert(tx);
    }

    fn handle_new_alert(&mut self, tx: Sender<Vec<Alert>>) {
        let _alert_id = self.alerts.insert(tx);
    }

    fn handle_disconnection(&mut self, id: ConnectionId, reason: Option<DisconnectReasonCode>) {
        self.progress = true;
        // Some clients can choose to send Disconnect packet before network disconnection.
        // This will lead to double Disconnect packets in router `events`
        let client_id = match &self.obufs.get(id) {
            Some(v) => v.client_id.clone(),
            None => {
                error!("no-connection id {} is already gone", id);
                return;
            }
        };

        let span = tracing::info_span!("incoming_disconnect", client_id);
        let _guard = span.enter();

        // must handle last will before sending disconnect packet
        // as the disconnecting client might have subscribed to will topic.
        // if execute_last_will {
        //     self.handle_last_will(id);
        // }

        info!("Disconnecting connection");

        if let Some(reason_code) = reason {
            let outgoing = match self.obufs.get_mut(id) {
                Some(v) => v,
                None => {
                    error!("no-connection id {} is already gone", id);
                    return;
                }
            };

            let disconnect = Disconnect { reason_code };

            let disconnect_notification = Notification::Disconnect(disconnect, None);

            outgoing
                .data_buffer
                .lock()
                .push_back(disconnect_notification);

            outgoing.handle.try_send(()).ok();
        }

        // Remove connection from router; what it had held is dropped, unacknowledged.
        let mut connection = self.connections.remove(id);
        let incoming = self.ibufs.remove(id);
        incoming
            .held_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
        if let Some((since, _)) = incoming.held_since {
            self.held.retain(|held| *held != id);
            self.observer.released(&client_id, since.elapsed());
        }
        let outgoing = self.obufs.remove(id);
        let mut tracker = self.scheduler.remove(id);
        self.connection_map.remove(&client_id);
        self.ackslog.remove(id);

        // Don't remove connection id from readyqueue with index. This will
        // remove wrong connection from readyqueue. Instead just leave disconnected
        // connection in readyqueue and allow 'consume()' method to deal with this
        // self.readyqueue.remove(id);

        let inflight_data_requests = self.datalog.clean(id);
        let retransmissions = outgoing.retransmission_map();

        // Remove connections from all groups and
        // discard empty group ( group with no client )
        // note: can we do this in better way?
        // A group is kept while it is empty if the member leaving has a persistent session, or
        // if another member's persistent session is saved: its cursor is where the group
        // resumes when members come back, so nothing published meanwhile (or in flight to
        // them) is skipped. Only the groups the leaving client is a member of are touched: a
        // clean client that was never in a group must not drop it while its members are away.
        let persistent = connection.session_expiry > 0;
        let graveyard = &self.graveyard;
        self.shared_subscriptions.retain(|name, group| {
            if !group.contains(&client_id) {
                return true;
            }
            group.remove_client(&client_id);
            !group.is_empty() || persistent || graveyard.has_group_member(name)
        });

        // Remove this connection from subscriptions
        for filter in connection.subscriptions.iter() {
            if let Some(connections) = self.subscription_map.get_mut(filter) {
                connections.remove(&id);
            }
        }

        // Add disconnection event to metrics
        let time = match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
            Ok(v) => v.as_millis().to_string(),
            Err(e) => format!("Time error = {e:?}"),
        };

        let event = "disconnection at ".to_owned() + &time;
        connection.events.events.push_back(event);

        if connection.events.events.len() > 10 {
            connection.events.events.pop_front();
        }

        // Save state for persistent sessions (until their expiry)
        if persistent {
            // Add inflight data requests back to tracker
            inflight_data_requests
                .into_iter()
                .for_each(|r| tracker.register_data_request(r));

            let mut rewound = Vec::new();
            for request in tracker.data_requests.iter_mut() {
                if let Some(cursor) = retransmissions.get(&request.filter_idx) {
                    request.cursor = *cursor;
                    // reset the group cursor
                    if let Some(group_name) = &request.group {
                        // Rewind the group to the oldest message this member left unacked,
                        // never forward: when several members leave, each rewinds, and the
                        // oldest cursor must win (the messages in between come again; the
                        // consumers' idempotency absorbs them).
                        if let Some(group) = self.shared_subscriptions.get_mut(group_name) {
                            if *cursor < group.cursor {
                                group.cursor = *cursor;
                                rewound.push(request.filter_idx);
                            }
                        }
                    }
                }
            }

            // The members still there may be parked as caught up: wake them to read the
            // rewound messages now rather than with the next publish.
            for filter_idx in rewound {
                let parked = self
                    .datalog
                    .native
                    .get_mut(filter_idx)
                    .and_then(|data| data.waiters.take());
                for (id, request) in parked.into_iter().flatten() {
                    self.scheduler.track(id, request);
                    self.scheduler.reschedule(id, ScheduleReason::FreshData);
                }
            }

            let expires_at = (connection.session_expiry != u32::MAX).then(|| {
                std::time::Instant::now()
                    + std::time::Duration::from_secs(u64::from(connection.session_expiry))
            });
            self.graveyard.save_state(
                tracker,
                connection.subscriptions,
                connection.sub_options,
                connection.events,
                outgoing.unacked_pubrels,
                expires_at,
            );
        } else {
            tracker.pause(PauseReason::Busy);
            let id = tracker.id.clone();
            // Only save metrics in clean session
            self.graveyard.save_metrics(id, connection.events);
        }
        self.router_meters.total_connections -= 1;
    }

    /// Handles new incoming data on a topic
    fn handle_device_payload(&mut self, id: ConnectionId) {
        let incoming = match self.ibufs.get_mut(id) {
            Some(v) => v,
            None => {
                error!("no-connection id {} is already gone", id);
                return;
            }
        };

        let client_id = incoming.client_id.clone();
        let span = tracing::error_span!("incoming_payload", client_id);
        let _guard = span.enter();

        // Instead of exchanging, we should just append new incoming packets inside cache
        let mut packets = incoming.exchange(self.cache.take().unwrap_or_default());
        let mut batch = Batch::default();
        self.process_packets(id, packets.drain(..), &mut batch);
        self.cache = Some(packets);
        self.finish_batch(id, batch);
    }

    /// Handles a connection's packets in order. While some are held (a log they go to is
    /// full of messages a durable subscriber has not read), those that must stay behind them
    /// are held too; acknowledgements, pings and DISCONNECT are handled at once, so that a
    /// publisher that is also a subscriber keeps acknowledging what it receives.
    fn process_packets(
        &mut self,
        id: ConnectionId,
        packets: impl Iterator<Item = Packet>,
        batch: &mut Batch,
    ) {
        for packet in packets {
            let Some(incoming) = self.ibufs.get_mut(id) else {
                return;
            };
            if !incoming.held.is_empty() && stays_in_order(&packet) {
                incoming.hold(packet);
                continue;
            }
            match self.handle_packet(id, packet, batch) {
                Flow::Next => {}
                Flow::Stop => break,
                Flow::Wait(packet, filter_idx) => self.hold(id, packet, filter_idx),
            }
        }
    }

    /// Holds a packet that would overflow `filter_idx`'s log past a durable subscriber.
    fn hold(&mut self, id: ConnectionId, packet: Packet, filter_idx: FilterIdx) {
        let Some(incoming) = self.ibufs.get_mut(id) else {
            return;
        };
        incoming.hold(packet);
        if incoming.held_since.is_none() {
            incoming.held_since = Some((Instant::now(), filter_idx));
            self.held.push_back(id);
            let filter = self
                .datalog
                .native
                .get(filter_idx)
                .map(|data| data.filter().as_str())
                .unwrap_or_default();
            debug!(
                filter,
                "publisher held: the log is full of unread durable messages"
            );
            self.observer.held(&incoming.client_id, filter);
        } else if let Some((_, on)) = incoming.held_since.as_mut() {
            *on = filter_idx;
        }
    }

    /// Acks, wakes consumers of new data and disconnects, once the packets of a batch are
    /// handled.
    fn finish_batch(&mut self, id: ConnectionId, batch: Batch) {
        // Prepare AcksRequest in tracker if router is operating in a
        // single node mode or force ack request for subscriptions
        if batch.force_ack && self.scheduler.trackers.contains(id) {
            self.scheduler.reschedule(id, ScheduleReason::FreshData);
        }

        // Notify waiting consumers only if there is publish data. During
        // subscription, data request is added to data waiter. With out this
        // if condition, connection will be woken up even during subscription
        if batch.new_data {
            // Prepare all the consumers which are waiting for new data
            while let Some((id, request)) = self.notifications.pop_front() {
                if self.scheduler.trackers.contains(id) {
                    self.scheduler.track(id, request);
                    self.scheduler.reschedule(id, ScheduleReason::FreshData);
                }
            }
        }

        // Incase BytesMut represents 10 packets, publish error/diconnect event
        // on say 5th packet should not block new data notifications for packets
        // 1 - 4. Hence we use a flag instead of diconnecting immediately
        if batch.disconnect {
            self.handle_disconnection(id, batch.disconnect_reason);
        }
    }

    /// Gives held connections another try, in turns, once their logs have room again.
    fn release_held(&mut self) {
        self.last_release = Instant::now();
        self.progress = false;
        self.graveyard.sweep(self.last_release);
        // Spill files every durable reader has passed make room in the spill area.
        self.delete_spilled();
        let blocked: Vec<FilterIdx> = self.blocked.iter().copied().collect();
        for filter_idx in blocked {
            if !self.durable_reader_behind(filter_idx) || self.spill_has_room(filter_idx) {
                self.blocked.remove(&filter_idx);
            }
        }
        for _ in 0..self.held.len() {
            let Some(id) = self.held.pop_front() else {
                break;
            };
            let Some(incoming) = self.ibufs.get_mut(id) else {
                continue;
            };
            let Some((since, filter_idx)) = incoming.held_since else {
                continue;
            };
            if self.blocked.contains(&filter_idx) {
                self.held.push_back(id);
                continue;
            }
            let held = incoming.take_held();
            let mut batch = Batch::default();
            self.process_packets(id, held.into_iter(), &mut batch);
            if let Some(incoming) = self.ibufs.get_mut(id) {
                if incoming.held.is_empty() {
                    incoming.held_since = None;
                    self.observer.released(&incoming.client_id, since.elapsed());
                } else {
                    self.held.push_back(id);
                }
            }
            self.finish_batch(id, batch);
        }
    }

    /// Whether appending to `filter_idx`'s log must wait: it is full, dropping its oldest
    /// segment would drop messages a durable subscriber has not read (or acknowledged), and
    /// that segment cannot be written to the spill area (there is none, it is full, or the
    /// write failed). A segment that is spilled leaves memory: the append goes on.
    fn must_wait(&mut self, filter_idx: FilterIdx) -> bool {
        let Some(data) = self.datalog.native.get(filter_idx) else {
            return false;
        };
        if !data.log.next_append_drops_head() {
            return false;
        }
        if self.blocked.contains(&filter_idx) {
            return true;
        }
        let behind = self.durable_reader_behind(filter_idx) && !self.spill_head(filter_idx);
        if behind {
            self.blocked.insert(filter_idx);
            // Who holds the log: the durable subscriber furthest behind.
            let mut slowest: Option<(String, u64)> = None;
            self.durable_positions(Some(filter_idx), |subscriber, _, position| {
                if slowest
                    .as_ref()
                    .is_none_or(|(_, oldest)| position < *oldest)
                {
                    slowest = Some((subscriber.to_owned(), position));
                }
            });
            if let (Some((subscriber, _)), Some(data)) =
                (slowest, self.datalog.native.get(filter_idx))
            {
                self.observer.blocked(data.filter(), &subscriber);
            }
        }
        behind
    }

    /// Writes the oldest segment of `filter_idx`'s log to the spill area; false if there is
    /// none, or no room, or the write failed.
    fn spill_head(&mut self, filter_idx: FilterIdx) -> bool {
        let DataLog { native, spill, .. } = &mut self.datalog;
        match (spill.as_mut(), native.get_mut(filter_idx)) {
            (Some(spill), Some(data)) => data.spill_head(spill, filter_idx),
            _ => false,
        }
    }

    /// Whether the spill area may have room for the oldest segment of `filter_idx`'s log
    /// (its size when it was last refused, else a segment's worth).
    fn spill_has_room(&self, filter_idx: FilterIdx) -> bool {
        let (Some(spill), Some(data)) = (
            self.datalog.spill.as_ref(),
            self.datalog.native.get(filter_idx),
        ) else {
            return false;
        };
        let needed = data
            .log
            .spill_needed()
            .unwrap_or(self.config.max_segment_size as u64);
        spill.has_room(needed)
    }

    /// Deletes the spilled segments that every durable reader of their log has passed (read
    /// and acknowledged). Readers that are not durable and still in them jump past them on
    /// their next read (reported as dropped).
    fn delete_spilled(&mut self) {
        let logs: Vec<FilterIdx> = match self.datalog.spill.as_ref() {
            Some(spill) if !spill.logs.is_empty() => spill.logs.iter().copied().collect(),
            _ => return,
        };
        for filter_idx in logs {
            let mut oldest = u64::MAX;
            self.durable_positions(Some(filter_idx), |_, _, position| {
                oldest = oldest.min(position);
            });
            let DataLog { native, spill, .. } = &mut self.datalog;
            let Some(spill) = spill.as_mut() else {
                return;
            };
            match native.get_mut(filter_idx) {
                Some(data) => {
                    data.delete_spilled_before(oldest, spill, filter_idx);
                }
                None => {
                    spill.logs.remove(&filter_idx);
                }
            }
        }
    }

    /// Whether a durable subscriber still needs the oldest segment of `filter_idx`'s log.
    fn durable_reader_behind(&self, filter_idx: FilterIdx) -> bool {
        let Some(data) = self.datalog.native.get(filter_idx) else {
            return false;
        };
        if !data.log.next_append_drops_head() {
            return false;
        }
        let (_, kept) = data.log.start_after_drop();
        let mut behind = false;
        self.durable_positions(Some(filter_idx), |_, _, position| {
            behind |= position < kept;
        });
        behind
    }

    /// Whether a publish from `id` must wait for room in a log it goes to; if not, the
    /// subscribers that are not durable are moved past the segment its append drops.
    fn admit(
        &mut self,
        id: ConnectionId,
        publish: &Publish,
        properties: &Option<PublishProperties>,
    ) -> Option<FilterIdx> {
        let alias_topic;
        let mut topic = &publish.topic[..];
        if topic.is_empty() {
            let alias = properties.as_ref().and_then(|p| p.topic_alias);
            alias_topic = alias
                .and_then(|alias| self.connections.get(id)?.topic_aliases.get(&alias).cloned());
            topic = alias_topic
                .as_deref()
                .map(str::as_bytes)
                .unwrap_or_default();
        }
        let Ok(topic) = std::str::from_utf8(topic) else {
            return None;
        };
        let filter_idxs = self.datalog.matches(topic);
        for &filter_idx in &filter_idxs {
            if self.must_wait(filter_idx) {
                return Some(filter_idx);
            }
        }
        for filter_idx in filter_idxs {
            if self
                .datalog
                .native
                .get(filter_idx)
                .is_some_and(|data| data.log.next_append_drops_head())
            {
                self.skip_dropped_segment(filter_idx);
            }
        }
        None
    }

    /// Visits the position of every durable subscriber (of `only`'s log, or of every log):
    /// (subscriber, log, absolute offset of the oldest message it has not read or not
    /// acknowledged).
    fn durable_positions(
        &self,
        only: Option<FilterIdx>,
        mut visit: impl FnMut(&str, FilterIdx, u64),
    ) {
        let wanted = |filter_idx: FilterIdx| only.is_none_or(|only| only == filter_idx);
        // Live connections' requests: tracked, parked as caught up, or about to be woken.
        let mut live: HashMap<(ConnectionId, FilterIdx), u64> = HashMap::new();
        let connections = &self.connections;
        let mut note = |id: ConnectionId, request: &DataRequest| {
            if request.group.is_some() || !wanted(request.filter_idx) {
                return;
            }
            let durable = connections.get(id).is_some_and(|connection| {
                connection.session_expiry > 0 && subscription_qos(connection, request) > 0
            });
            if durable {
                live.entry((id, request.filter_idx))
                    .and_modify(|position| *position = (*position).min(request.cursor.1))
                    .or_insert(request.cursor.1);
            }
        };
        for (id, tracker) in self.scheduler.trackers.iter() {
            tracker.data_requests.iter().for_each(|r| note(id, r));
        }
        match only {
            Some(filter_idx) => {
                if let Some(data) = self.datalog.native.get(filter_idx) {
                    data.waiters
                        .waiters()
                        .iter()
                        .for_each(|(id, r)| note(*id, r));
                }
            }
            None => {
                for (_, data) in self.datalog.native.iter() {
                    data.waiters
                        .waiters()
                        .iter()
                        .for_each(|(id, r)| note(*id, r));
                }
            }
        }
        self.notifications.iter().for_each(|(id, r)| note(*id, r));
        for ((id, filter_idx), position) in live {
            let Some(connection) = self.connections.get(id) else {
                continue;
            };
            let inflight = self
                .obufs
                .get(id)
                .and_then(|outgoing| outgoing.oldest_inflight(filter_idx))
                .map_or(u64::MAX, |cursor| cursor.1);
            visit(&connection.client_id, filter_idx, position.min(inflight));
        }

        // Saved sessions
        for (client_id, request, qos) in self.graveyard.saved_requests() {
            if qos > 0 && wanted(request.filter_idx) {
                visit(client_id, request.filter_idx, request.cursor.1);
            }
        }

        // Shared groups with a member whose session outlives its connection
        for (name, group) in self.shared_subscriptions.iter() {
            let Some((share, filter)) = name.split_once('/') else {
                continue;
            };
            let Some(filter_idx) = self.datalog.filter_idx(filter) else {
                continue;
            };
            if !wanted(filter_idx) {
                continue;
            }
            let (durable, position) = self.group_position(name, group, filter_idx);
            if durable {
                visit(&format!("$share/{share}"), filter_idx, position);
            }
        }
    }

    /// Whether a shared group is durable, and the oldest message it has not read or not
    /// acknowledged (its cursor, or older messages in flight to members with persistent
    /// sessions, to which it rewinds when they leave).
    fn group_position(
        &self,
        name: &str,
        group: &SharedGroup,
        filter_idx: FilterIdx,
    ) -> (bool, u64) {
        let subscription = format!("$share/{name}");
        let mut durable = false;
        let mut position = group.cursor.1;
        for member in group.clients() {
            let Some(&id) = self.connection_map.get(member) else {
                continue;
            };
            let Some(connection) = self.connections.get(id) else {
                continue;
            };
            if connection.session_expiry == 0 {
                continue;
            }
            durable |= connection
                .sub_options
                .get(&subscription)
                .is_some_and(|options| options.qos > 0);
            if let Some(cursor) = self
                .obufs
                .get(id)
                .and_then(|o| o.oldest_inflight(filter_idx))
            {
                position = position.min(cursor.1);
            }
        }
        (durable || self.graveyard.has_group_member(name), position)
    }

    /// Moves the subscribers of `filter_idx`'s log that are not durable and still in its
    /// oldest segment past it (it is about to be dropped), and reports what they lose.
    fn skip_dropped_segment(&mut self, filter_idx: FilterIdx) {
        let Some(data) = self.datalog.native.get_mut(filter_idx) else {
            return;
        };
        let next = data.log.start_after_drop();
        let filter = data.filter().clone();
        // (subscriber, connection or group, messages skipped, reason)
        let mut skipped: Vec<(String, Skipped, u64, DropReason)> = Vec::new();
        let connections = &self.connections;
        let mut skip = |id: ConnectionId, request: &mut DataRequest| {
            if request.group.is_some()
                || request.filter_idx != filter_idx
                || request.cursor.1 >= next.1
            {
                return;
            }
            let Some(connection) = connections.get(id) else {
                return;
            };
            let reason = if connection.session_expiry == 0 {
                DropReason::CleanSession
            } else if subscription_qos(connection, request) == 0 {
                DropReason::Qos0
            } else {
                DropReason::Durable
            };
            skipped.push((
                connection.client_id.clone(),
                Skipped::Connection(id),
                next.1 - request.cursor.1,
                reason,
            ));
            request.cursor = next;
        };
        for (id, tracker) in self.scheduler.trackers.iter_mut() {
            tracker.data_requests.iter_mut().for_each(|r| skip(id, r));
        }
        for (id, request) in data.waiters.get_mut().iter_mut() {
            skip(*id, request);
        }
        for (id, request) in self.notifications.iter_mut() {
            skip(*id, request);
        }
        for (client_id, request, qos) in self.graveyard.saved_requests_mut() {
            if request.filter_idx == filter_idx && request.cursor.1 < next.1 {
                let reason = if qos == 0 {
                    DropReason::Qos0
                } else {
                    DropReason::Durable
                };
                skipped.push((
                    client_id.to_owned(),
                    Skipped::Saved,
                    next.1 - request.cursor.1,
                    reason,
                ));
                request.cursor = next;
            }
        }
        let groups: Vec<String> = self
            .shared_subscriptions
            .iter()
            .filter(|(name, group)| {
                name.split_once('/').map(|(_, f)| f) == Some(filter.as_str())
                    && group.cursor.1 < next.1
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in groups {
            let Some(group) = self.shared_subscriptions.get(&name) else {
                continue;
            };
            let (durable, _) = self.group_position(&name, group, filter_idx);
            let Some(group) = self.shared_subscriptions.get_mut(&name) else {
                continue;
            };
            let share = name
                .split_once('/')
                .map_or(name.as_str(), |(share, _)| share);
            skipped.push((
                format!("$share/{share}"),
                Skipped::Group(name.clone()),
                next.1 - group.cursor.1,
                if durable {
                    DropReason::Durable
                } else {
                    DropReason::CleanSession
                },
            ));
            group.cursor = next;
        }

        for (subscriber, whose, count, reason) in skipped {
            self.report_dropped(&subscriber, whose, &filter, count, reason);
        }
    }

    /// Reports messages skipped for a subscriber, and logs it the first time.
    fn report_dropped(
        &mut self,
        subscriber: &str,
        whose: Skipped,
        filter: &str,
        count: u64,
        reason: DropReason,
    ) {
        if count == 0 {
            return;
        }
        let first = match whose {
            Skipped::Connection(id) => self
                .connections
                .get_mut(id)
                .is_some_and(|c| !std::mem::replace(&mut c.drops_logged, true)),
            Skipped::Group(name) => self.drops_logged.insert(format!("group {name}")),
            Skipped::Saved => self.drops_logged.insert(format!("session {subscriber}")),
        };
        if reason == DropReason::Durable {
            error!(
                subscriber,
                filter, count, "messages of a durable subscriber were dropped from the log"
            );
        }
        self.observer
            .dropped(subscriber, filter, count, reason, first);
    }

    /// Reports how far behind the durable subscribers are.
    fn report_lag(&mut self) {
        self.last_lag_report = Instant::now();
        let mut lags: Vec<Lag> = Vec::new();
        self.durable_positions(None, |subscriber, filter_idx, position| {
            let Some(data) = self.datalog.native.get(filter_idx) else {
                return;
            };
            let next = data.log.next_offset().1;
            let messages = next.saturating_sub(position.max(data.log.start_offset()));
            if messages > 0 {
                lags.push(Lag {
                    subscriber: subscriber.to_owned(),
                    filter: data.filter().clone(),
                    messages,
                });
            }
        });
        self.observer.lag(&lags);
    }

    /// Handles one packet of a connection.
    fn handle_packet(&mut self, id: ConnectionId, packet: Packet, batch: &mut Batch) -> Flow {
        let client_id = match self.ibufs.get(id) {
            Some(incoming) => incoming.client_id.clone(),
            None => return Flow::Stop,
        };
        match packet {
            Packet::Publish(publish, properties) => {
                let span =
                    tracing::error_span!("publish", topic = ?publish.topic, pkid = publish.pkid);
                let _guard = span.enter();

                let qos = publish.qos;
                let pkid = publish.pkid;

                // No room in a log this goes to: held, unacknowledged (a QoS 2 publish is
                // kept until its PUBREL, which is held then).
                if qos != QoS::ExactlyOnce {
                    if let Some(filter_idx) = self.admit(id, &publish, &properties) {
                        return Flow::Wait(Packet::Publish(publish, properties), filter_idx);
                    }
                }

                // Prepare acks for the above publish
                // If any of the publish in the batch results in force flush,
                // set global force flush flag. Force flush is triggered when the
                // router is in instant ack more or connection data is from a replica
                //
                // TODO: handle multiple offsets
                //
                // The problem with multiple offsets is that when using replication with the current
                // architecture, a single publish might get appended to multiple commit logs, resulting in
                // multiple offsets (see `append_to_commitlog` function), meaning replicas will need to
                // coordinate using multiple offsets, and we don't have any idea how to do so right now.
                // Currently as we don't have replication, we just use a single offset, even when appending to
                // multiple commit logs.

                match qos {
                    QoS::AtLeastOnce => {
                        let puback = PubAck {
                            pkid,
                            reason: PubAckReason::Success,
                        };

                        let ackslog = self.ackslog.get_mut(id).unwrap();
                        ackslog.puback(puback);
                        batch.force_ack = true;
                    }
                    QoS::ExactlyOnce => {
                        let pubrec = PubRec {
                            pkid,
                            reason: PubRecReason::Success,
                        };

                        let ackslog = self.ackslog.get_mut(id).unwrap();
                        ackslog.pubrec(publish, properties, pubrec);
                        batch.force_ack = true;
                        return Flow::Next;
                    }
                    QoS::AtMostOnce => {
                        // Do nothing
                    }
                };

                self.router_meters.total_publishes += 1;

                // Try to append publish to commitlog
                self.publish_seq += 1;
                match append_to_commitlog(
                    id,
                    publish.clone(),
                    properties,
                    self.publish_seq,
                    &mut self.datalog,
                    &mut self.notifications,
                    &mut self.connections,
                ) {
                    Ok(_offset) => {
                        // Even if one of the data in the batch is appended to commitlog,
                        // set new data. This triggers notifications to wake waiters.
                        // Don't overwrite this flag to false if it is already true.
                        batch.new_data = true;
                    }
                    Err(e) => {
                        // Disconnect on bad publishes
                        error!(
                            reason = ?e, "Failed to append to commitlog"
                        );
                        self.router_meters.failed_publishes += 1;
                        batch.disconnect = true;

                        if let RouterError::Disconnect(code) = e {
                            batch.disconnect_reason = Some(code)
                        }

                        return Flow::Stop;
                    }
                };

                let meter = &mut self.ibufs.get_mut(id).unwrap().meter;
                if let Err(e) = meter.register_publish(&publish) {
                    error!(
                        reason = ?e, "Failed to write to incoming meter"
                    );
                };
            }
            Packet::Subscribe(mut subscribe, props) => {
                self.note_session_change(id);
                let mut return_codes = Vec::new();
                let pkid = subscribe.pkid;
                // let len = s.len();

                for f in &mut subscribe.filters {
                    let span =
                        tracing::info_span!("subscribe", topic = f.path, pkid = subscribe.pkid);
                    let _guard = span.enter();

                    info!("Adding subscription on topic {}", f.path);
                    let connection = self.connections.get_mut(id).unwrap();

                    if let Err(e) = validate_subscription(connection, f) {
                        warn!(reason = ?e,"Subscription cannot be validated: {}", e);

                        batch.disconnect = true;
                        break;
                    }

                    let mut filter = f.path.clone();
                    let mut group = None;

                    if let Some((grp, filter_path)) = extract_group(&f.path) {
                        // A group shares one read cursor, so it must read one filter:
                        // the same share name on two filters makes two groups.
                        group = Some(format!("{grp}/{filter_path}"));
                        filter = filter_path;
                    };

                    let subscription_id = props.as_ref().and_then(|p| p.id);

                    if subscription_id == Some(0) {
                        error!("Subscription identifier can't be 0");
                        batch.disconnect = true;
                        batch.disconnect_reason = Some(DisconnectReasonCode::ProtocolError);
                        break;
                    }

                    let (idx, cursor) = self.datalog.next_native_offset(&filter);

                    // in case of shared sub original_filter will be $share/group/topic
                    // this is because we do want to treat is as diffrent subscription
                    // and create DataRequest, while using the same datalog of "topic"
                    // NOTE: topic & $share/group/topic will have same filteridx!
                    self.prepare_filter(id, cursor, idx, f, group, subscription_id);

                    let code = match f.qos {
                        QoS::AtMostOnce => SubscribeReasonCode::QoS0,
                        QoS::AtLeastOnce => SubscribeReasonCode::QoS1,
                        QoS::ExactlyOnce => SubscribeReasonCode::QoS2,
                    };

                    return_codes.push(code);
                }

                // let meter = &mut self.ibufs.get_mut(id).unwrap().meter;
                // meter.total_size += len;

                let suback = SubAck { pkid, return_codes };
                let ackslog = self.ackslog.get_mut(id).unwrap();
                ackslog.suback(suback);
                batch.force_ack = true;
            }
            Packet::Unsubscribe(unsubscribe, _) => {
                self.progress = true;
                self.note_session_change(id);
                let connection = self.connections.get_mut(id).unwrap();
                let pkid = unsubscribe.pkid;
                // One UNSUBACK for the whole packet, with a reason per filter (upstream
                // sent one per subscribed filter and none for a filter not subscribed).
                let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
                for filter in &unsubscribe.filters {
                    let span = tracing::info_span!("unsubscribe", topic = filter, pkid);
                    let _guard = span.enter();

                    debug!("Removing subscription on filter {}", filter);
                    let removed = self
                        .subscription_map
                        .get_mut(filter)
                        .is_some_and(|connection_ids| connection_ids.remove(&id));
                    if !removed || !connection.subscriptions.remove(filter) {
                        reasons.push(UnsubAckReason::NoSubscriptionExisted);
                        continue;
                    }

                    let meter = &mut self.ibufs.get_mut(id).unwrap().meter;
                    meter.unregister_subscription(filter);

                    // Leave the group of this filter only (upstream left every
                    // group and dropped every empty one, even groups whose members
                    // are away with persistent sessions); drop it if it is empty
                    // and no saved session will come back to it.
                    let mut log_filter = filter.clone();
                    if let Some((grp, filter_path)) = extract_group(filter) {
                        let name = format!("{grp}/{filter_path}");
                        if let Some(group) = self.shared_subscriptions.get_mut(&name) {
                            group.remove_client(&client_id);
                            if group.is_empty() && !self.graveyard.has_group_member(&name) {
                                self.shared_subscriptions.remove(&name);
                            }
                        }
                        log_filter = filter_path;
                    }

                    if let Some(broker_aliases) = connection.broker_topic_aliases.as_mut() {
                        broker_aliases.remove_alias(filter);
                    }

                    connection.sub_options.remove(filter);
                    connection.resend_retained.remove(filter);
                    self.scheduler.untrack(id, filter);
                    self.datalog.remove_waiters_for_id(id, &log_filter, filter);
                    reasons.push(UnsubAckReason::Success);
                }
                let unsuback = UnsubAck { pkid, reasons };
                let ackslog = self.ackslog.get_mut(id).unwrap();
                ackslog.unsuback(unsuback);
                batch.force_ack = true;
            }
            Packet::PubAck(puback, _) => {
                self.progress = true;
                let span = tracing::info_span!("puback", pkid = puback.pkid);
                let _guard = span.enter();

                let outgoing = self.obufs.get_mut(id).unwrap();
                let pkid = puback.pkid;
                if outgoing.register_ack(pkid).is_none() {
                    error!(pkid, "Unsolicited/ooo ack received for pkid {}", pkid);
                    batch.disconnect = true;
                    return Flow::Stop;
                }

                self.scheduler.reschedule(id, ScheduleReason::IncomingAck);
            }
            Packet::PubRec(pubrec, _) => {
                self.progress = true;
                let span = tracing::info_span!("pubrec", pkid = pubrec.pkid);
                let _guard = span.enter();

                let outgoing = self.obufs.get_mut(id).unwrap();
                let pkid = pubrec.pkid;
                if outgoing.register_ack(pkid).is_none() {
                    error!(pkid, "Unsolicited/ooo ack received for pkid {}", pkid);
                    batch.disconnect = true;
                    return Flow::Stop;
                }

                let ackslog = self.ackslog.get_mut(id).unwrap();
                let pubrel = PubRel {
                    pkid: pubrec.pkid,
                    reason: PubRelReason::Success,
                };

                outgoing.register_pubrec(pubrel.pkid);
                ackslog.pubrel(pubrel);
                self.scheduler.reschedule(id, ScheduleReason::IncomingAck);
            }
            Packet::PubRel(pubrel, props) => {
                let span = tracing::info_span!("pubrel", pkid = pubrel.pkid);
                let _guard = span.enter();

                // The QoS 2 message this releases waits for room like any publish.
                let waiting = self
                    .ackslog
                    .get(id)
                    .and_then(|ackslog| ackslog.next_recorded())
                    .cloned();
                if let Some((publish, properties)) = waiting {
                    if let Some(filter_idx) = self.admit(id, &publish, &properties) {
                        return Flow::Wait(Packet::PubRel(pubrel, props), filter_idx);
                    }
                }

                let ackslog = self.ackslog.get_mut(id).unwrap();
                let pubcomp = PubComp {
                    pkid: pubrel.pkid,
                    reason: PubCompReason::Success,
                };

                // NOTE: client can try to resend previously unacked pubrels
                // on reconnection ( with clean session false )
                // we try to retrive publish assuming broker saved the previous state
                // successfully in graveyard.
                let (publish, props) = match ackslog.pubcomp(pubcomp) {
                    Some(v) => v,
                    None => {
                        batch.disconnect = true;
                        return Flow::Stop;
                    }
                };

                // Try to append publish to commitlog
                self.publish_seq += 1;
                match append_to_commitlog(
                    id,
                    publish,
                    props,
                    self.publish_seq,
                    &mut self.datalog,
                    &mut self.notifications,
                    &mut self.connections,
                ) {
                    Ok(_offset) => {
                        // Even if one of the data in the batch is appended to commitlog,
                        // set new data. This triggers notifications to wake waiters.
                        // Don't overwrite this flag to false if it is already true.
                        batch.new_data = true;
                    }
                    Err(e) => {
                        // Disconnect on bad publishes
                        error!(
                            reason = ?e, "Failed to append to commitlog"
                        );
                        self.router_meters.failed_publishes += 1;
                        batch.disconnect = true;
                        return Flow::Stop;
                    }
                };
                self.scheduler.reschedule(id, ScheduleReason::IncomingAck);
            }
            Packet::PubComp(pubcomp, _) => {
                self.progress = true;
                let span = tracing::info_span!("pubcomp", pkid = pubcomp.pkid);
                let _guard = span.enter();

                let outgoing = self.obufs.get_mut(id).unwrap();
                let pkid = pubcomp.pkid;
                if outgoing.register_pubcomp(pkid).is_none() {
                    error!(
                        pkid,
                        "ack received for pkid {}, but the pkid didn't exists!", pkid
                    );
                    batch.disconnect = true;
                    return Flow::Stop;
                }
            }
            Packet::PingReq(_) => {
                let ackslog = self.ackslog.get_mut(id).unwrap();
                ackslog.pingresp(PingResp);

                batch.force_ack = true;
            }
            Packet::Disconnect(_, properties) => {
                let span = tracing::info_span!("disconnect");
                let _guard = span.enter();
                batch.disconnect = true;
                // MQTT 5: the client may change its session expiry when it leaves
                if let Some(expiry) = properties.and_then(|p| p.session_expiry_interval) {
                    if let Some(connection) = self.connections.get_mut(id) {
                        connection.session_expiry = expiry;
                    }
                }
                // delete the last will message
                self.last_wills.remove(&client_id);
                return Flow::Stop;
            }
            incoming => {
                warn!(packet=?incoming, "Unexpected packet received, ignoring the packet." );
            }
        }
        Flow::Next
    }

    /// Apply filter and prepare this connection to receive subscription data
    /// Handle retained messages as per subscription options!
    fn prepare_filter(
        &mut self,
        id: ConnectionId,
        cursor: Offset,
        filter_idx: FilterIdx,
        filter: &protocol::Filter,
        group: Option<String>,
        subscription_id: Option<usize>,
    ) {
        let filter_path = &filter.path;

        // Add connection id to subscription list
        match self.subscription_map.get_mut(filter_path) {
            Some(connections) => {
                connections.insert(id);
            }
            None => {
                let mut connections = HashSet::new();
                connections.insert(id);
                self.subscription_map
                    .insert(filter_path.clone(), connections);
            }
        }

        // Prepare consumer to pull data in case of subscription
        let connection = self.connections.get_mut(id).unwrap();

        // Add/Create shared group
        if let Some(group_name) = &group {
            let client_id = connection.client_id.clone();

            let shared_group = self
                .shared_subscriptions
                .entry(group_name.to_string())
                .or_insert(SharedGroup::new(
                    cursor,
                    self.config.shared_subscriptions_strategy.clone(),
                ));

            shared_group.add_client(client_id);
        };

        // A subscription to a filter already subscribed replaces the old one's options
        // (MQTT 5 3.8.4); its messages keep flowing from where they are.
        connection.sub_options.insert(
            filter_path.clone(),
            SubscriptionOptions {
                qos: filter.qos as u8,
                no_local: filter.nolocal,
                retain_as_published: filter.preserve_retain,
                id: subscription_id,
            },
        );

        // Retained messages: never for shared subscriptions; otherwise as the retain handling
        // option says (0: at every subscribe, 1: only for a new subscription, 2: never).
        let retained = group.is_none();

        // call to `insert(_)` returns `true` if it didn't contain the filter_path already
        // i.e. its a new subscription
        if connection.subscriptions.insert(filter_path.clone()) {
            let request = DataRequest {
                filter: filter_path.clone(),
                filter_idx,
                qos: filter.qos as u8,
                cursor,
                read_count: 0,
                max_count: 100,
                forward_retained: retained
                    && filter.retain_forward_rule != RetainForwardRule::Never,
                group,
            };

            self.scheduler.track(id, request);
            self.scheduler.reschedule(id, ScheduleReason::NewFilter);
            debug_assert!(self.scheduler.check_tracker_duplicates(id).is_none())
        } else if retained && filter.retain_forward_rule == RetainForwardRule::OnEverySubscribe {
            connection.resend_retained.insert(filter_path.clone());
            // A request parked as caught up is woken to send them now.
            if let Some(request) = self
                .datalog
                .remove_waiters_for_id(id, filter_path, filter_path)
            {
                self.scheduler.track(id, request);
            }
            self.scheduler.reschedule(id, ScheduleReason::NewFilter);
        }

        let meter = &mut self.ibufs.get_mut(id).unwrap().meter;
        meter.register_subscription(filter_path.clone());
    }

    /// When a connection is ready, it should sweep native data from 'datalog',
    /// send data and notifications to consumer.
    /// To activate a connection, first connection's tracker is fetched and
    /// all the requests are handled.
    fn consume(&mut self) -> Option<()> {
        let mut jumped = Vec::new();
        let consumed = self.consume_into(&mut jumped);
        // Messages a reader skipped because they had left the log already (its cursor was
        // not moved when they were dropped).
        for (id, subscriber, filter, group, count) in jumped {
            let (whose, reason) = match group {
                Some(name) => {
                    let durable = match (
                        self.shared_subscriptions.get(&name),
                        self.datalog.filter_idx(&filter),
                    ) {
                        (Some(group), Some(filter_idx)) => {
                            self.group_position(&name, group, filter_idx).0
                        }
                        _ => false,
                    };
                    let reason = if durable {
                        DropReason::Durable
                    } else {
                        DropReason::CleanSession
                    };
                    (Skipped::Group(name), reason)
                }
                None => {
                    let reason = match self.connections.get(id) {
                        Some(c) if c.session_expiry == 0 => DropReason::CleanSession,
                        Some(c) if c.sub_options.get(&filter).is_some_and(|o| o.qos == 0) => {
                            DropReason::Qos0
                        }
                        _ => DropReason::Durable,
                    };
                    (Skipped::Connection(id), reason)
                }
            };
            self.report_dropped(&subscriber, whose, &filter, count, reason);
        }
        consumed
    }

    /// [`Self::consume`], noting the readers whose cursor jumped ahead: (connection,
    /// subscriber, log filter, group, messages skipped).
    fn consume_into(
        &mut self,
        jumped: &mut Vec<(ConnectionId, String, Filter, Option<String>, u64)>,
    ) -> Option<()> {
        let (id, mut requests) = self.scheduler.poll()?;

        let span = tracing::info_span!("[<] outgoing", connection_id = id);
        let _guard = span.enter();

        let outgoing = match self.obufs.get_mut(id) {
            Some(v) => v,
            None => {
                error!("Connection is already disconnected");
                return Some(());
            }
        };

        let ackslog = self.ackslog.get_mut(id).unwrap();
        let datalog = &mut self.datalog;
        let alertlog = &mut self.alertlog;

        trace!("Consuming requests");

        // We always try to ack when ever a connection is scheduled
        ack_device_data(ackslog, outgoing);

        let connection = &mut self.connections[id];

        // Keep track of temporarily skipped DataRequest
        // NOTE: VecDeque::new() doesn't allocate memory until elements are pushed
        let mut skipped_requests: VecDeque<DataRequest> = VecDeque::new();

        // A new connection's tracker is always initialized with acks request.
        // A subscribe will register data request.
        // So a new connection is always scheduled with at least one request
        for _ in 0..MAX_SCHEDULE_ITERATIONS {
            let mut request = match requests.pop_front() {
                // Handle next data or acks request
                Some(request) => request,
                // No requests in the queue. This implies that consumer data and
                // acks are completely caught up. Pending requests are registered
                // in waiters and awaiting new notifications (device or replica data)
                None => {
                    if skipped_requests.is_empty() {
                        // if no requests is in skip list, that means
                        // we have nothing left to process, i.e. we caughtup
                        self.scheduler.pause(id, PauseReason::Caughtup);
                    }
                    // add back the skipped requests!
                    self.scheduler.trackv(id, skipped_requests);
                    return Some(());
                }
            };

            let shared_group = request
                .group
                .as_ref()
                .and_then(|name| self.shared_subscriptions.get_mut(name));

            let mut skipped = 0;
            let cursor = request.cursor;
            let status = forward_device_data(
                &mut request,
                datalog,
                outgoing,
                alertlog,
                connection,
                shared_group,
                &mut skipped,
            );
            if request.cursor != cursor {
                self.progress = true;
            }
            if skipped > 0 {
                let filter = datalog
                    .native
                    .get(request.filter_idx)
                    .map(|data| data.filter().clone())
                    .unwrap_or_default();
                let subscriber = match request.group.as_deref().and_then(|g| g.split_once('/')) {
                    Some((share, _)) => format!("$share/{share}"),
                    None => connection.client_id.clone(),
                };
                jumped.push((id, subscriber, filter, request.group.clone(), skipped));
            }
            match status {
                ConsumeStatus::BufferFull => {
                    requests.push_back(request);
                    self.scheduler.pause(id, PauseReason::Busy);
                    break;
                }
                ConsumeStatus::InflightFull => {
                    requests.push_back(request);
                    self.scheduler.pause(id, PauseReason::InflightFull);
                    break;
                }
                ConsumeStatus::FilterCaughtup => {
                    let filter = &request.filter;
                    trace!(filter, "Filter caughtup {filter}, parking connection");

                    // When all the data in the log is caught up, current request is
                    // registered in waiters and not added back to the tracker. This
                    // ensures that tracker.next() stops when all the requests are done
                    datalog.park(id, request);
                }
                ConsumeStatus::PartialRead => {
                    requests.push_back(request);
                }
                ConsumeStatus::SkipRequest => {
                    skipped_requests.push_back(request);
                }
            }
        }

        // Add requests back to the tracker if there are any
        requests.extend(skipped_requests);
        self.scheduler.trackv(id, requests);
        Some(())
    }

    pub fn handle_last_will(
        &mut self,
        client_id: String,
        #[cfg(feature = "validate-tenant-prefix")] tenant_id: Option<String>,
    ) {
        #[cfg(feature = "validate-tenant-prefix")]
        let tenant_prefix = tenant_id.map(|id| format!("/tenants/{id}/"));

        let Some((will, will_props)) = self.last_wills.remove(&client_id) else {
            return;
        };

        let publish = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic,
            pkid: 0,
            payload: will.message,
        };

        let properties = will_props.map(|props| PublishProperties {
            payload_format_indicator: props.payload_format_indicator,
            message_expiry_interval: props.message_expiry_interval,
            response_topic: props.response_topic,
            correlation_data: props.correlation_data,
            user_properties: props.user_properties,
            content_type: props.content_type,
            ..Default::default()
        });

        self.publish_seq += 1;
        match append_will_message(
            publish,
            properties,
            self.publish_seq,
            &mut self.datalog,
            &mut self.notifications,
            #[cfg(feature = "validate-tenant-prefix")]
            tenant_prefix,
        ) {
            Ok(_offset) => {
                // Prepare all the consumers which are waiting for new data
                while let Some((id, request)) = self.notifications.pop_front() {
                    self.scheduler.track(id, request);
                    self.scheduler.reschedule(id, ScheduleReason::FreshData);
                }
            }
            Err(e) => {
                // Disconnect on bad publishes
                error!(
                    reason = ?e, "Failed to append to commitlog"
                );
                self.router_meters.failed_publishes += 1;
                // Removed disconnect = true from here because we disconnect anyways
            }
        };
    }

    fn send_meters(&mut self) {
        let mut meters = Vec::with_capacity(10);
        if let Some(router_meter) = self.router_meters.get() {
            meters.push(Meter::Router(self.id, router_meter));
        }
        for f in self.subscription_map.keys() {
            let filter = f.to_owned();
            if let Some(subscription_meter) = self.datalog.meter(f).and_then(|meter| meter.get()) {
                meters.push(Meter::Subscription(filter, subscription_meter));
            }
        }

        if !meters.is_empty() {
            for (meter_id, link) in self.meters.iter() {
                if let Err(e) = link.try_send(meters.clone()) {
                    error!(meter_id, "Failed to send meter. Error = {:?}", e);
                }
            }
        }
    }

    fn send_alerts(&mut self) {
        let alerts = self.alertlog.take();

        if !alerts.is_empty() {
            let alerts: Vec<Alert> = alerts.into();
            for (meter_id, link) in self.alerts.iter() {
                if let Err(e) = link.try_send(alerts.clone()) {
                    error!(meter_id, "Failed to send alert. Error = {:?}", e);
                }
            }
        }
    }
}

fn append_to_commitlog(
    id: ConnectionId,
    mut publish: Publish,
    mut properties: Option<PublishProperties>,
    seq: u64,
    datalog: &mut DataLog,
    notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    connections: &mut Slab<Connection>,
) -> Result<Offset, RouterError> {
    let connection = connections.get_mut(id).unwrap();

    let topic_alias = properties.as_mut().and_then(|p| {
        // clear the received value as it is irrelevant while forwarding publishes
        p.topic_alias.take()
    });

    // TODO: broker should properly send the disconnect packet!
    if properties
        .as_ref()
        .is_some_and(|p| !p.subscription_identifiers.is_empty())
    {
        error!("A PUBLISH packet sent from a Client to a Server MUST NOT contain a Subscription Identifier");
        return Err(RouterError::Disconnect(
            DisconnectReasonCode::MalformedPacket,
        ));
    }

    if let Some(alias) = topic_alias {
        validate_and_set_topic_alias(&mut publish, connection, alias)?;
    };

    let topic = std::str::from_utf8(&publish.topic)?;

    // Ensure that only clients associated with a tenant can publish to tenant's topic
    #[cfg(feature = "validate-tenant-prefix")]
    if let Some(tenant_prefix) = &connection.tenant_prefix {
        if !topic.starts_with(tenant_prefix) {
            return Err(RouterError::BadTenant(
                tenant_prefix.to_owned(),
                topic.to_owned(),
            ));
        }
    }

    // Only a retained publish changes the retained message: an empty one deletes it (upstream
    // deleted it on any empty publish).
    if publish.retain {
        if publish.payload.is_empty() {
            datalog.remove_from_retained_publishes(topic.to_owned());
        } else {
            datalog.insert_to_retained_publishes(
                publish.clone(),
                properties.clone(),
                topic.to_owned(),
            );
        }
    }

    // The retain flag stays in the log: subscriptions with retain as published forward it,
    // the others clear it.
    let pkid = publish.pkid;

    let filter_idxs = datalog.matches(topic);

    let mut o = (0, 0);
    for filter_idx in filter_idxs {
        datalog.appended(filter_idx);
        let datalog = datalog.native.get_mut(filter_idx).unwrap();
        let mut publish_data: PublishData = (publish.clone(), properties.clone()).into();
        publish_data.origin = Some(connection.origin.clone());
        publish_data.seq = seq;
        let (offset, filter) = datalog.append(publish_data, notifications);
        debug!(
            pkid,
            "Appended to commitlog: {}[{}, {})", filter, offset.0, offset.1,
        );

        o = offset;
    }

    // error!("{:15.15}[E] {:20} topic = {}", connections[id].client_id, "no-filter", topic);
    Ok(o)
}

fn append_will_message(
    publish: Publish,
    properties: Option<PublishProperties>,
    seq: u64,
    datalog: &mut DataLog,
    notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    #[cfg(feature = "validate-tenant-prefix")] tenant_prefix: Option<String>,
) -> Result<Offset, RouterError> {
    // TODO: broker should properly send the disconnect packet!
    if properties
        .as_ref()
        .is_some_and(|p| !p.subscription_identifiers.is_empty())
    {
        error!("A PUBLISH packet sent from a Client to a Server MUST NOT contain a Subscription Identifier");
        return Err(RouterError::Disconnect(
            DisconnectReasonCode::MalformedPacket,
        ));
    }

    let topic = std::str::from_utf8(&publish.topic)?;

    // Ensure that only clients associated with a tenant can publish to tenant's topic
    #[cfg(feature = "validate-tenant-prefix")]
    if let Some(tenant_prefix) = tenant_prefix {
        if !topic.starts_with(&tenant_prefix) {
            return Err(RouterError::BadTenant(
                tenant_prefix.to_owned(),
                topic.to_owned(),
            ));
        }
    }

    if publish.retain {
        if publish.payload.is_empty() {
            datalog.remove_from_retained_publishes(topic.to_owned());
        } else {
            datalog.insert_to_retained_publishes(
                publish.clone(),
                properties.clone(),
                topic.to_owned(),
            );
        }
    }

    let pkid = publish.pkid;

    let filter_idxs = datalog.matches(topic);

    let mut o = (0, 0);
    for filter_idx in filter_idxs {
        datalog.appended(filter_idx);
        let datalog = datalog.native.get_mut(filter_idx).unwrap();
        let mut publish_data: PublishData = (publish.clone(), properties.clone()).into();
        publish_data.seq = seq;
        let (offset, filter) = datalog.append(publish_data, notifications);
        debug!(
            pkid,
            "Appended to commitlog: {}[{}, {})", filter, offset.0, offset.1,
        );

        o = offset;
    }

    Ok(o)
}

fn validate_and_set_topic_alias(
    publish: &mut Publish,
    connection: &mut Connection,
    alias: u16,
) -> Result<(), RouterError> {
    if alias == 0 || alias > TOPIC_ALIAS_MAX {
        error!("Alias must be greater than 0 and <={TOPIC_ALIAS_MAX}");
        return Err(RouterError::Disconnect(
            DisconnectReasonCode::TopicAliasInvalid,
        ));
    }

    if publish.topic.is_empty() {
        // if publish topic is empty, publisher must have set a valid alias
        let Some(alias_topic) = connection.topic_aliases.get(&alias) else {
            error!("Empty topic name with invalid alias");
            return Err(RouterError::Disconnect(DisconnectReasonCode::ProtocolError));
        };
        // set the publish topic before further processing
        publish.topic = alias_topic.to_owned().into();
    } else {
        // if publish topic isn't empty, that means
        // publisher wants to establish new mapping for topic & alias
        let topic = std::str::from_utf8(&publish.topic)?;
        connection.topic_aliases.insert(alias, topic.to_owned());
        trace!("set alias {alias} for topic {topic}");
    };

    Ok(())
}

/// Sweep ackslog for all the pending acks.
/// We write everything to outgoing buf with out worrying about buffer size
/// because acks most certainly won't cause memory bloat
fn ack_device_data(ackslog: &mut AckLog, outgoing: &mut Outgoing) -> bool {
    let span = tracing::info_span!("outgoing_ack", client_id = outgoing.client_id);
    let _guard = span.enter();

    let acks = ackslog.readv();
    if acks.is_empty() {
        debug!("No acks pending");
        return false;
    }

    let mut count = 0;
    let mut buffer = outgoing.data_buffer.lock();

    // Unlike forwards, we are reading all the pending acks for a given connection.
    // At any given point of time, there can be a max of connection's buffer size
    for ack in acks.drain(..) {
        let pkid = packetid(&ack);
        trace!(pkid, "Ack added for pkid {}", pkid);
        let message = Notification::DeviceAck(ack);
        buffer.push_back(message);
        count += 1;
    }

    debug!(acks_count = count, "Acks sent to device");
    outgoing.handle.try_send(()).ok();
    true
}

enum ConsumeStatus {
    /// Limit for publishes on outgoing channel reached
    BufferFull,
    /// Limit for inflight publishes on outgoing channel reached
    InflightFull,
    /// All publishes on topic forwarded
    FilterCaughtup,
    /// Some publishes on topic have been forwarded
    PartialRead,
    /// Use to indicate we want to skip the datareqest
    /// for shared subscriptions
    SkipRequest,
}

/// What became of a packet of a connection.
enum Flow {
    /// Handled: on to the next one.
    Next,
    /// The connection is to be dropped: no more of its packets.
    Stop,
    /// Held back: a log it goes to has no room yet.
    Wait(Packet, FilterIdx),
}

/// What a batch of a connection's packets calls for once handled.
#[derive(Default)]
struct Batch {
    force_ack: bool,
    new_data: bool,
    disconnect: bool,
    disconnect_reason: Option<DisconnectReasonCode>,
}

/// Whose cursor was moved past a dropped segment.
enum Skipped {
    Connection(ConnectionId),
    Saved,
    Group(String),
}

/// Packets that stay behind a held publish of the same connection: other publishes, and
/// subscriptions, whose order against the publishes matters. Acknowledgements, pings and
/// DISCONNECT go on.
fn stays_in_order(packet: &Packet) -> bool {
    matches!(
        packet,
        Packet::Publish(..) | Packet::PubRel(..) | Packet::Subscribe(..) | Packet::Unsubscribe(..)
    )
}

/// The QoS of the subscription a request reads for.
fn subscription_qos(connection: &Connection, request: &DataRequest) -> u8 {
    connection
        .sub_options
        .get(&request.filter)
        .map_or(request.qos, |options| options.qos)
}

/// How often held publishers are given another try.
const RELEASE_INTERVAL: Duration = Duration::from_millis(2);
/// How often they are given another try when nothing happened (a saved session may have
/// expired).
const IDLE_RELEASE_INTERVAL: Duration = Duration::from_millis(100);
/// How often the durable subscribers' lag is reported.
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// Messages a shared group's member reads in one turn under round robin.
const SHARED_CHUNK: u64 = 16;

/// Sweep datalog from offset in DataRequest and updates DataRequest
/// for next sweep. Returns (busy, caughtup) status
/// Returned arguments:
/// 1. `busy`: whether the data request was completed or not.
/// 2. `done`: whether the connection was busy or not.
/// 3. `inflight_full`: whether the inflight requests were completely filled
fn forward_device_data(
    request: &mut DataRequest,
    datalog: &mut DataLog,
    outgoing: &mut Outgoing,
    alertlog: &mut AlertLog,
    connection: &mut Connection,
    shared_group: Option<&mut SharedGroup>,
    skipped: &mut u64,
) -> ConsumeStatus {
    let span = tracing::info_span!("outgoing_publish", client_id = outgoing.client_id);
    let _guard = span.enter();

    if let Some(ref shared_group) = shared_group {
        // update the request cursor to use shared cursor
        request.cursor = shared_group.cursor;
    }

    trace!(
        "Reading from datalog: {}[{}, {}]",
        request.filter,
        request.cursor.0,
        request.cursor.1
    );

    // The subscription as last subscribed (a subscribe again replaces its options).
    let options = connection
        .sub_options
        .get(&request.filter)
        .copied()
        .unwrap_or(SubscriptionOptions {
            qos: request.qos,
            no_local: false,
            retain_as_published: false,
            id: None,
        });

    let mut inflight_slots = if options.qos != 0 {
        // for qos 1 & 2
        let len = outgoing.free_slots();
        if len == 0 {
            trace!("Aborting read from datalog: inflight capacity reached");
            return ConsumeStatus::InflightFull;
        }

        len as u64
    } else {
        datalog.config.max_outgoing_packet_count
    };

    if let Some(ref shared_group) = shared_group {
        // Only the group's current member reads; the others wait for their turn without
        // touching the log (reading and dropping a copy for every member was most of the
        // router's work for a group of many connections).
        if Some(&outgoing.client_id) != shared_group.current_client() {
            let caughtup = datalog.native_next_offset(request.filter_idx) == Some(request.cursor);
            return if caughtup {
                ConsumeStatus::FilterCaughtup
            } else {
                ConsumeStatus::SkipRequest
            };
        }
        if shared_group.strategy == Strategy::RoundRobin {
            // Round robin in small chunks: evenly spread, without a scheduling round per
            // message.
            inflight_slots = inflight_slots.min(SHARED_CHUNK);
        }
    }

    // (publish, properties, cursor): retained messages have no cursor.
    let mut publishes: Vec<(Publish, Option<PublishProperties>, Option<Offset>)> = Vec::new();
    let max_packet_size = connection.max_packet_size;
    // A message larger than the client accepts is dropped for it (MQTT 5 3.1.2.11.4).
    let fits = |publish: &Publish, properties: &Option<PublishProperties>| {
        max_packet_size
            .is_none_or(|max| protocol::v5::publish_packet_size(publish, properties) <= max)
    };

    let resend_retained =
        request.group.is_none() && connection.resend_retained.remove(&request.filter);
    if request.forward_retained || resend_retained {
        // NOTE: ideally we want to limit the number of read messages
        // and skip the messages previously read while reading next time.
        // but for now, we just try to read all messages and drop the excess ones
        let mut retained_publishes = datalog.read_retained_messages(&request.filter);
        retained_publishes.truncate(inflight_slots as usize);

        for (mut publish, mut properties) in retained_publishes {
            // A retained message goes out at the lower of its own QoS and the subscription's,
            // with the retain flag set.
            publish.qos = publish.qos.min(qos_of(options.qos));
            publish.retain = true;
            if let Some(id) = options.id {
                let mut props = properties.unwrap_or_default();
                props.subscription_identifiers = vec![id];
                properties = Some(props);
            }
            if fits(&publish, &properties) {
                publishes.push((publish, properties, None));
            }
        }
        inflight_slots -= publishes.len() as u64;

        // we only want to forward retained messages once
        request.forward_retained = false;
    }

    let (next, publishes_from_datalog) =
        match datalog.native_readv(request.filter_idx, request.cursor, inflight_slots) {
            Ok(v) => v,
            Err(e) => {
                error!(error = ?e, "Failed to read from commitlog {}", e);
                return ConsumeStatus::FilterCaughtup;
            }
        };

    // Other subscriptions of this client that are not shared: a message matching several of
    // them is sent once (MQTT 5 3.3.4), with the highest QoS and every identifier.
    let overlapping = request.group.is_none()
        && connection
            .sub_options
            .keys()
            .filter(|filter| !filter.starts_with("$share/"))
            .nth(1)
            .is_some();

    for (data, offset) in publishes_from_datalog {
        let mut publish = data.publish;
        let mut properties = data.properties;
        let own = data.origin.as_deref() == Some(connection.client_id.as_str());
        if options.no_local && own {
            continue;
        }

        let (mut qos, mut retain_as_published, mut ids) =
            (options.qos, options.retain_as_published, options.id);
        let mut all_ids = Vec::new();
        if overlapping {
            let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
            let matching: Vec<&SubscriptionOptions> = connection
                .sub_options
                .iter()
                .filter(|(filter, o)| {
                    !filter.starts_with("$share/") && !(o.no_local && own) && matches(topic, filter)
                })
                .map(|(_, o)| o)
                .collect();
            if matching.len() > 1 {
                // Sent by whichever matching subscription reads it first.
                if !connection.delivered.insert(data.seq) {
                    continue;
                }
                qos = matching.iter().map(|o| o.qos).max().unwrap_or(qos);
                retain_as_published = matching.iter().any(|o| o.retain_as_published);
                all_ids = matching.iter().filter_map(|o| o.id).collect();
                ids = None;
            }
        }
        all_ids.extend(ids);

        // The lower of the publisher's QoS and the subscription's (MQTT 3.8.4); the retain
        // flag of a live message is cleared unless the subscription keeps it.
        publish.qos = publish.qos.min(qos_of(qos));
        publish.retain = publish.retain && retain_as_published;
        if !all_ids.is_empty() {
            let mut props = properties.unwrap_or_default();
            props.subscription_identifiers = all_ids;
            properties = Some(props);
        }
        if fits(&publish, &properties) {
            publishes.push((publish, properties, Some(offset)));
        }
    }

    let (start, next, caughtup) = match next {
        Position::Next { start, end } => (start, end, false),
        Position::Done { start, end } => (start, end, true),
    };

    if start != request.cursor {
        let error = format!(
            "Read cursor start jumped from {:?} to {:?} on {}",
            request.cursor, start, request.filter
        );

        warn!(
            request_cursor = ?request.cursor,
            start_cursor = ?start,
            error
        );

        *skipped = start.1.saturating_sub(request.cursor.1);
        let alert = alert::cursorjump(&outgoing.client_id, &request.filter, 0);
        alertlog.log(alert);
    }

    trace!(
        "Read from commitlog, cursor = {}[{}, {}), read count = {}",
        request.filter,
        next.0,
        next.1,
        publishes.len()
    );

    let filter_idx = request.filter_idx;
    request.read_count += publishes.len();
    request.cursor = next;

    if publishes.is_empty() {
        // Everything read was for others (expired, no local, too large, sent already):
        // the cursor still moves on.
        if let Some(share) = shared_group {
            share.cursor = request.cursor;
        }
        return if caughtup {
            ConsumeStatus::FilterCaughtup
        } else {
            ConsumeStatus::PartialRead
        };
    }

    let broker_topic_aliases = &mut connection.broker_topic_aliases;
    let mut topic_alias = broker_topic_aliases
        .as_ref()
        .and_then(|aliases| aliases.get_alias(&request.filter));

    let topic_alias_already_exists = topic_alias.is_some();

    // if topic alias doesn't exists, try creating new one!
    if !topic_alias_already_exists {
        topic_alias = broker_topic_aliases
            .as_mut()
            .and_then(|broker_aliases| broker_aliases.set_new_alias(&request.filter))
    }

    // Fill and notify device data
    let forwards = publishes
        .into_iter()
        .map(|(mut publish, mut properties, offset)| {
            // if there is some topic alias to use, set it in publish properties
            if topic_alias.is_some() {
                let mut props = properties.unwrap_or_default();
                props.topic_alias = topic_alias;
                properties = Some(props);
            }

            // We want to clear topic if we are using an existing alias
            if topic_alias_already_exists {
                publish.topic.clear()
            }

            Forward {
                cursor: offset,
                size: 0,
                publish,
                properties,
            }
        });

    let (len, inflight) = outgoing.push_forwards(forwards, filter_idx);

    debug!(
        inflight_count = inflight,
        forward_count = len,
        "Forwarding publishes, cursor = {}[{}, {}) forward count = {}",
        request.filter,
        request.cursor.0,
        request.cursor.1,
        len
    );

    if len >= MAX_CHANNEL_CAPACITY - 1 {
        debug!("Outgoing channel reached its capacity");
        outgoing.push_notification(Notification::Unschedule);
        outgoing.handle.try_send(()).ok();
        return ConsumeStatus::BufferFull;
    }

    outgoing.handle.try_send(()).ok();

    // update the state of shared subscription
    if let Some(share) = shared_group {
        share.update_next_client();
        // update the shared cursor
        share.cursor = request.cursor;
    }

    if caughtup {
        ConsumeStatus::FilterCaughtup
    } else {
        ConsumeStatus::PartialRead
    }
}

/// The QoS of a subscription's granted level (0, 1 or 2).
fn qos_of(level: u8) -> QoS {
    protocol::qos(level).unwrap_or(QoS::AtMostOnce)
}

fn retrieve_shadow(datalog: &mut DataLog, outgoing: &mut Outgoing, shadow: ShadowRequest) {
    if let Some(reply) = datalog.shadow(&shadow.filter) {
        let publish = reply.0;
        let shadow_reply = router::ShadowReply {
            topic: publish.topic,
            payload: publish.payload,
        };

        // Fill notify shadow
        let message = Notification::Shadow(shadow_reply);
        let len = outgoing.push_notification(message);
        if len >= MAX_CHANNEL_CAPACITY - 1 {
            outgoing.push_notification(Notification::Unschedule);
        }
        outgoing.handle.try_send(()).ok();
    }
}

fn print_status(router: &mut Router, metrics: Print) {
    match metrics {
        Print::Config => {
            let config = router.config.clone();
            println!("{config:#?}");
        }
        Print::Router => {
            let metrics = router.router_meters.clone();
            println!("{metrics:#?}");
        }
        Print::Connection(id) => {
            let metrics = router.connection_map.get(&id).map(|v| {
                let c = router
                    .connections
                    .get(*v)
                    .map(|v| v.events.clone())
                    .unwrap();
                let t = router.scheduler.trackers.get(*v).cloned().unwrap();
                (c, t)
            });

            let metrics = match metrics {
                Some(v) => Some(v),
                None => router.graveyard.retrieve(&id).map(|v| {
                    (
                        v.metrics,
                        v.session_state
                            .map(|s| s.tracker)
                            .unwrap_or(Tracker::new(id)),
                    )
                }),
            };

            println!("{metrics:#?}");
        }
        Print::Subscriptions => {
            let metrics: HashMap<Filter, Vec<String>> = router
                .subscription_map
                .iter()
                .map(|(filter, connections)| {
                    let connections = connections
                        .iter()
                        .map(|id| router.obufs[*id].client_id.clone())
                        .collect();

                    (filter.to_owned(), connections)
                })
                .collect();

            println!("{metrics:#?}");
        }
        Print::Subscription(filter) => {
            let metrics = router.datalog.meter(&filter);
            println!("{metrics:#?}");
        }
        Print::Waiters(filter) => {
            if let Some(waiters) = router.datalog.waiters(&filter) {
                let v: Vec<(String, DataRequest)> = waiters
                    .waiters()
                    .iter()
                    .map(|(id, request)| (router.obufs[*id].client_id.clone(), request.clone()))
                    .collect();

                println!("{v:#?}");
            }
        }
        Print::ReadyQueue => {
            let metrics = router.scheduler.readyqueue.clone();
            println!("{metrics:#?}");
        }
    };
}

fn validate_subscription(
    connection: &mut Connection,
    filter: &protocol::Filter,
) -> Result<(), RouterError> {
    trace!(
        "validate subscription = {}, tenant = {:?}",
        filter.path,
        connection.tenant_prefix
    );
    // Ensure that only client devices of the tenant can
    #[cfg(feature = "validate-tenant-prefix")]
    if let Some(tenant_prefix) = &connection.tenant_prefix {
        if !filter.path.starts_with(tenant_prefix) {
            return Err(RouterError::InvalidFilterPrefix(filter.path.to_owned()));
        }
    }

    if filter.path.starts_with('$') && !filter.path.starts_with("$share") {
        return Err(RouterError::InvalidFilterPrefix(filter.path.to_owned()));
    }

    Ok(())
}

fn validate_clientid(client_id: &str) -> Result<(), RouterError> {
    trace!("Validating Client ID = {}", client_id,);
    // Ensure that only client devices of the tenant can
    if "+$#/".chars().any(|c| client_id.contains(c)) {
        return Err(RouterError::InvalidClientId(client_id.to_string()));
    }

    Ok(())
}

fn extract_group(filter: &str) -> Option<(String, String)> {
    filter.strip_prefix("$share/").and_then(|s| {
        s.split_once('/')
            .map(|(group, path)| (group.to_string(), path.to_string()))
    })
}
// #[cfg(test)]
// #[allow(non_snake_case)]
// mod test {
//     use std::{
//         thread,
//         time::{Duration, Instant},
//     };

//     use bytes::BytesMut;

//     use super::*;
//     use crate::{
//         link::local::*,
//         protocol::v4::{self, subscribe::SubscribeFilter, QoS},
//         router::ConnectionMeter,
//     };

//     /// Create a router and n connections
//     fn new_router(count: usize, clean: bool) -> (Router, VecDeque<(LinkTx, LinkRx)>) {
//         let config = RouterConfig {
//             instant_ack: true,
//             max_segment_size: 1024 * 10, // 10 KB
//             max_mem_segments: 10,
//             max_disk_segments: 0,
//             max_read_len: 128,
//             log_dir: None,
//             max_connections: 128,
//             dynamic_log: false,
//         };

//         let mut router = Router::new(0, config);
//         let link = router.link();
//         let handle = thread::spawn(move || {
//             (0..count)
//                 .map(|i| Link::new(&format!("link-{}", i), link.clone(), clean))
//                 .collect::<VecDeque<Result<_, _>>>()
//         });

//         router.run_exact(count).unwrap();
//         let links = handle
//             .join()
//             .unwrap()
//             .into_iter()
//             .map(|x| x.unwrap())
//             .collect();
//         (router, links)
//     }

//     fn reconnect(router: &mut Router, link_id: usize, clean: bool) -> (LinkTx, LinkRx) {
//         let link = router.link();
//         let handle =
//             thread::spawn(move || Link::new(&format!("link-{}", link_id), link, clean).unwrap());
//         router.run(1).unwrap();
//         handle.join().unwrap()
//     }

//     #[test]
//     fn test_graveyard_retreive_metrics_always() {
//         let (mut router, mut links) = new_router(1, false);
//         let (tx, _) = links.pop_front().unwrap();
//         let id = tx.connection_id;
//         let conn = router.connections.get_mut(id).unwrap();
//         conn.meter = ConnectionMeter {
//             publish_size: 1000,
//             publish_count: 1000,
//             subscriptions: HashSet::new(),
//             events: conn.meter.events.clone(),
//         };
//         conn.meter.push_event("graveyard-testing".to_string());
//         router.handle_disconnection(id);

//         let (tx, _) = reconnect(&mut router, 0, false);
//         let id = tx.connection_id;
//         let conn = router.connections.get_mut(id).unwrap();
//         assert_eq!(conn.meter.publish_size, 1000);
//         assert_eq!(conn.meter.publish_count, 1000);
//         assert_eq!(conn.meter.events.len(), 4);

//         let (mut router, mut links) = new_router(1, true);
//         let (tx, _) = links.pop_front().unwrap();
//         let id = tx.connection_id;
//         let conn = router.connections.get_mut(id).unwrap();
//         conn.meter = ConnectionMeter {
//             publish_size: 1000,
//             publish_count: 1000,
//             subscriptions: HashSet::new(),
//             events: conn.meter.events.clone(),
//         };
//         conn.meter.push_event("graveyard-testing".to_string());
//         router.handle_disconnection(id);

//         let (tx, _) = reconnect(&mut router, 0, true);
//         let id = tx.connection_id;
//         let conn = router.connections.get_mut(id).unwrap();
//         assert_eq!(conn.meter.publish_size, 1000);
//         assert_eq!(conn.meter.publish_count, 1000);
//         assert_eq!(conn.meter.events.len(), 4);
//     }

//     #[test]
//     #[should_panic]
//     fn test_blocking_too_many_connections() {
//         new_router(512, true);
//     }

//     #[test]
//     fn test_not_clean_sessions() {
//         // called once per data push (subscribe to 2 topics in our case)
//         // called once per each sub topic
//         // if prepare_data_request called, then Tracker::register_data_request is also called so
//         // no need to check separately for that

//         let (mut router, mut links) = new_router(2, false);
//         let (tx1, mut rx1) = links.pop_front().unwrap();
//         let id1 = tx1.connection_id;
//         let (tx2, mut rx2) = links.pop_front().unwrap();
//         let id2 = tx2.connection_id;

//         // manually subscribing to avoid calling Router::run(), so that we can see and test changes
//         // in Router::readyqueue.
//         let mut buf = BytesMut::new();
//         v4::subscribe::write(
//             vec![
//                 SubscribeFilter::new("hello/1/world".to_string(), QoS::AtMostOnce),
//                 SubscribeFilter::new("hello/2/world".to_string(), QoS::AtMostOnce),
//             ],
//             0,
//             &mut buf,
//         )
//         .unwrap();
//         let buf = buf.freeze();
//         {
//             let incoming = router.ibufs.get_mut(id1).unwrap();
//             let mut recv_buf = incoming.buffer.lock();
//             recv_buf.push_back(buf.clone());
//             assert_eq!(router.subscription_map.len(), 0);
//         }
//         {
//             let incoming = router.ibufs.get_mut(id2).unwrap();
//             let mut recv_buf = incoming.buffer.lock();
//             recv_buf.push_back(buf.clone());
//             assert_eq!(router.subscription_map.len(), 0);
//         }

//         router.handle_device_payload(id1);
//         assert_eq!(router.subscription_map.len(), 2);
//         assert_eq!(router.readyqueue.len(), 1);
//         router.consume(id1);
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/1/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             1
//         );
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/2/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             1
//         );

//         router.handle_device_payload(id2);
//         assert_eq!(router.subscription_map.len(), 2);
//         assert_eq!(router.readyqueue.len(), 2);
//         router.consume(id2);
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/1/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/2/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );

//         assert!(matches!(rx1.recv().unwrap(), Some(Notification::DeviceAck(_))));
//         assert!(matches!(rx2.recv().unwrap(), Some(Notification::DeviceAck(_))));

//         router.handle_disconnection(id1);
//         router.handle_disconnection(id2);
//         router.run(1).unwrap();

//         let (_, _) = reconnect(&mut router, 0, false);
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/1/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             1
//         );
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/2/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             1
//         );

//         let (_, _) = reconnect(&mut router, 1, false);
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/1/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/2/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );
//     }

//     #[test]
//     fn test_publish_appended_to_commitlog() {
//         let (mut router, mut links) = new_router(2, true);
//         let (mut sub_tx, _) = links.pop_front().unwrap();
//         let (mut pub_tx, _) = links.pop_front().unwrap();

//         sub_tx.subscribe("hello/1/world").unwrap();
//         router.run(1).unwrap();

//         // Each LinkTx::publish creates a single new event
//         for _ in 0..10 {
//             pub_tx.publish("hello/1/world", b"hello".to_vec()).unwrap();
//         }
//         router.run(1).unwrap();
//         assert_eq!(router.datalog.next_native_offset("hello/1/world").1, (0, 10));
//     }

//     #[test]
//     fn test_adding_caughtups_to_waiters() {
//         // number of times forward_device_data hit
//         //     = router.run times * topics * subscribers per topic
//         //     = 2 * 2 * 2 = 8
//         //
//         // we also call consume 2 times per subsriber, and one time it will call
//         // forward_device_data again, but no data will actually be forwarded.
//         // as 256 publishes at once, and router's config only reads 128 at a time, data needs to be
//         // read from same log twice, and thus half of the times the data reading is not done

//         let (mut router, mut links) = new_router(4, true);
//         let (mut sub1_tx, _) = links.pop_front().unwrap();
//         let (mut pub1_tx, _) = links.pop_front().unwrap();
//         let (mut sub2_tx, _) = links.pop_front().unwrap();
//         let (mut pub2_tx, _) = links.pop_front().unwrap();
//         sub1_tx.subscribe("hello/1/world").unwrap();
//         sub1_tx.subscribe("hello/2/world").unwrap();
//         sub2_tx.subscribe("hello/1/world").unwrap();
//         sub2_tx.subscribe("hello/2/world").unwrap();
//         router.run(1).unwrap();

//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/1/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/2/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );

//         for _ in 0..256 {
//             pub1_tx.publish("hello/1/world", b"hello".to_vec()).unwrap();
//             pub2_tx.publish("hello/2/world", b"hello".to_vec()).unwrap();
//         }
//         router.run(1).unwrap();

//         let tracker = router.trackers.get(sub1_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 2);
//         let tracker = router.trackers.get(sub2_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 2);

//         router.run(1).unwrap();

//         let tracker = router.trackers.get(sub1_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 2);
//         let tracker = router.trackers.get(sub2_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 2);

//         router.consume(sub1_tx.connection_id);
//         router.consume(sub2_tx.connection_id);

//         let tracker = router.trackers.get(sub1_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 1);
//         let tracker = router.trackers.get(sub2_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 1);

//         router.consume(sub1_tx.connection_id);
//         router.consume(sub2_tx.connection_id);

//         let tracker = router.trackers.get(sub1_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 0);
//         let tracker = router.trackers.get(sub2_tx.connection_id).unwrap();
//         assert_eq!(tracker.get_data_requests().len(), 0);

//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/1/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );
//         assert_eq!(
//             router
//                 .datalog
//                 .waiters(&"hello/2/world".to_string())
//                 .unwrap()
//                 .waiters()
//                 .len(),
//             2
//         );
//     }

//     #[test]
//     fn test_disconnect_invalid_sub() {
//         let (mut router, mut links) = new_router(3, true);

//         let (mut tx, mut rx) = links.pop_front().unwrap();
//         tx.subscribe("$hello/world").unwrap();
//         router.run(1).unwrap();
//         assert!(matches!(rx.recv(), Err(LinkError::Recv(flume::RecvError::Disconnected))));

//         let (mut tx, mut rx) = links.pop_front().unwrap();
//         tx.subscribe("test/hello").unwrap();
//         router.run(1).unwrap();
//         assert!(matches!(rx.recv(), Err(LinkError::Recv(flume::RecvError::Disconnected))));
//     }

//     #[test]
//     fn test_disconnect_invalid_pub() {
//         let (mut router, mut links) = new_router(1, true);
//         let (mut tx, mut rx) = links.pop_front().unwrap();
//         tx.publish("invalid/topic", b"hello".to_vec()).unwrap();
//         router.run(1).unwrap();
//         assert!(matches!(rx.recv(), Err(LinkError::Recv(flume::RecvError::Disconnected))));
//     }

//     #[test]
//     fn test_pingreq() {
//         let (mut router, mut links) = new_router(1, true);
//         let (mut tx, mut rx) = links.pop_front().unwrap();
//         let mut buf = BytesMut::new();
//         mqttbytes::v4::PingReq.write(&mut buf).unwrap();
//         let buf = buf.freeze();
//         for _ in 0..10 {
//             tx.push(buf.clone()).unwrap();
//         }
//         router.run(1).unwrap();
//         for _ in 0..10 {
//             let ret = rx.recv().unwrap().unwrap();
//             assert!(matches!(ret, Notification::DeviceAck(Ack::PingResp)));
//         }
//     }

//     #[test]
//     fn test_disconnect() {
//         let (mut router, mut links) = new_router(1, true);
//         let (mut tx, mut rx) = links.pop_front().unwrap();
//         let mut buf = BytesMut::new();
//         mqttbytes::v4::Disconnect.write(&mut buf).unwrap();
//         let buf = buf.freeze();
//         tx.push(buf).unwrap();
//         router.run(1).unwrap();
//         assert!(matches!(rx.recv(), Err(LinkError::Recv(flume::RecvError::Disconnected))));
//     }

//     #[test]
//     fn test_connection_in_qos1() {
//         // connection as in crate::connection::Connection struct should get filled for all unacked,
//         // and refuse to add more packets than unacked.

//         let config = RouterConfig {
//             instant_ack: true,
//             max_segment_size: 1024 * 10, // 10 KB
//             max_mem_segments: 10,
//             max_disk_segments: 0,
//             max_read_len: 256,
//             log_dir: None,
//             max_connections: 128,
//             dynamic_log: false,
//         };

//         let mut router = Router::new(0, config);
//         let link = router.link();
//         let handle = thread::spawn(move || {
//             (0..2)
//                 .map(|i| Link::new(&format!("link-{}", i), link.clone(), true))
//                 .collect::<VecDeque<Result<_, _>>>()
//         });

//         router.run(2).unwrap();
//         let mut links: VecDeque<(LinkTx, LinkRx)> = handle
//             .join()
//             .unwrap()
//             .into_iter()
//             .map(|x| x.unwrap())
//             .collect();

//         let (mut sub_tx, _sub_rx) = links.pop_front().unwrap();
//         let (mut pub_tx, _) = links.pop_front().unwrap();

//         let mut buf = BytesMut::new();
//         mqttbytes::v4::Subscribe::new("hello/1/world", mqttbytes::QoS::AtLeastOnce)
//             .write(&mut buf)
//             .unwrap();
//         let buf = buf.freeze();
//         sub_tx.push(buf).unwrap();
//         router.run(1).unwrap();

//         for _ in 0..202 {
//             pub_tx.publish("hello/1/world", b"hello".to_vec()).unwrap();
//         }
//         router.run(1).unwrap();

//         let id = sub_tx.connection_id;
//         let tracker = router.trackers.get(id).unwrap();
//         assert_eq!(tracker.get_data_requests().front().unwrap().cursor, (0, 200));
//     }

//     #[test]
//     #[ignore]
//     fn test_resend_in_qos1() {
//         unimplemented!("we don't resend QoS1 packets yet")
//     }

//     #[test]
//     fn test_wildcard_subs() {
//         let (mut router, mut links) = new_router(3, true);

//         let (mut sub1_tx, mut sub1_rx) = links.pop_front().unwrap();
//         sub1_tx.subscribe("#").unwrap();

//         let (mut sub2_tx, mut sub2_rx) = links.pop_front().unwrap();
//         sub2_tx.subscribe("hello/+/world").unwrap();

//         let (mut pub_tx, mut _pub_rx) = links.pop_front().unwrap();
//         for _ in 0..10 {
//             for i in 0..10 {
//                 pub_tx
//                     .publish(format!("hello/{}/world", i), b"hello".to_vec())
//                     .unwrap();
//             }
//         }

//         for _ in 0..10 {
//             pub_tx.publish("hello/world", b"hello".to_vec()).unwrap();
//         }

//         router.run(1).unwrap();

//         let mut count = 0;
//         while let Ok(Some(notification)) =
//             sub1_rx.recv_deadline(Instant::now() + Duration::from_millis(1))
//         {
//             match notification {
//                 Notification::Forward { .. } => count += 1,
//                 _ => {}
//             }
//         }
//         assert_eq!(count, 110);

//         count = 0;
//         while let Ok(Some(notification)) =
//             sub2_rx.recv_deadline(Instant::now() + Duration::from_millis(1))
//         {
//             match notification {
//                 Notification::Forward { .. } => count += 1,
//                 _ => {}
//             }
//         }
//         assert_eq!(count, 100);
//     }
// }

// // #[cfg(test)]
// // mod test {
// //     use crate::connection::Connection;
// //     use crate::link::local::{Link, LinkRx, LinkTx};
// //     use crate::tracker::Tracker;
// //     use crate::{ConnectionId, Notification, Router, RouterConfig};
// //     use bytes::BytesMut;
// //     use flume::Receiver;
// //     use mqttbytes::v4::{Publish, Subscribe};
// //     use mqttbytes::QoS;
// //     use std::collections::VecDeque;
// //     use std::sync::atomic::AtomicBool;
// //     use std::sync::Arc;
// //     use std::thread;

// //     /// Create a router and n connections
// //     fn router(count: usize) -> (Router, VecDeque<(LinkTx, LinkRx)>) {
// //         let config = RouterConfig {
// //             data_filter: "hello/world".to_owned(),
// //             wildcard_filters: vec![],
// //             instant_ack: true,
// //             max_segment_size: 10 * 1024,
// //             max_segment_count: 10 * 1024,
// //             max_connections: 10,
// //         };

// //         let mut router = Router::new(0, config);
// //         let link = router.link();
// //         let handle = thread::spawn(move || {
// //             (0..count)
// //                 .map(|i| Link::new(&format!("link-{}", i), link.clone()).unwrap())
// //                 .collect()
// //         });

// //         router.run(count).unwrap();
// //         let links = handle.join().unwrap();
// //         (router, links)
// //     }

// //     /// Creates a connection
// //     fn connection(client_id: &str, clean: bool) -> (Connection, Receiver<Notification>) {
// //         let (tx, rx) = flume::bounded(10);
// //         let connection = Connection::new(client_id, clean, tx, Arc::new(AtomicBool::new(false)));
// //         (connection, rx)
// //     }

// //     /// Raw publish message
// //     fn publish(topic: &str) -> BytesMut {
// //         let mut publish = Publish::new(topic, QoS::AtLeastOnce, vec![1, 2, 3]);
// //         publish.pkid = 1;

// //         let mut o = BytesMut::new();
// //         publish.write(&mut o).unwrap();
// //         o
// //     }

// //     /// Raw publish message
// //     fn subscribe(topic: &str) -> BytesMut {
// //         let mut subscribe = Subscribe::new(topic, QoS::AtLeastOnce);
// //         subscribe.pkid = 1;

// //         let mut o = BytesMut::new();
// //         subscribe.write(&mut o).unwrap();
// //         o
// //     }

// //     /// When there is new data on a subscription's commitlog, it's
// //     /// consumer should start triggering data requests to pull data
// //     /// from commitlog
// //     #[test]
// //     fn new_connection_data_triggers_acks_of_self_and_data_of_consumer() {
// //         let (mut router, mut links) = router(2);
// //         let (mut l1tx, _l1rx) = links.pop_front().unwrap();
// //         let (mut l2tx, l2rx) = links.pop_front().unwrap();

// //         l2tx.subscribe("hello/world").unwrap();
// //         l1tx.publish("hello/world", vec![1, 2, 3]).unwrap();
// //         let _ = router.run(1);

// //         // Suback
// //         match l2rx.recv().unwrap() {
// //             Notification::DeviceAcks(_) => {}
// //             v => panic!("{:?}", v),
// //         }

// //         // Consumer data
// //         match l2rx.recv().unwrap() {
// //             Notification::DeviceData { cursor, .. } => assert_eq!(cursor, (0, 1)),
// //             v => panic!("{:?}", v),
// //         }

// //         // No acks for qos0 publish
// //     }

// //     #[test]
// //     fn half_open_connections_are_handled_correctly() {
// //         let config = RouterConfig {
// //             data_filter: "hello/world".to_owned(),
// //             wildcard_filters: vec![],
// //             instant_ack: true,
// //             max_segment_size: 10 * 1024,
// //             max_segment_count: 10 * 1024,
// //             max_connections: 10,
// //         };

// //         let mut router = Router::new(0, config);
// //         let (c, rx) = connection("test", true);
// //         router.handle_new_connection(c);

// //         let id = *router.connection_map.get("test").unwrap();
// //         router.handle_device_payload(id, subscribe("hello/data"));
// //         router.handle_device_payload(id, publish("hello/data"));

// //         let trackers = router.trackers.get(id).unwrap();
// //         assert!(trackers.get_data_requests().len() > 0);
// //         dbg!(trackers);

// //         // A new connection with same client id
// //         let (c, rx) = connection("test", true);
// //         router.handle_new_connection(c);

// //         let id = *router.connection_map.get("test").unwrap();
// //         let trackers = router.trackers.get(id).unwrap();
// //         dbg!(trackers);
// //     }
// // }

#[cfg(test)]
mod shared_group_tests {
    use super::*;
    use crate::protocol::{Filter as SubscribeFilter, Subscribe};
    use crate::router::connection::Connection;
    use parking_lot::Mutex;
    use std::sync::Arc;

    pub(super) struct Client {
        pub(super) id: ConnectionId,
        pub(super) incoming: Arc<Mutex<VecDeque<Packet>>>,
        pub(super) outgoing: Arc<Mutex<VecDeque<Notification>>>,
        _wakeups: Receiver<()>,
    }

    pub(super) fn router() -> Router {
        Router::new(
            0,
            RouterConfig {
                max_connections: 10,
                max_outgoing_packet_count: 200,
                max_segment_size: 1024 * 1024,
                max_segment_count: 10,
                ..Default::default()
            },
        )
    }

    pub(super) fn connect(router: &mut Router, client_id: &str, clean: bool) -> Client {
        connect_with(
            router,
            Connection::new(None, client_id.to_owned(), clean, false),
        )
    }

    pub(super) fn connect_with(router: &mut Router, connection: Connection) -> Client {
        let client_id = connection.client_id.clone();
        let incoming = Incoming::new(client_id.clone());
        let (outgoing, wakeups) = Outgoing::new(client_id.clone());
        let (incoming_buffer, outgoing_buffer) = (incoming.buffer(), outgoing.buffer());
        router.events(
            0,
            Event::Connect {
                connection,
                incoming,
                outgoing,
            },
        );
        Client {
            id: router.connection_map[&client_id],
            incoming: incoming_buffer,
            outgoing: outgoing_buffer,
            _wakeups: wakeups,
        }
    }

    pub(super) fn send(router: &mut Router, client: &Client, packet: Packet) {
        client.incoming.lock().push_back(packet);
        router.events(client.id, Event::DeviceData);
        settle(router);
    }

    /// Lets the router forward whatever it can (a `None` may only be a stale entry of a
    /// connection that is gone).
    pub(super) fn settle(router: &mut Router) {
        for _ in 0..1000 {
            router.consume();
        }
    }

    fn subscribe(router: &mut Router, client: &Client, path: &str) {
        let filter = SubscribeFilter {
            path: path.to_owned(),
            qos: QoS::AtLeastOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        };
        let subscribe = Subscribe {
            pkid: 1,
            filters: vec![filter],
        };
        send(router, client, Packet::Subscribe(subscribe, None));
    }

    fn publish(router: &mut Router, client: &Client, pkid: u16, payload: &str) {
        let mut publish = Publish::new(b"t".to_vec(), payload.as_bytes().to_vec(), false);
        publish.qos = QoS::AtLeastOnce;
        publish.pkid = pkid;
        send(router, client, Packet::Publish(publish, None));
    }

    /// Payloads forwarded to a client so far (and taken from its buffer).
    fn forwarded(client: &Client) -> Vec<String> {
        client
            .outgoing
            .lock()
            .drain(..)
            .filter_map(|notification| match notification {
                Notification::Forward(forward) => {
                    Some(String::from_utf8_lossy(&forward.publish.payload).into_owned())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_clean_client_leaving_keeps_an_empty_group_of_persistent_members() {
        let mut router = router();
        let a = connect(&mut router, "a", false);
        let b = connect(&mut router, "b", false);
        subscribe(&mut router, &a, "$share/g/t");
        subscribe(&mut router, &b, "$share/g/t");
        let publisher = connect(&mut router, "publisher", true);
        publish(&mut router, &publisher, 1, "m0");
        publish(&mut router, &publisher, 2, "m1");
        let (got_a, got_b) = (forwarded(&a), forwarded(&b));
        assert_eq!(got_a.len() + got_b.len(), 2, "{got_a:?} {got_b:?}");
        assert_eq!(got_a.len(), 1, "round robin: {got_a:?} {got_b:?}");
        // The member that got m1 comes back first; m0 went to the other one.
        let (first, later) = if got_a == ["m1"] {
            ("a", "b")
        } else {
            ("b", "a")
        };

        // Both members crash with their messages unacknowledged, then a client that was never
        // in the group leaves.
        router.events(a.id, Event::Disconnect);
        router.events(b.id, Event::Disconnect);
        router.events(publisher.id, Event::Disconnect);

        // The group resumes at the oldest unacknowledged message of all its members, not at
        // the cursor of whichever member comes back first.
        let first = connect(&mut router, first, false);
        settle(&mut router);
        let mut again = forwarded(&first);
        let later = connect(&mut router, later, false);
        settle(&mut router);
        again.extend(forwarded(&later));
        again.sort();
        assert_eq!(again, ["m0", "m1"]);
    }

    #[test]
    fn a_rewind_wakes_the_members_still_there() {
        let mut router = router();
        let a = connect(&mut router, "a", false);
        let b = connect(&mut router, "b", false);
        subscribe(&mut router, &a, "$share/g/t");
        subscribe(&mut router, &b, "$share/g/t");
        let publisher = connect(&mut router, "publisher", true);
        publish(&mut router, &publisher, 1, "m0");
        let (got_a, got_b) = (forwarded(&a), forwarded(&b));
        let (gone, stays) = if got_a == ["m0"] { (a, b) } else { (b, a) };
        assert_eq!(
            forwarded(&gone),
            Vec::<String>::new(),
            "{got_a:?} {got_b:?}"
        );

        // The member that had m0 crashes; nothing else is published: the one still there
        // gets m0 at once.
        router.events(gone.id, Event::Disconnect);
        settle(&mut router);
        assert_eq!(forwarded(&stays), ["m0"]);
    }
}

#[cfg(test)]
mod mqtt5_tests {
    use super::shared_group_tests::{connect, connect_with, router, send, settle, Client};
    use super::*;
    use crate::protocol::{Filter as SubscribeFilter, Subscribe, SubscribeProperties, Unsubscribe};
    use crate::router::connection::Connection;

    fn filter(path: &str, qos: QoS) -> SubscribeFilter {
        SubscribeFilter {
            path: path.to_owned(),
            qos,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        }
    }

    fn subscribe(
        router: &mut Router,
        client: &Client,
        filters: Vec<SubscribeFilter>,
        id: Option<usize>,
    ) {
        let properties = id.map(|id| SubscribeProperties {
            id: Some(id),
            user_properties: Vec::new(),
        });
        send(
            router,
            client,
            Packet::Subscribe(Subscribe { pkid: 1, filters }, properties),
        );
    }

    fn publish(
        router: &mut Router,
        client: &Client,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &str,
    ) {
        let mut publish = Publish::new(
            topic.as_bytes().to_vec(),
            payload.as_bytes().to_vec(),
            retain,
        );
        publish.qos = qos;
        publish.pkid = if qos == QoS::AtMostOnce { 0 } else { 1 };
        send(router, client, Packet::Publish(publish, None));
        if qos == QoS::ExactlyOnce {
            let pubrel = PubRel {
                pkid: 1,
                reason: PubRelReason::Success,
            };
            send(router, client, Packet::PubRel(pubrel, None));
        }
    }

    /// Forwards taken from a client's buffer: (payload, qos, retain, subscription ids).
    fn forwards(client: &Client) -> Vec<(String, QoS, bool, Vec<usize>)> {
        client
            .outgoing
            .lock()
            .drain(..)
            .filter_map(|notification| match notification {
                Notification::Forward(forward) => Some((
                    String::from_utf8_lossy(&forward.publish.payload).into_owned(),
                    forward.publish.qos,
                    forward.publish.retain,
                    forward
                        .properties
                        .map(|p| p.subscription_identifiers)
                        .unwrap_or_default(),
                )),
                _ => None,
            })
            .collect()
    }

    fn payloads(client: &Client) -> Vec<String> {
        forwards(client).into_iter().map(|f| f.0).collect()
    }

    #[test]
    fn messages_go_out_at_the_lower_of_their_qos_and_the_subscriptions() {
        let mut router = router();
        let publisher = connect(&mut router, "publisher", true);
        publish(
            &mut router,
            &publisher,
            "r",
            QoS::AtMostOnce,
            true,
            "retained 0",
        );
        let subscriber = connect(&mut router, "subscriber", true);
        subscribe(
            &mut router,
            &subscriber,
            vec![filter("r", QoS::ExactlyOnce), filter("t", QoS::AtLeastOnce)],
            None,
        );
        assert_eq!(
            forwards(&subscriber),
            [("retained 0".to_owned(), QoS::AtMostOnce, true, vec![])]
        );
        publish(&mut router, &publisher, "t", QoS::AtMostOnce, false, "0");
        publish(&mut router, &publisher, "t", QoS::ExactlyOnce, false, "2");
        let got: Vec<_> = forwards(&subscriber)
            .into_iter()
            .map(|f| (f.0, f.1))
            .collect();
        assert_eq!(
            got,
            [
                ("0".to_owned(), QoS::AtMostOnce),
                ("2".to_owned(), QoS::AtLeastOnce)
            ]
        );
    }

    #[test]
    fn retain_as_published_keeps_the_flag_and_no_local_skips_own_messages() {
        let mut router = router();
        let client = connect(&mut router, "c", true);
        let mut keep = filter("t", QoS::AtLeastOnce);
        keep.preserve_retain = true;
        let mut not_own = filter("u", QoS::AtLeastOnce);
        not_own.nolocal = true;
        subscribe(
            &mut router,
            &client,
            vec![keep, not_own, filter("v", QoS::AtLeastOnce)],
            None,
        );
        publish(&mut router, &client, "t", QoS::AtLeastOnce, true, "kept");
        publish(&mut router, &client, "u", QoS::AtLeastOnce, false, "own");
        publish(&mut router, &client, "v", QoS::AtLeastOnce, true, "cleared");
        let got: Vec<_> = forwards(&client).into_iter().map(|f| (f.0, f.2)).collect();
        assert_eq!(
            got,
            [("kept".to_owned(), true), ("cleared".to_owned(), false)]
        );
        let other = connect(&mut router, "other", true);
        publish(&mut router, &other, "u", QoS::AtLeastOnce, false, "theirs");
        assert_eq!(payloads(&client), ["theirs"]);
    }

    #[test]
    fn retain_handling_decides_when_retained_messages_are_sent() {
        let mut router = router();
        let publisher = connect(&mut router, "publisher", true);
        publish(
            &mut router,
            &publisher,
            "r",
            QoS::AtLeastOnce,
            true,
            "retained",
        );
        let client = connect(&mut router, "c", true);
        for (rule, first, again) in [
            (RetainForwardRule::OnEverySubscribe, 1, 1),
            (RetainForwardRule::OnNewSubscribe, 1, 0),
            (RetainForwardRule::Never, 0, 0),
        ] {
            let mut f = filter("r", QoS::AtLeastOnce);
            f.retain_forward_rule = rule.clone();
            subscribe(&mut router, &client, vec![f.clone()], None);
            assert_eq!(payloads(&client).len(), first, "{rule:?} new");
            subscribe(&mut router, &client, vec![f], None);
            assert_eq!(payloads(&client).len(), again, "{rule:?} again");
            let unsubscribe = Unsubscribe {
                pkid: 2,
                filters: vec!["r".to_owned()],
            };
            send(&mut router, &client, Packet::Unsubscribe(unsubscribe, None));
        }
    }

    #[test]
    fn overlapping_subscriptions_get_one_copy_with_every_identifier() {
        let mut router = router();
        let client = connect(&mut router, "c", true);
        subscribe(
            &mut router,
            &client,
            vec![filter("a/b", QoS::AtMostOnce)],
            Some(2),
        );
        subscribe(
            &mut router,
            &client,
            vec![filter("a/#", QoS::AtLeastOnce)],
            Some(3),
        );
        let publisher = connect(&mut router, "publisher", true);
        publish(
            &mut router,
            &publisher,
            "a/b",
            QoS::ExactlyOnce,
            false,
            "both",
        );
        publish(
            &mut router,
            &publisher,
            "a/c",
            QoS::AtLeastOnce,
            false,
            "one",
        );
        let mut got = forwards(&client);
        for f in got.iter_mut() {
            f.3.sort();
        }
        assert_eq!(
            got,
            [
                ("both".to_owned(), QoS::AtLeastOnce, false, vec![2, 3]),
                ("one".to_owned(), QoS::AtLeastOnce, false, vec![3]),
            ]
        );
    }

    #[test]
    fn receive_maximum_and_maximum_packet_size_of_the_client_are_kept() {
        let mut router = router();
        let mut connection = Connection::new(None, "c".to_owned(), true, false);
        connection.max_inflight(2).max_packet_size(Some(64));
        let client = connect_with(&mut router, connection);
        subscribe(
            &mut router,
            &client,
            vec![filter("t", QoS::AtLeastOnce)],
            None,
        );
        let publisher = connect(&mut router, "publisher", true);
        publish(
            &mut router,
            &publisher,
            "t",
            QoS::AtLeastOnce,
            false,
            &"x".repeat(100),
        );
        for payload in ["1", "2", "3"] {
            publish(
                &mut router,
                &publisher,
                "t",
                QoS::AtLeastOnce,
                false,
                payload,
            );
        }
        assert_eq!(
            payloads(&client),
            ["1", "2"],
            "the large one is dropped, two in flight"
        );
        let pkid = 1;
        let puback = PubAck {
            pkid,
            reason: PubAckReason::Success,
        };
        send(&mut router, &client, Packet::PubAck(puback, None));
        assert_eq!(payloads(&client), ["3"]);
    }

    #[test]
    fn a_session_lasts_its_expiry_and_no_longer() {
        let mut router = router();
        let publisher = connect(&mut router, "publisher", true);
        for (expiry, present) in [(0, false), (3600, true), (u32::MAX, true)] {
            let mut connection = Connection::new(None, "c".to_owned(), true, false);
            connection.session_expiry(expiry);
            let client = connect_with(&mut router, connection);
            subscribe(
                &mut router,
                &client,
                vec![filter("t", QoS::AtLeastOnce)],
                None,
            );
            router.events(client.id, Event::Disconnect);
            publish(
                &mut router,
                &publisher,
                "t",
                QoS::AtLeastOnce,
                false,
                "offline",
            );
            let resumed = connect_with(
                &mut router,
                Connection::new(None, "c".to_owned(), false, false),
            );
            settle(&mut router);
            let expected: &[&str] = if present { &["offline"] } else { &[] };
            assert_eq!(payloads(&resumed), expected, "session expiry {expiry}");
            router.events(resumed.id, Event::Disconnect);
            // Leave no session behind for the next round.
            let clean = connect(&mut router, "c", true);
            router.events(clean.id, Event::Disconnect);
        }
    }

    #[test]
    fn one_unsuback_with_a_reason_per_filter() {
        let mut router = router();
        let client = connect(&mut router, "c", true);
        subscribe(
            &mut router,
            &client,
            vec![filter("a", QoS::AtLeastOnce)],
            None,
        );
        client.outgoing.lock().clear();
        let unsubscribe = Unsubscribe {
            pkid: 7,
            filters: vec!["a".to_owned(), "b".to_owned()],
        };
        send(&mut router, &client, Packet::Unsubscribe(unsubscribe, None));
        let unsubacks: Vec<_> = client
            .outgoing
            .lock()
            .drain(..)
            .filter_map(|n| match n {
                Notification::DeviceAck(crate::router::Ack::UnsubAck(ack)) => Some(ack),
                _ => None,
            })
            .collect();
        assert_eq!(
            unsubacks,
            [UnsubAck {
                pkid: 7,
                reasons: vec![
                    UnsubAckReason::Success,
                    UnsubAckReason::NoSubscriptionExisted
                ]
            }]
        );
    }
}

#[cfg(test)]
mod durability_tests {
    use super::shared_group_tests::{connect, send, settle, Client};
    use super::*;
    use crate::protocol::{Filter as SubscribeFilter, Subscribe};
    use crate::router::Ack;
    use std::sync::Mutex;

    /// Drops reported to the observer: (subscriber, count, reason, first); and the spill
    /// operations that failed.
    #[derive(Default)]
    struct Drops(
        Mutex<Vec<(String, u64, DropReason, bool)>>,
        Mutex<Vec<String>>,
    );

    impl Observer for Drops {
        fn dropped(&self, subscriber: &str, _: &str, count: u64, reason: DropReason, first: bool) {
            if let Ok(mut drops) = self.0.lock() {
                drops.push((subscriber.to_owned(), count, reason, first));
            }
        }

        fn spill_failed(&self, _filter: &str, op: &str, _error: &std::io::Error) {
            if let Ok(mut failed) = self.1.lock() {
                failed.push(op.to_owned());
            }
        }
    }

    /// A router whose logs hold two segments of 1 KiB: about 20 messages of 100 bytes.
    fn small_router(observer: Arc<Drops>) -> Router {
        Router::new(
            0,
            RouterConfig {
                max_connections: 10,
                max_outgoing_packet_count: 200,
                max_segment_size: 1024,
                max_segment_count: 2,
                ..Default::default()
            },
        )
        .observer(observer)
    }

    fn subscribe(router: &mut Router, client: &Client, qos: QoS) {
        let filter = SubscribeFilter {
            path: "t".to_owned(),
            qos,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::Never,
        };
        let subscribe = Subscribe {
            pkid: 1,
            filters: vec![filter],
        };
        send(router, client, Packet::Subscribe(subscribe, None));
    }

    fn payload(n: usize) -> String {
        format!("{n:04}{}", "x".repeat(96))
    }

    fn publish(router: &mut Router, client: &Client, n: usize) {
        let mut publish = Publish::new(b"t".to_vec(), payload(n).into_bytes(), false);
        publish.qos = QoS::AtLeastOnce;
        publish.pkid = (n % 60_000) as u16 + 1;
        send(router, client, Packet::Publish(publish, None));
    }

    /// The PUBACKs a client got so far (taken from its buffer).
    fn pubacks(client: &Client) -> usize {
        client
            .outgoing
            .lock()
            .drain(..)
            .filter(|n| matches!(n, Notification::DeviceAck(Ack::PubAck(_))))
            .count()
    }

    /// The messages forwarded to a client so far (taken from its buffer): (pkid, number).
    fn forwards(client: &Client) -> Vec<(u16, usize)> {
        client
            .outgoing
            .lock()
            .drain(..)
            .filter_map(|notification| match notification {
                Notification::Forward(forward) => {
                    let text = String::from_utf8_lossy(&forward.publish.payload);
                    Some((forward.publish.pkid, text[..4].parse().ok()?))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_full_log_holds_its_publishers_until_the_durable_subscriber_has_read() {
        let drops = Arc::new(Drops::default());
        let mut router = small_router(drops.clone());
        let subscriber = connect(&mut router, "s", false);
        subscribe(&mut router, &subscriber, QoS::AtLeastOnce);
        router.events(subscriber.id, Event::Disconnect);

        let publisher = connect(&mut router, "p", true);
        pubacks(&publisher);
        for n in 0..100 {
            publish(&mut router, &publisher, n);
        }
        let acked = pubacks(&publisher);
        assert!(
            (10..50).contains(&acked),
            "the log holds about 20 messages: {acked} acknowledged"
        );
        assert_eq!(router.held.len(), 1, "the publisher is held");

        // The subscriber comes back and reads, acknowledging as it goes.
        let subscriber = connect(&mut router, "s", false);
        let mut received = Vec::new();
        for _ in 0..100 {
            settle(&mut router);
            let got = forwards(&subscriber);
            for (pkid, _) in &got {
                let ack = PubAck {
                    pkid: *pkid,
                    reason: PubAckReason::Success,
                };
                send(&mut router, &subscriber, Packet::PubAck(ack, None));
            }
            received.extend(got.into_iter().map(|(_, n)| n));
            router.release_held();
            if received.len() == 100 {
                break;
            }
        }
        assert_eq!(received, (0..100).collect::<Vec<_>>());
        settle(&mut router);
        assert_eq!(acked + pubacks(&publisher), 100);
        assert!(router.held.is_empty());
        assert!(drops.0.lock().map(|d| d.is_empty()).unwrap_or(false));
    }

    #[test]
    fn a_qos2_publish_waits_at_its_pubrel() {
        let drops = Arc::new(Drops::default());
        let mut router = small_router(drops.clone());
        let subscriber = connect(&mut router, "s", false);
        subscribe(&mut router, &subscriber, QoS::AtLeastOnce);
        router.events(subscriber.id, Event::Disconnect);

        let publisher = connect(&mut router, "p", true);
        publisher.outgoing.lock().clear();
        for n in 0..60 {
            let pkid = n as u16 + 1;
            let mut publish = Publish::new(b"t".to_vec(), payload(n).into_bytes(), false);
            publish.qos = QoS::ExactlyOnce;
            publish.pkid = pkid;
            send(&mut router, &publisher, Packet::Publish(publish, None));
            let pubrel = PubRel {
                pkid,
                reason: PubRelReason::Success,
            };
            send(&mut router, &publisher, Packet::PubRel(pubrel, None));
        }
        let completed = |client: &Client| {
            client
                .outgoing
                .lock()
                .drain(..)
                .filter(|n| matches!(n, Notification::DeviceAck(Ack::PubComp(_))))
                .count()
        };
        let done = completed(&publisher);
        assert!((10..50).contains(&done), "{done} completed");

        let subscriber = connect(&mut router, "s", false);
        let mut received = Vec::new();
        for _ in 0..100 {
            settle(&mut router);
            for (pkid, n) in forwards(&subscriber) {
                let ack = PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                };
                send(&mut router, &subscriber, Packet::PubAck(ack, None));
                received.push(n);
            }
            router.release_held();
            if received.len() == 60 {
                break;
            }
        }
        assert_eq!(received, (0..60).collect::<Vec<_>>());
        settle(&mut router);
        assert_eq!(done + completed(&publisher), 60);
    }

    #[test]
    fn a_clean_subscriber_that_falls_behind_loses_counted_messages() {
        let drops = Arc::new(Drops::default());
        let mut router = small_router(drops.clone());
        // Never reads: paused once its buffer is full.
        let stalled = connect(&mut router, "c", true);
        subscribe(&mut router, &stalled, QoS::AtMostOnce);
        let publisher = connect(&mut router, "p", true);
        for n in 0..500 {
            publish(&mut router, &publisher, n);
        }
        settle(&mut router);
        assert!(
            router.held.is_empty(),
            "nothing durable holds the publisher"
        );
        let delivered = forwards(&stalled).len();
        let drops = drops.0.lock().map(|d| d.clone()).unwrap_or_default();
        let dropped: u64 = drops.iter().map(|(_, count, _, _)| count).sum();
        assert!(dropped > 0, "{delivered} delivered, nothing dropped");
        assert!(delivered as u64 + dropped <= 500);
        assert!(drops
            .iter()
            .all(|(who, _, reason, _)| who == "c" && *reason == DropReason::CleanSession));
        assert_eq!(
            drops.iter().filter(|(_, _, _, first)| *first).count(),
            1,
            "logged once: {drops:?}"
        );
    }

    /// The subscriber "s" comes back and reads everything, acknowledging as it goes.
    fn read_back_all(router: &mut Router, total: usize) -> Vec<usize> {
        let subscriber = connect(router, "s", false);
        let mut received = Vec::new();
        for _ in 0..1000 {
            settle(router);
            for (pkid, n) in forwards(&subscriber) {
                let ack = PubAck {
                    pkid,
                    reason: PubAckReason::Success,
                };
                send(router, &subscriber, Packet::PubAck(ack, None));
                received.push(n);
            }
            router.release_held();
            if received.len() >= total {
                break;
            }
        }
        settle(router);
        received
    }

    /// A durable router on `dir` (what a previous one left there is read back).
    fn durable_router(dir: &std::path::Path) -> (Router, Recovery) {
        let area = SpillArea::open_durable(dir, 1 << 20).unwrap();
        small_router(Arc::new(Drops::default()))
            .durable(area)
            .unwrap()
    }

    #[test]
    fn durable_mode_brings_back_acknowledged_messages_sessions_and_retained_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut router, recovery) = durable_router(dir.path());
            assert_eq!(recovery.messages, 0);
            let subscriber = connect(&mut router, "s", false);
            subscribe(&mut router, &subscriber, QoS::AtLeastOnce);
            router.events(subscriber.id, Event::Disconnect);
            let publisher = connect(&mut router, "p", true);
            let mut status = Publish::new(b"status".to_vec(), b"online".to_vec(), true);
            status.qos = QoS::AtLeastOnce;
            status.pkid = 60_001;
            for n in 0..200 {
                publish(&mut router, &publisher, n);
            }
            send(&mut router, &publisher, Packet::Publish(status, None));
            router.sync_durable().unwrap();
            router.last_state_save = Instant::now() - STATE_SAVE_INTERVAL;
            router.save_state().unwrap();
            // The process dies here: dropping writes nothing (no Drop flushes), it only
            // releases the directory's lock as the end of the process would.
            drop(router);
        }
        let (mut router, recovery) = durable_router(dir.path());
        assert_eq!(recovery.messages, 200, "every message appended to the log");
        assert_eq!((recovery.sessions, recovery.retained), (1, 1));
        assert_eq!(recovery.truncated_bytes, 0);
        let received = read_back_all(&mut router, 200);
        assert_eq!(
            received,
            (0..200).collect::<Vec<_>>(),
            "in order, once each"
        );
        let retained = router.datalog.read_retained_messages("status");
        assert_eq!(retained.len(), 1, "the retained message is back");
        assert_eq!(&retained[0].0.payload[..], b"online");
    }

    #[test]
    fn a_subscription_is_on_disk_before_the_messages_published_for_it_are_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut router, _) = durable_router(dir.path());
            let subscriber = connect(&mut router, "s", false);
            subscribe(&mut router, &subscriber, QoS::AtLeastOnce);
            router.events(subscriber.id, Event::Disconnect);
            let publisher = connect(&mut router, "p", true);
            for n in 0..10 {
                publish(&mut router, &publisher, n);
            }
            // What the router does before a round's acknowledgements, and nothing more: the
            // crash comes well within the interval of the periodic save.
            router.make_durable().unwrap();
            drop(router);
        }
        let (mut router, recovery) = durable_router(dir.path());
        assert_eq!(recovery.sessions, 1, "the subscriber's session is back");
        let received = read_back_all(&mut router, 10);
        assert_eq!(received, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_durable_log_goes_on_after_a_restart_with_the_same_offsets() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut router, _) = durable_router(dir.path());
            let subscriber = connect(&mut router, "s", false);
            subscribe(&mut router, &subscriber, QoS::AtLeastOnce);
            router.events(subscriber.id, Event::Disconnect);
            let publisher = connect(&mut router, "p", true);
            for n in 0..50 {
                publish(&mut router, &publisher, n);
            }
            router.sync_durable().unwrap();
            router.last_state_save = Instant::now() - STATE_SAVE_INTERVAL;
            router.save_state().unwrap();
            drop(router);
        }
        {
            let (mut router, recovery) = durable_router(dir.path());
            assert_eq!(recovery.messages, 50);
            let publisher = connect(&mut router, "p", true);
            for n in 50..120 {
                publish(&mut router, &publisher, n);
            }
            router.sync_durable().unwrap();
            router.last_state_save = Instant::now() - STATE_SAVE_INTERVAL;
            router.save_state().unwrap();
            drop(router);
        }
        let (mut router, recovery) = durable_router(dir.path());
        assert_eq!(recovery.messages, 120);
        let received = read_back_all(&mut router, 120);
        assert_eq!(received, (0..120).collect::<Vec<_>>());
    }

    fn spill_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter(|e| {
                        e.as_ref()
                            .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    #[test]
    fn a_full_log_spills_instead_of_holding_and_deletes_what_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let drops = Arc::new(Drops::default());
        let area = SpillArea::open(dir.path(), 1 << 20).unwrap();
        let mut router = small_router(drops.clone()).spill(area);
        let subscriber = connect(&mut router, "s", false);
        subscribe(&mut router, &subscriber, QoS::AtLeastOnce);
        router.events(subscriber.id, Event::Disconnect);

        let publisher = connect(&mut router, "p", true);
        pubacks(&publisher);
        for n in 0..200 {
            publish(&mut router, &publisher, n);
        }
        assert_eq!(pubacks(&publisher), 200, "nothing waits: the log spilled");
        assert!(router.held.is_empty());
        assert!(spill_files(dir.path()) > 5, "full segments are on disk");

        let received = read_back_all(&mut router, 200);
        assert_eq!(received, (0..200).collect::<Vec<_>>());
        router.delete_spilled();
        assert_eq!(spill_files(dir.path()), 0, "read and acknowledged: deleted");
        assert_eq!(router.datalog.spill.as_ref().map(|s| s.used()), Some(0));
        assert!(drops.0.lock().map(|d| d.is_empty()).unwrap_or(false));
    }

    #[test]
    fn a_full_spill_area_holds_the_publishers_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let drops = Arc::new(Drops::default());
        // Room for about three segments of 1 KiB.
        let area = SpillArea::open(dir.path(), 3 * 1024 + 900).unwrap();
        let mut router = small_router(drops.clone()).spill(area);
        let subscriber = connect(&mut router, "s", false);
        subscribe(&mut router, &subscriber, QoS::AtLeastOnce);
        router.events(subscriber.id, Event::Disconnect);

        let publisher = connect(&mut router, "p", true);
        pubacks(&publisher);
        for n in 0..200 {
            publish(&mut router, &publisher, n);
        }
        let acked = pubacks(&publisher);
        assert!(
            (40..100).contains(&acked),
            "the log and the spill area hold about 50 messages: {acked} acknowledged"
        );
        assert_eq!(router.held.len(), 1, "then the publisher is held");

        let received = read_back_all(&mut router, 200);
        assert_eq!(received, (0..200).collect::<Vec<_>>());
        assert_eq!(acked + pubacks(&publisher), 200);
        assert!(router.held.is_empty());
        router.delete_spilled();
        assert_eq!(spill_files(dir.path()), 0);
        assert!(drops.0.lock().map(|d| d.is_empty()).unwrap_or(false));
    }

    #[test]
    fn a_spill_area_that_fails_holds_the_publishers_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let drops = Arc::new(Drops::default());
        let area = SpillArea::open(dir.path(), 1 << 20).unwrap();
        let mut router = small_router(drops.clone()).spill(area);
        // The directory goes away under the router: every write fails.
        std::fs::remove_dir_all(dir.path()).unwrap();
        let subscriber = connect(&mut router, "s", false);
        subscribe(&mut router, &subscriber, QoS::AtLeastOnce);
        router.events(subscriber.id, Event::Disconnect);

        let publisher = connect(&mut router, "p", true);
        pubacks(&publisher);
        for n in 0..100 {
            publish(&mut router, &publisher, n);
        }
        let acked = pubacks(&publisher);
        assert!(
            (10..50).contains(&acked),
            "the log alone holds about 20 messages: {acked} acknowledged"
        );
        assert_eq!(router.held.len(), 1, "the publisher is held");
        let failed = drops.1.lock().map(|f| f.clone()).unwrap_or_default();
        assert!(
            !failed.is_empty() && failed.iter().all(|op| op == "write"),
            "{failed:?}"
        );

        let received = read_back_all(&mut router, 100);
        assert_eq!(received, (0..100).collect::<Vec<_>>());
        assert_eq!(acked + pubacks(&publisher), 100);
        assert!(router.held.is_empty());
        assert!(drops.0.lock().map(|d| d.is_empty()).unwrap_or(false));
    }
}
