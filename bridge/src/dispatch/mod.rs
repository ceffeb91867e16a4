//! Dispatch: orders and messages to one taxi, tracked in PostgreSQL until the taxi answers.
//!
//! PostgreSQL (`orders`, `order_events`, migration V2) is the truth, not the broker's memory:
//! - [`api`]: the authenticated HTTP API stores an order, then publishes it;
//! - [`auth`]: bearer tokens, stored as SHA-256 in the configuration;
//! - [`mqtt`]: dispatch's own MQTT connection: publishes orders, records inbox messages
//!   published by backoffice apps, resends a taxi's orders when it comes online and all
//!   unconfirmed ones after a reconnection (a broker restart loses its sessions);
//! - [`worker`]: the sweep: expiry, queued orders inserted by others, periodic resends;
//! - [`orders`]: the queries.
//!
//! The taxi's acks move orders forward through a trigger on `acks` (only the order's own
//! taxi can): the pipeline stores each ack exactly once.

pub mod api;
pub mod auth;
pub mod mqtt;
pub mod orders;
pub mod worker;

use std::net::SocketAddr;

use crate::Config;

/// Connections to PostgreSQL shared by the API, the recorder and the sweep.
const POSTGRES_CONNECTIONS: usize = 8;

/// A started dispatch.
pub struct RunningDispatch {
    /// Where the HTTP API listens, when enabled.
    pub api_addr: Option<SocketAddr>,
}

/// Starts the MQTT connection, the sweep and (if enabled) the API. The schema must be
/// migrated already.
pub async fn start(config: &Config) -> anyhow::Result<RunningDispatch> {
    let dispatch = &config.dispatch;
    let orders = orders::Orders::new(&config.postgres.url, POSTGRES_CONNECTIONS);
    let publisher = mqtt::start(&config.mqtt, &config.id, dispatch, orders.clone())?;
    tokio::spawn(worker::run(
        dispatch.clone(),
        orders.clone(),
        publisher.clone(),
    ));
    let api_addr = if dispatch.api.enabled {
        Some(api::start(dispatch, orders, publisher).await?)
    } else {
        None
    };
    Ok(RunningDispatch { api_addr })
}
