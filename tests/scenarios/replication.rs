//! Replication scenarios against the live cluster (which runs with `wal_level = logical`): replication commands,
//! a pgoutput stream of every kind of change checked value by value, streamed large transactions, two-phase
//! commits, resuming from the acknowledged position with nothing lost or repeated, the errors for a missing
//! slot and a slot in use, a slow reader kept alive under a short `wal_sender_timeout`, and physical streaming.
//!
//! Each scenario uses its own tables, publication and slot (named after the target, as both targets share the
//! cluster), and drops what it made.

use std::time::Duration;

use wasi_pg_client::replication::{
    LogicalEvent, LogicalMessage, LogicalReplicationStream, Lsn, OldTuple, PgOutputOptions,
    ServerMessage, SlotKind, Streaming, TupleValue,
};
use wasi_pg_client::{Client, ErrorKind};

use super::{Check, Env, Outcome, Scenario, connect};
use crate::two_target::{THIS_TARGET, sleep, with_timeout};

pub(super) fn scenarios() -> Vec<(&'static str, Scenario)> {
    scenarios![
        replication_commands,
        logical_stream_of_every_change,
        logical_text_values_whatever_the_session_defaults,
        logical_stream_resumes_without_loss_or_repeats,
        logical_stream_of_large_streamed_transactions,
        logical_stream_of_two_phase_commits,
        logical_slot_missing_or_in_use,
        slow_reader_survives_a_short_sender_timeout,
        physical_stream,
    ]
}

/// A name unique to this target and scenario, for slots, tables and publications.
fn unique(base: &str) -> String {
    let target = if THIS_TARGET == "native" { "n" } else { "w" };
    format!("{base}_{target}")
}

/// The superuser over TCP, as an ordinary or a replication connection (`extra` adds keywords).
async fn postgres(env: &Env, extra: &str) -> Result<Client, String> {
    connect(&format!(
        "host={} port={} user=postgres dbname=postgres {extra}",
        env.host, env.port
    ))
    .await
}

/// Makes `table (id int primary key, name text, note text)` with a publication for it.
async fn table_and_publication(sql: &Client, table: &str) -> Outcome {
    sql.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {table}_pub; DROP TABLE IF EXISTS {table}; \
         CREATE TABLE {table} (id int PRIMARY KEY, name text, note text); \
         CREATE PUBLICATION {table}_pub FOR TABLE {table}"
    ))
    .await
    .check("table and publication")?;
    Ok(())
}

async fn drop_table_and_publication(sql: &Client, table: &str) {
    let _ = sql
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {table}_pub; DROP TABLE IF EXISTS {table}"
        ))
        .await;
}

/// Starts streaming `table`'s publication from `slot`'s confirmed position, with the default options.
async fn stream_of<'c>(
    repl: &'c mut Client,
    slot: &str,
    table: &str,
) -> Result<LogicalReplicationStream<'c>, String> {
    let options = PgOutputOptions::new([format!("{table}_pub")]);
    repl.start_logical_replication(slot, Lsn(0), &options)
        .await
        .check("start")
}

/// Reads events until the `commits`-th Commit (or StreamCommit / CommitPrepared), within 30 s.
async fn until_commits(
    stream: &mut LogicalReplicationStream<'_>,
    commits: usize,
) -> Result<Vec<LogicalEvent>, String> {
    let mut events = Vec::new();
    let mut seen = 0;
    let started = std::time::Instant::now();
    while seen < commits {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "only {seen} of {commits} commits in 30 s: {events:?}"
            ));
        }
        let event = stream
            .next()
            .await
            .check("next")?
            .ok_or("the stream ended early")?;
        if matches!(
            event.message,
            LogicalMessage::Commit(_)
                | LogicalMessage::StreamCommit(_)
                | LogicalMessage::CommitPrepared(_)
                | LogicalMessage::RollbackPrepared(_)
        ) {
            seen += 1;
        }
        events.push(event);
    }
    Ok(events)
}

