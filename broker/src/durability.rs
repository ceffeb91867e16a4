//! The router's durability events as metrics and logs.
//!
//! The router never drops a message a durable subscriber (a QoS 1 or 2 subscription of a
//! session that outlives its connection, or a shared group with such a member) has not read:
//! when a filter's log is full of them, its oldest segment is written to the spill area
//! (`router.spill_dir`) and read back from there as the subscriber catches up; when the spill
//! area is full too (or off), the publishers to it are held (their PUBACKs wait) until the
//! slowest durable subscriber reads past the log's oldest segment. Subscribers that are not
//! durable (clean sessions, QoS 0 subscriptions) are moved past it instead; what they lose is
//! counted here and logged once per subscriber. A log that starts holding its publishers is
//! logged, with the durable subscriber furthest behind, at most once a minute; so is a spill
//! file that cannot be written, read back or deleted.
//!
//! Metrics:
//! - `broker_messages_dropped_total{reason}`: messages skipped for a subscriber that fell
//!   further behind than its filter's log holds (`clean_session`, `qos0`; `durable` should
//!   stay 0).
//! - `broker_backpressure_events_total`: times a publisher was held.
//! - `broker_backpressure_publishers`: publishers held now.
//! - `broker_backpressure_wait_milliseconds_total`: time publishers spent held.
//! - `broker_durable_lag_messages{subscriber,filter}`: messages in a filter's log a durable
//!   subscriber (client id, or `$share/<group>`) has not read or not acknowledged; 0 once it
//!   has caught up.
//! - `broker_spill_bytes`: bytes of spilled segments on disk now.
//! - `broker_spill_budget_bytes`: the spill area's budget (`router.spill_max_bytes`; 0: off).
//! - `broker_spill_segments_total`: segments written to the spill area.
//! - `broker_spill_read_segments_total`: spilled segments read back from disk.
//! - `broker_spill_deleted_segments_total`: spilled segments deleted once read by every
//!   durable subscriber.
//! - `broker_spill_errors_total{op}`: spill files that could not be written (`write`: the
//!   publishers are held instead), read back (`read`: messages lost) or deleted (`delete`).
//!
//! In `disk` durability (`router.durability`), every log is written to `router.log_dir`
//! and synced before the PUBACKs of what was appended:
//! - `broker_log_fsyncs_total`, `broker_log_fsync_seconds_total`: syncs of the durable log
//!   (one per router round that appended), and the time they took.
//! - `broker_log_recovered_messages_total`: messages found in the log at start.
//! - `broker_log_truncated_bytes_total`: bytes cut at start from segment files whose tail a
//!   crash tore.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rumqttd::{DropReason, Lag, Observer};
use tracing::{error, warn};

/// Turns the router's durability events into metrics and log lines.
pub struct DurabilityMetrics {
    /// The (subscriber, filter) lag series last set above 0.
    lagging: Mutex<HashSet<(String, String)>>,
    /// When a full log holding its publishers was last logged, by filter.
    blocked_logged: Mutex<HashMap<String, Instant>>,
    /// When a spill failure was last logged, by filter and operation.
    spill_failure_logged: Mutex<HashMap<(String, String), Instant>>,
}

impl DurabilityMetrics {
    /// Registers every counter and gauge (at 0 in a new process), so that they are scraped,
    /// and alerts on them work, before the first event; `spill_budget` is the spill area's
    /// budget in bytes (0: off).
    pub fn registered(spill_budget: u64) -> DurabilityMetrics {
        for reason in [
            DropReason::CleanSession,
            DropReason::Qos0,
            DropReason::Durable,
        ] {
            metrics::counter!("broker_messages_dropped_total", "reason" => reason.as_str())
                .increment(0);
        }
        metrics::counter!("broker_backpressure_events_total").increment(0);
        metrics::counter!("broker_backpressure_wait_milliseconds_total").increment(0);
        metrics::gauge!("broker_backpressure_publishers").increment(0.0);
        metrics::gauge!("broker_spill_bytes").increment(0.0);
        metrics::gauge!("broker_spill_budget_bytes").set(spill_budget as f64);
        metrics::counter!("broker_spill_segments_total").increment(0);
        metrics::counter!("broker_spill_read_segments_total").increment(0);
        metrics::counter!("broker_spill_deleted_segments_total").increment(0);
        for op in ["write", "read", "delete"] {
            metrics::counter!("broker_spill_errors_total", "op" => op).increment(0);
        }
        DurabilityMetrics {
            lagging: Mutex::default(),
            blocked_logged: Mutex::default(),
            spill_failure_logged: Mutex::default(),
        }
    }
}

