//! What one day of one source adds up to: the day's totals and the same per zone. Built by
//! [`super::fleet`] and [`super::nyc`] from the lake, stored by [`super::store`], published
//! by [`super::publish`].

use jiff::civil::Date;

/// Whose data a daily row is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The platform's own taxis (days of the configured time zone).
    Fleet,
    /// The imported NYC TLC trip records (New York days).
    Nyc,
}

impl Source {
    /// The `source` column's value.
    pub fn name(self) -> &'static str {
        match self {
            Source::Fleet => "fleet",
            Source::Nyc => "nyc",
        }
    }

    pub fn all() -> [Source; 2] {
        [Source::Fleet, Source::Nyc]
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Orders (kind `order`) created on a day, by the state they are in now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderOutcomes {
    pub accepted: i64,
    pub rejected: i64,
    pub expired: i64,
    /// Still queued, sent or received.
    pub open: i64,
}

/// A day's totals. The optional ones are `None` where the source has no such data.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub trips: i64,
    pub revenue_cents: i64,
    pub distance_m: f64,
    pub active_taxis: Option<i64>,
    pub positions: Option<i64>,
    /// `None` when no trip of the day had a fare.
    pub avg_fare_cents: Option<f64>,
    pub flagged_invoices: Option<i64>,
    pub orders: Option<OrderOutcomes>,
}

/// One zone's share of a day.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneRow {
    pub zone: String,
    pub trips: i64,
    pub revenue_cents: i64,
    pub distance_m: f64,
    pub active_taxis: Option<i64>,
    pub positions: Option<i64>,
    pub avg_fare_cents: Option<f64>,
}

/// One day of one source, as computed from the lake.
#[derive(Clone, Debug, PartialEq)]
pub struct DaySummary {
    pub day: Date,
    pub source: Source,
    pub totals: Totals,
    /// Sorted by zone.
    pub zones: Vec<ZoneRow>,
}

/// A stored day: its totals and the trips of its source up to and including it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredDay {
    pub day: Date,
    pub source: Source,
    pub totals: Totals,
    pub cumulative_trips: i64,
}

/// The mean fare of `count` fares adding up to `sum`; `None` without fares.
pub(crate) fn mean(sum: i64, count: i64) -> Option<f64> {
    (count > 0).then(|| sum as f64 / count as f64)
}

impl StoredDay {
    /// One line for people: the day, its source and its totals.
    pub fn describe(&self) -> String {
        let t = &self.totals;
        let mut line = format!(
            "{} {:<5} {} trips, revenue {}, {:.1} km",
            self.day,
            self.source.name(),
            t.trips,
            money(t.revenue_cents),
            t.distance_m / 1000.0
        );
        if let Some(avg) = t.avg_fare_cents {
            line.push_str(&format!(", average fare {:.2}", avg / 100.0));
        }
        if let (Some(taxis), Some(positions)) = (t.active_taxis, t.positions) {
            line.push_str(&format!(", {taxis} active taxis, {positions} positions"));
        }
        if let Some(flagged) = t.flagged_invoices {
            line.push_str(&format!(", {flagged} flagged invoices"));
        }
        if let Some(o) = t.orders {
            line.push_str(&format!(
                ", orders {} accepted / {} rejected / {} expired / {} open",
                o.accepted, o.rejected, o.expired, o.open
            ));
        }
        line.push_str(&format!(
            "; {} trips since the first day",
            self.cumulative_trips
        ));
        line
    }
}

/// Cents as currency units with two decimals (`-12.05`).
fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_day_reads_as_one_line() {
        let day = StoredDay {
            day: jiff::civil::date(2026, 10, 25),
            source: Source::Fleet,
            totals: Totals {
                trips: 3,
                revenue_cents: 4_205,
                distance_m: 12_345.0,
                active_taxis: Some(2),
                positions: Some(9),
                avg_fare_cents: Some(1_401.666),
                flagged_invoices: Some(1),
                orders: Some(OrderOutcomes {
                    accepted: 1,
                    rejected: 2,
                    expired: 0,
                    open: 1,
                }),
            },
            cumulative_trips: 10,
        };
        assert_eq!(
            day.describe(),
            "2026-10-25 fleet 3 trips, revenue 42.05, 12.3 km, average fare 14.02, 2 active taxis, \
             9 positions, 1 flagged invoices, orders 1 accepted / 2 rejected / 0 expired / 1 open; \
             10 trips since the first day"
        );
        assert_eq!(money(-5), "-0.05");
        assert_eq!(mean(10, 0), None);
        assert_eq!(mean(10, 4), Some(2.5));
    }
}
