//! A real OpenID provider for tests: `oidc-provider` (the certified Node.js implementation),
//! run from `testkit/oidc/provider.mjs`.
//!
//! Services that accept single sign-on tokens must be tested against tokens no one here
//! minted: [`OidcProvider::start`] runs the provider on a free loopback port with the clients
//! and accounts of an [`OidcOptions`], and the process is killed when the `OidcProvider` is
//! dropped. Access tokens are JWTs for the configured audience (`urn:taxi-reporting` by
//! default) with the roles in the configured claim (`roles`): a client's roles for
//! client credentials, the signed-in account's for the authorization-code flow.
//!
//! Besides client credentials ([`OidcProvider::client_credentials_token`]), this owns:
//! - key rotation ([`OidcProvider::rotate_keys`]: the provider restarts on the same port with a
//!   new signing key, the old ones still published or not) and tokens signed by a key the
//!   provider never published ([`OidcProvider::token_signed_by_unpublished_key`]);
//! - the authorization-code flow with PKCE, without a browser ([`OidcProvider::authorize`],
//!   [`OidcProvider::exchange_code`], [`OidcProvider::login`]): the provider's interaction
//!   endpoint signs in the account named by `login_hint` (or the default account) and grants
//!   consent, so following its redirects ends at the client's redirect URI with a code. A
//!   headless browser pointed at [`OidcProvider::authorization_url`] gets there the same way.
//!   With [`OidcOptions::interactive_login`] the provider shows a sign-in page instead (a
//!   form with the account and its password, [`OidcAccount::password`]) that a browser
//!   fills in and submits, as a person would; consent is still given without a page.
//!
//! The Node modules are installed by `scripts/setup`; when they are missing, `start` runs
//! `npm ci --prefix testkit/oidc` itself (once per machine, under a file lock). The programs
//! are `node` and `npm` from `PATH`, or the paths in the `NODE` and `NPM` variables.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest as _;
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// How long a starting provider may take to print its ready line (usually under a second).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed by [`OidcProvider::authorize`] before it gives up.
const MAX_REDIRECTS: usize = 20;

/// The provider's clients, accounts and token settings.
#[derive(Clone, Debug)]
pub struct OidcOptions {
    /// The default resource indicator, and so the `aud` of access tokens that do not ask for
    /// another one. Default `urn:taxi-reporting`.
    pub audience: String,
    /// The resource server's scope values, space-separated. Default `reports`.
    pub scope: String,
    /// The access token claim holding the roles. Default `roles`.
    pub roles_claim: String,
    /// Access token lifetime (whole seconds, at least one) unless a client has its own.
    /// Default 10 minutes.
    pub access_token_ttl: Duration,
    pub clients: Vec<OidcClient>,
    pub accounts: Vec<OidcAccount>,
    /// The account signed in when an authorization request has no `login_hint`.
    pub default_account: Option<String>,
    /// A sign-in page (a form a browser submits) instead of signing in without one.
    pub interactive_login: bool,
}

impl Default for OidcOptions {
    fn default() -> OidcOptions {
        OidcOptions {
            audience: "urn:taxi-reporting".to_owned(),
            scope: "reports".to_owned(),
            roles_claim: "roles".to_owned(),
            access_token_ttl: Duration::from_secs(600),
            clients: Vec::new(),
            accounts: Vec::new(),
            default_account: None,
            interactive_login: false,
        }
    }
}

impl OidcOptions {
    pub fn client(mut self, client: OidcClient) -> OidcOptions {
        self.clients.push(client);
        self
    }

    pub fn account(mut self, account: OidcAccount) -> OidcOptions {
        self.accounts.push(account);
        self
    }

    pub fn audience(mut self, audience: &str) -> OidcOptions {
        self.audience = audience.to_owned();
        self
    }

    pub fn roles_claim(mut self, claim: &str) -> OidcOptions {
        self.roles_claim = claim.to_owned();
        self
    }

    pub fn access_token_ttl(mut self, ttl: Duration) -> OidcOptions {
        self.access_token_ttl = ttl;
        self
    }

    pub fn default_account(mut self, id: &str) -> OidcOptions {
        self.default_account = Some(id.to_owned());
        self
    }

