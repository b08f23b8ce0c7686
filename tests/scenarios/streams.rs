//! Row streams, portals, cursors and pipelines, against the real server on both targets.
//!
//! The million-row stream checks memory: natively it reads the process's peak RSS (VmHWM, reset first
//! through `/proc/self/clear_refs`) and requires it under 32 MB; on wasm32-wasip2 it prints how much the
//! linear memory grew, which is its peak heap (linear memory never shrinks).

use std::pin::Pin;
use std::time::Duration;

use wasi_pg_client::config::QueryMode;
use wasi_pg_client::{
    Client, Config, ErrorKind, Param, Pipeline, PipelineMode, PipelineOutput, TransactionStatus,
    sqlstate,
};

use super::{Check, Env, Outcome, Scenario, connect, poll_once, with_timeout};

pub(super) fn scenarios() -> Vec<(&'static str, Scenario)> {
    scenarios![
        stream_million_rows_in_bounded_memory,
        stream_dropped_midway_then_query,
        stream_error_after_rows_and_stream_trait,
        stream_lent_rows_read_as_owned_ones,
        portal_batches_of_a_thousand,
        portal_close_on_drop_and_lost_fetch,
        cursor_exhausted_commits,
        cursor_dropped_or_failed_rolls_back,
        pipeline_hundred_inserts_both_modes,
        pipeline_speed_up_over_sequential,
        pipeline_error_in_the_middle_atomic,
        pipeline_error_in_the_middle_independent,
        pipeline_mixed_results_in_order,
        pipeline_dropped_future_then_query,
        unnamed_mode_streams_portals_pipelines,
        pipeline_prepares_new_texts_in_one_round_trip,
        pipeline_reprepares_stale_statements,
    ]
}

const MILLION: i64 = 1_000_000;
const PEAK_RSS_LIMIT_KB: u64 = 32 * 1024;

/// A field of `/proc/self/status` in kB.
#[cfg(not(target_os = "wasi"))]
fn proc_status_kb(field: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").check("read /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/self/status"))
}

async fn stream_million_rows_in_bounded_memory(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    // Natively: the peak so far belongs to earlier scenarios; "5" resets VmHWM to the current RSS.
    #[cfg(not(target_os = "wasi"))]
    let baseline_kb = {
        std::fs::write("/proc/self/clear_refs", "5").check("reset VmHWM")?;
        proc_status_kb("VmRSS")?
    };
    #[cfg(target_os = "wasi")]
    let pages_before = core::arch::wasm32::memory_size::<0>();

    let mut stream = c
        .query_stream("SELECT g FROM generate_series(1, 1000000) g", &[])
        .await
        .check("start")?;
    ensure_eq!(stream.columns().len(), 1);
    let (mut count, mut sum) = (0i64, 0i64);
    while let Some(row) = stream.next().await.check("next")? {
        count += 1;
        sum += i64::from(row.get::<_, i32>(0));
    }
    ensure_eq!(stream.rows_affected(), Some(1_000_000));
    drop(stream);
    ensure_eq!(count, MILLION);
    ensure_eq!(sum, MILLION * (MILLION + 1) / 2);

    #[cfg(not(target_os = "wasi"))]
    {
        let peak_kb = proc_status_kb("VmHWM")?;
        println!(
            "native: 1 000 000 rows streamed at a peak RSS of {:.1} MB (baseline {:.1} MB, growth {:.1} MB)",
            peak_kb as f64 / 1024.0,
            baseline_kb as f64 / 1024.0,
            peak_kb.saturating_sub(baseline_kb) as f64 / 1024.0
        );
        ensure!(
            peak_kb < PEAK_RSS_LIMIT_KB,
            "peak RSS {peak_kb} kB is not under {PEAK_RSS_LIMIT_KB} kB"
        );
    }
    #[cfg(target_os = "wasi")]
    {
        let pages_after = core::arch::wasm32::memory_size::<0>();
        println!(
            "wasm32-wasip2: 1 000 000 rows streamed; linear memory {:.1} MiB before, {:.1} MiB after (limit \
             checked natively: {} MB)",
            pages_before as f64 / 16.0,
            pages_after as f64 / 16.0,
            PEAK_RSS_LIMIT_KB / 1024
        );
    }
    Ok(())
}

async fn stream_dropped_midway_then_query(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    {
        let mut stream = c
            .query_stream("SELECT g FROM generate_series(1, 200000) g", &[])
            .await
            .check("start")?;
        for expected in 1..=10 {
            let row = stream.next().await.check("next")?.ok_or("ended early")?;
            ensure_eq!(row.get::<_, i32>(0), expected);
        }
        ensure_eq!(stream.rows_affected(), None);
        // Dropped here with 199 990 rows unread: the next call drains them.
    }
    let v: i32 = c
        .query_one("SELECT 42", &[])
        .await
        .check("after the dropped stream")?
        .get(0);
    ensure_eq!(v, 42);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    // A stream whose future was dropped right after its request went out.
    poll_once(c.query_stream("SELECT g FROM generate_series(1, 1000) g", &[])).await;
    ensure_eq!(
        c.query_one("SELECT 'fresh'::text", &[])
            .await
            .check("after the dropped start")?
            .get::<_, &str>(0),
        "fresh"
    );
    // Parameters from an iterator, as tokio-postgres's query_raw takes them.
    let bounds = [3i32, 5];
    let mut stream = c
        .query_raw(
            "SELECT g FROM generate_series($1::int4, $2::int4) g",
            bounds.iter().map(|b| b as Param),
        )
        .await
        .check("query_raw")?;
    let mut got = Vec::new();
    while let Some(row) = stream.next().await.check("next")? {
        got.push(row.get::<_, i32>(0));
    }
    ensure_eq!(got, vec![3, 4, 5]);
    Ok(())
}

