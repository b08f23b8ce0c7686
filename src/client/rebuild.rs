//! Session rebuild: after the connection is lost, the next call connects again and restores the session.
//!
//! Opt-in with [`Config::session_rebuild`]. The client remembers what it can restore safely: settings made
//! through [`Client::set_parameter`], channels subscribed through [`Client::listen`], and statements prepared
//! through [`Client::prepare`] and friends. When a call fails because the connection broke (an I/O error such
//! as a reset or an unexpected end of stream, or a FATAL error such as `pg_terminate_backend`'s 57P01), that
//! call returns its error; the next call connects again with the same [`Config`], replays the settings,
//! `LISTEN`s again and prepares the statements again under their names, then goes on as if nothing happened.
//!
//! Cancel tokens follow the client: one taken before a rebuild cancels on the rebuilt session (see
//! [`CancelToken`](crate::CancelToken) for what a cancel racing a rebuild reaches).
//!
//! A transaction is never rebuilt: its work died with the connection. If the connection broke while a
//! transaction was open, the next call returns an error saying so instead of rebuilding, and only the call
//! after that one rebuilds.

use std::collections::HashMap;
use std::task::{Poll, Waker};

use postgres_types::Type;
use tracing::{debug, info};

use crate::client::identifier::quote_identifier;
use crate::conn::cancel::CurrentSession;
use crate::{Client, Config, Error, ErrorKind, Statement, TransactionStatus};

/// What a session rebuild needs: the configuration to connect again, and what to restore.
pub(crate) struct SessionRecord {
    config: Config,
    /// Settings made through `set_parameter`, in the order first set; names compare case-insensitively.
    parameters: Vec<(String, String)>,
    /// Channels subscribed through `listen`, in order, without duplicates.
    channels: Vec<String>,
    /// Named statements whose handles may still be alive, by name.
    statements: HashMap<String, PreparedRecord>,
    /// The "transaction lost" error was returned for the current break: the next call may rebuild.
    lost_transaction_reported: bool,
    /// How many times the session was rebuilt.
    rebuilds: u64,
    /// The session the client's cancel tokens act on, once a rebuild replaced the first one.
    current: CurrentSession,
}

/// What re-preparing a statement under its old name needs, and what it must match for the old handles to
/// read its results correctly.
#[derive(Clone)]
struct PreparedRecord {
    sql: String,
    params: Vec<Type>,
    columns: Vec<(String, Type)>,
}

impl PreparedRecord {
    fn of(sql: &str, statement: &Statement) -> PreparedRecord {
        PreparedRecord {
            sql: sql.to_string(),
            params: statement.params().to_vec(),
            columns: columns_of(statement),
        }
    }
}

fn columns_of(statement: &Statement) -> Vec<(String, Type)> {
    statement
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().clone()))
        .collect()
}

impl SessionRecord {
    /// A record for a client of `config`, if that configuration asks for session rebuild.
    pub(crate) fn for_config(config: &Config) -> Option<Box<SessionRecord>> {
        config.get_session_rebuild().then(|| {
            Box::new(SessionRecord {
                config: config.clone(),
                parameters: Vec::new(),
                channels: Vec::new(),
                statements: HashMap::new(),
                lost_transaction_reported: false,
                rebuilds: 0,
                current: CurrentSession::default(),
            })
        })
    }

    pub(crate) fn remember_statement(&mut self, name: &str, sql: &str, statement: &Statement) {
        self.statements
            .insert(name.to_string(), PreparedRecord::of(sql, statement));
    }

    /// Forgets statements whose handles were all dropped (they are closed, or die with the connection).
    pub(crate) fn forget_statements(&mut self, names: &[String]) {
        for name in names {
            self.statements.remove(name);
        }
    }

    fn remember_parameter(&mut self, name: &str, value: &str) {
        match self
            .parameters
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => *v = value.to_string(),
            None => self.parameters.push((name.to_string(), value.to_string())),
        }
    }

    pub(crate) fn remember_listen(&mut self, channel: &str) {
        if !self.channels.iter().any(|c| c == channel) {
            self.channels.push(channel.to_string());
        }
    }

    pub(crate) fn forget_listen(&mut self, channel: &str) {
        self.channels.retain(|c| c != channel);
    }

    pub(crate) fn forget_all_listens(&mut self) {
        self.channels.clear();
    }

    /// The session the client's cancel tokens follow across rebuilds.
    pub(crate) fn current_session(&self) -> CurrentSession {
        self.current.clone()
    }
}

