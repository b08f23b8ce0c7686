//! COPY FROM STDIN and COPY TO STDOUT: bulk data in and out as raw bytes, in any format (text, CSV, binary);
//! [`BinaryCopyInWriter`] and [`BinaryCopyOutReader`] add typed rows over the binary format.
//!
//! The COPY statement is sent as one simple Query, so it works in every query mode and through every pooler.
//! The protocol core knows which request may stream COPY data and refuses a COPY FROM STDIN to anyone else.
//!
//! Cancel-safety: a [`CopyInWriter`] exists from the moment its Query is queued. Dropped before
//! [`finish`](CopyInWriter::finish) (or while [`copy_in`](Client::copy_in) waits for the server), it queues
//! CopyFail synchronously in its drop, so nothing of the COPY is applied and the next call reads the server's
//! answer before sending its own request. A [`CopyOutReader`] dropped midway leaves the rest of the output to
//! the next call, which reads and discards it.

mod binary;
mod typed;

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use futures_core::Stream;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tracing::Instrument as _;

use crate::client::rows_affected;
use crate::client::telemetry::{Pending, Work};
use crate::proto::{Backend, Flow, RequestId};
use crate::{Client, DbError, Error};

pub use binary::{BinaryCopyInWriter, BinaryCopyOutReader, BinaryCopyRow, BinaryCopyRowRef};
pub use typed::{CopyRow, CopyValue};

/// How much data a [`CopyInWriter`] collects before it sends a CopyData message.
const CHUNK: usize = 64 * 1024;

/// The reason a dropped writer gives the server in its CopyFail.
const DROPPED: &str = "the client dropped the COPY FROM STDIN writer before finishing it";

impl Client {
    /// Starts `COPY ... FROM STDIN` and returns a writer for its data.
    ///
    /// The data is raw: whatever the COPY's format (text, CSV or binary) expects; see
    /// [`BinaryCopyInWriter`] for typed binary rows. `sql` must be one COPY FROM STDIN statement. If the server
    /// refuses it (a missing table, a syntax error) its error is returned; any other statement is an error too.
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// let mut writer = client.copy_in("COPY items (id, name) FROM STDIN (FORMAT csv)").await?;
    /// writer.write(b"1,apple\n2,pear\n").await?;
    /// writer.write(b"3,\"plum, red\"\n").await?;
    /// let rows = writer.finish().await?;
    /// assert_eq!(rows, 3);
    /// # Ok(()) }
    /// ```
    pub async fn copy_in(&mut self, sql: &str) -> Result<CopyInWriter<'_>, Error> {
        let mut telemetry = Pending::new(self.telemetry("copy_in", Work::Sql(sql)));
        let span = telemetry.span().clone();
        let id = self
            .queue_copy_query(sql, true)
            .instrument(span.clone())
            .await;
        telemetry.observe(&id, |_| false);
        let id = id?;
        // From here the writer exists: if this future is dropped while waiting, its drop refuses the COPY.
        let mut writer = CopyInWriter {
            telemetry,
            client: self,
            id,
            buf: BytesMut::new(),
            state: WriterState::Starting,
            binary: false,
            columns: 0,
        };
        let started = writer.start().instrument(span).await;
        writer.telemetry.observe(&started, |_| false);
        writer.client.connection_mut().check(started)?;
        Ok(writer)
    }

    /// Starts `COPY ... TO STDOUT` and returns a reader of its data.
    ///
    /// The data comes as the server sends it, in the COPY's format; see [`BinaryCopyOutReader`] for typed
    /// binary rows. `sql` must be one COPY TO STDOUT statement.
    ///
    /// Dropping the reader before the end is safe: the next call on the client reads the rest of the output
    /// and discards it (so it still costs the transfer).
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// let mut reader = client.copy_out("COPY items TO STDOUT (FORMAT csv)").await?;
    /// let mut csv = Vec::new();
    /// while let Some(chunk) = reader.next().await? {
    ///     csv.extend_from_slice(&chunk);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn copy_out(&mut self, sql: &str) -> Result<CopyOutReader<'_>, Error> {
        let mut telemetry = Pending::new(self.telemetry("copy_out", Work::Sql(sql)));
        let span = telemetry.span().clone();
        let id = self
            .queue_copy_query(sql, false)
            .instrument(span.clone())
            .await;
        telemetry.observe(&id, |_| false);
        let id = id?;
        let mut reader = CopyOutReader {
            telemetry,
            client: self,
            id,
            done: false,
            error: None,
            rows: None,
            binary: false,
            columns: 0,
        };
        let started = reader.start().instrument(span).await;
        reader.telemetry.observe(&started, |_| false);
        reader.client.connection_mut().check(started)?;
        Ok(reader)
    }

    /// Queues `sql` as one simple Query, after whatever earlier requests still have coming. With `copy_in`,
    /// the core hands this request's CopyInResponse to the caller instead of refusing it.
    async fn queue_copy_query(&mut self, sql: &str, copy_in: bool) -> Result<RequestId, Error> {
        if sql.contains('\0') {
            return Err(Error::config("the SQL text contains a NUL byte"));
        }
        self.prepare_to_send().await?;
        let write = |buf: &mut BytesMut| {
            frontend::query(sql, buf)
                .map_err(|e| Error::config(format!("cannot encode the request: {e}")))
        };
        let protocol = &mut self.connection_mut().protocol;
        if copy_in {
            protocol.queue_copy(Flow::Simple, write)
        } else {
            protocol.queue_request(Flow::Simple, None, write)
        }
    }
}

