//! A taxi's tours: free, a passenger picked up (from an accepted order at its pickup time, or
//! hailing in the street), driving with the meter running, the passenger dropped off. Each
//! start and end becomes a `TourEvent` (the caller adds `seq`). Tour ids are
//! `<taxi id>-<boot ms>-<n>`, unique across restarts of the simulator.

use std::time::Duration;

use rand::Rng;
use wire::TourEventKind;

use super::behaviour::{happens, pick, Behaviour};
use super::meter::Meter;

/// A tour started or ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub kind: TourEventKind,
    pub tour_id: String,
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub meter_cents: u64,
}

#[derive(Clone, Debug)]
enum State {
    Free {
        /// An accepted order's pickup time.
        pickup_at_ms: Option<i64>,
    },
    OnTour {
        tour_id: String,
        ends_at_ms: i64,
        meter: Meter,
        /// Relative error of the meter on this tour (0 for an honest one).
        meter_error: f64,
    },
}

/// One taxi's tours.
#[derive(Clone, Debug)]
pub struct Tours {
    prefix: String,
    started: u64,
    state: State,
}

impl Tours {
    pub fn new(taxi_id: &str, boot_ms: i64) -> Tours {
        Tours {
            prefix: format!("{taxi_id}-{boot_ms}"),
            started: 0,
            state: State::Free { pickup_at_ms: None },
        }
    }

    /// Whether a passenger is on board.
    pub fn on_tour(&self) -> bool {
        matches!(self.state, State::OnTour { .. })
    }

    /// Whether the taxi has an order to serve (on a tour or driving to a pickup).
    pub fn busy(&self) -> bool {
        match self.state {
            State::OnTour { .. } => true,
            State::Free { pickup_at_ms } => pickup_at_ms.is_some(),
        }
    }

    /// An accepted order: the tour starts at the first fix from `pickup_at_ms` on. Ignored
    /// while busy (the driver should not have accepted it).
    pub fn book(&mut self, pickup_at_ms: i64) {
        if let State::Free { pickup_at_ms: None } = self.state {
            self.state = State::Free {
                pickup_at_ms: Some(pickup_at_ms),
            };
        }
    }

