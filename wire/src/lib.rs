//! The wire contract shared by the broker, the bridge, the backoffice and the taxis.
//!
//! - [`topic`](mod@topic): topic names `taxi/<id>/<kind>` and the device id rule.
//! - [`payload`]: the message types carried on those topics.
//! - [`codec`]: the postcard envelope and JSON encodings, and decoding with clear errors.
//!
//! `topics.md` at the repository root describes the same contract for device makers and
//! operators.

pub mod codec;
pub mod payload;
pub mod topic;

pub use codec::{
    decode, decode_payload, detect_encoding, encode, encode_json, encode_postcard, DecodeError,
    Encoding, MAX_PAYLOAD_BYTES, POSTCARD_V1,
};
pub use payload::{
    Ack, AckState, InboxKind, InboxMessage, InvalidField, Invoice, Message, Payload, Position,
    Status, StatusState, TourEvent, TourEventKind, INVOICES_TOPIC, MAX_REF_ID_LEN,
};
pub use topic::{
    all_taxis_filter, is_valid_device_id, parse_topic, topic, IdError, TaxiId, TopicError,
    TopicKind, MAX_DEVICE_ID_LEN, TOPIC_ROOT,
};
