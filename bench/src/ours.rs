//! The workloads on this crate's client; the same code runs natively (tokio) and on wasm32-wasip2 (wstd).

use std::error::Error as StdError;
use std::time::{Instant, SystemTime};

use futures_util::future::try_join_all;

use wasi_pg_client::config::{Replication, SslMode};
use wasi_pg_client::replication::{LogicalMessage, Lsn, PgOutputOptions, SlotKind, SlotSnapshot};
use wasi_pg_client::types::Type;
use wasi_pg_client::{
    BinaryCopyInWriter, BinaryCopyOutReader, Client, Config, Pipeline, PipelineMode,
    SimpleQueryMessage,
};

use crate::workload::{Outcome, Target, W4_BATCH, Workload, expect, sql, w7_echoed, w7_parameters};

type BoxError = Box<dyn StdError>;

/// Where every connection of ours goes.
fn base_config(target: &Target) -> Config {
    let mut config = Config::new();
    config
        .host(&target.host)
        .port(target.port)
        .user(&target.user)
        .dbname(&target.dbname)
        .application_name("bench-ours");
    config
}

/// Connects to `target`, over TLS (verified against its certificate) when `tls` is set.
pub async fn connect(target: &Target, tls: bool) -> Result<Client, BoxError> {
    connect_with(base_config(target), target, tls).await
}

async fn connect_with(mut config: Config, target: &Target, tls: bool) -> Result<Client, BoxError> {
    if tls {
        let ca = target
            .ca_file
            .as_deref()
            .ok_or("the TLS workloads need the server certificate (--ca)")?;
        config
            .ssl_mode(SslMode::VerifyFull)
            .ssl_root_certs_pem(std::fs::read(ca)?);
    } else {
        config.ssl_mode(SslMode::Disable);
    }
    let client = Client::connect(&config).await?;
    if client.uses_tls() != tls {
        return Err(format!("the connection should use TLS: {tls}").into());
    }
    Ok(client)
}

/// Creates the tables and fills W5's source (once per cluster, before any run).
pub async fn setup(target: &Target, copy_rows: u64) -> Result<(), BoxError> {
    let client = connect(target, false).await?;
    for statement in sql::setup(copy_rows) {
        client.batch_execute(&statement).await?;
    }
    client.close().await?;
    Ok(())
}

/// Empties the tables the inserts and COPY IN fill.
pub async fn truncate(target: &Target) -> Result<(), BoxError> {
    let client = connect(target, false).await?;
    client
        .batch_execute(&sql::truncate(&format!(
            "{}, {}",
            sql::W4_TABLE,
            sql::W5_IN_TABLE
        )))
        .await?;
    client.close().await?;
    Ok(())
}

/// W8's set-up: its table and publication, a slot for every run (`pgoutput` ones for ours, `test_decoding`
/// ones for pg_recvlogical), then the `changes` rows. Returns the WAL position after them, where
/// pg_recvlogical stops.
pub async fn w8_setup(
    target: &Target,
    changes: u64,
    pgoutput_slots: &[String],
    test_decoding_slots: &[String],
) -> Result<Lsn, BoxError> {
    let client = connect(target, false).await?;
    w8_drop_slots(&client).await?;
    for statement in sql::w8_setup() {
        client.batch_execute(&statement).await?;
    }
    let repl = replication_connection(target).await?;
    let slots = pgoutput_slots.iter().map(|slot| (slot, "pgoutput")).chain(
        test_decoding_slots
            .iter()
            .map(|slot| (slot, "test_decoding")),
    );
    for (slot, plugin) in slots {
        let kind = SlotKind::Logical {
            plugin: plugin.to_string(),
            snapshot: SlotSnapshot::Nothing,
            two_phase: false,
        };
        repl.create_replication_slot(slot, false, &kind).await?;
    }
    repl.close().await?;
    client.batch_execute(&sql::w8_changes(changes)).await?;
    let end = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get::<_, String>(0)
        .parse()?;
    client.close().await?;
    Ok(end)
}

