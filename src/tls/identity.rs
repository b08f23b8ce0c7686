//! The client certificate and its private key (`sslcert`, `sslkey`, or PEM given in memory).
//!
//! The key must belong to the certificate, as OpenSSL checks for libpq, but the check compares only the
//! certificate's SubjectPublicKeyInfo with the key's, read straight from the DER. rustls's own check parses the
//! whole certificate with webpki, which refuses X.509 v1 certificates (what `openssl x509 -req` makes without
//! extensions, as in PostgreSQL's documentation); the server accepts them, so the client must send them.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::encrypted_key::decrypt_key;
use super::files::{check_key_permissions, default_file, read_file};
use crate::{Config, Error};

/// The client certificate and key, if configured.
pub(super) fn load_identity(
    config: &Config,
    provider: &CryptoProvider,
) -> Result<Option<Arc<CertifiedKey>>, Error> {
    let memory = config.get_in_memory_tls();
    let (cert_pem, key_pem, what) = match (&memory.client_cert_pem, &memory.client_key_pem) {
        (Some(cert), Some(key)) => (cert.to_vec(), key.to_vec(), "in memory".to_string()),
        _ => {
            let cert_path = match config.get_ssl_cert() {
                Some(file) if !file.is_empty() => Some(PathBuf::from(file)),
                _ => default_file("postgresql.crt"),
            };
            // libpq sends no certificate when the certificate file does not exist.
            let Some(cert_path) = cert_path.filter(|p| p.exists()) else {
                return Ok(None);
            };
            let key_path = match config.get_ssl_key() {
                Some(file) if !file.is_empty() => Some(PathBuf::from(file)),
                _ => default_file("postgresql.key"),
            };
            let key_path = key_path.filter(|p| p.exists()).ok_or_else(|| {
                Error::config(format!(
                    "certificate present, but not private key file (certificate \"{}\")",
                    cert_path.display()
                ))
            })?;
            check_key_permissions(&key_path)?;
            (
                read_file(&cert_path, "client certificate")?,
                read_file(&key_path, "private key")?,
                format!("\"{}\"", cert_path.display()),
            )
        }
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::config(format!("cannot parse the client certificate {what}: {e}")))?;
    let Some(end_entity) = chain.first() else {
        return Err(Error::config(format!(
            "the client certificate {what} holds no PEM certificate"
        )));
    };
    let key = match decrypt_key(&key_pem, config.get_raw("sslpassword"), &what)? {
        Some(key) => key,
        None => PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            Error::config(format!(
                "cannot parse the private key for the client certificate {what} \
                 (PKCS#8, PKCS#1 or SEC1 PEM): {e}"
            ))
        })?,
    };
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        Error::config(format!(
            "unusable private key for the client certificate {what}: {e}"
        ))
    })?;
    let certificate_key = subject_public_key_info(end_entity).ok_or_else(|| {
        Error::config(format!(
            "cannot read the public key of the client certificate {what}: not an X.509 certificate"
        ))
    })?;
    // A key whose public half the provider cannot show is left to the server to judge, as rustls does.
    if let Some(private_key) = signing_key.public_key()
        && private_key.as_ref() != certificate_key
    {
        return Err(Error::config(format!(
            "the client certificate {what} does not match its private key"
        )));
    }
    Ok(Some(Arc::new(CertifiedKey::new(chain, signing_key))))
}

// DER tags of the certificate fields before the public key.
const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;

