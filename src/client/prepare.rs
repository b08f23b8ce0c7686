//! Preparing statements: Parse/Describe, the statement cache, and resolving the types a statement uses.
//!
//! Shared requests (`&self`): two futures preparing the same SQL at once each prepare their own named
//! statement (names come from a per-client counter and never collide); the first to finish is cached, and
//! the other's statement is closed on the server when its last handle is dropped.

use std::ops::ControlFlow;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{Message, RowDescriptionBody};
use postgres_protocol::message::frontend;
use postgres_types::Type;

use crate::client::telemetry::Work;
use crate::client::{Request, StatementRef, ToStatement, encode_error, unexpected};
use crate::config::QueryMode;
use crate::proto::statement::{CloseUnlessPrepared, Column, Statement};
use crate::proto::{Backend, Flow, TransactionStatus};
use crate::{Client, Error, client::typeinfo, sqlstate};

/// One RowDescription field, before its type is resolved.
pub(crate) struct FieldInfo {
    pub(crate) name: String,
    pub(crate) type_oid: u32,
    pub(crate) table_oid: Option<u32>,
    pub(crate) column_id: Option<i16>,
}

/// The answer to a Parse/Describe: parameter type OIDs, and the row description if the statement returns rows.
pub(crate) type Description = (Vec<u32>, Option<Vec<FieldInfo>>);

impl Client {
    /// Prepares a statement, letting the server infer parameter types.
    pub async fn prepare(&self, sql: &str) -> Result<Statement, Error> {
        self.prepare_typed(sql, &[]).await
    }

    /// Prepares a statement with the given parameter types (the server infers any not given).
    pub async fn prepare_typed(&self, sql: &str, param_types: &[Type]) -> Result<Statement, Error> {
        self.telemetry("prepare", Work::Sql(sql))
            .run(self.prepare_in_span(sql, param_types))
            .await
    }

    /// [`prepare_typed`](Self::prepare_typed) in the current span: a prepare that is one step of a larger
    /// request (a statement cache miss) belongs to that request's span and duration.
    async fn prepare_in_span(&self, sql: &str, param_types: &[Type]) -> Result<Statement, Error> {
        let (name, guard) = self.new_statement_name();
        let statement = self.prepare_named(&name, sql, param_types).await?;
        guard.prepared();
        if let Some(session) = &mut self.lock().session {
            session.remember_statement(&name, sql, &statement);
        }
        Ok(statement)
    }

    /// A name for a new named statement, with the guard that closes it on the server unless its prepare
    /// finishes (see [`CloseUnlessPrepared`]).
    pub(crate) fn new_statement_name(&self) -> (String, CloseUnlessPrepared) {
        let name = self.lock().next_statement_name(self.id());
        let guard = CloseUnlessPrepared::new(self.close_queue(), &name);
        (name, guard)
    }

    /// Prepares `sql` as statement `name` (`""`: the unnamed statement) and resolves its types.
    pub(crate) async fn prepare_named(
        &self,
        name: &str,
        sql: &str,
        param_types: &[Type],
    ) -> Result<Statement, Error> {
        self.before_request().await?;
        let request = self.start(Flow::Extended(1), None, |buf| {
            frontend::parse(name, sql, param_types.iter().map(Type::oid), buf)
                .map_err(encode_error)?;
            frontend::describe(b'S', name, buf).map_err(encode_error)?;
            frontend::sync(buf);
            Ok(())
        })?;
        let (param_oids, description) = read_statement_description(request).await?;
        self.described_statement(name, sql, param_oids, description)
            .await
    }

    /// The statement `name` from the server's answer to its Parse/Describe, with its types resolved (a catalog
    /// lookup for each type postgres-types does not know, once per connection).
    pub(crate) async fn described_statement(
        &self,
        name: &str,
        sql: &str,
        param_oids: Vec<u32>,
        description: Option<Vec<FieldInfo>>,
    ) -> Result<Statement, Error> {
        let mut params = Vec::with_capacity(param_oids.len());
        for oid in param_oids {
            params.push(self.resolve_type(oid).await?);
        }
        let columns = match description {
            Some(description) => Some(self.resolve_columns(description).await?),
            None => None,
        };
        let close_queue = (!name.is_empty()).then_some(self.close_queue());
        Ok(Statement::new(
            name.to_string(),
            sql,
            self.id(),
            params,
            columns,
            close_queue,
        ))
    }

    async fn resolve_type(&self, oid: u32) -> Result<Type, Error> {
        if let Some(ty) = Type::from_oid(oid) {
            return Ok(ty);
        }
        if let Some(ty) = self.lock().types.get(oid) {
            return Ok(ty);
        }
        typeinfo::lookup(self, oid).await
    }

    /// The columns of a row description, with their types resolved.
    pub(crate) async fn resolve_columns(
        &self,
        description: Vec<FieldInfo>,
    ) -> Result<Vec<Column>, Error> {
        let mut columns = Vec::with_capacity(description.len());
        for field in description {
            let type_ = self.resolve_type(field.type_oid).await?;
            columns.push(Column::new(
                field.name,
                type_,
                field.table_oid,
                field.column_id,
            ));
        }
        Ok(columns)
    }

