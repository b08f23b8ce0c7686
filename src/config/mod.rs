//! Connection configuration, compatible with libpq's connection strings and `PG*` environment variables.
//!
//! A [`Config`] comes from a connection string ([`Config::parse`]: a `postgresql://` URI or libpq's
//! `key=value` form), from the environment ([`Config::from_env`]), from builder calls, or from a mix of these.
//! As in libpq, a value given explicitly wins over its environment variable, and the variable over the
//! default. Defaults are not stored: the getters and the list of hosts to try apply them, so "not set" stays
//! distinguishable from "set to the default".
//!
//! Settings kept for libpq compatibility (keepalives, TLS files, ...) are checked like libpq checks them and
//! kept as text ([`Config::get_raw`]), so a connection string written for `psql` is accepted here. Every
//! accepted keyword is honored, has no effect by libpq's own rule, or is refused with
//! [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported): see the README's table of libpq keywords, which a
//! unit test holds to the code.
//!
//! Longer than 800 lines on purpose: [`Config`]'s setter and getter for each of about seventy libpq keywords,
//! each with its rustdoc, side by side; parsing is in `conninfo.rs`, `env.rs` and `settings.rs`.

mod audit;
mod conninfo;
mod env;
#[cfg(any(feature = "tokio", target_os = "wasi"))]
pub(crate) mod keepalive;
mod modes;
mod oauth;
#[cfg(any(feature = "tokio", target_os = "wasi"))]
mod pgpass;
mod require_auth;
mod scram_keys;
mod settings;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::Error;
use modes::Keyword as _;
pub(crate) use scram_keys::ScramKeys;

#[cfg(any(feature = "tokio", target_os = "wasi"))]
pub(crate) use audit::Opening;
pub use modes::{
    ChannelBinding, LoadBalanceHosts, ProtocolVersion, QueryMode, Replication, SslMode,
    TargetSessionAttrs,
};
pub(crate) use oauth::OAuthHook;
pub use oauth::{OAuthHookError, OAuthRequest, OAuthTokenFuture};
#[cfg(any(feature = "tokio", target_os = "wasi"))]
pub(crate) use pgpass::passfile_lookup;
pub use require_auth::{AuthMethod, RequireAuth};
pub(crate) use tls::InMemoryTls;
pub use tls::{SslCertMode, SslNegotiation};

/// The port used when none is given.
const DEFAULT_PORT: u16 = 5432;

/// The default Unix-domain socket directory, as in Debian's libpq; also what the password file calls
/// `localhost`.
#[cfg(any(feature = "tokio", target_os = "wasi"))]
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// The default cap on the size of one message from the server.
const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// The default cap on the SCRAM iteration count a server may ask for (PostgreSQL's own default is 4096).
const DEFAULT_SCRAM_MAX_ITERATIONS: u32 = 100_000;

/// The default number of prepared statements the statement cache keeps per connection.
const DEFAULT_STATEMENT_CACHE_CAPACITY: usize = 256;

/// libpq waits at least this long when a connect timeout is set, because a timeout rounded down to whole
/// seconds could otherwise expire almost at once.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a server listens: a TCP host or a Unix-domain socket directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A host name or IP address reached over TCP. An empty name stands for the default host (an empty entry
    /// in a `host` list).
    Tcp(String),
    /// The directory holding the server's socket file (`.s.PGSQL.<port>`). Like libpq, a name starting with
    /// `@` is kept here too: on Linux it names a socket in the abstract namespace.
    Unix(PathBuf),
}

impl Host {
    /// Classifies a `host` value like libpq: an absolute path (or `@name`) is a socket directory.
    fn from_name(name: &str) -> Host {
        if name.starts_with('/') || name.starts_with('@') {
            Host::Unix(PathBuf::from(name))
        } else {
            Host::Tcp(name.to_string())
        }
    }

    /// Whether this is an empty entry, which means "the default host".
    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    fn is_default(&self) -> bool {
        matches!(self, Host::Tcp(name) if name.is_empty())
    }

    /// The host used when none is given: the default socket directory where Unix-domain sockets exist,
    /// else `localhost` (on WASI and Windows).
    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    fn platform_default() -> Host {
        if cfg!(unix) {
            Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))
        } else {
            Host::Tcp("localhost".to_string())
        }
    }
}

/// One server to try, with its defaults filled in.
///
/// When `hostaddr` is set the connection goes to that address over TCP without a name lookup; `host` then
/// only names the server (for TLS verification and the password file), as in libpq.
#[cfg(any(feature = "tokio", target_os = "wasi"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The host name or socket directory (never the empty default entry).
    pub(crate) host: Host,
    /// The numeric address to connect to instead of looking up `host`.
    pub(crate) hostaddr: Option<IpAddr>,
    /// The TCP port, or the number in the socket file name.
    pub(crate) port: u16,
    /// The user the server process must run as (`requirepeer`); only for a Unix-domain socket, the only kind
    /// whose peer the kernel can name (libpq checks no other either).
    pub(crate) require_peer: Option<String>,
}

