//! `GET /v1/trips/nyc?from&to`: the imported NYC TLC trips, read from the lake's `trips_nyc`
//! dataset with DataFusion (they are not in PostgreSQL).
//!
//! Trips whose pickup is in `[from, to)` (RFC 3339 instants, 24 hours up to now by default),
//! ordered by `(pickup_at, source_file, line)`, which is unique: pages use it as their key
//! with the same opaque cursors as the database reports ([`super::listing`]), and only the
//! New York days (`dt`) that overlap the range are read. `Accept: text/csv` streams the
//! whole range, batch by batch as DataFusion produces it. Permission `trips`. Not cached:
//! DataFusion reads the day's objects directly.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use datafusion::common::ParamValues;
use datafusion::scalar::ScalarValue;
use futures_util::{StreamExt, TryStreamExt};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::listing::{self, Page};
use super::params::Params;
use super::AppState;
use crate::auth::{Permission, Principal};

const PATH: &str = "/v1/trips/nyc";
const ROUTE: &str = "/trips/nyc";

/// The columns served, in order; instants as the API writes them (UTC, microseconds).
const COLUMNS: &str = "to_char(pickup_at, '%Y-%m-%dT%H:%M:%S%.6fZ') AS pickup_at,
    to_char(dropoff_at, '%Y-%m-%dT%H:%M:%S%.6fZ') AS dropoff_at,
    source_file, line, vendor_id, passenger_count, distance_m,
    pickup_lon, pickup_lat, dropoff_lon, dropoff_lat, pickup_location_id, dropoff_location_id,
    pickup_borough, pickup_zone_name, zone, payment_type,
    fare_cents, tip_cents, tolls_cents, total_cents";

/// The key of the rows, as the cursor carries it.
const KEY: &[(&str, &str)] = &[
    ("pickup_at", "timestamp"),
    ("source_file", "text"),
    ("line", "bigint"),
];

fn lake_error(error: impl std::fmt::Display) -> ApiError {
    ApiError::backend("the lake", &error.to_string())
}

fn micros(t: Timestamp) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(t.as_microsecond()), Some("UTC".into()))
}

/// Days since 1970-01-01 of the New York day of `t`.
fn ny_day(t: Timestamp) -> Result<ScalarValue, ApiError> {
    let zone = TimeZone::get("America/New_York")
        .map_err(|e| ApiError::internal(anyhow::anyhow!("the New York time zone: {e}")))?;
    let day = t.to_zoned(zone).date();
    let epoch = jiff::civil::date(1970, 1, 1);
    let days = (day - epoch).get_days();
    Ok(ScalarValue::Date32(Some(days)))
}

pub async fn trips(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if !principal.may(Permission::Trips) {
        return Err(ApiError::forbidden(Permission::Trips));
    }
    let params = Params::parse(query.as_deref(), &["from", "to"])?;
    let (from, to) = super::reports::instants(&params)?;
    let mut sql = format!(
        "SELECT {COLUMNS} FROM trips_nyc
          WHERE dt BETWEEN $1 AND $2 AND pickup_at >= $3 AND pickup_at < $4"
    );
    let mut values = vec![ny_day(from)?, ny_day(to)?, micros(from), micros(to)];
    let csv = super::wants_csv(&headers);
    let limit = if csv {
        None
    } else {
        Some(params.limit(
            state.config.pages.default_limit,
            state.config.pages.max_limit,
        )?)
    };
    let fingerprint = listing::fingerprint(ROUTE, &params);
    if let (Some(cursor), false) = (params.get("cursor"), csv) {
        let after = listing::decode_cursor(cursor, &fingerprint, KEY.len())?;
        let bad = || ApiError::bad("cursor", "not a cursor this API gave out");
        let pickup: Timestamp = after[0].parse().map_err(|_| bad())?;
        let line: i64 = after[2].parse().map_err(|_| bad())?;
        sql.push_str(
            " AND (pickup_at > $5 OR (pickup_at = $5 AND (source_file > $6
                   OR (source_file = $6 AND line > $7))))",
        );
        values.extend([
            micros(pickup),
            ScalarValue::Utf8(Some(after[1].clone())),
            ScalarValue::Int64(Some(line)),
        ]);
    }
    // The formatted instant (fixed width, UTC) sorts as the instant does.
    sql.push_str(" ORDER BY pickup_at, source_file, line");
    if let Some(limit) = limit {
        sql.push_str(&format!(" LIMIT {}", u64::from(limit) + 1));
    }
    let ctx = state
        .lake
        .session_of(&["trips_nyc"])
        .await
        .map_err(lake_error)?;
    let frame = ctx
        .sql(&sql)
        .await
        .and_then(|f| {
            f.with_param_values(ParamValues::List(
                values.into_iter().map(Into::into).collect(),
            ))
        })
        .map_err(lake_error)?;
    let Some(limit) = limit else {
        return csv_answer(&state, &principal, frame).await;
    };
    let batches = frame.collect().await.map_err(lake_error)?;
    let mut items = Vec::new();
    for batch in &batches {
        items.extend(objects(batch).map_err(lake_error)?);
    }
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = match (more, items.last()) {
        (true, Some(last)) => Some(listing::encode_cursor(&fingerprint, KEY, last)?),
        _ => None,
    };
    let page = Page { items, next_cursor };
    let body = serde_json::to_vec(&listing::page_body(&page, PATH, &params))
        .map_err(|e| ApiError::internal(e.into()))?;
    let mut response = (StatusCode::OK, Bytes::from(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The whole range as CSV, streamed as DataFusion produces the batches.
async fn csv_answer(
    state: &AppState,
    principal: &Principal,
    frame: datafusion::dataframe::DataFrame,
) -> Result<Response, ApiError> {
    let permit = super::export_permit(state)?;
    let stream = frame.execute_stream().await.map_err(lake_error)?;
    metrics::counter!("reporting_csv_exports_total").increment(1);
    tracing::info!(caller = %principal.name, path = PATH, "CSV export");
    let mut first = true;
    let chunks = stream.map_err(std::io::Error::other).map(move |batch| {
        let _permit = &permit;
        let batch = batch?;
        let mut out = Vec::with_capacity(64 * 1024);
        let mut writer = arrow::csv::WriterBuilder::new()
            .with_header(first)
            .build(&mut out);
        writer.write(&batch).map_err(std::io::Error::other)?;
        drop(writer);
        first = false;
        Ok::<_, std::io::Error>(Bytes::from(out))
    });
    let mut response = Body::from_stream(chunks).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    Ok(response)
}

/// The rows of `batch` as JSON objects: numbers as numbers, everything else as text.
fn objects(batch: &RecordBatch) -> anyhow::Result<Vec<Map<String, Value>>> {
    let schema = batch.schema();
    let options = FormatOptions::default();
    let columns: Vec<(&str, &ArrayRef, ArrayFormatter)> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| {
            Ok((
                field.name().as_str(),
                array,
                ArrayFormatter::try_new(array.as_ref(), &options)?,
            ))
        })
        .collect::<Result<_, arrow::error::ArrowError>>()?;
    let mut rows = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut row = Map::new();
        for (name, array, formatter) in &columns {
            let value = if array.is_null(i) {
                Value::Null
            } else {
                match array.data_type() {
                    DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(i)),
                    DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(i)),
                    DataType::Float64 => Value::from(array.as_primitive::<Float64Type>().value(i)),
                    _ => Value::String(formatter.value(i).to_string()),
                }
            };
            row.insert((*name).to_owned(), value);
        }
        rows.push(row);
    }
    Ok(rows)
}
