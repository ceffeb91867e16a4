//! Writing one batch in one transaction, each message at most once.
//!
//! Positions, sorted by key, are copied (binary COPY) straight into `positions` inside a
//! savepoint; if one of them is already stored (a unique violation), the savepoint is rolled
//! back and they are copied into the session's staging table instead, then inserted skipping
//! stored keys. The newest fix of each taxi in the batch updates `latest_positions` when it
//! is newer than the stored one. Tour events and acks are sent as arrays and inserted
//! skipping stored keys (the tour processor judges tour events later). Statuses update
//! `taxi_status` when newer. Dead letters are inserted once per message (same topic, same
//! bytes). Rows are handled in key order, so concurrent batches lock keys in the same order and
//! do not deadlock.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement, Transaction};

use super::batch::Batch;
use super::{copy, StoreError, WriteStats};

/// From the staging table, skipping stored keys; returns how many were new.
const INSERT_STAGED: &str = "
INSERT INTO positions
    (taxi_id, seq, ts, lat, lon, speed_kmh, heading_deg, accuracy_m, received_at)
SELECT taxi_id, seq, ts, lat, lon, speed_kmh, heading_deg, accuracy_m, received_at
FROM positions_staging
ORDER BY taxi_id, ts, seq
ON CONFLICT DO NOTHING";

/// The newest position of each taxi of the batch, where newer than the stored one. A
/// duplicate never moves it: its (ts, seq) was applied when it was first stored.
const UPSERT_LATEST: &str = "
INSERT INTO latest_positions AS l
    (taxi_id, seq, ts, lat, lon, speed_kmh, heading_deg, accuracy_m, received_at)
SELECT * FROM unnest($1::text[], $2::int8[], $3::timestamptz[], $4::float8[], $5::float8[],
                     $6::float4[], $7::float4[], $8::float4[], $9::timestamptz[])
    AS b(taxi_id, seq, ts, lat, lon, speed_kmh, heading_deg, accuracy_m, received_at)
ORDER BY taxi_id
ON CONFLICT (taxi_id) DO UPDATE SET
    seq = excluded.seq, ts = excluded.ts, lat = excluded.lat, lon = excluded.lon,
    speed_kmh = excluded.speed_kmh, heading_deg = excluded.heading_deg,
    accuracy_m = excluded.accuracy_m, received_at = excluded.received_at
WHERE (excluded.ts, excluded.seq) > (l.ts, l.seq)";

/// Tour events, skipping stored keys. Their lifecycle is judged later, by the tour processor
/// (`crate::tours`), which owns `tours`.
const INSERT_TOUR_EVENTS: &str = "
INSERT INTO tour_events (taxi_id, seq, tour_id, kind, ts, lat, lon, meter_cents, received_at)
SELECT taxi_id, seq, tour_id, kind, ts, lat, lon, meter_cents, received_at
FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::timestamptz[],
            $6::float8[], $7::float8[], $8::int8[], $9::timestamptz[])
    AS b(taxi_id, seq, tour_id, kind, ts, lat, lon, meter_cents, received_at)
ORDER BY taxi_id, seq
ON CONFLICT DO NOTHING";

const INSERT_ACKS: &str = "
INSERT INTO acks (taxi_id, seq, order_id, state, ts, reason, received_at)
SELECT taxi_id, seq, order_id, state, ts, reason, received_at
FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
            $7::timestamptz[])
    AS b(taxi_id, seq, order_id, state, ts, reason, received_at)
ORDER BY taxi_id, seq
ON CONFLICT DO NOTHING";

/// A message delivered again has the same topic and bytes: stored once (index on both).
const INSERT_DEAD_LETTERS: &str = "
INSERT INTO dead_letters (received_at, topic, taxi_id, reason_code, reason, payload)
SELECT received_at, topic, taxi_id, reason_code, reason, payload
FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])
    AS b(received_at, topic, taxi_id, reason_code, reason, payload)
ON CONFLICT (topic, sha256(payload)) DO NOTHING";

/// The newest status per taxi wins; an equal `at` with another state is decided by the
/// receive time (a connection that opened and closed within one millisecond).
const UPSERT_STATUSES: &str = "
INSERT INTO taxi_status AS s (taxi_id, state, at, received_at)
SELECT DISTINCT ON (taxi_id) taxi_id, state, at, received_at
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
    AS b(taxi_id, state, at, received_at)
ORDER BY taxi_id, at DESC, received_at DESC
ON CONFLICT (taxi_id) DO UPDATE SET
    state = excluded.state, at = excluded.at, received_at = excluded.received_at
WHERE excluded.at > s.at
   OR (excluded.at = s.at AND excluded.state <> s.state AND excluded.received_at > s.received_at)";

/// The statements of a session, prepared once.
pub(super) struct Prepared {
    copy_positions: Statement,
    copy_staging: Statement,
    insert_staged: Statement,
    upsert_latest: Statement,
    insert_tour_events: Statement,
    insert_acks: Statement,
    upsert_statuses: Statement,
    insert_dead_letters: Statement,
}

