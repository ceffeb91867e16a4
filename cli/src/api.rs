//! The dispatch API as `taxictl` calls it: `reqwest` over HTTP/1.1, plain `http://` (the
//! API's own loopback listener) or `https://` (a TLS-terminating proxy in front of it).
//! TLS is rustls on aws-lc-rs, trusting the `--ca` PEM file when given, otherwise the
//! system's CA certificates.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::{Method, Url};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// How long connecting, and then the whole exchange, may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// An answer: status code and body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// The API at one base URL.
pub struct Api {
    client: reqwest::Client,
    base: Url,
}

impl Api {
    /// `url` is `http(s)://host[:port]`, optionally with a path prefix (a proxy's mount
    /// point); `ca` is a PEM file of the CA certificates to trust for `https://`.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Api> {
        let base = base_url(url)?;
        let tls = tls_config(ca, base.scheme() == "https")?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .http1_only()
            .no_proxy()
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .build()
            .context("setting up the HTTP client")?;
        Ok(Api { client, base })
    }

    /// Sends one request (`path` already percent-encoded, with its query) with the bearer
    /// `token` and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        json_body: Option<&serde_json::Value>,
    ) -> Result<Answer> {
        let url = format!("{}{path}", self.base.as_str().trim_end_matches('/'));
        let url = Url::parse(&url).with_context(|| format!("{url:?} is not a URL"))?;
        let url_text = url.to_string();
        let mut request = self
            .client
            .request(method, url)
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = json_body {
            request = request.json(body);
        }
        let exchange = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            Ok::<_, reqwest::Error>(Answer {
                status,
                body: response.text().await?,
            })
        };
        exchange
            .await
            .map_err(reqwest::Error::without_url)
            .with_context(|| format!("calling the dispatch API at {url_text}"))
    }
}

/// Checks `--url`: http or https, a host, no query.
fn base_url(url: &str) -> Result<Url> {
    let parsed = Url::parse(url)
        .with_context(|| format!("--url {url:?}: expected http://host:port or https://host"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("--url {url:?}: expected http:// or https://");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        bail!("--url {url:?}: no host");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        bail!("--url {url:?}: give no query or fragment");
    }
    Ok(parsed)
}

/// The TLS settings: rustls defaults on aws-lc-rs, HTTP/1.1 by ALPN, trusting the certificates
/// of `ca`, or else (only needed for https) the system's.
fn tls_config(ca: Option<&Path>, https: bool) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading --ca {}", path.display()))?;
        if certs.is_empty() {
            bail!("--ca {}: no PEM certificate in it", path.display());
        }
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("--ca {}: not a usable CA certificate", path.display()))?;
        }
    } else if https {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            bail!("no CA certificates found on this system to check the API's: pass --ca <pem>");
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for good in [
            "http://127.0.0.1:9885",
            "http://127.0.0.1:9885/",
            "https://dispatch.example",
            "https://proxy.example/dispatch/",
        ] {
            assert!(base_url(good).is_ok(), "{good}");
        }
        for bad in [
            "127.0.0.1:9885",
            "ftp://x",
            "http://",
            "http://x/?a=1",
            "http://x/#y",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = tls_config(Some(&path), true).unwrap_err();
        assert!(
            format!("{error:#}").contains("no PEM certificate"),
            "{error:#}"
        );
        assert!(tls_config(Some(&dir.path().join("missing.pem")), true).is_err());
    }
}
