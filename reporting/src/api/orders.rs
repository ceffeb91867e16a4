//! Orders from the reporting API: `POST /v1/orders` sends one to a taxi, `GET
//! /v1/orders/{order_id}` shows it with its history.
//!
//! Reporting writes nothing to the database, so sending is the dispatch API's job (the
//! bridge's `dispatch.api`, which stores the order, publishes it and follows it): the body
//! is forwarded as it came, with reporting's own token of that API (`[dispatch]` `url`,
//! `token`, `ca`), and the dispatch API's answer (201 with the order, or 4xx naming the
//! field) is returned as it is. Only callers with the `orders.send` permission get that far;
//! each order sent is logged with the caller's name, since the dispatch API sees only
//! reporting's token.
//!
//! The order's state is read from PostgreSQL (`orders`, `order_events`), like every other
//! report, so it is shown even while the dispatch API is down. It is never cached: it moves
//! from `sent` to `accepted`, `rejected` or `expired` within seconds.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::Value;

use super::error::ApiError;
use super::params::check_id;
use super::{rows, AppState, Caller};
use crate::auth::Permission;
use crate::config::DispatchConfig;

/// The dispatch API, as reporting calls it.
pub struct Dispatch {
    orders_url: String,
    token: String,
    http: reqwest::Client,
}

impl Dispatch {
    /// `None` when `dispatch.url` is unset (sending is off).
    pub fn new(config: &DispatchConfig) -> anyhow::Result<Option<Arc<Dispatch>>> {
        let (Some(url), Some(token)) = (&config.url, &config.token) else {
            return Ok(None);
        };
        let http = crate::https_client::https_client(
            config.ca.as_deref(),
            "dispatch.ca",
            Duration::from_millis(config.timeout_ms),
            reqwest::redirect::Policy::none(),
        )
        .context("the HTTP client of the dispatch API")?;
        Ok(Some(Arc::new(Dispatch {
            orders_url: format!("{}/v1/orders", url.trim_end_matches('/')),
            token: token.clone(),
            http,
        })))
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
        parameter: None,
    }
}

/// `POST /v1/orders`: forwards the order to the dispatch API; its answer.
pub async fn send(
    State(state): State<AppState>,
    Extension(principal): Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !principal.may(Permission::OrdersSend) {
        return Err(ApiError::forbidden(Permission::OrdersSend));
    }
    let dispatch = state.dispatch.as_ref().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "sending orders is not configured here (dispatch.url)",
        )
    })?;
    let order: Value = serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })?;
    if !order.is_object() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object: {\"taxi_id\", \"kind\", \"text\", ...}",
        ));
    }
    let answer = dispatch
        .http
        .post(&dispatch.orders_url)
        .bearer_auth(&dispatch.token)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, url = dispatch.orders_url, "dispatch API unreachable");
            if e.is_timeout() {
                error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the dispatch API did not answer",
                )
            } else {
                error(
                    StatusCode::BAD_GATEWAY,
                    "the dispatch API cannot be reached",
                )
            }
        })?;
    let status = answer.status();
    let text = answer.bytes().await.map_err(|e| {
        tracing::warn!(error = %e, "reading the dispatch API's answer");
        error(StatusCode::BAD_GATEWAY, "the dispatch API's answer was cut")
    })?;
    metrics::counter!("reporting_orders_sent_total", "status" => status.as_u16().to_string())
        .increment(1);
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        tracing::error!(%status, "the dispatch API refused reporting's token (dispatch.token)");
        return Err(error(
            StatusCode::BAD_GATEWAY,
            "the dispatch API refused this service's token",
        ));
    }
    if status.is_server_error() {
        tracing::warn!(%status, body = %String::from_utf8_lossy(&text), "dispatch API error");
        return Err(error(
            StatusCode::BAD_GATEWAY,
            "the dispatch API could not take the order; try again",
        ));
    }
    let answer: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
    tracing::info!(
        caller = %principal.name,
        status = status.as_u16(),
        order_id = answer["order_id"].as_str().unwrap_or(""),
        taxi_id = order["taxi_id"].as_str().unwrap_or(""),
        "order sent through the dispatch API"
    );
    let mut response = (status, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `GET /v1/orders/{order_id}`: the order, its state and its history, from PostgreSQL.
pub async fn show(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(order_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !principal.may(Permission::Orders) {
        return Err(ApiError::forbidden(Permission::Orders));
    }
    check_id("order_id", &order_id)?;
    let client = state.pool.get().await?;
    let row = client
        .query_opt(
            "SELECT order_id, taxi_id, kind, text, sender, created_at, expires_at, state,
                    updated_at, attempts, last_sent_at, reason
               FROM orders WHERE order_id = $1",
            &[&order_id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no order {order_id:?}")))?;
    let mut order = rows::object(&row)?;
    let events = client
        .query(
            "SELECT state, at, detail FROM order_events WHERE order_id = $1 ORDER BY id",
            &[&order_id],
        )
        .await?;
    let history = events
        .iter()
        .map(|row| rows::object(row).map(Value::Object))
        .collect::<anyhow::Result<Vec<Value>>>()?;
    order.insert("history".to_owned(), Value::Array(history));
    Ok(Json(Value::Object(order)))
}
