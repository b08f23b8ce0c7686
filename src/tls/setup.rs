//! From a [`Config`] to rustls sessions, with libpq's meaning for every TLS keyword.
//!
//! - Roots: in-memory PEM, else `sslrootcert` (a PEM file, or `system` for webpki-roots), else
//!   `~/.postgresql/root.crt` if it exists. With roots, the chain is verified in every mode (libpq does the
//!   same, so `require` with a root file acts as `verify-ca`); `verify-full` also checks the host name against
//!   the certificate's subjectAltNames (DNS and IP). `verify-ca` and `verify-full` without roots are errors.
//! - Client identity: in-memory PEM, else `sslcert`/`sslkey` (default `~/.postgresql/postgresql.crt` and
//!   `.key`, used when the certificate file exists), sent as `sslcertmode` says.
//! - `ssl_min_protocol_version` (default TLSv1.2) and `ssl_max_protocol_version`: rustls speaks TLS 1.2 and
//!   1.3, so older minimums mean 1.2 and older maximums are an error.
//! - `sslcrl`, `sslcrldir`: revocation lists, checked whenever the chain is (see `revocation.rs`).
//! - `sslkeylogfile`: TLS secrets for debugging (see `key_log.rs`).
//! - `sslsni`: SNI for host names (never for IP addresses); ALPN `postgresql` is always offered.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    SupportedProtocolVersion,
};

use super::files::{default_file, read_file};
use super::key_log::KeyLogFile;
use super::revocation::RevocationLists;
use crate::config::{SslCertMode, SslMode, SslNegotiation};
use crate::{Config, Error};

/// The ALPN protocol name PostgreSQL 17 registered for direct TLS.
pub(crate) const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Everything TLS needs for one `connect`, loaded once (files read, PEM parsed) and shared by every host.
#[derive(Debug, Clone)]
pub(crate) struct TlsConnector {
    provider: Arc<CryptoProvider>,
    roots: Option<Arc<RootCertStore>>,
    revocation: RevocationLists,
    verify_host: bool,
    identity: Option<Arc<CertifiedKey>>,
    /// `sslkeylogfile`, opened.
    key_log: Option<Arc<KeyLogFile>>,
    cert_mode: SslCertMode,
    sni: bool,
    versions: Vec<&'static SupportedProtocolVersion>,
    negotiation: SslNegotiation,
}

/// One TLS session about to start, and the flag its client-certificate resolver sets when it hands the server
/// a certificate.
pub(crate) struct NewSession {
    pub(crate) session: ClientConnection,
    pub(crate) certificate_sent: Arc<AtomicBool>,
}

/// ring's provider, with the cipher suites this target runs fastest.
fn crypto_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if cfg!(target_family = "wasm") {
        prefer_chacha20(&mut provider);
    }
    provider
}

/// The cipher suites for WebAssembly, where there are no AES instructions: ring falls back to constant-time
/// software AES-GCM, which costs several times ChaCha20-Poly1305 (57% of the client's CPU on a TLS read of 1M
/// rows). PostgreSQL's OpenSSL picks the suite by its own preference (`ssl_prefer_server_ciphers` is on by
/// default): AES-256-GCM, then ChaCha20-Poly1305, then AES-128-GCM, so the client's order alone does not
/// decide. ChaCha20-Poly1305 is offered first and AES-128-GCM after it, and AES-256-GCM is left out: a server
/// with the default preference picks ChaCha20, and one that allows only AES (FIPS mode) still finds
/// AES-128-GCM, the suite every TLS 1.3 server must implement.
fn prefer_chacha20(provider: &mut CryptoProvider) {
    use rustls::CipherSuite as S;
    provider.cipher_suites.retain(|suite| {
        !matches!(
            suite.suite(),
            S::TLS13_AES_256_GCM_SHA384
                | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        )
    });
    // A stable sort: within each group the provider's order (TLS 1.3 first) stays.
    provider.cipher_suites.sort_by_key(|suite| {
        !matches!(
            suite.suite(),
            S::TLS13_CHACHA20_POLY1305_SHA256
                | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        )
    });
}

impl TlsConnector {
    /// Loads what `config` asks for; `None` when `sslmode=disable`.
    pub(crate) fn from_config(config: &Config) -> Result<Option<TlsConnector>, Error> {
        let mode = config.get_ssl_mode();
        if mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(crypto_provider());
        let roots = load_roots(config, mode)?;
        // Like libpq: revocation lists matter only where the server certificate is verified.
        let revocation = match roots {
            Some(_) => RevocationLists::from_config(config)?,
            None => RevocationLists::default(),
        };
        let identity = match config.get_ssl_cert_mode() {
            SslCertMode::Disable => None,
            _ => super::identity::load_identity(config, &provider)?,
        };
        Ok(Some(TlsConnector {
            provider,
            roots,
            revocation,
            verify_host: mode == SslMode::VerifyFull,
            identity,
            key_log: match config.get_raw("sslkeylogfile") {
                Some(path) if !path.is_empty() => {
                    Some(Arc::new(KeyLogFile::open(Path::new(path))?))
                }
                _ => None,
            },
            cert_mode: config.get_ssl_cert_mode(),
            sni: config.get_ssl_sni(),
            versions: protocol_versions(config)?,
            negotiation: config.get_ssl_negotiation(),
        }))
    }

    /// Whether the handshake starts at once instead of after an SSLRequest.
    pub(crate) fn direct(&self) -> bool {
        self.negotiation == SslNegotiation::Direct
    }

    /// Whether `sslcertmode=require` asks for a client certificate to have been sent.
    pub(crate) fn certificate_required(&self) -> bool {
        self.cert_mode == SslCertMode::Require
    }