async fn stream_error_after_rows_and_stream_trait(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    // Row 5000 divides by zero: the rows before it arrive, then the error, then the stream ends.
    let mut stream = c
        .query_stream(
            "SELECT 10 / (5000 - g) FROM generate_series(1, 10000) g",
            &[],
        )
        .await
        .check("start")?;
    let mut rows = 0;
    let error = loop {
        match stream.next().await {
            Ok(Some(_)) => rows += 1,
            Ok(None) => return Err("no error".into()),
            Err(e) => break e,
        }
    };
    ensure!(rows < 5000, "{rows} rows before the error");
    ensure_eq!(error.code(), Some("22012"));
    ensure!(!error.is_connection_broken(), "{error}");
    ensure!(
        stream.next().await.check("after the end")?.is_none(),
        "rows after the error"
    );
    drop(stream);
    ensure_eq!(
        c.query_one("SELECT 1", &[])
            .await
            .check("after")?
            .get::<_, i32>(0),
        1
    );
    // Through futures_core::Stream, polled by hand (no extension crate in the tests).
    let mut stream = c
        .query_stream("SELECT g::int8 FROM generate_series(1, 2500) g", &[])
        .await
        .check("start")?;
    let mut sum = 0i64;
    while let Some(row) =
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut stream), cx)).await
    {
        sum += row.check("stream item")?.get::<_, i64>(0);
    }
    ensure_eq!(sum, 2500 * 2501 / 2);
    ensure_eq!(stream.rows_affected(), Some(2500));
    Ok(())
}

/// A checksum of one row of `LENT_SQL`, read through any of the three ways (all give `get` and `raw`).
macro_rules! lent_row_sum {
    ($row:expr) => {{
        let row = $row;
        (|| -> Result<i64, wasi_pg_client::Error> {
            let g: i32 = row.try_get(0)?;
            let text: Option<&str> = row.try_get("t")?;
            let bytes: Option<&[u8]> = row.try_get(2)?;
            let wide: String = row.try_get(3)?;
            let mut sum = i64::from(g) + text.map_or(-1, |t| t.len() as i64);
            sum += bytes.map_or(-7, |b| b.iter().map(|&b| i64::from(b)).sum::<i64>());
            sum += wide.len() as i64 + row.raw(4)?.map_or(-3, |v| v.len() as i64);
            Ok(sum)
        })()
    }};
}

/// Rows of every shape a lent row must read like an owned one: NULLs, empty and long texts, bytea, and a
/// row of 12 columns (wider than the rows whose offsets fit inline).
const LENT_SQL: &str = "SELECT g, CASE WHEN g % 5 = 0 THEN NULL ELSE repeat('x', g % 300) END AS t, \
     CASE WHEN g % 7 = 0 THEN NULL ELSE decode(lpad(to_hex(g), 8, '0'), 'hex') END, repeat('w', g % 90), \
     CASE WHEN g % 11 = 0 THEN NULL ELSE g::int8 END, 1, 2, 3, 4, 5, 6, 7 \
     FROM generate_series(1, 100000) g";

async fn stream_lent_rows_read_as_owned_ones(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    let mut owned = (0i64, 0u64);
    let mut stream = c.query_stream(LENT_SQL, &[]).await.check("start owned")?;
    while let Some(row) = stream.next().await.check("next")? {
        owned = (
            owned.0 + lent_row_sum!(&row).check("owned row")?,
            owned.1 + 1,
        );
    }
    ensure_eq!(owned.1, 100_000);
    drop(stream);

    let mut lent = (0i64, 0u64);
    let mut kept = Vec::new();
    let mut stream = c.query_stream(LENT_SQL, &[]).await.check("start lent")?;
    while let Some(row) = stream.next_ref().await.check("next_ref")? {
        let sum = lent_row_sum!(row).check("lent row")?;
        lent = (lent.0 + sum, lent.1 + 1);
        if lent.1.is_multiple_of(10_000) {
            kept.push((sum, row.to_row()));
        }
    }
    ensure_eq!(stream.rows_affected(), Some(100_000));
    drop(stream);
    ensure_eq!(lent, owned);
    for (sum, row) in &kept {
        ensure_eq!(lent_row_sum!(row).check("kept row")?, *sum);
    }

    let mut each = (0i64, 0u64);
    let mut stream = c.query_stream(LENT_SQL, &[]).await.check("start each")?;
    stream
        .for_each_ref(|row| {
            each = (each.0 + lent_row_sum!(row)?, each.1 + 1);
            Ok::<_, wasi_pg_client::Error>(())
        })
        .await
        .check("for_each_ref")?;
    drop(stream);
    ensure_eq!(each, owned);

    // A server error after rows ends for_each_ref with it; the connection goes on.
    let mut stream = c
        .query_stream(
            "SELECT 10 / (5000 - g) FROM generate_series(1, 10000) g",
            &[],
        )
        .await
        .check("start failing")?;
    let mut before = 0;
    let error = stream
        .for_each_ref(|_| {
            before += 1;
            Ok::<_, wasi_pg_client::Error>(())
        })
        .await
        .err()
        .ok_or("no error")?;
    ensure_eq!(error.code(), Some("22012"));
    ensure!(before < 5000, "{before} rows before the error");
    drop(stream);

    // Dropped with a row lent, halfway: the next call reads the rest away.
    let mut stream = c.query_stream(LENT_SQL, &[]).await.check("start dropped")?;
    for _ in 0..50_000 {
        stream
            .next_ref()
            .await
            .check("next_ref")?
            .ok_or("ended early")?;
    }
    drop(stream);
    ensure_eq!(
        c.query_one("SELECT 7", &[])
            .await
            .check("after")?
            .get::<_, i32>(0),
        7
    );

    // A portal's fetches lend their rows too.
    let mut tx = c.transaction().await.check("begin")?;
    let portal = tx
        .bind("SELECT g FROM generate_series(1, 2500) g", &[])
        .await
        .check("bind")?;
    let mut sum = 0i64;
    loop {
        let mut stream = tx.query_portal_raw(&portal, 1000).await.check("fetch")?;
        stream
            .for_each_ref(|row| {
                sum += i64::from(row.get::<_, i32>(0));
                Ok::<_, wasi_pg_client::Error>(())
            })
            .await
            .check("for_each_ref")?;
        if stream.rows_affected().is_some() {
            break;
        }
    }
    ensure_eq!(sum, 2500 * 2501 / 2);
    tx.commit().await.check("commit")?;
    Ok(())
}

