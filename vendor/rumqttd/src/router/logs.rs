use super::Ack;
use slab::Slab;
use tracing::{info, trace};

use crate::protocol::{
    matches, ConnAck, ConnAckProperties, PingResp, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishProperties, SubAck, UnsubAck,
};
use crate::router::filter_tree::FilterTree;
use crate::router::{DataRequest, FilterIdx, SubscriptionMeter, Waiters};
use crate::{ConnectionId, Filter, Offset, RouterConfig, Topic};

use crate::segments::durable::{LogFiles, Recovered};
use crate::segments::spill::{Spill, SpillRefused, Spillable};
use crate::segments::{CommitLog, Position};
use crate::Storage;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type PubWithProp = (Publish, Option<PublishProperties>);

#[derive(Clone)]
pub struct PublishData {
    pub publish: Publish,
    pub properties: Option<PublishProperties>,
    pub timestamp: Instant,
    /// Client id of the publisher (for subscriptions with no local)
    pub origin: Option<Arc<str>>,
    /// Number of the publish, the same in every filter's log it was appended to
    pub seq: u64,
}

impl From<PubWithProp> for PublishData {
    fn from((publish, properties): PubWithProp) -> Self {
        PublishData {
            publish,
            properties,
            timestamp: Instant::now(),
            origin: None,
            seq: 0,
        }
    }
}

impl PublishData {
    /// Whether the message has expired at `now`; if not, its message expiry interval is
    /// lowered by the time it has waited in the broker (MQTT 5 3.3.2.3.3).
    fn expire(&mut self, now: Instant) -> bool {
        if self.expired(now) {
            return true;
        }
        let waited = self.waited_secs(now);
        if let Some(interval) = self
            .properties
            .as_mut()
            .and_then(|p| p.message_expiry_interval.as_mut())
        {
            *interval -= waited;
        }
        false
    }

    /// Whether the message's expiry interval has passed at `now`.
    fn expired(&self, now: Instant) -> bool {
        self.properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .is_some_and(|interval| self.waited_secs(now) >= interval)
    }

    fn waited_secs(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.timestamp).as_secs()).unwrap_or(u32::MAX)
    }
}

/// A receipt time as nanoseconds since the Unix epoch (wall clock), so that it means the same
/// to the process that reads a durable log back after a restart.
fn to_unix_nanos(at: Instant) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let ago =
        i64::try_from(Instant::now().saturating_duration_since(at).as_nanos()).unwrap_or(i64::MAX);
    now.saturating_sub(ago)
}

/// [`to_unix_nanos`] back to an `Instant` of this process (now, if that is in the future).
fn from_unix_nanos(nanos: i64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let ago = u64::try_from(now.saturating_sub(nanos)).unwrap_or(0);
    let now = Instant::now();
    now.checked_sub(Duration::from_nanos(ago)).unwrap_or(now)
}

/// Version of the encoding below, its first byte.
const SPILL_VERSION: u8 = 2;

/// A spilled message: version, flags (QoS in bits 0-1, retain 2, dup 3, properties 4,
/// origin 5), packet id, number, receipt time (nanoseconds since the Unix epoch), topic,
/// payload, then the origin and the properties if any. Integers little-endian, byte strings
/// with a u32 length.
impl Spillable for PublishData {
    fn encode(&self, out: &mut Vec<u8>) {
        let publish = &self.publish;
        let flags = publish.qos as u8
            | u8::from(publish.retain) << 2
            | u8::from(publish.dup) << 3
            | u8::from(self.properties.is_some()) << 4
            | u8::from(self.origin.is_some()) << 5;
        out.push(SPILL_VERSION);
        out.push(flags);
        out.extend_from_slice(&publish.pkid.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&to_unix_nanos(self.timestamp).to_le_bytes());
        put_bytes(out, &publish.topic);
        put_bytes(out, &publish.payload);
        if let Some(origin) = &self.origin {
            put_bytes(out, origin.as_bytes());
        }
        if let Some(p) = &self.properties {
            let present = u8::from(p.payload_format_indicator.is_some())
                | u8::from(p.message_expiry_interval.is_some()) << 1
                | u8::from(p.topic_alias.is_some()) << 2
                | u8::from(p.response_topic.is_some()) << 3
                | u8::from(p.correlation_data.is_some()) << 4
                | u8::from(p.content_type.is_some()) << 5;
            out.push(present);
            if let Some(v) = p.payload_format_indicator {
                out.push(v);
            }
            if let Some(v) = p.message_expiry_interval {
                out.extend_from_slice(&v.to_le_bytes());
            }
            if let Some(v) = p.topic_alias {
                out.extend_from_slice(&v.to_le_bytes());
            }
            if let Some(v) = &p.response_topic {
                put_bytes(out, v.as_bytes());
            }
            if let Some(v) = &p.correlation_data {
                put_bytes(out, v);
            }
            if let Some(v) = &p.content_type {
                put_bytes(out, v.as_bytes());
            }
            out.extend_from_slice(&(p.user_properties.len() as u32).to_le_bytes());
            for (key, value) in &p.user_properties {
                put_bytes(out, key.as_bytes());
                put_bytes(out, value.as_bytes());
            }
            out.extend_from_slice(&(p.subscription_identifiers.len() as u32).to_le_bytes());
            for id in &p.subscription_identifiers {
                out.extend_from_slice(&(*id as u64).to_le_bytes());
            }
        }
    }

