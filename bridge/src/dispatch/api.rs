//! The dispatch HTTP API (JSON), for backoffice apps that do not speak MQTT.
//!
//! - `POST /v1/orders` `{"taxi_id", "kind", "text", "order_id"?, "expires_in_s"? | "expires_ms"?}`:
//!   stores the order, publishes it to the taxi, answers 201 with the order (200 with the
//!   stored one when the same request is repeated with the same `order_id`).
//! - `GET /v1/orders/{order_id}`: the order, its state and its history.
//! - `GET /v1/taxis/{taxi_id}/orders?state=&limit=`: a taxi's orders, newest first.
//!
//! Served over HTTPS with `dispatch.api.tls_cert`/`tls_key`, otherwise plain HTTP on a
//! loopback address only.
//!
//! Every request needs `Authorization: Bearer <token>` (401 otherwise, before anything else
//! is looked at). Every field is checked; a problem is a 4xx answer `{"error": "...",
//! "field": "..."}`. Each request is logged with the caller's token name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::auth::Tokens;
use super::mqtt::{Published, Publisher};
use super::orders::{is_valid_order_id, Created, NewOrder, Orders, Outgoing};
use crate::config::DispatchConfig;
use crate::source::now_ms;

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Fields of `POST /v1/orders`.
const ORDER_FIELDS: &str = "taxi_id, kind, text, order_id, expires_in_s, expires_ms";
/// Orders listed at most per request.
const MAX_LIST: i64 = 1_000;

struct Api {
    orders: Arc<Orders>,
    publisher: Publisher,
    tokens: Tokens,
    config: DispatchConfig,
}

