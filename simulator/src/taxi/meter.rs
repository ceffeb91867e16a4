//! The taximeter: the fixes of the running tour, priced with the platform's own tariff
//! ([`bridge::tours::tariff`]). The platform prices a tour from the positions it stored
//! between the start and the end, which are the fixes the taxi reported, so an honest meter
//! agrees with it (up to positions lost on the way).

pub use bridge::tours::tariff::Tariff;
use bridge::tours::tariff::TrackPoint;

/// A running taximeter.
#[derive(Clone, Debug, Default)]
pub struct Meter {
    track: Vec<TrackPoint>,
}

impl Meter {
    /// Starts at a fix (degrees, unix ms).
    pub fn start(lat: f64, lon: f64, ts_ms: i64) -> Meter {
        Meter {
            track: vec![TrackPoint { ts_ms, lat, lon }],
        }
    }

    /// Adds a fix.
    pub fn add(&mut self, lat: f64, lon: f64, ts_ms: i64) {
        self.track.push(TrackPoint { ts_ms, lat, lon });
    }

    /// The fare so far under `tariff`, in cents.
    pub fn fare_cents(&self, tariff: &Tariff) -> u64 {
        tariff.fare(&self.track).total_cents
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default tariff without its night surcharge, so results do not depend on the hour.
    fn day_tariff() -> Tariff {
        let mut tariff = Tariff::default();
        tariff.night.percent = 0.0;
        tariff
    }

    #[test]
    fn fare_of_a_known_route() {
        let tariff = day_tariff();
        // 0.01 degrees of latitude is about 1.112 km: driven in 2 minutes, then 3 minutes
        // standing.
        let mut meter = Meter::start(52.50, 13.40, 0);
        meter.add(52.51, 13.40, 120_000);
        meter.add(52.51, 13.40, 300_000);
        let km = bridge::tours::tariff::haversine_m(52.50, 13.40, 52.51, 13.40) / 1000.0;
        let expected = tariff.base_cents as f64
            + km * tariff.per_km_cents as f64
            + 2.0 * tariff.per_minute_driving_cents as f64
            + 3.0 * tariff.per_minute_waiting_cents as f64;
        assert!(
            (meter.fare_cents(&tariff) as f64 - expected).abs() <= 2.0,
            "{} vs {expected}",
            meter.fare_cents(&tariff)
        );
    }

    #[test]
    fn a_meter_that_never_moved_shows_the_base_fare() {
        let tariff = day_tariff();
        let meter = Meter::start(52.5, 13.4, 1_000);
        assert_eq!(meter.fare_cents(&tariff), tariff.base_cents);
    }
}
