//! The workloads on tokio-postgres 0.7, written as its documentation recommends: the connection future
//! spawned on the runtime, `query_raw` for streaming, `binary_copy` for COPY, concurrent futures for
//! pipelining. W6 uses tokio-postgres-rustls with the same rustls and ring as ours.

use std::error::Error as StdError;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures_util::future::{try_join_all, try_join3};
use futures_util::{StreamExt, TryStreamExt};
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::ours::finish;
use crate::workload::{Outcome, Target, W4_BATCH, Workload, expect, sql, w7_echoed, w7_parameters};

type BoxError = Box<dyn StdError>;

/// Connects and spawns the connection task; over TLS (verified against the server certificate) for W6.
async fn connect(target: &Target, tls: bool) -> Result<Client, BoxError> {
    let (client, _) = connect_as(target, tls, &target.user, None).await?;
    Ok(client)
}

/// Connects as `user` (with `password` if given) and spawns the connection task, returned so a caller can
/// wait for the connection to end.
async fn connect_as(
    target: &Target,
    tls: bool,
    user: &str,
    password: Option<&str>,
) -> Result<
    (
        Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    BoxError,
> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&target.host)
        .port(target.port)
        .user(user)
        .dbname(&target.dbname)
        .application_name("bench-tokio-postgres");
    if let Some(password) = password {
        config.password(password);
    }
    if !tls {
        config.ssl_mode(SslMode::Disable);
        let (client, connection) = config.connect(NoTls).await?;
        return Ok((client, tokio::spawn(connection)));
    }
    let ca = target
        .ca_file
        .as_deref()
        .ok_or("the TLS workloads need the server certificate (--ca)")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_file_iter(
            ca,
        )?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.ssl_mode(SslMode::Require);
    let (client, connection) = config
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config))
        .await?;
    Ok((client, tokio::spawn(connection)))
}