/// Where a [`CopyInWriter`] stands.
enum WriterState {
    /// Waiting for the server's CopyInResponse (only inside [`Client::copy_in`]).
    Starting,
    /// The server takes data.
    Open,
    /// The server ended the COPY with this error; its ReadyForQuery is still to be read.
    ServerFailed(Box<DbError>),
    /// We ended the COPY with CopyFail after an error of ours (described here); the server's answer is still
    /// to be read.
    Aborted(String),
    /// CopyDone was queued, or the request's responses were read to the end.
    Done,
}

/// The data side of a `COPY ... FROM STDIN`, from [`Client::copy_in`].
///
/// Writes are buffered: data goes out in CopyData messages of about 64 KiB, and [`finish`](Self::finish)
/// sends the rest. A server error in the middle (a malformed row, a constraint violation) comes back from
/// [`write`](Self::write) or [`finish`](Self::finish) as a [`Db`](crate::ErrorKind::Db) error, after which the
/// connection is still usable and nothing of the COPY was applied.
///
/// Dropped without `finish`, the writer aborts the COPY with CopyFail; nothing is applied and the connection
/// stays usable.
pub struct CopyInWriter<'a> {
    /// The COPY request's telemetry: its span is entered while data goes out and its answer is read, and it
    /// ends with the COPY.
    telemetry: Pending,
    client: &'a mut Client,
    id: RequestId,
    /// Data not sent yet, less than [`CHUNK`] bytes between calls.
    buf: BytesMut,
    state: WriterState,
    binary: bool,
    columns: usize,
}

