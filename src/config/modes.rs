//! The enumerated settings (`sslmode`, `target_session_attrs`, `load_balance_hosts`, `channel_binding`,
//! `min_protocol_version` and `max_protocol_version`).
//!
//! Each is spelled exactly as libpq spells it; like libpq, the spelling is case-sensitive.

/// A setting whose value is one keyword out of a fixed list.
pub(super) trait Keyword: Sized {
    /// The accepted keywords, for error messages.
    const EXPECTED: &'static str;

    /// The value for `keyword`, if it is one of the accepted ones.
    fn from_keyword(keyword: &str) -> Option<Self>;
}

/// Whether and how TLS is used (libpq's `sslmode`).
///
/// The default is [`SslMode::Prefer`], or [`SslMode::VerifyFull`] when `sslrootcert=system` (as in libpq).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Try without TLS first; use TLS if the server insists.
    Allow,
    /// Try TLS first; go on without it if the server does not support it.
    #[default]
    Prefer,
    /// Require TLS, without verifying the server certificate (unless a root certificate is configured).
    Require,
    /// Require TLS and a server certificate signed by a trusted CA.
    VerifyCa,
    /// Require TLS, a trusted server certificate, and a host name that matches it.
    VerifyFull,
}

impl SslMode {
    /// The libpq keyword for this mode (`"verify-full"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl Keyword for SslMode {
    const EXPECTED: &'static str = "disable, allow, prefer, require, verify-ca, verify-full";

    fn from_keyword(keyword: &str) -> Option<SslMode> {
        Some(match keyword {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Which kind of server a connection must reach (libpq's `target_session_attrs`).
///
/// With several hosts, those that do not qualify are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TargetSessionAttrs {
    /// Any server will do.
    #[default]
    Any,
    /// The session must accept writes by default (`default_transaction_read_only` off, not in recovery).
    ReadWrite,
    /// The session must be read-only by default.
    ReadOnly,
    /// The server must not be in hot standby.
    Primary,
    /// The server must be in hot standby.
    Standby,
    /// Prefer a standby; fall back to any server if none is found.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The libpq keyword for this value (`"read-write"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

impl Keyword for TargetSessionAttrs {
    const EXPECTED: &'static str = "any, read-write, read-only, primary, standby, prefer-standby";

    fn from_keyword(keyword: &str) -> Option<TargetSessionAttrs> {
        Some(match keyword {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            _ => return None,
        })
    }
}

/// The order in which several hosts are tried (libpq's `load_balance_hosts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LoadBalanceHosts {
    /// In the order given.
    #[default]
    Disable,
    /// In a random order, chosen anew for each connection attempt.
    Random,
}

impl LoadBalanceHosts {
    /// The libpq keyword for this value.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalanceHosts::Disable => "disable",
            LoadBalanceHosts::Random => "random",
        }
    }
}

impl Keyword for LoadBalanceHosts {
    const EXPECTED: &'static str = "disable, random";

    fn from_keyword(keyword: &str) -> Option<LoadBalanceHosts> {
        match keyword {
            "disable" => Some(LoadBalanceHosts::Disable),
            "random" => Some(LoadBalanceHosts::Random),
            _ => None,
        }
    }
}

/// Whether the connection is a replication connection (libpq's `replication`): the server starts a walsender,
/// which takes the replication commands (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, `START_REPLICATION`,
/// ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Replication {
    /// An ordinary connection (`false`).
    #[default]
    Off,
    /// Physical replication (`true`): replication commands only, no SQL.
    Physical,
    /// Logical replication (`database`): replication commands and SQL, in the database named by `dbname`.
    Logical,
}

impl Replication {
    /// The libpq keyword for this value, as sent in the startup message.
    pub fn as_str(self) -> &'static str {
        match self {
            Replication::Off => "false",
            Replication::Physical => "true",
            Replication::Logical => "database",
        }
    }
}

impl Keyword for Replication {
    const EXPECTED: &'static str = "database, or a boolean (true, false, on, off, yes, no, 1, 0)";

    fn from_keyword(keyword: &str) -> Option<Replication> {
        // The server reads the booleans case-insensitively, and prefixes of them; libpq passes the value on.
        match keyword.to_ascii_lowercase().as_str() {
            "database" => Some(Replication::Logical),
            "true" | "on" | "yes" | "1" => Some(Replication::Physical),
            "false" | "off" | "no" | "0" => Some(Replication::Off),
            _ => None,
        }
    }
}

