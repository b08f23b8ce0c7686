//! Opening one session on one target: the socket, libpq's sslmode fallbacks (a second attempt in plaintext or
//! with TLS where the mode allows it), the startup with the password from the configuration or the password
//! file, and OAuth's second connection after discovery (with the token the application's hook gave). Which
//! targets to try, in what order, and whether a session fits `target_session_attrs` is the client's part
//! (`client/connect.rs`).

use tracing::debug;

use crate::config::{Host, OAuthHook, OAuthRequest, Opening, SslMode, Target};
use crate::conn::connection::Connection;
use crate::conn::dial::{CancelRoute, Negotiated, TcpOptions, open_transport, secure, tls_host};
use crate::proto::{BearerToken, OAuthDiscovery, Protocol};
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

/// OAuth across the connections to one target: what the first server advertised, then the token for the second.
#[derive(Debug, Default)]
struct OAuthState {
    /// The token the hook gave, presented by the next startup (which takes it).
    token: Option<BearerToken>,
    /// The discovery document the first server named; the second must name the same.
    known_discovery: Option<String>,
    /// Set when a startup ended in OAuth discovery: what the hook needs.
    discovered: Option<OAuthDiscovery>,
}

/// Connects to one target as [`connect_once`] does; when the server asks for an OAuth token (libpq's discovery),
/// asks the application's hook for one and connects exactly once more, presenting it.
pub(crate) async fn connect_target(
    config: &Config,
    target: &Target,
    tls: Option<&TlsConnector>,
) -> Result<Connection, Error> {
    let mut oauth = OAuthState::default();
    let error = match connect_once(config, target, tls, &mut oauth).await {
        Ok(conn) => return Ok(conn),
        Err(e) => e,
    };
    let (Some(discovered), Some(hook)) = (oauth.discovered.take(), config.get_oauth_hook()) else {
        return Err(error);
    };
    debug!(
        openid_configuration = %discovered.openid_configuration,
        scope = ?discovered.scope,
        "the server asked for an OAuth bearer token; asking the application's hook for one"
    );
    oauth.token = Some(obtain_token(config, hook, &discovered).await?);
    oauth.known_discovery = Some(discovered.openid_configuration);
    connect_once(config, target, tls, &mut oauth).await
}

/// Asks the application's hook for a token for what the server advertised.
async fn obtain_token(
    config: &Config,
    hook: &OAuthHook,
    discovered: &OAuthDiscovery,
) -> Result<BearerToken, Error> {
    let issuer = config.get_oauth_issuer().unwrap_or_default();
    let request = OAuthRequest {
        // The exchange that got here checked oauth_issuer, so this only strips a well-known part.
        issuer: crate::proto::oauth_issuer_identifier(issuer)
            .unwrap_or_else(|_| issuer.to_string()),
        openid_configuration: discovered.openid_configuration.clone(),
        // As libpq: the server's scope never overrides oauth_scope.
        scope: config
            .get_oauth_scope()
            .map(str::to_string)
            .or_else(|| discovered.scope.clone()),
        client_id: config.get_oauth_client_id().map(str::to_string),
        client_secret: config.get_oauth_client_secret().map(str::to_string),
    };
    let token = hook
        .call(request)
        .await
        .map_err(|e| Error::auth_caused_by("the OAuth token hook failed", e))?;
    BearerToken::new(token)
}

