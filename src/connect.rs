//! Connecting: hosts tried in order (or shuffled), connect_timeout per host, startup, and the session checks of
//! `target_session_attrs`.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::time::Duration;

use crate::client::Client;
use tracing::{Instrument as _, debug};

use crate::config::{Host, LoadBalanceHosts, SslMode, Target, TargetSessionAttrs};
use crate::connection::Connection;
use crate::proto::Protocol;
use crate::row::SimpleQueryMessage;
use crate::sans_io::{StartupParameters, limits, startup_parameters, startup_params};
use crate::tls::{self, SslResponse, TlsConnector};
use crate::transport::{Keepalive, Transport};
use crate::{Config, Error, ErrorKind, runtime};

impl Client {
    /// Connects with a [`Config`]: each host is tried in turn until one accepts the startup and fits
    /// `target_session_attrs`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), wasi_pg_client::Error> {
    /// let config = wasi_pg_client::Config::from_conninfo_and_env("host=localhost user=app dbname=app")?;
    /// let mut client = wasi_pg_client::Client::connect(&config).await?;
    /// let row = client.query_one("SELECT $1::int + 1", &[&41i32]).await?;
    /// assert_eq!(row.get::<_, i32>(0), 42);
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: &Config) -> Result<Client, Error> {
        startup_parameters(config)?;
        // Files are read and certificates parsed once, for every host.
        let tls = TlsConnector::from_config(config)?;
        let mut targets = config.targets()?;
        if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
            shuffle(&mut targets);
        }
        let attrs = config.get_target_session_attrs();
        let mut failures = Vec::new();
        // prefer-standby tries every host for a standby first, then any host.
        let passes: &[TargetSessionAttrs] = if attrs == TargetSessionAttrs::PreferStandby {
            &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
        } else {
            std::slice::from_ref(&attrs)
        };
        for &wanted in passes {
            for target in &targets {
                let described = describe(target);
                let span = connect_span(config, target);
                // The session check runs inside connect_timeout too: a server that stalls after startup must
                // not hang connect().
                let attempt = runtime::timeout(config.get_connect_timeout(), async {
                    let mut client = connect_target(config, target, tls.as_ref()).await?;
                    let fits = session_fits(&mut client, wanted).await?;
                    Ok::<_, Error>((client, fits))
                })
                .instrument(span.clone())
                .await;
                span.in_scope(|| match &attempt {
                    Ok(Ok((client, _))) => debug!(
                        backend_pid = client.backend_pid(),
                        tls = client.uses_tls(),
                        "connected"
                    ),
                    Ok(Err(e)) => debug!(error = %e, "connection attempt failed"),
                    Err(()) => debug!("connection attempt timed out (connect_timeout)"),
                });
                match attempt {
                    Ok(Ok((client, true))) => return Ok(client),
                    Ok(Ok((client, false))) => {
                        let rejected = format!("the session is not {}", wanted.as_str());
                        failures.push((described, Error::connect_rejected(rejected)));
                        let _ = client.close().await;
                    }
                    // A server that rejected the password may still be followed by one that accepts it: libpq
                    // goes on too.
                    Ok(Err(e)) => failures.push((described, e)),
                    Err(()) => {
                        let limit = config.get_connect_timeout().unwrap_or_default();
                        failures.push((described, Error::timeout("connecting", limit)));
                    }
                }
            }
        }
        Err(Error::connect(failures))
    }

    /// Runs the startup over a transport the caller opened (a custom transport, a test pipe, a tunnel).
    /// Host, port and connect_timeout from `config` are not used.
    ///
    /// TLS is negotiated on it as `sslmode` says, and verified against `host` (the first host of `config`;
    /// `localhost` when none is given).
    pub async fn connect_with_transport(
        transport: Box<dyn Transport>,
        config: &Config,
    ) -> Result<Client, Error> {
        let span = tracing::info_span!(
            "connect",
            transport = "caller's",
            sslmode = config.get_ssl_mode().as_str(),
            user = config.get_user(),
            dbname = config.get_dbname(),
        );
        Client::connect_over(transport, config)
            .instrument(span)
            .await
    }

    async fn connect_over(transport: Box<dyn Transport>, config: &Config) -> Result<Client, Error> {
        startup_parameters(config)?;
        let tls = TlsConnector::from_config(config)?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(name)) if !name.is_empty() => name.clone(),
            _ => "localhost".to_string(),
        };
        let Some(tls) = tls else {
            return startup(transport, config, None, None).await;
        };
        let mode = config.get_ssl_mode();
        let plain_if_refused = matches!(mode, SslMode::Allow | SslMode::Prefer);
        let mut transport = transport;
        match secure(&mut transport, &tls, plain_if_refused).await? {
            Negotiated::Plain => startup(transport, config, None, None).await,
            Negotiated::Tls => {
                let established = tls::handshake(&tls, transport, &host).await?;
                let binding = Some(established.channel_binding);
                let mut client =
                    startup(Box::new(established.stream), config, None, binding).await?;
                client.set_cancel_route(CancelRoute {
                    target: None,
                    tls: Some((tls, host)),
                    tcp: TcpOptions::of(config),
                });
                Ok(client)
            }
        }
    }
}

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
        let mut transport =
            open_transport(&target.host, target.hostaddr, target.port, &self.tcp).await?;
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
enum Negotiated {
    Plain,
    Tls,
}

