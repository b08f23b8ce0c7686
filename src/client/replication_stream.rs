//! The stream `START_REPLICATION` opens (CopyBoth), and rows of its changes read by column name.
//!
//! The stream answers the server by itself: a keepalive that asks for a reply gets a standby status update
//! before the next read, and a status update goes out every
//! [`status_interval`](ReplicationStream::set_status_interval) while the application reads, so
//! `wal_sender_timeout` never ends a session whose application is merely slow. It reports as flushed only what
//! the application acknowledged ([`ReplicationStream::acknowledge`]); when everything received was
//! acknowledged (nothing of a transaction pending), it also acknowledges the WAL end a keepalive reports, so
//! changes outside the publication do not make the slot hold WAL forever.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_types::{FromSql, Type};
use tracing::Instrument as _;

use crate::client::Client;
use crate::client::telemetry::Work;
use crate::proto::pgoutput::{LogicalMessage, PgOutputDecoder, Relation, Tuple, TupleValue};
use crate::proto::replication::{
    Lsn, PgTimestamp, ServerMessage, parse_server_message, pg_now, standby_status_update,
};
use crate::proto::text_values::text_to_binary;
use crate::proto::{Backend, Flow, RequestId};
use crate::transport::runtime;
use crate::{DbError, Error};

/// A replication stream: what the server sends after `START_REPLICATION`, and the status updates we send.
///
/// Made by [`Client::start_physical_replication`]; [`LogicalReplicationStream`] decodes `pgoutput` on top.
pub struct ReplicationStream<'a> {
    client: &'a mut Client,
    id: RequestId,
    span: tracing::Span,
    /// The query timeout the client had before: a stream is one endless request, so none applies to it.
    previous_timeout: Option<Duration>,
    /// The application's acknowledged position: flushed and applied.
    acknowledged: Lsn,
    /// Physical streams: the end of the WAL received (the start of the last XLogData plus its length).
    received: Lsn,
    /// Logical streams: whether the decoded stream is between transactions with everything that needs
    /// applying acknowledged (set by [`LogicalReplicationStream`]); `None` for a physical stream.
    logical_idle: Option<bool>,
    /// A server error read while the stream ended, kept for the next call if the one reading it was dropped.
    failed: Option<DbError>,
    /// The WAL end the server reported last.
    server_wal_end: Lsn,
    status_interval: Duration,
    last_status: Instant,
    state: StreamState,
    /// The server asked for a reply; it goes out before the next read.
    reply_due: bool,
    /// Physical streams ended at the end of their timeline: the next timeline and where it starts.
    next_timeline: Option<(u32, Lsn)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    /// Both sides stream.
    Streaming,
    /// The server sent CopyDone (end of timeline, or its answer to ours); the rest of the answer follows.
    ServerDone,
    /// The request was read to its ReadyForQuery.
    Finished,
}

impl std::fmt::Debug for ReplicationStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("acknowledged", &self.acknowledged)
            .field("received", &self.received)
            .field("server_wal_end", &self.server_wal_end)
            .finish_non_exhaustive()
    }
}

