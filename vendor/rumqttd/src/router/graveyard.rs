use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use super::{
    connection::SubscriptionOptions,
    scheduler::{PauseReason, Tracker},
    ConnectionEvents, DataRequest,
};
use crate::Filter;

pub struct Graveyard {
    connections: HashMap<String, SavedState>,
    /// When saved sessions with an expiry end, soonest first (entries of sessions resumed or
    /// saved again since are stale and skipped).
    expiries: BinaryHeap<Reverse<(Instant, String)>>,
}

impl Graveyard {
    pub fn new() -> Graveyard {
        Graveyard {
            connections: HashMap::new(),
            expiries: BinaryHeap::new(),
        }
    }

    /// Takes the saved state of a client id; a session past its expiry is not returned (only
    /// the metrics are).
    pub fn retrieve(&mut self, id: &str) -> Option<SavedState> {
        let mut saved = self.connections.remove(id)?;
        if saved.expired(Instant::now()) {
            saved.session_state = None;
        }
        Some(saved)
    }

    /// Forgets the sessions whose expiry has passed.
    pub fn sweep(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.expiries.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.expiries.pop() else {
                break;
            };
            if let Some(saved) = self.connections.get_mut(&id) {
                if saved.expires_at == Some(at) {
                    saved.session_state = None;
                    saved.expires_at = None;
                }
            }
        }
    }

    /// Whether a saved persistent session reads through the shared group `group`: it rejoins
    /// the group when it resumes, so the group (and its cursor) must outlive its live members.
    /// The saved sessions that have not expired: (client id, state, when it ends).
    pub fn sessions(&self) -> impl Iterator<Item = (&str, &SessionState, Option<Instant>)> {
        let now = Instant::now();
        self.connections
            .iter()
            .filter(move |(_, saved)| !saved.expired(now))
            .filter_map(|(id, saved)| {
                Some((id.as_str(), saved.session_state.as_ref()?, saved.expires_at))
            })
    }

    pub fn has_group_member(&self, group: &str) -> bool {
        let now = Instant::now();
        self.connections.values().any(|saved| {
            !saved.expired(now)
                && saved.session_state.as_ref().is_some_and(|state| {
                    state
                        .tracker
                        .data_requests
                        .iter()
                        .any(|request| request.group.as_deref() == Some(group))
                })
        })
    }

    /// The requests of saved sessions (not past their expiry) outside shared groups, each
    /// with its client id and the QoS of its subscription.
    pub fn saved_requests(&self) -> impl Iterator<Item = (&str, &DataRequest, u8)> {
        let now = Instant::now();
        self.connections
            .iter()
            .filter(move |(_, saved)| !saved.expired(now))
            .filter_map(|(id, saved)| Some((id, saved.session_state.as_ref()?)))
            .flat_map(|(id, state)| {
                state
                    .tracker
                    .data_requests
                    .iter()
                    .filter(|request| request.group.is_none())
                    .map(move |request| (id.as_str(), request, state.qos(request)))
            })
    }

    /// As [`Self::saved_requests`], to move their cursors.
    pub fn saved_requests_mut(&mut self) -> impl Iterator<Item = (&str, &mut DataRequest, u8)> {
        let now = Instant::now();
        self.connections
            .iter_mut()
            .filter(move |(_, saved)| !saved.expired(now))
            .filter_map(|(id, saved)| Some((id, saved.session_state.as_mut()?)))
            .flat_map(|(id, state)| {
                let options = &state.sub_options;
                state
                    .tracker
                    .data_requests
                    .iter_mut()
                    .filter(|request| request.group.is_none())
                    .map(move |request| {
                        let qos = options
                            .get(&request.filter)
                            .map_or(request.qos, |options| options.qos);
                        (id.as_str(), request, qos)
                    })
            })
    }

    /// Save connection tracker
    pub fn save_state(
        &mut self,
        mut tracker: Tracker,
        subscriptions: HashSet<String>,
        sub_options: HashMap<Filter, SubscriptionOptions>,
        metrics: ConnectionEvents,
        unacked_pubrels: VecDeque<u16>,
        expires_at: Option<Instant>,
    ) {
        tracker.pause(PauseReason::Busy);
        let id = tracker.id.clone();

        let session_state = SessionState {
            tracker,
            subscriptions,
            sub_options,
            unacked_pubrels,
        };

        if let Some(at) = expires_at {
            self.expiries.push(Reverse((at, id.clone())));
        }
        self.connections.insert(
            id,
            SavedState {
                session_state: Some(session_state),
                metrics,
                expires_at,
            },
        );
    }

    /// Save only metrics for connection
    pub fn save_metrics(&mut self, id: String, metrics: ConnectionEvents) {
        self.connections.insert(
            id,
            SavedState {
                session_state: None,
                metrics,
                expires_at: None,
            },
        );
    }
}

#[derive(Debug)]
pub struct SavedState {
    pub session_state: Option<SessionState>,
    pub metrics: ConnectionEvents,
    /// When the saved session ends; `None`: when the client comes back
    pub expires_at: Option<Instant>,
}

impl SavedState {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

impl SessionState {
    /// The QoS of the subscription a request reads for.
    fn qos(&self, request: &DataRequest) -> u8 {
        self.sub_options
            .get(&request.filter)
            .map_or(request.qos, |options| options.qos)
    }
}

#[derive(Debug)]
pub struct SessionState {
    pub tracker: Tracker,
    pub subscriptions: HashSet<String>,
    pub sub_options: HashMap<Filter, SubscriptionOptions>,
    // used for pubrel in qos2
    pub unacked_pubrels: VecDeque<u16>,
}
