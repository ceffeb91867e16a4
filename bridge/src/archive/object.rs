//! Archive objects: their keys and their content, readable by standard tools.
//!
//! One object holds the messages of one spool segment that share a class and an hour:
//!
//! ```text
//! <prefix>/<class>/dt=YYYY-MM-DD/hour=HH/<bridge id>-<segment seq>.jsonl.gz
//! ```
//!
//! - `class` is the topic kind (`position`, `tour`, `ack`, `status`, `inbox`), or `other` for a
//!   topic that is not a valid `taxi/<id>/<kind>` name;
//! - `dt` and `hour` are the UTC date and hour of the bridge's receive time (`received_ms`);
//! - `segment seq` is the spool segment number, zero-padded to 12 digits, so keys of one bridge
//!   sort in write order. A segment whose messages span several classes or hours gives several
//!   objects with the same file name in different partitions.
//!
//! The content is gzip-compressed newline-delimited JSON, one line per message, in receive
//! order:
//!
//! ```text
//! {"received_ms":1732200000123,"topic":"taxi/t1/position","taxi":"t1","payload_b64":"eyJzZXEiOjF9"}
//! ```
//!
//! `taxi` is the id from the topic, or `null` when the topic does not parse; `payload_b64` is
//! the raw MQTT payload, byte for byte, in standard base64 with padding. Reading it:
//!
//! - `aws s3 cp s3://<bucket>/<key> - | zcat`
//! - DuckDB: `SELECT * FROM read_json('s3://<bucket>/raw/position/*/*/*.jsonl.gz')` (the
//!   `dt` and `hour` directories become columns), `from_base64(payload_b64)` gives the payload
//!   back;
//! - Athena: a table with `ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'` over
//!   `<prefix>/<class>/`, partitioned by `dt string, hour string` with partition projection
//!   (`storage.location.template` = `s3://<bucket>/<prefix>/<class>/dt=${dt}/hour=${hour}`).

use std::fmt;
use std::io::{BufRead, BufReader, Write};

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};

use crate::record::RawMessage;

const MS_PER_HOUR: i64 = 3_600_000;
const MS_PER_DAY: i64 = 86_400_000;

/// Which part of the archive a message belongs to: its topic kind, or `other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Position,
    Tour,
    Inbox,
    Ack,
    Status,
    /// Topics that are not a valid `taxi/<id>/<kind>` name.
    Other,
}

impl Class {
    /// Every class, in declaration order.
    pub const ALL: [Class; 6] = [
        Class::Position,
        Class::Tour,
        Class::Inbox,
        Class::Ack,
        Class::Status,
        Class::Other,
    ];

    /// The key level, e.g. `"position"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Position => "position",
            Class::Tour => "tour",
            Class::Inbox => "inbox",
            Class::Ack => "ack",
            Class::Status => "status",
            Class::Other => "other",
        }
    }

    /// The class named by a key level, if any.
    pub fn parse(level: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == level)
    }

    /// The class of a topic and the taxi id in it (`None` for `other`).
    pub fn of_topic(topic: &str) -> (Class, Option<String>) {
        match wire::parse_topic(topic) {
            Ok((taxi, kind)) => {
                let class = match kind {
                    wire::TopicKind::Position => Class::Position,
                    wire::TopicKind::Tour => Class::Tour,
                    wire::TopicKind::Inbox => Class::Inbox,
                    wire::TopicKind::Ack => Class::Ack,
                    wire::TopicKind::Status => Class::Status,
                };
                (class, Some(taxi.into_string()))
            }
            Err(_) => (Class::Other, None),
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Start of the UTC hour containing `ms` (unix milliseconds).
pub fn hour_start_ms(ms: i64) -> i64 {
    ms.div_euclid(MS_PER_HOUR) * MS_PER_HOUR
}

/// The partition levels `dt=YYYY-MM-DD/hour=HH` of a time (UTC).
pub fn partition(received_ms: i64) -> String {
    let days = received_ms.div_euclid(MS_PER_DAY);
    let hour = received_ms.rem_euclid(MS_PER_DAY) / MS_PER_HOUR;
    let (y, m, d) = civil_from_days(days);
    format!("dt={y:04}-{m:02}-{d:02}/hour={hour:02}")
}

/// `<prefix>/<class>/`, the key prefix of one class (`<class>/` with an empty prefix).
pub fn class_prefix(prefix: &str, class: Class) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        format!("{class}/")
    } else {
        format!("{prefix}/{class}/")
    }
}

