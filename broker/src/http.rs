//! The broker's operations port: `/metrics` and `/health` with the live session count.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::Shared;

/// Serves `/metrics` and `/health` until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let health: service::ops::HealthCheck = Arc::new(move || {
        let sessions = shared.registry.len();
        Box::pin(async move { serde_json::json!({ "status": "ok", "sessions": sessions }) })
    });
    service::ops::serve(listener, health).await;
}
