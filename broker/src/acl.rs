//! Topic authorization: per-role publish and subscribe patterns with the client's own id.
//!
//! A pattern is an MQTT filter in which `%c` stands for the client id (as in Mosquitto's
//! `pattern` lines). A PUBLISH is allowed when its topic matches one of the role's publish
//! patterns. A subscription filter is allowed only when every topic it could ever match is
//! matched by one pattern: `taxi/+/inbox` is refused to a taxi whose pattern is
//! `taxi/%c/inbox`. Shared subscriptions (`$share/<group>/<filter>`) are allowed only for roles
//! with `shared = true`, and their inner filter is checked the same way. A role may also get
//! the known payloads as JSON (`payload = "json"`, see [`crate::payload`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one role may do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRules {
    /// Topics this role may publish to (also checked for its last will).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Filters this role may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// May use `$share/<group>/...` subscriptions.
    #[serde(default)]
    pub shared: bool,
    /// May connect several times at once with client ids `<id>.<suffix>` (a service that
    /// spreads its load over several connections); otherwise the client id must be `<id>`.
    #[serde(default)]
    pub client_id_suffix: bool,
    /// How this role gets the payloads of the taxi topics: as published, or as JSON.
    #[serde(default)]
    pub payload: PayloadFormat,
}

/// The form in which a role's clients get the payloads of `taxi/<id>/<kind>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// The bytes as published (postcard or JSON).
    #[default]
    Raw,
    /// The canonical JSON of topics.md for every payload that decodes; others as published.
    Json,
}

/// The default rules: see `topics.md`.
pub fn default_rules() -> BTreeMap<String, RoleRules> {
    let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    BTreeMap::from([
        (
            "taxi".to_owned(),
            RoleRules {
                publish: list(&[
                    "taxi/%c/position",
                    "taxi/%c/tour",
                    "taxi/%c/ack",
                    "taxi/%c/status",
                ]),
                subscribe: list(&["taxi/%c/inbox"]),
                shared: false,
                client_id_suffix: false,
                payload: PayloadFormat::Raw,
            },
        ),
        (
            "backoffice".to_owned(),
            RoleRules {
                publish: list(&["taxi/+/inbox"]),
                subscribe: list(&[
                    "taxi/+/ack",
                    "taxi/+/status",
                    "backoffice/invoices",
                    "analytics/windows",
                ]),
                shared: false,
                client_id_suffix: false,
                payload: PayloadFormat::Raw,
            },
        ),
        (
            "operator".to_owned(),
            RoleRules {
                publish: Vec::new(),
                subscribe: list(&["taxi/#", "backoffice/#", "analytics/#"]),
                shared: false,
                client_id_suffix: false,
                payload: PayloadFormat::Json,
            },
        ),
        (
            "analytics".to_owned(),
            RoleRules {
                publish: list(&["analytics/windows"]),
                subscribe: Vec::new(),
                shared: false,
                client_id_suffix: true,
                payload: PayloadFormat::Raw,
            },
        ),
        (
            "bridge".to_owned(),
            RoleRules {
                publish: list(&["taxi/+/inbox", "backoffice/invoices"]),
                subscribe: list(&[
                    "taxi/+/position",
                    "taxi/+/tour",
                    "taxi/+/ack",
                    "taxi/+/status",
                    "taxi/+/inbox",
                ]),
                shared: true,
                client_id_suffix: true,
                payload: PayloadFormat::Raw,
            },
        ),
    ])
}

impl RoleRules {
    /// Checks that every pattern is a well-formed filter.
    pub fn validate(&self) -> Result<(), String> {
        for pattern in self.publish.iter().chain(&self.subscribe) {
            if !is_valid_filter(&pattern.replace("%c", "x")) {
                return Err(format!("invalid pattern {pattern:?}"));
            }
        }
        Ok(())
    }

