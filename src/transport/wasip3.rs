//! The WASI 0.3 transport (feature `wasip3`): wasi:sockets@0.3.0 TCP streams driven by wit-bindgen's executor.
//!
//! In WASI 0.3 a connected socket hands out one `stream<u8>` to read (`receive`) and takes one to write
//! (`send`); each stream comes with a future that says how it ended. A read or write is an operation on the
//! stream that completes later, straight into or out of our memory: one host call each way instead of 0.2's
//! poll, read and drop.
//!
//! [`Transport`] is a poll API whose callers may drop their futures at any `Pending`, while a stream operation
//! in flight must not be dropped (a dropped read may already hold bytes that raced in). So the transport owns
//! its operations: a read or write in flight lives in a boxed future that owns the stream end and the buffer,
//! and whichever caller polls next drives it on. Bytes a read brought in and the caller had no room for stay in
//! the transport for the next call. An operation is dropped only with the transport itself.
//!
//! Every future here must be polled inside wit-bindgen's task: the component exports `wasi:cli/run@0.3` or a
//! `wasi:http` 0.3 handler, or calls [`wasip3::wit_bindgen::block_on`] from inside one.

use std::future::{Future, IntoFuture};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use wasip3::sockets::ip_name_lookup::{self, resolve_addresses};
use wasip3::sockets::types::{
    ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress,
    TcpSocket,
};
use wasip3::wit_bindgen::rt::async_support::{
    FutureReader, StreamReader, StreamResult, StreamWriter,
};

use super::wasi_socket::{
    KeepaliveOptions, apply_keepalive, connect_first, keepalive_options, nanos,
};
use super::{Keepalive, Transport};

/// How many bytes one read may bring in. The host writes into this memory directly and only what arrived, so
/// a large buffer costs nothing per read (unlike 0.2, where wasmtime zeroes a buffer of the size asked); 64 KiB
/// is wasmtime's largest single transfer.
const READ_CAPACITY: usize = 64 * 1024;
/// The most bytes one `poll_write` takes over: bounds the copy a COPY FROM STDIN chunk makes.
const WRITE_CHUNK: usize = 256 * 1024;
/// How many bytes may be written while a read is in flight before the host gets a turn to complete it (see
/// `poll_write`): the most a COPY FROM STDIN sends after the server's error arrived before it is seen.
const YIELD_EVERY: usize = 256 * 1024;

/// Why a write failed when the send future gives no error code.
const PEER_GONE: &str = "send: the peer stopped taking bytes";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;
/// The end of a socket stream, as the socket's `send`/`receive` future reports it.
type StreamEnd = FutureReader<Result<(), ErrorCode>>;

/// A read in flight: it owns the stream and the buffer, and gives both back with the result.
type ReadOp = BoxFuture<(StreamReader<u8>, StreamResult, Vec<u8>)>;
/// A write in flight: it owns the stream and gives it back with the bytes the peer did not take (none unless
/// the peer is gone).
type WriteOp = BoxFuture<(StreamWriter<u8>, Vec<u8>)>;

/// The receiving half: what happens next when the caller asks for bytes.
enum Receiving {
    /// No read in flight; the next `poll_read` starts one into the spare buffer.
    Idle(StreamReader<u8>, Vec<u8>),
    /// A read in flight.
    Reading(ReadOp),
    /// The stream ended: waiting for the receive future to say whether the peer closed (FIN) or failed.
    Ending(BoxFuture<Result<(), ErrorCode>>),
    /// The stream ended; every later read reports the same.
    Ended(Result<(), (io::ErrorKind, String)>),
    /// Only while a transition is under way (a panic in between leaves it, and every later read fails).
    Poisoned,
}

/// The sending half.
enum Sending {
    /// No write in flight; the spare buffer is reused for the next one.
    Idle(StreamWriter<u8>, Vec<u8>),
    /// A write in flight: the bytes were taken by `poll_write` (they count as written), and the next
    /// `poll_write`, `poll_flush` or `poll_shutdown` waits for the host to take them.
    Writing(WriteOp),
    /// The peer stopped taking bytes: waiting for the send future to say why.
    Failing(BoxFuture<Result<(), ErrorCode>>),
    /// The peer stopped taking bytes: every later write fails with this.
    Failed(io::ErrorKind, String),
    /// `poll_shutdown` dropped the stream, which sends FIN.
    Closed,
    /// Only while a transition is under way.
    Poisoned,
}