/// IDENTIFY_SYSTEM, CREATE/READ/DROP_REPLICATION_SLOT on a logical replication connection.
async fn replication_commands(env: &Env) -> Outcome {
    let repl = postgres(env, "replication=database").await?;
    let system = repl.identify_system().await.check("IDENTIFY_SYSTEM")?;
    ensure!(!system.system_id.is_empty(), "no system id");
    ensure!(system.timeline >= 1, "timeline {}", system.timeline);
    ensure!(system.xlogpos > Lsn(0), "xlogpos {}", system.xlogpos);
    ensure_eq!(system.dbname.as_deref(), Some("postgres"));

    let slot = unique("cmd_slot");
    let created = repl
        .create_replication_slot(&slot, false, &SlotKind::pgoutput())
        .await
        .check("CREATE_REPLICATION_SLOT")?;
    ensure_eq!(created.slot_name, slot);
    ensure_eq!(created.output_plugin.as_deref(), Some("pgoutput"));
    ensure!(
        created.consistent_point > Lsn(0),
        "consistent point {}",
        created.consistent_point
    );
    // READ_REPLICATION_SLOT reads physical slots only: a logical one is refused by the server.
    let logical = repl
        .read_replication_slot(&slot)
        .await
        .err()
        .ok_or("READ_REPLICATION_SLOT of a logical slot")?;
    ensure_eq!(logical.kind(), ErrorKind::Db);
    repl.drop_replication_slot(&slot, false)
        .await
        .check("DROP_REPLICATION_SLOT")?;
    ensure!(
        repl.read_replication_slot(&slot)
            .await
            .check("read after drop")?
            .is_none(),
        "the dropped slot is still there"
    );
    // Bad names are refused before anything is sent.
    let bad = repl.drop_replication_slot("Bad Name; DROP", false).await;
    ensure_eq!(bad.err().map(|e| e.kind()), Some(ErrorKind::Config));
    Ok(())
}

