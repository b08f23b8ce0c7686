//! TLS material given through the API instead of files, and typed views of the TLS keywords.

use std::fmt;
use std::sync::Arc;

use super::Config;

/// Certificates and keys passed in memory (PEM). They take the place of `sslrootcert`, `sslcert` and `sslkey`.
#[derive(Clone, Default)]
pub(crate) struct InMemoryTls {
    pub(crate) root_certs_pem: Option<Arc<[u8]>>,
    pub(crate) client_cert_pem: Option<Arc<[u8]>>,
    /// A secret: never shown by `Debug`.
    pub(crate) client_key_pem: Option<Arc<[u8]>>,
}

impl fmt::Debug for InMemoryTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let given = |v: &Option<Arc<[u8]>>| v.as_ref().map(|pem| format!("{} bytes", pem.len()));
        f.debug_struct("InMemoryTls")
            .field("root_certs_pem", &given(&self.root_certs_pem))
            .field("client_cert_pem", &given(&self.client_cert_pem))
            .field(
                "client_key_pem",
                &self.client_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// How TLS is negotiated (`sslnegotiation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslNegotiation {
    /// Ask with an SSLRequest first, as every PostgreSQL version understands (the default).
    #[default]
    Postgres,
    /// Start the TLS handshake at once (PostgreSQL 17 and later); the server must agree on the ALPN protocol
    /// `postgresql`. Saves a round trip.
    Direct,
}

/// Whether a client certificate is sent (`sslcertmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SslCertMode {
    /// Never send one, even if configured.
    Disable,
    /// Send one if configured and the server asks (the default).
    #[default]
    Allow,
    /// Fail unless the server asks for a certificate.
    Require,
}

impl Config {
    /// Trusted root certificates in PEM, used instead of the `sslrootcert` file. With `sslmode=require` they make
    /// the client verify the chain as `verify-ca` does.
    pub fn ssl_root_certs_pem(&mut self, pem: impl Into<Vec<u8>>) -> &mut Config {
        self.in_memory_tls.root_certs_pem = Some(pem.into().into());
        self
    }

    /// A client certificate chain and its private key in PEM (the key as PKCS#8, PKCS#1 or SEC1, unencrypted),
    /// used instead of the `sslcert` and `sslkey` files.
    pub fn ssl_client_identity_pem(
        &mut self,
        cert_chain: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> &mut Config {
        self.in_memory_tls.client_cert_pem = Some(cert_chain.into().into());
        self.in_memory_tls.client_key_pem = Some(key.into().into());
        self
    }

    /// `sslnegotiation`: how TLS is started.
    pub fn get_ssl_negotiation(&self) -> SslNegotiation {
        match self.get_raw("sslnegotiation") {
            Some("direct") => SslNegotiation::Direct,
            _ => SslNegotiation::Postgres,
        }
    }

    /// `sslcertmode`: whether a client certificate is sent.
    pub fn get_ssl_cert_mode(&self) -> SslCertMode {
        match self.get_raw("sslcertmode") {
            Some("disable") => SslCertMode::Disable,
            Some("require") => SslCertMode::Require,
            _ => SslCertMode::Allow,
        }
    }

    #[cfg(all(feature = "tls", any(feature = "tokio", target_os = "wasi")))]
    pub(crate) fn get_in_memory_tls(&self) -> &InMemoryTls {
        &self.in_memory_tls
    }
}
