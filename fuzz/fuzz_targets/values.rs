//! (d) Value decoders for every supported type, arrays included: binary, text (the simple query mode) and
//! binary COPY.
#![no_main]

use wasi_pg_client::Row;
use wasi_pg_client::fuzzing::try_decode;

#[global_allocator]
static ALLOC: wasi_pg_client_fuzz::Capped = wasi_pg_client_fuzz::Capped;

include!("../../src/fuzzing/feature_types.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasi_pg_client::fuzzing::values(data, &feature_types);
});
