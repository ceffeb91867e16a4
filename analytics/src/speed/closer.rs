//! The closer: closes each window once it is due, counts late events, and recounts each
//! closed window once a while later. One [`Closer::tick`] does all that is due at an instant.
//!
//! The clock is a parameter: [`run`] ticks with the wall clock, tests and benchmarks may call
//! [`Closer::tick`] with instants of their choosing. Each step is one transaction that locks
//! the progress row first (see [`super::store`]), so a crash between steps loses nothing and
//! repeats nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::aggregate::WindowAggregate;
use super::store::{self, Mark};
use super::window::Window;
use super::zone::Zones;
use super::{read, WindowsConfig};
use crate::config::PostgresConfig;

/// The closer's settings, from `[windows]`, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub length_ms: i64,
    pub allowed_lateness_ms: i64,
    pub commit_grace_ms: i64,
    pub recount_after_ms: i64,
    pub zones: Zones,
}

impl Settings {
    pub fn new(config: &WindowsConfig) -> anyhow::Result<Settings> {
        let ms = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        Ok(Settings {
            length_ms: ms(config.length_ms),
            allowed_lateness_ms: ms(config.allowed_lateness_ms),
            commit_grace_ms: ms(config.commit_grace_ms),
            recount_after_ms: ms(config.recount_after_ms),
            zones: Zones::new(config.h3_resolution)?,
        })
    }
}

/// What one tick did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Windows closed, oldest first.
    pub closed: Vec<Window>,
    /// Late events found by the late scan.
    pub late_events: i64,
    /// Windows recounted, and the events the bridge committed after they had closed.
    pub recounted: Vec<Window>,
    pub stragglers: i64,
}

/// Closes windows over one PostgreSQL connection.
pub struct Closer {
    client: Client,
    settings: Settings,
    /// The progress row exists.
    started: bool,
    /// When the next window is due, as of the last tick.
    next_close_at_ms: Option<i64>,
    /// The next window to close, as of the last close (None: not known yet).
    next_window: Option<Window>,
    /// Its positions read ahead, before it is due.
    ahead: Option<ReadAhead>,
}

/// The positions of the next window to close, read while it fills up: every position
/// received up to `until_ms`. Closing then reads only those received since, so that a busy
/// window's row is written soon after it is due. Only in memory: after a restart the
/// window is read whole, with the same result.
struct ReadAhead {
    window: Window,
    aggregate: WindowAggregate,
    until_ms: i64,
}

impl Closer {
    pub fn new(client: Client, settings: Settings) -> Closer {
        Closer {
            client,
            settings,
            started: false,
            next_close_at_ms: None,
            next_window: None,
            ahead: None,
        }
    }

    /// When the next window is due (known after a tick).
    pub fn next_close_at_ms(&self) -> Option<i64> {
        self.next_close_at_ms
    }

    /// Does what is due at `now_ms`: closes every due window (oldest first), counts the late
    /// events received up to `now_ms - commit_grace_ms`, recounts every window whose recount
    /// is due. On the very first tick on a database, the current window becomes the first.
    pub async fn tick(&mut self, now_ms: i64) -> anyhow::Result<TickReport> {
        if !self.started {
            let first = Window::containing(now_ms, self.settings.length_ms);
            store::create(&self.client, first.start_ms).await?;
            self.started = true;
        }
        let mut report = TickReport::default();
        while let Some(window) = self.close_next(now_ms).await? {
            report.closed.push(window);
        }
        self.read_ahead(now_ms).await?;
        let scan = Instant::now();
        report.late_events = self.count_late(now_ms).await?;
        let late_ms = scan.elapsed().as_millis() as u64;
        while let Some((window, stragglers)) = self.recount_next(now_ms).await? {
            report.recounted.push(window);
            report.stragglers += stragglers;
        }
        tracing::trace!(
            late_scan_ms = late_ms,
            recount_ms = scan.elapsed().as_millis() as u64 - late_ms,
            "windows: late scan and recount"
        );
        Ok(report)
    }

