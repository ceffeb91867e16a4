//! One NYC day from the lake: the imported TLC trips picked up that New York day (the
//! `trips_nyc` partition `dt`), with DataFusion. Revenue is what the passenger paid in all
//! (`total_cents`: fare, tips, tolls, taxes); the average fare is the metered fare alone
//! (`fare_cents`), comparable with the fleet's invoice fares. The TLC records have no taxi
//! ids, positions, invoices or orders: those columns stay empty (NULL). Per zone by the
//! pickup zone; trips without one count under `unknown`.

use datafusion::prelude::SessionContext;
use jiff::civil::Date;

use super::frames::{self, date_literal};
use super::summary::{mean, DaySummary, Source, Totals, ZoneRow};

/// The zone of trips whose pickup zone is not known.
pub const UNKNOWN_ZONE: &str = "unknown";

/// Aggregates the NYC `day` from the lake.
pub async fn summarize(ctx: &SessionContext, day: Date) -> anyhow::Result<DaySummary> {
    let batches = frames::query(
        ctx,
        &format!(
            "SELECT coalesce(zone, '{UNKNOWN_ZONE}') AS zone, count(*) AS trips, \
             sum(total_cents) AS revenue, sum(fare_cents) AS fares, sum(distance_m) AS distance \
             FROM trips_nyc WHERE dt = {} GROUP BY 1 ORDER BY 1",
            date_literal(day)
        ),
    )
    .await?;
    let (zone, trips, revenue, fares, distance) = (
        frames::utf8(&batches, "zone")?,
        frames::int64(&batches, "trips")?,
        frames::int64(&batches, "revenue")?,
        frames::int64(&batches, "fares")?,
        frames::float64(&batches, "distance")?,
    );
    let mut totals = Totals::default();
    let mut all_fares = 0;
    let mut zones = Vec::with_capacity(zone.len());
    for i in 0..zone.len() {
        let row = ZoneRow {
            zone: zone[i].clone().unwrap_or_else(|| UNKNOWN_ZONE.to_owned()),
            trips: trips[i].unwrap_or(0),
            revenue_cents: revenue[i].unwrap_or(0),
            distance_m: distance[i].unwrap_or(0.0),
            active_taxis: None,
            positions: None,
            avg_fare_cents: mean(fares[i].unwrap_or(0), trips[i].unwrap_or(0)),
        };
        totals.trips += row.trips;
        totals.revenue_cents += row.revenue_cents;
        totals.distance_m += row.distance_m;
        all_fares += fares[i].unwrap_or(0);
        zones.push(row);
    }
    totals.avg_fare_cents = mean(all_fares, totals.trips);
    Ok(DaySummary {
        day,
        source: Source::Nyc,
        totals,
        zones,
    })
}

/// The New York days that have trips in the lake.
pub async fn days_in_lake(ctx: &SessionContext) -> anyhow::Result<Vec<Date>> {
    let batches = frames::query(ctx, "SELECT DISTINCT dt FROM trips_nyc ORDER BY dt").await?;
    frames::date32(&batches, "dt")?
        .into_iter()
        .flatten()
        .map(super::calendar::from_epoch_days)
        .collect()
}