/// A connected wasi:sockets@0.3 TCP stream.
///
/// Field order matters: the streams and their futures go before the socket they belong to.
pub struct P3TcpStream {
    receiving: Receiving,
    /// Bytes a completed read brought in beyond what its caller had room for: `pending[pending_at..]`.
    pending: Vec<u8>,
    pending_at: usize,
    receive_end: Option<StreamEnd>,
    sending: Sending,
    send_end: Option<StreamEnd>,
    /// Bytes written while a read was in flight since the host last had a turn (see `poll_write`).
    written_without_turn: usize,
    /// `poll_write` asked for a turn and waits to be polled again.
    turn_taken: bool,
    socket: TcpSocket,
}

impl std::fmt::Debug for P3TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P3TcpStream").finish_non_exhaustive()
    }
}

fn error_kind(code: &ErrorCode) -> io::ErrorKind {
    match code {
        ErrorCode::ConnectionRefused => io::ErrorKind::ConnectionRefused,
        ErrorCode::ConnectionReset => io::ErrorKind::ConnectionReset,
        ErrorCode::ConnectionAborted => io::ErrorKind::ConnectionAborted,
        ErrorCode::ConnectionBroken => io::ErrorKind::BrokenPipe,
        ErrorCode::Timeout => io::ErrorKind::TimedOut,
        ErrorCode::AccessDenied => io::ErrorKind::PermissionDenied,
        ErrorCode::AddressInUse => io::ErrorKind::AddrInUse,
        ErrorCode::RemoteUnreachable => io::ErrorKind::HostUnreachable,
        ErrorCode::NotSupported => io::ErrorKind::Unsupported,
        ErrorCode::InvalidArgument => io::ErrorKind::InvalidInput,
        ErrorCode::OutOfMemory => io::ErrorKind::OutOfMemory,
        _ => io::ErrorKind::Other,
    }
}

fn socket_error(what: &str, code: ErrorCode) -> io::Error {
    io::Error::new(error_kind(&code), format!("{what}: {code}"))
}

fn lookup_error(host: &str, code: ip_name_lookup::ErrorCode) -> io::Error {
    let kind = match code {
        ip_name_lookup::ErrorCode::NameUnresolvable => io::ErrorKind::NotFound,
        ip_name_lookup::ErrorCode::AccessDenied => io::ErrorKind::PermissionDenied,
        ip_name_lookup::ErrorCode::InvalidArgument => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("cannot resolve {host:?}: {code}"))
}

/// Resolves `host` through wasi:sockets/ip-name-lookup@0.3. An IP literal is returned as is.
pub async fn resolve(host: &str) -> io::Result<Vec<IpAddr>> {
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let found = resolve_addresses(host.to_string())
        .await
        .map_err(|e| lookup_error(host, e))?;
    let addresses: Vec<IpAddr> = found
        .into_iter()
        .map(|address| match address {
            IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
            IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
        })
        .collect();
    if addresses.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host:?} has no addresses"),
        ));
    }
    Ok(addresses)
}

/// Connects to one socket address. Dropping the future cancels the connect (connect_timeout relies on it).
pub async fn connect_addr(addr: SocketAddr) -> io::Result<P3TcpStream> {
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
    let socket = TcpSocket::create(family).map_err(|e| socket_error(&what, e))?;
    socket
        .connect(remote)
        .await
        .map_err(|e| socket_error(&what, e))?;
    // Keepalive is best effort: some hosts do not allow it.
    let _ = socket.set_keep_alive_enabled(true);
    let (reader, receive_end) = socket.receive();
    let (writer, send_stream) = wasip3::wit_stream::new::<u8>();
    let send_end = socket.send(send_stream);
    Ok(P3TcpStream {
        receiving: Receiving::Idle(reader, Vec::with_capacity(READ_CAPACITY)),
        pending: Vec::new(),
        pending_at: 0,
        receive_end: Some(receive_end),
        sending: Sending::Idle(writer, Vec::new()),
        send_end: Some(send_end),
        written_without_turn: 0,
        turn_taken: false,
        socket,
    })
}

/// Resolves `host` (or uses `hostaddr`) and connects to the first address that accepts, IPv4 or IPv6.
pub async fn connect_tcp(
    host: &str,
    hostaddr: Option<IpAddr>,
    port: u16,
) -> io::Result<P3TcpStream> {
    let addresses = match hostaddr {
        Some(ip) => vec![ip],
        None => resolve(host).await?,
    };
    connect_first(addresses, port, connect_addr).await
}