impl Client {
    /// Sets a run-time parameter for the rest of the session, like `SET name = value` (it runs
    /// `SELECT pg_catalog.set_config(name, value, false)`, so both are sent as parameters, never spliced into
    /// SQL). With [`Config::session_rebuild`] the setting is restored when the session is rebuilt.
    ///
    /// It must run outside a transaction block, where a `ROLLBACK` could not undo it behind the client's back:
    /// inside one it returns an [`ErrorKind::Unsupported`] error and changes nothing. For a setting that should
    /// end with the transaction, run `SET LOCAL` there.
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// client.set_parameter("search_path", "app, public").await?;
    /// client.set_parameter("statement_timeout", "5s").await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_parameter(&mut self, name: &str, value: &str) -> Result<(), Error> {
        // Answers to dropped requests are read first, so the status below is the current one.
        self.prepare_to_send().await?;
        if self.transaction_status() != TransactionStatus::Idle {
            return Err(Error::unsupported(
                "set_parameter inside a transaction block: a ROLLBACK would undo it; call it outside the \
                 block, or use SET LOCAL for a setting that ends with the transaction",
            ));
        }
        self.query_typed(
            "SELECT pg_catalog.set_config($1, $2, false)",
            &[(&name, Type::TEXT), (&value, Type::TEXT)],
        )
        .await?;
        if let Some(session) = &mut self.state_mut().session {
            session.remember_parameter(name, value);
        }
        Ok(())
    }

    /// How many times the session was rebuilt after a lost connection (see [`Config::session_rebuild`]).
    pub fn session_rebuilds(&self) -> u64 {
        self.lock().session.as_ref().map_or(0, |s| s.rebuilds)
    }

    /// Whether the next call will connect again: session rebuild is on, the connection was lost in a way a
    /// rebuild repairs, and the client can reopen its transport.
    pub(crate) fn will_rebuild(&self) -> bool {
        self.lock().session.is_some() && self.is_closed() && self.lost_connection().is_some()
    }

    /// How the connection was lost, if it was lost in a way a rebuild repairs: an I/O error (reset, end of
    /// stream), a FATAL error from the server, or a read deadline that gave the connection up
    /// ([`Config::read_timeout`]). A protocol violation is not repaired (the server would likely
    /// do it again), nor is a client whose transport the caller opened (`connect_with_transport`: there is no
    /// way to open it again).
    fn lost_connection(&self) -> Option<ErrorKind> {
        let mut state = self.lock();
        let reopenable = state
            .conn
            .cancel_route
            .as_ref()
            .is_some_and(|route| route.target.is_some());
        if !reopenable {
            return None;
        }
        let kind = state.conn.broken_kind()?;
        matches!(kind, ErrorKind::Io | ErrorKind::Db | ErrorKind::Timeout).then_some(kind)
    }

    /// Called at the start of every request on a closed connection when session rebuild is on: connects again
    /// and restores the session, or says the transaction open at the break was lost.
    ///
    /// Cancel-safe: the new connection replaces the lost one only once it is fully restored, in one step with
    /// no await; dropped before that, the client is still closed (having forgotten only what belonged to the
    /// lost connection) and the next call starts again.
    pub(crate) async fn rebuild_if_lost(&self) -> Result<(), Error> {
        let lost = {
            let state = self.lock();
            state.session.is_some() && state.conn.protocol.is_closed()
        };
        if !lost {
            return Ok(());
        }
        // One rebuild at a time: futures that find one under way wait for it, then look again.
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            if state.rebuild.running {
                state.rebuild.waiters.push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        if self.lock().session.is_none() || !self.is_closed() {
            return Ok(());
        }
        // Boxed: the rebuild itself runs requests, which come back here.
        Box::pin(self.rebuild_session()).await
    }

    /// The synchronous start of a rebuild: whether one may run now (or the error that says why not), what it
    /// restores, and the mark that a rebuild is under way.
    fn plan_rebuild(&self) -> Result<Option<(RebuildPlan, RebuildRunning<'_>)>, Error> {
        let Some(kind) = self.lost_connection() else {
            // Nothing a rebuild can repair: the request goes on and returns the error that closed the client.
            return Ok(None);
        };
        // A transaction was open if the last ReadyForQuery said so, or if a Transaction was dropped after the
        // break (its ROLLBACK waits in `deferred`).
        let in_transaction =
            self.transaction_status() != TransactionStatus::Idle || self.has_deferred();
        {
            let mut state = self.lock();
            // A Transaction still alive would carry on in autocommit on a new session, and its commit() would
            // "succeed": every call fails until it is dropped.
            let open_transactions = state.open_transactions;
            let Some(session) = state.session.as_mut() else {
                return Ok(None);
            };
            if open_transactions > 0 {
                // The caller has been told the transaction is lost: once it is dropped, the next call rebuilds.
                session.lost_transaction_reported = true;
                return Err(Error::still_broken(
                    kind,
                    "the connection was lost while a transaction was open: its uncommitted work is lost; drop \
                     the Transaction, and the next call on the client connects again",
                ));
            }
            if in_transaction && !session.lost_transaction_reported {
                session.lost_transaction_reported = true;
                return Err(Error::still_broken(
                    kind,
                    "the connection was lost while a transaction was open: its uncommitted work is lost (a \
                     COMMIT sent just before may or may not have taken effect); this call does not rebuild \
                     the session, the next call connects again",
                ));
            }
        }
        let gone = self.forget_lost_connection();
        let mut state = self.lock();
        let Some(session) = state.session.as_mut() else {
            return Ok(None);
        };
        session.forget_statements(&gone);
        let plan = RebuildPlan {
            config: session.config.clone(),
            parameters: session.parameters.clone(),
            channels: session.channels.clone(),
            statements: session
                .statements
                .iter()
                .map(|(name, record)| (name.clone(), record.clone()))
                .collect(),
        };
        let running = RebuildRunning::start(&mut state.rebuild, self);
        Ok(Some((plan, running)))
    }

    async fn rebuild_session(&self) -> Result<(), Error> {
        let Some((plan, _running)) = self.plan_rebuild()? else {
            return Ok(());
        };
        let RebuildPlan {
            config,
            parameters,
            channels,
            statements,
        } = plan;
        debug!(
            parameters = parameters.len(),
            channels = channels.len(),
            statements = statements.len(),
            "the connection was lost; rebuilding the session"
        );

        // Declared before `fresh`, so these outlive it: their drop must not queue a Close on its connection.
        let mut restored: Vec<Statement> = Vec::new();
        let mut fresh = Client::connect(&config)
            .await
            .map_err(|e| e.context("session rebuild: connecting again".to_string()))?;
        // The new client restores; it must never try to rebuild itself.
        fresh.state_mut().session = None;
        for (name, value) in &parameters {
            fresh
                .query_typed(
                    "SELECT pg_catalog.set_config($1, $2, false)",
                    &[(name, Type::TEXT), (value, Type::TEXT)],
                )
                .await
                .map_err(|e| e.context(format!("session rebuild: setting {name}")))?;
        }
        if !channels.is_empty() {
            let listens: Vec<String> = channels
                .iter()
                .map(|c| format!("LISTEN {}", quote_identifier(c)))
                .collect();
            fresh
                .batch_execute(&listens.join("; "))
                .await
                .map_err(|e| e.context("session rebuild: LISTEN".to_string()))?;
        }
        let mut stale = Vec::new();
        for (name, record) in &statements {
            match fresh.prepare_named(name, &record.sql, &record.params).await {
                Ok(statement)
                    if statement.params() == record.params.as_slice()
                        && columns_of(&statement) == record.columns =>
                {
                    restored.push(statement);
                }
                // Another shape now (the schema changed): the old handles would misread its results, so the
                // statement is closed again (its drop queues the Close on `fresh`) and executing them fails
                // with "prepared statement does not exist".
                Ok(statement) => {
                    drop(statement);
                    stale.push(name.clone());
                }
                // The server refuses it now (a table is gone): the handles fail the same way.
                Err(e) if !e.is_connection_broken() => stale.push(name.clone()),
                Err(e) => {
                    return Err(e.context(format!("session rebuild: preparing {name}")));
                }
            }
        }
        // Queues the Closes of stale statements; their answers are read by this client's next call.
        fresh.prepare_to_send().await?;

        self.adopt_connection(fresh, |state| {
            if let Some(session) = state.session.as_mut() {
                session.forget_statements(&stale);
                session.lost_transaction_reported = false;
                session.rebuilds += 1;
                // Tokens take on the new session in the same step as the client, with no await between: none
                // of them could cancel the restore above (a cancelled PREPARE would have passed for a stale
                // statement).
                session.current.take_on(&state.conn.cancel_token());
            }
        });
        info!(
            backend_pid = self.backend_pid(),
            parameters = parameters.len(),
            channels = channels.len(),
            statements = restored.len(),
            stale_statements = stale.len(),
            "the connection was lost; session rebuilt"
        );
        Ok(())
    }
}

/// Whether a session rebuild is under way on a client, and the futures waiting for it to finish.
#[derive(Default)]
pub(crate) struct RebuildGate {
    pub(crate) running: bool,
    pub(crate) waiters: Vec<Waker>,
}

/// Marks a rebuild under way until dropped (finished, failed, or its future dropped): then the futures that
/// waited for it are woken to look again.
struct RebuildRunning<'c> {
    client: &'c Client,
}

impl<'c> RebuildRunning<'c> {
    fn start(gate: &mut RebuildGate, client: &'c Client) -> RebuildRunning<'c> {
        gate.running = true;
        RebuildRunning { client }
    }
}

impl Drop for RebuildRunning<'_> {
    fn drop(&mut self) {
        let waiters = {
            let mut state = self.client.lock();
            state.rebuild.running = false;
            std::mem::take(&mut state.rebuild.waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
    }
}

/// What a rebuild restores on the new connection.
struct RebuildPlan {
    config: Config,
    parameters: Vec<(String, String)>,
    channels: Vec<String>,
    statements: Vec<(String, PreparedRecord)>,
}