async fn portal_batches_of_a_thousand(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    let mut tx = c.transaction().await.check("begin")?;
    let portal = tx
        .bind("SELECT g FROM generate_series(1, $1) g", &[&10_000i32])
        .await
        .check("bind")?;
    ensure_eq!(portal.columns().len(), 1);
    let mut sizes = Vec::new();
    let mut next = 1;
    loop {
        let batch = tx.query_portal(&portal, 1000).await.check("fetch")?;
        for row in &batch {
            ensure_eq!(row.get::<_, i32>(0), next);
            next += 1;
        }
        sizes.push(batch.len());
        // Other statements may run between fetches of a named portal.
        let other: i32 = tx
            .query_one("SELECT $1::int4 + 1", &[&1i32])
            .await
            .check("between fetches")?
            .get(0);
        ensure_eq!(other, 2);
        if batch.len() < 1000 {
            break;
        }
    }
    // 10 000 rows: ten full batches, then the empty one that says the portal is exhausted.
    let mut expected = vec![1000; 10];
    expected.push(0);
    ensure_eq!(sizes, expected);
    ensure_eq!(next, 10_001);
    // A batch that stops short ends it too, and the streaming variant reads the same way.
    let portal = tx
        .bind("SELECT g FROM generate_series(1, 2500) g", &[])
        .await
        .check("bind 2500")?;
    let mut sizes = Vec::new();
    loop {
        let mut stream = tx
            .query_portal_raw(&portal, 1000)
            .await
            .check("fetch raw")?;
        let mut n = 0;
        while stream.next().await.check("next")?.is_some() {
            n += 1;
        }
        let done = stream.rows_affected().is_some();
        sizes.push(n);
        if done {
            break;
        }
    }
    ensure_eq!(sizes, vec![1000, 1000, 500]);
    tx.commit().await.check("commit")?;
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    Ok(())
}

async fn open_portals(c: &mut Client) -> Result<i64, String> {
    Ok(c.query_one(
        "SELECT count(*) FROM pg_cursors WHERE name LIKE 'wpc_p%'",
        &[],
    )
    .await
    .check("pg_cursors")?
    .get(0))
}

async fn portal_close_on_drop_and_lost_fetch(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    let mut tx = c.transaction().await.check("begin")?;
    let first = tx
        .bind("SELECT g FROM generate_series(1, 100) g", &[])
        .await
        .check("bind first")?;
    let second = tx
        .bind("SELECT g FROM generate_series(1, 100) g", &[])
        .await
        .check("bind second")?;
    ensure_eq!(open_portals(&mut tx).await?, 2);
    drop(first);
    // The Close goes out with the transaction's next portal call.
    ensure_eq!(tx.query_portal(&second, 10).await.check("fetch")?.len(), 10);
    ensure_eq!(open_portals(&mut tx).await?, 1);
    // A fetch dropped after its Execute went out: its rows are gone, so the portal refuses to go on. The
    // portal sleeps before its first row, so one poll can never finish the fetch.
    let slow = tx
        .bind(
            "SELECT g FROM pg_sleep(0.3), generate_series(1, 100) g",
            &[],
        )
        .await
        .check("bind slow")?;
    poll_once(tx.query_portal(&slow, 10)).await;
    let err = tx
        .query_portal(&slow, 10)
        .await
        .err()
        .ok_or("a fetch after a lost one succeeded")?;
    ensure_eq!(err.kind(), ErrorKind::Skipped);
    ensure!(!err.is_connection_broken(), "{err}");
    // Wrong parameter count: refused before anything is sent, the transaction is unharmed.
    let err = tx
        .bind("SELECT $1::int4", &[])
        .await
        .err()
        .ok_or("bind with a missing parameter")?;
    ensure_eq!(err.kind(), ErrorKind::Parameters);
    ensure_eq!(tx.transaction_status(), TransactionStatus::InTransaction);
    tx.commit().await.check("commit")?;
    // Portals end with their transaction; using one in the next is refused before anything is sent.
    ensure_eq!(open_portals(&mut c).await?, 0);
    let mut tx = c.transaction().await.check("begin again")?;
    let err = tx
        .query_portal(&second, 10)
        .await
        .err()
        .ok_or("a portal of an ended transaction was fetched")?;
    ensure_eq!(err.kind(), ErrorKind::Config);
    ensure_eq!(tx.transaction_status(), TransactionStatus::InTransaction);
    tx.rollback().await.check("rollback")?;
    drop(second);
    ensure_eq!(
        c.query_one("SELECT 1", &[])
            .await
            .check("after")?
            .get::<_, i32>(0),
        1
    );
    Ok(())
}

