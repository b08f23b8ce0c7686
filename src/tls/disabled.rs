//! The TLS interface of the connection code when the `tls` feature is off: no connector can exist, so
//! `sslmode=disable`, `allow` and `prefer` connect in plaintext (as libpq does against a server without SSL) and
//! `require`, `verify-ca` and `verify-full` fail before anything is sent.
//!
//! The connection code is the same with and without TLS; every path that would need a connector is unreachable
//! here because [`TlsConnector`] has no values.

use crate::config::SslMode;
use crate::transport::Transport;
use crate::{Config, Error};

/// A TLS configuration; none can exist without the `tls` feature.
#[derive(Debug, Clone)]
pub(crate) enum TlsConnector {}

impl TlsConnector {
    /// `None` for the modes that may connect in plaintext; an [`Unsupported`](crate::ErrorKind::Unsupported)
    /// error for those that need TLS.
    pub(crate) fn from_config(config: &Config) -> Result<Option<TlsConnector>, Error> {
        match config.get_ssl_mode() {
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => Ok(None),
            mode => Err(Error::unsupported(format!(
                "sslmode={} needs TLS, which this build of wasi-pg-client leaves out (its `tls` feature is \
                 off); use sslmode=prefer, allow or disable, or turn the feature on",
                mode.as_str()
            ))),
        }
    }

    pub(crate) fn direct(&self) -> bool {
        match *self {}
    }
}

/// How the server answered an SSLRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    dead_code,
    reason = "the connection code matches on it; nothing asks the server for TLS here"
)]
pub(crate) enum SslResponse {
    Accepted,
    Refused,
}

/// Never called: only a connection with a [`TlsConnector`] asks for TLS.
pub(crate) async fn request_ssl(_transport: &mut dyn Transport) -> Result<SslResponse, Error> {
    Err(Error::unsupported(
        "BUG: an SSL request without TLS support (the `tls` feature is off)",
    ))
}

/// A finished handshake; never made without the `tls` feature.
pub(crate) struct Established {
    pub(crate) stream: Box<dyn Transport>,
    pub(crate) channel_binding: Result<Vec<u8>, String>,
}

pub(crate) async fn handshake(
    connector: &TlsConnector,
    _transport: Box<dyn Transport>,
    _host: &str,
) -> Result<Established, Error> {
    match *connector {}
}
