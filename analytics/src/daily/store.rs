//! The daily aggregates in PostgreSQL (`daily_fleet`, `daily_zone`; V3__daily.sql).
//!
//! A day is replaced whole in one transaction: its rows are deleted and written again, so a
//! day run twice leaves what one run leaves. In the same transaction the source's running
//! total of trips (`cumulative_trips`) is brought up to date for that day and every later
//! one. Every row written or changed is marked unpublished (`published_at`,
//! `zones_published_at` NULL) until the lake has it, so a publication that failed, even in a
//! process that died since, is done by the next run.
//!
//! Every day written is notified on [`RECOMPUTED_CHANNEL`] when the transaction commits, so
//! that readers caching days (the reporting API) drop them.
//!
//! Writers of one source hold a lock ([`lock`]) from the first write to the last
//! publication, so that two of them (the schedule and an `analytics aggregate` by hand) never
//! interleave their running totals or publish each other's rows half way.
//!
//! Days travel as `YYYY-MM-DD` text and instants as microseconds, so no date library has to
//! be taught to the PostgreSQL driver.

use anyhow::{anyhow, Context};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use tokio_postgres::{Client, GenericClient, Row};

use super::calendar;
use super::summary::{DaySummary, OrderOutcomes, Source, StoredDay, Totals, ZoneRow};

/// The channel on which each recomputed day (`YYYY-MM-DD`) is notified when its
/// transaction commits: the day itself and the later days whose running totals moved.
pub const RECOMPUTED_CHANNEL: &str = "daily_recomputed";

/// Advisory lock class of the daily aggregates ("dail"); the second key is the source.
const LOCK_CLASS: i32 = 0x6461_696c;

/// Takes the source's lock on this connection (waiting for another holder).
pub async fn lock(client: &Client, source: Source) -> anyhow::Result<()> {
    client
        .execute(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&LOCK_CLASS, &source.name()],
        )
        .await
        .context("PostgreSQL: locking the daily aggregates")?;
    Ok(())
}

/// Releases [`lock`]. (A connection that ends releases it too.)
pub async fn unlock(client: &Client, source: Source) -> anyhow::Result<()> {
    client
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&LOCK_CLASS, &source.name()],
        )
        .await
        .context("PostgreSQL: unlocking the daily aggregates")?;
    Ok(())
}

/// Replaces `summary`'s day and updates the running totals (the caller holds [`lock`]).
/// Returns how many later days' running totals moved.
pub async fn replace_day(client: &mut Client, summary: &DaySummary) -> anyhow::Result<u64> {
    let day = summary.day.to_string();
    let source = summary.source.name();
    let t = &summary.totals;
    let orders = t.orders;
    let tx = client
        .transaction()
        .await
        .context("PostgreSQL: starting a transaction")?;
    tx.execute(
        "DELETE FROM daily_zone WHERE day = $1::text::date AND source = $2",
        &[&day, &source],
    )
    .await
    .context("PostgreSQL: deleting from daily_zone")?;
    tx.execute(
        "DELETE FROM daily_fleet WHERE day = $1::text::date AND source = $2",
        &[&day, &source],
    )
    .await
    .context("PostgreSQL: deleting from daily_fleet")?;
    tx.execute(
        "INSERT INTO daily_fleet (day, source, trips, revenue_cents, distance_m, active_taxis, \
             positions, avg_fare_cents, flagged_invoices, orders_accepted, orders_rejected, \
             orders_expired, orders_open, cumulative_trips, computed_at, published_at, \
             zones_published_at) \
         VALUES ($1::text::date, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0, now(), \
             NULL, NULL)",
        &[
            &day,
            &source,
            &t.trips,
            &t.revenue_cents,
            &t.distance_m,
            &t.active_taxis,
            &t.positions,
            &t.avg_fare_cents,
            &t.flagged_invoices,
            &orders.map(|o| o.accepted),
            &orders.map(|o| o.rejected),
            &orders.map(|o| o.expired),
            &orders.map(|o| o.open),
        ],
    )
    .await
    .context("PostgreSQL: writing daily_fleet")?;
    let zones = &summary.zones;
    let names: Vec<&str> = zones.iter().map(|z| z.zone.as_str()).collect();
    let trips: Vec<i64> = zones.iter().map(|z| z.trips).collect();
    let revenue: Vec<i64> = zones.iter().map(|z| z.revenue_cents).collect();
    let distance: Vec<f64> = zones.iter().map(|z| z.distance_m).collect();
    let taxis: Vec<Option<i64>> = zones.iter().map(|z| z.active_taxis).collect();
    let positions: Vec<Option<i64>> = zones.iter().map(|z| z.positions).collect();
    let avg_fare: Vec<Option<f64>> = zones.iter().map(|z| z.avg_fare_cents).collect();
    tx.execute(
        "INSERT INTO daily_zone (day, source, zone, trips, revenue_cents, distance_m, \
             active_taxis, positions, avg_fare_cents) \
         SELECT $1::text::date, $2, * FROM unnest($3::text[], $4::bigint[], $5::bigint[], \
             $6::float8[], $7::bigint[], $8::bigint[], $9::float8[])",
        &[
            &day, &source, &names, &trips, &revenue, &distance, &taxis, &positions, &avg_fare,
        ],
    )
    .await
    .context("PostgreSQL: writing daily_zone")?;
    let moved = tx
        .query(
            "UPDATE daily_fleet f SET cumulative_trips = c.total, published_at = NULL \
             FROM (SELECT day, (sum(trips) OVER (ORDER BY day))::bigint AS total \
                   FROM daily_fleet WHERE source = $1) c \
             WHERE f.source = $1 AND f.day = c.day AND f.day >= $2::text::date \
               AND f.cumulative_trips <> c.total \
             RETURNING f.day > $2::text::date, f.day::text",
            &[&source, &day],
        )
        .await
        .context("PostgreSQL: updating cumulative_trips")?;
    // Readers that cache days (the reporting API) drop them when this commits.
    let mut changed = vec![day.clone()];
    let mut later = 0;
    for row in &moved {
        if row.try_get::<_, bool>(0)? {
            later += 1;
            changed.push(row.try_get(1)?);
        }
    }
    tx.execute(
        &format!("SELECT pg_notify('{RECOMPUTED_CHANNEL}', d) FROM unnest($1::text[]) AS d"),
        &[&changed],
    )
    .await
    .context("PostgreSQL: notifying the recomputed days")?;
    tx.commit().await.context("PostgreSQL: committing a day")?;
    Ok(later)
}

