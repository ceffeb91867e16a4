//! Who is calling, and what they may do.
//!
//! Every request carries `Authorization: Bearer <token>`. A token with the shape of a JWT is
//! an OpenID Connect access token ([`oidc`]): its signature, issuer, audience, expiry and
//! not-before are checked and its roles read from the configured claim. Any other token is a
//! machine client's static token ([`tokens`]), known by its SHA-256. Either way the caller
//! ends up as a [`Principal`]: a name and the permissions of its roles ([`roles`]).
//! No credentials, or bad ones: 401. Good credentials without the permission: 403.

pub mod oidc;
pub mod roles;
pub mod tokens;

use std::collections::BTreeSet;
use std::sync::Arc;

pub use roles::{Permission, Roles};

use crate::config::AuthConfig;

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    /// `token:<name>` or the token's `sub` (with `preferred_username` when given).
    pub name: String,
    pub roles: Vec<String>,
    pub permissions: BTreeSet<Permission>,
}

impl Principal {
    pub fn may(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }
}

/// Why a request is not authenticated (401).
#[derive(Debug, thiserror::Error)]
pub enum Unauthenticated {
    #[error("missing credentials: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("malformed Authorization header: expected `Bearer <token>`")]
    Malformed,
    #[error("invalid token")]
    UnknownStaticToken,
    #[error("invalid token: {0}")]
    Jwt(String),
    #[error("single sign-on is not configured: only static tokens are accepted")]
    NoOidc,
    #[error("the identity provider cannot be reached: {0}")]
    ProviderDown(String),
}

impl Unauthenticated {
    /// Label for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Unauthenticated::Missing => "missing",
            Unauthenticated::Malformed => "malformed",
            Unauthenticated::UnknownStaticToken => "unknown",
            Unauthenticated::Jwt(_) => "jwt",
            Unauthenticated::NoOidc => "no_oidc",
            Unauthenticated::ProviderDown(_) => "provider_down",
        }
    }
}

/// The authenticator of the API: static tokens and, when configured, the OIDC verifier.
#[derive(Clone)]
pub struct Auth {
    tokens: tokens::Tokens,
    oidc: Option<Arc<oidc::Verifier>>,
    roles: Roles,
}

impl Auth {
    pub fn new(config: &AuthConfig) -> anyhow::Result<Auth> {
        let roles = Roles::new(&config.roles)?;
        let oidc = match &config.oidc {
            Some(oidc) => Some(Arc::new(oidc::Verifier::new(oidc)?)),
            None => None,
        };
        Ok(Auth {
            tokens: tokens::Tokens::new(&config.tokens),
            oidc,
            roles,
        })
    }

    /// The OIDC verifier, for the dashboard's sign-in settings.
    pub fn oidc(&self) -> Option<&oidc::Verifier> {
        self.oidc.as_deref()
    }

    /// The caller presenting this `Authorization` header value.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
    ) -> Result<Principal, Unauthenticated> {
        let header = authorization.ok_or(Unauthenticated::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| Unauthenticated::Malformed)?;
        let (scheme, token) = header
            .trim()
            .split_once(' ')
            .ok_or(Unauthenticated::Malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(Unauthenticated::Malformed);
        }
        let (name, roles) = if oidc::looks_like_jwt(token) {
            let verifier = self.oidc.as_ref().ok_or(Unauthenticated::NoOidc)?;
            let identity = verifier.verify(token).await?;
            (identity.name, identity.roles)
        } else {
            let known = self
                .tokens
                .find(token)
                .ok_or(Unauthenticated::UnknownStaticToken)?;
            (format!("token:{}", known.name), vec![known.role.clone()])
        };
        let permissions = self.roles.permissions(&roles);
        Ok(Principal {
            name,
            roles,
            permissions,
        })
    }
}
