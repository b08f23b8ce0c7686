//! Notices, notifications and session rebuild, against the real server on both targets.
//!
//! Notices reach a handler and `tracing`; notifications come as a stream, and ten thousand sent by another
//! session while the listener runs queries all arrive, in order; a session terminated by the server (and,
//! natively, one whose TCP connection is reset or closed by a proxy) is rebuilt by the call after the one that
//! failed, with its settings, channels and prepared statements, but never inside a transaction; a cancel token
//! taken before the rebuild cancels on the rebuilt session.

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::Stream;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use wasi_pg_client::{Client, Config, ErrorKind, Notification, TransactionStatus, sqlstate};

use super::cancel::until_sleeping;
use super::{Check, Env, Outcome, Scenario, connect, poll_once, until_gone, with_timeout};
use crate::two_target::join;

pub(super) fn scenarios() -> Vec<(&'static str, Scenario)> {
    #[allow(unused_mut)]
    let mut list = scenarios![
        notices_reach_a_handler_and_tracing,
        notifications_as_a_stream,
        ten_thousand_notifications_none_lost,
        session_rebuild_after_termination,
        session_rebuild_never_inside_a_transaction,
        cancel_token_follows_a_rebuilt_session,
        set_parameter_outside_transactions_only,
    ];
    #[cfg(not(target_os = "wasi"))]
    list.push(("session_rebuild_after_reset_and_eof", |env| {
        Box::pin(session_rebuild_after_reset_and_eof(env))
    }));
    list
}

/// Wait for one notification that should come.
const NOTIFY_WAIT: Duration = Duration::from_secs(10);

/// One `tracing` event: level, target and message.
type Traced = (Level, String, String);

/// A `tracing` subscriber that keeps every event, for the scenario that installs it.
struct Capture(Arc<Mutex<Vec<Traced>>>);

struct MessageField(String);