    /// Closes the window after the last closed one if it is due: its rows and the progress
    /// in one transaction.
    async fn close_next(&mut self, now_ms: i64) -> anyhow::Result<Option<Window>> {
        let began = Instant::now();
        let s = self.settings;
        let transaction = self.client.transaction().await?;
        let progress = store::lock(&transaction).await?;
        let window = Window::starting_from(progress.closed_until_ms, s.length_ms);
        let deadline = window.lateness_deadline_ms(s.allowed_lateness_ms);
        let due_at = deadline + s.commit_grace_ms;
        if now_ms < due_at {
            transaction.rollback().await?;
            self.next_close_at_ms = Some(due_at);
            self.next_window = Some(window);
            return Ok(None);
        }
        let (mut aggregate, read_until_ms) = match self.ahead.take() {
            Some(ahead) if ahead.window == window => (ahead.aggregate, Some(ahead.until_ms)),
            _ => (WindowAggregate::new(s.zones), None),
        };
        read::window(
            &transaction,
            window,
            s.allowed_lateness_ms,
            read_until_ms,
            &mut aggregate,
        )
        .await?;
        let read_ms = began.elapsed().as_millis() as u64;
        if aggregate.without_zone > 0 {
            warn!(
                window_start_ms = window.start_ms,
                rows = aggregate.without_zone,
                "rows without an H3 cell: counted in the fleet row only"
            );
        }
        let rows = aggregate.into_rows();
        store::write_window(&transaction, window, &rows, now_ms).await?;
        store::advance(&transaction, Mark::ClosedUntil, window.end_ms).await?;
        transaction.commit().await?;
        self.next_window = Some(Window::starting_from(window.end_ms, s.length_ms));

        let committed_ms = now_ms + began.elapsed().as_millis() as i64;
        metrics::counter!("analytics_windows_closed_total").increment(1);
        metrics::histogram!("analytics_window_close_delay_seconds")
            .record((committed_ms - deadline) as f64 / 1000.0);
        tracing::debug!(
            window_start_ms = window.start_ms,
            zones = rows.len() - 1,
            positions = rows[0].positions,
            read_ms,
            total_ms = began.elapsed().as_millis() as u64,
            late_by_ms = committed_ms - deadline,
            "window closed"
        );
        Ok(Some(window))
    }

    /// Reads ahead the positions of the next window to close received up to
    /// `now_ms - commit_grace_ms` (never past its deadline: those are late).
    async fn read_ahead(&mut self, now_ms: i64) -> anyhow::Result<()> {
        let s = self.settings;
        let Some(window) = self.next_window else {
            return Ok(());
        };
        let until_ms =
            (now_ms - s.commit_grace_ms).min(window.lateness_deadline_ms(s.allowed_lateness_ms));
        if until_ms <= window.start_ms {
            return Ok(());
        }
        let ahead = match self.ahead.take() {
            Some(ahead) if ahead.window == window => ahead,
            _ => ReadAhead {
                window,
                aggregate: WindowAggregate::new(s.zones),
                until_ms: i64::MIN,
            },
        };
        if until_ms <= ahead.until_ms {
            self.ahead = Some(ahead);
            return Ok(());
        }
        let mut ahead = ahead;
        let after_ms = (ahead.until_ms != i64::MIN).then_some(ahead.until_ms);
        read::positions(
            &self.client,
            window,
            after_ms,
            until_ms,
            &mut ahead.aggregate,
        )
        .await?;
        ahead.until_ms = until_ms;
        self.ahead = Some(ahead);
        Ok(())
    }

    /// Counts the late rows received since the last scan, up to `now_ms - commit_grace_ms`,
    /// into their windows' `late_events`. A row late for a window that is not closed yet
    /// would be received after `closed_until + length + allowed_lateness` (the next
    /// window's deadline): the scan never goes past that, should closing have fallen behind.
    async fn count_late(&mut self, now_ms: i64) -> anyhow::Result<i64> {
        let s = self.settings;
        let transaction = self.client.transaction().await?;
        let progress = store::lock(&transaction).await?;
        let until = (now_ms - s.commit_grace_ms)
            .min(progress.closed_until_ms + s.length_ms + s.allowed_lateness_ms);
        if until <= progress.late_until_ms {
            transaction.rollback().await?;
            return Ok(0);
        }
        let late = read::late_rows(
            &transaction,
            (progress.late_until_ms, until),
            (progress.first_window_start_ms, progress.closed_until_ms),
            s.length_ms,
            s.allowed_lateness_ms,
        )
        .await?;
        let mut total = 0;
        for &(window_start_ms, count) in &late {
            total += count;
            if !store::add_late_events(&transaction, window_start_ms, count).await? {
                warn!(
                    window_start_ms,
                    count,
                    "late events of a window that has no row (was windows.length_ms changed?): \
                     counted in analytics_late_events_total only"
                );
            }
        }
        store::advance(&transaction, Mark::LateUntil, until).await?;
        transaction.commit().await?;
        if total > 0 {
            metrics::counter!("analytics_late_events_total").increment(total as u64);
            info!(
                late_events = total,
                windows = late.len(),
                "late events counted"
            );
        }
        Ok(total)
    }

