//! Connecting a [`Client`]: the hosts of the configuration tried in order (or shuffled), `connect_timeout` per
//! host, and the session checks of `target_session_attrs`. Each attempt opens its session through the
//! connection layer (`conn/connect.rs`).

use std::hash::{BuildHasher, Hasher};

use tracing::{Instrument as _, debug};

use crate::client::Client;
use crate::client::semconv::{Peer, client_span};
use crate::client::telemetry;
use crate::config::{Host, LoadBalanceHosts, Opening, Target, TargetSessionAttrs};
use crate::conn::connect::{connect_over, connect_target};
use crate::proto::row::SimpleQueryMessage;
use crate::proto::startup_parameters;
use crate::tls::TlsConnector;
use crate::transport::{Transport, runtime};
use crate::{Config, Error};

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
        config.refuse_unhonored(Opening::Dialed)?;
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
                let span = connect_span(config, Some(target));
                // The session check runs inside connect_timeout too: a server that stalls after startup must
                // not hang connect().
                let attempt = runtime::timeout(config.get_connect_timeout(), async {
                    let conn = connect_target(config, target, tls.as_ref()).await?;
                    let mut client = Client::from_connection(conn, config);
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
                    Ok(Err(e)) => {
                        telemetry::record_error(&span, e);
                        debug!(error = %e, "connection attempt failed")
                    }
                    Err(()) => {
                        if !span.is_disabled() {
                            span.record("error.type", "timeout");
                            span.record("otel.status_code", "ERROR");
                        }
                        debug!("connection attempt timed out (connect_timeout)")
                    }
                });
                match attempt {
                    Ok(Ok((client, None))) => return Ok(client),
                    Ok(Ok((client, Some(misfit)))) => {
                        failures.push((described, Error::connect_rejected(misfit.to_string())));
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
    /// Host, port and connect_timeout from `config` are not used. `requirepeer` cannot be checked on such a
    /// transport, so it is refused with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported).
    ///
    /// TLS is negotiated on it as `sslmode` says, and verified against `host` (the first host of `config`;
    /// `localhost` when none is given).
    pub async fn connect_with_transport(
        transport: Box<dyn Transport>,
        config: &Config,
    ) -> Result<Client, Error> {
        let span = connect_span(config, None);
        let conn = connect_over(transport, config)
            .instrument(span.clone())
            .await
            .inspect_err(|e| telemetry::record_error(&span, e))?;
        Ok(Client::from_connection(conn, config))
    }
}

/// The span of one connection attempt (`None`: over a transport the caller opened): where to and how, with
/// whom as whom, in the OpenTelemetry conventions' terms where they have one (`server.address`,
/// `server.port`, `db.namespace`, `network.peer.address` for a `hostaddr`); never the password.
fn connect_span(config: &Config, target: Option<&Target>) -> tracing::Span {
    let span = client_span!(
        tracing::Level::INFO,
        "connect",
        network.peer.address = target.and_then(|t| t.hostaddr).map(tracing::field::display),
        transport = target.is_none().then_some("caller's"),
        sslmode = config.get_ssl_mode().as_str(),
        user = config.get_user(),
    );
    if !span.is_disabled() {
        let peer = Peer::of(config, target);
        peer.record(&span);
        span.record("otel.name", format!("connect {}", peer.namespace));
    }
    span
}

fn describe(target: &Target) -> String {
    match (&target.host, target.hostaddr) {
        (Host::Tcp(host), Some(addr)) => format!("{host} ({addr}) port {}", target.port),
        (Host::Tcp(host), None) => format!("{host} port {}", target.port),
        (Host::Unix(dir), _) => format!("socket {}/.s.PGSQL.{}", dir.display(), target.port),
    }
}

/// Whether the session matches `target_session_attrs` (libpq's checks: read-only-ness and recovery state):
/// `None` if it does, else why not, in libpq's words.
async fn session_fits(
    client: &mut Client,
    wanted: TargetSessionAttrs,
) -> Result<Option<&'static str>, Error> {
    if wanted == TargetSessionAttrs::Any {
        return Ok(None);
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
        TargetSessionAttrs::ReadWrite if read_only => Some("session is read-only"),
        TargetSessionAttrs::ReadOnly if !read_only => Some("session is not read-only"),
        TargetSessionAttrs::Primary if in_recovery => Some("server is in hot standby mode"),
        TargetSessionAttrs::Standby if !in_recovery => Some("server is not in hot standby mode"),
        _ => None,
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
    use crate::conn::dial::TcpOptions;

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
        let route = client.lock().conn.cancel_route.clone().unwrap();
        assert_eq!(route.tcp, TcpOptions::of(&config));
        assert_eq!(route.tcp.user_timeout, Some(Duration::from_millis(4321)));
        assert_eq!(route.tcp.keepalive.and_then(|k| k.count), Some(4));
        client.close().await.unwrap();
        server.await.unwrap();
    }
}
