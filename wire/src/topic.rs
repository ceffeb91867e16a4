//! Topic names and device ids: the `taxi/<id>/<kind>` scheme, its parsing and formatting.
//!
//! A device id is also the certificate CN of that device, so [`is_valid_device_id`] is the one
//! rule for ids everywhere: 1 to 64 characters of `A-Z`, `a-z`, `0-9`, `_` and `-`. That rule
//! keeps MQTT wildcards (`+`, `#`), level separators (`/`) and `$` out of ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// First level of every taxi topic.
pub const TOPIC_ROOT: &str = "taxi";

/// Longest valid device id, in characters (all valid characters are one byte).
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Whether `id` is a valid device id: 1 to 64 characters of `A-Z`, `a-z`, `0-9`, `_`, `-`.
pub fn is_valid_device_id(id: &str) -> bool {
    check_device_id(id).is_ok()
}

fn check_device_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(IdError::TooLong(id.len()));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(c) => Err(IdError::InvalidChar(c)),
        None => Ok(()),
    }
}

/// Why a string is not a valid device id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("device id is empty")]
    Empty,
    #[error("device id is {0} bytes long, at most {MAX_DEVICE_ID_LEN} are allowed")]
    TooLong(usize),
    #[error("device id contains {0:?}; only A-Z, a-z, 0-9, '_' and '-' are allowed")]
    InvalidChar(char),
}

/// A validated taxi (device) id, the certificate CN of the taxi.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaxiId(String);

impl TaxiId {
    /// Validates `id` (see [`is_valid_device_id`]).
    pub fn parse(id: &str) -> Result<TaxiId, IdError> {
        check_device_id(id)?;
        Ok(TaxiId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for TaxiId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TaxiId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for TaxiId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<TaxiId, IdError> {
        TaxiId::parse(s)
    }
}

impl TryFrom<String> for TaxiId {
    type Error = IdError;

    fn try_from(s: String) -> Result<TaxiId, IdError> {
        check_device_id(&s)?;
        Ok(TaxiId(s))
    }
}

impl From<TaxiId> for String {
    fn from(id: TaxiId) -> String {
        id.0
    }
}

/// The last level of a taxi topic: what the messages on it are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicKind {
    /// `taxi/<id>/position`: position fixes, taxi to platform.
    Position,
    /// `taxi/<id>/tour`: tour started / ended, taxi to platform.
    Tour,
    /// `taxi/<id>/inbox`: orders and messages, platform to taxi.
    Inbox,
    /// `taxi/<id>/ack`: answers to inbox messages, taxi to platform.
    Ack,
    /// `taxi/<id>/status`: retained `online` / `offline`.
    Status,
}

impl TopicKind {
    /// All kinds, in declaration order.
    pub const ALL: [TopicKind; 5] = [
        TopicKind::Position,
        TopicKind::Tour,
        TopicKind::Inbox,
        TopicKind::Ack,
        TopicKind::Status,
    ];

