//! Counts inside binary values, checked before postgres-types decodes them.
//!
//! postgres-types reserves room for as many elements as an array's header announces, and for as many entries
//! as an hstore's count says, before it reads a single one: a 20-byte array from the server can ask for tens
//! of gigabytes, which aborts the process (or panics, on 32-bit wasm). Every element takes at least its 4-byte
//! length (an hstore entry at least 8 bytes, a composite field 8), so the bytes of the value bound each count;
//! [`check_counts`] refuses a value whose counts exceed what its bytes can hold, recursing into the elements
//! and fields whose types can hold counts of their own. Callers run it on every binary value before `FromSql`.

use std::error::Error as StdError;

use postgres_types::{Kind, Type};

type BoxError = Box<dyn StdError + Sync + Send>;

/// How deeply arrays, domains and composites may nest in a value before it is refused (PostgreSQL nests far
/// less).
const MAX_DEPTH: u32 = 32;

/// Checks every count in the binary value `raw` of type `ty` against the bytes that follow it.
pub(crate) fn check_counts(ty: &Type, raw: &[u8]) -> Result<(), BoxError> {
    if !may_hold_counts(ty) {
        return Ok(());
    }
    check(ty, raw, 0)
}

/// Whether values of `ty` may hold counts that [`check_counts`] must check. Rows and COPY readers ask once
/// per column, not once per value.
pub(crate) fn may_hold_counts(ty: &Type) -> bool {
    // A built-in scalar holds no count (hstore, the one scalar that does, comes from an extension, so its OID
    // is at least FirstNormalObjectId).
    !(matches!(ty.kind(), Kind::Simple) && ty.oid() < FIRST_NORMAL_OBJECT_ID)
}

/// PostgreSQL's `FirstNormalObjectId`: the OIDs below it belong to the built-in catalog.
const FIRST_NORMAL_OBJECT_ID: u32 = 16_384;

/// Whether values of `ty` can hold counts: only those are walked.
fn has_counts(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Array(_) | Kind::Composite(_) => true,
        Kind::Domain(base) => has_counts(base),
        _ => ty.name() == "hstore",
    }
}

fn check(ty: &Type, raw: &[u8], depth: u32) -> Result<(), BoxError> {
    if depth > MAX_DEPTH {
        return Err(format!("a value of type {} nests too deeply", ty.name()).into());
    }
    match ty.kind() {
        Kind::Array(member) => check_array(member, raw, depth),
        Kind::Domain(base) => check(base, raw, depth + 1),
        Kind::Composite(fields) => {
            let mut cursor = Cursor(raw);
            let count = cursor.count("composite field", 8)?;
            for i in 0..count {
                let _oid = cursor.i32()?;
                let value = cursor.value()?;
                if let (Some(field), Some(value)) = (fields.get(i), value)
                    && has_counts(field.type_())
                {
                    check(field.type_(), value, depth + 1)?;
                }
            }
            Ok(())
        }
        Kind::Simple if ty.name() == "hstore" => {
            Cursor(raw).count("hstore entry", 8)?;
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_array(member: &Type, raw: &[u8], depth: u32) -> Result<(), BoxError> {
    let mut cursor = Cursor(raw);
    // Each dimension takes 8 bytes of header (its length and lower bound).
    let dimensions = cursor.count("array dimension", 8)?;
    let _has_nulls = cursor.i32()?;
    let _element_type = cursor.i32()?;
    let mut elements = usize::from(dimensions > 0);
    for _ in 0..dimensions {
        let len = usize::try_from(cursor.i32()?).map_err(|_| "a negative array dimension")?;
        let _lower_bound = cursor.i32()?;
        elements = elements
            .checked_mul(len)
            .ok_or("an array with more elements than memory can hold")?;
    }
    if elements > cursor.0.len() / 4 {
        return Err(format!(
            "an array of {elements} elements announced in {} bytes",
            cursor.0.len()
        )
        .into());
    }
    if has_counts(member) {
        for _ in 0..elements {
            if let Some(value) = cursor.value()? {
                check(member, value, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// Reads big-endian fields off the front of a value.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn i32(&mut self) -> Result<i32, BoxError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or("a binary value cut short")?;
        self.0 = rest;
        Ok(i32::from_be_bytes(*head))
    }

    /// A count of `what`, each taking at least `min_size` of the bytes after it.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize, BoxError> {
        let count = self.i32()?;
        let count = usize::try_from(count).map_err(|_| format!("a negative {what} count"))?;
        if count > self.0.len() / min_size {
            return Err(format!("{count} of {what}s announced in {} bytes", self.0.len()).into());
        }
        Ok(count)
    }

    /// A length-prefixed value; `None` for NULL (a negative length).
    fn value(&mut self) -> Result<Option<&'a [u8]>, BoxError> {
        let Ok(len) = usize::try_from(self.i32()?) else {
            return Ok(None);
        };
        if len > self.0.len() {
            return Err("a value longer than what holds it".into());
        }
        let (value, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(dims: &[i32], body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&i32::try_from(dims.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&23u32.to_be_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
        }
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn array_counts_are_bounded_by_their_bytes() {
        let two = [
            &4i32.to_be_bytes()[..],
            &7i32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
        ]
        .concat();
        check_counts(&Type::INT4_ARRAY, &array(&[2], &two)).unwrap();
        check_counts(&Type::INT4_ARRAY, &array(&[], &[])).unwrap();
        let err = check_counts(&Type::INT4_ARRAY, &array(&[i32::MAX], &[])).unwrap_err();
        assert!(err.to_string().contains("2147483647 elements"), "{err}");
        assert!(check_counts(&Type::INT4_ARRAY, &array(&[65_536, 65_536], &two)).is_err());
        assert!(check_counts(&Type::INT4_ARRAY, &array(&[-1], &[])).is_err());
        // Dimensions are bounded too, before any is read.
        assert!(check_counts(&Type::INT4_ARRAY, &i32::MAX.to_be_bytes()).is_err());
    }

    #[test]
    fn built_in_scalars_hold_no_counts() {
        // Whatever their bytes say: an int4 of i32::MAX is a number, not a count.
        for ty in [Type::INT4, Type::TEXT, Type::BYTEA, Type::TIMESTAMPTZ] {
            check_counts(&ty, &i32::MAX.to_be_bytes()).unwrap();
        }
    }

    #[test]
    fn hstore_and_nested_counts_are_bounded() {
        let hstore = Type::new("hstore".into(), 90_001, Kind::Simple, "public".into());
        check_counts(&hstore, &0i32.to_be_bytes()).unwrap();
        assert!(check_counts(&hstore, &1_000_000i32.to_be_bytes()).is_err());
        // An array of hstore values: each element is checked.
        let hstores = Type::new(
            "_hstore".into(),
            90_002,
            Kind::Array(hstore),
            "public".into(),
        );
        let element = [&4i32.to_be_bytes()[..], &i32::MAX.to_be_bytes()].concat();
        assert!(check_counts(&hstores, &array(&[1], &element)).is_err());
        // A domain over an array is an array.
        let domain = Type::new(
            "ids".into(),
            90_003,
            Kind::Domain(Type::INT4_ARRAY),
            "public".into(),
        );
        assert!(check_counts(&domain, &array(&[i32::MAX], &[])).is_err());
    }
}
