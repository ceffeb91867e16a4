//! Retention: dropping day partitions of `positions` once they are old and archived.
//!
//! Validation refuses a message whose device time is older than the retention window at
//! receive time, so every row of day D was received before `end of D + retention`. Day D is
//! dropped once that moment has passed and every bridge reports (in `archive_watermarks`)
//! that all it received up to at least that moment is in the archive. Without any watermark
//! nothing is dropped; a bridge that stops reporting holds retention back until its row is
//! removed (see `Store::remove_archive_watermark`).
//!
//! A partition is detached concurrently (writers and readers of `positions` are not blocked),
//! then dropped. One bridge at a time does this, under an advisory lock.

use tokio_postgres::Client;

use super::partitions::{self, DAY_MS};
use super::types::Timestamp;
use super::StoreError;

/// Advisory lock key held while dropping partitions ("taxi" "drop").
const DROP_LOCK: i64 = 0x7461_7869_6472_6f70;

/// Drops expired, archived day partitions; returns their names. Does nothing while another
/// session is at it.
pub(super) async fn drop_expired(
    client: &Client,
    now_ms: i64,
    retention_days: u32,
) -> Result<Vec<String>, StoreError> {
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&DROP_LOCK])
        .await?;
    if !row.try_get::<_, bool>(0)? {
        return Ok(Vec::new());
    }
    let result = drop_locked(client, now_ms, retention_days).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&DROP_LOCK])
        .await;
    let dropped = result?;
    unlocked?;
    Ok(dropped)
}

async fn drop_locked(
    client: &Client,
    now_ms: i64,
    retention_days: u32,
) -> Result<Vec<String>, StoreError> {
    let row = client
        .query_one("SELECT min(safe_until) FROM archive_watermarks", &[])
        .await?;
    let Some(archived_until) = row.try_get::<_, Option<Timestamp>>(0)? else {
        return Ok(Vec::new());
    };
    let retention_ms = i64::from(retention_days) * DAY_MS;
    let mut dropped = Vec::new();
    // Detached but not dropped (an earlier run failed in between) first, then attached.
    let mut expired = partitions::detached(client).await?;
    expired.extend(partitions::attached(client).await?);
    for partition in expired {
        let last_receive = (partition.day + 1)
            .saturating_mul(DAY_MS)
            .saturating_add(retention_ms);
        if last_receive > now_ms || last_receive > archived_until.ms() {
            continue;
        }
        let name = &partition.name;
        if partition.is_attached {
            let detach = if partition.detach_pending {
                format!("ALTER TABLE positions DETACH PARTITION {name} FINALIZE")
            } else {
                format!("ALTER TABLE positions DETACH PARTITION {name} CONCURRENTLY")
            };
            client.batch_execute(&detach).await?;
        }
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
            .await?;
        dropped.push(partition.name);
    }
    Ok(dropped)
}

/// Records that everything `bridge_id` received up to `safe_until_ms` is archived. The
/// watermark never moves back.
pub(super) async fn set_watermark(
    client: &Client,
    bridge_id: &str,
    safe_until_ms: i64,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO archive_watermarks AS w (bridge_id, safe_until, updated_at)
             VALUES ($1, $2, now())
             ON CONFLICT (bridge_id) DO UPDATE SET
                 safe_until = GREATEST(w.safe_until, excluded.safe_until),
                 updated_at = now()",
            &[
                &super::types::text(bridge_id),
                &Timestamp::clamped(safe_until_ms),
            ],
        )
        .await?;
    Ok(())
}