/// Insert, update (key change and not), delete, truncate and a logical message, each checked value by value,
/// with NULL and an unchanged TOASTed value told apart.
async fn logical_stream_of_every_change(env: &Env) -> Outcome {
    let table = unique("cdc_all");
    let sql = postgres(env, "").await?;
    table_and_publication(&sql, &table).await?;
    let mut repl = postgres(env, "replication=database").await?;
    let slot = unique("cdc_all_slot");
    repl.create_replication_slot(&slot, true, &SlotKind::pgoutput())
        .await
        .check("create slot")?;
    sql.batch_execute(&format!(
        "ALTER TABLE {table} ALTER COLUMN note SET STORAGE EXTERNAL"
    ))
    .await
    .check("external storage")?;
    // Each statement its own transaction: six commits, then a message outside any transaction. The note of
    // row 2 is 100 kB stored out of line (TOASTed, uncompressed).
    for statement in [
        format!("INSERT INTO {table} VALUES (1, 'one', NULL), (2, 'two', repeat('x', 100000))"),
        format!("UPDATE {table} SET name = 'uno' WHERE id = 1"),
        format!("UPDATE {table} SET name = 'dos' WHERE id = 2"),
        format!("UPDATE {table} SET id = 10 WHERE id = 1"),
        format!("DELETE FROM {table} WHERE id = 10"),
        format!("TRUNCATE {table}"),
        "SELECT pg_logical_emit_message(false, 'wpc', 'hello')".to_string(),
    ] {
        sql.batch_execute(&statement).await.check(&statement)?;
    }
    let mut options = PgOutputOptions::new([format!("{table}_pub")]);
    options.messages = true;
    let mut stream = repl
        .start_logical_replication(&slot, Lsn(0), &options)
        .await
        .check("START_REPLICATION")?;
    let mut events = until_commits(&mut stream, 6).await?;
    while !events
        .iter()
        .any(|e| matches!(e.message, LogicalMessage::Message(_)))
    {
        let event = with_timeout(Duration::from_secs(10), stream.next())
            .await
            .ok_or("no logical message within 10 s")?
            .check("next")?
            .ok_or("ended")?;
        events.push(event);
    }
    let mut inserts = Vec::new();
    let mut updates = Vec::new();
    let mut deletes = Vec::new();
    let mut truncates = 0;
    let mut messages = Vec::new();
    for event in &events {
        match &event.message {
            LogicalMessage::Insert(insert) => {
                let row = stream.row(insert.relation, &insert.new).check("row")?;
                let id: i32 = row.get("id").check("id")?;
                let name: String = row.get("name").check("name")?;
                let note: Option<String> = row.get("note").check("note")?;
                inserts.push((id, name, note.map(|n| n.len())));
            }
            LogicalMessage::Update(update) => {
                let row = stream.row(update.relation, &update.new).check("row")?;
                let id: i32 = row.get("id").check("id")?;
                let name: String = row.get("name").check("name")?;
                let old_key = match &update.old {
                    None => None,
                    Some(OldTuple::Key(old)) => Some(
                        stream
                            .row(update.relation, old)
                            .check("old")?
                            .get::<i32>("id")
                            .check("old id")?,
                    ),
                    Some(OldTuple::Full(_)) => {
                        return Err("a full old row under REPLICA IDENTITY DEFAULT".into());
                    }
                };
                let note = row.value("note").ok_or("no note column")?.clone();
                updates.push((old_key, id, name, note));
            }
            LogicalMessage::Delete(delete) => {
                let OldTuple::Key(old) = &delete.old else {
                    return Err("a delete without its key".into());
                };
                let row = stream.row(delete.relation, old).check("deleted")?;
                deletes.push(row.get::<i32>("id").check("deleted id")?);
                // Only the key is sent: the other columns are NULL.
                ensure_eq!(
                    row.get::<Option<String>>("name").check("deleted name")?,
                    None
                );
            }
            LogicalMessage::Truncate(truncate) => {
                ensure_eq!(truncate.relations.len(), 1);
                truncates += 1;
            }
            LogicalMessage::Message(message) => {
                ensure!(!message.transactional, "the message was transactional");
                messages.push((message.prefix.clone(), message.content.to_vec()));
            }
            _ => {}
        }
    }
    ensure_eq!(
        inserts,
        vec![
            (1, "one".to_string(), None),
            (2, "two".to_string(), Some(100_000))
        ]
    );
    ensure_eq!(updates.len(), 3);
    ensure_eq!(
        (updates[0].0, updates[0].1, updates[0].2.as_str()),
        (None, 1, "uno")
    );
    ensure_eq!(updates[0].3, TupleValue::Null);
    // The untouched 100 kB note of row 2 was not sent again: unchanged TOAST, not NULL.
    ensure_eq!(
        (updates[1].0, updates[1].1, updates[1].2.as_str()),
        (None, 2, "dos")
    );
    ensure_eq!(updates[1].3, TupleValue::UnchangedToast);
    ensure!(
        stream
            .row(
                events
                    .iter()
                    .find_map(|e| match &e.message {
                        LogicalMessage::Update(u)
                            if u.new.0.get(2) == Some(&TupleValue::UnchangedToast) =>
                            Some(u.relation),
                        _ => None,
                    })
                    .ok_or("no update")?,
                &wasi_pg_client::replication::Tuple(vec![
                    TupleValue::Text("2".into()),
                    TupleValue::Text("dos".into()),
                    TupleValue::UnchangedToast
                ])
            )
            .check("row")?
            .get::<Option<String>>("note")
            .is_err(),
        "an unchanged TOAST value read as a value or NULL"
    );
    // A key change sends the old key.
    ensure_eq!((updates[2].0, updates[2].1), (Some(1), 10));
    ensure_eq!(deletes, vec![10]);
    ensure_eq!(truncates, 1);
    ensure_eq!(messages, vec![("wpc".to_string(), b"hello".to_vec())]);
    let last = events.last().map(|e| e.wal_start).unwrap_or_default();
    stream.acknowledge(last);
    stream.stop().await.check("stop")?;
    // The connection takes commands again after the stream.
    repl.drop_replication_slot(&slot, false)
        .await
        .check("drop slot")?;
    drop_table_and_publication(&sql, &table).await;
    Ok(())
}