impl std::fmt::Debug for CopyInWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyInWriter")
            .field("binary", &self.binary)
            .field("columns", &self.columns)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl<'a> CopyInWriter<'a> {
    /// Whether the server expects the binary COPY format (`FORMAT binary`); otherwise text or CSV.
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// The number of columns the COPY fills.
    pub fn column_count(&self) -> usize {
        self.columns
    }

    /// Reads the answer to the COPY statement up to its CopyInResponse.
    async fn start(&mut self) -> Result<(), Error> {
        let mut error = None;
        loop {
            match self.next_response().await? {
                Backend::Message(Message::CopyInResponse(body)) if error.is_none() => {
                    self.binary = body.format() == 1;
                    self.columns = body.column_formats().count().unwrap_or(0);
                    self.state = WriterState::Open;
                    return Ok(());
                }
                Backend::Ready => {
                    self.state = WriterState::Done;
                    return Err(
                        error.unwrap_or_else(|| not_a_copy("copy_in", "COPY ... FROM STDIN"))
                    );
                }
                other => {
                    // An error, or another kind of statement: no COPY of this request may start any more (the
                    // core fails one that already did); read the answer out to its ReadyForQuery.
                    self.abandon("copy_in was given a statement that is not COPY FROM STDIN");
                    if error.is_none() {
                        error = Some(match other {
                            Backend::Error(db) => Error::db(*db),
                            _ => not_a_copy("copy_in", "COPY ... FROM STDIN"),
                        });
                    }
                }
            }
        }
    }

    /// Adds `data` to the COPY. Data is sent once about 64 KiB have been collected; a server error that
    /// arrived meanwhile is returned.
    ///
    /// If this future is dropped, an unknown part of `data` may have been taken; drop the writer then to abort
    /// the COPY.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.check_open()?;
        let mut data = data;
        if !self.buf.is_empty() || data.len() < CHUNK {
            let take = data.len().min(CHUNK - self.buf.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < CHUNK {
                return Ok(());
            }
            self.send_buffer().await?;
        }
        // Large writes go out in place, a chunk at a time, without passing through the buffer.
        while data.len() >= CHUNK {
            let (chunk, rest) = data.split_at(CHUNK);
            self.send(chunk).await?;
            data = rest;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Sends what was written but not sent yet, and waits until it went out.
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.check_open()?;
        if !self.buf.is_empty() {
            self.send_buffer().await?;
        }
        Ok(())
    }

    /// Sends the whole buffer as one CopyData, keeping its allocation for the next one.
    async fn send_buffer(&mut self) -> Result<(), Error> {
        // The data is queued in the core before the first await, so a dropped future loses nothing.
        let chunk = std::mem::take(&mut self.buf);
        let sent = self.send(&chunk).await;
        self.buf = chunk;
        self.buf.clear();
        sent
    }

    /// Sends what is left, ends the COPY with CopyDone, and returns the number of rows it copied.
    ///
    /// A server error (a bad row, a violated constraint) is returned as a [`Db`](crate::ErrorKind::Db) error;
    /// nothing of the COPY was applied then. If this future is dropped, the COPY is still complete: CopyDone was
    /// queued before the first await, and the next call reads the server's answer.
    pub async fn finish(mut self) -> Result<u64, Error> {
        let span = self.telemetry.span().clone();
        let result = self.finish_inner().instrument(span).await;
        self.telemetry.observe(&result, |_| true);
        self.client.connection_mut().check(result)
    }

    async fn finish_inner(&mut self) -> Result<u64, Error> {
        match std::mem::replace(&mut self.state, WriterState::Done) {
            WriterState::Open => {}
            WriterState::ServerFailed(db) => {
                self.read_to_ready().await?;
                return Err(Error::db(*db));
            }
            WriterState::Aborted(why) => {
                self.read_to_ready().await?;
                return Err(aborted(&why));
            }
            WriterState::Starting | WriterState::Done => {
                return Err(Error::protocol("BUG: finish of a COPY that is not open"));
            }
        }
        let rest = self.buf.split().freeze();
        let protocol = &mut self.client.connection_mut().protocol;
        if !rest.is_empty() {
            protocol.queue_copy_data(self.id, &rest)?;
        }
        // Bookkeeping before the first await: the state is Done, so a drop from here on adds no CopyFail.
        protocol.queue_copy_done(self.id)?;
        match self.read_to_ready().await? {
            (_, Some(db)) => Err(Error::db(db)),
            (rows, None) => Ok(rows),
        }
    }

    /// Queues one CopyData with `chunk` and sends everything queued. A server error that arrives meanwhile
    /// ends the COPY and is returned.
    async fn send(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let id = self.id;
        let conn = self.client.connection_mut();
        if let Err(e) = conn.protocol.queue_copy_data(id, chunk) {
            // Too large for one message, or a broken connection: either way this COPY cannot go on.
            self.abort(&e.to_string());
            return Err(e);
        }
        let sent = conn
            .send_watching(id)
            .instrument(self.telemetry.span().clone())
            .await;
        match conn.check(sent)? {
            None => Ok(()),
            Some(Backend::Error(db)) => {
                self.state = WriterState::ServerFailed(db.clone());
                Err(Error::db(*db))
            }
            // The core lets nothing else through during COPY FROM STDIN.
            Some(_) => {
                let e =
                    Error::protocol("BUG: a response other than an error during COPY FROM STDIN");
                self.client.connection_mut().protocol.mark_broken(&e);
                Err(e)
            }
        }
    }

    fn check_open(&self) -> Result<(), Error> {
        match &self.state {
            WriterState::Open => Ok(()),
            WriterState::ServerFailed(db) => Err(Error::db((**db).clone())),
            WriterState::Aborted(why) => Err(aborted(why)),
            WriterState::Starting | WriterState::Done => Err(Error::skipped(
                "the COPY is not open: it never started or already ended",
            )),
        }
    }

    /// Aborts the COPY with CopyFail after an error of the caller's (`why`); later calls return an error.
    pub(crate) fn abort(&mut self, why: &str) {
        self.abandon(&format!("the client aborted the COPY: {why}"));
        self.buf.clear();
        self.state = WriterState::Aborted(why.to_string());
    }

    /// Makes the core refuse or fail this request's COPY FROM STDIN.
    fn abandon(&mut self, reason: &str) {
        let id = self.id;
        self.client
            .connection_mut()
            .protocol
            .abandon_copy_in(id, reason);
    }

    /// Reads the request's responses to its ReadyForQuery: the row count of its first CommandComplete and its
    /// first error. Results of further statements in the same Query are discarded.
    async fn read_to_ready(&mut self) -> Result<(u64, Option<DbError>), Error> {
        let mut rows = None;
        let mut error = None;
        loop {
            match self.next_response().await? {
                Backend::Ready => break,
                Backend::Message(Message::CommandComplete(body)) if rows.is_none() => {
                    rows = Some(rows_affected(body.tag().map_err(Error::malformed)?));
                }
                Backend::Error(db) if error.is_none() => error = Some(*db),
                _ => {}
            }
        }
        self.state = WriterState::Done;
        Ok((rows.unwrap_or(0), error))
    }

    async fn next_response(&mut self) -> Result<Backend, Error> {
        let id = self.id;
        self.client.connection_mut().next_response(id).await
    }

    /// The raw buffer of unsent data, for the binary writer to encode rows into.
    pub(crate) fn buffer(&mut self) -> Result<&mut BytesMut, Error> {
        self.check_open()?;
        Ok(&mut self.buf)
    }

    /// Sends full chunks of the buffer once it holds at least one.
    pub(crate) async fn send_full_chunks(&mut self) -> Result<(), Error> {
        while self.buf.len() >= CHUNK {
            let chunk = self.buf.split_to(CHUNK).freeze();
            self.send(&chunk).await?;
        }
        Ok(())
    }
}

impl Drop for CopyInWriter<'_> {
    fn drop(&mut self) {
        // Synchronous: queues CopyFail (or makes the core refuse a COPY that has not started yet); a no-op once
        // CopyDone was queued or the server ended the COPY.
        self.abandon(DROPPED);
    }
}

