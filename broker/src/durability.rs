//! The router's durability events as metrics and logs.
//!
//! The router never drops a message a durable subscriber (a QoS 1 or 2 subscription of a
//! session that outlives its connection, or a shared group with such a member) has not read:
//! when a filter's log is full of them, the publishers to it are held (their PUBACKs wait)
//! until the slowest durable subscriber reads past the log's oldest segment. Subscribers that
//! are not durable (clean sessions, QoS 0 subscriptions) are moved past it instead; what
//! they lose is counted here and logged once per subscriber. A log that starts holding its
//! publishers is logged, with the durable subscriber furthest behind, at most once a minute.
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

use std::collections::{HashMap, HashSet};
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
}

impl DurabilityMetrics {
    /// Registers every counter and the gauge (at 0 in a new process), so that they are
    /// scraped, and alerts on them work, before the first event.
    pub fn registered() -> DurabilityMetrics {
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
        DurabilityMetrics {
            lagging: Mutex::default(),
            blocked_logged: Mutex::default(),
        }
    }
}

/// A filter whose log holds its publishers is logged at most this often.
const BLOCKED_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl Observer for DurabilityMetrics {
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
                "the log of a filter is full of messages a durable subscriber has not read: \
                 its publishers wait (logged at most once a minute per filter; see \
                 broker_durable_lag_messages)"
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
}
