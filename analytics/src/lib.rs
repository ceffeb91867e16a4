//! The analytics layer: both views of the lambda architecture over the fleet's data.
//!
//! - [`speed`]: the speed layer. Live 10-second windows (fleet-wide and per H3 zone) into
//!   PostgreSQL (`windows`) and onto MQTT (`analytics/windows`).
//! - [`daily`]: the batch layer. Daily aggregates per calendar day of the configured time
//!   zone, at start (catching up) and every midnight; [`chart`] draws them.
//! - [`import`]: historical NYC TLC trip records (CSV and Parquet layouts) into `trips_nyc`.
//! - [`lake`]: the serving layer's open files. Curated datasets as Parquet in S3-compatible
//!   storage, one atomically published object per dataset and day; [`sql`] queries them.
//! - [`db`]: PostgreSQL connections and this layer's migrations.

#![recursion_limit = "256"]

pub mod chart;
pub mod config;
pub mod daily;
pub mod db;
pub mod import;
pub mod lake;
pub mod speed;
pub mod sql;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

pub use config::Config;

/// A started analytics service.
pub struct RunningAnalytics {
    /// Where `/metrics` and `/health` are served.
    pub http_addr: SocketAddr,
}

/// Starts every part on the current tokio runtime: migrations, the configured imports, the
/// speed layer, the daily aggregation (catching up first), the operations port.
pub async fn start(config: Config) -> anyhow::Result<RunningAnalytics> {
    service::ops::prometheus();
    config.require_database()?;
    db::migrate(&config.postgres).await?;
    let config = Arc::new(config);
    import::start(config.clone()).await?;
    speed::start(config.clone()).await?;
    daily::start(config.clone()).await?;

    let http = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
    let http_addr = http.local_addr()?;
    let health: service::ops::HealthCheck =
        Arc::new(move || Box::pin(async move { serde_json::json!({ "status": "ok" }) }));
    tokio::spawn(service::ops::serve(http, health));
    tracing::info!(id = config.id, http = %http_addr, "analytics running");
    Ok(RunningAnalytics { http_addr })
}