/// The whole `subjectPublicKeyInfo` element (tag and length included) of an X.509 certificate of any version:
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
/// issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }` (RFC 5280 4.1). `None` if the DER is not
/// shaped that way.
fn subject_public_key_info(certificate: &[u8]) -> Option<&[u8]> {
    let (tag, certificate, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = der_element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    // v1 certificates leave the version out; v2 and v3 have it first.
    if tbs.first() == Some(&VERSION) {
        tbs = der_element(tbs)?.2;
    }
    let (tag, _serial, mut rest) = der_element(tbs)?;
    if tag != INTEGER {
        return None;
    }
    // signature, issuer, validity, subject: four sequences.
    for _ in 0..4 {
        let (tag, _, next) = der_element(rest)?;
        if tag != SEQUENCE {
            return None;
        }
        rest = next;
    }
    let (tag, _, after) = der_element(rest)?;
    (tag == SEQUENCE).then(|| &rest[..rest.len() - after.len()])
}

/// One DER element with a one-byte tag: (tag, content, what follows). Lengths are checked against the input
/// before anything is sliced.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(not(target_os = "wasi"))]
    use crate::tls::TlsConnector;

    /// An encrypted key, legacy or PKCS#8, without sslpassword or one that does not decrypt is a config error
    /// naming it (keys encrypted by openssl are in `encrypted_key`'s tests); sslpassword is unused for a key
    /// that is not encrypted.
    #[cfg(not(target_os = "wasi"))]
    #[test]
    fn encrypted_client_keys() {
        use crate::ErrorKind;
        let cert = rcgen::generate_simple_self_signed(vec!["client".to_string()]).unwrap();
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                      DEK-Info: AES-128-CBC,00000000000000000000000000000000\n\nAAAA\n\
                      -----END RSA PRIVATE KEY-----\n";
        let pkcs8 =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        // (key, connection string, kind, what the message says)
        let cases = [
            (
                legacy,
                "sslmode=require",
                ErrorKind::Config,
                "\"sslpassword\"",
            ),
            (
                legacy,
                "sslmode=require sslpassword=secret",
                ErrorKind::Config,
                "cannot decrypt",
            ),
            // The key is parsed before the password is asked for.
            (pkcs8, "sslmode=require", ErrorKind::Config, "cannot parse"),
            (
                pkcs8,
                "sslmode=require sslpassword=secret",
                ErrorKind::Config,
                "cannot parse",
            ),
        ];
        for (key, conninfo, kind, fragment) in cases {
            let mut config = Config::parse(conninfo).unwrap();
            config.ssl_client_identity_pem(cert.cert.pem(), key);
            let err = TlsConnector::from_config(&config).unwrap_err();
            assert_eq!(err.kind(), kind, "{err}");
            assert!(err.to_string().contains(fragment), "{err}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        let mut config = Config::parse("sslmode=require sslpassword=unused").unwrap();
        config.ssl_client_identity_pem(cert.cert.pem(), cert.key_pair.serialize_pem());
        assert!(TlsConnector::from_config(&config).unwrap().is_some());
    }

    /// The public key read from the DER is the one rcgen put in the certificate, and a key that belongs to
    /// another certificate is refused before anything is sent.
    #[cfg(not(target_os = "wasi"))]
    #[test]
    fn the_key_must_match_the_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["client".to_string()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["other".to_string()]).unwrap();
        let spki = subject_public_key_info(cert.cert.der()).unwrap();
        assert_eq!(spki, cert.key_pair.public_key_der());

        let mut config = Config::parse("sslmode=require").unwrap();
        config.ssl_client_identity_pem(cert.cert.pem(), other.key_pair.serialize_pem());
        let err = TlsConnector::from_config(&config).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    /// A v1 certificate (no version field, no extensions) yields its public key; truncated or foreign DER
    /// yields none, without panicking.
    #[test]
    fn a_v1_certificate_and_broken_der() {
        // tbsCertificate without [0] version: serial, four sequences, then the key.
        let spki = [SEQUENCE, 3, 0x02, 1, 7];
        let mut tbs = vec![INTEGER, 1, 1];
        for _ in 0..4 {
            tbs.extend([SEQUENCE, 0]);
        }
        tbs.extend(spki);
        let tbs = [vec![SEQUENCE, u8::try_from(tbs.len()).unwrap()], tbs].concat();
        let certificate = [vec![SEQUENCE, u8::try_from(tbs.len()).unwrap()], tbs].concat();
        assert_eq!(subject_public_key_info(&certificate), Some(&spki[..]));
        for cut in 0..certificate.len() {
            assert_eq!(subject_public_key_info(&certificate[..cut]), None, "{cut}");
        }
        assert_eq!(
            subject_public_key_info(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}
