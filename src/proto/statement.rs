//! Prepared statements and their columns.

#[cfg(any(feature = "tokio", target_os = "wasi"))]
use std::fmt;
#[cfg(any(feature = "tokio", target_os = "wasi"))]
use std::sync::{Arc, Mutex, Weak};

use postgres_types::Type;

#[cfg(any(feature = "tokio", target_os = "wasi"))]
use crate::proto::operation::Operation;

/// Names of statements whose last handle was dropped, closed on the server with the connection's next request.
#[cfg(any(feature = "tokio", target_os = "wasi"))]
pub(crate) type CloseQueue = Arc<Mutex<Vec<String>>>;

/// Closes a named statement on the server unless its prepare finishes: a prepare whose future is dropped
/// after Parse was sent, or that fails after Parse succeeded, must not leave the statement behind.
#[cfg(any(feature = "tokio", target_os = "wasi"))]
pub(crate) struct CloseUnlessPrepared {
    queue: CloseQueue,
    name: Option<String>,
}

#[cfg(any(feature = "tokio", target_os = "wasi"))]
impl CloseUnlessPrepared {
    /// Armed before the first await of the prepare.
    pub(crate) fn new(queue: &CloseQueue, name: &str) -> CloseUnlessPrepared {
        CloseUnlessPrepared {
            queue: queue.clone(),
            name: Some(name.to_string()),
        }
    }

    /// The prepare finished: the [`Statement`] handle owns the name now.
    pub(crate) fn prepared(mut self) {
        self.name = None;
    }
}

#[cfg(any(feature = "tokio", target_os = "wasi"))]
impl Drop for CloseUnlessPrepared {
    fn drop(&mut self) {
        // Closing a statement that was never created is not an error in PostgreSQL.
        if let Some(name) = self.name.take()
            && let Ok(mut names) = self.queue.lock()
        {
            names.push(name);
        }
    }
}

/// A column of a result: its name and type, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub(crate) name: String,
    pub(crate) type_: Type,
    pub(crate) table_oid: Option<u32>,
    pub(crate) column_id: Option<i16>,
    /// Whether values of the type may hold counts to check before decoding (arrays, composites, hstore):
    /// worked out once here, not for every value.
    pub(crate) counted: bool,
}

impl Column {
    pub(crate) fn new(
        name: String,
        type_: Type,
        table_oid: Option<u32>,
        column_id: Option<i16>,
    ) -> Column {
        Column {
            name,
            counted: crate::proto::may_hold_counts(&type_),
            type_,
            table_oid,
            column_id,
        }
    }

    /// The column name (or alias).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The column type.
    pub fn type_(&self) -> &Type {
        &self.type_
    }

    /// The OID of the table the column comes from, if it is a plain table column.
    pub fn table_oid(&self) -> Option<u32> {
        self.table_oid
    }

    /// The column's attribute number in that table.
    pub fn column_id(&self) -> Option<i16> {
        self.column_id
    }
}

/// A prepared statement, reusable for any number of executions on the connection that prepared it.
///
/// Cloning is cheap. When the last clone is dropped, the statement is closed on the server with the
/// connection's next request.
#[cfg(any(feature = "tokio", target_os = "wasi"))]
#[derive(Clone)]
pub struct Statement(Arc<StatementInner>);

#[cfg(any(feature = "tokio", target_os = "wasi"))]
struct StatementInner {
    name: String,
    /// The SQL text, for telemetry: its operation is read from it once, when a span or metric first wants it.
    sql: Box<str>,
    operation: std::sync::OnceLock<Operation>,
    connection_id: u64,
    params: Vec<Type>,
    columns: Arc<[Column]>,
    /// Whether the server described a row (RowDescription, possibly of no columns) rather than none (NoData).
    returns_rows: bool,
    close_queue: Option<Weak<Mutex<Vec<String>>>>,
}

#[cfg(any(feature = "tokio", target_os = "wasi"))]
impl Drop for StatementInner {
    fn drop(&mut self) {
        if let Some(queue) = self.close_queue.as_ref().and_then(Weak::upgrade)
            && let Ok(mut names) = queue.lock()
        {
            names.push(std::mem::take(&mut self.name));
        }
    }
}

#[cfg(any(feature = "tokio", target_os = "wasi"))]
impl Statement {
    pub(crate) fn new(
        name: String,
        sql: &str,
        connection_id: u64,
        params: Vec<Type>,
        columns: Option<Vec<Column>>,
        close_queue: Option<&CloseQueue>,
    ) -> Statement {
        Statement(Arc::new(StatementInner {
            name,
            sql: sql.into(),
            operation: std::sync::OnceLock::new(),
            connection_id,
            params,
            returns_rows: columns.is_some(),
            columns: columns.unwrap_or_default().into(),
            close_queue: close_queue.map(Arc::downgrade),
        }))
    }

    pub(crate) fn name(&self) -> &str {
        &self.0.name
    }

    pub(crate) fn connection_id(&self) -> u64 {
        self.0.connection_id
    }

    /// The SQL text the statement was prepared from.
    pub(crate) fn sql(&self) -> &str {
        &self.0.sql
    }

    /// The operation name and collection of the statement's SQL, read on first use.
    pub(crate) fn operation(&self) -> &Operation {
        self.0.operation.get_or_init(|| Operation::of(&self.0.sql))
    }

    /// Whether the statement returns rows: `false` when the server answered its Describe with NoData (an
    /// INSERT without RETURNING), `true` for a row of any width, none included (`SELECT FROM t`).
    pub(crate) fn returns_rows(&self) -> bool {
        self.0.returns_rows
    }

    pub(crate) fn columns_arc(&self) -> Arc<[Column]> {
        self.0.columns.clone()
    }

    /// The parameter types, in order (`$1`, `$2`, ...).
    pub fn params(&self) -> &[Type] {
        &self.0.params
    }

    /// The result columns (empty for statements that return no rows).
    pub fn columns(&self) -> &[Column] {
        &self.0.columns
    }
}

#[cfg(any(feature = "tokio", target_os = "wasi"))]
impl fmt::Debug for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Statement")
            .field("name", &self.0.name)
            .field("params", &self.0.params)
            .field("columns", &self.0.columns)
            .finish()
    }
}
