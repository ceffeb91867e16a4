//! The daily tests' world: PostgreSQL with the bridge's and the analytics layer's schema,
//! hand-counted rows around the autumn daylight-saving change in Europe/Berlin (2026-10-25
//! has 25 hours: 02:00-03:00 happens twice), the embedded S3 server and DuckDB.
//!
//! Two places, A and B, far enough apart to be different H3 cells. Every row below is placed
//! to catch one mistake: near both midnights, in both passes of the repeated hour, and in
//! the 25th hour (a day taken as 24 hours from its midnight would lose it).

#![allow(dead_code)]

pub use crate::support::{config, date, duckdb, embedded, Database};

/// Berlin Mitte and the Zoo, about 5 km apart.
pub const A: (f64, f64) = (52.5200, 13.4050);
pub const B: (f64, f64) = (52.5070, 13.3320);

/// The H3 cell (resolution 8, the default) of a place, as the lake writes it.
pub fn zone(place: (f64, f64)) -> String {
    h3o::LatLng::new(place.0, place.1)
        .unwrap()
        .to_cell(h3o::Resolution::Eight)
        .to_string()
}

/// Adds the fleet's rows, after their position partitions (UTC days 2026-10-22 ..= 10-27).
pub async fn add_fleet_rows(db: &mut Database) {
    db.position_partitions(jiff::civil::date(2026, 10, 22), 6)
        .await;
    db.client.batch_execute(&fleet_rows()).await.unwrap();
}

