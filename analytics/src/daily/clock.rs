//! The clock the daily schedule reads and sleeps by. The service uses the wall clock; tests
//! hand the schedule a clock they move themselves, so that midnights (and daylight-saving
//! changes) come at once instead of after a day of sleeping.

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;

/// Now, and sleeping until a given instant.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    /// Returns once `now()` is at or past `at` (at once if it already is).
    fn sleep_until(&self, at: Timestamp) -> impl Future<Output = ()> + Send;
}

/// The system's clock. Sleeps in steps of at most a minute and reads the time again after
/// each, so that a clock set by NTP or a machine resumed from suspend still wakes at the
/// right wall-clock instant rather than a day's worth of monotonic time later.
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock;

/// The longest single sleep of [`WallClock`].
const STEP: Duration = Duration::from_secs(60);

impl Clock for WallClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    async fn sleep_until(&self, at: Timestamp) {
        loop {
            let left = at.duration_since(Timestamp::now());
            if left.is_zero() || left.is_negative() {
                return;
            }
            let left = Duration::try_from(left).unwrap_or(STEP);
            tokio::time::sleep(left.min(STEP)).await;
        }
    }
}
