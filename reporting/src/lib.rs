//! The reporting service: what dispatchers, analysts and managers see of the fleet and its
//! numbers, without writing SQL, behind the company's single sign-on.
//!
//! - [`config`]: `config/reporting.toml` and `REPORTING_*` overrides.
//! - [`auth`]: OpenID Connect access tokens and static tokens, roles and permissions.
//! - [`api`]: the `/v1` reports, paged JSON and streamed CSV.
//! - [`cache`]: answers kept in process or in Redis, dropped when a day is recomputed.
//! - [`dashboard`]: the web dashboard (`/dashboard/`): live map, charts, tables, orders.
//! - [`https_client`]: the HTTPS client for calls out (the OpenID provider, dispatch).
//! - [`files`]: the file API (`/filesystem/`): files in the lake's object store, JSON, CSV
//!   and Parquet uploads as tables.
//!
//! It reads the platform's database (the bridge's and the analytics layer's tables) and
//! writes nothing there; it writes to the lake's bucket only under `lake.files_prefix`.

pub mod api;
pub mod auth;
pub mod cache;
pub mod config;
pub mod dashboard;
pub mod files;
pub mod https_client;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

pub use config::Config;

/// CSV exports running at once, each on its own database connection.
const MAX_EXPORTS: usize = 4;

/// A running reporting service.
pub struct RunningReporting {
    /// Where the API answers (HTTPS unless `http.plain`).
    pub api_addr: SocketAddr,
    /// `/metrics` and `/health`.
    pub ops_addr: SocketAddr,
}

/// Starts the API, the cache and its invalidation, and the operations port.
pub async fn start(config: Config) -> anyhow::Result<RunningReporting> {
    service::ops::prometheus();
    let pool = pool(&config)?;
    let auth = auth::Auth::new(&config.auth)?;
    if let Some(oidc) = auth.oidc() {
        oidc.warm_up().await;
    }
    let cache = cache::Cache::new(&config.cache).await?;
    tokio::spawn(cache::invalidate::follow(
        config.postgres.url.clone(),
        cache.clone(),
    ));
    let tls = match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => Some(service::tls::server_config(
            cert,
            key,
            ("http.tls_cert", "http.tls_key"),
        )?),
        _ => None,
    };
    let listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
    let api_addr = listener.local_addr()?;
    let ops = TcpListener::bind(config.ops.listen)
        .await
        .with_context(|| format!("ops.listen: cannot listen on {}", config.ops.listen))?;
    let ops_addr = ops.local_addr()?;

    let shared = Arc::new(config.clone());
    let state = api::AppState {
        tz: config.tz(),
        config: shared.clone(),
        pool: pool.clone(),
        auth: auth.clone(),
        cache,
        exports: api::listing::exports(MAX_EXPORTS),
        live: dashboard::live::Hub::start(
            pool.clone(),
            Duration::from_millis(config.dashboard.live_interval_ms),
        ),
        dispatch: api::orders::Dispatch::new(&config.dispatch)?,
        lake: Arc::new(analytics::lake::Lake::open(&config.lake).await?),
        uploads: Arc::new(tokio::sync::Semaphore::new(config.files.max_uploads)),
    };
    let app = dashboard::router(shared, auth).merge(api::router(state));
    service::tls::serve(
        listener,
        tls,
        app,
        "the API server",
        "reporting_tls_handshake_failures_total",
    )?;
    let health: service::ops::HealthCheck = Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            let database = match pool.get().await {
                Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
                Err(_) => false,
            };
            serde_json::json!({
                "status": if database { "ok" } else { "degraded" },
                "database": database,
            })
        })
    });
    tokio::spawn(service::ops::serve(ops, health));
    let scheme = if config.http.plain { "http" } else { "https" };
    tracing::info!(id = config.id, api = %format!("{scheme}://{api_addr}"), ops = %ops_addr, "reporting running");
    Ok(RunningReporting { api_addr, ops_addr })
}

/// The pool of database connections of the API; each statement is limited to
/// `postgres.statement_timeout_ms`.
fn pool(config: &Config) -> anyhow::Result<deadpool_postgres::Pool> {
    let mut pg = tokio_postgres::Config::from_str(&config.postgres.url)
        .context("postgres.url is not a PostgreSQL URL")?;
    pg.options(format!(
        "-c statement_timeout={} -c default_transaction_read_only=on",
        config.postgres.statement_timeout_ms
    ));
    pg.connect_timeout(Duration::from_secs(5));
    let manager = deadpool_postgres::Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(config.postgres.pool_size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("building the database pool")
}
