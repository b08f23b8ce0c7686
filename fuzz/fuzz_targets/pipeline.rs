//! (e) The response routing of pipelines under arbitrary interleavings, with an abandoned request before and
//! a query after.
#![no_main]

#[global_allocator]
static ALLOC: wasi_pg_client_fuzz::Capped = wasi_pg_client_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasi_pg_client::fuzzing::pipeline(data);
});
