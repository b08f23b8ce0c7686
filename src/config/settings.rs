//! The libpq keywords: which exist, how each value is checked, and where it is kept.
//!
//! Connection strings and environment variables both end in [`Config::set_option`], so a value means the
//! same wherever it comes from; only the error message says where it came from.

use std::net::IpAddr;
use std::time::Duration;

use super::conninfo::{Pair, is_secret, is_space};
use super::modes::{
    ChannelBinding, Keyword, LoadBalanceHosts, Replication, SslMode, TargetSessionAttrs,
};
use super::require_auth::RequireAuth;
use super::{Config, DEFAULT_PORT, Host};
use crate::Error;

/// Every keyword libpq 17 accepts (plus those of libpq 18: the protocol versions, `sslkeylogfile`, the SCRAM
/// keys and OAuth), in libpq's order, libpq 18's additions at the end. Each must
/// have an entry in [`AUDIT`](super::audit::AUDIT), which says what it does on each target.
pub(super) const KEYWORDS: &[&str] = &[
    "service",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "dbname",
    "host",
    "hostaddr",
    "port",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslcertmode",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "require_auth",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "min_protocol_version",
    "max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "replication",
    "target_session_attrs",
    "load_balance_hosts",
    "sslkeylogfile",
    "scram_client_key",
    "scram_server_key",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
];

/// The TLS versions `ssl_min_protocol_version` and `ssl_max_protocol_version` accept, oldest first.
const TLS_VERSIONS: &[&str] = &["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"];

/// The keyword as a `'static` string, if libpq knows it.
pub(super) fn canonical(key: &str) -> Option<&'static str> {
    KEYWORDS.iter().copied().find(|k| *k == key)
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, Copy)]
pub(super) enum Origin<'a> {
    /// A connection string; `redact` when the value may hold part of a password (see [`Pair::redact`]).
    Conninfo {
        /// Keep the value out of error messages.
        redact: bool,
    },
    /// The named environment variable.
    Env(&'a str),
}

impl Origin<'_> {
    /// The error for an invalid `value` of `key`; `detail` says what is wrong with it.
    pub(super) fn invalid(self, key: &str, value: &str, detail: &str) -> Error {
        Error::config(self.describe("invalid", key, value, detail))
    }

    /// The error for a valid libpq `value` of `key` that asks for something this client cannot do
    /// ([`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)); `detail` says what.
    pub(super) fn unsupported(self, key: &str, value: &str, detail: &str) -> Error {
        Error::unsupported(self.describe("unsupported", key, value, detail))
    }

    /// "`adjective` value ... for connection option `key`: `detail`", with the value left out where it may
    /// be secret.
    fn describe(self, adjective: &str, key: &str, value: &str, detail: &str) -> String {
        match self {
            Origin::Conninfo { redact: true } => format!(
                "{adjective} value for connection option {key:?} (not shown, it may be part of a password: \
                 quote or percent-encode special characters in passwords)"
            ),
            // `detail` never quotes the value for these keys.
            _ if is_secret(key) => {
                format!("{adjective} value for connection option {key:?}: {detail}")
            }
            Origin::Conninfo { redact: false } => {
                format!("{adjective} value {value:?} for connection option {key:?}: {detail}")
            }
            Origin::Env(var) => format!(
                "{adjective} value {value:?} in environment variable {var} (connection option {key:?}): {detail}"
            ),
        }
    }
}

impl Config {
    /// Applies one pair from a connection string.
    pub(super) fn apply_pair(&mut self, pair: Pair) -> Result<(), Error> {
        let origin = Origin::Conninfo {
            redact: pair.redact,
        };
        let Some(key) = canonical(&pair.key) else {
            return Err(if pair.redact {
                Error::config(
                    "invalid connection option after a password (not shown, it may be part of the password: \
                     quote or percent-encode special characters in passwords)",
                )
            } else {
                Error::config(format!("invalid connection option {:?}", pair.key))
            });
        };
        if key == "password" {
            // Only the password may be bytes that are not UTF-8 (from a percent-encoded URI).
            if pair.value.contains(&0) {
                return Err(origin.invalid(key, "", "contains a NUL byte"));
            }
            self.set_password_value(&pair.value);
            return Ok(());
        }
        let value = String::from_utf8(pair.value).map_err(|e| {
            let shown = String::from_utf8_lossy(e.as_bytes()).into_owned();
            origin.invalid(key, &shown, "not valid UTF-8")
        })?;
        self.set_option(key, &value, origin)
    }