    fn decode(bytes: Bytes) -> Option<PublishData> {
        let mut r = Reader { bytes, at: 0 };
        if r.u8()? != SPILL_VERSION {
            return None;
        }
        let flags = r.u8()?;
        let pkid = u16::from_le_bytes(r.array()?);
        let seq = u64::from_le_bytes(r.array()?);
        let timestamp = from_unix_nanos(i64::from_le_bytes(r.array()?));
        let topic = r.bytes()?;
        let payload = r.bytes()?;
        let origin = if flags & 1 << 5 != 0 {
            Some(Arc::from(r.string()?.as_str()))
        } else {
            None
        };
        let properties = if flags & 1 << 4 != 0 {
            let present = r.u8()?;
            let mut p = PublishProperties::default();
            if present & 1 != 0 {
                p.payload_format_indicator = Some(r.u8()?);
            }
            if present & 1 << 1 != 0 {
                p.message_expiry_interval = Some(u32::from_le_bytes(r.array()?));
            }
            if present & 1 << 2 != 0 {
                p.topic_alias = Some(u16::from_le_bytes(r.array()?));
            }
            if present & 1 << 3 != 0 {
                p.response_topic = Some(r.string()?);
            }
            if present & 1 << 4 != 0 {
                p.correlation_data = Some(r.bytes()?);
            }
            if present & 1 << 5 != 0 {
                p.content_type = Some(r.string()?);
            }
            let count = u32::from_le_bytes(r.array()?);
            for _ in 0..count {
                let key = r.string()?;
                let value = r.string()?;
                p.user_properties.push((key, value));
            }
            let count = u32::from_le_bytes(r.array()?);
            for _ in 0..count {
                let id = u64::from_le_bytes(r.array()?);
                p.subscription_identifiers.push(usize::try_from(id).ok()?);
            }
            Some(p)
        } else {
            None
        };
        if r.at != r.bytes.len() {
            return None;
        }
        Some(PublishData {
            publish: Publish {
                dup: flags & 1 << 3 != 0,
                qos: crate::protocol::qos(flags & 0b11)?,
                pkid,
                retain: flags & 1 << 2 != 0,
                topic,
                payload,
            },
            properties,
            timestamp,
            origin,
            seq,
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Topics, payloads and properties are bounded by the packet size (a few MiB at most).
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a spilled message, refusing anything short or malformed.
struct Reader {
    bytes: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, len: usize) -> Option<Bytes> {
        let end = self.at.checked_add(len)?;
        if end > self.bytes.len() {
            return None;
        }
        let taken = self.bytes.slice(self.at..end);
        self.at = end;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.as_ref().try_into().ok()
    }

    fn bytes(&mut self) -> Option<Bytes> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        self.take(len)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

// TODO: remove this from here
impl Storage for PublishData {
    // TODO: calculate size of publish properties as well!
    fn size(&self) -> usize {
        let publish = &self.publish;
        4 + publish.topic.len() + publish.payload.len()
    }
}

/// Stores 'device' data and 'actions' data in native commitlog
/// organized by subscription filter. Device data is replicated
/// while actions data is not
pub struct DataLog {
    pub config: RouterConfig,
    /// Native commitlog data organized by subscription. Contains
    /// device data and actions data logs.
    ///
    /// Device data is replicated while actions data is not.
    /// Also has waiters used to wake connections/replicator tracker
    /// which are caught up with all the data on 'Filter' and waiting
    /// for new data
    pub native: Slab<Data<PublishData>>,
    /// Map of subscription filter name to filter index
    filter_indexes: HashMap<Filter, FilterIdx>,
    retained_publishes: HashMap<Topic, PublishData>,
    /// The same filters by their levels, to find those a topic matches (PATCHES.md, 22)
    filter_tree: FilterTree,
    /// Where full logs write the segments a durable reader still needs (PATCHES.md, 18)
    pub spill: Option<Spill>,
    /// Durable mode: the log directory and the number of the next new log's files
    /// (PATCHES.md, 21)
    durable: Option<(std::path::PathBuf, u64)>,
    /// Logs appended to since the last sync (durable mode)
    unsynced: std::collections::BTreeSet<FilterIdx>,
    /// Whether the retained messages changed since the last sync (durable mode)
    retained_changed: bool,
}

impl DataLog {
    pub fn new(config: RouterConfig) -> io::Result<DataLog> {
        let mut native = Slab::new();
        let mut filter_indexes = HashMap::new();
        let mut filter_tree = FilterTree::default();
        let retained_publishes = HashMap::new();

        if let Some(warmup_filters) = config.initialized_filters.clone() {
            for filter in warmup_filters {
                let data = Data::new(&filter, &config);

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = native.insert(data);
                filter_tree.insert(&filter, idx);
                filter_indexes.insert(filter, idx);
            }
        }

        Ok(DataLog {
            config,
            native,
            filter_tree,
            filter_indexes,
            retained_publishes,
            spill: None,
            durable: None,
            unsynced: Default::default(),
            retained_changed: false,
        })
    }

    pub fn meter(&mut self, filter: &str) -> Option<&mut SubscriptionMeter> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        Some(&mut data.meter)
    }

    pub fn waiters(&self, filter: &Filter) -> Option<&Waiters<DataRequest>> {
        self.native
            .get(*self.filter_indexes.get(filter)?)
            .map(|data| &data.waiters)
    }

    /// Takes the parked request of connection `id` for subscription `subscription` (its
    /// whole filter, `$share/<group>/...` included) from the log of `filter`.
    pub fn remove_waiters_for_id(
        &mut self,
        id: ConnectionId,
        filter: &Filter,
        subscription: &Filter,
    ) -> Option<DataRequest> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        let waiters = data.waiters.get_mut();

        waiters
            .iter()
            .position(|(conn_id, request)| *conn_id == id && request.filter == *subscription)
            .and_then(|index| {
                waiters
                    .swap_remove_back(index)
                    .map(|(_, data_req)| data_req)
            })
    }

    /// The logs of the filters `topic` matches.
    pub fn matches(&self, topic: &str) -> Vec<FilterIdx> {
        self.filter_tree.matches(topic)
    }

    pub fn next_native_offset(&mut self, filter: &str) -> (FilterIdx, Offset) {
        let (filter_idx, data) = match self.filter_indexes.get(filter) {
            Some(idx) => (*idx, self.native.get(*idx).unwrap()),
            None => {
                let mut data = Data::new(filter, &self.config);
                if let Some((dir, next)) = self.durable.as_mut() {
                    data.log.write_to(LogFiles::new(dir, *next, filter));
                    *next += 1;
                }

                // Add commitlog to datalog and add datalog index to filter to
                // datalog index map
                let idx = self.native.insert(data);
                self.filter_indexes.insert(filter.to_owned(), idx);
                self.filter_tree.insert(filter, idx);

                (idx, self.native.get(idx).unwrap())
            }
        };

        (filter_idx, data.log.next_offset())
    }

    /// Turns durable mode on (before any filter exists): each log writes its segments to
    /// `dir`, and the logs `recovered` there after a restart go on from their files. Returns
    /// the messages recovered per filter.
    pub fn durable(
        &mut self,
        dir: &std::path::Path,
        recovered: Recovered,
    ) -> io::Result<Vec<(Filter, u64)>> {
        let next = recovered
            .logs
            .iter()
            .map(|log| log.number + 1)
            .max()
            .unwrap_or(0);
        let mut found = Vec::new();
        for log in recovered.logs {
            let filter = log.filter.clone();
            let messages = log.messages();
            let files = LogFiles::new(dir, log.number, &filter);
            let mut data = Data::new(&filter, &self.config);
            data.log.restore(log, files);
            let bytes = data.log.spilled_bytes();
            let idx = self.native.insert(data);
            self.filter_indexes.insert(filter.clone(), idx);
            self.filter_tree.insert(&filter, idx);
            if let Some(spill) = self.spill.as_mut() {
                spill.count_recovered(idx, bytes);
            }
            found.push((filter, messages));
        }
        self.durable = Some((dir.to_owned(), next));
        Ok(found)
    }

    /// Whether logs write to disk (durable mode).
    pub fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// Notes that `filter_idx`'s log was appended to (durable mode: it waits for a sync).
    pub fn appended(&mut self, filter_idx: FilterIdx) {
        if self.durable.is_some() {
            self.unsynced.insert(filter_idx);
        }
    }

    /// Whether appends wait for [`Self::sync`] (durable mode).
    pub fn needs_sync(&self) -> bool {
        !self.unsynced.is_empty() || (self.retained_changed && self.durable.is_some())
    }

    /// The directory of durable mode.
    pub fn durable_dir(&self) -> Option<&std::path::Path> {
        self.durable.as_ref().map(|(dir, _)| dir.as_path())
    }

    /// Durable mode: writes and syncs every log appended to since the last sync; the number
    /// of logs synced. An error means that appends may not be on disk.
    pub fn sync(&mut self) -> io::Result<usize> {
        let mut synced = 0;
        while let Some(filter_idx) = self.unsynced.pop_first() {
            if let Some(data) = self.native.get_mut(filter_idx) {
                if data.log.sync()? {
                    synced += 1;
                }
            }
        }
        Ok(synced)
    }

    /// The index of a filter's log, if it has one.
    pub fn filter_idx(&self, filter: &str) -> Option<FilterIdx> {
        self.filter_indexes.get(filter).copied()
    }

    /// Where the next message appended to this filter's log will be.
    pub fn native_next_offset(&self, filter_idx: FilterIdx) -> Option<(u64, u64)> {
        self.native
            .get(filter_idx)
            .map(|data| data.log.next_offset())
    }

    pub fn native_readv(
        &mut self,
        filter_idx: FilterIdx,
        offset: Offset,
        len: u64,
    ) -> io::Result<(Position, Vec<(PublishData, Offset)>)> {
        // unwrap to get index of `self.native` is fine here, because when a new subscribe packet
        // arrives in `Router::handle_device_payload`, it first calls the function
        // `next_native_offset` which creates a new commitlog if one doesn't exist. So any new
        // reads will definitely happen on a valid filter.
        let data = self.native.get_mut(filter_idx).unwrap();
        let mut o = Vec::new();
        // Spilled segments are read back from disk (PATCHES.md, 18).
        let next = data
            .log
            .readv_with(offset, len, &mut o, self.spill.as_ref(), &data.filter)?;

        // Expired messages are dropped; the others go out with their remaining interval.
        let now = Instant::now();
        o.retain_mut(|(pubdata, _)| !pubdata.expire(now));

        Ok((next, o))
    }

    pub fn shadow(&mut self, filter: &str) -> Option<PubWithProp> {
        let data = self.native.get_mut(*self.filter_indexes.get(filter)?)?;
        data.log.last().map(|p| (p.publish, p.properties))
    }

    /// This method is called when the subscriber has caught up with the commit log. In which case,
    /// instead of actively checking for commits in each `Router::run_inner` iteration, we instead
    /// wait and only try reading again when new messages have been added to the commit log. This
    /// methods converts a `DataRequest` (which actively reads the commit log in `Router::consume`)
    /// to a `Waiter` (which only reads when notified).
    pub fn park(&mut self, id: ConnectionId, request: DataRequest) {
        // calling unwrap on index here is fine, because only place this function is called is in
        // `Router::consume` method, when the status after reading from commit log of the same
        // filter as `request` is "done", that is, the subscriber has caught up. In other words,
        // there has been atleast 1 call to `native_readv` for the same filter, which means if
        // `native_readv` hasn't paniced, so this won't panic either.
        let data = self.native.get_mut(request.filter_idx).unwrap();
        data.waiters.register(id, request);
    }

    /// Cleanup a connection from all the waiters
    pub fn clean(&mut self, id: ConnectionId) -> Vec<DataRequest> {
        let mut inflight = Vec::new();
        for (_, data) in self.native.iter_mut() {
            inflight.append(&mut data.waiters.remove(id));
        }

        inflight
    }

    pub fn insert_to_retained_publishes(
        &mut self,
        publish: Publish,
        publish_properties: Option<PublishProperties>,
        topic: Topic,
    ) {
        let pub_with_props = (publish, publish_properties);
        self.retained_publishes.insert(topic, pub_with_props.into());
        self.retained_changed = true;
    }

    pub fn remove_from_retained_publishes(&mut self, topic: Topic) {
        self.retained_changed |= self.retained_publishes.remove(&topic).is_some();
    }

    /// Durable mode: the retained messages, if they changed since the last call.
    pub fn retained_if_changed(&mut self) -> Option<&HashMap<Topic, PublishData>> {
        if !std::mem::take(&mut self.retained_changed) || self.durable.is_none() {
            return None;
        }
        Some(&self.retained_publishes)
    }

    /// Durable mode: the retained messages saved before a restart.
    pub fn restore_retained(&mut self, retained: HashMap<Topic, PublishData>) {
        self.retained_publishes = retained;
    }

    pub fn read_retained_messages(&mut self, filter: &str) -> Vec<PubWithProp> {
        trace!(info = "reading retain msg", filter = &filter);
        let now = Instant::now();

        // Expired retained messages are deleted; the stored interval stays as published, each
        // copy read gets what remains of it.
        self.retained_publishes
            .retain(|_, pubdata| !pubdata.expired(now));

        self.retained_publishes
            .iter()
            .filter(|(topic, _)| matches(topic, filter))
            .filter_map(|(_, p)| {
                let mut p = p.clone();
                (!p.expire(now)).then_some((p.publish, p.properties))
            })
            .collect()
    }
}

pub struct Data<T> {
    filter: Filter,
    pub log: CommitLog<T>,
    pub waiters: Waiters<DataRequest>,
    meter: SubscriptionMeter,
}

impl<T> Data<T>
where
    T: Storage + Clone,
{
    pub fn new(filter: &str, router_config: &RouterConfig) -> Data<T> {
        let mut max_segment_size = router_config.max_segment_size;
        let mut max_mem_segments = router_config.max_segment_count;

        // Override segment config for selected filter
        if let Some(config) = &router_config.custom_segment {
            for (f, segment_config) in config {
                if matches(filter, f) {
                    info!("Overriding segment config for filter: {}", filter);
                    max_segment_size = segment_config.max_segment_size;
                    max_mem_segments = segment_config.max_segment_count;
                }
            }
        }

        // max_segment_size: usize, max_mem_segments: usize
        let log = CommitLog::new(max_segment_size, max_mem_segments).unwrap();

        let waiters = Waiters::with_capacity(10);
        let metrics = SubscriptionMeter::default();
        Data {
            filter: filter.to_owned(),
            log,
            waiters,
            meter: metrics,
        }
    }

    /// The filter this log is for.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }
}

impl Data<PublishData> {
    /// Writes the oldest in-memory segment to the spill area instead of dropping it; false
    /// if it was not (no room, or the write failed: reported).
    pub fn spill_head(&mut self, spill: &mut Spill, log_id: usize) -> bool {
        match self.log.spill_head(spill, log_id, &self.filter) {
            Ok(_) => true,
            Err(SpillRefused::NoRoom { .. }) => false,
            Err(SpillRefused::Io(error)) => {
                spill.observer.spill_failed(&self.filter, "write", &error);
                false
            }
        }
    }

    /// Deletes the spilled segments every durable reader has passed (they are before
    /// `offset`); returns whether any are left.
    pub fn delete_spilled_before(&mut self, offset: u64, spill: &mut Spill, log_id: usize) -> bool {
        self.log
            .delete_spilled_before(offset, spill, log_id, &self.filter)
    }
}

impl<T> Data<T>
where
    T: Storage + Clone + Spillable,
{
    /// Writes to all the filters that are mapped to this publish topic
    /// and wakes up consumers that are matching this topic (if they exist)
    pub fn append(
        &mut self,
        item: T,
        notifications: &mut VecDeque<(ConnectionId, DataRequest)>,
    ) -> (Offset, &Filter) {
        let size = item.size();
        let offset = self.log.append_logged(item);
        if let Some(mut parked) = self.waiters.take() {
            notifications.append(&mut parked);
        }

        self.meter.count += 1;
        self.meter.total_size += size;

        (offset, &self.filter)
    }
}

/// Acks log for a subscription
#[derive(Debug)]
pub struct AckLog {
    // Committed acks per connection. First pkid, last pkid, data
    committed: VecDeque<Ack>,
    // Recorded qos 2 publishes
    recorded: VecDeque<(Publish, Option<PublishProperties>)>,
}

impl AckLog {
    /// New log
    pub fn new() -> AckLog {
        AckLog {
            committed: VecDeque::new(),
            recorded: VecDeque::new(),
        }
    }

    pub fn connack(&mut self, id: ConnectionId, ack: ConnAck, props: Option<ConnAckProperties>) {
        let ack = Ack::ConnAck(id, ack, props);
        self.committed.push_back(ack);
    }

    pub fn suback(&mut self, ack: SubAck) {
        let ack = Ack::SubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn puback(&mut self, ack: PubAck) {
        let ack = Ack::PubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn pubrec(&mut self, publish: Publish, props: Option<PublishProperties>, ack: PubRec) {
        let ack = Ack::PubRec(ack);
        self.recorded.push_back((publish, props));
        self.committed.push_back(ack);
    }

    pub fn pubrel(&mut self, ack: PubRel) {
        let ack = Ack::PubRel(ack);
        self.committed.push_back(ack);
    }

    pub fn pubcomp(&mut self, ack: PubComp) -> Option<(Publish, Option<PublishProperties>)> {
        let ack = Ack::PubComp(ack);
        self.committed.push_back(ack);
        self.recorded.pop_front()
    }

    /// The QoS 2 publish the next PUBREL releases into the log.
    pub fn next_recorded(&self) -> Option<&(Publish, Option<PublishProperties>)> {
        self.recorded.front()
    }

    pub fn pingresp(&mut self, ack: PingResp) {
        let ack = Ack::PingResp(ack);
        self.committed.push_back(ack);
    }

    pub fn unsuback(&mut self, ack: UnsubAck) {
        let ack = Ack::UnsubAck(ack);
        self.committed.push_back(ack);
    }

    pub fn readv(&mut self) -> &mut VecDeque<Ack> {
        &mut self.committed
    }
}

#[cfg(test)]
mod test {
    use super::DataLog;
    use crate::router::shared_subs::Strategy;
    use crate::RouterConfig;

    use super::{PublishData, Spillable};
    use crate::protocol::{Publish, PublishProperties, QoS};
    use crate::router::durability::NoObserver;
    use crate::segments::spill::{Spill, SpillArea};
    use crate::segments::{CommitLog, Position};
    use bytes::Bytes;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn message(n: u64, payload: usize) -> PublishData {
        let mut publish = Publish::new(
            format!("taxi/t-{}/position", n % 100).into_bytes(),
            vec![(n % 251) as u8; payload],
            false,
        );
        publish.qos = QoS::AtLeastOnce;
        publish.pkid = (n % 65_000) as u16 + 1;
        let mut data = PublishData::from((publish, None));
        data.seq = n;
        data.origin = Some(Arc::from(format!("t-{}", n % 100).as_str()));
        data
    }

    #[test]
    fn a_spilled_message_comes_back_as_it_was() {
        let mut data = message(7, 100);
        data.publish.retain = true;
        data.publish.dup = true;
        data.properties = Some(PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: None,
            response_topic: Some("reply/here".to_owned()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".to_owned(), "v".to_owned())],
            subscription_identifiers: vec![],
            content_type: Some("application/json".to_owned()),
        });
        data.timestamp -= Duration::from_secs(5);
        for data in [message(8, 0), data] {
            let mut bytes = Vec::new();
            data.encode(&mut bytes);
            let back = PublishData::decode(Bytes::from(bytes.clone())).expect("decodes");
            assert_eq!(back.publish, data.publish);
            assert_eq!(back.properties, data.properties);
            assert_eq!(back.origin, data.origin);
            assert_eq!(back.seq, data.seq);
            // Stored as wall-clock time (it must mean the same after a restart): equal up to
            // the two clock readings of the conversion.
            let apart = back.timestamp.max(data.timestamp) - back.timestamp.min(data.timestamp);
            assert!(apart < Duration::from_millis(5), "{apart:?} apart");
            // Anything shorter, or longer, is refused rather than misread.
            for cut in 0..bytes.len() {
                assert!(PublishData::decode(Bytes::copy_from_slice(&bytes[..cut])).is_none());
            }
            bytes.push(0);
            assert!(PublishData::decode(Bytes::from(bytes)).is_none());
        }
    }

    /// Spill throughput (`cargo test --release -- --ignored --nocapture spill_throughput`):
    /// 200 MB of 1 KiB messages through a log of 4 MiB x 4, every full segment spilled, then
    /// read back.
    #[test]
    #[ignore]
    fn spill_throughput() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(
            SpillArea::open(dir.path(), 1 << 30).unwrap(),
            Arc::new(NoObserver),
        );
        let count = 200_000;
        // The same appends to a log that drops its full segments: the cost without spilling.
        let mut dropping: CommitLog<PublishData> = CommitLog::new(4 << 20, 4).unwrap();
        let started = Instant::now();
        for n in 0..count {
            dropping.append(message(n, 1024));
        }
        let in_memory = started.elapsed();
        drop(dropping);
        let mut log: CommitLog<PublishData> = CommitLog::new(4 << 20, 4).unwrap();
        let started = Instant::now();
        for n in 0..count {
            if log.next_append_drops_head() {
                log.spill_head(&mut spill, 0, "f").unwrap();
            }
            log.append(message(n, 1024));
        }
        let written = started.elapsed();
        let on_disk = spill.used();
        let started = Instant::now();
        let (mut cursor, mut read) = ((0, 0), 0);
        loop {
            let mut out = Vec::new();
            let position = log
                .readv_with(cursor, 100, &mut out, Some(&spill), "f")
                .unwrap();
            read += out.len();
            match position {
                Position::Next { end, .. } => cursor = end,
                Position::Done { .. } => break,
            }
        }
        let read_time = started.elapsed();
        assert_eq!(read, count as usize);
        let mb = |bytes: u64, time: Duration| bytes as f64 / 1e6 / time.as_secs_f64();
        eprintln!(
            "{count} messages of 1 KiB appended in {written:?} ({:.0} MB/s; {in_memory:?} \
             without spilling), {on_disk} bytes spilled; read back in {read_time:?} \
             ({:.0} MB/s)",
            mb(count * 1024, written),
            mb(on_disk, read_time)
        );
    }

    #[test]
    fn publish_filters_updating_correctly_on_new_topic_subscription() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("topic/a");
        data.matches("topic/a");

        data.next_native_offset("topic/+");

        assert_eq!(data.matches("topic/a").len(), 2);
    }

    #[test]
    fn publish_filters_updating_correctly_on_new_publish() {
        let config = RouterConfig {
            max_segment_size: 1024,
            max_connections: 10,
            max_segment_count: 10,
            max_outgoing_packet_count: 1024,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Strategy::RoundRobin,
        };
        let mut data = DataLog::new(config).unwrap();
        data.next_native_offset("+/+");

        assert_eq!(data.matches("topic/a").len(), 1);
    }

    //     #[test]
    //     fn appends_are_written_to_correct_commitlog() {
    //         pretty_env_logger::init();
    //         let config = RouterConfig {
    //             instant_ack: true,
    //             max_segment_size: 1024,
    //             max_connections: 10,
    //             max_mem_segments: 10,
    //             max_disk_segments: 0,
    //             max_read_len: 1024,
    //             log_dir: None,
    //             dynamic_log: true,
    //         };

    //         let mut data = DataLog::new(config).unwrap();
    //         data.next_native_offset("/devices/2321/actions");
    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/events/imu/jsonarray", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }

    //         for i in 0..2 {
    //             let publish = Publish::new("/devices/2321/actions", QoS::AtLeastOnce, vec![1, 2, 3]);
    //             let v = data.native_append(publish);
    //             dbg!(v);
    //         }
    //     }
}
