//! Certificates for the load generator: a throw-away PKI for a benchmark (one CA, a server
//! certificate for 127.0.0.1/localhost, an empty CRL, taxi and operator client identities),
//! the development PKI for the fleet, and the rustls client configurations built from them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use broker::pki::{Ca, DevPki, Validity};
use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The id of taxi number `n` (1-based).
pub fn taxi_id(n: usize) -> String {
    format!("taxi-{n}")
}

/// The operator identity that subscribes to every taxi's positions.
pub const OPERATOR_ID: &str = "operator";

/// A client: its id (the certificate's CN) and a TLS configuration presenting its certificate.
#[derive(Clone)]
pub struct Client {
    pub id: String,
    pub tls: Arc<ClientConfig>,
}

impl Client {
    /// A client from PEM text: the CA to trust, and its certificate and key.
    pub fn from_pem(id: &str, ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Client> {
        let roots = Arc::new(roots(ca_pem, Path::new("the CA certificate"))?);
        let tls = client_config(&roots, cert_pem, key_pem)
            .with_context(|| format!("TLS configuration of {id}"))?;
        Ok(Client {
            id: id.to_owned(),
            tls,
        })
    }
}

/// A temporary PKI for one benchmark run; the directory is removed on drop.
pub struct BenchPki {
    dir: tempfile::TempDir,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub crl: PathBuf,
    /// `taxi-1`..`taxi-<n>`, role taxi.
    pub taxis: Vec<Client>,
    /// `operator`, role operator.
    pub operator: Client,
    /// The CA's certificate and key, to issue more identities later.
    ca_pem: (String, String),
}

impl BenchPki {
    /// Creates the CA, the server certificate, an empty CRL and `taxis` taxi identities.
    pub fn create(taxis: usize) -> Result<BenchPki> {
        let dir = tempfile::Builder::new()
            .prefix("broker-bench-")
            .tempdir()
            .context("creating a temporary directory")?;
        let ca = Ca::generate("Broker benchmark CA")?;
        let server = ca.issue_server(&["localhost", "127.0.0.1"])?;
        let path = |name: &str| dir.path().join(name);
        let (ca_cert, server_cert, server_key, crl) = (
            path("ca.pem"),
            path("server.pem"),
            path("server.key"),
            path("crl.pem"),
        );
        write(&ca_cert, ca.cert_pem())?;
        write(&server_cert, &server.cert_pem)?;
        write(&server_key, &server.key_pem)?;
        write(&crl, &ca.crl_pem(&[], 1)?)?;

        let roots = Arc::new(roots(ca.cert_pem().as_bytes(), &ca_cert)?);
        let issue = |id: &str, role: &str| -> Result<Client> {
            let issued = ca.issue_client(id, role, Validity::days(1))?;
            let tls = client_config(
                &roots,
                issued.cert_pem.as_bytes(),
                issued.key_pem.as_bytes(),
            )
            .with_context(|| format!("TLS configuration of {id}"))?;
            Ok(Client {
                id: id.to_owned(),
                tls,
            })
        };
        let operator = issue(OPERATOR_ID, "operator")?;
        // Key generation and signing dominate; spread them over the cores.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_worker = taxis.div_ceil(workers.max(1)).max(1);
        let numbers: Vec<usize> = (1..=taxis).collect();
        let chunks: Vec<Result<Vec<Client>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = numbers
                .chunks(per_worker)
                .map(|chunk| {
                    let issue = &issue;
                    scope.spawn(move || chunk.iter().map(|&n| issue(&taxi_id(n), "taxi")).collect())
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("certificate worker panicked")))
                })
                .collect()
        });
        let mut clients = Vec::with_capacity(taxis);
        for chunk in chunks {
            clients.extend(chunk?);
        }
        Ok(BenchPki {
            dir,
            ca_cert,
            server_cert,
            server_key,
            crl,
            taxis: clients,
            operator,
            ca_pem: (ca.cert_pem().to_owned(), ca.key_pem().to_owned()),
        })
    }

    /// Issues one more client identity (`CN=<id>`, `OU=<role>`), for rumqttc.
    pub fn issue(&self, id: &str, role: &str) -> Result<Client> {
        let ca = Ca::from_pem(&self.ca_pem.0, &self.ca_pem.1)?;
        let issued = ca.issue_client(id, role, Validity::days(1))?;
        let roots = Arc::new(roots(ca.cert_pem().as_bytes(), &self.ca_cert)?);
        let tls = client_config(
            &roots,
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
        .with_context(|| format!("TLS configuration of {id}"))?;
        Ok(Client {
            id: id.to_owned(),
            tls,
        })
    }

    /// Issues one more client identity and writes it to `<id>.pem` and `<id>.key` in the
    /// directory, for programs configured with file paths; returns the two paths.
    pub fn issue_files(&self, id: &str, role: &str) -> Result<(PathBuf, PathBuf)> {
        let ca = Ca::from_pem(&self.ca_pem.0, &self.ca_pem.1)?;
        let issued = ca.issue_client(id, role, Validity::days(1))?;
        let cert = self.dir.path().join(format!("{id}.pem"));
        let key = self.dir.path().join(format!("{id}.key"));
        write(&cert, &issued.cert_pem)?;
        write(&key, &issued.key_pem)?;
        Ok((cert, key))
    }

    /// The temporary directory holding the certificates and the brokers' files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the directory (certificates, broker configurations and logs) after the run.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }
}

