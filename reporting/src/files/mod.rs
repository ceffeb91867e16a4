//! The file API: `/filesystem/<path>`, files kept in the lake's object store, and the tables
//! they make.
//!
//! - `PUT` or `POST /filesystem/<path>`: stores the body (permission `files.write`), streamed
//!   to the store ([`store`]: one PUT up to `files.multipart_threshold_bytes`, a multipart
//!   upload above), at most `files.max_body_bytes` (413 otherwise), at most
//!   `files.max_uploads` at once (503 otherwise). Answers 201 (created) or 200 (replaced)
//!   with the `ETag`.
//! - `GET /filesystem/<path>` streams the file back (permission `files.read`), with `ETag`,
//!   `If-None-Match` (304) and one `Range` (206, or 416 when it is outside the file); `HEAD`
//!   the same headers without the body. `GET /filesystem/<dir>/` (or `/filesystem/`) lists a
//!   directory as JSON.
//! - `DELETE /filesystem/<path>` removes a file and its rows (permission `files.write`).
//!
//! Paths are checked first ([`paths`]: traversal, encodings, lengths). Uploads are routed by
//! what they are ([`routing`]): JSON is checked as it streams ([`json`]) and its rows written
//! beside it as NDJSON, so that each top-level directory is a table of the lake's `files`
//! schema (`analytics sql`); CSV and Parquet files are tables as they are; anything else is
//! kept as it is. A JSON upload that does not parse is kept under `rejected/` with its reason
//! and refused with 422 naming the line and column. The key layout is
//! [`analytics::lake::files`]'s; lake.md documents it.
//!
//! Every read is audited: a log line (caller, path, bytes, status) and
//! `reporting_file_reads_total{status}`; writes likewise in `reporting_file_writes_total`.

pub mod config;
pub mod json;
pub mod paths;
pub mod read;
pub mod routing;
pub mod store;
pub mod write;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Extension, Router};

pub use config::FilesConfig;

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::auth::Principal;

/// The routes of the file API, authenticated like the rest of the API.
pub fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/filesystem", any(handle))
        .route("/filesystem/", any(handle))
        .route("/filesystem/{*path}", any(handle))
        .layer(DefaultBodyLimit::disable())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::api::authenticate,
        ))
}

async fn handle(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    request: Request,
) -> Response {
    if !state.config.files.enabled {
        return ApiError::not_found("the file API is off (files.enabled = false)").into_response();
    }
    // The raw target, still percent-encoded: what the router matched is not trusted.
    let raw = request
        .uri()
        .path()
        .strip_prefix("/filesystem")
        .unwrap_or_default();
    let raw = raw.strip_prefix('/').unwrap_or(raw).to_owned();
    let method = request.method().clone();
    match method {
        Method::GET | Method::HEAD => {
            read::read(
                &state,
                &principal,
                &raw,
                request.headers(),
                method == Method::HEAD,
            )
            .await
        }
        Method::PUT | Method::POST => write::write(&state, &principal, &raw, request).await,
        Method::DELETE => write::delete(&state, &principal, &raw).await,
        _ => {
            let mut response = ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: format!("{method} is not a method of /filesystem/"),
                parameter: None,
            }
            .into_response();
            response.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE"),
            );
            response
        }
    }
}

/// A path refused by [`paths::parse`]: 400 naming the problem.
fn bad_path(error: paths::PathError) -> ApiError {
    ApiError::bad("path", error.to_string())
}

/// A failure of the object store: 404 for a missing object, 503 when the store cannot be
/// reached, 500 otherwise (logged in full).
fn store_error(what: &str, error: object_store::Error) -> ApiError {
    if let object_store::Error::NotFound { .. } = error {
        return ApiError::not_found(format!("no such file: {what}"));
    }
    tracing::warn!(what, "file store request failed");
    ApiError::backend("the file store", &error.to_string())
}

/// The store could not be reached to make sure the bucket exists: 503.
fn unreachable(error: anyhow::Error) -> ApiError {
    tracing::error!(error = %format!("{error:#}"), "the file store cannot be reached");
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "the file store cannot be reached; try again shortly".to_owned(),
        parameter: None,
    }
}

/// An ETag as HTTP writes it: in double quotes.
fn quoted(etag: &str) -> String {
    if etag.starts_with('"') || etag.starts_with("W/") {
        etag.to_owned()
    } else {
        format!("\"{etag}\"")
    }
}
