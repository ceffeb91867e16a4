//! HTTP clients (`reqwest`) for the services' plain-HTTP endpoints on this machine: the
//! dispatch API and `/metrics`.

use std::sync::Arc;

use anyhow::{Context, Result};

/// A client for plain `http://` on the loopback: HTTP/1.1, TCP_NODELAY, no proxy from the
/// environment, keeping up to `idle` keep-alive connections open per host between requests.
/// (reqwest wants TLS settings even so: rustls on aws-lc-rs, trusting nothing.)
pub fn client(idle: usize) -> Result<reqwest::Client> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(idle)
        .build()
        .context("setting up the HTTP client")
}
