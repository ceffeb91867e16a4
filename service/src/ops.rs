//! The operations port: Prometheus `/metrics` and a JSON `/health`.
//!
//! One recorder per process, shared by every component running in it (the platform runs the
//! broker and the bridge in one process).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed; the handle still renders ours.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Produces the `/health` body: a JSON object describing the component.
pub type HealthCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = serde_json::Value> + Send>> + Send + Sync>;

/// Serves `/metrics` and `/health` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, health: HealthCheck) {
    prometheus();
    let app = Router::new()
        .route("/metrics", get(|| async { prometheus().render() }))
        .route(
            "/health",
            get(move || {
                let health = health.clone();
                async move { Json(health().await) }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "operations HTTP server stopped");
    }
}
