//! An embedded S3-compatible server over a local directory, for development and small
//! installations: buckets are directories, objects are files (the `s3s-fs` crate), requests
//! are checked with SigV4 against fixed development credentials.
//!
//! It serves until the [`EmbeddedS3`] is dropped or the runtime ends.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::AbortOnDrop;

/// Access key of the embedded server.
pub const ACCESS_KEY_ID: &str = "taxi-dev";
/// Secret key of the embedded server.
pub const SECRET_ACCESS_KEY: &str = "taxi-dev-secret";

/// A running embedded server; stops when dropped.
#[derive(Debug)]
pub struct EmbeddedS3 {
    /// `http://<ip>:<port>`, with the port actually bound (also when asked for port 0).
    pub endpoint: String,
    pub local_addr: SocketAddr,
    pub access_key_id: String,
    pub secret_access_key: String,
    _server: AbortOnDrop,
}

/// Serves the S3 API over `dir` (created if missing) on `listen`.
pub async fn start_embedded(dir: &Path, listen: SocketAddr) -> anyhow::Result<EmbeddedS3> {
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating the S3 directory {}", dir.display()))?;
    let root = tokio::fs::canonicalize(dir)
        .await
        .with_context(|| format!("resolving the S3 directory {}", dir.display()))?;
    let fs = s3s_fs::FileSystem::new(&root)
        .map_err(|e| anyhow!("serving S3 from {}: {e:?}", root.display()))?;
    let service = {
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY_ID, SECRET_ACCESS_KEY));
        builder.build()
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening for S3 requests on {listen}"))?;
    let local_addr = listener.local_addr()?;
    let mut shown = local_addr;
    if shown.ip().is_unspecified() {
        shown.set_ip(if shown.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    tracing::info!(addr = %local_addr, dir = %root.display(), "embedded S3 server listening");

    let server = tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        // Dropping the set (when the server task is aborted) aborts every connection.
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            match listener.accept().await {
                Ok((socket, _)) => {
                    let connection = http
                        .serve_connection(TokioIo::new(socket), service.clone())
                        .into_owned();
                    connections.spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "embedded S3 connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, usually: wait instead of spinning.
                    tracing::warn!(error = %e, "embedded S3 server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(EmbeddedS3 {
        endpoint: format!("http://{shown}"),
        local_addr,
        access_key_id: ACCESS_KEY_ID.to_owned(),
        secret_access_key: SECRET_ACCESS_KEY.to_owned(),
        _server: AbortOnDrop(server),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_port_zero_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s3 = start_embedded(&dir.path().join("s3"), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert_ne!(s3.local_addr.port(), 0);
        assert_eq!(s3.endpoint, format!("http://{}", s3.local_addr));
        assert!(tokio::net::TcpStream::connect(s3.local_addr).await.is_ok());
        let addr = s3.local_addr;
        drop(s3);
        tokio::task::yield_now().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "still listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
