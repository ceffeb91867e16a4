//! Plausible taxi movement: a random walk through a city around its centre, with city speeds,
//! gentle bends, turns at corners, stops at lights, and a pull back towards the centre.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Berlin, Alexanderplatz area.
pub const BERLIN: (f64, f64) = (52.52, 13.405);

/// Metres per degree of latitude.
const METRES_PER_DEGREE: f64 = 111_320.0;
/// Taxis start within this distance of the centre.
const START_RADIUS_M: f64 = 4_000.0;
/// Beyond this distance they turn back towards the centre.
const CITY_RADIUS_M: f64 = 10_000.0;
const MAX_SPEED_KMH: f32 = 60.0;

/// One position fix, ready for a `wire::Position`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fix {
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f32,
    pub heading_deg: f32,
    pub accuracy_m: f32,
}

/// One taxi's movement.
pub struct Walker {
    centre: (f64, f64),
    lat: f64,
    lon: f64,
    speed_kmh: f32,
    heading_deg: f32,
    /// Time left standing at a light.
    stopped_for: Duration,
    rng: StdRng,
}

impl Walker {
    /// A taxi somewhere near `centre`, reproducible from `seed`.
    pub fn new(centre: (f64, f64), seed: u64) -> Walker {
        let mut rng = StdRng::seed_from_u64(seed);
        let distance = START_RADIUS_M * rng.random::<f64>().sqrt();
        let bearing = rng.random_range(0.0..360.0f64);
        let (lat, lon) = offset(centre, distance, bearing);
        Walker {
            centre,
            lat,
            lon,
            speed_kmh: rng.random_range(15.0..45.0),
            heading_deg: rng.random_range(0.0..360.0),
            stopped_for: Duration::ZERO,
            rng,
        }
    }

    /// Moves on by `dt` and returns the new fix.
    pub fn step(&mut self, dt: Duration) -> Fix {
        let rng = &mut self.rng;
        if !self.stopped_for.is_zero() {
            self.stopped_for = self.stopped_for.saturating_sub(dt);
            self.speed_kmh = 0.0;
            if self.stopped_for.is_zero() {
                self.speed_kmh = rng.random_range(5.0..15.0);
            }
        } else {
            // Roughly one red light per two minutes of driving.
            if rng.random_bool((dt.as_secs_f64() / 120.0).min(1.0)) {
                self.stopped_for = Duration::from_secs(rng.random_range(10..60));
            }
            let accelerate = rng.random_range(-6.0..6.0f32) * dt.as_secs_f32().min(5.0);
            self.speed_kmh = (self.speed_kmh + accelerate).clamp(5.0, MAX_SPEED_KMH);
            // A corner about every 300 m, otherwise the road bends a little.
            let metres = f64::from(self.speed_kmh) / 3.6 * dt.as_secs_f64();
            if rng.random_bool((metres / 300.0).min(1.0)) {
                let turn = if rng.random_bool(0.5) { 90.0 } else { -90.0 };
                self.heading_deg += turn;
            } else {
                self.heading_deg += rng.random_range(-5.0..5.0);
            }
            if distance_m(self.centre, (self.lat, self.lon)) > CITY_RADIUS_M {
                self.heading_deg = bearing_deg((self.lat, self.lon), self.centre) as f32;
            }
            self.heading_deg = self.heading_deg.rem_euclid(360.0);
            if self.heading_deg >= 360.0 {
                self.heading_deg = 0.0;
            }
            let (lat, lon) = offset((self.lat, self.lon), metres, f64::from(self.heading_deg));
            self.lat = lat;
            self.lon = lon;
        }
        Fix {
            lat: self.lat,
            lon: self.lon,
            speed_kmh: self.speed_kmh,
            heading_deg: self.heading_deg,
            accuracy_m: rng.random_range(3.0..12.0),
        }
    }
}

/// The point `metres` away from `from` in direction `bearing_deg` (flat-earth, fine within a
/// city).
fn offset(from: (f64, f64), metres: f64, bearing_deg: f64) -> (f64, f64) {
    let bearing = bearing_deg.to_radians();
    let dlat = metres * bearing.cos() / METRES_PER_DEGREE;
    let dlon = metres * bearing.sin() / (METRES_PER_DEGREE * from.0.to_radians().cos());
    (from.0 + dlat, from.1 + dlon)
}

fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let dy = (b.0 - a.0) * METRES_PER_DEGREE;
    let dx = (b.1 - a.1) * METRES_PER_DEGREE * a.0.to_radians().cos();
    dx.hypot(dy)
}

fn bearing_deg(from: (f64, f64), to: (f64, f64)) -> f64 {
    let dy = to.0 - from.0;
    let dx = (to.1 - from.1) * from.0.to_radians().cos();
    dx.atan2(dy).to_degrees().rem_euclid(360.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_in_the_city_with_valid_values() {
        for seed in 0..20 {
            let mut walker = Walker::new(BERLIN, seed);
            for _ in 0..5_000 {
                let fix = walker.step(Duration::from_secs(1));
                assert!(distance_m(BERLIN, (fix.lat, fix.lon)) < CITY_RADIUS_M + 500.0);
                assert!((0.0..=MAX_SPEED_KMH).contains(&fix.speed_kmh));
                assert!((0.0..360.0).contains(&fix.heading_deg), "{fix:?}");
                assert!(fix.accuracy_m >= 0.0);
            }
        }
    }

    #[test]
    fn moves_at_city_speed() {
        let mut walker = Walker::new(BERLIN, 7);
        let start = walker.step(Duration::from_secs(1));
        let mut last = start;
        let mut travelled = 0.0;
        for _ in 0..600 {
            let fix = walker.step(Duration::from_secs(1));
            travelled += distance_m((last.lat, last.lon), (fix.lat, fix.lon));
            last = fix;
        }
        // Ten minutes at 0 to 60 km/h, stops included: between 1 and 10 km.
        assert!((1_000.0..10_000.0).contains(&travelled), "{travelled}");
    }

    #[test]
    fn bearing_points_the_right_way() {
        assert!((bearing_deg((52.0, 13.0), (53.0, 13.0)) - 0.0).abs() < 1e-6);
        assert!((bearing_deg((52.0, 13.0), (52.0, 14.0)) - 90.0).abs() < 1e-6);
        let (lat, lon) = offset((52.0, 13.0), 1000.0, 90.0);
        assert!((distance_m((52.0, 13.0), (lat, lon)) - 1000.0).abs() < 1.0);
    }
}
