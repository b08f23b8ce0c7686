//! Pipelines: many statements sent in one write, their results read back in order.
//!
//! Every statement goes through the extended protocol with binary parameters. SQL text is prepared first
//! (once per distinct text; cached statements cost nothing), then the whole batch is queued as one request
//! whose Sync count the protocol core knows, so the core ends it exactly, and the results are read in order:
//! each statement's rows end with its CommandComplete (or ErrorResponse), and with a Sync per statement each
//! also ends with a ReadyForQuery. A result can never be matched to the wrong statement: anything that does
//! not fit that sequence is a protocol error, which closes the connection.
//!
//! A pipeline future dropped after its request was queued leaves the request registered in the core: the
//! statements still run on the server, and the connection's next call reads and discards their results.

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tracing::Instrument as _;

use bytes::BytesMut;

use crate::client::{StatementRef, encode_error, rows_affected, unexpected};
use crate::proto::{Backend, Flow};
use crate::stream::Bindable;
use crate::{Client, Error, Param, Row, Statement, ToStatement};

/// How the statements of a [`Pipeline`] succeed or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PipelineMode {
    /// One Sync for the whole batch. Outside a transaction block PostgreSQL runs the batch as one implicit
    /// transaction: the first error aborts the rest (they report [`ErrorKind::Skipped`]) and rolls back
    /// everything, including the statements before it, whose results are still reported. Inside a
    /// transaction block the error fails that block instead.
    ///
    /// [`ErrorKind::Skipped`]: crate::ErrorKind::Skipped
    Atomic,
    /// One Sync per statement: each statement succeeds or fails on its own, and outside a transaction block
    /// each one that succeeds is committed.
    Independent,
}

/// A batch of statements to send in one write; run it with [`Client::run_pipeline`].
///
/// ```no_run
/// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
/// use wasi_pg_client::{Pipeline, PipelineMode};
///
/// let ids: Vec<i32> = (1..=100).collect();
/// let mut pipeline = Pipeline::new(PipelineMode::Atomic);
/// for id in &ids {
///     pipeline.push("INSERT INTO items (id) VALUES ($1)", &[id]);
/// }
/// pipeline.push("SELECT count(*) FROM items", &[]);
/// // One result per statement, in order; collecting returns the first error, which names the cause.
/// let results = client
///     .run_pipeline(&pipeline)
///     .await?
///     .into_iter()
///     .collect::<Result<Vec<_>, _>>()?;
/// let count: i64 = results[100].rows()[0].get(0);
/// # let _ = count;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Pipeline<'a> {
    mode: PipelineMode,
    items: Vec<Item<'a>>,
}

#[derive(Debug)]
struct Item<'a> {
    statement: Source<'a>,
    params: Vec<Param<'a>>,
}

#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    Sql(&'a str),
    Prepared(&'a Statement),
}

impl<'a> Pipeline<'a> {
    /// An empty pipeline.
    pub fn new(mode: PipelineMode) -> Pipeline<'a> {
        Pipeline {
            mode,
            items: Vec::new(),
        }
    }

    /// Adds a statement (SQL text or a prepared [`Statement`]) with its parameters.
    pub fn push<T>(&mut self, statement: &'a T, params: &[Param<'a>]) -> &mut Pipeline<'a>
    where
        T: ToStatement + ?Sized,
    {
        let statement = match statement.to_statement() {
            StatementRef::Sql(sql) => Source::Sql(sql),
            StatementRef::Prepared(statement) => Source::Prepared(statement),
        };
        self.items.push(Item {
            statement,
            params: params.to_vec(),
        });
        self
    }

    /// The mode.
    pub fn mode(&self) -> PipelineMode {
        self.mode
    }

    /// The number of statements.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the pipeline holds no statement.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The result of one statement of a pipeline: its rows, and the row count of its command tag.
#[derive(Debug)]
pub struct PipelineOutput {
    rows: Vec<Row>,
    rows_affected: u64,
}

impl PipelineOutput {
    /// The rows the statement returned (empty for a statement that returns none).
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The rows, by value.
    pub fn into_rows(self) -> Vec<Row> {
        self.rows
    }

