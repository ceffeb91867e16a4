use std::{
    collections::{HashMap, VecDeque},
    sync::atomic::{AtomicUsize, Ordering},
    sync::Arc,
    time::Instant,
};

use flume::{Receiver, Sender};
use parking_lot::Mutex;
use tracing::{error, warn};

use crate::{
    protocol::{Packet, QoS},
    router::{FilterIdx, MAX_CHANNEL_CAPACITY},
    Cursor, Notification,
};

use super::{Forward, IncomingMeter, OutgoingMeter};

const MAX_INFLIGHT: usize = 100;
const MAX_PKID: u16 = MAX_INFLIGHT as u16;

#[derive(Debug)]
pub struct Incoming {
    /// Identifier associated with connected client
    pub(crate) client_id: String,
    /// Recv buffer
    pub(crate) buffer: Arc<Mutex<VecDeque<Packet>>>,
    /// incoming metrics
    pub(crate) meter: IncomingMeter,
    /// Packets held back, in order, while a log they go to is full of messages a durable
    /// subscriber has yet to read (publishes and PUBRELs, and the SUBSCRIBEs and
    /// UNSUBSCRIBEs behind them); acknowledgements and pings are not held
    pub(crate) held: VecDeque<Packet>,
    /// Bytes of the publishes held, shared with the link (its owner stops reading its client
    /// while they are many)
    pub(crate) held_bytes: Arc<AtomicUsize>,
    /// Since when, and for which log, packets have been held
    pub(crate) held_since: Option<(Instant, FilterIdx)>,
}

impl Incoming {
    #[inline]
    pub(crate) fn new(client_id: String) -> Self {
        Self {
            buffer: Arc::new(Mutex::new(VecDeque::new())),
            meter: Default::default(),
            client_id,
            held: VecDeque::new(),
            held_bytes: Arc::new(AtomicUsize::new(0)),
            held_since: None,
        }
    }

    /// Holds `packet` back behind those already held.
    pub(crate) fn hold(&mut self, packet: Packet) {
        self.held_bytes
            .fetch_add(held_size(&packet), Ordering::Relaxed);
        self.held.push_back(packet);
    }

    /// Takes the held packets (to process them again).
    pub(crate) fn take_held(&mut self) -> VecDeque<Packet> {
        self.held_bytes.store(0, Ordering::Relaxed);
        std::mem::take(&mut self.held)
    }

    #[inline]
    pub(crate) fn buffer(&self) -> Arc<Mutex<VecDeque<Packet>>> {
        self.buffer.clone()
    }

    #[inline]
    pub(crate) fn exchange(&mut self, mut v: VecDeque<Packet>) -> VecDeque<Packet> {
        std::mem::swap(&mut v, &mut self.buffer.lock());
        v
    }
}

/// What a held packet counts for: its topic and payload (other packets are small).
fn held_size(packet: &Packet) -> usize {
    match packet {
        Packet::Publish(publish, _) => publish.topic.len() + publish.payload.len(),
        _ => 4,
    }
}

#[derive(Debug)]
pub struct Outgoing {
    /// Identifier associated with connected client
    pub(crate) client_id: String,
    /// Send buffer
    pub(crate) data_buffer: Arc<Mutex<VecDeque<Notification>>>,
    /// Handle which is given to router to allow router to communicate with this connection
    pub(crate) handle: Sender<()>,
    /// The buffer to keep track of inflight packets.
    inflight_buffer: VecDeque<(u16, FilterIdx, Option<Cursor>)>,
    /// PubRels waiting for PubComp
    pub(crate) unacked_pubrels: VecDeque<u16>,
    /// Last packet id
    last_pkid: u16,
    /// QoS 1 and 2 messages in flight at most (the client's Receive Maximum, at most
    /// `MAX_INFLIGHT`); a QoS 2 message counts until its PUBCOMP
    max_inflight: usize,
    /// Metrics of outgoing messages of this connection
    pub(crate) meter: OutgoingMeter,
}

impl Outgoing {
    #[inline]
    pub(crate) fn new(client_id: String) -> (Self, Receiver<()>) {
        let (handle, rx) = flume::bounded(MAX_CHANNEL_CAPACITY);
        // Buffers grow on demand: an idle connection should cost next to nothing.
        let data_buffer = VecDeque::new();
        let inflight_buffer = VecDeque::new();
        let unacked_pubrels = VecDeque::new();

        let outgoing = Self {
            client_id,
            data_buffer: Arc::new(Mutex::new(data_buffer)),
            inflight_buffer,
            unacked_pubrels,
            handle,
            last_pkid: 0,
            max_inflight: MAX_INFLIGHT,
            meter: Default::default(),
        };

        (outgoing, rx)
    }

