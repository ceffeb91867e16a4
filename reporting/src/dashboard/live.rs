//! `GET /v1/live`: the fleet's latest positions pushed to browsers as server-sent events.
//!
//! Where the positions come from: the bridge writes each taxi's newest position into
//! `latest_positions` but notifies nothing (a NOTIFY per position would cost the ingest
//! path), and reporting only reads the database. Subscribing to the broker instead would
//! give this service an MQTT identity, a certificate and a second source of truth. So one
//! shared task ([`Hub`]) reads `latest_positions` (with each taxi's online status) once per
//! `dashboard.live_interval_ms`, only while someone is connected, compares it with what it
//! read before and broadcasts the taxis that changed. However many browsers watch, the
//! database sees one small query a second; a browser sees a position at most an interval
//! after it was committed.
//!
//! Each connection gets a `snapshot` event (every taxi, as last read; a new connection
//! makes the task read at once) first, then a `positions` event per change (`{"taxis": [...], "removed": [...]}`). A connection too slow to keep up skips
//! what it missed and gets a fresh snapshot. Comments keep idle connections open through
//! proxies. The stream needs the `fleet` permission, like `/v1/fleet`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use futures_util::Stream;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{broadcast, Notify};

use crate::api::error::ApiError;
use crate::api::{AppState, Caller};
use crate::auth::Permission;

/// Changes waiting for a slow connection before it is resynchronised with a snapshot.
const BACKLOG: usize = 64;
/// A comment on idle connections this often.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One taxi on the map.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Taxi {
    pub taxi_id: String,
    /// Device time of the position, milliseconds since the epoch.
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: Option<f32>,
    pub heading_deg: Option<f32>,
    /// `online`, `offline` or `unknown`.
    pub status: String,
}

/// The shared reader of `latest_positions` and its subscribers.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<BTreeMap<String, Taxi>>,
    changes: broadcast::Sender<Arc<str>>,
    /// A new subscriber: read now rather than at the next tick.
    wake: Notify,
}

impl Hub {
    /// Starts the reading task on `pool`, every `interval`.
    pub fn start(pool: deadpool_postgres::Pool, interval: Duration) -> Hub {
        let (changes, _) = broadcast::channel(BACKLOG);
        let hub = Hub {
            inner: Arc::new(Inner {
                current: RwLock::new(BTreeMap::new()),
                changes,
                wake: Notify::new(),
            }),
        };
        tokio::spawn(hub.clone().run(pool, interval));
        hub
    }

    async fn run(self, pool: deadpool_postgres::Pool, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = self.inner.wake.notified() => {}
            }
            if self.inner.changes.receiver_count() == 0 {
                continue;
            }
            match read(&pool).await {
                Ok(taxis) => {
                    if failing {
                        tracing::info!("live positions readable again");
                        failing = false;
                    }
                    self.update(taxis);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %format!("{e:#}"), "live positions cannot be read");
                        failing = true;
                    }
                    metrics::counter!("reporting_live_read_errors_total").increment(1);
                }
            }
        }
    }

    /// Replaces the current positions and broadcasts what changed.
    fn update(&self, taxis: Vec<Taxi>) {
        let fresh: BTreeMap<String, Taxi> =
            taxis.into_iter().map(|t| (t.taxi_id.clone(), t)).collect();
        let (changed, removed) = {
            let mut current = self
                .inner
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let changed: Vec<Taxi> = fresh
                .values()
                .filter(|taxi| current.get(&taxi.taxi_id) != Some(*taxi))
                .cloned()
                .collect();
            let removed: Vec<String> = current
                .keys()
                .filter(|id| !fresh.contains_key(*id))
                .cloned()
                .collect();
            *current = fresh;
            (changed, removed)
        };
        if changed.is_empty() && removed.is_empty() {
            return;
        }
        metrics::counter!("reporting_live_changes_total").increment(changed.len() as u64);
        let message = json!({ "taxis": changed, "removed": removed }).to_string();
        // No receiver left: nothing to do.
        let _ = self.inner.changes.send(Arc::from(message));
    }

    /// Every taxi, as a `snapshot` event's data.
    fn snapshot(&self) -> String {
        let current = self
            .inner
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let taxis: Vec<&Taxi> = current.values().collect();
        json!({ "taxis": taxis, "removed": [] }).to_string()
    }

    /// A subscriber's events: a snapshot, then the changes.
    fn events(&self) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        // Subscribed before the snapshot is taken: no change falls in between.
        let receiver = self.inner.changes.subscribe();
        self.inner.wake.notify_one();
        let hub = self.clone();
        let first = Event::default().event("snapshot").data(hub.snapshot());
        futures_util::stream::unfold(
            (hub, receiver, Some(first)),
            |(hub, mut receiver, first)| async move {
                if let Some(first) = first {
                    return Some((Ok(first), (hub, receiver, None)));
                }
                let event = match receiver.recv().await {
                    Ok(change) => Event::default().event("positions").data(&*change),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        Event::default().event("snapshot").data(hub.snapshot())
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                Some((Ok(event), (hub, receiver, None)))
            },
        )
    }
}

