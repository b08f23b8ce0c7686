//! Replication faults against the live cluster: the walsender killed while the application is in the middle
//! of a transaction, and again in the middle of a streamed transaction's blocks; each time the stream fails
//! (never ends quietly), the application drops what it had not seen committed, resumes from the position it
//! acknowledged, and in the end holds every committed change exactly once and nothing rolled back.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use wasi_pg_client::Client;
use wasi_pg_client::replication::{
    LogicalMessage, LogicalReplicationStream, Lsn, PgOutputOptions, SlotKind, Streaming,
};

use super::{Check, Env, Outcome, Scenario, connect};
use crate::two_target::{THIS_TARGET, sleep};

pub(super) fn scenarios() -> Vec<(&'static str, Scenario)> {
    scenarios![walsender_killed_mid_transaction_and_mid_stream_resumes_losslessly]
}

/// Rows of each large transaction: megabytes of changes, more than the sockets buffer, so a walsender killed
/// after its first row has not sent the commit.
const LARGE: i32 = 60_000;

/// The committed transactions, in commit order: (first id, last id).
fn committed() -> Vec<(i32, i32)> {
    vec![
        (1, 10),
        (100_001, 100_000 + LARGE),
        (11, 20),
        (200_001, 200_000 + LARGE),
        (21, 30),
    ]
}

/// A rolled-back transaction between them, whose rows must never reach the application.
const ROLLED_BACK: (i32, i32) = (900, 910);

/// What the application has applied, and what it holds of transactions not yet committed.
#[derive(Default)]
struct Applied {
    /// Every id applied, with how many times.
    ids: BTreeMap<i32, u32>,
    /// Rows of the transaction being read (Begin..Commit), applied at its Commit.
    pending: Vec<i32>,
    /// Rows of streamed transactions by xid, applied at their Stream Commit.
    streamed: HashMap<u32, Vec<i32>>,
    /// The end of the last transaction applied: what the application acknowledges and resumes from.
    position: Lsn,
}

impl Applied {
    fn commit(&mut self, ids: Vec<i32>, end: Lsn) {
        for id in ids {
            *self.ids.entry(id).or_default() += 1;
        }
        self.position = self.position.max(end);
    }

    /// A connection lost: what was not committed is gone (the server sends it again).
    fn forget_uncommitted(&mut self) {
        self.pending.clear();
        self.streamed.clear();
    }
}

/// Where a session kills its walsender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// After the first row of a large transaction sent whole (streaming off).
    MidTransaction,
    /// After the first row of a large transaction's stream block (streaming on).
    MidStream,
    /// Never: read until the last transaction is applied.
    Never,
}

async fn walsender_killed_mid_transaction_and_mid_stream_resumes_losslessly(env: &Env) -> Outcome {
    let target = if THIS_TARGET == "native" { "n" } else { "w" };
    let table = format!("cdc_kill_{target}");
    let slot = format!("cdc_kill_slot_{target}");
    let sql = connect(&format!(
        "host={} port={} user=postgres dbname=postgres",
        env.host, env.port
    ))
    .await?;
    sql.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {table}_pub; DROP TABLE IF EXISTS {table}; \
         CREATE TABLE {table} (id int PRIMARY KEY, name text); \
         CREATE PUBLICATION {table}_pub FOR TABLE {table}"
    ))
    .await
    .check("table and publication")?;
    let repl_conninfo = format!(
        "host={} port={} user=postgres dbname=postgres replication=database \
         application_name={slot} options='-c logical_decoding_work_mem=64kB'",
        env.host, env.port
    );
    {
        let repl = connect(&repl_conninfo).await?;
        let _ = repl.drop_replication_slot(&slot, false).await;
        repl.create_replication_slot(&slot, false, &SlotKind::pgoutput())
            .await
            .check("create slot")?;
    }
    let mut transactions = committed();
    transactions.insert(3, ROLLED_BACK);
    for (first, last) in transactions {
        let end = if (first, last) == ROLLED_BACK {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        sql.batch_execute(&format!(
            "BEGIN; INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series({first}, {last}) g; {end}"
        ))
        .await
        .check("workload")?;
    }

    let mut applied = Applied::default();
    for kill in [Kill::MidTransaction, Kill::MidStream, Kill::Never] {
        let mut repl = connect(&repl_conninfo).await?;
        let mut options = PgOutputOptions::new([format!("{table}_pub")]);
        if kill != Kill::MidTransaction {
            options.proto_version = 2;
            options.streaming = Streaming::On;
        }
        // Resumed from the application's own position: nothing committed before it comes again.
        let mut stream = start_when_free(&mut repl, &slot, applied.position, &options).await?;
        read_session(&mut stream, &mut applied, kill, &sql, &slot).await?;
        if kill == Kill::Never {
            // Not killed: the stream stops cleanly, the last position acknowledged.
            stream.stop().await.check("stop")?;
        }
        applied.forget_uncommitted();
    }

    // Every committed row exactly once, nothing of the rolled-back transaction.
    let mut missing = 0;
    for (first, last) in committed() {
        for id in first..=last {
            match applied.ids.get(&id) {
                Some(1) => {}
                Some(n) => return Err(format!("row {id} applied {n} times")),
                None => missing += 1,
            }
        }
    }
    ensure!(missing == 0, "{missing} committed rows never applied");
    let expected: usize = committed()
        .iter()
        .map(|(first, last)| (last - first + 1) as usize)
        .sum();
    ensure_eq!(applied.ids.len(), expected);
    let (first, last) = ROLLED_BACK;
    ensure!(
        !applied.ids.keys().any(|id| (first..=last).contains(id)),
        "rows of the rolled-back transaction were applied"
    );

    let repl = connect(&repl_conninfo).await?;
    drop_when_free(&repl, &slot).await?;
    let _ = sql
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {table}_pub; DROP TABLE IF EXISTS {table}"
        ))
        .await;
    Ok(())
}

