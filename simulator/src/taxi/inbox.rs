//! The driver's side of `taxi/<id>/inbox`, as topics.md asks: every message is answered
//! `received` at once, then `accepted` or `rejected` once the driver decides; a message that
//! is void (its `expires_ms` passed) is answered `rejected` with reason `expired`; the same
//! `order_id` again is the same message: it is answered again with its current state and never
//! shown to the driver twice. No clock and no randomness in here: the caller passes the time
//! and the driver's plan, so every rule can be tested.

use std::collections::{BTreeMap, HashMap, VecDeque};

use wire::{AckState, InboxKind, InboxMessage};

/// The reason of a `rejected` answer to a void message.
pub const EXPIRED: &str = "expired";

/// Order ids remembered by default; the oldest are forgotten beyond.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// One answer to publish on `taxi/<id>/ack`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub order_id: String,
    pub state: AckState,
    pub reason: Option<String>,
}

/// What the driver will answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Reject, with a reason such as `busy`.
    Reject(String),
}

/// When and how the driver decides on a new message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub decide_at_ms: i64,
    pub verdict: Verdict,
}

/// What an arriving message caused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// The answers to publish now, in order.
    pub answers: Vec<Answer>,
    /// The first time this `order_id` arrived (the driver sees it); `false` for a repeat.
    pub first: bool,
}

/// A decision that came due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub answer: Answer,
    pub kind: InboxKind,
}

#[derive(Clone, Debug)]
enum Entry {
    Pending {
        kind: InboxKind,
        expires_ms: Option<i64>,
        decide_at_ms: i64,
        verdict: Verdict,
    },
    Decided(Answer),
}

/// Every inbox message the taxi has seen (the newest [`DEFAULT_CAPACITY`]) and its state.
#[derive(Debug)]
pub struct Inbox {
    entries: HashMap<String, Entry>,
    arrivals: VecDeque<String>,
    /// Pending decisions by due time (and arrival number, to keep equal times apart).
    due: BTreeMap<(i64, u64), String>,
    arrived: u64,
    capacity: usize,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox::new(DEFAULT_CAPACITY)
    }
}

impl Inbox {
    pub fn new(capacity: usize) -> Inbox {
        Inbox {
            entries: HashMap::new(),
            arrivals: VecDeque::new(),
            due: BTreeMap::new(),
            arrived: 0,
            capacity: capacity.max(1),
        }
    }

    /// A message arrived at `now_ms`. `plan` is asked only for a message seen for the first
    /// time that is not void yet.
    pub fn receive(
        &mut self,
        message: &InboxMessage,
        now_ms: i64,
        plan: impl FnOnce(&InboxMessage) -> Plan,
    ) -> Arrival {
        if let Some(entry) = self.entries.get(&message.order_id) {
            let answer = match entry {
                Entry::Pending { .. } => answer(&message.order_id, AckState::Received, None),
                Entry::Decided(answer) => answer.clone(),
            };
            return Arrival {
                answers: vec![answer],
                first: false,
            };
        }
        self.forget_oldest_beyond_capacity();
        self.arrivals.push_back(message.order_id.clone());
        if is_void(message.expires_ms, now_ms) {
            let rejected = answer(&message.order_id, AckState::Rejected, Some(EXPIRED));
            self.entries
                .insert(message.order_id.clone(), Entry::Decided(rejected.clone()));
            return Arrival {
                answers: vec![rejected],
                first: true,
            };
        }
        let plan = plan(message);
        self.arrived += 1;
        self.due
            .insert((plan.decide_at_ms, self.arrived), message.order_id.clone());
        self.entries.insert(
            message.order_id.clone(),
            Entry::Pending {
                kind: message.kind,
                expires_ms: message.expires_ms,
                decide_at_ms: plan.decide_at_ms,
                verdict: plan.verdict,
            },
        );
        Arrival {
            answers: vec![answer(&message.order_id, AckState::Received, None)],
            first: true,
        }
    }

