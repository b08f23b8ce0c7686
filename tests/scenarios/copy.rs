//! COPY scenarios: a million rows in and out in text, CSV and binary (the figures are printed, not judged),
//! server errors in the middle of a COPY, writers that are dropped or fail, a reader dropped midway, and typed
//! binary rows round-tripped through postgres-types.
//!
//! Every scenario checks what reached the table with SQL, and that the connection answers the next query.

use std::time::Instant;

use wasi_pg_client::types::Type;
use wasi_pg_client::{
    BinaryCopyInWriter, BinaryCopyOutReader, Client, CopyInWriter, ErrorKind, TransactionStatus,
    sqlstate,
};

use super::{Check, Env, Outcome, Scenario, connect, poll_once};
use crate::two_target::THIS_TARGET;

const MILLION: i64 = 1_000_000;
/// The sum of the ids 1..=MILLION.
const MILLION_SUM: i64 = MILLION * (MILLION + 1) / 2;
/// Rows generated per write, so the payload never exists whole.
const ROWS_PER_WRITE: i64 = 10_000;
/// How many rows the bad-row scenario writes at most while it waits for the server's error.
const BAD_ROW_LIMIT: i64 = 5_000_000;

/// The row count, the sum of the ids, and the summed length of the names in `table`.
async fn table_summary(c: &mut Client, table: &str) -> Result<(i64, i64, i64), String> {
    let row = c
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(id), 0)::int8, coalesce(sum(length(name)), 0)::int8 FROM {table}"
            ),
            &[],
        )
        .await
        .check("summary")?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// The next query works and the session is idle, outside any transaction.
async fn still_usable(c: &mut Client) -> Outcome {
    let v: i32 = c
        .query_one("SELECT 42", &[])
        .await
        .check("query after the COPY")?
        .get(0);
    ensure_eq!(v, 42);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    ensure!(!c.is_closed(), "the connection closed");
    Ok(())
}

/// The name the million-row scenarios give row `id` (the CSV one quotes it).
fn name(id: i64) -> String {
    format!("name {id}")
}

/// The total length of every [`name`] of 1..=MILLION.
fn million_name_length() -> i64 {
    (1..=MILLION).map(|id| name(id).len() as i64).sum()
}

/// Writes the million rows, `ROWS_PER_WRITE` at a time, each line made by `line`.
async fn write_million(
    writer: &mut CopyInWriter<'_>,
    line: impl Fn(i64, &mut String),
) -> Result<(), String> {
    let mut batch = String::new();
    let mut id = 1;
    while id <= MILLION {
        batch.clear();
        for id in id..(id + ROWS_PER_WRITE).min(MILLION + 1) {
            line(id, &mut batch);
        }
        writer.write(batch.as_bytes()).await.check("write")?;
        id += ROWS_PER_WRITE;
    }
    Ok(())
}

/// Reads a text or CSV COPY OUT whose lines start with the id: the line count and the sum of the ids.
async fn read_text_ids(c: &mut Client, sql: &str, separator: u8) -> Result<(i64, i64), String> {
    let mut reader = c.copy_out(sql).await.check("copy_out")?;
    let (mut rows, mut sum) = (0i64, 0i64);
    // Chunks need not end at a line end: a partial line waits for the next chunk.
    let mut partial = Vec::new();
    while let Some(chunk) = reader.next().await.check("next")? {
        partial.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = partial[start..].iter().position(|&b| b == b'\n') {
            let line = &partial[start..start + end];
            let id_end = line
                .iter()
                .position(|&b| b == separator)
                .ok_or("a line without separator")?;
            let id: i64 = std::str::from_utf8(&line[..id_end])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("a line without an id")?;
            rows += 1;
            sum += id;
            start += end + 1;
        }
        partial.drain(..start);
    }
    ensure!(partial.is_empty(), "the data ended in the middle of a line");
    ensure_eq!(reader.rows(), Some(rows as u64));
    Ok((rows, sum))
}

