//! [`scram`]: SCRAM server messages through the startup of the core.
//!
//! The server offers the fuzzer's SASL mechanism list, then sends the fuzzer's server-first and server-final
//! messages, then whatever bytes remain. The client's nonce is random, so a server-first that starts with
//! `r=` gets the client's nonce spliced in after it, as a real server's does: the fuzzer's bytes decide what
//! follows (the server's part of the nonce, the salt, the iteration count, extensions), and the exchange
//! reaches the client-final message and the server-final check instead of stopping at a nonce mismatch.
//!
//! The driver and its invariants are [`backend_stream`](super::backend_stream)'s.

use super::backend::{Server, drive, startup_params};
use super::{Input, message};

/// The iteration cap of the harness: low, so each run stays fast; counts above it test the refusal.
const MAX_ITERATIONS: u32 = 64;

/// Runs a fuzzer's input: one byte of setup (as for [`backend_stream`](super::backend_stream)), then the
/// mechanism list, the server-first and the server-final messages (each a length byte and its bytes), then
/// the bytes that follow the exchange.
pub fn scram(data: &[u8]) {
    let mut input = Input(data);
    let setup = input.byte();
    let server = Scram {
        mechanisms: input.piece(),
        server_first: input.piece(),
        server_final: input.piece(),
        after: input.rest(),
        turn: 0,
    };
    let mut params = startup_params(setup);
    params.scram_max_iterations = MAX_ITERATIONS;
    drive(params, &[], server, 16 * (data.len() + 64));
}

/// A SCRAM server following a script: each exchange answers the client's last message.
struct Scram<'a> {
    mechanisms: &'a [u8],
    server_first: &'a [u8],
    server_final: &'a [u8],
    after: &'a [u8],
    turn: u8,
}

impl Server for Scram<'_> {
    fn exchange(&mut self, sent: &[u8], _idle: bool) -> Option<Vec<u8>> {
        self.turn = self.turn.saturating_add(1);
        let (code, data) = match self.turn {
            1 => (10u32, self.mechanisms.to_vec()),
            2 => {
                let server_first = match self.server_first.strip_prefix(b"r=") {
                    Some(rest) => [b"r=", client_nonce(sent), rest].concat(),
                    None => self.server_first.to_vec(),
                };
                (11, server_first)
            }
            3 => (12, self.server_final.to_vec()),
            4 if !self.after.is_empty() => return Some(self.after.to_vec()),
            _ => return None,
        };
        Some(message(b'R', &[&code.to_be_bytes()[..], &data].concat()))
    }
}

/// The nonce of the client-first message in `sent` (a SASLInitialResponse ends with it), or nothing.
fn client_nonce(sent: &[u8]) -> &[u8] {
    sent.windows(3)
        .rposition(|w| w == b",r=")
        .map_or(&[][..], |at| &sent[at + 3..])
}