async fn cursor_exhausted_commits(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE cur_src AS SELECT g AS v FROM generate_series(1, 2500) g")
        .await
        .check("create")?;
    let mut cursor = c
        .cursor(
            "SELECT v FROM cur_src WHERE v <= $1 ORDER BY v",
            &[&2500i32],
            1000,
        )
        .await
        .check("open")?;
    ensure_eq!(cursor.columns().len(), 1);
    let mut sizes = Vec::new();
    let mut sum = 0i64;
    while let Some(batch) = cursor.next_batch().await.check("next_batch")? {
        sizes.push(batch.len());
        sum += batch
            .iter()
            .map(|r| i64::from(r.get::<_, i32>(0)))
            .sum::<i64>();
    }
    ensure_eq!(sizes, vec![1000, 1000, 500]);
    ensure_eq!(sum, 2500 * 2501 / 2);
    ensure!(
        cursor.next_batch().await.check("after the end")?.is_none(),
        "rows after the end"
    );
    drop(cursor);
    // Committed as soon as the last batch arrived.
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    // Row by row, with a batch size that divides the rows exactly (the last fetch is empty).
    let mut cursor = c
        .cursor("SELECT v FROM cur_src ORDER BY v", &[], 500)
        .await
        .check("open")?;
    let mut n = 0;
    while let Some(row) = cursor.next().await.check("next")? {
        n += 1;
        ensure_eq!(row.get::<_, i32>(0), n);
    }
    ensure_eq!(n, 2500);
    // A drop does no I/O: the status is the one the COMMIT's answer left.
    drop(cursor);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    Ok(())
}

async fn cursor_dropped_or_failed_rolls_back(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE cur_side (v int)")
        .await
        .check("create")?;
    // Dropped after one batch: its transaction, and the rows it inserted, are rolled back.
    {
        let mut cursor = c
            .cursor(
                "INSERT INTO cur_side SELECT g FROM generate_series(1, 5000) g RETURNING v",
                &[],
                1000,
            )
            .await
            .check("open")?;
        ensure_eq!(
            cursor.next_batch().await.check("batch")?.map(|b| b.len()),
            Some(1000)
        );
    }
    ensure_eq!(c.transaction_status(), TransactionStatus::InTransaction);
    // The next call runs ROLLBACK first: it sees no transaction and none of the rows.
    let n: i64 = c
        .query_one("SELECT count(*) FROM cur_side", &[])
        .await
        .check("count")?
        .get(0);
    ensure_eq!(n, 0);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    // Outside a transaction: each statement's time is its own, and SELECT 1 leaves the status idle.
    ensure_eq!(
        c.query_one("SELECT 1", &[])
            .await
            .check("select")?
            .get::<_, i32>(0),
        1
    );
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);

    // An error in the third batch: reported, rolled back at once.
    let mut cursor = c
        .cursor(
            "SELECT 10 / (2500 - g) FROM generate_series(1, 5000) g",
            &[],
            1000,
        )
        .await
        .check("open failing")?;
    let mut batches = 0;
    let err = loop {
        match cursor.next_batch().await {
            Ok(Some(_)) => batches += 1,
            Ok(None) => return Err("the failing cursor ended without error".into()),
            Err(e) => break e,
        }
    };
    ensure_eq!(batches, 2);
    ensure_eq!(err.code(), Some("22012"));
    ensure!(
        cursor
            .next_batch()
            .await
            .check("after the error")?
            .is_none(),
        "rows after the error"
    );
    drop(cursor);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);

    // A fetch dropped mid-flight: the cursor refuses to skip its rows and rolls back. The query sleeps before
    // its first row, so one poll can never finish the fetch (1000 short rows fit in one read otherwise).
    let mut cursor = c
        .cursor(
            "SELECT g FROM pg_sleep(0.3), generate_series(1, 5000) g",
            &[],
            1000,
        )
        .await
        .check("open")?;
    poll_once(cursor.next_batch()).await;
    let err = cursor
        .next_batch()
        .await
        .err()
        .ok_or("fetch after a lost one")?;
    ensure_eq!(err.kind(), ErrorKind::Skipped);
    drop(cursor);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);

    // A cursor whose open fails (bad SQL) leaves no transaction behind.
    let err = c
        .cursor("SELEC 1", &[], 10)
        .await
        .err()
        .ok_or("bad SQL opened a cursor")?;
    ensure_eq!(err.code(), Some(sqlstate::SYNTAX_ERROR));
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);

    // The cursor's future dropped right after BEGIN went out.
    poll_once(c.cursor("SELECT 1", &[], 10)).await;
    ensure_eq!(
        c.query_one("SELECT 2", &[])
            .await
            .check("after")?
            .get::<_, i32>(0),
        2
    );
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);

    // Inside a transaction block a cursor would commit the caller's transaction: refused.
    let mut tx = c.transaction().await.check("begin")?;
    let err = tx
        .cursor("SELECT 1", &[], 10)
        .await
        .err()
        .ok_or("cursor inside a transaction")?;
    ensure_eq!(err.kind(), ErrorKind::Unsupported);
    ensure_eq!(tx.transaction_status(), TransactionStatus::InTransaction);
    tx.rollback().await.check("rollback")?;
    Ok(())
}

async fn count_rows(c: &mut Client, table: &str) -> Result<i64, String> {
    Ok(c.query_one(&*format!("SELECT count(*) FROM {table}"), &[])
        .await
        .check("count")?
        .get(0))
}

fn outputs(
    results: Vec<Result<PipelineOutput, wasi_pg_client::Error>>,
) -> Result<Vec<PipelineOutput>, String> {
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.map_err(|e| format!("statement {i}: {e}")))
        .collect()
}

