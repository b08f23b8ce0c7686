//! Startup and authentication: from StartupMessage to the first ReadyForQuery.
//!
//! The flow is an explicit state enum; [`Startup::handle`] is the one place that moves it, and every message
//! that does not fit the current state is a protocol error. The TLS layer gives [`StartupParams`] the
//! channel-binding data of the server certificate before the exchange starts; which SCRAM variant is used, and
//! which requests are refused, follows `channel_binding` exactly as libpq does.
//!
//! Also what both APIs take from a [`Config`] for the startup: the StartupMessage parameters
//! ([`startup_parameters`]), the [`StartupParams`] and the core's [`Limits`].

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::frame::Frame;
use super::oauth::{self, OAuthDiscovery, OAuthParams};
use super::scram_keys::{Binding, KeyedScram};
use super::wire::{self, NegotiateProtocolVersion};
use super::{BackendKey, Limits};
use crate::config::{AuthMethod, ChannelBinding, ProtocolVersion, RequireAuth, ScramKeys};
use crate::{Config, DbError, Error};

/// What the startup needs to know; built by the client from a [`Config`](crate::Config).
pub(crate) struct StartupParams {
    /// Parameters of the StartupMessage (`user`, `database`, `application_name`, ...).
    pub(crate) params: Vec<(String, String)>,
    /// The password, if one is configured. Dropped as soon as authentication ends.
    pub(crate) password: Option<Vec<u8>>,
    /// `scram_client_key` and `scram_server_key`: used instead of the password for SCRAM. Dropped as soon as
    /// authentication ends.
    pub(crate) scram_keys: Option<ScramKeys>,
    /// Which authentication methods the server may ask for.
    pub(crate) require_auth: RequireAuth,
    /// Whether SCRAM channel binding is used, and what the TLS layer provides for it.
    pub(crate) channel_binding: ChannelBindingPolicy,
    /// The highest SCRAM iteration count accepted from the server.
    pub(crate) scram_max_iterations: u32,
    /// The lowest protocol version the server may negotiate down to.
    pub(crate) min_protocol_version: ProtocolVersion,
    /// The protocol version the StartupMessage asks for.
    pub(crate) max_protocol_version: ProtocolVersion,
    /// What OAUTHBEARER needs, if the server asks for it.
    pub(crate) oauth: OAuthParams,
}

/// The `channel_binding` setting and what the connection can bind to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelBindingPolicy {
    /// `disable`, `prefer` or `require`.
    pub(crate) mode: ChannelBinding,
    /// None: the connection has no TLS. Some(Ok(data)): tls-server-end-point binding data (the hash of the
    /// server certificate, computed by the TLS layer). Some(Err(reason)): TLS is in use but the binding is
    /// undefined for this certificate (e.g. Ed25519), with a human reason.
    pub(crate) tls: Option<Result<Vec<u8>, String>>,
}

/// Where the startup is.
enum State {
    /// Waiting for the server's first Authentication request, or the result of a password we sent.
    AwaitingAuth,
    /// A SCRAM exchange is in progress; `final_sent` says whether the client-final message went out, `bound`
    /// whether it is SCRAM-SHA-256-PLUS.
    Sasl {
        scram: Box<Scram>,
        final_sent: bool,
        bound: bool,
    },
    /// Waiting for AuthenticationOk after a SCRAM exchange completed (server signature verified); `bound` says
    /// whether the exchange was bound to the TLS channel.
    AwaitingSaslOk { bound: bool },
    /// The OAUTHBEARER initial response went out: AuthenticationOk, or an error challenge, comes next.
    OAuth { exchange: Box<oauth::Exchange> },
    /// The server refused the OAUTHBEARER response and we answered its challenge: only its ErrorResponse may
    /// come.
    OAuthRejected { rejection: Box<oauth::Rejection> },
    /// Authenticated: collecting BackendKeyData and ParameterStatus until ReadyForQuery.
    Authenticated,
}

/// One SCRAM-SHA-256 exchange, from the password (postgres-protocol) or from the keys (`scram_keys.rs`).
enum Scram {
    Password(ScramSha256),
    Keys(KeyedScram),
}

impl Scram {
    fn message(&self) -> &[u8] {
        match self {
            Scram::Password(scram) => scram.message(),
            Scram::Keys(scram) => scram.message(),
        }
    }