/// Negotiates TLS on a fresh connection: direct TLS starts the handshake at once; otherwise an SSLRequest asks,
/// and a refusal continues in plaintext only where the sslmode allows it.
async fn secure(
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

/// The span of one connection attempt: where to and how, with whom as whom; never the password.
fn connect_span(config: &Config, target: &Target) -> tracing::Span {
    let host = match &target.host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(dir) => dir.display().to_string(),
    };
    tracing::info_span!(
        "connect",
        host,
        hostaddr = target.hostaddr.map(tracing::field::display),
        port = target.port,
        sslmode = config.get_ssl_mode().as_str(),
        user = config.get_user(),
        dbname = config.get_dbname(),
    )
}

fn describe(target: &Target) -> String {
    match (&target.host, target.hostaddr) {
        (Host::Tcp(host), Some(addr)) => format!("{host} ({addr}) port {}", target.port),
        (Host::Tcp(host), None) => format!("{host} port {}", target.port),
        (Host::Unix(dir), _) => format!("socket {}/.s.PGSQL.{}", dir.display(), target.port),
    }
}

/// Where a connection attempt failed, which decides whether libpq's sslmode fallbacks apply.
enum Stage {
    /// Opening the connection or negotiating TLS.
    Setup,
    /// The TLS handshake (including certificate verification).
    Handshake,
    /// The startup, over TLS or not.
    Startup { tls: bool },
}

/// Connects to one target with libpq's sslmode behaviour:
/// - `disable`, and Unix-domain sockets in every mode (libpq never uses TLS on them): plaintext.
/// - `allow`: plaintext first; if the server rejects that startup, again with TLS.
/// - `prefer`: TLS if the server accepts the SSLRequest, else plaintext on the same connection; if the
///   handshake fails or the server rejects the startup over TLS, again in plaintext.
/// - `require`, `verify-ca`, `verify-full`: TLS or nothing.
async fn connect_target(
    config: &Config,
    target: &Target,
    tls: Option<&TlsConnector>,
) -> Result<Client, Error> {
    let tls = tls.filter(|_| matches!(target.host, Host::Tcp(_)));
    let Some(tls) = tls else {
        return attempt(config, target, None).await.map_err(|(e, _)| e);
    };
    match config.get_ssl_mode() {
        SslMode::Allow => match attempt(config, target, None).await {
            Err((e, Stage::Startup { tls: false })) if e.kind() == ErrorKind::Db => {
                debug!(error = %e, "the server rejected the plaintext startup; retrying with TLS (sslmode=allow)");
                retry(attempt(config, target, Some((tls, true))).await, e)
            }
            other => other.map_err(|(e, _)| e),
        },
        SslMode::Prefer => match attempt(config, target, Some((tls, true))).await {
            Err((e, Stage::Handshake)) => {
                debug!(error = %e, "the TLS handshake failed; retrying in plaintext (sslmode=prefer)");
                retry(attempt(config, target, None).await, e)
            }
            Err((e, Stage::Startup { tls: true })) if e.kind() == ErrorKind::Db => {
                debug!(error = %e, "the server rejected the startup over TLS; retrying in plaintext (sslmode=prefer)");
                retry(attempt(config, target, None).await, e)
            }
            other => other.map_err(|(e, _)| e),
        },
        _ => attempt(config, target, Some((tls, false)))
            .await
            .map_err(|(e, _)| e),
    }
}

