//! What the WASI 0.2 and 0.3 TCP transports do the same way over their different bindings: connecting to the
//! first address that accepts, and applying the keepalive settings one option at a time.

use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::Keepalive;

/// Connects to each address in turn and returns the first stream; the last error if none accepts.
pub(super) async fn connect_first<S, F, Fut>(
    addresses: Vec<IpAddr>,
    port: u16,
    mut connect: F,
) -> io::Result<S>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let mut last = None;
    for ip in addresses {
        match connect(SocketAddr::new(ip, port)).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to")))
}

/// The keepalive options of a wasi:sockets TCP socket (the same four in 0.2 and 0.3).
pub(super) trait KeepaliveOptions {
    /// The binding's error code.
    type Code: Display;
    fn set_enabled(&self, enabled: bool) -> Result<(), Self::Code>;
    fn set_idle_nanos(&self, nanos: u64) -> Result<(), Self::Code>;
    fn set_interval_nanos(&self, nanos: u64) -> Result<(), Self::Code>;
    fn set_count(&self, count: u32) -> Result<(), Self::Code>;
}

/// Implements [`KeepaliveOptions`] for a binding's `TcpSocket` (0.2 and 0.3 name the four setters alike).
macro_rules! keepalive_options {
    ($socket:ty, $code:ty) => {
        impl KeepaliveOptions for $socket {
            type Code = $code;

            fn set_enabled(&self, enabled: bool) -> Result<(), $code> {
                self.set_keep_alive_enabled(enabled)
            }

            fn set_idle_nanos(&self, nanos: u64) -> Result<(), $code> {
                self.set_keep_alive_idle_time(nanos)
            }

            fn set_interval_nanos(&self, nanos: u64) -> Result<(), $code> {
                self.set_keep_alive_interval(nanos)
            }

            fn set_count(&self, count: u32) -> Result<(), $code> {
                self.set_keep_alive_count(count)
            }
        }
    };
}
pub(super) use keepalive_options;

/// Turns TCP keepalive on with `keepalive`'s settings (each `None` keeps the host's default), or off with
/// `None`. Best effort: an option the host does not support or allow is left as it is, with a debug trace.
pub(super) fn apply_keepalive(socket: &impl KeepaliveOptions, keepalive: Option<&Keepalive>) {
    fn ignore<C: Display>(option: &str, result: Result<(), C>) {
        if let Err(code) = result {
            tracing::debug!(option, %code, "cannot set a TCP keepalive option; ignored");
        }
    }
    ignore(
        "keep-alive-enabled",
        socket.set_enabled(keepalive.is_some()),
    );
    let Some(keepalive) = keepalive else {
        return;
    };
    if let Some(idle) = keepalive.idle {
        ignore("keep-alive-idle-time", socket.set_idle_nanos(nanos(idle)));
    }
    if let Some(interval) = keepalive.interval {
        ignore(
            "keep-alive-interval",
            socket.set_interval_nanos(nanos(interval)),
        );
    }
    if let Some(count) = keepalive.count {
        ignore("keep-alive-count", socket.set_count(count));
    }
}

/// wasi:clocks durations are nanoseconds; a longer one than fits is clamped.
pub(super) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