    /// A new fix at `ts_ms`, `dt` after the previous one: runs the meter, and starts or ends a
    /// tour when its time has come.
    pub fn step(
        &mut self,
        (lat, lon): (f64, f64),
        ts_ms: i64,
        dt: Duration,
        behaviour: &Behaviour,
        rng: &mut impl Rng,
    ) -> Option<Change> {
        match &mut self.state {
            State::Free { pickup_at_ms } => {
                let picked_up = pickup_at_ms.is_some_and(|at| at <= ts_ms);
                if !picked_up && !happens(rng, behaviour.hail_every, dt) {
                    return None;
                }
                self.started += 1;
                let tour_id = format!("{}-{}", self.prefix, self.started);
                let length = pick(rng, &behaviour.tour_length);
                let meter_error = if rng.random_bool(behaviour.meter_error_share) {
                    behaviour.meter_error
                } else {
                    0.0
                };
                let meter = Meter::start(lat, lon, ts_ms);
                let meter_cents = meter.fare_cents(&behaviour.tariff);
                self.state = State::OnTour {
                    tour_id: tour_id.clone(),
                    ends_at_ms: ts_ms.saturating_add(length.as_millis() as i64),
                    meter,
                    meter_error,
                };
                Some(Change {
                    kind: TourEventKind::Started,
                    tour_id,
                    ts_ms,
                    lat,
                    lon,
                    meter_cents,
                })
            }
            State::OnTour {
                tour_id,
                ends_at_ms,
                meter,
                meter_error,
            } => {
                meter.add(lat, lon, ts_ms);
                if ts_ms < *ends_at_ms {
                    return None;
                }
                let fare = meter.fare_cents(&behaviour.tariff) as f64 * (1.0 + *meter_error);
                let change = Change {
                    kind: TourEventKind::Ended,
                    tour_id: std::mem::take(tour_id),
                    ts_ms,
                    lat,
                    lon,
                    meter_cents: fare.round().max(0.0) as u64,
                };
                self.state = State::Free { pickup_at_ms: None };
                Some(change)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::taxi::meter::{Meter, Tariff};

    fn only_booked_tours(length_s: u64) -> Behaviour {
        let mut tariff = Tariff::default();
        tariff.night.percent = 0.0;
        Behaviour {
            tariff,
            hail_every: None,
            tour_length: Duration::from_secs(length_s)..=Duration::from_secs(length_s),
            meter_error_share: 0.0,
            ..Behaviour::default()
        }
    }

    #[test]
    fn a_booked_tour_starts_at_pickup_and_ends_with_the_meter_reading() {
        let behaviour = only_booked_tours(10);
        let mut rng = StdRng::seed_from_u64(3);
        let mut tours = Tours::new("taxi-1", 1_700_000_000_000);
        let second = Duration::from_secs(1);
        let fix = |n: i64| (52.5 + n as f64 * 0.0001, 13.4);
        assert_eq!(
            tours.step(fix(0), 0, second, &behaviour, &mut rng),
            None,
            "no tour without a booking or a hail"
        );
        tours.book(2_000);
        assert!(tours.busy() && !tours.on_tour());
        assert_eq!(
            tours.step(fix(1), 1_000, second, &behaviour, &mut rng),
            None
        );
        let started = tours
            .step(fix(2), 2_000, second, &behaviour, &mut rng)
            .expect("started at pickup");
        assert_eq!(started.kind, TourEventKind::Started);
        assert_eq!(started.tour_id, "taxi-1-1700000000000-1");
        assert_eq!(started.meter_cents, behaviour.tariff.base_cents);
        // A second booking during the tour is ignored.
        tours.book(3_000);
        let mut meter = Meter::start(fix(2).0, fix(2).1, 2_000);
        let mut ended = None;
        for n in 3..=12 {
            meter.add(fix(n).0, fix(n).1, n * 1_000);
            if let Some(change) = tours.step(fix(n), n * 1_000, second, &behaviour, &mut rng) {
                ended = Some((n, change));
                break;
            }
        }
        let (n, ended) = ended.expect("ended after its length");
        assert_eq!(n, 12, "10 s after the start");
        assert_eq!(ended.kind, TourEventKind::Ended);
        assert_eq!(ended.tour_id, started.tour_id);
        assert_eq!(ended.meter_cents, meter.fare_cents(&behaviour.tariff));
        assert!(ended.meter_cents > started.meter_cents);
        assert!(!tours.busy());
        // The next tour gets the next number.
        tours.book(20_000);
        let next = tours
            .step(fix(20), 20_000, second, &behaviour, &mut rng)
            .expect("started");
        assert_eq!(next.tour_id, "taxi-1-1700000000000-2");
    }

    #[test]
    fn a_faulty_meter_reads_high_by_its_error() {
        let behaviour = Behaviour {
            meter_error_share: 1.0,
            meter_error: 0.5,
            ..only_booked_tours(1)
        };
        let mut rng = StdRng::seed_from_u64(4);
        let mut tours = Tours::new("taxi-2", 0);
        tours.book(0);
        let second = Duration::from_secs(1);
        tours.step((52.5, 13.4), 0, second, &behaviour, &mut rng);
        let ended = tours
            .step((52.5, 13.4), 1_000, second, &behaviour, &mut rng)
            .expect("ended");
        // Standing one second: what an honest meter shows, times 1.5.
        let mut honest = Meter::start(52.5, 13.4, 0);
        honest.add(52.5, 13.4, 1_000);
        let honest = honest.fare_cents(&behaviour.tariff);
        assert_eq!(ended.meter_cents, (honest as f64 * 1.5).round() as u64);
    }

    #[test]
    fn passengers_hail_at_the_configured_rate() {
        let behaviour = Behaviour {
            hail_every: Some(Duration::from_secs(60)),
            tour_length: Duration::from_secs(60)..=Duration::from_secs(60),
            ..Behaviour::default()
        };
        let mut rng = StdRng::seed_from_u64(5);
        let mut tours = Tours::new("taxi-3", 0);
        let mut started = 0;
        for second in 0..3_600 {
            let change = tours.step(
                (52.5, 13.4),
                second * 1_000,
                Duration::from_secs(1),
                &behaviour,
                &mut rng,
            );
            if change.is_some_and(|c| c.kind == TourEventKind::Started) {
                started += 1;
            }
        }
        // An hour of one-minute tours with a hail every minute on average when free.
        assert!((15..=45).contains(&started), "{started}");
    }
}
