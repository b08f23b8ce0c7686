//! Streaming replication, sans-IO: the messages carried in CopyData once `START_REPLICATION` switched the
//! connection to CopyBoth, and the checked reader the `pgoutput` decoder (`pgoutput.rs`) shares.
//!
//! postgres-protocol has none of these. Every length and count is checked against the bytes that are there
//! before anything is reserved or sliced; a message that does not parse is an error value, never a panic. Values
//! are [`Bytes`] slices of the received message: nothing is copied.
//!
//! What the messages mean, and when the server sends them: PostgreSQL's documentation, "Streaming Replication
//! Protocol" and "Logical Replication Message Formats".

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::Error;

/// A position in the write-ahead log: a byte offset, shown as PostgreSQL shows it (`16/B374D848`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = Error;

    /// Parses PostgreSQL's form, two hexadecimal halves separated by `/`.
    fn from_str(s: &str) -> Result<Lsn, Error> {
        let bad = || {
            Error::config(format!(
                "invalid LSN {s:?}: expected two hex numbers like 16/B374D848"
            ))
        };
        let (high, low) = s.split_once('/').ok_or_else(bad)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 {
                return Err(bad());
            }
            u32::from_str_radix(h, 16).map_err(|_| bad())
        };
        Ok(Lsn(((half(high)? as u64) << 32) | half(low)? as u64))
    }
}

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's epoch, as replication messages carry time.
pub type PgTimestamp = i64;

/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// Now, in PostgreSQL's epoch, for the status updates we send (0 if the clock is before 2000).
pub(crate) fn pg_now() -> PgTimestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|since_unix| {
            since_unix.checked_sub(std::time::Duration::from_secs(PG_EPOCH_UNIX_SECS))
        })
        .map_or(0, |since_pg| {
            i64::try_from(since_pg.as_micros()).unwrap_or(i64::MAX)
        })
}

/// A message of the server in CopyBoth mode (the payload of one CopyData).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// WAL data (`w`): for logical replication, one message of the output plugin.
    XLogData {
        /// Where this data starts in the WAL.
        wal_start: Lsn,
        /// The end of the WAL on the server when it sent this.
        wal_end: Lsn,
        /// When the server sent it.
        send_time: PgTimestamp,
        /// The output plugin's message (or raw WAL for physical replication).
        data: Bytes,
    },
    /// Primary keepalive (`k`).
    Keepalive {
        /// The end of the WAL on the server.
        wal_end: Lsn,
        /// When the server sent it.
        send_time: PgTimestamp,
        /// The server asks for a status update at once; it disconnects after `wal_sender_timeout` without one.
        reply_requested: bool,
    },
}

/// Parses the payload of one CopyData the server sent in CopyBoth mode.
pub fn parse_server_message(data: Bytes) -> Result<ServerMessage, Error> {
    let mut r = Reader::new(data, "replication message");
    match r.u8()? {
        b'w' => Ok(ServerMessage::XLogData {
            wal_start: Lsn(r.u64()?),
            wal_end: Lsn(r.u64()?),
            send_time: r.i64()?,
            data: r.rest(),
        }),
        b'k' => {
            let message = ServerMessage::Keepalive {
                wal_end: Lsn(r.u64()?),
                send_time: r.i64()?,
                reply_requested: r.u8()? != 0,
            };
            r.end()?;
            Ok(message)
        }
        tag => Err(Error::protocol(format!(
            "unknown replication message {:?} from the server",
            tag as char
        ))),
    }
}

/// The payload of a standby status update (`r`) to send in a CopyData: how far the client has written,
/// flushed and applied the stream. The server may recycle WAL up to `flush` (the slot's confirmed position).
pub fn standby_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    now: PgTimestamp,
    reply_requested: bool,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(34);
    buf.put_u8(b'r');
    buf.put_u64(write.0);
    buf.put_u64(flush.0);
    buf.put_u64(apply.0);
    buf.put_i64(now);
    buf.put_u8(u8::from(reply_requested));
    buf.freeze()
}

/// A checked cursor over one message: every read says what was missing when the message is short.
pub(crate) struct Reader {
    data: Bytes,
    at: usize,
    what: &'static str,
}

impl Reader {
    pub(crate) fn new(data: Bytes, what: &'static str) -> Reader {
        Reader { data, at: 0, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.at
    }

    pub(crate) fn short(&self, part: &str) -> Error {
        Error::protocol(format!("{} too short: {part} is cut off", self.what))
    }

    pub(crate) fn unexpected(&self, byte: u8, wanted: &str) -> Error {
        Error::protocol(format!(
            "{}: found {:?} where {wanted} belongs",
            self.what, byte as char
        ))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let bytes = self
            .data
            .get(self.at..self.at + N)
            .ok_or_else(|| self.short("a number"))?;
        self.at += N;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn i32(&mut self) -> Result<i32, Error> {
        self.array().map(i32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        self.array().map(u64::from_be_bytes)
    }

    pub(crate) fn i64(&mut self) -> Result<i64, Error> {
        self.array().map(i64::from_be_bytes)
    }

    pub(crate) fn expect(&mut self, byte: u8, part: &str) -> Result<(), Error> {
        match self.u8()? {
            b if b == byte => Ok(()),
            other => Err(self.unexpected(other, part)),
        }
    }

    pub(crate) fn bytes(&mut self, len: usize, part: &str) -> Result<Bytes, Error> {
        if len > self.remaining() {
            return Err(self.short(part));
        }
        let out = self.data.slice(self.at..self.at + len);
        self.at += len;
        Ok(out)
    }

    /// A NUL-terminated string, which must be UTF-8 (the server sends names in the database's encoding, and
    /// the client asks for UTF8).
    pub(crate) fn string(&mut self) -> Result<String, Error> {
        let rest = &self.data[self.at..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.short("a string's terminating NUL"))?;
        let text = std::str::from_utf8(&rest[..len])
            .map_err(|_| Error::protocol(format!("{}: a name is not UTF-8", self.what)))?
            .to_owned();
        self.at += len + 1;
        Ok(text)
    }

    pub(crate) fn rest(&mut self) -> Bytes {
        let out = self.data.slice(self.at..);
        self.at = self.data.len();
        out
    }

    pub(crate) fn end(&self) -> Result<(), Error> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(Error::protocol(format!(
                "{}: {} unexpected bytes at the end",
                self.what,
                self.remaining()
            )))
        }
    }
}
