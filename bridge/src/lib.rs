//! The bridge: taxi telemetry from the broker into PostgreSQL and a raw S3 archive.
//!
//! Stages, each with its own configuration section:
//! - [`source`]: MQTT connections in a shared-subscription group, manual acks;
//! - [`archive`]: every raw message appended to a durable local spool, rolled into
//!   compressed objects and uploaded to S3-compatible storage (embedded server by default);
//! - [`validate`]: decoding and plausibility checks, or a dead letter with the reason;
//! - [`store`]: batched binary COPY into PostgreSQL, each message exactly once;
//! - [`pipeline`]: batches messages through the stages, acknowledges after commit;
//! - [`retention`]: day partitions ahead, expired ones dropped once archived;
//! - [`replay`]: archived raw data of a time range back into PostgreSQL;
//! - [`dispatch`]: orders to taxis: HTTP API, delivery, resends, expiry, acks applied;
//! - [`tours`]: tour lifecycle from the stored tour events, fares, invoices.

pub mod archive;
pub mod config;
pub mod dispatch;
pub mod pipeline;
pub mod record;
pub mod replay;
pub mod retention;
pub mod source;
pub mod store;
pub mod tours;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use archive::embedded::EmbeddedS3;
use archive::Archive;
pub use config::Config;
use pipeline::Pipeline;
use validate::Validator;

/// A started bridge.
pub struct RunningBridge {
    /// Where `/metrics` and `/health` are served.
    pub http_addr: SocketAddr,
    pub archive: Arc<Archive>,
    /// The embedded S3 server, when the archive uses it.
    pub embedded_s3: Option<EmbeddedS3>,
    /// Where the dispatch HTTP API listens, when enabled.
    pub dispatch_api: Option<SocketAddr>,
}

/// Starts the embedded S3 server if the configuration asks for it, and returns the endpoint
/// and credentials to use.
pub async fn archive_endpoint(
    config: &config::ArchiveConfig,
) -> anyhow::Result<(config::ArchiveConfig, Option<EmbeddedS3>)> {
    if !config.embedded {
        return Ok((config.clone(), None));
    }
    let embedded = archive::embedded::start_embedded(&config.embedded_dir, config.embedded_listen)
        .await
        .with_context(|| {
            format!(
                "archive.embedded_dir ({}) / archive.embedded_listen ({}): cannot start the embedded S3 server",
                config.embedded_dir.display(),
                config.embedded_listen
            )
        })?;
    let mut resolved = config.clone();
    resolved.endpoint = embedded.endpoint.clone();
    resolved.access_key_id = embedded.access_key_id.clone();
    resolved.secret_access_key = embedded.secret_access_key.clone();
    Ok((resolved, Some(embedded)))
}

/// Starts every stage on the current tokio runtime.
pub async fn start(config: Config) -> anyhow::Result<RunningBridge> {
    service::ops::prometheus();
    let (archive_config, embedded_s3) = archive_endpoint(&config.archive).await?;

    let mut store = pipeline::connect(&config.postgres).await;
    store
        .migrate()
        .await
        .context("applying database migrations")?;
    store
        .ensure_partitions(
            source::now_ms(),
            config.retention.days,
            config.retention.days_ahead,
        )
        .await
        .context("creating day partitions")?;

    let archive = Arc::new(
        Archive::open(&archive_config, config.data_dir.join("spool"), &config.id)
            .await
            .with_context(|| {
                format!(
                    "data_dir ({}): cannot open the archive spool",
                    config.data_dir.display()
                )
            })?,
    );

    let capacity = config.mqtt.connections * source::BROKER_INFLIGHT + config.batch.max_messages;
    let (deliveries_tx, deliveries_rx) = mpsc::channel(capacity);
    source::start(&config.mqtt, &config.id, deliveries_tx)?;
    let pipeline = Pipeline {
        batch: config.batch.clone(),
        postgres: config.postgres.clone(),
        parallel_commits: 2,
        archive: archive.clone(),
        validator: Validator::new(config.validation.clone(), config.retention.days),
    };
    tokio::spawn(pipeline.run(deliveries_rx));
    tokio::spawn(retention::run(config.clone(), archive.clone()));
    tours::start(&config).await?;
    let dispatch_api = if config.dispatch.enabled {
        dispatch::start(&config).await?.api_addr
    } else {
        None
    };

    let http = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
    let http_addr = http.local_addr()?;
    let health_archive = archive.clone();
    let health: service::ops::HealthCheck = Arc::new(move || {
        let pending = health_archive.pending_segments();
        Box::pin(async move {
            serde_json::json!({ "status": "ok", "archive_pending_segments": pending })
        })
    });
    tokio::spawn(service::ops::serve(http, health));
    tracing::info!(id = config.id, http = %http_addr, "bridge running");
    Ok(RunningBridge {
        http_addr,
        archive,
        embedded_s3,
        dispatch_api,
    })
}
