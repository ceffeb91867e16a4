//! One trip as read from either layout, the rules a trip must meet to enter the lake, and
//! the reasons a row is rejected.
//!
//! A row that breaks a rule is not dropped: it is counted under its reason and stored with
//! the reason and its text in `nyc_import_rejects` (see [`super::ledger`]). The first rule
//! broken is the reason; the order is the order of [`Reason`].

use super::nyc_time::Instant;

/// Why a row did not enter the lake. Codes are stable: they are stored and are metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The row has fewer fields than the header.
    UnknownRowLayout,
    /// A field the lake needs is missing or is not a value of its type (the detail names
    /// the column).
    Unparseable,
    /// The dropoff is before the pickup.
    DropoffBeforePickup,
    /// `trip_distance` is negative.
    NegativeDistance,
    /// `fare_amount` is negative.
    NegativeFare,
    /// A pickup or dropoff point is outside [`NYC_BOX`] (0,0 included).
    CoordinatesOutOfRange,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::UnknownRowLayout,
        Reason::Unparseable,
        Reason::DropoffBeforePickup,
        Reason::NegativeDistance,
        Reason::NegativeFare,
        Reason::CoordinatesOutOfRange,
    ];

    /// The stored code (`reason` column, metric label).
    pub fn code(self) -> &'static str {
        match self {
            Reason::UnknownRowLayout => "unknown_row_layout",
            Reason::Unparseable => "unparseable",
            Reason::DropoffBeforePickup => "dropoff_before_pickup",
            Reason::NegativeDistance => "negative_distance",
            Reason::NegativeFare => "negative_fare",
            Reason::CoordinatesOutOfRange => "coordinates_out_of_range",
        }
    }

    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Where TLC trips can be: the extent of the TLC's taxi zones (the five boroughs and Newark
/// airport, longitude -74.26 to -73.70, latitude 40.49 to 40.92) with a margin of about
/// 4 km. A point outside it, 0,0 included (the TLC's "no GPS fix"), is out of range.
pub const NYC_BOX: Rect = Rect {
    min_lon: -74.30,
    max_lon: -73.65,
    min_lat: 40.45,
    max_lat: 40.95,
};

/// A longitude/latitude rectangle, bounds included.
#[derive(Clone, Copy, Debug)]
pub struct Rect {
    pub min_lon: f64,
    pub max_lon: f64,
    pub min_lat: f64,
    pub max_lat: f64,
}

impl Rect {
    pub fn contains(&self, point: Point) -> bool {
        (self.min_lon..=self.max_lon).contains(&point.lon)
            && (self.min_lat..=self.max_lat).contains(&point.lat)
    }
}

/// A WGS84 point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub lon: f64,
    pub lat: f64,
}

/// A rejected row's reason and what exactly was wrong (naming the column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub reason: Reason,
    pub detail: String,
}

impl Problem {
    pub(crate) fn new(reason: Reason, detail: impl Into<String>) -> Problem {
        Problem {
            reason,
            detail: detail.into(),
        }
    }

    /// A field that is missing or not a value of its type.
    pub(crate) fn unparseable(column: &str, text: &[u8], what: &str) -> Problem {
        let detail = if text.is_empty() {
            format!("{column}: missing")
        } else {
            format!(
                "{column}: {:?} is not {what}",
                String::from_utf8_lossy(&text[..text.len().min(100)])
            )
        };
        Problem::new(Reason::Unparseable, detail)
    }
}

/// One trip, in the units of the source (miles, cents already), before its checks.
#[derive(Clone, Debug)]
pub(crate) struct Trip {
    /// CSV: the line the row starts on (the header is line 1). Parquet: the row's number,
    /// from 1.
    pub line: i64,
    pub vendor_id: Option<i32>,
    pub pickup: Instant,
    pub dropoff: Instant,
    pub passenger_count: Option<i32>,
    pub distance_miles: f64,
    /// The 2015 layout's points.
    pub pickup_point: Option<Point>,
    pub dropoff_point: Option<Point>,
    /// The zone-id layout's TLC LocationIDs.
    pub pickup_location_id: Option<i32>,
    pub dropoff_location_id: Option<i32>,
    pub payment_type: Option<i32>,
    pub fare_cents: i64,
    pub tip_cents: i64,
    pub tolls_cents: i64,
    pub total_cents: i64,
}

