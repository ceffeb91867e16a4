//! The taxi fleet MQTT broker: rumqttd's router behind our own mutual-TLS, identity and
//! authorization front.
//!
//! Code map:
//! - [`config`]: the TOML + environment configuration, validated at start-up.
//! - [`tls`]: the rustls server configuration (client CAs, CRLs), reloaded on change.
//! - [`listener`]: accepts sockets, runs TLS handshakes concurrently with a timeout.
//! - [`identity`]: `CN=<id>`, `OU=<role>` read from the verified client certificate.
//! - [`session`]: one client from CONNECT to the end; authorizes every packet and drives
//!   the router through an in-process link.
//! - [`connection`]: MQTT 3.1.1/5 framing over the TLS stream.
//! - [`acl`]: per-role publish/subscribe patterns.
//! - [`acl_export`]: those rules as Mosquitto's ACL file and `mosquitto.conf`, for running
//!   the platform on another broker.
//! - [`expiry`]: inbox orders past their `expires_ms` are never delivered.
//! - [`durability`]: the router's held publishers, drops and durable lag as metrics.
//! - [`payload`]: taxi payloads as JSON for roles that read them (operators).
//! - [`registry`]: live sessions by id (takeover, revocation), wills waiting for their delay.
//! - [`publisher`]: the broker's own messages (status, wills) through its own router link.
//! - [`http`]: `/metrics` and `/health`.
//! - [`pki`]: certificate authority tooling for development and tests.

pub mod acl;
pub mod acl_export;
pub mod config;
pub mod connection;
pub mod durability;
pub mod expiry;
pub mod http;
pub mod identity;
pub mod listener;
pub mod payload;
pub mod pki;
pub mod publisher;
pub mod registry;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{Notification, Router};
use tokio::net::TcpListener;

pub use config::Config;
use publisher::Publisher;
use registry::Registry;

/// How a client's session attaches to the router.
#[derive(Clone, Debug)]
pub struct LinkOptions {
    pub client_id: String,
    /// Discard a saved session of this client id (MQTT 3.1.1: clean session).
    pub clean_start: bool,
    /// Seconds the session outlives the connection: 0 none, `u32::MAX` no limit.
    pub session_expiry: u32,
    /// The client's Receive Maximum: QoS 1 and 2 messages in flight to it at most.
    pub receive_maximum: u16,
    /// The client's Maximum Packet Size: larger messages are not sent to it.
    pub max_packet_size: Option<usize>,
}

/// Attaches a client to the router.
pub type LinkFactory = Arc<
    dyn Fn(&LinkOptions) -> Result<(LinkTx, LinkRx, Notification), Box<LinkError>> + Send + Sync,
>;

/// What every session shares.
pub struct Shared {
    pub config: Config,
    pub registry: Registry,
    pub links: LinkFactory,
    /// Publishes the status topics and the wills.
    pub publisher: Publisher,
}

/// A started broker.
pub struct RunningBroker {
    /// Where the mTLS MQTT listener is bound.
    pub mqtt_addr: SocketAddr,
    /// Where `/metrics` and `/health` are served.
    pub http_addr: SocketAddr,
    pub shared: Arc<Shared>,
}

