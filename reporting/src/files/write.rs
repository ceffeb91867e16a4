//! Writing the file area: an upload streamed to the store as it arrives, routed by what it
//! is, and a file removed.
//!
//! The size limit is checked twice: from `Content-Length` before a byte is read, and on the
//! bytes themselves as they arrive (a body sent without a length, or longer than it said),
//! 413 either way, with nothing left in the store. Non-JSON uploads go straight to their key
//! (`data/<path>`). A JSON upload goes to a staging key while it is checked, its rows to
//! their own object; once the body has ended it is copied to `data/<path>` if it parsed,
//! else to `rejected/files/<path>` with its reason beside it. Either way the previous
//! version of the file stays readable until the new one is whole.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::json;

use super::json::{Checker, JsonError, Shape};
use super::paths::{self, FilePath};
use super::routing::{self, Route};
use super::store::{delete_if_present, ObjectSink};
use super::{bad_path, quoted, store_error};
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::auth::{Permission, Principal};

/// `PUT`/`POST` of `raw` (the path after `/filesystem/`), logged and counted.
pub async fn write(
    state: &AppState,
    principal: &Principal,
    raw: &str,
    request: Request,
) -> Response {
    let (response, bytes) = match upload(state, principal, raw, request).await {
        Ok(answer) => answer,
        Err(e) => (e.into_response(), 0),
    };
    let status = response.status().as_u16();
    metrics::counter!("reporting_file_writes_total", "status" => status.to_string()).increment(1);
    tracing::info!(caller = %principal.name, path = %format!("/{raw}"), bytes, status, "file written");
    response
}

/// `DELETE` of `raw`: the file and its rows.
pub async fn delete(state: &AppState, principal: &Principal, raw: &str) -> Response {
    let response = match remove(state, principal, raw).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    let status = response.status().as_u16();
    metrics::counter!("reporting_file_writes_total", "status" => status.to_string()).increment(1);
    tracing::info!(caller = %principal.name, path = %format!("/{raw}"), status, "file deleted");
    response
}

async fn remove(state: &AppState, principal: &Principal, raw: &str) -> Result<Response, ApiError> {
    if !principal.may(Permission::FilesWrite) {
        return Err(ApiError::forbidden(Permission::FilesWrite));
    }
    let path = file_path(raw)?;
    let objects = state.lake.objects();
    let layout = state.lake.files();
    let key = layout.data(path.parts());
    objects
        .head(&key)
        .await
        .map_err(|e| store_error(&path.to_string(), e))?;
    objects
        .delete(&key)
        .await
        .map_err(|e| store_error(&path.to_string(), e))?;
    if let Some(rows) = layout.rows(&path.parts()) {
        delete_if_present(&*objects, &rows)
            .await
            .map_err(|e| store_error(&path.to_string(), e))?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A file's path: checked, and not a directory.
fn file_path(raw: &str) -> Result<FilePath, ApiError> {
    let path = paths::parse(raw, false).map_err(bad_path)?;
    if path.directory {
        return Err(ApiError::bad(
            "path",
            "a file's path must not end with / (that is a directory)",
        ));
    }
    Ok(path)
}

fn too_large(limit: u64) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!(
            "the body is larger than the limit of {limit} bytes (files.max_body_bytes)"
        ),
        parameter: None,
    }
}