    /// Checks `value` for the libpq keyword `key` and stores it, replacing an earlier value (the last
    /// one wins, as in libpq). An empty value means "the default" but still counts as given, so the
    /// environment does not override it, as in libpq.
    pub(super) fn set_option(
        &mut self,
        key: &'static str,
        value: &str,
        origin: Origin<'_>,
    ) -> Result<(), Error> {
        if value.contains('\0') {
            return Err(origin.invalid(key, value, "contains a NUL byte"));
        }
        let invalid = |detail: &str| origin.invalid(key, value, detail);
        let unsupported = |detail: &str| origin.unsupported(key, value, detail);
        let empty = value.is_empty();
        match key {
            "host" => {
                self.hosts = if empty {
                    Vec::new()
                } else {
                    value.split(',').map(Host::from_name).collect()
                };
            }
            "hostaddr" => {
                self.hostaddrs = if empty {
                    Vec::new()
                } else {
                    value
                        .split(',')
                        .map(|entry| parse_hostaddr(entry).ok_or(entry))
                        .collect::<Result<_, _>>()
                        .map_err(|entry| {
                            invalid(&format!("{entry:?} is not a numeric IP address"))
                        })?
                };
            }
            "port" => {
                self.ports = if empty {
                    Vec::new()
                } else {
                    value
                        .split(',')
                        .map(|entry| parse_port(entry).ok_or(entry))
                        .collect::<Result<_, _>>()
                        .map_err(|entry| {
                            invalid(&format!("{entry:?} is not a port number (1 to 65535)"))
                        })?
                };
            }
            "user" => self.user = non_empty(value),
            "password" => self.set_password_value(value.as_bytes()),
            "dbname" => self.dbname = non_empty(value),
            "options" => self.options = non_empty(value),
            "application_name" => self.application_name = non_empty(value),
            "fallback_application_name" => self.fallback_application_name = non_empty(value),
            "connect_timeout" => {
                let seconds =
                    parse_int(value).ok_or_else(|| invalid("not an integer number of seconds"))?;
                let seconds =
                    u64::try_from(seconds).map_err(|_| invalid("must not be negative"))?;
                self.connect_timeout = Some(Duration::from_secs(seconds));
            }
            "sslmode" => self.ssl_mode = Some(keyword::<SslMode>(value, &invalid)?),
            "target_session_attrs" => {
                self.target_session_attrs = Some(keyword::<TargetSessionAttrs>(value, &invalid)?);
            }
            "load_balance_hosts" => {
                self.load_balance_hosts = Some(keyword::<LoadBalanceHosts>(value, &invalid)?)
            }
            "channel_binding" => {
                self.channel_binding = Some(keyword::<ChannelBinding>(value, &invalid)?)
            }
            "require_auth" => {
                self.require_auth =
                    RequireAuth::parse_list(value).map_err(|detail| invalid(&detail))?
            }
            "client_encoding" => {
                // The protocol layer decodes text as UTF-8; `auto` would take the encoding from the locale,
                // which for this client is UTF-8 too.
                let name: String = value
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                if !empty && !matches!(name.as_str(), "utf8" | "unicode" | "auto") {
                    return Err(unsupported("only UTF8 is supported"));
                }
                self.set_raw(key, value);
            }
            "keepalives" => {
                parse_int(value).ok_or_else(|| invalid("not an integer"))?;
                self.set_raw(key, value);
            }
            "keepalives_idle" | "keepalives_interval" | "keepalives_count" | "tcp_user_timeout" => {
                let n = parse_int(value).ok_or_else(|| invalid("not an integer"))?;
                if n < 0 {
                    return Err(invalid("must not be negative"));
                }
                self.set_raw(key, value);
            }
            "sslnegotiation" => {
                one_of(value, &["postgres", "direct"])
                    .ok_or_else(|| invalid("expected one of postgres, direct"))?;
                self.set_raw(key, value);
            }
            "sslcertmode" => {
                one_of(value, &["disable", "allow", "require"])
                    .ok_or_else(|| invalid("expected one of disable, allow, require"))?;
                self.set_raw(key, value);
            }
            "gssencmode" => {
                match value {
                    "disable" | "prefer" => {}
                    "require" => {
                        return Err(unsupported(
                            "GSSAPI encryption is not supported by this client",
                        ));
                    }
                    _ => return Err(invalid("expected one of disable, prefer, require")),
                }
                self.set_raw(key, value);
            }
            "ssl_min_protocol_version" | "ssl_max_protocol_version" => {
                if !empty && tls_version_rank(value).is_none() {
                    return Err(invalid("expected one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"));
                }
                self.set_raw(key, value);
            }
            "min_protocol_version" | "max_protocol_version" => {
                if !empty && protocol_version_rank(value).is_none() {
                    return Err(invalid("expected one of 3.0, 3.2, latest"));
                }
                self.set_raw(key, value);
            }
            "service" => {
                if !empty {
                    return Err(unsupported(
                        "connection service files (pg_service.conf) are not supported",
                    ));
                }
                self.set_raw(key, value);
            }
            "replication" => {
                if !empty {
                    keyword::<Replication>(value, &invalid)?;
                }
                self.set_raw(key, value);
            }
            "scram_client_key" | "scram_server_key" => {
                if !empty {
                    super::scram_keys::decode_key(value).map_err(invalid)?;
                }
                self.set_raw(key, value);
            }
            // Kept as text; libpq does not check these either. What each does is in `audit.rs`.
            _ => self.set_raw(key, value),
        }
        if empty {
            self.given_empty.insert(key);
        } else {
            self.given_empty.remove(key);
        }
        Ok(())
    }

