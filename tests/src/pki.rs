//! A throw-away PKI in a temporary directory: the broker's CA and server certificate, client
//! certificates (valid, expired, or from an unrelated CA) and a CRL that can be rewritten
//! while a broker watches it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use broker::pki::{Ca, Issued, Validity};
use tempfile::TempDir;

/// A client certificate and its key, in memory and on disk.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// The certificate's CN: the client id the broker expects.
    pub id: String,
    /// The certificate's OU.
    pub role: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
    /// The serial number, to revoke it.
    pub serial: Vec<u8>,
}

/// The certificates of one test.
pub struct TestPki {
    dir: TempDir,
    ca: Ca,
    other_ca: Ca,
    ca_path: PathBuf,
    server_cert_path: PathBuf,
    server_key_path: PathBuf,
    crl_path: PathBuf,
    revoked: Mutex<Vec<Vec<u8>>>,
    crl_number: AtomicU64,
    files: AtomicU64,
}

impl TestPki {
    /// A new CA with a server certificate for `127.0.0.1` and `localhost`, an empty CRL, and
    /// a second, unrelated CA.
    pub fn new() -> Result<TestPki> {
        let dir = tempfile::Builder::new()
            .prefix("broker-pki-")
            .tempdir()
            .context("creating the PKI directory")?;
        let ca = Ca::generate("Test fleet CA")?;
        let other_ca = Ca::generate("Unrelated CA")?;
        let server = ca.issue_server(&["127.0.0.1", "localhost"])?;
        let ca_path = dir.path().join("ca.pem");
        let server_cert_path = dir.path().join("server.pem");
        let server_key_path = dir.path().join("server.key");
        let crl_path = dir.path().join("crl.pem");
        write(&ca_path, ca.cert_pem())?;
        write(&server_cert_path, &server.cert_pem)?;
        write(&server_key_path, &server.key_pem)?;
        let pki = TestPki {
            dir,
            ca,
            other_ca,
            ca_path,
            server_cert_path,
            server_key_path,
            crl_path,
            revoked: Mutex::new(Vec::new()),
            crl_number: AtomicU64::new(1),
            files: AtomicU64::new(0),
        };
        pki.write_crl(&[])?;
        Ok(pki)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA that signs the server and client certificates (PEM file).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    pub fn server_cert_path(&self) -> &Path {
        &self.server_cert_path
    }

    pub fn server_key_path(&self) -> &Path {
        &self.server_key_path
    }

    pub fn crl_path(&self) -> &Path {
        &self.crl_path
    }

    /// A client certificate `CN=<id>, OU=<role>` valid for a day.
    pub fn client(&self, id: &str, role: &str) -> Result<ClientCert> {
        let issued = self.ca.issue_client(id, role, Validity::days(1))?;
        self.store(id, role, issued)
    }

    /// A client certificate of the right CA that expired yesterday.
    pub fn expired_client(&self, id: &str, role: &str) -> Result<ClientCert> {
        let issued = self.ca.issue_client(id, role, Validity::expired())?;
        self.store(id, role, issued)
    }

    /// A client certificate signed by a CA the broker does not trust.
    pub fn foreign_client(&self, id: &str, role: &str) -> Result<ClientCert> {
        let issued = self.other_ca.issue_client(id, role, Validity::days(1))?;
        self.store(id, role, issued)
    }

    /// Adds serial numbers to the CRL and replaces the CRL file (written to a temporary file
    /// first, then renamed, so that a watching broker never reads half a file).
    pub fn revoke<S: AsRef<[u8]>>(&self, serials: &[S]) -> Result<()> {
        let all = {
            let mut revoked = self
                .revoked
                .lock()
                .map_err(|_| anyhow::anyhow!("revocation list lock poisoned"))?;
            for serial in serials {
                let serial = serial.as_ref().to_vec();
                if !revoked.contains(&serial) {
                    revoked.push(serial);
                }
            }
            revoked.clone()
        };
        self.write_crl(&all)
    }

    fn write_crl(&self, revoked: &[Vec<u8>]) -> Result<()> {
        let number = self.crl_number.fetch_add(1, Ordering::Relaxed);
        let crl = self.ca.crl_pem(revoked, number)?;
        let tmp = self.dir.path().join(format!("crl-{number}.pem.tmp"));
        write(&tmp, &crl)?;
        std::fs::rename(&tmp, &self.crl_path)
            .with_context(|| format!("replacing {}", self.crl_path.display()))
    }

    fn store(&self, id: &str, role: &str, issued: Issued) -> Result<ClientCert> {
        // Several certificates may share an id (old and new, valid and revoked).
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let cert_path = self.dir.path().join(format!("{id}-{n}.pem"));
        let key_path = self.dir.path().join(format!("{id}-{n}.key"));
        write(&cert_path, &issued.cert_pem)?;
        write(&key_path, &issued.key_pem)?;
        Ok(ClientCert {
            id: id.to_owned(),
            role: role.to_owned(),
            cert_path,
            key_path,
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            serial: issued.serial,
        })
    }
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
