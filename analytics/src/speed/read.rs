//! What the speed layer reads from the bridge's tables: the rows of one window, the late rows
//! received since the last look, and a window's counts taken again.
//!
//! Every query filters on device time (`ts`; `at` for order events, which are server time)
//! and on the bridge's receipt time (`received_at`), both indexed (bridge migration V6). The
//! rule of a window `[s, e)` with allowed lateness `L`: an event with device time in it
//! counts if `received_at <= e + L`, and is late otherwise.

use anyhow::Context;
use bridge::store::types::Timestamp;
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

use super::aggregate::{TourKind, WindowAggregate};
use super::window::Window;

/// Positions of a window received in `($3, $4]` (`$3` NULL: from the first).
const WINDOW_POSITIONS: &str = "\
SELECT taxi_id, lat, lon, speed_kmh FROM positions
 WHERE ts >= $1 AND ts < $2 AND received_at <= $4
   AND ($3::timestamptz IS NULL OR received_at > $3)";

/// Tour events of a window received in time, each tour and kind once: the same event sent
/// again with another seq is one event (the first by device time, then seq, as the tour
/// processor judges them).
const WINDOW_TOUR_EVENTS: &str = "\
SELECT DISTINCT ON (tour_id, kind) kind, lat, lon, meter_cents FROM tour_events
 WHERE ts >= $1 AND ts < $2 AND received_at <= $3
 ORDER BY tour_id, kind, ts, seq";

/// Orders (kind 'order': messages and invoices are not orders) sent and accepted in a window
/// of server time.
const WINDOW_ORDERS: &str = "\
SELECT count(*) FILTER (WHERE e.state = 'sent'), count(*) FILTER (WHERE e.state = 'accepted')
  FROM order_events e JOIN orders o ON o.order_id = e.order_id
 WHERE e.at >= $1 AND e.at < $2 AND e.state IN ('sent', 'accepted') AND o.kind = 'order'";

/// Late rows received in `($1, $2]` with device time in `[$3, $4)`, per window of `$5` ms
/// with allowed lateness `$6` ms.
const LATE_ROWS: &str = "\
WITH received AS (
    SELECT ts, received_at FROM positions
     WHERE received_at > $1 AND received_at <= $2 AND ts >= $3 AND ts < $4
    UNION ALL
    SELECT ts, received_at FROM tour_events
     WHERE received_at > $1 AND received_at <= $2 AND ts >= $3 AND ts < $4
), binned AS (
    SELECT date_bin($5::bigint * interval '1 millisecond', ts, timestamptz 'epoch') AS window_start,
           received_at
      FROM received
)
SELECT window_start, count(*) FROM binned
 WHERE received_at > window_start + ($5::bigint + $6::bigint) * interval '1 millisecond'
 GROUP BY window_start
 ORDER BY window_start";

/// Positions of a window in time (`received_at <= $3`), and late ones received by `$4`.
const RECOUNT_POSITIONS: &str = "\
SELECT count(*) FILTER (WHERE received_at <= $3),
       count(*) FILTER (WHERE received_at > $3 AND received_at <= $4)
  FROM positions WHERE ts >= $1 AND ts < $2";

/// Tours started and ended of a window in time, as the window counts them, and late tour
/// events received by `$4`.
const RECOUNT_TOUR_EVENTS: &str = "\
SELECT count(DISTINCT tour_id) FILTER (WHERE kind = 'started' AND received_at <= $3),
       count(DISTINCT tour_id) FILTER (WHERE kind = 'ended' AND received_at <= $3),
       count(*) FILTER (WHERE received_at > $3 AND received_at <= $4)
  FROM tour_events WHERE ts >= $1 AND ts < $2";

fn instant(ms: i64, what: &str) -> anyhow::Result<Timestamp> {
    Timestamp::new(ms).with_context(|| format!("{what} ({ms} ms) is not a storable instant"))
}

