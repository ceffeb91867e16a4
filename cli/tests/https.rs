//! `taxictl` against a stand-in for the dispatch API: plain HTTP, and HTTPS as a
//! TLS-terminating proxy would serve it, trusted through `--ca` / `TAXICTL_CA`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ORDER: &str = r#"{"order_id":"o/1","taxi_id":"taxi-1","kind":"order","sender":"office","state":"accepted","text":"Hauptbahnhof","created_ms":0,"expires_ms":null,"history":[]}"#;

/// A CA, and a certificate for `localhost` it issued: (CA PEM, server chain, server key).
fn pki() -> Result<(String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&key, &issuer)?;
    let chain = vec![cert.der().clone()];
    Ok((
        ca_pem,
        chain,
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?,
    ))
}

fn acceptor(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves one request with `status` and `body`; the task gives back the request as read.
async fn serve_once(
    tls: Option<TlsAcceptor>,
    status: &'static str,
    body: &'static str,
) -> Result<(SocketAddr, JoinHandle<Result<String>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        match tls {
            Some(tls) => exchange(tls.accept(stream).await?, status, body).await,
            None => exchange(stream, status, body).await,
        }
    });
    Ok((addr, task))
}

async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    status: &str,
    body: &str,
) -> Result<String> {
    let mut request = Vec::new();
    let mut buffer = [0; 4096];
    let complete = |request: &[u8]| {
        let text = String::from_utf8_lossy(request);
        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse::<usize>().ok())
            .unwrap_or(0);
        rest.len() >= length
    };
    while !complete(&request) {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Err("the request ended early".into());
        }
        request.extend_from_slice(&buffer[..n]);
    }
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(String::from_utf8_lossy(&request).into_owned())
}

async fn taxictl(args: &[&str], ca: Option<&Path>) -> Result<Output> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_taxictl"));
    command
        .args(args)
        .env_remove("TAXICTL_URL")
        .env_remove("TAXICTL_CA")
        .env("TAXICTL_TOKEN", "secret")
        .kill_on_drop(true);
    if let Some(ca) = ca {
        command.env("TAXICTL_CA", ca);
    }
    Ok(command.output().await?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn over_https_the_proxys_certificate_is_checked_against_the_ca() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca_pem, chain, key) = pki()?;
    let ca = dir.path().join("proxy-ca.pem");
    std::fs::write(&ca, ca_pem)?;
    let (addr, server) = serve_once(Some(acceptor(chain, key)?), "200 OK", ORDER).await?;
    let url = format!("https://localhost:{}/dispatch", addr.port());
    let output = taxictl(
        &[
            "--url",
            &url,
            "--ca",
            &ca.display().to_string(),
            "order",
            "show",
            "o/1",
        ],
        None,
    )
    .await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let request = server.await??;
    assert!(
        request.starts_with("GET /dispatch/v1/orders/o%2F1 HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("authorization: Bearer secret\r\n"),
        "{request}"
    );
    assert!(
        text(&output.stdout).starts_with("order o/1 for taxi-1 (order, from office): accepted\n"),
        "{}",
        text(&output.stdout)
    );
    Ok(())
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (other_ca, _, _) = pki()?;
    let ca = dir.path().join("other-ca.pem");
    std::fs::write(&ca, other_ca)?;
    let (_, chain, key) = pki()?;
    let (addr, server) = serve_once(Some(acceptor(chain, key)?), "200 OK", ORDER).await?;
    let url = format!("https://localhost:{}", addr.port());
    // The CA from the environment this time.
    let output = taxictl(&["--url", &url, "order", "show", "o/1"], Some(&ca)).await?;
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(server.await?.is_err(), "the handshake should have failed");
    Ok(())
}

#[tokio::test]
async fn over_plain_http_an_order_is_posted_as_json() -> Result<()> {
    let (addr, server) = serve_once(
        None,
        "201 Created",
        r#"{"order_id":"cli-1","taxi_id":"taxi-1","state":"queued"}"#,
    )
    .await?;
    let url = format!("http://{addr}");
    let output = taxictl(
        &[
            "--url", &url, "order", "send", "--taxi", "taxi-1", "--text", "Gate 3", "--id", "cli-1",
        ],
        None,
    )
    .await?;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "order cli-1 for taxi-1: queued\n");
    let request = server.await??;
    assert!(
        request.starts_with("POST /v1/orders HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("content-type: application/json\r\n"),
        "{request}"
    );
    let body: serde_json::Value = serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1)?;
    assert_eq!(
        body,
        serde_json::json!({"taxi_id": "taxi-1", "kind": "order", "text": "Gate 3", "order_id": "cli-1"})
    );
    Ok(())
}

#[tokio::test]
async fn refusals_name_the_status_and_the_apis_error() -> Result<()> {
    let (addr, _server) =
        serve_once(None, "401 Unauthorized", r#"{"error":"invalid token"}"#).await?;
    let output = taxictl(
        &[
            "--url",
            &format!("http://{addr}"),
            "order",
            "list",
            "--taxi",
            "taxi-1",
        ],
        None,
    )
    .await?;
    assert!(!output.status.success());
    assert_eq!(
        text(&output.stderr),
        "taxictl: the API answered 401: invalid token\n"
    );
    Ok(())
}