impl P3TcpStream {
    /// Turns TCP keepalive on with `keepalive`'s settings (each `None` keeps the host's default), or off with
    /// `None`. Best effort: an option the host does not support or allow is left as it is, with a debug trace.
    pub fn set_keepalive(&self, keepalive: Option<&Keepalive>) {
        apply_keepalive(&self.socket, keepalive);
    }

    /// Copies bytes a read left over into `buf`; 0 if there are none.
    fn take_pending(&mut self, buf: &mut [u8]) -> usize {
        let left = &self.pending[self.pending_at..];
        let n = left.len().min(buf.len());
        buf[..n].copy_from_slice(&left[..n]);
        self.pending_at += n;
        if self.pending_at == self.pending.len() {
            self.pending.clear();
            self.pending_at = 0;
        }
        n
    }

    /// The outcome of the stream's end, once the receive future told it.
    fn end_of_stream(ended: &Result<(), (io::ErrorKind, String)>) -> io::Result<usize> {
        match ended {
            Ok(()) => Ok(0),
            Err((kind, message)) => Err(io::Error::new(*kind, message.clone())),
        }
    }

    /// Waits for the write in flight, if any, to be taken by the host.
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.sending {
            Sending::Idle(..) => Poll::Ready(Ok(())),
            Sending::Writing(op) => {
                let (writer, unsent) = std::task::ready!(op.as_mut().poll(cx));
                if unsent.is_empty() {
                    self.sending = Sending::Idle(writer, unsent);
                    return Poll::Ready(Ok(()));
                }
                // The host took only part: the peer closed its end of our send stream, and the send future
                // says why. The write fails either way.
                drop(writer);
                self.sending = match self.send_end.take() {
                    Some(end) => Sending::Failing(Box::pin(end.into_future())),
                    None => Sending::Failed(io::ErrorKind::BrokenPipe, PEER_GONE.to_string()),
                };
                self.poll_sent(cx)
            }
            Sending::Failing(end) => {
                let (kind, message) = match std::task::ready!(end.as_mut().poll(cx)) {
                    Err(code) => (error_kind(&code), format!("send: {code}")),
                    Ok(()) => (io::ErrorKind::BrokenPipe, PEER_GONE.to_string()),
                };
                self.sending = Sending::Failed(kind, message.clone());
                Poll::Ready(Err(io::Error::new(kind, message)))
            }
            Sending::Failed(kind, message) => {
                Poll::Ready(Err(io::Error::new(*kind, message.clone())))
            }
            Sending::Closed => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the sending half is shut down",
            ))),
            Sending::Poisoned => Poll::Ready(Err(poisoned())),
        }
    }
}

fn poisoned() -> io::Error {
    io::Error::other("BUG: the WASI 0.3 transport was left mid-transition")
}

keepalive_options!(TcpSocket, ErrorCode);