impl Trip {
    /// The rules, in the order of [`Reason`].
    pub(crate) fn check(&self) -> Result<(), Problem> {
        if self.dropoff.utc_micros < self.pickup.utc_micros {
            return Err(Problem::new(
                Reason::DropoffBeforePickup,
                format!(
                    "dropoff {} is {} s before pickup {}",
                    show(self.dropoff),
                    (self.pickup.utc_micros - self.dropoff.utc_micros) / 1_000_000,
                    show(self.pickup)
                ),
            ));
        }
        if self.distance_miles < 0.0 {
            return Err(Problem::new(
                Reason::NegativeDistance,
                format!("trip_distance {} is negative", self.distance_miles),
            ));
        }
        if self.fare_cents < 0 {
            return Err(Problem::new(
                Reason::NegativeFare,
                format!(
                    "fare_amount {:.2} is negative",
                    self.fare_cents as f64 / 100.0
                ),
            ));
        }
        for (which, point) in [
            ("pickup", self.pickup_point),
            ("dropoff", self.dropoff_point),
        ] {
            if let Some(point) = point {
                if !NYC_BOX.contains(point) {
                    return Err(Problem::new(
                        Reason::CoordinatesOutOfRange,
                        format!(
                            "{which} {},{} (lon,lat) is outside New York ({} to {}, {} to {})",
                            point.lon,
                            point.lat,
                            NYC_BOX.min_lon,
                            NYC_BOX.max_lon,
                            NYC_BOX.min_lat,
                            NYC_BOX.max_lat
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn show(instant: Instant) -> String {
    jiff::Timestamp::from_microsecond(instant.utc_micros)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| instant.utc_micros.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trip() -> Trip {
        let at = |utc_micros| Instant { utc_micros, day: 0 };
        Trip {
            line: 2,
            vendor_id: Some(1),
            pickup: at(0),
            dropoff: at(600_000_000),
            passenger_count: Some(1),
            distance_miles: 1.0,
            pickup_point: Some(Point {
                lon: -73.99,
                lat: 40.75,
            }),
            dropoff_point: Some(Point {
                lon: -73.95,
                lat: 40.78,
            }),
            pickup_location_id: None,
            dropoff_location_id: None,
            payment_type: Some(1),
            fare_cents: 800,
            tip_cents: 0,
            tolls_cents: 0,
            total_cents: 880,
        }
    }

    #[test]
    fn each_rule_has_its_reason() {
        assert_eq!(trip().check(), Ok(()));
        let reason = |change: fn(&mut Trip)| {
            let mut t = trip();
            change(&mut t);
            t.check().unwrap_err().reason
        };
        assert_eq!(
            reason(|t| t.dropoff.utc_micros = -1),
            Reason::DropoffBeforePickup
        );
        assert_eq!(
            reason(|t| t.distance_miles = -0.1),
            Reason::NegativeDistance
        );
        assert_eq!(reason(|t| t.fare_cents = -1), Reason::NegativeFare);
        assert_eq!(
            reason(|t| t.pickup_point = Some(Point { lon: 0.0, lat: 0.0 })),
            Reason::CoordinatesOutOfRange
        );
        assert_eq!(
            reason(|t| t.dropoff_point = Some(Point {
                lon: -73.9,
                lat: 41.5
            })),
            Reason::CoordinatesOutOfRange
        );
    }

    #[test]
    fn codes_round_trip() {
        for reason in Reason::ALL {
            assert_eq!(Reason::from_code(reason.code()), Some(reason));
            assert_eq!(Reason::ALL[reason.index()], reason);
        }
    }
}
