//! Pipelines: many statements sent in one write, their results read back in order.
//!
//! Every statement goes through the extended protocol with binary parameters. SQL text is prepared first: the
//! texts the statement cache does not hold (every text, when SQL text does not go through the cache) are
//! prepared together, a Parse/Describe/Sync per distinct text, all sent in one write and read back in one round
//! trip. Then the whole batch is queued as one request whose Sync count the protocol core knows, so the core
//! ends it exactly, and the results are read in order: each statement's rows end with its CommandComplete (or
//! ErrorResponse), and with a Sync per statement each also ends with a ReadyForQuery. A result can never be
//! matched to the wrong statement: anything that does not fit that sequence is a protocol error, which closes
//! the connection.
//!
//! A cached statement the server refuses as stale (its result type changed, or `DISCARD ALL` removed it) is
//! prepared again and run once more when that cannot run any statement twice (see [`Client::run_pipeline`]).
//!
//! A pipeline future dropped after its request was queued leaves the request registered in the core: the
//! statements still run on the server, and the connection's next call reads and discards their results.
//! Dropped while its texts are being prepared, it leaves nothing in the cache, and the names it gave them are
//! closed on the server by the next call.

use std::collections::HashMap;

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tracing::Instrument as _;

use bytes::BytesMut;

use crate::client::prepare::read_statement_description;
use crate::client::stream::Bindable;
use crate::client::{StatementRef, encode_error, rows_affected, unexpected};
use crate::proto::{Backend, Flow};
use crate::{Client, Error, Param, Row, Statement, ToStatement, TransactionStatus};

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

/// What the server did with one sent statement, as far as running it again depends on it.
#[derive(Debug, Clone, Copy, Default)]
struct Fate {
    /// Its BindComplete arrived: the statement started to run. An error before it came from Parse or Bind.
    bound: bool,
    /// It completed as a command that cannot have ended the transaction it ran in (see [`plain_command`]).
    plain: bool,
    /// With a Sync per statement: the ReadyForQuery after it reported no transaction block.
    idle_after: bool,
}

/// One run over the statements of a pipeline, or over those that run once more.
struct Pass {
    /// Each statement's result; `None` for one that did not run because an atomic pipeline failed.
    results: Vec<Option<Result<PipelineOutput, Error>>>,
    /// The statement whose failure stopped an atomic pipeline.
    first_failure: Option<usize>,
    /// The statements to run once more after a stale cached statement (positions in the pass).
    retry: Option<Vec<usize>>,
}

impl Client {
    /// Runs a [`Pipeline`]: every statement is sent in one write and the results come back in order, one per
    /// statement.
    ///
    /// SQL text missing from the statement cache is prepared first, every distinct text in one more round
    /// trip; the statements then stay cached like those of [`query`](Self::query). In
    /// [`QueryMode::Unnamed`](crate::config::QueryMode) and `Simple` every text is described in that round trip
    /// and runs through the unnamed statement.
    ///
    /// The outer `Err` means the batch as a whole could not run or be read (the connection broke), or, in
    /// [`PipelineMode::Atomic`] outside a transaction block, that the implicit commit at its end failed
    /// (a deferred constraint, a serialization failure), so nothing was committed. Otherwise each statement
    /// has its own result; in atomic mode the failing statement reports its error and every other statement
    /// that did not run reports [`ErrorKind::Skipped`](crate::ErrorKind::Skipped).
    ///
    /// A cached statement the server refuses as stale ("cached plan must not change result type", or gone
    /// after `DISCARD ALL`) fails at Bind, before it runs. Its cache entry is dropped (after `DISCARD ALL`, the
    /// whole cache), and outside a transaction block the pipeline goes on once more, prepared afresh, if that
    /// runs no statement twice:
    /// - atomic: the whole pipeline runs again when the statements before the stale one were queries or plain
    ///   DML (`SELECT`, `INSERT`, `UPDATE`, `DELETE`, `MERGE`), which the failure rolled back with everything
    ///   else. Only what they did outside the transaction stays done, as with any retried transaction:
    ///   sequence values they took, session-level advisory locks, side effects of functions outside the
    ///   database;
    /// - independent: the stale statement and the ones after it run again when none of those had started
    ///   (each failed at Bind too, as after `DISCARD ALL`), so the order holds. Statements before it ran and
    ///   keep their results.
    ///
    /// Otherwise the stale statement reports its error, and the next use prepares it afresh.
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
        let items: Vec<&Item<'_>> = pipeline.items.iter().collect();
        let mut pass = self.run_pass(&items, atomic, true).await?;
        if let Some(again) = pass.retry.take() {
            tracing::debug!(
                statements = again.len(),
                "cached statements went stale; preparing them again and running the statements that did not \
                 run once more"
            );
            let subset: Vec<&Item<'_>> = again
                .iter()
                .filter_map(|&i| items.get(i).copied())
                .collect();
            match self.run_pass(&subset, atomic, false).await {
                // In atomic mode the rerun is the whole pipeline.
                Ok(rerun) if atomic => pass = rerun,
                Ok(rerun) => {
                    for (&i, result) in again.iter().zip(rerun.results) {
                        pass.results[i] = result;
                    }
                }
                Err(e) if atomic => return Err(e),
                // The statements before the rerun ones ran and keep their results.
                Err(e) => {
                    let cause = e.to_string();
                    let mut error = Some(e);
                    for &i in &again {
                        pass.results[i] = Some(Err(error
                            .take()
                            .unwrap_or_else(|| Error::skipped(format!("not run: {cause}")))));
                    }
                }
            }
        }

