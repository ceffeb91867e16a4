//! Payloads operators can read: for roles with `payload = "json"`, the broker delivers the
//! postcard payload of every `taxi/<id>/<kind>` message that decodes as its canonical JSON,
//! the form topics.md documents (every field, in the order of its tables). Anything else is
//! delivered as published: JSON payloads (already readable, byte for byte as their publisher
//! wrote them), other topics, payloads that do not decode.

use wire::{Encoding, Payload};

/// The canonical JSON of a postcard message on `topic`, if it is a taxi topic and the payload
/// decodes.
pub fn to_json(topic: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    if !matches!(wire::detect_encoding(payload), Ok(Encoding::PostcardV1)) {
        return None;
    }
    let topic = std::str::from_utf8(topic).ok()?;
    let (_, kind) = wire::parse_topic(topic).ok()?;
    Some(match wire::decode_payload(kind, payload).ok()? {
        Payload::Position(message) => wire::encode_json(&message),
        Payload::Tour(message) => wire::encode_json(&message),
        Payload::Inbox(message) => wire::encode_json(&message),
        Payload::Ack(message) => wire::encode_json(&message),
        Payload::Status(message) => wire::encode_json(&message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{encode_postcard, Position};

    fn documented_position() -> Position {
        Position {
            seq: 1732200000123,
            ts_ms: 1732200000000,
            lat: 52.520008,
            lon: 13.404954,
            speed_kmh: Some(31.5),
            heading_deg: Some(270.0),
            accuracy_m: Some(4.0),
        }
    }

    #[test]
    fn a_postcard_position_becomes_the_documented_json() {
        let position = documented_position();
        let json = to_json(b"taxi/taxi-042/position", &encode_postcard(&position));
        assert_eq!(
            json.as_deref().map(String::from_utf8_lossy).as_deref(),
            Some(
                r#"{"seq":1732200000123,"ts_ms":1732200000000,"lat":52.520008,"lon":13.404954,"speed_kmh":31.5,"heading_deg":270.0,"accuracy_m":4.0}"#
            )
        );
    }

    #[test]
    fn json_other_topics_and_undecodable_payloads_stay_as_they_are() {
        let json = br#"{"seq":1,"ts_ms":1,"lat":52.5,"lon":13.4}"#;
        assert_eq!(to_json(b"taxi/taxi-1/position", json), None);
        let position = encode_postcard(&documented_position());
        assert_eq!(to_json(b"backoffice/invoices", &position), None);
        assert_eq!(to_json(b"taxi/taxi-1/position", b"\x01garbage"), None);
        assert_eq!(to_json(b"taxi/taxi-1/position", b"not json"), None);
    }
}
