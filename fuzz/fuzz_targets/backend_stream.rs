//! A server byte stream, cut into arbitrary chunks, through startup, auth and a query in the sans-IO core.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasi_pg_client::fuzzing::backend_stream(data);
});
