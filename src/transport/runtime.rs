//! The little the client needs from an async runtime: a sleep, and a timeout built on it.
//!
//! Native builds sleep on tokio's timer; wasm32-wasip2 builds on a wasi:clocks pollable through wstd's reactor
//! (WASI 0.2), or on a wasi:clocks@0.3 `wait-for` with the `wasip3` feature, so a timeout really waits on every
//! target.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// Sleeps for `duration`.
pub(crate) async fn sleep(duration: Duration) {
    #[cfg(all(target_os = "wasi", not(feature = "wasip3")))]
    crate::transport::wasi::sleep(duration).await;
    #[cfg(all(target_os = "wasi", feature = "wasip3"))]
    crate::transport::wasip3::sleep(duration).await;
    #[cfg(all(not(target_os = "wasi"), feature = "tokio"))]
    tokio::time::sleep(duration).await;
    #[cfg(all(not(target_os = "wasi"), not(feature = "tokio")))]
    compile_error!("native builds need the `tokio` feature for timers");
}

/// Runs `future`, giving up after `limit` (no limit when `None`). `Err(())` means the time ran out; the future
/// is dropped then, so it must be cancel-safe.
pub(crate) async fn timeout<F: Future>(
    limit: Option<Duration>,
    future: F,
) -> Result<F::Output, ()> {
    let Some(limit) = limit else {
        return Ok(future.await);
    };
    let mut future = pin!(future);
    let mut timer = pin!(sleep(limit));
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        timer.as_mut().poll(cx).map(|()| Err(()))
    })
    .await
}
