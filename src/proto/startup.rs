//! Startup and authentication: from StartupMessage to the first ReadyForQuery.
//!
//! The flow is an explicit state enum; [`Startup::handle`] is the one place that moves it, and every message
//! that does not fit the current state is a protocol error. TLS and SCRAM channel binding slot in by giving
//! [`StartupParams`] a channel-binding value before the exchange starts.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::config::{AuthMethod, RequireAuth};
use crate::{DbError, Error};

/// What the startup needs to know; built by the client from a [`Config`](crate::Config).
pub(crate) struct StartupParams {
    /// Parameters of the StartupMessage (`user`, `database`, `application_name`, ...).
    pub(crate) params: Vec<(String, String)>,
    /// The password, if one is configured. Dropped as soon as authentication ends.
    pub(crate) password: Option<Vec<u8>>,
    /// Which authentication methods the server may ask for.
    pub(crate) require_auth: RequireAuth,
}

/// Where the startup is.
enum State {
    /// Waiting for the server's first Authentication request, or the result of a password we sent.
    AwaitingAuth,
    /// A SCRAM exchange is in progress; `final_sent` says whether the client-final message went out.
    Sasl {
        scram: Box<ScramSha256>,
        final_sent: bool,
    },
    /// Waiting for AuthenticationOk after a SCRAM exchange completed (server signature verified).
    AwaitingSaslOk,
    /// Authenticated: collecting BackendKeyData and ParameterStatus until ReadyForQuery.
    Authenticated,
}

/// The result of feeding one message to the startup.
pub(crate) enum Step {
    /// Keep reading.
    Continue,
    /// A ParameterStatus arrived (name, value).
    Parameter(String, String),
    /// BackendKeyData arrived (process id, secret key).
    BackendKey(i32, i32),
    /// A notice arrived.
    Notice(Box<DbError>),
    /// The first ReadyForQuery arrived, with its transaction status byte.
    Ready(u8),
}

