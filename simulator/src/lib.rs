//! `simulator`: simulated taxis over mutual TLS.
//!
//! - `simulator fleet`: N simulated taxis ([`taxi`]) against a running broker until Ctrl-C:
//!   positions, answers to inbox messages, tours, connection losses. The platform runs the
//!   same fleet ([`fleet`]); the benchmarks (the `bench` crate) drive its clients.
//!
//! Code map: [`pki`] certificates, [`client`] rumqttc taxis and subscribers, [`motion`] taxi
//! paths, [`measure`] clocks, histograms, RSS and CPU, [`taxi`] one simulated taxi, [`fleet`]
//! the command, [`http`] the HTTP clients of the local endpoints.

pub mod client;
pub mod fleet;
pub mod http;
pub mod measure;
pub mod motion;
pub mod pki;
pub mod taxi;
