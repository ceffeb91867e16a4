//! The reporting API (JSON under `/v1`, CSV on `Accept: text/csv`).
//!
//! Every request is authenticated first ([`crate::auth`]); each report then checks its
//! permission, parses its parameters ([`params`]), and is answered from the cache
//! ([`crate::cache`]) or the database, a page at a time or as a CSV stream ([`listing`]).
//! The reports themselves — their SQL, parameters and periods — are in [`reports`].
//!
//! Routes:
//! - `GET /v1/me`: the caller's name, roles and permissions.
//! - `GET /v1/fleet`: every taxi's latest position, status and open tour.
//! - `GET /v1/windows?from&to&zone`, `GET /v1/daily?from&to&source`,
//!   `GET /v1/daily/zones?from&to&source&zone`.
//! - `GET /v1/trips?from&to&taxi`, `GET /v1/invoices?from&to&taxi&flagged`,
//!   `GET /v1/orders?from&to&taxi&state`.
//! - `GET /v1/taxis/{taxi}/route|trips|stops|summary?from&to`.
//! - `POST /v1/orders`, `GET /v1/orders/{order_id}`: send an order, follow it ([`orders`]).
//! - `GET /v1/live`: the fleet's positions as server-sent events
//!   ([`crate::dashboard::live`]).
//! - `GET /v1/trips/nyc?from&to`: imported NYC TLC trips, read from the lake's `trips_nyc`
//!   with DataFusion ([`nyc`]); paged and CSV like the others. (`/v1/trips` stays the
//!   fleet's own tours, from PostgreSQL.)
//! - `/filesystem/<path>`: the file API ([`crate::files`]).
//!
//! Requests are counted in `reporting_http_requests_total{route,status}` and timed in
//! `reporting_http_request_seconds{route}`.

pub mod error;
pub mod listing;
pub mod nyc;
pub mod orders;
pub mod params;
pub mod reports;
pub mod rows;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use bytes::Bytes;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio::sync::Semaphore;

use self::error::ApiError;
use self::params::Params;
use self::reports::{Period, Report};
use crate::auth::{Auth, Principal};
use crate::cache::{Cache, Days};
use crate::config::Config;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: deadpool_postgres::Pool,
    pub auth: Auth,
    pub cache: Cache,
    /// CSV exports running at once (each holds its own database connection).
    pub exports: Arc<Semaphore>,
    pub tz: TimeZone,
    /// The live positions pushed to dashboards.
    pub live: crate::dashboard::live::Hub,
    /// Where orders are sent (`[dispatch]`); `None`: sending is off.
    pub dispatch: Option<Arc<orders::Dispatch>>,
    /// The lake (`[lake]`): the file API's store and the imported NYC trips.
    pub lake: Arc<analytics::lake::Lake>,
    /// Uploads of the file API running at once (`files.max_uploads`).
    pub uploads: Arc<Semaphore>,
}

/// The API's router.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/me", get(me))
        .route("/fleet", get(fleet))
        .route("/windows", get(windows))
        .route("/daily", get(daily))
        .route("/daily/zones", get(daily_zones))
        .route("/trips", get(trips))
        .route("/trips/nyc", get(nyc::trips))
        .route("/invoices", get(invoices))
        .route("/orders", get(orders).post(orders::send))
        .route("/orders/{order_id}", get(orders::show))
        .route("/live", get(crate::dashboard::live::stream))
        .route("/taxis/{taxi}/route", get(taxi_route))
        .route("/taxis/{taxi}/trips", get(taxi_trips))
        .route("/taxis/{taxi}/stops", get(taxi_stops))
        .route("/taxis/{taxi}/summary", get(taxi_summary))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .nest("/v1", v1)
        .merge(crate::files::routes(&state))
        .fallback(|| async { ApiError::not_found("no such route (see /v1/...)") })
        .layer(middleware::from_fn(count))
        .with_state(state)
}

/// Counts and times each request by route and status.
async fn count(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let began = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("reporting_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("reporting_http_request_seconds", "route" => route)
        .record(began.elapsed().as_secs_f64());
    response
}

/// Authenticates the caller (401 otherwise) and hands the principal to the handler.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    match state.auth.authenticate(header.as_deref()).await {
        Ok(principal) => {
            request.extensions_mut().insert(Arc::new(principal));
            next.run(request).await
        }
        Err(why) => {
            metrics::counter!("reporting_unauthenticated_total", "reason" => why.code())
                .increment(1);
            tracing::info!(reason = why.code(), error = %why, "request refused: not authenticated");
            error::unauthenticated(&why)
        }
    }
}

pub(crate) type Caller = Extension<Arc<Principal>>;

async fn me(Extension(principal): Caller) -> Json<serde_json::Value> {
    let permissions: Vec<&str> = principal.permissions.iter().map(|p| p.name()).collect();
    Json(json!({
        "name": principal.name,
        "roles": principal.roles,
        "permissions": permissions,
    }))
}

/// The report's answer: a CSV stream, or a JSON page (from the cache when it has it).
async fn answer(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    path: &str,
    route: &str,
    params: &Params,
    report: Report,
) -> Result<Response, ApiError> {
    if !principal.may(report.permission) {
        return Err(ApiError::forbidden(report.permission));
    }
    if wants_csv(headers) && !report.single {
        return csv(state, principal, path, report).await;
    }
    let key = format!("{path}?{}", params.canonical());
    if let Some(body) = state.cache.get(&key).await {
        return Ok(json_response(body, "hit"));
    }
    let client = state.pool.get().await?;
    let body = if report.single {
        let page = report.query.page(&client, route, params, 1).await?;
        let item = page
            .items
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::not_found("nothing in this range"))?;
        serde_json::to_vec(&item).map_err(|e| ApiError::internal(e.into()))?
    } else {
        let limit = params.limit(
            state.config.pages.default_limit,
            state.config.pages.max_limit,
        )?;
        let page = report.query.page(&client, route, params, limit).await?;
        serde_json::to_vec(&listing::page_body(&page, path, params))
            .map_err(|e| ApiError::internal(e.into()))?
    };
    drop(client);
    let body = Bytes::from(body);
    let (ttl, days) = freshness(state, report.period);
    state.cache.put(&key, body.clone(), ttl, days).await;
    Ok(json_response(body, "miss"))
}