/// Starts the router, the mTLS listener and the HTTP port on the current tokio runtime.
pub async fn start(config: Config) -> anyhow::Result<RunningBroker> {
    service::ops::prometheus();
    let router_config = rumqttd::RouterConfig {
        // Room for sessions that are being taken over while their successor attaches.
        max_connections: config.mqtt.max_connections + 1024,
        max_outgoing_packet_count: config.router.max_outgoing_packet_count,
        max_segment_size: config.router.max_segment_size,
        max_segment_count: config.router.max_segment_count,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    // A full log never drops what a durable subscriber has not read: it spills the segment to
    // disk, or, once the spill area is full too, its publishers wait.
    let mut router = Router::new(0, router_config).observer(Arc::new(
        durability::DurabilityMetrics::registered(config.router.spill_max_bytes),
    ));
    if config.router.durability == config::Durability::Disk {
        let dir = &config.router.log_dir;
        let area = rumqttd::SpillArea::open_durable(dir, config.router.spill_max_bytes)
            .with_context(|| format!("router.log_dir: cannot use {}", dir.display()))?;
        let (durable, recovery) = router
            .durable(area)
            .with_context(|| format!("router.log_dir: cannot read {} back", dir.display()))?;
        router = durable;
        durability::recovered(&recovery);
        tracing::info!(
            dir = %dir.display(),
            messages = recovery.messages,
            sessions = recovery.sessions,
            groups = recovery.groups,
            retained = recovery.retained,
            truncated_bytes = recovery.truncated_bytes,
            "durable log: every PUBACK waits for the disk; read back what was there"
        );
        for file in &recovery.discarded {
            tracing::warn!(file, "durable log: file not used");
        }
    } else if config.router.spill_max_bytes > 0 {
        let dir = &config.router.spill_dir;
        let area = rumqttd::SpillArea::open(dir, config.router.spill_max_bytes)
            .with_context(|| format!("router.spill_dir: cannot use {}", dir.display()))?;
        tracing::info!(
            dir = %dir.display(),
            max_bytes = config.router.spill_max_bytes,
            "full logs spill to disk"
        );
        router = router.spill(area);
    }
    // In memory mode nothing the router does blocks, so it runs as a task beside the
    // sessions: a message goes from the publisher's session through the router to the
    // subscriber's without waking another thread. In disk mode it waits for the disk once a
    // round, so it keeps a thread of its own: the sessions go on meanwhile, and what arrives
    // during one sync goes to the disk together in the next.
    let router_tx = match config.router.durability {
        config::Durability::Memory => router.spawn_task(),
        config::Durability::Disk => router.spawn(),
    };
    // Without its router the broker is dead, even if its ports still answer: exit, so that a
    // supervisor restarts it, rather than accept connections that can never attach.
    let watched = router_tx.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            ticker.tick().await;
            if watched.is_disconnected() {
                tracing::error!("the router stopped; the broker exits");
                std::process::exit(70);
            }
        }
    });
    let own_router = router_tx.clone();
    let (own_tx, own_rx, _) = tokio::task::spawn_blocking(move || {
        LinkBuilder::new(publisher::CLIENT_ID, own_router)
            .build()
            .map_err(|e| anyhow::anyhow!("attaching the broker's own link to the router: {e}"))
    })
    .await??;
    let publisher = Publisher::start(own_tx, own_rx);
    let links: LinkFactory = Arc::new(move |options: &LinkOptions| {
        LinkBuilder::new(&options.client_id, router_tx.clone())
            .clean_session(options.clean_start)
            .session_expiry(options.session_expiry)
            .max_inflight(options.receive_maximum)
            .max_packet_size(options.max_packet_size)
            .topic_alias_max(0)
            .build()
            .map_err(Box::new)
    });

    let shared = Arc::new(Shared {
        config: config.clone(),
        registry: Registry::default(),
        links,
        publisher,
    });

    let revocations = shared.clone();
    let tls = tls::watch(config.tls.clone(), move |serials| {
        let stopped = revocations.registry.stop_revoked(serials);
        if stopped > 0 {
            tracing::warn!(stopped, "closed sessions of revoked certificates");
        }
    })?;

    let mqtt = TcpListener::bind(config.mqtt.listen)
        .await
        .with_context(|| format!("mqtt.listen: cannot listen on {}", config.mqtt.listen))?;
    let http = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
    let running = RunningBroker {
        mqtt_addr: mqtt.local_addr()?,
        http_addr: http.local_addr()?,
        shared: shared.clone(),
    };
    tokio::spawn(listener::serve(mqtt, tls, shared.clone()));
    tokio::spawn(http::serve(http, shared));
    tracing::info!(
        mqtt = %running.mqtt_addr,
        http = %running.http_addr,
        "broker listening"
    );
    Ok(running)
}