    /// People sign in on a page of the provider: `GET /interaction/<uid>` answers a form
    /// (`#login`, `#password`, `#submit`) that posts to `/interaction/<uid>/login`.
    /// [`OidcProvider::authorize`] does not fill it in: a browser does.
    pub fn interactive_login(mut self) -> OidcOptions {
        self.interactive_login = true;
        self
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.access_token_ttl.as_secs() == 0 {
            bail!("the access token lifetime must be at least one second");
        }
        for client in &self.clients {
            if client
                .access_token_ttl
                .is_some_and(|ttl| ttl.as_secs() == 0)
            {
                bail!(
                    "client {}: the access token lifetime must be at least one second",
                    client.id
                );
            }
        }
        if let Some(id) = &self.default_account {
            if !self.accounts.iter().any(|account| &account.id == id) {
                bail!("the default account {id} is not among the accounts");
            }
        }
        Ok(())
    }
}

/// A client registered with the provider.
#[derive(Clone, Debug)]
pub struct OidcClient {
    pub id: String,
    /// `None`: a public client (`token_endpoint_auth_method=none`, PKCE only).
    pub secret: Option<String>,
    /// Put in the roles claim of its client-credentials access tokens.
    pub roles: Vec<String>,
    pub grant_types: Vec<String>,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// This client's access token lifetime, instead of the provider's.
    pub access_token_ttl: Option<Duration>,
    /// When set, its access tokens carry `nbf = iat + offset` (seconds; positive for tokens
    /// not valid yet).
    pub not_before_offset: Option<i64>,
}

impl OidcClient {
    /// A machine client: client credentials with a secret, and these roles.
    pub fn service(id: &str, secret: &str, roles: &[&str]) -> OidcClient {
        OidcClient {
            id: id.to_owned(),
            secret: Some(secret.to_owned()),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            grant_types: vec!["client_credentials".to_owned()],
            redirect_uris: Vec::new(),
            post_logout_redirect_uris: Vec::new(),
            access_token_ttl: None,
            not_before_offset: None,
        }
    }

    /// A confidential web application (a server-side dashboard): authorization code with
    /// PKCE and refresh tokens, authenticated with its secret.
    pub fn web(id: &str, secret: &str, redirect_uris: &[&str]) -> OidcClient {
        OidcClient {
            id: id.to_owned(),
            secret: Some(secret.to_owned()),
            roles: Vec::new(),
            grant_types: vec!["authorization_code".to_owned(), "refresh_token".to_owned()],
            redirect_uris: redirect_uris.iter().map(|u| (*u).to_owned()).collect(),
            post_logout_redirect_uris: Vec::new(),
            access_token_ttl: None,
            not_before_offset: None,
        }
    }

    /// A public client (a browser application): authorization code with PKCE, no secret.
    pub fn public(id: &str, redirect_uris: &[&str]) -> OidcClient {
        OidcClient {
            secret: None,
            ..OidcClient::web(id, "", redirect_uris)
        }
    }

    pub fn roles(mut self, roles: &[&str]) -> OidcClient {
        self.roles = roles.iter().map(|r| (*r).to_owned()).collect();
        self
    }

    pub fn access_token_ttl(mut self, ttl: Duration) -> OidcClient {
        self.access_token_ttl = Some(ttl);
        self
    }

    pub fn not_before_offset(mut self, seconds: i64) -> OidcClient {
        self.not_before_offset = Some(seconds);
        self
    }

    pub fn post_logout_redirect_uri(mut self, uri: &str) -> OidcClient {
        self.post_logout_redirect_uris.push(uri.to_owned());
        self
    }

    /// oidc-provider's client metadata plus `provider.mjs`'s own fields.
    fn to_json(&self) -> Value {
        let code_flow = self.grant_types.iter().any(|g| g == "authorization_code");
        let response_types: &[&str] = if code_flow { &["code"] } else { &[] };
        let mut client = json!({
            "client_id": self.id,
            "grant_types": self.grant_types,
            "response_types": response_types,
            "redirect_uris": self.redirect_uris,
            "post_logout_redirect_uris": self.post_logout_redirect_uris,
            "roles": self.roles,
        });
        match &self.secret {
            Some(secret) => {
                client["client_secret"] = json!(secret);
                client["token_endpoint_auth_method"] = json!("client_secret_basic");
            }
            None => client["token_endpoint_auth_method"] = json!("none"),
        }
        if let Some(ttl) = self.access_token_ttl {
            client["access_token_ttl"] = json!(ttl.as_secs());
        }
        if let Some(offset) = self.not_before_offset {
            client["not_before_offset"] = json!(offset);
        }
        client
    }
}

