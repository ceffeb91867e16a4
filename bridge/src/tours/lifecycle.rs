//! The tour lifecycle: what a stored tour event does to its tour, decided from the event and
//! the tour as it stands. Pure: the processor reads the tour, asks [`judge`], and writes.

use wire::TourEventKind;

/// A tour event as stored in `tour_events`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub taxi_id: String,
    pub seq: i64,
    pub tour_id: String,
    pub kind: TourEventKind,
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub meter_cents: Option<i64>,
    /// Bridge clock when it was received.
    pub received_ms: i64,
}

impl StoredEvent {
    /// The event as a taxi would have sent it (JSON), for the dead-letter row.
    pub fn to_json(&self) -> Vec<u8> {
        let event = wire::TourEvent {
            seq: u64::try_from(self.seq).unwrap_or(0),
            tour_id: self.tour_id.clone(),
            kind: self.kind,
            ts_ms: self.ts_ms,
            lat: self.lat,
            lon: self.lon,
            meter_cents: self.meter_cents.and_then(|m| u64::try_from(m).ok()),
        };
        wire::encode_json(&event)
    }

    /// Same device time, place and meter reading as a stored start or end.
    fn same_as(&self, ts_ms: i64, lat: f64, lon: f64, meter_cents: Option<i64>) -> bool {
        self.ts_ms == ts_ms && self.lat == lat && self.lon == lon && self.meter_cents == meter_cents
    }
}

/// Where a tour stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TourState {
    Started,
    Ended,
}

impl TourState {
    pub fn as_str(self) -> &'static str {
        match self {
            TourState::Started => "started",
            TourState::Ended => "ended",
        }
    }

    pub fn parse(text: &str) -> Option<TourState> {
        match text {
            "started" => Some(TourState::Started),
            "ended" => Some(TourState::Ended),
            _ => None,
        }
    }
}

/// A row of `tours`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tour {
    pub tour_id: String,
    pub taxi_id: String,
    pub state: TourState,
    pub started_ms: i64,
    pub start_lat: f64,
    pub start_lon: f64,
    pub start_meter_cents: Option<i64>,
    /// Set once ended.
    pub end: Option<TourEnd>,
}

/// How a tour ended.
#[derive(Clone, Debug, PartialEq)]
pub struct TourEnd {
    pub ended_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub meter_cents: Option<i64>,
}

/// Why an event was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// `ended` for a tour never started.
    EndWithoutStart,
    /// `started` for a tour already started (with other values).
    SecondStart,
    /// `ended` for a tour already ended (with other values).
    SecondEnd,
    /// `ended` with a device time before the tour's start.
    EndBeforeStart,
    /// The tour id belongs to a tour of another taxi.
    OtherTaxi { owner: String },
}

impl Rejection {
    /// The `reason_code` in `dead_letters` and `tour_events`.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::EndWithoutStart => "tour_end_without_start",
            Rejection::SecondStart => "tour_second_start",
            Rejection::SecondEnd => "tour_second_end",
            Rejection::EndBeforeStart => "tour_end_before_start",
            Rejection::OtherTaxi { .. } => "tour_other_taxi",
        }
    }

    /// The readable reason.
    pub fn reason(&self, event: &StoredEvent) -> String {
        let tour = &event.tour_id;
        match self {
            Rejection::EndWithoutStart => format!("tour {tour:?} ended but was never started"),
            Rejection::SecondStart => {
                format!("tour {tour:?} was already started (with another time, place or meter)")
            }
            Rejection::SecondEnd => {
                format!("tour {tour:?} was already ended (with another time, place or meter)")
            }
            Rejection::EndBeforeStart => {
                format!("tour {tour:?} ends (device time) before it started")
            }
            Rejection::OtherTaxi { owner } => {
                format!(
                    "tour {tour:?} is a tour of taxi {owner:?}, not {:?}",
                    event.taxi_id
                )
            }
        }
    }
}

/// What an event does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Opens a new tour.
    Start,
    /// Ends the (started) tour: fare and invoice follow.
    End,
    /// The same event again: nothing changes.
    Repeated,
    Rejected(Rejection),
}

