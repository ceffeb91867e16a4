//! The speed layer: live tumbling windows of device time (10 s by default), fleet-wide and
//! per H3 zone, into PostgreSQL (`windows`) and onto MQTT (`analytics/windows`).
//!
//! It aggregates what the bridge has committed, not a second copy of the stream. The bridge
//! stores every position, tour event and ack once by its key and drops redelivered copies,
//! so counting committed rows is exactly once by construction, with no state of our own to
//! checkpoint beyond one progress row. (A shared subscription of our own would have to
//! repeat the bridge's deduplication and keep its own durable state; reading the committed
//! tables needs neither.)
//!
//! **Which events a window holds.** Window `[s, e)` holds the events whose device time is
//! in it and whose `received_at` (the bridge's receipt time) is at most
//! `e + windows.allowed_lateness_ms`. An event of the window received after that is *late*:
//! counted in the `late_events` column of the window's fleet row and in the metric
//! `analytics_late_events_total`, never folded into the values. The rule depends only on
//! stored data, so a run killed and restarted computes the same windows as one that never
//! stopped: it resumes from its progress row and closes every window it has not closed yet,
//! including those that fell due while it was down.
//!
//! **When.** Window `[s, e)` closes at wall time `e + allowed_lateness + commit_grace`, the
//! grace covering the bridge's batch delay and commit: the rows of a message received by
//! `e + allowed_lateness` are committed by then. One transaction writes the window's rows
//! and moves the progress on; then the publisher sends it on MQTT (it never holds the
//! closing up). A PostgreSQL failure is retried with back-off; the window waits, nothing is
//! skipped. On the very first start the current window is the first one. While the next
//! window fills up, its positions are read ahead every `late_scan_interval_ms`, each up to
//! `now - commit_grace` (the same rule, applied in slices of receipt time), so that closing
//! reads only the last seconds of a busy window; after a restart the window is read whole.
//!
//! **Late events** are counted every `late_scan_interval_ms`: the positions and tour events
//! received since the last scan (up to `now - commit_grace`) whose device time lies in a
//! closed window and that missed its deadline; the scan's receipt-time watermark moves in
//! the same transaction, so each is counted once. A window is **recounted** once,
//! `recount_after_ms` after its deadline: rows the bridge committed after the window closed
//! (a commit slower than `commit_grace_ms`) are not in its values either, and become late
//! events too (also in `analytics_straggler_events_total`, with a warning). Nothing committed
//! in a window's time range is silently lost.
//!
//! **The figures** (see `analytics/migrations/V1__windows.sql`): positions and distinct taxis;
//! average and maximum speed over the fixes that have one; tours started and ended (each
//! tour and kind once, even if the taxi resent the event with another seq); revenue, the
//! `meter_cents` of the `ended` events (the taximeter's reading, there at once; the invoice's
//! fare is the batch layer's exact figure); orders (inbox messages of kind `order`) sent and
//! accepted, by the server time of their `order_events`, in the fleet row only. A zone is the
//! H3 cell of the event's coordinates at `h3_resolution`, as 15 lowercase hex digits; the
//! fleet row's zone is `fleet` and is written for every window, even an empty one.
//!
//! Parts: [`window`] (time arithmetic), [`zone`] (H3), [`aggregate`] (the figures), [`read`]
//! (queries on the bridge's tables), [`store`] (our tables), [`closer`] (closing, late
//! events, recounts; the clock is a parameter), [`message`] and [`publish`] (MQTT).

pub mod aggregate;
pub mod closer;
pub mod message;
pub mod publish;
pub mod read;
pub mod store;
pub mod window;
pub mod zone;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::Config;

/// The `[windows]` section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowsConfig {
    /// Compute the live windows (and publish them when `mqtt.enabled`).
    pub enabled: bool,
    /// Length of a window (10 s). Windows are aligned on the unix epoch; the length must
    /// divide a day (1 s to 1 h).
    pub length_ms: u64,
    /// How long after a window's end its events may still arrive (by the bridge's receipt
    /// time) and count; later ones are late: counted in `late_events`, not aggregated.
    pub allowed_lateness_ms: u64,
    /// Extra wait before closing, for the bridge to commit what it received in time (its
    /// batch delay plus a commit). A window closes at end + allowed lateness + this.
    pub commit_grace_ms: u64,
    /// Each window is counted again this long after its end + allowed lateness: rows the
    /// bridge committed after the window closed become late events.
    pub recount_after_ms: u64,
    /// How often late events are looked for (and recounts done).
    pub late_scan_interval_ms: u64,
    /// H3 resolution of the per-zone rows (0 to 15; 8: cells of about 0.74 km²).
    pub h3_resolution: u8,
    /// Largest message on `mqtt.topic`; the quietest zones of a window that does not fit are
    /// left out of its message (and counted in `zones_omitted`).
    pub max_message_bytes: usize,
}

