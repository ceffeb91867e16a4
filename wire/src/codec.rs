//! The payload codec: the postcard envelope and JSON, both accepted on every topic.
//!
//! - postcard envelope: the schema version byte ([`POSTCARD_V1`]), then the postcard encoding of
//!   the message struct.
//! - JSON: a UTF-8 JSON object, first non-whitespace byte `{`.
//!
//! The version byte `1` is never `{` or JSON whitespace, so the first byte tells the two apart.
//! Decoding never panics: any input gives a message or a [`DecodeError`] saying why not.

use crate::payload::{InvalidField, Message, Payload};
use crate::topic::TopicKind;

/// Largest payload accepted, in bytes (64 KiB). Checked before anything else.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Version byte of the current postcard schema.
pub const POSTCARD_V1: u8 = 1;

/// How a payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Version byte `1`, then postcard.
    PostcardV1,
    /// A JSON object.
    Json,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::PostcardV1 => "postcard-v1",
            Encoding::Json => "json",
        }
    }
}

/// Why a payload could not be decoded. The `Display` text is meant for dead letters.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is empty")]
    Empty,
    #[error("payload is {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error(
        "unknown payload format: first byte 0x{0:02x} is neither '{{' (JSON) \
         nor a known schema version (1)"
    )]
    UnknownVersion(u8),
    #[error("invalid postcard v1 payload: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("invalid postcard v1 payload: {0} unexpected bytes after the message")]
    TrailingBytes(usize),
    #[error("invalid JSON payload: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid value: {0}")]
    Invalid(#[from] InvalidField),
}

impl DecodeError {
    /// A short stable code for the reason, for metrics labels and dead-letter columns.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::UnknownVersion(_) => "unknown_version",
            DecodeError::Postcard(_) | DecodeError::TrailingBytes(_) => "postcard",
            DecodeError::Json(_) => "json",
            DecodeError::Invalid(_) => "invalid_value",
        }
    }
}

/// JSON's insignificant whitespace (RFC 8259).
fn is_json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Tells the encoding of a payload from its first bytes, after the size check.
pub fn detect_encoding(bytes: &[u8]) -> Result<Encoding, DecodeError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&POSTCARD_V1) => Ok(Encoding::PostcardV1),
        Some(_) => match bytes.iter().find(|b| !is_json_whitespace(**b)) {
            None => Err(DecodeError::Empty),
            Some(b'{') => Ok(Encoding::Json),
            Some(&other) => Err(DecodeError::UnknownVersion(other)),
        },
    }
}

/// Decodes a payload in either encoding and checks its value rules.
pub fn decode<T: Message>(bytes: &[u8]) -> Result<T, DecodeError> {
    let message: T = match detect_encoding(bytes)? {
        Encoding::PostcardV1 => {
            let (message, rest) = postcard::take_from_bytes(&bytes[1..])?;
            if !rest.is_empty() {
                return Err(DecodeError::TrailingBytes(rest.len()));
            }
            message
        }
        Encoding::Json => serde_json::from_slice(bytes)?,
    };
    message.validate()?;
    Ok(message)
}

/// Decodes the payload of a topic of the given kind.
pub fn decode_payload(kind: TopicKind, bytes: &[u8]) -> Result<Payload, DecodeError> {
    Ok(match kind {
        TopicKind::Position => Payload::Position(decode(bytes)?),
        TopicKind::Tour => Payload::Tour(decode(bytes)?),
        TopicKind::Inbox => Payload::Inbox(decode(bytes)?),
        TopicKind::Ack => Payload::Ack(decode(bytes)?),
        TopicKind::Status => Payload::Status(decode(bytes)?),
    })
}

/// Encodes a message as a postcard v1 envelope: version byte, then postcard.
///
/// Does not check [`MAX_PAYLOAD_BYTES`] or the value rules; a long text can exceed the limit.
pub fn encode_postcard<T: Message>(message: &T) -> Vec<u8> {
    // The five message types contain only integers, floats, strings, options and unit enums,
    // which postcard always serializes into a growable vector.
    postcard::to_extend(message, vec![POSTCARD_V1])
        .expect("postcard serialization of a wire message cannot fail")
}

