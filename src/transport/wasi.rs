//! The WASI Preview 2 transport: raw wasi:sockets through `wasip2`, waiting on wstd's reactor.
//!
//! wstd's own `TcpStream` resolves names with a blocking std lookup and cannot connect to IPv6, so this module
//! resolves through wasi:sockets/ip-name-lookup (asynchronously, with its pollable) and opens IPv4 or IPv6
//! sockets itself. wasi:sockets 0.2 has no TCP_NODELAY option; the client sends each request in one write, so
//! Nagle's algorithm has no second small segment to hold back.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use wasip2::io::poll::Pollable;
use wasip2::io::streams::{InputStream, OutputStream, StreamError};
use wasip2::sockets::instance_network::instance_network;
use wasip2::sockets::ip_name_lookup::resolve_addresses;
use wasip2::sockets::network::{
    ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress,
    Network,
};
use wasip2::sockets::tcp::TcpSocket;
use wasip2::sockets::tcp_create_socket::create_tcp_socket;
use wstd::runtime::{AsyncPollable, WaitFor};

use super::wasi_socket::{KeepaliveOptions, apply_keepalive, connect_first, keepalive_options};
use super::{Keepalive, Transport};

/// A readiness wait registered with wstd's reactor: the pollable and the future waiting on it.
///
/// Created only when an operation would block and dropped as soon as it fires or the operation succeeds, so no
/// registration outlives the wait: an idle client leaves nothing in the reactor for it to spin on, and a client
/// can move from one `block_on` to the next between calls.
type Wait = Option<(AsyncPollable, Pin<Box<WaitFor>>)>;

/// A connected wasi:sockets TCP stream.
///
/// Field order matters: WASI requires pollables to be dropped before the stream or socket they watch.
pub struct WasiTcpStream {
    read_wait: Wait,
    write_wait: Wait,
    /// A flush was requested and its completion not seen yet (only shutdown waits for it).
    flushing: bool,
    /// Data was just flushed: the answer cannot be there yet, so the next read waits first instead of asking
    /// the host for nothing (a host call, and a zeroed buffer of the read's size in wasmtime).
    answer_pending: bool,
    input: InputStream,
    output: OutputStream,
    socket: TcpSocket,
}

impl std::fmt::Debug for WasiTcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasiTcpStream").finish_non_exhaustive()
    }
}

fn socket_error(what: &str, code: ErrorCode) -> io::Error {
    let kind = match code {
        ErrorCode::ConnectionRefused => io::ErrorKind::ConnectionRefused,
        ErrorCode::ConnectionReset => io::ErrorKind::ConnectionReset,
        ErrorCode::ConnectionAborted => io::ErrorKind::ConnectionAborted,
        ErrorCode::Timeout => io::ErrorKind::TimedOut,
        ErrorCode::AccessDenied => io::ErrorKind::PermissionDenied,
        ErrorCode::AddressInUse => io::ErrorKind::AddrInUse,
        ErrorCode::NameUnresolvable => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("{what}: {code}"))
}

fn stream_error(e: StreamError) -> io::Error {
    match e {
        StreamError::Closed => io::Error::from(io::ErrorKind::ConnectionReset),
        StreamError::LastOperationFailed(err) => host_stream_error(&err.to_debug_string()),
    }
}

/// A stream error from the host as an `io::Error` of the right kind. wasi:io 0.2 gives only the host's debug
/// text (wasi:sockets' `network-error-code` is not in the 0.2 bindings), so the kind is read from it, and only
/// its first line is kept: wasmtime appends a backtrace.
fn host_stream_error(debug: &str) -> io::Error {
    let first_line = debug.lines().next().unwrap_or(debug).trim();
    let lower = first_line.to_ascii_lowercase();
    let kind = if lower.contains("reset") {
        io::ErrorKind::ConnectionReset
    } else if lower.contains("broken pipe") {
        io::ErrorKind::BrokenPipe
    } else if lower.contains("aborted") {
        io::ErrorKind::ConnectionAborted
    } else if lower.contains("timed out") {
        io::ErrorKind::TimedOut
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, first_line.to_string())
}

/// Waits on a pollable through wstd's reactor.
async fn wait(pollable: Pollable) {
    AsyncPollable::new(pollable).wait_for().await
}

/// Resolves `host` through wasi:sockets/ip-name-lookup without blocking the component. An IP literal is
/// returned as is.
pub async fn resolve(network: &Network, host: &str) -> io::Result<Vec<IpAddr>> {
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let stream = resolve_addresses(network, host)
        .map_err(|e| socket_error(&format!("cannot resolve {host:?}"), e))?;
    let mut addresses = Vec::new();
    loop {
        match stream.resolve_next_address() {
            Ok(Some(IpAddress::Ipv4((a, b, c, d)))) => addresses.push(IpAddr::from([a, b, c, d])),
            Ok(Some(IpAddress::Ipv6((a, b, c, d, e, f, g, h)))) => {
                addresses.push(IpAddr::from([a, b, c, d, e, f, g, h]));
            }
            Ok(None) => break,
            Err(ErrorCode::WouldBlock) => wait(stream.subscribe()).await,
            Err(e) => return Err(socket_error(&format!("cannot resolve {host:?}"), e)),
        }
    }
    if addresses.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host:?} has no addresses"),
        ));
    }
    Ok(addresses)
}