/// A person who can sign in.
#[derive(Clone, Debug)]
pub struct OidcAccount {
    /// The `sub` of its tokens, and the `login_hint` that selects it.
    pub id: String,
    pub roles: Vec<String>,
    /// Standard claims (`name`, `email`, ...), released by the matching scopes.
    pub claims: serde_json::Map<String, Value>,
    /// Asked for by the sign-in page of [`OidcOptions::interactive_login`]; `None`: any.
    pub password: Option<String>,
}

impl OidcAccount {
    pub fn new(id: &str, roles: &[&str]) -> OidcAccount {
        OidcAccount {
            id: id.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            claims: serde_json::Map::new(),
            password: None,
        }
    }

    pub fn password(mut self, password: &str) -> OidcAccount {
        self.password = Some(password.to_owned());
        self
    }

    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> OidcAccount {
        self.claims.insert(name.to_owned(), value.into());
        self
    }

    fn to_json(&self) -> Value {
        let mut account = json!({ "id": self.id, "roles": self.roles, "claims": self.claims });
        if let Some(password) = &self.password {
            account["password"] = json!(password);
        }
        account
    }
}

/// What happens to the published keys on [`OidcProvider::rotate_keys`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldKeys {
    /// Still in the JWKS (a normal rotation): tokens signed before stay verifiable.
    Published,
    /// Removed from the JWKS: tokens signed before carry an unknown `kid`.
    Dropped,
}

/// A token endpoint's success answer.
#[derive(Clone, Debug, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: Option<u64>,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
}

/// A PKCE verifier and its S256 challenge.
#[derive(Clone, Debug)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    /// A random verifier (43 characters).
    pub fn new() -> Pkce {
        Pkce::from_verifier(&random_token())
    }

    pub fn from_verifier(verifier: &str) -> Pkce {
        Pkce {
            verifier: verifier.to_owned(),
            challenge: URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes())),
        }
    }
}

impl Default for Pkce {
    fn default() -> Pkce {
        Pkce::new()
    }
}

/// The parameters of an authorization request (`response_type=code`, S256 PKCE).
#[derive(Clone, Debug)]
pub struct AuthorizationRequest {
    pub client_id: String,
    pub redirect_uri: String,
    /// Default `openid`.
    pub scope: String,
    /// Random by default.
    pub state: String,
    /// Random by default.
    pub nonce: String,
    /// Empty: no PKCE parameters (the provider refuses such a request).
    pub code_challenge: String,
    /// The account to sign in; the provider's default account when `None`.
    pub login_hint: Option<String>,
    /// A resource indicator other than the provider's default audience.
    pub resource: Option<String>,
    /// Any other parameters (`prompt`, `max_age`, ...).
    pub extra: Vec<(String, String)>,
}

impl AuthorizationRequest {
    pub fn new(client_id: &str, redirect_uri: &str, pkce: &Pkce) -> AuthorizationRequest {
        AuthorizationRequest {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            scope: "openid".to_owned(),
            state: random_token(),
            nonce: random_token(),
            code_challenge: pkce.challenge.clone(),
            login_hint: None,
            resource: None,
            extra: Vec::new(),
        }
    }

    pub fn login_hint(mut self, account: &str) -> AuthorizationRequest {
        self.login_hint = Some(account.to_owned());
        self
    }

    pub fn scope(mut self, scope: &str) -> AuthorizationRequest {
        self.scope = scope.to_owned();
        self
    }

    pub fn resource(mut self, resource: &str) -> AuthorizationRequest {
        self.resource = Some(resource.to_owned());
        self
    }

    pub fn param(mut self, name: &str, value: &str) -> AuthorizationRequest {
        self.extra.push((name.to_owned(), value.to_owned()));
        self
    }

    fn params(&self) -> Vec<(String, String)> {
        let mut params = vec![
            ("client_id".to_owned(), self.client_id.clone()),
            ("response_type".to_owned(), "code".to_owned()),
            ("redirect_uri".to_owned(), self.redirect_uri.clone()),
            ("scope".to_owned(), self.scope.clone()),
            ("state".to_owned(), self.state.clone()),
            ("nonce".to_owned(), self.nonce.clone()),
        ];
        if !self.code_challenge.is_empty() {
            params.push(("code_challenge".to_owned(), self.code_challenge.clone()));
            params.push(("code_challenge_method".to_owned(), "S256".to_owned()));
        }
        if let Some(hint) = &self.login_hint {
            params.push(("login_hint".to_owned(), hint.clone()));
        }
        if let Some(resource) = &self.resource {
            params.push(("resource".to_owned(), resource.clone()));
        }
        params.extend(self.extra.iter().cloned());
        params
    }
}

