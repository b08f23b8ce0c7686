//! Queries that return their rows whole: `query`, `query_one`, `query_opt`, `execute` and the typed variants.
//!
//! Shared requests (`&self`): each Bind/Execute/Sync is queued in one step with its slot, so any number of
//! these futures run pipelined on the client's connection.

use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_types::Type;

use crate::client::prepare::{FieldInfo, read_description};
use crate::client::telemetry::Work;
use crate::client::{
    Param, Request, StatementRef, ToStatement, encode_error, rows_affected, unexpected, work_of,
    write_bind_portal,
};
use crate::config::QueryMode;
use crate::proto::row::Row;
use crate::proto::statement::{Column, Statement};
use crate::proto::{Backend, Flow, RawRow};
use crate::{Client, Error};

/// Result rows of one Execute, before their columns are resolved.
pub(crate) struct Collected {
    pub(crate) rows: Vec<RawRow>,
    pub(crate) description: Option<Vec<FieldInfo>>,
    pub(crate) affected: u64,
}

impl Collected {
    pub(crate) fn new() -> Collected {
        Collected {
            rows: Vec::new(),
            description: None,
            affected: 0,
        }
    }

    fn into_rows(self, columns: Arc<[Column]>) -> Result<Vec<Row>, Error> {
        self.rows
            .into_iter()
            .map(|raw| Row::new(columns.clone(), raw))
            .collect()
    }
}

