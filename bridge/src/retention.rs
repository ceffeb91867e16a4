//! Partition upkeep: day partitions created ahead, expired ones dropped once archived.
//!
//! Every `retention.check_interval_ms`: create the partitions for the coming days, publish
//! this bridge's archive watermark (everything received before it is uploaded), and drop
//! day partitions older than the retention that every bridge has archived.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::archive::Archive;
use crate::config::Config;
use crate::pipeline::connect;
use crate::source::now_ms;

/// Runs forever.
pub async fn run(config: Config, archive: Arc<Archive>) {
    let mut ticker =
        tokio::time::interval(Duration::from_millis(config.retention.check_interval_ms));
    let mut store = connect(&config.postgres).await;
    loop {
        ticker.tick().await;
        if store.is_closed() {
            store = connect(&config.postgres).await;
        }
        let now = now_ms();
        let days = config.retention.days;
        if let Err(e) = store
            .ensure_partitions(now, days, config.retention.days_ahead)
            .await
        {
            warn!(error = %e, "cannot create partitions ahead");
            continue;
        }
        let safe_until = archive.oldest_pending_received_ms().unwrap_or(now);
        if let Err(e) = store.set_archive_watermark(&config.id, safe_until).await {
            warn!(error = %e, "cannot record the archive watermark");
            continue;
        }
        match store.drop_expired_partitions(now, days).await {
            Ok(dropped) if !dropped.is_empty() => {
                info!(?dropped, "dropped expired day partitions (archived)")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot drop expired partitions"),
        }
    }
}
