//! Entry points for the fuzzers in `fuzz/` (built with `--cfg fuzzing`) and for the tests that replay their
//! seeds and every crash they found (`cargo test`). They drive the real sans-IO core, decoders and client;
//! nothing here is a reimplementation.
//!
//! Each entry point takes the fuzzer's bytes and must return without panicking, without hanging and without
//! reserving memory that a length or count from the input asked for. Beyond that, each one checks invariants of
//! its own and panics with `invariant:` when one breaks: that is a finding too.
//!
//! | entry point | what the bytes are |
//! |---|---|
//! | [`backend_stream`] | a server's byte stream, cut into chunks, through startup, auth, simple and extended queries, COPY in both directions and the idle wait for notifications |
//! | [`scram`] | the SASL mechanism list and the SCRAM server-first and server-final messages |
//! | [`conninfo`] | a connection string or URI |
//! | [`values`] | one value of any type, binary or text, or a binary COPY stream of them |
//! | [`pipeline`] | the server's answers to a pipeline, with asynchronous messages and faults mixed in, and a caller that gives up |
//! | [`replication`] | a logical replication stream after `START_REPLICATION` (CopyBoth frames, pgoutput, rows read by column), or pgoutput messages on their own |
//! | [`shared`] | a script of requests queued, server bytes read, futures polled, dropped and timed out on a connection they share |
//!
//! [`record_seeds`] records the seed corpora from real sessions with a server (`scripts/record-seeds.sh`).

mod backend;
mod pipeline;
mod record;
// The replication harness and its recorder drive the client on a tokio runtime (its clock, for the status
// updates): native only.
#[cfg(all(feature = "tokio", not(target_os = "wasi")))]
mod record_replication;
#[cfg(all(feature = "tokio", not(target_os = "wasi")))]
mod replication;
mod scram;
mod shared;
#[cfg(test)]
mod tests;
mod values;

pub use backend::backend_stream;
pub use pipeline::pipeline;
pub use record::record_seeds;
#[cfg(all(feature = "tokio", not(target_os = "wasi")))]
pub use replication::replication;
pub use scram::scram;
pub use shared::shared;
pub use values::{try_decode, values};

/// Parses `text` as a connection string; errors are fine, panics are not.
pub fn conninfo(text: &str) {
    if let Ok(config) = crate::Config::parse(text) {
        let _ = format!("{config:?}");
        let _ = config.targets();
        let _ = config.get_connect_timeout();
    }
}

/// Reads the fuzzer's bytes front to back; past the end every read gives zeros, so every input means something.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` bytes.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A piece whose length is the next byte.
    fn piece(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.take(n)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Backend messages for the harnesses: a tag and a body, with the length the protocol puts between them.
use crate::proto::scripted::message;

/// Polls `future` to its end with a waker that does nothing, at most `max_polls` times: the harnesses' scripted
/// transports are never pending for long (a pause wakes at once), so every poll makes progress, and a future
/// still pending after that many is a hang.
fn block_on<F: std::future::Future>(future: F, max_polls: usize) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..max_polls {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    violated(format_args!(
        "a future was still pending after {max_polls} polls"
    ))
}

/// Fails the run: the harness found a state the code under test must never reach.
#[track_caller]
fn violated(what: std::fmt::Arguments<'_>) -> ! {
    panic!("invariant: {what}")
}
