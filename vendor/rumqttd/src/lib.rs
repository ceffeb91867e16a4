// Vendored third-party code: its lints are upstream's business (see PATCHES.md).
#![allow(warnings)]

//! rumqttd's router, its in-process links and its MQTT codecs. The network server, console,
//! bridge and metrics exporter of the upstream crate are not part of this copy (see
//! PATCHES.md).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use link::alerts;
pub use link::local;
pub use link::meters;
pub use router::durability::{self, DropReason, Lag, Observer};
pub use router::{
    Alert, Forward, IncomingMeter, Meter, Notification, OutgoingMeter, Recovery, Router,
};
pub use segments::records;
pub use segments::spill::SpillArea;
use segments::Storage;

pub use self::router::shared_subs::Strategy;

mod link;
pub mod protocol;
mod router;
mod segments;

pub type ConnectionId = usize;
pub type RouterId = usize;
pub type NodeId = usize;
pub type Topic = String;
pub type Filter = String;
pub type TopicId = usize;
pub type Offset = (u64, u64);
pub type Cursor = (u64, u64);

pub type ClientId = String;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RouterConfig {
    pub max_connections: usize,
    pub max_outgoing_packet_count: u64,
    pub max_segment_size: usize,
    pub max_segment_count: usize,
    pub custom_segment: Option<HashMap<String, SegmentConfig>>,
    pub initialized_filters: Option<Vec<Filter>>,
    // defaults to Round Robin
    #[serde(default)]
    pub shared_subscriptions_strategy: Strategy,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SegmentConfig {
    pub max_segment_size: usize,
    pub max_segment_count: usize,
}
