//! Follows PostgreSQL's `daily_recomputed` channel, on which the analytics layer names each
//! day it has aggregated again (`YYYY-MM-DD`, sent when its transaction commits), and drops
//! the cached answers covering that day.
//!
//! While the listening connection is down, notifications are lost: every (re)connection
//! therefore starts by clearing the whole cache. Reconnection backs off from 100 ms to 5 s.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{info, warn};

use super::Cache;

/// The channel the analytics layer notifies.
pub const CHANNEL: &str = "daily_recomputed";

/// Runs until the process ends.
pub async fn follow(url: String, cache: Cache) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&url, &cache).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                metrics::counter!("reporting_postgres_errors_total", "stage" => "listen")
                    .increment(1);
                warn!(
                    error = %format!("{e:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "cache invalidation: the database connection failed"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection: LISTEN, clear, then invalidate each notified day until it ends.
async fn listen_once(url: &str, cache: &Cache) -> anyhow::Result<()> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if sender.send(n.payload().to_owned()).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    cache.clear().await;
    info!("cache invalidation: listening on {CHANNEL}");
    while let Some(payload) = notifications.recv().await {
        match payload.parse::<jiff::civil::Date>() {
            Ok(day) => {
                cache.invalidate_day(day).await;
                info!(%day, "cache invalidation: answers covering the day dropped");
            }
            Err(_) => {
                warn!(payload, "cache invalidation: not a day; clearing the cache");
                cache.clear().await;
            }
        }
    }
    drop(client);
    match driver.await {
        Ok(Ok(())) => anyhow::bail!("the listening connection closed"),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(anyhow::anyhow!("the listening task failed: {e}")),
    }
}