impl Visit for MessageField {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = MessageField(String::new());
        event.record(&mut message);
        let metadata = event.metadata();
        if let Ok(mut events) = self.0.lock() {
            events.push((*metadata.level(), metadata.target().to_string(), message.0));
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

async fn notices_reach_a_handler_and_tracing(env: &Env) -> Outcome {
    let traced = Arc::new(Mutex::new(Vec::new()));
    // Both targets run the scenarios on one thread, so a thread-local subscriber sees the client's events.
    let _guard = tracing::subscriber::set_default(Capture(traced.clone()));
    let mut c = connect(&env.trust).await?;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let sink = handled.clone();
    c.set_notice_handler(move |notice| {
        if let Ok(mut notices) = sink.lock() {
            notices.push(format!(
                "{} {}: {}",
                notice.severity(),
                notice.code(),
                notice.message()
            ));
        }
    });
    c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$")
        .await
        .check("notices")?;
    let got = handled.lock().map(|n| n.clone()).unwrap_or_default();
    ensure_eq!(
        got,
        vec![
            "NOTICE 00000: hello 42".to_string(),
            "WARNING 01000: careful".to_string()
        ]
    );
    ensure!(
        c.take_notices().is_empty(),
        "a handled notice was also kept"
    );
    let notices: Vec<Traced> = traced
        .lock()
        .map(|events| {
            events
                .iter()
                .filter(|(_, target, _)| target == "wasi_pg_client::notice")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    ensure_eq!(
        notices,
        vec![
            // NOTICE and below trace at DEBUG (no INFO noise by default); WARNING at WARN.
            (
                Level::DEBUG,
                "wasi_pg_client::notice".to_string(),
                "hello 42".to_string()
            ),
            (
                Level::WARN,
                "wasi_pg_client::notice".to_string(),
                "careful".to_string()
            ),
        ]
    );

    // Without a handler they are kept, the newest 1024 of them, and still traced.
    c.clear_notice_handler();
    c.batch_execute("DO $$ BEGIN FOR i IN 1..1100 LOOP RAISE NOTICE 'n%', i; END LOOP; END $$")
        .await
        .check("many notices")?;
    let kept = c.take_notices();
    ensure_eq!(kept.len(), 1024);
    ensure_eq!((kept[0].message(), kept[1023].message()), ("n77", "n1100"));
    let traced_count = traced
        .lock()
        .map(|events| {
            events
                .iter()
                .filter(|(_, target, message)| {
                    target == "wasi_pg_client::notice" && message.starts_with('n')
                })
                .count()
        })
        .unwrap_or_default();
    ensure_eq!(traced_count, 1100);
    ensure_eq!(handled.lock().map(|n| n.len()).unwrap_or_default(), 2);
    Ok(())
}

/// The stream's next item, through the `Stream` trait itself.
async fn poll_stream<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// The next notification from `stream`, or an error if none comes in time.
async fn next_within<S>(stream: &mut S, what: &str) -> Result<Notification, String>
where
    S: Stream<Item = Result<Notification, wasi_pg_client::Error>> + Unpin,
{
    match with_timeout(NOTIFY_WAIT, poll_stream(stream)).await {
        Some(Some(result)) => result.check(what),
        Some(None) => Err(format!("{what}: the stream ended")),
        None => Err(format!("{what}: no notification within {NOTIFY_WAIT:?}")),
    }
}

async fn notifications_as_a_stream(env: &Env) -> Outcome {
    let channel = "Stream \"Chan\"";
    let c = connect(&env.trust).await?;
    let mut other = connect(&env.trust).await?;
    let sender = other.backend_pid().ok_or("pid")?;
    c.listen(channel).await.check("listen")?;

    // Sent while nobody reads: the stream reads them from the socket, in order.
    for payload in ["one", "two", ""] {
        other.notify(channel, payload).await.check("notify")?;
    }
    let mut stream = c.notifications();
    let mut payloads = Vec::new();
    for _ in 0..3 {
        let n = next_within(&mut stream, "stream").await?;
        ensure_eq!((n.channel(), n.process_id()), (channel, sender));
        payloads.push(n.payload().to_string());
    }
    ensure_eq!(payloads, vec!["one", "two", ""]);

    // Nothing sent: the stream waits, and a wait dropped midway loses nothing.
    ensure!(
        with_timeout(Duration::from_millis(200), stream.next())
            .await
            .is_none(),
        "the stream yielded with nothing sent"
    );
    poll_once(stream.next()).await;
    drop(stream);
    other.notify(channel, "after drops").await.check("notify")?;
    // Kept while the client runs a query, then yielded by a new stream.
    ensure_eq!(
        c.query_one("SELECT 7", &[])
            .await
            .check("query")?
            .get::<_, i32>(0),
        7
    );
    let mut stream = c.notifications();
    let n = stream
        .next()
        .await
        .ok_or("the stream ended")?
        .check("inherent next")?;
    ensure_eq!(n.payload(), "after drops");
    drop(stream);

    // The old calls still work beside the stream.
    other.notify(channel, "old api").await.check("notify")?;
    let n = c
        .wait_for_notification(NOTIFY_WAIT)
        .await
        .check("wait")?
        .ok_or("wait_for_notification got nothing")?;
    ensure_eq!(n.payload(), "old api");

    // Without session rebuild, the stream ends after the error that broke the connection.
    let pid = c.backend_pid().ok_or("pid")?;
    terminate(&mut other, pid).await?;
    let mut stream = c.notifications();
    match stream.next().await {
        Some(Err(e)) if e.is_connection_broken() => {}
        unexpected => return Err(format!("expected a broken connection, got {unexpected:?}")),
    }
    ensure!(
        stream.next().await.is_none(),
        "the stream went on after the connection broke"
    );
    Ok(())
}

/// Terminates backend `pid` from `admin` and waits until it is gone.
async fn terminate(admin: &mut Client, pid: i32) -> Outcome {
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .check("pg_terminate_backend")?
        .get(0);
    ensure!(killed, "pg_terminate_backend({pid}) returned false");
    until_gone(admin, pid).await
}

const TEN_THOUSAND: i32 = 10_000;
const CHUNK: i32 = 500;

async fn ten_thousand_notifications_none_lost(env: &Env) -> Outcome {
    let listener = connect(&env.trust).await?;
    let sender = connect(&env.trust).await?;
    let sender_pid = sender.backend_pid().ok_or("pid")?;
    listener.listen("bulk").await.check("listen")?;
    let mut received: Vec<Notification> = Vec::with_capacity(TEN_THOUSAND as usize);
    let mut first = 1;
    let mut round = 0;
    // Each chunk commits on its own; between chunks the listener runs queries and reads a few notifications
    // through each API, so notifications arrive during queries, during reads and while idle.
    while first <= TEN_THOUSAND {
        let last = (first + CHUNK - 1).min(TEN_THOUSAND);
        sender
            .execute(
                "SELECT pg_notify('bulk', i::text) FROM generate_series($1::int, $2::int) AS i",
                &[&first, &last],
            )
            .await
            .check("pg_notify chunk")?;
        first = last + 1;
        round += 1;
        let value: i32 = listener
            .query_one("SELECT $1::int * 2", &[&round])
            .await
            .check("query between reads")?
            .get(0);
        ensure_eq!(value, round * 2);
        let mut stream = listener.notifications();
        for _ in 0..100 {
            received.push(next_within(&mut stream, "stream read").await?);
        }
        drop(stream);
        listener
            .batch_execute("SELECT 1; SELECT 2")
            .await
            .check("simple query between reads")?;
        for _ in 0..50 {
            let n = listener
                .wait_for_notification(NOTIFY_WAIT)
                .await
                .check("wait")?
                .ok_or("a notification did not arrive")?;
            received.push(n);
        }
        if round % 4 == 0 {
            received.extend(listener.take_notifications());
        }
    }
    // The rest: what is queued already, then from the socket.
    received.extend(listener.take_notifications());
    let mut stream = listener.notifications();
    while received.len() < TEN_THOUSAND as usize {
        received.push(next_within(&mut stream, "final reads").await?);
    }
    ensure!(
        with_timeout(Duration::from_millis(200), stream.next())
            .await
            .is_none(),
        "more than {TEN_THOUSAND} notifications"
    );
    drop(stream);
    ensure!(
        received
            .iter()
            .all(|n| n.channel() == "bulk" && n.process_id() == sender_pid),
        "a notification from elsewhere"
    );
    let payloads: Vec<i32> = received
        .iter()
        .map(|n| n.payload().parse().unwrap_or(-1))
        .collect();
    let expected: Vec<i32> = (1..=TEN_THOUSAND).collect();
    if payloads != expected {
        let first_wrong = payloads
            .iter()
            .zip(&expected)
            .position(|(got, want)| got != want);
        return Err(format!(
            "{} notifications, first out of place at index {first_wrong:?}",
            payloads.len()
        ));
    }
    Ok(())
}

/// A client with session rebuild on.
async fn rebuilding_client(conninfo: &str) -> Result<Client, String> {
    let mut config = Config::parse(conninfo).check("parse conninfo")?;
    config.session_rebuild(true);
    Client::connect(&config).await.check("connect")
}

async fn setting(c: &mut Client, name: &str) -> Result<String, String> {
    Ok(c.query_one("SELECT current_setting($1)", &[&name])
        .await
        .check("current_setting")?
        .get(0))
}

/// What a rebuilt session must still have: a setting, a channel, a prepared statement; what it must not: a
/// temporary table's statement. The notice handler and a notification not taken yet survive too.
struct SessionFixture {
    statement: wasi_pg_client::Statement,
    temp_statement: wasi_pg_client::Statement,
    notices: Arc<Mutex<Vec<String>>>,
}

const CHANNEL: &str = "Rebuilt Chan";

async fn set_up_session(c: &mut Client, other: &mut Client) -> Result<SessionFixture, String> {
    c.set_parameter("work_mem", "7MB")
        .await
        .check("set work_mem")?;
    c.set_parameter("wpc.marker", "kept; 'quoted'")
        .await
        .check("set custom")?;
    c.set_parameter("WORK_MEM", "9MB")
        .await
        .check("set again")?;
    c.listen(CHANNEL).await.check("listen")?;
    let statement = c
        .prepare("SELECT $1::int + 1 AS next")
        .await
        .check("prepare")?;
    c.batch_execute("CREATE TEMP TABLE session_temp (a int)")
        .await
        .check("temp table")?;
    let temp_statement = c
        .prepare("SELECT a FROM session_temp")
        .await
        .check("prepare on temp table")?;
    // A cached statement, for the cache to be emptied.
    c.query("SELECT 'cached'", &[]).await.check("cached")?;
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    c.set_notice_handler(move |notice| {
        if let Ok(mut notices) = sink.lock() {
            notices.push(notice.message().to_string());
        }
    });
    // Received before the break, taken after the rebuild.
    other
        .notify(CHANNEL, "before the break")
        .await
        .check("notify")?;
    c.query("SELECT pg_sleep(0.05)", &[])
        .await
        .check("receive")?;
    Ok(SessionFixture {
        statement,
        temp_statement,
        notices,
    })
}

/// Checks, right after the call that failed on the break, that the next calls rebuild the session.
async fn check_rebuilt(
    c: &mut Client,
    other: &mut Client,
    fixture: &SessionFixture,
    old_pid: i32,
    rebuilds: u64,
) -> Outcome {
    ensure!(c.is_closed(), "not closed after the failed call");
    ensure_eq!(setting(c, "work_mem").await?, "9MB");
    ensure_eq!(c.session_rebuilds(), rebuilds);
    // The statement cache started empty: at most the query just run is in it (not even that one when it
    // was taken from the cache before the rebuild emptied it; its live handle was restored instead).
    ensure!(
        c.cached_statements() <= 1,
        "{} cached statements after the rebuild",
        c.cached_statements()
    );
    let pid = c.backend_pid().ok_or("pid")?;
    ensure!(pid != old_pid, "same backend after the rebuild");
    ensure!(!c.is_closed(), "closed after the rebuild");
    ensure_eq!(setting(c, "wpc.marker").await?, "kept; 'quoted'");
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    // On the server: the restored statement and those of the queries run since, nothing else.
    let prepared: Vec<String> = c
        .query(
            "SELECT statement FROM pg_prepared_statements ORDER BY statement",
            &[],
        )
        .await
        .check("pg_prepared_statements")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure_eq!(
        prepared,
        vec![
            "SELECT $1::int + 1 AS next",
            "SELECT current_setting($1)",
            "SELECT statement FROM pg_prepared_statements ORDER BY statement",
        ]
    );

    // The old handle works; the one whose table died with the session does not.
    let next: i32 = c
        .query_one(&fixture.statement, &[&41i32])
        .await
        .check("old statement")?
        .get("next");
    ensure_eq!(next, 42);
    let err = c
        .query(&fixture.temp_statement, &[])
        .await
        .err()
        .ok_or("the temporary table's statement still ran")?;
    ensure_eq!(err.code(), Some(sqlstate::INVALID_SQL_STATEMENT_NAME));
    ensure!(!err.is_connection_broken(), "{err}");

    // The notification received before the break is still there; LISTEN works again.
    let kept: Vec<String> = c
        .take_notifications()
        .iter()
        .map(|n| n.payload().to_string())
        .collect();
    ensure_eq!(kept, vec!["before the break".to_string()]);
    let channels: Vec<String> = c
        .query("SELECT pg_listening_channels()", &[])
        .await
        .check("channels")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure_eq!(channels, vec![CHANNEL.to_string()]);
    other.notify(CHANNEL, "after").await.check("notify")?;
    let n = c
        .wait_for_notification(NOTIFY_WAIT)
        .await
        .check("wait")?
        .ok_or("no notification after the rebuild")?;
    ensure_eq!(n.payload(), "after");

    // The notice handler moved to the new connection.
    c.batch_execute("DO $$ BEGIN RAISE NOTICE 'rebuilt %', 1; END $$")
        .await
        .check("notice")?;
    let notices = fixture
        .notices
        .lock()
        .map(|n| n.clone())
        .unwrap_or_default();
    ensure_eq!(notices.last().map(String::as_str), Some("rebuilt 1"));
    ensure!(
        c.take_notices().is_empty(),
        "notice kept despite the handler"
    );
    Ok(())
}

async fn session_rebuild_after_termination(env: &Env) -> Outcome {
    let mut c = rebuilding_client(&env.trust).await?;
    let mut other = connect(&env.trust).await?;
    let fixture = set_up_session(&mut c, &mut other).await?;
    let old_pid = c.backend_pid().ok_or("pid")?;
    terminate(&mut other, old_pid).await?;

    // The first call after the termination fails; the next one rebuilds.
    let err = query_on_terminated_backend(&mut c).await?;
    ensure!(
        err.code() == Some(sqlstate::ADMIN_SHUTDOWN) || err.kind() == ErrorKind::Io,
        "unexpected error {err:?}"
    );
    check_rebuilt(&mut c, &mut other, &fixture, old_pid, 1).await?;

    // A notification stream survives a break too: the error, then the stream rebuilds and goes on.
    let pid = c.backend_pid().ok_or("pid")?;
    terminate(&mut other, pid).await?;
    let mut stream = c.notifications();
    match stream.next().await {
        Some(Err(e)) if e.is_connection_broken() => {}
        unexpected => return Err(format!("expected a broken connection, got {unexpected:?}")),
    }
    // Rebuilds, then waits for a notification that does not come.
    ensure!(
        with_timeout(Duration::from_secs(3), stream.next())
            .await
            .is_none(),
        "the stream yielded after the rebuild with nothing sent"
    );
    drop(stream);
    ensure_eq!(c.session_rebuilds(), 2);
    other
        .notify(CHANNEL, "to the stream")
        .await
        .check("notify")?;
    let mut stream = c.notifications();
    let n = next_within(&mut stream, "after the stream's rebuild").await?;
    ensure_eq!(n.payload(), "to the stream");
    Ok(())
}

/// The first call after the client's backend was terminated: it must fail with the connection broken.
async fn query_on_terminated_backend(c: &mut Client) -> Result<wasi_pg_client::Error, String> {
    let err = c
        .query_one("SELECT 1", &[])
        .await
        .err()
        .ok_or("a query on a terminated backend succeeded")?;
    ensure!(err.is_connection_broken(), "not broken: {err}");
    Ok(err)
}

/// A token taken before the backend was terminated cancels a query on the rebuilt session (57014), and the
/// rebuilt session goes on.
async fn cancel_token_follows_a_rebuilt_session(env: &Env) -> Outcome {
    let mut c = rebuilding_client(&env.trust).await?;
    let mut other = connect(&env.trust).await?;
    let token = c.cancel_token();
    let old_pid = c.backend_pid().ok_or("pid")?;
    terminate(&mut other, old_pid).await?;
    query_on_terminated_backend(&mut c).await?;
    // This call rebuilds.
    c.query_one("SELECT 1", &[]).await.check("rebuild")?;
    ensure_eq!(c.session_rebuilds(), 1);
    let pid = c.backend_pid().ok_or("pid")?;
    ensure!(pid != old_pid, "same backend after the rebuild");

    let (query, cancel) = join(c.query("SELECT pg_sleep(30)", &[]), async {
        until_sleeping(&mut other, pid).await?;
        token
            .cancel_query()
            .await
            .check("cancel with the old token")
    })
    .await;
    cancel?;
    let err = query.err().ok_or("pg_sleep(30) was not cancelled")?;
    ensure_eq!(err.code(), Some(sqlstate::QUERY_CANCELED));
    ensure!(!c.is_closed(), "the cancel closed the connection");
    ensure_eq!(c.session_rebuilds(), 1);
    let v: i32 = c
        .query_one("SELECT $1::int4 + 1", &[&41i32])
        .await
        .check("after the cancel")?
        .get(0);
    ensure_eq!(v, 42);
    Ok(())
}

async fn session_rebuild_never_inside_a_transaction(env: &Env) -> Outcome {
    let mut other = connect(&env.trust).await?;
    other
        .batch_execute("DROP TABLE IF EXISTS session_tx; CREATE TABLE session_tx (v int)")
        .await
        .check("table")?;
    let mut c = rebuilding_client(&env.trust).await?;
    c.set_parameter("work_mem", "5MB").await.check("set")?;

    // A Transaction open at the break: its work is lost, and the call after the failing one says so.
    let pid = c.backend_pid().ok_or("pid")?;
    {
        let tx = c.transaction().await.check("begin")?;
        tx.execute("INSERT INTO session_tx VALUES (1)", &[])
            .await
            .check("insert")?;
        terminate(&mut other, pid).await?;
        let err = tx
            .execute("INSERT INTO session_tx VALUES (2)", &[])
            .await
            .err()
            .ok_or("insert on a terminated backend succeeded")?;
        ensure!(err.is_connection_broken(), "not broken: {err}");
        // The transaction is dropped here, as `?` would drop it.
    }
    let lost = c
        .query_one("SELECT 1", &[])
        .await
        .err()
        .ok_or("rebuilt silently after a transaction was lost")?;
    ensure!(lost.is_connection_broken(), "not broken: {lost}");
    ensure!(
        lost.to_string().contains("transaction"),
        "unclear error: {lost}"
    );
    ensure!(c.is_closed(), "reconnected on the transaction error");
    rebuilt_without_the_transaction(&mut c, 0, "a Transaction open at the break").await?;

    // A Transaction kept alive after the break never runs on a rebuilt session: every call through it fails,
    // its commit too, and only after it is dropped does the client connect again.
    let pid = c.backend_pid().ok_or("pid")?;
    {
        let tx = c.transaction().await.check("begin kept")?;
        tx.execute("INSERT INTO session_tx VALUES (4)", &[])
            .await
            .check("insert kept")?;
        terminate(&mut other, pid).await?;
        for attempt in 0..3 {
            let err = tx
                .execute("INSERT INTO session_tx VALUES (5)", &[])
                .await
                .err()
                .ok_or_else(|| format!("call {attempt} through a lost transaction succeeded"))?;
            ensure!(err.is_connection_broken(), "not broken: {err}");
        }
        ensure!(
            tx.commit().await.is_err(),
            "commit of a lost transaction succeeded"
        );
    }
    rebuilt_without_the_transaction(&mut c, 1, "a Transaction kept after the break").await?;

    // A transaction block begun with SQL, the client's status says so: the same.
    c.batch_execute("BEGIN; INSERT INTO session_tx VALUES (3)")
        .await
        .check("begin")?;
    ensure_eq!(c.transaction_status(), TransactionStatus::InTransaction);
    let pid = c.backend_pid().ok_or("pid")?;
    terminate(&mut other, pid).await?;
    ensure!(
        c.batch_execute("COMMIT").await.is_err(),
        "COMMIT on a terminated backend succeeded"
    );
    let lost = c
        .batch_execute("COMMIT")
        .await
        .err()
        .ok_or("rebuilt silently inside a transaction block")?;
    ensure!(
        lost.to_string().contains("transaction"),
        "unclear error: {lost}"
    );
    rebuilt_without_the_transaction(&mut c, 2, "a transaction block").await?;
    other
        .batch_execute("DROP TABLE session_tx")
        .await
        .check("drop")?;
    Ok(())
}

/// After `what` was lost at a break: rebuild number `rebuilds + 1` comes with the next call, the setting made
/// before the break survives it, and nothing the transaction wrote to `session_tx` is there.
async fn rebuilt_without_the_transaction(c: &mut Client, rebuilds: u64, what: &str) -> Outcome {
    async {
        ensure_eq!(c.session_rebuilds(), rebuilds);
        ensure_eq!(setting(c, "work_mem").await?, "5MB");
        ensure_eq!(c.session_rebuilds(), rebuilds + 1);
        let count: i64 = c
            .query_one("SELECT count(*) FROM session_tx", &[])
            .await
            .check("count")?
            .get(0);
        ensure_eq!(count, 0);
        Ok(())
    }
    .await
    .map_err(|e: String| format!("{what}: {e}"))
}

async fn set_parameter_outside_transactions_only(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.set_parameter("application_name", "session scenario")
        .await
        .check("set")?;
    ensure_eq!(
        c.parameter("application_name").as_deref(),
        Some("session scenario")
    );
    let mut tx = c.transaction().await.check("begin")?;
    let err = tx
        .set_parameter("work_mem", "3MB")
        .await
        .err()
        .ok_or("set_parameter ran inside a transaction")?;
    ensure_eq!(err.kind(), ErrorKind::Unsupported);
    tx.query_one("SELECT 1", &[])
        .await
        .check("tx still usable")?;
    tx.rollback().await.check("rollback")?;
    // Without session rebuild a terminated session stays closed.
    let mut other = connect(&env.trust).await?;
    let pid = c.backend_pid().ok_or("pid")?;
    terminate(&mut other, pid).await?;
    ensure!(c.query("SELECT 1", &[]).await.is_err(), "query succeeded");
    ensure!(
        c.query("SELECT 1", &[]).await.is_err(),
        "rebuilt without session_rebuild"
    );
    ensure_eq!(c.session_rebuilds(), 0);
    Ok(())
}

/// A TCP proxy in front of the server whose connections the scenario can cut: with a reset (SO_LINGER 0) for
/// connections accepted while `reset` is set, else with an ordinary close.
#[cfg(not(target_os = "wasi"))]
struct Proxy {
    port: u16,
    reset: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

#[cfg(not(target_os = "wasi"))]
impl Proxy {
    async fn start(host: &str, port: u16) -> Result<Proxy, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .check("bind the proxy")?;
        let local = listener.local_addr().check("proxy address")?.port();
        let reset = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links = Arc::new(Mutex::new(Vec::new()));
        let upstream = format!("{host}:{port}");
        let (accept_reset, accept_links) = (reset.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if accept_reset.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = inbound.set_zero_linger();
                }
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut links) = accept_links.lock() {
                    links.push(link.abort_handle());
                }
            }
        });
        Ok(Proxy {
            port: local,
            reset,
            links,
            accept,
        })
    }