/// Where the provider sent the browser back: the client's redirect URI with a code.
#[derive(Clone, Debug)]
pub struct AuthorizationResponse {
    pub code: String,
    pub state: Option<String>,
    /// The `iss` parameter (RFC 9207).
    pub iss: Option<String>,
    /// The whole redirect URL.
    pub url: String,
}

/// A running oidc-provider. Killed on drop.
#[derive(Debug)]
pub struct OidcProvider {
    /// Holds the clients, accounts and key files and the provider's log.
    dir: TempDir,
    port: u16,
    issuer: String,
    options: OidcOptions,
    /// Private JWKs; the first one signs, all are published.
    keys: Vec<Value>,
    child: Option<Child>,
    http: reqwest::Client,
}

impl OidcProvider {
    /// Installs the Node modules if needed, writes the options' files, starts the provider on
    /// a free port with a new signing key and waits until it listens.
    pub async fn start(options: OidcOptions) -> anyhow::Result<OidcProvider> {
        options.validate()?;
        let package = package_dir();
        tokio::task::spawn_blocking(move || ensure_installed(&package))
            .await
            .context("installing oidc-provider")??;

        let dir = tempfile::Builder::new()
            .prefix("testkit-oidc-")
            .tempdir()
            .context("creating the provider's directory")?;
        write_json(
            &dir.path().join("clients.json"),
            &Value::Array(options.clients.iter().map(OidcClient::to_json).collect()),
        )?;
        write_json(
            &dir.path().join("accounts.json"),
            &Value::Array(options.accounts.iter().map(OidcAccount::to_json).collect()),
        )?;
        let key = generate_key().await?;

        let mut provider = OidcProvider {
            dir,
            port: 0,
            issuer: String::new(),
            options,
            keys: vec![key],
            child: None,
            http: http_client()?,
        };
        provider.write_jwks()?;
        let jwks = provider.dir.path().join("jwks.json");
        let mut last_error = None;
        // The port is free when chosen but may be taken before the provider binds it.
        for _ in 0..5 {
            provider.port = crate::free_port().context("finding a free port for the provider")?;
            provider.issuer = format!("http://127.0.0.1:{}", provider.port);
            match provider.launch(provider.port, &jwks, "provider.log").await {
                Ok(child) => {
                    provider.child = Some(child);
                    return Ok(provider);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("oidc-provider did not start")))
    }

    /// `http://127.0.0.1:<port>`: the `iss` of its tokens and the base of its discovery URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The default audience (`aud`) of its access tokens.
    pub fn audience(&self) -> &str {
        &self.options.audience
    }

    /// `<issuer>/.well-known/openid-configuration`
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    pub fn authorization_endpoint(&self) -> String {
        format!("{}/auth", self.issuer)
    }

    /// The `kid` of the key that signs new tokens.
    pub fn signing_kid(&self) -> &str {
        self.keys
            .first()
            .and_then(|key| key["kid"].as_str())
            .unwrap_or_default()
    }

    /// The `kid`s of every published key, the signing one first.
    pub fn published_kids(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter_map(|key| key["kid"].as_str().map(str::to_owned))
            .collect()
    }

    /// The provider's output (every start appends to it), for diagnosing a failed test.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("provider.log")
    }

    /// Whether the process is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The discovery document.
    pub async fn discovery(&self) -> anyhow::Result<Value> {
        self.get_json(&self.discovery_url()).await
    }

    /// The published JWKS (public keys).
    pub async fn jwks(&self) -> anyhow::Result<Value> {
        self.get_json(&self.jwks_uri()).await
    }

    /// A client-credentials access token (the JWT) for `audience` (the resource indicator).
    pub async fn client_credentials_token(
        &self,
        client_id: &str,
        secret: &str,
        audience: &str,
    ) -> anyhow::Result<String> {
        let tokens = self
            .client_credentials(&self.token_endpoint(), client_id, secret, audience, None)
            .await?;
        Ok(tokens.access_token)
    }

    /// The whole token response of a client-credentials grant, optionally with a `scope`.
    pub async fn client_credentials_response(
        &self,
        client_id: &str,
        secret: &str,
        audience: &str,
        scope: Option<&str>,
    ) -> anyhow::Result<TokenResponse> {
        self.client_credentials(&self.token_endpoint(), client_id, secret, audience, scope)
            .await
    }

