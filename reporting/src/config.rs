//! Reporting configuration: one TOML file plus `REPORTING_`-prefixed environment overrides.
//!
//! Sections: `[http]` (the API's listener and its TLS), `[postgres]`, `[auth]` (single
//! sign-on and static tokens, roles and their permissions), `[cache]`, `[pages]`, `[ops]`
//! (`/metrics` and `/health`), `[dashboard]` (the web dashboard's sign-in and map),
//! `[dispatch]` (where `POST /v1/orders` sends orders), `[files]` (the file API's limits) and
//! `[lake]` (the lake's object store: analytics' `[lake]` keys). Every key has a default for a local development platform;
//! unknown keys are errors naming the key and the file. `DATABASE_URL` overrides
//! `postgres.url`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use service::ConfigError as E;

use crate::auth::Permission;

/// The whole reporting configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this instance (logs).
    pub id: String,
    /// IANA time zone of the fleet's calendar days (the same as analytics' `time_zone`): a
    /// daily report is closed once its last day has ended there.
    pub time_zone: String,
    pub http: HttpConfig,
    pub postgres: PostgresConfig,
    pub auth: AuthConfig,
    pub cache: CacheConfig,
    pub pages: PagesConfig,
    pub ops: OpsConfig,
    pub dashboard: DashboardConfig,
    pub dispatch: DispatchConfig,
    /// The file API (`/filesystem/`).
    pub files: crate::files::FilesConfig,
    /// The lake's object store (the same keys as analytics' `[lake]`): the file API's files
    /// and the imported NYC trips.
    pub lake: analytics::lake::LakeConfig,
}

/// The API's listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// HTTPS with this certificate chain and key (PEM). Both unset: plain HTTP, allowed
    /// only with `plain = true` on a loopback address.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP (loopback only: tokens must not cross a network in clear).
    pub plain: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// The platform's database (`DATABASE_URL` overrides it).
    pub url: String,
    /// Connections in the pool; a CSV export holds one for its whole length.
    pub pool_size: usize,
    /// A query running longer is cancelled (CSV exports are not limited).
    pub statement_timeout_ms: u64,
}

/// Who may call the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// OpenID Connect bearer tokens; unset: static tokens only.
    pub oidc: Option<OidcConfig>,
    /// Machine clients: `[[auth.tokens]] name = "...", sha256 = "<hex>", role = "..."`.
    pub tokens: Vec<StaticToken>,
    /// Each role's permissions: `viewer = ["fleet", "reports"]`. `"*"` is every permission.
    pub roles: BTreeMap<String, Vec<String>>,
}

/// The single sign-on provider.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL; its `/.well-known/openid-configuration` names the signing keys.
    pub issuer: String,
    /// The `aud` an access token must carry.
    pub audience: String,
    /// The claim holding the caller's roles (an array of strings or a space-separated
    /// string); dots walk into objects (`realm_access.roles`).
    pub roles_claim: String,
    /// The public client of the dashboard's sign-in (authorization code with PKCE).
    pub client_id: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_s: u64,
    /// The keys are fetched again at most this often when a token names an unknown one.
    pub jwks_min_refresh_s: u64,
    /// CA of the issuer's HTTPS certificate, beside the system's.
    pub ca: Option<PathBuf>,
}

/// One machine client.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    pub name: String,
    /// SHA-256 of the bearer token, 64 hex digits.
    pub sha256: String,
    pub role: String,
}

/// The result cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Results over closed periods (days that have ended, windows long closed).
    pub closed_ttl_s: u64,
    /// Results that include the present.
    pub live_ttl_s: u64,
    /// A period is closed once it ended this long ago (late data and recounts settle).
    pub settle_s: u64,
    /// In-process cache size: bytes of answers kept at most.
    pub max_bytes: u64,
    /// A Redis shared by several instances (`redis://host:port/db`); unset: in-process.
    pub redis_url: Option<String>,
}

/// Cursor pagination.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagesConfig {
    pub default_limit: u32,
    pub max_limit: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// `/metrics` and `/health` (plain HTTP, for Prometheus on the same host).
    pub listen: SocketAddr,
}

/// The web dashboard served under `/dashboard/`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    pub enabled: bool,
    /// The redirect URI registered for `auth.oidc.client_id`; unset: the dashboard's own
    /// address as the browser sees it (`<origin>/dashboard/`).
    pub redirect: Option<String>,
    /// Scopes asked for at sign-in (`openid` at least).
    pub scope: String,
    /// Development only: the sign-in page also takes a static token (`[[auth.tokens]]`)
    /// pasted by hand. Off unless asked for (`platform --dev-sign-in`).
    pub dev_sign_in: bool,
    /// A base map under the fleet: an XYZ tile URL with `{z}`, `{x}`, `{y}`
    /// (e.g. `https://tile.openstreetmap.org/{z}/{x}/{y}.png`). Unset: no tiles, nothing
    /// fetched from elsewhere.
    pub tile_url: Option<String>,
    /// How often the live map's positions are read from the database and pushed.
    pub live_interval_ms: u64,
}