    /// The number of rows the statement affected or returned.
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

/// A statement of the batch that is being sent: where it is in the pipeline, its columns.
struct Sent {
    index: usize,
    statement: Statement,
}

impl Client {
    /// Runs a [`Pipeline`]: every statement is sent in one write and the results come back in order, one per
    /// statement.
    ///
    /// The outer `Err` means the batch as a whole could not run or be read (the connection broke), or, in
    /// [`PipelineMode::Atomic`] outside a transaction block, that the implicit commit at its end failed
    /// (a deferred constraint, a serialization failure), so nothing was committed. Otherwise each statement
    /// has its own result; in atomic mode the failing statement reports its error and every other statement
    /// that did not run reports [`ErrorKind::Skipped`](crate::ErrorKind::Skipped).
    ///
    /// If the future is dropped after the batch was queued, the statements still run and the connection's
    /// next call discards their results.
    pub async fn run_pipeline(
        &mut self,
        pipeline: &Pipeline<'_>,
    ) -> Result<Vec<Result<PipelineOutput, Error>>, Error> {
        let span = self.request_span("pipeline", None);
        self.run_pipeline_in_span(pipeline).instrument(span).await
    }

    async fn run_pipeline_in_span(
        &mut self,
        pipeline: &Pipeline<'_>,
    ) -> Result<Vec<Result<PipelineOutput, Error>>, Error> {
        let atomic = pipeline.mode == PipelineMode::Atomic;
        let count = pipeline.items.len();
        let mut results: Vec<Option<Result<PipelineOutput, Error>>> =
            (0..count).map(|_| None).collect();
        let statements = self.prepare_pipeline(pipeline, atomic).await?;

        // Encode every statement on its own, so a parameter that does not encode fails that statement alone.
        let mut sent = Vec::with_capacity(count);
        let mut messages = BytesMut::new();
        let mut first_failure = None;
        for (index, (item, statement)) in pipeline.items.iter().zip(statements).enumerate() {
            let encoded = statement.and_then(|statement| {
                let sql = match item.statement {
                    Source::Sql(sql) => Some(sql),
                    Source::Prepared(_) => None,
                };
                let statement = Bindable::new(statement, sql);
                statement.check_params(&item.params)?;
                // Room for a typical Bind/Describe/Execute up front: growing from empty costs more than the
                // statement's encoding itself.
                let mut buf = BytesMut::with_capacity(256);
                statement.write_bind(&mut buf, "", &item.params)?;
                // Describe gives each statement's RowDescription, so the core checks every DataRow against
                // the statement it belongs to. A statement the server described with NoData (an INSERT or
                // UPDATE without RETURNING) has no rows: it goes without, as the answer would be NoData
                // again. Should it send rows anyway, the core finds them undescribed and ends the connection
                // rather than pass them on.
                if statement.statement.returns_rows() {
                    frontend::describe(b'P', "", &mut buf).map_err(encode_error)?;
                }
                frontend::execute("", 0, &mut buf).map_err(encode_error)?;
                if !atomic {
                    frontend::sync(&mut buf);
                }
                Ok((buf, statement.statement))
            });
            match encoded {
                Ok((buf, statement)) => {
                    messages.unsplit(buf);
                    sent.push(Sent { index, statement });
                }
                Err(e) => {
                    first_failure.get_or_insert(index);
                    results[index] = Some(Err(e));
                }
            }
        }
        if atomic && first_failure.is_some() {
            sent.clear();
        }

        if !sent.is_empty() {
            let syncs = if atomic { 1 } else { sent.len() };
            let syncs = u32::try_from(syncs).map_err(|_| {
                Error::config(format!("a pipeline of {syncs} statements is too long"))
            })?;
            self.prepare_to_send().await?;
            let id = self.connection_mut().protocol.queue_request(
                Flow::Extended(syncs),
                None,
                |buf| {
                    buf.unsplit(messages);
                    if atomic {
                        frontend::sync(buf);
                    }
                    Ok(())
                },
            )?;
            let read = self.read_pipeline(id, &sent, atomic, &mut results).await;
            if let Some(failed) = self.connection_mut().check(read)? {
                first_failure.get_or_insert(failed);
            }
        }

        // Statements that did not run name the failure that stopped them, so the first error of the results
        // (what `collect::<Result<Vec<_>, _>>()` returns) always tells the cause.
        let failed = first_failure.unwrap_or(0);
        let cause = match results.get(failed) {
            Some(Some(Err(e))) => e.to_string(),
            _ => "an earlier failure".to_string(),
        };
        Ok(results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(Error::skipped(format!(
                        "not run: statement {failed} (counting from 0) of the atomic pipeline failed: {cause}"
                    )))
                })
            })
            .collect())
    }

    /// Resolves each statement of the pipeline to a prepared one, preparing each distinct SQL text once.
    /// A statement that fails to prepare gets the error; in atomic mode nothing more is prepared after it.
    async fn prepare_pipeline(
        &mut self,
        pipeline: &Pipeline<'_>,
        atomic: bool,
    ) -> Result<Vec<Result<Statement, Error>>, Error> {
        let mut prepared: Vec<(&str, Result<Statement, Error>)> = Vec::new();
        let mut statements = Vec::with_capacity(pipeline.items.len());
        let mut failed = false;
        for item in &pipeline.items {
            let statement = match item.statement {
                Source::Prepared(statement) => self.statement(statement).await,
                Source::Sql(sql) => match prepared.iter().find(|(text, _)| *text == sql) {
                    Some((_, result)) => clone_result(result),
                    None if failed && atomic => {
                        Err(Error::skipped("not prepared: an earlier statement failed"))
                    }
                    None => {
                        // The unnamed statement is fine for several texts: each Bind is preceded by its Parse.
                        let result = self.statement(sql).await;
                        let result = match result {
                            Err(e) if e.is_connection_broken() => return Err(e),
                            result => result,
                        };
                        let copy = clone_result(&result);
                        prepared.push((sql, result));
                        copy
                    }
                },
            };
            failed |= statement.is_err();
            statements.push(statement);
        }
        Ok(statements)
    }

    /// Reads the results of a queued pipeline into `results`; returns the index of the statement that failed
    /// in atomic mode, if one did.
    async fn read_pipeline(
        &mut self,
        id: crate::proto::RequestId,
        sent: &[Sent],
        atomic: bool,
        results: &mut [Option<Result<PipelineOutput, Error>>],
    ) -> Result<Option<usize>, Error> {
        // `current` is the statement whose answer is arriving; it moves on at each CommandComplete or error.
        let mut current = 0;
        let mut rows = Vec::new();
        let mut readies = 0;
        let mut failed = None;
        let mut commit_error = None;
        loop {
            let message = self.connection_mut().next_response(id).await?;
            // With a Sync per statement, each ReadyForQuery ends exactly one statement; with one Sync, the one
            // ReadyForQuery ends the batch.
            if let Backend::Ready = message {
                readies += 1;
                let complete = if atomic {
                    current == sent.len() || failed.is_some()
                } else {
                    current == readies
                };
                if !complete {
                    return Err(Error::protocol(
                        "ReadyForQuery before a pipelined statement finished",
                    ));
                }
                if atomic || readies == sent.len() {
                    break;
                }
                continue;
            }
            if let Backend::Error(db) = message {
                let error = Error::db(*db);
                if atomic && current == sent.len() && failed.is_none() {
                    // Every statement ran: the implicit commit at Sync failed, and nothing was committed.
                    commit_error =
                        Some(error.context("the pipeline's implicit commit failed".into()));
                    continue;
                }
                let Some(statement) = sent.get(current).filter(|_| failed.is_none()) else {
                    return Err(Error::protocol(
                        "an ErrorResponse after the pipeline was aborted",
                    ));
                };
                rows.clear();
                results[statement.index] = Some(Err(error));
                current += 1;
                if atomic {
                    failed = Some(statement.index);
                }
                continue;
            }
            let Some(statement) = sent.get(current).filter(|_| failed.is_none()) else {
                return Err(unexpected(message, "a finished pipeline"));
            };
            match message {
                Backend::Row(raw) => rows.push(Row::new(statement.statement.columns_arc(), raw)?),
                Backend::Message(Message::CommandComplete(body)) => {
                    let affected = rows_affected(body.tag().map_err(Error::malformed)?);
                    results[statement.index] = Some(Ok(PipelineOutput {
                        rows: std::mem::take(&mut rows),
                        rows_affected: affected,
                    }));
                    current += 1;
                }
                Backend::Message(Message::EmptyQueryResponse) => {
                    results[statement.index] = Some(Ok(PipelineOutput {
                        rows: Vec::new(),
                        rows_affected: 0,
                    }));
                    current += 1;
                }
                Backend::Message(
                    Message::ParseComplete
                    | Message::BindComplete
                    | Message::RowDescription(_)
                    | Message::NoData
                    | Message::CopyOutResponse(_)
                    | Message::CopyDone,
                )
                | Backend::CopyData(_) => {}
                other => return Err(unexpected(other, "a pipeline")),
            }
        }
        match commit_error {
            Some(e) => Err(e),
            None => Ok(failed),
        }
    }
}