impl Transport for P3TcpStream {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Bytes an earlier read brought in come first: they arrived before anything a new read would bring.
        let n = self.take_pending(buf);
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        loop {
            match std::mem::replace(&mut self.receiving, Receiving::Poisoned) {
                Receiving::Idle(mut reader, mut spare) => {
                    spare.clear();
                    spare.reserve(READ_CAPACITY);
                    // The operation owns the reader and the buffer until it completes, whoever polls it: a
                    // caller dropped at `Pending` leaves the read in flight here, so nothing that raced in is
                    // lost.
                    self.receiving = Receiving::Reading(Box::pin(async move {
                        let (result, filled) = reader.read(spare).await;
                        (reader, result, filled)
                    }));
                }
                Receiving::Reading(mut op) => match op.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.receiving = Receiving::Reading(op);
                        return Poll::Pending;
                    }
                    Poll::Ready((reader, StreamResult::Complete(_), filled)) => {
                        let n = filled.len().min(buf.len());
                        buf[..n].copy_from_slice(&filled[..n]);
                        if n < filled.len() {
                            self.pending.extend_from_slice(&filled[n..]);
                        }
                        self.receiving = Receiving::Idle(reader, filled);
                        // A completed read of nothing is not the end of the stream (only `Dropped` is): read
                        // again.
                        if n > 0 {
                            return Poll::Ready(Ok(n));
                        }
                    }
                    Poll::Ready((_, StreamResult::Dropped | StreamResult::Cancelled, _)) => {
                        // The host dropped its end: the receive future says whether that was FIN or an error.
                        // Nothing here cancels a read, so `Cancelled` can only mean the same.
                        self.receiving = match self.receive_end.take() {
                            Some(end) => Receiving::Ending(Box::pin(end.into_future())),
                            None => Receiving::Ended(Ok(())),
                        };
                    }
                },
                Receiving::Ending(mut end) => match end.as_mut().poll(cx) {
                    Poll::Pending => {
                        self.receiving = Receiving::Ending(end);
                        return Poll::Pending;
                    }
                    Poll::Ready(result) => {
                        let ended =
                            result.map_err(|code| (error_kind(&code), format!("receive: {code}")));
                        let outcome = Self::end_of_stream(&ended);
                        self.receiving = Receiving::Ended(ended);
                        return Poll::Ready(outcome);
                    }
                },
                Receiving::Ended(ended) => {
                    let outcome = Self::end_of_stream(&ended);
                    self.receiving = Receiving::Ended(ended);
                    return Poll::Ready(outcome);
                }
                Receiving::Poisoned => return Poll::Ready(Err(poisoned())),
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // One write in flight at a time: the next waits until the host took the last (back-pressure).
        std::task::ready!(self.poll_sent(cx))?;
        // A read in flight completes only when the host has a turn (its socket read runs in the host's event
        // loop) and the executor delivers the event. Writes the host takes at once never suspend the task, so
        // a caller that keeps writing while it watches for an answer (COPY FROM STDIN, which must see the
        // server's error) would never see one. So after `YIELD_EVERY` bytes written that way, yield to the host
        // (`thread.yield`: a real turn of its event loop, also under a nested `block_on`), then return Pending
        // once with our waker woken, so the executor polls its waitables and delivers what completed.
        if self.turn_taken {
            self.turn_taken = false;
        } else if matches!(self.receiving, Receiving::Reading(_))
            && self.written_without_turn >= YIELD_EVERY
        {
            self.written_without_turn = 0;
            self.turn_taken = true;
            wasip3::wit_bindgen::yield_blocking();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let Sending::Idle(mut writer, mut chunk) =
            std::mem::replace(&mut self.sending, Sending::Poisoned)
        else {
            return Poll::Ready(Err(io::Error::other(
                "BUG: the WASI 0.3 send stream is not idle after its last write",
            )));
        };
        let n = buf.len().min(WRITE_CHUNK);
        chunk.clear();
        chunk.extend_from_slice(&buf[..n]);
        // The bytes are ours now and count as written: the operation keeps them until the host has them all,
        // whichever caller drives it (flush, the next write, or shutdown).
        let mut op: WriteOp = Box::pin(async move {
            let unsent = writer.write_all(chunk).await;
            (writer, unsent)
        });
        if matches!(self.receiving, Receiving::Reading(_)) {
            self.written_without_turn += n;
        }
        // Start it now: a write the host takes at once completes in this poll.
        match op.as_mut().poll(cx) {
            Poll::Ready((writer, unsent)) if unsent.is_empty() => {
                self.sending = Sending::Idle(writer, unsent);
            }
            Poll::Ready(done) => {
                // Let `poll_sent` report the failure on the next call; these bytes did reach us.
                self.sending = Sending::Writing(Box::pin(std::future::ready(done)));
            }
            Poll::Pending => {
                // The host is not taking bytes as fast as we write them: the task will wait, and the host
                // runs its event loop meanwhile.
                self.written_without_turn = 0;
                self.sending = Sending::Writing(op);
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if matches!(self.sending, Sending::Closed) {
            // Everything went out before the shutdown.
            return Poll::Ready(Ok(()));
        }
        self.poll_sent(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if matches!(self.sending, Sending::Closed) {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(self.poll_sent(cx))?;
        // Dropping the writer ends our send stream: the host sends FIN once it has sent what it holds.
        self.sending = Sending::Closed;
        Poll::Ready(Ok(()))
    }
}

/// Sleeps on a wasi:clocks@0.3 monotonic-clock wait; dropping the future cancels the wait.
pub(crate) async fn sleep(duration: Duration) {
    wasip3::clocks::monotonic_clock::wait_for(nanos(duration)).await;
}