/// A day whose lake copy is out of date: its `daily_fleet` row, its zones, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unpublished {
    pub day: Date,
    pub row: bool,
    pub zones: bool,
}

/// The days of `source` the lake does not have as they are stored, oldest first.
pub async fn unpublished(client: &Client, source: Source) -> anyhow::Result<Vec<Unpublished>> {
    let rows = client
        .query(
            "SELECT day::text, published_at IS NULL, zones_published_at IS NULL \
             FROM daily_fleet \
             WHERE source = $1 AND (published_at IS NULL OR zones_published_at IS NULL) \
             ORDER BY day",
            &[&source.name()],
        )
        .await
        .context("PostgreSQL: reading daily_fleet")?;
    rows.iter()
        .map(|row| {
            Ok(Unpublished {
                day: parse_day(&row.try_get::<_, String>(0)?)?,
                row: row.try_get(1)?,
                zones: row.try_get(2)?,
            })
        })
        .collect()
}

/// Records that the lake has the day's row and zones (the caller holds [`lock`], so they
/// are what it published).
pub async fn mark_published(client: &Client, day: Date, source: Source) -> anyhow::Result<()> {
    client
        .execute(
            "UPDATE daily_fleet SET published_at = coalesce(published_at, now()), \
                 zones_published_at = coalesce(zones_published_at, now()) \
             WHERE day = $1::text::date AND source = $2",
            &[&day.to_string(), &source.name()],
        )
        .await
        .context("PostgreSQL: marking a day published")?;
    Ok(())
}

/// The stored row of `day` and `source`, if there is one.
pub async fn stored_day(
    client: &impl GenericClient,
    day: Date,
    source: Source,
) -> anyhow::Result<Option<StoredDay>> {
    let rows = client
        .query(
            &format!("{SELECT_DAYS} WHERE day = $1::text::date AND source = $2"),
            &[&day.to_string(), &source.name()],
        )
        .await
        .context("PostgreSQL: reading daily_fleet")?;
    rows.iter().map(stored).next().transpose()
}

/// Every stored row, by source then day.
pub async fn stored_days(client: &impl GenericClient) -> anyhow::Result<Vec<StoredDay>> {
    let rows = client
        .query(&format!("{SELECT_DAYS} ORDER BY source, day"), &[])
        .await
        .context("PostgreSQL: reading daily_fleet")?;
    rows.iter().map(stored).collect()
}

/// The days of `source` that have a row.
pub async fn days_of(client: &impl GenericClient, source: Source) -> anyhow::Result<Vec<Date>> {
    let rows = client
        .query(
            "SELECT day::text FROM daily_fleet WHERE source = $1 ORDER BY day",
            &[&source.name()],
        )
        .await
        .context("PostgreSQL: reading daily_fleet")?;
    rows.iter()
        .map(|row| parse_day(&row.try_get::<_, String>(0)?))
        .collect()
}