    /// Takes the server-first message; `max_iterations` bounds the PBKDF2 work a password costs.
    fn update(&mut self, server_first: &[u8], max_iterations: u32) -> Result<(), Error> {
        match self {
            Scram::Password(scram) => {
                // The count drives PBKDF2 before the server has proved anything: check it before any work.
                let iterations = scram_iteration_count(server_first)?;
                if iterations > u64::from(max_iterations) {
                    return Err(Error::auth(format!(
                        "the server asked for {iterations} SCRAM iterations, above the limit of \
                         {max_iterations} (scram_max_iterations)"
                    )));
                }
                scram
                    .update(server_first)
                    .map_err(|e| Error::auth(format!("invalid SCRAM server-first message: {e}")))
            }
            // No PBKDF2 runs with keys, so the count costs nothing.
            Scram::Keys(scram) => scram.update(server_first),
        }
    }

    /// Verifies the server signature: a server that does not know the password (or ServerKey) cannot pass.
    fn finish(&mut self, server_final: &[u8]) -> Result<(), Error> {
        match self {
            Scram::Password(scram) => scram
                .finish(server_final)
                .map_err(|e| Error::auth(format!("SCRAM server verification failed: {e}"))),
            Scram::Keys(scram) => scram.finish(server_final),
        }
    }
}

/// The result of feeding one message to the startup.
pub(crate) enum Step {
    /// Keep reading.
    Continue,
    /// The server negotiated the protocol down to this version.
    Negotiated(ProtocolVersion),
    /// A ParameterStatus arrived (name, value).
    Parameter(String, String),
    /// BackendKeyData arrived.
    BackendKey(BackendKey),
    /// A notice arrived.
    Notice(Box<DbError>),
    /// The first ReadyForQuery arrived, with its transaction status byte.
    Ready(u8),
}

/// The startup state machine.
pub(crate) struct Startup {
    state: State,
    password: Option<Vec<u8>>,
    scram_keys: Option<ScramKeys>,
    user: String,
    require_auth: RequireAuth,
    /// The authentication method the server used, recorded for `require_auth` and diagnostics.
    used: Option<AuthMethod>,
    channel_binding: ChannelBindingPolicy,
    scram_max_iterations: u32,
    min_version: ProtocolVersion,
    /// The version asked for in the StartupMessage.
    requested_version: ProtocolVersion,
    /// Whether NegotiateProtocolVersion may still come: only before anything else but notices.
    negotiation_open: bool,
    oauth: OAuthParams,
    /// What the server answered to OAuth discovery, once its ErrorResponse ended the exchange.
    discovered: Option<OAuthDiscovery>,
}

