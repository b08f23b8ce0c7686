//! Test certificates, made at test time with rcgen and written as PEM files into a temp dir.
//!
//! One private CA ([`ROOT`]) signs every server and client certificate a test trusts; a second,
//! unrelated CA ([`WRONG_ROOT`]) signs nothing the servers present, so trusting it alone must make
//! verification fail. A third CA with an Ed25519 key ([`ED25519_ROOT`]) signs one server
//! certificate: tls-server-end-point channel binding has no hash for an Ed25519 signature.
//!
//! | file | what it is |
//! |---|---|
//! | `root.crt` | the CA every test trusts |
//! | `wrong-root.crt` | an unrelated CA |
//! | `server.crt`, `server.key` | DNS `localhost`, IP `127.0.0.1`, IP `::1` |
//! | `wrong-name.crt`, `wrong-name.key` | DNS `wrong.example` only |
//! | `no-name.crt`, `no-name.key` | no subjectAltName, and no CN that could name a host |
//! | `ed25519-root.crt` | the Ed25519 CA |
//! | `ed25519-server.crt`, `ed25519-server.key` | like `server.crt`, but signed with Ed25519 by `ed25519-root.crt` |
//! | `client.crt`, `client.key` | CN `pgc_cert`; the key as PKCS#8 |
//! | `client-sec1.key` | the same key as SEC1 (`EC PRIVATE KEY`) |
//! | `client-v1.crt` | CN `pgc_cert` for `client.key`, an X.509 **v1** certificate made by `openssl x509 -req` as in PostgreSQL's documentation |
//! | `other.crt`, `other.key` | CN `pgc_other`, a user that is not `pgc_cert` |
//! | `client-rsa.crt`, `client-rsa.key` | CN `pgc_cert` with an RSA key that `openssl genrsa` made, as PKCS#8 |
//! | `revoked.crl` | `root.crt`'s revocation list, revoking `server.crt` |
//! | `clean.crl` | `root.crt`'s list, revoking another serial only |
//! | `expired.crl` | `root.crt`'s list that revokes nothing, past its next update |
//! | `wrong-root.crl` | `wrong-root.crt`'s list: says nothing about certificates `root.crt` signed |
//! | `crl-revoked/`, `crl-clean/` | directories for `sslcrldir`: `revoked.crl` or `clean.crl` as `root.r0`, beside a file that is not a list |
//!
//! Encrypted copies of `client.key` (EC) and `client-rsa.key` (RSA), made by openssl, all with the password
//! [`KEY_PASSWORD`]:
//!
//! | file | openssl arguments |
//! |---|---|
//! | `client-encrypted.key` | `pkcs8 -topk8 -v2 aes-256-cbc` (PBES2, PBKDF2 with HMAC-SHA256) |
//! | `client-encrypted-rsa.key` | the RSA key, `pkcs8 -topk8 -v2 aes-128-cbc` |
//! | `client-encrypted-des3.key` | `pkcs8 -topk8 -v2 des3 -v2prf hmacWithSHA1` (what older OpenSSL writes) |
//! | `client-encrypted-pbe-sha1-3des.key` | `pkcs8 -topk8 -v1 PBE-SHA1-3DES` (PKCS#12's scheme, which the client refuses) |
//! | `client-legacy-encrypted.key` | `ec -aes256`: OpenSSL's legacy form (`Proc-Type: 4,ENCRYPTED`) on SEC1 |
//! | `client-legacy-aes128.key`, `client-legacy-des3.key`, `client-legacy-des.key` | `ec -aes128`, `ec -des3`, `ec -des` |
//! | `client-rsa-legacy-aes256.key`, `client-rsa-legacy-des3.key` | `rsa -traditional -aes256`, `-des3`: the legacy form on PKCS#1 |
//!
//! Keys are mode 0600 and ECDSA P-256, but for `client-rsa.key` (ring cannot make RSA keys; openssl does).
//! Servers do not read this dir: [`Cluster`](super::Cluster) copies a [`ServerTls`]'s files into its
//! own dir, owned by the user the server runs as.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, RevocationReason, RevokedCertParams,
    SerialNumber,
};

use super::cluster::ServerTls;