    /// The topic level, e.g. `"position"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Position => "position",
            TopicKind::Tour => "tour",
            TopicKind::Inbox => "inbox",
            TopicKind::Ack => "ack",
            TopicKind::Status => "status",
        }
    }

    /// The kind named by a topic level, if any.
    pub fn parse(level: &str) -> Option<TopicKind> {
        TopicKind::ALL.into_iter().find(|k| k.as_str() == level)
    }

    /// Whether messages of this kind are published retained (only `status`).
    pub fn is_retained(self) -> bool {
        self == TopicKind::Status
    }

    /// Whether the taxi itself publishes on this kind (everything but `inbox`).
    pub fn is_from_taxi(self) -> bool {
        self != TopicKind::Inbox
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a topic name is not a valid taxi topic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic must have the shape taxi/<id>/<kind>")]
    Shape,
    #[error("invalid taxi id in topic: {0}")]
    InvalidId(#[from] IdError),
    #[error("unknown topic kind {0:?}; expected position, tour, inbox, ack or status")]
    UnknownKind(String),
}

/// Parses a concrete topic name `taxi/<id>/<kind>` (no wildcards, no `$share/` prefix).
pub fn parse_topic(topic: &str) -> Result<(TaxiId, TopicKind), TopicError> {
    let mut levels = topic.split('/');
    let (Some(TOPIC_ROOT), Some(id), Some(kind), None) =
        (levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return Err(TopicError::Shape);
    };
    let id = TaxiId::parse(id)?;
    let kind = TopicKind::parse(kind).ok_or_else(|| {
        // Keep error messages short even for absurd topic names.
        TopicError::UnknownKind(kind.chars().take(64).collect())
    })?;
    Ok((id, kind))
}

/// The topic name `taxi/<id>/<kind>`.
pub fn topic(id: &TaxiId, kind: TopicKind) -> String {
    format!("{TOPIC_ROOT}/{id}/{kind}")
}

/// The filter `taxi/+/<kind>` matching this kind for every taxi.
pub fn all_taxis_filter(kind: TopicKind) -> String {
    format!("{TOPIC_ROOT}/+/{kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        for good in ["a", "taxi-042", "A_b-9", &"x".repeat(64)] {
            assert!(is_valid_device_id(good), "{good:?}");
            assert_eq!(TaxiId::parse(good).unwrap().as_str(), good);
        }
        assert_eq!(TaxiId::parse(""), Err(IdError::Empty));
        assert_eq!(TaxiId::parse(&"x".repeat(65)), Err(IdError::TooLong(65)));
        for (bad, c) in [
            ("a/b", '/'),
            ("+", '+'),
            ("#", '#'),
            ("$sys", '$'),
            ("a b", ' '),
            ("é", 'é'),
            ("a.b", '.'),
        ] {
            assert!(!is_valid_device_id(bad), "{bad:?}");
            assert_eq!(TaxiId::parse(bad), Err(IdError::InvalidChar(c)));
        }
        // Multi-byte characters are rejected, whatever the length counts.
        assert!(!is_valid_device_id(&"é".repeat(40)));
    }

    #[test]
    fn taxi_id_serde_validates() {
        let id: TaxiId = serde_json::from_str("\"taxi-1\"").unwrap();
        assert_eq!(id.as_str(), "taxi-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"taxi-1\"");
        assert!(serde_json::from_str::<TaxiId>("\"taxi/1\"").is_err());
        assert_eq!("taxi-1".parse::<TaxiId>(), Ok(id));
    }

    #[test]
    fn parses_every_kind_and_round_trips() {
        let id = TaxiId::parse("taxi-042").unwrap();
        for kind in TopicKind::ALL {
            let name = topic(&id, kind);
            assert_eq!(name, format!("taxi/taxi-042/{}", kind.as_str()));
            assert_eq!(parse_topic(&name), Ok((id.clone(), kind)));
        }
        assert_eq!(all_taxis_filter(TopicKind::Ack), "taxi/+/ack");
    }

    #[test]
    fn rejects_bad_topics() {
        let shape = [
            "",
            "taxi",
            "taxi/",
            "taxi/a",
            "taxi/a/b/position",
            "taxi/a/position/",
            "/taxi/a/position",
            "taxis/a/position",
            "Taxi/a/position",
            "$share/g/taxi/a/position",
            "taxi/#",
            "fleet/a/position",
        ];
        for t in shape {
            assert_eq!(parse_topic(t), Err(TopicError::Shape), "{t:?}");
        }
        assert_eq!(
            parse_topic("taxi/a/"),
            Err(TopicError::UnknownKind(String::new()))
        );
        assert_eq!(
            parse_topic("taxi//position"),
            Err(TopicError::InvalidId(IdError::Empty))
        );
        assert_eq!(
            parse_topic("taxi/+/position"),
            Err(TopicError::InvalidId(IdError::InvalidChar('+')))
        );
        assert_eq!(
            parse_topic("taxi/#/position"),
            Err(TopicError::InvalidId(IdError::InvalidChar('#')))
        );
        assert_eq!(
            parse_topic("taxi/x/unknown"),
            Err(TopicError::UnknownKind("unknown".into()))
        );
        assert_eq!(
            parse_topic("taxi/x/Position"),
            Err(TopicError::UnknownKind("Position".into()))
        );
        assert_eq!(
            parse_topic("taxi/x/+"),
            Err(TopicError::UnknownKind("+".into()))
        );
        let long = format!("taxi/x/{}", "k".repeat(100_000));
        assert!(matches!(parse_topic(&long), Err(TopicError::UnknownKind(k)) if k.len() == 64));
    }

    #[test]
    fn kind_properties() {
        assert!(TopicKind::Status.is_retained());
        assert!(!TopicKind::Position.is_retained());
        assert!(!TopicKind::Inbox.is_from_taxi());
        assert!(TopicKind::Ack.is_from_taxi());
        assert_eq!(TopicKind::parse("tour"), Some(TopicKind::Tour));
        assert_eq!(TopicKind::parse("tours"), None);
    }
}
