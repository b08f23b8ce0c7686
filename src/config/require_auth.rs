//! libpq's `require_auth`: which authentication methods the server may (or may not) ask for.

use crate::Error;

/// An authentication method the server can request, as named by `require_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// Cleartext password (`password`).
    Password,
    /// MD5-hashed password (`md5`).
    Md5,
    /// GSSAPI (`gss`).
    Gss,
    /// SSPI (`sspi`).
    Sspi,
    /// SCRAM-SHA-256 over SASL (`scram-sha-256`).
    ScramSha256,
    /// OAuth bearer tokens over SASL OAUTHBEARER (`oauth`, PostgreSQL 18).
    OAuth,
    /// No authentication exchange at all: the server answers AuthenticationOk at once (`none`; for example
    /// `trust` or `cert` in pg_hba.conf).
    None,
}

impl AuthMethod {
    /// The name `require_auth` uses for this method.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::Gss => "gss",
            AuthMethod::Sspi => "sspi",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::OAuth => "oauth",
            AuthMethod::None => "none",
        }
    }

    fn from_name(name: &str) -> Option<AuthMethod> {
        Some(match name {
            "password" => AuthMethod::Password,
            "md5" => AuthMethod::Md5,
            "gss" => AuthMethod::Gss,
            "sspi" => AuthMethod::Sspi,
            "scram-sha-256" => AuthMethod::ScramSha256,
            "oauth" => AuthMethod::OAuth,
            "none" => AuthMethod::None,
            _ => return None,
        })
    }
}

/// Which authentication methods the server may use (libpq's `require_auth`).
///
/// Either a list of allowed methods (`scram-sha-256,none`) or a list of refused ones (`!password,!md5`);
/// the default, an empty setting, allows everything.
///
/// ```
/// use wasi_pg_client::config::{AuthMethod, RequireAuth};
///
/// let only_scram = RequireAuth::parse("scram-sha-256")?;
/// assert!(only_scram.allows(AuthMethod::ScramSha256));
/// assert!(!only_scram.allows(AuthMethod::Md5));
/// // The server must authenticate us; a bare AuthenticationOk is refused.
/// assert!(only_scram.requires_authentication());
///
/// let no_cleartext = RequireAuth::parse("!password")?;
/// assert!(no_cleartext.allows(AuthMethod::Md5));
/// assert!(!no_cleartext.allows(AuthMethod::Password));
/// # Ok::<(), wasi_pg_client::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequireAuth {
    /// Whether `methods` lists refused methods rather than allowed ones.
    negated: bool,
    /// Empty when no requirement is set; a parsed list always has at least one entry.
    methods: Vec<AuthMethod>,
}

impl RequireAuth {
    /// Parses a comma-separated list like libpq does: every method may be prefixed with `!` (refused), but
    /// allowed and refused methods cannot be mixed, and a method cannot be listed twice. An empty string sets no
    /// requirement.
    pub fn parse(s: &str) -> Result<RequireAuth, Error> {
        RequireAuth::parse_list(s)
            .map_err(|detail| Error::config(format!("invalid require_auth value {s:?}: {detail}")))
    }

    /// Parses the list; the error is the reason without the whole value, for the caller to frame.
    pub(super) fn parse_list(s: &str) -> Result<RequireAuth, String> {
        let mut requirement = RequireAuth::default();
        if s.is_empty() {
            return Ok(requirement);
        }
        for (index, part) in s.split(',').enumerate() {
            let name = match part.strip_prefix('!') {
                Some(name) => {
                    if index > 0 && !requirement.negated {
                        return Err(format!(
                            "negative method {part:?} cannot be mixed with non-negative methods"
                        ));
                    }
                    requirement.negated = true;
                    name
                }
                None if requirement.negated => {
                    return Err(format!(
                        "method {part:?} cannot be mixed with negative methods"
                    ));
                }
                None => part,
            };
            let method = AuthMethod::from_name(name).ok_or_else(|| {
                format!("unknown method {name:?} (expected password, md5, gss, sspi, scram-sha-256, oauth or none)")
            })?;
            // A repeated method is probably a typo in a setting where typos are risky, so libpq refuses it.
            if requirement.methods.contains(&method) {
                return Err(format!("method {part:?} is specified more than once"));
            }
            requirement.methods.push(method);
        }
        Ok(requirement)
    }

    /// Whether the server may use `method`: a listed method if the list is positive, an unlisted one if it
    /// is negative, anything if no requirement is set.
    pub fn allows(&self, method: AuthMethod) -> bool {
        if self.methods.is_empty() {
            return true;
        }
        self.methods.contains(&method) != self.negated
    }

    /// Whether a requirement is set.
    pub fn is_set(&self) -> bool {
        !self.methods.is_empty()
    }

    /// Whether the server must authenticate the client, so that an AuthenticationOk without any exchange
    /// before it has to be refused: a positive list without `none`, or a negative list with `!none`.
    pub fn requires_authentication(&self) -> bool {
        self.is_set() && !self.allows(AuthMethod::None)
    }

    /// The methods listed, in order, without their `!`.
    pub fn methods(&self) -> &[AuthMethod] {
        &self.methods
    }

    /// Whether the list names refused methods (`!md5`) rather than allowed ones.
    pub fn is_negated(&self) -> bool {
        self.negated
    }
}