async fn pipeline_hundred_inserts_both_modes(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE pl_many (v int PRIMARY KEY)")
        .await
        .check("create")?;
    let values: Vec<i32> = (1..=200).collect();
    for (mode, chunk) in [
        (PipelineMode::Atomic, &values[..100]),
        (PipelineMode::Independent, &values[100..]),
    ] {
        let mut pipeline = Pipeline::new(mode);
        for v in chunk {
            pipeline.push("INSERT INTO pl_many VALUES ($1)", &[v]);
        }
        ensure_eq!(pipeline.len(), 100);
        let results = outputs(c.run_pipeline(&pipeline).await.check("run")?)?;
        ensure_eq!(results.len(), 100);
        for r in &results {
            ensure_eq!(r.rows_affected(), 1);
            ensure!(r.rows().is_empty(), "an INSERT returned rows");
        }
        ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    }
    ensure_eq!(count_rows(&mut c, "pl_many").await?, 200);
    let sum: i64 = c
        .query_one("SELECT sum(v) FROM pl_many", &[])
        .await
        .check("sum")?
        .get(0);
    ensure_eq!(sum, 200 * 201 / 2);
    // An empty pipeline sends nothing.
    ensure!(
        c.run_pipeline(&Pipeline::new(PipelineMode::Atomic))
            .await
            .check("empty")?
            .is_empty(),
        "results for an empty pipeline"
    );
    Ok(())
}

/// 10 000 single-row inserts one round trip each, then pipelined in batches of 100: exact counts, and the
/// speed-up printed (a figure, not an assertion).
async fn pipeline_speed_up_over_sequential(env: &Env) -> Outcome {
    const N: i32 = 10_000;
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE pl_speed (v int)")
        .await
        .check("create")?;
    let insert = "INSERT INTO pl_speed VALUES ($1)";
    // Prepared once up front, so both runs use the same cached statement.
    c.execute(insert, &[&0i32]).await.check("warm up")?;
    let started = std::time::Instant::now();
    for v in 1..=N {
        c.execute(insert, &[&v]).await.check("sequential insert")?;
    }
    let sequential = started.elapsed();
    let values: Vec<i32> = (N + 1..=2 * N).collect();
    let started = std::time::Instant::now();
    for batch in values.chunks(100) {
        let mut pipeline = Pipeline::new(PipelineMode::Atomic);
        for v in batch {
            pipeline.push(insert, &[v]);
        }
        for result in c.run_pipeline(&pipeline).await.check("pipeline")? {
            ensure_eq!(result.check("pipelined insert")?.rows_affected(), 1);
        }
    }
    let pipelined = started.elapsed();
    ensure_eq!(count_rows(&mut c, "pl_speed").await?, i64::from(2 * N) + 1);
    println!(
        "pipeline: {N} inserts sequential in {} ms, pipelined in batches of 100 in {} ms: {:.1}x",
        sequential.as_millis(),
        pipelined.as_millis(),
        sequential.as_secs_f64() / pipelined.as_secs_f64().max(1e-9)
    );
    Ok(())
}

async fn pipeline_error_in_the_middle_atomic(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE pl_atomic (v int PRIMARY KEY)")
        .await
        .check("create")?;
    // Statement 5 violates the primary key at run time.
    let values = [1i32, 2, 3, 4, 5, 1, 6, 7, 8, 9];
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    for v in &values {
        pipeline.push("INSERT INTO pl_atomic VALUES ($1)", &[v]);
    }
    let results = c.run_pipeline(&pipeline).await.check("run")?;
    ensure_eq!(results.len(), 10);
    for (i, r) in results.iter().enumerate() {
        match (i, r) {
            (0..5, Ok(out)) => ensure_eq!(out.rows_affected(), 1),
            (5, Err(e)) => ensure_eq!(e.code(), Some(sqlstate::UNIQUE_VIOLATION)),
            (6.., Err(e)) => ensure_eq!(e.kind(), ErrorKind::Skipped),
            (i, r) => return Err(format!("statement {i}: unexpected {r:?}")),
        }
    }
    ensure_eq!(count_rows(&mut c, "pl_atomic").await?, 0);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);

    // Statement 2 does not even prepare: nothing is sent, the others are skipped.
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    pipeline
        .push("INSERT INTO pl_atomic VALUES ($1)", &[&10i32])
        .push("INSERT INTO pl_atomic VALUES ($1)", &[&11i32])
        .push("INSERT INTO pl_atomic VALUE ($1)", &[&12i32])
        .push("INSERT INTO pl_atomic VALUES ($1)", &[&13i32]);
    let results = c.run_pipeline(&pipeline).await.check("run")?;
    ensure_eq!(
        results[2].as_ref().err().and_then(|e| e.code()),
        Some(sqlstate::SYNTAX_ERROR)
    );
    for i in [0, 1, 3] {
        ensure_eq!(
            results[i].as_ref().err().map(|e| e.kind()),
            Some(ErrorKind::Skipped)
        );
    }
    ensure_eq!(count_rows(&mut c, "pl_atomic").await?, 0);
    // A parameter of the wrong type fails its statement before anything is sent.
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    pipeline
        .push("INSERT INTO pl_atomic VALUES ($1)", &[&20i32])
        .push("INSERT INTO pl_atomic VALUES ($1)", &[&"not a number"]);
    let results = c.run_pipeline(&pipeline).await.check("run")?;
    ensure_eq!(
        results[1].as_ref().err().map(|e| e.kind()),
        Some(ErrorKind::ToSql)
    );
    ensure_eq!(
        results[0].as_ref().err().map(|e| e.kind()),
        Some(ErrorKind::Skipped)
    );
    ensure_eq!(count_rows(&mut c, "pl_atomic").await?, 0);
    // Inside a transaction block the atomic batch is part of it: the failure fails the block.
    let mut tx = c.transaction().await.check("begin")?;
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    pipeline
        .push("INSERT INTO pl_atomic VALUES ($1)", &[&30i32])
        .push("INSERT INTO pl_atomic VALUES ($1)", &[&30i32]);
    let results = tx.run_pipeline(&pipeline).await.check("run in tx")?;
    ensure!(results[0].is_ok() && results[1].is_err(), "{results:?}");
    ensure_eq!(tx.transaction_status(), TransactionStatus::Failed);
    tx.rollback().await.check("rollback")?;
    ensure_eq!(count_rows(&mut c, "pl_atomic").await?, 0);
    Ok(())
}