impl Startup {
    /// Starts a startup, writing the StartupMessage into `out`.
    pub(crate) fn begin(params: StartupParams, out: &mut BytesMut) -> Result<Startup, Error> {
        let user = params
            .params
            .iter()
            .find(|(k, _)| k == "user")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::config("no user name given"))?;
        if params.min_protocol_version > params.max_protocol_version {
            return Err(Error::config(format!(
                "min_protocol_version {} is above max_protocol_version {}",
                params.min_protocol_version.as_str(),
                params.max_protocol_version.as_str()
            )));
        }
        wire::startup_message(params.max_protocol_version, &params.params, out)?;
        Ok(Startup {
            state: State::AwaitingAuth,
            password: params.password,
            scram_keys: params.scram_keys,
            user,
            require_auth: params.require_auth,
            used: None,
            channel_binding: params.channel_binding,
            scram_max_iterations: params.scram_max_iterations,
            min_version: params.min_protocol_version,
            requested_version: params.max_protocol_version,
            negotiation_open: true,
            oauth: params.oauth,
            discovered: None,
        })
    }

    /// Feeds one backend message; responses (password, SASL) are written to `out`.
    pub(crate) fn handle(&mut self, frame: Frame, out: &mut BytesMut) -> Result<Step, Error> {
        let message = match frame {
            Frame::Message(message) => message,
            Frame::NegotiateProtocolVersion(negotiate) => return self.negotiate(&negotiate),
            Frame::BackendKeyData(key) => {
                return match self.state {
                    State::Authenticated => Ok(Step::BackendKey(key)),
                    ref state => Err(Error::protocol(format!(
                        "unexpected BackendKeyData during {}",
                        state.describe()
                    ))),
                };
            }
            Frame::DataRow(_) | Frame::CopyData(_) | Frame::CopyBothResponse => {
                let name = match frame {
                    Frame::DataRow(_) => "DataRow",
                    Frame::CopyData(_) => "CopyData",
                    _ => "CopyBothResponse",
                };
                return Err(Error::protocol(format!(
                    "unexpected {name} during {}",
                    self.state.describe()
                )));
            }
        };
        match message {
            Message::ErrorResponse(body) => {
                let db = DbError::parse(&mut body.fields())?;
                // After a refused OAUTHBEARER exchange the ErrorResponse is expected: the error says what the
                // server's challenge said, and discovery leaves what the token hook needs.
                if let State::OAuthRejected { rejection } =
                    std::mem::replace(&mut self.state, State::AwaitingAuth)
                {
                    let (error, discovered) = rejection.into_error(db);
                    self.discovered = discovered;
                    return Err(error);
                }
                return Err(Error::db(db).broken());
            }
            Message::NoticeResponse(body) => {
                return Ok(Step::Notice(Box::new(DbError::parse(&mut body.fields())?)));
            }
            _ => {}
        }
        // The server has moved past the version negotiation.
        self.negotiation_open = false;
        let state = std::mem::replace(&mut self.state, State::AwaitingAuth);
        let (next, step) = self.transition(state, message, out)?;
        self.state = next;
        Ok(step)
    }

    /// Takes the server's answer to a version it does not speak; only the first message may be one.
    fn negotiate(&mut self, negotiate: &NegotiateProtocolVersion) -> Result<Step, Error> {
        if !self.negotiation_open {
            return Err(Error::protocol(format!(
                "unexpected NegotiateProtocolVersion during {}",
                self.state.describe()
            )));
        }
        self.negotiation_open = false;
        let version = negotiate.accept(self.requested_version, self.min_version)?;
        Ok(Step::Negotiated(version))
    }

    /// The single checked transition function: the current state and a message give the next state.
    fn transition(
        &mut self,
        state: State,
        message: Message,
        out: &mut BytesMut,
    ) -> Result<(State, Step), Error> {
        match (state, message) {
            (State::AwaitingAuth, Message::AuthenticationOk) => {
                self.check_auth_ok()?;
                self.check_bound(false)?;
                self.password = None;
                self.scram_keys = None;
                Ok((State::Authenticated, Step::Continue))
            }
            (State::AwaitingAuth, Message::AuthenticationCleartextPassword) => {
                self.allow(AuthMethod::Password)?;
                self.refuse_unbound("password")?;
                let password = self.password_or_error()?;
                frontend::password_message(password, out).map_err(encode_error)?;
                self.password = None;
                Ok((State::AwaitingAuth, Step::Continue))
            }
            (State::AwaitingAuth, Message::AuthenticationMd5Password(body)) => {
                self.allow(AuthMethod::Md5)?;
                self.refuse_unbound("MD5")?;
                let password = self.password_or_error()?;
                let hash = md5_hash(self.user.as_bytes(), password, body.salt());
                frontend::password_message(hash.as_bytes(), out).map_err(encode_error)?;
                self.password = None;
                Ok((State::AwaitingAuth, Step::Continue))
            }
            (State::AwaitingAuth, Message::AuthenticationSasl(body)) => {
                let mut has_scram = false;
                let mut has_plus = false;
                let mut has_oauth = false;
                let mut mechanisms = body.mechanisms();
                while let Some(mechanism) = mechanisms.next().map_err(Error::malformed)? {
                    has_scram |= mechanism == sasl::SCRAM_SHA_256;
                    has_plus |= mechanism == sasl::SCRAM_SHA_256_PLUS;
                    has_oauth |= mechanism == oauth::OAUTHBEARER;
                }
                // As in libpq, SCRAM wins when the server offers both.
                if has_oauth && !has_scram && !has_plus {
                    self.allow(AuthMethod::OAuth)?;
                    self.refuse_unbound("OAuth")?;
                    let exchange = oauth::begin(&mut self.oauth, out)?;
                    self.password = None;
                    self.scram_keys = None;
                    let exchange = Box::new(exchange);
                    return Ok((State::OAuth { exchange }, Step::Continue));
                }
                self.allow(AuthMethod::ScramSha256)?;
                let (mechanism, binding) = self.choose_mechanism(has_scram, has_plus)?;
                let bound = mechanism == sasl::SCRAM_SHA_256_PLUS;
                // As in libpq, the keys are used instead of the password when both are given.
                let scram = match self.scram_keys.take() {
                    Some(keys) => Scram::Keys(KeyedScram::new(keys, binding)),
                    None => Scram::Password(ScramSha256::new(
                        self.password_or_error()?,
                        binding.to_sasl(),
                    )),
                };
                frontend::sasl_initial_response(mechanism, scram.message(), out)
                    .map_err(encode_error)?;
                self.password = None;
                Ok((
                    State::Sasl {
                        scram: Box::new(scram),
                        final_sent: false,
                        bound,
                    },
                    Step::Continue,
                ))
            }
            (
                State::Sasl {
                    mut scram,
                    final_sent: false,
                    bound,
                },
                Message::AuthenticationSaslContinue(body),
            ) => {
                scram.update(body.data(), self.scram_max_iterations)?;
                frontend::sasl_response(scram.message(), out).map_err(encode_error)?;
                Ok((
                    State::Sasl {
                        scram,
                        final_sent: true,
                        bound,
                    },
                    Step::Continue,
                ))
            }
            (
                State::Sasl {
                    mut scram,
                    final_sent: true,
                    bound,
                },
                Message::AuthenticationSaslFinal(body),
            ) => {
                scram.finish(body.data())?;
                Ok((State::AwaitingSaslOk { bound }, Step::Continue))
            }
            (State::AwaitingSaslOk { bound }, Message::AuthenticationOk) => {
                self.check_bound(bound)?;
                Ok((State::Authenticated, Step::Continue))
            }
            (State::OAuth { exchange }, Message::AuthenticationSaslContinue(body)) => {
                let rejection = Box::new(exchange.server_error(body.data(), out)?);
                Ok((State::OAuthRejected { rejection }, Step::Continue))
            }
            (State::OAuth { .. }, Message::AuthenticationSaslFinal(_)) => Err(Error::protocol(
                "the server sent AuthenticationSASLFinal for OAUTHBEARER, which has no final data",
            )),
            (State::OAuth { exchange }, Message::AuthenticationOk) => {
                // As libpq: only a token finishes the client's side of the exchange for require_auth.
                if !exchange.with_token() && self.require_auth.requires_authentication() {
                    return Err(Error::auth(
                        "the server accepted OAuth discovery without a token, which require_auth does not allow",
                    ));
                }
                Ok((State::Authenticated, Step::Continue))
            }
            (State::AwaitingAuth, Message::AuthenticationKerberosV5) => {
                self.refuse_unbound("Kerberos V5")?;
                Err(self.unsupported("Kerberos V5"))
            }
            (State::AwaitingAuth, Message::AuthenticationScmCredential) => {
                self.refuse_unbound("SCM credentials")?;
                Err(self.unsupported("SCM credentials"))
            }
            (
                State::AwaitingAuth,
                Message::AuthenticationGss | Message::AuthenticationGssContinue(_),
            ) => {
                self.allow(AuthMethod::Gss)?;
                self.refuse_unbound("GSSAPI")?;
                Err(self.unsupported("GSSAPI"))
            }
            (State::AwaitingAuth, Message::AuthenticationSspi) => {
                self.allow(AuthMethod::Sspi)?;
                self.refuse_unbound("SSPI")?;
                Err(self.unsupported("SSPI"))
            }
            (State::Authenticated, Message::ParameterStatus(body)) => {
                let name = body.name().map_err(Error::malformed)?.to_string();
                let value = body.value().map_err(Error::malformed)?.to_string();
                Ok((State::Authenticated, Step::Parameter(name, value)))
            }
            (State::Authenticated, Message::ReadyForQuery(body)) => {
                Ok((State::Authenticated, Step::Ready(body.status())))
            }
            (state, message) => Err(Error::protocol(format!(
                "unexpected {} during {}",
                super::message_name(&message),
                state.describe()
            ))),
        }
    }

    fn allow(&mut self, method: AuthMethod) -> Result<(), Error> {
        if !self.require_auth.allows(method) {
            return Err(Error::auth(format!(
                "the server requested {} authentication, which require_auth does not allow",
                method.as_str()
            )));
        }
        self.used = Some(method);
        Ok(())
    }

    /// `require_auth` decides whether the server may let us in without any exchange.
    fn check_auth_ok(&self) -> Result<(), Error> {
        match self.used {
            None if !self.require_auth.allows(AuthMethod::None)
                || self.require_auth.requires_authentication() =>
            {
                Err(Error::auth(
                    "the server did not request authentication, which require_auth does not allow",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Picks the SASL mechanism and the gs2 channel-binding flag as libpq does.
    fn choose_mechanism(
        &self,
        has_scram: bool,
        has_plus: bool,
    ) -> Result<(&'static str, Binding), Error> {
        let mode = self.channel_binding.mode;
        match (&self.channel_binding.tls, has_plus) {
            // A server offers -PLUS only over TLS; without TLS here, something in between stripped it.
            (None, true) => Err(Error::auth(
                "the server offered SCRAM-SHA-256-PLUS authentication over a connection without TLS",
            )),
            (Some(tls), true) if mode != ChannelBinding::Disable => match tls {
                Ok(data) => Ok((
                    sasl::SCRAM_SHA_256_PLUS,
                    Binding::TlsServerEndPoint(data.clone()),
                )),
                // Never downgrade silently: the server would accept it, and an attacker could arrange it.
                Err(reason) => Err(Error::auth(format!(
                    "the server offered SCRAM channel binding, but it is not possible with this server \
                     certificate: {reason}"
                ))),
            },
            (None, false) if mode == ChannelBinding::Require => Err(Error::auth(
                "channel_binding=require, but the connection does not use TLS",
            )),
            _ if mode == ChannelBinding::Require => Err(Error::auth(
                "channel_binding=require, but the server did not offer SCRAM-SHA-256-PLUS, the only \
                 authentication method that supports channel binding",
            )),
            _ if !has_scram => Err(Error::auth(
                "the server offers no SASL mechanism this client supports",
            )),
            // "y": we could bind, but the server did not offer to.
            (Some(_), _) if mode != ChannelBinding::Disable => {
                Ok((sasl::SCRAM_SHA_256, Binding::Unrequested))
            }
            // "n": no TLS, or binding disabled.
            _ => Ok((sasl::SCRAM_SHA_256, Binding::Unsupported)),
        }
    }

    /// With `channel_binding=require` only SASL may run: any other request is refused before anything is sent.
    fn refuse_unbound(&self, what: &str) -> Result<(), Error> {
        if self.channel_binding.mode == ChannelBinding::Require {
            return Err(Error::auth(format!(
                "channel_binding=require, but the server requested {what} authentication, which does not \
                 support channel binding"
            )));
        }
        Ok(())
    }

    /// With `channel_binding=require` the server must have proved itself through a bound SCRAM exchange.
    fn check_bound(&self, bound: bool) -> Result<(), Error> {
        if self.channel_binding.mode == ChannelBinding::Require && !bound {
            return Err(Error::auth(
                "channel_binding=require, but the server authenticated the client without channel binding",
            ));
        }
        Ok(())
    }

    fn password_or_error(&self) -> Result<&[u8], Error> {
        self.password
            .as_deref()
            .ok_or_else(|| Error::auth("the server requested a password but none was given"))
    }

    /// What the server answered to OAuth discovery, if the exchange ended that way.
    pub(crate) fn take_discovered(&mut self) -> Option<OAuthDiscovery> {
        self.discovered.take()
    }

    fn unsupported(&self, what: &str) -> Error {
        Error::auth(format!(
            "the server requested {what} authentication, which this client does not support"
        ))
    }
}

impl State {
    fn describe(&self) -> &'static str {
        match self {
            State::AwaitingAuth => "authentication",
            State::Sasl { .. } => "the SCRAM exchange",
            State::AwaitingSaslOk { .. } => "the end of the SCRAM exchange",
            State::OAuth { .. } => "the OAUTHBEARER exchange",
            State::OAuthRejected { .. } => "the end of a refused OAUTHBEARER exchange",
            State::Authenticated => "startup after authentication",
        }
    }
}

fn encode_error(e: std::io::Error) -> Error {
    Error::auth(format!("cannot encode an authentication message: {e}"))
}

/// The iteration count of a SCRAM server-first message, which must be exactly `r=<nonce>,s=<salt>,i=<count>`
/// (what PostgreSQL sends; postgres-protocol refuses anything else too). Read strictly: at most ten digits, no
/// leading zero, so the number is bounded before it is compared with the cap.
fn scram_iteration_count(server_first: &[u8]) -> Result<u64, Error> {
    let invalid = |what: &str| Error::auth(format!("invalid SCRAM server-first message: {what}"));
    let mut attributes = server_first.splitn(3, |&b| b == b',');
    let (Some(nonce), Some(salt), Some(count)) =
        (attributes.next(), attributes.next(), attributes.next())
    else {
        return Err(invalid("expected r=, s= and i= attributes"));
    };
    match nonce.strip_prefix(b"r=") {
        Some(nonce) if !nonce.is_empty() && nonce.iter().all(|&b| (0x21..=0x7e).contains(&b)) => {}
        _ => return Err(invalid("a missing or malformed nonce")),
    }
    match salt.strip_prefix(b"s=") {
        Some(salt)
            if !salt.is_empty()
                && salt
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) => {}
        _ => return Err(invalid("a missing or malformed salt")),
    }
    let Some(digits) = count.strip_prefix(b"i=") else {
        return Err(invalid("a missing iteration count"));
    };
    let well_formed = matches!(digits.first(), Some(b'1'..=b'9'))
        && digits.len() <= 10
        && digits.iter().all(u8::is_ascii_digit);
    if !well_formed {
        return Err(invalid("a malformed iteration count"));
    }
    Ok(digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// The StartupMessage parameters and the user and database names among them (which only the async client
/// needs, to look up the password file).
#[cfg_attr(not(any(feature = "tokio", target_os = "wasi")), allow(dead_code))]
pub(crate) struct StartupParameters {
    pub(crate) params: Vec<(String, String)>,
    pub(crate) user: String,
    pub(crate) dbname: String,
}

/// The StartupMessage parameters, with the user and database names they carry. Called before any connection is
/// opened too, so a value the server could never receive (a NUL byte, an oversized packet) fails before a byte
/// is sent.
/// The settings of a logical replication session whose text values the client's `TupleRow` reads as typed
/// values.
const LOGICAL_TEXT_SETTINGS: [(&str, &str); 4] = [
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

pub(crate) fn startup_parameters(config: &Config) -> Result<StartupParameters, Error> {
    let user = config.effective_user()?;
    let dbname = config.effective_dbname()?;
    let mut params = vec![
        ("user".to_string(), user.clone()),
        ("database".to_string(), dbname.clone()),
        // Text results are decoded as UTF-8, so the session must send UTF-8.
        ("client_encoding".to_string(), "UTF8".to_string()),
    ];
    if let Some(name) = config.get_application_name() {
        params.push(("application_name".to_string(), name.to_string()));
    }
    if let Some(options) = config.get_options() {
        params.push(("options".to_string(), options.to_string()));
    }
    let replication = config.get_replication();
    if replication != crate::config::Replication::Off {
        params.push(("replication".to_string(), replication.as_str().to_string()));
    }
    if replication == crate::config::Replication::Logical {
        // The walsender writes pgoutput's text values with this session's settings, and typed reads of them
        // parse ISO dates, hex bytea and exact floats, whatever the server's defaults say. Parameters the
        // application gives itself still win (below).
        for (name, value) in LOGICAL_TEXT_SETTINGS {
            params.push((name.to_string(), value.to_string()));
        }
    }
    for (name, value) in config.get_params() {
        params.retain(|(k, _)| k != name);
        params.push((name.clone(), value.clone()));
    }
    // The same encoder the startup uses checks NUL bytes and the packet size.
    super::wire::startup_message(
        config.get_max_protocol_version(),
        &params,
        &mut BytesMut::new(),
    )?;
    Ok(StartupParameters {
        params,
        user,
        dbname,
    })
}

/// What the core's startup needs: `params` from [`startup_parameters`], the password, and `tls_binding`: `None`
/// without TLS, else the channel binding data of the TLS session (or why it has none). OAuth counts the channel
/// as protected only with TLS; the driver says so for Unix-domain sockets, and sets a token it obtained.
pub(crate) fn startup_params(
    config: &Config,
    params: Vec<(String, String)>,
    password: Option<Vec<u8>>,
    tls_binding: Option<Result<Vec<u8>, String>>,
) -> StartupParams {
    let tls_binding_present = tls_binding.is_some();
    StartupParams {
        params,
        password,
        scram_keys: config.get_scram_keys(),
        require_auth: config.get_require_auth().clone(),
        channel_binding: ChannelBindingPolicy {
            mode: config.get_channel_binding(),
            tls: tls_binding,
        },
        scram_max_iterations: config.get_scram_max_iterations(),
        min_protocol_version: config.get_min_protocol_version(),
        max_protocol_version: config.get_max_protocol_version(),
        oauth: OAuthParams {
            token: None,
            issuer: config.get_oauth_issuer().map(str::to_string),
            hook: config.get_oauth_hook().is_some(),
            protected: tls_binding_present,
            known_discovery: None,
        },
    }
}

/// The core's limits from `config`.
pub(crate) fn limits(config: &Config) -> Limits {
    Limits {
        max_message_size: config.get_max_message_size(),
    }
}