async fn copy_million_rows_text(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE cm_text (id int8, name text)")
        .await
        .check("create")?;
    let start = Instant::now();
    let mut writer = c
        .copy_in("COPY cm_text (id, name) FROM STDIN")
        .await
        .check("copy_in")?;
    ensure!(!writer.is_binary(), "text COPY reported as binary");
    ensure_eq!(writer.column_count(), 2);
    write_million(&mut writer, |id, out| {
        out.push_str(&format!("{id}\t{}\n", name(id)));
    })
    .await?;
    let rows = writer.finish().await.check("finish")?;
    let in_ms = start.elapsed().as_millis();
    ensure_eq!(rows, MILLION as u64);
    ensure_eq!(
        table_summary(&mut c, "cm_text").await?,
        (MILLION, MILLION_SUM, million_name_length())
    );

    let start = Instant::now();
    let out = read_text_ids(&mut c, "COPY cm_text TO STDOUT", b'\t').await?;
    let out_ms = start.elapsed().as_millis();
    ensure_eq!(out, (MILLION, MILLION_SUM));
    println!(
        "{}: copy in text: {MILLION} rows in {in_ms} ms; copy out text: {MILLION} rows in {out_ms} ms",
        THIS_TARGET
    );
    still_usable(&mut c).await
}

async fn copy_million_rows_csv(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE cm_csv (id int8, name text)")
        .await
        .check("create")?;
    let start = Instant::now();
    let mut writer = c
        .copy_in("COPY cm_csv (id, name) FROM STDIN (FORMAT csv)")
        .await
        .check("copy_in")?;
    // Quoted, with a comma inside and a doubled quote every 1000 rows: the CSV parser sees real work.
    write_million(&mut writer, |id, out| {
        if id % 1000 == 0 {
            out.push_str(&format!("{id},\"{}\"\n", name(id).replace(' ', "\"\"")));
        } else {
            out.push_str(&format!("{id},\"{}\"\n", name(id).replace(' ', ",")));
        }
    })
    .await?;
    let rows = writer.finish().await.check("finish")?;
    let in_ms = start.elapsed().as_millis();
    ensure_eq!(rows, MILLION as u64);
    ensure_eq!(
        table_summary(&mut c, "cm_csv").await?,
        (MILLION, MILLION_SUM, million_name_length())
    );
    let quoted: i64 = c
        .query_one("SELECT count(*) FROM cm_csv WHERE name LIKE 'name\"%'", &[])
        .await
        .check("quotes")?
        .get(0);
    ensure_eq!(quoted, MILLION / 1000);

    let start = Instant::now();
    let out = read_text_ids(&mut c, "COPY cm_csv TO STDOUT (FORMAT csv)", b',').await?;
    let out_ms = start.elapsed().as_millis();
    ensure_eq!(out, (MILLION, MILLION_SUM));
    println!(
        "{}: copy in csv: {MILLION} rows in {in_ms} ms; copy out csv: {MILLION} rows in {out_ms} ms",
        THIS_TARGET
    );
    still_usable(&mut c).await
}