/// Connection settings, compatible with libpq.
///
/// ```
/// use std::time::Duration;
/// use wasi_pg_client::Config;
///
/// let config: Config = "postgresql://alice@db1:5433,db2/app?connect_timeout=10".parse()?;
/// assert_eq!(config.get_user(), Some("alice"));
/// assert_eq!(config.get_ports(), [5433, 5432]);
/// assert_eq!(config.get_connect_timeout(), Some(Duration::from_secs(10)));
///
/// let same = Config::parse("host=db1,db2 port=5433,5432 user=alice dbname=app connect_timeout=10")?;
/// assert_eq!(same.get_hosts(), config.get_hosts());
///
/// let mut built = Config::new();
/// built.host("db1").port(5433).user("alice").password("secret").dbname("app");
/// assert!(!format!("{built:?}").contains("secret"));
/// # Ok::<(), wasi_pg_client::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Config {
    hosts: Vec<Host>,
    hostaddrs: Vec<Option<IpAddr>>,
    ports: Vec<u16>,
    user: Option<String>,
    password: Option<Vec<u8>>,
    dbname: Option<String>,
    options: Option<String>,
    application_name: Option<String>,
    fallback_application_name: Option<String>,
    /// As given; zero means no timeout, and the getter applies libpq's two-second minimum.
    connect_timeout: Option<Duration>,
    ssl_mode: Option<SslMode>,
    target_session_attrs: Option<TargetSessionAttrs>,
    load_balance_hosts: Option<LoadBalanceHosts>,
    require_auth: RequireAuth,
    channel_binding: Option<ChannelBinding>,
    params: Vec<(String, String)>,
    max_message_size: Option<usize>,
    scram_max_iterations: Option<u32>,
    query_mode: Option<QueryMode>,
    statement_cache_capacity: Option<usize>,
    /// As given; zero means no limit.
    query_timeout: Option<Duration>,
    /// As given; zero means no limit.
    read_timeout: Option<Duration>,
    /// Whether a lost connection is replaced, with its session restored (not a libpq setting).
    session_rebuild: bool,
    /// Whether request spans carry the statement text (not a libpq setting).
    trace_statements: bool,
    /// Settings kept as text, by libpq keyword (TLS files, keepalives, ...). Empty values are kept too:
    /// for some keys (`sslsni`) libpq gives them a meaning.
    raw: BTreeMap<&'static str, String>,
    /// Keywords given with an empty value. They read as "default", but like libpq they still keep the
    /// environment variable from supplying a value.
    given_empty: BTreeSet<&'static str>,
    /// Root certificates and a client identity given through the API.
    in_memory_tls: InMemoryTls,
    /// The application's OAuth bearer-token hook ([`Config::oauth_bearer_token`]).
    oauth_hook: Option<OAuthHook>,
}

impl Config {
    /// A configuration with nothing set.
    pub fn new() -> Config {
        Config::default()
    }

    /// Parses a connection string: a URI (`postgresql://` or `postgres://`) or libpq's `key=value` form.
    ///
    /// Neither the environment nor defaults are consulted; the result is checked on its own (for example,
    /// two ports need two hosts). Unknown keywords and invalid values are errors; a password never appears in
    /// an error message.
    pub fn parse(conninfo: &str) -> Result<Config, Error> {
        let config = Config::parse_unchecked(conninfo)?;
        config.check()?;
        Ok(config)
    }

    /// Parses without the checks across settings, which must wait until the environment has been applied.
    fn parse_unchecked(conninfo: &str) -> Result<Config, Error> {
        // libpq would treat a URI after leading spaces as a keyword and quote it, password and all, in
        // its error message; skipping the spaces avoids that.
        let conninfo =
            conninfo.trim_start_matches(|c: char| u8::try_from(c).is_ok_and(conninfo::is_space));
        let pairs = match conninfo::uri_prefix_len(conninfo) {
            Some(prefix_len) => conninfo::parse_uri(conninfo, prefix_len)?,
            None => conninfo::parse_keyword_value(conninfo)?,
        };
        let mut config = Config::new();
        for pair in pairs {
            config.apply_pair(pair)?;
        }
        Ok(config)
    }

    /// Adds a host to try. A name starting with `/` is a Unix-domain socket directory; an empty name stands
    /// for the default host.
    pub fn host(&mut self, host: &str) -> &mut Config {
        self.hosts.push(Host::from_name(host));
        self
    }

    /// Adds a numeric address to connect to, for the host at the same position (libpq's `hostaddr`).
    pub fn hostaddr(&mut self, hostaddr: IpAddr) -> &mut Config {
        self.hostaddrs.push(Some(hostaddr));
        self
    }

    /// Adds a port: one port applies to every host, otherwise there is one per host.
    pub fn port(&mut self, port: u16) -> &mut Config {
        self.ports.push(port);
        self
    }

    /// Sets the user name.
    pub fn user(&mut self, user: &str) -> &mut Config {
        self.user = Some(user.to_string());
        self
    }

    /// Sets the password. It is never shown by `Debug` or in error messages.
    pub fn password(&mut self, password: impl AsRef<[u8]>) -> &mut Config {
        self.set_password_value(password.as_ref());
        self
    }

    /// Sets the database name (the default is the user name).
    pub fn dbname(&mut self, dbname: &str) -> &mut Config {
        self.dbname = Some(dbname.to_string());
        self
    }

    /// Sets command-line options sent to the server (for example `-c search_path=app`).
    pub fn options(&mut self, options: &str) -> &mut Config {
        self.options = Some(options.to_string());
        self
    }

    /// Sets the `application_name` reported to the server.
    pub fn application_name(&mut self, application_name: &str) -> &mut Config {
        self.application_name = Some(application_name.to_string());
        self
    }

