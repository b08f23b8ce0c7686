//! Native clients and their futures must be `Send`, so they can live in multi-threaded tokio tasks and pools.
//! This is a compile-time check: the test fails to build if a `!Send` type sneaks in.
#![cfg(not(target_os = "wasi"))]

use wasi_pg_client::{
    Client, Config, Cursor, Error, Pipeline, PipelineOutput, Portal, Row, RowStream, Statement,
    Transaction,
};

fn assert_send<T: Send>(_: &T) {}
fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn client_and_futures_are_send() {
    assert_send_sync::<Config>();
    assert_send_sync::<Error>();
    assert_send_sync::<Row>();
    assert_send_sync::<Statement>();
    let config = Config::new();
    let connect = Client::connect(&config);
    assert_send(&connect);
    drop(connect);
    // Futures borrowing a client: built in a closure that is never called, checked by type only.
    let _check = |client: &mut Client, statement: &Statement| {
        assert_send(client);
        let query = client.query(statement, &[]);
        assert_send(&query);
        drop(query);
        let simple = client.simple_query("SELECT 1");
        assert_send(&simple);
        drop(simple);
        let prepare = client.prepare("SELECT 1");
        assert_send(&prepare);
    };
}

/// Natively these values and the futures that make them must be `Send`, like the rest of the client, to
/// live in multi-threaded tokio tasks. Checked by type only: the closures are never called.
#[test]
fn streams_portals_cursors_pipelines_are_send() {
    assert_send_sync::<Portal>();
    assert_send_sync::<Pipeline<'static>>();
    assert_send_sync::<PipelineOutput>();
    let _client = |client: &mut Client, pipeline: &Pipeline<'_>| {
        let stream = client.query_stream("SELECT 1", &[]);
        assert_send(&stream);
        drop(stream);
        let cursor = client.cursor("SELECT 1", &[], 10);
        assert_send(&cursor);
        drop(cursor);
        let run = client.run_pipeline(pipeline);
        assert_send(&run);
    };
    let _transaction = |tx: &mut Transaction<'_>, portal: &Portal| {
        let bind = tx.bind("SELECT 1", &[]);
        assert_send(&bind);
        drop(bind);
        let fetch = tx.query_portal(portal, 10);
        assert_send(&fetch);
    };
    let _values = |stream: RowStream<'_>, cursor: Cursor<'_>| {
        assert_send(&stream);
        assert_send(&cursor);
    };
}