/// Encodes a message as a compact JSON object.
///
/// Does not check [`MAX_PAYLOAD_BYTES`] or the value rules. Non-finite floats become `null`.
pub fn encode_json<T: Message>(message: &T) -> Vec<u8> {
    // Structs with string keys and plain fields always serialize into a vector.
    serde_json::to_vec(message).expect("JSON serialization of a wire message cannot fail")
}

/// Encodes a message in the given encoding.
pub fn encode<T: Message>(message: &T, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::PostcardV1 => encode_postcard(message),
        Encoding::Json => encode_json(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::tests::{ack, inbox, position, status, tour};
    use crate::payload::*;

    const TOPICS_MD: &str = include_str!("../../topics.md");

    fn roundtrip<T: Message>(message: T) {
        let postcard = encode_postcard(&message);
        assert_eq!(postcard[0], POSTCARD_V1);
        assert_eq!(detect_encoding(&postcard).unwrap(), Encoding::PostcardV1);
        assert_eq!(decode::<T>(&postcard).unwrap(), message);

        let json = encode_json(&message);
        assert_eq!(json[0], b'{');
        assert_eq!(detect_encoding(&json).unwrap(), Encoding::Json);
        assert_eq!(decode::<T>(&json).unwrap(), message);

        for encoding in [Encoding::PostcardV1, Encoding::Json] {
            let bytes = encode(&message, encoding);
            assert_eq!(decode_payload(T::KIND, &bytes).unwrap().kind(), T::KIND);
        }
        // Every strict prefix of a postcard message is an error, never a panic.
        for len in 0..postcard.len() {
            assert!(decode::<T>(&postcard[..len]).is_err());
        }
    }

    #[test]
    fn roundtrips() {
        roundtrip(position());
        roundtrip(tour());
        roundtrip(inbox());
        roundtrip(ack());
        roundtrip(status());
        roundtrip(Position {
            speed_kmh: None,
            heading_deg: None,
            accuracy_m: None,
            ..position()
        });
        roundtrip(TourEvent {
            kind: TourEventKind::Started,
            meter_cents: None,
            ..tour()
        });
        roundtrip(InboxMessage {
            kind: InboxKind::Invoice,
            expires_ms: None,
            text: String::new(),
            ..inbox()
        });
        roundtrip(Ack {
            state: AckState::Accepted,
            reason: None,
            ..ack()
        });
        roundtrip(Status {
            state: StatusState::Online,
            at_ms: -1,
        });
    }

    #[test]
    fn json_field_names_and_enum_spelling() {
        let json = String::from_utf8(encode_json(&tour())).unwrap();
        assert_eq!(
            json,
            r#"{"seq":17,"tour_id":"t-20241121-0007","kind":"ended","ts_ms":1732201800000,"lat":52.5,"lon":13.4,"meter_cents":2340}"#
        );
        let json = String::from_utf8(encode_json(&status())).unwrap();
        assert_eq!(json, r#"{"state":"offline","at_ms":1732200000000}"#);
        for (value, text) in [
            (serde_json::to_string(&InboxKind::Order), "\"order\""),
            (serde_json::to_string(&InboxKind::Message), "\"message\""),
            (serde_json::to_string(&InboxKind::Invoice), "\"invoice\""),
            (serde_json::to_string(&AckState::Received), "\"received\""),
            (serde_json::to_string(&AckState::Accepted), "\"accepted\""),
            (serde_json::to_string(&AckState::Rejected), "\"rejected\""),
            (
                serde_json::to_string(&TourEventKind::Started),
                "\"started\"",
            ),
            (serde_json::to_string(&StatusState::Online), "\"online\""),
        ] {
            assert_eq!(value.unwrap(), text);
        }
    }

    #[test]
    fn postcard_layout_is_stable() {
        // Status { state: Online (variant 0), at_ms: 1 (zigzag varint 2) }.
        let bytes = encode_postcard(&Status {
            state: StatusState::Online,
            at_ms: 1,
        });
        assert_eq!(bytes, [1, 0, 2]);
        // Ack { seq: 300 (varint ac 02), "o" , Rejected (2), ts_ms: -1 (zigzag 1), None }.
        let bytes = encode_postcard(&Ack {
            seq: 300,
            order_id: "o".into(),
            state: AckState::Rejected,
            ts_ms: -1,
            reason: None,
        });
        assert_eq!(bytes, [1, 0xac, 0x02, 1, b'o', 2, 1, 0]);
    }

    #[test]
    fn json_leniency() {
        // Leading whitespace, missing optional fields, null optionals, unknown fields.
        let p: Position = decode(b" \n\t{\"seq\":1,\"ts_ms\":2,\"lat\":1.5,\"lon\":-2}").unwrap();
        assert_eq!(p.speed_kmh, None);
        assert_eq!(p.lon, -2.0);
        let p: Position =
            decode(br#"{"seq":1,"ts_ms":2,"lat":1,"lon":2,"speed_kmh":null,"battery_pct":80}"#)
                .unwrap();
        assert_eq!(p.speed_kmh, None);
        // Required fields, types and enum spellings are strict.
        for bad in [
            &br#"{"seq":1,"ts_ms":2,"lat":1}"#[..],
            br#"{"seq":-1,"ts_ms":2,"lat":1,"lon":2}"#,
            br#"{"seq":"1","ts_ms":2,"lat":1,"lon":2}"#,
            br#"{"seq":1,"ts_ms":2,"lat":1,"lon":2} x"#,
            br#"{"seq":1,"ts_ms":2,"lat":1,"lon":2"#,
        ] {
            assert!(matches!(decode::<Position>(bad), Err(DecodeError::Json(_))));
        }
        assert!(matches!(
            decode::<Status>(br#"{"state":"Online","at_ms":1}"#),
            Err(DecodeError::Json(_))
        ));
        // Duplicate fields are refused.
        assert!(matches!(
            decode::<Status>(br#"{"state":"online","state":"offline","at_ms":1}"#),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn value_rules_apply_to_both_encodings() {
        let bad = Position {
            lat: 91.0,
            ..position()
        };
        for bytes in [encode_postcard(&bad), encode_json(&bad)] {
            let err = decode::<Position>(&bytes).unwrap_err();
            assert!(matches!(
                err,
                DecodeError::Invalid(InvalidField { field: "lat", .. })
            ));
            assert_eq!(err.code(), "invalid_value");
        }
        // NaN survives postcard and is refused; in JSON it is written as null and refused too.
        let nan = Position {
            lon: f64::NAN,
            ..position()
        };
        assert!(matches!(
            decode::<Position>(&encode_postcard(&nan)),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            decode::<Position>(&encode_json(&nan)),
            Err(DecodeError::Json(_))
        ));
        // Out of range for f32 is infinite, which is refused.
        assert!(matches!(
            decode::<Position>(br#"{"seq":1,"ts_ms":2,"lat":1,"lon":2,"speed_kmh":1e300}"#),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn error_cases() {
        assert!(matches!(decode::<Status>(b""), Err(DecodeError::Empty)));
        assert!(matches!(
            decode::<Status>(b" \r\n\t "),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            decode::<Status>(&[0, 0, 2]),
            Err(DecodeError::UnknownVersion(0))
        ));
        assert!(matches!(
            decode::<Status>(&[2, 0, 2]),
            Err(DecodeError::UnknownVersion(2))
        ));
        assert!(matches!(
            decode::<Status>(b"[\"online\",1]"),
            Err(DecodeError::UnknownVersion(b'['))
        ));
        assert!(matches!(
            decode::<Status>(b"  online"),
            Err(DecodeError::UnknownVersion(b'o'))
        ));
        assert!(matches!(
            decode::<Status>(&[1]),
            Err(DecodeError::Postcard(_))
        ));
        // Unknown enum variant index.
        assert!(matches!(
            decode::<Status>(&[1, 7, 2]),
            Err(DecodeError::Postcard(_))
        ));
        assert!(matches!(
            decode::<Status>(&[1, 0, 2, 0]),
            Err(DecodeError::TrailingBytes(1))
        ));
        // A string length far beyond the input.
        assert!(matches!(
            decode::<Ack>(&[1, 1, 0xff, 0xff, 0xff, 0x0f, b'o']),
            Err(DecodeError::Postcard(_))
        ));
        // Invalid UTF-8 in a string, in both encodings.
        assert!(decode::<Ack>(&[1, 1, 1, 0xff, 0, 2, 0]).is_err());
        assert!(matches!(
            decode::<Ack>(b"{\"seq\":1,\"order_id\":\"\xff\",\"state\":\"received\",\"ts_ms\":1}"),
            Err(DecodeError::Json(_))
        ));
        // JSON nested past serde_json's recursion limit.
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            decode::<Status>(deep.as_bytes()),
            Err(DecodeError::Json(_))
        ));
        for (err, code) in [
            (DecodeError::Empty, "empty"),
            (DecodeError::UnknownVersion(9), "unknown_version"),
            (DecodeError::TrailingBytes(1), "postcard"),
        ] {
            assert_eq!(err.code(), code);
        }
        assert_eq!(
            DecodeError::UnknownVersion(0x5b).to_string(),
            "unknown payload format: first byte 0x5b is neither '{' (JSON) nor a known schema version (1)"
        );
    }

    #[test]
    fn size_limit_is_checked_first() {
        let mut json = encode_json(&status());
        json.resize(MAX_PAYLOAD_BYTES, b' ');
        assert_eq!(decode::<Status>(&json).unwrap(), status());
        json.push(b' ');
        let err = decode::<Status>(&json).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::TooLarge { len, max: MAX_PAYLOAD_BYTES } if len == MAX_PAYLOAD_BYTES + 1
        ));
        assert_eq!(err.code(), "too_large");
        let huge = vec![0u8; 10 * 1024 * 1024];
        assert!(matches!(
            decode_payload(TopicKind::Position, &huge),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    /// xorshift64*, enough to throw varied bytes at the decoders reproducibly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_and_mutated_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let samples = [
            encode_postcard(&position()),
            encode_postcard(&tour()),
            encode_postcard(&inbox()),
            encode_postcard(&ack()),
            encode_postcard(&status()),
            encode_json(&position()),
            encode_json(&tour()),
            encode_json(&inbox()),
            encode_json(&ack()),
            encode_json(&status()),
        ];
        for round in 0..20_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let len = rng.below(200) as usize;
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                match (round / 2) % 3 {
                    0 if len > 0 => bytes[0] = POSTCARD_V1,
                    1 if len > 0 => bytes[0] = b'{',
                    _ => {}
                }
                bytes
            } else {
                let mut bytes = samples[rng.below(samples.len() as u64) as usize].clone();
                for _ in 0..=rng.below(4) {
                    let at = rng.below(bytes.len() as u64) as usize;
                    match rng.below(3) {
                        0 => bytes[at] = rng.next() as u8,
                        1 => bytes.truncate(at.max(1)),
                        _ => bytes.insert(at, rng.next() as u8),
                    }
                }
                bytes
            };
            for kind in TopicKind::ALL {
                if let Err(err) = decode_payload(kind, &bytes) {
                    assert!(!err.to_string().is_empty());
                    if bytes.is_empty() {
                        assert!(matches!(err, DecodeError::Empty));
                    }
                }
            }
        }
    }

    /// The topic kind of the `## ... taxi/<id>/<kind>` section a line of topics.md is in.
    fn section_kind(heading: &str) -> Option<TopicKind> {
        let rest = heading.strip_prefix("## ")?;
        let start = rest.find("taxi/<id>/")? + "taxi/<id>/".len();
        let kind: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase())
            .collect();
        TopicKind::parse(&kind)
    }

    /// Every JSON example in topics.md (```json blocks and `-m '...'` arguments), with the kind
    /// of the topic section it appears in (the `backoffice/invoices` section aside, see
    /// [`invoice_examples`]).
    fn documented_examples() -> Vec<(TopicKind, String)> {
        let mut examples = Vec::new();
        let mut kind = None;
        let mut block: Option<String> = None;
        let mut invoices = false;
        for line in TOPICS_MD.lines() {
            if line.starts_with("## ") {
                kind = section_kind(line);
                invoices = line.contains(crate::INVOICES_TOPIC);
            }
            if invoices {
                continue;
            }
            if let Some(text) = block.as_mut() {
                if line.starts_with("```") {
                    let k = kind.expect("a JSON example outside a topic section");
                    examples.push((k, block.take().unwrap_or_default()));
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
                continue;
            }
            if line.starts_with("```json") {
                block = Some(String::new());
                continue;
            }
            if let Some(at) = line.find("-m '") {
                let arg = &line[at + 4..];
                let end = arg.find('\'').expect("unterminated -m argument");
                let k = kind.expect("a mosquitto_pub example outside a topic section");
                examples.push((k, arg[..end].to_owned()));
            }
        }
        examples
    }

    /// The JSON examples of the `backoffice/invoices` section of topics.md.
    fn invoice_examples() -> Vec<String> {
        let section = TOPICS_MD
            .split("\n## ")
            .find(|s| s.starts_with(&format!("`{}`", crate::INVOICES_TOPIC)))
            .unwrap_or_default();
        section
            .split("```json\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn topics_md_invoice_example_decodes() {
        let examples = invoice_examples();
        assert!(!examples.is_empty(), "topics.md needs an Invoice example");
        for json in &examples {
            let invoice = crate::Invoice::from_json(json.as_bytes())
                .unwrap_or_else(|e| panic!("topics.md Invoice example: {e}\n{json}"));
            let parts = invoice.base_cents
                + invoice.distance_cents
                + invoice.driving_cents
                + invoice.waiting_cents
                + invoice.night_cents
                + invoice.zone_cents;
            assert_eq!(parts, invoice.fare_cents, "{json}");
        }
    }

    #[test]
    fn topics_md_examples_decode() {
        let examples = documented_examples();
        for kind in TopicKind::ALL {
            assert!(
                examples.iter().filter(|(k, _)| *k == kind).count() >= 2,
                "topics.md needs a JSON example and a mosquitto_pub example for {kind}"
            );
        }
        for (kind, json) in &examples {
            if let Err(err) = decode_payload(*kind, json.as_bytes()) {
                panic!("topics.md example for {kind} does not decode: {err}\n{json}");
            }
        }
    }

    #[test]
    fn topics_md_examples_have_expected_values() {
        let examples = documented_examples();
        let first = |kind: TopicKind| {
            let (_, json) = examples
                .iter()
                .find(|(k, _)| *k == kind)
                .expect("missing example");
            decode_payload(kind, json.as_bytes()).unwrap()
        };
        assert_eq!(
            first(TopicKind::Position),
            Payload::Position(Position {
                seq: 1732200000123,
                ts_ms: 1732200000000,
                lat: 52.520008,
                lon: 13.404954,
                speed_kmh: Some(31.5),
                heading_deg: Some(270.0),
                accuracy_m: Some(4.0),
            })
        );
        assert_eq!(
            first(TopicKind::Status),
            Payload::Status(Status {
                state: StatusState::Online,
                at_ms: 1732200000000,
            })
        );
        assert!(matches!(
            first(TopicKind::Tour),
            Payload::Tour(TourEvent {
                kind: TourEventKind::Started,
                ..
            })
        ));
        assert!(matches!(
            first(TopicKind::Inbox),
            Payload::Inbox(InboxMessage {
                kind: InboxKind::Order,
                ..
            })
        ));
        assert!(matches!(
            first(TopicKind::Ack),
            Payload::Ack(Ack {
                state: AckState::Accepted,
                ..
            })
        ));
    }
}
