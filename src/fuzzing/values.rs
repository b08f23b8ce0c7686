//! [`values`]: one value of any type through the decoders a caller reaches: [`Row::try_get`] on binary
//! values, the simple query mode's text-to-binary conversion, and [`BinaryCopyRow::try_get`] on a binary COPY
//! stream. Every Rust type postgres-types decodes (arrays included) is tried on every column whose type it
//! accepts.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use postgres_types::{Field, FromSql, Kind, PgLsn, Timestamp, Type};

use super::{Input, violated};
use crate::proto::RawRow;
use crate::proto::row::SimpleColumn;
use crate::proto::statement::Column;
use crate::proto::text_values::{column_type, text_to_binary};
use crate::{BinaryCopyRow, Error, Row, SimpleQueryRow};

/// Decodes one value, or a binary COPY stream, from `data`: two bytes pick the type (from every built-in type
/// and a few user-defined ones: hstore, citext, ltree, an enum, domains, a composite, arrays of them), one
/// byte picks the path (binary, NULL, text, or a binary COPY stream whose further columns' types come next,
/// two bytes each), the rest is the value or the stream. `more` decodes the single column of a [`Row`] as Rust types
/// of optional features (chrono, time, uuid, serde_json), whose crates only the caller names.
pub fn values(data: &[u8], more: &dyn Fn(&Row)) {
    let mut input = Input(data);
    let types = all_types();
    let index = usize::from(input.u16()) % types.len();
    let ty = &types[index];
    let mode = input.byte();
    let raw = input.rest();
    match mode & 3 {
        0 => decode_binary(ty, Some(raw), more),
        1 => decode_binary(ty, None, more),
        2 => decode_text(ty, raw, more),
        _ => {
            // One to four columns: the chosen type, then one more pair of bytes per further column.
            let count = 1 + usize::from((mode >> 2) & 3);
            let mut input = Input(raw);
            let mut columns = vec![ty.clone()];
            for _ in 1..count {
                columns.push(types[usize::from(input.u16()) % types.len()].clone());
            }
            let chunk = 1 + usize::from(mode >> 4) * 7;
            decode_copy(&columns, input.rest().chunks(chunk), more);
        }
    }
}

/// Decodes column 0 of `row` as `T` (and as `Option<T>`) if `T` accepts its type; errors are fine.
pub fn try_decode<'a, T: FromSql<'a>>(row: &'a Row) {
    let _ = row.try_get::<_, T>(0);
    let _ = row.try_get::<_, Option<T>>(0);
}

/// A binary value (`None`: SQL NULL) of type `ty`, through [`Row::try_get`] as every Rust type.
pub(crate) fn decode_binary(ty: &Type, raw: Option<&[u8]>, more: &dyn Fn(&Row)) {
    let row = one_column_row(ty, raw);
    decode_builtins(&row, 0);
    more(&row);
}

/// A text value of type `ty` as the simple query mode reads it: as text (a [`SimpleQueryRow`]), and converted
/// to binary where the mode converts that type. A conversion that succeeds must give a value the type's own
/// Rust type decodes: anything else would turn a server's valid text into an error (or a wrong value) for the
/// caller.
pub(crate) fn decode_text(ty: &Type, text: &[u8], more: &dyn Fn(&Row)) {
    let columns: Arc<[SimpleColumn]> = vec![SimpleColumn {
        name: "v".to_string(),
        type_oid: ty.oid(),
    }]
    .into();
    if let Ok(row) = SimpleQueryRow::new(columns, RawRow::from_fields(vec![Some(text.to_vec())])) {
        let _ = row.try_get(0);
    }
    let reported = column_type(ty.clone());
    let Some(binary) = text_to_binary(&reported, text) else {
        return;
    };
    let row = one_column_row(&reported, Some(&binary[..]));
    let canonical = match reported {
        Type::BOOL => row.try_get::<_, bool>(0).map(drop),
        Type::INT2 => row.try_get::<_, i16>(0).map(drop),
        Type::INT4 => row.try_get::<_, i32>(0).map(drop),
        Type::INT8 => row.try_get::<_, i64>(0).map(drop),
        Type::OID => row.try_get::<_, u32>(0).map(drop),
        Type::FLOAT4 => row.try_get::<_, f32>(0).map(drop),
        Type::FLOAT8 => row.try_get::<_, f64>(0).map(drop),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, &str>(0).map(drop)
        }
        Type::JSON => std::str::from_utf8(&binary)
            .map(drop)
            .map_err(|e| Error::protocol(e.to_string())),
        Type::BYTEA => row.try_get::<_, &[u8]>(0).map(drop),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => row.try_get::<_, Timestamp<SystemTime>>(0).map(drop),
        Type::DATE | Type::TIME => match binary.len() {
            4 | 8 => Ok(()),
            n => Err(Error::protocol(format!("{n} bytes"))),
        },
        Type::UUID => match binary.len() {
            16 => Ok(()),
            n => Err(Error::protocol(format!("{n} bytes"))),
        },
        Type::JSONB => match binary.first() {
            Some(1) => Ok(()),
            _ => Err(Error::protocol("no JSONB version byte")),
        },
        _ => Ok(()),
    };
    if let Err(e) = canonical {
        violated(format_args!(
            "the simple mode converted {:?} of type {reported} to {binary:02x?}, which does not decode: {e}",
            String::from_utf8_lossy(text)
        ));
    }
    decode_builtins(&row, 0);
    more(&row);
}