fn aborted(why: &str) -> Error {
    Error::skipped(format!("the COPY was aborted by an earlier error: {why}"))
}

fn not_a_copy(call: &str, expected: &str) -> Error {
    Error::config(format!(
        "{call} needs a {expected} statement, but the server answered with something else"
    ))
}

/// The data of a `COPY ... TO STDOUT`, from [`Client::copy_out`].
///
/// Chunks come as the server sent them (one CopyData message each; PostgreSQL sends one per row).
pub struct CopyOutReader<'a> {
    /// The COPY request's telemetry: its span is entered while its data is read, and it ends with the data.
    telemetry: Pending,
    client: &'a mut Client,
    id: RequestId,
    done: bool,
    /// A server error, returned once its ReadyForQuery arrived so the connection is in step again.
    error: Option<Error>,
    rows: Option<u64>,
    binary: bool,
    columns: usize,
}

impl std::fmt::Debug for CopyOutReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOutReader")
            .field("binary", &self.binary)
            .field("columns", &self.columns)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl CopyOutReader<'_> {
    /// Whether the data is in the binary COPY format (`FORMAT binary`); otherwise text or CSV.
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// The number of columns in the data.
    pub fn column_count(&self) -> usize {
        self.columns
    }

    /// The number of rows the COPY sent, once [`next`](Self::next) returned `Ok(None)`.
    pub fn rows(&self) -> Option<u64> {
        self.rows
    }

    async fn start(&mut self) -> Result<(), Error> {
        let mut error = None;
        loop {
            match self.next_response().await? {
                Backend::Message(Message::CopyOutResponse(body)) if error.is_none() => {
                    self.binary = body.format() == 1;
                    self.columns = body.column_formats().count().unwrap_or(0);
                    return Ok(());
                }
                Backend::Error(db) if error.is_none() => error = Some(Error::db(*db)),
                Backend::Ready => {
                    self.done = true;
                    return Err(
                        error.unwrap_or_else(|| not_a_copy("copy_out", "COPY ... TO STDOUT"))
                    );
                }
                // Another kind of statement: read its answer out.
                _ => {
                    error.get_or_insert_with(|| not_a_copy("copy_out", "COPY ... TO STDOUT"));
                }
            }
        }
    }

    /// The next chunk of data, or `Ok(None)` at the end. A server error in the middle (a cancelled query) is
    /// returned once the request finished, and the connection stays usable.
    ///
    /// Cancel-safe: a dropped future takes no data with it. The reader is also a
    /// [`Stream`](futures_core::Stream) of the same chunks.
    #[allow(
        clippy::should_implement_trait,
        reason = "the async counterpart of Iterator::next, for callers without a Stream extension crate"
    )]
    pub async fn next(&mut self) -> Result<Option<Bytes>, Error> {
        poll_fn(|cx| self.poll_chunk(cx)).await
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, Error>> {
        if self.done {
            return Poll::Ready(Ok(None));
        }
        // Data already buffered whole is taken straight from the protocol core, outside the request's span
        // (nothing is logged there, and entering a span per chunk costs a subscriber two calls).
        if self.error.is_none() {
            match self
                .client
                .connection_mut()
                .protocol
                .poll_copy_data(self.id)
            {
                Ok(Some(data)) => return Poll::Ready(Ok(Some(data))),
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(self.client.connection_mut().check(Err(e)));
                }
            }
        }
        let span = self.telemetry.span().clone();
        let _entered = span.enter();
        let result = ready!(self.poll_message(cx));
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        self.telemetry.observe(&result, Option::is_none);
        Poll::Ready(self.client.connection_mut().check(result))
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, Error>> {
        loop {
            // Data already buffered whole is taken straight from the protocol core; anything else (and the
            // socket) goes through the connection's dispatch below.
            if self.error.is_none()
                && let Some(data) = self
                    .client
                    .connection_mut()
                    .protocol
                    .poll_copy_data(self.id)?
            {
                return Poll::Ready(Ok(Some(data)));
            }
            // A fresh future per poll: `next_response` keeps no state of its own (the connection holds it), so
            // dropping it while pending loses nothing, and the reader stays `Unpin`.
            let response = {
                let next = pin!(self.client.connection_mut().next_response(self.id));
                ready!(next.poll(cx))?
            };
            match response {
                Backend::CopyData(data) if self.error.is_none() => {
                    return Poll::Ready(Ok(Some(data)));
                }
                Backend::Message(Message::CommandComplete(body)) if self.rows.is_none() => {
                    self.rows = Some(rows_affected(body.tag().map_err(Error::malformed)?));
                }
                Backend::Error(db) => {
                    self.error.get_or_insert(Error::db(*db));
                }
                Backend::Ready => {
                    return Poll::Ready(match self.error.take() {
                        Some(e) => Err(e),
                        None => Ok(None),
                    });
                }
                // CopyDone, and the results of further statements in the same Query.
                _ => {}
            }
        }
    }

    async fn next_response(&mut self) -> Result<Backend, Error> {
        let id = self.id;
        self.client.connection_mut().next_response(id).await
    }
}

