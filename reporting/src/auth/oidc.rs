//! OpenID Connect access tokens: JWTs signed by the issuer's keys.
//!
//! At start the verifier reads `<issuer>/.well-known/openid-configuration` (which must name
//! the same issuer) and the key set at its `jwks_uri`. A token is accepted when its
//! signature verifies with the key its header names (`kid`), with an asymmetric algorithm
//! that key allows, and its `iss`, `aud`, `exp` and `nbf` are right. A token naming a key
//! not in the set makes the verifier fetch the set again (at most every
//! `jwks_min_refresh_s`): a provider that rotated its keys is followed without a restart,
//! and a key it never published is refused. The provider being down only matters for such
//! a refetch: known keys keep working.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::Unauthenticated;
use crate::config::OidcConfig;

/// Algorithms accepted: asymmetric only (`none` and shared-secret HMAC never).
const ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The parts of the discovery document used here.
#[derive(Clone, Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
}

/// Who a valid token says the caller is.
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub roles: Vec<String>,
}

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

/// Checks access tokens against one issuer.
pub struct Verifier {
    config: OidcConfig,
    http: reqwest::Client,
    discovery: Mutex<Option<Discovery>>,
    keys: Mutex<Option<Keys>>,
}

/// Whether a bearer token has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Verifier {
    pub fn new(config: &OidcConfig) -> anyhow::Result<Verifier> {
        let http = crate::https_client::https_client(
            config.ca.as_deref(),
            "auth.oidc.ca",
            Duration::from_secs(10),
            reqwest::redirect::Policy::default(),
        )
        .context("the HTTP client of single sign-on")?;
        Ok(Verifier {
            config: config.clone(),
            http,
            discovery: Mutex::new(None),
            keys: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// The discovery document (fetched once, then kept).
    pub async fn discovery(&self) -> anyhow::Result<Discovery> {
        let mut slot = self.discovery.lock().await;
        if let Some(discovery) = slot.as_ref() {
            return Ok(discovery.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("fetching {url}"))?
            .json()
            .await
            .with_context(|| format!("reading {url}"))?;
        if discovery.issuer.trim_end_matches('/') != self.config.issuer.trim_end_matches('/') {
            bail!(
                "{url} names the issuer {:?}, not auth.oidc.issuer {:?}",
                discovery.issuer,
                self.config.issuer
            );
        }
        *slot = Some(discovery.clone());
        Ok(discovery)
    }

    /// Fetches the discovery document and the keys: called at start so that a wrong issuer
    /// is told at once (the service still starts: the provider may come later).
    pub async fn warm_up(&self) {
        match self.refresh_keys(true).await {
            Ok(n) => info!(issuer = %self.config.issuer, keys = n, "single sign-on keys loaded"),
            Err(e) => warn!(
                issuer = %self.config.issuer,
                error = %format!("{e:#}"),
                "single sign-on keys cannot be loaded yet; tokens are refused until they are"
            ),
        }
    }

    /// Fetches the key set again (unless it was fetched less than `jwks_min_refresh_s` ago
    /// and `force` is false). Returns the number of keys.
    async fn refresh_keys(&self, force: bool) -> anyhow::Result<usize> {
        let mut keys = self.keys.lock().await;
        let min = Duration::from_secs(self.config.jwks_min_refresh_s);
        if let Some(current) = keys.as_ref() {
            if !force && current.fetched.elapsed() < min {
                return Ok(current.set.keys.len());
            }
        }
        let discovery = self.discovery().await?;
        let set: JwkSet = self
            .http
            .get(&discovery.jwks_uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("fetching {}", discovery.jwks_uri))?
            .json()
            .await
            .with_context(|| format!("reading the key set {}", discovery.jwks_uri))?;
        let n = set.keys.len();
        *keys = Some(Keys {
            set,
            fetched: Instant::now(),
        });
        Ok(n)
    }

    /// The key named `kid`, if the current set has it.
    async fn key(&self, kid: &str) -> Option<jsonwebtoken::jwk::Jwk> {
        let keys = self.keys.lock().await;
        keys.as_ref()?.set.find(kid).cloned()
    }

    /// Checks a token; its caller's name and roles.
    pub async fn verify(&self, token: &str) -> Result<Identity, Unauthenticated> {
        let bad = |why: String| Unauthenticated::Jwt(why);
        let header = jsonwebtoken::decode_header(token).map_err(|e| bad(format!("{e}")))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(bad(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header
            .kid
            .ok_or_else(|| bad("the token names no key (kid)".to_owned()))?;
        let jwk = match self.key(&kid).await {
            Some(jwk) => jwk,
            None => {
                // A rotated key: fetch the set again (rate-limited), then decide.
                self.refresh_keys(false)
                    .await
                    .map_err(|e| Unauthenticated::ProviderDown(format!("{e:#}")))?;
                self.key(&kid)
                    .await
                    .ok_or_else(|| bad(format!("unknown signing key {kid:?}")))?
            }
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| bad(format!("key {kid:?}: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[self.config.issuer.as_str()]);
        validation.set_audience(&[self.config.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway_s;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| bad(describe(&e)))?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = match claims.get("preferred_username").and_then(Value::as_str) {
            Some(user) => format!("{user} ({sub})"),
            None => sub.to_owned(),
        };
        Ok(Identity {
            name,
            roles: roles(&claims, &self.config.roles_claim),
        })
    }
}

/// A token error in words a caller understands.
fn describe(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match error.kind() {
        K::ExpiredSignature => "the token has expired".to_owned(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
        K::InvalidAudience => "the token is for another audience".to_owned(),
        K::InvalidIssuer => "the token is from another issuer".to_owned(),
        K::InvalidSignature => "the signature does not verify".to_owned(),
        K::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        _ => error.to_string(),
    }
}

/// The roles in `claim` (dots walk into objects): an array of strings, or one string of
/// space-separated roles.
pub fn roles(claims: &Value, claim: &str) -> Vec<String> {
    let mut value = claims;
    for part in claim.split('.') {
        match value.get(part) {
            Some(inner) => value = inner,
            None => return Vec::new(),
        }
    }
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_are_read_from_arrays_strings_and_nested_claims() {
        let claims = json!({
            "roles": ["viewer", "analyst"],
            "scope": "viewer dispatcher",
            "realm_access": {"roles": ["admin"]},
            "n": 3
        });
        assert_eq!(roles(&claims, "roles"), ["viewer", "analyst"]);
        assert_eq!(roles(&claims, "scope"), ["viewer", "dispatcher"]);
        assert_eq!(roles(&claims, "realm_access.roles"), ["admin"]);
        assert!(roles(&claims, "n").is_empty());
        assert!(roles(&claims, "missing.path").is_empty());
    }

    #[test]
    fn only_three_base64url_parts_look_like_a_jwt() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt("plain-static-token"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b.c=="));
    }
}
