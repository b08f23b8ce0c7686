//! Connecting: hosts tried in order (or shuffled), connect_timeout per host, startup, and the session checks of
//! `target_session_attrs`.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use crate::client::Client;
use crate::config::{ChannelBinding, Host, LoadBalanceHosts, SslMode, Target, TargetSessionAttrs};
use crate::connection::Connection;
use crate::proto::{Limits, Protocol, StartupParams};
use crate::row::SimpleQueryMessage;
use crate::transport::Transport;
use crate::{Config, Error, runtime};

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
        check_tls(config)?;
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
                // The session check runs inside connect_timeout too: a server that stalls after startup must
                // not hang connect().
                let attempt = runtime::timeout(config.get_connect_timeout(), async {
                    let mut client = connect_target(config, target).await?;
                    let fits = session_fits(&mut client, wanted).await?;
                    Ok::<_, Error>((client, fits))
                })
                .await;
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
    pub async fn connect_with_transport(
        transport: Box<dyn Transport>,
        config: &Config,
    ) -> Result<Client, Error> {
        check_tls(config)?;
        startup(transport, config, None).await
    }
}

fn check_tls(config: &Config) -> Result<(), Error> {
    // require must not quietly send a password without the binding it asked for.
    if config.get_channel_binding() == ChannelBinding::Require {
        return Err(Error::unsupported(
            "channel_binding=require needs TLS, which this version of wasi-pg-client does not support yet",
        ));
    }
    match config.get_ssl_mode() {
        SslMode::Disable | SslMode::Allow | SslMode::Prefer => Ok(()),
        // allow and prefer fall back to plaintext, as libpq does when TLS is not available.
        other => Err(Error::unsupported(format!(
            "sslmode={} needs TLS, which this version of wasi-pg-client does not support yet",
            other.as_str()
        ))),
    }
}

fn describe(target: &Target) -> String {
    match (&target.host, target.hostaddr) {
        (Host::Tcp(host), Some(addr)) => format!("{host} ({addr}) port {}", target.port),
        (Host::Tcp(host), None) => format!("{host} port {}", target.port),
        (Host::Unix(dir), _) => format!("socket {}/.s.PGSQL.{}", dir.display(), target.port),
    }
}

/// Opens the transport for one target and runs the startup on it.
async fn connect_target(config: &Config, target: &Target) -> Result<Client, Error> {
    let transport = open_transport(&target.host, target.hostaddr, target.port).await?;
    startup(transport, config, Some(target)).await
}

#[cfg(target_os = "wasi")]
async fn open_transport(
    host: &Host,
    hostaddr: Option<IpAddr>,
    port: u16,
) -> Result<Box<dyn Transport>, Error> {
    match host {
        Host::Tcp(name) => Ok(Box::new(
            crate::transport::wasi::connect_tcp(name, hostaddr, port)
                .await
                .map_err(Error::io)?,
        )),
        Host::Unix(dir) => Err(Error::unsupported(format!(
            "Unix-domain sockets ({}) are not available on WASI",
            dir.display()
        ))),
    }
}

#[cfg(all(not(target_os = "wasi"), feature = "tokio"))]
async fn open_transport(
    host: &Host,
    hostaddr: Option<IpAddr>,
    port: u16,
) -> Result<Box<dyn Transport>, Error> {
    match host {
        Host::Tcp(name) => Ok(Box::new(
            crate::transport::tokio::connect_tcp(name, hostaddr, port)
                .await
                .map_err(Error::io)?,
        )),
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

/// The startup message parameters and credentials from the configuration.
async fn startup(
    transport: Box<dyn Transport>,
    config: &Config,
    target: Option<&Target>,
) -> Result<Client, Error> {
    let user = config.effective_user()?;
    let dbname = config.effective_dbname()?;
    let password = match (config.get_password(), target) {
        (Some(password), _) => Some(password.to_vec()),
        (None, Some(target)) => password_from_file(config, target, &dbname, &user),
        (None, None) => None,
    };
    let mut params = vec![
        ("user".to_string(), user.clone()),
        ("database".to_string(), dbname),
        // Text results are decoded as UTF-8, so the session must send UTF-8.
        ("client_encoding".to_string(), "UTF8".to_string()),
    ];
    if let Some(name) = config.get_application_name() {
        params.push(("application_name".to_string(), name.to_string()));
    }
    if let Some(options) = config.get_options() {
        params.push(("options".to_string(), options.to_string()));
    }
    for (name, value) in config.get_params() {
        params.retain(|(k, _)| k != name);
        params.push((name.clone(), value.clone()));
    }
    let startup = StartupParams {
        params,
        password,
        require_auth: config.get_require_auth().clone(),
    };
    let limits = Limits {
        max_message_size: config.get_max_message_size(),
    };
    let protocol = Protocol::new(startup, limits)?;
    let mut conn = Connection::new(transport, protocol);
    conn.startup().await?;
    Ok(Client::from_connection(conn))
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
