//! When days are aggregated: once at start, every day not aggregated yet up to yesterday
//! (catching up); then, at each local midnight of the configured zone, the day that just
//! ended; and, if configured, that day once more a little later for data that came late
//! (taxis that were offline send their positions when they reconnect).
//!
//! Each midnight is computed from the calendar ([`super::calendar`]), not by adding 24 hours,
//! so the 23- and 25-hour days of daylight-saving changes end when they really end. A day
//! that fails (PostgreSQL or the lake's store down) is tried again with back-off until it
//! works: it waits, it is never skipped, and the days after it follow in order.

use std::future::Future;
use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::SignedDuration;
use tracing::{info, warn};

use super::calendar;
use super::clock::Clock;

/// What the schedule runs.
pub trait DayJobs: Send {
    /// Aggregates every day up to `yesterday` that has no aggregate yet.
    fn catch_up(&mut self, yesterday: Date) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Aggregates `day` (again: it replaces what is there).
    fn aggregate(&mut self, day: Date) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The schedule's settings.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Whose midnights.
    pub tz: TimeZone,
    /// Run a day again this long after its midnight; `None`: once only.
    pub late_rerun: Option<SignedDuration>,
    /// First delay after a failure; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// Runs the schedule forever.
pub async fn run<C: Clock, J: DayJobs>(clock: &C, timing: &Timing, jobs: &mut J) {
    let today = calendar::day_of(clock.now(), &timing.tz);
    let yesterday = today.yesterday().unwrap_or(today);
    let mut backoff = Backoff::new(timing);
    while let Err(e) = jobs.catch_up(yesterday).await {
        warn!(
            error = format!("{e:#}"),
            retry_in_ms = backoff.next_ms(),
            "daily: catching up failed; trying again"
        );
        backoff.wait(clock).await;
    }
    // The day in progress; it is aggregated once it has ended.
    let mut day = today;
    loop {
        let end = match calendar::day_end(day, &timing.tz) {
            Ok(end) => end,
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    "daily: no midnight after {day}; the schedule stops"
                );
                return;
            }
        };
        info!(day = %day, at = %end.to_zoned(timing.tz.clone()), "daily: next aggregation");
        clock.sleep_until(end).await;
        aggregate_until_done(clock, timing, jobs, day).await;
        if let Some(delay) = timing.late_rerun {
            if let Ok(again) = end.checked_add(delay) {
                clock.sleep_until(again).await;
                aggregate_until_done(clock, timing, jobs, day).await;
            }
        }
        match day.tomorrow() {
            Ok(next) => day = next,
            Err(_) => return,
        }
    }
}

async fn aggregate_until_done<C: Clock, J: DayJobs>(
    clock: &C,
    timing: &Timing,
    jobs: &mut J,
    day: Date,
) {
    let mut backoff = Backoff::new(timing);
    while let Err(e) = jobs.aggregate(day).await {
        warn!(day = %day, error = format!("{e:#}"), retry_in_ms = backoff.next_ms(), "daily: aggregating a day failed; trying again");
        backoff.wait(clock).await;
    }
}

