//! The reports: for each route, the permission it needs, the parameters it takes, the period
//! it covers (for the cache) and the SQL of its rows.
//!
//! Ranges are half-open instants `[from, to)` (RFC 3339), 24 hours up to now by default;
//! daily reports take days `from..=to` (`YYYY-MM-DD`), the last 30 by default. Rows are
//! ordered by time, then by their id, ascending.

use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};

use super::error::ApiError;
use super::listing::{Query, SqlParam};
use super::params::{check_id, Params};
use crate::auth::Permission;

/// The time a report covers: whether it can change still, and which days it shows.
#[derive(Clone, Copy, Debug)]
pub enum Period {
    /// The present (the live fleet).
    Live,
    Instants(Timestamp, Timestamp),
    Days(Date, Date),
}

/// A report ready to run.
pub struct Report {
    pub permission: Permission,
    pub period: Period,
    pub query: Query,
    /// One object (a summary) rather than pages of rows.
    pub single: bool,
}

fn boxed<T: tokio_postgres::types::ToSql + Sync + Send + 'static>(value: T) -> SqlParam {
    Box::new(value)
}

/// Adds `AND <column> = $n` to `sql`, with `value` bound as `$n`.
fn and_equal<T: tokio_postgres::types::ToSql + Sync + Send + 'static>(
    sql: &mut String,
    bound: &mut Vec<SqlParam>,
    column: &str,
    value: T,
) {
    bound.push(boxed(value));
    sql.push_str(&format!(" AND {column} = ${}", bound.len()));
}

/// `from`/`to` instants, 24 hours up to now by default; `from` must be before `to`.
pub(crate) fn instants(params: &Params) -> Result<(Timestamp, Timestamp), ApiError> {
    let to = params.timestamp("to")?.unwrap_or_else(Timestamp::now);
    let from = match params.timestamp("from")? {
        Some(from) => from,
        None => to
            .checked_sub(SignedDuration::from_hours(24))
            .map_err(|_| ApiError::unprocessable("to", "too early"))?,
    };
    if from >= to {
        return Err(ApiError::unprocessable("from", "must be before to"));
    }
    Ok((from, to))
}

/// `from`/`to` days (inclusive), the 30 days up to `today` by default.
fn days(params: &Params, today: Date) -> Result<(Date, Date), ApiError> {
    let to = params.date("to")?.unwrap_or(today);
    let from = match params.date("from")? {
        Some(from) => from,
        None => to
            .checked_sub(jiff::Span::new().days(29))
            .map_err(|_| ApiError::unprocessable("to", "too early"))?,
    };
    if from > to {
        return Err(ApiError::unprocessable("from", "must not be after to"));
    }
    Ok((from, to))
}

/// `GET /v1/fleet`: every taxi's latest position, its status and its open tour.
pub fn fleet() -> Result<Report, ApiError> {
    Ok(Report {
        permission: Permission::Fleet,
        period: Period::Live,
        single: false,
        query: Query {
            sql: "SELECT l.taxi_id, l.ts, l.lat, l.lon, l.speed_kmh, l.heading_deg, l.received_at,
                         coalesce(s.state, 'unknown') AS status, s.at AS status_at,
                         t.tour_id AS open_tour_id, t.started_at AS open_tour_started_at
                    FROM latest_positions l
                    LEFT JOIN taxi_status s ON s.taxi_id = l.taxi_id
                    LEFT JOIN LATERAL (
                        SELECT tour_id, started_at FROM tours
                         WHERE taxi_id = l.taxi_id AND state = 'started'
                         ORDER BY started_at DESC LIMIT 1) t ON true"
                .to_owned(),
            params: Vec::new(),
            key: &[("taxi_id", "text")],
        },
    })
}

