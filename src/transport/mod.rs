//! Byte transports beneath the protocol core.
//!
//! A [`Transport`] is a bidirectional byte stream with poll-style calls, so one future can wait on reading and
//! writing at once (the server may be blocked writing results while we still send) and so a dropped future never
//! loses bytes: data counts as read or written only when a call returns `Ready`. Native builds connect with
//! [`tokio`](https://docs.rs/tokio) (TCP and Unix-domain sockets); wasm32-wasip2 builds use wasi:sockets
//! directly: 0.2 by default (module `wasi`), 0.3 with the `wasip3` feature (module `wasip3`). TLS (`tls/`, the
//! layer above) implements the same trait over any other.
//!
//! Also the rest of what the layers above need from the outside world: timers (`runtime.rs`) and the read
//! buffer's sizing policy (`read_size.rs`). This layer knows bytes only: no protocol, no configuration beyond
//! the TCP options it is handed.

use std::io;
use std::task::{Context, Poll};

#[cfg(all(feature = "tokio", unix))]
pub(crate) mod peer;
pub(crate) mod read_size;
pub(crate) mod runtime;
#[cfg(all(feature = "tokio", not(target_os = "wasi")))]
pub mod tokio;
#[cfg(target_os = "wasi")]
pub mod wasi;
#[cfg(target_os = "wasi")]
mod wasi_socket;
#[cfg(all(target_os = "wasi", feature = "wasip3"))]
pub mod wasip3;

/// `Send` on native targets, nothing on wasm32-wasip2 whose runtime is single-threaded.
#[cfg(not(target_os = "wasi"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_os = "wasi"))]
impl<T: Send + ?Sized> MaybeSend for T {}
/// `Send` on native targets, nothing on wasm32-wasip2 whose runtime is single-threaded.
#[cfg(target_os = "wasi")]
pub trait MaybeSend {}
#[cfg(target_os = "wasi")]
impl<T: ?Sized> MaybeSend for T {}

/// A bidirectional byte stream to a PostgreSQL server.
///
/// Implementations must be cancel-safe in the poll sense: bytes are consumed from the peer only by a
/// `poll_read` that returns `Ready(Ok(n))`, and handed to the peer only by a `poll_write` that returns
/// `Ready(Ok(n))`. Returning `Pending` must register `cx`'s waker.
pub trait Transport: MaybeSend + Unpin {
    /// Reads into `buf`; `Ready(Ok(0))` means the peer closed the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    /// Writes some of `buf`, returning how many bytes were accepted (at least one unless `buf` is empty).
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
    /// Pushes out any bytes the transport buffered.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Closes the sending half after flushing.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        (**self).poll_read(cx, buf)
    }
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        (**self).poll_write(cx, buf)
    }
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_flush(cx)
    }
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_shutdown(cx)
    }
}

/// Writes all of `bytes` and flushes them: the short exchanges outside a session (SSLRequest, CancelRequest).
pub(crate) async fn write_all(transport: &mut dyn Transport, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = std::future::poll_fn(|cx| transport.poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    std::future::poll_fn(|cx| transport.poll_flush(cx)).await
}

/// TCP keepalive settings, defined with the configuration they come from and re-exported here for the
/// transports that apply them.
pub use crate::config::keepalive::Keepalive;