async fn copy_million_rows_binary(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE cm_bin (id int8, name text)")
        .await
        .check("create")?;
    let start = Instant::now();
    let writer = c
        .copy_in("COPY cm_bin (id, name) FROM STDIN (FORMAT binary)")
        .await
        .check("copy_in")?;
    ensure!(writer.is_binary(), "binary COPY reported as text");
    let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT8, Type::TEXT]);
    let mut text = String::new();
    for id in 1..=MILLION {
        text.clear();
        text.push_str("name ");
        text.push_str(&id.to_string());
        writer.write(&[&id, &text]).await.check("write")?;
    }
    let rows = writer.finish().await.check("finish")?;
    let in_ms = start.elapsed().as_millis();
    ensure_eq!(rows, MILLION as u64);
    ensure_eq!(
        table_summary(&mut c, "cm_bin").await?,
        (MILLION, MILLION_SUM, million_name_length())
    );

    // The same rows as typed tuples (write_row), and NULLs: the same table.
    c.batch_execute("CREATE TEMP TABLE cm_typed (id int8, name text, note varchar)")
        .await
        .check("create typed")?;
    let start = Instant::now();
    let writer = c
        .copy_in("COPY cm_typed (id, name, note) FROM STDIN (FORMAT binary)")
        .await
        .check("copy_in typed")?;
    let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT8, Type::TEXT, Type::VARCHAR]);
    for id in 1..=MILLION {
        text.clear();
        text.push_str("name ");
        text.push_str(&id.to_string());
        let note = (id % 3 == 0).then_some("third");
        writer
            .write_row(&(id, text.as_str(), note))
            .await
            .check("write_row")?;
    }
    ensure_eq!(writer.finish().await.check("finish typed")?, MILLION as u64);
    let typed_ms = start.elapsed().as_millis();
    ensure_eq!(
        table_summary(&mut c, "cm_typed").await?,
        (MILLION, MILLION_SUM, million_name_length())
    );
    let notes: i64 = c
        .query_one(
            "SELECT count(*) FROM cm_typed WHERE note = 'third' AND id % 3 = 0",
            &[],
        )
        .await
        .check("notes")?
        .get(0);
    ensure_eq!(notes, MILLION / 3);
    // A value of the wrong type for its column fails the row before it is sent, as write() does.
    let writer = c
        .copy_in("COPY cm_typed (id, name, note) FROM STDIN (FORMAT binary)")
        .await
        .check("copy_in wrong")?;
    let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT8, Type::TEXT, Type::VARCHAR]);
    let err = writer
        .write_row(&(1i32, "x", None::<&str>))
        .await
        .err()
        .ok_or("an int4 value for an int8 column was taken")?;
    ensure_eq!(err.kind(), ErrorKind::ToSql);
    drop(writer);
    ensure_eq!(
        table_summary(&mut c, "cm_typed").await?,
        (MILLION, MILLION_SUM, million_name_length())
    );

    let start = Instant::now();
    let reader = c
        .copy_out("COPY cm_bin (id, name) TO STDOUT (FORMAT binary)")
        .await
        .check("copy_out")?;
    let mut reader = BinaryCopyOutReader::new(reader, &[Type::INT8, Type::TEXT]);
    let (mut count, mut sum, mut names) = (0i64, 0i64, 0i64);
    while let Some(row) = reader.next().await.check("next")? {
        let id: i64 = row.try_get(0).check("id")?;
        let name: &str = row.try_get(1).check("name")?;
        count += 1;
        sum += id;
        names += name.len() as i64;
    }
    let out_ms = start.elapsed().as_millis();
    ensure_eq!(reader.rows(), Some(MILLION as u64));
    ensure_eq!(
        (count, sum, names),
        (MILLION, MILLION_SUM, million_name_length())
    );

    // The same data lent row by row where it arrived.
    let start = Instant::now();
    let reader = c
        .copy_out("COPY cm_bin (id, name) TO STDOUT (FORMAT binary)")
        .await
        .check("copy_out lent")?;
    let mut reader = BinaryCopyOutReader::new(reader, &[Type::INT8, Type::TEXT]);
    let (mut count, mut sum, mut names) = (0i64, 0i64, 0i64);
    let mut kept = Vec::new();
    reader
        .for_each_ref(|row| {
            let id: i64 = row.try_get(0)?;
            let name: &str = row.try_get(1)?;
            count += 1;
            sum += id;
            names += name.len() as i64;
            if id % 250_000 == 0 {
                kept.push((id, row.to_row()));
            }
            Ok::<_, wasi_pg_client::Error>(())
        })
        .await
        .check("for_each_ref")?;
    let lent_ms = start.elapsed().as_millis();
    ensure_eq!(reader.rows(), Some(MILLION as u64));
    ensure_eq!(
        (count, sum, names),
        (MILLION, MILLION_SUM, million_name_length())
    );
    ensure_eq!(kept.len(), 4);
    for (id, row) in &kept {
        ensure_eq!(row.get::<i64>(0), *id);
        ensure_eq!(row.get::<&str>(1), format!("name {id}"));
    }
    println!(
        "{}: copy in binary: {MILLION} rows in {in_ms} ms, typed rows: {typed_ms} ms; copy out binary: \
         {MILLION} rows in {out_ms} ms, lent: {lent_ms} ms",
        THIS_TARGET
    );
    still_usable(&mut c).await
}

