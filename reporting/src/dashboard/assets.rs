//! The dashboard's files, built into the binary from `reporting/dashboard/`: the page, its
//! script and style, and the vendored libraries (uPlot for charts, h3-js for zone outlines;
//! versions and licences in `reporting/dashboard/vendor/README.md`). Nothing is fetched
//! from elsewhere at run time, unless `dashboard.tile_url` asks for a base map.
//!
//! Every answer carries the security headers of the dashboard: a `Content-Security-Policy`
//! allowing scripts and connections to this service only (plus the sign-in provider for
//! the token exchange, and the tile server's images when configured), no referrer (the
//! sign-in code never leaks in a `Referer`), no framing, no type sniffing. Files are
//! revalidated by an `ETag` (a hash of their content) on each load.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One built-in file.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard/", $path)),
        }
    };
}

/// Every file, by its path under `/dashboard/`.
pub static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("map.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    asset!("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    asset!("vendor/h3-js.umd.js", "text/javascript; charset=utf-8"),
];

/// Each file's ETag, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| format!("\"{}\"", hex::encode(&Sha256::digest(asset.bytes)[..12])))
        .collect()
});

/// The `Content-Security-Policy` of the dashboard: this service, the provider's origin for
/// the token exchange, and the tile server's origin for images.
pub fn content_security_policy(issuer: Option<&str>, tile_url: Option<&str>) -> HeaderValue {
    let origin = |url: &str| {
        reqwest::Url::parse(url)
            .ok()
            .map(|u| u.origin().ascii_serialization())
            .filter(|o| o != "null")
    };
    let with = |sources: &str, extra: Option<String>| match extra {
        Some(origin) => format!("{sources} {origin}"),
        None => sources.to_owned(),
    };
    let connect = with("'self'", issuer.and_then(origin));
    let images = with("'self' data:", tile_url.and_then(origin));
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src {images}; connect-src {connect}; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'",
        )
    })
}

/// The file at `path` (under `/dashboard/`), or 404.
pub fn serve(path: &str, request: &HeaderMap, csp: &HeaderValue) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.path == path) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let asset = &ASSETS[index];
    let etag = &ETAGS[index];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.bytes.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_built_in_and_the_page_loads_only_built_in_scripts() {
        for asset in ASSETS {
            assert!(!asset.bytes.is_empty(), "{} is empty", asset.path);
        }
        let page = std::str::from_utf8(ASSETS[0].bytes).expect("utf-8");
        for script in page.split("<script").skip(1) {
            let src = script
                .split("src=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .expect("every script has a src (no inline scripts)");
            assert!(
                ASSETS.iter().any(|a| a.path == src),
                "{src} is not a built-in file"
            );
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    #[test]
    fn the_policy_names_the_provider_and_tile_origins_only() {
        let csp = content_security_policy(
            Some("https://sso.example.com/realms/fleet"),
            Some("https://tile.example.org/{z}/{x}/{y}.png"),
        );
        let csp = csp.to_str().expect("ascii");
        assert!(
            csp.contains("connect-src 'self' https://sso.example.com;"),
            "{csp}"
        );
        assert!(
            csp.contains("img-src 'self' data: https://tile.example.org;"),
            "{csp}"
        );
        assert!(csp.contains("script-src 'self';"), "{csp}");
        let none = content_security_policy(None, None);
        assert!(none
            .to_str()
            .expect("ascii")
            .contains("connect-src 'self';"));
    }

    #[test]
    fn a_known_etag_is_not_modified() {
        let csp = content_security_policy(None, None);
        let first = serve("app.js", &HeaderMap::new(), &csp);
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            serve("app.js", &again, &csp).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            serve("../Cargo.toml", &HeaderMap::new(), &csp).status(),
            StatusCode::NOT_FOUND
        );
    }
}
