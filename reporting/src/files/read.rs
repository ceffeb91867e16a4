//! Reading the file area: a file streamed from the store (whole or one range, or only its
//! headers), a directory listed, and every read audited.
//!
//! The file's metadata is read first (size, ETag): `If-None-Match` is answered 304 without
//! touching the bytes, a `Range` is checked against the size (416 with
//! `Content-Range: bytes */<size>` outside it), then the bytes (or the range) are streamed
//! from the store into the response as they come: memory does not grow with the file.
//! Several ranges in one request are answered with the whole file (200), as HTTP allows.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};
use serde_json::json;

use super::paths::{self, FilePath};
use super::{bad_path, quoted, routing, store_error};
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::auth::{Permission, Principal};

/// What a `Range` header asks of a file of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ranged {
    /// No range (or one that is ignored): the whole file.
    Whole,
    /// Bytes `start..end` (end exclusive).
    Part(u64, u64),
    /// Outside the file: 416.
    Unsatisfiable,
}

/// Reads `Range: bytes=a-b | a- | -n` for a file of `size` bytes.
pub fn range(header: Option<&str>, size: u64) -> Ranged {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ranged::Whole;
    };
    if spec.contains(',') {
        return Ranged::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ranged::Whole;
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => match number(last) {
            Some(0) => Ranged::Unsatisfiable,
            Some(_) if size == 0 => Ranged::Unsatisfiable,
            Some(n) => Ranged::Part(size.saturating_sub(n), size),
            None => Ranged::Whole,
        },
        (false, true) => match number(first) {
            Some(start) if start >= size => Ranged::Unsatisfiable,
            Some(start) => Ranged::Part(start, size),
            None => Ranged::Whole,
        },
        (false, false) => match (number(first), number(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= size {
                    Ranged::Unsatisfiable
                } else {
                    Ranged::Part(start, end.saturating_add(1).min(size))
                }
            }
            _ => Ranged::Whole,
        },
        (true, true) => Ranged::Whole,
    }
}

/// Whether `If-None-Match` matches `etag` (`*` matches any file).
fn none_match(headers: &HeaderMap, etag: Option<&str>) -> bool {
    let Some(etag) = etag else { return false };
    let ours = quoted(etag);
    let ours = ours.trim_start_matches("W/");
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == ours)
}