/// The key of the object holding the messages of segment `seq` of `bridge_id` of one class,
/// in the hour of `received_ms`.
pub fn object_key(
    prefix: &str,
    class: Class,
    received_ms: i64,
    bridge_id: &str,
    seq: u64,
) -> String {
    format!(
        "{}{}/{bridge_id}-{seq:012}.jsonl.gz",
        class_prefix(prefix, class),
        partition(received_ms)
    )
}

/// The start of the hour partition (`dt=…/hour=…/`) at the start of `rest`, which is a key
/// with its class prefix removed; `None` if it has another shape.
pub fn parse_partition(rest: &str) -> Option<i64> {
    let rest = rest.strip_prefix("dt=")?;
    let (date, rest) = rest.split_once('/')?;
    let hour = rest.strip_prefix("hour=")?.split('/').next()?;
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let all_digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if !(all_digits(y, 4) && all_digits(m, 2) && all_digits(d, 2) && all_digits(hour, 2)) {
        return None;
    }
    let (y, m, d, h): (i64, i64, i64, i64) = (
        y.parse().ok()?,
        m.parse().ok()?,
        d.parse().ok()?,
        hour.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 {
        return None;
    }
    Some(days_from_civil(y, m, d) * MS_PER_DAY + h * MS_PER_HOUR)
}

/// Splits messages into the objects of one segment: by class and hour, each group in the
/// order of `messages`, groups ordered by class then hour.
pub fn group_by_object(messages: Vec<RawMessage>) -> Vec<((Class, i64), Vec<RawMessage>)> {
    let mut groups: std::collections::BTreeMap<(Class, i64), Vec<RawMessage>> = Default::default();
    for message in messages {
        let (class, _) = Class::of_topic(&message.topic);
        groups
            .entry((class, hour_start_ms(message.received_ms)))
            .or_default()
            .push(message);
    }
    groups.into_iter().collect()
}

#[derive(Serialize)]
struct LineOut<'a> {
    received_ms: i64,
    topic: &'a str,
    taxi: Option<String>,
    payload_b64: String,
}

#[derive(Deserialize)]
struct LineIn {
    received_ms: i64,
    topic: String,
    payload_b64: String,
}

/// The object content for `messages`: gzip of one JSON line per message, in order.
pub fn encode_object(messages: &[RawMessage]) -> Vec<u8> {
    let mut json = Vec::with_capacity(messages.len() * 128);
    for message in messages {
        let (_, taxi) = Class::of_topic(&message.topic);
        let line = LineOut {
            received_ms: message.received_ms,
            topic: &message.topic,
            taxi,
            payload_b64: base64::engine::general_purpose::STANDARD.encode(&message.payload),
        };
        // Strings and integers always serialize, and writing to a Vec cannot fail.
        serde_json::to_writer(&mut json, &line).expect("JSON of strings and integers");
        json.push(b'\n');
    }
    let mut gz = GzEncoder::new(Vec::with_capacity(json.len() / 4 + 64), Compression::fast());
    gz.write_all(&json).expect("writing to a Vec cannot fail");
    gz.finish().expect("writing to a Vec cannot fail")
}

