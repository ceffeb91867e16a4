//! Inbox expiry: an order past its `expires_ms` is never delivered.
//!
//! A `taxi/<id>/inbox` message may say until when it is valid (`expires_ms`, see topics.md).
//! The front turns that into the MQTT 5 message expiry interval of the publish before it
//! reaches the router, which drops expired messages when it reads them for a subscriber:
//! from a live taxi's queue, from an offline taxi's persistent session, or on redelivery.
//! The interval is rounded down to whole seconds, so a message may expire up to a second
//! early, never late. A publish that sets its own, shorter interval keeps it.

use rumqttd::protocol::PublishProperties;
use wire::{decode, InboxMessage, TopicKind};

/// Applies the inbox message's `expires_ms` to the publish's properties. Anything that is
/// not a decodable inbox message with an expiry is forwarded unchanged (a taxi skips bad
/// inbox payloads itself). An order already expired gets an interval of 0: the router
/// acknowledges it and delivers it to no one.
pub fn apply(
    topic: &str,
    payload: &[u8],
    properties: Option<PublishProperties>,
    now_ms: i64,
) -> Option<PublishProperties> {
    if !matches!(wire::parse_topic(topic), Ok((_, TopicKind::Inbox))) {
        return properties;
    }
    let Ok(message) = decode::<InboxMessage>(payload) else {
        return properties;
    };
    let Some(expires_ms) = message.expires_ms else {
        return properties;
    };
    let left_s = expires_ms.saturating_sub(now_ms).div_euclid(1000).max(0);
    let left_s = u32::try_from(left_s).unwrap_or(u32::MAX);
    let mut properties = properties.unwrap_or_default();
    properties.message_expiry_interval = Some(
        properties
            .message_expiry_interval
            .map_or(left_s, |own| own.min(left_s)),
    );
    Some(properties)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_732_200_000_000;

    fn inbox(expires_ms: Option<i64>) -> Vec<u8> {
        let expires = expires_ms.map_or("null".to_owned(), |e| e.to_string());
        format!(
            r#"{{"order_id":"o-1","kind":"order","text":"t","created_ms":{NOW},"expires_ms":{expires}}}"#
        )
        .into_bytes()
    }

    fn interval(properties: Option<PublishProperties>) -> Option<u32> {
        properties.and_then(|p| p.message_expiry_interval)
    }

    #[test]
    fn expiry_becomes_whole_seconds_rounded_down() {
        let payload = inbox(Some(NOW + 90_999));
        assert_eq!(
            interval(apply("taxi/t1/inbox", &payload, None, NOW)),
            Some(90)
        );
    }

    #[test]
    fn expired_or_nearly_expired_orders_get_no_time_at_all() {
        for expires in [NOW - 1, NOW, NOW + 999, i64::MIN] {
            let payload = inbox(Some(expires));
            assert_eq!(
                interval(apply("taxi/t1/inbox", &payload, None, NOW)),
                Some(0),
                "{expires}"
            );
        }
    }

    #[test]
    fn a_shorter_own_interval_is_kept() {
        let own = PublishProperties {
            message_expiry_interval: Some(5),
            ..Default::default()
        };
        let payload = inbox(Some(NOW + 60_000));
        assert_eq!(
            interval(apply("taxi/t1/inbox", &payload, Some(own), NOW)),
            Some(5)
        );
    }

    #[test]
    fn everything_else_is_untouched() {
        let no_expiry = inbox(None);
        assert_eq!(
            interval(apply("taxi/t1/inbox", &no_expiry, None, NOW)),
            None
        );
        assert_eq!(
            interval(apply("taxi/t1/inbox", b"garbage", None, NOW)),
            None
        );
        let expired = inbox(Some(NOW - 1));
        assert_eq!(
            interval(apply("taxi/t1/position", &expired, None, NOW)),
            None
        );
    }
}