fn clone_result(result: &Result<Statement, Error>) -> Result<Statement, Error> {
    match result {
        Ok(statement) => Ok(statement.clone()),
        Err(e) => Err(clone_error(e)),
    }
}

/// Statements of a pipeline with the same SQL text share one preparation, and so its failure; [`Error`] is not
/// `Clone`, so each gets the server's error again, or, for a failure of another kind, a Skipped error that
/// quotes it.
fn clone_error(e: &Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::db(db.clone()),
        None => Error::skipped(format!("not prepared: {e}")),
    }
}

/// Scripted-server tests: a transport that plays canned backend bytes and records what the client sent, so the
/// result bookkeeping is checked against exact transcripts, hostile ones included.
#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use super::*;
    use crate::{Config, ErrorKind, Transport};

    /// Plays one turn of backend bytes per write of the client, like a server answering each request it
    /// gets, and records the bytes sent. Out of turns, it reports the end of the stream, so a client waiting
    /// for more fails instead of hanging.
    struct Scripted {
        turns: std::collections::VecDeque<Vec<u8>>,
        readable: Vec<u8>,
        sent: Arc<Mutex<Vec<u8>>>,
    }

    impl Transport for Scripted {
        fn poll_read(&mut self, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.readable.len());
            buf[..n].copy_from_slice(&self.readable[..n]);
            self.readable.drain(..n);
            Poll::Ready(Ok(n))
        }
        fn poll_write(&mut self, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.sent.lock().unwrap().extend_from_slice(buf);
            if let Some(turn) = self.turns.pop_front() {
                self.readable.extend_from_slice(&turn);
            }
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The scripted transport never returns Pending, so one poll loop with a no-op waker finishes any future.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    /// A RowDescription of one binary int4 column.
    fn int4_description() -> Vec<u8> {
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend_from_slice(b"v\0");
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&23u32.to_be_bytes());
        body.extend_from_slice(&4i16.to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        msg(b'T', &body)
    }

    fn int4_row(v: i32) -> Vec<u8> {
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&v.to_be_bytes());
        msg(b'D', &body)
    }

    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', format!("{tag}\0").as_bytes())
    }

    fn error(code: &str) -> Vec<u8> {
        msg(
            b'E',
            format!("SERROR\0VERROR\0C{code}\0Mscripted failure\0\0").as_bytes(),
        )
    }

    /// One int4 row answering one statement of a pipeline (BindComplete, RowDescription, DataRow,
    /// CommandComplete).
    fn answer(v: i32) -> Vec<u8> {
        [
            msg(b'2', b""),
            int4_description(),
            int4_row(v),
            complete("SELECT 1"),
        ]
        .concat()
    }

    /// What [`run`] returns: the pipeline's result, whether the client is closed, the message tags sent.
    type Run = (
        Result<Vec<Result<PipelineOutput, Error>>, Error>,
        bool,
        Vec<u8>,
    );

    /// Runs a pipeline of `SELECT $1::int4` with 1, 2, ... against `script` (the answers after the startup
    /// and the one prepare). Returns the result, whether the client is closed, and the tags of the messages
    /// the client sent for the pipeline itself.
    fn run(mode: PipelineMode, statements: i32, script: &[Vec<u8>]) -> Run {
        let prepare = [
            msg(b'1', b""),
            msg(
                b't',
                &[&1u16.to_be_bytes()[..], &23u32.to_be_bytes()].concat(),
            ),
            int4_description(),
            ready(),
        ]
        .concat();
        let startup = [msg(b'R', &0u32.to_be_bytes()), ready()].concat();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let transport = Scripted {
            turns: [startup, prepare, script.concat()].into(),
            readable: Vec::new(),
            sent: sent.clone(),
        };
        let config = Config::parse("user=u dbname=d sslmode=disable").unwrap();
        let values: Vec<i32> = (1..=statements).collect();
        let mut pipeline = Pipeline::new(mode);
        for v in &values {
            pipeline.push("SELECT $1::int4", &[v]);
        }
        let (result, closed) = block_on(async {
            let mut client = Client::connect_with_transport(Box::new(transport), &config)
                .await
                .unwrap();
            let result = client.run_pipeline(&pipeline).await;
            (result, client.is_closed())
        });
        // Skip the StartupMessage (no tag) and the prepare's Parse, Describe and Sync.
        let sent = sent.lock().unwrap();
        let mut tags = Vec::new();
        let mut rest = &sent[u32::from_be_bytes(sent[..4].try_into().unwrap()) as usize..];
        while !rest.is_empty() {
            tags.push(rest[0]);
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            rest = &rest[1 + len..];
        }
        assert_eq!(&tags[..3], b"PDS", "the prepare");
        (result, closed, tags[3..].to_vec())
    }

    fn value(result: &Result<PipelineOutput, Error>) -> i32 {
        result.as_ref().unwrap().rows()[0].get(0)
    }

    #[test]
    fn atomic_batch_has_one_sync() {
        let (result, closed, tags) = run(
            PipelineMode::Atomic,
            3,
            &[answer(1), answer(2), answer(3), ready()],
        );
        let results = result.unwrap();
        assert_eq!(results.iter().map(value).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(!closed);
        assert_eq!(tags, b"BDEBDEBDES");
    }

    #[test]
    fn independent_batch_has_a_sync_per_statement() {
        let script = [
            error("22012"),
            ready(),
            answer(2),
            ready(),
            answer(3),
            ready(),
        ];
        let (result, closed, tags) = run(PipelineMode::Independent, 3, &script);
        let results = result.unwrap();
        assert_eq!(
            results[0].as_ref().err().and_then(Error::code),
            Some("22012")
        );
        assert_eq!(value(&results[1]), 2);
        assert_eq!(value(&results[2]), 3);
        assert!(!closed);
        assert_eq!(tags, b"BDESBDESBDES");
    }

    #[test]
    fn atomic_error_skips_the_rest() {
        let (result, closed, _) = run(
            PipelineMode::Atomic,
            3,
            &[answer(1), error("23505"), ready()],
        );
        let results = result.unwrap();
        assert_eq!(value(&results[0]), 1);
        assert_eq!(
            results[1].as_ref().err().and_then(Error::code),
            Some("23505")
        );
        let skipped = results[2].as_ref().unwrap_err();
        assert_eq!(skipped.kind(), ErrorKind::Skipped);
        assert!(
            skipped.to_string().contains("scripted failure"),
            "{skipped}"
        );
        assert!(!closed);
    }

    #[test]
    fn atomic_commit_failure_fails_the_whole_batch() {
        let (result, closed, _) = run(
            PipelineMode::Atomic,
            2,
            &[answer(1), answer(2), error("40001"), ready()],
        );
        let e = result.unwrap_err();
        assert_eq!(e.code(), Some("40001"));
        assert!(e.to_string().contains("implicit commit"), "{e}");
        assert!(!closed);
    }

    #[test]
    fn a_result_for_a_statement_never_sent_breaks_the_connection() {
        // A fourth answer to a batch of three must not be taken as anyone's result.
        let script = [answer(1), answer(2), answer(3), answer(4), ready()];
        let (result, closed, _) = run(PipelineMode::Atomic, 3, &script);
        assert_eq!(result.unwrap_err().kind(), ErrorKind::Protocol);
        assert!(closed);
    }

    #[test]
    fn ready_before_a_statement_finished_breaks_the_connection() {
        // ReadyForQuery where statement 0's CommandComplete belongs: its rows must not run into statement 1.
        let early = [msg(b'2', b""), int4_description(), int4_row(1), ready()].concat();
        let script = [early, answer(2), ready()];
        let (result, closed, _) = run(PipelineMode::Independent, 2, &script);
        assert_eq!(result.unwrap_err().kind(), ErrorKind::Protocol);
        assert!(closed);
    }

    #[test]
    fn rows_after_an_atomic_error_break_the_connection() {
        let script = [error("22012"), int4_row(9), complete("SELECT 1"), ready()];
        let (result, closed, _) = run(PipelineMode::Atomic, 2, &script);
        assert_eq!(result.unwrap_err().kind(), ErrorKind::Protocol);
        assert!(closed);
    }
}
