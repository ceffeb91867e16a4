//! The web dashboard, served by the reporting service itself at `/dashboard/`: a live map of
//! the fleet, the speed layer's 10-second windows and the daily results as charts, pages of
//! trips, invoices and orders, and a form to send a taxi an order and follow its state.
//!
//! The page is a client of the `/v1` API like any other: it signs the person in
//! ([`signin`]), then calls the API with their access token, so what it shows is exactly
//! what their roles allow (the order form only with `orders.send`).
//!
//! - [`assets`]: the built-in files and their security headers.
//! - [`signin`]: the settings the page signs in with, and why sign-in works the way it does.
//! - [`live`]: `GET /v1/live`, the positions pushed as server-sent events (routed in
//!   [`crate::api`], behind authentication).

pub mod assets;
pub mod live;
pub mod signin;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::Auth;
use crate::config::Config;

/// What the dashboard's routes share.
#[derive(Clone)]
pub struct DashboardState {
    pub config: Arc<Config>,
    pub auth: Auth,
    csp: HeaderValue,
}

/// The dashboard's routes (`/`, `/dashboard/...`); no routes when `dashboard.enabled` is
/// false.
pub fn router(config: Arc<Config>, auth: Auth) -> Router {
    if !config.dashboard.enabled {
        return Router::new();
    }
    let csp = assets::content_security_policy(
        config.auth.oidc.as_ref().map(|o| o.issuer.as_str()),
        config.dashboard.tile_url.as_deref(),
    );
    let state = DashboardState { config, auth, csp };
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard/", get(index))
        .route("/dashboard/settings.json", get(signin::settings))
        .route("/dashboard/{*file}", get(file))
        .with_state(state)
}

async fn index(State(state): State<DashboardState>, headers: HeaderMap) -> Response {
    let mut response = assets::serve("index.html", &headers, &state.csp);
    // The page is where the provider sends the browser back with a code: never stored.
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

async fn file(
    State(state): State<DashboardState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    assets::serve(&file, &headers, &state.csp)
}
