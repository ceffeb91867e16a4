//! A batch of records as rows of the store's tables, ready to send.
//!
//! Values PostgreSQL cannot hold (a `seq` or meter reading above 2^63 - 1, a time outside
//! years 1 to 9999) would make the whole batch fail on every retry; such records become dead
//! letters instead (`invalid_value`, the decoded message re-encoded as JSON, since the raw
//! bytes are no longer at hand). NUL characters in text become U+FFFD.

use std::borrow::Cow;

use wire::{AckState, StatusState, TopicKind, TourEventKind};

use super::partitions::day_of;
use super::types::{text, Timestamp};
use crate::record::{DeadLetter, Record};

pub(super) struct PositionRow<'a> {
    pub taxi: Cow<'a, str>,
    pub seq: i64,
    pub ts: Timestamp,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: Option<f32>,
    pub heading_deg: Option<f32>,
    pub accuracy_m: Option<f32>,
    pub received: Timestamp,
}

/// The newest position of each taxi in the batch, column by column (sent as arrays).
#[derive(Default)]
pub(super) struct LatestColumns<'a> {
    pub taxi: Vec<&'a str>,
    pub seq: Vec<i64>,
    pub ts: Vec<Timestamp>,
    pub lat: Vec<f64>,
    pub lon: Vec<f64>,
    pub speed_kmh: Vec<Option<f32>>,
    pub heading_deg: Vec<Option<f32>>,
    pub accuracy_m: Vec<Option<f32>>,
    pub received: Vec<Timestamp>,
}

/// Tour events, column by column (sent as arrays).
#[derive(Default)]
pub(super) struct TourColumns<'a> {
    pub taxi: Vec<Cow<'a, str>>,
    pub seq: Vec<i64>,
    pub tour_id: Vec<Cow<'a, str>>,
    pub kind: Vec<&'static str>,
    pub ts: Vec<Timestamp>,
    pub lat: Vec<f64>,
    pub lon: Vec<f64>,
    pub meter_cents: Vec<Option<i64>>,
    pub received: Vec<Timestamp>,
}

/// Acks, column by column.
#[derive(Default)]
pub(super) struct AckColumns<'a> {
    pub taxi: Vec<Cow<'a, str>>,
    pub seq: Vec<i64>,
    pub order_id: Vec<Cow<'a, str>>,
    pub state: Vec<&'static str>,
    pub ts: Vec<Timestamp>,
    pub reason: Vec<Option<Cow<'a, str>>>,
    pub received: Vec<Timestamp>,
}

/// Statuses, column by column.
#[derive(Default)]
pub(super) struct StatusColumns<'a> {
    pub taxi: Vec<Cow<'a, str>>,
    pub state: Vec<&'static str>,
    pub at: Vec<Timestamp>,
    pub received: Vec<Timestamp>,
}

pub(super) struct DeadRow<'a> {
    pub received: Timestamp,
    pub topic: Cow<'a, str>,
    pub taxi: Option<Cow<'a, str>>,
    pub reason_code: Cow<'a, str>,
    pub reason: Cow<'a, str>,
    pub payload: Cow<'a, [u8]>,
}

/// Dead letters, column by column, borrowed from the batch.
pub(super) struct DeadColumns<'b> {
    pub received: Vec<Timestamp>,
    pub topic: Vec<&'b str>,
    pub taxi: Vec<Option<&'b str>>,
    pub reason_code: Vec<&'b str>,
    pub reason: Vec<&'b str>,
    pub payload: Vec<&'b [u8]>,
}

#[derive(Default)]
pub(super) struct Batch<'a> {
    /// Sorted by key (taxi, ts, seq).
    pub positions: Vec<PositionRow<'a>>,
    pub tours: TourColumns<'a>,
    pub acks: AckColumns<'a>,
    pub statuses: StatusColumns<'a>,
    pub dead_letters: Vec<DeadRow<'a>>,
    /// The days of the positions, sorted, each once.
    pub days: Vec<i64>,
}