fn json_response(body: Bytes, cache: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-cache", HeaderValue::from_static(cache));
    response
}

/// Whether the client asked for CSV.
pub(crate) fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/csv")))
}

/// One of the CSV exports allowed at once, held until its stream ends; 429 when all are
/// taken.
fn export_permit(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state
        .exports
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "too many CSV exports at once; try again when one has finished".to_owned(),
            parameter: None,
        })
}

/// The whole report as CSV, streamed from its own database connection.
async fn csv(
    state: &AppState,
    principal: &Principal,
    path: &str,
    report: Report,
) -> Result<Response, ApiError> {
    let permit = export_permit(state)?;
    let (client, connection) =
        tokio_postgres::connect(&state.config.postgres.url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "CSV export connection ended");
        }
    });
    metrics::counter!("reporting_csv_exports_total").increment(1);
    tracing::info!(caller = %principal.name, path, "CSV export");
    let stream = report.query.csv(client, permit).await?;
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    Ok(response)
}

/// How long an answer over `period` may be kept, and the days it is tagged with.
fn freshness(state: &AppState, period: Period) -> (Duration, Option<Days>) {
    let cache = &state.config.cache;
    let live = (Duration::from_secs(cache.live_ttl_s), None);
    let settled_before = Timestamp::now()
        .checked_sub(SignedDuration::from_secs(cache.settle_s as i64))
        .unwrap_or(Timestamp::MIN);
    let closed = Duration::from_secs(cache.closed_ttl_s);
    match period {
        Period::Live => live,
        Period::Instants(from, to) => {
            if to > settled_before {
                return live;
            }
            let first = from.to_zoned(state.tz.clone()).date();
            let last = to.to_zoned(state.tz.clone()).date();
            (closed, Some((first, last)))
        }
        Period::Days(first, last) => {
            let end = last
                .tomorrow()
                .ok()
                .and_then(|d| d.to_zoned(state.tz.clone()).ok())
                .map(|z| z.timestamp());
            match end {
                Some(end) if end <= settled_before => (closed, Some((first, last))),
                _ => (live.0, Some((first, last))),
            }
        }
    }
}

/// Today in the fleet's time zone.
fn today(state: &AppState) -> jiff::civil::Date {
    Timestamp::now().to_zoned(state.tz.clone()).date()
}

macro_rules! handler {
    ($name:ident, $route:literal, [$($param:literal),*], |$state:ident, $params:ident| $make:expr) => {
        async fn $name(
            State($state): State<AppState>,
            Extension(principal): Caller,
            headers: HeaderMap,
            RawQuery(query): RawQuery,
        ) -> Result<Response, ApiError> {
            let $params = Params::parse(query.as_deref(), &[$($param),*])?;
            let report = $make?;
            answer(&$state, &principal, &headers, concat!("/v1", $route), $route, &$params, report).await
        }
    };
}

handler!(fleet, "/fleet", [], |state, params| reports::fleet());
handler!(
    windows,
    "/windows",
    ["from", "to", "zone"],
    |state, params| { reports::windows(&params) }
);
handler!(
    daily,
    "/daily",
    ["from", "to", "source"],
    |state, params| { reports::daily(&params, today(&state)) }
);
handler!(
    daily_zones,
    "/daily/zones",
    ["from", "to", "source", "zone"],
    |state, params| reports::daily_zones(&params, today(&state))
);
handler!(trips, "/trips", ["from", "to", "taxi"], |state, params| {
    reports::trips(&params, None)
});
handler!(
    invoices,
    "/invoices",
    ["from", "to", "taxi", "flagged"],
    |state, params| reports::invoices(&params)
);
handler!(
    orders,
    "/orders",
    ["from", "to", "taxi", "state"],
    |state, params| reports::orders(&params)
);

macro_rules! taxi_handler {
    ($name:ident, $what:literal, [$($param:literal),*], |$params:ident, $taxi:ident| $make:expr) => {
        async fn $name(
            State(state): State<AppState>,
            Extension(principal): Caller,
            headers: HeaderMap,
            Path($taxi): Path<String>,
            RawQuery(query): RawQuery,
        ) -> Result<Response, ApiError> {
            let $params = Params::parse(query.as_deref(), &[$($param),*])?;
            let report = $make?;
            let path = format!("/v1/taxis/{}/{}", $taxi, $what);
            let route = concat!("/taxis/{taxi}/", $what);
            answer(&state, &principal, &headers, &path, route, &$params, report).await
        }
    };
}

taxi_handler!(taxi_route, "route", ["from", "to"], |params, taxi| {
    reports::route(&params, &taxi)
});
taxi_handler!(taxi_trips, "trips", ["from", "to"], |params, taxi| {
    params::check_id("taxi", &taxi).and_then(|()| reports::trips(&params, Some(taxi.clone())))
});
taxi_handler!(
    taxi_stops,
    "stops",
    ["from", "to", "max_speed_kmh", "min_duration_s"],
    |params, taxi| reports::stops(&params, &taxi)
);
taxi_handler!(taxi_summary, "summary", ["from", "to"], |params, taxi| {
    reports::summary(&params, &taxi)
});
