//! `simulator`: simulated taxis over mutual TLS, and the benchmarks.
//!
//! - `simulator fleet`: N simulated taxis ([`taxi`]) against a running broker until Ctrl-C:
//!   positions, answers to inbox messages, tours, connection losses.
//! - `simulator bench-broker`: our broker against Mosquitto, same machine, same certificates:
//!   throughput and latency, handshakes per second, memory per idle connection.
//! - `simulator bench-bridge`: taxis through the broker into the bridge and PostgreSQL:
//!   sustained positions per second committed, publish-to-commit delay, losses, against
//!   PostgreSQL's own COPY rate and a naive one-INSERT-per-message bridge.
//! - `simulator bench-dispatch`: with 1,000 taxis connected, how fast an order reaches its
//!   taxi published directly or through the dispatch API, against Mosquitto; API orders/s.
//!
//! Code map: [`pki`] certificates, [`client`] rumqttc taxis and subscribers, [`raw`] a minimal
//! connection for connection-heavy phases, [`motion`] taxi paths, [`load`] the publishers and
//! the subscriber, [`connections`] handshake and idle phases, [`target`] and [`baseline`] the
//! two brokers as child processes ([`process`]), [`measure`] clocks, histograms, RSS and CPU,
//! [`report`] the table, [`taxi`] one simulated taxi, [`bench`] and [`fleet`] the commands,
//! [`limit`] bounded concurrency, [`ingest`] the bridge benchmark, [`dispatch`] the order
//! delivery benchmark, [`http`] the HTTP clients of the local endpoints.

pub mod baseline;
pub mod bench;
pub mod client;
pub mod connections;
pub mod dispatch;
pub mod fleet;
pub mod http;
pub mod ingest;
pub mod limit;
pub mod load;
pub mod measure;
pub mod motion;
pub mod pki;
pub mod process;
pub mod raw;
pub mod report;
pub mod target;
pub mod taxi;
