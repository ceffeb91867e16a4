//! The mTLS listener: accepts sockets and runs each TLS handshake in its own task.
//!
//! Unlike rumqttd's own listeners, a handshake never blocks the accept loop: every handshake
//! runs in its own task within a timeout, and the number of connections held at once
//! (handshakes included) is bounded. There is deliberately no separate limit on concurrent
//! handshakes: idle sockets would fill it and lock legitimate clients out. A client whose certificate is missing, unknown, expired or revoked is
//! refused here, counted by reason.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{CertificateError, Error as TlsError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::identity::Identity;
use crate::tls::TlsState;
use crate::{session, Shared};

/// Accepts connections forever.
pub async fn serve(listener: TcpListener, tls: TlsState, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(shared.config.mqtt.max_connections));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically out of file descriptors: wait for some to be released.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            handshake_failed(peer, "capacity", "connection limit reached");
            continue;
        };
        let _ = socket.set_nodelay(true);
        let tls = tls.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            metrics::counter!("broker_connections_total").increment(1);
            metrics::gauge!("broker_connections").increment(1.0);
            accept(socket, peer, tls, shared).await;
            metrics::gauge!("broker_connections").decrement(1.0);
        });
    }
}

async fn accept(socket: TcpStream, peer: SocketAddr, tls: TlsState, shared: Arc<Shared>) {
    let acceptor = TlsAcceptor::from(tls.current());
    let timeout = Duration::from_millis(shared.config.mqtt.handshake_timeout_ms);
    // The TLS session lives on the heap, the handshake too while it lasts: in the task's
    // future each would take its full size (over a kilobyte for a rustls connection) in
    // every state that moves it, for as long as the connection is open.
    let handshake = Box::pin(acceptor.accept(socket));
    let stream = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => Box::new(stream),
        Ok(Err(e)) => {
            let (reason, detail) = classify(&e);
            return handshake_failed(peer, reason, &detail);
        }
        Err(_) => return handshake_failed(peer, "timeout", "handshake took too long"),
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first());
    let identity = match Identity::from_certificate(certificate) {
        Ok(identity) => identity,
        Err(e) => return handshake_failed(peer, "identity", &e.to_string()),
    };
    metrics::counter!("broker_handshakes_total").increment(1);
    session::run(stream, identity, peer, shared).await;
}

fn handshake_failed(peer: SocketAddr, reason: &'static str, detail: &str) {
    info!(%peer, reason, detail, "TLS handshake refused");
    metrics::counter!("broker_handshake_failures_total", "reason" => reason).increment(1);
}

/// Names the reason a handshake failed, for logs and metrics.
fn classify(error: &io::Error) -> (&'static str, String) {
    let detail = error.to_string();
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<TlsError>()) else {
        return ("io", detail);
    };
    let reason = match tls {
        TlsError::NoCertificatesPresented => "no_certificate",
        TlsError::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
            _ => "bad_certificate",
        },
        _ => "tls_error",
    };
    (reason, detail)
}