async fn pipeline_error_in_the_middle_independent(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE pl_indep (v int PRIMARY KEY)")
        .await
        .check("create")?;
    let values = [1i32, 2, 3, 4, 5, 1, 6, 7, 8, 9];
    let mut pipeline = Pipeline::new(PipelineMode::Independent);
    for v in &values {
        pipeline.push("INSERT INTO pl_indep VALUES ($1)", &[v]);
    }
    let results = c.run_pipeline(&pipeline).await.check("run")?;
    for (i, r) in results.iter().enumerate() {
        match (i, r) {
            (5, Err(e)) => ensure_eq!(e.code(), Some(sqlstate::UNIQUE_VIOLATION)),
            (5, Ok(_)) => return Err("the duplicate was inserted".into()),
            (_, Ok(out)) => ensure_eq!(out.rows_affected(), 1),
            (i, Err(e)) => return Err(format!("statement {i}: {e}")),
        }
    }
    ensure_eq!(count_rows(&mut c, "pl_indep").await?, 9);
    // A statement that fails to prepare, or to encode, fails alone.
    let mut pipeline = Pipeline::new(PipelineMode::Independent);
    pipeline
        .push("INSERT INTO pl_indep VALUES ($1)", &[&10i32])
        .push("INSERT INTO pl_indep VALUE ($1)", &[&11i32])
        .push("INSERT INTO pl_indep VALUES ($1)", &[&"twelve"])
        .push("INSERT INTO pl_indep VALUES ($1)", &[&13i32]);
    let results = c.run_pipeline(&pipeline).await.check("run")?;
    ensure!(results[0].is_ok() && results[3].is_ok(), "{results:?}");
    ensure_eq!(
        results[1].as_ref().err().and_then(|e| e.code()),
        Some(sqlstate::SYNTAX_ERROR)
    );
    ensure_eq!(
        results[2].as_ref().err().map(|e| e.kind()),
        Some(ErrorKind::ToSql)
    );
    ensure_eq!(count_rows(&mut c, "pl_indep").await?, 11);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    Ok(())
}

async fn pipeline_mixed_results_in_order(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE pl_mixed (v int)")
        .await
        .check("create")?;
    let prepared = c
        .prepare("SELECT $1::text AS t, $2::int4 AS i, $3::bool AS b")
        .await
        .check("prepare")?;
    for mode in [PipelineMode::Atomic, PipelineMode::Independent] {
        let mut pipeline = Pipeline::new(mode);
        pipeline
            .push("SELECT 1::int4", &[])
            .push("SELECT 'a'::text, 2::int8", &[])
            .push("SELECT g FROM generate_series(1, 3) g", &[])
            .push("INSERT INTO pl_mixed VALUES (1), (2)", &[])
            .push(&prepared, &[&"x", &7i32, &true])
            .push("SELECT 1 WHERE false", &[])
            .push("", &[])
            // Rows of no columns: described by a RowDescription, unlike the INSERT's NoData.
            .push("SELECT FROM generate_series(1, 2)", &[])
            .push("UPDATE pl_mixed SET v = v RETURNING v", &[]);
        let out = outputs(c.run_pipeline(&pipeline).await.check("run")?)?;
        ensure_eq!(out.len(), 9);
        ensure_eq!(out[0].rows().len(), 1);
        ensure_eq!(out[0].rows()[0].get::<_, i32>(0), 1);
        ensure_eq!(out[1].rows()[0].len(), 2);
        ensure_eq!(out[1].rows()[0].get::<_, &str>(0), "a");
        ensure_eq!(out[1].rows()[0].get::<_, i64>(1), 2);
        let series: Vec<i32> = out[2].rows().iter().map(|r| r.get(0)).collect();
        ensure_eq!(series, vec![1, 2, 3]);
        ensure_eq!(out[2].rows_affected(), 3);
        ensure_eq!(out[3].rows_affected(), 2);
        ensure!(out[3].rows().is_empty(), "INSERT returned rows");
        let row = &out[4].rows()[0];
        ensure_eq!(
            (
                row.get::<_, &str>("t"),
                row.get::<_, i32>("i"),
                row.get::<_, bool>("b")
            ),
            ("x", 7, true)
        );
        ensure!(out[5].rows().is_empty(), "rows from WHERE false");
        ensure_eq!(out[5].rows_affected(), 0);
        ensure!(out[6].rows().is_empty(), "rows from the empty query");
        ensure_eq!(out[7].rows().len(), 2);
        ensure!(
            out[7].rows().iter().all(|r| r.is_empty()),
            "columns in SELECT FROM"
        );
        let inserted = if mode == PipelineMode::Atomic { 2 } else { 4 };
        ensure_eq!(out[8].rows().len(), inserted);
        ensure_eq!(out[8].rows_affected(), inserted as u64);
    }
    ensure_eq!(count_rows(&mut c, "pl_mixed").await?, 4);
    // A prepared statement from another connection fails its own item only.
    let other = connect(&env.trust).await?;
    let foreign = other.prepare("SELECT 1").await.check("prepare")?;
    let mut pipeline = Pipeline::new(PipelineMode::Independent);
    pipeline.push(&foreign, &[]).push("SELECT 2", &[]);
    let results = c.run_pipeline(&pipeline).await.check("run")?;
    ensure_eq!(
        results[0].as_ref().err().map(|e| e.kind()),
        Some(ErrorKind::Config)
    );
    ensure_eq!(
        results[1]
            .as_ref()
            .map(|o| o.rows()[0].get::<_, i32>(0))
            .ok(),
        Some(2)
    );
    Ok(())
}