    /// Is `client_id` an MQTT client id the holder of certificate id `id` may use?
    pub fn accepts_client_id(&self, id: &str, client_id: &str) -> bool {
        if client_id == id {
            return true;
        }
        self.client_id_suffix
            && client_id
                .strip_prefix(id)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|suffix| suffix.len() <= 64 && wire::is_valid_device_id(suffix))
    }

    /// The rules with `%c` replaced by one client's id, checked on every packet of its session.
    pub fn for_client(&self, client_id: &str) -> ClientRules {
        let expand = |patterns: &[String]| {
            patterns
                .iter()
                .map(|pattern| pattern.replace("%c", client_id))
                .collect()
        };
        ClientRules {
            publish: expand(&self.publish),
            subscribe: expand(&self.subscribe),
            shared: self.shared,
        }
    }

    /// May `client_id` publish to `topic`?
    pub fn may_publish(&self, client_id: &str, topic: &str) -> bool {
        self.for_client(client_id).may_publish(topic)
    }

    /// May `client_id` subscribe to `filter`?
    pub fn may_subscribe(&self, client_id: &str, filter: &str) -> bool {
        self.for_client(client_id).may_subscribe(filter)
    }
}

/// One client's rules, patterns already expanded.
#[derive(Clone, Debug)]
pub struct ClientRules {
    publish: Vec<String>,
    subscribe: Vec<String>,
    shared: bool,
}

impl ClientRules {
    /// May this client publish to `topic`?
    pub fn may_publish(&self, topic: &str) -> bool {
        is_valid_topic(topic)
            && self
                .publish
                .iter()
                .any(|pattern| filter_covers(pattern, topic))
    }

    /// May this client subscribe to `filter`?
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let inner = match filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((group, inner)) if self.shared && !group.is_empty() && is_level(group) => {
                    inner
                }
                _ => return false,
            },
            None => filter,
        };
        is_valid_filter(inner)
            && self
                .subscribe
                .iter()
                .any(|pattern| filter_covers(pattern, inner))
    }
}

/// A topic level may not hold wildcards.
fn is_level(level: &str) -> bool {
    !level.contains(['+', '#'])
}

/// A topic name to publish to: not empty, no wildcards, no NUL.
pub fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A subscription filter: `+` fills a whole level, `#` only as the whole last level.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        other => is_level(other),
    })
}

