//! Opening one session on one target: the socket, libpq's sslmode fallbacks (a second attempt in plaintext or
//! with TLS where the mode allows it), the startup with the password from the configuration or the password
//! file. Which targets to try, in what order, and whether a session fits `target_session_attrs` is the
//! client's part (`client/connect.rs`).

use tracing::debug;

use crate::config::{Host, Opening, SslMode, Target};
use crate::conn::connection::Connection;
use crate::conn::dial::{CancelRoute, Negotiated, TcpOptions, open_transport, secure, tls_host};
use crate::proto::Protocol;
use crate::proto::{StartupParameters, limits, startup_parameters, startup_params};
use crate::tls::{self, TlsConnector};
use crate::transport::Transport;
use crate::{Config, Error, ErrorKind};

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
pub(crate) async fn connect_target(
    config: &Config,
    target: &Target,
    tls: Option<&TlsConnector>,
) -> Result<Connection, Error> {
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
fn retry(second: Result<Connection, (Error, Stage)>, first: Error) -> Result<Connection, Error> {
    second.map_err(|(e, _)| e.context(format!("first attempt: {first}; second attempt")))
}

/// One connection attempt: open, negotiate TLS (`Some((connector, plain_if_refused))`), start up.
async fn attempt(
    config: &Config,
    target: &Target,
    tls: Option<(&TlsConnector, bool)>,
) -> Result<Connection, (Error, Stage)> {
    let tcp = TcpOptions::of(config);
    let mut transport = open_transport(target, &tcp)
        .await
        .map_err(|e| (e, Stage::Setup))?;
    let plain = |transport| async move {
        let mut conn = startup(transport, config, Some(target), None)
            .await
            .map_err(|e| (e, Stage::Startup { tls: false }))?;
        conn.cancel_route = Some(CancelRoute {
            target: Some(target.clone()),
            tls: None,
            tcp,
        });
        Ok(conn)
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
            let mut conn = startup(Box::new(established.stream), config, Some(target), binding)
                .await
                .map_err(|e| (e, Stage::Startup { tls: true }))?;
            conn.cancel_route = Some(CancelRoute {
                target: Some(target.clone()),
                tls: Some((connector.clone(), host)),
                tcp,
            });
            Ok(conn)
        }
    }
}

/// A session over a transport the caller opened: TLS negotiated on it as `sslmode` says, verified against the
/// first host of `config` (`localhost` when none is given), then the startup.
pub(crate) async fn connect_over(
    transport: Box<dyn Transport>,
    config: &Config,
) -> Result<Connection, Error> {
    startup_parameters(config)?;
    config.refuse_unhonored(Opening::CallersTransport)?;
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
            let mut conn = startup(Box::new(established.stream), config, None, binding).await?;
            conn.cancel_route = Some(CancelRoute {
                target: None,
                tls: Some((tls, host)),
                tcp: TcpOptions::of(config),
            });
            Ok(conn)
        }
    }
}

/// The startup message parameters and credentials from the configuration.
///
/// `tls_binding` is `None` without TLS, else the channel binding data of the TLS session (or why it has none).
async fn startup(
    transport: Box<dyn Transport>,
    config: &Config,
    target: Option<&Target>,
    tls_binding: Option<Result<Vec<u8>, String>>,
) -> Result<Connection, Error> {
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
    Ok(conn)
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