/// The upload and its answer, and the bytes received.
async fn upload(
    state: &AppState,
    principal: &Principal,
    raw: &str,
    request: Request,
) -> Result<(Response, u64), ApiError> {
    if !principal.may(Permission::FilesWrite) {
        return Err(ApiError::forbidden(Permission::FilesWrite));
    }
    let path = file_path(raw)?;
    // Held until the upload is stored: memory is bounded by uploads x parts.
    let Ok(_permit) = state.uploads.clone().try_acquire_owned() else {
        let mut busy = ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "{} uploads are running (files.max_uploads); try again when one has finished",
                state.config.files.max_uploads
            ),
            parameter: None,
        }
        .into_response();
        busy.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Ok((busy, 0));
    };
    let limit = state.config.files.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let route = routing::route(&path, content_type.as_deref());
    state
        .lake
        .ensure_bucket()
        .await
        .map_err(super::unreachable)?;
    let objects = state.lake.objects();
    let layout = state.lake.files();
    let key = layout.data(path.parts());
    let existed = match objects.head(&key).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => return Err(store_error(&path.to_string(), e)),
    };
    let threshold = state.config.files.multipart_threshold_bytes as usize;
    let mut body = request.into_body().into_data_stream();
    let rows_key = layout.rows(&path.parts());

    let (etag, bytes, rows) = match route {
        Route::Json(shape) => {
            let staging =
                ObjectSink::new(objects.clone(), layout.staging(&staging_id()), threshold);
            let rows_sink = rows_key
                .clone()
                .map(|k| ObjectSink::new(objects.clone(), k, threshold));
            let mut checker = Checker::new(shape);
            let mut job = JsonUpload {
                staging,
                rows: rows_sink,
                checker: &mut checker,
                failed: None,
            };
            let received = async {
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(cut_off)?;
                    if job.staging.written() + chunk.len() as u64 > limit {
                        return Err(too_large(limit));
                    }
                    job.chunk(chunk)
                        .await
                        .map_err(|e| store_error(&path.to_string(), e))?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = received {
                job.abort().await;
                return Err(e);
            }
            let bytes = job.staging.written();
            match job
                .end()
                .await
                .map_err(|e| store_error(&path.to_string(), e))?
            {
                Ok((staged, rows)) => {
                    let etag = place(&*objects, &staged, &key)
                        .await
                        .map_err(|e| store_error(&path.to_string(), e))?;
                    (etag, bytes, Some(rows))
                }
                Err((staged, error)) => {
                    let answer = reject(state, principal, &path, &staged, shape, &error).await?;
                    return Ok((answer, bytes));
                }
            }
        }
        Route::Csv | Route::Parquet | Route::Other => {
            let mut sink = ObjectSink::new(objects.clone(), key.clone(), threshold);
            let received = async {
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(cut_off)?;
                    if sink.written() + chunk.len() as u64 > limit {
                        return Err(too_large(limit));
                    }
                    sink.write(chunk)
                        .await
                        .map_err(|e| store_error(&path.to_string(), e))?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = received {
                sink.abort().await;
                return Err(e);
            }
            let bytes = sink.written();
            let etag = sink
                .finish()
                .await
                .map_err(|e| store_error(&path.to_string(), e))?;
            // A JSON file replaced by something else leaves no rows behind.
            if let Some(rows_key) = &rows_key {
                delete_if_present(&*objects, rows_key)
                    .await
                    .map_err(|e| store_error(&path.to_string(), e))?;
            }
            (etag, bytes, None)
        }
    };
    let table = match (route.format(), path.top_dir()) {
        (Some(format), Some(dir)) => Some(format!(
            "files.{}",
            analytics::lake::files::Layout::table_name(dir, format)
        )),
        _ => None,
    };
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = json!({
        "path": path.to_string(),
        "bytes": bytes,
        "etag": etag.as_deref().map(quoted),
        "route": route.name(),
        "rows": rows,
        "table": table,
    });
    let mut response = (status, Json(body)).into_response();
    if let Some(value) = etag.and_then(|e| HeaderValue::from_str(&quoted(&e)).ok()) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok((response, bytes))
}

/// The body broke off before its end.
fn cut_off(error: axum::Error) -> ApiError {
    ApiError::bad("body", format!("the upload broke off: {error}"))
}

/// A JSON upload in progress: the original to staging, the rows to their object, the
/// checker in between. After the first error only the original is written (it is kept).
struct JsonUpload<'a> {
    staging: ObjectSink,
    rows: Option<ObjectSink>,
    checker: &'a mut Checker,
    failed: Option<JsonError>,
}