/// Is every topic matched by `filter` also matched by `pattern`? Both are valid filters.
/// With a topic name as `filter` this is plain MQTT matching.
pub fn filter_covers(pattern: &str, filter: &str) -> bool {
    // Wildcards at the first level never match topics starting with `$` (MQTT 4.7.2).
    if filter.starts_with('$') && pattern.starts_with(['+', '#']) {
        return false;
    }
    let mut pattern_levels = pattern.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (pattern_levels.next(), filter_levels.next()) {
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(_), Some("+")) => return false,
            (Some(p), Some(f)) if p == f => {}
            (Some(_), Some(_)) => return false,
            (None, None) => return true,
            // `a/#` also matches `a` itself: handled by the first arm.
            (Some(_), None) | (None, Some(_)) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(role: &str) -> RoleRules {
        default_rules().remove(role).expect("default role")
    }

    #[test]
    fn taxi_publishes_only_as_itself() {
        let taxi = rules("taxi");
        assert!(taxi.may_publish("t1", "taxi/t1/position"));
        assert!(taxi.may_publish("t1", "taxi/t1/status"));
        assert!(!taxi.may_publish("t1", "taxi/t2/position"));
        assert!(!taxi.may_publish("t1", "taxi/t1/inbox"));
        assert!(!taxi.may_publish("t1", "taxi/+/position"));
        assert!(!taxi.may_publish("t1", "taxi/t1/position/x"));
        assert!(!taxi.may_publish("t1", ""));
    }

    #[test]
    fn taxi_subscribes_only_to_its_inbox() {
        let taxi = rules("taxi");
        assert!(taxi.may_subscribe("t1", "taxi/t1/inbox"));
        assert!(!taxi.may_subscribe("t1", "taxi/t2/inbox"));
        assert!(!taxi.may_subscribe("t1", "taxi/+/inbox"));
        assert!(!taxi.may_subscribe("t1", "#"));
        assert!(!taxi.may_subscribe("t1", "taxi/t1/#"));
        assert!(!taxi.may_subscribe("t1", "taxi/t1/+"));
        assert!(!taxi.may_subscribe("t1", "$share/g/taxi/t1/inbox"));
    }

    #[test]
    fn operator_reads_everything_under_taxi_and_publishes_nothing() {
        let operator = rules("operator");
        assert!(operator.may_subscribe("op", "taxi/#"));
        assert!(operator.may_subscribe("op", "taxi/+/status"));
        assert!(operator.may_subscribe("op", "taxi/t9/position"));
        assert!(!operator.may_subscribe("op", "#"));
        assert!(!operator.may_subscribe("op", "+/t9/position"));
        assert!(!operator.may_publish("op", "taxi/t9/inbox"));
        assert!(operator.may_subscribe("op", "backoffice/invoices"));
        assert!(!operator.may_publish("op", "backoffice/invoices"));
    }

    #[test]
    fn invoices_go_from_the_bridge_to_the_backoffice() {
        assert!(rules("bridge").may_publish("b", "backoffice/invoices"));
        assert!(rules("backoffice").may_subscribe("bo", "backoffice/invoices"));
        assert!(!rules("backoffice").may_publish("bo", "backoffice/invoices"));
        assert!(!rules("taxi").may_subscribe("t1", "backoffice/invoices"));
        assert!(!rules("taxi").may_publish("t1", "backoffice/invoices"));
    }

    #[test]
    fn bridge_may_use_shared_subscriptions() {
        let bridge = rules("bridge");
        assert!(bridge.may_subscribe("b", "$share/ingest/taxi/+/position"));
        assert!(bridge.may_subscribe("b", "taxi/+/tour"));
        assert!(!bridge.may_subscribe("b", "$share/ingest/taxi/#"));
        assert!(!bridge.may_subscribe("b", "$share//taxi/+/tour"));
        assert!(!bridge.may_subscribe("b", "$share/ingest"));
        assert!(bridge.may_publish("b", "taxi/t1/inbox"));
        assert!(bridge.may_subscribe("b", "$share/dispatch/taxi/+/inbox"));
    }

    #[test]
    fn only_services_may_suffix_their_client_id() {
        assert!(rules("taxi").accepts_client_id("t1", "t1"));
        assert!(!rules("taxi").accepts_client_id("t1", "t1.2"));
        assert!(!rules("taxi").accepts_client_id("t1", "t2"));
        assert!(rules("bridge").accepts_client_id("bridge", "bridge.a-1"));
        assert!(!rules("bridge").accepts_client_id("bridge", "bridge."));
        assert!(!rules("bridge").accepts_client_id("bridge", "bridgex.1"));
        assert!(!rules("bridge").accepts_client_id("bridge", "bridge.a/b"));
    }

    #[test]
    fn covering_follows_mqtt_matching() {
        assert!(filter_covers("a/#", "a"));
        assert!(filter_covers("a/#", "a/b/c"));
        assert!(filter_covers("a/+/c", "a/b/c"));
        assert!(!filter_covers("a/+/c", "a/b/d"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(!filter_covers("#", "$SYS/x"));
        assert!(!filter_covers("a/+", "a"));
    }

    #[test]
    fn malformed_filters_are_refused() {
        assert!(!is_valid_filter("a/#/b"));
        assert!(!is_valid_filter("a/b#"));
        assert!(!is_valid_filter("a/+b"));
        assert!(!is_valid_filter(""));
        assert!(is_valid_filter("a/+/#"));
    }
}