/// `GET /v1/windows?from&to&zone`: the speed layer's 10-second windows; `zone` is `fleet`
/// (default), `all`, or one H3 cell.
pub fn windows(params: &Params) -> Result<Report, ApiError> {
    let (from, to) = instants(params)?;
    let zone = params.get("zone").unwrap_or("fleet").to_owned();
    let valid_cell = zone.len() == 15
        && zone
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if zone != "fleet" && zone != "all" && !valid_cell {
        return Err(ApiError::bad(
            "zone",
            format!("{zone:?} is not fleet, all or an H3 cell (15 lowercase hex digits)"),
        ));
    }
    let mut sql = "SELECT window_start, window_end, zone, positions, taxis, avg_speed_kmh,
                          max_speed_kmh, tours_started, tours_ended, revenue_cents, orders_sent,
                          orders_accepted, late_events, computed_at
                     FROM windows WHERE window_start >= $1 AND window_start < $2"
        .to_owned();
    let mut bound = vec![boxed(from), boxed(to)];
    if zone != "all" {
        and_equal(&mut sql, &mut bound, "zone", zone);
    }
    Ok(Report {
        permission: Permission::Reports,
        period: Period::Instants(from, to),
        single: false,
        query: Query {
            sql,
            params: bound,
            key: &[("window_start", "timestamptz"), ("zone", "text")],
        },
    })
}

/// `GET /v1/daily?from&to&source`: the daily results, fleet and imported history.
pub fn daily(params: &Params, today: Date) -> Result<Report, ApiError> {
    let (from, to) = days(params, today)?;
    let source = params.choice("source", &["fleet", "nyc"])?;
    let mut sql = "SELECT day, source, trips, revenue_cents, distance_m, active_taxis, positions,
                          avg_fare_cents, flagged_invoices, orders_accepted, orders_rejected,
                          orders_expired, orders_open, cumulative_trips, computed_at
                     FROM daily_fleet WHERE day >= $1 AND day <= $2"
        .to_owned();
    let mut bound = vec![boxed(from), boxed(to)];
    if let Some(source) = source {
        and_equal(&mut sql, &mut bound, "source", source);
    }
    Ok(Report {
        permission: Permission::Reports,
        period: Period::Days(from, to),
        single: false,
        query: Query {
            sql,
            params: bound,
            key: &[("day", "date"), ("source", "text")],
        },
    })
}

/// `GET /v1/daily/zones?from&to&source&zone`: the daily results per zone.
pub fn daily_zones(params: &Params, today: Date) -> Result<Report, ApiError> {
    let (from, to) = days(params, today)?;
    let source = params.choice("source", &["fleet", "nyc"])?;
    let mut sql = "SELECT day, source, zone, trips, revenue_cents, distance_m, active_taxis,
                          positions, avg_fare_cents
                     FROM daily_zone WHERE day >= $1 AND day <= $2"
        .to_owned();
    let mut bound = vec![boxed(from), boxed(to)];
    if let Some(source) = source {
        and_equal(&mut sql, &mut bound, "source", source);
    }
    if let Some(zone) = params.get("zone") {
        and_equal(&mut sql, &mut bound, "zone", zone.to_owned());
    }
    Ok(Report {
        permission: Permission::Reports,
        period: Period::Days(from, to),
        single: false,
        query: Query {
            sql,
            params: bound,
            key: &[("day", "date"), ("source", "text"), ("zone", "text")],
        },
    })
}

/// `GET /v1/trips?from&to&taxi` and `/v1/taxis/{taxi}/trips`: tours started in the range,
/// with their invoice.
pub fn trips(params: &Params, taxi: Option<String>) -> Result<Report, ApiError> {
    let (from, to) = instants(params)?;
    let taxi = match taxi {
        Some(taxi) => Some(taxi),
        None => params.id("taxi")?,
    };
    let mut sql = "SELECT t.tour_id, t.taxi_id, t.state, t.started_at, t.ended_at,
                          t.start_lat, t.start_lon, t.end_lat, t.end_lon, t.meter_cents,
                          i.fare_cents, i.currency, i.distance_m, i.driving_s, i.waiting_s,
                          i.flagged
                     FROM tours t LEFT JOIN invoices i ON i.tour_id = t.tour_id
                    WHERE t.started_at >= $1 AND t.started_at < $2"
        .to_owned();
    let mut bound = vec![boxed(from), boxed(to)];
    if let Some(taxi) = taxi {
        and_equal(&mut sql, &mut bound, "t.taxi_id", taxi);
    }
    Ok(Report {
        permission: Permission::Trips,
        period: Period::Instants(from, to),
        single: false,
        query: Query {
            sql,
            params: bound,
            key: &[("started_at", "timestamptz"), ("tour_id", "text")],
        },
    })
}