/// Drops every W8 slot (after the runs, and before a new set-up).
pub async fn w8_cleanup(target: &Target) -> Result<(), BoxError> {
    let client = connect(target, false).await?;
    w8_drop_slots(&client).await?;
    client.close().await?;
    Ok(())
}

async fn w8_drop_slots(client: &Client) -> Result<(), BoxError> {
    client
        .batch_execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name LIKE 'bench\\_w8\\_%'",
        )
        .await?;
    Ok(())
}

async fn replication_connection(target: &Target) -> Result<Client, BoxError> {
    let mut config = base_config(target);
    config
        .ssl_mode(SslMode::Disable)
        .replication(Replication::Logical);
    Ok(Client::connect(&config).await?)
}

/// W8: `changes` inserts streamed from `slot` with `pgoutput` (protocol 1, text values), each row decoded by
/// column name into (i32, String), each transaction acknowledged at its commit.
pub async fn w8(target: &Target, changes: u64, slot: &str) -> Result<Outcome, BoxError> {
    let mut client = replication_connection(target).await?;
    let options = PgOutputOptions::new([sql::W8_PUBLICATION]);
    let started = Instant::now();
    let mut stream = client
        .start_logical_replication(slot, Lsn(0), &options)
        .await?;
    let mut check = 0u64;
    let mut seen = 0u64;
    while seen < changes {
        let event = stream
            .next()
            .await?
            .ok_or("the stream ended before every change")?;
        match &event.message {
            LogicalMessage::Insert(insert) => {
                let row = stream.row(insert.relation, &insert.new)?;
                let (id, payload): (i32, String) = (row.get("id")?, row.get("payload")?);
                check += u64::try_from(id)? + payload.len() as u64;
                seen += 1;
            }
            LogicalMessage::Commit(commit) => stream.acknowledge(commit.end_lsn),
            _ => {}
        }
    }
    let outcome = finish(changes, started, check, expect::w8(changes));
    stream.stop().await?;
    client.close().await?;
    outcome
}

/// W9: `connections` times, connect as the SCRAM role (over TLS for W9-tls), run `SELECT 1`, close.
async fn w9(target: &Target, connections: u64, tls: bool) -> Result<Outcome, BoxError> {
    let mut config = base_config(target);
    config.user(sql::W9_USER).password(sql::W9_PASSWORD);
    let started = Instant::now();
    let mut check = 0u64;
    for _ in 0..connections {
        let client = connect_with(config.clone(), target, tls).await?;
        for message in client.simple_query(sql::SELECT_ONE).await? {
            if let SimpleQueryMessage::Row(row) = message {
                check += u64::from(row.get(0) == Some("1"));
            }
        }
        client.close().await?;
    }
    finish(connections, started, check, expect::w9(connections))
}

/// Runs `workload` for `count` operations and returns what was timed; W7 shares them among `tasks` futures
/// (the other workloads run in one).
pub async fn run(
    workload: Workload,
    count: u64,
    tasks: u64,
    target: &Target,
) -> Result<Outcome, BoxError> {
    if workload.connects() {
        return w9(target, count, workload.uses_tls()).await;
    }
    let mut client = connect(target, workload.uses_tls()).await?;
    let outcome = match workload {
        Workload::W1 => w1(&mut client, count).await?,
        Workload::W2 => w2(&mut client, count).await?,
        Workload::W3 | Workload::W6 => stream(&mut client, count).await?,
        Workload::W4Pipeline => w4_pipeline(&mut client, count).await?,
        Workload::W4Sequential => w4_sequential(&mut client, count).await?,
        Workload::W5CopyIn => copy_in(&mut client, count).await?,
        Workload::W5CopyOut => copy_out(&mut client, count).await?,
        Workload::W7 => w7(&mut client, count, tasks).await?,
        Workload::W8 => return Err("W8 runs through ours::w8, from its slot".into()),
        Workload::W9Scram | Workload::W9Tls => unreachable!("BUG: W9 connects per operation"),
    };
    client.close().await?;
    Ok(outcome)
}

