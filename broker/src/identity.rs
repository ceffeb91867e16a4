//! Who a client is, read from its verified client certificate: `CN=<id>`, `OU=<role>`.
//!
//! The identity never comes from what the client says: the MQTT client id must equal the
//! certificate's id, and the role decides what it may publish and subscribe.

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A client's identity as proven by its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The device or service id (certificate CN).
    pub id: String,
    /// The role (certificate OU): `taxi`, `backoffice`, `operator` or `bridge`.
    pub role: String,
    /// The certificate's serial number, to find sessions of a revoked certificate.
    pub serial: Vec<u8>,
}

/// Why a certificate does not give a usable identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no client certificate")]
    NoCertificate,
    #[error("client certificate cannot be parsed")]
    Unparsable,
    #[error("client certificate must have exactly one CN, found {0}")]
    CommonNameCount(usize),
    #[error("client certificate must have exactly one OU, found {0}")]
    UnitCount(usize),
    #[error("client certificate CN {0:?} is not a valid id")]
    BadId(String),
}

impl Identity {
    /// Reads the identity from the end-entity certificate the client presented.
    pub fn from_certificate(cert: Option<&CertificateDer<'_>>) -> Result<Identity, IdentityError> {
        let der = cert.ok_or(IdentityError::NoCertificate)?;
        let (_, cert) =
            X509Certificate::from_der(der.as_ref()).map_err(|_| IdentityError::Unparsable)?;
        let subject = cert.subject();
        let names: Vec<&str> = subject
            .iter_common_name()
            .map(|n| n.as_str().map_err(|_| IdentityError::Unparsable))
            .collect::<Result<_, _>>()?;
        let units: Vec<&str> = subject
            .iter_organizational_unit()
            .map(|n| n.as_str().map_err(|_| IdentityError::Unparsable))
            .collect::<Result<_, _>>()?;
        let [id] = names.as_slice() else {
            return Err(IdentityError::CommonNameCount(names.len()));
        };
        let [role] = units.as_slice() else {
            return Err(IdentityError::UnitCount(units.len()));
        };
        if !wire::is_valid_device_id(id) {
            return Err(IdentityError::BadId((*id).to_owned()));
        }
        Ok(Identity {
            id: (*id).to_owned(),
            role: (*role).to_owned(),
            serial: cert.raw_serial().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, Validity};
    use rustls_pki_types::pem::PemObject;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
    }

    #[test]
    fn reads_cn_and_ou() {
        let ca = Ca::generate("test").expect("ca");
        let issued = ca
            .issue_client("taxi-42", "taxi", Validity::days(1))
            .expect("client");
        let identity = Identity::from_certificate(Some(&der(&issued.cert_pem))).expect("id");
        assert_eq!(identity.id, "taxi-42");
        assert_eq!(identity.role, "taxi");
        assert_eq!(identity.serial, issued.serial);
    }

    #[test]
    fn refuses_a_certificate_without_ou() {
        let ca = Ca::generate("test").expect("ca");
        let server = ca.issue_server(&["localhost"]).expect("server");
        assert_eq!(
            Identity::from_certificate(Some(&der(&server.cert_pem))),
            Err(IdentityError::UnitCount(0))
        );
        assert_eq!(
            Identity::from_certificate(None),
            Err(IdentityError::NoCertificate)
        );
    }

    #[test]
    fn refuses_an_id_with_topic_characters() {
        let ca = Ca::generate("test").expect("ca");
        let issued = ca
            .issue_client("a/+", "taxi", Validity::days(1))
            .expect("client");
        assert!(matches!(
            Identity::from_certificate(Some(&der(&issued.cert_pem))),
            Err(IdentityError::BadId(_))
        ));
    }
}
