//! SASL OAUTHBEARER (RFC 7628) as PostgreSQL 18 speaks it, for the startup machine.
//!
//! The client's initial response carries `auth=Bearer <token>`, or an empty `auth=` that asks the server
//! which authorization server and scope it trusts (discovery). A server that refuses either answers with an
//! AuthenticationSASLContinue holding a JSON object (`status`, `scope`, `openid-configuration`); the client
//! must answer with a single `\x01` byte and the server then fails the connection with an ErrorResponse. A
//! server never sends AuthenticationSASLFinal for this mechanism: success is AuthenticationOk right away.
//!
//! The issuer checks follow libpq 18: the discovery document the server names must be an `https` well-known
//! URI whose issuer is `oauth_issuer`, byte for byte (RFC 9207's advice against mix-ups).

use std::fmt;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::{DbError, Error};

/// The SASL mechanism name.
pub(crate) const OAUTHBEARER: &str = "OAUTHBEARER";

/// The largest error challenge accepted: PostgreSQL's is about a hundred bytes; anything near this is not an
/// OAUTHBEARER error object.
pub(crate) const MAX_SERVER_ERROR_LEN: usize = 16 * 1024;

/// RFC 7628's key-value separator, and the whole of the client's answer to an error challenge.
const KVSEP: u8 = 0x01;

/// The two well-known suffixes of discovery documents (OpenID Connect Discovery 1.0, RFC 8414).
const WELL_KNOWN: &str = "/.well-known/";
const WELL_KNOWN_SUFFIXES: [&str; 2] = ["openid-configuration", "oauth-authorization-server"];

/// What the startup knows about OAuth before the server asks for it.
#[derive(Debug, Default)]
pub(crate) struct OAuthParams {
    /// The token to present (on the connection after discovery, once the hook gave one). Taken when sent.
    pub(crate) token: Option<BearerToken>,
    /// `oauth_issuer`.
    pub(crate) issuer: Option<String>,
    /// Whether the application gave a token hook; without one, the client cannot do OAuth at all.
    pub(crate) hook: bool,
    /// Whether the channel keeps a token secret: TLS, or a Unix-domain socket.
    pub(crate) protected: bool,
    /// The discovery document an earlier connection's server named; this server must name the same.
    pub(crate) known_discovery: Option<String>,
}

/// A bearer token; `Debug` never shows it.
pub(crate) struct BearerToken(String);

impl BearerToken {
    /// Checks a token from the application's hook: RFC 6750's `b64token` (letters, digits, `-._~+/`, then
    /// `=` padding), which also keeps the `\x01` separators of the SASL message unambiguous. The error never
    /// quotes the token.
    pub(crate) fn new(token: String) -> Result<BearerToken, Error> {
        let body = token.trim_end_matches('=');
        let valid = !body.is_empty()
            && body.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
            });
        if !valid {
            return Err(Error::auth(format!(
                "the OAuth token hook returned {} that is not a bearer token (RFC 6750: letters, digits, \
                 -._~+/ and trailing =)",
                if token.is_empty() {
                    "an empty string".to_string()
                } else {
                    format!("{} characters", token.chars().count())
                }
            )));
        }
        Ok(BearerToken(token))
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// What a server advertised in answer to discovery: what the hook needs to obtain a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthDiscovery {
    /// The discovery document of the authorization server, already checked against `oauth_issuer`.
    pub(crate) openid_configuration: String,
    /// The scope the server asks for, if it said.
    pub(crate) scope: Option<String>,
}

/// An OAUTHBEARER exchange whose initial response went out.
pub(crate) struct Exchange {
    /// `oauth_issuer` as an issuer identifier.
    issuer_id: String,
    /// The discovery document known before the server spoke (from `oauth_issuer` or an earlier connection).
    known_discovery: Option<String>,
    /// Whether a token was presented (else this was discovery).
    with_token: bool,
}