impl Stream for CopyOutReader<'_> {
    type Item = Result<Bytes, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_chunk(cx).map(Result::transpose)
    }
}

#[cfg(all(test, not(target_os = "wasi")))]
mod tests {
    use super::*;
    use crate::types::Type;

    fn assert_send<T: Send>(_: &T) {}

    /// Natively the COPY values and the futures that make and drive them must be `Send`, like the rest of the
    /// client. Checked by type only: the closures are never called.
    #[test]
    fn copy_values_and_futures_are_send() {
        let _copy_in = |client: &mut Client| {
            let start = client.copy_in("COPY t FROM STDIN");
            assert_send(&start);
        };
        let _copy_out = |client: &mut Client| {
            let start = client.copy_out("COPY t TO STDOUT");
            assert_send(&start);
        };
        let _writer = |mut writer: CopyInWriter<'_>| {
            assert_send(&writer);
            assert_send(&writer.write(b""));
            drop(writer.flush());
            let mut binary = BinaryCopyInWriter::new(writer, &[Type::INT4]);
            assert_send(&binary.write(&[&1i32]));
            assert_send(&binary.finish());
        };
        let _reader = |mut reader: CopyOutReader<'_>| {
            assert_send(&reader.next());
            let mut binary = BinaryCopyOutReader::new(reader, &[Type::INT4]);
            assert_send(&binary.next());
        };
    }
}