/// The startup state machine.
pub(crate) struct Startup {
    state: State,
    password: Option<Vec<u8>>,
    user: String,
    require_auth: RequireAuth,
    /// The authentication method the server used, recorded for `require_auth` and diagnostics.
    used: Option<AuthMethod>,
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
        for (k, v) in &params.params {
            if k.contains('\0') || v.contains('\0') {
                return Err(Error::config(format!(
                    "startup parameter {k:?} contains a NUL byte"
                )));
            }
        }
        frontend::startup_message(
            params.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            out,
        )
        .map_err(|e| Error::config(format!("cannot encode the startup message: {e}")))?;
        Ok(Startup {
            state: State::AwaitingAuth,
            password: params.password,
            user,
            require_auth: params.require_auth,
            used: None,
        })
    }

    /// Feeds one backend message; responses (password, SASL) are written to `out`.
    pub(crate) fn handle(&mut self, message: Message, out: &mut BytesMut) -> Result<Step, Error> {
        match message {
            Message::ErrorResponse(body) => {
                let db = DbError::parse(&mut body.fields())?;
                return Err(Error::db(db).broken());
            }
            Message::NoticeResponse(body) => {
                return Ok(Step::Notice(Box::new(DbError::parse(&mut body.fields())?)));
            }
            _ => {}
        }
        let state = std::mem::replace(&mut self.state, State::AwaitingAuth);
        let (next, step) = self.transition(state, message, out)?;
        self.state = next;
        Ok(step)
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
                self.password = None;
                Ok((State::Authenticated, Step::Continue))
            }
            (State::AwaitingAuth, Message::AuthenticationCleartextPassword) => {
                self.allow(AuthMethod::Password)?;
                let password = self.password_or_error()?;
                frontend::password_message(password, out).map_err(encode_error)?;
                self.password = None;
                Ok((State::AwaitingAuth, Step::Continue))
            }
            (State::AwaitingAuth, Message::AuthenticationMd5Password(body)) => {
                self.allow(AuthMethod::Md5)?;
                let password = self.password_or_error()?;
                let hash = md5_hash(self.user.as_bytes(), password, body.salt());
                frontend::password_message(hash.as_bytes(), out).map_err(encode_error)?;
                self.password = None;
                Ok((State::AwaitingAuth, Step::Continue))
            }
            (State::AwaitingAuth, Message::AuthenticationSasl(body)) => {
                self.allow(AuthMethod::ScramSha256)?;
                let mut has_scram = false;
                let mut mechanisms = body.mechanisms();
                while let Some(mechanism) = mechanisms.next().map_err(Error::malformed)? {
                    has_scram |= mechanism == sasl::SCRAM_SHA_256;
                }
                if !has_scram {
                    return Err(Error::auth(
                        "the server offers no SASL mechanism this client supports",
                    ));
                }
                let password = self.password_or_error()?;
                // Channel binding needs TLS; without it we say so honestly with the "n" flag.
                let scram = ScramSha256::new(password, ChannelBinding::unsupported());
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), out)
                    .map_err(encode_error)?;
                self.password = None;
                Ok((
                    State::Sasl {
                        scram: Box::new(scram),
                        final_sent: false,
                    },
                    Step::Continue,
                ))
            }
            (
                State::Sasl {
                    mut scram,
                    final_sent: false,
                },
                Message::AuthenticationSaslContinue(body),
            ) => {
                scram
                    .update(body.data())
                    .map_err(|e| Error::auth(format!("invalid SCRAM server-first message: {e}")))?;
                frontend::sasl_response(scram.message(), out).map_err(encode_error)?;
                Ok((
                    State::Sasl {
                        scram,
                        final_sent: true,
                    },
                    Step::Continue,
                ))
            }
            (
                State::Sasl {
                    mut scram,
                    final_sent: true,
                },
                Message::AuthenticationSaslFinal(body),
            ) => {
                // Verifies the server signature: a server that does not know the password cannot pass.
                scram
                    .finish(body.data())
                    .map_err(|e| Error::auth(format!("SCRAM server verification failed: {e}")))?;
                Ok((State::AwaitingSaslOk, Step::Continue))
            }
            (State::AwaitingSaslOk, Message::AuthenticationOk) => {
                Ok((State::Authenticated, Step::Continue))
            }
            (State::AwaitingAuth, Message::AuthenticationKerberosV5) => {
                Err(self.unsupported("Kerberos V5"))
            }
            (State::AwaitingAuth, Message::AuthenticationScmCredential) => {
                Err(self.unsupported("SCM credentials"))
            }
            (
                State::AwaitingAuth,
                Message::AuthenticationGss | Message::AuthenticationGssContinue(_),
            ) => {
                self.allow(AuthMethod::Gss)?;
                Err(self.unsupported("GSSAPI"))
            }
            (State::AwaitingAuth, Message::AuthenticationSspi) => {
                self.allow(AuthMethod::Sspi)?;
                Err(self.unsupported("SSPI"))
            }
            (State::Authenticated, Message::ParameterStatus(body)) => {
                let name = body.name().map_err(Error::malformed)?.to_string();
                let value = body.value().map_err(Error::malformed)?.to_string();
                Ok((State::Authenticated, Step::Parameter(name, value)))
            }
            (State::Authenticated, Message::BackendKeyData(body)) => Ok((
                State::Authenticated,
                Step::BackendKey(body.process_id(), body.secret_key()),
            )),
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

    fn password_or_error(&self) -> Result<&[u8], Error> {
        self.password
            .as_deref()
            .ok_or_else(|| Error::auth("the server requested a password but none was given"))
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
            State::AwaitingSaslOk => "the end of the SCRAM exchange",
            State::Authenticated => "startup after authentication",
        }
    }
}

fn encode_error(e: std::io::Error) -> Error {
    Error::auth(format!("cannot encode an authentication message: {e}"))
}
