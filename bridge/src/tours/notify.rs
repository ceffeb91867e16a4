//! Invoices to the backoffice: each `invoices` row not yet acknowledged by the broker is
//! published on `backoffice/invoices` (QoS 1) over the bridge's own mTLS connection
//! (client id `<client_id>.<bridge id>-tours`), and marked published once the PUBACK
//! arrives. Whatever was not acknowledged (broker down, bridge killed) is published again
//! later, so a consumer may see an invoice twice (same `tour_id`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use tokio::sync::{oneshot, Mutex};
use tracing::{info, warn};

use crate::config::MqttConfig;
use crate::store::types::Timestamp;

/// How long one publish may wait for its PUBACK.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Invoices looked at per sweep.
const SWEEP_LIMIT: i64 = 100;

/// Publishes on `backoffice/invoices` and tells when the broker has acknowledged.
#[derive(Clone)]
pub struct InvoicePublisher {
    client: AsyncClient,
    /// Waiting for their packet id, in publish order.
    pending: Arc<Mutex<Acks>>,
    /// Connected to the broker now (nothing is published while not).
    connected: Arc<AtomicBool>,
}

#[derive(Default)]
struct Acks {
    /// Publishes handed to the client, not yet written (no packet id yet), in order.
    unnumbered: VecDeque<oneshot::Sender<()>>,
    /// Written, waiting for their PUBACK.
    by_pkid: HashMap<u16, oneshot::Sender<()>>,
}

impl InvoicePublisher {
    /// Connects (and keeps reconnecting) in the background.
    pub fn start(config: &MqttConfig, bridge_id: &str) -> anyhow::Result<InvoicePublisher> {
        let client_id = format!("{}.{bridge_id}-tours", config.client_id);
        let mut options = crate::source::mtls_options(config, &client_id)
            .context("the invoice publisher's connection")?;
        // A new session after each reconnect: nothing old is sent again behind our back.
        options.set_clean_session(true);
        let (client, eventloop) = crate::source::client(options, 16);
        let pending = Arc::new(Mutex::new(Acks::default()));
        let connected = Arc::new(AtomicBool::new(false));
        tokio::spawn(drive(
            client_id,
            eventloop,
            pending.clone(),
            connected.clone(),
        ));
        Ok(InvoicePublisher {
            client,
            pending,
            connected,
        })
    }

    /// Whether the connection to the broker is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Publishes one invoice and waits for the broker's PUBACK.
    pub async fn publish(&self, invoice: &wire::Invoice) -> anyhow::Result<()> {
        let (acked_tx, acked) = oneshot::channel();
        {
            // Under the lock: the client writes publishes in the order they are queued here.
            let mut pending = self.pending.lock().await;
            self.client
                .try_publish(
                    wire::INVOICES_TOPIC,
                    QoS::AtLeastOnce,
                    false,
                    invoice.to_json(),
                )
                .context("queueing the publish")?;
            pending.unnumbered.push_back(acked_tx);
        }
        match tokio::time::timeout(PUBACK_TIMEOUT, acked).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => anyhow::bail!("the connection to the broker was lost before the PUBACK"),
            Err(_) => anyhow::bail!("no PUBACK within {PUBACK_TIMEOUT:?}"),
        }
    }
}

/// Polls the connection forever; matches PUBACKs to the waiting publishes.
async fn drive(
    client_id: String,
    mut eventloop: EventLoop,
    pending: Arc<Mutex<Acks>>,
    connected: Arc<AtomicBool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                connected.store(true, Ordering::Release);
                info!(client_id, "invoice publisher connected to the broker");
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut pending = pending.lock().await;
                if let Some(acked) = pending.unnumbered.pop_front() {
                    pending.by_pkid.insert(pkid, acked);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(acked) = pending.lock().await.by_pkid.remove(&ack.pkid) {
                    let _ = acked.send(());
                }
            }
            Ok(_) => {}
            Err(e) => {
                connected.store(false, Ordering::Release);
                warn!(client_id, error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "invoice publisher: no connection to the broker");
                metrics::counter!("bridge_mqtt_errors_total").increment(1);
                {
                    // Every waiting publish fails; its invoice is published again later.
                    let mut pending = pending.lock().await;
                    pending.unnumbered.clear();
                    pending.by_pkid.clear();
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Publishes invoices not yet acknowledged, oldest first, and marks each once acknowledged.
/// Returns how many were published. Several bridges may sweep at once: each invoice is
/// taken by one of them. Does nothing while the publisher is not connected.
pub async fn sweep(
    client: &mut tokio_postgres::Client,
    publisher: &InvoicePublisher,
) -> anyhow::Result<usize> {
    if !publisher.is_connected() {
        return Ok(0);
    }
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {} FROM invoices WHERE published_at IS NULL \
                 ORDER BY issued_at LIMIT $1 FOR UPDATE SKIP LOCKED",
                super::invoice::COLUMNS
            ),
            &[&SWEEP_LIMIT],
        )
        .await
        .context("reading unpublished invoices")?;
    let mut published = 0;
    for row in &rows {
        let invoice = super::invoice::from_row(row).context("reading an invoice")?;
        if let Err(e) = publisher.publish(&invoice).await {
            warn!(
                tour_id = invoice.tour_id,
                error = format!("{e:#}"),
                "invoice not published on backoffice/invoices; trying again later"
            );
            metrics::counter!("bridge_invoice_publish_failures_total").increment(1);
            break;
        }
        tx.execute(
            "UPDATE invoices SET published_at = $2 WHERE tour_id = $1",
            &[
                &invoice.tour_id,
                &Timestamp::clamped(crate::source::now_ms()),
            ],
        )
        .await?;
        published += 1;
    }
    tx.commit().await.context("marking invoices published")?;
    metrics::counter!("bridge_invoices_published_total").increment(published as u64);
    Ok(published)
}