/// The walsender writes text values with its session's settings: a replication connection whose `options` ask
/// for SQL dates, short floats, escaped bytea and SQL intervals still reads each value exactly, as the client
/// starts its logical replication sessions with ISO dates, exact floats, hex bytea and postgres intervals.
async fn logical_text_values_whatever_the_session_defaults(env: &Env) -> Outcome {
    let table = unique("cdc_text");
    let sql = postgres(env, "").await?;
    sql.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {table}_pub; DROP TABLE IF EXISTS {table}; \
         CREATE TABLE {table} (id int PRIMARY KEY, at timestamptz, d date, f float8, b bytea, iv interval); \
         CREATE PUBLICATION {table}_pub FOR TABLE {table}"
    ))
    .await
    .check("table and publication")?;
    let mut repl = postgres(
        env,
        "replication=database options='-c DateStyle=SQL,DMY -c extra_float_digits=-3 \
         -c bytea_output=escape -c IntervalStyle=sql_standard'",
    )
    .await?;
    let slot = unique("cdc_text_slot");
    repl.create_replication_slot(&slot, true, &SlotKind::pgoutput())
        .await
        .check("create slot")?;
    sql.batch_execute(&format!(
        "INSERT INTO {table} VALUES (1, '2024-02-29 12:34:56.789+00', '2024-02-29', \
         0.1::float8 + 0.2::float8, '\\x00ff', '1 day 02:03:04')"
    ))
    .await
    .check("insert")?;
    let mut stream = stream_of(&mut repl, &slot, &table).await?;
    let events = until_commits(&mut stream, 1).await?;
    let insert = events
        .iter()
        .find_map(|e| match &e.message {
            LogicalMessage::Insert(insert) => Some(insert),
            _ => None,
        })
        .ok_or("no insert")?;
    let row = stream.row(insert.relation, &insert.new).check("row")?;
    ensure_eq!(row.get::<f64>("f").check("f")?, 0.1f64 + 0.2f64);
    ensure_eq!(row.get::<Vec<u8>>("b").check("b")?, vec![0u8, 0xff]);
    ensure_eq!(row.get::<String>("d").check("d")?, "2024-02-29");
    ensure_eq!(row.get::<String>("iv").check("iv")?, "1 day 02:03:04");
    let at = row.get::<std::time::SystemTime>("at").check("at")?;
    let expected = std::time::UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
    ensure_eq!(at, expected);
    stream.stop().await.check("stop")?;
    drop_table_and_publication(&sql, &table).await;
    Ok(())
}

