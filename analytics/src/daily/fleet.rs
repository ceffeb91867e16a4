//! One fleet day from the lake: the day's partitions (`dt`) of positions, tours and orders,
//! aggregated with DataFusion where the Parquet files are, not in PostgreSQL.
//!
//! - positions: how many, and how many distinct taxis sent them (per zone: reported there);
//! - tours (those that ended that day): trips; revenue, distance and average fare from their
//!   invoices (a tour without an invoice is a trip without a fare); flagged invoices. Per
//!   zone by the zone where the tour started;
//! - orders of kind `order` created that day, by their final state.
//!
//! The lake's `dt` is the local day of the configured zone (lake.md), so a day's partition
//! is exactly that day, 23, 24 or 25 hours of it.

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::SessionContext;
use jiff::civil::Date;

use super::frames::{self, date_literal};
use super::summary::{mean, DaySummary, OrderOutcomes, Source, Totals, ZoneRow};

/// Aggregates the fleet's `day` from the lake.
pub async fn summarize(ctx: &SessionContext, day: Date) -> anyhow::Result<DaySummary> {
    let dt = date_literal(day);
    let mut zones: BTreeMap<String, ZoneRow> = BTreeMap::new();
    let mut totals = Totals::default();

    // One pass over the positions: per (zone, taxi), from which both the zones' and the
    // day's distinct taxis follow.
    let batches = frames::query(
        ctx,
        &format!(
            "SELECT zone, taxi_id, count(*) AS n FROM positions WHERE dt = {dt} \
             GROUP BY zone, taxi_id"
        ),
    )
    .await?;
    // Read in place: the pairs can be millions (taxis x zones) on a busy day. Zones and
    // taxis are borrowed from the batches and hashed (not ordered) while counting; the
    // zones are ordered once at the end.
    let columns = batches
        .iter()
        .map(|batch| {
            Ok((
                frames::column(batch, "zone", &DataType::Utf8)?,
                frames::column(batch, "taxi_id", &DataType::Utf8)?,
                frames::column(batch, "n", &DataType::Int64)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut taxis: HashSet<&str> = HashSet::new();
    // Per zone: (taxis, positions).
    let mut per_zone: HashMap<&str, (i64, i64)> = HashMap::new();
    let mut positions = 0;
    for (zone, taxi, n) in &columns {
        let (zone, taxi, n) = (
            zone.as_string::<i32>(),
            taxi.as_string::<i32>(),
            n.as_primitive::<Int64Type>(),
        );
        for i in 0..zone.len() {
            let n = if n.is_null(i) { 0 } else { n.value(i) };
            let counts = per_zone.entry(zone.value(i)).or_default();
            counts.0 += 1;
            counts.1 += n;
            positions += n;
            taxis.insert(taxi.value(i));
        }
    }
    for (zone, (zone_taxis, zone_positions)) in per_zone {
        let row = zone_row(&mut zones, zone.to_owned());
        row.active_taxis = Some(row.active_taxis.unwrap_or(0) + zone_taxis);
        row.positions = Some(row.positions.unwrap_or(0) + zone_positions);
    }
    totals.active_taxis = Some(taxis.len() as i64);
    totals.positions = Some(positions);

    let batches = frames::query(
        ctx,
        &format!(
            "SELECT start_zone AS zone, count(*) AS trips, sum(fare_cents) AS revenue, \
             count(fare_cents) AS fares, sum(distance_m) AS distance, \
             sum(CASE WHEN flagged THEN 1 ELSE 0 END) AS flagged \
             FROM tours WHERE dt = {dt} GROUP BY start_zone"
        ),
    )
    .await?;
    let columns = (
        frames::utf8(&batches, "zone")?,
        frames::int64(&batches, "trips")?,
        frames::int64(&batches, "revenue")?,
        frames::int64(&batches, "fares")?,
        frames::float64(&batches, "distance")?,
        frames::int64(&batches, "flagged")?,
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

    let batches = frames::query(
        ctx,
        &format!(
            "SELECT state, count(*) AS n FROM orders WHERE dt = {dt} AND kind = 'order' \
             GROUP BY state"
        ),
    )
    .await?;
    let mut orders = OrderOutcomes::default();
    let (state, n) = (
        frames::utf8(&batches, "state")?,
        frames::int64(&batches, "n")?,
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
