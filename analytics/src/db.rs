//! PostgreSQL for the analytics layer: connections retried with back-off, and its own
//! migrations (`analytics/migrations/`, history in `analytics_schema_history`).
//!
//! The analytics layer reads the bridge's tables (`positions`, `tours`, `invoices`,
//! `orders`, ...) and keeps its own (`windows`, `trips_nyc`, `daily_fleet`, ...) in the same
//! database. It waits for the bridge's schema rather than creating it.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::{Client, NoTls};
use tracing::warn;

use crate::config::PostgresConfig;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Advisory lock key held while migrating ("taxi" "ana").
const MIGRATION_LOCK: i64 = 0x7461_7869_0061_6e61;

/// One connection; its driver runs on the current runtime until the connection ends.
pub async fn connect_once(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Connects, retrying with back-off until PostgreSQL answers.
pub async fn connect(config: &PostgresConfig) -> Client {
    let mut backoff = Duration::from_millis(config.min_backoff_ms);
    loop {
        match connect_once(&config.url).await {
            Ok(client) => return client,
            Err(e) => {
                warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "cannot connect to PostgreSQL");
                metrics::counter!("analytics_postgres_errors_total").increment(1);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(config.max_backoff_ms));
            }
        }
    }
}

/// Waits (with back-off) until the bridge's schema is there, then applies the analytics
/// migrations not applied yet.
pub async fn migrate(config: &PostgresConfig) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(config.min_backoff_ms);
    let mut client = loop {
        let client = connect(config).await;
        let ready: Option<String> = client
            .query_one("SELECT to_regclass('public.order_events')::text", &[])
            .await
            .context("looking for the bridge's tables")?
            .get(0);
        if ready.is_some() {
            break client;
        }
        warn!(
            retry_in_ms = backoff.as_millis() as u64,
            "the bridge's tables are not there yet (start the bridge on this database first)"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(config.max_backoff_ms));
    };
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_migration_table_name("analytics_schema_history")
        .run_async(&mut client)
        .await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result.context("applying the analytics migrations")?;
    unlocked?;
    Ok(())
}
