//! The lake's datasets and their fixed Arrow schemas: the one place that says which columns a
//! dataset has, with which types. Writers build their record batches with these schemas and
//! [`crate::lake::Lake::session`] registers each dataset with its own, so an empty dataset is
//! still a queryable (empty) table and a file with other columns is an error, not a surprise.
//!
//! The `dt` column is not here: it is the Hive partition (`dt=YYYY-MM-DD` in the path), added
//! by the readers. Timestamps are microseconds in UTC, money in cents, distances in metres,
//! durations in seconds, speeds in km/h (see lake.md).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Every dataset of the lake, in the order `analytics sql` lists them.
pub const DATASETS: &[&str] = &[
    "positions",
    "tours",
    "orders",
    "windows",
    "trips_nyc",
    "daily_fleet",
    "daily_zone",
];

/// The schema of `dataset`, or `None` for a name that is not one of [`DATASETS`].
pub fn of(dataset: &str) -> Option<SchemaRef> {
    Some(match dataset {
        "positions" => positions(),
        "tours" => tours(),
        "orders" => orders(),
        "windows" => windows(),
        "trips_nyc" => trips_nyc(),
        "daily_fleet" => daily_fleet(),
        "daily_zone" => daily_zone(),
        _ => return None,
    })
}

/// `timestamp[us, tz=UTC]`, the type of every timestamp in the lake.
pub fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn required(name: &str, data_type: DataType) -> Field {
    Field::new(name, data_type, false)
}

fn optional(name: &str, data_type: DataType) -> Field {
    Field::new(name, data_type, true)
}

fn schema(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

/// Every position a taxi reported (sorted by taxi_id, ts).
pub fn positions() -> SchemaRef {
    schema(vec![
        required("taxi_id", DataType::Utf8),
        required("seq", DataType::Int64),
        required("ts", timestamp()),
        required("lat", DataType::Float64),
        required("lon", DataType::Float64),
        optional("speed_kmh", DataType::Float32),
        optional("heading_deg", DataType::Float32),
        optional("accuracy_m", DataType::Float32),
        required("received_at", timestamp()),
        required("zone", DataType::Utf8),
    ])
}

/// Ended tours with their invoice, if any (sorted by taxi_id, ended_at).
pub fn tours() -> SchemaRef {
    schema(vec![
        required("tour_id", DataType::Utf8),
        required("taxi_id", DataType::Utf8),
        required("started_at", timestamp()),
        required("ended_at", timestamp()),
        required("start_lat", DataType::Float64),
        required("start_lon", DataType::Float64),
        required("end_lat", DataType::Float64),
        required("end_lon", DataType::Float64),
        required("start_zone", DataType::Utf8),
        required("end_zone", DataType::Utf8),
        optional("meter_cents", DataType::Int64),
        optional("fare_cents", DataType::Int64),
        optional("base_cents", DataType::Int64),
        optional("distance_cents", DataType::Int64),
        optional("driving_cents", DataType::Int64),
        optional("waiting_cents", DataType::Int64),
        optional("night_cents", DataType::Int64),
        optional("zone_cents", DataType::Int64),
        optional("distance_m", DataType::Float64),
        optional("driving_s", DataType::Float64),
        optional("waiting_s", DataType::Float64),
        optional("currency", DataType::Utf8),
        optional("difference_cents", DataType::Int64),
        optional("flagged", DataType::Boolean),
        optional("flag_reason", DataType::Utf8),
        optional("issued_at", timestamp()),
    ])
}

/// Orders sent to taxis, in their final state (sorted by taxi_id, created_at).
pub fn orders() -> SchemaRef {
    schema(vec![
        required("order_id", DataType::Utf8),
        required("taxi_id", DataType::Utf8),
        required("kind", DataType::Utf8),
        required("sender", DataType::Utf8),
        required("created_at", timestamp()),
        optional("expires_at", timestamp()),
        required("state", DataType::Utf8),
        required("attempts", DataType::Int32),
        optional("sent_at", timestamp()),
        optional("received_at", timestamp()),
        optional("answered_at", timestamp()),
        optional("expired_at", timestamp()),
        optional("reason", DataType::Utf8),
    ])
}

/// The speed layer's 10-second windows (sorted by window_start, zone).
pub fn windows() -> SchemaRef {
    schema(vec![
        required("window_start", timestamp()),
        required("window_end", timestamp()),
        required("zone", DataType::Utf8),
        required("positions", DataType::Int64),
        required("taxis", DataType::Int64),
        optional("avg_speed_kmh", DataType::Float64),
        optional("max_speed_kmh", DataType::Float64),
        required("tours_started", DataType::Int64),
        required("tours_ended", DataType::Int64),
        required("revenue_cents", DataType::Int64),
        required("orders_sent", DataType::Int64),
        required("orders_accepted", DataType::Int64),
        required("late_events", DataType::Int64),
    ])
}

/// Historical NYC TLC trips (dt = New York day of pickup; one part per source file).
pub fn trips_nyc() -> SchemaRef {
    schema(vec![
        required("source_file", DataType::Utf8),
        required("line", DataType::Int64),
        optional("vendor_id", DataType::Int32),
        required("pickup_at", timestamp()),
        required("dropoff_at", timestamp()),
        optional("passenger_count", DataType::Int32),
        required("distance_m", DataType::Float64),
        optional("pickup_lon", DataType::Float64),
        optional("pickup_lat", DataType::Float64),
        optional("dropoff_lon", DataType::Float64),
        optional("dropoff_lat", DataType::Float64),
        optional("pickup_location_id", DataType::Int32),
        optional("dropoff_location_id", DataType::Int32),
        optional("pickup_borough", DataType::Utf8),
        optional("pickup_zone_name", DataType::Utf8),
        optional("zone", DataType::Utf8),
        optional("payment_type", DataType::Int32),
        required("fare_cents", DataType::Int64),
        required("tip_cents", DataType::Int64),
        required("tolls_cents", DataType::Int64),
        required("total_cents", DataType::Int64),
    ])
}

/// Daily totals, one row per source ("fleet" | "nyc") and day.
pub fn daily_fleet() -> SchemaRef {
    schema(vec![
        required("day", DataType::Date32),
        required("source", DataType::Utf8),
        required("trips", DataType::Int64),
        required("revenue_cents", DataType::Int64),
        required("distance_m", DataType::Float64),
        optional("active_taxis", DataType::Int64),
        optional("positions", DataType::Int64),
        optional("avg_fare_cents", DataType::Float64),
        optional("flagged_invoices", DataType::Int64),
        optional("orders_accepted", DataType::Int64),
        optional("orders_rejected", DataType::Int64),
        optional("orders_expired", DataType::Int64),
        optional("orders_open", DataType::Int64),
        required("cumulative_trips", DataType::Int64),
    ])
}

/// Daily totals per zone, source and day.
pub fn daily_zone() -> SchemaRef {
    schema(vec![
        required("day", DataType::Date32),
        required("source", DataType::Utf8),
        required("zone", DataType::Utf8),
        required("trips", DataType::Int64),
        required("revenue_cents", DataType::Int64),
        required("distance_m", DataType::Float64),
        optional("active_taxis", DataType::Int64),
        optional("positions", DataType::Int64),
        optional("avg_fare_cents", DataType::Float64),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dataset_has_a_schema_without_dt() {
        for dataset in DATASETS {
            let schema = of(dataset).unwrap_or_else(|| panic!("{dataset} has no schema"));
            assert!(schema.field_with_name("dt").is_err(), "{dataset} has dt");
        }
        assert!(of("nope").is_none());
    }
}
