//! The connection layer: one session with a server, driven by whoever polls it.
//!
//! What it owns: reaching a server ([`dial`]: a socket, TLS negotiation, the cancel route), opening a session on it
//! ([`connect`]: sslmode fallbacks, startup), the poll driver that moves
//! bytes between a transport and the protocol core ([`connection`]), the queue of answer slots through which
//! many futures share that driver ([`slots`]), and cancellation with its time limits ([`cancel`]).
//!
//! What it may touch: the protocol core (`proto`), transports and TLS (`transport`, `tls`), `config` and
//! `error`. It knows messages and requests, never the query API above it (`client`), which decides what to
//! send and reads the answers this layer routes to it.

pub(crate) mod cancel;
pub(crate) mod connect;
pub(crate) mod connection;
pub(crate) mod dial;
pub(crate) mod slots;
