//! What every accepted libpq keyword does, on each target: the audit of issue 22.
//!
//! A connection string written for `psql` must either get what it asks for or a clear error. So each keyword
//! of [`KEYWORDS`](super::settings::KEYWORDS) has an entry here that says whether it is honored, has no effect
//! by libpq's own rule (libpq ignores it too in the same situation), or is refused with
//! [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) naming the keyword. A keyword whose purpose is
//! safety (TLS, certificate and peer checks, authentication requirements, GSS encryption) is never "no
//! effect". The unit tests below hold the table to the keyword list, to the code (each refusal is tried) and to
//! the table in the README.
//!
//! Most refusals happen while parsing (`settings.rs`); those that depend on how the connection is opened are in
//! [`Config::refuse_unhonored`], which the connect functions call before anything is sent.

use super::Config;
use crate::Error;

/// What a keyword does on one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// The setting is applied.
    Honored,
    /// Accepted and without effect, by libpq's own rule.
    Ignored,
    /// Values that ask for something this client cannot do are refused with `ErrorKind::Unsupported`.
    Refused,
}

impl Effect {
    /// The word the README's audit table uses.
    #[cfg(test)]
    fn as_str(self) -> &'static str {
        match self {
            Effect::Honored => "honored",
            Effect::Ignored => "no effect",
            Effect::Refused => "refused",
        }
    }
}

/// One keyword's entry in the audit.
#[derive(Debug)]
#[cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "the tests read these to hold the table to the code"
    )
)]
pub(crate) struct KeywordAudit {
    /// The libpq keyword.
    pub(crate) keyword: &'static str,
    /// Whether its purpose is safety, so that it may never be [`Effect::Ignored`].
    pub(crate) safety: bool,
    /// Its effect natively (tokio).
    pub(crate) native: Effect,
    /// Its effect on wasm32-wasip2.
    pub(crate) wasi: Effect,
    /// A value that is accepted (the tests check that it is).
    pub(crate) accepted: &'static str,
    /// A value refused with `ErrorKind::Unsupported` (the tests check that it is); required for
    /// [`Effect::Refused`].
    pub(crate) refused: Option<&'static str>,
    /// Why, briefly; the README says it for users.
    pub(crate) why: &'static str,
}

use Effect::{Honored, Ignored, Refused};

/// Shorthand for an entry with the same effect on both targets.
const fn both(
    keyword: &'static str,
    safety: bool,
    effect: Effect,
    accepted: &'static str,
    refused: Option<&'static str>,
    why: &'static str,
) -> KeywordAudit {
    KeywordAudit {
        keyword,
        safety,
        native: effect,
        wasi: effect,
        accepted,
        refused,
        why,
    }
}

