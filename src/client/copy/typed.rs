//! Typed rows for [`BinaryCopyInWriter::write_row`]: tuples of plain Rust values that the writer encodes
//! straight into its buffer (one size check per row, the bytes written in place) instead of asking each
//! value's [`ToSql`] to append itself.
//!
//! A value takes the direct way only for the types whose binary form its [`ToSql`] writes unchanged (`i32`
//! for `int4`, `&str` for `text`, `varchar`, `bpchar`, `name` and `unknown`, ...); for any other column type
//! the whole row goes through [`ToSql::to_sql_checked`] as [`write`](BinaryCopyInWriter::write) does, so
//! what reaches the server, and every error, is the same either way.
//!
//! [`BinaryCopyInWriter::write_row`]: super::BinaryCopyInWriter::write_row
//! [`BinaryCopyInWriter`]: super::BinaryCopyInWriter

use bytes::{BufMut, BytesMut};
use postgres_types::{IsNull, ToSql, Type};

use crate::Error;

/// The longest value PostgreSQL stores (`MaxAllocSize`, 1 GiB - 1); a longer length is refused before any of
/// it is buffered.
pub(super) const MAX_FIELD_LEN: usize = 0x3fff_ffff;

/// Appends one row for columns of `types` to `buf`; on an error `buf` is left as it was.
pub(super) fn encode_row(
    buf: &mut BytesMut,
    types: &[Type],
    values: &[&(dyn ToSql + Sync)],
) -> Result<(), Error> {
    if values.len() != types.len() {
        return Err(Error::parameters(types.len(), values.len()));
    }
    // The field count is an Int16; PostgreSQL tables have at most 1600 columns.
    let count = i16::try_from(values.len())
        .map_err(|_| Error::config("a binary COPY row holds at most 32767 values"))?;
    let mark = buf.len();
    buf.put_i16(count);
    for (i, (value, ty)) in values.iter().zip(types).enumerate() {
        let len_at = buf.len();
        buf.put_i32(0);
        let encoded = match value.to_sql_checked(ty, buf) {
            Ok(IsNull::Yes) => Ok(-1),
            Ok(IsNull::No) => Some(buf.len() - len_at - 4)
                .filter(|&len| len <= MAX_FIELD_LEN)
                .and_then(|len| i32::try_from(len).ok())
                .ok_or_else(|| {
                    Error::config(format!(
                        "value {} of the row is longer than the 1 GiB PostgreSQL stores",
                        i + 1
                    ))
                }),
            Err(e) => Err(Error::to_sql(ty, i, e)),
        };
        match encoded {
            Ok(len) => buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes()),
            Err(e) => {
                buf.truncate(mark);
                return Err(e);
            }
        }
    }
    Ok(())
}

mod sealed {
    pub trait Sealed {}
}

/// How a value is written the direct way for a column type.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// SQL NULL: the length word -1 and no bytes.
    Null,
    /// This many bytes, written by [`CopyValue::put`].
    Bytes(usize),
    /// Not for this type: the row goes through [`ToSql`].
    No,
}

/// A value [`BinaryCopyInWriter::write_row`](super::BinaryCopyInWriter::write_row) can encode itself:
/// `bool`, `i16`, `i32`, `i64`, `f32`, `f64`, `&str`, `String`, `&[u8]`, `Vec<u8>`, and `Option` of any of
/// them (`None` is NULL). Sealed: the crate keeps each one's bytes identical to its [`ToSql`].
pub trait CopyValue: ToSql + Sync + sealed::Sealed {
    /// How this value is written for a column of type `ty`.
    #[doc(hidden)]
    fn direct(&self, ty: &Type) -> Direct;

    /// Writes the value's binary form into `out`, exactly as many bytes as [`direct`](Self::direct) said.
    #[doc(hidden)]
    fn put(&self, out: &mut [u8]);
}

macro_rules! fixed_size {
    ($($t:ty => $pg:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl CopyValue for $t {
            #[inline]
            fn direct(&self, ty: &Type) -> Direct {
                if *ty == Type::$pg { Direct::Bytes(size_of::<$t>()) } else { Direct::No }
            }
            #[inline]
            fn put(&self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_be_bytes());
            }
        }
    )*};
}