/// Reads the window's positions received in `(after_ms, until_ms]` (`after_ms` `None`:
/// from the first) into `aggregate`; returns how many.
pub async fn positions<C: GenericClient>(
    client: &C,
    window: Window,
    after_ms: Option<i64>,
    until_ms: i64,
    aggregate: &mut WindowAggregate,
) -> anyhow::Result<u64> {
    let start = instant(window.start_ms, "window start")?;
    let end = instant(window.end_ms, "window end")?;
    let after = after_ms.map(|ms| instant(ms, "read so far")).transpose()?;
    let until = instant(until_ms, "read until")?;
    let params: [&(dyn ToSql + Sync); 4] = [&start, &end, &after, &until];
    let rows = client
        .query_raw(WINDOW_POSITIONS, params.iter().copied())
        .await
        .context("reading the window's positions")?;
    pin_mut!(rows);
    let mut read = 0;
    while let Some(row) = rows.try_next().await.context("reading a position")? {
        let taxi_id: &str = row.try_get(0)?;
        aggregate.add_position(taxi_id, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        read += 1;
    }
    Ok(read)
}

/// Reads the window's positions received since `after_ms` (all of them with `None`), its
/// tour events and its orders into `aggregate`.
pub async fn window<C: GenericClient>(
    client: &C,
    window: Window,
    allowed_lateness_ms: i64,
    after_ms: Option<i64>,
    aggregate: &mut WindowAggregate,
) -> anyhow::Result<()> {
    let deadline_ms = window.lateness_deadline_ms(allowed_lateness_ms);
    positions(client, window, after_ms, deadline_ms, aggregate).await?;
    let start = instant(window.start_ms, "window start")?;
    let end = instant(window.end_ms, "window end")?;
    let deadline = instant(deadline_ms, "deadline")?;
    let params: [&(dyn ToSql + Sync); 3] = [&start, &end, &deadline];

    let tours = client
        .query(WINDOW_TOUR_EVENTS, &params)
        .await
        .context("reading the window's tour events")?;
    for row in &tours {
        let kind: &str = row.try_get(0)?;
        let Some(kind) = TourKind::parse(kind) else {
            continue; // The table's CHECK allows no other kind.
        };
        aggregate.add_tour_event(kind, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
    }

    let (sent, accepted) = orders(client, start, end).await?;
    aggregate.set_orders(sent, accepted);
    Ok(())
}

async fn orders<C: GenericClient>(
    client: &C,
    start: Timestamp,
    end: Timestamp,
) -> anyhow::Result<(i64, i64)> {
    let row = client
        .query_one(WINDOW_ORDERS, &[&start, &end])
        .await
        .context("counting the window's orders")?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Late rows (positions and tour events) received in `(after_ms, until_ms]` whose device
/// time is in `[from_ms, to_ms)`: how many per window start.
pub async fn late_rows<C: GenericClient>(
    client: &C,
    (after_ms, until_ms): (i64, i64),
    (from_ms, to_ms): (i64, i64),
    length_ms: i64,
    allowed_lateness_ms: i64,
) -> anyhow::Result<Vec<(i64, i64)>> {
    let after = instant(after_ms, "late scan start")?;
    let until = instant(until_ms, "late scan end")?;
    let from = instant(from_ms, "first window")?;
    let to = instant(to_ms, "closed windows' end")?;
    let rows = client
        .query(
            LATE_ROWS,
            &[&after, &until, &from, &to, &length_ms, &allowed_lateness_ms],
        )
        .await
        .context("counting late events")?;
    rows.iter()
        .map(|row| {
            let start: Timestamp = row.try_get(0)?;
            Ok((start.ms(), row.try_get(1)?))
        })
        .collect()
}

/// A closed window's counts taken again from what is committed now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recount {
    /// What the window's values count, as the window counts it.
    pub positions: i64,
    pub tours_started: i64,
    pub tours_ended: i64,
    pub orders_sent: i64,
    pub orders_accepted: i64,
    /// Late rows received up to the late scan's watermark.
    pub late: i64,
}

/// Counts the window's rows again; late rows only up to `late_until_ms` (what the late scan
/// has looked at).
pub async fn recount<C: GenericClient>(
    client: &C,
    window: Window,
    allowed_lateness_ms: i64,
    late_until_ms: i64,
) -> anyhow::Result<Recount> {
    let start = instant(window.start_ms, "window start")?;
    let end = instant(window.end_ms, "window end")?;
    let deadline = instant(window.lateness_deadline_ms(allowed_lateness_ms), "deadline")?;
    let late_until = instant(late_until_ms, "late scan watermark")?;
    let params: [&(dyn ToSql + Sync); 4] = [&start, &end, &deadline, &late_until];
    let positions = client
        .query_one(RECOUNT_POSITIONS, &params)
        .await
        .context("recounting the window's positions")?;
    let tours = client
        .query_one(RECOUNT_TOUR_EVENTS, &params)
        .await
        .context("recounting the window's tour events")?;
    let (orders_sent, orders_accepted) = orders(client, start, end).await?;
    let late_positions: i64 = positions.try_get(1)?;
    let late_tours: i64 = tours.try_get(2)?;
    Ok(Recount {
        positions: positions.try_get(0)?,
        tours_started: tours.try_get(0)?,
        tours_ended: tours.try_get(1)?,
        orders_sent,
        orders_accepted,
        late: late_positions + late_tours,
    })
}