/// Two transactions; the first acknowledged, then the stream stops. Restarted from the slot, the stream
/// brings exactly the second: nothing lost, nothing committed twice past the acknowledged point. Also with the
/// stream dropped instead of stopped, and binary values.
async fn logical_stream_resumes_without_loss_or_repeats(env: &Env) -> Outcome {
    let table = unique("cdc_resume");
    let sql = postgres(env, "").await?;
    table_and_publication(&sql, &table).await?;
    let mut repl = postgres(env, "replication=database").await?;
    let slot = unique("cdc_resume_slot");
    let _ = repl.drop_replication_slot(&slot, false).await;
    repl.create_replication_slot(&slot, false, &SlotKind::pgoutput())
        .await
        .check("create slot")?;
    let ids = |events: &[LogicalEvent]| -> Vec<i32> {
        events
            .iter()
            .filter_map(|e| match &e.message {
                LogicalMessage::Insert(insert) => match insert.new.0.first() {
                    Some(TupleValue::Binary(v)) if v.len() == 4 => {
                        Some(i32::from_be_bytes([v[0], v[1], v[2], v[3]]))
                    }
                    Some(TupleValue::Text(v)) => std::str::from_utf8(v).ok()?.parse().ok(),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    };
    let mut options = PgOutputOptions::new([format!("{table}_pub")]);
    options.binary = true;
    sql.execute(&format!("INSERT INTO {table} VALUES (1, 'a', NULL)"), &[])
        .await
        .check("first")?;
    sql.execute(&format!("INSERT INTO {table} VALUES (2, 'b', NULL)"), &[])
        .await
        .check("second")?;
    let first_end;
    {
        let mut stream = repl
            .start_logical_replication(&slot, Lsn(0), &options)
            .await
            .check("start")?;
        let events = until_commits(&mut stream, 2).await?;
        ensure_eq!(ids(&events), vec![1, 2]);
        let LogicalMessage::Commit(commit) = events
            .iter()
            .find(|e| matches!(e.message, LogicalMessage::Commit(_)))
            .map(|e| &e.message)
            .ok_or("no commit")?
        else {
            return Err("no commit".into());
        };
        first_end = commit.end_lsn;
        stream.acknowledge(first_end);
        stream.stop().await.check("stop")?;
    }
    // PostgreSQL starts one stream per replication connection: a second one ends at once, clearly.
    let mut again = repl
        .start_logical_replication(&slot, Lsn(0), &options)
        .await
        .check("second start on one connection")?;
    let second = again
        .next()
        .await
        .err()
        .ok_or("a second stream on one connection streamed")?;
    ensure_eq!(second.kind(), ErrorKind::Unsupported);
    drop(again);
    // Resume from the slot's confirmed position on a new connection: only the second transaction comes again.
    sql.execute(&format!("INSERT INTO {table} VALUES (3, 'c', NULL)"), &[])
        .await
        .check("third")?;
    let mut repl = postgres(env, "replication=database").await?;
    {
        let mut stream = repl
            .start_logical_replication(&slot, Lsn(0), &options)
            .await
            .check("restart")?;
        let events = until_commits(&mut stream, 2).await?;
        ensure_eq!(ids(&events), vec![2, 3]);
        // Dropped without stop: the drop ends the stream and the next call reads it out.
        let last_commit = events
            .iter()
            .filter_map(|e| match &e.message {
                LogicalMessage::Commit(c) => Some(c.end_lsn),
                _ => None,
            })
            .next_back()
            .ok_or("no commit")?;
        stream.acknowledge(last_commit);
    }
    let system = repl
        .identify_system()
        .await
        .check("a command after a dropped stream")?;
    ensure!(system.xlogpos >= first_end, "xlogpos went back");
    // Everything was acknowledged: a third start sees nothing old (only what comes next).
    sql.execute(&format!("INSERT INTO {table} VALUES (4, 'd', NULL)"), &[])
        .await
        .check("fourth")?;
    let mut repl = postgres(env, "replication=database").await?;
    let mut stream = repl
        .start_logical_replication(&slot, Lsn(0), &options)
        .await
        .check("third start")?;
    let events = until_commits(&mut stream, 1).await?;
    ensure_eq!(ids(&events), vec![4]);
    stream.stop().await.check("stop")?;
    repl.drop_replication_slot(&slot, false)
        .await
        .check("drop slot")?;
    drop_table_and_publication(&sql, &table).await;
    Ok(())
}

/// A transaction larger than `logical_decoding_work_mem` with `streaming = on` comes in blocks (Stream Start,
/// changes with the xid, Stream Stop) and ends with Stream Commit; an aborted subtransaction inside it is
/// reported with Stream Abort.
async fn logical_stream_of_large_streamed_transactions(env: &Env) -> Outcome {
    let table = unique("cdc_stream");
    let sql = postgres(env, "").await?;
    table_and_publication(&sql, &table).await?;
    let mut repl = postgres(
        env,
        "replication=database options='-c logical_decoding_work_mem=64kB'",
    )
    .await?;
    let slot = unique("cdc_stream_slot");
    repl.create_replication_slot(&slot, true, &SlotKind::pgoutput())
        .await
        .check("create slot")?;
    sql.batch_execute(&format!(
        "BEGIN;
         INSERT INTO {table} SELECT g, 'row ' || g, NULL FROM generate_series(1, 5000) g;
         SAVEPOINT s;
         INSERT INTO {table} SELECT g, 'gone', NULL FROM generate_series(5001, 6000) g;
         ROLLBACK TO SAVEPOINT s;
         COMMIT;"
    ))
    .await
    .check("large transaction")?;
    let mut options = PgOutputOptions::new([format!("{table}_pub")]);
    options.proto_version = 2;
    options.streaming = Streaming::On;
    let mut stream = repl
        .start_logical_replication(&slot, Lsn(0), &options)
        .await
        .check("start")?;
    let events = until_commits(&mut stream, 1).await?;
    let mut blocks = 0;
    let mut aborts = 0;
    let mut inserted = std::collections::BTreeSet::new();
    let mut xids = std::collections::BTreeSet::new();
    for event in &events {
        match &event.message {
            LogicalMessage::StreamStart { .. } => blocks += 1,
            LogicalMessage::StreamAbort(_) => aborts += 1,
            LogicalMessage::Insert(insert) => {
                xids.insert(insert.xid.ok_or("a streamed insert without its xid")?);
                let row = stream.row(insert.relation, &insert.new).check("row")?;
                inserted.insert(row.get::<i32>("id").check("id")?);
            }
            _ => {}
        }
    }
    ensure!(blocks >= 2, "{blocks} stream blocks");
    ensure!(
        matches!(
            events.last().map(|e| &e.message),
            Some(LogicalMessage::StreamCommit(_))
        ),
        "the transaction did not end with Stream Commit"
    );
    // The rolled-back subtransaction's changes come with a Stream Abort of that subtransaction if they had
    // been streamed already, and not at all otherwise; the committed rows all come.
    ensure!(aborts <= 1, "{aborts} stream aborts");
    ensure!(
        (1..=5000).all(|id| inserted.contains(&id)),
        "rows of the transaction are missing"
    );
    stream.stop().await.check("stop")?;
    drop_table_and_publication(&sql, &table).await;
    Ok(())
}

/// PREPARE TRANSACTION with a two-phase slot and stream: Begin Prepare, the change, Prepare, then Commit
/// Prepared; and a prepared transaction rolled back.
async fn logical_stream_of_two_phase_commits(env: &Env) -> Outcome {
    let table = unique("cdc_2pc");
    let sql = postgres(env, "").await?;
    table_and_publication(&sql, &table).await?;
    let mut repl = postgres(env, "replication=database").await?;
    let slot = unique("cdc_2pc_slot");
    repl.create_replication_slot(
        &slot,
        true,
        &SlotKind::Logical {
            plugin: "pgoutput".into(),
            snapshot: Default::default(),
            two_phase: true,
        },
    )
    .await
    .check("create two-phase slot")?;
    let gid = unique("gid");
    // COMMIT/ROLLBACK PREPARED may not share a query string with other statements.
    for statement in [
        format!("BEGIN; INSERT INTO {table} VALUES (1, 'p', NULL); PREPARE TRANSACTION '{gid}_a'"),
        format!("COMMIT PREPARED '{gid}_a'"),
        format!("BEGIN; INSERT INTO {table} VALUES (2, 'q', NULL); PREPARE TRANSACTION '{gid}_b'"),
        format!("ROLLBACK PREPARED '{gid}_b'"),
    ] {
        sql.batch_execute(&statement).await.check(&statement)?;
    }
    let mut options = PgOutputOptions::new([format!("{table}_pub")]);
    options.proto_version = 3;
    options.two_phase = true;
    let mut stream = repl
        .start_logical_replication(&slot, Lsn(0), &options)
        .await
        .check("start")?;
    let events = until_commits(&mut stream, 2).await?;
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.message {
            LogicalMessage::BeginPrepare(_) => Some("begin prepare"),
            LogicalMessage::Prepare(p) => Some(if p.gid.ends_with("_a") {
                "prepare a"
            } else {
                "prepare b"
            }),
            LogicalMessage::CommitPrepared(_) => Some("commit prepared"),
            LogicalMessage::RollbackPrepared(_) => Some("rollback prepared"),
            LogicalMessage::Insert(_) => Some("insert"),
            _ => None,
        })
        .collect();
    ensure_eq!(
        kinds,
        vec![
            "begin prepare",
            "insert",
            "prepare a",
            "commit prepared",
            "begin prepare",
            "insert",
            "prepare b",
            "rollback prepared"
        ]
    );
    stream.stop().await.check("stop")?;
    drop_table_and_publication(&sql, &table).await;
    Ok(())
}

/// A missing slot, and a slot another session streams from: clear server errors, and the connection goes on.
async fn logical_slot_missing_or_in_use(env: &Env) -> Outcome {
    let table = unique("cdc_busy");
    let sql = postgres(env, "").await?;
    table_and_publication(&sql, &table).await?;
    let options = PgOutputOptions::new([format!("{table}_pub")]);
    let mut repl = postgres(env, "replication=database").await?;
    let missing = repl
        .start_logical_replication(&unique("no_such_slot"), Lsn(0), &options)
        .await
        .err()
        .ok_or("a missing slot streamed")?;
    ensure_eq!(missing.kind(), ErrorKind::Db);
    ensure!(missing.to_string().contains("does not exist"), "{missing}");
    let system = repl.identify_system().await.check("after the error")?;
    ensure!(
        system.xlogpos > Lsn(0),
        "IDENTIFY_SYSTEM after the error: {system:?}"
    );

    let slot = unique("cdc_busy_slot");
    repl.create_replication_slot(&slot, true, &SlotKind::pgoutput())
        .await
        .check("create slot")?;
    let stream = repl
        .start_logical_replication(&slot, Lsn(0), &options)
        .await
        .check("first stream")?;
    // A temporary slot belongs to its session; a second session sees it as in use or not its own.
    let mut other = postgres(env, "replication=database").await?;
    let busy = other
        .start_logical_replication(&slot, Lsn(0), &options)
        .await
        .err()
        .ok_or("a slot in use streamed twice")?;
    ensure_eq!(busy.kind(), ErrorKind::Db);
    stream.stop().await.check("stop")?;
    drop_table_and_publication(&sql, &table).await;
    Ok(())
}

/// `wal_sender_timeout = 2s` and an application that takes 300 ms per change over 5 s: the stream's status
/// updates keep the session alive; and acknowledging while idle lets the slot advance past WAL of tables
/// outside the publication.
async fn slow_reader_survives_a_short_sender_timeout(env: &Env) -> Outcome {
    let table = unique("cdc_slow");
    let sql = postgres(env, "").await?;
    table_and_publication(&sql, &table).await?;
    let mut repl = postgres(
        env,
        "replication=database options='-c wal_sender_timeout=2s'",
    )
    .await?;
    let slot = unique("cdc_slow_slot");
    let _ = repl.drop_replication_slot(&slot, false).await;
    repl.create_replication_slot(&slot, false, &SlotKind::pgoutput())
        .await
        .check("create slot")?;
    for id in 1..=16 {
        sql.execute(
            &format!("INSERT INTO {table} VALUES ({id}, 's', NULL)"),
            &[],
        )
        .await
        .check("insert")?;
    }
    let mut stream = stream_of(&mut repl, &slot, &table).await?;
    stream.set_status_interval(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let mut commits = 0;
    while commits < 16 {
        let event = stream
            .next()
            .await
            .check("next while slow")?
            .ok_or("ended")?;
        if let LogicalMessage::Commit(commit) = &event.message {
            commits += 1;
            stream.acknowledge(commit.end_lsn);
        }
        sleep(Duration::from_millis(300)).await;
    }
    let slow_for = started.elapsed();
    ensure!(
        slow_for > Duration::from_secs(4),
        "the reader was not slow: {slow_for:?}"
    );
    // Idle now: WAL of another table (not published) moves the server's end; keepalives come, and the
    // slot's confirmed position follows them.
    let elsewhere = unique("cdc_elsewhere");
    sql.batch_execute(&format!(
        "DROP TABLE IF EXISTS {elsewhere}; CREATE TABLE {elsewhere} AS SELECT generate_series(1, 1000) g"
    ))
    .await
    .check("other WAL")?;
    let target = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .check("wal lsn")?
        .get::<_, String>(0)
        .parse::<Lsn>()
        .check("lsn")?;
    let waited = std::time::Instant::now();
    while stream.acknowledged() < target {
        if waited.elapsed() > Duration::from_secs(15) {
            return Err(format!(
                "idle acknowledgement stuck at {} below {target}",
                stream.acknowledged()
            ));
        }
        // Ask for a keepalive; reading for a moment handles it (no data comes: nothing is published).
        stream.send_status(true).await.check("status")?;
        if let Some(event) = with_timeout(Duration::from_millis(300), stream.next()).await {
            return Err(format!("data while idle: {:?}", event.check("next")?));
        }
    }
    stream.send_status(false).await.check("final status")?;
    stream.stop().await.check("stop")?;
    let confirmed: String = sql
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .check("slot position")?
        .get(0);
    let confirmed: Lsn = confirmed.parse().check("confirmed")?;
    ensure!(
        confirmed >= target,
        "the slot stayed at {confirmed}, below {target}"
    );
    repl.drop_replication_slot(&slot, false)
        .await
        .check("drop slot")?;
    drop_table_and_publication(&sql, &table).await;
    let _ = sql
        .batch_execute(&format!("DROP TABLE IF EXISTS {elsewhere}"))
        .await;
    Ok(())
}

/// Physical replication from a temporary physical slot: WAL arrives as XLogData from the start position on.
async fn physical_stream(env: &Env) -> Outcome {
    let mut repl = postgres(env, "replication=true").await?;
    let system = repl.identify_system().await.check("IDENTIFY_SYSTEM")?;
    ensure_eq!(system.dbname, None);
    // A fresh cluster is on timeline 1, which has no history file; the server refuses to send one. (Before
    // the slot is made: an error in a walsender drops the session's temporary slots.)
    if system.timeline == 1 {
        ensure!(
            repl.timeline_history(1).await.is_err(),
            "a history of timeline 1"
        );
    } else {
        let (name, content) = repl
            .timeline_history(system.timeline)
            .await
            .check("history")?;
        ensure!(
            name.ends_with(".history") && !content.is_empty(),
            "history {name}"
        );
    }
    let slot = unique("phys_slot");
    repl.create_replication_slot(&slot, true, &SlotKind::Physical { reserve_wal: true })
        .await
        .check("create physical slot")?;
    let read = repl
        .read_replication_slot(&slot)
        .await
        .check("READ_REPLICATION_SLOT")?
        .ok_or("the new slot is not there")?;
    ensure_eq!(read.slot_type, "physical");
    ensure!(
        read.restart_lsn.is_some(),
        "RESERVE_WAL reserved nothing: {read:?}"
    );
    let sql = postgres(env, "").await?;
    // Start at the beginning of the current segment's page, which the server still has.
    let start = Lsn(system.xlogpos.0 & !0xFFFF);
    let mut stream = repl
        .start_physical_replication(Some(&slot), start, None)
        .await
        .check("START_REPLICATION PHYSICAL")?;
    sql.execute("SELECT pg_switch_wal()", &[])
        .await
        .check("wal switch")?;
    let mut bytes = 0usize;
    let mut first = None;
    while bytes < 8192 {
        match stream.next().await.check("next")?.ok_or("ended")? {
            ServerMessage::XLogData {
                wal_start, data, ..
            } => {
                first.get_or_insert(wal_start);
                bytes += data.len();
            }
            ServerMessage::Keepalive { .. } => {}
        }
    }
    let first = first.ok_or("no WAL")?;
    ensure!(first >= start, "WAL from {first}, before the start {start}");
    stream.stop().await.check("stop")?;
    Ok(())
}