    /// When the next pending decision comes due, if any.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.due.keys().next().map(|(at, _)| *at)
    }

    /// The decisions due at `now_ms`, oldest first. A message that became void before the
    /// driver decided is rejected as `expired` whatever the driver meant to answer.
    pub fn decide_due(&mut self, now_ms: i64) -> Vec<Decision> {
        let mut decisions = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let order_id = entry.remove();
            let Some(Entry::Pending {
                kind,
                expires_ms,
                verdict,
                ..
            }) = self.entries.get(&order_id).cloned()
            else {
                continue;
            };
            let decided = if is_void(expires_ms, now_ms) {
                answer(&order_id, AckState::Rejected, Some(EXPIRED))
            } else {
                match verdict {
                    Verdict::Accept => answer(&order_id, AckState::Accepted, None),
                    Verdict::Reject(reason) => answer(&order_id, AckState::Rejected, Some(&reason)),
                }
            };
            self.entries
                .insert(order_id, Entry::Decided(decided.clone()));
            decisions.push(Decision {
                answer: decided,
                kind,
            });
        }
        decisions
    }

    /// The current state of a message, if the taxi has seen it.
    pub fn state(&self, order_id: &str) -> Option<AckState> {
        self.entries.get(order_id).map(|entry| match entry {
            Entry::Pending { .. } => AckState::Received,
            Entry::Decided(answer) => answer.state,
        })
    }

    /// Messages remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn forget_oldest_beyond_capacity(&mut self) {
        while self.arrivals.len() >= self.capacity {
            let Some(oldest) = self.arrivals.pop_front() else {
                break;
            };
            if let Some(Entry::Pending { decide_at_ms, .. }) = self.entries.remove(&oldest) {
                self.due
                    .retain(|(at, _), id| !(*at == decide_at_ms && *id == oldest));
            }
        }
    }
}

fn is_void(expires_ms: Option<i64>, now_ms: i64) -> bool {
    expires_ms.is_some_and(|expires| expires <= now_ms)
}

