//! The tariff and the fare of a tour: pure arithmetic over a track of timed fixes.
//!
//! A tour's fare is the base fare, plus per kilometre and per minute of driving for the
//! stretches driven, plus per minute of waiting for the stretches below
//! [`Tariff::waiting_below_kmh`] (their distance is not charged: it is GPS jitter or a
//! crawl in a jam), plus a night surcharge (a percentage of whatever was charged for
//! stretches that began in night hours, and of the base fare if the tour began at night),
//! plus the surcharge of each zone the tour began or ended in. Each part is rounded to whole
//! cents; the fare is their sum.
//!
//! The simulator uses [`Tariff::fare`] to show a plausible meter reading.

use serde::{Deserialize, Serialize};

/// Mean earth radius used for distances, metres.
pub const EARTH_RADIUS_M: f64 = 6_371_000.0;

/// Metres per degree of latitude (or of longitude on the equator) on that sphere.
pub const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

/// Prices of a tour. Money in cents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tariff {
    /// ISO 4217 code shown on invoices.
    pub currency: String,
    /// Charged once per tour.
    pub base_cents: u64,
    pub per_km_cents: u64,
    pub per_minute_driving_cents: u64,
    pub per_minute_waiting_cents: u64,
    /// A stretch between two fixes slower than this (km/h) is waiting, not driving.
    pub waiting_below_kmh: f64,
    pub night: NightSurcharge,
    /// Surcharges for tours beginning or ending in an area (an airport, a fair).
    pub zones: Vec<ZoneSurcharge>,
}

/// A percentage added for night hours, local time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NightSurcharge {
    /// 0 disables it.
    pub percent: f64,
    /// Night begins at this hour (0..=23) and lasts until `until_hour` (may wrap midnight,
    /// e.g. 22 to 6). Equal hours: no night.
    pub from_hour: u8,
    pub until_hour: u8,
    /// Local time is UTC plus this many minutes (e.g. 60 for CET).
    pub utc_offset_minutes: i32,
}

/// A fixed amount for tours that begin or end inside a bounding box.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSurcharge {
    /// Shown on the invoice.
    pub name: String,
    pub min_lat: f64,
    pub min_lon: f64,
    pub max_lat: f64,
    pub max_lon: f64,
    pub surcharge_cents: u64,
}

impl ZoneSurcharge {
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        (self.min_lat..=self.max_lat).contains(&lat) && (self.min_lon..=self.max_lon).contains(&lon)
    }
}

/// One fix of a tour: device time, position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackPoint {
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
}

/// What a tour costs, and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fare {
    /// Distance of the stretches driven (waiting stretches not included), metres.
    pub distance_m: f64,
    pub driving_s: f64,
    pub waiting_s: f64,
    pub base_cents: u64,
    pub distance_cents: u64,
    pub driving_cents: u64,
    pub waiting_cents: u64,
    pub night_cents: u64,
    pub zone_cents: u64,
    /// Names of the zones charged.
    pub zones: Vec<String>,
    /// The sum of the parts above.
    pub total_cents: u64,
}

/// Great-circle distance between two positions (haversine), metres.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

