//! How the dashboard signs people in: `GET /dashboard/settings.json`, the public settings the
//! page needs (the provider's endpoints, the client id, the scopes, whether the development
//! sign-in is on, the optional tile URL).
//!
//! The choice: the browser runs the OpenID Connect authorization-code flow with PKCE itself,
//! as the public client `auth.oidc.client_id`, and keeps the access token in
//! `sessionStorage` (this tab only, gone when it closes). Every API call then carries it as
//! `Authorization: Bearer`, exactly like any other client of the API: the service keeps no
//! sessions, holds no client secret and needs no CSRF defence (no cookie is ever sent on
//! its own), and a token is checked the one way tokens are checked (`crate::auth`). What
//! guards the flow, in `dashboard/app.js`: a fresh random `state`, `nonce` and PKCE verifier
//! (S256) per sign-in, kept in `sessionStorage`; the answer is taken only when its `state`
//! matches (and `iss`, when sent, is the issuer), the code is exchanged with the verifier,
//! and the ID token's `nonce`, `iss` and `aud` must match before the access token is used;
//! the code and state are removed from the address bar at once. What guards the token:
//! the pages allow scripts from this service only (`Content-Security-Policy`, no inline
//! script, see [`super::assets`]), send no referrer and cannot be framed.
//!
//! The development sign-in (`dashboard.dev_sign_in`, off by default) adds a field for a
//! static token of `[[auth.tokens]]`; it is checked by the API like any bearer token.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::DashboardState;

/// `GET /dashboard/settings.json`
pub async fn settings(State(state): State<DashboardState>) -> Response {
    let config = &state.config;
    let oidc = match state.auth.oidc() {
        Some(verifier) => match verifier.discovery().await {
            Ok(discovery) => json!({
                "issuer": discovery.issuer,
                "authorization_endpoint": discovery.authorization_endpoint,
                "token_endpoint": discovery.token_endpoint,
                "end_session_endpoint": discovery.end_session_endpoint,
                "client_id": verifier.config().client_id,
                "audience": verifier.config().audience,
                "scope": config.dashboard.scope,
                "redirect_uri": config.dashboard.redirect,
            }),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "dashboard: the provider's discovery document cannot be read");
                json!({ "error": "the sign-in provider cannot be reached; try again shortly" })
            }
        },
        None => Value::Null,
    };
    let body = json!({
        "oidc": oidc,
        "dev_sign_in": config.dashboard.dev_sign_in,
        "tile_url": config.dashboard.tile_url,
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}