/// Starts the exchange: checks that OAuth can run at all, then writes the SASLInitialResponse, with the token
/// if there is one (taken from `params`) and an empty discovery request otherwise.
pub(crate) fn begin(params: &mut OAuthParams, out: &mut BytesMut) -> Result<Exchange, Error> {
    if !params.hook && params.token.is_none() {
        return Err(Error::auth(
            "the server requires OAuth authentication (SASL OAUTHBEARER), but no token hook is set: give one \
             with Config::oauth_bearer_token (this client has no built-in OAuth flow)",
        ));
    }
    let Some(issuer) = params.issuer.as_deref() else {
        return Err(Error::auth(
            "the server requires OAuth authentication, but oauth_issuer is not set: set it to the issuer \
             the server trusts",
        ));
    };
    if !params.protected {
        return Err(Error::auth(
            "the server requires OAuth authentication over a connection without TLS: a bearer token is only \
             sent over TLS or a Unix-domain socket (use sslmode=require or stronger)",
        ));
    }
    let issuer_id = issuer_identifier(issuer)
        .map_err(|why| Error::auth(format!("invalid oauth_issuer: {why}")))?;
    // libpq reads an oauth_issuer holding a well-known part as the discovery document itself.
    let from_issuer = issuer.contains(WELL_KNOWN).then(|| issuer.to_string());
    let known_discovery = params.known_discovery.clone().or(from_issuer);
    let token = params.token.take();
    let mut response = b"n,,\x01auth=".to_vec();
    if let Some(BearerToken(token)) = &token {
        response.extend_from_slice(b"Bearer ");
        response.extend_from_slice(token.as_bytes());
    }
    response.extend_from_slice(&[KVSEP, KVSEP]);
    frontend::sasl_initial_response(OAUTHBEARER, &response, out)
        .map_err(|e| Error::auth(format!("cannot encode the OAUTHBEARER response: {e}")))?;
    Ok(Exchange {
        issuer_id,
        known_discovery,
        with_token: token.is_some(),
    })
}

impl Exchange {
    /// Whether a token was presented.
    pub(crate) fn with_token(&self) -> bool {
        self.with_token
    }

    /// Takes the server's error challenge: checks it and writes the `\x01` answer RFC 7628 requires. The
    /// connection then ends with the server's ErrorResponse, which [`Rejection::into_error`] reports.
    pub(crate) fn server_error(&self, data: &[u8], out: &mut BytesMut) -> Result<Rejection, Error> {
        let error = ServerError::parse(data)?;
        if let Some(uri) = &error.openid_configuration {
            let issuer = issuer_from_well_known_uri(uri).map_err(|why| {
                Error::auth(format!("the server's OAuth discovery document: {why}"))
            })?;
            if issuer != self.issuer_id {
                return Err(Error::auth(format!(
                    "the server's discovery document at {uri:?} (issuer {issuer:?}) is incompatible with \
                     oauth_issuer ({:?})",
                    self.issuer_id
                )));
            }
            if let Some(known) = self.known_discovery.as_ref().filter(|known| *known != uri) {
                return Err(Error::auth(format!(
                    "the server's discovery document has moved to {uri:?} (previous location was {known:?})"
                )));
            }
        }
        let Some(status) = error.status else {
            return Err(Error::protocol(
                "the server sent an OAUTHBEARER error without a status",
            ));
        };
        frontend::sasl_response(&[KVSEP], out)
            .map_err(|e| Error::auth(format!("cannot encode the OAUTHBEARER response: {e}")))?;
        let openid_configuration = error
            .openid_configuration
            .or_else(|| self.known_discovery.clone());
        Ok(Rejection {
            status,
            scope: error.scope,
            openid_configuration,
            with_token: self.with_token,
        })
    }
}

/// A server's refusal, waiting for the ErrorResponse that ends the connection.
pub(crate) struct Rejection {
    status: String,
    scope: Option<String>,
    openid_configuration: Option<String>,
    with_token: bool,
}

impl Rejection {
    /// The error of the connection, with the server's ErrorResponse as its source; and, when this was
    /// discovery that the server answered as PostgreSQL does (`invalid_token`, with a discovery document),
    /// what the token hook needs for the next connection.
    pub(crate) fn into_error(self, db: DbError) -> (Error, Option<OAuthDiscovery>) {
        let said = self.describe();
        if self.with_token {
            let e = Error::auth_caused_by(
                format!("the server rejected the OAuth bearer token ({said})"),
                db,
            );
            return (e, None);
        }
        if self.status != "invalid_token" {
            let e =
                Error::auth_caused_by(format!("the server refused OAuth discovery ({said})"), db);
            return (e, None);
        }
        let Some(openid_configuration) = self.openid_configuration else {
            let e = Error::auth_caused_by(
                format!(
                    "the server requires OAuth authentication, but named no discovery document ({said})"
                ),
                db,
            );
            return (e, None);
        };
        let e = Error::auth_caused_by(
            format!("the server requires an OAuth bearer token ({said})"),
            db,
        );
        let discovery = OAuthDiscovery {
            openid_configuration,
            scope: self.scope,
        };
        (e, Some(discovery))
    }