/// Every keyword of `KEYWORDS`, in the same order.
#[rustfmt::skip]
pub(crate) const AUDIT: &[KeywordAudit] = &[
    both("service", false, Refused, "", Some("mydb"), "pg_service.conf is not read"),
    both("user", false, Honored, "alice", None, "startup message"),
    both("password", false, Honored, "secret", None, "authentication"),
    both("passfile", false, Honored, "/tmp/pgpass", None, "read where the file is visible (preopened on WASI)"),
    both("channel_binding", true, Honored, "require", None, "SCRAM-SHA-256-PLUS over TLS"),
    both("connect_timeout", false, Honored, "10", None, "per attempt, at least 2 s"),
    both("dbname", false, Honored, "app", None, "startup message"),
    both("host", false, Honored, "db.example.com", None, "WASI has no Unix-domain sockets: a directory fails"),
    both("hostaddr", false, Honored, "127.0.0.1", None, "no name lookup"),
    both("port", false, Honored, "5433", None, "TCP port or socket file number"),
    both("client_encoding", false, Honored, "UTF8", Some("LATIN1"), "the client decodes UTF-8 only"),
    both("options", false, Honored, "-c search_path=app", None, "startup message"),
    both("application_name", false, Honored, "app", None, "startup message"),
    both("fallback_application_name", false, Honored, "app", None, "startup message"),
    both("keepalives", false, Honored, "0", None, "SO_KEEPALIVE / wasi:sockets keep-alive-enabled"),
    both("keepalives_idle", false, Honored, "30", None, "TCP_KEEPIDLE / keep-alive-idle-time"),
    both("keepalives_interval", false, Honored, "5", None, "TCP_KEEPINTVL / keep-alive-interval"),
    both("keepalives_count", false, Honored, "3", None, "TCP_KEEPCNT / keep-alive-count"),
    KeywordAudit {
        keyword: "tcp_user_timeout",
        safety: false,
        native: Honored,
        wasi: Ignored,
        accepted: "10000",
        refused: None,
        why: "TCP_USER_TIMEOUT where the platform has it; libpq ignores it elsewhere, and wasi:sockets has none",
    },
    both("sslmode", true, Honored, "verify-full", None, "TLS and certificate checks"),
    both("sslnegotiation", false, Honored, "direct", None, "direct TLS needs a mode that requires TLS"),
    both("sslcompression", false, Ignored, "1", None, "rustls has no TLS compression; OpenSSL has it off too"),
    both("sslcert", false, Honored, "/tmp/client.crt", None, "client certificate"),
    both("sslkey", false, Honored, "/tmp/client.key", None, "client key, permissions checked as libpq does"),
    both("sslcertmode", true, Honored, "require", None, "require fails unless a certificate was asked for and sent"),
    both("sslpassword", false, Honored, "secret", None, "decrypts an encrypted client key (PKCS#8 PBES2 or OpenSSL's legacy PEM form)"),
    both("sslrootcert", true, Honored, "/tmp/root.crt", None, "verifies the server; system means Mozilla's roots"),
    both("sslcrl", true, Honored, "/tmp/root.crl", None, "a revoked server certificate is refused"),
    both("sslcrldir", true, Honored, "/tmp/crl", None, "as sslcrl, from every file of the directory"),
    both("sslsni", false, Honored, "0", None, "server name indication"),
    both("requirepeer", true, Honored, "postgres", None, "Unix-domain sockets only, as in libpq"),
    both("require_auth", true, Honored, "scram-sha-256", None, "refuses other methods"),
    both("ssl_min_protocol_version", true, Honored, "TLSv1.3", None, "rustls never goes below TLS 1.2"),
    both("ssl_max_protocol_version", true, Honored, "TLSv1.2", None, "below TLSv1.2 fails with Unsupported"),
    both("min_protocol_version", false, Honored, "3.2", None, "refuses a server that negotiates lower"),
    both("max_protocol_version", false, Honored, "3.2", None, "the version requested"),
    both("gssencmode", true, Refused, "prefer", Some("require"), "no GSSAPI: disable and prefer connect without it"),
    both("krbsrvname", false, Ignored, "postgres", None, "only for GSSAPI authentication, which is refused"),
    both("gsslib", false, Ignored, "gssapi", None, "only for GSSAPI/SSPI authentication, which is refused"),
    both("gssdelegation", false, Ignored, "1", None, "no GSSAPI credentials exist to delegate"),
    both("replication", false, Honored, "database", None, "replication connections, logical and physical"),
    both("target_session_attrs", false, Honored, "read-write", None, "checked after startup"),
    both("load_balance_hosts", false, Honored, "random", None, "shuffles the hosts"),
    both("sslkeylogfile", false, Honored, "/tmp/keylog", None, "TLS secrets appended in NSS key log format"),
    // One key alone is a configuration error (both or neither), so the accepted value here is the empty one.
    both("scram_client_key", true, Honored, "", None, "SCRAM with keys instead of a password"),
    both("scram_server_key", true, Honored, "", None, "SCRAM with keys instead of a password"),
    both("oauth_issuer", true, Honored, "https://issuer.example", None, "OAUTHBEARER: the issuer the server must name"),
    both("oauth_client_id", false, Honored, "app", None, "passed to the token hook (Config::oauth_bearer_token)"),
    both("oauth_client_secret", false, Honored, "secret", None, "passed to the token hook, never shown"),
    both("oauth_scope", false, Honored, "openid", None, "passed to the token hook; wins over the server's scope"),
];

/// How a connection is opened, which decides what some settings can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    not(any(feature = "tokio", target_os = "wasi")),
    allow(dead_code, reason = "only the async client opens connections")
)]
pub(crate) enum Opening {
    /// The client dials the hosts of the configuration itself.
    Dialed,
    /// The caller handed in a transport it opened ([`Client::connect_with_transport`]).
    ///
    /// [`Client::connect_with_transport`]: crate::Client::connect_with_transport
    CallersTransport,
}

