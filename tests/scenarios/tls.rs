//! TLS scenarios: every sslmode against servers with and without TLS, certificate and host name
//! verification, client certificates, channel binding, require_auth over TLS, protocol versions, and bulk
//! traffic through TLS.
//!
//! The contract is libpq's: each expectation is what libpq gives for the same connection string. Those
//! libpq 15 knows were checked with psql 15 against the same servers; `sslcertmode`, `require_auth` and
//! `sslrootcert=system` arrived in libpq 16 and follow its documentation. An expected failure names a
//! fragment its message must contain, matched without regard to case.
//!
//! The servers (see `tests/live.rs` and `tests/support/tls.rs`):
//! - [`Server::Plain`]: the main cluster, `ssl = off`.
//! - [`Server::Tls`]: `ssl = on`, a certificate for `localhost`, `127.0.0.1` and `::1` signed by `root.crt`;
//!   it requests a client certificate and checks it against `root.crt`.
//! - [`Server::NoName`]: `ssl = on`, a certificate signed by `root.crt` that names no host; requests no
//!   client certificate.
//! - [`Server::Ed25519`]: `ssl = on`, a certificate for the same names signed with Ed25519 by
//!   `ed25519-root.crt`, so tls-server-end-point channel binding is undefined; requests no client
//!   certificate.
//!
//! Each has the roles of the main cluster on `host` lines (usable with and without TLS) plus `pgc_cert`
//! (`cert` over TLS only), `pgc_sslonly` (TLS only) and `pgc_nossl` (plaintext only).

use std::time::Instant;

use wasi_pg_client::{Client, Config, ErrorKind, SimpleQueryMessage};

use super::{Check, Env, Outcome, Scenario};
use crate::two_target::THIS_TARGET;

/// The TLS servers and how to log in to them; travels to the wasm run as `LIVE_TLS_*` variables.
pub struct TlsEnv {
    /// [`Server::Tls`].
    pub port: u16,
    /// [`Server::NoName`].
    pub no_name_port: u16,
    /// [`Server::Ed25519`].
    pub ed25519_port: u16,
    /// The dir of PEM files written by `tests/support/tls.rs`, as the client sees it.
    pub certs: String,
    /// `user=... password=...` for each of [`Login::ALL`], in that order.
    pub logins: Vec<String>,
}

/// A login role of the test clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login {
    Trust,
    Password,
    Md5,
    Scram,
    /// `cert` authentication, over TLS only.
    Cert,
    /// SCRAM, over TLS only (`hostnossl ... reject`).
    SslOnly,
    /// SCRAM, in plaintext only (`hostssl ... reject`).
    NoSsl,
}

impl Login {
    pub const ALL: [Login; 7] = [
        Login::Trust,
        Login::Password,
        Login::Md5,
        Login::Scram,
        Login::Cert,
        Login::SslOnly,
        Login::NoSsl,
    ];

    fn var(self) -> &'static str {
        match self {
            Login::Trust => "LIVE_TLS_LOGIN_TRUST",
            Login::Password => "LIVE_TLS_LOGIN_PASSWORD",
            Login::Md5 => "LIVE_TLS_LOGIN_MD5",
            Login::Scram => "LIVE_TLS_LOGIN_SCRAM",
            Login::Cert => "LIVE_TLS_LOGIN_CERT",
            Login::SslOnly => "LIVE_TLS_LOGIN_SSLONLY",
            Login::NoSsl => "LIVE_TLS_LOGIN_NOSSL",
        }
    }
}

impl TlsEnv {
    /// Every field but `certs`, whose path differs inside the component (live.rs sets `LIVE_TLS_CERTS`).
    #[allow(dead_code)]
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("LIVE_TLS_PORT", self.port.to_string()),
            ("LIVE_TLS_NO_NAME_PORT", self.no_name_port.to_string()),
            ("LIVE_TLS_ED25519_PORT", self.ed25519_port.to_string()),
        ];
        vars.extend(
            Login::ALL
                .iter()
                .zip(&self.logins)
                .map(|(l, v)| (l.var(), v.clone())),
        );
        vars
    }

    #[allow(dead_code)]
    pub fn from_vars(var: impl Fn(&str) -> String) -> TlsEnv {
        TlsEnv {
            port: var("LIVE_TLS_PORT").parse().expect("LIVE_TLS_PORT"),
            no_name_port: var("LIVE_TLS_NO_NAME_PORT")
                .parse()
                .expect("LIVE_TLS_NO_NAME_PORT"),
            ed25519_port: var("LIVE_TLS_ED25519_PORT")
                .parse()
                .expect("LIVE_TLS_ED25519_PORT"),
            certs: var("LIVE_TLS_CERTS"),
            logins: Login::ALL.iter().map(|l| var(l.var())).collect(),
        }
    }

    fn login(&self, login: Login) -> &str {
        let index = Login::ALL
            .iter()
            .position(|l| *l == login)
            .expect("BUG: Login::ALL lists every login");
        &self.logins[index]
    }

    /// The path of a file in the certificate dir.
    fn file(&self, name: &str) -> String {
        format!("{}/{name}", self.certs)
    }
}

/// A test server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Plain,
    Tls,
    NoName,
    Ed25519,
}

