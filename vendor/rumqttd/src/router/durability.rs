//! What the router reports about its logs' durability (PATCHES.md, 17 and 18).
//!
//! Each filter's log is in memory and bounded; a subscriber that falls further behind than the
//! log holds would lose the oldest messages when the log drops its oldest segment. For a
//! *durable* subscriber (a QoS 1 or 2 subscription of a session that outlives its connection,
//! or a shared group with such a member) the router does not drop that segment: with a spill
//! area it writes the segment to disk and reads it back for the readers behind; without one,
//! or when the area is full, the publishers whose messages go to that log are held (their
//! packets wait, unacknowledged) until the slowest durable subscriber has read past it. Other
//! subscribers (clean sessions, QoS 0 subscriptions) are moved past the dropped segment, and
//! what they lose is reported.

use std::io;
use std::time::Duration;

/// Why messages were skipped for a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The subscriber's session ends with its connection (or a shared group has no member
    /// with a persistent session).
    CleanSession,
    /// The subscription is QoS 0.
    Qos0,
    /// A durable subscriber: this should never happen, and is reported if it does.
    Durable,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::CleanSession => "clean_session",
            DropReason::Qos0 => "qos0",
            DropReason::Durable => "durable",
        }
    }
}

/// How far a durable subscriber is behind the end of a filter's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lag {
    /// Client id, or `$share/<group>` for a shared group.
    pub subscriber: String,
    /// The filter whose log it reads.
    pub filter: String,
    /// Messages in the log it has not read or not acknowledged yet.
    pub messages: u64,
}

/// Receives the router's durability events, on the router's thread: keep it quick.
pub trait Observer: Send + Sync {
    /// `count` messages of `filter`'s log were skipped for `subscriber`; `first` is true the
    /// first time for this subscriber (connection, saved session or group).
    fn dropped(
        &self,
        _subscriber: &str,
        _filter: &str,
        _count: u64,
        _reason: DropReason,
        _first: bool,
    ) {
    }

    /// `filter`'s log is full and `subscriber`, the durable subscriber furthest behind, has
    /// not read its oldest segment: publishers to it are held from now on.
    fn blocked(&self, _filter: &str, _subscriber: &str) {}

    /// A publisher's packets are held: `filter`'s log is full of messages a durable
    /// subscriber has not read.
    fn held(&self, _publisher: &str, _filter: &str) {}

    /// The publisher's packets flow again (or its connection is gone), after `waited`.
    fn released(&self, _publisher: &str, _waited: Duration) {}

    /// The durable subscribers that are behind (about once a second; those not listed are
    /// caught up).
    fn lag(&self, _lags: &[Lag]) {}

    /// A segment of `filter`'s log was written to the spill area (`bytes` on disk).
    fn spilled(&self, _filter: &str, _bytes: u64) {}

    /// A spilled segment of `filter`'s log was read back from disk (`bytes`).
    fn read_back(&self, _filter: &str, _bytes: u64) {}

    /// A spilled segment of `filter`'s log was deleted: every durable reader has passed it.
    fn spill_deleted(&self, _filter: &str, _bytes: u64) {}

    /// Spilling failed: `op` is `write` (the publishers are held instead), `read` (the
    /// messages of the segment that could not be read back are skipped) or `delete` (the
    /// file stays, counted against the budget).
    fn spill_failed(&self, _filter: &str, _op: &str, _error: &io::Error) {}

    /// Durable mode: `logs` logs were written and synced to disk in `took`, before the
    /// acknowledgements of the publishes appended to them were sent.
    fn log_synced(&self, _logs: usize, _took: Duration) {}
}

/// Reports nothing.
pub struct NoObserver;

impl Observer for NoObserver {}