/// The dispatch API that `POST /v1/orders` forwards to.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// Its base URL (`https://dispatch.example.com` or `http://127.0.0.1:9885`; plain HTTP
    /// on loopback only). Unset: sending orders is off (503).
    pub url: Option<String>,
    /// A bearer token of the dispatch API (`dispatch.api.tokens`).
    pub token: Option<String>,
    /// CA of the dispatch API's HTTPS certificate, beside the system's.
    pub ca: Option<PathBuf>,
    /// A forwarded request taking longer fails (504).
    pub timeout_ms: u64,
}

/// The roles every deployment starts with.
pub fn default_roles() -> BTreeMap<String, Vec<String>> {
    let role = |permissions: &[&str]| permissions.iter().map(|p| (*p).to_owned()).collect();
    BTreeMap::from([
        ("viewer".to_owned(), role(&["fleet", "reports"])),
        (
            "analyst".to_owned(),
            role(&[
                "fleet",
                "reports",
                "trips",
                "invoices",
                "orders",
                "files.read",
            ]),
        ),
        (
            "data-engineer".to_owned(),
            role(&["fleet", "reports", "trips", "files.read", "files.write"]),
        ),
        (
            "dispatcher".to_owned(),
            role(&["fleet", "reports", "trips", "orders", "orders.send"]),
        ),
        ("admin".to_owned(), role(&["*"])),
    ])
}

impl Default for Config {
    fn default() -> Config {
        Config {
            id: "reporting-1".to_owned(),
            time_zone: "Europe/Berlin".to_owned(),
            http: HttpConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
                tls_cert: Some(PathBuf::from("certs/dev/reporting.pem")),
                tls_key: Some(PathBuf::from("certs/dev/reporting.key")),
                plain: false,
            },
            postgres: PostgresConfig {
                url: String::new(),
                pool_size: 8,
                statement_timeout_ms: 30_000,
            },
            auth: AuthConfig {
                oidc: None,
                tokens: Vec::new(),
                roles: default_roles(),
            },
            cache: CacheConfig {
                enabled: true,
                closed_ttl_s: 86_400,
                live_ttl_s: 2,
                settle_s: 3_600,
                max_bytes: 64 << 20,
                redis_url: None,
            },
            pages: PagesConfig {
                default_limit: 100,
                max_limit: 10_000,
            },
            ops: OpsConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9887)),
            },
            dashboard: DashboardConfig {
                enabled: true,
                redirect: None,
                scope: "openid profile".to_owned(),
                dev_sign_in: false,
                tile_url: None,
                live_interval_ms: 1_000,
            },
            dispatch: DispatchConfig {
                url: None,
                token: None,
                ca: None,
                timeout_ms: 10_000,
            },
            files: crate::files::FilesConfig::default(),
            lake: analytics::lake::LakeConfig::default(),
        }
    }
}

impl Config {
    /// Loads the defaults, `file` and the environment, then checks every rule.
    pub fn load(file: Option<&Path>) -> Result<Config, E> {
        Config::load_with_defaults(Config::default(), file)
    }

    /// Like [`Config::load`] over other defaults (the platform's).
    pub fn load_with_defaults(defaults: Config, file: Option<&Path>) -> Result<Config, E> {
        service::config::load_with_database(defaults, file, "REPORTING_", Config::validate)
    }