    /// Recounts the window after the last recounted one if its time has come: what the
    /// bridge committed after the window closed (slower than `commit_grace_ms`) was not in
    /// its values, and late rows committed after the late scan passed them were not counted
    /// either; both become late events. Returns the window and the events committed late.
    async fn recount_next(&mut self, now_ms: i64) -> anyhow::Result<Option<(Window, i64)>> {
        let s = self.settings;
        let transaction = self.client.transaction().await?;
        let progress = store::lock(&transaction).await?;
        let window = Window::starting_from(progress.recounted_until_ms, s.length_ms);
        let deadline = window.lateness_deadline_ms(s.allowed_lateness_ms);
        let due = window.end_ms <= progress.closed_until_ms
            && deadline <= progress.late_until_ms
            && now_ms >= deadline + s.recount_after_ms;
        if !due {
            transaction.rollback().await?;
            return Ok(None);
        }
        let mut stragglers = 0;
        if let Some(fleet) = store::fleet_row(&transaction, window.start_ms).await? {
            let recount = read::recount(
                &transaction,
                window,
                s.allowed_lateness_ms,
                progress.late_until_ms,
            )
            .await?;
            stragglers = [
                recount.positions - fleet.positions,
                recount.tours_started - fleet.tours_started,
                recount.tours_ended - fleet.tours_ended,
                recount.orders_sent - fleet.orders_sent,
                recount.orders_accepted - fleet.orders_accepted,
            ]
            .iter()
            .map(|&more| more.max(0))
            .sum::<i64>();
            let late = stragglers + recount.late;
            if late != fleet.late_events {
                store::set_late_events(&transaction, window.start_ms, late).await?;
            }
            store::advance(&transaction, Mark::RecountedUntil, window.end_ms).await?;
            transaction.commit().await?;
            if late > fleet.late_events {
                metrics::counter!("analytics_late_events_total")
                    .increment((late - fleet.late_events) as u64);
            }
        } else {
            store::advance(&transaction, Mark::RecountedUntil, window.end_ms).await?;
            transaction.commit().await?;
        }
        if stragglers > 0 {
            metrics::counter!("analytics_straggler_events_total").increment(stragglers as u64);
            warn!(
                window_start_ms = window.start_ms,
                events = stragglers,
                "events committed by the bridge after their window closed: counted as late \
                 (raise windows.commit_grace_ms if this recurs)"
            );
        }
        Ok(Some((window, stragglers)))
    }

    /// Connects again if the connection is gone.
    async fn reconnect_if_closed(&mut self, postgres: &PostgresConfig) {
        if self.client.is_closed() {
            self.client = crate::db::connect(postgres).await;
        }
    }
}

/// Ticks for ever with the wall clock: at each window's due time, and every
/// `scan_interval` for late events and recounts. A failed step is retried with back-off
/// (`postgres.min_backoff_ms` to `max_backoff_ms`); nothing is skipped, the window waits.
/// `closed` is notified whenever windows were closed.
pub async fn run(
    mut closer: Closer,
    postgres: PostgresConfig,
    scan_interval: Duration,
    closed: Arc<Notify>,
) {
    let min_backoff = Duration::from_millis(postgres.min_backoff_ms);
    let max_backoff = Duration::from_millis(postgres.max_backoff_ms);
    let mut backoff = min_backoff;
    loop {
        match closer.tick(bridge::source::now_ms()).await {
            Ok(report) => {
                backoff = min_backoff;
                if !report.closed.is_empty() {
                    closed.notify_one();
                }
            }
            Err(e) => {
                warn!(
                    error = %format!("{e:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "windows: a PostgreSQL step failed; retrying (nothing is skipped)"
                );
                metrics::counter!("analytics_windows_errors_total", "stage" => "close")
                    .increment(1);
                // Whatever was committed before the failure may be published.
                closed.notify_one();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
                closer.reconnect_if_closed(&postgres).await;
                continue;
            }
        }
        let now = bridge::source::now_ms();
        let scan = scan_interval.as_millis() as i64;
        let wait = closer
            .next_close_at_ms()
            .map_or(scan, |due| due - now)
            .clamp(0, scan);
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}