    /// A new session for the server called `host` (a DNS name or an IP literal).
    pub(crate) fn session(&self, host: &str) -> Result<NewSession, Error> {
        let server_name = ServerName::try_from(host.to_string()).map_err(|e| {
            Error::config(format!(
                "host {host:?} is neither a DNS name nor an IP address usable for TLS: {e}"
            ))
        })?;
        let verifier = Arc::new(Verifier {
            roots: self.roots.clone(),
            revocation: self.revocation.clone(),
            verify_host: self.verify_host,
            provider: self.provider.clone(),
        });
        let certificate_sent = Arc::new(AtomicBool::new(false));
        let resolver = Arc::new(ClientIdentity {
            identity: self.identity.clone(),
            sent: certificate_sent.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&self.versions)
            .map_err(|e| Error::config(format!("unusable TLS protocol versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(resolver);
        config.enable_sni = self.sni;
        if let Some(key_log) = &self.key_log {
            config.key_log = key_log.clone();
        }
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        let session = ClientConnection::new(Arc::new(config), server_name)
            .map_err(|e| Error::tls(format!("cannot start TLS: {e}"), Some(Box::new(e))))?;
        Ok(NewSession {
            session,
            certificate_sent,
        })
    }
}

/// The root store, or `None` when the server certificate is not to be verified.
fn load_roots(config: &Config, mode: SslMode) -> Result<Option<Arc<RootCertStore>>, Error> {
    let verify = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    let mut store = RootCertStore::empty();
    if let Some(pem) = &config.get_in_memory_tls().root_certs_pem {
        add_pem_roots(&mut store, pem, "the root certificates given in memory")?;
        return Ok(Some(Arc::new(store)));
    }
    let path = match config.get_ssl_root_cert() {
        Some("system") => {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            return Ok(Some(Arc::new(store)));
        }
        Some(file) if !file.is_empty() => Some(PathBuf::from(file)),
        _ => default_file("root.crt"),
    };
    match path {
        Some(path) if path.exists() => {
            let pem = read_file(&path, "root certificate")?;
            add_pem_roots(
                &mut store,
                &pem,
                &format!("root certificate file \"{}\"", path.display()),
            )?;
            Ok(Some(Arc::new(store)))
        }
        Some(path) if verify => Err(Error::config(format!(
            "root certificate file \"{}\" does not exist; either provide the file, use the system's trusted \
             roots with sslrootcert=system, or change sslmode to disable server certificate verification",
            path.display()
        ))),
        None if verify => Err(Error::config(format!(
            "sslmode={} needs root certificates, and there is no home directory to find \
             ~/.postgresql/root.crt in: set sslrootcert",
            mode.as_str()
        ))),
        // Like libpq: without a root file, require (and prefer, allow) encrypt without verifying.
        _ => Ok(None),
    }
}

fn add_pem_roots(store: &mut RootCertStore, pem: &[u8], what: &str) -> Result<(), Error> {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| Error::config(format!("cannot parse {what}: {e}")))?;
        store
            .add(cert)
            .map_err(|e| Error::config(format!("unusable certificate in {what}: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(Error::config(format!("{what} holds no PEM certificate")));
    }
    Ok(())
}

/// The TLS versions to offer.
fn protocol_versions(config: &Config) -> Result<Vec<&'static SupportedProtocolVersion>, Error> {
    let rank = |key: &str, default: u8| match config.get_raw(key) {
        Some("TLSv1") => 0,
        Some("TLSv1.1") => 1,
        Some("TLSv1.2") => 2,
        Some("TLSv1.3") => 3,
        _ => default,
    };
    let min = rank("ssl_min_protocol_version", 2);
    let max = rank("ssl_max_protocol_version", 3);
    let mut versions = Vec::new();
    if min <= 2 && max >= 2 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= 3 {
        versions.push(&rustls::version::TLS13);
    }
    if versions.is_empty() {
        return Err(Error::unsupported(
            "ssl_max_protocol_version is below TLSv1.2; this client speaks TLS 1.2 and 1.3 only",
        ));
    }
    Ok(versions)
}

/// Server certificate verification as the sslmode says.
#[derive(Debug)]
struct Verifier {
    /// `None`: no verification (encryption only), as libpq's `require` without a root file.
    roots: Option<Arc<RootCertStore>>,
    /// Checked after the chain, when there are roots.
    revocation: RevocationLists,
    verify_host: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        self.revocation.check(
            end_entity,
            intermediates,
            &roots.roots,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.verify_host {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    // The handshake signatures are checked in every mode: without them even encryption-only TLS would not
    // prove that the peer holds the key of the certificate it showed.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Hands rustls the client identity and records that one was sent (for `sslcertmode=require`).
#[derive(Debug)]
struct ClientIdentity {
    identity: Option<Arc<CertifiedKey>>,
    sent: Arc<AtomicBool>,
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // Asked by the server's CertificateRequest; answering with a certificate is what libpq calls "sent".
        self.sent.store(self.identity.is_some(), Ordering::Relaxed);
        self.identity.clone()
    }

    fn has_certs(&self) -> bool {
        self.identity.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite as S;

    #[test]
    fn wasm_suites_put_chacha20_first_and_keep_aes_128_gcm() {
        let mut provider = rustls::crypto::ring::default_provider();
        prefer_chacha20(&mut provider);
        let suites: Vec<S> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            suites,
            [
                S::TLS13_CHACHA20_POLY1305_SHA256,
                S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                S::TLS13_AES_128_GCM_SHA256,
                S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ]
        );
    }
}
