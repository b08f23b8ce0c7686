//! (d) Value decoders for every supported type, arrays included: binary, text (the simple query mode) and
//! binary COPY.
#![no_main]

use wasi_pg_client::Row;
use wasi_pg_client::fuzzing::try_decode;

#[global_allocator]
static ALLOC: wasi_pg_client_fuzz::Capped = wasi_pg_client_fuzz::Capped;

/// The Rust types of the optional features (the replay under `cargo test` decodes the same).
fn feature_types(row: &Row) {
    try_decode::<chrono::NaiveDate>(row);
    try_decode::<chrono::NaiveTime>(row);
    try_decode::<chrono::NaiveDateTime>(row);
    try_decode::<chrono::DateTime<chrono::Utc>>(row);
    try_decode::<chrono::DateTime<chrono::FixedOffset>>(row);
    try_decode::<Vec<chrono::NaiveDate>>(row);
    try_decode::<time::Date>(row);
    try_decode::<time::Time>(row);
    try_decode::<time::PrimitiveDateTime>(row);
    try_decode::<time::OffsetDateTime>(row);
    try_decode::<uuid::Uuid>(row);
    try_decode::<Vec<uuid::Uuid>>(row);
    try_decode::<serde_json::Value>(row);
    try_decode::<Vec<serde_json::Value>>(row);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasi_pg_client::fuzzing::values(data, &feature_types);
});
