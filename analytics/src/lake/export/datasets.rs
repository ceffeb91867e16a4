//! What each of the platform's own datasets is made of: the query over the bridge's (and the
//! speed layer's) tables for one local day, column by column in the dataset's schema order,
//! and the sort order that makes a filter on the taxi (or the window) prune row groups.

/// Where a column's values come from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Source {
    /// An SQL expression over the query's tables (cast to the column's type).
    Sql(&'static str),
    /// The H3 cell of two other columns of the row (latitude, longitude).
    Zone {
        lat: &'static str,
        lon: &'static str,
    },
}

use Source::{Sql, Zone};

/// One dataset exported from PostgreSQL.
#[derive(Debug)]
pub(super) struct Export {
    pub dataset: &'static str,
    /// Columns in the dataset's schema order.
    pub columns: &'static [(&'static str, Source)],
    /// `FROM ... WHERE ...`, with `{start}` and `{end}`: the local day as timestamptz literals.
    pub from_where: &'static str,
    pub order_by: &'static str,
    /// A table that may not exist yet (the dataset is then skipped).
    pub optional_table: Option<&'static str>,
}

pub(super) const EXPORTS: &[Export] = &[POSITIONS, TOURS, ORDERS, WINDOWS];

const POSITIONS: Export = Export {
    dataset: "positions",
    columns: &[
        ("taxi_id", Sql("p.taxi_id")),
        ("seq", Sql("p.seq")),
        ("ts", Sql("p.ts")),
        ("lat", Sql("p.lat")),
        ("lon", Sql("p.lon")),
        ("speed_kmh", Sql("p.speed_kmh")),
        ("heading_deg", Sql("p.heading_deg")),
        ("accuracy_m", Sql("p.accuracy_m")),
        ("received_at", Sql("p.received_at")),
        (
            "zone",
            Zone {
                lat: "lat",
                lon: "lon",
            },
        ),
    ],
    from_where: "FROM positions p WHERE p.ts >= {start} AND p.ts < {end}",
    order_by: "p.taxi_id, p.ts, p.seq",
    optional_table: None,
};

/// Ended tours, on the day they ended, with their invoice (NULLs when none was issued).
const TOURS: Export = Export {
    dataset: "tours",
    columns: &[
        ("tour_id", Sql("t.tour_id")),
        ("taxi_id", Sql("t.taxi_id")),
        ("started_at", Sql("t.started_at")),
        ("ended_at", Sql("t.ended_at")),
        ("start_lat", Sql("t.start_lat")),
        ("start_lon", Sql("t.start_lon")),
        ("end_lat", Sql("t.end_lat")),
        ("end_lon", Sql("t.end_lon")),
        (
            "start_zone",
            Zone {
                lat: "start_lat",
                lon: "start_lon",
            },
        ),
        (
            "end_zone",
            Zone {
                lat: "end_lat",
                lon: "end_lon",
            },
        ),
        ("meter_cents", Sql("t.meter_cents")),
        ("fare_cents", Sql("i.fare_cents")),
        ("base_cents", Sql("i.base_cents")),
        ("distance_cents", Sql("i.distance_cents")),
        ("driving_cents", Sql("i.driving_cents")),
        ("waiting_cents", Sql("i.waiting_cents")),
        ("night_cents", Sql("i.night_cents")),
        ("zone_cents", Sql("i.zone_cents")),
        ("distance_m", Sql("i.distance_m")),
        ("driving_s", Sql("i.driving_s")),
        ("waiting_s", Sql("i.waiting_s")),
        ("currency", Sql("i.currency")),
        ("difference_cents", Sql("i.difference_cents")),
        ("flagged", Sql("i.flagged")),
        ("flag_reason", Sql("i.flag_reason")),
        ("issued_at", Sql("i.issued_at")),
    ],
    from_where: "FROM tours t LEFT JOIN invoices i ON i.tour_id = t.tour_id \
                 WHERE t.state = 'ended' AND t.ended_at >= {start} AND t.ended_at < {end}",
    order_by: "t.taxi_id, t.ended_at, t.tour_id",
    optional_table: None,
};

/// Orders created on the day, in their state at export time, with the first time they
/// reached each state (from `order_events`).
const ORDERS: Export = Export {
    dataset: "orders",
    columns: &[
        ("order_id", Sql("o.order_id")),
        ("taxi_id", Sql("o.taxi_id")),
        ("kind", Sql("o.kind")),
        ("sender", Sql("o.sender")),
        ("created_at", Sql("o.created_at")),
        ("expires_at", Sql("o.expires_at")),
        ("state", Sql("o.state")),
        ("attempts", Sql("o.attempts")),
        ("sent_at", Sql("e.sent_at")),
        ("received_at", Sql("e.received_at")),
        ("answered_at", Sql("e.answered_at")),
        ("expired_at", Sql("e.expired_at")),
        ("reason", Sql("o.reason")),
    ],
    from_where: "FROM orders o LEFT JOIN LATERAL ( \
                   SELECT min(ev.at) FILTER (WHERE ev.state = 'sent') AS sent_at, \
                          min(ev.at) FILTER (WHERE ev.state = 'received') AS received_at, \
                          min(ev.at) FILTER (WHERE ev.state IN ('accepted', 'rejected')) AS answered_at, \
                          min(ev.at) FILTER (WHERE ev.state = 'expired') AS expired_at \
                   FROM order_events ev WHERE ev.order_id = o.order_id) e ON true \
                 WHERE o.created_at >= {start} AND o.created_at < {end}",
    order_by: "o.taxi_id, o.created_at, o.order_id",
    optional_table: None,
};

/// The speed layer's windows that started on the day.
const WINDOWS: Export = Export {
    dataset: "windows",
    columns: &[
        ("window_start", Sql("w.window_start")),
        ("window_end", Sql("w.window_end")),
        ("zone", Sql("w.zone")),
        ("positions", Sql("w.positions")),
        ("taxis", Sql("w.taxis")),
        ("avg_speed_kmh", Sql("w.avg_speed_kmh")),
        ("max_speed_kmh", Sql("w.max_speed_kmh")),
        ("tours_started", Sql("w.tours_started")),
        ("tours_ended", Sql("w.tours_ended")),
        ("revenue_cents", Sql("w.revenue_cents")),
        ("orders_sent", Sql("w.orders_sent")),
        ("orders_accepted", Sql("w.orders_accepted")),
        ("late_events", Sql("w.late_events")),
    ],
    from_where: "FROM windows w WHERE w.window_start >= {start} AND w.window_start < {end}",
    order_by: "w.window_start, w.zone",
    optional_table: Some("windows"),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_follow_the_dataset_schemas() {
        for export in EXPORTS {
            let schema = crate::lake::schema::of(export.dataset).unwrap();
            let names: Vec<&str> = export.columns.iter().map(|(name, _)| *name).collect();
            let expected: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            assert_eq!(names, expected, "{}", export.dataset);
        }
    }
}