    async fn client_credentials(
        &self,
        token_endpoint: &str,
        client_id: &str,
        secret: &str,
        audience: &str,
        scope: Option<&str>,
    ) -> anyhow::Result<TokenResponse> {
        let mut form = vec![("grant_type", "client_credentials"), ("resource", audience)];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        self.token_request(token_endpoint, client_id, Some(secret), &form)
            .await
    }

    /// Restarts the provider on the same port with a new signing key; the old keys stay in
    /// the JWKS or not. Returns the new key's `kid`. Sessions and grants are lost (they live
    /// in the provider's memory); issued JWTs are not.
    pub async fn rotate_keys(&mut self, old_keys: OldKeys) -> anyhow::Result<String> {
        let key = generate_key().await?;
        let kid = key_id(&key)?;
        match old_keys {
            OldKeys::Published => self.keys.insert(0, key),
            OldKeys::Dropped => self.keys = vec![key],
        }
        self.write_jwks()?;
        self.stop().await?;
        self.start_again().await?;
        Ok(kid)
    }

    /// A client-credentials access token with this provider's issuer, for `audience`, but
    /// signed by a key it never published: another oidc-provider, with the same issuer,
    /// clients and accounts and a key of its own, issues it and is stopped again.
    pub async fn token_signed_by_unpublished_key(
        &self,
        client_id: &str,
        secret: &str,
        audience: &str,
    ) -> anyhow::Result<String> {
        let key = generate_key().await?;
        let jwks = self.dir.path().join("unpublished-jwks.json");
        write_json(&jwks, &json!({ "keys": [key] }))?;
        let mut last_error = None;
        for _ in 0..5 {
            let port = crate::free_port().context("finding a free port")?;
            let mut child = match self.launch(port, &jwks, "unpublished.log").await {
                Ok(child) => child,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let endpoint = format!("http://127.0.0.1:{port}/token");
            let result = self
                .client_credentials(&endpoint, client_id, secret, audience, None)
                .await;
            let _ = child.start_kill();
            let _ = child.wait().await;
            return result.map(|tokens| tokens.access_token);
        }
        Err(last_error.unwrap_or_else(|| anyhow!("the second oidc-provider did not start")))
    }

    /// Kills the provider; its port refuses connections until [`start_again`](Self::start_again).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // The process may already have exited; kill() then fails, which is fine.
            let _ = child.start_kill();
            child
                .wait()
                .await
                .context("waiting for oidc-provider to exit")?;
        }
        Ok(())
    }

    /// Starts the provider again on the same port with the same keys (sessions, grants and
    /// codes are gone). Does nothing when it is running.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let jwks = self.dir.path().join("jwks.json");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.launch(self.port, &jwks, "provider.log").await {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                // The port can stay busy for a moment after a kill: try again.
                Err(e) if Instant::now() < deadline && is_address_in_use(&e) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The URL a browser opens to sign in; the provider answers with redirects that end at
    /// the request's redirect URI with `code`, `state` and `iss`.
    pub fn authorization_url(&self, request: &AuthorizationRequest) -> anyhow::Result<String> {
        let url = reqwest::Url::parse_with_params(&self.authorization_endpoint(), request.params())
            .context("building the authorization URL")?;
        Ok(url.into())
    }

    /// Runs the authorization request the way a browser would (following redirects, keeping
    /// the provider's cookies) and returns the code the provider sends to the redirect URI.
    /// An error answer (`error=access_denied`, ...) is an `Err` naming it.
    pub async fn authorize(
        &self,
        request: &AuthorizationRequest,
    ) -> anyhow::Result<AuthorizationResponse> {
        let redirect_uri =
            reqwest::Url::parse(&request.redirect_uri).context("parsing the redirect URI")?;
        let mut url = reqwest::Url::parse(&self.authorization_url(request)?)
            .context("parsing the authorization URL")?;
        let mut cookies = CookieJar::default();
        for _ in 0..MAX_REDIRECTS {
            if url.origin() != reqwest::Url::parse(&self.issuer)?.origin() {
                bail!("the provider redirected away from itself, to {url}");
            }
            let mut get = self.http.get(url.clone());
            if let Some(header) = cookies.header() {
                get = get.header(reqwest::header::COOKIE, header);
            }
            let response = get.send().await.with_context(|| format!("GET {url}"))?;
            cookies.update(response.headers());
            let status = response.status();
            if !status.is_redirection() {
                let body = response.text().await.unwrap_or_default();
                bail!("GET {url} answered {status} instead of a redirect: {body}");
            }
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .ok_or_else(|| anyhow!("GET {url} answered {status} without a Location"))?;
            let next = url
                .join(location)
                .with_context(|| format!("GET {url}: bad Location {location}"))?;
            if same_endpoint(&next, &redirect_uri) {
                return authorization_response(next);
            }
            url = next;
        }
        bail!("no answer at the redirect URI after {MAX_REDIRECTS} redirects")
    }

    /// Exchanges an authorization code at the token endpoint (`secret: None` for a public
    /// client).
    pub async fn exchange_code(
        &self,
        client_id: &str,
        secret: Option<&str>,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> anyhow::Result<TokenResponse> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", code_verifier),
        ];
        self.token_request(&self.token_endpoint(), client_id, secret, &form)
            .await
    }

    /// Uses a refresh token (issued with the `offline_access` scope and `prompt=consent`).
    pub async fn refresh(
        &self,
        client_id: &str,
        secret: Option<&str>,
        refresh_token: &str,
    ) -> anyhow::Result<TokenResponse> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        self.token_request(&self.token_endpoint(), client_id, secret, &form)
            .await
    }

    /// Signs `account` in to the client and returns its tokens: PKCE, [`authorize`]
    /// (scope `openid profile email`), [`exchange_code`].
    ///
    /// [`authorize`]: Self::authorize
    /// [`exchange_code`]: Self::exchange_code
    pub async fn login(
        &self,
        client_id: &str,
        secret: Option<&str>,
        redirect_uri: &str,
        account: &str,
    ) -> anyhow::Result<TokenResponse> {
        let pkce = Pkce::new();
        let request = AuthorizationRequest::new(client_id, redirect_uri, &pkce)
            .scope("openid profile email")
            .login_hint(account);
        let response = self.authorize(&request).await?;
        if response.state.as_deref() != Some(request.state.as_str()) {
            bail!("the provider returned state {:?}", response.state);
        }
        self.exchange_code(
            client_id,
            secret,
            &response.code,
            redirect_uri,
            &pkce.verifier,
        )
        .await
    }

    /// A POST to a token endpoint: `client_secret_basic` with a secret, the `client_id`
    /// parameter without one. A refusal is an `Err` with the status and the provider's
    /// `error` and `error_description`.
    async fn token_request(
        &self,
        endpoint: &str,
        client_id: &str,
        secret: Option<&str>,
        form: &[(&str, &str)],
    ) -> anyhow::Result<TokenResponse> {
        let mut form = form.to_vec();
        let mut post = self.http.post(endpoint);
        match secret {
            // RFC 6749 2.3.1: both are form-encoded before they are joined.
            Some(secret) => {
                post = post.basic_auth(form_encode(client_id), Some(form_encode(secret)));
            }
            None => form.push(("client_id", client_id)),
        }
        let response = post
            .form(&form)
            .send()
            .await
            .with_context(|| format!("POST {endpoint}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("POST {endpoint}: reading the answer"))?;
        if !status.is_success() {
            bail!("POST {endpoint} answered {status}: {body}");
        }
        serde_json::from_str(&body)
            .with_context(|| format!("POST {endpoint}: unexpected answer {body}"))
    }

    async fn get_json(&self, url: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {url} answered {status}");
        }
        response
            .json()
            .await
            .with_context(|| format!("GET {url}: not JSON"))
    }

    fn write_jwks(&self) -> anyhow::Result<()> {
        write_json(
            &self.dir.path().join("jwks.json"),
            &json!({ "keys": self.keys }),
        )
    }

    /// Starts `provider.mjs` on `port` with this provider's issuer and files and the keys of
    /// `jwks`, and waits for its ready line.
    async fn launch(&self, port: u16, jwks: &Path, log_name: &str) -> anyhow::Result<Child> {
        let ready_path = self.dir.path().join(format!("{log_name}.ready"));
        let ready_file = fs::File::create(&ready_path)
            .with_context(|| format!("creating {}", ready_path.display()))?;
        let log_path = self.dir.path().join(log_name);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;

        let mut command = Command::new(node());
        command
            .arg(package_dir().join("provider.mjs"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--issuer")
            .arg(&self.issuer)
            .arg("--clients")
            .arg(self.dir.path().join("clients.json"))
            .arg("--accounts")
            .arg(self.dir.path().join("accounts.json"))
            .arg("--jwks")
            .arg(jwks)
            .arg("--audience")
            .arg(&self.options.audience)
            .arg("--scope")
            .arg(&self.options.scope)
            .arg("--roles-claim")
            .arg(&self.options.roles_claim)
            .arg("--access-token-ttl")
            .arg(self.options.access_token_ttl.as_secs().to_string());
        if let Some(account) = &self.options.default_account {
            command.arg("--default-account").arg(account);
        }
        if self.options.interactive_login {
            command.arg("--interactive");
        }
        let mut child = command
            .current_dir(package_dir())
            .stdin(Stdio::null())
            .stdout(ready_file)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (is Node.js 20 or later installed?)",
                    node().to_string_lossy()
                )
            })?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(line) = fs::read_to_string(&ready_path).ok().and_then(|out| {
                out.lines()
                    .find(|l| l.contains("\"ready\""))
                    .map(str::to_owned)
            }) {
                let ready: Value = serde_json::from_str(&line)
                    .with_context(|| format!("oidc-provider's ready line: {line}"))?;
                if ready["port"].as_u64() != Some(u64::from(port)) {
                    let _ = child.start_kill();
                    bail!("oidc-provider's ready line names another port: {line}");
                }
                return Ok(child);
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                bail!(
                    "oidc-provider on port {port} exited at start ({status}):\n{}",
                    tail(&log, 20)
                );
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                bail!("oidc-provider on port {port} not ready within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The header and claims of a JWT, decoded but not verified.
pub fn jwt_parts(token: &str) -> anyhow::Result<(Value, Value)> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("not a JWS compact serialization (three parts)");
    };
    let decode = |part: &str, what: &str| -> anyhow::Result<Value> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .with_context(|| format!("the JWT's {what} is not base64url"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("the JWT's {what} is not JSON"))
    };
    Ok((decode(header, "header")?, decode(claims, "claims")?))
}

/// `testkit/oidc`, where `package.json` and `provider.mjs` live.
fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

fn node() -> std::ffi::OsString {
    std::env::var_os("NODE").unwrap_or_else(|| "node".into())
}

/// Runs `npm ci` in `dir` when its `node_modules` lacks oidc-provider. A file lock keeps
/// concurrent test processes from installing at the same time.
fn ensure_installed(dir: &Path) -> anyhow::Result<()> {
    let installed = || dir.join("node_modules/oidc-provider/package.json").exists();
    if installed() {
        return Ok(());
    }
    let _lock = InstallLock::acquire(dir)?;
    if installed() {
        return Ok(());
    }
    let npm = std::env::var_os("NPM").unwrap_or_else(|| "npm".into());
    let output = std::process::Command::new(&npm)
        .arg("ci")
        .arg("--prefix")
        .arg(dir)
        .args(["--no-audit", "--no-fund"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!(
                    "{} not found: the OpenID provider needs Node.js 20+ and npm \
                     (scripts/setup installs its modules with `npm ci --prefix testkit/oidc`)",
                    npm.to_string_lossy()
                )
            } else {
                anyhow!("running {}: {e}", npm.to_string_lossy())
            }
        })?;
    if !output.status.success() {
        bail!(
            "npm ci --prefix {} failed: {}{}",
            dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if !installed() {
        bail!(
            "npm ci --prefix {} did not install oidc-provider",
            dir.display()
        );
    }
    Ok(())
}

/// An exclusive `flock` on a file in the temporary directory, named after the package
/// directory; released when dropped (the file is closed).
struct InstallLock {
    _file: fs::File,
}

impl InstallLock {
    fn acquire(dir: &Path) -> anyhow::Result<InstallLock> {
        use std::hash::{Hash, Hasher};
        use std::os::fd::AsRawFd;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        dir.hash(&mut hasher);
        let path =
            std::env::temp_dir().join(format!("testkit-oidc-npm-{:016x}.lock", hasher.finish()));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the descriptor is open for the call's duration; flock has no other
        // preconditions.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(InstallLock { _file: file })
    }
}

/// A new private signing key (RS256, random `kid`), made by `provider.mjs keygen`.
async fn generate_key() -> anyhow::Result<Value> {
    let output = Command::new(node())
        .arg(package_dir().join("provider.mjs"))
        .arg("keygen")
        .current_dir(package_dir())
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| {
            format!(
                "running {} (is Node.js 20 or later installed?)",
                node().to_string_lossy()
            )
        })?;
    if !output.status.success() {
        bail!(
            "provider.mjs keygen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let key: Value =
        serde_json::from_slice(&output.stdout).context("provider.mjs keygen printed no JWK")?;
    key_id(&key)?;
    Ok(key)
}

fn key_id(key: &Value) -> anyhow::Result<String> {
    key["kid"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("a generated key has no kid"))
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("serialising JSON")?;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    // Plain http on the loopback; reqwest wants TLS settings even so (rustls on aws-lc-rs,
    // trusting nothing).
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .context("setting up the HTTP client")
}

fn is_address_in_use(error: &anyhow::Error) -> bool {
    format!("{error:#}").contains("EADDRINUSE")
}

/// Same scheme, host, port and path: the redirect URI, whatever its query.
fn same_endpoint(url: &reqwest::Url, endpoint: &reqwest::Url) -> bool {
    url.scheme() == endpoint.scheme()
        && url.host_str() == endpoint.host_str()
        && url.port_or_known_default() == endpoint.port_or_known_default()
        && url.path() == endpoint.path()
}

fn authorization_response(url: reqwest::Url) -> anyhow::Result<AuthorizationResponse> {
    let params: BTreeMap<String, String> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if let Some(error) = params.get("error") {
        bail!(
            "the provider answered {error}: {}",
            params
                .get("error_description")
                .map(String::as_str)
                .unwrap_or("")
        );
    }
    let code = params
        .get("code")
        .ok_or_else(|| anyhow!("no code in the redirect {url}"))?;
    Ok(AuthorizationResponse {
        code: code.clone(),
        state: params.get("state").cloned(),
        iss: params.get("iss").cloned(),
        url: url.into(),
    })
}

/// The provider's cookies by name (one host; paths are ignored, which is harmless for
/// following one authorization request).
#[derive(Debug, Default)]
struct CookieJar(BTreeMap<String, String>);

impl CookieJar {
    fn update(&mut self, headers: &reqwest::header::HeaderMap) {
        for value in headers.get_all(reqwest::header::SET_COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            let mut attributes = value.split(';').map(str::trim);
            let Some((name, cookie)) = attributes.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let expired = attributes.any(|attribute| {
                let lower = attribute.to_ascii_lowercase();
                lower == "max-age=0" || (lower.starts_with("expires=") && lower.contains("1970"))
            });
            if expired || cookie.is_empty() {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_owned(), cookie.to_owned());
            }
        }
    }

    fn header(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let mut header = String::new();
        for (name, value) in &self.0 {
            if !header.is_empty() {
                header.push_str("; ");
            }
            let _ = write!(header, "{name}={value}");
        }
        Some(header)
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                encoded.push(char::from(byte));
            }
            b' ' => encoded.push('+'),
            _ => {
                let _ = write!(encoded, "%{byte:02X}");
            }
        }
    }
    encoded
}