/// The messages of an object written by [`encode_object`] (or any gzip of such JSON lines;
/// concatenated gzip members and blank lines are accepted).
pub fn decode_object(object: &[u8]) -> anyhow::Result<Vec<RawMessage>> {
    let reader = BufReader::new(MultiGzDecoder::new(object));
    let mut messages = Vec::new();
    for (n, line) in reader.split(b'\n').enumerate() {
        let line = line.context("decompressing the archive object")?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed: LineIn = serde_json::from_slice(&line)
            .with_context(|| format!("line {}: not a record", n + 1))?;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(parsed.payload_b64.as_bytes())
            .with_context(|| format!("line {}: payload_b64 is not base64", n + 1))?;
        messages.push(RawMessage {
            topic: parsed.topic,
            payload: Bytes::from(payload),
            received_ms: parsed.received_ms,
        });
    }
    Ok(messages)
}

/// (year, month, day) of a day number counted from 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Day number counted from 1970-01-01 of a (year, month, day).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &[u8], received_ms: i64) -> RawMessage {
        RawMessage {
            topic: topic.to_owned(),
            payload: Bytes::copy_from_slice(payload),
            received_ms,
        }
    }

    #[test]
    fn roundtrip_arbitrary_bytes() {
        let mut all_bytes: Vec<u8> = (0..=255u8).collect();
        all_bytes.extend_from_slice(b"\n\r\"\\{}");
        let big: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 + i / 256) as u8).collect();
        let messages = vec![
            msg("taxi/t1/position", b"{\"seq\":1}", 1_732_200_000_123),
            msg("taxi/t1/position", b"", 1),
            msg("taxi/t1/tour", &[0xFF; 17], -5),
            msg("taxi/t1/ack", &all_bytes, i64::MAX),
            msg("taxi/t1/status", &big, 0),
            msg("weird/topic/\u{e9}\"\\", &[0x01, 0x00, 0x02], 42),
            msg("", b"x", i64::MIN),
        ];
        let object = encode_object(&messages);
        assert_eq!(&object[..2], &[0x1f, 0x8b], "gzip magic");
        assert_eq!(decode_object(&object).unwrap(), messages);
        assert!(decode_object(&encode_object(&[])).unwrap().is_empty());
    }

    #[test]
    fn lines_are_plain_json() {
        let object = encode_object(&[
            msg("taxi/t1/position", b"{\"seq\":1}", 1_732_200_000_123),
            msg("nope", b"\xff", 7),
        ]);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut MultiGzDecoder::new(&object[..]), &mut text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                r#"{"received_ms":1732200000123,"topic":"taxi/t1/position","taxi":"t1","payload_b64":"eyJzZXEiOjF9"}"#,
                r#"{"received_ms":7,"topic":"nope","taxi":null,"payload_b64":"/w=="}"#,
            ]
        );
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn decode_reports_bad_content() {
        assert!(decode_object(b"not gzip").is_err());
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(b"{\"received_ms\":1,\"topic\":\"a\",\"payload_b64\":\"!!\"}\n")
            .unwrap();
        let err = decode_object(&gz.finish().unwrap()).unwrap_err();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
        // Concatenated members and blank lines are fine.
        let mut joined = encode_object(&[msg("a", b"1", 1)]);
        joined.extend(encode_object(&[msg("b", b"2", 2)]));
        assert_eq!(
            decode_object(&joined).unwrap(),
            [msg("a", b"1", 1), msg("b", b"2", 2)]
        );
    }

    #[test]
    fn classes_of_topics() {
        assert_eq!(
            Class::of_topic("taxi/taxi-042/position"),
            (Class::Position, Some("taxi-042".to_owned()))
        );
        assert_eq!(Class::of_topic("taxi/a/tour").0, Class::Tour);
        assert_eq!(Class::of_topic("taxi/a/ack").0, Class::Ack);
        assert_eq!(Class::of_topic("taxi/a/status").0, Class::Status);
        assert_eq!(Class::of_topic("taxi/a/inbox").0, Class::Inbox);
        for other in [
            "",
            "taxi/a",
            "taxi/a/b",
            "taxi/a b/position",
            "x/a/position",
        ] {
            assert_eq!(Class::of_topic(other), (Class::Other, None), "{other:?}");
        }
        for class in Class::ALL {
            assert_eq!(Class::parse(class.as_str()), Some(class));
        }
    }

    #[test]
    fn keys_and_partitions() {
        // 2024-11-21T14:40:00.123Z
        let t = 1_732_200_000_123;
        assert_eq!(
            object_key("raw", Class::Position, t, "b1", 7),
            "raw/position/dt=2024-11-21/hour=14/b1-000000000007.jsonl.gz"
        );
        assert_eq!(
            object_key("/a/b/", Class::Other, 0, "b-2", 123_456_789_012_345),
            "a/b/other/dt=1970-01-01/hour=00/b-2-123456789012345.jsonl.gz"
        );
        assert_eq!(
            object_key("", Class::Ack, t, "b1", 1),
            "ack/dt=2024-11-21/hour=14/b1-000000000001.jsonl.gz"
        );
        // Across midnight (and a leap day), one millisecond apart.
        let midnight = 1_709_251_200_000; // 2024-03-01T00:00:00Z
        assert_eq!(partition(midnight - 1), "dt=2024-02-29/hour=23");
        assert_eq!(partition(midnight), "dt=2024-03-01/hour=00");
        assert_eq!(partition(-1), "dt=1969-12-31/hour=23");
        assert_eq!(hour_start_ms(midnight - 1), midnight - 3_600_000);
        assert_eq!(hour_start_ms(-1), -3_600_000);
        for key in [
            object_key("raw", Class::Tour, midnight - 1, "b1", 1),
            object_key("raw", Class::Tour, t, "b1", 1),
        ] {
            let rest = key.strip_prefix("raw/tour/").unwrap();
            let start = parse_partition(rest).unwrap();
            assert!(key.contains(&partition(start)));
        }
        assert_eq!(parse_partition("dt=2024-03-01/hour=00/x"), Some(midnight));
        assert_eq!(parse_partition("dt=2024-03-01/hour=24/x"), None);
        assert_eq!(parse_partition("dt=2024-3-01/hour=00/x"), None);
        assert_eq!(parse_partition("x/dt=2024-03-01/hour=00/x"), None);
    }

    #[test]
    fn calendar_matches_the_time_crate() {
        let mut ms = -2_208_988_800_000; // 1900-01-01
        while ms < 4_102_444_800_000 {
            // 2100-01-01
            let dt = time::OffsetDateTime::from_unix_timestamp(ms / 1000).unwrap();
            let expected = format!(
                "dt={:04}-{:02}-{:02}/hour={:02}",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour()
            );
            assert_eq!(partition(ms), expected);
            assert_eq!(parse_partition(&expected), Some(hour_start_ms(ms)));
            ms += 7 * 3_600_000 + 13 * 60_000;
        }
    }

    #[test]
    fn groups_by_class_and_hour_keeping_order() {
        let h = 1_709_251_200_000;
        let messages = vec![
            msg("taxi/a/position", b"1", h - 1),
            msg("taxi/a/position", b"2", h),
            msg("taxi/a/tour", b"3", h + 5),
            msg("taxi/a/position", b"4", h - 2),
            msg("bad", b"5", h),
            msg("taxi/b/position", b"6", h + 1),
        ];
        let groups = group_by_object(messages);
        let summary: Vec<(Class, i64, Vec<&[u8]>)> = groups
            .iter()
            .map(|((c, hour), ms)| (*c, *hour, ms.iter().map(|m| &m.payload[..]).collect()))
            .collect();
        assert_eq!(
            summary,
            [
                (Class::Position, h - 3_600_000, vec![&b"1"[..], b"4"]),
                (Class::Position, h, vec![&b"2"[..], b"6"]),
                (Class::Tour, h, vec![&b"3"[..]]),
                (Class::Other, h, vec![&b"5"[..]]),
            ]
        );
    }
}