/// Doubling delays between tries, slept on the schedule's clock.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(timing: &Timing) -> Backoff {
        Backoff {
            next: timing.min_backoff,
            max: timing.max_backoff,
        }
    }

    fn next_ms(&self) -> u64 {
        u64::try_from(self.next.as_millis()).unwrap_or(u64::MAX)
    }

    async fn wait<C: Clock>(&mut self, clock: &C) {
        let delay = SignedDuration::try_from(self.next).unwrap_or(SignedDuration::MAX);
        let at = clock.now().saturating_add(delay).unwrap_or(clock.now());
        clock.sleep_until(at).await;
        self.next = (self.next * 2).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use jiff::civil::date;
    use jiff::Timestamp;

    use super::*;

    /// A clock that jumps to whatever instant it is asked to sleep until. Asked to sleep past
    /// `horizon`, it says so on `parked` and never wakes: the test has seen what it wants.
    struct JumpingClock {
        now: Mutex<Timestamp>,
        horizon: Timestamp,
        parked: tokio::sync::Notify,
    }

    impl Clock for JumpingClock {
        fn now(&self) -> Timestamp {
            *self.now.lock().unwrap()
        }

        async fn sleep_until(&self, at: Timestamp) {
            if at > self.horizon {
                self.parked.notify_one();
                std::future::pending::<()>().await;
            }
            let mut now = self.now.lock().unwrap();
            if at > *now {
                *now = at;
            }
        }
    }

    /// Records when (on the clock) each job ran; fails the days in `failing` that many times.
    struct Recorder {
        clock: Arc<JumpingClock>,
        tz: TimeZone,
        runs: Vec<(String, String)>,
        failing: Vec<(Date, u32)>,
    }

    impl Recorder {
        fn record(&mut self, what: String) {
            let at = self.clock.now().to_zoned(self.tz.clone());
            self.runs
                .push((what, at.strftime("%Y-%m-%d %H:%M:%S %:z").to_string()));
        }
    }

    impl DayJobs for Recorder {
        async fn catch_up(&mut self, yesterday: Date) -> anyhow::Result<()> {
            self.record(format!("catch up to {yesterday}"));
            Ok(())
        }

        async fn aggregate(&mut self, day: Date) -> anyhow::Result<()> {
            self.record(format!("{day}"));
            if let Some((_, left)) = self
                .failing
                .iter_mut()
                .find(|(d, left)| *d == day && *left > 0)
            {
                *left -= 1;
                anyhow::bail!("PostgreSQL is down");
            }
            Ok(())
        }
    }

    fn timing(tz: &TimeZone, late_rerun_s: Option<i64>) -> Timing {
        Timing {
            tz: tz.clone(),
            late_rerun: late_rerun_s.map(SignedDuration::from_secs),
            min_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Runs the schedule from local `start` until the clock would pass local `until`.
    async fn runs(
        zone: &str,
        start: &str,
        until: &str,
        late_rerun_s: Option<i64>,
        failing: Vec<(Date, u32)>,
    ) -> Vec<(String, String)> {
        let tz = TimeZone::get(zone).unwrap();
        let local = |text: &str| {
            text.parse::<jiff::civil::DateTime>()
                .unwrap()
                .to_zoned(tz.clone())
                .unwrap()
                .timestamp()
        };
        let clock = Arc::new(JumpingClock {
            now: Mutex::new(local(start)),
            horizon: local(until),
            parked: tokio::sync::Notify::new(),
        });
        let mut recorder = Recorder {
            clock: clock.clone(),
            tz: tz.clone(),
            runs: Vec::new(),
            failing,
        };
        let timing = timing(&tz, late_rerun_s);
        // The schedule never ends; it parks on the clock past the horizon.
        let parked = async {
            tokio::select! {
                () = run(clock.as_ref(), &timing, &mut recorder) => panic!("the schedule ended"),
                () = clock.parked.notified() => {}
            }
        };
        tokio::time::timeout(Duration::from_secs(10), parked)
            .await
            .expect("the schedule never reached the horizon");
        recorder.runs
    }

    fn expected(rows: &[(&str, &str)]) -> Vec<(String, String)> {
        rows.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn autumn_change_the_25_hour_day_ends_at_the_next_local_midnight() {
        let runs = runs(
            "Europe/Berlin",
            "2026-10-23T15:00",
            "2026-10-27T12:00",
            None,
            vec![],
        )
        .await;
        assert_eq!(
            runs,
            expected(&[
                ("catch up to 2026-10-22", "2026-10-23 15:00:00 +02:00"),
                ("2026-10-23", "2026-10-24 00:00:00 +02:00"),
                ("2026-10-24", "2026-10-25 00:00:00 +02:00"),
                // 25 hours after the previous run.
                ("2026-10-25", "2026-10-26 00:00:00 +01:00"),
                ("2026-10-26", "2026-10-27 00:00:00 +01:00"),
            ])
        );
    }

    #[tokio::test]
    async fn spring_change_the_23_hour_day_and_late_reruns() {
        let runs = runs(
            "Europe/Berlin",
            "2026-03-28T00:00",
            "2026-03-30T12:00",
            Some(3 * 3600),
            vec![],
        )
        .await;
        assert_eq!(
            runs,
            expected(&[
                ("catch up to 2026-03-27", "2026-03-28 00:00:00 +01:00"),
                ("2026-03-28", "2026-03-29 00:00:00 +01:00"),
                // Three hours after midnight, across the skipped hour: 04:00 local.
                ("2026-03-28", "2026-03-29 04:00:00 +02:00"),
                ("2026-03-29", "2026-03-30 00:00:00 +02:00"),
                ("2026-03-29", "2026-03-30 03:00:00 +02:00"),
            ])
        );
    }

    #[tokio::test]
    async fn a_failing_day_is_retried_with_back_off_and_never_skipped() {
        let runs = runs(
            "Europe/Berlin",
            "2026-10-24T23:00",
            "2026-10-26T12:00",
            None,
            vec![(date(2026, 10, 24), 3)],
        )
        .await;
        assert_eq!(
            runs,
            expected(&[
                ("catch up to 2026-10-23", "2026-10-24 23:00:00 +02:00"),
                ("2026-10-24", "2026-10-25 00:00:00 +02:00"),
                ("2026-10-24", "2026-10-25 00:00:10 +02:00"),
                ("2026-10-24", "2026-10-25 00:00:30 +02:00"),
                // The back-off doubles up to its maximum, 30 s.
                ("2026-10-24", "2026-10-25 00:01:00 +02:00"),
                ("2026-10-25", "2026-10-26 00:00:00 +01:00"),
            ])
        );
    }

    #[tokio::test]
    async fn a_zone_whose_midnight_does_not_exist_runs_at_the_first_instant_after_it() {
        // Havana: 2024-03-10 00:00 does not exist (clocks go from 23:59:59 to 01:00).
        let runs = runs(
            "America/Havana",
            "2024-03-09T12:00",
            "2024-03-10T12:00",
            None,
            vec![],
        )
        .await;
        assert_eq!(
            runs,
            expected(&[
                ("catch up to 2024-03-08", "2024-03-09 12:00:00 -05:00"),
                ("2024-03-09", "2024-03-10 01:00:00 -04:00"),
            ])
        );
    }
}
