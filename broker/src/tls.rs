//! TLS termination settings: the broker's certificate, the client CAs and the CRLs.
//!
//! Builds the rustls server configuration that requires a client certificate signed by one of
//! the configured CAs and not listed in a CRL. The files are watched: a changed CRL (or CA, or
//! server certificate) takes effect for new handshakes without a restart, and the serials it
//! revokes are reported so that live sessions of those certificates can be closed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tracing::{error, info};
use x509_parser::prelude::FromDer;

use crate::config::TlsConfig;

/// A TLS setting that could not be loaded, naming the key and the file.
#[derive(Debug, thiserror::Error)]
#[error("tls.{key} ({path}): {reason}")]
pub struct TlsError {
    key: &'static str,
    path: PathBuf,
    reason: String,
}

fn tls_error(key: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError {
        key,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The current server configuration, replaced when the files change.
#[derive(Clone)]
pub struct TlsState {
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl TlsState {
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, config: Arc<ServerConfig>) {
        match self.current.write() {
            Ok(mut guard) => *guard = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }
}

/// The loaded TLS material.
pub struct Loaded {
    pub server_config: Arc<ServerConfig>,
    /// Serial numbers revoked by the CRLs.
    pub revoked_serials: Vec<Vec<u8>>,
}

/// Reads every file and builds the server configuration.
pub fn load(config: &TlsConfig) -> Result<Loaded, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    let mut roots = RootCertStore::empty();
    for path in &config.client_ca {
        let certs = read_certs("client_ca", path)?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| tls_error("client_ca", path, e))?;
        }
    }

    let mut crls = Vec::new();
    let mut revoked_serials = Vec::new();
    for path in &config.crl {
        let bytes = std::fs::read(path).map_err(|e| tls_error("crl", path, e))?;
        let file_crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_error("crl", path, format!("not a PEM CRL: {e}")))?;
        if file_crls.is_empty() {
            return Err(tls_error("crl", path, "no CRL found in the file"));
        }
        for crl in file_crls {
            let (_, parsed) =
                x509_parser::revocation_list::CertificateRevocationList::from_der(crl.as_ref())
                    .map_err(|e| tls_error("crl", path, e))?;
            revoked_serials.extend(
                parsed
                    .iter_revoked_certificates()
                    .map(|r| r.raw_serial().to_vec()),
            );
            crls.push(crl);
        }
    }

    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| tls_error("client_ca", &config.client_ca[0], e))?;

    let chain = read_certs("server_cert", &config.server_cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.server_key)
        .map_err(|e| tls_error("server_key", &config.server_key, e))?;

    let server_config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("server_cert", &config.server_cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_error("server_key", &config.server_key, e))?;

    Ok(Loaded {
        server_config: Arc::new(server_config),
        revoked_serials,
    })
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| tls_error(key, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(key, path, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(key, path, "no certificate found in the file"));
    }
    Ok(certs)
}

/// Loads the configuration once, then starts a task that reloads it when a file changes and
/// calls `on_revoked` with the serials revoked after each successful reload.
pub fn watch(
    config: TlsConfig,
    on_revoked: impl Fn(&[Vec<u8>]) + Send + 'static,
) -> Result<TlsState, TlsError> {
    let loaded = load(&config)?;
    let state = TlsState {
        current: Arc::new(RwLock::new(loaded.server_config)),
    };
    on_revoked(&loaded.revoked_serials);
    let task_state = state.clone();
    tokio::spawn(async move {
        let mut seen = modification_times(&config);
        let mut ticker = tokio::time::interval(Duration::from_millis(config.reload_interval_ms));
        loop {
            ticker.tick().await;
            let now = modification_times(&config);
            if now == seen {
                continue;
            }
            seen = now;
            match load(&config) {
                Ok(loaded) => {
                    info!(
                        revoked = loaded.revoked_serials.len(),
                        "reloaded TLS certificates and CRLs"
                    );
                    metrics::counter!("broker_tls_reloads_total", "result" => "ok").increment(1);
                    task_state.replace(loaded.server_config);
                    on_revoked(&loaded.revoked_serials);
                }
                Err(e) => {
                    metrics::counter!("broker_tls_reloads_total", "result" => "error").increment(1);
                    error!(error = %e, "TLS files changed but cannot be loaded; keeping the previous ones");
                }
            }
        }
    });
    Ok(state)
}

fn modification_times(config: &TlsConfig) -> Vec<Option<SystemTime>> {
    [&config.server_cert, &config.server_key]
        .into_iter()
        .chain(&config.client_ca)
        .chain(&config.crl)
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}
