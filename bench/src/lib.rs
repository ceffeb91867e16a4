//! `bench`: benchmark commands. Each measures one part of the platform against a baseline
//! measured on the same machine in the same run, prints the ratios and says plainly which
//! targets it missed. They drive the simulated fleet's taxis (`simulator`) but live apart
//! from it.
//!
//! - `bench broker` ([`brokers`]): our broker against Mosquitto, same certificates and rules:
//!   throughput and latency, handshakes per second, memory per idle connection, a direct
//!   publish to one taxi among 1,000, and a 500 MB burst to a persistent subscriber.
//! - `bench bridge` ([`ingest`]): taxis through the broker into the bridge and PostgreSQL,
//!   against PostgreSQL's own COPY rate and a naive bridge.
//! - `bench dispatch` ([`dispatch`]): order delivery with 1,000 taxis connected, directly and
//!   through the dispatch API, against Mosquitto.
//! - `bench analytics` ([`analytics`]): import and daily aggregation against DuckDB on the
//!   same files, the speed layer's window delay under load.
//! - `bench reporting` ([`reporting`]): the reporting API's reports against pgbench on the
//!   same SQL, its CSV export against `psql \copy`, its file API against `aws s3 cp`.
//!
//! Shared parts: [`target`] and [`baseline`] (the two brokers as child processes, through
//! [`process`]), [`load`] (publishers and subscribers), [`connections`] (handshake and idle
//! phases), [`raw`] (a minimal MQTT connection), [`limit`] (bounded concurrency), [`report`]
//! (the broker table), [`child`] (a child process's time and peak memory).

pub mod analytics;
pub mod baseline;
pub mod brokers;
pub mod child;
pub mod connections;
pub mod dispatch;
pub mod ingest;
pub mod limit;
pub mod load;
pub mod process;
pub mod raw;
pub mod report;
pub mod reporting;
pub mod table;
pub mod target;
