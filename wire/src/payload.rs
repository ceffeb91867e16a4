//! Payload types: one struct per topic kind, with units in field names, and their value rules.
//!
//! Field names are the JSON field names, and the field order is the postcard field order, so
//! neither may change without a new schema version. Every message a taxi sends carries `seq`,
//! a counter per taxi and topic kind; `(taxi id, topic kind, seq)` identifies a message, and the
//! taxi id always comes from the topic, never from the payload.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::topic::TopicKind;

/// Longest `tour_id` / `order_id`, in bytes.
pub const MAX_REF_ID_LEN: usize = 128;

/// A position fix, on `taxi/<id>/position`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Per taxi sequence number of position messages.
    pub seq: u64,
    /// Device time of the fix, unix milliseconds.
    pub ts_ms: i64,
    /// Latitude, degrees WGS84, -90..=90.
    pub lat: f64,
    /// Longitude, degrees WGS84, -180..=180.
    pub lon: f64,
    /// Ground speed, km/h, >= 0.
    pub speed_kmh: Option<f32>,
    /// Course over ground, degrees clockwise from true north, 0..360.
    pub heading_deg: Option<f32>,
    /// Horizontal accuracy (radius), metres, >= 0.
    pub accuracy_m: Option<f32>,
}

/// What happened to a tour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TourEventKind {
    Started,
    Ended,
}

/// A tour started or ended, on `taxi/<id>/tour`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TourEvent {
    /// Per taxi sequence number of tour messages.
    pub seq: u64,
    /// The taxi's id for the tour, the same in its `started` and `ended` events.
    pub tour_id: String,
    pub kind: TourEventKind,
    /// Device time of the event, unix milliseconds.
    pub ts_ms: i64,
    /// Latitude, degrees WGS84.
    pub lat: f64,
    /// Longitude, degrees WGS84.
    pub lon: f64,
    /// Taximeter reading, cents.
    pub meter_cents: Option<u64>,
}

/// What an inbox message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboxKind {
    Order,
    Message,
    Invoice,
}

/// An order or message for one taxi, on `taxi/<id>/inbox`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboxMessage {
    /// Identifies the message; the taxi's acks refer to it. A repeated `order_id` is the same
    /// message sent again.
    pub order_id: String,
    pub kind: InboxKind,
    /// Text for the driver.
    pub text: String,
    /// When the platform created the message, unix milliseconds.
    pub created_ms: i64,
    /// After this time (unix milliseconds) the message is void.
    pub expires_ms: Option<i64>,
}

/// How a taxi answers an inbox message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckState {
    /// The message reached the taxi.
    Received,
    /// The driver accepted it.
    Accepted,
    /// The driver (or the taxi, e.g. for an expired message) rejected it.
    Rejected,
}

/// The answer to an inbox message, on `taxi/<id>/ack`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// Per taxi sequence number of ack messages.
    pub seq: u64,
    /// The `order_id` of the inbox message answered.
    pub order_id: String,
    pub state: AckState,
    /// Device time of the answer, unix milliseconds.
    pub ts_ms: i64,
    /// Why, mostly for `rejected`.
    pub reason: Option<String>,
}

/// Whether a taxi is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    Online,
    Offline,
}

/// A taxi's connection state, retained on `taxi/<id>/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: StatusState,
    /// When the state began, unix milliseconds.
    pub at_ms: i64,
}

/// The topic the platform publishes every [`Invoice`] on, for the backoffice.
pub const INVOICES_TOPIC: &str = "backoffice/invoices";

/// The invoice of one ended tour, published by the platform on [`INVOICES_TOPIC`] (JSON
/// only, QoS 1, not retained). Published at least once: a consumer may see the same
/// `tour_id` twice and should keep the first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    pub tour_id: String,
    pub taxi_id: String,
    /// Device times of the tour's `started` and `ended` events, unix milliseconds.
    pub started_ms: i64,
    pub ended_ms: i64,
    /// Distance driven (waiting excluded), metres, rounded.
    pub distance_m: u64,
    /// Time driving and waiting, seconds, rounded.
    pub driving_s: u64,
    pub waiting_s: u64,
    pub base_cents: u64,
    pub distance_cents: u64,
    pub driving_cents: u64,
    pub waiting_cents: u64,
    pub night_cents: u64,
    pub zone_cents: u64,
    /// Names of the zones whose surcharge applies.
    pub zones: Vec<String>,
    /// The fare: the sum of the parts above.
    pub fare_cents: u64,
    /// ISO 4217 code of every amount.
    pub currency: String,
    /// The taximeter reading of the `ended` event, if it had one.
    pub meter_cents: Option<u64>,
    /// `meter_cents - fare_cents`.
    pub difference_cents: Option<i64>,
    /// The meter reading is missing or differs from the fare by more than the tolerance.
    pub flagged: bool,
    pub flag_reason: Option<String>,
    /// The inbox message telling the taxi (`kind` `invoice`).
    pub order_id: String,
    /// When the invoice was issued, unix milliseconds.
    pub issued_ms: i64,
}

