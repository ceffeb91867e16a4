//! moto_server, an S3 implementation for tests.
//!
//! [`MotoServer::start`] runs `moto_server -H 127.0.0.1 -p <free port>` and waits until it
//! answers HTTP. It keeps its port for its whole life: [`MotoServer::stop`] kills the process
//! (S3 becomes unreachable) and [`MotoServer::start_again`] brings a new one up on the same
//! port. moto keeps everything in memory, so a restarted server is empty. The process is killed
//! when the `MotoServer` is dropped.
//!
//! The program is `moto_server` from `PATH`, or the path in the `MOTO_SERVER` variable.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a starting moto_server may take to answer (it usually needs about a second).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A moto_server process on a fixed loopback port.
#[derive(Debug)]
pub struct MotoServer {
    /// `http://127.0.0.1:<port>`, the same across [`stop`](MotoServer::stop) and
    /// [`start_again`](MotoServer::start_again).
    pub endpoint: String,
    pub port: u16,
    /// moto accepts any credentials; these are the conventional ones.
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    child: Option<Child>,
}

impl MotoServer {
    /// Starts moto_server on a free port and waits until it answers.
    pub async fn start() -> anyhow::Result<MotoServer> {
        let mut server = MotoServer::stopped()?;
        server.start_again().await?;
        Ok(server)
    }

    /// Picks a free port but starts nothing: the endpoint refuses connections until
    /// [`start_again`](MotoServer::start_again).
    pub fn stopped() -> anyhow::Result<MotoServer> {
        let port = crate::free_port().context("finding a free port for moto_server")?;
        Ok(MotoServer {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            access_key_id: "testing".to_owned(),
            secret_access_key: "testing".to_owned(),
            region: "us-east-1".to_owned(),
            child: None,
        })
    }

    /// Whether the process is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server; its port refuses connections until [`start_again`](Self::start_again).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // The process may already have exited; kill() then fails, which is fine.
            let _ = child.start_kill();
            child
                .wait()
                .await
                .context("waiting for moto_server to exit")?;
        }
        Ok(())
    }

    /// Starts a new (empty) server on the same port and waits until it answers. Does nothing
    /// when it is already running.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_owned());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {program} (is moto installed?)"))?;
            match wait_ready(&mut child, self.port, deadline).await {
                Ok(()) => {
                    self.child = Some(child);
                    return Ok(());
                }
                // The port can stay busy for a moment after a kill: try again.
                Err(NotReady::Exited(status)) if Instant::now() < deadline => {
                    tracing::debug!(%status, port = self.port, "moto_server exited at start, retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(NotReady::Exited(status)) => {
                    bail!("{program} on port {} exited at start: {status}", self.port)
                }
                Err(NotReady::TimedOut) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    bail!(
                        "{program} on port {} did not answer within {START_TIMEOUT:?}",
                        self.port
                    )
                }
            }
        }
    }
}

enum NotReady {
    Exited(std::process::ExitStatus),
    TimedOut,
}

/// Waits until the server on `port` answers an HTTP request, or the process exits.
async fn wait_ready(child: &mut Child, port: u16, deadline: Instant) -> Result<(), NotReady> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotReady::Exited(status));
        }
        if Instant::now() >= deadline {
            return Err(NotReady::TimedOut);
        }
        if answers_http(port).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn answers_http(port: u16) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut head = [0u8; 5];
        stream.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(&head == b"HTTP/")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_stops_and_starts_again_on_the_same_port() {
        let mut moto = MotoServer::start().await.unwrap();
        assert!(answers_http(moto.port).await);
        let endpoint = moto.endpoint.clone();
        moto.stop().await.unwrap();
        assert!(!moto.is_running());
        assert!(TcpStream::connect(("127.0.0.1", moto.port)).await.is_err());
        moto.start_again().await.unwrap();
        assert_eq!(moto.endpoint, endpoint);
        assert!(answers_http(moto.port).await);
        let port = moto.port;
        drop(moto);
        // kill_on_drop: the port is released shortly after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "moto_server still answers after drop"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