impl Tariff {
    /// The fare of a tour driven along `track` (start fix first, end fix last, in time
    /// order). Stretches going back in time are ignored; an empty track costs the base fare
    /// (and the night surcharge on it, if any).
    pub fn fare(&self, track: &[TrackPoint]) -> Fare {
        let mut fare = Fare {
            base_cents: self.base_cents,
            ..Fare::default()
        };
        let per_m = self.per_km_cents as f64 / 1000.0;
        let per_s_driving = self.per_minute_driving_cents as f64 / 60.0;
        let per_s_waiting = self.per_minute_waiting_cents as f64 / 60.0;
        // Charges (fractional cents) of the stretches begun at night, and the base if the
        // tour began at night.
        let mut night_base = match track.first() {
            Some(start) if self.night.is_night(start.ts_ms) => self.base_cents as f64,
            _ => 0.0,
        };
        for pair in track.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            let seconds = (to.ts_ms - from.ts_ms) as f64 / 1000.0;
            if seconds < 0.0 {
                continue;
            }
            let metres = haversine_m(from.lat, from.lon, to.lat, to.lon);
            let waiting = metres < self.waiting_below_kmh / 3.6 * seconds;
            let charged = if waiting {
                fare.waiting_s += seconds;
                seconds * per_s_waiting
            } else {
                fare.distance_m += metres;
                fare.driving_s += seconds;
                metres * per_m + seconds * per_s_driving
            };
            if self.night.is_night(from.ts_ms) {
                night_base += charged;
            }
        }
        fare.distance_cents = cents(fare.distance_m * per_m);
        fare.driving_cents = cents(fare.driving_s * per_s_driving);
        fare.waiting_cents = cents(fare.waiting_s * per_s_waiting);
        fare.night_cents = cents(night_base * self.night.percent / 100.0);
        let ends = [track.first(), track.last()];
        for zone in &self.zones {
            let touched = ends
                .iter()
                .flatten()
                .any(|point| zone.contains(point.lat, point.lon));
            if touched {
                fare.zone_cents += zone.surcharge_cents;
                fare.zones.push(zone.name.clone());
            }
        }
        fare.total_cents = fare.base_cents
            + fare.distance_cents
            + fare.driving_cents
            + fare.waiting_cents
            + fare.night_cents
            + fare.zone_cents;
        fare
    }

    /// Why the tariff cannot be used, naming the key below `[tours.tariff]`.
    pub fn problem(&self) -> Option<(String, &'static str)> {
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Some((
                "currency".into(),
                "must be a 3-letter ISO 4217 code, e.g. EUR",
            ));
        }
        if !(self.waiting_below_kmh.is_finite() && self.waiting_below_kmh >= 0.0) {
            return Some(("waiting_below_kmh".into(), "must be a finite number >= 0"));
        }
        let night = &self.night;
        if !(night.percent.is_finite() && (0.0..=1000.0).contains(&night.percent)) {
            return Some(("night.percent".into(), "must be a number from 0 to 1000"));
        }
        if night.from_hour > 23 {
            return Some(("night.from_hour".into(), "must be an hour from 0 to 23"));
        }
        if night.until_hour > 23 {
            return Some(("night.until_hour".into(), "must be an hour from 0 to 23"));
        }
        if !(-18 * 60..=18 * 60).contains(&night.utc_offset_minutes) {
            return Some((
                "night.utc_offset_minutes".into(),
                "must be from -1080 to 1080 (±18 h)",
            ));
        }
        for (n, zone) in self.zones.iter().enumerate() {
            let key = |field: &str| format!("zones[{n}].{field}");
            if zone.name.trim().is_empty() {
                return Some((key("name"), "must not be empty"));
            }
            let lat_ok = |v: f64| (-90.0..=90.0).contains(&v);
            let lon_ok = |v: f64| (-180.0..=180.0).contains(&v);
            if !(lat_ok(zone.min_lat) && lat_ok(zone.max_lat) && zone.min_lat <= zone.max_lat) {
                return Some((
                    key("min_lat"),
                    "min_lat and max_lat must be latitudes (-90 to 90), min_lat <= max_lat",
                ));
            }
            if !(lon_ok(zone.min_lon) && lon_ok(zone.max_lon) && zone.min_lon <= zone.max_lon) {
                return Some((
                    key("min_lon"),
                    "min_lon and max_lon must be longitudes (-180 to 180), min_lon <= max_lon",
                ));
            }
        }
        None
    }
}