    /// Checks the rules serde cannot: one message naming the key.
    pub fn validate(&self) -> Result<(), E> {
        if self.id.trim().is_empty() {
            return Err(E::invalid("id", "must not be empty"));
        }
        if jiff::tz::TimeZone::get(&self.time_zone).is_err() {
            return Err(E::invalid(
                "time_zone",
                format!("{:?} is not a known IANA time zone", self.time_zone),
            ));
        }
        self.validate_http()?;
        if self.postgres.url.trim().is_empty() {
            return Err(E::invalid(
                "postgres.url",
                "must be set (or DATABASE_URL): the platform's database",
            ));
        }
        if !(1..=256).contains(&self.postgres.pool_size) {
            return Err(E::invalid("postgres.pool_size", "must be 1 to 256"));
        }
        self.validate_auth()?;
        if self.cache.closed_ttl_s == 0 || self.cache.live_ttl_s == 0 {
            return Err(E::invalid(
                "cache.live_ttl_s",
                "cache.closed_ttl_s and cache.live_ttl_s must be at least 1",
            ));
        }
        if self.cache.max_bytes < 1 << 20 {
            return Err(E::invalid(
                "cache.max_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if let Some(url) = &self.cache.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(E::invalid(
                    "cache.redis_url",
                    format!("{url:?} is not a redis:// or rediss:// URL"),
                ));
            }
        }
        if self.pages.default_limit == 0 || self.pages.default_limit > self.pages.max_limit {
            return Err(E::invalid(
                "pages.default_limit",
                "must be at least 1 and at most pages.max_limit",
            ));
        }
        self.validate_dashboard()?;
        self.validate_dispatch()?;
        self.files.validate()?;
        self.lake.validate()?;
        Ok(())
    }

    fn validate_dashboard(&self) -> Result<(), E> {
        let dashboard = &self.dashboard;
        if !dashboard.scope.split_whitespace().any(|s| s == "openid") {
            return Err(E::invalid("dashboard.scope", "must include openid"));
        }
        if !(100..=60_000).contains(&dashboard.live_interval_ms) {
            return Err(E::invalid(
                "dashboard.live_interval_ms",
                "must be 100 to 60000",
            ));
        }
        if let Some(redirect) = &dashboard.redirect {
            check_url("dashboard.redirect", redirect)?;
        }
        if let Some(tiles) = &dashboard.tile_url {
            if !(tiles.starts_with("https://") || tiles.starts_with("http://"))
                || !["{z}", "{x}", "{y}"].iter().all(|p| tiles.contains(p))
            {
                return Err(E::invalid(
                    "dashboard.tile_url",
                    "must be an http(s) URL with {z}, {x} and {y}",
                ));
            }
        }
        Ok(())
    }

    fn validate_dispatch(&self) -> Result<(), E> {
        let Some(url) = &self.dispatch.url else {
            return Ok(());
        };
        check_url("dispatch.url", url)?;
        if self.dispatch.token.as_deref().is_none_or(str::is_empty) {
            return Err(E::invalid(
                "dispatch.token",
                "must be set with dispatch.url: a token of the dispatch API",
            ));
        }
        if self.dispatch.timeout_ms == 0 {
            return Err(E::invalid("dispatch.timeout_ms", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), E> {
        match (&self.http.tls_cert, &self.http.tls_key, self.http.plain) {
            (Some(_), Some(_), false) => Ok(()),
            (None, None, true) if self.http.listen.ip().is_loopback() => Ok(()),
            (None, None, true) => Err(E::invalid(
                "http.plain",
                format!(
                    "plain HTTP is allowed on a loopback address only, not {}: set http.tls_cert and http.tls_key",
                    self.http.listen
                ),
            )),
            (_, _, true) => Err(E::invalid(
                "http.plain",
                "plain HTTP and http.tls_cert/http.tls_key exclude each other",
            )),
            _ => Err(E::invalid(
                "http.tls_cert",
                "http.tls_cert and http.tls_key are both required (or http.plain = true on loopback)",
            )),
        }
    }

    fn validate_auth(&self) -> Result<(), E> {
        for (role, permissions) in &self.auth.roles {
            for permission in permissions {
                if permission != "*" && permission.parse::<Permission>().is_err() {
                    return Err(E::invalid(
                        &format!("auth.roles.{role}"),
                        format!(
                            "{permission:?} is not a permission (known: {})",
                            Permission::names()
                        ),
                    ));
                }
            }
        }
        for (n, token) in self.auth.tokens.iter().enumerate() {
            let key = |field: &str| format!("auth.tokens[{n}].{field}");
            if token.name.is_empty() || !token.name.chars().all(|c| c.is_ascii_graphic()) {
                return Err(E::invalid(
                    &key("name"),
                    "must be printable ASCII, not empty",
                ));
            }
            if token.sha256.len() != 64 || !token.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(E::invalid(&key("sha256"), "must be 64 hex digits"));
            }
            if !self.auth.roles.contains_key(&token.role) {
                return Err(E::invalid(
                    &key("role"),
                    format!("{:?} is not a role of auth.roles", token.role),
                ));
            }
        }
        if let Some(oidc) = &self.auth.oidc {
            if !(oidc.issuer.starts_with("https://") || oidc.issuer.starts_with("http://")) {
                return Err(E::invalid("auth.oidc.issuer", "must be an http(s) URL"));
            }
            if oidc.audience.trim().is_empty() {
                return Err(E::invalid("auth.oidc.audience", "must not be empty"));
            }
            if oidc.roles_claim.trim().is_empty() {
                return Err(E::invalid("auth.oidc.roles_claim", "must not be empty"));
            }
        }
        if self.auth.oidc.is_none() && self.auth.tokens.is_empty() {
            return Err(E::invalid(
                "auth",
                "no way in: configure auth.oidc or at least one [[auth.tokens]]",
            ));
        }
        Ok(())
    }

    /// The configured time zone (checked by [`Config::validate`]).
    pub fn tz(&self) -> jiff::tz::TimeZone {
        jiff::tz::TimeZone::get(&self.time_zone).unwrap_or(jiff::tz::TimeZone::UTC)
    }
}

/// An absolute `https://` URL, or `http://` to a loopback host (nothing secret crosses a
/// network in clear).
fn check_url(key: &str, url: &str) -> Result<(), E> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| E::invalid(key, format!("{url:?} is not a URL: {e}")))?;
    let host = parsed.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" if !host.is_empty() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(E::invalid(
            key,
            format!("{url:?}: plain http only to a loopback address; use https"),
        )),
        _ => Err(E::invalid(key, format!("{url:?} is not an http(s) URL"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_file() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/reporting.toml")
    }

    #[test]
    fn the_documented_file_shows_every_default() {
        let loaded = service::load(
            Config::default(),
            Some(&sample_file()),
            "REPORTING_TEST_NONE_",
            &[],
        )
        .expect("config/reporting.toml loads");
        assert_eq!(
            serde_json::to_value(&loaded).expect("serializes"),
            serde_json::to_value(Config::default()).expect("serializes")
        );
    }

    fn valid() -> Config {
        let mut config = Config::default();
        config.postgres.url = "postgres://postgres@127.0.0.1:5432/fleet".to_owned();
        config.auth.tokens = vec![StaticToken {
            name: "export".to_owned(),
            sha256: "ab".repeat(32),
            role: "analyst".to_owned(),
        }];
        config
    }

    /// A change to a valid configuration, and the key its error must name.
    type Case = (Box<dyn Fn(&mut Config)>, &'static str);

    #[test]
    fn each_bad_value_names_its_key() {
        assert!(valid().validate().is_ok());
        let cases: Vec<Case> = vec![
            (Box::new(|c| c.postgres.url.clear()), "postgres.url"),
            (
                Box::new(|c| c.time_zone = "Mars/Olympus".to_owned()),
                "time_zone",
            ),
            (
                Box::new(|c| {
                    c.http.tls_cert = None;
                    c.http.tls_key = None;
                    c.http.plain = true;
                    c.http.listen = SocketAddr::from(([0, 0, 0, 0], 8080));
                }),
                "http.plain",
            ),
            (Box::new(|c| c.http.tls_key = None), "http.tls_cert"),
            (
                Box::new(|c| c.auth.tokens[0].role = "boss".to_owned()),
                "auth.tokens[0].role",
            ),
            (
                Box::new(|c| c.auth.tokens[0].sha256 = "xyz".to_owned()),
                "auth.tokens[0].sha256",
            ),
            (Box::new(|c| c.auth.tokens.clear()), "auth"),
            (
                Box::new(|c| {
                    c.auth
                        .roles
                        .insert("viewer".to_owned(), vec!["everything".to_owned()]);
                }),
                "auth.roles.viewer",
            ),
            (Box::new(|c| c.cache.max_bytes = 1000), "cache.max_bytes"),
            (
                Box::new(|c| c.cache.redis_url = Some("localhost:6379".to_owned())),
                "cache.redis_url",
            ),
            (
                Box::new(|c| c.pages.default_limit = 0),
                "pages.default_limit",
            ),
            (
                Box::new(|c| c.files.multipart_threshold_bytes = 1),
                "files.multipart_threshold_bytes",
            ),
            (
                Box::new(|c| c.lake.files_prefix = "lake".to_owned()),
                "lake.files_prefix",
            ),
            (
                Box::new(|c| c.dispatch.url = Some("http://10.0.0.5:9885".to_owned())),
                "dispatch.url",
            ),
            (
                Box::new(|c| c.dispatch.url = Some("http://127.0.0.1:9885".to_owned())),
                "dispatch.token",
            ),
            (
                Box::new(|c| c.dashboard.tile_url = Some("https://tiles.example/a.png".to_owned())),
                "dashboard.tile_url",
            ),
            (
                Box::new(|c| c.dashboard.scope = "profile".to_owned()),
                "dashboard.scope",
            ),
        ];
        for (change, key) in cases {
            let mut config = valid();
            change(&mut config);
            let error = config.validate().expect_err(key).to_string();
            assert!(error.starts_with(&format!("{key}:")), "{key}: {error}");
        }
        let mut plain = valid();
        plain.http.tls_cert = None;
        plain.http.tls_key = None;
        plain.http.plain = true;
        assert!(
            plain.validate().is_ok(),
            "plain HTTP on loopback is allowed"
        );
    }
}