/// The CA every test trusts; it signed every certificate below except the Ed25519 server's.
pub const ROOT: &str = "root.crt";
/// A CA that signed nothing the servers present.
pub const WRONG_ROOT: &str = "wrong-root.crt";
/// The Ed25519 CA that signed [`ServerCert::Ed25519`].
pub const ED25519_ROOT: &str = "ed25519-root.crt";
/// The client certificate for `pgc_cert`, with its key as PKCS#8 and as SEC1.
pub const CLIENT_CERT: &str = "client.crt";
pub const CLIENT_KEY: &str = "client.key";
pub const CLIENT_KEY_SEC1: &str = "client-sec1.key";
/// A v1 certificate (no extensions) for `pgc_cert` and [`CLIENT_KEY`].
pub const CLIENT_V1_CERT: &str = "client-v1.crt";
/// A client certificate for `pgc_other` (a valid chain, but the wrong user for `pgc_cert`).
pub const OTHER_CERT: &str = "other.crt";
pub const OTHER_KEY: &str = "other.key";
/// The client certificate for `pgc_cert` with an RSA key.
pub const CLIENT_RSA_CERT: &str = "client-rsa.crt";
pub const CLIENT_RSA_KEY: &str = "client-rsa.key";
/// The password of the encrypted copies of [`CLIENT_KEY`] and [`CLIENT_RSA_KEY`].
pub const KEY_PASSWORD: &str = "pgc-key-secret";
/// The serial number of `server.crt`, which `revoked.crl` revokes.
const GOOD_SERVER_SERIAL: u64 = 1001;

/// A server certificate a cluster can present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCert {
    /// DNS `localhost`, IP `127.0.0.1` and IP `::1`, signed by [`ROOT`].
    Good,
    /// DNS `wrong.example` only, signed by [`ROOT`].
    WrongName,
    /// No names at all, signed by [`ROOT`].
    NoName,
    /// The names of [`ServerCert::Good`], signed with Ed25519 by [`ED25519_ROOT`].
    Ed25519,
}

impl ServerCert {
    /// The file stem: `<stem>.crt` and `<stem>.key`.
    fn stem(self) -> &'static str {
        match self {
            ServerCert::Good => "server",
            ServerCert::WrongName => "wrong-name",
            ServerCert::NoName => "no-name",
            ServerCert::Ed25519 => "ed25519-server",
        }
    }
}