fixed_size!(i16 => INT2, i32 => INT4, i64 => INT8, f32 => FLOAT4, f64 => FLOAT8);

impl sealed::Sealed for bool {}
impl CopyValue for bool {
    #[inline]
    fn direct(&self, ty: &Type) -> Direct {
        if *ty == Type::BOOL {
            Direct::Bytes(1)
        } else {
            Direct::No
        }
    }
    #[inline]
    fn put(&self, out: &mut [u8]) {
        out[0] = u8::from(*self);
    }
}

/// The text types whose binary form is the text's UTF-8 bytes (`ltree` and its kin add a version byte:
/// those go through [`ToSql`]).
fn plain_text(ty: &Type) -> bool {
    [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
    ]
    .contains(ty)
}

macro_rules! byte_strings {
    ($($t:ty => $is:path),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl CopyValue for $t {
            #[inline]
            fn direct(&self, ty: &Type) -> Direct {
                if $is(ty) {
                    Direct::Bytes(AsRef::<[u8]>::as_ref(self).len())
                } else {
                    Direct::No
                }
            }
            #[inline]
            fn put(&self, out: &mut [u8]) {
                out.copy_from_slice(AsRef::<[u8]>::as_ref(self));
            }
        }
    )*};
}

fn bytea(ty: &Type) -> bool {
    *ty == Type::BYTEA
}

byte_strings!(&str => plain_text, String => plain_text, &[u8] => bytea, Vec<u8> => bytea);

impl<T: CopyValue> sealed::Sealed for Option<T> {}
impl<T: CopyValue> CopyValue for Option<T> {
    #[inline]
    fn direct(&self, ty: &Type) -> Direct {
        match self {
            Some(value) => value.direct(ty),
            // NULL fits any column T's ToSql accepts; asking a value of T is the only way to know which, so a
            // NULL of an unusual column type goes through ToSql, which checks it.
            None if T::accepts(ty) => Direct::Null,
            None => Direct::No,
        }
    }
    #[inline]
    fn put(&self, out: &mut [u8]) {
        if let Some(value) = self {
            value.put(out);
        }
    }
}

/// A row for [`BinaryCopyInWriter::write_row`](super::BinaryCopyInWriter::write_row): a tuple of 1 to 12
/// [`CopyValue`]s, one per column.
pub trait CopyRow: sealed::Sealed {
    /// Appends the row for columns of `types` to `buf`; on an error `buf` is left as it was.
    #[doc(hidden)]
    fn encode(&self, types: &[Type], buf: &mut BytesMut) -> Result<(), Error>;
}

macro_rules! tuples {
    ($($n:literal: ($($v:ident $i:tt),+);)*) => {$(
        impl<$($v: CopyValue),+> sealed::Sealed for ($($v,)+) {}
        impl<$($v: CopyValue),+> CopyRow for ($($v,)+) {
            #[inline]
            fn encode(&self, types: &[Type], buf: &mut BytesMut) -> Result<(), Error> {
                if types.len() != $n {
                    return Err(Error::parameters(types.len(), $n));
                }
                let directs = [$(self.$i.direct(&types[$i])),+];
                let mut size = 2 + 4 * $n;
                for direct in directs {
                    match direct {
                        Direct::Bytes(len) => size += len,
                        Direct::Null => {}
                        Direct::No => {
                            return encode_row(buf, types, &[$(&self.$i),+]);
                        }
                    }
                }
                if directs.iter().any(|d| matches!(d, Direct::Bytes(len) if *len > MAX_FIELD_LEN)) {
                    // Too long for PostgreSQL: ToSql's way says so in its error.
                    return encode_row(buf, types, &[$(&self.$i),+]);
                }
                let start = buf.len();
                buf.resize(start + size, 0);
                let out = &mut buf[start..];
                out[..2].copy_from_slice(&($n as i16).to_be_bytes());
                let mut at = 2;
                $(
                    match directs[$i] {
                        Direct::Bytes(len) => {
                            // At most MAX_FIELD_LEN, checked above.
                            out[at..at + 4].copy_from_slice(&(len as i32).to_be_bytes());
                            self.$i.put(&mut out[at + 4..at + 4 + len]);
                            at += 4 + len;
                        }
                        _ => {
                            out[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes());
                            at += 4;
                        }
                    }
                )+
                debug_assert_eq!(at, size);
                Ok(())
            }
        }
    )*};
}