impl<'a> ReplicationStream<'a> {
    pub(crate) async fn start(
        client: &'a mut Client,
        sql: &str,
        start: Lsn,
    ) -> Result<ReplicationStream<'a>, Error> {
        let span = client
            .telemetry("replication", Work::Sql(sql))
            .span()
            .clone();
        client.prepare_to_send().instrument(span.clone()).await?;
        let write = |buf: &mut BytesMut| {
            frontend::query(sql, buf)
                .map_err(|e| Error::config(format!("cannot encode the request: {e}")))
        };
        let id = client
            .connection_mut()
            .protocol
            .queue_copy(Flow::Simple, write)?;
        let previous_timeout = client.query_timeout();
        client.set_query_timeout(None);
        // From here the stream exists: if this future is dropped while waiting, its drop ends the request.
        let mut stream = ReplicationStream {
            client,
            id,
            span,
            previous_timeout,
            acknowledged: start,
            received: start,
            logical_idle: None,
            failed: None,
            server_wal_end: start,
            status_interval: Duration::from_secs(10),
            last_status: Instant::now(),
            state: StreamState::Streaming,
            reply_due: false,
            next_timeline: None,
        };
        let span = stream.span.clone();
        let started = stream.read_start().instrument(span).await;
        stream.client.connection_mut().check(started)?;
        Ok(stream)
    }

    /// Reads the answer to `START_REPLICATION` up to its CopyBothResponse; an error (a missing slot, a slot
    /// in use) is read to its ReadyForQuery and returned.
    async fn read_start(&mut self) -> Result<(), Error> {
        let mut error: Option<Error> = None;
        loop {
            match self.next_response().await? {
                Backend::CopyBoth if error.is_none() => return Ok(()),
                Backend::Ready => {
                    self.state = StreamState::Finished;
                    return Err(error.unwrap_or_else(|| {
                        Error::config("START_REPLICATION was answered without a stream")
                    }));
                }
                Backend::Error(db) if error.is_none() => error = Some(Error::db(*db)),
                _ => {}
            }
        }
    }

    /// How often a status update is sent while the application reads (default 10 s, which suits the
    /// server's default `wal_sender_timeout` of 60 s; keep it well under the server's timeout).
    pub fn set_status_interval(&mut self, interval: Duration) {
        self.status_interval = interval.max(Duration::from_millis(10));
    }

    /// Records that the application durably applied everything up to `lsn` (for logical replication, the
    /// `end_lsn` of a [`Commit`](crate::replication::Commit)). The server learns it with the next status update
    /// and may then recycle the WAL before it; a restart resumes from it. Positions never go back.
    ///
    /// With two-phase decoding, a [`Prepare`](crate::replication::LogicalMessage::Prepare) must be applied
    /// durably (as a prepared transaction) before any later position is acknowledged: after a restart the
    /// server sends only the Commit Prepared of a prepare before the acknowledged position.
    pub fn acknowledge(&mut self, lsn: Lsn) {
        self.acknowledged = self.acknowledged.max(lsn);
    }

    /// The position acknowledged so far.
    pub fn acknowledged(&self) -> Lsn {
        self.acknowledged
    }

    /// The WAL end the server reported last.
    pub fn server_wal_end(&self) -> Lsn {
        self.server_wal_end
    }

    /// After [`next`](Self::next) returned `Ok(None)` because the server reached the end of the timeline it
    /// was streaming (a physical stream of a timeline that is no longer the server's): the next timeline and
    /// the position where it starts, as the server reported them. Streaming goes on with
    /// [`Client::start_physical_replication`] on that timeline from that position, on a new connection.
    /// `None` while streaming, and for a stream that was stopped or ended otherwise.
    pub fn next_timeline(&self) -> Option<(u32, Lsn)> {
        self.next_timeline
    }

    /// Sends a status update now (and asks the server to answer with a keepalive if `reply_requested`).
    pub async fn send_status(&mut self, reply_requested: bool) -> Result<(), Error> {
        self.queue_status(reply_requested)?;
        let span = self.span.clone();
        let conn = self.client.connection_mut();
        let written = conn.write_queued().instrument(span).await;
        conn.check(written)
    }

    fn queue_status(&mut self, reply_requested: bool) -> Result<(), Error> {
        if self.state != StreamState::Streaming {
            return Ok(());
        }
        let update = standby_status_update(
            self.acknowledged,
            self.acknowledged,
            self.acknowledged,
            pg_now(),
            reply_requested,
        );
        let id = self.id;
        self.client
            .connection_mut()
            .protocol
            .queue_copy_data(id, &update)?;
        self.last_status = Instant::now();
        Ok(())
    }

    /// The next message of the stream: `Ok(None)` once the server ended it (an end of timeline in physical
    /// replication, or after [`stop`](Self::stop)). Keepalives are answered here; status updates go out on
    /// the interval while this waits.
    pub async fn next(&mut self) -> Result<Option<ServerMessage>, Error> {
        let span = self.span.clone();
        let result = self.next_inner().instrument(span).await;
        self.client.connection_mut().check(result)
    }

    async fn next_inner(&mut self) -> Result<Option<ServerMessage>, Error> {
        loop {
            if self.state == StreamState::Finished {
                return match self.failed.take() {
                    Some(db) => Err(Error::db(db)),
                    None => Ok(None),
                };
            }
            // Status updates go out at once (not only when the socket is next waited on): rows already
            // buffered could otherwise keep them queued past the server's wal_sender_timeout.
            // One clock read per message: `since` is only stale by the write just made, which resets it.
            let mut since = self.last_status.elapsed();
            if self.state == StreamState::Streaming
                && (self.reply_due || since >= self.status_interval)
            {
                self.reply_due = false;
                self.queue_status(false)?;
                self.client.connection_mut().write_queued().await?;
                since = Duration::ZERO;
            }
            let wait = self.status_interval.saturating_sub(since);
            let id = self.id;
            let response = match self.state {
                // While streaming, the wait is bounded by the next status update; the read is cancel-safe.
                StreamState::Streaming => {
                    match runtime::timeout(
                        Some(wait),
                        self.client.connection_mut().next_response(id),
                    )
                    .await
                    {
                        Ok(response) => response?,
                        Err(()) => continue,
                    }
                }
                _ => self.client.connection_mut().next_response(id).await?,
            };
            match response {
                Backend::CopyData(data) => {
                    let message = parse_server_message(data)?;
                    match &message {
                        ServerMessage::XLogData {
                            wal_start,
                            wal_end,
                            data,
                            ..
                        } => {
                            let end = wal_start.0.saturating_add(data.len() as u64);
                            self.received = self.received.max(Lsn(end));
                            self.server_wal_end = self.server_wal_end.max(*wal_end);
                        }
                        ServerMessage::Keepalive {
                            wal_end,
                            reply_requested,
                            ..
                        } => {
                            self.server_wal_end = self.server_wal_end.max(*wal_end);
                            // Idle: everything handed out that needs applying was acknowledged, so nothing before
                            // the server's WAL end is pending here; acknowledging it lets the slot advance past
                            // changes that were never sent (other tables, other databases). Logical streams are
                            // idle between transactions (decided from the decoded messages); physical ones when
                            // all WAL received was acknowledged.
                            let idle = self
                                .logical_idle
                                .unwrap_or(self.acknowledged >= self.received);
                            if idle {
                                self.acknowledged = self.acknowledged.max(*wal_end);
                            }
                            if *reply_requested {
                                // Sent at the start of the next read (or with the last update of `stop`).
                                self.reply_due = true;
                            }
                        }
                    }
                    return Ok(Some(message));
                }
                Backend::Message(Message::CopyDone) => {
                    // The server ended the stream (the end of a timeline): end ours too, with the position
                    // reached, so it goes on to the next timeline's result set and the command's end.
                    if self.state == StreamState::Streaming {
                        self.queue_status(false)?;
                        let id = self.id;
                        self.client.connection_mut().protocol.queue_copy_done(id)?;
                    }
                    self.state = StreamState::ServerDone;
                }
                Backend::Error(db) => {
                    self.state = StreamState::ServerDone;
                    // Kept before the await: a caller that drops this future gets it on its next call.
                    self.failed = Some((*db).clone());
                    let error = self.read_to_ready().await.err();
                    self.failed = None;
                    return Err(error.unwrap_or_else(|| Error::db(*db)));
                }
                Backend::Ready => {
                    self.state = StreamState::Finished;
                    return Ok(None);
                }
                // The result set after the server's CopyDone at the end of a timeline: one row of the next
                // timeline and its start position.
                Backend::Row(row) if self.state == StreamState::ServerDone => {
                    self.next_timeline = Some(parse_next_timeline(&row)?);
                }
                // CommandComplete, or that result set's description, after the server's CopyDone.
                Backend::Message(_) if self.state == StreamState::ServerDone => {}
                // The server left CopyBoth without streaming or its CopyDone: what PostgreSQL's walsender does
                // with a second START_REPLICATION on one connection.
                Backend::Message(Message::CommandComplete(_)) => {
                    self.state = StreamState::ServerDone;
                    self.read_to_ready().await?;
                    return Err(Error::unsupported(
                        "the server ended the replication stream at once without streaming: PostgreSQL does \
                         not start a second stream on the same replication connection (connect again)",
                    ));
                }
                other => return Err(crate::client::unexpected(other, "START_REPLICATION")),
            }
        }
    }

    /// Ends the stream cleanly: a last status update with the acknowledged position, CopyDone, then the
    /// server's remaining messages (discarded) up to its ReadyForQuery. The client is usable again after.
    pub async fn stop(mut self) -> Result<(), Error> {
        let span = self.span.clone();
        let result = self.stop_inner().instrument(span).await;
        self.client.connection_mut().check(result)
    }

    async fn stop_inner(&mut self) -> Result<(), Error> {
        if self.state == StreamState::Streaming {
            self.queue_status(false)?;
            let id = self.id;
            self.client.connection_mut().protocol.queue_copy_done(id)?;
            self.state = StreamState::ServerDone;
        }
        self.read_to_ready().await
    }

    /// Reads the request to its ReadyForQuery, discarding data; the first error is returned.
    async fn read_to_ready(&mut self) -> Result<(), Error> {
        let mut error: Option<DbError> = self.failed.clone();
        while self.state != StreamState::Finished {
            match self.next_response().await? {
                Backend::Ready => self.state = StreamState::Finished,
                Backend::Error(db) if error.is_none() => error = Some(*db),
                _ => {}
            }
        }
        error.map_or(Ok(()), |db| Err(Error::db(db)))
    }

    async fn next_response(&mut self) -> Result<Backend, Error> {
        let id = self.id;
        self.client.connection_mut().next_response(id).await
    }
}

