//! The sweep: every `dispatch.sweep_interval_ms` it marks expired orders `expired`, publishes
//! queued orders nobody has published yet (inserted by another part of the platform), and
//! publishes again orders left unconfirmed for `dispatch.resend_interval_ms`.
//!
//! Claiming an order for publication is one `UPDATE ... FOR UPDATE SKIP LOCKED`, so several
//! bridges sweeping the same database never publish the same order twice in one round.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::mqtt::Publisher;
use super::orders::Orders;
use crate::config::DispatchConfig;

/// Orders claimed per query.
const CLAIM_LIMIT: i64 = 1_000;

/// Runs forever.
pub async fn run(config: DispatchConfig, orders: Arc<Orders>, publisher: Publisher) {
    let mut ticker = tokio::time::interval(Duration::from_millis(config.sweep_interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let resend_after =
        (config.resend_interval_ms > 0).then(|| Duration::from_millis(config.resend_interval_ms));
    loop {
        ticker.tick().await;
        match orders.expire_due().await {
            Ok(0) => {}
            Ok(expired) => {
                metrics::counter!("dispatch_orders_expired_total").increment(expired);
                info!(
                    orders = expired,
                    "orders expired before their taxi confirmed them"
                );
            }
            Err(e) => {
                metrics::counter!("dispatch_postgres_errors_total").increment(1);
                warn!(error = %e, "cannot mark expired orders");
                continue;
            }
        }
        loop {
            match orders.claim_due(resend_after, CLAIM_LIMIT).await {
                Ok(claimed) => {
                    publisher.publish_all(&orders, &claimed, "sweep").await;
                    if (claimed.len() as i64) < CLAIM_LIMIT {
                        break;
                    }
                }
                Err(e) => {
                    metrics::counter!("dispatch_postgres_errors_total").increment(1);
                    warn!(error = %e, "cannot read orders due for publication");
                    break;
                }
            }
        }
    }
}