impl Default for WindowsConfig {
    fn default() -> WindowsConfig {
        WindowsConfig {
            enabled: true,
            length_ms: 10_000,
            allowed_lateness_ms: 2_000,
            commit_grace_ms: 300,
            recount_after_ms: 60_000,
            late_scan_interval_ms: 1_000,
            h3_resolution: 8,
            max_message_bytes: 200_000,
        }
    }
}

/// A day in milliseconds.
const DAY_MS: u64 = 86_400_000;

impl WindowsConfig {
    /// Checks every rule serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), service::ConfigError> {
        use service::ConfigError as E;
        if !(1_000..=3_600_000).contains(&self.length_ms) || !DAY_MS.is_multiple_of(self.length_ms)
        {
            return Err(E::invalid(
                "windows.length_ms",
                format!(
                    "{} must be 1000 to 3600000 and divide a day (86400000)",
                    self.length_ms
                ),
            ));
        }
        if self.allowed_lateness_ms > DAY_MS {
            return Err(E::invalid(
                "windows.allowed_lateness_ms",
                "must be at most a day (86400000)",
            ));
        }
        if self.commit_grace_ms > 60_000 {
            return Err(E::invalid(
                "windows.commit_grace_ms",
                "must be at most 60000",
            ));
        }
        if self.recount_after_ms <= self.commit_grace_ms || self.recount_after_ms > DAY_MS {
            return Err(E::invalid(
                "windows.recount_after_ms",
                "must be more than windows.commit_grace_ms and at most a day (86400000)",
            ));
        }
        if !(10..=60_000).contains(&self.late_scan_interval_ms) {
            return Err(E::invalid(
                "windows.late_scan_interval_ms",
                "must be 10 to 60000",
            ));
        }
        if self.h3_resolution > 15 {
            return Err(E::invalid(
                "windows.h3_resolution",
                "must be between 0 and 15",
            ));
        }
        if self.max_message_bytes < 1_024 {
            return Err(E::invalid(
                "windows.max_message_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}

/// Starts the closer and (when `mqtt.enabled`) the publisher in the background. Fails only
/// on what retrying cannot mend (an unreadable certificate); PostgreSQL and the broker are
/// waited for.
pub async fn start(config: Arc<Config>) -> anyhow::Result<()> {
    let windows = &config.windows;
    if !windows.enabled {
        tracing::info!("live windows disabled (windows.enabled = false)");
        return Ok(());
    }
    let settings = closer::Settings::new(windows)?;
    let closed = Arc::new(Notify::new());
    if config.mqtt.enabled {
        publish::start(&config, closed.clone())?;
    }
    let postgres = config.postgres.clone();
    let scan_interval = Duration::from_millis(windows.late_scan_interval_ms);
    tokio::spawn(async move {
        let client = crate::db::connect(&postgres).await;
        let closer = closer::Closer::new(client, settings);
        closer::run(closer, postgres, scan_interval, closed).await;
    });
    tracing::info!(
        length_ms = windows.length_ms,
        allowed_lateness_ms = windows.allowed_lateness_ms,
        h3_resolution = windows.h3_resolution,
        "live windows running"
    );
    Ok(())
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_ten_second_windows() {
        let config = WindowsConfig::default();
        config.validate().unwrap();
        assert_eq!(config.length_ms, 10_000);
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let bad = |change: fn(&mut WindowsConfig), key: &str| {
            let mut config = WindowsConfig::default();
            change(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
        };
        bad(|c| c.length_ms = 7_000, "windows.length_ms");
        bad(|c| c.length_ms = 500, "windows.length_ms");
        bad(
            |c| c.allowed_lateness_ms = DAY_MS + 1,
            "windows.allowed_lateness_ms",
        );
        bad(|c| c.commit_grace_ms = 60_001, "windows.commit_grace_ms");
        bad(|c| c.recount_after_ms = 300, "windows.recount_after_ms");
        bad(
            |c| c.late_scan_interval_ms = 0,
            "windows.late_scan_interval_ms",
        );
        bad(|c| c.h3_resolution = 16, "windows.h3_resolution");
        bad(|c| c.max_message_bytes = 10, "windows.max_message_bytes");
    }
}