/// Reads one session. With a kill planned, the walsender is terminated at that point and the stream must then
/// fail, before the large transaction's commit arrives; without one, it reads until the last transaction.
async fn read_session(
    stream: &mut LogicalReplicationStream<'_>,
    applied: &mut Applied,
    kill: Kill,
    sql: &Client,
    slot: &str,
) -> Outcome {
    let last_id = committed().last().map_or(0, |&(_, last)| last);
    let started = Instant::now();
    let mut killed_in: Option<u32> = None;
    let mut killed_at_begin: Option<u64> = None;
    let mut current_begin = 0u64;
    let mut in_stream = false;
    loop {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "{kill:?}: the session did not finish in 120 s ({} rows applied)",
                applied.ids.len()
            ));
        }
        let event = match stream.next().await {
            Ok(Some(event)) => event,
            Ok(None) => return Err(format!("{kill:?}: the stream ended quietly")),
            Err(e) if killed_in.is_some() || killed_at_begin.is_some() => {
                ensure!(
                    e.is_connection_broken() || e.code() == Some("57P01"),
                    "{kill:?}: the kill surfaced as {e}"
                );
                return Ok(());
            }
            Err(e) => return Err(format!("{kill:?}: the stream failed unprompted: {e}")),
        };
        match event.message {
            LogicalMessage::Begin(begin) => {
                current_begin = begin.final_lsn.0;
                applied.pending.clear();
            }
            LogicalMessage::Insert(insert) => {
                let row = stream.row(insert.relation, &insert.new).check("row")?;
                let id: i32 = row.get("id").check("id")?;
                let streamed = insert.xid;
                match streamed {
                    Some(xid) => applied.streamed.entry(xid).or_default().push(id),
                    None => applied.pending.push(id),
                }
                let large = id > 100_000;
                if large && killed_in.is_none() && killed_at_begin.is_none() {
                    match (kill, streamed) {
                        (Kill::MidTransaction, None) => {
                            killed_at_begin = Some(current_begin);
                            terminate_walsender(sql, slot).await?;
                        }
                        (Kill::MidStream, Some(xid)) if in_stream => {
                            killed_in = Some(xid);
                            terminate_walsender(sql, slot).await?;
                        }
                        _ => {}
                    }
                }
            }
            LogicalMessage::Commit(commit) => {
                if killed_at_begin == Some(commit.commit_lsn.0) {
                    return Err(format!(
                        "{kill:?}: the killed transaction's commit arrived; it was not killed mid-transaction"
                    ));
                }
                let ids = std::mem::take(&mut applied.pending);
                applied.commit(ids, commit.end_lsn);
                stream.acknowledge(commit.end_lsn);
                if kill == Kill::Never && applied.ids.contains_key(&last_id) {
                    return Ok(());
                }
            }
            LogicalMessage::StreamStart { .. } => in_stream = true,
            LogicalMessage::StreamStop => in_stream = false,
            LogicalMessage::StreamAbort(abort) if abort.xid == abort.subxid => {
                applied.streamed.remove(&abort.xid);
            }
            LogicalMessage::StreamCommit(commit) => {
                if killed_in == Some(commit.xid) {
                    return Err(format!(
                        "{kill:?}: the killed stream's commit arrived; it was not killed mid-stream"
                    ));
                }
                let ids = applied.streamed.remove(&commit.xid).unwrap_or_default();
                applied.commit(ids, commit.end_lsn);
                stream.acknowledge(commit.end_lsn);
                if kill == Kill::Never && applied.ids.contains_key(&last_id) {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
}

/// Terminates the walsender streaming from `slot`.
async fn terminate_walsender(sql: &Client, slot: &str) -> Outcome {
    let rows = sql
        .query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&slot],
        )
        .await
        .check("pg_terminate_backend")?;
    ensure_eq!(rows.len(), 1);
    Ok(())
}

/// Starts the stream, waiting while the slot is still held by a walsender that is going away.
async fn start_when_free<'c>(
    repl: &'c mut Client,
    slot: &str,
    position: Lsn,
    options: &PgOutputOptions,
) -> Result<LogicalReplicationStream<'c>, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Checked first, so the stream is started once and borrowed from `repl` only on success.
        if slot_active(repl, slot).await? && Instant::now() < deadline {
            sleep(Duration::from_millis(100)).await;
            continue;
        }
        return repl
            .start_logical_replication(slot, position, options)
            .await
            .map_err(|e| format!("resume from {position}: {e}"));
    }
}

/// Whether a walsender still holds `slot` (through the replication connection's SQL).
async fn slot_active(repl: &Client, slot: &str) -> Result<bool, String> {
    let rows = repl
        .simple_query(&format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await
        .check("pg_replication_slots")?;
    Ok(rows.iter().any(|m| match m {
        wasi_pg_client::SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
        _ => false,
    }))
}

async fn drop_when_free(repl: &Client, slot: &str) -> Outcome {
    repl.drop_replication_slot(slot, true)
        .await
        .check("drop slot")
}