        // Statements that did not run name the failure that stopped them, so the first error of the results
        // (what `collect::<Result<Vec<_>, _>>()` returns) always tells the cause.
        let Pass {
            results,
            first_failure,
            ..
        } = pass;
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

    /// Prepares and runs `items` once. With `may_retry`, says which of them may run once more because a stale
    /// cached statement failed.
    async fn run_pass(
        &mut self,
        items: &[&Item<'_>],
        atomic: bool,
        may_retry: bool,
    ) -> Result<Pass, Error> {
        let count = items.len();
        let mut results: Vec<Option<Result<PipelineOutput, Error>>> =
            (0..count).map(|_| None).collect();
        let statements = self.prepare_pipeline(items, atomic).await?;

        // Encode every statement on its own, so a parameter that does not encode fails that statement alone.
        let mut sent = Vec::with_capacity(count);
        let mut messages = BytesMut::new();
        let mut first_failure = None;
        for (index, (item, statement)) in items.iter().zip(statements).enumerate() {
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

        let mut retry = None;
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
            let mut fates = vec![Fate::default(); sent.len()];
            let read = self
                .read_pipeline(id, &sent, atomic, &mut results, &mut fates)
                .await;
            if let Some(failed) = self.connection_mut().check(read)? {
                first_failure.get_or_insert(failed);
            }
            retry = self.forget_stale(items, &sent, &fates, &results, atomic);
        }
        Ok(Pass {
            results,
            first_failure,
            retry: retry.filter(|_| may_retry),
        })
    }

    /// Resolves each statement of the pipeline to a prepared one: statements given prepared, then the
    /// statement cache, then one round trip that prepares every distinct text still missing (see
    /// [`prepare_texts`](Self::prepare_texts)). A statement that fails to prepare gets the error; in atomic
    /// mode, as nothing will run, the failures after the first are reported as skipped.
    async fn prepare_pipeline(
        &mut self,
        items: &[&Item<'_>],
        atomic: bool,
    ) -> Result<Vec<Result<Statement, Error>>, Error> {
        /// Where an item's statement comes from: known already, or the text at this position of the batch.
        enum Found {
            Known(Result<Statement, Error>),
            Text(usize),
        }
        let mut texts: Vec<&str> = Vec::new();
        let mut positions: HashMap<&str, usize> = HashMap::new();
        let mut found = Vec::with_capacity(items.len());
        for item in items {
            found.push(match item.statement {
                Source::Prepared(statement) => Found::Known(self.statement(statement).await),
                Source::Sql(sql) => match positions.get(sql) {
                    Some(&position) => Found::Text(position),
                    None => match self.cached_text(sql) {
                        Some(statement) => Found::Known(Ok(statement)),
                        None => {
                            positions.insert(sql, texts.len());
                            texts.push(sql);
                            Found::Text(texts.len() - 1)
                        }
                    },
                },
            });
        }
        let prepared = self.prepare_texts(&texts).await?;
        let mut failed = false;
        Ok(found
            .into_iter()
            .map(|found| {
                let statement = match found {
                    Found::Known(result) => result,
                    Found::Text(position) => prepared.get(position).map_or_else(
                        || {
                            Err(Error::protocol(
                                "BUG: a pipeline text without its preparation",
                            ))
                        },
                        clone_result,
                    ),
                };
                let statement = match statement {
                    Err(_) if failed && atomic => {
                        Err(Error::skipped("not prepared: an earlier statement failed"))
                    }
                    statement => statement,
                };
                failed |= statement.is_err();
                statement
            })
            .collect())
    }

    /// Prepares `texts` in one round trip: a Parse/Describe/Sync request per text, all queued before the first
    /// answer is read, so they leave in one write. With a Sync each, a text that fails (a syntax error) does
    /// not stop the others; in atomic mode its failure stops the pipeline before anything runs anyway.
    ///
    /// Where SQL text goes through the statement cache, each text becomes a named statement and enters the
    /// cache; otherwise it is described through the unnamed statement, which the pipeline parses again in
    /// front of each Bind.
    async fn prepare_texts(
        &mut self,
        texts: &[&str],
    ) -> Result<Vec<Result<Statement, Error>>, Error> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let named = self.caches_text();
        self.prepare_to_send().await?;
        let mut queued = Vec::with_capacity(texts.len());
        for sql in texts {
            // Cancel-safety: each name is armed with its guard before its Parse is queued, and the guard is
            // disarmed only when the statement enters the cache, after every answer was read. A future dropped
            // at any await below, or a text that fails, queues the Close of its names with the next request
            // (closing a statement that was never created is not an error), so the cache holds only names the
            // server confirmed, and the server keeps none the client forgot.
            let (name, guard) = if named {
                let (name, guard) = self.new_statement_name();
                (name, Some(guard))
            } else {
                (String::new(), None)
            };
            let id = self
                .connection_mut()
                .protocol
                .queue_request(Flow::Extended(1), None, |buf| {
                    frontend::parse(&name, sql, std::iter::empty(), buf).map_err(encode_error)?;
                    frontend::describe(b'S', &name, buf).map_err(encode_error)?;
                    frontend::sync(buf);
                    Ok(())
                });
            queued.push((name, guard, id));
        }
        // The first read sends every request queued above, in one write.
        let mut answers = Vec::with_capacity(queued.len());
        for (name, guard, id) in queued {
            let answer = match id {
                Ok(id) => {
                    let read = read_statement_description(self.request(id)).await;
                    self.check(read)
                }
                Err(e) => Err(e),
            };
            match answer {
                Err(e) if e.is_connection_broken() => return Err(e),
                answer => answers.push((name, guard, answer)),
            }
        }
        // Types are resolved only now: a type the catalog must describe takes a query of its own, and the
        // answers still unread above would be discarded by it.
        let mut prepared = Vec::with_capacity(answers.len());
        for ((name, guard, answer), sql) in answers.into_iter().zip(texts) {
            let statement = match answer {
                Ok((param_oids, description)) => {
                    self.described_statement(&name, param_oids, description)
                        .await
                }
                Err(e) => Err(e),
            };
            match statement {
                Err(e) if e.is_connection_broken() => return Err(e),
                Ok(statement) => {
                    if let Some(guard) = guard {
                        // The handle owns the name now: its last drop closes the statement (when the cache
                        // evicts it and the pipeline is done with it).
                        guard.prepared();
                        let mut state = self.lock();
                        if let Some(session) = &mut state.session {
                            session.remember_statement(&name, sql, &statement);
                        }
                        state.cache.insert(sql.to_string(), statement.clone());
                    }
                    prepared.push(Ok(statement));
                }
                Err(e) => prepared.push(Err(e)),
            }
        }
        Ok(prepared)
    }

    /// Drops the cached statements the server refused as stale from the cache (after `DISCARD ALL`, every
    /// one), and says which statements may run once more without running anything twice (see
    /// [`run_pipeline`](Self::run_pipeline)): in atomic mode all of them, in independent mode the stale one and
    /// those after it.
    fn forget_stale(
        &mut self,
        items: &[&Item<'_>],
        sent: &[Sent],
        fates: &[Fate],
        results: &[Option<Result<PipelineOutput, Error>>],
        atomic: bool,
    ) -> Option<Vec<usize>> {
        let mut first = None;
        for (position, (sent, fate)) in sent.iter().zip(fates).enumerate() {
            let (Some(item), Some(Some(Err(e)))) = (items.get(sent.index), results.get(sent.index))
            else {
                continue;
            };
            // Only SQL text has its statement from the cache. An error after BindComplete came from running
            // the statement (an `EXECUTE` of another one, say), not from its own plan or name.
            if !matches!(item.statement, Source::Sql(_))
                || fate.bound
                || sent.statement.name().is_empty()
                || !self.forget_if_stale(&sent.statement, e)
            {
                continue;
            }
            first.get_or_insert(position);
        }
        let first = first?;
        if atomic {
            // The failure rolled back the statements before it, unless one of them ended the transaction (or
            // opened a block, which the failure left open and failed).
            let rolled_back = self.transaction_status() == TransactionStatus::Idle
                && fates[..first].iter().all(|fate| fate.plain);
            rolled_back.then(|| (0..items.len()).collect())
        } else {
            // Outside a transaction block, and nothing from the stale statement on started: running those
            // statements again, in order, is what running them the first time would have been.
            let none_started =
                fates[first].idle_after && fates[first..].iter().all(|fate| !fate.bound);
            none_started.then(|| sent[first..].iter().map(|sent| sent.index).collect())
        }
    }

    /// Reads the results of a queued pipeline into `results` and what happened to each sent statement into
    /// `fates`; returns the index of the statement that failed in atomic mode, if one did.
    async fn read_pipeline(
        &mut self,
        id: crate::proto::RequestId,
        sent: &[Sent],
        atomic: bool,
        results: &mut [Option<Result<PipelineOutput, Error>>],
        fates: &mut [Fate],
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
                if atomic {
                    break;
                }
                if let Some(fate) = fates.get_mut(readies - 1) {
                    fate.idle_after = self.transaction_status() == TransactionStatus::Idle;
                }
                if readies == sent.len() {
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
                    let tag = body.tag().map_err(Error::malformed)?;
                    if let Some(fate) = fates.get_mut(current) {
                        fate.plain = plain_command(tag);
                    }
                    results[statement.index] = Some(Ok(PipelineOutput {
                        rows: std::mem::take(&mut rows),
                        rows_affected: rows_affected(tag),
                    }));
                    current += 1;
                }
                Backend::Message(Message::EmptyQueryResponse) => {
                    if let Some(fate) = fates.get_mut(current) {
                        fate.plain = true;
                    }
                    results[statement.index] = Some(Ok(PipelineOutput {
                        rows: Vec::new(),
                        rows_affected: 0,
                    }));
                    current += 1;
                }
                Backend::Message(Message::BindComplete) => {
                    if let Some(fate) = fates.get_mut(current) {
                        fate.bound = true;
                    }
                }
                Backend::Message(
                    Message::ParseComplete
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

/// Whether a statement that completed with this command tag changed nothing outside the transaction it ran in,
/// so a rollback undid it: a query or plain DML. Not COMMIT, a procedure (which may commit), nor a command that
/// runs outside any transaction (VACUUM).
fn plain_command(tag: &str) -> bool {
    matches!(
        tag.split(' ').next(),
        Some("SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE")
    )
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
    use std::collections::VecDeque;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use super::*;
    use crate::config::QueryMode;
    use crate::{Config, ErrorKind, Transport};

    /// What the client did on the scripted transport, in order.
    #[derive(Debug, Clone, PartialEq)]
    enum Io {
        /// The bytes of one write.
        Write(Vec<u8>),
        /// A read that returned this many bytes.
        Read(usize),
    }

    /// Plays one turn of backend bytes per write of the client, like a server answering each request it
    /// gets, and logs the writes and reads. Out of turns, it reports the end of the stream, so a client waiting
    /// for more fails instead of hanging. With `latency`, the first read after each write is pending once,
    /// like a server that takes its time: a future polled once stops there.
    struct Scripted {
        turns: Arc<Mutex<VecDeque<Vec<u8>>>>,
        readable: Vec<u8>,
        log: Arc<Mutex<Vec<Io>>>,
        latency: bool,
        waited: bool,
    }

    impl Transport for Scripted {
        fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            if self.latency && !self.waited {
                self.waited = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.readable.len());
            buf[..n].copy_from_slice(&self.readable[..n]);
            self.readable.drain(..n);
            if n > 0 {
                self.log.lock().unwrap().push(Io::Read(n));
            }
            Poll::Ready(Ok(n))
        }
        fn poll_write(&mut self, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.log.lock().unwrap().push(Io::Write(buf.to_vec()));
            if let Some(turn) = self.turns.lock().unwrap().pop_front() {
                self.readable.extend_from_slice(&turn);
            }
            self.waited = false;
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The test's side of a scripted transport: the turns still to play, and the log.
    struct Server {
        turns: Arc<Mutex<VecDeque<Vec<u8>>>>,
        log: Arc<Mutex<Vec<Io>>>,
    }

    impl Server {
        /// Adds the answer to a later write.
        fn then(&self, turn: Vec<u8>) -> &Server {
            self.turns.lock().unwrap().push_back(turn);
            self
        }

        /// Everything logged after the first `from` entries.
        fn log_from(&self, from: usize) -> Vec<Io> {
            self.log.lock().unwrap()[from..].to_vec()
        }

        fn log_len(&self) -> usize {
            self.log.lock().unwrap().len()
        }

        /// The writes logged after the first `from` entries.
        fn writes_from(&self, from: usize) -> Vec<Vec<u8>> {
            self.log_from(from)
                .into_iter()
                .filter_map(|io| match io {
                    Io::Write(bytes) => Some(bytes),
                    Io::Read(_) => None,
                })
                .collect()
        }
    }

    /// A client connected (trust authentication, default config: the statement cache on) to a scripted server.
    fn connect(latency: bool) -> (Client, Server) {
        connect_in(latency, QueryMode::Cached)
    }

    fn connect_in(latency: bool, mode: QueryMode) -> (Client, Server) {
        let server = Server {
            turns: Arc::new(Mutex::new(VecDeque::new())),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        server.then([msg(b'R', &0u32.to_be_bytes()), ready()].concat());
        let transport = Scripted {
            turns: server.turns.clone(),
            readable: Vec::new(),
            log: server.log.clone(),
            latency,
            waited: false,
        };
        let mut config = Config::parse("user=u dbname=d sslmode=disable").unwrap();
        config.query_mode(mode);
        let client =
            block_on(Client::connect_with_transport(Box::new(transport), &config)).unwrap();
        (client, server)
    }

    /// Polls a future to its end; the scripted transport's waits end at once, so a no-op waker does.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    /// The frontend messages in `bytes`: tag and body.
    fn frontend(bytes: &[u8]) -> Vec<(u8, &[u8])> {
        let mut messages = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            messages.push((rest[0], &rest[5..1 + len]));
            rest = &rest[1 + len..];
        }
        messages
    }

    fn tags(bytes: &[u8]) -> Vec<u8> {
        frontend(bytes).into_iter().map(|(tag, _)| tag).collect()
    }

    /// The statement each Parse, Bind, Describe or Close of a statement in `bytes` names, with its tag.
    fn statements(bytes: &[u8]) -> Vec<(u8, String)> {
        let cstrs = |body: &[u8]| -> Vec<String> {
            body.split(|b| *b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        frontend(bytes)
            .into_iter()
            .filter_map(|(tag, body)| match tag {
                b'P' => Some((tag, cstrs(body)[0].clone())),
                b'B' => Some((tag, cstrs(body)[1].clone())),
                b'D' | b'C' if body[0] == b'S' => Some((tag, cstrs(&body[1..])[0].clone())),
                _ => None,
            })
            .collect()
    }

    /// The SQL text of each Parse in `bytes`.
    fn parsed_sql(bytes: &[u8]) -> Vec<String> {
        frontend(bytes)
            .into_iter()
            .filter(|(tag, _)| *tag == b'P')
            .map(|(_, body)| {
                let text = body.split(|b| *b == 0).nth(1).unwrap();
                String::from_utf8_lossy(text).into_owned()
            })
            .collect()
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
        let (mut client, server) = connect(false);
        let start = server.log_len();
        server.then(prepare).then(script.concat());
        let values: Vec<i32> = (1..=statements).collect();
        let mut pipeline = Pipeline::new(mode);
        for v in &values {
            pipeline.push("SELECT $1::int4", &[v]);
        }
        let result = block_on(client.run_pipeline(&pipeline));
        let tags = tags(&server.writes_from(start).concat());
        assert_eq!(&tags[..3], b"PDS", "the prepare");
        (result, client.is_closed(), tags[3..].to_vec())
    }

    fn value(result: &Result<PipelineOutput, Error>) -> i32 {
        result.as_ref().unwrap().rows()[0].get(0)
    }

    fn code(result: &Result<PipelineOutput, Error>) -> Option<&str> {
        result.as_ref().err().and_then(Error::code)
    }

    fn ready_in(status: u8) -> Vec<u8> {
        msg(b'Z', &[status])
    }

    fn error_saying(code: &str, message: &str) -> Vec<u8> {
        msg(
            b'E',
            format!("SERROR\0VERROR\0C{code}\0M{message}\0\0").as_bytes(),
        )
    }

    /// The answer to one Parse/Describe/Sync of a text without parameters returning one int4 column.
    fn described() -> Vec<u8> {
        [
            msg(b'1', b""),
            msg(b't', &0u16.to_be_bytes()),
            int4_description(),
            ready(),
        ]
        .concat()
    }

    /// The answer to one request closing `n` statements.
    fn closed(n: usize) -> Vec<u8> {
        [vec![msg(b'3', b""); n].concat(), ready()].concat()
    }

    /// The names of the statements the Parse messages in `bytes` create.
    fn parsed_names(bytes: &[u8]) -> Vec<String> {
        statements(bytes)
            .into_iter()
            .filter(|(tag, _)| *tag == b'P')
            .map(|(_, name)| name)
            .collect()
    }

    /// Runs `pipeline`, whose `texts` distinct texts the client prepares in its first round trip; `answer`
    /// answers the pipeline itself.
    fn run_fresh(
        client: &mut Client,
        server: &Server,
        pipeline: &Pipeline<'_>,
        texts: usize,
        answer: Vec<u8>,
    ) -> Vec<Result<PipelineOutput, Error>> {
        server.then(vec![described(); texts].concat()).then(answer);
        block_on(client.run_pipeline(pipeline)).unwrap()
    }

    #[test]
    fn missing_texts_are_prepared_in_one_write_before_any_read() {
        const N: i32 = 20;
        let (mut client, server) = connect(true);
        let texts: Vec<String> = (1..=N).map(|k| format!("SELECT {k}::int4")).collect();
        let mut pipeline = Pipeline::new(PipelineMode::Atomic);
        for text in &texts {
            pipeline.push(text.as_str(), &[]);
        }
        // The first text again: prepared once, bound twice.
        pipeline.push(texts[0].as_str(), &[]);
        let start = server.log_len();
        let answers: Vec<Vec<u8>> = (1..=N).chain([1]).map(answer).collect();
        let results = run_fresh(
            &mut client,
            &server,
            &pipeline,
            texts.len(),
            [answers.concat(), ready()].concat(),
        );
        let values: Vec<i32> = results.iter().map(value).collect();
        assert_eq!(values, (1..=N).chain([1]).collect::<Vec<_>>());

        // Two writes, the first before any read: every preparation, then the pipeline. One round trip each.
        let log = server.log_from(start);
        let writes: Vec<usize> = (0..log.len())
            .filter(|&i| matches!(log[i], Io::Write(_)))
            .collect();
        assert_eq!(writes.len(), 2, "{log:?}");
        assert_eq!(
            writes[0], 0,
            "a read before the preparations went out: {log:?}"
        );
        let writes = server.writes_from(start);
        assert_eq!(tags(&writes[0]), b"PDS".repeat(texts.len()));
        assert_eq!(parsed_sql(&writes[0]), texts);
        let names = parsed_names(&writes[0]);
        let described: Vec<(u8, String)> = statements(&writes[0])
            .into_iter()
            .filter(|(tag, _)| *tag == b'D')
            .collect();
        let expected: Vec<(u8, String)> = names.iter().map(|n| (b'D', n.clone())).collect();
        assert_eq!(described, expected, "each Parse is described by its name");
        let mut distinct = names.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), texts.len());
        assert!(names.iter().all(|n| n.starts_with("wpc")), "{names:?}");

        assert_eq!(
            tags(&writes[1]),
            [b"BDE".repeat(texts.len() + 1), b"S".to_vec()].concat()
        );
        let bound: Vec<String> = statements(&writes[1]).into_iter().map(|(_, n)| n).collect();
        let expected: Vec<String> = names.iter().chain(&names[..1]).cloned().collect();
        assert_eq!(bound, expected);
        assert_eq!(client.cached_statements(), texts.len());
    }

    #[test]
    fn a_text_that_fails_to_prepare_fails_alone() {
        let (mut client, server) = connect(false);
        let mut pipeline = Pipeline::new(PipelineMode::Independent);
        pipeline
            .push("SELECT 1::int4", &[])
            .push("SELEC 2", &[])
            .push("SELECT 3::int4", &[])
            .push("SELEC 2", &[]);
        server
            .then([described(), error("42601"), ready(), described()].concat())
            .then([closed(1), answer(1), ready(), answer(3), ready()].concat());
        let start = server.log_len();
        let results = block_on(client.run_pipeline(&pipeline)).unwrap();
        assert_eq!(value(&results[0]), 1);
        assert_eq!(code(&results[1]), Some("42601"));
        assert_eq!(value(&results[2]), 3);
        assert_eq!(code(&results[3]), Some("42601"));
        let writes = server.writes_from(start);
        assert_eq!(writes.len(), 2);
        assert_eq!(tags(&writes[0]), b"PDSPDSPDS");
        let names = parsed_names(&writes[0]);
        // The name of the text that failed is closed (in case its Parse had gone through) in front of the
        // pipeline, which binds the two others.
        assert_eq!(tags(&writes[1]), b"CSBDESBDES");
        assert_eq!(
            statements(&writes[1]),
            [
                (b'C', names[1].clone()),
                (b'B', names[0].clone()),
                (b'B', names[2].clone())
            ]
        );
        assert_eq!(client.cached_statements(), 2);
        assert!(!client.is_closed());
    }

    #[test]
    fn a_dropped_preparation_caches_nothing_and_closes_its_names() {
        let (mut client, server) = connect(true);
        let mut pipeline = Pipeline::new(PipelineMode::Atomic);
        pipeline
            .push("SELECT 1::int4", &[])
            .push("SELECT 2::int4", &[]);
        server.then([described(), described()].concat());
        let start = server.log_len();
        {
            let mut future = std::pin::pin!(client.run_pipeline(&pipeline));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(future.as_mut().poll(&mut cx).is_pending());
        }
        let writes = server.writes_from(start);
        assert_eq!(writes.len(), 1, "the preparations went out");
        let mut names = parsed_names(&writes[0]);
        assert_eq!(names.len(), 2);
        assert_eq!(client.cached_statements(), 0);

        // The next call reads the abandoned answers, closes both names, then does its own work.
        server.then([closed(2), msg(b'I', b""), ready()].concat());
        let start = server.log_len();
        block_on(client.ping()).unwrap();
        let writes = server.writes_from(start);
        assert_eq!(writes.len(), 1);
        assert_eq!(tags(&writes[0]), b"CCSQ");
        let mut closed: Vec<String> = statements(&writes[0]).into_iter().map(|(_, n)| n).collect();
        closed.sort();
        names.sort();
        assert_eq!(closed, names);
        assert_eq!(client.cached_statements(), 0);
        assert!(!client.is_closed());
    }

    #[test]
    fn unnamed_mode_describes_every_text_in_one_round_trip() {
        let (mut client, server) = connect_in(false, QueryMode::Unnamed);
        let mut pipeline = Pipeline::new(PipelineMode::Atomic);
        pipeline
            .push("SELECT 1::int4", &[])
            .push("SELECT 2::int4", &[])
            .push("SELECT 1::int4", &[]);
        let start = server.log_len();
        let answers = [answer(1), answer(2), answer(1), ready()].concat();
        let results = run_fresh(&mut client, &server, &pipeline, 2, answers);
        assert_eq!(results.iter().map(value).collect::<Vec<_>>(), [1, 2, 1]);
        let writes = server.writes_from(start);
        assert_eq!(writes.len(), 2);
        assert_eq!(tags(&writes[0]), b"PDSPDS");
        assert_eq!(parsed_names(&writes[0]), ["", ""]);
        // The unnamed statement is parsed again in front of each Bind.
        assert_eq!(tags(&writes[1]), b"PBDEPBDEPBDES");
        assert_eq!(
            parsed_sql(&writes[1]),
            ["SELECT 1::int4", "SELECT 2::int4", "SELECT 1::int4"]
        );
        assert_eq!(client.cached_statements(), 0);
    }

    /// Caches `texts` (each returning one int4) with a pipeline, and returns their statement names.
    fn cache(client: &mut Client, server: &Server, texts: &[&str]) -> Vec<String> {
        let mut pipeline = Pipeline::new(PipelineMode::Independent);
        for text in texts {
            pipeline.push(*text, &[]);
        }
        let start = server.log_len();
        let answers: Vec<u8> = (1..=texts.len())
            .flat_map(|v| [answer(i32::try_from(v).unwrap()), ready()].concat())
            .collect();
        let results = run_fresh(client, server, &pipeline, texts.len(), answers);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        parsed_names(&server.writes_from(start)[0])
    }

    #[test]
    fn statements_gone_after_discard_all_run_again_in_independent_mode() {
        let (mut client, server) = connect(false);
        let old = cache(&mut client, &server, &["SELECT 1::int4"]);
        let mut pipeline = Pipeline::new(PipelineMode::Independent);
        pipeline
            .push("SELECT 1::int4", &[])
            .push("SELECT 1::int4", &[]);
        // DISCARD ALL on the server: both Binds fail, so neither statement ran.
        let gone = error_saying(
            "26000",
            &format!("prepared statement \"{}\" does not exist", old[0]),
        );
        server
            .then([gone.clone(), ready(), gone, ready()].concat())
            .then([closed(1), described()].concat())
            .then([answer(1), ready(), answer(1), ready()].concat());
        let start = server.log_len();
        let results = block_on(client.run_pipeline(&pipeline)).unwrap();
        assert_eq!(results.iter().map(value).collect::<Vec<_>>(), [1, 1]);
        let writes = server.writes_from(start);
        assert_eq!(
            writes.len(),
            3,
            "the pipeline, the new preparation, the rerun"
        );
        assert_eq!(tags(&writes[1]), b"CSPDS");
        let new = parsed_names(&writes[1]);
        assert_ne!(new, old);
        assert_eq!(statements(&writes[1])[0], (b'C', old[0].clone()));
        assert_eq!(tags(&writes[2]), b"BDESBDES");
        assert_eq!(
            statements(&writes[2]),
            [(b'B', new[0].clone()), (b'B', new[0].clone())]
        );
        assert_eq!(client.cached_statements(), 1);
    }

    #[test]
    fn a_stale_plan_reruns_the_whole_atomic_pipeline() {
        let (mut client, server) = connect(false);
        cache(&mut client, &server, &["SELECT 2::int4"]);
        let mut pipeline = Pipeline::new(PipelineMode::Atomic);
        pipeline
            .push("SELECT 1::int4", &[])
            .push("SELECT 2::int4", &[]);
        let stale = error_saying("0A000", "cached plan must not change result type");
        server
            .then(described())
            // The new text ran; the cached one failed at Bind, which rolled the first back.
            .then([answer(1), stale, ready()].concat())
            .then([closed(1), described()].concat())
            .then([answer(1), answer(2), ready()].concat());
        let start = server.log_len();
        let results = block_on(client.run_pipeline(&pipeline)).unwrap();
        assert_eq!(results.iter().map(value).collect::<Vec<_>>(), [1, 2]);
        let writes = server.writes_from(start);
        assert_eq!(writes.len(), 4, "{writes:?}");
        assert_eq!(tags(&writes[1]), b"BDEBDES");
        assert_eq!(tags(&writes[2]), b"CSPDS");
        assert_eq!(parsed_sql(&writes[2]), ["SELECT 2::int4"]);
        assert_eq!(tags(&writes[3]), b"BDEBDES");
        assert_eq!(client.cached_statements(), 2);
    }

    #[test]
    fn stale_statements_do_not_run_again_where_something_could_run_twice() {
        let stale = || error_saying("0A000", "cached plan must not change result type");
        let completed_as = |v: i32, tag: &str| {
            [
                msg(b'2', b""),
                int4_description(),
                int4_row(v),
                complete(tag),
            ]
            .concat()
        };
        // Atomic: a COMMIT before the stale statement kept what came before it.
        let (mut client, server) = connect(false);
        cache(&mut client, &server, &["SELECT 1::int4", "SELECT 2::int4"]);
        let mut pipeline = Pipeline::new(PipelineMode::Atomic);
        pipeline
            .push("SELECT 1::int4", &[])
            .push("SELECT 2::int4", &[]);
        server.then([completed_as(1, "COMMIT"), stale(), ready()].concat());
        let start = server.log_len();
        let results = block_on(client.run_pipeline(&pipeline)).unwrap();
        assert_eq!(code(&results[1]), Some("0A000"));
        assert_eq!(server.writes_from(start).len(), 1);
        // The stale entry is gone: its next use prepares it afresh.
        assert_eq!(client.cached_statements(), 1);

        // Independent: a statement after the stale one ran.
        let (mut client, server) = connect(false);
        cache(&mut client, &server, &["SELECT 1::int4", "SELECT 2::int4"]);
        let mut pipeline = Pipeline::new(PipelineMode::Independent);
        pipeline
            .push("SELECT 1::int4", &[])
            .push("SELECT 2::int4", &[]);
        server.then([stale(), ready(), answer(2), ready()].concat());
        let start = server.log_len();
        let results = block_on(client.run_pipeline(&pipeline)).unwrap();
        assert_eq!(code(&results[0]), Some("0A000"));
        assert_eq!(value(&results[1]), 2);
        assert_eq!(server.writes_from(start).len(), 1);
        assert_eq!(client.cached_statements(), 1);

        // Inside a transaction block, which the failure failed.
        for mode in [PipelineMode::Atomic, PipelineMode::Independent] {
            let (mut client, server) = connect(false);
            cache(&mut client, &server, &["SELECT 1::int4"]);
            let mut pipeline = Pipeline::new(mode);
            pipeline.push("SELECT 1::int4", &[]);
            server.then([stale(), ready_in(b'E')].concat());
            let start = server.log_len();
            let results = block_on(client.run_pipeline(&pipeline)).unwrap();
            assert_eq!(code(&results[0]), Some("0A000"), "{mode:?}");
            assert_eq!(server.writes_from(start).len(), 1, "{mode:?}");
            assert_eq!(client.cached_statements(), 0);
        }
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