    /// Sets the application name used when `application_name` is not set.
    pub fn fallback_application_name(&mut self, fallback_application_name: &str) -> &mut Config {
        self.fallback_application_name = Some(fallback_application_name.to_string());
        self
    }

    /// Sets how long to wait for each connection attempt. Zero means no limit; anything shorter than two
    /// seconds is raised to two, as in libpq.
    pub fn connect_timeout(&mut self, connect_timeout: Duration) -> &mut Config {
        self.connect_timeout = Some(connect_timeout);
        self
    }

    /// Sets whether TLS is used.
    pub fn ssl_mode(&mut self, ssl_mode: SslMode) -> &mut Config {
        self.ssl_mode = Some(ssl_mode);
        self
    }

    /// Sets which kind of server the connection must reach.
    pub fn target_session_attrs(
        &mut self,
        target_session_attrs: TargetSessionAttrs,
    ) -> &mut Config {
        self.target_session_attrs = Some(target_session_attrs);
        self
    }

    /// Sets the order in which several hosts are tried.
    pub fn load_balance_hosts(&mut self, load_balance_hosts: LoadBalanceHosts) -> &mut Config {
        self.load_balance_hosts = Some(load_balance_hosts);
        self
    }

    /// Makes the connection a replication connection (libpq's `replication`); see
    /// [`Client::start_logical_replication`](crate::Client::start_logical_replication).
    pub fn replication(&mut self, replication: Replication) -> &mut Config {
        self.raw
            .insert("replication", replication.as_str().to_string());
        self.given_empty.remove("replication");
        self
    }

    /// Sets which authentication methods the server may use.
    pub fn require_auth(&mut self, require_auth: RequireAuth) -> &mut Config {
        self.require_auth = require_auth;
        self
    }

    /// Sets whether SCRAM channel binding is used.
    pub fn channel_binding(&mut self, channel_binding: ChannelBinding) -> &mut Config {
        self.channel_binding = Some(channel_binding);
        self
    }

