//! The speed layer's tables: its progress (`windows_progress`, one row) and `windows`.
//!
//! Every step (closing a window, counting late events, recounting a window, publishing one)
//! moves its mark in the same transaction as the rows it writes, after locking the progress
//! row: a step is done once or not at all, whatever crashes, and two analytics processes on
//! one database take turns instead of counting twice.

use anyhow::Context;
use bridge::store::types::Timestamp;
use tokio_postgres::GenericClient;

use super::aggregate::WindowRow;
use super::window::Window;
use super::zone::FLEET;

/// The row of `windows_progress`, in unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub first_window_start_ms: i64,
    pub closed_until_ms: i64,
    pub late_until_ms: i64,
    pub recounted_until_ms: i64,
    pub published_until_ms: i64,
}

const COLUMNS: &str =
    "first_window_start, closed_until, late_until, recounted_until, published_until";

fn instant(ms: i64) -> anyhow::Result<Timestamp> {
    Timestamp::new(ms).with_context(|| format!("{ms} ms is not a storable instant"))
}

fn progress(row: &tokio_postgres::Row) -> anyhow::Result<Progress> {
    let ms = |i: usize| -> anyhow::Result<i64> { Ok(row.try_get::<_, Timestamp>(i)?.ms()) };
    Ok(Progress {
        first_window_start_ms: ms(0)?,
        closed_until_ms: ms(1)?,
        late_until_ms: ms(2)?,
        recounted_until_ms: ms(3)?,
        published_until_ms: ms(4)?,
    })
}

/// Creates the progress row on the very first start: everything begins at `start_ms` (the
/// start of the current window). Leaves an existing row alone.
pub async fn create<C: GenericClient>(client: &C, start_ms: i64) -> anyhow::Result<()> {
    let start = instant(start_ms)?;
    client
        .execute(
            &format!(
                "INSERT INTO windows_progress ({COLUMNS}, updated_at) \
                 VALUES ($1, $1, $1, $1, $1, now()) ON CONFLICT DO NOTHING"
            ),
            &[&start],
        )
        .await
        .context("creating the windows' progress row")?;
    Ok(())
}

/// The progress row, if there is one yet.
pub async fn read<C: GenericClient>(client: &C) -> anyhow::Result<Option<Progress>> {
    let row = client
        .query_opt(&format!("SELECT {COLUMNS} FROM windows_progress"), &[])
        .await
        .context("reading the windows' progress")?;
    row.as_ref().map(progress).transpose()
}

/// Locks the progress row until the end of the transaction and reads it.
pub async fn lock<C: GenericClient>(transaction: &C) -> anyhow::Result<Progress> {
    let row = transaction
        .query_opt(
            &format!("SELECT {COLUMNS} FROM windows_progress FOR UPDATE"),
            &[],
        )
        .await
        .context("locking the windows' progress")?
        .context("the windows' progress row is missing")?;
    progress(&row)
}

/// Which mark of the progress row.
#[derive(Clone, Copy, Debug)]
pub enum Mark {
    ClosedUntil,
    LateUntil,
    RecountedUntil,
    PublishedUntil,
}

impl Mark {
    fn column(self) -> &'static str {
        match self {
            Mark::ClosedUntil => "closed_until",
            Mark::LateUntil => "late_until",
            Mark::RecountedUntil => "recounted_until",
            Mark::PublishedUntil => "published_until",
        }
    }
}

/// Moves a mark forward (never back) to `ms`.
pub async fn advance<C: GenericClient>(client: &C, mark: Mark, ms: i64) -> anyhow::Result<()> {
    let column = mark.column();
    client
        .execute(
            &format!(
                "UPDATE windows_progress SET {column} = GREATEST({column}, $1), updated_at = now()"
            ),
            &[&instant(ms)?],
        )
        .await
        .with_context(|| format!("moving the windows' {column} on"))?;
    Ok(())
}

