// Included (not a module) by the `values` fuzz target and by its replay under `cargo test`, so both decode the
// same types: only they depend on the crates of the optional features. The includer brings `Row` and
// `try_decode` into scope.

/// The Rust types of the optional features, for the `values` target.
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
