//! Parameter types taken from the Rust values themselves, for the modes that never prepare a named statement
//! ([`QueryMode::Unnamed`](crate::config::QueryMode) and `Simple`).
//!
//! `ToSql` cannot name its type, only accept or refuse one, so each value is offered the built-in types in a
//! fixed order and takes the first it accepts: `i32` becomes `int4`, `&str` `text` (before `varchar`),
//! `DateTime<Utc>` `timestamptz`, `Vec<i64>` `int8[]`. A value that accepts none (a user-defined enum or
//! composite) has no inferred type; the caller then asks the server.

use bytes::BytesMut;
use postgres_types::{Type, WrongType};

use crate::client::Param;

/// The built-in types tried, in order. Where a Rust type accepts several, the first listed wins.
const CANDIDATES: &[Type] = &[
    Type::BOOL,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::TEXT,
    Type::BYTEA,
    Type::UUID,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMP,
    Type::DATE,
    Type::TIME,
    Type::OID,
    Type::CHAR,
    Type::INET,
    Type::BOOL_ARRAY,
    Type::INT2_ARRAY,
    Type::INT4_ARRAY,
    Type::INT8_ARRAY,
    Type::FLOAT4_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::BYTEA_ARRAY,
    Type::UUID_ARRAY,
    Type::JSONB_ARRAY,
    Type::TIMESTAMPTZ_ARRAY,
    Type::TIMESTAMP_ARRAY,
    Type::DATE_ARRAY,
    Type::TIME_ARRAY,
    Type::OID_ARRAY,
];

/// The built-in type `param` encodes as, if any. `scratch` is reused between calls.
pub(crate) fn infer(param: Param<'_>, scratch: &mut BytesMut) -> Option<Type> {
    CANDIDATES
        .iter()
        .find(|ty| {
            scratch.clear();
            // Any answer but WrongType means the type is accepted (an out-of-range value fails later, with
            // its own error, when the parameter is really encoded).
            match param.to_sql_checked(ty, scratch) {
                Ok(_) => true,
                Err(e) => !e.is::<WrongType>(),
            }
        })
        .cloned()
}

/// The inferred types of every parameter, or `None` if any has none.
pub(crate) fn infer_all(params: &[Param<'_>]) -> Option<Vec<Type>> {
    let mut scratch = BytesMut::new();
    params.iter().map(|p| infer(*p, &mut scratch)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inferred(param: Param<'_>) -> Option<Type> {
        infer(param, &mut BytesMut::new())
    }

    #[test]
    fn rust_values_map_to_builtin_types() {
        assert_eq!(inferred(&true), Some(Type::BOOL));
        assert_eq!(inferred(&1i16), Some(Type::INT2));
        assert_eq!(inferred(&1i32), Some(Type::INT4));
        assert_eq!(inferred(&1i64), Some(Type::INT8));
        assert_eq!(inferred(&1.5f32), Some(Type::FLOAT4));
        assert_eq!(inferred(&1.5f64), Some(Type::FLOAT8));
        assert_eq!(inferred(&"text"), Some(Type::TEXT));
        assert_eq!(inferred(&String::from("text")), Some(Type::TEXT));
        assert_eq!(inferred(&vec![1u8, 2]), Some(Type::BYTEA));
        assert_eq!(inferred(&7u32), Some(Type::OID));
        assert_eq!(inferred(&vec![1i64, 2]), Some(Type::INT8_ARRAY));
        assert_eq!(inferred(&vec!["a", "b"]), Some(Type::TEXT_ARRAY));
        assert_eq!(inferred(&None::<i32>), Some(Type::INT4));
        assert_eq!(inferred(&Some("x")), Some(Type::TEXT));
        let now = std::time::SystemTime::now();
        assert_eq!(inferred(&now), Some(Type::TIMESTAMPTZ));
    }

    #[test]
    fn values_without_a_builtin_type_are_not_inferred() {
        #[derive(Debug)]
        struct Custom;
        impl postgres_types::ToSql for Custom {
            fn to_sql(
                &self,
                _: &Type,
                _: &mut BytesMut,
            ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>>
            {
                Ok(postgres_types::IsNull::Yes)
            }
            fn accepts(ty: &Type) -> bool {
                ty.name() == "my_enum"
            }
            postgres_types::to_sql_checked!();
        }
        assert_eq!(inferred(&Custom), None);
        assert_eq!(infer_all(&[&1i32, &Custom]), None);
        assert_eq!(
            infer_all(&[&1i32, &"x"]),
            Some(vec![Type::INT4, Type::TEXT])
        );
    }
}