/// `GET /v1/invoices?from&to&taxi&flagged`: invoices of tours ended in the range.
pub fn invoices(params: &Params) -> Result<Report, ApiError> {
    let (from, to) = instants(params)?;
    let mut sql = "SELECT tour_id, taxi_id, started_at, ended_at, track_points, distance_m,
                          driving_s, waiting_s, base_cents, distance_cents, driving_cents,
                          waiting_cents, night_cents, zone_cents, zones, fare_cents, currency,
                          meter_cents, difference_cents, flagged, flag_reason, order_id,
                          issued_at, published_at
                     FROM invoices WHERE ended_at >= $1 AND ended_at < $2"
        .to_owned();
    let mut bound = vec![boxed(from), boxed(to)];
    if let Some(taxi) = params.id("taxi")? {
        and_equal(&mut sql, &mut bound, "taxi_id", taxi);
    }
    if let Some(flagged) = params.choice("flagged", &["true", "false"])? {
        and_equal(&mut sql, &mut bound, "flagged", flagged == "true");
    }
    Ok(Report {
        permission: Permission::Invoices,
        period: Period::Instants(from, to),
        single: false,
        query: Query {
            sql,
            params: bound,
            key: &[("ended_at", "timestamptz"), ("tour_id", "text")],
        },
    })
}

/// `GET /v1/orders?from&to&taxi&state`: orders created in the range, with their state.
pub fn orders(params: &Params) -> Result<Report, ApiError> {
    let (from, to) = instants(params)?;
    let mut sql = "SELECT order_id, taxi_id, kind, text, sender, created_at, expires_at, state,
                          updated_at, attempts, last_sent_at, reason
                     FROM orders WHERE created_at >= $1 AND created_at < $2"
        .to_owned();
    let mut bound = vec![boxed(from), boxed(to)];
    if let Some(taxi) = params.id("taxi")? {
        and_equal(&mut sql, &mut bound, "taxi_id", taxi);
    }
    let states = [
        "queued", "sent", "received", "accepted", "rejected", "expired",
    ];
    if let Some(state) = params.choice("state", &states)? {
        and_equal(&mut sql, &mut bound, "state", state);
    }
    Ok(Report {
        permission: Permission::Orders,
        period: Period::Instants(from, to),
        single: false,
        query: Query {
            sql,
            params: bound,
            key: &[("created_at", "timestamptz"), ("order_id", "text")],
        },
    })
}

/// `GET /v1/taxis/{taxi}/route?from&to`: the taxi's positions.
pub fn route(params: &Params, taxi: &str) -> Result<Report, ApiError> {
    check_id("taxi", taxi)?;
    let (from, to) = instants(params)?;
    Ok(Report {
        permission: Permission::Fleet,
        period: Period::Instants(from, to),
        single: false,
        query: Query {
            sql: "SELECT ts, seq, lat, lon, speed_kmh, heading_deg, accuracy_m, received_at
                    FROM positions WHERE taxi_id = $1 AND ts >= $2 AND ts < $3"
                .to_owned(),
            params: vec![boxed(taxi.to_owned()), boxed(from), boxed(to)],
            key: &[("ts", "timestamptz"), ("seq", "bigint")],
        },
    })
}

/// A taxi is stopped while its speed is at most this (km/h), unless `max_speed_kmh` says.
const STOP_SPEED_KMH: f64 = 2.0;
/// A stop lasts at least this long (s), unless `min_duration_s` says.
const STOP_MIN_S: f64 = 300.0;
/// Consecutive fixes further apart than this are not one leg (the taxi was off).
const MAX_LEG_S: i64 = 300;