impl Invoice {
    /// The JSON published on [`INVOICES_TOPIC`].
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of plain fields always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads an invoice published on [`INVOICES_TOPIC`].
    pub fn from_json(bytes: &[u8]) -> Result<Invoice, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A field whose value breaks the contract's rules, e.g. a latitude of 123.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidField {
    pub field: &'static str,
    pub problem: &'static str,
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field {}: {}", self.field, self.problem)
    }
}

impl std::error::Error for InvalidField {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Position {}
    impl Sealed for super::TourEvent {}
    impl Sealed for super::InboxMessage {}
    impl Sealed for super::Ack {}
    impl Sealed for super::Status {}
}

/// A payload type of the contract. Implemented by exactly the five payload types.
pub trait Message:
    Serialize + DeserializeOwned + fmt::Debug + Clone + PartialEq + sealed::Sealed
{
    /// The topic kind carrying this type.
    const KIND: TopicKind;

    /// Checks the value rules (ranges, finite numbers, non-empty ids).
    fn validate(&self) -> Result<(), InvalidField>;

    /// The sequence number, for the types a taxi sends with one (position, tour, ack).
    fn seq(&self) -> Option<u64>;
}

fn invalid(field: &'static str, problem: &'static str) -> Result<(), InvalidField> {
    Err(InvalidField { field, problem })
}

fn check_lat_lon(lat: f64, lon: f64) -> Result<(), InvalidField> {
    if !(-90.0..=90.0).contains(&lat) {
        return invalid("lat", "must be a number from -90 to 90");
    }
    if !(-180.0..=180.0).contains(&lon) {
        return invalid("lon", "must be a number from -180 to 180");
    }
    Ok(())
}

fn check_non_negative(field: &'static str, value: Option<f32>) -> Result<(), InvalidField> {
    match value {
        Some(v) if !(v.is_finite() && v >= 0.0) => invalid(field, "must be a finite number >= 0"),
        _ => Ok(()),
    }
}

fn check_ref_id(field: &'static str, id: &str) -> Result<(), InvalidField> {
    if id.is_empty() {
        return invalid(field, "must not be empty");
    }
    if id.len() > MAX_REF_ID_LEN {
        return invalid(field, "must be at most 128 bytes");
    }
    Ok(())
}

impl Message for Position {
    const KIND: TopicKind = TopicKind::Position;

    fn validate(&self) -> Result<(), InvalidField> {
        check_lat_lon(self.lat, self.lon)?;
        check_non_negative("speed_kmh", self.speed_kmh)?;
        if let Some(h) = self.heading_deg {
            if !(0.0..360.0).contains(&h) {
                return invalid("heading_deg", "must be a number from 0 to below 360");
            }
        }
        check_non_negative("accuracy_m", self.accuracy_m)
    }

    fn seq(&self) -> Option<u64> {
        Some(self.seq)
    }
}

impl Message for TourEvent {
    const KIND: TopicKind = TopicKind::Tour;

    fn validate(&self) -> Result<(), InvalidField> {
        check_ref_id("tour_id", &self.tour_id)?;
        check_lat_lon(self.lat, self.lon)
    }

    fn seq(&self) -> Option<u64> {
        Some(self.seq)
    }
}

impl Message for InboxMessage {
    const KIND: TopicKind = TopicKind::Inbox;

    fn validate(&self) -> Result<(), InvalidField> {
        check_ref_id("order_id", &self.order_id)
    }

    fn seq(&self) -> Option<u64> {
        None
    }
}

impl Message for Ack {
    const KIND: TopicKind = TopicKind::Ack;

    fn validate(&self) -> Result<(), InvalidField> {
        check_ref_id("order_id", &self.order_id)
    }

    fn seq(&self) -> Option<u64> {
        Some(self.seq)
    }
}

impl Message for Status {
    const KIND: TopicKind = TopicKind::Status;

    fn validate(&self) -> Result<(), InvalidField> {
        Ok(())
    }

    fn seq(&self) -> Option<u64> {
        None
    }
}

/// A decoded payload of any kind, for code that handles every topic (see
/// [`decode_payload`](crate::decode_payload)).
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    Position(Position),
    Tour(TourEvent),
    Inbox(InboxMessage),
    Ack(Ack),
    Status(Status),
}

impl Payload {
    pub fn kind(&self) -> TopicKind {
        match self {
            Payload::Position(_) => TopicKind::Position,
            Payload::Tour(_) => TopicKind::Tour,
            Payload::Inbox(_) => TopicKind::Inbox,
            Payload::Ack(_) => TopicKind::Ack,
            Payload::Status(_) => TopicKind::Status,
        }
    }

    /// The sequence number, for position, tour and ack.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Payload::Position(m) => m.seq(),
            Payload::Tour(m) => m.seq(),
            Payload::Inbox(m) => m.seq(),
            Payload::Ack(m) => m.seq(),
            Payload::Status(m) => m.seq(),
        }
    }
}

macro_rules! payload_from {
    ($($ty:ty => $variant:ident),*) => {$(
        impl From<$ty> for Payload {
            fn from(m: $ty) -> Payload {
                Payload::$variant(m)
            }
        }
    )*};
}

