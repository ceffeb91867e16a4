//! The broker's own messages: the retained `taxi/<id>/status` and the clients' last wills.
//!
//! They enter the router through one in-process link that belongs to the broker (client id
//! [`CLIENT_ID`], which no certificate id can take), with their QoS: 1 for a status, the
//! will's own for a will. Subscribers get each at the lower of that QoS and theirs, as any
//! other message. A task owns the link: it numbers the QoS 1 and 2 messages, completes the
//! QoS 2 handshake with the router and drops the acknowledgements.

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, PubRel, PubRelReason, Publish, PublishProperties, QoS};
use rumqttd::Notification;
use tokio::sync::mpsc;
use tracing::warn;

/// The router client id of the broker's own link (`:` is never part of a certificate id).
pub const CLIENT_ID: &str = ":broker";

/// A message the broker publishes in its own name.
#[derive(Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Option<PublishProperties>,
}

/// Hands messages to the task that owns the broker's link.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Message>,
}

impl Publisher {
    /// Starts the task that publishes through `link` (it ends when every `Publisher` is gone).
    pub fn start(link_tx: LinkTx, link_rx: LinkRx) -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, link_tx, link_rx));
        Publisher { tx }
    }

    /// Queues a message for the router.
    pub fn publish(&self, message: Message) {
        if self.tx.send(message).is_err() {
            warn!("the broker's publisher has stopped; a status or will is lost");
        }
    }

    /// Queues a retained `taxi/<id>/status` (QoS 1, JSON, see topics.md).
    pub fn status(&self, id: &str, state: &str, at_ms: i64) {
        let payload = serde_json::json!({ "state": state, "at_ms": at_ms }).to_string();
        self.publish(Message {
            topic: format!("taxi/{id}/status"),
            payload: payload.into_bytes(),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
        });
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Message>, mut link_tx: LinkTx, mut link_rx: LinkRx) {
    let mut last_pkid: u16 = 0;
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else {
                    return;
                };
                let mut publish =
                    Publish::new(message.topic.into_bytes(), message.payload, message.retain);
                publish.qos = message.qos;
                if message.qos != QoS::AtMostOnce {
                    last_pkid = last_pkid % u16::MAX + 1;
                    publish.pkid = last_pkid;
                }
                if link_tx.send(Packet::Publish(publish, message.properties)).await.is_err() {
                    warn!("the router closed the broker's own link");
                    return;
                }
            }
            notification = link_rx.next() => {
                let notification = match notification {
                    Ok(Some(notification)) => notification,
                    Ok(None) => continue,
                    Err(_) => {
                        warn!("the router closed the broker's own link");
                        return;
                    }
                };
                if let Notification::Unschedule = notification {
                    if link_rx.wake().await.is_err() {
                        return;
                    }
                    continue;
                }
                // QoS 2: the router keeps the message until it gets the PUBREL.
                if let Some(Packet::PubRec(rec, _)) = Option::<Packet>::from(notification) {
                    let pubrel = PubRel {
                        pkid: rec.pkid,
                        reason: PubRelReason::Success,
                    };
                    if link_tx.send(Packet::PubRel(pubrel, None)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