async fn pipeline_dropped_future_then_query(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE pl_drop (v int)")
        .await
        .check("create")?;
    let insert = c
        .prepare("INSERT INTO pl_drop VALUES ($1) RETURNING v")
        .await
        .check("prepare")?;
    let values: Vec<i32> = (1..=50).collect();
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    for v in &values {
        pipeline.push(&insert, &[v]);
    }
    // Dropped right after the batch went out: it still runs, and its results never reach a later call.
    poll_once(c.run_pipeline(&pipeline)).await;
    let rows = c
        .query("SELECT v FROM pl_drop ORDER BY v", &[])
        .await
        .check("after the dropped pipeline")?;
    ensure_eq!(rows.len(), 50);
    ensure_eq!(rows[49].get::<_, i32>(0), 50);
    // Dropped while a slow batch is being answered.
    let mut pipeline = Pipeline::new(PipelineMode::Independent);
    pipeline
        .push("SELECT 'stale'::text", &[])
        .push("SELECT 'slow'::text FROM pg_sleep(0.3)", &[])
        .push("SELECT 'stale'::text", &[]);
    let finished = with_timeout(Duration::from_millis(100), c.run_pipeline(&pipeline)).await;
    ensure!(finished.is_none(), "the slow pipeline finished in 100 ms");
    ensure_eq!(
        c.query_one("SELECT 'fresh'::text", &[])
            .await
            .check("after")?
            .get::<_, &str>(0),
        "fresh"
    );
    // SQL text whose preparation was dropped midway.
    poll_once(c.run_pipeline(&pipeline)).await;
    let out = outputs(c.run_pipeline(&pipeline).await.check("rerun")?)?;
    ensure_eq!(out[2].rows()[0].get::<_, &str>(0), "stale");
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    Ok(())
}

/// In [`QueryMode::Unnamed`] SQL text uses the unnamed statement, parsed again in the request that binds it,
/// so several texts can share one pipeline and nothing named is left on the server.
async fn unnamed_mode_streams_portals_pipelines(env: &Env) -> Outcome {
    let mut config = Config::parse(&env.trust).check("parse conninfo")?;
    config.query_mode(QueryMode::Unnamed);
    let mut c = Client::connect(&config).await.check("connect")?;
    let mut stream = c
        .query_stream("SELECT g FROM generate_series(1, $1) g", &[&1000i32])
        .await
        .check("stream")?;
    let mut n = 0;
    while stream.next().await.check("next")?.is_some() {
        n += 1;
    }
    ensure_eq!(n, 1000);
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    pipeline
        .push("SELECT $1::int4 + 1", &[&1i32])
        .push("SELECT $1::text || 'b'", &[&"a"])
        .push("SELECT $1::int4 + 1", &[&10i32]);
    let out = outputs(c.run_pipeline(&pipeline).await.check("pipeline")?)?;
    ensure_eq!(out[0].rows()[0].get::<_, i32>(0), 2);
    ensure_eq!(out[1].rows()[0].get::<_, &str>(0), "ab");
    ensure_eq!(out[2].rows()[0].get::<_, i32>(0), 11);
    let mut tx = c.transaction().await.check("begin")?;
    let portal = tx
        .bind("SELECT g FROM generate_series(1, 30) g", &[])
        .await
        .check("bind")?;
    // Another statement replaces the unnamed statement; the portal built from it lives on.
    ensure_eq!(
        tx.query_one("SELECT 5", &[])
            .await
            .check("between")?
            .get::<_, i32>(0),
        5
    );
    ensure_eq!(tx.query_portal(&portal, 20).await.check("fetch")?.len(), 20);
    ensure_eq!(tx.query_portal(&portal, 20).await.check("fetch")?.len(), 10);
    tx.commit().await.check("commit")?;
    let named: i64 = c
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .check("prepared statements")?
        .get(0);
    ensure_eq!(named, 0);
    Ok(())
}

