use slab::Slab;

use crate::protocol::LastWillProperties;
use crate::Filter;
use crate::{protocol::LastWill, Topic};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::ConnectionEvents;

/// Used to register a new connection with the router
/// Connection messages encompasses a handle for router to
/// communicate with this connection
#[derive(Debug)]
pub struct Connection {
    pub client_id: String,
    /// The client id once more, shared by every message it publishes (no local)
    pub(crate) origin: Arc<str>,
    /// Id of client's organisation/tenant and the prefix associated with tenant's MQTT topic
    pub tenant_prefix: Option<String>,
    /// Dynamically create subscription filters incase they didn't exist during a publish
    pub dynamic_filters: bool,
    /// Clean session (MQTT 5: clean start): a saved session of this client id is discarded
    pub clean: bool,
    /// Seconds the session outlives the connection: 0 ends it with the connection,
    /// `u32::MAX` keeps it until the client comes back (MQTT 5 session expiry interval)
    pub session_expiry: u32,
    /// QoS 1 and 2 messages sent and not yet acknowledged at most (the client's Receive
    /// Maximum, capped by the router's own limit)
    pub max_inflight: u16,
    /// Largest packet the client accepts (its Maximum Packet Size); larger messages are not
    /// sent to it
    pub max_packet_size: Option<usize>,
    /// Subscriptions
    pub subscriptions: HashSet<Filter>,
    /// Last will of this connection
    pub last_will: Option<LastWill>,
    /// Properties of Last will
    pub last_will_properties: Option<LastWillProperties>,
    /// Connection events
    pub events: ConnectionEvents,
    /// Topic aliases set by clients
    pub(crate) topic_aliases: HashMap<u16, Topic>,
    /// Topic aliases used by broker
    pub(crate) broker_topic_aliases: Option<BrokerAliases>,
    /// Options of each subscription (QoS, no local, retain as published, identifier)
    pub(crate) sub_options: HashMap<Filter, SubscriptionOptions>,
    /// Subscriptions subscribed again with retain handling 0: their retained messages are
    /// sent again
    pub(crate) resend_retained: HashSet<Filter>,
    /// Messages already sent through one of several overlapping subscriptions
    pub(crate) delivered: RecentMessages,
    /// Messages were dropped for this connection already (they are logged once)
    pub(crate) drops_logged: bool,
}

/// What a client asked for when it subscribed to a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Maximum QoS granted
    pub qos: u8,
    /// Messages this client published are not sent back to it
    pub no_local: bool,
    /// The retain flag is forwarded as published (otherwise cleared on live messages)
    pub retain_as_published: bool,
    /// Subscription identifier, returned with every message it matches
    pub id: Option<usize>,
}

/// The sequence numbers of the last messages delivered through overlapping subscriptions, so
/// that a message matching several of a client's filters is sent once.
#[derive(Debug, Default)]
pub(crate) struct RecentMessages {
    order: VecDeque<u64>,
    seen: HashSet<u64>,
}

impl RecentMessages {
    const CAPACITY: usize = 4096;

    /// Records `seq`; false if it was recorded already.
    pub(crate) fn insert(&mut self, seq: u64) -> bool {
        if !self.seen.insert(seq) {
            return false;
        }
        self.order.push_back(seq);
        if self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

impl Connection {
    /// Create connection state to hold identifying information of connecting device
    pub fn new(
        tenant_id: Option<String>,
        client_id: String,
        clean: bool,
        dynamic_filters: bool,
    ) -> Connection {
        // Change client id to -> tenant_id.client_id and derive topic path prefix
        // to validate topics
        let (client_id, tenant_prefix) = match tenant_id {
            Some(tenant_id) => {
                let tenant_prefix = Some("/tenants/".to_owned() + &tenant_id + "/");
                let client_id = tenant_id + "." + &client_id;
                (client_id, tenant_prefix)
            }
            None => (client_id, None),
        };

        Connection {
            origin: Arc::from(client_id.as_str()),
            client_id,
            tenant_prefix,
            dynamic_filters,
            clean,
            session_expiry: if clean { 0 } else { u32::MAX },
            max_inflight: u16::MAX,
            max_packet_size: None,
            subscriptions: HashSet::default(),
            last_will: None,
            last_will_properties: None,
            events: ConnectionEvents::default(),
            topic_aliases: HashMap::new(),
            broker_topic_aliases: None,
            sub_options: HashMap::new(),
            resend_retained: HashSet::new(),
            delivered: RecentMessages::default(),
            drops_logged: false,
        }
    }

    /// Seconds the session outlives the connection (0: none, `u32::MAX`: no limit).
    pub fn session_expiry(&mut self, seconds: u32) -> &mut Connection {
        self.session_expiry = seconds;
        self
    }

    /// The client's Receive Maximum.
    pub fn max_inflight(&mut self, max: u16) -> &mut Connection {
        self.max_inflight = max;
        self
    }

    /// The client's Maximum Packet Size.
    pub fn max_packet_size(&mut self, max: Option<usize>) -> &mut Connection {
        self.max_packet_size = max;
        self
    }

    pub fn topic_alias_max(&mut self, max: u16) -> &mut Connection {
        // if topic_alias_max is 0, that means client doesn't want to use / support topic alias
        if max > 0 {
            self.broker_topic_aliases = Some(BrokerAliases::new(max));
        }
        self
    }

    pub fn last_will(
        &mut self,
        will: Option<LastWill>,
        props: Option<LastWillProperties>,
    ) -> &mut Connection {
        self.last_will = will;
        self.last_will_properties = props;
        self
    }
}

#[derive(Debug)]
pub(crate) struct BrokerAliases {
    pub(crate) broker_topic_aliases: HashMap<Filter, u16>,
    pub(crate) used_aliases: Slab<()>,
    pub(crate) topic_alias_max: u16,
}

impl BrokerAliases {
    fn new(topic_alias_max: u16) -> BrokerAliases {
        let mut used_aliases = Slab::new();
        // occupy 0th index as 0 is invalid topic alias
        assert_eq!(0, used_aliases.insert(()));

        let broker_topic_aliases = HashMap::new();

        BrokerAliases {
            broker_topic_aliases,
            used_aliases,
            topic_alias_max,
        }
    }

    // unset / remove the alias for topic
    pub fn remove_alias(&mut self, topic: &str) {
        if let Some(alias) = self.broker_topic_aliases.remove(topic) {
            self.used_aliases.remove(alias as usize);
        }
    }

    // Get alias used for the topic, if it exists
    pub fn get_alias(&self, topic: &str) -> Option<u16> {
        self.broker_topic_aliases.get(topic).copied()
    }

    // Set new alias for a topic and return the alias
    // returns None if can't set new alias
    pub fn set_new_alias(&mut self, topic: &str) -> Option<u16> {
        let alias_to_use = self.used_aliases.insert(());

        // NOTE: maybe we can use self.used_aliases.len()
        // to check for availability of alias
        if alias_to_use > self.topic_alias_max as usize {
            self.used_aliases.remove(alias_to_use);
            return None;
        }

        let alias_to_use = alias_to_use as u16;
        self.broker_topic_aliases
            .insert(topic.to_owned(), alias_to_use);
        Some(alias_to_use)
    }
}