/// The outcome of a fallback attempt; if it fails too, its error also says why the first one did.
fn retry(second: Result<Client, (Error, Stage)>, first: Error) -> Result<Client, Error> {
    second.map_err(|(e, _)| e.context(format!("first attempt: {first}; second attempt")))
}

/// One connection attempt: open, negotiate TLS (`Some((connector, plain_if_refused))`), start up.
async fn attempt(
    config: &Config,
    target: &Target,
    tls: Option<(&TlsConnector, bool)>,
) -> Result<Client, (Error, Stage)> {
    let tcp = TcpOptions::of(config);
    let mut transport = open_transport(&target.host, target.hostaddr, target.port, &tcp)
        .await
        .map_err(|e| (e, Stage::Setup))?;
    let plain = |transport| async move {
        let mut client = startup(transport, config, Some(target), None)
            .await
            .map_err(|e| (e, Stage::Startup { tls: false }))?;
        client.set_cancel_route(CancelRoute {
            target: Some(target.clone()),
            tls: None,
            tcp,
        });
        Ok(client)
    };
    let Some((connector, plain_if_refused)) = tls else {
        return plain(transport).await;
    };
    match secure(&mut transport, connector, plain_if_refused)
        .await
        .map_err(|e| (e, Stage::Setup))?
    {
        Negotiated::Plain => plain(transport).await,
        Negotiated::Tls => {
            let host = tls_host(target);
            let established = tls::handshake(connector, transport, &host)
                .await
                .map_err(|e| (e, Stage::Handshake))?;
            let binding = Some(established.channel_binding);
            let mut client = startup(Box::new(established.stream), config, Some(target), binding)
                .await
                .map_err(|e| (e, Stage::Startup { tls: true }))?;
            client.set_cancel_route(CancelRoute {
                target: Some(target.clone()),
                tls: Some((connector.clone(), host)),
                tcp,
            });
            Ok(client)
        }
    }
}

/// The name the server certificate is checked against: the host name, else the numeric `hostaddr`.
fn tls_host(target: &Target) -> String {
    match (&target.host, target.hostaddr) {
        (Host::Tcp(name), _) if !name.is_empty() => name.clone(),
        (_, Some(addr)) => addr.to_string(),
        (Host::Tcp(name), None) => name.clone(),
        (Host::Unix(dir), None) => dir.display().to_string(),
    }
}