    /// `status "...", scope "...", openid-configuration "..."`, with the fields the server sent.
    fn describe(&self) -> String {
        let mut said = format!("status {:?}", self.status);
        if let Some(scope) = &self.scope {
            said.push_str(&format!(", scope {scope:?}"));
        }
        if let Some(uri) = &self.openid_configuration {
            said.push_str(&format!(", openid-configuration {uri:?}"));
        }
        said
    }
}

/// The fields of an OAUTHBEARER error object (RFC 7628 section 3.2.2) that PostgreSQL sends; others are
/// ignored, as libpq does.
#[derive(Debug, Default, PartialEq, Eq)]
struct ServerError {
    status: Option<String>,
    scope: Option<String>,
    openid_configuration: Option<String>,
}

impl ServerError {
    /// Parses the challenge strictly: bounded size, no NUL byte, UTF-8, JSON (serde_json bounds the nesting),
    /// a top-level object whose known fields are strings given once.
    fn parse(data: &[u8]) -> Result<ServerError, Error> {
        let invalid = |why: &dyn fmt::Display| {
            Error::protocol(format!("invalid OAUTHBEARER error from the server: {why}"))
        };
        if data.len() > MAX_SERVER_ERROR_LEN {
            return Err(invalid(&format_args!(
                "{} bytes, above the limit of {MAX_SERVER_ERROR_LEN}",
                data.len()
            )));
        }
        if data.contains(&0) {
            return Err(invalid(&"it contains a NUL byte"));
        }
        let text =
            std::str::from_utf8(data).map_err(|e| invalid(&format_args!("not UTF-8: {e}")))?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let error = deserializer
            .deserialize_map(ServerErrorVisitor)
            .map_err(|e| invalid(&e))?;
        deserializer.end().map_err(|e| invalid(&e))?;
        Ok(error)
    }
}

struct ServerErrorVisitor;

impl<'de> Visitor<'de> for ServerErrorVisitor {
    type Value = ServerError;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ServerError, A::Error> {
        let mut error = ServerError::default();
        while let Some(key) = map.next_key::<String>()? {
            let slot = match key.as_str() {
                "status" => &mut error.status,
                "scope" => &mut error.scope,
                "openid-configuration" => &mut error.openid_configuration,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(de::Error::custom(format!("field {key:?} is duplicated")));
            }
            let value = map
                .next_value::<String>()
                .map_err(|e| de::Error::custom(format!("field {key:?} must be a string ({e})")))?;
            *slot = Some(value);
        }
        Ok(error)
    }
}

/// The issuer identifier `oauth_issuer` names: itself, or the issuer of the discovery document it gives.
pub(crate) fn issuer_identifier(oauth_issuer: &str) -> Result<String, String> {
    if oauth_issuer.contains(WELL_KNOWN) {
        issuer_from_well_known_uri(oauth_issuer)
    } else {
        Ok(oauth_issuer.to_string())
    }
}

/// The issuer identifier of a discovery document's URI, by RFC 8414's rules as libpq 18 applies them: `https`
/// only, no query or fragment, a `/.well-known/openid-configuration` or `/.well-known/oauth-authorization-server`
/// segment either at the end of the path (OpenID style) or at its start (RFC 8414 style); the issuer is the URI
/// without that segment. The error says why a URI does not qualify.
pub(crate) fn issuer_from_well_known_uri(uri: &str) -> Result<String, String> {
    const HTTPS: &str = "https://";
    let scheme = uri
        .get(..HTTPS.len())
        .filter(|s| s.eq_ignore_ascii_case(HTTPS));
    let (Some(scheme), Some(rest)) = (scheme, uri.get(HTTPS.len()..)) else {
        return Err(format!("{uri:?} must use HTTPS"));
    };
    if rest.contains(['?', '#']) {
        return Err(format!(
            "{uri:?} must not contain query or fragment components"
        ));
    }
    let Some(start) = rest.find(WELL_KNOWN) else {
        return Err(format!("{uri:?} is not a .well-known URI"));
    };
    let after = &rest[start + WELL_KNOWN.len()..];
    let Some(suffix) = WELL_KNOWN_SUFFIXES.iter().find(|suffix| {
        after
            .strip_prefix(**suffix)
            .is_some_and(|tail| tail.is_empty() || tail.starts_with('/'))
    }) else {
        return Err(format!("{uri:?} uses an unsupported .well-known suffix"));
    };
    let tail = &after[suffix.len()..];
    // Not at the end of the path: then it must open the path.
    if !tail.is_empty() && rest.find('/') != Some(start) {
        return Err(format!("{uri:?} uses an invalid format"));
    }
    Ok(format!("{scheme}{}{tail}", &rest[..start]))
}

#[cfg(test)]
#[path = "oauth_tests.rs"]
mod tests;
