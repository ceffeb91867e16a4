//! The `orders` and `order_events` tables (migration V2): creating, reading, claiming orders
//! for (re)delivery, expiring them, and recording inbox messages seen on the broker.
//!
//! A few connections are shared by every caller (tokio-postgres pipelines concurrent
//! queries on one connection); a broken one is replaced on next use.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Row};

use crate::store::types::Timestamp;

/// Columns of an order as the API shows it, with times in unix milliseconds.
const ORDER_COLUMNS: &str = "order_id, taxi_id, kind, text, sender, created_at, expires_at, \
                             state, updated_at, attempts, reason";

/// What a new order is made of (validated by the caller).
#[derive(Clone, Debug)]
pub struct NewOrder {
    pub order_id: String,
    pub taxi_id: String,
    pub kind: String,
    pub text: String,
    pub sender: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
}

/// An order to publish on `taxi/<taxi_id>/inbox`.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub order_id: String,
    pub taxi_id: String,
    pub kind: String,
    pub text: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
}

impl From<&NewOrder> for Outgoing {
    fn from(order: &NewOrder) -> Outgoing {
        Outgoing {
            order_id: order.order_id.clone(),
            taxi_id: order.taxi_id.clone(),
            kind: order.kind.clone(),
            text: order.text.clone(),
            created_ms: order.created_ms,
            expires_ms: order.expires_ms,
        }
    }
}

/// One state change of an order.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OrderEvent {
    pub state: String,
    pub at_ms: i64,
    pub detail: Option<String>,
}

/// An order as stored.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OrderView {
    pub order_id: String,
    pub taxi_id: String,
    pub kind: String,
    pub text: String,
    pub sender: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub state: String,
    pub updated_ms: i64,
    /// Publications by dispatch so far.
    pub attempts: i32,
    /// The taxi's reason, for a rejection.
    pub reason: Option<String>,
    /// Every state change, oldest first (only when one order is asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<OrderEvent>>,
}

/// What [`Orders::create`] did.
#[derive(Debug)]
pub enum Created {
    /// Stored: publish it.
    New,
    /// The same order (taxi, kind, text) was stored before: a retried request.
    Repeated(OrderView),
    /// The order id is taken by a different order.
    Conflict(OrderView),
}

/// What happened when an inbox message seen on the broker was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Unknown before: recorded with sender `mqtt`.
    Recorded,
    /// A queued order is now `sent`.
    Sent,
    /// Already recorded; nothing changed.
    Known,
    /// The order id belongs to another taxi's order: ignored.
    OtherTaxi,
}

pub type OrdersError = tokio_postgres::Error;