/// Connects to one socket address.
pub async fn connect_addr(network: &Network, addr: SocketAddr) -> io::Result<WasiTcpStream> {
    let (family, remote) = match addr {
        SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            (
                IpAddressFamily::Ipv4,
                IpSocketAddress::Ipv4(Ipv4SocketAddress {
                    port: v4.port(),
                    address: (a, b, c, d),
                }),
            )
        }
        SocketAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.ip().segments();
            (
                IpAddressFamily::Ipv6,
                IpSocketAddress::Ipv6(Ipv6SocketAddress {
                    port: v6.port(),
                    flow_info: v6.flowinfo(),
                    address: (a, b, c, d, e, f, g, h),
                    scope_id: v6.scope_id(),
                }),
            )
        }
    };
    let what = format!("cannot connect to {addr}");
    let socket = create_tcp_socket(family).map_err(|e| socket_error(&what, e))?;
    socket
        .start_connect(network, remote)
        .map_err(|e| socket_error(&what, e))?;
    let (input, output) = loop {
        match socket.finish_connect() {
            Ok(streams) => break streams,
            Err(ErrorCode::WouldBlock) => wait(socket.subscribe()).await,
            Err(e) => return Err(socket_error(&what, e)),
        }
    };
    // Keepalive is best effort: some hosts do not allow it.
    let _ = socket.set_keep_alive_enabled(true);
    Ok(WasiTcpStream {
        read_wait: None,
        write_wait: None,
        flushing: false,
        answer_pending: false,
        input,
        output,
        socket,
    })
}

/// Resolves `host` (or uses `hostaddr`) and connects to the first address that accepts, IPv4 or IPv6.
pub async fn connect_tcp(
    host: &str,
    hostaddr: Option<IpAddr>,
    port: u16,
) -> io::Result<WasiTcpStream> {
    let network = instance_network();
    let addresses = match hostaddr {
        Some(ip) => vec![ip],
        None => resolve(&network, host).await?,
    };
    connect_first(addresses, port, |addr| connect_addr(&network, addr)).await
}

impl WasiTcpStream {
    /// Turns TCP keepalive on with `keepalive`'s settings (each `None` keeps the host's default), or off with
    /// `None`. Best effort: an option the host does not support or allow is left as it is, with a debug trace.
    pub fn set_keepalive(&self, keepalive: Option<&Keepalive>) {
        apply_keepalive(&self.socket, keepalive);
    }
}

/// Polls a readiness wait, subscribing on first use and clearing it once it fires.
fn poll_wait(
    slot: &mut Wait,
    subscribe: impl FnOnce() -> Pollable,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let (_, wait) = slot.get_or_insert_with(|| {
        let pollable = AsyncPollable::new(subscribe());
        let wait = Box::pin(pollable.wait_for());
        (pollable, wait)
    });
    match wait.as_mut().poll(cx) {
        Poll::Ready(()) => {
            *slot = None;
            Poll::Ready(())
        }
        Poll::Pending => Poll::Pending,
    }
}

keepalive_options!(TcpSocket, ErrorCode);

impl Transport for WasiTcpStream {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if std::mem::take(&mut self.answer_pending) {
            let input = &self.input;
            if poll_wait(&mut self.read_wait, || input.subscribe(), cx).is_pending() {
                return Poll::Pending;
            }
        }
        loop {
            // `read` never blocks and returns at most `buf.len()` bytes, so nothing is taken that we cannot hand
            // back in this call.
            match self.input.read(buf.len() as u64) {
                Ok(data) if data.is_empty() => {
                    let input = &self.input;
                    if poll_wait(&mut self.read_wait, || input.subscribe(), cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Ok(data) => {
                    self.read_wait = None;
                    buf[..data.len()].copy_from_slice(&data);
                    return Poll::Ready(Ok(data.len()));
                }
                Err(StreamError::Closed) => return Poll::Ready(Ok(0)),
                Err(e) => return Poll::Ready(Err(stream_error(e))),
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            match self.output.check_write() {
                Ok(0) => {
                    let output = &self.output;
                    if poll_wait(&mut self.write_wait, || output.subscribe(), cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Ok(permitted) => {
                    self.write_wait = None;
                    self.flushing = false;
                    let n = usize::try_from(permitted)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    return Poll::Ready(
                        self.output
                            .write(&buf[..n])
                            .map(|()| n)
                            .map_err(stream_error),
                    );
                }
                Err(e) => return Poll::Ready(Err(stream_error(e))),
            }
        }
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The host sends what was written without further ado once asked to flush: no need to wait for the
        // flush to complete, which costs a host call per request. The next write's `check-write` waits for it
        // (the stream accepts no writes until then) and reports its error, as does shutdown.
        if let Err(e) = self.output.flush() {
            return Poll::Ready(Err(stream_error(e)));
        }
        self.flushing = true;
        self.answer_pending = true;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.flushing {
            if let Err(e) = self.output.flush() {
                return Poll::Ready(Err(stream_error(e)));
            }
            self.flushing = true;
        }
        // The flush is complete once the stream reports it can accept writes again.
        loop {
            match self.output.check_write() {
                Ok(0) => {
                    let output = &self.output;
                    if poll_wait(&mut self.write_wait, || output.subscribe(), cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Ok(_) => {
                    self.write_wait = None;
                    self.flushing = false;
                    return Poll::Ready(
                        self.socket
                            .shutdown(wasip2::sockets::tcp::ShutdownType::Send)
                            .map_err(|e| socket_error("shutdown", e)),
                    );
                }
                Err(e) => {
                    self.flushing = false;
                    return Poll::Ready(Err(stream_error(e)));
                }
            }
        }
    }
}

/// Sleeps on wstd's reactor (a monotonic-clock pollable).
#[cfg(not(feature = "wasip3"))]
pub(crate) async fn sleep(duration: std::time::Duration) {
    wstd::task::sleep(wstd::time::Duration::from(duration)).await;
}
