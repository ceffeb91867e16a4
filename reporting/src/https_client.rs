//! The HTTPS client reporting calls out with (the OpenID provider, the dispatch API): the
//! system's trusted roots plus an optional CA file, whose configuration key names it in
//! errors.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};

/// A client trusting the system's roots and the certificates in `ca` (configured as
/// `ca_key`), with `timeout` per request and the given redirect policy.
pub fn https_client(
    ca: Option<&Path>,
    ca_key: &str,
    timeout: Duration,
    redirect: reqwest::redirect::Policy,
) -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("{ca_key} {}", ca.display()))?;
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: rustls_pki_types::CertificateDer<'static> =
                cert.with_context(|| format!("{ca_key} {}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| anyhow!("{ca_key} {}: {e}", ca.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .redirect(redirect)
        .build()
        .context("building an HTTPS client")
}
