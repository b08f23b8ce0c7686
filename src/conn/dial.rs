//! Reaching a server: a socket to a host (TCP with libpq's TCP options, or a Unix-domain socket), TLS negotiated
//! on it as the sslmode says, and the route by which a session's cancel requests reach the same server the
//! same way.

use std::time::Duration;

#[cfg(target_os = "wasi")]
use tracing::debug;

use crate::config::{Host, Target};
use crate::tls::{self, SslResponse, TlsConnector};
use crate::transport::{Keepalive, Transport};
use crate::{Config, Error};

/// Where and how a cancel request for a session must be sent: the same server, and TLS when the session used
/// it (libpq sends cancel requests over TLS too since PostgreSQL 17).
#[derive(Debug, Clone)]
pub(crate) struct CancelRoute {
    pub(crate) target: Option<Target>,
    /// The connector and the host name its certificate was checked against.
    pub(crate) tls: Option<(TlsConnector, String)>,
    /// The session's TCP options, which libpq gives its cancel connections too.
    pub(crate) tcp: TcpOptions,
}

/// The TCP options of a connection, from libpq's keywords: keepalives (`None`: off) and TCP_USER_TIMEOUT
/// (`None`: the system default). Unix-domain sockets take neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TcpOptions {
    pub(crate) keepalive: Option<Keepalive>,
    pub(crate) user_timeout: Option<Duration>,
}

impl TcpOptions {
    pub(crate) fn of(config: &Config) -> TcpOptions {
        TcpOptions {
            keepalive: config.keepalive(),
            // libpq sets it only when keepalives are on (an accident of the order of its checks); a user who
            // asks for it expects it either way.
            user_timeout: config.get_tcp_user_timeout(),
        }
    }
}

impl CancelRoute {
    /// Opens a new connection to the session's server for a cancel request, negotiated as the session's was:
    /// TLS with the same connector and host name (an SSLRequest first, or direct TLS), with no fallback to
    /// plaintext; plaintext if the session is plaintext.
    pub(crate) async fn open(&self) -> Result<Box<dyn Transport>, Error> {
        let Some(target) = &self.target else {
            return Err(Error::unsupported(
                "cannot cancel: the client was made with connect_with_transport, so there is no address to \
                 send a cancel request to",
            ));
        };
        let mut transport = open_transport(target, &self.tcp).await?;
        let Some((connector, host)) = &self.tls else {
            return Ok(transport);
        };
        match secure(&mut transport, connector, false).await? {
            Negotiated::Tls => Ok(Box::new(
                tls::handshake(connector, transport, host).await?.stream,
            )),
            Negotiated::Plain => Err(Error::protocol(
                "BUG: TLS was refused without an error although plaintext was not allowed",
            )),
        }
    }
}

/// What the negotiation before the startup settled on.
pub(crate) enum Negotiated {
    /// Plaintext: TLS was refused where the sslmode allows that.
    Plain,
    /// A TLS handshake comes next.
    Tls,
}

/// Negotiates TLS on a fresh connection: direct TLS starts the handshake at once; otherwise an SSLRequest asks,
/// and a refusal continues in plaintext only where the sslmode allows it.
pub(crate) async fn secure(
    transport: &mut Box<dyn Transport>,
    tls: &TlsConnector,
    plain_if_refused: bool,
) -> Result<Negotiated, Error> {
    if tls.direct() {
        return Ok(Negotiated::Tls);
    }
    match tls::request_ssl(transport.as_mut()).await? {
        SslResponse::Accepted => Ok(Negotiated::Tls),
        SslResponse::Refused if plain_if_refused => Ok(Negotiated::Plain),
        SslResponse::Refused => Err(Error::tls(
            "server does not support SSL, but SSL was required",
            None,
        )),
    }
}

/// The name the server certificate is checked against: the host name, else the numeric `hostaddr`.
pub(crate) fn tls_host(target: &Target) -> String {
    match (&target.host, target.hostaddr) {
        (Host::Tcp(name), _) if !name.is_empty() => name.clone(),
        (_, Some(addr)) => addr.to_string(),
        (Host::Tcp(name), None) => name.clone(),
        (Host::Unix(dir), None) => dir.display().to_string(),
    }
}