impl Server {
    fn port(self, env: &Env) -> u16 {
        match self {
            Server::Plain => env.port,
            Server::Tls => env.tls.port,
            Server::NoName => env.tls.no_name_port,
            Server::Ed25519 => env.tls.ed25519_port,
        }
    }
}

/// What a connection attempt must give.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Connected, and `pg_stat_ssl` says the session is not encrypted.
    Plain,
    /// Connected, and `pg_stat_ssl` says the session is encrypted.
    Tls,
    /// `Client::connect` fails with an error containing this fragment.
    Fails(&'static str),
    /// `Config::parse` refuses the connection string (a config error) with this fragment.
    BadConfig(&'static str),
}

/// One connection attempt.
struct Case {
    server: Server,
    host: &'static str,
    login: Login,
    settings: String,
    expect: Expect,
}

/// A case against `127.0.0.1`.
fn case(server: Server, login: Login, settings: impl Into<String>, expect: Expect) -> Case {
    case_at(server, "127.0.0.1", login, settings, expect)
}

fn case_at(
    server: Server,
    host: &'static str,
    login: Login,
    settings: impl Into<String>,
    expect: Expect,
) -> Case {
    Case {
        server,
        host,
        login,
        settings: settings.into(),
        expect,
    }
}

impl Case {
    fn conninfo(&self, env: &Env) -> String {
        format!(
            "host={} port={} dbname=postgres connect_timeout=10 {} {}",
            self.host,
            self.server.port(env),
            env.tls.login(self.login),
            self.settings
        )
    }

    fn label(&self) -> String {
        format!(
            "{:?} host={} {:?} {}",
            self.server, self.host, self.login, self.settings
        )
    }
}

/// Runs every case (a failing one does not stop the others) and reports all that did not go as expected.
async fn check_cases(env: &Env, cases: &[Case]) -> Outcome {
    let mut failures = Vec::new();
    for case in cases {
        if let Err(e) = check_case(env, case).await {
            failures.push(e);
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} of {} cases failed:\n    {}",
        failures.len(),
        cases.len(),
        failures.join("\n    ")
    ))
}

async fn check_case(env: &Env, case: &Case) -> Result<(), String> {
    let label = case.label();
    let config = match (Config::parse(&case.conninfo(env)), case.expect) {
        (Err(e), Expect::BadConfig(fragment)) => {
            if e.kind() != ErrorKind::Config {
                return Err(format!("{label}: a {:?} error, not Config: {e}", e.kind()));
            }
            return expect_fragment(&label, &e, fragment);
        }
        (Ok(_), Expect::BadConfig(fragment)) => {
            return Err(format!(
                "{label}: parsed, expected a config error with {fragment:?}"
            ));
        }
        (Err(e), _) => return Err(format!("{label}: parse: {}", error_text(&e))),
        (Ok(config), _) => config,
    };
    match (Client::connect(&config).await, case.expect) {
        (Ok(mut client), Expect::Plain | Expect::Tls) => {
            let want = matches!(case.expect, Expect::Tls);
            let ssl = ssl_in_use(&mut client)
                .await
                .map_err(|e| format!("{label}: {e}"))?;
            if ssl != want {
                return Err(format!(
                    "{label}: connected with ssl={ssl}, expected {want}"
                ));
            }
            client.close().await.check(&label)
        }
        (Err(e), Expect::Fails(fragment)) => expect_fragment(&label, &e, fragment),
        (Ok(mut client), expect) => {
            let ssl = match ssl_in_use(&mut client).await {
                Ok(ssl) => ssl.to_string(),
                Err(e) => e,
            };
            Err(format!(
                "{label}: connected (ssl={ssl}), expected {expect:?}"
            ))
        }
        (Err(e), expect) => Err(format!(
            "{label}: expected {expect:?}, got: {}",
            error_text(&e)
        )),
    }
}

fn expect_fragment(label: &str, error: &wasi_pg_client::Error, fragment: &str) -> Outcome {
    let text = error_text(error);
    if text.to_lowercase().contains(&fragment.to_lowercase()) {
        Ok(())
    } else {
        Err(format!(
            "{label}: the error does not mention {fragment:?}: {text}"
        ))
    }
}

