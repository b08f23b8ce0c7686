//! Change data capture: follows a publication through logical replication (pgoutput) and prints each change as
//! one JSON line: `{"lsn", "relation", "op", "old", "new"}`, values in PostgreSQL's text form, `null` for NULL,
//! `{"unchanged_toast": true}` for a TOASTed value the change did not touch (the server does not send it).
//!
//! Environment: `DATABASE_URL` (or the PG* variables) for a role with the REPLICATION attribute
//! (`replication=database` is added); `CDC_PUBLICATION` (required); `CDC_SLOT`: a logical slot for pgoutput
//! to follow and advance (default: a temporary slot made for this run, gone when it ends); `CDC_LIMIT`: stop
//! cleanly after this many changes. Each transaction is acknowledged once its lines are written.
//!
//! Native: `DATABASE_URL=postgresql://postgres@localhost/db CDC_PUBLICATION=pub cargo run --example cdc`
//! WASI:   `wasmtime run -S inherit-network -S allow-ip-name-lookup --env DATABASE_URL=... --env CDC_PUBLICATION=pub cdc.wasm`

use std::io::Write as _;

use serde_json::{Map, Value, json};
use wasi_pg_client::config::Replication;
use wasi_pg_client::replication::{
    LogicalMessage, LogicalReplicationStream, Lsn, OldTuple, PgOutputOptions, SlotKind, Tuple,
    TupleValue,
};
use wasi_pg_client::{Client, Config};

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let conninfo = std::env::var("DATABASE_URL").unwrap_or_default();
    let mut config = Config::from_conninfo_and_env(&conninfo)?;
    config.replication(Replication::Logical);
    let publication = std::env::var("CDC_PUBLICATION")
        .map_err(|_| "set CDC_PUBLICATION to the publication to follow")?;
    let limit: Option<u64> = match std::env::var("CDC_LIMIT") {
        Ok(n) => Some(
            n.parse()
                .map_err(|_| format!("CDC_LIMIT={n:?} is not a number"))?,
        ),
        Err(_) => None,
    };
    let mut client = Client::connect(&config).await?;
    let slot = match std::env::var("CDC_SLOT") {
        Ok(slot) => slot,
        Err(_) => {
            let slot = format!("wpc_cdc_{}", client.backend_pid().unwrap_or(0));
            client
                .create_replication_slot(&slot, true, &SlotKind::pgoutput())
                .await?;
            slot
        }
    };
    // Ready: a caller that waits for this line can make changes now and see every one of them.
    eprintln!("cdc: following publication {publication} through slot {slot}");
    let options = PgOutputOptions::new([publication]);
    let mut stream = client
        .start_logical_replication(&slot, Lsn(0), &options)
        .await?;
    let mut changes = 0u64;
    let mut out = std::io::stdout().lock();
    while limit.is_none_or(|limit| changes < limit) {
        let Some(event) = stream.next().await? else {
            break;
        };
        let line = match &event.message {
            LogicalMessage::Insert(insert) => change(
                &stream,
                event.wal_start,
                insert.relation,
                "insert",
                None,
                Some(&insert.new),
            )?,
            LogicalMessage::Update(update) => change(
                &stream,
                event.wal_start,
                update.relation,
                "update",
                update.old.as_ref().map(OldTuple::tuple),
                Some(&update.new),
            )?,
            LogicalMessage::Delete(delete) => change(
                &stream,
                event.wal_start,
                delete.relation,
                "delete",
                Some(delete.old.tuple()),
                None,
            )?,
            LogicalMessage::Truncate(truncate) => {
                let relations: Vec<Value> = truncate
                    .relations
                    .iter()
                    .map(|oid| json!(relation_name(&stream, *oid)))
                    .collect();
                Some(
                    json!({"lsn": event.wal_start.to_string(), "op": "truncate", "relations": relations}),
                )
            }
            LogicalMessage::Commit(commit) => {
                out.flush()?;
                // Written out: acknowledged, so a restart with CDC_SLOT resumes after this transaction.
                stream.acknowledge(commit.end_lsn);
                None
            }
            _ => None,
        };
        if let Some(line) = line {
            writeln!(out, "{line}")?;
            changes += 1;
        }
    }
    out.flush()?;
    stream.stop().await?;
    client.close().await?;
    Ok(())
}

fn relation_name(stream: &LogicalReplicationStream<'_>, oid: u32) -> String {
    stream.relation(oid).map_or_else(
        || oid.to_string(),
        |r| format!("{}.{}", r.namespace, r.name),
    )
}

/// One change as a JSON line.
fn change(
    stream: &LogicalReplicationStream<'_>,
    lsn: Lsn,
    relation: u32,
    op: &str,
    old: Option<&Tuple>,
    new: Option<&Tuple>,
) -> Result<Option<Value>, String> {
    let values = |tuple: Option<&Tuple>| -> Result<Value, String> {
        let Some(tuple) = tuple else {
            return Ok(Value::Null);
        };
        let columns = &stream
            .relation(relation)
            .ok_or_else(|| format!("relation {relation} was never described"))?
            .columns;
        let mut object = Map::new();
        for (column, value) in columns.iter().zip(&tuple.0) {
            let value = match value {
                TupleValue::Null => Value::Null,
                TupleValue::UnchangedToast => json!({"unchanged_toast": true}),
                TupleValue::Text(text) => json!(String::from_utf8_lossy(text)),
                TupleValue::Binary(bytes) => json!({"binary": bytes.len()}),
            };
            object.insert(column.name.clone(), value);
        }
        Ok(Value::Object(object))
    };
    Ok(Some(json!({
        "lsn": lsn.to_string(),
        "relation": relation_name(stream, relation),
        "op": op,
        "old": values(old)?,
        "new": values(new)?,
    })))
}

fn report(result: Result<(), Box<dyn std::error::Error>>) {
    if let Err(e) = result {
        eprintln!("cdc failed: {e}");
        std::process::exit(1);
    }
}

#[cfg(all(target_os = "wasi", not(feature = "wasip3")))]
#[wstd::main]
async fn main() {
    report(run().await);
}

/// WASI 0.3 (`--features wasip3`): the component exports `wasi:cli/run@0.3`, which wasmtime calls instead of
/// `main`.
#[cfg(all(target_os = "wasi", feature = "wasip3"))]
mod wasi_p3 {
    struct Cdc;

    impl wasip3::exports::cli::run::Guest for Cdc {
        async fn run() -> Result<(), ()> {
            super::report(super::run().await);
            Ok(())
        }
    }

    wasip3::cli::command::export!(Cdc);
}

/// Never called on WASI 0.3: the host runs the exported `wasi:cli/run@0.3` instead.
#[cfg(all(target_os = "wasi", feature = "wasip3"))]
fn main() {}

#[cfg(not(target_os = "wasi"))]
#[tokio::main(flavor = "current_thread")]
async fn main() {
    report(run().await);
}