/// Opens a connection to `target`; over TCP with the options `tcp` gives.
#[cfg(target_os = "wasi")]
pub(crate) async fn open_transport(
    target: &Target,
    tcp: &TcpOptions,
) -> Result<Box<dyn Transport>, Error> {
    match &target.host {
        Host::Tcp(name) => {
            #[cfg(not(feature = "wasip3"))]
            use crate::transport::wasi::connect_tcp;
            #[cfg(feature = "wasip3")]
            use crate::transport::wasip3::connect_tcp;
            let stream = connect_tcp(name, target.hostaddr, target.port)
                .await
                .map_err(Error::io)?;
            stream.set_keepalive(tcp.keepalive.as_ref());
            if tcp.user_timeout.is_some() {
                debug!("tcp_user_timeout is ignored: wasi:sockets has no such option");
            }
            Ok(Box::new(stream))
        }
        Host::Unix(dir) => Err(Error::unsupported(format!(
            "Unix-domain sockets ({}) are not available on WASI",
            dir.display()
        ))),
    }
}

/// Opens a connection to `target`: over TCP with the options `tcp` gives; over a Unix-domain socket after
/// checking who the server runs as, if `requirepeer` asks.
#[cfg(all(not(target_os = "wasi"), feature = "tokio"))]
pub(crate) async fn open_transport(
    target: &Target,
    tcp: &TcpOptions,
) -> Result<Box<dyn Transport>, Error> {
    match &target.host {
        Host::Tcp(name) => Ok(Box::new(
            open_tcp(name, target.hostaddr, target.port, tcp).await?,
        )),
        #[cfg(unix)]
        Host::Unix(dir) => {
            let stream = crate::transport::tokio::connect_unix(dir, target.port)
                .await
                .map_err(Error::io)?;
            if let Some(required) = &target.require_peer {
                crate::transport::peer::check_peer(&stream.0, required)?;
            }
            Ok(Box::new(stream))
        }
        #[cfg(not(unix))]
        Host::Unix(dir) => Err(Error::unsupported(format!(
            "Unix-domain sockets ({}) are not available on this platform",
            dir.display()
        ))),
    }
}

/// Opens a TCP connection with the options `tcp` gives, set once it is open.
#[cfg(all(not(target_os = "wasi"), feature = "tokio"))]
async fn open_tcp(
    name: &str,
    hostaddr: Option<std::net::IpAddr>,
    port: u16,
    tcp: &TcpOptions,
) -> Result<crate::transport::tokio::TokioStream<tokio::net::TcpStream>, Error> {
    use crate::transport::tokio::{connect_tcp, set_keepalive, set_tcp_user_timeout};
    let stream = connect_tcp(name, hostaddr, port).await.map_err(Error::io)?;
    set_keepalive(&stream.0, tcp.keepalive.as_ref()).map_err(Error::io)?;
    set_tcp_user_timeout(&stream.0, tcp.user_timeout).map_err(Error::io)?;
    Ok(stream)
}

#[cfg(all(test, target_os = "linux", feature = "tokio"))]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    /// `tcp_user_timeout` and the keepalives of a connection string reach the socket (read back with
    /// getsockopt), with keepalives off too.
    #[tokio::test]
    async fn tcp_options_from_the_config_reach_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for (conninfo, keepalive) in [
            ("tcp_user_timeout=12345 keepalives_idle=30", true),
            ("tcp_user_timeout=12345 keepalives=0", false),
        ] {
            let config = Config::parse(conninfo).unwrap();
            let stream = open_tcp("127.0.0.1", None, port, &TcpOptions::of(&config))
                .await
                .unwrap();
            let socket = socket2::SockRef::from(&stream.0);
            assert_eq!(
                socket.tcp_user_timeout().unwrap(),
                Some(Duration::from_millis(12_345)),
                "{conninfo}"
            );
            assert_eq!(socket.keepalive().unwrap(), keepalive, "{conninfo}");
            if keepalive {
                assert_eq!(
                    socket.tcp_keepalive_time().unwrap(),
                    Duration::from_secs(30)
                );
            }
        }
        // Zero, or nothing, leaves the system default.
        for conninfo in ["tcp_user_timeout=0", ""] {
            let config = Config::parse(conninfo).unwrap();
            let stream = open_tcp("127.0.0.1", None, port, &TcpOptions::of(&config))
                .await
                .unwrap();
            let socket = socket2::SockRef::from(&stream.0);
            assert_eq!(socket.tcp_user_timeout().unwrap(), None, "{conninfo:?}");
        }
    }
}