/// Each taxi's latest position and status.
async fn read(pool: &deadpool_postgres::Pool) -> anyhow::Result<Vec<Taxi>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT l.taxi_id, (extract(epoch FROM l.ts) * 1000)::bigint, l.lat, l.lon,
                    l.speed_kmh, l.heading_deg, coalesce(s.state, 'unknown')
               FROM latest_positions l LEFT JOIN taxi_status s ON s.taxi_id = l.taxi_id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Taxi {
                taxi_id: row.try_get(0)?,
                ts_ms: row.try_get(1)?,
                lat: row.try_get(2)?,
                lon: row.try_get(3)?,
                speed_kmh: row.try_get(4)?,
                heading_deg: row.try_get(5)?,
                status: row.try_get(6)?,
            })
        })
        .collect()
}

/// `GET /v1/live`
pub async fn stream(
    State(state): State<AppState>,
    Extension(principal): Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    if !principal.may(Permission::Fleet) {
        return Err(ApiError::forbidden(Permission::Fleet));
    }
    metrics::counter!("reporting_live_connections_total").increment(1);
    tracing::debug!(caller = %principal.name, "live positions stream opened");
    Ok(Sse::new(state.live.events()).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taxi(id: &str, ts_ms: i64) -> Taxi {
        Taxi {
            taxi_id: id.to_owned(),
            ts_ms,
            lat: 52.5,
            lon: 13.4,
            speed_kmh: None,
            heading_deg: None,
            status: "online".to_owned(),
        }
    }

    fn hub() -> Hub {
        let (changes, _) = broadcast::channel(BACKLOG);
        Hub {
            inner: Arc::new(Inner {
                current: RwLock::new(BTreeMap::new()),
                changes,
                wake: Notify::new(),
            }),
        }
    }

    #[tokio::test]
    async fn only_changed_and_removed_taxis_are_broadcast() {
        let hub = hub();
        let mut receiver = hub.inner.changes.subscribe();
        hub.update(vec![taxi("a", 1), taxi("b", 1)]);
        let first: serde_json::Value =
            serde_json::from_str(&receiver.recv().await.expect("first change")).expect("json");
        assert_eq!(first["taxis"].as_array().map(Vec::len), Some(2));
        hub.update(vec![taxi("a", 1), taxi("b", 1)]);
        assert!(
            receiver.try_recv().is_err(),
            "nothing changed, nothing sent"
        );
        hub.update(vec![taxi("a", 2)]);
        let second: serde_json::Value =
            serde_json::from_str(&receiver.recv().await.expect("second change")).expect("json");
        assert_eq!(second["taxis"][0]["taxi_id"], "a");
        assert_eq!(second["taxis"].as_array().map(Vec::len), Some(1));
        assert_eq!(second["removed"], json!(["b"]));
        let snapshot: serde_json::Value = serde_json::from_str(&hub.snapshot()).expect("json");
        assert_eq!(snapshot["taxis"][0]["ts_ms"], 2);
    }
}