/// `GET` or `HEAD` of `raw` (the path after `/filesystem/`), audited.
pub async fn read(
    state: &AppState,
    principal: &Principal,
    raw: &str,
    headers: &HeaderMap,
    head_only: bool,
) -> Response {
    let response = match answer(state, principal, raw, headers, head_only).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    let status = response.status().as_u16();
    let bytes = if head_only {
        0
    } else {
        response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    metrics::counter!("reporting_file_reads_total", "status" => status.to_string()).increment(1);
    tracing::info!(
        caller = %principal.name,
        path = %format!("/{raw}"),
        method = if head_only { "HEAD" } else { "GET" },
        bytes,
        status,
        "file read"
    );
    response
}

async fn answer(
    state: &AppState,
    principal: &Principal,
    raw: &str,
    headers: &HeaderMap,
    head_only: bool,
) -> Result<Response, ApiError> {
    if !principal.may(Permission::FilesRead) {
        return Err(ApiError::forbidden(Permission::FilesRead));
    }
    let path = paths::parse(raw, true).map_err(bad_path)?;
    state
        .lake
        .ensure_bucket()
        .await
        .map_err(super::unreachable)?;
    if path.directory {
        return list(state, &path).await;
    }
    let objects = state.lake.objects();
    let key = state.lake.files().data(path.parts());
    let meta = head(&*objects, &key, &path).await?;
    let etag = meta.e_tag.as_deref();
    let mut response = if none_match(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        match range(asked, meta.size) {
            Ranged::Unsatisfiable => {
                let mut response = ApiError {
                    status: StatusCode::RANGE_NOT_SATISFIABLE,
                    message: format!(
                        "the range {:?} is outside the file ({} bytes)",
                        asked.unwrap_or_default(),
                        meta.size
                    ),
                    parameter: Some("Range".to_owned()),
                }
                .into_response();
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", meta.size)) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
                return Ok(response);
            }
            Ranged::Whole => body(&*objects, &key, &meta, None, head_only).await?,
            Ranged::Part(start, end) => {
                body(&*objects, &key, &meta, Some((start, end)), head_only).await?
            }
        }
    };
    let headers = response.headers_mut();
    if let Some(value) = etag.and_then(|e| HeaderValue::from_str(&quoted(e)).ok()) {
        headers.insert(header::ETAG, value);
    }
    let modified = jiff::Timestamp::from_millisecond(meta.last_modified.timestamp_millis())
        .map(|t| t.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string());
    if let Some(value) = modified.ok().and_then(|m| HeaderValue::from_str(&m).ok()) {
        headers.insert(header::LAST_MODIFIED, value);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    Ok(response)
}

async fn head(
    objects: &dyn ObjectStore,
    key: &ObjectPath,
    path: &FilePath,
) -> Result<ObjectMeta, ApiError> {
    objects.head(key).await.map_err(|e| match e {
        object_store::Error::NotFound { .. } => ApiError::not_found(format!(
            "no such file: {path} (a directory is listed with a trailing /)"
        )),
        other => store_error(&path.to_string(), other),
    })
}

/// The file (or `range` of it) as a streamed body; no body for `HEAD`.
async fn body(
    objects: &dyn ObjectStore,
    key: &ObjectPath,
    meta: &ObjectMeta,
    range: Option<(u64, u64)>,
    head_only: bool,
) -> Result<Response, ApiError> {
    let (status, length) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, end - start),
        None => (StatusCode::OK, meta.size),
    };
    let path = FilePath {
        segments: key
            .filename()
            .map(|f| vec![f.to_owned()])
            .unwrap_or_default(),
        directory: false,
    };
    let body = if head_only {
        Body::empty()
    } else {
        let mut options = GetOptions::new();
        if let Some((start, end)) = range {
            options = options.with_range(Some(GetRange::Bounded(start..end)));
        }
        if let Some(etag) = &meta.e_tag {
            // The bytes of the version whose size and ETag were just read, or an error.
            options = options.with_if_match(Some(etag.clone()));
        }
        let result = objects
            .get_opts(key, options)
            .await
            .map_err(|e| store_error(key.as_ref(), e))?;
        let stream = result.into_stream().map(|chunk| {
            chunk.map_err(|e| {
                tracing::warn!(error = %e, "file download stopped");
                std::io::Error::other(e)
            })
        });
        Body::from_stream(stream)
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(routing::content_type(&path)),
    );
    if let Some((start, end)) = range {
        if let Ok(value) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{}", end - 1, meta.size))
        {
            headers.insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

/// A directory's files and subdirectories.
async fn list(state: &AppState, path: &FilePath) -> Result<Response, ApiError> {
    let objects = state.lake.objects();
    let prefix = state.lake.files().data(path.parts());
    let listing = objects
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| store_error(&path.to_string(), e))?;
    if !path.segments.is_empty() && listing.objects.is_empty() && listing.common_prefixes.is_empty()
    {
        return Err(ApiError::not_found(format!("no such directory: {path}")));
    }
    let base = path.to_string();
    let mut directories: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(|name| format!("{name}/")))
        .collect();
    directories.sort();
    let mut files: Vec<serde_json::Value> = listing
        .objects
        .iter()
        .filter_map(|o| {
            let name = o.location.filename()?;
            let modified = jiff::Timestamp::from_millisecond(o.last_modified.timestamp_millis())
                .ok()
                .map(crate::api::rows::instant);
            Some(json!({
                "name": name,
                "path": format!("{base}{name}"),
                "bytes": o.size,
                "etag": o.e_tag.as_deref().map(quoted),
                "modified": modified,
            }))
        })
        .collect();
    files.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let body = json!({
        "path": if base.is_empty() { "/".to_owned() } else { base.clone() },
        "directories": directories,
        "files": files,
    });
    let text = body.to_string();
    let mut response = (StatusCode::OK, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_http_says() {
        let r = |h: &str, size| range(Some(h), size);
        assert_eq!(r("bytes=0-9", 100), Ranged::Part(0, 10));
        assert_eq!(r("bytes=90-200", 100), Ranged::Part(90, 100));
        assert_eq!(r("bytes=95-", 100), Ranged::Part(95, 100));
        assert_eq!(r("bytes=-10", 100), Ranged::Part(90, 100));
        assert_eq!(r("bytes=-500", 100), Ranged::Part(0, 100));
        assert_eq!(r("bytes=100-", 100), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=100-120", 100), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=-0", 100), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=0-0", 0), Ranged::Unsatisfiable);
        assert_eq!(r("bytes=5-2", 100), Ranged::Whole);
        assert_eq!(r("bytes=0-1,5-6", 100), Ranged::Whole);
        assert_eq!(r("items=0-1", 100), Ranged::Whole);
        assert_eq!(range(None, 100), Ranged::Whole);
    }

    #[test]
    fn if_none_match_compares_quoted_tags() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"abc\""),
        );
        assert!(none_match(&headers, Some("\"abc\"")));
        assert!(none_match(&headers, Some("abc")));
        assert!(!none_match(&headers, Some("\"abd\"")));
        assert!(!none_match(&headers, None));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(none_match(&headers, Some("\"q\"")));
    }
}