    /// Cuts every connection made so far and gives the runtime time to close the sockets.
    async fn cut(&self) {
        if let Ok(mut links) = self.links.lock() {
            links.drain(..).for_each(|link| link.abort());
        }
        super::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(not(target_os = "wasi"))]
impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut links) = self.links.lock() {
            links.drain(..).for_each(|link| link.abort());
        }
    }
}

/// The kind of the I/O error under `err`.
#[cfg(not(target_os = "wasi"))]
fn io_error_kind(err: &wasi_pg_client::Error) -> Option<std::io::ErrorKind> {
    std::error::Error::source(err)?
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind)
}

/// Natively only (the proxy needs a listening socket): a connection reset (ECONNRESET) and an ordinary close
/// (end of stream) are rebuilt like a termination.
#[cfg(not(target_os = "wasi"))]
async fn session_rebuild_after_reset_and_eof(env: &Env) -> Outcome {
    let proxy = Proxy::start(&env.host, env.port).await?;
    let conninfo = format!(
        "host={} port={} user=pgc_trust dbname=postgres",
        env.host, proxy.port
    );
    let mut c = rebuilding_client(&conninfo).await?;
    // Connections accepted from now on (the rebuilt ones) close normally.
    proxy
        .reset
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let mut other = connect(&env.trust).await?;
    let fixture = set_up_session(&mut c, &mut other).await?;

    let old_pid = c.backend_pid().ok_or("pid")?;
    proxy.cut().await;
    let err = c
        .query_one("SELECT 1", &[])
        .await
        .err()
        .ok_or("a query over a reset connection succeeded")?;
    ensure_eq!(err.kind(), ErrorKind::Io);
    ensure!(err.is_connection_broken(), "not broken: {err}");
    ensure!(
        matches!(
            io_error_kind(&err),
            Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
        ),
        "not a reset: {err}"
    );
    check_rebuilt(&mut c, &mut other, &fixture, old_pid, 1).await?;

    let old_pid = c.backend_pid().ok_or("pid")?;
    other
        .notify(CHANNEL, "before the break")
        .await
        .check("notify")?;
    c.query("SELECT pg_sleep(0.05)", &[])
        .await
        .check("receive")?;
    proxy.cut().await;
    let err = c
        .query_one("SELECT 1", &[])
        .await
        .err()
        .ok_or("a query over a closed connection succeeded")?;
    ensure_eq!(err.kind(), ErrorKind::Io);
    ensure!(
        matches!(
            io_error_kind(&err),
            Some(std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset)
        ),
        "not an end of stream: {err}"
    );
    check_rebuilt(&mut c, &mut other, &fixture, old_pid, 2).await
}