impl Client {
    /// Runs a statement and returns its rows.
    ///
    /// `statement` is SQL text (prepared on the fly) or a [`Statement`]. Parameters are checked against the
    /// statement's types before anything is sent.
    pub async fn query<T>(&self, statement: &T, params: &[Param<'_>]) -> Result<Vec<Row>, Error>
    where
        T: ToStatement + ?Sized,
    {
        self.telemetry("query", work_of(statement))
            .run(async {
                let (collected, columns) = self.run(statement, params).await?;
                collected.into_rows(columns)
            })
            .await
    }

    /// Runs a statement that must return exactly one row.
    pub async fn query_one<T>(&self, statement: &T, params: &[Param<'_>]) -> Result<Row, Error>
    where
        T: ToStatement + ?Sized,
    {
        let mut rows = self.query(statement, params).await?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            0 => Err(Error::row_count(
                "query returned no rows, expected exactly one",
            )),
            n => Err(Error::row_count(&format!(
                "query returned {n} rows, expected exactly one"
            ))),
        }
    }

    /// Runs a statement that returns at most one row.
    pub async fn query_opt<T>(
        &self,
        statement: &T,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, Error>
    where
        T: ToStatement + ?Sized,
    {
        let mut rows = self.query(statement, params).await?;
        match rows.len() {
            0 => Ok(None),
            1 => Ok(Some(rows.remove(0))),
            n => Err(Error::row_count(&format!(
                "query returned {n} rows, expected at most one"
            ))),
        }
    }

    /// Runs a statement and returns the number of rows it affected (or returned).
    pub async fn execute<T>(&self, statement: &T, params: &[Param<'_>]) -> Result<u64, Error>
    where
        T: ToStatement + ?Sized,
    {
        let run = async { Ok(self.run(statement, params).await?.0.affected) };
        self.telemetry("execute", work_of(statement)).run(run).await
    }

    /// Runs SQL with parameters of explicitly given types in one round trip, through the unnamed statement
    /// (nothing is left prepared on the server; works behind transaction-pooling PgBouncer).
    pub async fn query_typed(
        &self,
        sql: &str,
        params: &[(Param<'_>, Type)],
    ) -> Result<Vec<Row>, Error> {
        self.telemetry("query_typed", Work::Sql(sql))
            .run(async {
                let mut collected = self.run_typed(sql, params).await?;
                let description = collected.description.take().unwrap_or_default();
                let columns = self.resolve_columns(description).await?;
                collected.into_rows(columns.into())
            })
            .await
    }

    /// Like [`query_typed`](Self::query_typed), returning the number of rows affected.
    pub async fn execute_typed(
        &self,
        sql: &str,
        params: &[(Param<'_>, Type)],
    ) -> Result<u64, Error> {
        let run = async { Ok(self.run_typed(sql, params).await?.affected) };
        self.telemetry("execute_typed", Work::Sql(sql))
            .run(run)
            .await
    }

    /// Runs a statement, SQL text as the query mode says: its results and their columns.
    async fn run<T>(
        &self,
        statement: &T,
        params: &[Param<'_>],
    ) -> Result<(Collected, Arc<[Column]>), Error>
    where
        T: ToStatement + ?Sized,
    {
        match (statement.to_statement(), self.query_mode()) {
            (StatementRef::Sql(sql), QueryMode::Cached) if self.caches_text() => {
                self.run_cached(sql, params).await
            }
            (StatementRef::Sql(sql), QueryMode::Cached | QueryMode::Unnamed) => {
                self.run_unnamed(sql, params).await
            }
            (StatementRef::Sql(sql), _) => self.run_simple(sql, params).await,
            (StatementRef::Prepared(_), _) => {
                let statement = self.statement(statement).await?;
                let collected = self.execute_statement(&statement, params).await?;
                Ok((collected, statement.columns_arc()))
            }
        }
    }

    /// Runs SQL text through its cached statement. When the server says the cached plan no longer fits (the
    /// schema changed its result type) or the statement is gone (DISCARD ALL, DEALLOCATE), the entry is dropped
    /// and, outside a transaction block, the statement is prepared again and run once more: inside one the
    /// block has already failed, so the error is returned and the next use prepares afresh.
    async fn run_cached(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<(Collected, Arc<[Column]>), Error> {
        let statement = self.cached_statement(sql).await?;
        match self.execute_statement(&statement, params).await {
            Ok(collected) => Ok((collected, statement.columns_arc())),
            Err(e) => {
                if !self.forget_if_stale(&statement, &e) {
                    return Err(e);
                }
                drop(statement);
                if !self.may_retry_stale() {
                    return Err(e);
                }
                tracing::debug!(error = %e, "cached statement went stale; preparing it again");
                let statement = self.cached_statement(sql).await?;
                let collected = self.execute_statement(&statement, params).await?;
                Ok((collected, statement.columns_arc()))
            }
        }
    }

    /// Runs SQL text through the unnamed statement with every round trip standing alone, so it is safe behind
    /// transaction-pooling PgBouncer and between other requests on a shared client: one round trip when each
    /// parameter's type follows from its Rust value, else a Describe round trip first to learn them from the
    /// server (the statement is parsed again with its Bind, whatever ran in between).
    async fn run_unnamed(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<(Collected, Arc<[Column]>), Error> {
        let types = match crate::client::param_types::infer_all(params) {
            Some(types) => types,
            None => {
                let described = self.prepare_named("", sql, &[]).await?;
                described.params().to_vec()
            }
        };
        if types.len() != params.len() {
            return Err(Error::parameters(types.len(), params.len()));
        }
        let typed: Vec<(Param<'_>, Type)> = params.iter().copied().zip(types).collect();
        let mut collected = self.run_typed(sql, &typed).await?;
        let description = collected.description.take().unwrap_or_default();
        let columns = self.resolve_columns(description).await?;
        Ok((collected, columns.into()))
    }

    async fn execute_statement(
        &self,
        statement: &Statement,
        params: &[Param<'_>],
    ) -> Result<Collected, Error> {
        let types = statement.params();
        if types.len() != params.len() {
            return Err(Error::parameters(types.len(), params.len()));
        }
        let columns = statement.columns().len();
        self.run_request(Some(columns), |buf| {
            write_bind_portal(buf, "", statement.name(), types, params)?;
            frontend::execute("", 0, buf).map_err(encode_error)?;
            frontend::sync(buf);
            Ok(())
        })
        .await
    }

    /// Queues one Extended(1) request that `write` encodes and reads its results; once more if PostgreSQL's
    /// cancel of the timed-out request ahead of it stopped it too (see `TimeLimits::hit_by_stray_cancel`),
    /// outside a transaction block, where the statement failed as a whole and running it again cannot do
    /// anything twice.
    async fn run_request(
        &self,
        row_columns: Option<usize>,
        write: impl Fn(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<Collected, Error> {
        let mut retried = false;
        loop {
            self.before_request().await?;
            let request = self.start(Flow::Extended(1), row_columns, &write)?;
            let id = request.id();
            let result = read_results(request).await;
            let stray = match &result {
                Err(e) if !retried => {
                    let hit = self.lock().conn.limits.hit_by_stray_cancel(id, e);
                    hit && self.may_retry_stale()
                }
                _ => false,
            };
            if !stray {
                return result;
            }
            retried = true;
            tracing::debug!(
                "the cancel of a timed-out request also stopped the one behind it; running it again"
            );
        }
    }

    async fn run_typed(&self, sql: &str, params: &[(Param<'_>, Type)]) -> Result<Collected, Error> {
        crate::proto::check_parameter_count(params.len())?;
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let values: Vec<Param<'_>> = params.iter().map(|(v, _)| *v).collect();
        self.run_request(None, |buf| {
            frontend::parse("", sql, types.iter().map(Type::oid), buf).map_err(encode_error)?;
            write_bind_portal(buf, "", "", &types, &values)?;
            frontend::describe(b'P', "", buf).map_err(encode_error)?;
            frontend::execute("", 0, buf).map_err(encode_error)?;
            frontend::sync(buf);
            Ok(())
        })
        .await
    }
}

/// Reads the answers of one Bind/Execute request to its ReadyForQuery.
async fn read_results(mut request: Request<'_>) -> Result<Collected, Error> {
    let mut collected = Collected::new();
    let mut error = None;
    request
        .read(|message, _| {
            match message {
                Backend::Row(raw) => collected.rows.push(raw),
                Backend::Ready => return Ok(ControlFlow::Break(())),
                Backend::Message(Message::CommandComplete(body)) => {
                    collected.affected = rows_affected(body.tag().map_err(Error::malformed)?);
                }
                Backend::Message(Message::RowDescription(body)) => {
                    collected.description = Some(read_description(&body)?);
                }
                Backend::Message(
                    Message::ParseComplete
                    | Message::BindComplete
                    | Message::NoData
                    | Message::EmptyQueryResponse,
                ) => {}
                Backend::Error(db) => error = Some(Error::db(*db)),
                Backend::Message(Message::CopyOutResponse(_) | Message::CopyDone)
                | Backend::CopyData(_) => {}
                other => return Err(unexpected(other, "Bind/Execute")),
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
    match error {
        Some(e) => Err(e),
        None => Ok(collected),
    }
}
