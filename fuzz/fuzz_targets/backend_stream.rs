//! (a) A server byte stream, cut into arbitrary chunks, through the whole sans-IO core: startup and auth,
//! simple and extended queries, COPY in both directions, notifications.
#![no_main]

#[global_allocator]
static ALLOC: wasi_pg_client_fuzz::Capped = wasi_pg_client_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasi_pg_client::fuzzing::backend_stream(data);
});