/// A refused request: status, message, and the field at fault if any.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    fn field(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("{field}: {}", message.into()),
            field: Some(field),
        }
    }

    fn internal(error: impl std::fmt::Display) -> ApiError {
        warn!(error = %error, "dispatch API: database error");
        metrics::counter!("dispatch_postgres_errors_total").increment(1);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the order store is unavailable; try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(field) = self.field {
            body["field"] = json!(field);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Binds the listener and serves the API until the process ends; returns the bound address.
pub async fn start(
    config: &DispatchConfig,
    orders: Arc<Orders>,
    publisher: Publisher,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(config.api.listen)
        .await
        .with_context(|| {
            format!(
                "dispatch.api.listen: cannot listen on {}",
                config.api.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let api = Arc::new(Api {
        orders,
        publisher,
        tokens: Tokens::new(&config.api.tokens),
        config: config.clone(),
    });
    let app = Router::new()
        .route("/v1/orders", post(create_order))
        .route("/v1/orders/{order_id}", get(show_order))
        .route("/v1/taxis/{taxi_id}/orders", get(list_orders))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint: POST /v1/orders, GET /v1/orders/{order_id}, GET /v1/taxis/{taxi_id}/orders",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api);
    let tls = match (&config.api.tls_cert, &config.api.tls_key) {
        (Some(cert), Some(key)) => Some(service::tls::server_config(
            cert,
            key,
            ("dispatch.api.tls_cert", "dispatch.api.tls_key"),
        )?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    service::tls::serve(
        listener,
        tls,
        app,
        "dispatch API",
        "dispatch_api_tls_handshake_failures_total",
    )?;
    info!(listen = %addr, scheme, "dispatch API listening");
    Ok(addr)
}

/// The caller's token name, or 401.
fn authenticate<'a>(
    api: &'a Api,
    headers: &HeaderMap,
    route: &'static str,
) -> Result<&'a str, ApiError> {
    api.tokens
        .authenticate(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
        .map_err(|refusal| {
            metrics::counter!("dispatch_api_unauthorized_total", "reason" => refusal.code())
                .increment(1);
            info!(
                route,
                reason = refusal.code(),
                "dispatch API request refused: not authenticated"
            );
            ApiError::new(StatusCode::UNAUTHORIZED, refusal.message())
        })
}

/// Counts and times a request, and logs refusals with the caller.
fn finish(
    route: &'static str,
    caller: Option<&str>,
    started: Instant,
    result: Result<Response, ApiError>,
) -> Response {
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            if error.status != StatusCode::UNAUTHORIZED {
                info!(
                    route,
                    caller,
                    status = error.status.as_u16(),
                    error = error.message,
                    "dispatch API request refused"
                );
            }
            error.into_response()
        }
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!("dispatch_api_requests_total", "route" => route, "status" => status)
        .increment(1);
    metrics::histogram!("dispatch_api_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn create_order(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    const ROUTE: &str = "create_order";
    let started = Instant::now();
    let caller = match authenticate(&api, &headers, ROUTE) {
        Ok(caller) => caller,
        Err(e) => return finish(ROUTE, None, started, Err(e)),
    };
    let result = create(&api, caller, &headers, body).await;
    finish(ROUTE, Some(caller), started, result)
}

async fn create(
    api: &Api,
    caller: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_content_type(headers)?;
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the body is larger than {MAX_BODY_BYTES} bytes")
        } else {
            format!("cannot read the body: {}", rejection.body_text())
        };
        ApiError::new(status, message)
    })?;
    let order = parse_order(&body, caller, &api.config, now_ms())?;
    match api.orders.create(&order).await.map_err(ApiError::internal)? {
        Created::New => {
            metrics::counter!("dispatch_orders_created_total", "sender" => "api").increment(1);
            let published = api
                .publisher
                .publish(&Outgoing::from(&order), "api")
                .await;
            if published == Published::Busy {
                // The sweep publishes it as soon as the broker takes requests again.
                if let Err(e) = api.orders.unclaim(&order.order_id).await {
                    warn!(order_id = order.order_id, error = %e, "cannot mark the order due again");
                }
            }
            info!(
                caller,
                order_id = order.order_id,
                taxi_id = order.taxi_id,
                kind = order.kind,
                expires_ms = order.expires_ms,
                text_bytes = order.text.len(),
                "order accepted"
            );
            let view = json!({
                "order_id": order.order_id,
                "taxi_id": order.taxi_id,
                "kind": order.kind,
                "text": order.text,
                "sender": order.sender,
                "created_ms": order.created_ms,
                "expires_ms": order.expires_ms,
                "state": "queued",
                "updated_ms": order.created_ms,
                "attempts": 1,
                "reason": null,
            });
            let location = format!("/v1/orders/{}", order.order_id);
            Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(view)).into_response())
        }
        Created::Repeated(existing) => {
            info!(caller, order_id = existing.order_id, "order request repeated: answered with the stored order");
            Ok((StatusCode::OK, Json(existing)).into_response())
        }
        Created::Conflict(existing) => Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "order_id: {:?} is already used by another order (for taxi {:?}); choose another id or leave order_id out",
                existing.order_id, existing.taxi_id
            ),
            field: Some("order_id"),
        }),
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media_type = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media_type == "application/json" {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json, not {media_type:?}"),
        ))
    }
}