impl NightSurcharge {
    /// Whether the instant `ts_ms` (unix ms) falls in night hours, local time.
    pub fn is_night(&self, ts_ms: i64) -> bool {
        if self.percent == 0.0 || self.from_hour == self.until_hour {
            return false;
        }
        let local_ms = ts_ms + i64::from(self.utc_offset_minutes) * 60_000;
        let hour = local_ms.div_euclid(3_600_000).rem_euclid(24) as u8;
        if self.from_hour < self.until_hour {
            (self.from_hour..self.until_hour).contains(&hour)
        } else {
            hour >= self.from_hour || hour < self.until_hour
        }
    }
}

/// Fractional cents to whole cents, half away from zero; never negative.
fn cents(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value.round() as u64
    } else {
        0
    }
}

impl Default for Tariff {
    /// A city tariff: 3.90 base, 2.00 per km, 0.50 per minute waiting (under 10 km/h), 20 %
    /// at night from 22:00 to 06:00 CET, no zones.
    fn default() -> Tariff {
        Tariff {
            currency: "EUR".to_owned(),
            base_cents: 390,
            per_km_cents: 200,
            per_minute_driving_cents: 0,
            per_minute_waiting_cents: 50,
            waiting_below_kmh: 10.0,
            night: NightSurcharge {
                percent: 20.0,
                from_hour: 22,
                until_hour: 6,
                utc_offset_minutes: 60,
            },
            zones: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-20T12:00:00Z, a Friday noon.
    const NOON_UTC: i64 = 1_763_640_000_000;

    fn tariff() -> Tariff {
        Tariff {
            currency: "EUR".into(),
            base_cents: 400,
            per_km_cents: 200,
            per_minute_driving_cents: 10,
            per_minute_waiting_cents: 60,
            waiting_below_kmh: 5.0,
            night: NightSurcharge {
                percent: 0.0,
                from_hour: 22,
                until_hour: 6,
                utc_offset_minutes: 60,
            },
            zones: Vec::new(),
        }
    }

    /// North along the meridian 13.4 E from 52.5 N: `km` kilometres after `s` seconds.
    fn at(s: i64, km: f64) -> TrackPoint {
        TrackPoint {
            ts_ms: NOON_UTC + s * 1000,
            lat: 52.5 + km * 1000.0 / M_PER_DEG,
            lon: 13.4,
        }
    }

    /// 3 km in 6 minutes (30 km/h), 4 minutes standing, 2 km in 3 minutes.
    fn route() -> Vec<TrackPoint> {
        vec![
            at(0, 0.0),
            at(120, 1.0),
            at(360, 3.0),
            at(480, 3.0),
            at(600, 3.001), // 1 m in 2 min: waiting (jitter)
            at(780, 5.001),
        ]
    }

    #[test]
    fn haversine_of_known_distances() {
        // One degree of latitude, and Berlin TV tower to Brandenburg Gate (about 2.2 km).
        assert!((haversine_m(52.0, 13.0, 53.0, 13.0) - M_PER_DEG).abs() < 1e-6);
        let d = haversine_m(52.520_817, 13.409_419, 52.516_275, 13.377_704);
        assert!((2_190.0..2_220.0).contains(&d), "{d}");
    }

    #[test]
    fn fare_of_a_known_route() {
        let fare = tariff().fare(&route());
        assert!((fare.distance_m - 5_000.0).abs() < 0.01, "{fare:?}");
        assert_eq!((fare.driving_s, fare.waiting_s), (540.0, 240.0));
        assert_eq!(
            fare,
            Fare {
                distance_m: fare.distance_m,
                driving_s: 540.0,
                waiting_s: 240.0,
                base_cents: 400,
                distance_cents: 1_000, // 5 km x 2.00
                driving_cents: 90,     // 9 min x 0.10
                waiting_cents: 240,    // 4 min x 0.60
                night_cents: 0,
                zone_cents: 0,
                zones: vec![],
                total_cents: 1_730,
            }
        );
    }

    #[test]
    fn a_standing_taxi_pays_waiting_time_only() {
        let fare = tariff().fare(&[at(0, 0.0), at(600, 0.0)]);
        assert_eq!((fare.distance_cents, fare.waiting_cents), (0, 600));
        assert_eq!(fare.total_cents, 1_000);
        assert_eq!(tariff().fare(&[]).total_cents, 400);
    }

    #[test]
    fn night_surcharge_on_night_stretches_only() {
        let mut tariff = tariff();
        tariff.night.percent = 20.0;
        // 21:00 UTC is 22:00 CET: night from the start.
        let shift = |track: Vec<TrackPoint>, ms: i64| {
            track
                .into_iter()
                .map(|p| TrackPoint {
                    ts_ms: p.ts_ms + ms,
                    ..p
                })
                .collect::<Vec<_>>()
        };
        let night = tariff.fare(&shift(route(), 9 * 3_600_000));
        assert_eq!(night.night_cents, 346, "20 % of 17.30: {night:?}");
        assert_eq!(night.total_cents, 1_730 + 346);
        // Noon: no surcharge.
        assert_eq!(tariff.fare(&route()).night_cents, 0);
        // Starting at 21:54 CET: the base and the first two stretches (6 minutes) are by
        // day, the rest from 22:00 on is night: 20 % of (4 min x 0.60 + 2 km x 2.00 + 3 min
        // x 0.10) = 20 % of 6.70.
        let late = tariff.fare(&shift(route(), 9 * 3_600_000 - 360_000));
        assert_eq!(late.night_cents, 134, "{late:?}");
        // Night until 06:00 CET = 05:00 UTC.
        assert!(tariff
            .night
            .is_night(NOON_UTC + 16 * 3_600_000 + 59 * 60_000));
        assert!(!tariff.night.is_night(NOON_UTC + 17 * 3_600_000));
        assert!(tariff.night.is_night(NOON_UTC + 9 * 3_600_000));
        assert!(!tariff.night.is_night(NOON_UTC + 9 * 3_600_000 - 1));
    }

    #[test]
    fn zone_surcharge_when_starting_or_ending_inside() {
        let mut tariff = tariff();
        let start_zone = ZoneSurcharge {
            name: "station".into(),
            min_lat: 52.49,
            min_lon: 13.39,
            max_lat: 52.501,
            max_lon: 13.41,
            surcharge_cents: 150,
        };
        let end = at(780, 5.001);
        let end_zone = ZoneSurcharge {
            name: "airport".into(),
            min_lat: end.lat - 0.001,
            min_lon: 13.39,
            max_lat: end.lat + 0.001,
            max_lon: 13.41,
            surcharge_cents: 500,
        };
        // Passed through on the way, not begun or ended in: no surcharge.
        let passed = ZoneSurcharge {
            name: "fair".into(),
            min_lat: 52.51,
            min_lon: 13.39,
            max_lat: 52.52,
            max_lon: 13.41,
            surcharge_cents: 700,
        };
        tariff.zones = vec![start_zone, end_zone, passed];
        let fare = tariff.fare(&route());
        assert_eq!(fare.zone_cents, 650);
        assert_eq!(fare.zones, vec!["station".to_owned(), "airport".to_owned()]);
        assert_eq!(fare.total_cents, 1_730 + 650);
    }

    #[test]
    fn invalid_tariffs_are_named() {
        let mut t = tariff();
        t.night.from_hour = 24;
        assert_eq!(t.problem().map(|p| p.0), Some("night.from_hour".into()));
        let mut t = tariff();
        t.currency = "euro".into();
        assert_eq!(t.problem().map(|p| p.0), Some("currency".into()));
        let mut t = tariff();
        t.zones.push(ZoneSurcharge {
            name: "x".into(),
            min_lat: 53.0,
            min_lon: 13.0,
            max_lat: 52.0,
            max_lon: 14.0,
            surcharge_cents: 1,
        });
        assert_eq!(t.problem().map(|p| p.0), Some("zones[0].min_lat".into()));
        assert_eq!(tariff().problem(), None);
        assert_eq!(Tariff::default().problem(), None);
    }
}