/// The development PKI directory used by the fleet: issues missing taxi certificates and
/// loads the clients.
pub fn dev_taxis(dir: &Path, count: usize) -> Result<Vec<Client>> {
    let pki = DevPki::open_or_create(dir)?;
    let ca_pem = read(&dir.join("ca.pem"))?;
    let roots = Arc::new(roots(&ca_pem, &dir.join("ca.pem"))?);
    let mut clients = Vec::with_capacity(count);
    for n in 1..=count {
        let id = taxi_id(n);
        let (cert, key) = (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
        if !cert.exists() || !key.exists() {
            pki.issue_client(&id, "taxi", 365)?;
        }
        let tls = client_config(&roots, &read(&cert)?, &read(&key)?)
            .with_context(|| format!("TLS configuration of {id} from {}", dir.display()))?;
        clients.push(Client { id, tls });
    }
    Ok(clients)
}

fn roots(ca_pem: &[u8], path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{} is not a usable CA certificate", path.display()))?;
    }
    Ok(roots)
}

/// A client configuration presenting `cert_pem`/`key_pem` and trusting `roots`, with the
/// rustls defaults (TLS 1.3 and 1.2) and without session resumption, so every connection
/// makes a full handshake.
pub fn client_config(
    roots: &Arc<RootCertStore>,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ClientConfig>> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("reading the client certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("reading the client key")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain, key)
        .context("client certificate and key")?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_pki_has_every_file_and_identity() -> Result<()> {
        let pki = BenchPki::create(3)?;
        for path in [&pki.ca_cert, &pki.server_cert, &pki.server_key, &pki.crl] {
            assert!(path.exists(), "{}", path.display());
        }
        let ids: Vec<&str> = pki.taxis.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["taxi-1", "taxi-2", "taxi-3"]);
        assert_eq!(pki.operator.id, "operator");
        Ok(())
    }

    #[test]
    fn dev_taxis_issues_missing_certificates() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let clients = dev_taxis(dir.path(), 2)?;
        assert_eq!(clients.len(), 2);
        assert!(dir.path().join("taxi-2.pem").exists());
        // Existing certificates are kept.
        let before = std::fs::read(dir.path().join("taxi-1.pem"))?;
        dev_taxis(dir.path(), 2)?;
        assert_eq!(before, std::fs::read(dir.path().join("taxi-1.pem"))?);
        Ok(())
    }
}
