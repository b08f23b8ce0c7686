//! TLS: negotiation with the server (SSLRequest or direct), the handshake, and what it yields for
//! authentication (SCRAM channel binding data).
//!
//! rustls with the ring provider: ring builds for wasm32-wasip2 (with clang; see `.cargo/config.toml`) and
//! natively, so both targets run the same TLS code; aws-lc-rs does not build for wasm32-wasip2.

mod binding;
mod encrypted_key;
mod files;
mod identity;
mod key_log;
mod revocation;
mod setup;
mod stream;

use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use crate::Error;
use crate::transport::{Transport, write_all};

pub(crate) use setup::{ALPN_POSTGRESQL, TlsConnector};
pub(crate) use stream::TlsStream;

/// How the server answered an SSLRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslResponse {
    /// 'S': the TLS handshake comes next.
    Accepted,
    /// 'N': the server will not use TLS; the startup continues in plaintext on the same connection.
    Refused,
}

/// Sends an SSLRequest and reads the one-byte answer.
///
/// Exactly one byte is read. Anything the server sent after an 'S' before the handshake would be plaintext
/// that a man in the middle could have injected (CVE-2021-23222), so if more bytes are already waiting the
/// connection is refused. An ErrorResponse ('E') fails the attempt without showing its text: the server is not
/// authenticated yet, and a forged message must not reach the user as if PostgreSQL said it (CVE-2024-10977).
pub(crate) async fn request_ssl(transport: &mut dyn Transport) -> Result<SslResponse, Error> {
    let mut request = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut request);
    write_all(transport, &request).await.map_err(Error::io)?;
    let mut answer = [0u8; 1];
    let n = poll_fn(|cx| transport.poll_read(cx, &mut answer))
        .await
        .map_err(Error::io)?;
    if n == 0 {
        return Err(Error::io(std::io::ErrorKind::UnexpectedEof.into())
            .context("the server closed the connection after the SSL request".to_string()));
    }
    match answer[0] {
        b'S' => {
            if bytes_already_waiting(transport)? {
                return Err(Error::tls(
                    "the server sent unencrypted data after accepting the SSL request; \
                     the connection may have been tampered with (CVE-2021-23222)",
                    None,
                ));
            }
            Ok(SslResponse::Accepted)
        }
        b'N' => Ok(SslResponse::Refused),
        b'E' => Err(Error::tls(
            "the server sent an error response to the SSL request; its text is not shown because the server \
             is not authenticated yet",
            None,
        )),
        other => Err(Error::protocol(format!(
            "invalid response 0x{other:02x} to the SSL request"
        ))),
    }
}

/// Whether bytes beyond the SSL answer are already readable, without waiting for any.
fn bytes_already_waiting(transport: &mut dyn Transport) -> Result<bool, Error> {
    let mut probe = [0u8; 1];
    let mut cx = Context::from_waker(Waker::noop());
    match transport.poll_read(&mut cx, &mut probe) {
        Poll::Ready(Ok(n)) => Ok(n > 0),
        // An error now will show again, with its proper context, in the handshake.
        Poll::Ready(Err(_)) | Poll::Pending => Ok(false),
    }
}

/// A finished handshake: the encrypted transport and the channel binding it offers.
pub(crate) struct Established {
    pub(crate) stream: TlsStream,
    /// `tls-server-end-point` data, or why the server's certificate defines none.
    pub(crate) channel_binding: Result<Vec<u8>, String>,
}

/// Runs the TLS handshake with `host` over `transport`, and checks what libpq checks after it: the ALPN
/// protocol for direct TLS and, with `sslcertmode=require`, that a client certificate was sent.
pub(crate) async fn handshake(
    connector: &TlsConnector,
    transport: Box<dyn Transport>,
    host: &str,
) -> Result<Established, Error> {
    let new = connector.session(host)?;
    let mut stream = TlsStream::new(transport, new.session);
    poll_fn(|cx| stream.poll_handshake(cx))
        .await
        .map_err(|e| handshake_error(e, host))?;
    let session = stream.session();
    if connector.direct() && session.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        return Err(Error::tls(
            "direct TLS: the server did not negotiate the ALPN protocol \"postgresql\"",
            None,
        ));
    }
    // libpq's rule: with sslcertmode=require a certificate must have gone out, which needs both a configured
    // one and a server that asked for it.
    if connector.certificate_required() && !new.certificate_sent.load(Ordering::Relaxed) {
        return Err(Error::tls(
            "server accepted connection without a valid SSL certificate (sslcertmode=require)",
            None,
        ));
    }
    let channel_binding = match session.peer_certificates().and_then(|c| c.first()) {
        Some(cert) => binding::tls_server_end_point(cert),
        None => Err("the server presented no certificate".to_string()),
    };
    Ok(Established {
        stream,
        channel_binding,
    })
}

/// A failed handshake, explained: certificate problems name the host they were checked against.
fn handshake_error(e: std::io::Error, host: &str) -> Error {
    use rustls::CertificateError;
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    let message = match &rustls_error {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!("server certificate is not valid for host \"{host}\""),
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "server certificate verification failed: it is not signed by a trusted root certificate"
                .to_string()
        }
        Some(rustls::Error::InvalidCertificate(_)) => {
            "server certificate verification failed".to_string()
        }
        // The source (shown after the message) says what went wrong.
        _ => "TLS handshake failed".to_string(),
    };
    Error::tls(message, Some(Box::new(e)))
}
