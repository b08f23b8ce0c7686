//! `http-service`: a small REST API over PostgreSQL, as a wasi:http component for `wasmtime serve`.
//!
//! ```text
//! GET  /items        200  [{"id": 1, "name": "apple"}, ...]          ordered by id
//! GET  /items/{id}   200  {"id": 1, "name": "apple"}                  404 if there is no such item
//! POST /items        201  {"id": 1, "name": "apple"}                  from a body {"name": "apple"};
//!                                                                      Location: /items/1
//! ```
//!
//! Failures answer `{"error": "..."}` with a status that says whose fault it is:
//!
//! - 400: an id that is not a positive integer; a body that is not a JSON object with one non-empty string
//!   `"name"` (at most 1000 characters, no NUL).
//! - 404: no such item, or no such path. 405: a method the path does not take (with an `Allow` header).
//! - 413: a body over 64 KiB. 415: a `Content-Type` other than `application/json` (none at all is accepted).
//! - 503: PostgreSQL cannot be reached (refused, timed out, too many connections, login refused) or the
//!   connection broke mid-request. 500: anything else (a bad `DATABASE_URL`, an unexpected server error).
//!
//! Bodies carry fixed texts only. The details, which can name hosts and users but never contain the password,
//! go to stderr, one line per request plus one per new connection. `wasmtime serve` prefixes each line with
//! `stderr [N] ::`, where N numbers the instance's first request.
//!
//! # Running it
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2 --example http-service
//! wasmtime serve -S cli -S inherit-network -S allow-ip-name-lookup --addr 127.0.0.1:8080 \
//!     --env DATABASE_URL=postgresql://app:secret@localhost/app \
//!     target/wasm32-wasip2/release/examples/http-service.wasm
//! curl -s localhost:8080/items -H 'content-type: application/json' -d '{"name": "apple"}'
//! ```
//!
//! `scripts/http-service.sh` does all of this against a throwaway cluster. `-S cli` gives the component its
//! environment and sockets, `-S inherit-network` lets it reach PostgreSQL, `-S allow-ip-name-lookup` lets it
//! resolve a host name. The connection settings are `DATABASE_URL` (a URI or a key=value string) and the
//! `PG*` variables, with libpq's precedence; pass each with `--env`. Without a `connect_timeout`, connecting
//! gives up after 5 seconds. The table is created on first use:
//! `CREATE TABLE IF NOT EXISTS items (id bigserial primary key, name text not null)`.
//!
//! # One instance, one connection, how many requests?
//!
//! `wasmtime serve` instantiates the component afresh for every request by default (its
//! `--max-instance-reuse-count` defaults to 1 for WASIp2 components). Nothing survives from one request to
//! the next then: each request connects, logs in, makes sure the table exists, answers, and the connection
//! closes when the host drops the instance. That costs a few round trips (and SCRAM's key derivation) per
//! request.
//!
//! The component still keeps its connection in an instance-wide slot between requests and takes it from there
//! when one is waiting. Under the default the slot is never hit. With
//! `wasmtime serve --max-instance-reuse-count 100 --idle-instance-timeout 30s` an instance answers up to 100
//! requests on one connection, one request at a time (a WASIp2 instance never runs two at once). wasmtime gives
//! a request to an idle instance if it has one and starts another instance if not, and an instance is not idle
//! until its handler has returned, a moment after its answer went out. So even one client sending requests in
//! a row may be served by a few instances, each with its own connection: expect a handful of connections, each
//! used for many requests, not exactly one. When the host drops an instance (idle too long, or used up), its
//! socket goes with it, without a Terminate message; PostgreSQL copes.
//!
//! A kept connection may have died while it waited (a server restart, `idle_session_timeout`). A GET that
//! finds it broken is retried once on a new connection. A POST is not: its INSERT may have committed before
//! the connection broke, so it answers 503 and the next request connects afresh.
//!
//! Natively this example only explains that it is a wasm component and exits with status 2.

#[cfg(target_os = "wasi")]
mod api;
#[cfg(target_os = "wasi")]
mod store;

#[cfg(target_os = "wasi")]
#[wstd::http_server]
async fn main(
    request: wstd::http::Request<wstd::http::Body>,
) -> Result<wstd::http::Response<wstd::http::Body>, wstd::http::Error> {
    api::serve(request).await
}

/// Writes one line to stderr in a single write. `eprintln!` writes piece by piece, and `wasmtime serve`
/// interleaves the pieces of instances that run side by side.
#[cfg(target_os = "wasi")]
fn log_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut text = line.to_string();
    text.push('\n');
    // Nothing sensible is left to do if stderr is gone.
    let _ = std::io::stderr().write_all(text.as_bytes());
}

#[cfg(not(target_os = "wasi"))]
fn main() {
    eprintln!(
        "http-service is a wasi:http component: build it with \
         `cargo build --release --target wasm32-wasip2 --example http-service` and run it under \
         `wasmtime serve -S cli -S inherit-network` (scripts/http-service.sh does both)"
    );
    std::process::exit(2);
}
