//! The bridge's data as it moves through the stages.
//!
//! A [`RawMessage`] is what the MQTT source received, untouched: the archive stores exactly
//! that. Validation turns each into a [`Record`]: a decoded, plausible message, or a
//! [`DeadLetter`] with the reason it was refused. The store writes records.

use bytes::Bytes;

/// A message as received from the broker, before anything else happens to it.
#[derive(Clone, Debug, PartialEq)]
pub struct RawMessage {
    pub topic: String,
    pub payload: Bytes,
    /// Bridge clock, unix milliseconds.
    pub received_ms: i64,
}

/// A validated message, or a refused one.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Position {
        taxi: String,
        position: wire::Position,
        received_ms: i64,
    },
    Tour {
        taxi: String,
        event: wire::TourEvent,
        received_ms: i64,
    },
    Ack {
        taxi: String,
        ack: wire::Ack,
        received_ms: i64,
    },
    Status {
        taxi: String,
        status: wire::Status,
        received_ms: i64,
    },
    DeadLetter(DeadLetter),
}

/// A message that failed validation, kept with everything needed to understand it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub received_ms: i64,
    pub topic: String,
    /// The taxi id from the topic, when the topic had a valid shape.
    pub taxi: Option<String>,
    /// Short machine-readable reason (`json`, `coordinates`, `implied_speed`, ...).
    pub reason_code: String,
    /// Human-readable reason.
    pub reason: String,
    /// The raw payload, byte for byte.
    pub payload: Bytes,
}