/// The error's message followed by its sources, so a fragment is found wherever the detail sits.
fn error_text(error: &wasi_pg_client::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(" | ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What the server says about this session's encryption.
async fn ssl_in_use(client: &mut Client) -> Result<bool, String> {
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .check("pg_stat_ssl")?;
    Ok(row.get(0))
}

const MODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// Every sslmode with `root.crt` as the root (so the verifying modes can verify), for each login.
fn sslmode_cases(env: &Env, server: Server, table: &[(Login, [Expect; 6])]) -> Vec<Case> {
    let root = env.tls.file("root.crt");
    let mut cases = Vec::new();
    for (login, expects) in table {
        for (mode, expect) in MODES.iter().zip(expects) {
            let settings = format!("sslmode={mode} sslrootcert={root}");
            cases.push(case(server, *login, settings, *expect));
        }
    }
    cases
}

/// libpq: `prefer` and `allow` settle on whatever the server lets in: `allow` tries plaintext first and
/// retries with TLS when rejected, `prefer` tries TLS first and retries in plaintext when rejected.
async fn tls_sslmode_against_tls_server(env: &Env) -> Outcome {
    use Expect::{Fails, Plain, Tls};
    let no_tls = Fails("no encryption");
    let tls_refused = Fails("SSL encryption");
    let table = [
        (Login::Scram, [Plain, Plain, Tls, Tls, Tls, Tls]),
        (Login::SslOnly, [no_tls, Tls, Tls, Tls, Tls, Tls]),
        (
            Login::NoSsl,
            [Plain, Plain, Plain, tls_refused, tls_refused, tls_refused],
        ),
    ];
    check_cases(env, &sslmode_cases(env, Server::Tls, &table)).await
}

/// Against `ssl = off` the modes that need TLS fail before any login; the others connect in plaintext.
async fn tls_sslmode_against_plain_server(env: &Env) -> Outcome {
    use Expect::{Fails, Plain};
    let unsupported = Fails("server does not support SSL");
    let no_tls = Fails("no encryption");
    let table = [
        (
            Login::Scram,
            [Plain, Plain, Plain, unsupported, unsupported, unsupported],
        ),
        (
            Login::SslOnly,
            [
                no_tls,
                no_tls,
                no_tls,
                unsupported,
                unsupported,
                unsupported,
            ],
        ),
        (
            Login::NoSsl,
            [Plain, Plain, Plain, unsupported, unsupported, unsupported],
        ),
    ];
    check_cases(env, &sslmode_cases(env, Server::Plain, &table)).await
}

/// libpq: `require` verifies the chain only when a root file exists (then like verify-ca); verify-ca and
/// verify-full need one (by default `~/.postgresql/root.crt`, which the tests expect to be absent). `prefer`
/// that fails verification falls back to plaintext.
async fn tls_root_certificate_files(env: &Env) -> Outcome {
    use Expect::{Fails, Plain, Tls};
    let root = env.tls.file("root.crt");
    let wrong_root = env.tls.file("wrong-root.crt");
    let missing = env.tls.file("missing.crt");
    let s = Login::Scram;
    let cases = [
        case(Server::Tls, s, "sslmode=require", Tls),
        case_at(
            Server::NoName,
            "wrong.example",
            s,
            "sslmode=require hostaddr=127.0.0.1",
            Tls,
        ),
        case(
            Server::Tls,
            s,
            "sslmode=verify-ca",
            Fails("root certificate"),
        ),
        case(
            Server::Tls,
            s,
            "sslmode=verify-full",
            Fails("root certificate"),
        ),
        case(
            Server::Tls,
            s,
            format!("sslmode=verify-ca sslrootcert={missing}"),
            Fails("missing.crt"),
        ),
        case(
            Server::Tls,
            s,
            format!("sslmode=verify-full sslrootcert={missing}"),
            Fails("missing.crt"),
        ),
        case(
            Server::Tls,
            s,
            format!("sslmode=require sslrootcert={missing}"),
            Tls,
        ),
        case(
            Server::Tls,
            s,
            format!("sslmode=require sslrootcert={wrong_root}"),
            Fails("certificate"),
        ),
        case(
            Server::Tls,
            s,
            format!("sslmode=verify-ca sslrootcert={wrong_root}"),
            Fails("certificate"),
        ),
        case(
            Server::Tls,
            s,
            format!("sslmode=prefer sslrootcert={wrong_root}"),
            Plain,
        ),
        case(
            Server::Tls,
            s,
            format!("sslmode=verify-ca sslrootcert={root}"),
            Tls,
        ),
    ];
    check_cases(env, &cases).await
}

/// verify-full checks the name the client was given (`host`, not `hostaddr`) against the certificate's
/// DNS and IP names; verify-ca and require with a root file do not check names.
async fn tls_host_name_verification(env: &Env) -> Outcome {
    use Expect::{Fails, Tls};
    let root = env.tls.file("root.crt");
    let full = format!("sslmode=verify-full sslrootcert={root}");
    let ca = format!("sslmode=verify-ca sslrootcert={root}");
    let require = format!("sslmode=require sslrootcert={root}");
    let s = Login::Scram;
    let wrong = "wrong.example";
    let cases = [
        case_at(Server::Tls, "localhost", s, &*full, Tls),
        case_at(Server::Tls, "127.0.0.1", s, &*full, Tls),
        case_at(Server::Tls, "::1", s, &*full, Tls),
        case_at(
            Server::Tls,
            wrong,
            s,
            format!("{full} hostaddr=127.0.0.1"),
            Fails(wrong),
        ),
        case_at(
            Server::Tls,
            wrong,
            s,
            format!("{ca} hostaddr=127.0.0.1"),
            Tls,
        ),
        case_at(
            Server::Tls,
            wrong,
            s,
            format!("{require} hostaddr=127.0.0.1"),
            Tls,
        ),
        case_at(Server::NoName, "localhost", s, &*full, Fails("localhost")),
        case_at(Server::NoName, "127.0.0.1", s, &*full, Fails("127.0.0.1")),
        case_at(Server::NoName, "localhost", s, &*ca, Tls),
    ];
    check_cases(env, &cases).await
}

/// `sslrootcert=system` trusts the public roots, not our private CA, and allows verify-full only.
async fn tls_system_root_store(env: &Env) -> Outcome {
    use Expect::{BadConfig, Fails};
    let s = Login::Scram;
    let cases = [
        case_at(
            Server::Tls,
            "localhost",
            s,
            "sslrootcert=system",
            Fails("certificate"),
        ),
        case_at(
            Server::Tls,
            "localhost",
            s,
            "sslrootcert=system sslmode=verify-full",
            Fails("certificate"),
        ),
        case_at(
            Server::Tls,
            "localhost",
            s,
            "sslrootcert=system sslmode=require",
            BadConfig("weak sslmode"),
        ),
        case_at(
            Server::Tls,
            "localhost",
            s,
            "sslrootcert=system sslmode=verify-ca",
            BadConfig("weak sslmode"),
        ),
    ];
    check_cases(env, &cases).await
}

/// `cert` authentication: the certificate's CN must be the user; the key may be PKCS#8 or SEC1; the certificate
/// may be X.509 v1 or v3; an encrypted key (PKCS#8, or OpenSSL's legacy PEM form on an EC or RSA key) is
/// decrypted with `sslpassword`.
async fn tls_client_certificates(env: &Env) -> Outcome {
    use Expect::{Fails, Tls};
    let t = &env.tls;
    let root = t.file("root.crt");
    let verify = format!("sslmode=verify-full sslrootcert={root}");
    let client = format!(
        "sslcert={} sslkey={}",
        t.file("client.crt"),
        t.file("client.key")
    );
    let client_sec1 = format!(
        "sslcert={} sslkey={}",
        t.file("client.crt"),
        t.file("client-sec1.key")
    );
    let other = format!(
        "sslcert={} sslkey={}",
        t.file("other.crt"),
        t.file("other.key")
    );
    // PostgreSQL's documented recipe (`openssl x509 -req`, no extensions) makes X.509 v1 certificates, which
    // the server and libpq accept.
    let client_v1 = format!(
        "sslcert={} sslkey={}",
        t.file("client-v1.crt"),
        t.file("client.key")
    );
    // A key that is not the certificate's is refused before the server sees anything.
    let mismatched = format!(
        "sslcert={} sslkey={}",
        t.file("client-v1.crt"),
        t.file("other.key")
    );
    // Encrypted keys, decrypted with sslpassword: PKCS#8 (PBES2) and OpenSSL's legacy PEM form, on the EC key
    // and on an RSA one (see tests/support/tls.rs for how openssl made each file).
    let with_key =
        |cert: &str, key: &str| format!("sslcert={} sslkey={}", t.file(cert), t.file(key));
    let encrypted = with_key("client.crt", "client-encrypted.key");
    let legacy = with_key("client.crt", "client-legacy-encrypted.key");
    let rsa_legacy = with_key("client-rsa.crt", "client-rsa-legacy-aes256.key");
    let pkcs8_des3 = with_key("client.crt", "client-encrypted-des3.key");
    let decrypted = [
        encrypted.clone(),
        with_key("client-rsa.crt", "client-encrypted-rsa.key"),
        pkcs8_des3.clone(),
        legacy.clone(),
        with_key("client.crt", "client-legacy-aes128.key"),
        with_key("client.crt", "client-legacy-des3.key"),
        with_key("client.crt", "client-legacy-des.key"),
        rsa_legacy.clone(),
        with_key("client-rsa.crt", "client-rsa-legacy-des3.key"),
    ];
    // PKCS#12's password-based encryption (OpenSSL 1.0's default for `pkcs8 -topk8`) stays unsupported.
    let pkcs12 = with_key("client.crt", "client-encrypted-pbe-sha1-3des.key");
    let password = "sslpassword=pgc-key-secret";
    let c = Login::Cert;
    let no_certificate = Fails("requires a valid client certificate");
    let mut cases = vec![
        case(Server::Tls, c, format!("{verify} {client}"), Tls),
        case(Server::Tls, c, format!("{verify} {client_sec1}"), Tls),
        case(Server::Tls, c, format!("sslmode=require {client}"), Tls),
        case(Server::Tls, c, format!("{verify} {client_v1}"), Tls),
        case(
            Server::Tls,
            c,
            format!("{verify} {pkcs12} {password}"),
            Fails("PBE-SHA1-3DES"),
        ),
        case(
            Server::Tls,
            c,
            format!("{verify} {mismatched}"),
            Fails("does not match its private key"),
        ),
        case(
            Server::Tls,
            c,
            format!("{verify} {other}"),
            Fails("certificate authentication failed"),
        ),
        case(Server::Tls, c, &*verify, no_certificate),
        case(
            Server::Tls,
            c,
            format!("{verify} {client} sslcertmode=disable"),
            no_certificate,
        ),
        case(
            Server::Tls,
            c,
            format!("sslmode=disable {client}"),
            Fails("no pg_hba.conf entry"),
        ),
        // A certificate the server does not need does no harm.
        case(Server::Tls, Login::Scram, format!("{verify} {client}"), Tls),
    ];
    for key in &decrypted {
        cases.push(case(
            Server::Tls,
            c,
            format!("{verify} {key} {password}"),
            Tls,
        ));
    }
    // A wrong or missing password fails before the server sees anything, naming sslpassword.
    for key in [&encrypted, &pkcs8_des3, &legacy, &rsa_legacy] {
        cases.push(case(
            Server::Tls,
            c,
            format!("{verify} {key} sslpassword=wrong"),
            Fails("\"sslpassword\": wrong password"),
        ));
        cases.push(case(
            Server::Tls,
            c,
            format!("{verify} {key}"),
            Fails("give its password with connection option \"sslpassword\""),
        ));
    }
    check_cases(env, &cases).await?;

    // The server saw the certificate's subject.
    let config =
        Config::parse(&case(Server::Tls, c, format!("{verify} {client}"), Tls).conninfo(env))
            .check("parse")?;
    let client = Client::connect(&config).await.check("connect")?;
    let dn: String = client
        .query_one(
            "SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .check("client_dn")?
        .get(0);
    ensure_eq!(dn, "/CN=pgc_cert");
    client.close().await.check("close")
}

/// libpq 16: `sslcertmode=require` fails unless the server asked for a certificate and one was sent.
async fn tls_sslcertmode_require(env: &Env) -> Outcome {
    use Expect::{Fails, Tls};
    let t = &env.tls;
    let client = format!(
        "sslcert={} sslkey={}",
        t.file("client.crt"),
        t.file("client.key")
    );
    let s = Login::Scram;
    let cases = [
        case(
            Server::Tls,
            s,
            format!("sslmode=require sslcertmode=require {client}"),
            Tls,
        ),
        case(
            Server::Tls,
            s,
            format!("sslmode=require sslcertmode=allow {client}"),
            Tls,
        ),
        // The server asked, but there was nothing to send.
        case(
            Server::Tls,
            s,
            "sslmode=require sslcertmode=require",
            Fails("sslcertmode"),
        ),
        // The server (no ssl_ca_file) never asked.
        case(
            Server::NoName,
            s,
            format!("sslmode=require sslcertmode=require {client}"),
            Fails("sslcertmode"),
        ),
        case(
            Server::NoName,
            s,
            format!("sslmode=require sslcertmode=allow {client}"),
            Tls,
        ),
    ];
    check_cases(env, &cases).await
}

/// `scram_client_key`/`scram_server_key` over TLS with `channel_binding=require`: the keyed exchange is
/// SCRAM-SHA-256-PLUS, bound to the server certificate.
async fn tls_scram_keys_with_channel_binding(env: &Env) -> Outcome {
    let t = &env.tls;
    let login = Config::parse(t.login(Login::Scram)).check("parse the login")?;
    let role = login.get_user().unwrap_or_default();
    let password = login
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .ok_or("the SCRAM login has no password")?;
    let at = |login: &str| {
        format!(
            "host=127.0.0.1 port={} dbname=postgres connect_timeout=10 {login}",
            env.tls.port
        )
    };
    let base = at(&format!(
        "user={role} sslmode=verify-ca sslrootcert={} channel_binding=require",
        t.file("root.crt")
    ));
    super::keywords::login_with_scram_keys(
        &at(&format!("{} sslmode=require", t.login(Login::Trust))),
        &base,
        role,
        &password,
        true,
    )
    .await
}

/// channel_binding=require needs SCRAM-SHA-256-PLUS, which only SCRAM over TLS offers.
async fn tls_channel_binding(env: &Env) -> Outcome {
    use Expect::{Fails, Tls};
    let t = &env.tls;
    let client = format!(
        "sslcert={} sslkey={}",
        t.file("client.crt"),
        t.file("client.key")
    );
    let required = Fails("channel_binding=require");
    let cases = [
        case(
            Server::Tls,
            Login::Scram,
            "sslmode=require channel_binding=require",
            Tls,
        ),
        case(
            Server::Tls,
            Login::Scram,
            "sslmode=prefer channel_binding=require",
            Tls,
        ),
        case(
            Server::Tls,
            Login::SslOnly,
            "sslmode=require channel_binding=require",
            Tls,
        ),
        case(
            Server::Tls,
            Login::Scram,
            "sslmode=require channel_binding=disable",
            Tls,
        ),
        case(
            Server::Tls,
            Login::Scram,
            "sslmode=require channel_binding=prefer",
            Tls,
        ),
        case(
            Server::Tls,
            Login::Md5,
            "sslmode=require channel_binding=require",
            required,
        ),
        case(
            Server::Tls,
            Login::Password,
            "sslmode=require channel_binding=require",
            required,
        ),
        case(
            Server::Tls,
            Login::Trust,
            "sslmode=require channel_binding=require",
            required,
        ),
        case(
            Server::Tls,
            Login::Cert,
            format!("sslmode=require channel_binding=require {client}"),
            required,
        ),
        case(
            Server::Tls,
            Login::Scram,
            "sslmode=disable channel_binding=require",
            required,
        ),
        case(
            Server::Plain,
            Login::Scram,
            "sslmode=prefer channel_binding=require",
            required,
        ),
    ];
    check_cases(env, &cases).await?;

    let config = Config::parse(
        &case(
            Server::Tls,
            Login::Scram,
            "sslmode=require channel_binding=require",
            Tls,
        )
        .conninfo(env),
    )
    .check("parse")?;
    let c = Client::connect(&config).await.check("connect")?;
    let one: i32 = c.query_one("SELECT 1", &[]).await.check("SELECT 1")?.get(0);
    ensure_eq!(one, 1);
    let messages = c.simple_query("SELECT 2").await.check("simple SELECT 2")?;
    ensure!(
        messages
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("2"))),
        "no row 2 in {} messages",
        messages.len()
    );
    c.close().await.check("close")
}

/// An Ed25519 signature has no hash for tls-server-end-point (RFC 5929), so SCRAM-SHA-256-PLUS cannot be
/// used. Like libpq, the client refuses rather than silently dropping to SCRAM without binding, unless
/// channel binding is disabled; the chain itself verifies against the Ed25519 root.
async fn tls_channel_binding_undefined_for_ed25519(env: &Env) -> Outcome {
    use Expect::{Fails, Tls};
    let ed_root = env.tls.file("ed25519-root.crt");
    let root = env.tls.file("root.crt");
    let s = Login::Scram;
    let e = Server::Ed25519;
    let cases = [
        case(e, s, "sslmode=require", Fails("Ed25519")),
        case(
            e,
            s,
            "sslmode=require channel_binding=require",
            Fails("Ed25519"),
        ),
        case(e, s, "sslmode=require channel_binding=disable", Tls),
        case(
            e,
            s,
            format!("sslmode=verify-full sslrootcert={ed_root} channel_binding=disable"),
            Tls,
        ),
        case(
            e,
            s,
            format!("sslmode=verify-full sslrootcert={root} channel_binding=disable"),
            Fails("certificate"),
        ),
        // No SCRAM, so no binding to attempt.
        case(e, Login::Md5, "sslmode=require", Tls),
    ];
    check_cases(env, &cases).await
}

/// require_auth decides the same over TLS as in plaintext; `cert` logins count as `none`.
async fn tls_require_auth(env: &Env) -> Outcome {
    use Expect::{Fails, Tls};
    let t = &env.tls;
    let client = format!(
        "sslcert={} sslkey={}",
        t.file("client.crt"),
        t.file("client.key")
    );
    let refused = Fails("require_auth");
    let cases = [
        case(
            Server::Tls,
            Login::Md5,
            "sslmode=require require_auth=scram-sha-256",
            refused,
        ),
        case(
            Server::Tls,
            Login::Md5,
            "sslmode=require require_auth=md5",
            Tls,
        ),
        case(
            Server::Tls,
            Login::Password,
            "sslmode=require require_auth=!password",
            refused,
        ),
        case(
            Server::Tls,
            Login::Password,
            "sslmode=require require_auth=password",
            Tls,
        ),
        case(
            Server::Tls,
            Login::Scram,
            "sslmode=require require_auth=!password",
            Tls,
        ),
        case(
            Server::Tls,
            Login::Scram,
            "sslmode=require require_auth=scram-sha-256 channel_binding=require",
            Tls,
        ),
        case(
            Server::Tls,
            Login::Trust,
            "sslmode=require require_auth=!none",
            refused,
        ),
        case(
            Server::Tls,
            Login::Cert,
            format!("sslmode=require require_auth=none {client}"),
            Tls,
        ),
        case(
            Server::Tls,
            Login::Cert,
            format!("sslmode=require require_auth=scram-sha-256 {client}"),
            refused,
        ),
    ];
    check_cases(env, &cases).await
}

/// The protocol version bounds are honoured (PostgreSQL 15 speaks TLS 1.2 and 1.3), and SNI can be off.
async fn tls_protocol_versions_and_sni(env: &Env) -> Outcome {
    let root = env.tls.file("root.crt");
    for (settings, version) in [
        ("ssl_min_protocol_version=TLSv1.3", "TLSv1.3"),
        ("ssl_max_protocol_version=TLSv1.2", "TLSv1.2"),
        (
            "ssl_min_protocol_version=TLSv1.2 ssl_max_protocol_version=TLSv1.2",
            "TLSv1.2",
        ),
        ("", "TLSv1.3"),
    ] {
        let conninfo = case(
            Server::Tls,
            Login::Scram,
            format!("sslmode=verify-full sslrootcert={root} {settings}"),
            Expect::Tls,
        )
        .conninfo(env);
        let config = Config::parse(&conninfo).check(settings)?;
        let c = Client::connect(&config).await.check(settings)?;
        let got: String = c
            .query_one(
                "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .check("pg_stat_ssl.version")?
            .get(0);
        ensure!(got == version, "{settings:?}: {got}, expected {version}");
        c.close().await.check("close")?;
    }
    let cases = [
        case_at(
            Server::Tls,
            "localhost",
            Login::Scram,
            format!("sslmode=verify-full sslrootcert={root} sslsni=0"),
            Expect::Tls,
        ),
        case_at(
            Server::Tls,
            "localhost",
            Login::Scram,
            format!("sslmode=verify-full sslrootcert={root} sslsni=1"),
            Expect::Tls,
        ),
    ];
    check_cases(env, &cases).await
}

/// A TLS maximum below 1.2 is refused before anything is sent, with `ErrorKind::Unsupported` naming it.
async fn tls_unhonored_safety_keywords_refused(env: &Env) -> Outcome {
    let settings = "sslmode=require ssl_max_protocol_version=TLSv1.1";
    let conninfo = case(Server::Tls, Login::Scram, settings, Expect::Tls).conninfo(env);
    let config = Config::parse(&conninfo).check(settings)?;
    match Client::connect(&config).await {
        Ok(_) => Err(format!("{settings}: connected, expected Unsupported")),
        Err(e) => {
            ensure!(
                e.kind() == ErrorKind::Unsupported
                    && e.to_string().contains("ssl_max_protocol_version"),
                "{settings}: expected Unsupported naming ssl_max_protocol_version, got {:?}: {e}",
                e.kind()
            );
            Ok(())
        }
    }
}

/// `sslkeylogfile` (libpq 18): each session's secrets are appended in the NSS key log format, TLS 1.3 and 1.2
/// alike (through the preopened directory on wasm); a file that cannot be opened is an error.
async fn tls_key_log_file(env: &Env) -> Outcome {
    let t = &env.tls;
    let path = t.file(&format!("keylog-{}.txt", THIS_TARGET.replace('+', "-")));
    let _ = std::fs::remove_file(&path);
    let verify = format!("sslmode=verify-full sslrootcert={}", t.file("root.crt"));
    for (version, label) in [
        ("TLSv1.3", "CLIENT_TRAFFIC_SECRET_0"),
        ("TLSv1.2", "CLIENT_RANDOM"),
    ] {
        let settings = format!(
            "{verify} ssl_min_protocol_version={version} ssl_max_protocol_version={version} sslkeylogfile={path}"
        );
        let conninfo = case(Server::Tls, Login::Scram, settings, Expect::Tls).conninfo(env);
        let client = Client::connect(&Config::parse(&conninfo).check("parse")?)
            .await
            .check(version)?;
        client.close().await.check("close")?;
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(label)).collect();
        ensure!(!lines.is_empty(), "{version}: no {label} line in {text:?}");
        for line in &lines {
            let fields: Vec<&str> = line.split(' ').collect();
            ensure!(
                fields.len() == 3
                    && fields[1].len() == 64
                    && fields[1..]
                        .iter()
                        .all(|f| f.bytes().all(|b| b.is_ascii_hexdigit())),
                "{version}: not an NSS key log line: {line:?}"
            );
        }
    }
    let lines = std::fs::read_to_string(&path)
        .map_err(|e| format!("{path}: {e}"))?
        .lines()
        .count();
    let _ = std::fs::remove_file(&path);
    let unopenable = format!("{verify} sslkeylogfile={}", t.file("no-such-dir/keylog"));
    let conninfo = case(Server::Tls, Login::Scram, unopenable, Expect::Tls).conninfo(env);
    match Client::connect(&Config::parse(&conninfo).check("parse")?).await {
        Ok(_) => Err("connected with a key log file that cannot be opened".to_string()),
        Err(e) => {
            ensure!(e.to_string().contains("key logging file"), "{e}");
            Ok(())
        }
    }?;
    ensure!(lines >= 6, "only {lines} lines for two sessions");
    Ok(())
}

/// `sslcrl` and `sslcrldir`, as libpq (OpenSSL with `CRL_CHECK_ALL`) treats them: the server's certificate
/// revoked by its CA's list is refused in every verifying mode, from a file or a directory; a list that
/// revokes something else lets it in; a list from another CA only (no word on this certificate) or an expired
/// list refuses it; without root certificates nothing is verified, so the list is not read; `prefer` falls
/// back to plaintext when verification fails; with `sslmode=disable` the list does nothing.
async fn tls_revocation_lists(env: &Env) -> Outcome {
    use Expect::{Fails, Plain, Tls};
    let t = &env.tls;
    let root = t.file("root.crt");
    let s = Login::Scram;
    let revoked = Fails("revoked");
    let mut cases = Vec::new();
    for mode in ["require", "verify-ca", "verify-full"] {
        let verify = format!("sslmode={mode} sslrootcert={root}");
        cases.extend([
            case(
                Server::Tls,
                s,
                format!("{verify} sslcrl={}", t.file("revoked.crl")),
                revoked,
            ),
            case(
                Server::Tls,
                s,
                format!("{verify} sslcrldir={}", t.file("crl-revoked")),
                revoked,
            ),
            case(
                Server::Tls,
                s,
                format!("{verify} sslcrl={}", t.file("clean.crl")),
                Tls,
            ),
            case(
                Server::Tls,
                s,
                format!("{verify} sslcrldir={}", t.file("crl-clean")),
                Tls,
            ),
            case(
                Server::Tls,
                s,
                format!("{verify} sslcrl={}", t.file("wrong-root.crl")),
                Fails("unknown revocation status"),
            ),
            case(
                Server::Tls,
                s,
                format!("{verify} sslcrl={}", t.file("expired.crl")),
                Fails("expired"),
            ),
        ]);
    }
    cases.extend([
        // Both given, each read: the file's list is another CA's, the directory's revokes.
        case(
            Server::Tls,
            s,
            format!(
                "sslmode=verify-full sslrootcert={root} sslcrl={} sslcrldir={}",
                t.file("wrong-root.crl"),
                t.file("crl-revoked")
            ),
            revoked,
        ),
        // The certificate of another server from the same CA is not revoked.
        case_at(
            Server::NoName,
            "127.0.0.1",
            s,
            format!(
                "sslmode=verify-ca sslrootcert={root} sslcrl={}",
                t.file("revoked.crl")
            ),
            Tls,
        ),
        case(
            Server::Tls,
            s,
            format!(
                "sslmode=prefer sslrootcert={root} sslcrl={}",
                t.file("revoked.crl")
            ),
            Plain,
        ),
        case(
            Server::Tls,
            s,
            format!("sslmode=require sslcrl={}", t.file("revoked.crl")),
            Tls,
        ),
        case(
            Server::Plain,
            s,
            "sslmode=disable sslcrl=/nonexistent.crl",
            Plain,
        ),
        case(
            Server::Tls,
            s,
            format!(
                "sslmode=verify-ca sslrootcert={root} sslcrl={}",
                t.file("missing.crl")
            ),
            Fails("missing.crl"),
        ),
        case(
            Server::Tls,
            s,
            format!("sslmode=verify-ca sslrootcert={root} sslcrl={root}"),
            Fails("holds no PEM X509 CRL"),
        ),
    ]);
    check_cases(env, &cases).await
}

/// The cipher suite the server picked, as `pg_stat_ssl` names it: ChaCha20-Poly1305 under wasmtime, where the
/// client leaves AES-256-GCM out and offers ChaCha20 first (no AES instructions in wasm), AES-GCM natively.
async fn tls_cipher_suite_per_target(env: &Env) -> Outcome {
    let wasm = cfg!(target_family = "wasm");
    for settings in ["", "ssl_max_protocol_version=TLSv1.2"] {
        let conninfo = case(
            Server::Tls,
            Login::Scram,
            format!("sslmode=require {settings}"),
            Expect::Tls,
        )
        .conninfo(env);
        let config = Config::parse(&conninfo).check(settings)?;
        let c = Client::connect(&config).await.check(settings)?;
        let cipher: String = c
            .query_one(
                "SELECT cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .check("pg_stat_ssl.cipher")?
            .get(0);
        let expected = if wasm { "CHACHA20" } else { "AES" };
        ensure!(
            cipher.contains(expected),
            "{settings:?}: {cipher}, expected a {expected} suite"
        );
        c.close().await.check("close")?;
    }
    Ok(())
}

/// Milliseconds since `start`, for printed figures.
fn millis(start: Instant) -> u128 {
    start.elapsed().as_millis()
}

async fn connect_tls(env: &Env, sslmode: &str) -> Result<Client, String> {
    let conninfo = case(
        Server::Tls,
        Login::Scram,
        format!("sslmode={sslmode}"),
        Expect::Tls,
    )
    .conninfo(env);
    let config = Config::parse(&conninfo).check("parse")?;
    let mut client = Client::connect(&config).await.check("connect")?;
    let ssl = ssl_in_use(&mut client).await?;
    ensure!(
        ssl == (sslmode != "disable"),
        "sslmode={sslmode}: ssl={ssl}"
    );
    Ok(client)
}

/// 64 MiB out as a parameter and back as a column, through TLS records.
async fn tls_bulk_bytea_64mib(env: &Env) -> Outcome {
    const LEN: usize = 64 * 1024 * 1024;
    // xorshift64: incompressible, and cheap on both targets.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut data = Vec::with_capacity(LEN);
    while data.len() < LEN {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    let c = connect_tls(env, "require").await?;
    let start = Instant::now();
    let row = c
        .query_one("SELECT $1::bytea, length($1::bytea)", &[&data])
        .await
        .check("bytea round trip")?;
    let elapsed = millis(start);
    let length: i32 = row.get(1);
    ensure_eq!(usize::try_from(length).unwrap_or(0), LEN);
    let back: &[u8] = row.get(0);
    ensure!(back.len() == LEN, "{} bytes came back", back.len());
    ensure!(back == data.as_slice(), "the bytes that came back differ");
    println!("{THIS_TARGET}: tls: 64 MiB bytea round trip in {elapsed} ms");
    drop(row);
    c.close().await.check("close")
}

/// Streams a million rows and checks their count and sum.
async fn count_million_rows(client: &mut Client) -> Result<u128, String> {
    let start = Instant::now();
    let mut stream = client
        .simple_query_stream("SELECT g FROM generate_series(1, 1000000) g")
        .await
        .check("start")?;
    let (mut rows, mut sum) = (0u64, 0i64);
    while let Some(message) = stream.next().await.check("next")? {
        if let SimpleQueryMessage::Row(row) = message {
            rows += 1;
            sum += row
                .get(0)
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or("a row without a number")?;
        }
    }
    let elapsed = millis(start);
    ensure_eq!(rows, 1_000_000);
    ensure_eq!(sum, 500_000_500_000);
    Ok(elapsed)
}

/// A million rows through TLS and through plaintext from the same server; the timings are printed, not
/// judged.
async fn tls_million_rows_vs_plaintext(env: &Env) -> Outcome {
    let mut tls = connect_tls(env, "require").await?;
    let tls_ms = count_million_rows(&mut tls).await?;
    tls.close().await.check("close")?;
    let mut plain = connect_tls(env, "disable").await?;
    let plain_ms = count_million_rows(&mut plain).await?;
    plain.close().await.check("close")?;
    println!(
        "{}: tls: 1000000 rows in {tls_ms} ms, plain in {plain_ms} ms",
        THIS_TARGET
    );
    Ok(())
}

/// The TLS scenarios, in the order they run.
pub(super) fn scenarios() -> Vec<(&'static str, Scenario)> {
    scenarios![
        tls_sslmode_against_tls_server,
        tls_sslmode_against_plain_server,
        tls_root_certificate_files,
        tls_host_name_verification,
        tls_system_root_store,
        tls_client_certificates,
        tls_sslcertmode_require,
        tls_channel_binding,
        tls_channel_binding_undefined_for_ed25519,
        tls_scram_keys_with_channel_binding,
        tls_require_auth,
        tls_protocol_versions_and_sni,
        tls_unhonored_safety_keywords_refused,
        tls_revocation_lists,
        tls_key_log_file,
        tls_cipher_suite_per_target,
        tls_bulk_bytea_64mib,
        tls_million_rows_vs_plaintext,
    ]
}