/// A malformed row after 1000 good ones, followed by more until the server's error comes back from a write
/// (kernel buffers can take megabytes before the server reads the bad row); finish then reports it again,
/// nothing is committed, and the connection goes on.
async fn copy_in_bad_row_is_a_db_error(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE cp_bad (id int8, name text)")
        .await
        .check("create")?;
    let mut writer = c.copy_in("COPY cp_bad FROM STDIN").await.check("copy_in")?;
    let mut batch = String::new();
    for id in 1..=1000 {
        batch.push_str(&format!("{id}\tgood\n"));
    }
    batch.push_str("not-a-number\tbad\n");
    let mut error = writer.write(batch.as_bytes()).await.err();
    let mut id = 1001;
    while error.is_none() && id <= BAD_ROW_LIMIT {
        batch.clear();
        for id in id..id + 1000 {
            batch.push_str(&format!("{id}\tgood\n"));
        }
        error = writer.write(batch.as_bytes()).await.err();
        id += 1000;
    }
    let from_write = error.is_some();
    let error = match error {
        Some(e) => {
            // Once the COPY failed, finish reports the same error and reads the session back to rest.
            let again = writer
                .finish()
                .await
                .err()
                .ok_or("finish after an error succeeded")?;
            ensure_eq!(again.code(), e.code());
            e
        }
        None => writer
            .finish()
            .await
            .err()
            .ok_or("a bad row was accepted")?,
    };
    ensure_eq!(error.kind(), ErrorKind::Db);
    ensure_eq!(error.code(), Some("22P02"));
    ensure!(!error.is_connection_broken(), "{error}");
    ensure!(
        error
            .as_db_error()
            .and_then(|db| db.where_())
            .is_some_and(|w| w.contains("line 1001")),
        "the error names the bad line: {error:?}"
    );
    ensure!(
        from_write,
        "{BAD_ROW_LIMIT} rows after the bad one went by without the error showing up"
    );
    ensure_eq!(table_summary(&mut c, "cp_bad").await?.0, 0);
    still_usable(&mut c).await
}

/// Writers dropped before finish (before the server answered, with data in the buffer only, and after data
/// reached the server): CopyFail, nothing committed, the connection goes on.
async fn copy_in_dropped_writer_sends_copy_fail(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE cp_drop (id int8, name text)")
        .await
        .check("create")?;

    // The copy_in future dropped right after sending its Query.
    poll_once(c.copy_in("COPY cp_drop FROM STDIN")).await;
    still_usable(&mut c).await?;

    // Buffered data only.
    let mut writer = c
        .copy_in("COPY cp_drop FROM STDIN")
        .await
        .check("copy_in")?;
    writer.write(b"1\tone\n").await.check("write")?;
    drop(writer);
    ensure_eq!(table_summary(&mut c, "cp_drop").await?.0, 0);

    // Several CopyData messages already sent.
    let mut writer = c
        .copy_in("COPY cp_drop FROM STDIN")
        .await
        .check("copy_in")?;
    let mut batch = String::new();
    for id in 1..=50_000 {
        batch.push_str(&format!("{id}\tsent\n"));
    }
    writer.write(batch.as_bytes()).await.check("write")?;
    writer.flush().await.check("flush")?;
    drop(writer);
    ensure_eq!(table_summary(&mut c, "cp_drop").await?.0, 0);

    // Dropped inside a transaction: the transaction goes on, the COPY left nothing.
    let mut tx = c.transaction().await.check("begin")?;
    let mut writer = tx
        .copy_in("COPY cp_drop FROM STDIN")
        .await
        .check("copy_in in tx")?;
    writer.write(b"7\tseven\n").await.check("write")?;
    drop(writer);
    // The server's answer to CopyFail is an error, which fails the transaction block.
    ensure!(
        tx.query_one("SELECT 1", &[]).await.is_err(),
        "the transaction survived a failed COPY"
    );
    tx.rollback().await.check("rollback")?;
    ensure_eq!(table_summary(&mut c, "cp_drop").await?.0, 0);
    still_usable(&mut c).await
}