/// The certificate files of one test run, deleted on drop.
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Makes every certificate and key listed in the module docs in a fresh dir under /tmp.
    /// Panics if rcgen or the file system fails: the TLS tests cannot run without them.
    pub fn generate() -> TestCerts {
        let certs = TestCerts { dir: create_dir() };
        let root = Ca::new("wasi-pg-client test root", &PKCS_ECDSA_P256_SHA256);
        let wrong_root = Ca::new("wasi-pg-client unrelated root", &PKCS_ECDSA_P256_SHA256);
        let ed25519_root = Ca::new("wasi-pg-client Ed25519 root", &PKCS_ED25519);
        certs.write(ROOT, &root.cert.pem());
        certs.write(WRONG_ROOT, &wrong_root.cert.pem());
        certs.write(ED25519_ROOT, &ed25519_root.cert.pem());

        let local_names = ["localhost", "127.0.0.1", "::1"];
        certs.server(ServerCert::Good, &root, &local_names);
        certs.server(ServerCert::WrongName, &root, &["wrong.example"]);
        certs.server(ServerCert::NoName, &root, &[]);
        certs.server(ServerCert::Ed25519, &ed25519_root, &local_names);

        let client_key = certs.client(CLIENT_CERT, CLIENT_KEY, "pgc_cert", &root);
        let sec1 = pkcs8_to_sec1(client_key.serialized_der())
            .unwrap_or_else(|| panic!("cannot convert the client key to SEC1"));
        certs.write_key(CLIENT_KEY_SEC1, &pem("EC PRIVATE KEY", &sec1));
        certs.client(OTHER_CERT, OTHER_KEY, "pgc_other", &root);
        certs.client_v1(&root);
        certs.client_rsa(&root);
        certs.encrypted_keys();
        certs.revocation_lists(&root, &wrong_root);
        certs
    }

    /// The dir holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `file` (one of the names in the module docs).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The files a cluster needs to present `cert`. `client_ca` makes it request client certificates
    /// and check them against [`ROOT`].
    pub fn server_tls(&self, cert: ServerCert, client_ca: bool) -> ServerTls {
        ServerTls {
            cert: self.path(&format!("{}.crt", cert.stem())),
            key: self.path(&format!("{}.key", cert.stem())),
            ca: client_ca.then(|| self.path(ROOT)),
        }
    }

    /// A server certificate (serverAuth) for `names` (DNS names or IP addresses), signed by `ca`.
    fn server(&self, which: ServerCert, ca: &Ca, names: &[&str]) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)
            .unwrap_or_else(|e| panic!("server certificate names: {e}"));
        // Only an organisation: a CN would be a host name of last resort for some verifiers.
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::OrganizationName,
            format!("test server {}", which.stem()),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if which == ServerCert::Good {
            params.serial_number = Some(SerialNumber::from(GOOD_SERVER_SERIAL));
        }
        let key = new_key(&PKCS_ECDSA_P256_SHA256);
        let cert = ca.sign(params, &key);
        self.write(&format!("{}.crt", which.stem()), &cert.pem());
        self.write_key(&format!("{}.key", which.stem()), &key.serialize_pem());
    }

    /// A client certificate (clientAuth) with CN `user`, signed by `ca`; returns its key.
    fn client(&self, cert_file: &str, key_file: &str, user: &str, ca: &Ca) -> KeyPair {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, user);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = new_key(&PKCS_ECDSA_P256_SHA256);
        let cert = ca.sign(params, &key);
        self.write(cert_file, &cert.pem());
        self.write_key(key_file, &key.serialize_pem());
        key
    }

    /// [`CLIENT_RSA_CERT`] and [`CLIENT_RSA_KEY`]: `openssl genrsa` makes the key (PKCS#8 in OpenSSL 3), rcgen
    /// signs a clientAuth certificate for it with CN `pgc_cert`.
    fn client_rsa(&self, ca: &Ca) {
        let pem = String::from_utf8(openssl(&["genrsa", "2048"], "the RSA client key"))
            .unwrap_or_else(|e| panic!("openssl genrsa wrote no text: {e}"));
        let key = KeyPair::from_pem(&pem).unwrap_or_else(|e| panic!("the RSA client key: {e}"));
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "pgc_cert");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = ca.sign(params, &key);
        self.write(CLIENT_RSA_CERT, &cert.pem());
        self.write_key(CLIENT_RSA_KEY, &pem);
    }

    /// [`CLIENT_V1_CERT`], by PostgreSQL's documented recipe: `openssl req -new` then `openssl x509 -req`
    /// without an extensions file, which OpenSSL 3.0 writes as X.509 v1. rcgen writes v3 only.
    fn client_v1(&self, root: &Ca) {
        const ROOT_KEY: &str = "root-signing.key";
        self.write_key(ROOT_KEY, &root.key.serialize_pem());
        let csr = self.path("client-v1.csr");
        let openssl = |args: &[&std::ffi::OsStr]| {
            let output = std::process::Command::new("openssl")
                .args(args)
                .output()
                .unwrap_or_else(|e| {
                    panic!("cannot run openssl (needed for the v1 certificate): {e}")
                });
            assert!(
                output.status.success(),
                "openssl {args:?}: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let key = self.path(CLIENT_KEY);
        openssl(&[
            "req".as_ref(),
            "-new".as_ref(),
            "-key".as_ref(),
            key.as_os_str(),
            "-subj".as_ref(),
            "/CN=pgc_cert".as_ref(),
            "-out".as_ref(),
            csr.as_os_str(),
        ]);
        let (ca, ca_key, out) = (
            self.path(ROOT),
            self.path(ROOT_KEY),
            self.path(CLIENT_V1_CERT),
        );
        openssl(&[
            "x509".as_ref(),
            "-req".as_ref(),
            "-in".as_ref(),
            csr.as_os_str(),
            "-CA".as_ref(),
            ca.as_os_str(),
            "-CAkey".as_ref(),
            ca_key.as_os_str(),
            "-set_serial".as_ref(),
            "4242".as_ref(),
            "-days".as_ref(),
            "2".as_ref(),
            "-out".as_ref(),
            out.as_os_str(),
        ]);
        for file in [csr, ca_key] {
            let _ = fs::remove_file(file);
        }
        // The point of the file: OpenSSL must have written a v1 certificate.
        let text = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&out)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("Version: 1 (0x0)"),
            "client-v1.crt is not v1:\n{text}"
        );
    }

    /// The encrypted keys of the module docs, made by openssl from [`CLIENT_KEY`] and [`CLIENT_RSA_KEY`].
    fn encrypted_keys(&self) {
        // (file, the key it encrypts, openssl's arguments, what the output must say it is)
        let forms: [(&str, &str, &[&str], &str); 10] = [
            (
                "client-encrypted.key",
                CLIENT_KEY,
                &["pkcs8", "-topk8", "-v2", "aes-256-cbc"],
                "ENCRYPTED",
            ),
            (
                "client-encrypted-des3.key",
                CLIENT_KEY,
                &["pkcs8", "-topk8", "-v2", "des3", "-v2prf", "hmacWithSHA1"],
                "ENCRYPTED",
            ),
            (
                "client-encrypted-pbe-sha1-3des.key",
                CLIENT_KEY,
                &["pkcs8", "-topk8", "-v1", "PBE-SHA1-3DES"],
                "ENCRYPTED",
            ),
            (
                "client-legacy-encrypted.key",
                CLIENT_KEY,
                &["ec", "-aes256"],
                "DEK-Info: AES-256-CBC,",
            ),
            (
                "client-legacy-aes128.key",
                CLIENT_KEY,
                &["ec", "-aes128"],
                "DEK-Info: AES-128-CBC,",
            ),
            (
                "client-legacy-des3.key",
                CLIENT_KEY,
                &["ec", "-des3"],
                "DEK-Info: DES-EDE3-CBC,",
            ),
            (
                "client-legacy-des.key",
                CLIENT_KEY,
                &["ec", "-des"],
                "DEK-Info: DES-CBC,",
            ),
            (
                "client-rsa-legacy-aes256.key",
                CLIENT_RSA_KEY,
                &["rsa", "-traditional", "-aes256"],
                "DEK-Info: AES-256-CBC,",
            ),
            (
                "client-rsa-legacy-des3.key",
                CLIENT_RSA_KEY,
                &["rsa", "-traditional", "-des3"],
                "DEK-Info: DES-EDE3-CBC,",
            ),
            (
                "client-encrypted-rsa.key",
                CLIENT_RSA_KEY,
                &["pkcs8", "-topk8", "-v2", "aes-128-cbc"],
                "ENCRYPTED",
            ),
        ];
        let pass = format!("pass:{KEY_PASSWORD}");
        for (file, key, args, form) in forms {
            let key = self.path(key);
            let key = key
                .to_str()
                .unwrap_or_else(|| panic!("not UTF-8: {}", key.display()));
            // Single DES is in OpenSSL 3's legacy provider; without it `-des` would write the key in clear.
            let providers = ["-provider", "legacy", "-provider", "default"];
            let args = [args, &providers, &["-in", key, "-passout", &pass]].concat();
            let encrypted = String::from_utf8(openssl(&args, file))
                .unwrap_or_else(|e| panic!("openssl wrote no text for {file}: {e}"));
            assert!(
                encrypted.contains(form),
                "{file} is not {form}:\n{encrypted}"
            );
            self.write_key(file, &encrypted);
        }
    }

    /// The revocation lists of the module docs.
    fn revocation_lists(&self, root: &Ca, wrong_root: &Ca) {
        let now = time::OffsetDateTime::now_utc();
        let day = time::Duration::days(1);
        let list = |ca: &Ca, revoked: &[u64], this_update, next_update| {
            let params = CertificateRevocationListParams {
                this_update,
                next_update,
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: revoked
                    .iter()
                    .map(|&serial| RevokedCertParams {
                        serial_number: SerialNumber::from(serial),
                        revocation_time: now - day,
                        reason_code: Some(RevocationReason::KeyCompromise),
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: KeyIdMethod::Sha256,
            };
            params
                .signed_by(&ca.cert, &ca.key)
                .and_then(|crl| crl.pem())
                .unwrap_or_else(|e| panic!("signing a revocation list: {e}"))
        };
        let revoked = list(root, &[GOOD_SERVER_SERIAL], now - day, now + day);
        let clean = list(root, &[4242_4242], now - day, now + day);
        self.write("revoked.crl", &revoked);
        self.write("clean.crl", &clean);
        self.write("expired.crl", &list(root, &[], now - 3 * day, now - day));
        self.write(
            "wrong-root.crl",
            &list(wrong_root, &[], now - day, now + day),
        );
        for (dir, contents) in [("crl-revoked", &revoked), ("crl-clean", &clean)] {
            fs::create_dir(self.path(dir)).unwrap_or_else(|e| panic!("cannot create {dir}: {e}"));
            self.write(&format!("{dir}/root.r0"), contents);
            self.write(&format!("{dir}/README"), "not a revocation list\n");
        }
    }

    fn write(&self, file: &str, contents: &str) {
        let path = self.path(file);
        fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// Writes a private key readable by its owner only (libpq refuses a group- or world-readable
    /// key file it owns).
    fn write_key(&self, file: &str, contents: &str) {
        self.write(file, contents);
        let path = self.path(file);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != ErrorKind::NotFound
        {
            eprintln!("[support] cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// A certificate authority: its self-signed certificate and the key that signs with it.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str, alg: &'static rcgen::SignatureAlgorithm) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = new_key(alg);
        let cert = params
            .self_signed(&key)
            .unwrap_or_else(|e| panic!("self-signing {name}: {e}"));
        Ca { cert, key }
    }

    fn sign(&self, mut params: CertificateParams, key: &KeyPair) -> Certificate {
        params.use_authority_key_identifier_extension = true;
        params
            .signed_by(key, &self.cert, &self.key)
            .unwrap_or_else(|e| panic!("signing a certificate: {e}"))
    }
}

/// Runs the openssl CLI and returns what it wrote; panics with its stderr if it fails (the TLS tests cannot run
/// without `what`).
fn openssl(args: &[&str], what: &str) -> Vec<u8> {
    let output = std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (needed for {what}): {e}"));
    assert!(
        output.status.success(),
        "openssl {args:?} ({what}): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn new_key(alg: &'static rcgen::SignatureAlgorithm) -> KeyPair {
    KeyPair::generate_for(alg).unwrap_or_else(|e| panic!("generating a key: {e}"))
}

/// A fresh dir under /tmp, named `wasi-pg-tls-<pid>-<nanos>`, readable by its owner only.
fn create_dir() -> PathBuf {
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = PathBuf::from(format!("/tmp/wasi-pg-tls-{}-{nanos}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", dir.display()));
                return dir;
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
}

// DER tags used by the SEC1 conversion.
const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const CONTEXT_0: u8 = 0xa0;
const CONTEXT_1: u8 = 0xa1;

/// Rewrites an EC key from PKCS#8 (`PRIVATE KEY`) to SEC1 (`EC PRIVATE KEY`, RFC 5915).
///
/// PKCS#8 wraps the SEC1 structure and names the curve in its algorithm identifier; ring leaves
/// the curve out of the inner structure, so it is put back as the `[0] parameters` field that
/// OpenSSL writes and needs. `None` if the input is not shaped that way.
fn pkcs8_to_sec1(pkcs8: &[u8]) -> Option<Vec<u8>> {
    let (tag, info, _) = der_read(pkcs8)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_version, rest) = der_expect(info, INTEGER)?;
    let (algorithm, rest) = der_expect(rest, SEQUENCE)?;
    let (private_key, _) = der_expect(rest, OCTET_STRING)?;
    // The algorithm identifier: the ecPublicKey OID, then the curve OID.
    let (_, _, after_algorithm_oid) = der_read(algorithm)?;
    let curve = after_algorithm_oid;

    let (tag, ec_key, _) = der_read(private_key)?;
    if tag != SEQUENCE {
        return None;
    }
    let (version, rest) = der_expect(ec_key, INTEGER)?;
    let (secret, mut rest) = der_expect(rest, OCTET_STRING)?;
    let mut public_key = None;
    while !rest.is_empty() {
        let (tag, content, next) = der_read(rest)?;
        if tag == CONTEXT_1 {
            public_key = Some(content);
        }
        rest = next;
    }

    let mut body = der_write(INTEGER, version);
    body.extend(der_write(OCTET_STRING, secret));
    body.extend(der_write(CONTEXT_0, curve));
    if let Some(public_key) = public_key {
        body.extend(der_write(CONTEXT_1, public_key));
    }
    Some(der_write(SEQUENCE, &body))
}

/// One DER element: (tag, content, what follows). Only single-byte tags, as in these keys.
fn der_read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
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

/// The next DER element if it has tag `want`: (content, what follows).
fn der_expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, content, rest) = der_read(input)?;
    (tag == want).then_some((content, rest))
}

fn der_write(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(u8::try_from(len).expect("BUG: a short length fits a byte"));
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let count = u8::try_from(bytes.len() - skip).expect("BUG: a length has at most 8 bytes");
        out.push(0x80 | count);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// PEM: base64 in 64-column lines between BEGIN and END lines naming `label`.
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let bytes = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let group = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let index = usize::try_from((group >> (18 - 6 * i)) & 0x3f)
                    .expect("BUG: a six-bit value fits usize");
                encoded.push(ALPHABET[index]);
            } else {
                encoded.push(b'=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