    #[inline]
    pub(crate) fn buffer(&self) -> Arc<Mutex<VecDeque<Notification>>> {
        self.data_buffer.clone()
    }

    /// Limits the messages in flight to the client's Receive Maximum (never above the
    /// router's own limit).
    pub fn set_max_inflight(&mut self, max: u16) {
        self.max_inflight = usize::from(max).clamp(1, MAX_INFLIGHT);
    }

    pub fn free_slots(&self) -> usize {
        self.max_inflight
            .saturating_sub(self.inflight_buffer.len() + self.unacked_pubrels.len())
    }

    /// The next packet id not held by a message in flight or a PUBREL waiting for its
    /// PUBCOMP (QoS 1 and 2 messages complete in different orders).
    fn next_pkid(&mut self) -> u16 {
        for _ in 0..MAX_PKID {
            self.last_pkid = self.last_pkid % MAX_PKID + 1;
            let pkid = self.last_pkid;
            let in_use = self.inflight_buffer.iter().any(|(p, _, _)| *p == pkid)
                || self.unacked_pubrels.contains(&pkid);
            if !in_use {
                break;
            }
        }
        self.last_pkid
    }

    pub fn push_notification(&mut self, notification: Notification) -> usize {
        let mut buffer = self.data_buffer.lock();
        buffer.push_back(notification);
        buffer.len()
    }

    /// Push packets to the outgoing buffer. QoS 1 and 2 messages get a packet id and are
    /// tracked until acknowledged; QoS 0 ones are not (each message has its own QoS: the
    /// lower of its publisher's and the subscription's).
    pub fn push_forwards(
        &mut self,
        publishes: impl Iterator<Item = Forward>,
        filter_idx: usize,
    ) -> (usize, usize) {
        let data_buffer = self.data_buffer.clone();
        let mut buffer = data_buffer.lock();

        for mut p in publishes {
            self.meter.publish_count += 1;
            if p.publish.qos == QoS::AtMostOnce {
                p.publish.pkid = 0;
                buffer.push_back(Notification::Forward(p));
                continue;
            }

            let pkid = self.next_pkid();
            p.publish.pkid = pkid;
            self.inflight_buffer.push_back((pkid, filter_idx, p.cursor));
            self.meter.total_size += p.publish.topic.len() + p.publish.payload.len();
            buffer.push_back(Notification::Forward(p));
        }

        let buffer_count = buffer.len();
        let inflight_count = self.inflight_buffer.len();

        if inflight_count > MAX_INFLIGHT {
            warn!(
                "More inflight publishes than max allowed, inflight count = {}, max allowed = {}",
                inflight_count, MAX_INFLIGHT
            );
        }

        (buffer_count, inflight_count)
    }

    // Returns (unsolicited, outoforder) flags
    // Return: Out of order or unsolicited acks
    pub fn register_ack(&mut self, pkid: u16) -> Option<()> {
        let (head, _filter_idx, _cursor) = self.inflight_buffer.pop_front()?;

        // We don't support out of order acks
        if pkid != head {
            error!(pkid, head, "out of order ack.");
            return None;
        }

        Some(())
    }

    pub fn register_pubrec(&mut self, pkid: u16) {
        // NOTE: we can return true of false
        // to indicate whether this is duplicate or not
        self.unacked_pubrels.push_back(pkid);
    }

    // OASIS standards don't specify anything about ordering of PubComp
    // https://docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html#_Toc3901240
    // But we don't support out of order / unsolicited pubcomps
    // to be consistent with the behaviour with other acks
    pub fn register_pubcomp(&mut self, pkid: u16) -> Option<()> {
        let id = self.unacked_pubrels.pop_front()?;

        // out of order acks
        if pkid != id {
            error!(pkid, id, "out of order ack.");
            return None;
        }

        Some(())
    }

    /// The oldest unacknowledged message of `filter_idx` in flight to this client.
    pub fn oldest_inflight(&self, filter_idx: FilterIdx) -> Option<Cursor> {
        self.inflight_buffer
            .iter()
            .filter(|(_, idx, _)| *idx == filter_idx)
            .filter_map(|(_, _, cursor)| *cursor)
            .min_by_key(|cursor| cursor.1)
    }