/// The row that follows the end of a timeline: `next_tli` (int8) and `next_tli_startpos` (an LSN), as text.
fn parse_next_timeline(row: &crate::proto::RawRow) -> Result<(u32, Lsn), Error> {
    let text = |i: usize| {
        (i < row.len())
            .then(|| row.field(i))
            .flatten()
            .and_then(|raw| std::str::from_utf8(raw).ok())
    };
    let timeline = text(0).and_then(|t| t.parse::<u32>().ok());
    let start = text(1).and_then(|t| t.parse::<Lsn>().ok());
    match (timeline, start) {
        (Some(timeline), Some(start)) if row.len() == 2 => Ok((timeline, start)),
        _ => Err(Error::protocol(
            "the end of a timeline was followed by a row other than the next timeline and its start",
        )),
    }
}

impl Drop for ReplicationStream<'_> {
    fn drop(&mut self) {
        // Synchronous: ends our half with CopyDone (a no-op once it was sent or the stream ended); the next
        // call on the client reads the server's remaining messages out, as for any abandoned request.
        let id = self.id;
        if self.state == StreamState::Streaming {
            // The last acknowledged position goes out first, so a restart resumes from it.
            let _ = self.queue_status(false);
        }
        let conn = self.client.connection_mut();
        conn.protocol
            .abandon_copy_in(id, "replication stream dropped");
        conn.limits.query_timeout = self.previous_timeout;
    }
}