impl Prepared {
    /// Creates the staging table and prepares the statements.
    pub async fn new(client: &Client) -> Result<Prepared, tokio_postgres::Error> {
        client.batch_execute(copy::CREATE_STAGING).await?;
        Ok(Prepared {
            copy_positions: client.prepare(copy::COPY_POSITIONS).await?,
            copy_staging: client.prepare(copy::COPY_STAGING).await?,
            insert_staged: client.prepare(INSERT_STAGED).await?,
            upsert_latest: client.prepare(UPSERT_LATEST).await?,
            insert_tour_events: client.prepare(INSERT_TOUR_EVENTS).await?,
            insert_acks: client.prepare(INSERT_ACKS).await?,
            upsert_statuses: client.prepare(UPSERT_STATUSES).await?,
            insert_dead_letters: client.prepare(INSERT_DEAD_LETTERS).await?,
        })
    }
}

/// How positions are inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PositionPath {
    /// COPY straight into `positions` (in a savepoint); on a duplicate key, roll back and
    /// take the staging path. The usual case: no duplicates.
    Direct,
    /// COPY into the staging table, then insert skipping stored keys. Chosen right away
    /// while duplicates keep coming (redelivery after a crash).
    Staging,
}

/// Writes the batch in one transaction; its partitions must exist.
pub(super) async fn write(
    client: &mut Client,
    prepared: &Prepared,
    batch: &Batch<'_>,
    path: PositionPath,
) -> Result<WriteStats, StoreError> {
    let mut stats = WriteStats::default();
    if batch.is_empty() {
        return Ok(stats);
    }
    let mut tx = client.transaction().await?;
    if !batch.positions.is_empty() {
        write_positions(&mut tx, prepared, batch, path, &mut stats).await?;
    }
    let t = &batch.tours;
    if !t.seq.is_empty() {
        stats.tour_events = tx
            .execute(
                &prepared.insert_tour_events,
                &[
                    &t.taxi,
                    &t.seq,
                    &t.tour_id,
                    &t.kind,
                    &t.ts,
                    &t.lat,
                    &t.lon,
                    &t.meter_cents,
                    &t.received,
                ],
            )
            .await?;
        stats.tour_events_duplicate = (t.seq.len() as u64).saturating_sub(stats.tour_events);
    }
    let a = &batch.acks;
    if !a.seq.is_empty() {
        stats.acks = tx
            .execute(
                &prepared.insert_acks,
                &[
                    &a.taxi,
                    &a.seq,
                    &a.order_id,
                    &a.state,
                    &a.ts,
                    &a.reason,
                    &a.received,
                ],
            )
            .await?;
        stats.acks_duplicate = (a.seq.len() as u64).saturating_sub(stats.acks);
    }
    let s = &batch.statuses;
    if !s.taxi.is_empty() {
        stats.statuses = tx
            .execute(
                &prepared.upsert_statuses,
                &[&s.taxi, &s.state, &s.at, &s.received],
            )
            .await?;
    }
    if !batch.dead_letters.is_empty() {
        let d = batch.dead_letter_columns();
        stats.dead_letters = tx
            .execute(
                &prepared.insert_dead_letters,
                &[
                    &d.received,
                    &d.topic,
                    &d.taxi,
                    &d.reason_code,
                    &d.reason,
                    &d.payload,
                ],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(stats)
}

async fn write_positions(
    tx: &mut Transaction<'_>,
    prepared: &Prepared,
    batch: &Batch<'_>,
    path: PositionPath,
    stats: &mut WriteStats,
) -> Result<(), StoreError> {
    let rows = &batch.positions;
    let mut inserted = None;
    if path == PositionPath::Direct {
        let savepoint = tx.savepoint("direct").await?;
        match copy::positions(&savepoint, &prepared.copy_positions, rows).await {
            Ok(n) => {
                savepoint.commit().await?;
                inserted = Some(n);
            }
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                savepoint.rollback().await?;
            }
            Err(e) => return Err(partition_error(e)),
        }
    }
    let inserted = match inserted {
        Some(n) => n,
        None => {
            copy::positions(tx, &prepared.copy_staging, rows)
                .await
                .map_err(partition_error)?;
            tx.execute(&prepared.insert_staged, &[])
                .await
                .map_err(partition_error)?
        }
    };
    stats.positions_inserted = inserted;
    stats.positions_duplicate = (rows.len() as u64).saturating_sub(inserted);

    let l = batch.latest();
    stats.latest_positions = tx
        .execute(
            &prepared.upsert_latest,
            &[
                &l.taxi,
                &l.seq,
                &l.ts,
                &l.lat,
                &l.lon,
                &l.speed_kmh,
                &l.heading_deg,
                &l.accuracy_m,
                &l.received,
            ],
        )
        .await?;
    Ok(())
}

/// A row whose day has no partition (dropped after it was checked) is worth a retry.
fn partition_error(e: tokio_postgres::Error) -> StoreError {
    let missing_partition = e
        .as_db_error()
        .is_some_and(|db| db.message().starts_with("no partition of relation"));
    if missing_partition {
        StoreError::MissingPartition(e)
    } else {
        StoreError::Postgres(e)
    }
}