/// Errors of the caller's side: a value of the wrong type or a wrong number of values aborts the COPY, a
/// statement that is not the expected COPY is refused, and the connection goes on each time.
async fn copy_writer_errors_leave_the_connection_usable(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE cp_err (id int8, name text)")
        .await
        .check("create")?;
    let types = [Type::INT8, Type::TEXT];

    // A value that does not fit its column's type.
    let writer = c
        .copy_in("COPY cp_err FROM STDIN (FORMAT binary)")
        .await
        .check("copy_in")?;
    let mut writer = BinaryCopyInWriter::new(writer, &types);
    writer.write(&[&1i64, &"one"]).await.check("good row")?;
    let err = writer
        .write(&[&"two", &"two"])
        .await
        .err()
        .ok_or("a text value for int8 was accepted")?;
    ensure_eq!(err.kind(), ErrorKind::ToSql);
    ensure!(err.to_string().contains("row 2"), "{err}");
    // The writer is done for: later calls say so without sending anything.
    let again = writer.write(&[&3i64, &"three"]).await.err();
    ensure_eq!(again.map(|e| e.kind()), Some(ErrorKind::Skipped));
    let finish = writer.finish().await.err();
    ensure_eq!(finish.map(|e| e.kind()), Some(ErrorKind::Skipped));
    ensure_eq!(table_summary(&mut c, "cp_err").await?.0, 0);
    still_usable(&mut c).await?;

    // The wrong number of values.
    let writer = c
        .copy_in("COPY cp_err FROM STDIN (FORMAT binary)")
        .await
        .check("copy_in")?;
    let mut writer = BinaryCopyInWriter::new(writer, &types);
    let err = writer
        .write(&[&1i64])
        .await
        .err()
        .ok_or("one value for two columns was accepted")?;
    ensure_eq!(err.kind(), ErrorKind::Parameters);
    drop(writer);
    still_usable(&mut c).await?;

    // A binary writer on a text COPY, and a column count that does not match.
    let writer = c.copy_in("COPY cp_err FROM STDIN").await.check("copy_in")?;
    let mut writer = BinaryCopyInWriter::new(writer, &types);
    let err = writer.write(&[&1i64, &"x"]).await.err();
    ensure_eq!(err.map(|e| e.kind()), Some(ErrorKind::Config));
    drop(writer);
    let writer = c
        .copy_in("COPY cp_err (id) FROM STDIN (FORMAT binary)")
        .await
        .check("copy_in")?;
    let err = BinaryCopyInWriter::new(writer, &types).finish().await.err();
    ensure_eq!(err.map(|e| e.kind()), Some(ErrorKind::Config));
    ensure_eq!(table_summary(&mut c, "cp_err").await?.0, 0);

    // Statements that are not the COPY asked for.
    let err = c
        .copy_in("SELECT 1")
        .await
        .err()
        .ok_or("copy_in ran a SELECT")?;
    ensure_eq!(err.kind(), ErrorKind::Config);
    let err = c
        .copy_in("COPY cp_err TO STDOUT")
        .await
        .err()
        .ok_or("copy_in ran a COPY TO STDOUT")?;
    ensure_eq!(err.kind(), ErrorKind::Config);
    let err = c
        .copy_out("COPY cp_err FROM STDIN")
        .await
        .err()
        .ok_or("copy_out ran a COPY FROM STDIN")?;
    ensure_eq!(err.code(), Some(sqlstate::QUERY_CANCELED));
    let err = c
        .copy_in("COPY missing_table FROM STDIN")
        .await
        .err()
        .ok_or("COPY into a missing table started")?;
    ensure_eq!(err.code(), Some(sqlstate::UNDEFINED_TABLE));
    // COPY through the query calls is still refused.
    let err = c
        .execute("COPY cp_err FROM STDIN", &[])
        .await
        .err()
        .ok_or("execute ran COPY FROM STDIN")?;
    ensure_eq!(err.code(), Some(sqlstate::QUERY_CANCELED));
    ensure_eq!(table_summary(&mut c, "cp_err").await?.0, 0);
    still_usable(&mut c).await
}