/// The stored zones of `day` and `source`, by zone.
pub async fn stored_zones(
    client: &impl GenericClient,
    day: Date,
    source: Source,
) -> anyhow::Result<Vec<ZoneRow>> {
    let rows = client
        .query(
            "SELECT zone, trips, revenue_cents, distance_m, active_taxis, positions, \
                    avg_fare_cents \
             FROM daily_zone WHERE day = $1::text::date AND source = $2 ORDER BY zone",
            &[&day.to_string(), &source.name()],
        )
        .await
        .context("PostgreSQL: reading daily_zone")?;
    rows.iter()
        .map(|row| {
            Ok(ZoneRow {
                zone: row.try_get(0)?,
                trips: row.try_get(1)?,
                revenue_cents: row.try_get(2)?,
                distance_m: row.try_get(3)?,
                active_taxis: row.try_get(4)?,
                positions: row.try_get(5)?,
                avg_fare_cents: row.try_get(6)?,
            })
        })
        .collect()
}

/// The local day of the fleet's oldest data in the bridge's tables (positions, tours that
/// ended, orders), or `None` when there is none yet.
pub async fn first_fleet_day(client: &Client, tz: &TimeZone) -> anyhow::Result<Option<Date>> {
    let mut oldest: Option<i64> = None;
    // Positions: the oldest day partition that has a row (one partition is read, not all).
    let partitions = bridge::store::partitions::attached(client)
        .await
        .map_err(|e| anyhow!("PostgreSQL: listing the partitions of positions: {e}"))?;
    for partition in partitions {
        let sql = format!(
            "SELECT (extract(epoch FROM min(ts)) * 1000000)::bigint FROM \"{}\"",
            partition.name.replace('"', "\"\"")
        );
        let micros: Option<i64> = client
            .query_one(&sql, &[])
            .await
            .with_context(|| format!("PostgreSQL: reading {}", partition.name))?
            .try_get(0)?;
        if let Some(micros) = micros {
            oldest = Some(micros);
            break;
        }
    }
    for sql in [
        "SELECT (extract(epoch FROM min(ended_at)) * 1000000)::bigint FROM tours",
        "SELECT (extract(epoch FROM min(created_at)) * 1000000)::bigint FROM orders",
    ] {
        let micros: Option<i64> = client
            .query_one(sql, &[])
            .await
            .with_context(|| format!("PostgreSQL: {sql}"))?
            .try_get(0)?;
        if let Some(micros) = micros {
            oldest = Some(oldest.map_or(micros, |o| o.min(micros)));
        }
    }
    oldest
        .map(|micros| {
            let at = Timestamp::from_microsecond(micros)
                .with_context(|| format!("PostgreSQL: {micros} µs is not an instant"))?;
            Ok(calendar::day_of(at, tz))
        })
        .transpose()
}

const SELECT_DAYS: &str = "SELECT day::text, source, trips, revenue_cents, distance_m, \
    active_taxis, positions, avg_fare_cents, flagged_invoices, orders_accepted, \
    orders_rejected, orders_expired, orders_open, cumulative_trips FROM daily_fleet";

fn stored(row: &Row) -> anyhow::Result<StoredDay> {
    let source: String = row.try_get(1)?;
    let source = match source.as_str() {
        "fleet" => Source::Fleet,
        "nyc" => Source::Nyc,
        other => anyhow::bail!("daily_fleet: unknown source {other:?}"),
    };
    let orders = match (
        row.try_get::<_, Option<i64>>(9)?,
        row.try_get::<_, Option<i64>>(10)?,
        row.try_get::<_, Option<i64>>(11)?,
        row.try_get::<_, Option<i64>>(12)?,
    ) {
        (Some(accepted), Some(rejected), Some(expired), Some(open)) => Some(OrderOutcomes {
            accepted,
            rejected,
            expired,
            open,
        }),
        _ => None,
    };
    Ok(StoredDay {
        day: parse_day(&row.try_get::<_, String>(0)?)?,
        source,
        totals: Totals {
            trips: row.try_get(2)?,
            revenue_cents: row.try_get(3)?,
            distance_m: row.try_get(4)?,
            active_taxis: row.try_get(5)?,
            positions: row.try_get(6)?,
            avg_fare_cents: row.try_get(7)?,
            flagged_invoices: row.try_get(8)?,
            orders,
        },
        cumulative_trips: row.try_get(13)?,
    })
}

fn parse_day(text: &str) -> anyhow::Result<Date> {
    text.parse()
        .with_context(|| format!("PostgreSQL: {text:?} is not a day"))
}