/// One decoded message of a logical replication stream.
#[derive(Debug, Clone, PartialEq)]
pub struct LogicalEvent {
    /// Where the message starts in the WAL.
    pub wal_start: Lsn,
    /// The server's WAL end when it sent it.
    pub wal_end: Lsn,
    /// When the server sent it.
    pub send_time: PgTimestamp,
    /// The decoded message.
    pub message: LogicalMessage,
}

/// A `pgoutput` stream from [`Client::start_logical_replication`]: decoded messages, keepalives answered
/// underneath, and the relations seen so far for reading rows by column name.
pub struct LogicalReplicationStream<'a> {
    inner: ReplicationStream<'a>,
    decoder: PgOutputDecoder,
    relations: HashMap<u32, Relation>,
    /// Inside Begin..Commit or Begin Prepare..Prepare.
    in_transaction: bool,
    /// Streamed transactions with blocks sent and no Stream Commit, Stream Prepare or top-level Stream Abort.
    open_streams: std::collections::HashSet<u32>,
    /// The end LSN of the last transaction the application has to apply (Commit, Stream Commit, Prepare,
    /// Stream Prepare, Commit Prepared): the stream is idle once that is acknowledged.
    last_end: Lsn,
}

impl std::fmt::Debug for LogicalReplicationStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalReplicationStream")
            .field("stream", &self.inner)
            .field("relations", &self.relations.len())
            .finish_non_exhaustive()
    }
}