    /// Stores a password; an empty one means "look in the password file", as in libpq.
    pub(super) fn set_password_value(&mut self, password: &[u8]) {
        if password.is_empty() {
            self.password = None;
            self.given_empty.insert("password");
        } else {
            self.password = Some(password.to_vec());
            self.given_empty.remove("password");
        }
    }

    fn set_raw(&mut self, key: &'static str, value: &str) {
        self.raw.insert(key, value.to_string());
    }

    /// Whether `key` has a value (possibly an empty one), so the environment must not supply it.
    pub(super) fn is_given(&self, key: &str) -> bool {
        if self.given_empty.contains(key) {
            return true;
        }
        match key {
            "host" => !self.hosts.is_empty(),
            "hostaddr" => !self.hostaddrs.is_empty(),
            "port" => !self.ports.is_empty(),
            "user" => self.user.is_some(),
            "password" => self.password.is_some(),
            "dbname" => self.dbname.is_some(),
            "options" => self.options.is_some(),
            "application_name" => self.application_name.is_some(),
            "fallback_application_name" => self.fallback_application_name.is_some(),
            "connect_timeout" => self.connect_timeout.is_some(),
            "sslmode" => self.ssl_mode.is_some(),
            "target_session_attrs" => self.target_session_attrs.is_some(),
            "load_balance_hosts" => self.load_balance_hosts.is_some(),
            "channel_binding" => self.channel_binding.is_some(),
            "require_auth" => self.require_auth.is_set(),
            _ => self.raw.contains_key(key),
        }
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

fn keyword<T: Keyword>(value: &str, invalid: &impl Fn(&str) -> Error) -> Result<T, Error> {
    T::from_keyword(value).ok_or_else(|| invalid(&format!("expected one of {}", T::EXPECTED)))
}

fn one_of(value: &str, accepted: &[&str]) -> Option<()> {
    accepted.contains(&value).then_some(())
}

/// An integer as libpq's `parse_int_param` reads it: surrounding whitespace allowed, `int` range.
pub(super) fn parse_int(value: &str) -> Option<i32> {
    value
        .trim_matches(|c: char| u8::try_from(c).is_ok_and(is_space))
        .parse()
        .ok()
}

/// One entry of a `port` list: empty means the default port.
fn parse_port(entry: &str) -> Option<u16> {
    if entry.is_empty() {
        return Some(DEFAULT_PORT);
    }
    parse_int(entry)
        .and_then(|port| u16::try_from(port).ok())
        .filter(|&port| port != 0)
}

/// One entry of a `hostaddr` list: empty means "look up the host name".
fn parse_hostaddr(entry: &str) -> Option<Option<IpAddr>> {
    if entry.is_empty() {
        return Some(None);
    }
    entry.parse().ok().map(Some)
}

/// The position of a TLS version in [`TLS_VERSIONS`]; libpq compares these without regard to case.
pub(super) fn tls_version_rank(value: &str) -> Option<usize> {
    TLS_VERSIONS
        .iter()
        .position(|v| v.eq_ignore_ascii_case(value))
}

/// The order of a wire protocol version; `latest` is 3.2 (3.1 was never used).
pub(super) fn protocol_version_rank(value: &str) -> Option<usize> {
    match value {
        "3.0" => Some(0),
        "3.2" | "latest" => Some(1),
        _ => None,
    }
}