/// `GET /v1/taxis/{taxi}/stops?from&to&max_speed_kmh&min_duration_s`: periods the taxi
/// stood still (speed at most `max_speed_kmh`) for at least `min_duration_s`.
pub fn stops(params: &Params, taxi: &str) -> Result<Report, ApiError> {
    check_id("taxi", taxi)?;
    let (from, to) = instants(params)?;
    let speed = params
        .number("max_speed_kmh", 0.0..=50.0)?
        .unwrap_or(STOP_SPEED_KMH);
    let min_s = params
        .number("min_duration_s", 0.0..=86_400.0)?
        .unwrap_or(STOP_MIN_S);
    Ok(Report {
        permission: Permission::Fleet,
        period: Period::Instants(from, to),
        single: false,
        query: Query {
            sql: "WITH p AS (
                      SELECT ts, seq, lat, lon, coalesce(speed_kmh, 0) <= $4::float8 AS still
                        FROM positions WHERE taxi_id = $1 AND ts >= $2 AND ts < $3
                  ), runs AS (
                      SELECT *, row_number() OVER (ORDER BY ts, seq)
                              - row_number() OVER (PARTITION BY still ORDER BY ts, seq) AS run
                        FROM p
                  )
                  SELECT min(ts) AS started_at, max(ts) AS ended_at,
                         extract(epoch FROM max(ts) - min(ts))::float8 AS duration_s,
                         avg(lat) AS lat, avg(lon) AS lon, count(*) AS positions
                    FROM runs WHERE still
                   GROUP BY run
                  HAVING extract(epoch FROM max(ts) - min(ts)) >= $5::float8"
                .to_owned(),
            params: vec![
                boxed(taxi.to_owned()),
                boxed(from),
                boxed(to),
                boxed(speed),
                boxed(min_s),
            ],
            key: &[("started_at", "timestamptz")],
        },
    })
}

/// `GET /v1/taxis/{taxi}/summary?from&to`: distance, driving time, speeds, tours and
/// revenue of the taxi in the range.
pub fn summary(params: &Params, taxi: &str) -> Result<Report, ApiError> {
    check_id("taxi", taxi)?;
    let (from, to) = instants(params)?;
    let sql = format!(
        "WITH p AS (
             SELECT ts, lat, lon, speed_kmh,
                    lag(ts) OVER w AS prev_ts, lag(lat) OVER w AS prev_lat,
                    lag(lon) OVER w AS prev_lon
               FROM positions WHERE taxi_id = $1 AND ts >= $2 AND ts < $3
             WINDOW w AS (ORDER BY ts, seq)
         ), legs AS (
             SELECT *, prev_ts IS NOT NULL AND ts - prev_ts <= interval '{MAX_LEG_S} seconds' AS joined
               FROM p
         )
         SELECT $1::text AS taxi_id, $2::timestamptz AS range_from, $3::timestamptz AS range_to,
                count(*) AS positions,
                coalesce(sum(CASE WHEN joined THEN 2 * 6371008.8 * asin(sqrt(
                    power(sin(radians(lat - prev_lat) / 2), 2)
                    + cos(radians(prev_lat)) * cos(radians(lat))
                      * power(sin(radians(lon - prev_lon) / 2), 2))) END), 0)::float8 AS distance_m,
                coalesce(sum(CASE WHEN joined AND coalesce(speed_kmh, 0) > {STOP_SPEED_KMH}
                    THEN extract(epoch FROM ts - prev_ts) END), 0)::float8 AS driving_s,
                max(speed_kmh)::float8 AS max_speed_kmh,
                avg(speed_kmh)::float8 AS avg_speed_kmh,
                min(ts) AS first_at, max(ts) AS last_at,
                (SELECT count(*) FROM tours
                  WHERE taxi_id = $1 AND ended_at >= $2 AND ended_at < $3) AS tours,
                (SELECT coalesce(sum(fare_cents), 0)::bigint FROM invoices
                  WHERE taxi_id = $1 AND ended_at >= $2 AND ended_at < $3) AS revenue_cents
           FROM legs"
    );
    Ok(Report {
        permission: Permission::Fleet,
        period: Period::Instants(from, to),
        single: true,
        query: Query {
            sql,
            params: vec![boxed(taxi.to_owned()), boxed(from), boxed(to)],
            key: &[("taxi_id", "text")],
        },
    })
}
