//! HTTPS for a service's HTTP API (reporting, dispatch): a listener that hands `axum::serve`
//! connections whose TLS handshake is done, so that TLS runs all the way to the service (no
//! proxy in front is needed).
//!
//! Handshakes run in their own tasks (a slow or silent client holds up nobody) and give up
//! after [`HANDSHAKE_TIMEOUT`]; failed ones are counted in the metric the service names and
//! logged at debug level.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client has this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handshaken but not yet taken by the server.
const READY_QUEUE: usize = 128;

/// The server's TLS settings from a PEM chain and key; HTTP/1.1 announced by ALPN. `keys`
/// names the two configuration keys, for errors (e.g. `http.tls_cert`, `http.tls_key`).
pub fn server_config(
    cert: &Path,
    key: &Path,
    (cert_key, key_key): (&str, &str),
) -> anyhow::Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("{cert_key} {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{cert_key} {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{cert_key} {}: no certificate in the file",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{key_key} {}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .with_context(|| format!("{cert_key} and {key_key} do not make a certificate and its key"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS connections, handshake done, for `axum::serve`.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Accepts on `listener` and handshakes with `config`, in the background; failed
    /// handshakes are counted in `failures` (a counter's name).
    pub fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        failures: &'static str,
    ) -> io::Result<TlsListener> {
        let local_addr = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, then go on.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let ready = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = ready.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            metrics::counter!(failures).increment(1);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!(failures).increment(1);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
                if sender.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { local_addr, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task ended: nothing will come again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// Serves `app` on `listener` until the process ends, over TLS when `tls` is given; `what`
/// names the server in logs, `failures` counts failed handshakes.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: axum::Router,
    what: &'static str,
    failures: &'static str,
) -> io::Result<()> {
    match tls {
        Some(tls) => {
            let listener = TlsListener::new(listener, tls, failures)?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "{what} stopped");
                }
            });
        }
        None => {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "{what} stopped");
                }
            });
        }
    }
    Ok(())
}
