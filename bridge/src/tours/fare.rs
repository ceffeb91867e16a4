//! A tour's track from the stored positions, and its fare.

use tokio_postgres::Transaction;

use super::lifecycle::{StoredEvent, Tour};
use super::tariff::{Fare, Tariff, TrackPoint};
use crate::store::types::Timestamp;

/// The taxi's fixes between the start and the end (device time, both included), in order.
const TRACK: &str = "
SELECT ts, lat, lon FROM positions
WHERE taxi_id = $1 AND ts >= $2 AND ts <= $3
ORDER BY ts, seq";

/// The track of `tour` ended by `end`: the start event's position, the stored fixes of the
/// taxi in between, the end event's position.
pub async fn track(
    tx: &Transaction<'_>,
    tour: &Tour,
    end: &StoredEvent,
) -> Result<Vec<TrackPoint>, tokio_postgres::Error> {
    let rows = tx
        .query(
            TRACK,
            &[
                &tour.taxi_id,
                &Timestamp::clamped(tour.started_ms),
                &Timestamp::clamped(end.ts_ms),
            ],
        )
        .await?;
    let mut track = Vec::with_capacity(rows.len() + 2);
    track.push(TrackPoint {
        ts_ms: tour.started_ms,
        lat: tour.start_lat,
        lon: tour.start_lon,
    });
    for row in &rows {
        track.push(TrackPoint {
            ts_ms: row.try_get::<_, Timestamp>(0)?.ms(),
            lat: row.try_get(1)?,
            lon: row.try_get(2)?,
        });
    }
    track.push(TrackPoint {
        ts_ms: end.ts_ms,
        lat: end.lat,
        lon: end.lon,
    });
    Ok(track)
}

/// The fare of `tour` ended by `end`, and how many fixes it was computed over.
pub async fn fare(
    tx: &Transaction<'_>,
    tariff: &Tariff,
    tour: &Tour,
    end: &StoredEvent,
) -> Result<(Fare, usize), tokio_postgres::Error> {
    let track = track(tx, tour, end).await?;
    Ok((tariff.fare(&track), track.len()))
}