/// A binary COPY stream for columns of `types`, fed in `chunks`, through the COPY reader's decoder; every
/// value of every row it gives through [`BinaryCopyRow::try_get`], then as a [`Row`] through
/// [`decode_binary`].
pub(crate) fn decode_copy<'c>(
    types: &[Type],
    chunks: impl IntoIterator<Item = &'c [u8]>,
    more: &dyn Fn(&Row),
) {
    let _ = BinaryCopyRow::decode_chunks(types, chunks, |row| {
        if row.len() != types.len() {
            violated(format_args!(
                "a binary COPY row of {} columns for {} types",
                row.len(),
                types.len()
            ));
        }
        for (i, ty) in types.iter().enumerate() {
            decode_builtins(row, i);
            match row.raw(i) {
                Ok(raw) => decode_binary(ty, raw, more),
                Err(e) => violated(format_args!("column {i} of a decoded COPY row: {e}")),
            }
        }
    });
}

fn one_column_row(ty: &Type, raw: Option<&[u8]>) -> Row {
    let columns: Arc<[Column]> = vec![Column::new("v".to_string(), ty.clone(), None, None)].into();
    Row::new(columns, RawRow::from_fields(vec![raw.map(<[u8]>::to_vec)]))
        .unwrap_or_else(|e| violated(format_args!("a one-column row: {e}")))
}

/// What the two row types have in common: a column decoded by index.
trait Columns {
    fn get_as<'a, T: FromSql<'a>>(&'a self, index: usize) -> Result<T, Error>;
}

impl Columns for Row {
    fn get_as<'a, T: FromSql<'a>>(&'a self, index: usize) -> Result<T, Error> {
        self.try_get(index)
    }
}

impl Columns for BinaryCopyRow {
    fn get_as<'a, T: FromSql<'a>>(&'a self, index: usize) -> Result<T, Error> {
        self.try_get(index)
    }
}

/// Column `index` as every Rust type postgres-types decodes without optional crates; each one checks that it
/// accepts the column's type first, as callers do. Errors are fine.
fn decode_builtins<R: Columns>(row: &R, index: usize) {
    macro_rules! each {
        ($($t:ty),* $(,)?) => {
            $( let _ = row.get_as::<$t>(index); )*
        };
    }
    each!(
        bool,
        i8,
        i16,
        i32,
        i64,
        u32,
        f32,
        f64,
        String,
        &str,
        Box<str>,
        Cow<'_, str>,
        Vec<u8>,
        &[u8],
        HashMap<String, Option<String>>,
        SystemTime,
        Timestamp<SystemTime>,
        IpAddr,
        PgLsn,
        Box<i64>,
        Option<String>,
        Vec<Option<bool>>,
        Vec<Option<i8>>,
        Vec<Option<i16>>,
        Vec<Option<i32>>,
        Vec<i64>,
        Vec<Option<u32>>,
        Vec<Option<f32>>,
        Vec<f64>,
        Vec<Option<String>>,
        Vec<&str>,
        Vec<Box<str>>,
        Vec<Option<Vec<u8>>>,
        Vec<&[u8]>,
        Vec<HashMap<String, Option<String>>>,
        Vec<Option<SystemTime>>,
        Vec<Timestamp<SystemTime>>,
        Vec<IpAddr>,
        Vec<PgLsn>,
        Box<[Option<i32>]>,
        Box<[String]>,
        Option<Vec<Option<String>>>,
    );
    #[cfg(feature = "array-impls")]
    each!([i32; 2], [Option<String>; 3], [Vec<u8>; 1]);
    #[cfg(feature = "with-serde_json-1")]
    each!(
        postgres_types::Json<&str>,
        postgres_types::Json<Vec<Option<i64>>>,
        postgres_types::Json<HashMap<String, String>>,
        Vec<postgres_types::Json<f64>>,
    );
}

/// Every built-in type, then user-defined ones as the catalog lookup builds them.
pub(crate) fn all_types() -> &'static [Type] {
    static TYPES: OnceLock<Vec<Type>> = OnceLock::new();
    TYPES.get_or_init(|| {
        let mut types: Vec<Type> = (0..=10_000).filter_map(Type::from_oid).collect();
        let user = |name: &str, oid: u32, kind: Kind| {
            Type::new(name.to_string(), oid, kind, "public".to_string())
        };
        let hstore = user("hstore", 90_001, Kind::Simple);
        let mood = user(
            "mood",
            90_002,
            Kind::Enum(vec!["sad".to_string(), "ok".to_string()]),
        );
        let positive = user("positive", 90_003, Kind::Domain(Type::INT4));
        let pair = user(
            "pair",
            90_004,
            Kind::Composite(vec![
                Field::new("a".to_string(), Type::INT4),
                Field::new("b".to_string(), Type::TEXT),
            ]),
        );
        types.extend([
            user("_hstore", 90_011, Kind::Array(hstore.clone())),
            user("_mood", 90_012, Kind::Array(mood.clone())),
            user("_positive", 90_013, Kind::Array(positive.clone())),
            user("_pair", 90_014, Kind::Array(pair.clone())),
            user("tags", 90_015, Kind::Domain(Type::TEXT_ARRAY)),
            user("citext", 90_016, Kind::Simple),
            user("ltree", 90_017, Kind::Simple),
            user("lquery", 90_018, Kind::Simple),
            user("ltxtquery", 90_019, Kind::Simple),
            user("intrange", 90_020, Kind::Range(Type::INT4)),
            hstore,
            mood,
            positive,
            pair,
        ]);
        types
    })
}
