//! New York wall-clock times to UTC instants.
//!
//! TLC files write pickup and dropoff times as New York local time with no zone or offset.
//! Each is converted to a UTC instant with the America/New_York rules of jiff's bundled time
//! zone database; the lake's `dt` of a trip is the New York calendar day of its pickup.
//!
//! Twice a year the wall clock is not a function of time, and the rule is fixed:
//! - The spring gap (02:00-02:59 does not exist): a time in it is read with the offset in
//!   force before the change (EST), so 02:30 is 07:30Z, which is 03:30 EDT. This is the
//!   "compatible" reading of RFC 5545, jiff and java.time.
//! - The autumn fold (01:00-01:59 happens twice): a pickup is the first occurrence (EDT). A
//!   dropoff is the first occurrence too, unless that puts it before its pickup, in which
//!   case it is the second (EST): a trip from 01:50 to 01:10 crossed the change.
//!
//! The offset depends only on the local hour (New York changes on the hour), so it is looked
//! up once per hour seen and cached: a month of trips costs about 750 look-ups.

use std::collections::HashMap;

use anyhow::Context;
use jiff::tz::{AmbiguousOffset, TimeZone};

use super::fields::civil_from_days;

const MICROS: i64 = 1_000_000;

/// A converted time: the UTC instant and the New York day it falls on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Instant {
    /// Microseconds since the Unix epoch, UTC.
    pub utc_micros: i64,
    /// New York calendar day, as days since 1970-01-01.
    pub day: i32,
}

/// The offsets (seconds east of UTC) of one local hour: the first and the second reading
/// (equal outside the fold).
#[derive(Clone, Copy)]
struct HourOffsets {
    first: i32,
    second: i32,
}

/// Converts New York wall-clock times, caching the offset of each local hour.
pub(crate) struct NewYorkClock {
    tz: TimeZone,
    hours: HashMap<i64, Option<HourOffsets>>,
    last: Option<(i64, HourOffsets)>,
}

impl NewYorkClock {
    pub(crate) fn new() -> anyhow::Result<NewYorkClock> {
        let tz = TimeZone::get("America/New_York")
            .context("the America/New_York time zone is missing from the time zone database")?;
        Ok(NewYorkClock {
            tz,
            hours: HashMap::new(),
            last: None,
        })
    }

    /// A pickup: the first reading of the wall-clock time `local_micros`. `None` when the
    /// time is outside the years 0001-9998.
    pub(crate) fn pickup(&mut self, local_micros: i64) -> Option<Instant> {
        let offsets = self.offsets(local_micros)?;
        Some(instant(local_micros, offsets.first))
    }

    /// A dropoff: the first reading, or the second if the first is before `pickup`.
    pub(crate) fn dropoff(&mut self, local_micros: i64, pickup: Instant) -> Option<Instant> {
        let offsets = self.offsets(local_micros)?;
        let first = instant(local_micros, offsets.first);
        if first.utc_micros < pickup.utc_micros && offsets.second != offsets.first {
            return Some(instant(local_micros, offsets.second));
        }
        Some(first)
    }

    /// An instant already in UTC (a Parquet timestamp with a zone): its New York day.
    pub(crate) fn at_utc(&self, utc_micros: i64) -> Option<Instant> {
        let timestamp = jiff::Timestamp::from_microsecond(utc_micros).ok()?;
        let offset = self.tz.to_offset(timestamp).seconds();
        let local = utc_micros + i64::from(offset) * MICROS;
        Some(Instant {
            utc_micros,
            day: i32::try_from(local.div_euclid(86_400 * MICROS)).ok()?,
        })
    }

    fn offsets(&mut self, local_micros: i64) -> Option<HourOffsets> {
        let hour = local_micros.div_euclid(3_600 * MICROS);
        if let Some((last_hour, offsets)) = self.last {
            if last_hour == hour {
                return Some(offsets);
            }
        }
        let cached = match self.hours.get(&hour) {
            Some(cached) => *cached,
            None => {
                // Bounded: a file touching more hours than this is not a month of trips.
                if self.hours.len() > 100_000 {
                    self.hours.clear();
                }
                let start = self.resolve(hour * 3_600)?;
                let end = self.resolve(hour * 3_600 + 3_599)?;
                let same = start.first == end.first && start.second == end.second;
                let cached = same.then_some(start);
                self.hours.insert(hour, cached);
                cached
            }
        };
        match cached {
            Some(offsets) => {
                self.last = Some((hour, offsets));
                Some(offsets)
            }
            // A zone changing in the middle of an hour: resolve this very second.
            None => self.resolve(local_micros.div_euclid(MICROS)),
        }
    }

