//! Binary COPY writers: positions into `positions` (when none can be a duplicate) or into the
//! session's staging table.

use std::pin::pin;

use postgres_types::Type;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::{Error, Statement, Transaction};

use super::batch::PositionRow;

/// A temporary table per session, emptied at each commit (and on rollback).
pub(super) const CREATE_STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS positions_staging \
     (LIKE positions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS";

/// COPY of positions straight into `positions`, in the column order of [`POSITION_TYPES`].
pub const COPY_POSITIONS: &str = "COPY positions \
     (taxi_id, seq, ts, lat, lon, speed_kmh, heading_deg, accuracy_m, received_at) \
     FROM STDIN (FORMAT binary)";

pub(super) const COPY_STAGING: &str = "COPY positions_staging \
     (taxi_id, seq, ts, lat, lon, speed_kmh, heading_deg, accuracy_m, received_at) \
     FROM STDIN (FORMAT binary)";

/// The column types of a positions COPY.
pub const POSITION_TYPES: [Type; 9] = [
    Type::TEXT,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::FLOAT4,
    Type::TIMESTAMPTZ,
];

/// Copies positions with `statement` ([`COPY_POSITIONS`] or [`COPY_STAGING`], prepared);
/// returns the rows copied.
pub(super) async fn positions(
    tx: &Transaction<'_>,
    statement: &Statement,
    rows: &[PositionRow<'_>],
) -> Result<u64, Error> {
    let sink = tx.copy_in(statement).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &POSITION_TYPES));
    for row in rows {
        let taxi: &str = &row.taxi;
        writer
            .as_mut()
            .write(&[
                &taxi,
                &row.seq,
                &row.ts,
                &row.lat,
                &row.lon,
                &row.speed_kmh,
                &row.heading_deg,
                &row.accuracy_m,
                &row.received,
            ])
            .await?;
    }
    writer.finish().await
}
