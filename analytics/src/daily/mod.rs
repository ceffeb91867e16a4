//! The batch layer: daily aggregates of the fleet's own data and of the imported NYC trips,
//! kept apart by their `source` (`fleet`, `nyc`).
//!
//! A fleet day is a calendar day of the configured time zone (23, 24 or 25 hours); an NYC
//! day is a New York day. Per day: trips, revenue, distance, active taxis, positions,
//! average fare, flagged invoices, orders by outcome, and the running total of trips since
//! the source's first day; per zone the same where it applies. The numbers are computed
//! over the lake's Parquet files (not in PostgreSQL, whose job is the live data), with
//! DataFusion, except a fleet day's positions, which are counted from their dictionary-encoded
//! columns ([`positions`]); they are stored in PostgreSQL (`daily_fleet`, `daily_zone`) and
//! published back to the lake.
//!
//! - [`calendar`]: where a local day starts and ends.
//! - [`schedule`] and [`clock`]: when days run (catch-up at start, then each local midnight).
//! - [`job`]: the steps of aggregating days; [`fleet`] and [`nyc`]: the queries;
//!   [`positions`]: a fleet day's positions.
//! - [`store`] and [`publish`]: PostgreSQL and the lake.
//!
//! Running a day again replaces it: `analytics aggregate --from D --to E` ([`recompute`])
//! does that for a range, and the import calls [`aggregate_nyc_days`] for the days it
//! touched.

pub mod calendar;
pub mod clock;
pub mod fleet;
mod frames;
pub mod job;
pub mod nyc;
mod positions;
mod publish;
pub mod schedule;
pub mod store;
pub mod summary;

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use jiff::civil::Date;
use jiff::SignedDuration;
use serde::{Deserialize, Serialize};

pub use job::Aggregator;
pub use summary::{DaySummary, OrderOutcomes, Source, StoredDay, Totals, ZoneRow};

use crate::Config;

/// The `[daily]` section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailyConfig {
    /// Aggregate at start (catching up) and at every local midnight. Off: only by hand
    /// (`analytics aggregate`) and after imports.
    pub enabled: bool,
    /// Aggregate each day once more this many seconds after its midnight, for data that
    /// came late (taxis that were offline); 0: once only. Less than 23 hours.
    pub late_rerun_s: u64,
    /// First delay before trying a failed day again; doubles up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Size of the charts of `analytics chart`, in pixels.
    pub chart_width: u32,
    pub chart_height: u32,
}

impl Default for DailyConfig {
    fn default() -> DailyConfig {
        DailyConfig {
            enabled: true,
            late_rerun_s: 3_600,
            min_backoff_ms: 1_000,
            max_backoff_ms: 300_000,
            chart_width: 1_200,
            chart_height: 600,
        }
    }
}

impl DailyConfig {
    /// Checks every rule serde cannot, naming the key.
    pub fn validate(&self) -> Result<(), service::ConfigError> {
        use service::ConfigError as E;
        if self.late_rerun_s >= 23 * 3_600 {
            return Err(E::invalid(
                "daily.late_rerun_s",
                "must be less than 82800 (23 hours, the shortest day)",
            ));
        }
        if self.min_backoff_ms == 0 || self.min_backoff_ms > self.max_backoff_ms {
            return Err(E::invalid(
                "daily.min_backoff_ms",
                "must be at least 1 and at most daily.max_backoff_ms",
            ));
        }
        for (key, value, min) in [
            ("daily.chart_width", self.chart_width, 300),
            ("daily.chart_height", self.chart_height, 200),
        ] {
            if !(min..=10_000).contains(&value) {
                return Err(E::invalid(
                    key,
                    format!("must be between {min} and 10000 pixels"),
                ));
            }
        }
        Ok(())
    }

    /// The schedule's settings for days of `tz`.
    pub fn timing(&self, tz: jiff::tz::TimeZone) -> schedule::Timing {
        schedule::Timing {
            tz,
            late_rerun: (self.late_rerun_s > 0)
                .then(|| SignedDuration::from_secs(i64::try_from(self.late_rerun_s).unwrap_or(0))),
            min_backoff: Duration::from_millis(self.min_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
        }
    }
}

/// Starts the schedule in the background (if `daily.enabled`): catching up first, then
/// every local midnight. Failures are retried there, so a database or store that is down
/// does not stop the service from starting.
pub async fn start(config: Arc<Config>) -> anyhow::Result<()> {
    if !config.daily.enabled {
        tracing::info!("daily aggregation off (daily.enabled = false)");
        return Ok(());
    }
    let timing = config.daily.timing(config.tz());
    let mut aggregator = Aggregator::new(config).await?;
    tokio::spawn(async move {
        schedule::run(&clock::WallClock, &timing, &mut aggregator).await;
    });
    Ok(())
}

/// Exports and aggregates every day of `[from, to]` again (fleet days; NYC days that have
/// trips or a row), printing one line per day with its totals.
pub async fn recompute(config: &Config, from: Date, to: Date) -> anyhow::Result<()> {
    if to < from {
        bail!("--to {to} is before --from {from}");
    }
    let mut aggregator = Aggregator::new(Arc::new(config.clone())).await?;
    let mut print = |day: &StoredDay| println!("{}", day.describe());
    aggregator
        .run_days(Source::Fleet, &calendar::days(from, to), &mut print)
        .await?;
    let nyc_days = aggregator.nyc_days_between(from, to).await?;
    aggregator
        .run_days(Source::Nyc, &nyc_days, &mut print)
        .await
}

/// Aggregates the NYC `days` (New York days whose trips the import changed) and publishes
/// them; for the import to call once its files are in the lake.
pub async fn aggregate_nyc_days(config: &Config, days: &[Date]) -> anyhow::Result<()> {
    let mut days = days.to_vec();
    days.sort();
    days.dedup();
    if days.is_empty() {
        return Ok(());
    }
    let mut aggregator = Aggregator::new(Arc::new(config.clone())).await?;
    aggregator.run_days(Source::Nyc, &days, &mut |_| {}).await
}

#[cfg(test)]
mod tests {
    use super::*;

    type Change = Box<dyn Fn(&mut DailyConfig)>;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        DailyConfig::default().validate().unwrap();
        let cases: Vec<(&str, Change)> = vec![
            (
                "daily.late_rerun_s",
                Box::new(|c| c.late_rerun_s = 23 * 3_600),
            ),
            ("daily.min_backoff_ms", Box::new(|c| c.min_backoff_ms = 0)),
            ("daily.min_backoff_ms", Box::new(|c| c.max_backoff_ms = 10)),
            ("daily.chart_width", Box::new(|c| c.chart_width = 10)),
            ("daily.chart_height", Box::new(|c| c.chart_height = 20_000)),
        ];
        for (key, change) in cases {
            let mut config = DailyConfig::default();
            change(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
    }
}
