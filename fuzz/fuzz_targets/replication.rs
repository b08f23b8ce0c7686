//! (g) A logical replication stream: CopyBoth frames, the pgoutput decoder, rows read by column name, the
//! status updates the client sends; or pgoutput messages decoded on their own.
#![no_main]

#[global_allocator]
static ALLOC: wasi_pg_client_fuzz::Capped = wasi_pg_client_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasi_pg_client::fuzzing::replication(data);
});