/// 32 random bytes, base64url: a PKCE verifier, a state or a nonce.
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_rfc_7636s_example() {
        // RFC 7636, appendix B.
        let pkce = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            pkce.challenge,
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn form_encoding_of_credentials() {
        assert_eq!(form_encode("a b:c/é"), "a+b%3Ac%2F%C3%A9");
        assert_eq!(form_encode("plain-id_1.x"), "plain-id_1.x");
    }

    #[test]
    fn cookie_jar_keeps_and_clears() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.append(
            reqwest::header::SET_COOKIE,
            "_interaction=abc; path=/interaction/x; httponly"
                .parse()
                .unwrap(),
        );
        headers.append(
            reqwest::header::SET_COOKIE,
            "_session=s1; path=/".parse().unwrap(),
        );
        let mut jar = CookieJar::default();
        jar.update(&headers);
        assert_eq!(
            jar.header().as_deref(),
            Some("_interaction=abc; _session=s1")
        );
        let mut clear = reqwest::header::HeaderMap::new();
        clear.append(
            reqwest::header::SET_COOKIE,
            "_interaction=; path=/; expires=Thu, 01 Jan 1970 00:00:00 GMT"
                .parse()
                .unwrap(),
        );
        jar.update(&clear);
        assert_eq!(jar.header().as_deref(), Some("_session=s1"));
    }

    #[test]
    fn jwt_parts_rejects_garbage() {
        assert!(jwt_parts("only.two").is_err());
        assert!(jwt_parts("a.b.c.d").is_err());
        assert!(jwt_parts("!!.e30.x").is_err());
    }
}