impl<'a> Batch<'a> {
    /// The dead letters as columns, for one array insert.
    pub fn dead_letter_columns(&self) -> DeadColumns<'_> {
        let rows = &self.dead_letters;
        DeadColumns {
            received: rows.iter().map(|d| d.received).collect(),
            topic: rows.iter().map(|d| d.topic.as_ref()).collect(),
            taxi: rows.iter().map(|d| d.taxi.as_deref()).collect(),
            reason_code: rows.iter().map(|d| d.reason_code.as_ref()).collect(),
            reason: rows.iter().map(|d| d.reason.as_ref()).collect(),
            payload: rows.iter().map(|d| d.payload.as_ref()).collect(),
        }
    }

    /// The last position of each taxi: the newest, as positions are sorted by key.
    pub fn latest(&self) -> LatestColumns<'_> {
        let mut latest = LatestColumns::default();
        for (i, p) in self.positions.iter().enumerate() {
            let last_of_taxi = self
                .positions
                .get(i + 1)
                .is_none_or(|next| next.taxi != p.taxi);
            if !last_of_taxi {
                continue;
            }
            latest.taxi.push(&p.taxi);
            latest.seq.push(p.seq);
            latest.ts.push(p.ts);
            latest.lat.push(p.lat);
            latest.lon.push(p.lon);
            latest.speed_kmh.push(p.speed_kmh);
            latest.heading_deg.push(p.heading_deg);
            latest.accuracy_m.push(p.accuracy_m);
            latest.received.push(p.received);
        }
        latest
    }
}

/// A record with a value PostgreSQL cannot hold.
struct Unstorable<'a> {
    taxi: &'a str,
    kind: TopicKind,
    received_ms: i64,
    problem: &'static str,
    /// The decoded message, as JSON.
    json: Vec<u8>,
}

fn seq(value: u64) -> Result<i64, &'static str> {
    i64::try_from(value).map_err(|_| "seq above 2^63 - 1")
}