/// A reader dropped after a few chunks, an error in the middle of COPY OUT, and a copy_out future dropped
/// early: the next call reads the rest out and the connection goes on.
async fn copy_out_dropped_midway(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    let mut reader = c
        .copy_out("COPY (SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g) TO STDOUT")
        .await
        .check("copy_out")?;
    for _ in 0..5 {
        ensure!(
            reader.next().await.check("next")?.is_some(),
            "the COPY ended early"
        );
    }
    // The same chunks through futures_core::Stream, polled by hand (no extension crate in the tests).
    for _ in 0..5 {
        let chunk = std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut reader), cx)
        })
        .await;
        let chunk = chunk.ok_or("the COPY ended early")?.check("poll_next")?;
        ensure!(chunk.ends_with(b"x\n"), "a chunk is one row: {chunk:?}");
    }
    drop(reader);
    still_usable(&mut c).await?;

    poll_once(c.copy_out("COPY (SELECT 1) TO STDOUT")).await;
    still_usable(&mut c).await?;

    // The server fails in the middle: the rows before the error, then the error, then a usable connection.
    let mut reader = c
        .copy_out("COPY (SELECT 10 / (5 - g) FROM generate_series(1, 10) g) TO STDOUT")
        .await
        .check("copy_out")?;
    let mut chunks = 0;
    let err = loop {
        match reader.next().await {
            Ok(Some(_)) => chunks += 1,
            Ok(None) => return Err("a division by zero went unnoticed".into()),
            Err(e) => break e,
        }
    };
    // The rows before the failing one: 10/4, 10/3, 10/2, 10/1.
    ensure!(chunks <= 4, "{chunks} rows before the error");
    ensure_eq!(err.code(), Some("22012"));
    ensure!(!err.is_connection_broken(), "{err}");
    ensure!(
        reader.next().await.check("after the end")?.is_none(),
        "data after the error"
    );
    drop(reader);
    still_usable(&mut c).await
}

/// Typed rows through the binary writer and reader: every common type, NULLs, extremes.
async fn binary_copy_typed_round_trip(env: &Env) -> Outcome {
    use chrono::{NaiveDate, NaiveDateTime};

    let mut c = connect(&env.trust).await?;
    c.batch_execute(
        "CREATE TEMP TABLE cp_types (a int4, b int8, c text, d bytea, e float8, f bool, g timestamp)",
    )
    .await
    .check("create")?;
    let types = [
        Type::INT4,
        Type::INT8,
        Type::TEXT,
        Type::BYTEA,
        Type::FLOAT8,
        Type::BOOL,
        Type::TIMESTAMP,
    ];
    let at = |y, mo, d, h, mi, s, us| -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .and_then(|date| date.and_hms_micro_opt(h, mi, s, us))
            .expect("a valid date")
    };
    type Values = (
        Option<i32>,
        Option<i64>,
        Option<String>,
        Option<Vec<u8>>,
        Option<f64>,
        Option<bool>,
        Option<NaiveDateTime>,
    );
    let rows: Vec<Values> = vec![
        (
            Some(1),
            Some(i64::MAX),
            Some("plain".into()),
            Some(vec![0, 1, 255]),
            Some(1.5),
            Some(true),
            Some(at(2024, 2, 29, 13, 45, 30, 123_456)),
        ),
        (
            Some(i32::MIN),
            Some(i64::MIN),
            Some("ünïcødé 🐘 \t\n\\ \"quoted\"".into()),
            Some(Vec::new()),
            Some(-0.0),
            Some(false),
            Some(at(1970, 1, 1, 0, 0, 0, 0)),
        ),
        (Some(3), None, None, None, None, None, None),
        (
            Some(4),
            Some(0),
            Some(String::new()),
            Some((0..=255).collect()),
            Some(f64::INFINITY),
            None,
            Some(at(1, 1, 1, 23, 59, 59, 999_999)),
        ),
    ];
    let writer = c
        .copy_in("COPY cp_types FROM STDIN (FORMAT binary)")
        .await
        .check("copy_in")?;
    let mut writer = BinaryCopyInWriter::new(writer, &types);
    for (a, b, cc, d, e, f, g) in &rows {
        writer.write(&[a, b, cc, d, e, f, g]).await.check("write")?;
    }
    ensure_eq!(writer.finish().await.check("finish")?, rows.len() as u64);

    // What the server stored, read back through the ordinary query path.
    let stored = c
        .query_one("SELECT c, g FROM cp_types WHERE a = 1", &[])
        .await
        .check("query")?;
    ensure_eq!(stored.get::<_, String>(0), "plain");
    ensure_eq!(
        stored.get::<_, NaiveDateTime>(1),
        at(2024, 2, 29, 13, 45, 30, 123_456)
    );

    let reader = c
        .copy_out("COPY (SELECT * FROM cp_types ORDER BY a) TO STDOUT (FORMAT binary)")
        .await
        .check("copy_out")?;
    let mut reader = BinaryCopyOutReader::new(reader, &types);
    let mut read: Vec<Values> = Vec::new();
    while let Some(row) = reader.next().await.check("next")? {
        ensure_eq!(row.len(), types.len());
        read.push((
            row.try_get(0).check("a")?,
            row.try_get(1).check("b")?,
            row.try_get(2).check("c")?,
            row.try_get(3).check("d")?,
            row.try_get(4).check("e")?,
            row.try_get(5).check("f")?,
            row.try_get(6).check("g")?,
        ));
        // Decoding as the wrong type is an error, never a panic.
        ensure_eq!(
            row.try_get::<String>(0).err().map(|e| e.kind()),
            Some(ErrorKind::FromSql)
        );
        ensure_eq!(
            row.try_get::<i32>(7).err().map(|e| e.kind()),
            Some(ErrorKind::Column)
        );
    }
    let mut expected = rows.clone();
    expected.sort_by_key(|r| r.0);
    ensure_eq!(read.len(), expected.len());
    for (got, want) in read.iter().zip(&expected) {
        // -0.0 == 0.0, so compare the bits of the float column.
        ensure_eq!(got.4.map(f64::to_bits), want.4.map(f64::to_bits));
        ensure_eq!(
            (&got.0, &got.1, &got.2, &got.3, &got.5, &got.6),
            (&want.0, &want.1, &want.2, &want.3, &want.5, &want.6)
        );
    }
    ensure_eq!(reader.rows(), Some(rows.len() as u64));

    // The reader refuses a text COPY and a type list of the wrong length, and the connection goes on.
    let reader = c
        .copy_out("COPY cp_types TO STDOUT")
        .await
        .check("copy_out text")?;
    let err = BinaryCopyOutReader::new(reader, &types).next().await.err();
    ensure_eq!(err.map(|e| e.kind()), Some(ErrorKind::Config));
    let reader = c
        .copy_out("COPY cp_types TO STDOUT (FORMAT binary)")
        .await
        .check("copy_out binary")?;
    let err = BinaryCopyOutReader::new(reader, &types[..2])
        .next()
        .await
        .err();
    ensure_eq!(err.map(|e| e.kind()), Some(ErrorKind::Config));
    still_usable(&mut c).await
}