    /// The oldest unacknowledged cursor of each filter. Not necessarily the first in the
    /// inflight buffer: a shared group rewound by a leaving member hands older messages to the
    /// members that are still there, after the newer ones they already have in flight.
    pub fn retransmission_map(&self) -> HashMap<FilterIdx, Cursor> {
        let mut o: HashMap<FilterIdx, Cursor> = HashMap::new();
        for (_, filter_idx, cursor) in self.inflight_buffer.iter() {
            // if cursor in None, it means it was a retained publish
            let Some(cursor) = cursor else {
                continue;
            };
            o.entry(*filter_idx)
                .and_modify(|oldest| *oldest = (*oldest).min(*cursor))
                .or_insert(*cursor);
        }

        o
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn retransmission_map_is_calculated_accurately() {
        let (mut outgoing, _) = Outgoing::new("retransmission-test".to_string());
        let mut result = HashMap::new();

        result.insert(0, (0, 8));
        result.insert(1, (0, 1));
        result.insert(2, (1, 1));
        result.insert(3, (1, 0));

        let buf = vec![
            (1, 0, Some((0, 8))),
            (1, 0, Some((0, 10))),
            (1, 1, Some((0, 1))),
            (3, 1, Some((0, 4))),
            (2, 2, Some((1, 1))),
            (1, 2, Some((2, 6))),
            (1, 2, Some((2, 1))),
            (1, 3, Some((1, 0))),
            (1, 3, Some((1, 1))),
            (1, 3, Some((1, 3))),
            (1, 3, Some((1, 3))),
        ];

        outgoing.inflight_buffer.extend(buf);
        assert_eq!(outgoing.retransmission_map(), result);
    }

    #[test]
    fn retransmission_map_takes_the_oldest_cursor_not_the_first() {
        // Messages 100.. in flight, then 50.. handed out again after a shared group rewound.
        let (mut outgoing, _) = Outgoing::new("rewound-member".to_string());
        outgoing.inflight_buffer.extend(vec![
            (1, 0, Some((0, 100))),
            (2, 0, Some((0, 101))),
            (3, 0, Some((0, 50))),
            (4, 0, Some((0, 51))),
            (5, 1, Some((1, 3))),
            (6, 1, Some((0, 9))),
        ]);
        let map = outgoing.retransmission_map();
        assert_eq!(map.get(&0), Some(&(0, 50)));
        assert_eq!(map.get(&1), Some(&(0, 9)));
    }

    // use super::{Outgoing, MAX_INFLIGHT};
    // use crate::protocol::{Publish, QoS};
    // use crate::router::Forward;
    // use crate::Notification;
    //
    // fn publishes(count: usize) -> impl Iterator<Item = Forward> {
    //     (1..=count).map(|v| {
    //         let publish = Publish {
    //             dup: false,
    //             retain: false,
    //             pkid: 0,
    //             qos: QoS::AtLeastOnce,
    //             topic: "hello/world".into(),
    //             payload: vec![1, 2, 3].into(),
    //         };
    //
    //         Forward {
    //             cursor: (0, v as u64),
    //             publish,
    //             size: 0,
    //         }
    //     })
    // }
    //
    // #[test]
    // fn inflight_ring_buffer_pushes_correctly() {
    //     let count = MAX_INFLIGHT as usize;
    //     let (mut outgoing, _rx) = Outgoing::new("hello".to_owned());
    //     outgoing.push_forwards(publishes(count), 1, 3);
    //
    //     // Index 1 = (0, 1), Index 99 = (0, 99), Index 0 = (0, 100)
    //     assert_eq!(outgoing.inflight_buffer[0].unwrap().1, (0, count as u64));
    //     for i in 1..count {
    //         assert_eq!(outgoing.inflight_buffer[i].unwrap().1, (0, i as u64));
    //     }
    //
    //     // Outgoing publish pkids are as expected
    //     for (i, o) in outgoing.data_buffer.lock().iter().enumerate() {
    //         let pkid = match &o {
    //             Notification::Forward(f) => f.publish.pkid,
    //             _ => unreachable!(),
    //         };
    //
    //         assert_eq!(pkid, i as u16 + 1);
    //     }
    // }
    //
    // #[test]
    // fn inflight_ring_buffer_pops_correctly() {
    //     let (mut outgoing, _rx) = Outgoing::new("hello".to_owned());
    //     outgoing.push_forwards(publishes(MAX_INFLIGHT as usize), 1, 3);
    //
    //     for pkid in 1..=MAX_INFLIGHT {
    //         let (unsolicited, outoforder) = outgoing.register_ack(pkid);
    //         assert_eq!(unsolicited, false);
    //         assert_eq!(outoforder, false);
    //     }
    // }
}