impl<'a> LogicalReplicationStream<'a> {
    pub(crate) fn new(inner: ReplicationStream<'a>) -> LogicalReplicationStream<'a> {
        LogicalReplicationStream {
            inner,
            decoder: PgOutputDecoder::new(),
            relations: HashMap::new(),
            in_transaction: false,
            open_streams: std::collections::HashSet::new(),
            last_end: Lsn(0),
        }
    }

    /// The next decoded message; `Ok(None)` once the stream ended ([`stop`](Self::stop)). Relation messages
    /// are also kept, so [`relation`](Self::relation) and [`row`](Self::row) can name the columns of later
    /// changes.
    pub async fn next(&mut self) -> Result<Option<LogicalEvent>, Error> {
        loop {
            self.inner.logical_idle = Some(
                !self.in_transaction
                    && self.open_streams.is_empty()
                    && self.inner.acknowledged() >= self.last_end,
            );
            let Some(message) = self.inner.next().await? else {
                return Ok(None);
            };
            let ServerMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data,
            } = message
            else {
                continue;
            };
            let message = match self.decoder.decode(data) {
                Ok(message) => message,
                Err(e) => {
                    // The stream cannot be followed past a message we cannot read: end it.
                    let e = e.broken();
                    self.inner.client.connection_mut().protocol.mark_broken(&e);
                    return Err(e);
                }
            };
            self.track(&message);
            return Ok(Some(LogicalEvent {
                wal_start,
                wal_end,
                send_time,
                message,
            }));
        }
    }

    /// Follows where the stream is between and inside transactions, for the idle acknowledgement.
    fn track(&mut self, message: &LogicalMessage) {
        match message {
            LogicalMessage::Relation(relation) => {
                self.relations.insert(relation.oid, relation.clone());
            }
            LogicalMessage::Begin(_) | LogicalMessage::BeginPrepare(_) => {
                self.in_transaction = true
            }
            LogicalMessage::Commit(commit) => {
                self.in_transaction = false;
                self.last_end = self.last_end.max(commit.end_lsn);
            }
            LogicalMessage::Prepare(prepared) => {
                self.in_transaction = false;
                self.last_end = self.last_end.max(prepared.end_lsn);
            }
            LogicalMessage::CommitPrepared(prepared) => {
                self.last_end = self.last_end.max(prepared.end_lsn);
            }
            LogicalMessage::StreamStart { xid, .. } => {
                self.open_streams.insert(*xid);
            }
            LogicalMessage::StreamCommit(commit) => {
                self.open_streams.remove(&commit.xid);
                self.last_end = self.last_end.max(commit.end_lsn);
            }
            LogicalMessage::StreamPrepare(prepared) => {
                self.open_streams.remove(&prepared.xid);
                self.last_end = self.last_end.max(prepared.end_lsn);
            }
            // A top-level abort leaves nothing to apply; a subtransaction's leaves the transaction open.
            LogicalMessage::StreamAbort(abort) if abort.xid == abort.subxid => {
                self.open_streams.remove(&abort.xid);
            }
            _ => {}
        }
    }

    /// The relation with this OID, as its last Relation message described it.
    pub fn relation(&self, oid: u32) -> Option<&Relation> {
        self.relations.get(&oid)
    }

    /// A tuple of relation `oid` with its columns named, for typed reads.
    pub fn row<'t>(&'t self, oid: u32, tuple: &'t Tuple) -> Result<TupleRow<'t>, Error> {
        let relation = self.relations.get(&oid).ok_or_else(|| {
            Error::protocol(format!(
                "a change of relation {oid}, which was never described"
            ))
        })?;
        TupleRow::new(relation, tuple)
    }

    /// See [`ReplicationStream::acknowledge`].
    pub fn acknowledge(&mut self, lsn: Lsn) {
        self.inner.acknowledge(lsn);
    }

    /// The position acknowledged so far.
    pub fn acknowledged(&self) -> Lsn {
        self.inner.acknowledged()
    }

    /// See [`ReplicationStream::set_status_interval`].
    pub fn set_status_interval(&mut self, interval: Duration) {
        self.inner.set_status_interval(interval);
    }

