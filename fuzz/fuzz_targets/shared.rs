//! (f) The routing of a connection that many futures share: requests queued, server bytes read, futures
//! polled, dropped and timed out, in any order, with any bytes from the server.
#![no_main]

#[global_allocator]
static ALLOC: wasi_pg_client_fuzz::Capped = wasi_pg_client_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasi_pg_client::fuzzing::shared(data);
});
