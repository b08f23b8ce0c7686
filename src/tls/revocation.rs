//! Certificate revocation lists (`sslcrl`, `sslcrldir`): a revoked server certificate is refused, as libpq
//! refuses it.
//!
//! libpq loads revocation lists only when it verifies the server (there are root certificates), and then has
//! OpenSSL check every certificate of the chain (`X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL`): a
//! certificate whose issuer has no list, or whose list has expired, fails too. The same rules here, with
//! webpki doing the check after rustls has verified the chain.
//!
//! - `sslcrl`: a PEM file of one or more lists; default `~/.postgresql/root.crl`, used when it exists.
//! - `sslcrldir`: a directory; every PEM list in any of its files is read (OpenSSL reads only the
//!   `<hash>.r<n>` names that `openssl rehash` makes, so this finds at least the lists libpq finds).
//!
//! Unlike libpq, which silently skips a list file or directory it cannot load, one named in the connection
//! string that cannot be read is an error: a typo must not turn revocation checking off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};
use rustls::{CertificateError, OtherError};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};

use super::files::{default_file, read_file};
use crate::{Config, Error};

/// The revocation lists a connection checks against; empty when none are configured.
#[derive(Debug, Clone, Default)]
pub(super) struct RevocationLists {
    lists: Arc<[CertRevocationList<'static>]>,
}

impl RevocationLists {
    /// Reads `sslcrl` and `sslcrldir` (or the default `~/.postgresql/root.crl`).
    pub(super) fn from_config(config: &Config) -> Result<RevocationLists, Error> {
        let mut lists = Vec::new();
        match config.get_raw("sslcrl") {
            Some(file) if !file.is_empty() => add_list_file(&mut lists, Path::new(file))?,
            // libpq's default, only when it is there.
            _ => {
                if let Some(path) = default_file("root.crl").filter(|p| p.exists()) {
                    add_list_file(&mut lists, &path)?;
                }
            }
        }
        if let Some(dir) = config.get_raw("sslcrldir").filter(|d| !d.is_empty()) {
            // Files of the directory that hold no list (a README, a certificate) are passed over.
            for path in directory_files(Path::new(dir))? {
                let pem = read_file(&path, "certificate revocation list")?;
                add_pem_lists(&mut lists, &pem, &path)?;
            }
        }
        Ok(RevocationLists {
            lists: lists.into(),
        })
    }

    /// Refuses `end_entity` if it, or an intermediate of its chain to `roots`, is revoked, or has no
    /// current list from its issuer. The chain itself must already have been verified.
    pub(super) fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        roots: &[TrustAnchor<'_>],
        now: UnixTime,
        algorithms: &[&dyn rustls::pki_types::SignatureVerificationAlgorithm],
    ) -> Result<(), rustls::Error> {
        if self.lists.is_empty() {
            return Ok(());
        }
        let lists: Vec<&CertRevocationList<'_>> = self.lists.iter().collect();
        let Ok(options) = RevocationOptionsBuilder::new(&lists) else {
            return Ok(());
        };
        let options = options
            .with_depth(RevocationCheckDepth::Chain)
            .with_status_policy(UnknownStatusPolicy::Deny)
            .with_expiration_policy(ExpirationPolicy::Enforce)
            .build();
        let cert = EndEntityCert::try_from(end_entity).map_err(revocation_error)?;
        cert.verify_for_usage(
            algorithms,
            roots,
            intermediates,
            now,
            KeyUsage::server_auth(),
            Some(options),
            None,
        )
        .map(drop)
        .map_err(revocation_error)
    }
}

/// rustls's error for what webpki found, worded for someone who set `sslcrl` or `sslcrldir`.
fn revocation_error(error: webpki::Error) -> rustls::Error {
    let error = match error {
        // Displayed as "invalid peer certificate: Revoked"; the variant also picks the certificate_revoked alert.
        webpki::Error::CertRevoked => CertificateError::Revoked,
        webpki::Error::CrlExpired { time, next_update } => {
            CertificateError::ExpiredRevocationListContext { time, next_update }
        }
        webpki::Error::UnknownRevocationStatus => {
            CertificateError::Other(OtherError(Arc::new(RevocationUnknown)))
        }
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(error)
}

/// A certificate of the server's chain whose issuer has no list among those given.
struct RevocationUnknown;

// rustls shows an `OtherError` with `Debug`, so both say the same sentence.
impl std::fmt::Debug for RevocationUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for RevocationUnknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "unknown revocation status: no certificate revocation list (sslcrl, sslcrldir) from the issuer of \
             a certificate in the server's chain",
        )
    }
}

impl std::error::Error for RevocationUnknown {}

/// Adds every PEM `X509 CRL` in `pem`, parsed; returns how many there were.
fn add_pem_lists(
    lists: &mut Vec<CertRevocationList<'static>>,
    pem: &[u8],
    path: &Path,
) -> Result<usize, Error> {
    let what = |e: &dyn std::fmt::Display| {
        Error::config(format!(
            "cannot parse certificate revocation list file \"{}\": {e}",
            path.display()
        ))
    };
    let mut count = 0;
    for der in CertificateRevocationListDer::pem_slice_iter(pem) {
        let der = der.map_err(|e| what(&e))?;
        let list = OwnedCertRevocationList::from_der(&der).map_err(|e| what(&e))?;
        lists.push(list.into());
        count += 1;
    }
    Ok(count)
}

/// The lists of a file named directly, which must hold at least one.
fn add_list_file(lists: &mut Vec<CertRevocationList<'static>>, path: &Path) -> Result<(), Error> {
    let pem = read_file(path, "certificate revocation list")?;
    if add_pem_lists(lists, &pem, path)? == 0 {
        return Err(Error::config(format!(
            "certificate revocation list file \"{}\" holds no PEM X509 CRL",
            path.display()
        )));
    }
    Ok(())
}

/// The regular files of `dir`, sorted (so the order of the lists does not depend on the file system).
fn directory_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let error = |e: std::io::Error| {
        Error::config(format!(
            "could not read certificate revocation list directory \"{}\": {e}",
            dir.display()
        ))
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(error)? {
        let path = entry.map_err(error)?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
