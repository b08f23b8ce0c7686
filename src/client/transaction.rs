//! Transactions and savepoints.
//!
//! A [`Transaction`] exists from the moment its BEGIN (or SAVEPOINT) is queued, so a future dropped while
//! waiting for the answer still leaves a value whose drop rolls back. Committing marks the transaction finished
//! at the moment COMMIT is queued, never after an await. A transaction dropped without commit or rollback leaves
//! its ROLLBACK to run before the connection's next request, so a transaction never outlives its handle.

use std::ops::{Deref, DerefMut};

use crate::client::identifier::quote_identifier;
use crate::client::telemetry::{self, Work};
use crate::{Client, Error};

/// Names of portals whose handles were dropped, closed with the transaction's next portal call.
pub(crate) type PortalCloses = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// The isolation level of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IsolationLevel {
    /// `READ UNCOMMITTED` (PostgreSQL treats it as READ COMMITTED).
    ReadUncommitted,
    /// `READ COMMITTED`, PostgreSQL's default.
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`.
    Serializable,
}

impl IsolationLevel {
    fn sql(self) -> &'static str {
        match self {
            IsolationLevel::ReadUncommitted => "ISOLATION LEVEL READ UNCOMMITTED",
            IsolationLevel::ReadCommitted => "ISOLATION LEVEL READ COMMITTED",
            IsolationLevel::RepeatableRead => "ISOLATION LEVEL REPEATABLE READ",
            IsolationLevel::Serializable => "ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

/// Options for a new transaction; see [`Client::build_transaction`].
#[derive(Debug)]
pub struct TransactionBuilder<'a> {
    client: &'a mut Client,
    isolation_level: Option<IsolationLevel>,
    read_only: Option<bool>,
    deferrable: Option<bool>,
}

impl<'a> TransactionBuilder<'a> {
    /// Sets the isolation level.
    pub fn isolation_level(mut self, level: IsolationLevel) -> Self {
        self.isolation_level = Some(level);
        self
    }

    /// Makes the transaction read only (`true`) or read write (`false`).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = Some(read_only);
        self
    }

    /// Makes the transaction deferrable (only meaningful for serializable read-only transactions).
    pub fn deferrable(mut self, deferrable: bool) -> Self {
        self.deferrable = Some(deferrable);
        self
    }

    /// Sends BEGIN with the chosen options.
    pub async fn start(self) -> Result<Transaction<'a>, Error> {
        let mut modes = Vec::new();
        if let Some(level) = self.isolation_level {
            modes.push(level.sql());
        }
        if let Some(read_only) = self.read_only {
            modes.push(if read_only { "READ ONLY" } else { "READ WRITE" });
        }
        if let Some(deferrable) = self.deferrable {
            modes.push(if deferrable {
                "DEFERRABLE"
            } else {
                "NOT DEFERRABLE"
            });
        }
        let sql = if modes.is_empty() {
            "BEGIN".to_string()
        } else {
            format!("BEGIN {}", modes.join(", "))
        };
        Transaction::begin(self.client, sql, None).await
    }
}

impl Client {
    /// Starts a transaction with the server's default options.
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// let mut tx = client.transaction().await?;
    /// tx.execute("INSERT INTO t VALUES ($1)", &[&1i32]).await?;
    /// {
    ///     let mut inner = tx.savepoint("maybe").await?;
    ///     inner.execute("INSERT INTO t VALUES ($1)", &[&2i32]).await?;
    ///     // Dropped without commit: rolled back to the savepoint.
    /// }
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, Error> {
        Transaction::begin(self, "BEGIN".to_string(), None).await
    }

    /// Starts building a transaction with an isolation level, read-only or deferrable mode.
    pub fn build_transaction(&mut self) -> TransactionBuilder<'_> {
        TransactionBuilder {
            client: self,
            isolation_level: None,
            read_only: None,
            deferrable: None,
        }
    }
}

/// An open transaction (or savepoint). It derefs to [`Client`] for queries.
///
/// Dropped without [`commit`](Self::commit) or [`rollback`](Self::rollback), it is rolled back before the
/// connection's next request.
#[derive(Debug)]
pub struct Transaction<'a> {
    client: &'a mut Client,
    /// The savepoint name for a nested transaction; `None` for the outermost.
    savepoint: Option<String>,
    depth: u32,
    /// Set when COMMIT or ROLLBACK was queued: the drop has nothing left to do.
    finished: bool,
    /// Portals of this transaction (and its savepoints) whose handles were dropped, to close.
    portals: PortalCloses,
    /// The span of the whole transaction, parent of its requests' spans (on the client's stack while the
    /// transaction is open).
    span: tracing::Span,
}

impl<'a> Transaction<'a> {
    async fn begin(
        client: &'a mut Client,
        sql: String,
        savepoint: Option<(String, u32)>,
    ) -> Result<Transaction<'a>, Error> {
        let outer = client.state_mut().transaction_spans.last().cloned();
        let span = telemetry::transaction_span(client.peer(), outer.as_ref(), savepoint.is_some());
        let begin = client.telemetry_under("begin", Work::Sql(&sql), Some(span.clone()));
        let queued = async {
            client.prepare_to_send().await?;
            client.queue_simple(&sql)
        }
        .await;
        let id = match queued {
            Ok(id) => id,
            Err(e) => {
                telemetry::record_error(&span, &e);
                begin.end(Some(&e));
                return Err(e);
            }
        };
        let (savepoint, depth) = match savepoint {
            Some((name, depth)) => (Some(name), depth),
            None => (None, 0),
        };
        // From here on the value exists: if this future is dropped below, its drop schedules the rollback
        // (and takes its span off the stack).
        let state = client.state_mut();
        state.open_transactions += 1;
        state.transaction_spans.push(span.clone());
        let transaction = Transaction {
            client,
            savepoint,
            depth,
            finished: false,
            portals: PortalCloses::default(),
            span,
        };
        begin
            .run(transaction.client.simple_results(id).finish())
            .await?;
        Ok(transaction)
    }

    /// Commits the transaction (for a savepoint: releases it).
    ///
    /// Committing a transaction in which a statement failed rolls it back, as PostgreSQL does; this returns an
    /// error then, so a lost commit never looks like a successful one.
    pub async fn commit(mut self) -> Result<(), Error> {
        self.client.prepare_to_send().await?;
        let sql = match &self.savepoint {
            None => "COMMIT".to_string(),
            Some(name) => format!("RELEASE SAVEPOINT {name}"),
        };
        let id = self.client.queue_simple(&sql)?;
        // Bookkeeping at queue time: whatever happens to this future, the drop must not add a rollback.
        self.finished = true;
        let savepoint = self.savepoint.is_some();
        let result = self
            .client
            .telemetry("commit", Work::Sql(&sql))
            .run(async {
                let tag = self.client.simple_results(id).finish().await?;
                // PostgreSQL answers COMMIT of a failed transaction with the tag ROLLBACK and no error.
                if !savepoint && tag.as_deref() == Some("ROLLBACK") {
                    return Err(Error::transaction_failed());
                }
                Ok(())
            })
            .await;
        self.ended("commit", result.as_ref().err());
        result
    }

    /// Rolls the transaction back (for a savepoint: back to the savepoint, which is then released).
    pub async fn rollback(mut self) -> Result<(), Error> {
        self.client.prepare_to_send().await?;
        let sql = self.rollback_sql();
        let id = self.client.queue_simple(&sql)?;
        self.finished = true;
        let result = self
            .client
            .telemetry("rollback", Work::Sql(&sql))
            .run(self.client.simple_results(id).finish())
            .await;
        self.ended("rollback", result.as_ref().err());
        result.map(drop)
    }

    /// Starts a nested transaction as a savepoint with a generated name.
    pub async fn transaction(&mut self) -> Result<Transaction<'_>, Error> {
        let depth = self.depth + 1;
        self.savepoint_named(format!("wpc_sp_{depth}"), depth).await
    }

    /// Starts a nested transaction as a savepoint called `name`.
    pub async fn savepoint(&mut self, name: &str) -> Result<Transaction<'_>, Error> {
        let depth = self.depth + 1;
        self.savepoint_named(quote_identifier(name), depth).await
    }

    async fn savepoint_named(
        &mut self,
        name: String,
        depth: u32,
    ) -> Result<Transaction<'_>, Error> {
        let sql = format!("SAVEPOINT {name}");
        let portals = self.portals.clone();
        let mut savepoint = Transaction::begin(&mut *self.client, sql, Some((name, depth))).await?;
        // One queue for the whole transaction: a portal of the outer level dropped while a savepoint is open
        // is closed by the savepoint's next portal call.
        savepoint.portals = portals;
        Ok(savepoint)
    }

    /// Where dropped [`Portal`](crate::Portal)s of this transaction wait to be closed.
    pub(crate) fn portal_closes(&self) -> &PortalCloses {
        &self.portals
    }

    /// Records how the transaction ended on its span.
    fn ended(&self, outcome: &'static str, error: Option<&Error>) {
        self.span.record("outcome", outcome);
        if let Some(error) = error {
            telemetry::record_error(&self.span, error);
        }
    }

    fn rollback_sql(&self) -> String {
        match &self.savepoint {
            None => "ROLLBACK".to_string(),
            Some(name) => format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}"),
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        let state = self.client.state_mut();
        state.open_transactions -= 1;
        state.transaction_spans.pop();
        if !self.finished {
            self.span.record("outcome", "dropped");
            let sql = self.rollback_sql();
            self.client.defer(sql);
        }
    }
}

impl Deref for Transaction<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
    }
}

impl DerefMut for Transaction<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
    }
}
