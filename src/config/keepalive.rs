//! TCP keepalive settings as the configuration gives them to the transports.

use std::time::Duration;

/// TCP keepalive settings: libpq's `keepalives_idle`, `keepalives_interval` and `keepalives_count` (see
/// [`Config::keepalives_idle`](crate::Config::keepalives_idle)). `None` keeps the system default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Idle time before the first probe (`keepalives_idle`).
    pub idle: Option<Duration>,
    /// Time between unanswered probes (`keepalives_interval`).
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is considered dead (`keepalives_count`).
    pub count: Option<u32>,
}
