//! Which order was sent to which taxi and when, and when that taxi had it: delivery latency,
//! losses, misdeliveries and repeats, per phase of the benchmark. Send times are noted just
//! before the publish or the API request; receive times are stamped by the taxi's connection
//! task when its client hands the message over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use tokio::sync::mpsc;

use simulator::measure::{Latency, LatencySummary};
use simulator::taxi::{Observation, Observed};

/// What a phase's orders did.
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    pub sent: u64,
    /// Orders that reached their taxi (first arrival).
    pub received: u64,
    /// Orders that reached another taxi than theirs.
    pub wrong_taxi: u64,
    /// Orders that reached their taxi again (the taxi answers them again).
    pub repeats: u64,
    /// From the send to the taxi's first arrival.
    pub latency: LatencySummary,
}

impl Delivery {
    /// Sent but not (yet) received.
    pub fn missing(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

struct Sent {
    phase: &'static str,
    taxi: String,
    at: Instant,
    received: bool,
}

struct Phase {
    delivery: Delivery,
    latency: Latency,
}

#[derive(Default)]
struct State {
    sent: HashMap<String, Sent>,
    phases: HashMap<&'static str, Phase>,
}

/// The shared record of sent and received orders.
#[derive(Default)]
pub struct Tracker {
    state: Mutex<State>,
}

impl Tracker {
    /// Starts following the taxis' observations; the task ends when every sender of the
    /// channel is gone.
    pub fn follow(self: &Arc<Tracker>, mut observations: mpsc::UnboundedReceiver<Observed>) {
        let tracker = self.clone();
        tokio::spawn(async move {
            while let Some(observed) = observations.recv().await {
                if let Observation::Received { order_id, at, .. } = observed.what {
                    tracker.received(&observed.taxi, &order_id, at);
                }
            }
        });
    }

    /// An order is about to be sent to `taxi` in `phase`.
    pub fn sent(&self, phase: &'static str, order_id: &str, taxi: &str, at: Instant) -> Result<()> {
        let mut state = self.lock();
        if !state.phases.contains_key(phase) {
            state.phases.insert(
                phase,
                Phase {
                    delivery: Delivery::default(),
                    latency: Latency::new()?,
                },
            );
        }
        state.sent.insert(
            order_id.to_owned(),
            Sent {
                phase,
                taxi: taxi.to_owned(),
                at,
                received: false,
            },
        );
        if let Some(phase) = state.phases.get_mut(phase) {
            phase.delivery.sent += 1;
        }
        Ok(())
    }

    /// An order that was not sent after all (the request failed).
    pub fn unsent(&self, order_id: &str) {
        let mut state = self.lock();
        if let Some(sent) = state.sent.remove(order_id) {
            if let Some(phase) = state.phases.get_mut(sent.phase) {
                phase.delivery.sent = phase.delivery.sent.saturating_sub(1);
            }
        }
    }

    /// `taxi` has `order_id` since `at`. Orders not sent by the benchmark are ignored.
    pub fn received(&self, taxi: &str, order_id: &str, at: Instant) {
        let mut state = self.lock();
        let State { sent, phases } = &mut *state;
        let Some(order) = sent.get_mut(order_id) else {
            return;
        };
        let Some(phase) = phases.get_mut(order.phase) else {
            return;
        };
        if order.taxi != taxi {
            phase.delivery.wrong_taxi += 1;
        } else if order.received {
            phase.delivery.repeats += 1;
        } else {
            order.received = true;
            phase.delivery.received += 1;
            phase.latency.record(at.saturating_duration_since(order.at));
        }
    }

    /// What `phase`'s orders did so far.
    pub fn delivery(&self, phase: &str) -> Delivery {
        let state = self.lock();
        match state.phases.get(phase) {
            Some(phase) => Delivery {
                latency: phase.latency.summary(),
                ..phase.delivery.clone()
            },
            None => Delivery::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind: keep using them.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn latency_losses_misdeliveries_and_repeats() -> Result<()> {
        let tracker = Tracker::default();
        let start = Instant::now();
        tracker.sent("mqtt", "m-1", "taxi-1", start)?;
        tracker.sent("mqtt", "m-2", "taxi-2", start)?;
        tracker.sent("mqtt", "m-3", "taxi-3", start)?;
        tracker.sent("api", "a-1", "taxi-1", start)?;
        tracker.sent("api", "a-2", "taxi-1", start)?;
        tracker.unsent("a-2");
        tracker.received("taxi-1", "m-1", start + Duration::from_millis(4));
        tracker.received("taxi-1", "m-1", start + Duration::from_millis(9));
        tracker.received("taxi-9", "m-2", start + Duration::from_millis(5));
        tracker.received("taxi-1", "a-1", start + Duration::from_millis(12));
        tracker.received("taxi-1", "someone-elses", start);

        let mqtt = tracker.delivery("mqtt");
        assert_eq!(
            (mqtt.sent, mqtt.received, mqtt.wrong_taxi, mqtt.repeats),
            (3, 1, 1, 1)
        );
        assert_eq!(mqtt.missing(), 2);
        assert!((3_990..=4_010).contains(&mqtt.latency.max_us), "{mqtt:?}");
        let api = tracker.delivery("api");
        assert_eq!((api.sent, api.received), (1, 1));
        assert!((11_990..=12_010).contains(&api.latency.p50_us), "{api:?}");
        assert_eq!(tracker.delivery("none").sent, 0);
        Ok(())
    }
}