/// Opens a connection to `host`; over TCP with the options `tcp` gives.
#[cfg(target_os = "wasi")]
async fn open_transport(
    host: &Host,
    hostaddr: Option<IpAddr>,
    port: u16,
    tcp: &TcpOptions,
) -> Result<Box<dyn Transport>, Error> {
    match host {
        Host::Tcp(name) => {
            #[cfg(not(feature = "wasip3"))]
            use crate::transport::wasi::connect_tcp;
            #[cfg(feature = "wasip3")]
            use crate::transport::wasip3::connect_tcp;
            let stream = connect_tcp(name, hostaddr, port).await.map_err(Error::io)?;
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

/// Opens a connection to `host`; over TCP with the options `tcp` gives.
#[cfg(all(not(target_os = "wasi"), feature = "tokio"))]
async fn open_transport(
    host: &Host,
    hostaddr: Option<IpAddr>,
    port: u16,
    tcp: &TcpOptions,
) -> Result<Box<dyn Transport>, Error> {
    match host {
        Host::Tcp(name) => Ok(Box::new(open_tcp(name, hostaddr, port, tcp).await?)),
        #[cfg(unix)]
        Host::Unix(dir) => Ok(Box::new(
            crate::transport::tokio::connect_unix(dir, port)
                .await
                .map_err(Error::io)?,
        )),
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
    hostaddr: Option<IpAddr>,
    port: u16,
    tcp: &TcpOptions,
) -> Result<crate::transport::tokio::TokioStream<tokio::net::TcpStream>, Error> {
    use crate::transport::tokio::{connect_tcp, set_keepalive, set_tcp_user_timeout};
    let stream = connect_tcp(name, hostaddr, port).await.map_err(Error::io)?;
    set_keepalive(&stream.0, tcp.keepalive.as_ref()).map_err(Error::io)?;
    set_tcp_user_timeout(&stream.0, tcp.user_timeout).map_err(Error::io)?;
    Ok(stream)
}

/// The startup message parameters and credentials from the configuration.
///
/// `tls_binding` is `None` without TLS, else the channel binding data of the TLS session (or why it has none).
async fn startup(
    transport: Box<dyn Transport>,
    config: &Config,
    target: Option<&Target>,
    tls_binding: Option<Result<Vec<u8>, String>>,
) -> Result<Client, Error> {
    let StartupParameters {
        params,
        user,
        dbname,
    } = startup_parameters(config)?;
    let password = match (config.get_password(), target) {
        (Some(password), _) => Some(password.to_vec()),
        (None, Some(target)) => password_from_file(config, target, &dbname, &user),
        (None, None) => None,
    };
    let startup = startup_params(config, params, password, tls_binding);
    let protocol = Protocol::new(startup, limits(config))?;
    let mut conn = Connection::new(transport, protocol);
    conn.startup().await?;
    Ok(Client::from_connection(conn, config))
}

/// The password for `target` from the password file (`passfile`, `PGPASSFILE` or `~/.pgpass`), as libpq finds
/// it. A missing or unreadable file is no password; a file others can read is ignored with a warning, as libpq
/// does.
fn password_from_file(
    config: &Config,
    target: &Target,
    dbname: &str,
    user: &str,
) -> Option<Vec<u8>> {
    let path = config.passfile_path()?;
    let metadata = std::fs::metadata(&path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if metadata.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "password file has group or world access; permissions should be u=rw (0600) or less"
            );
            return None;
        }
    }
    if !metadata.is_file() {
        return None;
    }
    let contents = std::fs::read_to_string(&path).ok()?;
    let host = match (&target.host, target.hostaddr) {
        (Host::Tcp(name), _) if !name.is_empty() => name.clone(),
        (Host::Tcp(_), Some(addr)) => addr.to_string(),
        (Host::Tcp(name), None) => name.clone(),
        (Host::Unix(dir), _) => dir.display().to_string(),
    };
    crate::config::passfile_lookup(&contents, &host, target.port, dbname, user)
        .map(String::into_bytes)
}

/// Whether the session matches `target_session_attrs` (libpq's checks: read-only-ness and recovery state).
async fn session_fits(client: &mut Client, wanted: TargetSessionAttrs) -> Result<bool, Error> {
    if wanted == TargetSessionAttrs::Any {
        return Ok(true);
    }
    let messages = client
        .simple_query(
            "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only')",
        )
        .await?;
    let row = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or_else(|| Error::protocol("the session check returned no row"))?;
    let in_recovery = row.get(0) == Some("t");
    let read_only = row.get(1) == Some("on");
    Ok(match wanted {
        TargetSessionAttrs::ReadWrite => !read_only,
        TargetSessionAttrs::ReadOnly => read_only,
        TargetSessionAttrs::Primary => !in_recovery,
        TargetSessionAttrs::Standby => in_recovery,
        _ => true,
    })
}

/// Shuffles hosts for `load_balance_hosts=random` with the seed std already draws per process for hashing
/// (no random-number crate needed for this).
fn shuffle(targets: &mut [Target]) {
    let seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut state = seed | 1;
    for i in (1..targets.len()).rev() {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = (state % (i as u64 + 1)) as usize;
        targets.swap(i, j);
    }
}

#[cfg(all(test, target_os = "linux", feature = "tokio"))]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

    /// A session's cancel route keeps its TCP options: `CancelRoute::open` sets them on the cancel connection
    /// through the same `open_tcp`.
    #[tokio::test]
    async fn cancel_route_carries_the_tcp_options() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = Config::parse(&format!(
            "host=127.0.0.1 port={port} user=u dbname=d sslmode=disable tcp_user_timeout=4321 \
             keepalives_count=4"
        ))
        .unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let len = stream.read_u32().await.unwrap() as usize;
            let mut startup = vec![0; len - 4];
            stream.read_exact(&mut startup).await.unwrap();
            // AuthenticationOk, BackendKeyData, ReadyForQuery.
            let mut reply = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
            reply.extend([b'K', 0, 0, 0, 12, 0, 0, 0, 7, 1, 2, 3, 4]);
            reply.extend([b'Z', 0, 0, 0, 5, b'I']);
            stream.write_all(&reply).await.unwrap();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
        });
        let client = Client::connect(&config).await.unwrap();
        let route = client.lock().cancel_route.clone().unwrap();
        assert_eq!(route.tcp, TcpOptions::of(&config));
        assert_eq!(route.tcp.user_timeout, Some(Duration::from_millis(4321)));
        assert_eq!(route.tcp.keepalive.and_then(|k| k.count), Some(4));
        client.close().await.unwrap();
        server.await.unwrap();
    }
}