/// One value of a simple query, as text: goes around the statement cache, so it is safe while cached
/// statements are stale.
async fn simple_value(c: &mut Client, sql: &str) -> Result<String, String> {
    c.simple_query(sql)
        .await
        .check(sql)?
        .iter()
        .find_map(|m| match m {
            wasi_pg_client::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| format!("no value from {sql}"))
}

/// How many of `texts` the server holds prepared.
async fn prepared_count(c: &mut Client, texts: &[String]) -> Result<i64, String> {
    Ok(c.query_one(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement = ANY($1)",
        &[&texts],
    )
    .await
    .check("pg_prepared_statements")?
    .get(0))
}

/// A pipeline of 20 texts the cache does not hold: results in order, every text prepared once on the server
/// and cached, none prepared again on the next run. That the client sends the 20 preparations in one write and
/// reads them back in one round trip is checked by the scripted tests in `src/client/pipeline.rs`; on a local server
/// a round trip is too cheap to show in timings, which are printed as figures only.
async fn pipeline_prepares_new_texts_in_one_round_trip(env: &Env) -> Outcome {
    const N: i32 = 20;
    let mut c = connect(&env.trust).await?;
    let texts: Vec<String> = (1..=N)
        .map(|k| format!("SELECT $1::int4 * {k} AS v, '{k}'::text AS k"))
        .collect();
    let values: Vec<i32> = (1..=N).collect();
    let mut pipeline = Pipeline::new(PipelineMode::Independent);
    for (text, v) in texts.iter().zip(&values) {
        pipeline.push(text.as_str(), &[v]);
    }
    // A text twice: prepared once.
    pipeline.push(texts[0].as_str(), &[&100i32]);
    let cached = c.cached_statements();
    let started = std::time::Instant::now();
    let out = outputs(c.run_pipeline(&pipeline).await.check("run")?)?;
    let first_run = started.elapsed();
    ensure_eq!(out.len(), 21);
    for (k, o) in (1..=N).zip(&out) {
        let row = &o.rows()[0];
        ensure_eq!(row.get::<_, i32>("v"), k * k);
        ensure_eq!(row.get::<_, &str>("k"), k.to_string());
    }
    ensure_eq!(out[20].rows()[0].get::<_, i32>("v"), 100);
    ensure_eq!(c.cached_statements(), cached + 20);
    ensure_eq!(prepared_count(&mut c, &texts).await?, i64::from(N));

    // Everything cached now: nothing is prepared again.
    let cached = c.cached_statements();
    let started = std::time::Instant::now();
    let again = outputs(c.run_pipeline(&pipeline).await.check("rerun")?)?;
    let cached_run = started.elapsed();
    ensure_eq!(again[19].rows()[0].get::<_, i32>("v"), 400);
    ensure_eq!(c.cached_statements(), cached);
    ensure_eq!(prepared_count(&mut c, &texts).await?, i64::from(N));
    println!(
        "pipeline: {N} new texts prepared and run in {} µs (two round trips), run again cached in {} µs",
        first_run.as_micros(),
        cached_run.as_micros()
    );
    Ok(())
}

/// Cached statements the server no longer has or whose plan changed: a pipeline prepares them again and runs
/// once more, outside a transaction block, without running any statement twice (the primary key would refuse
/// a second insert).
async fn pipeline_reprepares_stale_statements(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    // DISCARD ALL drops temporary tables too: these are plain ones.
    c.batch_execute(
        "DROP TABLE IF EXISTS pl_discard, pl_plan; CREATE TABLE pl_discard (v int PRIMARY KEY); \
         CREATE TABLE pl_plan (a int); INSERT INTO pl_plan VALUES (1)",
    )
    .await
    .check("create")?;
    let insert = "INSERT INTO pl_discard VALUES ($1)";
    let count = "SELECT count(*) FROM pl_discard";
    let mut rows = 0i64;
    for (mode, base) in [(PipelineMode::Atomic, 0), (PipelineMode::Independent, 100)] {
        c.execute(insert, &[&base])
            .await
            .check("cache the insert")?;
        c.query_one(count, &[]).await.check("cache the count")?;
        rows += 1;
        // Through the simple protocol from the same client: the cache still names statements that are gone.
        c.batch_execute("DISCARD ALL").await.check("discard")?;
        ensure_eq!(
            simple_value(&mut c, "SELECT count(*) FROM pg_prepared_statements").await?,
            "0"
        );
        let values = [base + 1, base + 2, base + 3];
        let mut pipeline = Pipeline::new(mode);
        for v in &values {
            pipeline.push(insert, &[v]);
        }
        pipeline.push(count, &[]);
        let out = outputs(c.run_pipeline(&pipeline).await.check("after DISCARD ALL")?)?;
        for o in &out[..3] {
            ensure_eq!(o.rows_affected(), 1);
        }
        rows += 3;
        ensure_eq!(out[3].rows()[0].get::<_, i64>(0), rows);
        ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    }
    ensure_eq!(simple_value(&mut c, count).await?, rows.to_string());

    // A cached `SELECT *` whose table gained a column: "cached plan must not change result type".
    let select = "SELECT * FROM pl_plan";
    for (mode, column) in [
        (PipelineMode::Atomic, "b"),
        (PipelineMode::Independent, "c"),
    ] {
        c.query(select, &[]).await.check("cache the select")?;
        c.batch_execute(&format!(
            "ALTER TABLE pl_plan ADD COLUMN {column} int DEFAULT 7"
        ))
        .await
        .check("alter")?;
        let mut pipeline = Pipeline::new(mode);
        pipeline.push("SELECT 1", &[]).push(select, &[]);
        let out = outputs(c.run_pipeline(&pipeline).await.check("after ALTER")?)?;
        let row = &out[1].rows()[0];
        ensure_eq!(row.get::<_, Option<i32>>(column), Some(7));
    }

    // Inside a transaction block the failure fails the block: reported, not run again.
    c.query(select, &[]).await.check("cache the select")?;
    let mut tx = c.transaction().await.check("begin")?;
    tx.batch_execute("ALTER TABLE pl_plan ADD COLUMN d int")
        .await
        .check("alter in the transaction")?;
    let mut pipeline = Pipeline::new(PipelineMode::Independent);
    pipeline.push(select, &[]);
    let results = tx
        .run_pipeline(&pipeline)
        .await
        .check("in the transaction")?;
    ensure_eq!(
        results[0].as_ref().err().and_then(|e| e.code()),
        Some(sqlstate::FEATURE_NOT_SUPPORTED)
    );
    ensure_eq!(tx.transaction_status(), TransactionStatus::Failed);
    tx.rollback().await.check("rollback")?;
    // The stale entry is gone: the next pipeline prepares the text afresh.
    let out = outputs(
        c.run_pipeline(&pipeline)
            .await
            .check("after the rollback")?,
    )?;
    ensure_eq!(out[0].rows()[0].len(), 3);
    c.batch_execute("DROP TABLE pl_discard, pl_plan")
        .await
        .check("drop")?;
    Ok(())
}