impl Config {
    /// Refuses, with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) naming the keyword, a safety
    /// setting this connection could not honor; called before anything is sent. A setting that has no effect
    /// here is named in a debug trace (never its value, which may be a secret such as `sslpassword`).
    #[cfg_attr(
        not(any(feature = "tokio", target_os = "wasi")),
        allow(dead_code, reason = "only the async client opens connections")
    )]
    pub(crate) fn refuse_unhonored(&self, opening: Opening) -> Result<(), Error> {
        if opening == Opening::CallersTransport
            && let Some(user) = self.get_raw("requirepeer")
        {
            return Err(Error::unsupported(format!(
                "connection option \"requirepeer\" ({user:?}) cannot be checked on a transport the caller \
                 opened: check the peer before connect_with_transport, or remove requirepeer"
            )));
        }
        for entry in AUDIT {
            let effect = if cfg!(target_os = "wasi") {
                entry.wasi
            } else {
                entry.native
            };
            if effect == Ignored && self.get_raw(entry.keyword).is_some() {
                tracing::debug!(
                    keyword = entry.keyword,
                    why = entry.why,
                    "connection option has no effect"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::settings::{KEYWORDS, Origin};
    use super::*;
    use crate::ErrorKind;

    /// The keyword list and the audit name the same keywords in the same order: adding a keyword without
    /// saying what it does fails here.
    #[test]
    fn every_accepted_keyword_is_audited() {
        let audited: Vec<&str> = AUDIT.iter().map(|entry| entry.keyword).collect();
        for keyword in KEYWORDS {
            assert!(
                audited.contains(keyword),
                "{keyword} is accepted but has no entry in config::audit::AUDIT"
            );
        }
        assert_eq!(audited, KEYWORDS, "AUDIT must follow KEYWORDS, in order");
    }

    #[test]
    fn a_safety_keyword_is_never_without_effect() {
        for entry in AUDIT.iter().filter(|entry| entry.safety) {
            assert_ne!(entry.native, Ignored, "{} natively", entry.keyword);
            assert_ne!(entry.wasi, Ignored, "{} on wasm32-wasip2", entry.keyword);
        }
    }

    /// A configuration with one keyword set, as a connection string would set it, checked as `connect` checks
    /// it before sending anything.
    fn configure(keyword: &'static str, value: &str) -> Result<Config, Error> {
        let mut config = Config::new();
        config.set_option(keyword, value, Origin::Conninfo { redact: false })?;
        config.check()?;
        config.refuse_unhonored(Opening::Dialed)?;
        Ok(config)
    }

    #[test]
    fn accepted_values_pass_and_refused_values_are_unsupported_naming_the_keyword() {
        for entry in AUDIT {
            let keyword = entry.keyword;
            // direct TLS is only allowed with a strict sslmode; the rest stand alone.
            if keyword == "sslnegotiation" {
                let mut config = configure("sslmode", "require").unwrap();
                config
                    .set_option(keyword, entry.accepted, Origin::Conninfo { redact: false })
                    .unwrap();
                config.check().unwrap();
            } else if let Err(e) = configure(keyword, entry.accepted) {
                panic!("{keyword}={:?} is refused: {e}", entry.accepted);
            }
            if entry.native == Refused || entry.wasi == Refused {
                assert!(entry.refused.is_some(), "{keyword}: name a refused value");
            }
            let Some(value) = entry.refused else {
                continue;
            };
            let err = configure(keyword, value).expect_err(keyword);
            assert_eq!(
                err.kind(),
                ErrorKind::Unsupported,
                "{keyword}={value}: {err}"
            );
            assert!(
                err.to_string().contains(&format!("\"{keyword}\"")),
                "{keyword}={value}: {err}"
            );
        }
    }

    #[test]
    fn requirepeer_is_refused_on_a_callers_transport() {
        let config = Config::parse("host=/run/postgresql requirepeer=postgres").unwrap();
        config.refuse_unhonored(Opening::Dialed).unwrap();
        let err = config
            .refuse_unhonored(Opening::CallersTransport)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("\"requirepeer\""), "{err}");
        Config::parse("host=/run/postgresql")
            .unwrap()
            .refuse_unhonored(Opening::CallersTransport)
            .unwrap();
    }

    /// The README's audit table has one row per keyword, in order, with the effects this table gives:
    /// `| \`keyword\` | native | wasm32-wasip2 | ... |`.
    #[test]
    fn the_readme_table_matches_the_audit() {
        let readme = include_str!("../../README.md");
        let rows: Vec<Vec<&str>> = readme
            .lines()
            .skip_while(|line| !line.starts_with("<!-- keyword audit -->"))
            .skip(1)
            .skip_while(|line| !line.starts_with("| `"))
            .take_while(|line| line.starts_with('|'))
            .map(|line| line.split('|').map(str::trim).collect())
            .collect();
        assert_eq!(rows.len(), AUDIT.len(), "one README row per keyword");
        for (row, entry) in rows.iter().zip(AUDIT) {
            assert_eq!(row[1], format!("`{}`", entry.keyword), "{row:?}");
            assert!(
                row[2].starts_with(entry.native.as_str()),
                "{}: README says natively {:?}, the audit {:?}",
                entry.keyword,
                row[2],
                entry.native
            );
            assert!(
                row[3].starts_with(entry.wasi.as_str()),
                "{}: README says on wasm {:?}, the audit {:?}",
                entry.keyword,
                row[3],
                entry.wasi
            );
        }
    }
}