/// Whether SCRAM channel binding is used (libpq's `channel_binding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ChannelBinding {
    /// Never use channel binding.
    Disable,
    /// Use channel binding when TLS and the server allow it.
    #[default]
    Prefer,
    /// Fail unless the server authenticates with channel binding.
    Require,
}

impl ChannelBinding {
    /// The libpq keyword for this value.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

impl Keyword for ChannelBinding {
    const EXPECTED: &'static str = "disable, prefer, require";

    fn from_keyword(keyword: &str) -> Option<ChannelBinding> {
        match keyword {
            "disable" => Some(ChannelBinding::Disable),
            "prefer" => Some(ChannelBinding::Prefer),
            "require" => Some(ChannelBinding::Require),
            _ => None,
        }
    }
}

/// A version of the frontend/backend protocol (libpq's `min_protocol_version` and `max_protocol_version`).
///
/// Protocol 3.2 (PostgreSQL 18) differs from 3.0 in one way a client sees: the cancel key may be longer than
/// 4 bytes (up to 256). Like libpq 18, a connection requests 3.0 unless told otherwise, because some poolers
/// and older servers do not answer a request for a newer version with NegotiateProtocolVersion.
///
/// ```
/// use wasi_pg_client::Config;
/// use wasi_pg_client::config::ProtocolVersion;
///
/// let config = Config::parse("max_protocol_version=latest")?;
/// assert_eq!(config.get_max_protocol_version(), ProtocolVersion::V3_2);
/// assert_eq!(config.get_min_protocol_version(), ProtocolVersion::V3_0);
/// assert_eq!(ProtocolVersion::V3_2.as_str(), "3.2");
/// # Ok::<(), wasi_pg_client::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[non_exhaustive]
pub enum ProtocolVersion {
    /// Protocol 3.0, spoken by PostgreSQL 7.4 and later.
    #[default]
    V3_0,
    /// Protocol 3.2, spoken by PostgreSQL 18 and later (3.1 was never used).
    V3_2,
}

impl ProtocolVersion {
    /// The version as libpq spells it (`"3.0"`, `"3.2"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::V3_0 => "3.0",
            ProtocolVersion::V3_2 => "3.2",
        }
    }
}

impl Keyword for ProtocolVersion {
    const EXPECTED: &'static str = "3.0, 3.2, latest";

    fn from_keyword(keyword: &str) -> Option<ProtocolVersion> {
        match keyword {
            "3.0" => Some(ProtocolVersion::V3_0),
            // libpq's `latest` is the newest version it speaks, which is 3.2 for libpq 18 and for us.
            "3.2" | "latest" => Some(ProtocolVersion::V3_2),
            _ => None,
        }
    }
}

/// How SQL text given to `query`, `execute` and friends reaches the server (an API setting, not a libpq
/// keyword). Prepared [`Statement`](crate::Statement)s always run as named statements.
///
/// | mode | round trips | left on the server | behind PgBouncer (transaction/statement pooling) |
/// |---|---|---|---|
/// | `Cached` | 1 (2 the first time a text is seen) | named statements, closed on eviction | no: PgBouncer 1.18 does not track them |
/// | `Unnamed` | 1 when every parameter type follows from its Rust value, else 2 | nothing | yes |
/// | `Simple` | 1 | nothing | yes, and through poolers that refuse the extended protocol |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueryMode {
    /// Named prepared statements in a per-connection LRU cache (the default): the fastest mode on a direct
    /// connection or behind a session-pooling PgBouncer.
    #[default]
    Cached,
    /// Only the unnamed statement, and every round trip stands alone (Parse, Bind, Describe, Execute, Sync), so
    /// consecutive queries may run on different server connections. Parameter types come from the Rust values
    /// (`i32` is `int4`, `&str` is `text`, ...); where a value fits no built-in type, a Describe round trip asks
    /// the server first. Cast in SQL (`$1::my_enum`) where the server should see another type.
    Unnamed,
    /// The simple query protocol: parameters are rendered as SQL literals by the client and results arrive as
    /// text, converted for [`Row::get`](crate::Row::get). Built-in scalar types only (booleans, integers,
    /// floats, text, bytea, uuid, json, dates and times); others are a clear error.
    Simple,
}