/// Writes the rows of a closed window. A row already there (the window closed again after
/// its progress was reset by hand) gets the new values and keeps its late events.
pub async fn write_window<C: GenericClient>(
    client: &C,
    window: Window,
    rows: &[WindowRow],
    computed_at_ms: i64,
) -> anyhow::Result<()> {
    let column = |f: fn(&WindowRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let zones: Vec<&str> = rows.iter().map(|r| r.zone.as_str()).collect();
    let avg: Vec<Option<f64>> = rows.iter().map(|r| r.avg_speed_kmh).collect();
    let max: Vec<Option<f64>> = rows.iter().map(|r| r.max_speed_kmh).collect();
    client
        .execute(
            "INSERT INTO windows (window_start, window_end, zone, positions, taxis, avg_speed_kmh,
                                  max_speed_kmh, tours_started, tours_ended, revenue_cents,
                                  orders_sent, orders_accepted, late_events, computed_at)
             SELECT $1, $2, z, p, t, a, m, ts, te, r, os, oa, l, $3
               FROM unnest($4::text[], $5::bigint[], $6::bigint[], $7::float8[], $8::float8[],
                           $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[],
                           $13::bigint[], $14::bigint[])
                 AS u(z, p, t, a, m, ts, te, r, os, oa, l)
             ON CONFLICT (window_start, zone) DO UPDATE SET
                 window_end = excluded.window_end, positions = excluded.positions,
                 taxis = excluded.taxis, avg_speed_kmh = excluded.avg_speed_kmh,
                 max_speed_kmh = excluded.max_speed_kmh, tours_started = excluded.tours_started,
                 tours_ended = excluded.tours_ended, revenue_cents = excluded.revenue_cents,
                 orders_sent = excluded.orders_sent, orders_accepted = excluded.orders_accepted,
                 computed_at = excluded.computed_at",
            &[
                &instant(window.start_ms)?,
                &instant(window.end_ms)?,
                &instant(computed_at_ms)?,
                &zones,
                &column(|r| r.positions),
                &column(|r| r.taxis),
                &avg,
                &max,
                &column(|r| r.tours_started),
                &column(|r| r.tours_ended),
                &column(|r| r.revenue_cents),
                &column(|r| r.orders_sent),
                &column(|r| r.orders_accepted),
                &column(|r| r.late_events),
            ],
        )
        .await
        .context("writing the window's rows")?;
    Ok(())
}

/// Adds late events to the fleet row of the window starting at `window_start_ms`; false if
/// there is no such row.
pub async fn add_late_events<C: GenericClient>(
    client: &C,
    window_start_ms: i64,
    late: i64,
) -> anyhow::Result<bool> {
    let updated = client
        .execute(
            "UPDATE windows SET late_events = late_events + $2 WHERE window_start = $1 AND zone = $3",
            &[&instant(window_start_ms)?, &late, &FLEET],
        )
        .await
        .context("adding late events")?;
    Ok(updated > 0)
}

/// The fleet row of a closed window.
pub async fn fleet_row<C: GenericClient>(
    client: &C,
    window_start_ms: i64,
) -> anyhow::Result<Option<WindowRow>> {
    let rows = window_rows(client, window_start_ms, true).await?;
    Ok(rows.into_iter().next())
}

/// The rows of a closed window: the fleet row first, then the zones by id (or the fleet row
/// only).
pub async fn window_rows<C: GenericClient>(
    client: &C,
    window_start_ms: i64,
    fleet_only: bool,
) -> anyhow::Result<Vec<WindowRow>> {
    let rows = client
        .query(
            "SELECT zone, positions, taxis, avg_speed_kmh, max_speed_kmh, tours_started,
                    tours_ended, revenue_cents, orders_sent, orders_accepted, late_events
               FROM windows
              WHERE window_start = $1 AND (zone = $2 OR NOT $3)
              ORDER BY zone = $2 DESC, zone",
            &[&instant(window_start_ms)?, &FLEET, &fleet_only],
        )
        .await
        .context("reading a window's rows")?;
    rows.iter()
        .map(|row| {
            Ok(WindowRow {
                zone: row.try_get(0)?,
                positions: row.try_get(1)?,
                taxis: row.try_get(2)?,
                avg_speed_kmh: row.try_get(3)?,
                max_speed_kmh: row.try_get(4)?,
                tours_started: row.try_get(5)?,
                tours_ended: row.try_get(6)?,
                revenue_cents: row.try_get(7)?,
                orders_sent: row.try_get(8)?,
                orders_accepted: row.try_get(9)?,
                late_events: row.try_get(10)?,
            })
        })
        .collect()
}

/// Sets the late events of a window's fleet row.
pub async fn set_late_events<C: GenericClient>(
    client: &C,
    window_start_ms: i64,
    late: i64,
) -> anyhow::Result<()> {
    client
        .execute(
            "UPDATE windows SET late_events = $2 WHERE window_start = $1 AND zone = $3",
            &[&instant(window_start_ms)?, &late, &FLEET],
        )
        .await
        .context("setting late events")?;
    Ok(())
}

/// The windows closed and not published yet: their start and end, oldest first, at most
/// `limit`.
pub async fn unpublished<C: GenericClient>(
    client: &C,
    progress: &Progress,
    limit: i64,
) -> anyhow::Result<Vec<(Window, i64)>> {
    let rows = client
        .query(
            "SELECT window_start, window_end, computed_at FROM windows
              WHERE zone = $1 AND window_start >= $2 AND window_end <= $3
              ORDER BY window_start LIMIT $4",
            &[
                &FLEET,
                &instant(progress.published_until_ms)?,
                &instant(progress.closed_until_ms)?,
                &limit,
            ],
        )
        .await
        .context("looking for windows to publish")?;
    rows.iter()
        .map(|row| {
            let start: Timestamp = row.try_get(0)?;
            let end: Timestamp = row.try_get(1)?;
            let computed: Timestamp = row.try_get(2)?;
            Ok((
                Window {
                    start_ms: start.ms(),
                    end_ms: end.ms(),
                },
                computed.ms(),
            ))
        })
        .collect()
}
