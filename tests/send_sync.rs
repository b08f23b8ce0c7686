//! Native clients and their futures must be `Send`, so they can live in multi-threaded tokio tasks and pools.
//! This is a compile-time check: the test fails to build if a `!Send` type sneaks in.
#![cfg(not(target_os = "wasi"))]

use wasi_pg_client::{Client, Config, Error, Row, Statement};

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