/// Runs `workload`'s queries one after another in one task (the contender ours-sequential, which runs W7
/// only) and returns what was timed.
pub async fn run_sequential(
    workload: Workload,
    count: u64,
    target: &Target,
) -> Result<Outcome, BoxError> {
    if workload != Workload::W7 {
        return Err(format!("ours-sequential does not run {workload}").into());
    }
    let mut client = connect(target, false).await?;
    let outcome = w7_sequential(&mut client, count).await?;
    client.close().await?;
    Ok(outcome)
}

/// W1: `SELECT 1` through the simple protocol, one round trip each.
async fn w1(client: &mut Client, count: u64) -> Result<Outcome, BoxError> {
    let started = Instant::now();
    let mut check = 0u64;
    for _ in 0..count {
        for message in client.simple_query(sql::SELECT_ONE).await? {
            if let SimpleQueryMessage::Row(row) = message {
                if row.get(0) != Some("1") {
                    return Err("SELECT 1 did not return 1".into());
                }
                check += 1;
            }
        }
    }
    finish(count, started, check, expect::w1(count))
}

/// W2: a prepared `SELECT $1::int4 + 1`, one round trip each.
async fn w2(client: &mut Client, count: u64) -> Result<Outcome, BoxError> {
    let statement = client.prepare(sql::ADD_ONE).await?;
    let started = Instant::now();
    let mut check = 0u64;
    for i in 0..count {
        let param = i32::try_from(i)?;
        let row = client.query_one(&statement, &[&param]).await?;
        check += u64::try_from(row.get::<_, i32>(0))?;
    }
    finish(count, started, check, expect::w2(count))
}

/// W3 and W6: a million rows streamed, each decoded into (i32, String, timestamp) from the row lent where it
/// arrived (`for_each_ref`).
async fn stream(client: &mut Client, rows: u64) -> Result<Outcome, BoxError> {
    let query = sql::stream(rows);
    let started = Instant::now();
    let mut stream = client.query_stream(query.as_str(), &[]).await?;
    let mut check = 0u64;
    let mut seen = 0u64;
    // Every row buffered is decoded where it arrived, in one loop (the lending API); the values are owned.
    stream
        .for_each_ref(|row| {
            let (g, text, at): (i32, String, SystemTime) = (row.get(0), row.get(1), row.get(2));
            check += u64::try_from(g)? + text.len() as u64;
            if at < SystemTime::UNIX_EPOCH {
                return Err::<(), BoxError>("now() before 1970".into());
            }
            seen += 1;
            Ok(())
        })
        .await?;
    if seen != rows {
        return Err(format!("{seen} rows instead of {rows}").into());
    }
    finish(rows, started, check, expect::stream(rows))
}

/// W4 pipelined: batches of 100 inserts, each batch one write and one Sync (as pgbench's \endpipeline).
async fn w4_pipeline(client: &mut Client, count: u64) -> Result<Outcome, BoxError> {
    client.batch_execute(&sql::truncate(sql::W4_TABLE)).await?;
    let insert = client.prepare(sql::W4_INSERT).await?;
    let payload = sql::W4_PAYLOAD;
    let started = Instant::now();
    let mut check = 0u64;
    let mut next = 0i32;
    for _ in 0..count / W4_BATCH {
        let ids: Vec<i32> = (next..next + W4_BATCH as i32).collect();
        next += W4_BATCH as i32;
        let mut pipeline = Pipeline::new(PipelineMode::Atomic);
        for id in &ids {
            pipeline.push(&insert, &[id, &payload]);
        }
        for result in client.run_pipeline(&pipeline).await? {
            check += result?.rows_affected();
        }
    }
    finish(count, started, check, expect::inserts(count))
}

/// W4 sequential: the same inserts, one round trip each.
async fn w4_sequential(client: &mut Client, count: u64) -> Result<Outcome, BoxError> {
    client.batch_execute(&sql::truncate(sql::W4_TABLE)).await?;
    let insert = client.prepare(sql::W4_INSERT).await?;
    let payload = sql::W4_PAYLOAD;
    let started = Instant::now();
    let mut check = 0u64;
    for id in 0..count {
        let id = i32::try_from(id)?;
        check += client.execute(&insert, &[&id, &payload]).await?;
    }
    finish(count, started, check, expect::inserts(count))
}