fn answer(order_id: &str, state: AckState, reason: Option<&str>) -> Answer {
    Answer {
        order_id: order_id.to_owned(),
        state,
        reason: reason.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(order_id: &str, kind: InboxKind, expires_ms: Option<i64>) -> InboxMessage {
        InboxMessage {
            order_id: order_id.to_owned(),
            kind,
            text: "Pick up at Alexanderplatz".to_owned(),
            created_ms: 1_000,
            expires_ms,
        }
    }

    fn plan(decide_at_ms: i64, verdict: Verdict) -> impl FnOnce(&InboxMessage) -> Plan {
        move |_| Plan {
            decide_at_ms,
            verdict,
        }
    }

    fn states(answers: &[Answer]) -> Vec<(AckState, Option<&str>)> {
        answers
            .iter()
            .map(|a| (a.state, a.reason.as_deref()))
            .collect()
    }

    #[test]
    fn received_at_once_then_the_drivers_decision_when_due() {
        let mut inbox = Inbox::default();
        let order = message("o-1", InboxKind::Order, Some(60_000));
        let arrival = inbox.receive(&order, 10_000, plan(13_000, Verdict::Accept));
        assert!(arrival.first);
        assert_eq!(states(&arrival.answers), [(AckState::Received, None)]);
        assert_eq!(inbox.next_due_ms(), Some(13_000));
        assert!(inbox.decide_due(12_999).is_empty());
        let decided = inbox.decide_due(13_000);
        assert_eq!(decided.len(), 1);
        assert_eq!(decided[0].answer.state, AckState::Accepted);
        assert_eq!(decided[0].answer.order_id, "o-1");
        assert_eq!(decided[0].kind, InboxKind::Order);
        assert_eq!(inbox.next_due_ms(), None);
        assert_eq!(inbox.state("o-1"), Some(AckState::Accepted));
    }

    #[test]
    fn a_rejection_carries_its_reason() {
        let mut inbox = Inbox::default();
        inbox.receive(
            &message("o-2", InboxKind::Order, None),
            0,
            plan(5, Verdict::Reject("busy".to_owned())),
        );
        let decided = inbox.decide_due(5);
        assert_eq!(
            states(&[decided[0].answer.clone()]),
            [(AckState::Rejected, Some("busy"))]
        );
    }

    #[test]
    fn a_void_message_is_rejected_as_expired_without_asking_the_driver() {
        let mut inbox = Inbox::default();
        let late = message("o-3", InboxKind::Order, Some(9_999));
        let arrival = inbox.receive(&late, 10_000, |_| panic!("the driver never sees it"));
        assert!(arrival.first);
        assert_eq!(
            states(&arrival.answers),
            [(AckState::Rejected, Some(EXPIRED))]
        );
        assert_eq!(inbox.next_due_ms(), None);
        // Exactly at expires_ms it is void too.
        let edge = message("o-4", InboxKind::Message, Some(10_000));
        let arrival = inbox.receive(&edge, 10_000, |_| panic!("void"));
        assert_eq!(
            states(&arrival.answers),
            [(AckState::Rejected, Some(EXPIRED))]
        );
    }

    #[test]
    fn a_message_that_expires_before_the_driver_decides_is_rejected_as_expired() {
        let mut inbox = Inbox::default();
        let order = message("o-5", InboxKind::Order, Some(12_000));
        let arrival = inbox.receive(&order, 10_000, plan(15_000, Verdict::Accept));
        assert_eq!(states(&arrival.answers), [(AckState::Received, None)]);
        let decided = inbox.decide_due(15_000);
        assert_eq!(
            states(&[decided[0].answer.clone()]),
            [(AckState::Rejected, Some(EXPIRED))]
        );
    }

    #[test]
    fn a_repeated_order_id_is_answered_with_its_current_state_and_shown_once() {
        let mut inbox = Inbox::default();
        let order = message("o-6", InboxKind::Order, None);
        assert!(inbox.receive(&order, 0, plan(100, Verdict::Accept)).first);
        // Again while the driver is deciding: received again, not shown again.
        let again = inbox.receive(&order, 50, |_| panic!("shown twice"));
        assert!(!again.first);
        assert_eq!(states(&again.answers), [(AckState::Received, None)]);
        assert_eq!(inbox.decide_due(100).len(), 1);
        // Again after the decision: the decision again, with no new decision pending.
        let again = inbox.receive(&order, 200, |_| panic!("shown twice"));
        assert!(!again.first);
        assert_eq!(states(&again.answers), [(AckState::Accepted, None)]);
        assert_eq!(inbox.next_due_ms(), None);
        assert!(inbox.decide_due(i64::MAX).is_empty());
        // A repeat of a void message is rejected again, the same way.
        let late = message("o-7", InboxKind::Order, Some(1));
        inbox.receive(&late, 10, |_| panic!("void"));
        let again = inbox.receive(&late, 20, |_| panic!("void"));
        assert_eq!(
            states(&again.answers),
            [(AckState::Rejected, Some(EXPIRED))]
        );
    }

    #[test]
    fn decisions_come_due_in_time_order() {
        let mut inbox = Inbox::default();
        inbox.receive(
            &message("late", InboxKind::Message, None),
            0,
            plan(300, Verdict::Accept),
        );
        inbox.receive(
            &message("early", InboxKind::Invoice, None),
            0,
            plan(100, Verdict::Accept),
        );
        inbox.receive(
            &message("same", InboxKind::Order, None),
            0,
            plan(100, Verdict::Reject("busy".to_owned())),
        );
        let ids: Vec<String> = inbox
            .decide_due(1_000)
            .into_iter()
            .map(|d| d.answer.order_id)
            .collect();
        assert_eq!(ids, ["early", "same", "late"]);
    }

    #[test]
    fn the_oldest_messages_are_forgotten_beyond_capacity() {
        let mut inbox = Inbox::new(2);
        for (n, id) in ["a", "b", "c"].into_iter().enumerate() {
            inbox.receive(
                &message(id, InboxKind::Message, None),
                0,
                plan(n as i64, Verdict::Accept),
            );
        }
        assert_eq!(inbox.len(), 2);
        assert_eq!(inbox.state("a"), None);
        assert_eq!(inbox.state("c"), Some(AckState::Received));
        // The forgotten message's decision is gone too.
        let ids: Vec<String> = inbox
            .decide_due(10)
            .into_iter()
            .map(|d| d.answer.order_id)
            .collect();
        assert_eq!(ids, ["b", "c"]);
    }
}