    /// Sets an extra parameter of the startup message (a server setting such as `search_path`), replacing
    /// an earlier value of the same name.
    pub fn param(&mut self, name: &str, value: &str) -> &mut Config {
        match self.params.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.params.push((name.to_string(), value.to_string())),
        }
        self
    }

    /// Sets how `query`, `execute` and friends run SQL text (default [`QueryMode::Cached`]). Behind PgBouncer in
    /// transaction or statement pooling mode use [`QueryMode::Unnamed`] (or [`QueryMode::Simple`]).
    ///
    /// ```
    /// use wasi_pg_client::config::{Config, QueryMode};
    /// let mut config = Config::parse("host=pgbouncer.internal user=app")?;
    /// config.query_mode(QueryMode::Unnamed);
    /// assert_eq!(config.get_query_mode(), QueryMode::Unnamed);
    /// # Ok::<(), wasi_pg_client::Error>(())
    /// ```
    pub fn query_mode(&mut self, query_mode: QueryMode) -> &mut Config {
        self.query_mode = Some(query_mode);
        self
    }

    /// Sets how many named prepared statements [`QueryMode::Cached`] keeps per connection (default 256). The
    /// least recently used is closed on the server when a new one needs its place; 0 turns the cache off, and
    /// SQL text then runs as in [`QueryMode::Unnamed`].
    pub fn statement_cache_capacity(&mut self, capacity: usize) -> &mut Config {
        self.statement_cache_capacity = Some(capacity);
        self
    }

    /// Turns session rebuild on or off (default off; not a libpq setting).
    ///
    /// When on, a client whose connection was lost (an I/O error such as a reset or an unexpected end of
    /// stream, a FATAL error such as an administrator's `pg_terminate_backend`, or a
    /// [`read_timeout`](Config::read_timeout) that gave it up) connects again with this
    /// configuration at the start of its next call, and restores what it safely can: settings made through
    /// [`Client::set_parameter`](crate::Client::set_parameter), channels subscribed through
    /// [`Client::listen`](crate::Client::listen), and prepared statements (prepared again under the same names
    /// and types, so existing [`Statement`](crate::Statement) handles keep working; one whose result columns
    /// changed is not restored and fails as "does not exist"). The statement cache starts empty.
    ///
    /// - The call that runs into the break returns its error; the rebuild happens at the start of the next one.
    ///   Notifications sent while the connection was down are lost.
    /// - A transaction is never rebuilt. If the connection broke while one was open (the last status was not
    ///   idle, or a [`Transaction`](crate::Transaction) was active), the next call returns a connection-broken
    ///   error saying its work was lost, without connecting; the call after that rebuilds. Drop the
    ///   `Transaction` on that error: calls made through it after the rebuild run outside any transaction.
    /// - Settings made with plain `SET`, `LISTEN` run as SQL, temporary tables and advisory locks are not
    ///   restored. A client made by [`Client::connect_with_transport`](crate::Client::connect_with_transport)
    ///   is never rebuilt (its transport cannot be opened again), nor is one that broke on a protocol
    ///   violation.
    ///
    /// ```
    /// let mut config = wasi_pg_client::Config::parse("host=db user=app")?;
    /// config.session_rebuild(true);
    /// assert!(config.get_session_rebuild());
    /// # Ok::<(), wasi_pg_client::Error>(())
    /// ```
    pub fn session_rebuild(&mut self, rebuild: bool) -> &mut Config {
        self.session_rebuild = rebuild;
        self
    }

    /// Whether the `tracing` span of each request records the statement text, in its `statement` field
    /// (default off; not a libpq setting).
    ///
    /// Every request runs in a DEBUG-level span that names its kind (`query`, `execute`, `prepare`,
    /// `simple_query`, `copy_in`, ...); with this on, SQL text given to the call is recorded too. Parameters are
    /// never recorded, so values bound with `$1` stay out of traces; SQL text with literals in it does not.
    ///
    /// ```
    /// let mut config = wasi_pg_client::Config::parse("host=db user=app")?;
    /// config.trace_statements(true);
    /// assert!(config.get_trace_statements());
    /// # Ok::<(), wasi_pg_client::Error>(())
    /// ```
    pub fn trace_statements(&mut self, trace: bool) -> &mut Config {
        self.trace_statements = trace;
        self
    }

    /// Sets how long the server may take to answer each request before the client cancels it (default: no
    /// limit; zero means no limit). Not a libpq setting: libpq leaves this to the server's `statement_timeout`,
    /// which cannot tell a slow query from a slow network.
    ///
    /// When a request has not been answered in time, the client sends a cancel request on a new connection
    /// (see [`CancelToken`](crate::CancelToken)), waits until the server has taken it, reads the request's
    /// answer to its end (its 57014 error or late results are discarded), and returns an
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) error; the connection stays usable, and a transaction
    /// block the request ran in is then failed. Each request counts on its own, from when the caller first
    /// waits for its answer (SQL text that must be prepared first makes two requests); time spent sending COPY
    /// data does not count. Requests whose futures were dropped are read out by the next call under the same
    /// limit. If the cancel cannot be sent (a client made by
    /// [`Client::connect_with_transport`](crate::Client::connect_with_transport) has nowhere to send it) or
    /// the server does not end the request within another timeout (at least five seconds), the connection is
    /// closed instead.
    ///
    /// [`Client::set_query_timeout`](crate::Client::set_query_timeout) changes it for one connection and
    /// [`Client::with_query_timeout`](crate::Client::with_query_timeout) for one call.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut config = wasi_pg_client::Config::parse("host=db user=app")?;
    /// config.query_timeout(Duration::from_secs(30));
    /// assert_eq!(config.get_query_timeout(), Some(Duration::from_secs(30)));
    /// # Ok::<(), wasi_pg_client::Error>(())
    /// ```
    pub fn query_timeout(&mut self, timeout: Duration) -> &mut Config {
        self.query_timeout = Some(timeout);
        self
    }

    /// Sets how long a request may wait without receiving a single byte from the server (default: no limit;
    /// zero means no limit; not a libpq setting).
    ///
    /// When it runs out, the call fails with an [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) error and
    /// the connection is closed: an answer may still be on its way, so the connection is out of step. This is
    /// for a server or network that stopped answering; set it above the longest query, or use
    /// [`query_timeout`](Self::query_timeout) to stop slow queries and keep the connection. It does not apply
    /// while connecting (see [`connect_timeout`](Self::connect_timeout)) nor to an idle wait for
    /// notifications.
    pub fn read_timeout(&mut self, timeout: Duration) -> &mut Config {
        self.read_timeout = Some(timeout);
        self
    }

    /// Sets the operating-system user the server process must run as, checked on Unix-domain sockets before
    /// anything is sent (libpq's `requirepeer`). It guards against a local user who listens on the socket path
    /// in the server's place. The user id comes from the socket (SO_PEERCRED) and its name from the system's
    /// user database; a different name fails the connection with [`ErrorKind::Auth`](crate::ErrorKind::Auth).
    /// TCP connections are not checked, as in libpq (wasm32-wasip2 has only TCP), and
    /// [`Client::connect_with_transport`](crate::Client::connect_with_transport) refuses it, since it cannot
    /// check a transport the caller opened.
    ///
    /// ```
    /// let mut config = wasi_pg_client::Config::parse("host=/var/run/postgresql requirepeer=postgres")?;
    /// assert_eq!(config.get_require_peer(), Some("postgres"));
    /// config.require_peer("pgadmin");
    /// assert_eq!(config.get_require_peer(), Some("pgadmin"));
    /// # Ok::<(), wasi_pg_client::Error>(())
    /// ```
    pub fn require_peer(&mut self, user: &str) -> &mut Config {
        self.raw.insert("requirepeer", user.to_string());
        self.given_empty.remove("requirepeer");
        self
    }

    /// Turns TCP keepalives on or off (libpq's `keepalives`; default on). Unix-domain sockets have none.
    pub fn keepalives(&mut self, keepalives: bool) -> &mut Config {
        self.set_raw_number("keepalives", u64::from(keepalives))
    }

    /// Sets the idle time before the first TCP keepalive probe, in whole seconds (libpq's `keepalives_idle`;
    /// zero keeps the system default).
    pub fn keepalives_idle(&mut self, idle: Duration) -> &mut Config {
        self.set_raw_number("keepalives_idle", idle.as_secs())
    }

    /// Sets the time between unanswered TCP keepalive probes, in whole seconds (libpq's
    /// `keepalives_interval`; zero keeps the system default).
    pub fn keepalives_interval(&mut self, interval: Duration) -> &mut Config {
        self.set_raw_number("keepalives_interval", interval.as_secs())
    }

    /// Sets how many TCP keepalive probes may go unanswered before the connection is considered dead (libpq's
    /// `keepalives_count`; zero keeps the system default).
    pub fn keepalives_count(&mut self, count: u32) -> &mut Config {
        self.set_raw_number("keepalives_count", u64::from(count))
    }

    /// Sets how long data sent on the connection may stay unacknowledged by the server before the operating
    /// system gives the connection up (libpq's `tcp_user_timeout`, in milliseconds; zero keeps the system
    /// default). See [`get_tcp_user_timeout`](Self::get_tcp_user_timeout) for where it applies.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let mut config = wasi_pg_client::Config::parse("host=db tcp_user_timeout=10000")?;
    /// assert_eq!(config.get_tcp_user_timeout(), Some(Duration::from_secs(10)));
    /// config.tcp_user_timeout(Duration::from_millis(2500));
    /// assert_eq!(config.get_tcp_user_timeout(), Some(Duration::from_millis(2500)));
    /// # Ok::<(), wasi_pg_client::Error>(())
    /// ```
    pub fn tcp_user_timeout(&mut self, timeout: Duration) -> &mut Config {
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.set_raw_number("tcp_user_timeout", millis)
    }

    /// Keeps a number for a keyword that libpq reads as an `int`, clamped to its range.
    fn set_raw_number(&mut self, key: &'static str, value: u64) -> &mut Config {
        let value = value.min(i32::MAX as u64);
        self.raw.insert(key, value.to_string());
        self.given_empty.remove(key);
        self
    }

    /// Sets the largest message accepted from the server, in bytes (default 256 MiB). A larger message
    /// ends the connection before any memory is reserved for it.
    pub fn max_message_size(&mut self, max_message_size: usize) -> &mut Config {
        self.max_message_size = Some(max_message_size);
        self
    }

    /// Sets the highest SCRAM iteration count the client accepts from the server (default 100 000).
    ///
    /// The server chooses the count, and the client must run that many rounds of PBKDF2 before the server
    /// has proved anything, so a server (or an impostor) asking for billions would tie up the client. A larger
    /// count is refused before any work is done. PostgreSQL's default is 4096. Not a libpq setting.
    ///
    /// postgres-protocol, which computes the SCRAM proof, refuses counts above 100 000 on its own, so a cap
    /// above that has no effect yet.
    ///
    /// ```
    /// let mut config = wasi_pg_client::Config::new();
    /// config.scram_max_iterations(10_000);
    /// assert_eq!(config.get_scram_max_iterations(), 10_000);
    /// ```
    pub fn scram_max_iterations(&mut self, scram_max_iterations: u32) -> &mut Config {
        self.scram_max_iterations = Some(scram_max_iterations);
        self
    }

    /// Sets the lowest protocol version the server may negotiate down to (libpq's `min_protocol_version`).
    pub fn min_protocol_version(&mut self, version: ProtocolVersion) -> &mut Config {
        self.raw
            .insert("min_protocol_version", version.as_str().to_string());
        self.given_empty.remove("min_protocol_version");
        self
    }

    /// Sets the protocol version requested from the server (libpq's `max_protocol_version`).
    pub fn max_protocol_version(&mut self, version: ProtocolVersion) -> &mut Config {
        self.raw
            .insert("max_protocol_version", version.as_str().to_string());
        self.given_empty.remove("max_protocol_version");
        self
    }

    /// The hosts given, in order. Empty if none was (the default host is then used).
    pub fn get_hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The `hostaddr` values given, in order; `None` for an empty entry of the list.
    pub fn get_hostaddrs(&self) -> &[Option<IpAddr>] {
        &self.hostaddrs
    }

    /// The ports given, in order (an empty entry of a list reads as 5432). Empty if none was (5432 is then
    /// used).
    pub fn get_ports(&self) -> &[u16] {
        &self.ports
    }

    /// The user name, if given.
    pub fn get_user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password, if given.
    pub fn get_password(&self) -> Option<&[u8]> {
        self.password.as_deref()
    }

    /// The database name, if given.
    pub fn get_dbname(&self) -> Option<&str> {
        self.dbname.as_deref()
    }

    /// The command-line options for the server, if given.
    pub fn get_options(&self) -> Option<&str> {
        self.options.as_deref()
    }

    /// The application name: `application_name`, else `fallback_application_name`.
    pub fn get_application_name(&self) -> Option<&str> {
        self.application_name
            .as_deref()
            .or(self.fallback_application_name.as_deref())
    }

    /// The fallback application name, if given.
    pub fn get_fallback_application_name(&self) -> Option<&str> {
        self.fallback_application_name.as_deref()
    }

    /// How long to wait for each connection attempt: `None` for no limit, and at least two seconds.
    pub fn get_connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
            .filter(|timeout| !timeout.is_zero())
            .map(|timeout| timeout.max(MIN_CONNECT_TIMEOUT))
    }

    /// Whether TLS is used: as set, else [`SslMode::VerifyFull`] with `sslrootcert=system`, else
    /// [`SslMode::Prefer`] (as in libpq).
    pub fn get_ssl_mode(&self) -> SslMode {
        match self.ssl_mode {
            Some(mode) => mode,
            None if self.get_ssl_root_cert() == Some("system") => SslMode::VerifyFull,
            None => SslMode::Prefer,
        }
    }

    /// Which kind of server the connection must reach (default [`TargetSessionAttrs::Any`]).
    pub fn get_target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs.unwrap_or_default()
    }

    /// Whether this is a replication connection (default [`Replication::Off`]).
    pub fn get_replication(&self) -> Replication {
        self.get_raw("replication")
            .and_then(Replication::from_keyword)
            .unwrap_or_default()
    }

    /// The order in which several hosts are tried (default [`LoadBalanceHosts::Disable`]).
    pub fn get_load_balance_hosts(&self) -> LoadBalanceHosts {
        self.load_balance_hosts.unwrap_or_default()
    }

    /// Which authentication methods the server may use (by default any).
    pub fn get_require_auth(&self) -> &RequireAuth {
        &self.require_auth
    }

    /// Whether SCRAM channel binding is used (default [`ChannelBinding::Prefer`]).
    pub fn get_channel_binding(&self) -> ChannelBinding {
        self.channel_binding.unwrap_or_default()
    }

    /// The extra startup parameters, in order.
    pub fn get_params(&self) -> &[(String, String)] {
        &self.params
    }

    /// The largest message accepted from the server, in bytes (default 256 MiB).
    pub fn get_max_message_size(&self) -> usize {
        self.max_message_size.unwrap_or(DEFAULT_MAX_MESSAGE_SIZE)
    }

    /// How SQL text runs (see [`Config::query_mode`]).
    pub fn get_query_mode(&self) -> QueryMode {
        self.query_mode.unwrap_or_default()
    }

    /// How many prepared statements the statement cache keeps per connection.
    pub fn get_statement_cache_capacity(&self) -> usize {
        self.statement_cache_capacity
            .unwrap_or(DEFAULT_STATEMENT_CACHE_CAPACITY)
    }

    /// Whether session rebuild is on (see [`Config::session_rebuild`]).
    pub fn get_session_rebuild(&self) -> bool {
        self.session_rebuild
    }

    /// Whether request spans record the statement text (see [`Config::trace_statements`]).
    pub fn get_trace_statements(&self) -> bool {
        self.trace_statements
    }

    /// How long the server may take to answer each request (see [`Config::query_timeout`]); `None` for no
    /// limit.
    pub fn get_query_timeout(&self) -> Option<Duration> {
        self.query_timeout.filter(|timeout| !timeout.is_zero())
    }

    /// How long a request may wait without receiving a byte (see [`Config::read_timeout`]); `None` for no
    /// limit.
    pub fn get_read_timeout(&self) -> Option<Duration> {
        self.read_timeout.filter(|timeout| !timeout.is_zero())
    }

    /// Whether TCP keepalives are on: `keepalives` is not `0` (as in libpq, any other integer turns them on).
    pub fn get_keepalives(&self) -> bool {
        self.get_raw("keepalives")
            .and_then(settings::parse_int)
            .is_none_or(|n| n != 0)
    }

    /// The idle time before the first keepalive probe (`keepalives_idle`); `None` for the system default.
    pub fn get_keepalives_idle(&self) -> Option<Duration> {
        self.raw_positive("keepalives_idle")
            .map(|secs| Duration::from_secs(secs.into()))
    }

    /// The time between unanswered keepalive probes (`keepalives_interval`); `None` for the system default.
    pub fn get_keepalives_interval(&self) -> Option<Duration> {
        self.raw_positive("keepalives_interval")
            .map(|secs| Duration::from_secs(secs.into()))
    }

    /// How many keepalive probes may go unanswered (`keepalives_count`); `None` for the system default.
    pub fn get_keepalives_count(&self) -> Option<u32> {
        self.raw_positive("keepalives_count")
    }

    /// How long sent data may stay unacknowledged before the connection is given up (`tcp_user_timeout`, in
    /// milliseconds); `None` for the system default (also when it is zero).
    ///
    /// It is set as the socket option TCP_USER_TIMEOUT on every TCP connection, cancel connections included,
    /// once the connection is open, where the platform has that option: Linux, Android and Fuchsia. On other
    /// native platforms it is ignored with a debug trace, as libpq ignores it there. It is ignored on WASI too,
    /// with a debug trace per connection: wasi:sockets 0.2 has no such option. Unix-domain sockets have none
    /// either. Unlike libpq, which sets it only when keepalives are on, it is set whatever `keepalives` says.
    pub fn get_tcp_user_timeout(&self) -> Option<Duration> {
        self.raw_positive("tcp_user_timeout")
            .map(|millis| Duration::from_millis(millis.into()))
    }

    /// A positive integer setting kept as text; zero (or nothing) means the default.
    fn raw_positive(&self, key: &str) -> Option<u32> {
        self.get_raw(key)
            .and_then(settings::parse_int)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
    }

    /// The keepalive settings for TCP connections; `None` when keepalives are off.
    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub(crate) fn keepalive(&self) -> Option<keepalive::Keepalive> {
        if !self.get_keepalives() {
            return None;
        }
        Some(keepalive::Keepalive {
            idle: self.get_keepalives_idle(),
            interval: self.get_keepalives_interval(),
            count: self.get_keepalives_count(),
        })
    }

    /// The highest SCRAM iteration count accepted from the server (default 100 000).
    pub fn get_scram_max_iterations(&self) -> u32 {
        self.scram_max_iterations
            .unwrap_or(DEFAULT_SCRAM_MAX_ITERATIONS)
    }

    /// The lowest protocol version the server may negotiate down to: `min_protocol_version`, else
    /// [`ProtocolVersion::V3_0`] (as in libpq 18).
    pub fn get_min_protocol_version(&self) -> ProtocolVersion {
        self.get_raw("min_protocol_version")
            .and_then(ProtocolVersion::from_keyword)
            .unwrap_or_default()
    }

    /// The protocol version requested from the server: `max_protocol_version`; else, as in libpq 18,
    /// [`ProtocolVersion::V3_2`] when `min_protocol_version` asks for more than 3.0, and
    /// [`ProtocolVersion::V3_0`] otherwise (some poolers and old servers cannot negotiate a newer version).
    pub fn get_max_protocol_version(&self) -> ProtocolVersion {
        match self
            .get_raw("max_protocol_version")
            .and_then(ProtocolVersion::from_keyword)
        {
            Some(version) => version,
            None if self.get_min_protocol_version() > ProtocolVersion::V3_0 => {
                ProtocolVersion::V3_2
            }
            None => ProtocolVersion::V3_0,
        }
    }

    /// The file of trusted root certificates (`sslrootcert`), if given; `system` means the platform's store.
    pub fn get_ssl_root_cert(&self) -> Option<&str> {
        self.get_raw("sslrootcert")
    }

    /// The client certificate file (`sslcert`), if given.
    pub fn get_ssl_cert(&self) -> Option<&str> {
        self.get_raw("sslcert")
    }

    /// The client private key file (`sslkey`), if given.
    pub fn get_ssl_key(&self) -> Option<&str> {
        self.get_raw("sslkey")
    }

    /// The user the server process must run as on a Unix-domain socket (`requirepeer`; see
    /// [`require_peer`](Self::require_peer)), if given.
    pub fn get_require_peer(&self) -> Option<&str> {
        self.get_raw("requirepeer")
    }

    /// Whether the TLS handshake names the server (SNI). On by default; like libpq, any `sslsni` value that
    /// does not start with `1` turns it off.
    pub fn get_ssl_sni(&self) -> bool {
        self.raw
            .get("sslsni")
            .is_none_or(|value| value.starts_with('1'))
    }

    /// The value of a setting kept as text, by libpq keyword (what each does, on each target, is in the README's
    /// table of libpq keywords): `passfile`, `client_encoding`,
    /// `keepalives`, `keepalives_idle`, `keepalives_interval`, `keepalives_count`, `tcp_user_timeout`,
    /// `sslnegotiation`, `sslcompression`, `sslcert`, `sslkey`, `sslpassword`, `sslcertmode`, `sslrootcert`,
    /// `sslcrl`, `sslcrldir`, `sslsni`, `ssl_min_protocol_version`, `ssl_max_protocol_version`,
    /// `min_protocol_version`, `max_protocol_version`, `requirepeer`, `gssencmode`, `krbsrvname`, `gsslib`,
    /// `gssdelegation`, `replication`. An empty value reads as `None`.
    pub fn get_raw(&self, key: &str) -> Option<&str> {
        self.raw
            .get(key)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }

    /// The user name to log in as: `user`, else the operating-system user (`USER`, then `USERNAME`, read
    /// now).
    pub(crate) fn effective_user(&self) -> Result<String, Error> {
        if let Some(user) = &self.user {
            return Ok(user.clone());
        }
        for var in ["USER", "USERNAME"] {
            if let Ok(name) = std::env::var(var)
                && !name.is_empty()
            {
                return Ok(name);
            }
        }
        Err(Error::config(
            "no user name was given: set user in the connection string, or PGUSER (USER is not set either)",
        ))
    }

    /// The database to connect to: `dbname`, else the user name.
    pub(crate) fn effective_dbname(&self) -> Result<String, Error> {
        match &self.dbname {
            Some(dbname) => Ok(dbname.clone()),
            None => self.effective_user(),
        }
    }

    /// The servers to try, in the order given, with default host and port filled in. With
    /// `load_balance_hosts=random` the caller shuffles them.
    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub(crate) fn targets(&self) -> Result<Vec<Target>, Error> {
        self.check()?;
        let targets = (0..self.slot_count())
            .map(|i| {
                let hostaddr = self.hostaddrs.get(i).copied().flatten();
                let host = match (self.hosts.get(i), hostaddr) {
                    (Some(host), _) if !host.is_default() => host.clone(),
                    // libpq names a server given only by address after that address.
                    (_, Some(addr)) => Host::Tcp(addr.to_string()),
                    _ => Host::platform_default(),
                };
                let port = match self.ports.as_slice() {
                    [port] => *port,
                    ports => ports.get(i).copied().unwrap_or(DEFAULT_PORT),
                };
                let require_peer = match &host {
                    Host::Unix(_) => self.get_require_peer().map(str::to_string),
                    Host::Tcp(_) => None,
                };
                Target {
                    host,
                    hostaddr,
                    port,
                    require_peer,
                }
            })
            .collect();
        Ok(targets)
    }

    /// The password file to read: `passfile` (or `PGPASSFILE`), else `~/.pgpass` (on Windows
    /// `%APPDATA%\postgresql\pgpass.conf`); none on WASI, which has no home directory.
    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub(crate) fn passfile_path(&self) -> Option<PathBuf> {
        if let Some(path) = self.get_raw("passfile") {
            return Some(PathBuf::from(path));
        }
        if cfg!(target_os = "wasi") {
            return None;
        }
        if cfg!(windows) {
            let appdata = std::env::var_os("APPDATA").filter(|dir| !dir.is_empty())?;
            return Some(
                PathBuf::from(appdata)
                    .join("postgresql")
                    .join("pgpass.conf"),
            );
        }
        let home = std::env::var_os("HOME").filter(|dir| !dir.is_empty())?;
        Some(PathBuf::from(home).join(".pgpass"))
    }

    /// How many servers there are to try: one per `hostaddr`, else one per `host`, else one (as in libpq).
    fn slot_count(&self) -> usize {
        if !self.hostaddrs.is_empty() {
            self.hostaddrs.len()
        } else {
            self.hosts.len().max(1)
        }
    }

    /// The checks across settings that libpq makes once the environment has been applied.
    fn check(&self) -> Result<(), Error> {
        if !self.hosts.is_empty()
            && !self.hostaddrs.is_empty()
            && self.hosts.len() != self.hostaddrs.len()
        {
            return Err(Error::config(format!(
                "could not match {} host names to {} hostaddr values",
                self.hosts.len(),
                self.hostaddrs.len()
            )));
        }
        let slots = self.slot_count();
        if self.ports.len() > 1 && self.ports.len() != slots {
            return Err(Error::config(format!(
                "could not match {} port numbers to {slots} hosts",
                self.ports.len()
            )));
        }
        if self.ports.contains(&0) {
            return Err(Error::config("invalid port number 0"));
        }
        let ssl_mode = self.get_ssl_mode();
        // Direct TLS with a mode that may fall back to plaintext would risk an unintended cleartext
        // connection to an older server; libpq refuses the combination.
        if self.get_raw("sslnegotiation") == Some("direct")
            && !matches!(
                ssl_mode,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
            )
        {
            return Err(Error::config(format!(
                "weak sslmode \"{}\" may not be used with sslnegotiation=direct \
                 (use \"require\", \"verify-ca\", or \"verify-full\")",
                ssl_mode.as_str()
            )));
        }
        // Anyone can get a certificate from a public CA for a name they control, so only verify-full
        // makes the system store meaningful.
        if self.get_ssl_root_cert() == Some("system") && ssl_mode != SslMode::VerifyFull {
            return Err(Error::config(format!(
                "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
                ssl_mode.as_str()
            )));
        }
        self.check_scram_keys()?;
        self.check_range(
            "ssl_min_protocol_version",
            "ssl_max_protocol_version",
            settings::tls_version_rank,
        )?;
        self.check_range(
            "min_protocol_version",
            "max_protocol_version",
            settings::protocol_version_rank,
        )
    }

    /// Checks that the minimum version `min_key` is not above the maximum `max_key`.
    fn check_range(
        &self,
        min_key: &str,
        max_key: &str,
        rank: fn(&str) -> Option<usize>,
    ) -> Result<(), Error> {
        let (Some(min), Some(max)) = (self.get_raw(min_key), self.get_raw(max_key)) else {
            return Ok(());
        };
        if rank(min) > rank(max) {
            return Err(Error::config(format!(
                "invalid version range: {min_key} {min:?} is above {max_key} {max:?}"
            )));
        }
        Ok(())
    }
}

