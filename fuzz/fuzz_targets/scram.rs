//! (b) SCRAM server messages: the mechanism list, server-first and server-final.
#![no_main]

#[global_allocator]
static ALLOC: wasi_pg_client_fuzz::Capped = wasi_pg_client_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasi_pg_client::fuzzing::scram(data);
});
