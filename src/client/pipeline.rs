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

use bytes::BytesMut;

use crate::client::prepare::read_statement_description;
use crate::client::stream::Bindable;
use crate::client::telemetry::{self, Work};
use crate::client::{StatementRef, encode_error, rows_affected, unexpected};
use crate::proto::operation::Operation;
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

impl Item<'_> {
    /// The statement's operation, for telemetry.
    fn operation(&self) -> Operation {
        match self.statement {
            Source::Sql(sql) => Operation::of(sql),
            Source::Prepared(statement) => statement.operation().clone(),
        }
    }
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
        // Each statement's operation is read only when telemetry listens.
        let operations: Vec<Operation> = if telemetry::wanted() {
            pipeline.items.iter().map(|item| item.operation()).collect()
        } else {
            Vec::new()
        };
        let traced = self.telemetry("pipeline", Work::Batch(&operations));
        traced.run(self.run_pipeline_in_span(pipeline)).await
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
                    self.described_statement(&name, sql, param_oids, description)
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
#[path = "pipeline_tests.rs"]
pub(super) mod tests;