/// An order id: 1 to 128 characters of `A-Z`, `a-z`, `0-9`, `_`, `.`, `:`, `-`.
pub fn is_valid_order_id(id: &str) -> bool {
    (1..=wire::MAX_REF_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// True for errors worth retrying: the connection, or the server being unavailable or in
/// conflict (serialization, deadlock); false for a statement PostgreSQL refuses.
pub fn is_retryable(error: &OrdersError) -> bool {
    match error.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            ["08", "40", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
        }
    }
}

/// The dispatch tables, over a few shared connections.
pub struct Orders {
    url: String,
    connections: Vec<Mutex<Option<Arc<Client>>>>,
    next: AtomicUsize,
}

impl Orders {
    /// Opens nothing yet: connections are made on first use.
    pub fn new(url: &str, connections: usize) -> Arc<Orders> {
        Arc::new(Orders {
            url: url.to_owned(),
            connections: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// A live connection, connecting (again) if needed.
    async fn client(&self) -> Result<Arc<Client>, OrdersError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut slot = self.connections[n].lock().await;
        if let Some(client) = slot.as_ref() {
            if !client.is_closed() {
                return Ok(client.clone());
            }
        }
        let mut config: tokio_postgres::Config = self.url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("bridge-dispatch");
        }
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "dispatch PostgreSQL connection ended");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Stores a new order as `queued`, counted as published once now (the caller publishes
    /// it right away).
    pub async fn create(&self, order: &NewOrder) -> Result<Created, OrdersError> {
        let client = self.client().await?;
        let created = Timestamp::clamped(order.created_ms);
        let expires = order.expires_ms.map(Timestamp::clamped);
        let inserted = client
            .execute(
                "INSERT INTO orders (order_id, taxi_id, kind, text, sender, created_at, \
                 expires_at, state, updated_at, attempts, last_sent_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', now(), 1, now()) \
                 ON CONFLICT (order_id) DO NOTHING",
                &[
                    &order.order_id,
                    &order.taxi_id,
                    &order.kind,
                    &order.text,
                    &order.sender,
                    &created,
                    &expires,
                ],
            )
            .await?;
        if inserted == 1 {
            return Ok(Created::New);
        }
        match self.get(&order.order_id, false).await? {
            Some(existing)
                if existing.taxi_id == order.taxi_id
                    && existing.kind == order.kind
                    && existing.text == order.text =>
            {
                Ok(Created::Repeated(existing))
            }
            Some(existing) => Ok(Created::Conflict(existing)),
            // Deleted in between: extremely unlikely; report it as a conflict with itself.
            None => Box::pin(self.create(order)).await,
        }
    }

    /// One order, with its history if asked for.
    pub async fn get(
        &self,
        order_id: &str,
        with_history: bool,
    ) -> Result<Option<OrderView>, OrdersError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1"),
                &[&order_id],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut order = order_view(&row)?;
        if with_history {
            let events = client
                .query(
                    "SELECT state, at, detail FROM order_events WHERE order_id = $1 ORDER BY id",
                    &[&order_id],
                )
                .await?;
            order.history = Some(
                events
                    .iter()
                    .map(|row| {
                        Ok(OrderEvent {
                            state: row.try_get(0)?,
                            at_ms: row.try_get::<_, Timestamp>(1)?.ms(),
                            detail: row.try_get(2)?,
                        })
                    })
                    .collect::<Result<_, OrdersError>>()?,
            );
        }
        Ok(Some(order))
    }

    /// A taxi's orders, newest first; only those in `state` if given.
    pub async fn list_for_taxi(
        &self,
        taxi_id: &str,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<OrderView>, OrdersError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE taxi_id = $1 \
                     AND ($2::text IS NULL OR state = $2) \
                     ORDER BY created_at DESC, order_id LIMIT $3"
                ),
                &[&taxi_id, &state, &limit],
            )
            .await?;
        rows.iter().map(order_view).collect()
    }

    /// Claims orders due for publication: queued ones never published, and (if
    /// `resend_after` is given) queued or sent ones last published longer ago than that,
    /// doubled for each earlier attempt up to 32 times (a taxi that stays offline is not
    /// flooded; it gets its orders when it comes online anyway). Expired ones are never
    /// claimed. Claiming counts an attempt.
    pub async fn claim_due(
        &self,
        resend_after: Option<Duration>,
        limit: i64,
    ) -> Result<Vec<Outgoing>, OrdersError> {
        let resend_ms: i64 = resend_after.map(|d| d.as_millis() as i64).unwrap_or(0);
        self.claim(
            "state IN ('queued', 'sent') AND (last_sent_at IS NULL \
             OR ($1::bigint > 0 AND last_sent_at < now() - $1::bigint \
                 * power(2, least(greatest(attempts - 1, 0), 5)) * interval '1 millisecond'))",
            &[&resend_ms, &limit],
        )
        .await
    }

    /// Claims every order of one taxi not confirmed yet (queued or sent, not expired).
    pub async fn claim_for_taxi(&self, taxi_id: &str) -> Result<Vec<Outgoing>, OrdersError> {
        self.claim(
            "state IN ('queued', 'sent') AND taxi_id = $1",
            &[&taxi_id, &10_000i64],
        )
        .await
    }

    /// Claims every order not confirmed yet and not published since `connected_ms` (after
    /// dispatch reconnected to the broker at that time).
    pub async fn claim_unconfirmed(
        &self,
        connected_ms: i64,
        limit: i64,
    ) -> Result<Vec<Outgoing>, OrdersError> {
        self.claim(
            "state IN ('queued', 'sent') AND (last_sent_at IS NULL OR last_sent_at < $1)",
            &[&Timestamp::clamped(connected_ms), &limit],
        )
        .await
    }

    /// `condition` uses `$1`; `$2` is the limit.
    async fn claim(
        &self,
        condition: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Outgoing>, OrdersError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "UPDATE orders SET last_sent_at = now(), attempts = attempts + 1 \
                     WHERE order_id IN ( \
                       SELECT order_id FROM orders WHERE {condition} \
                       AND (expires_at IS NULL OR expires_at > now()) \
                       ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     RETURNING order_id, taxi_id, kind, text, created_at, expires_at"
                ),
                params,
            )
            .await?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                Ok(Outgoing {
                    order_id: row.try_get(0)?,
                    taxi_id: row.try_get(1)?,
                    kind: row.try_get(2)?,
                    text: row.try_get(3)?,
                    created_ms: row.try_get::<_, Timestamp>(4)?.ms(),
                    expires_ms: row.try_get::<_, Option<Timestamp>>(5)?.map(Timestamp::ms),
                })
            })
            .collect::<Result<Vec<_>, OrdersError>>()?;
        claimed.sort_by_key(|o| o.created_ms);
        Ok(claimed)
    }

    /// Makes an order due again at the next sweep (its publication failed).
    pub async fn unclaim(&self, order_id: &str) -> Result<(), OrdersError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE orders SET last_sent_at = NULL WHERE order_id = $1",
                &[&order_id],
            )
            .await?;
        Ok(())
    }

    /// Makes orders due again at the next sweep (their publication failed).
    pub async fn unclaim_all(&self, order_ids: &[String]) -> Result<(), OrdersError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE orders SET last_sent_at = NULL WHERE order_id = ANY($1)",
                &[&order_ids],
            )
            .await?;
        Ok(())
    }

    /// Marks orders past their expiry (not answered yet) `expired`; returns how many.
    pub async fn expire_due(&self) -> Result<u64, OrdersError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "WITH expired AS ( \
                   UPDATE orders SET state = 'expired', updated_at = now() \
                   WHERE state IN ('queued', 'sent', 'received') AND expires_at <= now() \
                   RETURNING order_id, expires_at), \
                 events AS ( \
                   INSERT INTO order_events (order_id, state, at, detail) \
                   SELECT order_id, 'expired', now(), 'expired at ' || expires_at FROM expired \
                   RETURNING 1) \
                 SELECT count(*) FROM events",
                &[],
            )
            .await?;
        Ok(row.try_get::<_, i64>(0)? as u64)
    }

    /// Records an inbox message seen on the broker (see `order_seen_on_inbox` in V2).
    pub async fn seen_on_inbox(
        &self,
        taxi_id: &str,
        message: &wire::InboxMessage,
    ) -> Result<Seen, OrdersError> {
        let client = self.client().await?;
        let kind = match message.kind {
            wire::InboxKind::Order => "order",
            wire::InboxKind::Message => "message",
            wire::InboxKind::Invoice => "invoice",
        };
        let created = Timestamp::clamped(message.created_ms);
        let expires = message.expires_ms.map(Timestamp::clamped);
        // PostgreSQL text cannot hold NUL.
        let text = message.text.replace('\0', "\u{fffd}");
        let row = client
            .query_one(
                "SELECT order_seen_on_inbox($1, $2, $3, $4, $5, $6)",
                &[
                    &message.order_id,
                    &taxi_id,
                    &kind,
                    &text,
                    &created,
                    &expires,
                ],
            )
            .await?;
        let outcome: String = row.try_get(0)?;
        Ok(match outcome.as_str() {
            "recorded" => Seen::Recorded,
            "sent" => Seen::Sent,
            "other_taxi" => Seen::OtherTaxi,
            _ => Seen::Known,
        })
    }
}

fn order_view(row: &Row) -> Result<OrderView, OrdersError> {
    Ok(OrderView {
        order_id: row.try_get(0)?,
        taxi_id: row.try_get(1)?,
        kind: row.try_get(2)?,
        text: row.try_get(3)?,
        sender: row.try_get(4)?,
        created_ms: row.try_get::<_, Timestamp>(5)?.ms(),
        expires_ms: row.try_get::<_, Option<Timestamp>>(6)?.map(Timestamp::ms),
        state: row.try_get(7)?,
        updated_ms: row.try_get::<_, Timestamp>(8)?.ms(),
        attempts: row.try_get(9)?,
        reason: row.try_get(10)?,
        history: None,
    })
}