    /// SQL text or a [`Statement`] as a described statement, as the query mode says.
    pub(crate) async fn statement<T: ToStatement + ?Sized>(
        &self,
        statement: &T,
    ) -> Result<Statement, Error> {
        match statement.to_statement() {
            StatementRef::Prepared(s) => {
                if s.connection_id() != self.id() {
                    return Err(Error::config(
                        "the statement was prepared on a different connection",
                    ));
                }
                Ok(s.clone())
            }
            StatementRef::Sql(sql) if self.caches_text() => self.cached_statement(sql).await,
            // SQL text goes through the unnamed statement: nothing to close, nothing left on the server.
            StatementRef::Sql(sql) => {
                let lookups = self.lock().types.lookups();
                let statement = self.prepare_named("", sql, &[]).await?;
                if self.lock().types.lookups() == lookups {
                    return Ok(statement);
                }
                // Looking up a custom type ran simple queries, which drop the unnamed statement: parse it again.
                // The types are cached now, so this second round trip happens once per type and connection.
                self.prepare_named("", sql, statement.params()).await
            }
        }
    }

    /// Whether SQL text goes through the statement cache ([`QueryMode::Cached`] with a capacity).
    pub(crate) fn caches_text(&self) -> bool {
        self.query_mode() == QueryMode::Cached && self.lock().cache.enabled()
    }

    /// The statement cached for `sql`, if SQL text goes through the cache and it holds one.
    pub(crate) fn cached_text(&self, sql: &str) -> Option<Statement> {
        if !self.caches_text() {
            return None;
        }
        self.lock().cache.get(sql)
    }

    /// The cached statement for `sql`, prepared (and cached) on a miss.
    pub(crate) async fn cached_statement(&self, sql: &str) -> Result<Statement, Error> {
        if let Some(statement) = self.lock().cache.get(sql) {
            return Ok(statement);
        }
        let statement = self.prepare_in_span(sql, &[]).await?;
        let mut state = self.lock();
        // Another future prepared the same text meanwhile: its statement stays cached, and ours is closed
        // when its handle goes (after the lock is released).
        if let Some(cached) = state.cache.get(sql) {
            drop(state);
            return Ok(cached);
        }
        state.cache.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Drops `statement` from the cache if `e` says it went stale (its plan no longer fits; after 26000, the
    /// server lost every prepared statement, so the whole cache goes), so that the next use prepares it
    /// afresh. Whether it was stale: plain queries and pipelines then run it once more where that is safe,
    /// row streams and portals return the error.
    pub(crate) fn forget_if_stale(&self, statement: &Statement, e: &Error) -> bool {
        let stale = stale_statement(e);
        let mut state = self.lock();
        match stale {
            Some(Stale::Plan) => state.cache.remove_statement(statement.name()),
            Some(Stale::AllGone) => state.cache.clear(),
            None => return false,
        }
        true
    }

    /// Whether a stale statement may run once more: only outside a transaction block, where the failed
    /// attempt changed nothing.
    pub(crate) fn may_retry_stale(&self) -> bool {
        self.transaction_status() == TransactionStatus::Idle
    }
}

/// Reads the answer to Parse/Describe: parameter type OIDs and the row description, or the server's error.
pub(crate) async fn read_statement_description(
    mut request: Request<'_>,
) -> Result<Description, Error> {
    let mut param_oids = Vec::new();
    let mut description = None;
    let mut error = None;
    request
        .read(|message, _| {
            match message {
                Backend::Ready => return Ok(ControlFlow::Break(())),
                Backend::Message(Message::ParseComplete | Message::NoData) => {}
                Backend::Message(Message::ParameterDescription(body)) => {
                    param_oids = body.parameters().collect().map_err(Error::malformed)?;
                }
                Backend::Message(Message::RowDescription(body)) => {
                    description = Some(read_description(&body)?);
                }
                Backend::Error(db) => error = Some(Error::db(*db)),
                other => return Err(unexpected(other, "Parse/Describe")),
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
    match error {
        Some(e) => Err(e),
        None => Ok((param_oids, description)),
    }
}

/// The fields of a RowDescription.
pub(crate) fn read_description(body: &RowDescriptionBody) -> Result<Vec<FieldInfo>, Error> {
    body.fields()
        .map(|f| {
            Ok(FieldInfo {
                name: f.name().to_string(),
                type_oid: f.type_oid(),
                table_oid: (f.table_oid() != 0).then_some(f.table_oid()),
                column_id: (f.column_id() != 0).then_some(f.column_id()),
            })
        })
        .collect()
        .map_err(Error::malformed)
}

/// Why a cached statement cannot be used any more.
enum Stale {
    /// Its plan no longer fits: "cached plan must not change result type".
    Plan,
    /// The server no longer has prepared statements of ours ("prepared statement ... does not exist").
    AllGone,
}

fn stale_statement(e: &Error) -> Option<Stale> {
    let db = e.as_db_error()?;
    match db.code() {
        sqlstate::FEATURE_NOT_SUPPORTED if db.message().contains("cached plan") => {
            Some(Stale::Plan)
        }
        sqlstate::INVALID_SQL_STATEMENT_NAME => Some(Stale::AllGone),
        _ => None,
    }
}