/// COPY inside a transaction commits and rolls back with it.
async fn copy_in_follows_its_transaction(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE cp_tx (id int8, name text)")
        .await
        .check("create")?;
    let mut tx = c.transaction().await.check("begin")?;
    let mut writer = tx
        .copy_in("COPY cp_tx FROM STDIN (FORMAT csv)")
        .await
        .check("copy_in")?;
    writer.write(b"1,one\n2,two\n").await.check("write")?;
    ensure_eq!(writer.finish().await.check("finish")?, 2);
    ensure_eq!(tx.transaction_status(), TransactionStatus::InTransaction);
    tx.rollback().await.check("rollback")?;
    ensure_eq!(table_summary(&mut c, "cp_tx").await?.0, 0);

    let mut tx = c.transaction().await.check("begin")?;
    let mut writer = tx
        .copy_in("COPY cp_tx FROM STDIN (FORMAT csv)")
        .await
        .check("copy_in")?;
    writer.write(b"3,three\n").await.check("write")?;
    ensure_eq!(writer.finish().await.check("finish")?, 1);
    tx.commit().await.check("commit")?;
    ensure_eq!(table_summary(&mut c, "cp_tx").await?, (1, 3, 5));
    still_usable(&mut c).await
}

/// The COPY scenarios, in the order they run.
pub(super) fn scenarios() -> Vec<(&'static str, Scenario)> {
    scenarios![
        binary_copy_typed_round_trip,
        copy_in_bad_row_is_a_db_error,
        copy_in_dropped_writer_sends_copy_fail,
        copy_writer_errors_leave_the_connection_usable,
        copy_out_dropped_midway,
        copy_in_follows_its_transaction,
        copy_million_rows_text,
        copy_million_rows_csv,
        copy_million_rows_binary,
    ]
}
