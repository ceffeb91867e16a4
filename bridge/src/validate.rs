//! The transform stage: raw messages become records, or dead letters with a reason.
//!
//! Decoding (JSON or the postcard envelope) and the value rules of `topics.md` come from
//! `wire`. On top, plausibility filters in the spirit of Traccar's: device time neither too
//! far in the future nor older than the retention window, reported speed below a limit, and
//! the speed implied by two consecutive fixes of the same taxi below a limit. Duplicates are
//! not refused here: the store absorbs them by key. Nothing here panics on any input.

use std::collections::HashMap;

use wire::{DecodeError, Payload, TopicKind};

use crate::config::ValidationConfig;
use crate::record::{DeadLetter, RawMessage, Record};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// The last accepted fix of a taxi, for the implied-speed check.
#[derive(Clone, Copy, Debug)]
struct Fix {
    ts_ms: i64,
    lat: f64,
    lon: f64,
}

/// Validates messages, remembering each taxi's last fix.
pub struct Validator {
    config: ValidationConfig,
    retention_ms: i64,
    last_fix: HashMap<String, Fix>,
}

/// Why a decoded message is implausible.
struct Refusal {
    code: &'static str,
    reason: String,
}

impl Validator {
    pub fn new(config: ValidationConfig, retention_days: u32) -> Validator {
        Validator {
            config,
            retention_ms: i64::from(retention_days) * DAY_MS,
            last_fix: HashMap::new(),
        }
    }

    /// Turns one raw message into a record, judged as of its receive time.
    pub fn validate(&mut self, message: &RawMessage) -> Record {
        let dead = |code: &str, reason: String, taxi: Option<String>| {
            Record::DeadLetter(DeadLetter {
                received_ms: message.received_ms,
                topic: message.topic.clone(),
                taxi,
                reason_code: code.to_owned(),
                reason,
                payload: message.payload.clone(),
            })
        };
        let (taxi, kind) = match wire::parse_topic(&message.topic) {
            Ok((taxi, kind)) => (taxi.into_string(), kind),
            Err(e) => return dead("topic", format!("topic {:?}: {e}", message.topic), None),
        };
        if kind == TopicKind::Inbox {
            return dead(
                "topic",
                "inbox messages are not telemetry".to_owned(),
                Some(taxi),
            );
        }
        let payload = match wire::decode_payload(kind, &message.payload) {
            Ok(payload) => payload,
            Err(e) => return dead(e.code(), describe(&e), Some(taxi)),
        };
        if let Err(refusal) = self.check(&taxi, &payload, message.received_ms) {
            return dead(refusal.code, refusal.reason, Some(taxi));
        }
        let received_ms = message.received_ms;
        match payload {
            Payload::Position(position) => Record::Position {
                taxi,
                position,
                received_ms,
            },
            Payload::Tour(event) => Record::Tour {
                taxi,
                event,
                received_ms,
            },
            Payload::Ack(ack) => Record::Ack {
                taxi,
                ack,
                received_ms,
            },
            Payload::Status(status) => Record::Status {
                taxi,
                status,
                received_ms,
            },
            Payload::Inbox(_) => dead(
                "topic",
                "inbox messages are not telemetry".to_owned(),
                Some(taxi),
            ),
        }
    }

    /// The plausibility rules; remembers the fix of an accepted position.
    fn check(&mut self, taxi: &str, payload: &Payload, now_ms: i64) -> Result<(), Refusal> {
        let device_ms = match payload {
            Payload::Position(p) => p.ts_ms,
            Payload::Tour(t) => t.ts_ms,
            Payload::Ack(a) => a.ts_ms,
            Payload::Status(s) => s.at_ms,
            Payload::Inbox(i) => i.created_ms,
        };
        if device_ms > now_ms.saturating_add(self.config.max_future_ms) {
            return Err(Refusal {
                code: "future_time",
                reason: format!(
                    "device time {device_ms} is {} ms ahead of the bridge clock (limit {})",
                    device_ms - now_ms,
                    self.config.max_future_ms
                ),
            });
        }
        if device_ms < now_ms.saturating_sub(self.retention_ms) {
            return Err(Refusal {
                code: "too_old",
                reason: format!(
                    "device time {device_ms} is older than the retention window of {} days",
                    self.retention_ms / DAY_MS
                ),
            });
        }
        let Payload::Position(position) = payload else {
            return Ok(());
        };
        if let Some(speed) = position.speed_kmh {
            if f64::from(speed) > self.config.max_speed_kmh {
                return Err(Refusal {
                    code: "speed",
                    reason: format!(
                        "reported speed {speed} km/h above the limit of {} km/h",
                        self.config.max_speed_kmh
                    ),
                });
            }
        }
        let fix = Fix {
            ts_ms: position.ts_ms,
            lat: position.lat,
            lon: position.lon,
        };
        if let Some(last) = self.last_fix.get(taxi) {
            let interval_ms = (fix.ts_ms - last.ts_ms).abs();
            if interval_ms >= self.config.min_implied_interval_ms {
                let implied = distance_m(last, &fix) / (interval_ms as f64 / 1000.0) * 3.6;
                if implied > self.config.max_implied_speed_kmh {
                    return Err(Refusal {
                        code: "implied_speed",
                        reason: format!(
                            "{implied:.0} km/h implied by the previous fix {interval_ms} ms \
                             apart, above the limit of {} km/h",
                            self.config.max_implied_speed_kmh
                        ),
                    });
                }
            }
            if fix.ts_ms <= last.ts_ms {
                // An older fix arriving late is kept but does not become the reference.
                return Ok(());
            }
        }
        if self.last_fix.len() >= self.config.remembered_taxis && !self.last_fix.contains_key(taxi)
        {
            // Bounded memory: forget everyone; the check resumes with the next fixes.
            self.last_fix.clear();
        }
        self.last_fix.insert(taxi.to_owned(), fix);
        Ok(())
    }
}