    /// The offsets of the local wall-clock second `local_seconds`.
    fn resolve(&self, local_seconds: i64) -> Option<HourOffsets> {
        let (year, month, day) = civil_from_days(local_seconds.div_euclid(86_400));
        let second_of_day = local_seconds.rem_euclid(86_400);
        let datetime = jiff::civil::DateTime::new(
            i16::try_from(year).ok()?,
            i8::try_from(month).ok()?,
            i8::try_from(day).ok()?,
            i8::try_from(second_of_day / 3_600).ok()?,
            i8::try_from(second_of_day % 3_600 / 60).ok()?,
            i8::try_from(second_of_day % 60).ok()?,
            0,
        )
        .ok()?;
        // Keep away from the ends of jiff's range, where an offset would leave it.
        if !(1..=9998).contains(&year) {
            return None;
        }
        Some(match self.tz.to_ambiguous_timestamp(datetime).offset() {
            AmbiguousOffset::Unambiguous { offset } => HourOffsets {
                first: offset.seconds(),
                second: offset.seconds(),
            },
            AmbiguousOffset::Gap { before, .. } => HourOffsets {
                first: before.seconds(),
                second: before.seconds(),
            },
            AmbiguousOffset::Fold { before, after } => HourOffsets {
                first: before.seconds(),
                second: after.seconds(),
            },
        })
    }
}

fn instant(local_micros: i64, offset_seconds: i32) -> Instant {
    Instant {
        utc_micros: local_micros - i64::from(offset_seconds) * MICROS,
        // Years 1-9998 only (checked when resolving): the day fits an i32.
        day: local_micros.div_euclid(86_400 * MICROS) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::fields::local_seconds;

    fn local(text: &str) -> i64 {
        local_seconds(text.as_bytes()).unwrap() * MICROS
    }

    fn utc(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>().unwrap().as_microsecond()
    }

    #[test]
    fn winter_and_summer_offsets() {
        let mut clock = NewYorkClock::new().unwrap();
        let winter = clock.pickup(local("2015-01-15 19:05:39")).unwrap();
        assert_eq!(winter.utc_micros, utc("2015-01-16T00:05:39Z"));
        assert_eq!(winter.day, 16_450, "the New York day, not the UTC one");
        let summer = clock.pickup(local("2015-07-01 12:00:00")).unwrap();
        assert_eq!(summer.utc_micros, utc("2015-07-01T16:00:00Z"));
    }

    #[test]
    fn the_spring_gap_is_read_before_the_change() {
        let mut clock = NewYorkClock::new().unwrap();
        let gap = clock.pickup(local("2015-03-08 02:30:00")).unwrap();
        assert_eq!(gap.utc_micros, utc("2015-03-08T07:30:00Z"));
        let after = clock.pickup(local("2015-03-08 03:30:00")).unwrap();
        assert_eq!(after.utc_micros, gap.utc_micros, "02:30 reads as 03:30 EDT");
    }

    #[test]
    fn the_autumn_fold_is_the_first_hour_unless_the_dropoff_would_precede_the_pickup() {
        let mut clock = NewYorkClock::new().unwrap();
        let pickup = clock.pickup(local("2015-11-01 01:50:00")).unwrap();
        assert_eq!(pickup.utc_micros, utc("2015-11-01T05:50:00Z"));
        let later = clock.dropoff(local("2015-11-01 01:55:00"), pickup).unwrap();
        assert_eq!(later.utc_micros, utc("2015-11-01T05:55:00Z"));
        let crossed = clock.dropoff(local("2015-11-01 01:10:00"), pickup).unwrap();
        assert_eq!(crossed.utc_micros, utc("2015-11-01T06:10:00Z"));
        // Outside the fold a dropoff before its pickup stays so (and is rejected later).
        let noon = clock.pickup(local("2015-11-02 12:00:00")).unwrap();
        let before = clock.dropoff(local("2015-11-02 11:00:00"), noon).unwrap();
        assert!(before.utc_micros < noon.utc_micros);
    }

    #[test]
    fn utc_instants_get_their_new_york_day() {
        let clock = NewYorkClock::new().unwrap();
        let instant = clock.at_utc(utc("2024-01-02T03:00:00Z")).unwrap();
        assert_eq!(instant.day, 19_723, "2024-01-01 in New York");
    }
}