/// Checks every field of a `POST /v1/orders` body.
pub fn parse_order(
    body: &[u8],
    sender: &str,
    config: &DispatchConfig,
    now_ms: i64,
) -> Result<NewOrder, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is empty: send a JSON object with {ORDER_FIELDS}"),
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be a JSON object with {ORDER_FIELDS}"),
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|key| !ORDER_FIELDS.split(", ").any(|known| known == key.as_str()))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("unknown field {unknown:?} (fields: {ORDER_FIELDS})"),
        ));
    }

    let taxi_id = required_string(&fields, "taxi_id")?;
    if !wire::is_valid_device_id(taxi_id) {
        return Err(ApiError::field(
            "taxi_id",
            "must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
        ));
    }
    let kind = required_string(&fields, "kind")?;
    if !matches!(kind, "order" | "message" | "invoice") {
        return Err(ApiError::field(
            "kind",
            format!("must be \"order\", \"message\" or \"invoice\", not {kind:?}"),
        ));
    }
    let text = required_string(&fields, "text")?;
    if text.trim().is_empty() {
        return Err(ApiError::field("text", "must not be empty"));
    }
    if text.len() > config.max_text_bytes {
        return Err(ApiError::field(
            "text",
            format!(
                "is {} bytes long; at most {} bytes are allowed",
                text.len(),
                config.max_text_bytes
            ),
        ));
    }
    if text.contains('\0') {
        return Err(ApiError::field("text", "must not contain NUL characters"));
    }
    let order_id = match optional(&fields, "order_id") {
        None => generated_order_id(now_ms),
        Some(Value::String(id)) if is_valid_order_id(id) => id.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::field(
                "order_id",
                "must be 1 to 128 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'",
            ))
        }
        Some(other) => return Err(ApiError::field("order_id", type_problem("a string", other))),
    };
    let max_ms = config.max_expires_in_s as i64 * 1000;
    let expires_ms = match (
        optional(&fields, "expires_in_s"),
        optional(&fields, "expires_ms"),
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give expires_in_s or expires_ms, not both",
            ))
        }
        (Some(value), None) => {
            let seconds = value.as_i64().filter(|_| value.is_i64() || value.is_u64());
            match seconds {
                Some(s) if s >= 1 && s <= config.max_expires_in_s as i64 => Some(now_ms + s * 1000),
                Some(_) => {
                    return Err(ApiError::field(
                        "expires_in_s",
                        format!("must be between 1 and {} seconds", config.max_expires_in_s),
                    ))
                }
                None => {
                    return Err(ApiError::field(
                        "expires_in_s",
                        type_problem("a whole number of seconds", value),
                    ))
                }
            }
        }
        (None, Some(value)) => match value.as_i64().filter(|_| value.is_i64() || value.is_u64()) {
            Some(ms) if ms <= now_ms => {
                return Err(ApiError::field(
                    "expires_ms",
                    format!(
                    "{ms} is in the past (now is {now_ms}); an expired order is never delivered"
                ),
                ))
            }
            Some(ms) if ms - now_ms > max_ms => {
                return Err(ApiError::field(
                    "expires_ms",
                    format!("is more than {} seconds ahead", config.max_expires_in_s),
                ))
            }
            Some(ms) => Some(ms),
            None => {
                return Err(ApiError::field(
                    "expires_ms",
                    type_problem("a whole number of unix milliseconds", value),
                ))
            }
        },
        (None, None) => None,
    };
    Ok(NewOrder {
        order_id,
        taxi_id: taxi_id.to_owned(),
        kind: kind.to_owned(),
        text: text.to_owned(),
        sender: sender.to_owned(),
        created_ms: now_ms,
        expires_ms,
    })
}

/// A field that may be absent or `null`.
fn optional<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).filter(|v| !v.is_null())
}

fn required_string<'a>(
    fields: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, ApiError> {
    match optional(fields, name) {
        None => Err(ApiError::field(name, "is required")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ApiError::field(name, type_problem("a string", other))),
    }
}

fn type_problem(expected: &str, got: &Value) -> String {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("must be {expected}, not {kind}")
}

/// `o-<unix ms>-<8 random hex digits>`.
fn generated_order_id(now_ms: i64) -> String {
    format!("o-{now_ms}-{:08x}", rand::random::<u32>())
}

async fn show_order(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(order_id): Path<String>,
) -> Response {
    const ROUTE: &str = "show_order";
    let started = Instant::now();
    let caller = match authenticate(&api, &headers, ROUTE) {
        Ok(caller) => caller,
        Err(e) => return finish(ROUTE, None, started, Err(e)),
    };
    let result = async {
        if !is_valid_order_id(&order_id) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "order_id: must be 1 to 128 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'",
            ));
        }
        match api
            .orders
            .get(&order_id, true)
            .await
            .map_err(ApiError::internal)?
        {
            Some(order) => {
                info!(caller, order_id, "order shown");
                Ok(Json(order).into_response())
            }
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no order {order_id:?}"),
            )),
        }
    }
    .await;
    finish(ROUTE, Some(caller), started, result)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<String>,
}

