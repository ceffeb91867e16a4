//! Calendar days of a time zone as instants: where a day starts and ends, which day an
//! instant belongs to, and which midnight comes next.
//!
//! A day is `[its first instant, the next day's first instant)`. On daylight-saving days that
//! is 23 or 25 hours, never a fixed 24: the first instant is local 00:00, or, in a zone that
//! skips midnight itself (clocks jumping from 23:59:59 to 01:00), the first instant after the
//! gap. jiff's time zone rules do the work; nothing here adds hours by hand.

use anyhow::Context;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// The first instant of `day` in `tz`.
pub fn day_start(day: Date, tz: &TimeZone) -> anyhow::Result<Timestamp> {
    // `to_zoned` resolves a local midnight inside a gap to the first instant after it.
    let zoned = day
        .to_zoned(tz.clone())
        .with_context(|| format!("{day} has no start in {}", tz_name(tz)))?;
    let start = zoned
        .start_of_day()
        .with_context(|| format!("{day} has no start in {}", tz_name(tz)))?;
    Ok(start.timestamp())
}

/// The first instant after `day`: the start of the next day.
pub fn day_end(day: Date, tz: &TimeZone) -> anyhow::Result<Timestamp> {
    let next = day
        .tomorrow()
        .with_context(|| format!("{day} is the last day jiff knows"))?;
    day_start(next, tz)
}

/// The calendar day in `tz` that `instant` belongs to.
pub fn day_of(instant: Timestamp, tz: &TimeZone) -> Date {
    instant.to_zoned(tz.clone()).date()
}

/// Every day from `from` to `to`, both included (empty when `to` is before `from`).
pub fn days(from: Date, to: Date) -> Vec<Date> {
    let mut out = Vec::new();
    let mut day = from;
    while day <= to {
        out.push(day);
        match day.tomorrow() {
            Ok(next) => day = next,
            Err(_) => break,
        }
    }
    out
}

/// Days since 1970-01-01: Arrow's `Date32`.
pub fn epoch_days(day: Date) -> i32 {
    let epoch = jiff::civil::date(1970, 1, 1);
    (day - epoch).get_days()
}

/// The day of an Arrow `Date32`.
pub fn from_epoch_days(days: i32) -> anyhow::Result<Date> {
    jiff::civil::date(1970, 1, 1)
        .checked_add(jiff::Span::new().days(days))
        .with_context(|| format!("{days} days after 1970-01-01 is not a date"))
}

fn tz_name(tz: &TimeZone) -> &str {
    tz.iana_name().unwrap_or("the configured time zone")
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn an_autumn_day_has_25_hours_and_a_spring_day_23() {
        let tz = berlin();
        let autumn = date(2026, 10, 25);
        assert_eq!(day_start(autumn, &tz).unwrap(), ts("2026-10-24T22:00:00Z"));
        assert_eq!(day_end(autumn, &tz).unwrap(), ts("2026-10-25T23:00:00Z"));
        let spring = date(2026, 3, 29);
        assert_eq!(day_start(spring, &tz).unwrap(), ts("2026-03-28T23:00:00Z"));
        assert_eq!(day_end(spring, &tz).unwrap(), ts("2026-03-29T22:00:00Z"));
        let plain = date(2026, 10, 24);
        let hours = |d| {
            (day_end(d, &tz).unwrap().as_second() - day_start(d, &tz).unwrap().as_second()) / 3600
        };
        assert_eq!((hours(plain), hours(autumn), hours(spring)), (24, 25, 23));
    }

    #[test]
    fn a_midnight_inside_a_gap_starts_the_day_after_the_gap() {
        // Havana moved its clocks from 00:00 to 01:00 on 2024-03-10.
        let tz = TimeZone::get("America/Havana").unwrap();
        let start = day_start(date(2024, 3, 10), &tz).unwrap();
        assert_eq!(start, ts("2024-03-10T05:00:00Z"));
        assert_eq!(day_of(start, &tz), date(2024, 3, 10));
        assert_eq!(
            day_of(start - jiff::SignedDuration::from_secs(1), &tz),
            date(2024, 3, 9)
        );
    }

    #[test]
    fn instants_near_midnight_and_in_the_repeated_hour_belong_to_their_local_day() {
        let tz = berlin();
        assert_eq!(day_of(ts("2026-10-24T21:59:59Z"), &tz), date(2026, 10, 24));
        assert_eq!(day_of(ts("2026-10-24T22:00:00Z"), &tz), date(2026, 10, 25));
        // 02:30 happens twice on 2026-10-25: 00:30Z (CEST) and 01:30Z (CET).
        assert_eq!(day_of(ts("2026-10-25T00:30:00Z"), &tz), date(2026, 10, 25));
        assert_eq!(day_of(ts("2026-10-25T01:30:00Z"), &tz), date(2026, 10, 25));
        assert_eq!(day_of(ts("2026-10-25T22:59:59Z"), &tz), date(2026, 10, 25));
        assert_eq!(day_of(ts("2026-10-25T23:00:00Z"), &tz), date(2026, 10, 26));
    }

    #[test]
    fn days_and_epoch_days_round_trip() {
        assert_eq!(
            days(date(2026, 2, 27), date(2026, 3, 2)),
            vec![
                date(2026, 2, 27),
                date(2026, 2, 28),
                date(2026, 3, 1),
                date(2026, 3, 2)
            ]
        );
        assert!(days(date(2026, 3, 2), date(2026, 3, 1)).is_empty());
        assert_eq!(epoch_days(date(1970, 1, 1)), 0);
        assert_eq!(epoch_days(date(2026, 10, 25)), 20_751);
        assert_eq!(from_epoch_days(20_751).unwrap(), date(2026, 10, 25));
    }
}
