//! One fleet day from the lake: the day's partitions (`dt`) of positions, tours and orders,
//! aggregated where the Parquet files are, not in PostgreSQL: the tours and orders with
//! DataFusion's SQL, the positions from their two columns ([`super::positions`]), all three
//! at the same time.
//!
//! - positions: how many, and how many distinct taxis sent them (per zone: reported there);
//! - tours (those that ended that day): trips; revenue, distance and average fare from their
//!   invoices (a tour without an invoice is a trip without a fare); flagged invoices. Per
//!   zone by the zone where the tour started;
//! - orders of kind `order` created that day, by their final state.
//!
//! The lake's `dt` is the local day of the configured zone (lake.md), so a day's partition
//! is exactly that day, 23, 24 or 25 hours of it.

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;
use jiff::civil::Date;

use super::frames::{self, date_literal};
use super::positions;
use super::summary::{mean, DaySummary, OrderOutcomes, Source, Totals, ZoneRow};

/// Aggregates the fleet's `day` from the lake.
pub async fn summarize(ctx: &SessionContext, day: Date) -> anyhow::Result<DaySummary> {
    let dt = date_literal(day);
    let tours_sql = format!(
        "SELECT start_zone AS zone, count(*) AS trips, sum(fare_cents) AS revenue, \
         count(fare_cents) AS fares, sum(distance_m) AS distance, \
         sum(CASE WHEN flagged THEN 1 ELSE 0 END) AS flagged \
         FROM tours WHERE dt = {dt} GROUP BY start_zone"
    );
    let orders_sql = format!(
        "SELECT state, count(*) AS n FROM orders WHERE dt = {dt} AND kind = 'order' \
         GROUP BY state"
    );
    let (counted, tour_batches, order_batches) = tokio::try_join!(
        positions::count(ctx, day),
        frames::query(ctx, &tours_sql),
        frames::query(ctx, &orders_sql),
    )?;

    let mut zones: BTreeMap<String, ZoneRow> = BTreeMap::new();
    let mut totals = Totals::default();
    for zone in counted.zones {
        let row = zone_row(&mut zones, zone.zone);
        row.active_taxis = Some(row.active_taxis.unwrap_or(0) + zone.taxis);
        row.positions = Some(row.positions.unwrap_or(0) + zone.positions);
    }
    totals.active_taxis = Some(counted.taxis);
    totals.positions = Some(counted.positions);

    let columns = (
        frames::utf8(&tour_batches, "zone")?,
        frames::int64(&tour_batches, "trips")?,
        frames::int64(&tour_batches, "revenue")?,
        frames::int64(&tour_batches, "fares")?,
        frames::float64(&tour_batches, "distance")?,
        frames::int64(&tour_batches, "flagged")?,
    );
    let (zone, trips, revenue, fares, distance, flagged) = columns;
    let (mut all_fares, mut all_flagged) = (0, 0);
    for i in 0..zone.len() {
        let row = zone_row(&mut zones, zone[i].clone().unwrap_or_default());
        let fares_here = fares[i].unwrap_or(0);
        row.trips += trips[i].unwrap_or(0);
        row.revenue_cents += revenue[i].unwrap_or(0);
        row.distance_m += distance[i].unwrap_or(0.0);
        row.avg_fare_cents = mean(row.revenue_cents, fares_here);
        all_fares += fares_here;
        all_flagged += flagged[i].unwrap_or(0);
    }
    // Added up in zone order, so that the day's distance is the same on every run.
    for row in zones.values() {
        totals.trips += row.trips;
        totals.revenue_cents += row.revenue_cents;
        totals.distance_m += row.distance_m;
    }
    totals.avg_fare_cents = mean(totals.revenue_cents, all_fares);
    totals.flagged_invoices = Some(all_flagged);

    let mut orders = OrderOutcomes::default();
    let (state, n) = (
        frames::utf8(&order_batches, "state")?,
        frames::int64(&order_batches, "n")?,
    );
    for (state, n) in state.into_iter().zip(n) {
        let n = n.unwrap_or(0);
        match state.as_deref() {
            Some("accepted") => orders.accepted += n,
            Some("rejected") => orders.rejected += n,
            Some("expired") => orders.expired += n,
            _ => orders.open += n,
        }
    }
    totals.orders = Some(orders);

    Ok(DaySummary {
        day,
        source: Source::Fleet,
        totals,
        zones: zones.into_values().collect(),
    })
}

/// The zone's row, created empty (zero, not unknown: the fleet's zones have every column).
fn zone_row(zones: &mut BTreeMap<String, ZoneRow>, zone: String) -> &mut ZoneRow {
    zones.entry(zone.clone()).or_insert_with(|| ZoneRow {
        zone,
        trips: 0,
        revenue_cents: 0,
        distance_m: 0.0,
        active_taxis: Some(0),
        positions: Some(0),
        avg_fare_cents: None,
    })
}