    /// See [`ReplicationStream::send_status`].
    pub async fn send_status(&mut self, reply_requested: bool) -> Result<(), Error> {
        self.inner.send_status(reply_requested).await
    }

    /// See [`ReplicationStream::stop`].
    pub async fn stop(self) -> Result<(), Error> {
        self.inner.stop().await
    }
}

/// A tuple read through its relation: values by column name, typed with `FromSql`.
#[derive(Debug, Clone, Copy)]
pub struct TupleRow<'a> {
    relation: &'a Relation,
    tuple: &'a Tuple,
}

impl<'a> TupleRow<'a> {
    /// Pairs `tuple` with `relation`; they must have the same number of columns.
    pub fn new(relation: &'a Relation, tuple: &'a Tuple) -> Result<TupleRow<'a>, Error> {
        if relation.columns.len() != tuple.0.len() {
            return Err(Error::protocol(format!(
                "a tuple of {} values for relation {}.{} of {} columns",
                tuple.0.len(),
                relation.namespace,
                relation.name,
                relation.columns.len()
            )));
        }
        Ok(TupleRow { relation, tuple })
    }

    /// The raw value of column `name`, or `None` if there is no such column.
    pub fn value(&self, name: &str) -> Option<&'a TupleValue> {
        let index = self.relation.columns.iter().position(|c| c.name == name)?;
        self.tuple.0.get(index)
    }

    /// The value of column `name` as `T`. NULL reads as `None` into an `Option`. Text values (the default) are
    /// converted for the types the server writes unambiguously (integers, floats, booleans, bytea, uuid, json,
    /// dates and timestamps) and read as `text` otherwise, so `String` takes any column; binary values (option
    /// `binary`) go to `FromSql` as they are. An unchanged TOASTed value was not sent: an error, never NULL.
    ///
    /// The server writes text values with the replication session's settings, so `replication=database`
    /// connections start with `DateStyle=ISO`, `IntervalStyle=postgres`, `extra_float_digits=3` and
    /// `bytea_output=hex` (whatever the server's, role's or `options`' defaults), which these reads parse
    /// exactly; a parameter the application sets itself with `Config::param` still wins.
    pub fn get<T>(&self, name: &str) -> Result<T, Error>
    where
        T: for<'b> FromSql<'b>,
    {
        let index = self
            .relation
            .columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| {
                Error::config(format!("no column {name:?} in {}", self.relation.name))
            })?;
        let column = &self.relation.columns[index];
        let ty = Type::from_oid(column.type_oid).unwrap_or(Type::UNKNOWN);
        let decode = |ty: &Type, raw: Option<&[u8]>| {
            let value = match raw {
                Some(raw) => T::from_sql(ty, raw),
                None => T::from_sql_null(ty),
            };
            value.map_err(|e| Error::from_sql(name, e))
        };
        let check = |ty: &Type| {
            if T::accepts(ty) {
                Ok(())
            } else {
                Err(Error::from_sql_mismatch(
                    name,
                    ty,
                    std::any::type_name::<T>(),
                ))
            }
        };
        match &self.tuple.0[index] {
            // The same type resolution as a non-NULL value of the column: its own type, else text.
            TupleValue::Null if T::accepts(&ty) => decode(&ty, None),
            TupleValue::Null => {
                check(&Type::TEXT)?;
                decode(&Type::TEXT, None)
            }
            TupleValue::UnchangedToast => Err(Error::config(format!(
                "column {name:?} is an unchanged TOASTed value, which the server does not send (not NULL)"
            ))),
            TupleValue::Binary(raw) => {
                check(&ty)?;
                decode(&ty, Some(raw))
            }
            TupleValue::Text(raw) => {
                let reported = crate::proto::text_values::column_type(ty.clone());
                if reported == ty && T::accepts(&ty) {
                    let binary = text_to_binary(&ty, raw).ok_or_else(|| {
                        Error::protocol(format!(
                            "column {name:?}: unreadable {ty} text from the server"
                        ))
                    })?;
                    decode(&ty, Some(&binary[..]))
                } else {
                    check(&Type::TEXT)?;
                    decode(&Type::TEXT, Some(raw))
                }
            }
        }
    }
}