payload_from!(Position => Position, TourEvent => Tour, InboxMessage => Inbox, Ack => Ack, Status => Status);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn position() -> Position {
        Position {
            seq: 1_732_200_000_123,
            ts_ms: 1_732_200_000_000,
            lat: 52.520008,
            lon: 13.404954,
            speed_kmh: Some(31.5),
            heading_deg: Some(270.0),
            accuracy_m: Some(4.0),
        }
    }

    pub fn tour() -> TourEvent {
        TourEvent {
            seq: 17,
            tour_id: "t-20241121-0007".into(),
            kind: TourEventKind::Ended,
            ts_ms: 1_732_201_800_000,
            lat: 52.5,
            lon: 13.4,
            meter_cents: Some(2340),
        }
    }

    pub fn inbox() -> InboxMessage {
        InboxMessage {
            order_id: "o-981".into(),
            kind: InboxKind::Order,
            text: "Pick-up Alexanderplatz 1, Müller".into(),
            created_ms: 1_732_200_100_000,
            expires_ms: Some(1_732_200_400_000),
        }
    }

    pub fn ack() -> Ack {
        Ack {
            seq: 5,
            order_id: "o-981".into(),
            state: AckState::Rejected,
            ts_ms: 1_732_200_130_000,
            reason: Some("busy".into()),
        }
    }

    pub fn status() -> Status {
        Status {
            state: StatusState::Offline,
            at_ms: 1_732_200_000_000,
        }
    }

    #[test]
    fn invoice_json_round_trip() {
        let invoice = Invoice {
            tour_id: "t-1".into(),
            taxi_id: "taxi-042".into(),
            started_ms: 1_732_200_600_000,
            ended_ms: 1_732_201_800_000,
            distance_m: 5_000,
            driving_s: 540,
            waiting_s: 240,
            base_cents: 390,
            distance_cents: 1_000,
            driving_cents: 0,
            waiting_cents: 200,
            night_cents: 0,
            zone_cents: 0,
            zones: vec![],
            fare_cents: 1_590,
            currency: "EUR".into(),
            meter_cents: Some(2_340),
            difference_cents: Some(750),
            flagged: true,
            flag_reason: Some("meter 7.50 EUR above the fare".into()),
            order_id: "invoice-t-1".into(),
            issued_ms: 1_732_201_803_000,
        };
        let json = invoice.to_json();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["fare_cents"], 1_590);
        assert_eq!(value["difference_cents"], 750);
        assert_eq!(Invoice::from_json(&json).unwrap(), invoice);
    }

    #[test]
    fn samples_are_valid() {
        assert_eq!(position().validate(), Ok(()));
        assert_eq!(tour().validate(), Ok(()));
        assert_eq!(inbox().validate(), Ok(()));
        assert_eq!(ack().validate(), Ok(()));
        assert_eq!(status().validate(), Ok(()));
    }

    #[test]
    fn value_rules() {
        let field = |r: Result<(), InvalidField>| r.err().map(|e| e.field);
        let p = |f: fn(&mut Position)| {
            let mut p = position();
            f(&mut p);
            field(p.validate())
        };
        assert_eq!(p(|p| p.lat = 90.5), Some("lat"));
        assert_eq!(p(|p| p.lat = f64::NAN), Some("lat"));
        assert_eq!(p(|p| p.lon = -180.1), Some("lon"));
        assert_eq!(p(|p| p.lon = f64::INFINITY), Some("lon"));
        assert_eq!(p(|p| p.speed_kmh = Some(-1.0)), Some("speed_kmh"));
        assert_eq!(p(|p| p.speed_kmh = Some(f32::NAN)), Some("speed_kmh"));
        assert_eq!(p(|p| p.heading_deg = Some(360.0)), Some("heading_deg"));
        assert_eq!(
            p(|p| p.accuracy_m = Some(f32::INFINITY)),
            Some("accuracy_m")
        );
        assert_eq!(p(|p| p.lat = -90.0), None);
        assert_eq!(p(|p| p.lon = 180.0), None);
        assert_eq!(p(|p| p.speed_kmh = None), None);

        let mut t = tour();
        t.tour_id.clear();
        assert_eq!(field(t.validate()), Some("tour_id"));
        let mut a = ack();
        a.order_id = "x".repeat(MAX_REF_ID_LEN + 1);
        assert_eq!(field(a.validate()), Some("order_id"));
        let mut i = inbox();
        i.order_id = String::new();
        assert_eq!(field(i.validate()), Some("order_id"));
    }

    #[test]
    fn payload_kind_and_seq() {
        assert_eq!(Payload::from(position()).kind(), TopicKind::Position);
        assert_eq!(Payload::from(tour()).seq(), Some(17));
        assert_eq!(Payload::from(inbox()).seq(), None);
        assert_eq!(Payload::from(ack()).kind(), TopicKind::Ack);
        assert_eq!(Payload::from(status()).kind(), TopicKind::Status);
        assert_eq!(Position::KIND, TopicKind::Position);
        assert_eq!(Status::KIND, TopicKind::Status);
    }
}