fn time(ms: i64, field: &'static str) -> Result<Timestamp, &'static str> {
    Timestamp::new(ms).ok_or(field)
}

impl<'a> Batch<'a> {
    pub fn new(records: &'a [Record]) -> Batch<'a> {
        let mut batch = Batch::default();
        for record in records {
            if let Err(u) = batch.push(record) {
                batch.dead_letters.push(DeadRow {
                    received: Timestamp::clamped(u.received_ms),
                    topic: Cow::Owned(format!(
                        "{}/{}/{}",
                        wire::TOPIC_ROOT,
                        u.taxi,
                        u.kind.as_str()
                    )),
                    taxi: Some(text(u.taxi)),
                    reason_code: Cow::Borrowed("invalid_value"),
                    reason: Cow::Owned(format!(
                        "{}: cannot be stored (payload re-encoded as JSON)",
                        u.problem
                    )),
                    payload: Cow::Owned(u.json),
                });
            }
        }
        // Key order: concurrent batches lock keys in the same order (no deadlocks), indexes
        // are filled in order, and each taxi's newest position is its last.
        batch
            .positions
            .sort_unstable_by(|a, b| (&a.taxi, a.ts, a.seq).cmp(&(&b.taxi, b.ts, b.seq)));
        batch.days = batch.positions.iter().map(|p| day_of(p.ts.ms())).collect();
        batch.days.sort_unstable();
        batch.days.dedup();
        batch
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
            && self.tours.seq.is_empty()
            && self.acks.seq.is_empty()
            && self.statuses.taxi.is_empty()
            && self.dead_letters.is_empty()
    }

    /// Adds one record, or says why it cannot be stored.
    fn push(&mut self, record: &'a Record) -> Result<(), Unstorable<'a>> {
        match record {
            Record::Position {
                taxi,
                position: p,
                received_ms,
            } => {
                let row = (|| {
                    Ok(PositionRow {
                        taxi: text(taxi),
                        seq: seq(p.seq)?,
                        ts: time(p.ts_ms, "ts_ms out of range")?,
                        lat: p.lat,
                        lon: p.lon,
                        speed_kmh: p.speed_kmh,
                        heading_deg: p.heading_deg,
                        accuracy_m: p.accuracy_m,
                        received: time(*received_ms, "receive time out of range")?,
                    })
                })();
                match row {
                    Ok(row) => self.positions.push(row),
                    Err(problem) => {
                        let json = wire::encode_json(p);
                        return Err(Unstorable {
                            taxi,
                            kind: TopicKind::Position,
                            received_ms: *received_ms,
                            problem,
                            json,
                        });
                    }
                }
            }
            Record::Tour {
                taxi,
                event: e,
                received_ms,
            } => {
                let values = (|| {
                    let meter = e
                        .meter_cents
                        .map(|m| i64::try_from(m).map_err(|_| "meter_cents above 2^63 - 1"))
                        .transpose()?;
                    Ok((
                        seq(e.seq)?,
                        time(e.ts_ms, "ts_ms out of range")?,
                        meter,
                        time(*received_ms, "receive time out of range")?,
                    ))
                })();
                let (seq, ts, meter, received) = match values {
                    Ok(values) => values,
                    Err(problem) => {
                        let json = wire::encode_json(e);
                        return Err(Unstorable {
                            taxi,
                            kind: TopicKind::Tour,
                            received_ms: *received_ms,
                            problem,
                            json,
                        });
                    }
                };
                let t = &mut self.tours;
                t.taxi.push(text(taxi));
                t.seq.push(seq);
                t.tour_id.push(text(&e.tour_id));
                t.kind.push(match e.kind {
                    TourEventKind::Started => "started",
                    TourEventKind::Ended => "ended",
                });
                t.ts.push(ts);
                t.lat.push(e.lat);
                t.lon.push(e.lon);
                t.meter_cents.push(meter);
                t.received.push(received);
            }
            Record::Ack {
                taxi,
                ack,
                received_ms,
            } => {
                let values = (|| {
                    Ok((
                        seq(ack.seq)?,
                        time(ack.ts_ms, "ts_ms out of range")?,
                        time(*received_ms, "receive time out of range")?,
                    ))
                })();
                let (seq, ts, received) = match values {
                    Ok(values) => values,
                    Err(problem) => {
                        let json = wire::encode_json(ack);
                        return Err(Unstorable {
                            taxi,
                            kind: TopicKind::Ack,
                            received_ms: *received_ms,
                            problem,
                            json,
                        });
                    }
                };
                let a = &mut self.acks;
                a.taxi.push(text(taxi));
                a.seq.push(seq);
                a.order_id.push(text(&ack.order_id));
                a.state.push(match ack.state {
                    AckState::Received => "received",
                    AckState::Accepted => "accepted",
                    AckState::Rejected => "rejected",
                });
                a.ts.push(ts);
                a.reason.push(ack.reason.as_deref().map(text));
                a.received.push(received);
            }
            Record::Status {
                taxi,
                status,
                received_ms,
            } => {
                let values = (|| {
                    Ok((
                        time(status.at_ms, "at_ms out of range")?,
                        time(*received_ms, "receive time out of range")?,
                    ))
                })();
                let (at, received) = match values {
                    Ok(values) => values,
                    Err(problem) => {
                        let json = wire::encode_json(status);
                        return Err(Unstorable {
                            taxi,
                            kind: TopicKind::Status,
                            received_ms: *received_ms,
                            problem,
                            json,
                        });
                    }
                };
                let s = &mut self.statuses;
                s.taxi.push(text(taxi));
                s.state.push(match status.state {
                    StatusState::Online => "online",
                    StatusState::Offline => "offline",
                });
                s.at.push(at);
                s.received.push(received);
            }
            Record::DeadLetter(dead) => self.dead_letters.push(dead_row(dead)),
        }
        Ok(())
    }
}

fn dead_row(dead: &DeadLetter) -> DeadRow<'_> {
    DeadRow {
        received: Timestamp::clamped(dead.received_ms),
        topic: text(&dead.topic),
        taxi: dead.taxi.as_deref().map(text),
        reason_code: text(&dead.reason_code),
        reason: text(&dead.reason),
        payload: Cow::Borrowed(&dead.payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(seq: u64, ts_ms: i64) -> Record {
        Record::Position {
            taxi: "t1".into(),
            position: wire::Position {
                seq,
                ts_ms,
                lat: 1.0,
                lon: 2.0,
                speed_kmh: None,
                heading_deg: None,
                accuracy_m: None,
            },
            received_ms: 1_000,
        }
    }

    #[test]
    fn unstorable_values_become_dead_letters() {
        let records = vec![
            position(1, 0),
            position(u64::MAX, 0),
            position(2, i64::MAX),
            position(3, 86_400_000 + 5),
            position(4, 10),
        ];
        let batch = Batch::new(&records);
        assert_eq!(batch.positions.len(), 3);
        assert_eq!(batch.days, vec![0, 1]);
        let seqs: Vec<i64> = batch.positions.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![1, 4, 3]);
        let latest = batch.latest();
        assert_eq!((latest.taxi, latest.seq), (vec!["t1"], vec![3]));
        assert_eq!(batch.dead_letters.len(), 2);
        let dead = &batch.dead_letters[0];
        assert_eq!(dead.topic, "taxi/t1/position");
        assert_eq!(dead.reason_code, "invalid_value");
        assert!(dead.reason.starts_with("seq above"));
        let decoded: Result<wire::Position, _> = wire::decode(&dead.payload);
        assert_eq!(decoded.map(|p| p.seq).ok(), Some(u64::MAX));
    }
}