/// W5 COPY IN: rows of (int4, text, int8) in the binary format.
async fn copy_in(client: &mut Client, rows: u64) -> Result<Outcome, BoxError> {
    client
        .batch_execute(&sql::truncate(sql::W5_IN_TABLE))
        .await?;
    let payload = sql::W5_PAYLOAD;
    let started = Instant::now();
    let writer = client.copy_in(sql::W5_COPY_IN).await?;
    let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT4, Type::TEXT, Type::INT8]);
    for id in 1..=rows {
        let amount = i64::try_from(id)? * 3;
        let id = i32::try_from(id)?;
        // Typed rows, written straight into the buffer (write_row); write(&[&id, &payload, &amount]) sends the
        // same bytes through ToSql.
        writer.write_row(&(id, payload, amount)).await?;
    }
    let copied = writer.finish().await?;
    finish(rows, started, copied, expect::copy_in(rows))
}

/// W5 COPY OUT: rows of (int4, text, int8) in the binary format, decoded.
async fn copy_out(client: &mut Client, rows: u64) -> Result<Outcome, BoxError> {
    let started = Instant::now();
    let reader = client.copy_out(sql::W5_COPY_OUT).await?;
    let mut reader = BinaryCopyOutReader::new(reader, &[Type::INT4, Type::TEXT, Type::INT8]);
    let mut check = 0u64;
    let mut seen = 0u64;
    // Rows decoded where they arrived, in one loop (the lending API).
    reader
        .for_each_ref(|row| {
            let (id, payload, amount): (i32, &str, i64) = (row.get(0), row.get(1), row.get(2));
            check += u64::try_from(id)? + u64::try_from(amount)? + payload.len() as u64;
            seen += 1;
            Ok::<_, BoxError>(())
        })
        .await?;
    if seen != rows {
        return Err(format!("{seen} rows instead of {rows}").into());
    }
    finish(rows, started, check, expect::copy_out(rows))
}

/// W7: `tasks` futures share the client, each sending its own values through one prepared
/// `SELECT $1::int4` and checking every answer. They are joined on one thread (no spawned task), so the client
/// pipelines their queries on its one connection.
async fn w7(client: &mut Client, count: u64, tasks: u64) -> Result<Outcome, BoxError> {
    let parameters = w7_parameters(count, tasks)?;
    let statement = &client.prepare(sql::ECHO).await?;
    // From here on every future holds the same shared `&Client`.
    let client: &Client = client;
    let started = Instant::now();
    let sums = try_join_all(parameters.into_iter().map(|values| async move {
        let mut sum = 0u64;
        for sent in values {
            let row = client.query_one(statement, &[&sent]).await?;
            sum += w7_echoed(sent, row.get(0))?;
        }
        Ok::<_, BoxError>(sum)
    }))
    .await?;
    finish(count, started, sums.into_iter().sum(), expect::w7(count))
}

/// W7's queries one round trip each, in one task: the same statement, values and checks.
async fn w7_sequential(client: &mut Client, count: u64) -> Result<Outcome, BoxError> {
    let statement = client.prepare(sql::ECHO).await?;
    let started = Instant::now();
    let mut check = 0u64;
    for values in w7_parameters(count, 1)? {
        for sent in values {
            let row = client.query_one(&statement, &[&sent]).await?;
            check += w7_echoed(sent, row.get(0))?;
        }
    }
    finish(count, started, check, expect::w7(count))
}

/// The outcome of a run timed from `started`, if its checksum is right.
pub(crate) fn finish(
    ops: u64,
    started: Instant,
    check: u64,
    expected: u64,
) -> Result<Outcome, BoxError> {
    let seconds = started.elapsed().as_secs_f64();
    if check != expected {
        return Err(format!("wrong results: checksum {check}, expected {expected}").into());
    }
    Ok(Outcome {
        ops,
        seconds,
        check,
    })
}