fn describe(error: &DecodeError) -> String {
    format!("payload refused: {error}")
}

/// Great-circle distance (haversine).
fn distance_m(a: &Fix, b: &Fix) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const NOW: i64 = 1_795_000_000_000;

    fn validator() -> Validator {
        Validator::new(crate::Config::default().validation, 30)
    }

    fn raw(topic: &str, payload: impl Into<Bytes>) -> RawMessage {
        RawMessage {
            topic: topic.to_owned(),
            payload: payload.into(),
            received_ms: NOW,
        }
    }

    fn position(seq: u64, ts_ms: i64, lat: f64, lon: f64) -> RawMessage {
        let position = wire::Position {
            seq,
            ts_ms,
            lat,
            lon,
            speed_kmh: Some(30.0),
            heading_deg: None,
            accuracy_m: None,
        };
        raw("taxi/t1/position", wire::encode_postcard(&position))
    }

    fn reason(record: &Record) -> Option<&str> {
        match record {
            Record::DeadLetter(dead) => Some(dead.reason_code.as_str()),
            _ => None,
        }
    }

    #[test]
    fn accepts_plausible_positions_in_both_encodings() {
        let mut v = validator();
        assert_eq!(reason(&v.validate(&position(1, NOW, 52.52, 13.40))), None);
        let json = format!(
            r#"{{"seq":2,"ts_ms":{},"lat":52.5201,"lon":13.4001}}"#,
            NOW + 2000
        );
        let record = v.validate(&raw("taxi/t1/position", json.into_bytes()));
        assert!(matches!(record, Record::Position { ref taxi, .. } if taxi == "t1"));
    }

    #[test]
    fn bad_input_becomes_a_dead_letter_with_the_reason() {
        let mut v = validator();
        let cases: Vec<(RawMessage, &str)> = vec![
            (raw("taxi/t1/position", Bytes::new()), "empty"),
            (
                raw("taxi/t1/position", vec![0x07, 0xff, 0x00]),
                "unknown_version",
            ),
            (raw("taxi/t1/position", vec![0x01, 0xff, 0xff]), "postcard"),
            (raw("taxi/t1/position", b"{not json".to_vec()), "json"),
            (raw("taxi/t1/position", vec![b'{'; 70_000]), "too_large"),
            (raw("taxi/t1/extra/position", b"{}".to_vec()), "topic"),
            (raw("taxi/t1/inbox", b"{}".to_vec()), "topic"),
            (position(1, NOW, 123.0, 13.0), "invalid_value"),
            (position(1, NOW + 3_600_000, 52.5, 13.4), "future_time"),
            (position(1, NOW - 40 * DAY_MS, 52.5, 13.4), "too_old"),
        ];
        for (message, expected) in cases {
            let record = v.validate(&message);
            assert_eq!(reason(&record), Some(expected), "{:?}", message.topic);
            if let Record::DeadLetter(dead) = record {
                assert_eq!(dead.payload, message.payload, "raw bytes kept");
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut v = validator();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 300)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = v.validate(&raw("taxi/t1/position", bytes));
        }
    }

    #[test]
    fn teleporting_taxi_is_refused() {
        let mut v = validator();
        assert_eq!(reason(&v.validate(&position(1, NOW, 52.52, 13.40))), None);
        // 100 km in 10 s.
        let record = v.validate(&position(2, NOW + 10_000, 53.42, 13.40));
        assert_eq!(reason(&record), Some("implied_speed"));
        // 150 m in 10 s is fine, measured from the last accepted fix.
        assert_eq!(
            reason(&v.validate(&position(3, NOW + 10_000, 52.5213, 13.40))),
            None
        );
    }

    #[test]
    fn reported_speed_above_the_limit_is_refused() {
        let mut v = validator();
        let position = wire::Position {
            seq: 1,
            ts_ms: NOW,
            lat: 52.0,
            lon: 13.0,
            speed_kmh: Some(400.0),
            heading_deg: None,
            accuracy_m: None,
        };
        let record = v.validate(&raw("taxi/t1/position", wire::encode_json(&position)));
        assert_eq!(reason(&record), Some("speed"));
    }

    #[test]
    fn distance_is_haversine() {
        let berlin = Fix {
            ts_ms: 0,
            lat: 52.5200,
            lon: 13.4050,
        };
        let hamburg = Fix {
            ts_ms: 0,
            lat: 53.5511,
            lon: 9.9937,
        };
        let km = distance_m(&berlin, &hamburg) / 1000.0;
        assert!((250.0..260.0).contains(&km), "{km}");
    }
}
