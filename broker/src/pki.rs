//! Certificate authority tooling: creates CAs, server and client certificates and CRLs.
//!
//! Used by the `broker certs` subcommand to make a development PKI, and by the tests to make
//! every kind of certificate they need (other CA, expired, revoked). Client certificates carry
//! the identity scheme the broker reads: `CN=<device id>`, `OU=<role>`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// A certificate authority that can sign certificates and revocation lists.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A freshly issued certificate with its private key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate's serial number, needed to revoke it.
    pub serial: Vec<u8>,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from a minute ago for `days` days.
    pub fn days(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::days(days),
        }
    }

    /// Already expired: valid from ten days ago until yesterday.
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::days(10),
            not_after: now - Duration::days(1),
        }
    }
}

impl Ca {
    /// Creates a new self-signed CA named `name`, valid for ten years.
    pub fn generate(name: &str) -> Result<Ca> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Taxi fleet platform");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let validity = Validity::days(3650);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .context("signing the CA certificate")?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and PEM private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem).context("reading the CA private key")?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).context("reading the CA certificate")?;
        // `Issuer` owns its key; keep a second parsed copy of the PEM for writing out.
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, hosts: &[&str]) -> Result<Issued> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "broker");
        params.subject_alt_names = hosts
            .iter()
            .map(|host| match host.parse() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*host).try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()
            .context("invalid server host name")?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, Validity::days(825))
    }

    /// Issues a client certificate with `CN=<id>` and `OU=<role>`.
    pub fn issue_client(&self, id: &str, role: &str, validity: Validity) -> Result<Issued> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, id);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, validity)
    }

    /// Signs a certificate revocation list naming the given serial numbers.
    pub fn crl_pem(&self, revoked_serials: &[Vec<u8>], crl_number: u64) -> Result<String> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(1),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from(crl_number.to_be_bytes().to_vec()),
            issuing_distribution_point: None,
            revoked_certs: revoked_serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial.clone()),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).context("signing the CRL")?;
        crl.pem().context("encoding the CRL")
    }

    fn sign(&self, mut params: CertificateParams, validity: Validity) -> Result<Issued> {
        let key = KeyPair::generate().context("generating a key")?;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial.to_bytes(),
        })
    }
}

/// A positive random 16-byte serial number.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from(bytes.to_vec())
}

/// The development PKI kept in one directory: `ca.pem`, `ca.key`, `server.pem`, `server.key`,
/// `crl.pem`, `revoked.txt` and one `<id>.pem`/`<id>.key` pair per client.
pub struct DevPki {
    dir: PathBuf,
    ca: Ca,
}

impl DevPki {
    /// Opens the PKI in `dir`, creating the CA, the server certificate and an empty CRL on
    /// first use. Existing files are kept.
    pub fn open_or_create(dir: &Path) -> Result<DevPki> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca_cert = dir.join("ca.pem");
        let ca_key = dir.join("ca.key");
        let ca = if ca_cert.exists() && ca_key.exists() {
            Ca::from_pem(&read(&ca_cert)?, &read(&ca_key)?)?
        } else {
            let ca = Ca::generate("Taxi fleet development CA")?;
            write_private(&ca_key, ca.key_pem())?;
            write(&ca_cert, ca.cert_pem())?;
            ca
        };
        let pki = DevPki {
            dir: dir.to_owned(),
            ca,
        };
        if !dir.join("server.pem").exists() {
            let server = pki.ca.issue_server(&["localhost", "127.0.0.1", "::1"])?;
            write_private(&dir.join("server.key"), &server.key_pem)?;
            write(&dir.join("server.pem"), &server.cert_pem)?;
        }
        if !dir.join("crl.pem").exists() {
            pki.write_crl(&[])?;
        }
        Ok(pki)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// Issues `<name>.pem` and `<name>.key`, a server certificate for `hosts` (another HTTPS
    /// service of the platform), replacing any earlier pair of that name.
    pub fn issue_server(&self, name: &str, hosts: &[&str]) -> Result<(PathBuf, PathBuf)> {
        if !wire::is_valid_device_id(name) {
            bail!("invalid name {name:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'");
        }
        let issued = self.ca.issue_server(hosts)?;
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}.key"));
        write_private(&key, &issued.key_pem)?;
        write(&cert, &issued.cert_pem)?;
        Ok((cert, key))
    }

    /// Issues `<id>.pem` and `<id>.key` for a client with the given role, replacing any
    /// earlier pair of that id.
    pub fn issue_client(&self, id: &str, role: &str, days: i64) -> Result<(PathBuf, PathBuf)> {
        if !wire::is_valid_device_id(id) {
            bail!("invalid id {id:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'");
        }
        let issued = self.ca.issue_client(id, role, Validity::days(days))?;
        let cert = self.dir.join(format!("{id}.pem"));
        let key = self.dir.join(format!("{id}.key"));
        write_private(&key, &issued.key_pem)?;
        write(&cert, &issued.cert_pem)?;
        Ok((cert, key))
    }

    /// Revokes the current certificate of `id` by adding its serial to `crl.pem`.
    pub fn revoke(&self, id: &str) -> Result<()> {
        let cert = self.dir.join(format!("{id}.pem"));
        let serial = serial_of(&read(&cert)?)?;
        let mut revoked = self.revoked_serials()?;
        if !revoked.contains(&serial) {
            revoked.push(serial);
        }
        self.write_crl(&revoked)
    }

    fn revoked_serials(&self) -> Result<Vec<Vec<u8>>> {
        let path = self.dir.join("revoked.txt");
        if !path.exists() {
            return Ok(Vec::new());
        }
        read(&path)?
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| hex_decode(line.trim()))
            .collect()
    }

    fn write_crl(&self, revoked: &[Vec<u8>]) -> Result<()> {
        let listed: String = revoked.iter().map(|s| hex_encode(s) + "\n").collect();
        write(&self.dir.join("revoked.txt"), &listed)?;
        let number = OffsetDateTime::now_utc().unix_timestamp().unsigned_abs();
        let crl = self.ca.crl_pem(revoked, number)?;
        // Write then rename so a broker reloading the CRL never reads half a file.
        let tmp = self.dir.join("crl.pem.tmp");
        write(&tmp, &crl)?;
        fs::rename(&tmp, self.dir.join("crl.pem")).context("replacing crl.pem")
    }
}

/// The serial number of a PEM certificate.
pub fn serial_of(cert_pem: &str) -> Result<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    Ok(cert.raw_serial().to_vec())
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        bail!("odd-length serial {text:?} in revoked.txt");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16)
                .with_context(|| format!("bad serial {text:?} in revoked.txt"))
        })
        .collect()
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