async fn list_orders(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(taxi_id): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    const ROUTE: &str = "list_orders";
    let started = Instant::now();
    let caller = match authenticate(&api, &headers, ROUTE) {
        Ok(caller) => caller,
        Err(e) => return finish(ROUTE, None, started, Err(e)),
    };
    let result = async {
        let Query(query) = query.map_err(|rejection| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("bad query (parameters: state, limit): {}", rejection.body_text()),
            )
        })?;
        if !wire::is_valid_device_id(&taxi_id) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "taxi_id: must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
            ));
        }
        if let Some(state) = &query.state {
            if !matches!(
                state.as_str(),
                "queued" | "sent" | "received" | "accepted" | "rejected" | "expired"
            ) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("state: {state:?} is not one of queued, sent, received, accepted, rejected, expired"),
                ));
            }
        }
        let limit = match &query.limit {
            None => 100,
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=MAX_LIST).contains(&n) => n,
                _ => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("limit: {text:?} is not a number from 1 to {MAX_LIST}"),
                    ))
                }
            },
        };
        let orders = api
            .orders
            .list_for_taxi(&taxi_id, query.state.as_deref(), limit)
            .await
            .map_err(ApiError::internal)?;
        info!(caller, taxi_id, orders = orders.len(), "orders listed");
        Ok(Json(json!({ "taxi_id": taxi_id, "orders": orders })).into_response())
    }
    .await;
    finish(ROUTE, Some(caller), started, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<NewOrder, ApiError> {
        parse_order(
            body.as_bytes(),
            "office",
            &crate::Config::default().dispatch,
            1_000_000,
        )
    }

    #[test]
    fn a_complete_order_is_taken_as_given() {
        let order = parse(
            r#"{"taxi_id":"t-1","kind":"order","text":"Go","order_id":"o:1","expires_in_s":60}"#,
        )
        .expect("valid");
        assert_eq!(order.order_id, "o:1");
        assert_eq!(order.expires_ms, Some(1_060_000));
        assert_eq!(order.sender, "office");
        let order = parse(r#"{"taxi_id":"t-1","kind":"message","text":"Hi"}"#).expect("valid");
        assert!(
            order.order_id.starts_with("o-1000000-"),
            "{}",
            order.order_id
        );
        assert_eq!(order.expires_ms, None);
    }

    #[test]
    fn each_problem_names_its_field() {
        for (body, status, needle) in [
            ("", 400, "empty"),
            ("{", 400, "not valid JSON"),
            ("[1]", 400, "JSON object"),
            (
                r#"{"kind":"order","text":"x"}"#,
                422,
                "taxi_id: is required",
            ),
            (
                r#"{"taxi_id":"a/b","kind":"order","text":"x"}"#,
                422,
                "taxi_id: must be",
            ),
            (
                r#"{"taxi_id":7,"kind":"order","text":"x"}"#,
                422,
                "not a number",
            ),
            (
                r#"{"taxi_id":"t","kind":"pizza","text":"x"}"#,
                422,
                "kind: must be",
            ),
            (
                r#"{"taxi_id":"t","kind":"order","text":" "}"#,
                422,
                "text: must not be empty",
            ),
            (
                r#"{"taxi_id":"t","kind":"order","text":"x","order_id":"a b"}"#,
                422,
                "order_id",
            ),
            (
                r#"{"taxi_id":"t","kind":"order","text":"x","expires_in_s":0}"#,
                422,
                "expires_in_s",
            ),
            (
                r#"{"taxi_id":"t","kind":"order","text":"x","expires_in_s":1.5}"#,
                422,
                "whole number",
            ),
            (
                r#"{"taxi_id":"t","kind":"order","text":"x","expires_ms":5}"#,
                422,
                "in the past",
            ),
            (
                r#"{"taxi_id":"t","kind":"order","text":"x","expires_ms":2000000,"expires_in_s":1}"#,
                422,
                "not both",
            ),
            (
                r#"{"taxi_id":"t","kind":"order","text":"x","colour":"red"}"#,
                422,
                "unknown field \"colour\"",
            ),
        ] {
            let error = parse(body).expect_err(body);
            assert_eq!(error.status.as_u16(), status, "{body}: {}", error.message);
            assert!(error.message.contains(needle), "{body}: {}", error.message);
        }
    }
}