/// W9: `connections` times, connect as the SCRAM role, run `SELECT 1`, close (the client dropped, which ends
/// the connection task with a Terminate; it is awaited, so each connection is over before the next).
async fn w9(target: &Target, connections: u64, tls: bool) -> Result<Outcome, BoxError> {
    let started = Instant::now();
    let mut check = 0u64;
    for _ in 0..connections {
        let (client, connection) =
            connect_as(target, tls, sql::W9_USER, Some(sql::W9_PASSWORD)).await?;
        for message in client.simple_query(sql::SELECT_ONE).await? {
            if let SimpleQueryMessage::Row(row) = message {
                check += u64::from(row.get(0) == Some("1"));
            }
        }
        drop(client);
        connection.await??;
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
    let client = connect(target, workload.uses_tls()).await?;
    match workload {
        Workload::W1 => w1(&client, count).await,
        Workload::W2 => w2(&client, count).await,
        Workload::W3 | Workload::W6 => stream(&client, count).await,
        Workload::W4Pipeline => w4_pipeline(&client, count).await,
        Workload::W4Sequential => w4_sequential(&client, count).await,
        Workload::W5CopyIn => copy_in(&client, count).await,
        Workload::W5CopyOut => copy_out(&client, count).await,
        Workload::W7 => w7(&client, count, tasks).await,
        Workload::W8 => Err("tokio-postgres has no logical replication: it does not run W8".into()),
        Workload::W9Scram | Workload::W9Tls => unreachable!("BUG: W9 connects per operation"),
    }
}

async fn w1(client: &Client, count: u64) -> Result<Outcome, BoxError> {
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

async fn w2(client: &Client, count: u64) -> Result<Outcome, BoxError> {
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

async fn stream(client: &Client, rows: u64) -> Result<Outcome, BoxError> {
    let query = sql::stream(rows);
    let started = Instant::now();
    let no_params: [&(dyn ToSql + Sync); 0] = [];
    let mut stream = pin!(client.query_raw(query.as_str(), no_params).await?);
    let mut check = 0u64;
    let mut seen = 0u64;
    while let Some(row) = stream.try_next().await? {
        let (g, text, at): (i32, String, SystemTime) = (row.get(0), row.get(1), row.get(2));
        check += u64::try_from(g)? + text.len() as u64;
        if at < SystemTime::UNIX_EPOCH {
            return Err("now() before 1970".into());
        }
        seen += 1;
    }
    if seen != rows {
        return Err(format!("{seen} rows instead of {rows}").into());
    }
    finish(rows, started, check, expect::stream(rows))
}

/// tokio-postgres pipelines requests that are in flight at the same time, each with its own Sync; BEGIN and
/// COMMIT go in the same flight, so each batch is one transaction, as with one Sync (pgbench, ours) and
/// without extra round trips.
async fn w4_pipeline(client: &Client, count: u64) -> Result<Outcome, BoxError> {
    client.batch_execute(&sql::truncate(sql::W4_TABLE)).await?;
    let insert = client.prepare(sql::W4_INSERT).await?;
    let payload = sql::W4_PAYLOAD;
    let started = Instant::now();
    let mut check = 0u64;
    let mut next = 0i32;
    for _ in 0..count / W4_BATCH {
        let ids: Vec<i32> = (next..next + W4_BATCH as i32).collect();
        next += W4_BATCH as i32;
        let params: Vec<[&(dyn ToSql + Sync); 2]> =
            ids.iter().map(|id| [id as _, &payload as _]).collect();
        let inserts = try_join_all(params.iter().map(|p| client.execute(&insert, p)));
        // Polled in order, so sent in order: BEGIN, the inserts, COMMIT.
        let (_, counts, _) = try_join3(
            client.batch_execute("BEGIN"),
            inserts,
            client.batch_execute("COMMIT"),
        )
        .await?;
        check += counts.into_iter().sum::<u64>();
    }
    finish(count, started, check, expect::inserts(count))
}

async fn w4_sequential(client: &Client, count: u64) -> Result<Outcome, BoxError> {
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

async fn copy_in(client: &Client, rows: u64) -> Result<Outcome, BoxError> {
    client
        .batch_execute(&sql::truncate(sql::W5_IN_TABLE))
        .await?;
    let payload = sql::W5_PAYLOAD;
    let started = Instant::now();
    let sink = client.copy_in(sql::W5_COPY_IN).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[Type::INT4, Type::TEXT, Type::INT8]
    ));
    for id in 1..=rows {
        let amount = i64::try_from(id)? * 3;
        let id = i32::try_from(id)?;
        writer.as_mut().write(&[&id, &payload, &amount]).await?;
    }
    let copied = writer.finish().await?;
    finish(rows, started, copied, expect::copy_in(rows))
}

async fn copy_out(client: &Client, rows: u64) -> Result<Outcome, BoxError> {
    let started = Instant::now();
    let stream = client.copy_out(sql::W5_COPY_OUT).await?;
    let mut reader = pin!(BinaryCopyOutStream::new(
        stream,
        &[Type::INT4, Type::TEXT, Type::INT8]
    ));
    let mut check = 0u64;
    let mut seen = 0u64;
    while let Some(row) = reader.next().await {
        let row = row?;
        let (id, payload, amount): (i32, &str, i64) = (row.get(0), row.get(1), row.get(2));
        check += u64::try_from(id)? + u64::try_from(amount)? + payload.len() as u64;
        seen += 1;
    }
    if seen != rows {
        return Err(format!("{seen} rows instead of {rows}").into());
    }
    finish(rows, started, check, expect::copy_out(rows))
}

/// `tasks` futures share the client and are joined in this task; the spawned connection task pipelines the
/// queries they have in flight.
async fn w7(client: &Client, count: u64, tasks: u64) -> Result<Outcome, BoxError> {
    let parameters = w7_parameters(count, tasks)?;
    let statement = &client.prepare(sql::ECHO).await?;
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