impl FromStr for Config {
    type Err = Error;

    /// Same as [`Config::parse`].
    fn from_str(s: &str) -> Result<Config, Error> {
        Config::parse(s)
    }
}

impl fmt::Debug for Config {
    /// Shows every setting except secrets: the password reads `Some("<redacted>")`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Config {
            hosts,
            hostaddrs,
            ports,
            user,
            password,
            dbname,
            options,
            application_name,
            fallback_application_name,
            connect_timeout,
            ssl_mode,
            target_session_attrs,
            load_balance_hosts,
            require_auth,
            channel_binding,
            params,
            max_message_size,
            scram_max_iterations,
            query_mode,
            statement_cache_capacity,
            query_timeout,
            read_timeout,
            session_rebuild,
            trace_statements,
            raw,
            given_empty,
            in_memory_tls,
            oauth_hook,
        } = self;
        // Destructuring makes a new field a compile error here until it is shown (or deliberately hidden).
        let raw: BTreeMap<_, _> = raw
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    if conninfo::is_secret(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("Config")
            .field("hosts", hosts)
            .field("hostaddrs", hostaddrs)
            .field("ports", ports)
            .field("user", user)
            .field("password", &password.as_ref().map(|_| "<redacted>"))
            .field("dbname", dbname)
            .field("options", options)
            .field("application_name", application_name)
            .field("fallback_application_name", fallback_application_name)
            .field("connect_timeout", connect_timeout)
            .field("ssl_mode", ssl_mode)
            .field("target_session_attrs", target_session_attrs)
            .field("load_balance_hosts", load_balance_hosts)
            .field("require_auth", require_auth)
            .field("channel_binding", channel_binding)
            .field("params", params)
            .field("max_message_size", max_message_size)
            .field("scram_max_iterations", scram_max_iterations)
            .field("query_mode", query_mode)
            .field("statement_cache_capacity", statement_cache_capacity)
            .field("query_timeout", query_timeout)
            .field("read_timeout", read_timeout)
            .field("session_rebuild", session_rebuild)
            .field("trace_statements", trace_statements)
            .field("raw", &raw)
            .field("given_empty", given_empty)
            .field("in_memory_tls", in_memory_tls)
            .field("oauth_hook", oauth_hook)
            .finish()
    }
}