/// A filter whose log holds its publishers is logged at most this often.
const BLOCKED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Counts what durable mode read back at start.
pub fn recovered(recovery: &rumqttd::Recovery) {
    metrics::counter!("broker_log_recovered_messages_total").increment(recovery.messages);
    metrics::counter!("broker_log_truncated_bytes_total").increment(recovery.truncated_bytes);
    metrics::counter!("broker_log_fsyncs_total").absolute(0);
}

impl Observer for DurabilityMetrics {
    fn log_synced(&self, _logs: usize, took: Duration) {
        metrics::counter!("broker_log_fsyncs_total").increment(1);
        metrics::gauge!("broker_log_fsync_seconds_total").increment(took.as_secs_f64());
    }

    fn dropped(&self, subscriber: &str, filter: &str, count: u64, reason: DropReason, first: bool) {
        metrics::counter!("broker_messages_dropped_total", "reason" => reason.as_str())
            .increment(count);
        if reason == DropReason::Durable {
            error!(
                subscriber,
                filter, count, "messages dropped for a durable subscriber"
            );
        } else if first {
            warn!(
                subscriber,
                filter,
                count,
                reason = reason.as_str(),
                "a subscriber that is not durable fell further behind than the log holds: \
                 its oldest messages are dropped (logged once per subscriber; see \
                 broker_messages_dropped_total)"
            );
        }
    }

    fn blocked(&self, filter: &str, subscriber: &str) {
        let Ok(mut logged) = self.blocked_logged.lock() else {
            return;
        };
        let now = Instant::now();
        let recently = logged
            .get(filter)
            .is_some_and(|at| now.duration_since(*at) < BLOCKED_LOG_INTERVAL);
        if !recently {
            logged.insert(filter.to_owned(), now);
            warn!(
                filter,
                subscriber,
                "the log of a filter is full of messages a durable subscriber has not read, \
                 and the spill area has no room for them (or is off): its publishers wait \
                 (logged at most once a minute per filter; see broker_durable_lag_messages, \
                 broker_spill_bytes)"
            );
        }
    }

    fn held(&self, _publisher: &str, _filter: &str) {
        metrics::counter!("broker_backpressure_events_total").increment(1);
        metrics::gauge!("broker_backpressure_publishers").increment(1.0);
    }

    fn released(&self, _publisher: &str, waited: Duration) {
        metrics::gauge!("broker_backpressure_publishers").decrement(1.0);
        metrics::counter!("broker_backpressure_wait_milliseconds_total")
            .increment(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX));
    }

    fn lag(&self, lags: &[Lag]) {
        let Ok(mut lagging) = self.lagging.lock() else {
            return;
        };
        let now: HashSet<(String, String)> = lags
            .iter()
            .map(|lag| (lag.subscriber.clone(), lag.filter.clone()))
            .collect();
        for (subscriber, filter) in lagging.difference(&now) {
            metrics::gauge!(
                "broker_durable_lag_messages",
                "subscriber" => subscriber.clone(),
                "filter" => filter.clone()
            )
            .set(0.0);
        }
        for lag in lags {
            metrics::gauge!(
                "broker_durable_lag_messages",
                "subscriber" => lag.subscriber.clone(),
                "filter" => lag.filter.clone()
            )
            .set(lag.messages as f64);
        }
        *lagging = now;
    }

    fn spilled(&self, _filter: &str, bytes: u64) {
        metrics::counter!("broker_spill_segments_total").increment(1);
        metrics::gauge!("broker_spill_bytes").increment(bytes as f64);
    }

    fn read_back(&self, _filter: &str, _bytes: u64) {
        metrics::counter!("broker_spill_read_segments_total").increment(1);
    }

    fn spill_deleted(&self, _filter: &str, bytes: u64) {
        metrics::counter!("broker_spill_deleted_segments_total").increment(1);
        metrics::gauge!("broker_spill_bytes").decrement(bytes as f64);
    }

    fn spill_failed(&self, filter: &str, op: &str, error: &io::Error) {
        metrics::counter!("broker_spill_errors_total", "op" => op.to_owned()).increment(1);
        let Ok(mut logged) = self.spill_failure_logged.lock() else {
            return;
        };
        let now = Instant::now();
        let key = (filter.to_owned(), op.to_owned());
        let recently = logged
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < BLOCKED_LOG_INTERVAL);
        if !recently {
            logged.insert(key, now);
            let consequence = match op {
                "write" => "its publishers wait instead",
                "read" => "messages of the segment that could not be read back are lost",
                _ => "the file stays on disk, counted against the budget",
            };
            error!(
                filter,
                op,
                %error,
                "a spill file of the router's log failed: {consequence} (logged at most once \
                 a minute per filter; see broker_spill_errors_total)"
            );
        }
    }
}
