//! How a simulated taxi behaves: how often it reports, how fast and how its driver answers
//! inbox messages, how often it drives a tour, and how often it loses its connection. Every
//! random choice is drawn from these ranges.

use std::ops::RangeInclusive;
use std::time::Duration;

use anyhow::{bail, Result};

use super::meter::Tariff;

/// A taxi's behaviour; [`Behaviour::default`] is a plausible city taxi.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Positions per second.
    pub rate: f64,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// How long the driver takes to accept or reject an inbox message after it arrived.
    pub decide_after: RangeInclusive<Duration>,
    /// Share of orders the driver accepts when not on a tour (orders arriving during a tour
    /// are rejected as `busy`; messages and invoices are always accepted).
    pub accept_share: f64,
    /// Whether an accepted order becomes a tour (the driver is busy until it ends and
    /// rejects other orders as `busy`); `false`: the driver accepts without driving.
    pub orders_become_tours: bool,
    /// From accepting an order to picking up the passenger (the tour's start).
    pub pickup_after: RangeInclusive<Duration>,
    /// Mean time between the end of a tour and a passenger hailing the taxi in the street;
    /// `None`: tours only start from accepted orders.
    pub hail_every: Option<Duration>,
    /// How long a tour lasts.
    pub tour_length: RangeInclusive<Duration>,
    /// Mean time between two losses of the connection; `None`: the taxi stays online.
    pub offline_every: Option<Duration>,
    /// How long the taxi stays offline after losing its connection.
    pub offline_for: RangeInclusive<Duration>,
    /// Positions kept while offline and sent after the reconnect (the oldest are dropped).
    pub offline_buffer: usize,
    /// Share of tours whose meter reading is off by [`Behaviour::meter_error`] (a faulty or
    /// manipulated taximeter), so that the platform's comparison has something to find.
    pub meter_error_share: f64,
    /// Relative error of such a meter, e.g. 0.3 reads 30 % high.
    pub meter_error: f64,
    pub tariff: Tariff,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            rate: 1.0,
            keep_alive: Duration::from_secs(30),
            decide_after: Duration::from_secs(2)..=Duration::from_secs(10),
            accept_share: 0.8,
            orders_become_tours: true,
            pickup_after: Duration::from_secs(5)..=Duration::from_secs(30),
            hail_every: Some(Duration::from_secs(300)),
            tour_length: Duration::from_secs(120)..=Duration::from_secs(600),
            offline_every: Some(Duration::from_secs(1800)),
            offline_for: Duration::from_secs(5)..=Duration::from_secs(60),
            offline_buffer: 600,
            meter_error_share: 0.05,
            meter_error: 0.3,
            tariff: Tariff::default(),
        }
    }
}

impl Behaviour {
    /// A taxi that only reports positions and answers its inbox at once (accepting
    /// everything, never busy): no tours, no connection losses. For measurements.
    pub fn steady(rate: f64) -> Behaviour {
        Behaviour {
            rate,
            decide_after: Duration::ZERO..=Duration::ZERO,
            accept_share: 1.0,
            orders_become_tours: false,
            hail_every: None,
            offline_every: None,
            ..Behaviour::default()
        }
    }

    /// Refuses values that make no sense, naming the setting.
    pub fn validate(&self) -> Result<()> {
        if !(self.rate > 0.0 && self.rate <= 1_000.0) {
            bail!("the position rate must be above 0 and at most 1000 per second");
        }
        for (name, share) in [
            ("accept share", self.accept_share),
            ("meter error share", self.meter_error_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                bail!("the {name} must be between 0 and 1, not {share}");
            }
        }
        if !(-0.99..=10.0).contains(&self.meter_error) {
            bail!("the meter error must be between -0.99 and 10");
        }
        for (name, range) in [
            ("decision delay", &self.decide_after),
            ("pickup delay", &self.pickup_after),
            ("tour length", &self.tour_length),
            ("offline time", &self.offline_for),
        ] {
            if range.start() > range.end() {
                bail!("the {name} range starts after its end");
            }
        }
        for (name, every) in [
            ("time between hails", self.hail_every),
            ("time between connection losses", self.offline_every),
        ] {
            if every.is_some_and(|every| every.is_zero()) {
                bail!("the {name} must be above zero");
            }
        }
        if self.keep_alive < Duration::from_secs(1) {
            bail!("the keep-alive must be at least one second");
        }
        Ok(())
    }

    /// Time between two positions.
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }
}

/// A duration drawn uniformly from `range`.
pub fn pick(rng: &mut impl rand::Rng, range: &RangeInclusive<Duration>) -> Duration {
    let (low, high) = (range.start().as_secs_f64(), range.end().as_secs_f64());
    if high <= low {
        return *range.start();
    }
    Duration::from_secs_f64(rng.random_range(low..=high))
}

/// Whether an event with mean interval `every` happens within `dt` (a Poisson process).
pub fn happens(rng: &mut impl rand::Rng, every: Option<Duration>, dt: Duration) -> bool {
    match every {
        Some(every) if !every.is_zero() => {
            let chance = 1.0 - (-dt.as_secs_f64() / every.as_secs_f64()).exp();
            rng.random_bool(chance.clamp(0.0, 1.0))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn defaults_and_steady_are_valid() {
        Behaviour::default().validate().expect("default");
        Behaviour::steady(1.0).validate().expect("steady");
        let bad = Behaviour {
            accept_share: 1.5,
            ..Behaviour::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn picks_stay_in_range_and_events_follow_their_rate() {
        let mut rng = StdRng::seed_from_u64(1);
        let range = Duration::from_secs(2)..=Duration::from_secs(5);
        for _ in 0..1000 {
            assert!(range.contains(&pick(&mut rng, &range)));
        }
        let fixed = Duration::from_secs(3)..=Duration::from_secs(3);
        assert_eq!(pick(&mut rng, &fixed), Duration::from_secs(3));
        // Once a minute on average, over 10,000 one-second steps: about 167 times.
        let every = Some(Duration::from_secs(60));
        let count = (0..10_000)
            .filter(|_| happens(&mut rng, every, Duration::from_secs(1)))
            .count();
        assert!((120..220).contains(&count), "{count}");
        assert!(!happens(&mut rng, None, Duration::from_secs(1)));
    }
}