/// Local days: 10-24 is [10-23 22:00Z, 10-24 22:00Z), 24 hours; 10-25 is
/// [10-24 22:00Z, 10-25 23:00Z), 25 hours.
fn fleet_rows() -> String {
    let (a, b) = (A, B);
    let position = |taxi: &str, seq: i64, ts: &str, (lat, lon): (f64, f64)| {
        format!("('{taxi}', {seq}, '{ts}', {lat}, {lon}, 30, 90, 5, '{ts}')")
    };
    let positions = [
        // 10-23 23:59:59 local: the day before.
        position("taxi-3", 1, "2026-10-23T21:59:59Z", a),
        // 10-24: its first instant, midday, its last second.
        position("taxi-1", 1, "2026-10-23T22:00:00Z", a),
        position("taxi-1", 2, "2026-10-24T12:00:00Z", a),
        position("taxi-2", 1, "2026-10-24T21:59:59Z", b),
        // 10-25: its first instant (still 10-24 in UTC), 02:30 twice (CEST, then CET),
        // the 25th hour, its last second.
        position("taxi-1", 3, "2026-10-24T22:00:00Z", a),
        position("taxi-2", 2, "2026-10-25T00:30:00Z", b),
        position("taxi-2", 3, "2026-10-25T01:30:00Z", b),
        position("taxi-3", 2, "2026-10-25T22:30:00Z", a),
        position("taxi-3", 3, "2026-10-25T22:59:59Z", b),
        // 10-26 00:00 local.
        position("taxi-1", 4, "2026-10-25T23:00:00Z", b),
    ];
    let tour =
        |id: &str, taxi: &str, start: &str, from: (f64, f64), end: Option<&str>, to: (f64, f64)| {
            let (state, ended) = match end {
                Some(end) => ("ended", format!("'{end}'")),
                None => ("started", "NULL".to_owned()),
            };
            format!(
                "('{id}', '{taxi}', '{state}', 1, '{start}', {}, {}, 2, {ended}, {}, {}, 0, now())",
                from.0, from.1, to.0, to.1
            )
        };
    let tours = [
        tour(
            "t1",
            "taxi-1",
            "2026-10-24T10:00:00Z",
            a,
            Some("2026-10-24T10:30:00Z"),
            b,
        ),
        tour(
            "t2",
            "taxi-2",
            "2026-10-24T21:40:00Z",
            b,
            Some("2026-10-24T21:59:59Z"),
            a,
        ),
        // Started on 10-24, ended ten minutes into 10-25: a trip of 10-25.
        tour(
            "t3",
            "taxi-1",
            "2026-10-24T21:50:00Z",
            a,
            Some("2026-10-24T22:10:00Z"),
            a,
        ),
        // In the repeated hour.
        tour(
            "t4",
            "taxi-2",
            "2026-10-25T00:40:00Z",
            b,
            Some("2026-10-25T01:40:00Z"),
            b,
        ),
        // In the 25th hour, without an invoice.
        tour(
            "t5",
            "taxi-3",
            "2026-10-25T22:00:00Z",
            a,
            Some("2026-10-25T22:45:00Z"),
            b,
        ),
        tour(
            "t6",
            "taxi-3",
            "2026-10-25T22:50:00Z",
            b,
            Some("2026-10-25T23:05:00Z"),
            b,
        ),
        // Still running: not a trip.
        tour("t7", "taxi-1", "2026-10-25T10:00:00Z", a, None, a),
    ];
    let invoice = |tour: &str, fare: i64, distance: f64, flagged: bool| {
        format!(
            "SELECT tour_id, taxi_id, started_at, ended_at, 5, {distance}, 600, 60, 390, 0, 0, 0, 0, 0, \
             ARRAY[]::text[], {fare}, 'EUR', {fare}, 0, {flagged}, NULL, 'invoice-{tour}', ended_at \
             FROM tours WHERE tour_id = '{tour}'"
        )
    };
    let invoices = [
        invoice("t1", 1500, 3000.0, false),
        invoice("t2", 2000, 4500.5, true),
        invoice("t3", 1234, 2000.25, false),
        invoice("t4", 3000, 10000.0, true),
        invoice("t6", 999, 1000.0, false),
    ];
    let order = |id: &str, kind: &str, created: &str, state: &str| {
        format!("('{id}', 'taxi-1', '{kind}', 'text', 'dispatcher', '{created}', NULL, '{state}', '{created}', 1)")
    };
    let orders = [
        order("o1", "order", "2026-10-23T22:00:00Z", "accepted"),
        order("o2", "order", "2026-10-24T15:00:00Z", "rejected"),
        order("o3", "order", "2026-10-24T21:59:59Z", "sent"),
        order("m1", "message", "2026-10-24T12:00:00Z", "accepted"),
        order("o4", "order", "2026-10-24T22:00:00Z", "expired"),
        order("o5", "order", "2026-10-25T01:15:00Z", "accepted"),
        order("o6", "order", "2026-10-25T00:15:00Z", "queued"),
        order("o7", "order", "2026-10-25T22:59:59Z", "received"),
        order("i1", "invoice", "2026-10-25T12:00:00Z", "accepted"),
        order("o8", "order", "2026-10-25T23:00:00Z", "accepted"),
    ];
    format!(
        "INSERT INTO positions (taxi_id, seq, ts, lat, lon, speed_kmh, heading_deg, accuracy_m, received_at) VALUES {};
         INSERT INTO tours (tour_id, taxi_id, state, started_seq, started_at, start_lat, start_lon,
                            ended_seq, ended_at, end_lat, end_lon, meter_cents, updated_at) VALUES {};
         INSERT INTO invoices (tour_id, taxi_id, started_at, ended_at, track_points, distance_m,
                               driving_s, waiting_s, base_cents, distance_cents, driving_cents,
                               waiting_cents, night_cents, zone_cents, zones, fare_cents, currency,
                               meter_cents, difference_cents, flagged, flag_reason, order_id, issued_at)
             {};
         INSERT INTO orders (order_id, taxi_id, kind, text, sender, created_at, expires_at, state,
                             updated_at, attempts) VALUES {};",
        positions.join(", "),
        tours.join(", "),
        invoices.join(" UNION ALL "),
        orders.join(", "),
    )
}