/// Connects to one target with libpq's sslmode behaviour:
/// - `disable`, and Unix-domain sockets in every mode (libpq never uses TLS on them): plaintext.
/// - `allow`: plaintext first; if the server rejects that startup, again with TLS.
/// - `prefer`: TLS if the server accepts the SSLRequest, else plaintext on the same connection; if the
///   handshake fails or the server rejects the startup over TLS, again in plaintext.
/// - `require`, `verify-ca`, `verify-full`: TLS or nothing.
///
/// An OAuth refusal (discovery included) is an authentication error, never a server error, so it starts no
/// fallback: a token only goes where the first attempt went.
async fn connect_once(
    config: &Config,
    target: &Target,
    tls: Option<&TlsConnector>,
    oauth: &mut OAuthState,
) -> Result<Connection, Error> {
    let tls = tls.filter(|_| matches!(target.host, Host::Tcp(_)));
    let Some(tls) = tls else {
        return attempt(config, target, None, oauth)
            .await
            .map_err(|(e, _)| e);
    };
    match config.get_ssl_mode() {
        SslMode::Allow => match attempt(config, target, None, oauth).await {
            Err((e, Stage::Startup { tls: false })) if e.kind() == ErrorKind::Db => {
                debug!(error = %e, "the server rejected the plaintext startup; retrying with TLS (sslmode=allow)");
                retry(attempt(config, target, Some((tls, true)), oauth).await, e)
            }
            other => other.map_err(|(e, _)| e),
        },
        SslMode::Prefer => match attempt(config, target, Some((tls, true)), oauth).await {
            Err((e, Stage::Handshake)) => {
                debug!(error = %e, "the TLS handshake failed; retrying in plaintext (sslmode=prefer)");
                retry(attempt(config, target, None, oauth).await, e)
            }
            Err((e, Stage::Startup { tls: true })) if e.kind() == ErrorKind::Db => {
                debug!(error = %e, "the server rejected the startup over TLS; retrying in plaintext (sslmode=prefer)");
                retry(attempt(config, target, None, oauth).await, e)
            }
            other => other.map_err(|(e, _)| e),
        },
        _ => attempt(config, target, Some((tls, false)), oauth)
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
    oauth: &mut OAuthState,
) -> Result<Connection, (Error, Stage)> {
    let tcp = TcpOptions::of(config);
    let mut transport = open_transport(target, &tcp)
        .await
        .map_err(|e| (e, Stage::Setup))?;
    let Some((connector, plain_if_refused)) = tls else {
        return plain(transport, config, target, tcp, oauth).await;
    };
    match secure(&mut transport, connector, plain_if_refused)
        .await
        .map_err(|e| (e, Stage::Setup))?
    {
        Negotiated::Plain => plain(transport, config, target, tcp, oauth).await,
        Negotiated::Tls => {
            let host = tls_host(target);
            let established = tls::handshake(connector, transport, &host)
                .await
                .map_err(|e| (e, Stage::Handshake))?;
            let binding = Some(established.channel_binding);
            let mut conn = startup(
                Box::new(established.stream),
                config,
                Some(target),
                binding,
                oauth,
            )
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

/// The startup of [`attempt`] in plaintext.
async fn plain(
    transport: Box<dyn Transport>,
    config: &Config,
    target: &Target,
    tcp: TcpOptions,
    oauth: &mut OAuthState,
) -> Result<Connection, (Error, Stage)> {
    let mut conn = startup(transport, config, Some(target), None, oauth)
        .await
        .map_err(|e| (e, Stage::Startup { tls: false }))?;
    conn.cancel_route = Some(CancelRoute {
        target: Some(target.clone()),
        tls: None,
        tcp,
    });
    Ok(conn)
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
    // A caller's transport cannot be opened twice, which OAuth's token needs after discovery.
    let mut oauth = OAuthState::default();
    let no_second_connection = |e: Error, oauth: OAuthState| match oauth.discovered {
        Some(_) => Error::auth_caused_by(
            "the server asked for an OAuth bearer token, which is presented on a second connection; a \
             transport the caller opened cannot be opened again: connect with Client::connect instead",
            e,
        ),
        None => e,
    };
    let Some(tls) = tls else {
        return startup(transport, config, None, None, &mut oauth)
            .await
            .map_err(|e| no_second_connection(e, oauth));
    };
    let mode = config.get_ssl_mode();
    let plain_if_refused = matches!(mode, SslMode::Allow | SslMode::Prefer);
    let mut transport = transport;
    match secure(&mut transport, &tls, plain_if_refused).await? {
        Negotiated::Plain => startup(transport, config, None, None, &mut oauth)
            .await
            .map_err(|e| no_second_connection(e, oauth)),
        Negotiated::Tls => {
            let established = tls::handshake(&tls, transport, &host).await?;
            let binding = Some(established.channel_binding);
            let mut conn = startup(
                Box::new(established.stream),
                config,
                None,
                binding,
                &mut oauth,
            )
            .await
            .map_err(|e| no_second_connection(e, oauth))?;
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
/// `oauth` gives the token to present, if any, and takes what the server answered to OAuth discovery.
async fn startup(
    transport: Box<dyn Transport>,
    config: &Config,
    target: Option<&Target>,
    tls_binding: Option<Result<Vec<u8>, String>>,
    oauth: &mut OAuthState,
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
    let mut startup = startup_params(config, params, password, tls_binding);
    // A Unix-domain socket keeps a bearer token as private as TLS does (libpq allows OAuth over one too).
    startup.oauth.protected |= target.is_some_and(|t| matches!(t.host, Host::Unix(_)));
    startup.oauth.token = oauth.token.take();
    startup.oauth.known_discovery = oauth.known_discovery.clone();
    let protocol = Protocol::new(startup, limits(config))?;
    let mut conn = Connection::new(transport, protocol);
    if let Err(e) = conn.startup().await {
        oauth.discovered = conn.protocol.take_oauth_discovery();
        return Err(e);
    }
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