tuples! {
    1: (A 0);
    2: (A 0, B 1);
    3: (A 0, B 1, C 2);
    4: (A 0, B 1, C 2, D 3);
    5: (A 0, B 1, C 2, D 3, E 4);
    6: (A 0, B 1, C 2, D 3, E 4, F 5);
    7: (A 0, B 1, C 2, D 3, E 4, F 5, G 6);
    8: (A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
    9: (A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
    10: (A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
    11: (A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
    12: (A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row as the direct way writes it and as `ToSql` does: they must be the same bytes, or the same
    /// error.
    fn both<R: CopyRow>(row: &R, dyns: &[&(dyn ToSql + Sync)], types: &[Type]) {
        let mut direct = BytesMut::from(&b"before"[..]);
        let mut checked = direct.clone();
        let a = row.encode(types, &mut direct);
        let b = encode_row(&mut checked, types, dyns);
        match (a, b) {
            (Ok(()), Ok(())) => assert_eq!(direct, checked, "{types:?}"),
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string());
                assert_eq!(
                    &direct[..],
                    b"before",
                    "an error leaves the buffer as it was"
                );
            }
            (a, b) => panic!("{types:?}: direct {a:?}, checked {b:?}"),
        }
    }

    #[test]
    fn rows_written_directly_are_the_bytes_tosql_writes() {
        let (text, long) = ("h\u{e9}llo", "x".repeat(300));
        let blob: &[u8] = &[0, 1, 255];
        both(
            &(1i16, 2i32, 3i64, 4.5f32, -6.25f64, true),
            &[&1i16, &2i32, &3i64, &4.5f32, &-6.25f64, &true],
            &[
                Type::INT2,
                Type::INT4,
                Type::INT8,
                Type::FLOAT4,
                Type::FLOAT8,
                Type::BOOL,
            ],
        );
        for ty in [
            Type::TEXT,
            Type::VARCHAR,
            Type::BPCHAR,
            Type::NAME,
            Type::UNKNOWN,
        ] {
            both(
                &(text, long.clone(), blob, blob.to_vec()),
                &[&text, &long, &blob, &blob.to_vec()],
                &[ty.clone(), ty, Type::BYTEA, Type::BYTEA],
            );
        }
        let none: Option<&str> = None;
        both(
            &(Some(7i32), None::<i64>, none, Some(""), None::<Vec<u8>>),
            &[
                &Some(7i32),
                &None::<i64>,
                &none,
                &Some(""),
                &None::<Vec<u8>>,
            ],
            &[Type::INT4, Type::INT8, Type::TEXT, Type::TEXT, Type::BYTEA],
        );
    }

    #[test]
    fn other_types_go_through_tosql_with_its_errors() {
        let citext = Type::new(
            "citext".to_string(),
            16_385,
            postgres_types::Kind::Simple,
            "public".to_string(),
        );
        let ltree = Type::new(
            "ltree".to_string(),
            16_400,
            postgres_types::Kind::Simple,
            "public".to_string(),
        );
        // Accepted by ToSql, written its way (ltree adds a version byte).
        both(&("a.b", 1i32), &[&"a.b", &1i32], &[ltree, Type::INT4]);
        both(&("Mixed",), &[&"Mixed"], &[citext]);
        // Refused by ToSql: the same error, a NULL of the wrong type included.
        both(&(1i64,), &[&1i64], &[Type::INT4]);
        both(&(None::<i64>,), &[&None::<i64>], &[Type::TEXT]);
        both(&("x", 1i32), &[&"x", &1i32], &[Type::BYTEA, Type::INT4]);
        // A row of the wrong width.
        both(&(1i32, 2i32), &[&1i32, &2i32], &[Type::INT4]);
    }
}