/// Decides what `event` does to `tour` (the stored tour with the event's id, if any).
pub fn judge(tour: Option<&Tour>, event: &StoredEvent) -> Verdict {
    let Some(tour) = tour else {
        return match event.kind {
            TourEventKind::Started => Verdict::Start,
            TourEventKind::Ended => Verdict::Rejected(Rejection::EndWithoutStart),
        };
    };
    if tour.taxi_id != event.taxi_id {
        return Verdict::Rejected(Rejection::OtherTaxi {
            owner: tour.taxi_id.clone(),
        });
    }
    match event.kind {
        TourEventKind::Started => {
            if event.same_as(
                tour.started_ms,
                tour.start_lat,
                tour.start_lon,
                tour.start_meter_cents,
            ) {
                Verdict::Repeated
            } else {
                Verdict::Rejected(Rejection::SecondStart)
            }
        }
        TourEventKind::Ended => match &tour.end {
            Some(end) if event.same_as(end.ended_ms, end.lat, end.lon, end.meter_cents) => {
                Verdict::Repeated
            }
            Some(_) => Verdict::Rejected(Rejection::SecondEnd),
            None if event.ts_ms < tour.started_ms => Verdict::Rejected(Rejection::EndBeforeStart),
            None => Verdict::End,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(taxi: &str, kind: TourEventKind, ts_ms: i64, meter: Option<i64>) -> StoredEvent {
        StoredEvent {
            taxi_id: taxi.into(),
            seq: ts_ms,
            tour_id: "t-1".into(),
            kind,
            ts_ms,
            lat: 52.5,
            lon: 13.4,
            meter_cents: meter,
            received_ms: ts_ms + 5,
        }
    }

    fn started(taxi: &str, ts_ms: i64) -> Tour {
        Tour {
            tour_id: "t-1".into(),
            taxi_id: taxi.into(),
            state: TourState::Started,
            started_ms: ts_ms,
            start_lat: 52.5,
            start_lon: 13.4,
            start_meter_cents: Some(390),
            end: None,
        }
    }

    use TourEventKind::{Ended, Started};

    #[test]
    fn start_then_end() {
        assert_eq!(
            judge(None, &event("a", Started, 100, Some(390))),
            Verdict::Start
        );
        let tour = started("a", 100);
        assert_eq!(
            judge(Some(&tour), &event("a", Ended, 200, Some(900))),
            Verdict::End
        );
    }

    #[test]
    fn lifecycle_violations() {
        let reject = |tour: Option<&Tour>, e: StoredEvent| match judge(tour, &e) {
            Verdict::Rejected(r) => r.code(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reject(None, event("a", Ended, 200, Some(900))),
            "tour_end_without_start"
        );
        let tour = started("a", 100);
        assert_eq!(
            reject(Some(&tour), event("a", Started, 150, Some(390))),
            "tour_second_start"
        );
        assert_eq!(
            reject(Some(&tour), event("b", Started, 100, Some(390))),
            "tour_other_taxi"
        );
        assert_eq!(
            reject(Some(&tour), event("b", Ended, 200, Some(900))),
            "tour_other_taxi"
        );
        assert_eq!(
            reject(Some(&tour), event("a", Ended, 50, Some(900))),
            "tour_end_before_start"
        );
        let mut ended = tour.clone();
        ended.state = TourState::Ended;
        ended.end = Some(TourEnd {
            ended_ms: 200,
            lat: 52.5,
            lon: 13.4,
            meter_cents: Some(900),
        });
        assert_eq!(
            reject(Some(&ended), event("a", Ended, 300, Some(1_000))),
            "tour_second_end"
        );
    }

    #[test]
    fn the_same_event_again_is_repeated() {
        let mut tour = started("a", 100);
        assert_eq!(
            judge(Some(&tour), &event("a", Started, 100, Some(390))),
            Verdict::Repeated
        );
        tour.state = TourState::Ended;
        tour.end = Some(TourEnd {
            ended_ms: 200,
            lat: 52.5,
            lon: 13.4,
            meter_cents: Some(900),
        });
        assert_eq!(
            judge(Some(&tour), &event("a", Ended, 200, Some(900))),
            Verdict::Repeated
        );
        assert_eq!(
            judge(Some(&tour), &event("a", Started, 100, Some(390))),
            Verdict::Repeated
        );
    }

    #[test]
    fn dead_letter_payload_is_the_event_as_json() {
        let json = event("a", Ended, 200, Some(900)).to_json();
        let back: wire::TourEvent = wire::decode(&json).unwrap();
        assert_eq!(
            (back.seq, back.ts_ms, back.meter_cents),
            (200, 200, Some(900))
        );
    }
}