impl JsonUpload<'_> {
    async fn chunk(&mut self, chunk: Bytes) -> object_store::Result<()> {
        if self.failed.is_none() {
            match self.checker.feed(&chunk) {
                Ok(()) => {
                    let rows = self.checker.take_rows();
                    if let (Some(sink), false) = (&mut self.rows, rows.is_empty()) {
                        sink.write(Bytes::from(rows)).await?;
                    }
                }
                Err(e) => self.fail(e).await,
            }
        }
        self.staging.write(chunk).await
    }

    async fn fail(&mut self, error: JsonError) {
        self.failed = Some(error);
        if let Some(rows) = self.rows.take() {
            rows.abort().await;
        }
    }

    async fn abort(self) {
        if let Some(rows) = self.rows {
            rows.abort().await;
        }
        self.staging.abort().await;
    }

    /// The body has ended: the staged original's key and the rows (parsed), or the staged
    /// key and the error.
    #[allow(clippy::type_complexity)]
    async fn end(
        mut self,
    ) -> object_store::Result<Result<(ObjectPath, u64), (ObjectPath, JsonError)>> {
        if self.failed.is_none() {
            match self.checker.finish() {
                Ok(_) => {
                    let rows = self.checker.take_rows();
                    if let (Some(sink), false) = (&mut self.rows, rows.is_empty()) {
                        sink.write(Bytes::from(rows)).await?;
                    }
                }
                Err(e) => self.fail(e).await,
            }
        }
        let staged = self.staging.key().clone();
        self.staging.finish().await?;
        match self.failed {
            Some(error) => Ok(Err((staged, error))),
            None => {
                if let Some(rows) = self.rows {
                    rows.finish().await?;
                }
                Ok(Ok((staged, self.checker.rows())))
            }
        }
    }
}

/// Moves the staged upload to `to`; its ETag there.
async fn place(
    objects: &dyn ObjectStore,
    staged: &ObjectPath,
    to: &ObjectPath,
) -> object_store::Result<Option<String>> {
    objects.copy(staged, to).await?;
    delete_if_present(objects, staged).await?;
    Ok(objects.head(to).await?.e_tag)
}

/// Keeps a JSON upload that does not parse under `rejected/`, with its reason; 422.
async fn reject(
    state: &AppState,
    principal: &Principal,
    path: &FilePath,
    staged: &ObjectPath,
    shape: Shape,
    error: &JsonError,
) -> Result<Response, ApiError> {
    let objects = state.lake.objects();
    let layout = state.lake.files();
    let parts = path.parts();
    let kept = layout.rejected(parts.iter().copied());
    let failed = |e| store_error(&path.to_string(), e);
    objects.copy(staged, &kept).await.map_err(failed)?;
    delete_if_present(&*objects, staged).await.map_err(failed)?;
    let expected = match shape {
        Shape::Document => "a JSON document",
        Shape::Lines => "NDJSON",
    };
    let reason = json!({
        "path": path.to_string(),
        "expected": expected,
        "error": error.message,
        "line": error.line,
        "column": error.column,
        "caller": principal.name,
        "at": crate::api::rows::instant(jiff::Timestamp::now()),
    });
    if let Some(reason_key) = layout.reason(&parts) {
        objects
            .put(
                &reason_key,
                PutPayload::from(reason.to_string().into_bytes()),
            )
            .await
            .map_err(failed)?;
    }
    let kept_as = format!("rejected/files/{path}");
    tracing::info!(caller = %principal.name, path = %path, line = error.line, column = error.column, error = %error.message, "JSON upload refused, kept under rejected/");
    Ok((
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({
            "error": format!("not {expected}: {error}"),
            "parameter": "body",
            "line": error.line,
            "column": error.column,
            "kept": kept_as,
        })),
    )
        .into_response())
}

/// A key for a staged upload: unique in this process and across processes.
fn staging_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let now = jiff::Timestamp::now().as_nanosecond();
    format!("{now:x}-{:x}-{n:x}", std::process::id())
}
