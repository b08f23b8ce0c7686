//! [`QueryMode::Simple`](crate::config::QueryMode): parameters rendered as SQL literals by the client, and text
//! results turned into the binary form `FromSql` reads.
//!
//! Rendering is where client-side parameters become dangerous, so it is strict:
//! - placeholders are found by a lexer that skips string literals (standard and `E''`), quoted identifiers,
//!   dollar-quoted strings and comments, so a `$1` inside any of them is left alone;
//! - every literal is parenthesised with an explicit cast (`(-1::int4)` would be wrong: `('-1'::int4)`), so a
//!   negative number can never turn `1-$1` into the start of a `--` comment;
//! - text is quoted only with `standard_conforming_strings` on (otherwise backslashes would escape), and a NUL
//!   byte, which no literal can hold, is an error.

use bytes::BytesMut;
use postgres_types::{IsNull, Type};

use crate::Error;
use crate::client::Param;

fn unsupported(what: impl std::fmt::Display) -> Error {
    Error::unsupported(format!(
        "QueryMode::Simple cannot send {what}; use QueryMode::Unnamed or QueryMode::Cached"
    ))
}

/// `sql` with each `$n` replaced by the literal of parameter n.
pub(crate) fn render(
    sql: &str,
    params: &[Param<'_>],
    standard_conforming_strings: bool,
) -> Result<String, Error> {
    if !standard_conforming_strings {
        return Err(unsupported(
            "parameters while standard_conforming_strings is off",
        ));
    }
    let mut literals: Vec<Option<String>> = vec![None; params.len()];
    let mut out = String::with_capacity(sql.len() + 16 * params.len());
    let mut highest = 0usize;
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => {
                let escapes = i > 0
                    && matches!(bytes[i - 1], b'E' | b'e')
                    && (i < 2 || !is_ident(bytes[i - 2]));
                i = skip_quoted(bytes, i, b'\'', escapes);
            }
            b'"' => i = skip_quoted(bytes, i, b'"', false),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |p| i + p + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_block_comment(bytes, i),
            b'$' if i > 0 && is_ident(bytes[i - 1]) => i += 1,
            b'$' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let number: usize = sql[i + 1..i + 1 + digits]
                    .parse()
                    .map_err(|_| Error::config("parameter number out of range"))?;
                let index = number
                    .checked_sub(1)
                    .filter(|&n| n < params.len())
                    .ok_or_else(|| {
                        Error::config(format!(
                            "the query uses ${number} but {} parameters were given",
                            params.len()
                        ))
                    })?;
                highest = highest.max(number);
                out.push_str(&sql[copied..i]);
                if literals[index].is_none() {
                    literals[index] = Some(literal(params[index], index)?);
                }
                out.push_str(literals[index].as_deref().unwrap_or_default());
                i += 1 + digits;
                copied = i;
            }
            b'$' => i = skip_dollar_quoted(sql, i),
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    if highest != params.len() {
        return Err(Error::parameters(highest, params.len()));
    }
    Ok(out)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The index after a quoted run starting at `start` (a doubled quote stays inside; with `escapes`, so does a
/// backslash-escaped character). An unterminated run ends the text.
fn skip_quoted(bytes: &[u8], start: usize, quote: u8, escapes: bool) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            b if b == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return i + 1;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The index after a (nesting) block comment starting at `start`.
fn skip_block_comment(bytes: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The index after a dollar-quoted string (`$tag$ ... $tag$`) starting at `start`, or after the `$` if none
/// starts there.
fn skip_dollar_quoted(sql: &str, start: usize) -> usize {
    let rest = &sql[start + 1..];
    let tag_len = rest
        .bytes()
        .take_while(|&b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80)
        .count();
    if rest.as_bytes().get(tag_len) != Some(&b'$')
        || rest.as_bytes().first().is_some_and(u8::is_ascii_digit)
    {
        return start + 1;
    }
    let delimiter = &sql[start..start + tag_len + 2];
    let body = start + delimiter.len();
    sql[body..]
        .find(delimiter)
        .map_or(sql.len(), |p| body + p + delimiter.len())
}

/// One parameter as a parenthesised, cast SQL literal.
fn literal(param: Param<'_>, index: usize) -> Result<String, Error> {
    let mut buf = BytesMut::new();
    let ty = crate::client::param_types::infer(param, &mut buf).ok_or_else(|| {
        unsupported(format_args!(
            "parameter ${} (its type is not a built-in scalar type)",
            index + 1
        ))
    })?;
    buf.clear();
    let is_null = param
        .to_sql_checked(&ty, &mut buf)
        .map_err(|e| Error::to_sql(&ty, index, e))?;
    if let IsNull::Yes = is_null {
        return Ok(format!("(NULL::{})", ty.name()));
    }
    let bad = || Error::to_sql(&ty, index, "unexpected binary encoding".into());
    let b = &buf[..];
    let int = |n: usize| -> Result<i64, Error> {
        Ok(match n {
            2 => i64::from(i16::from_be_bytes(b.try_into().map_err(|_| bad())?)),
            4 => i64::from(i32::from_be_bytes(b.try_into().map_err(|_| bad())?)),
            _ => i64::from_be_bytes(b.try_into().map_err(|_| bad())?),
        })
    };
    Ok(match ty {
        Type::BOOL => match b {
            [0] => "(false)".to_string(),
            [_] => "(true)".to_string(),
            _ => return Err(bad()),
        },
        Type::INT2 => format!("('{}'::int2)", int(2)?),
        Type::INT4 => format!("('{}'::int4)", int(4)?),
        Type::INT8 => format!("('{}'::int8)", int(8)?),
        Type::OID => format!(
            "('{}'::oid)",
            u32::from_be_bytes(b.try_into().map_err(|_| bad())?)
        ),
        Type::FLOAT4 => format!(
            "('{}'::float4)",
            float_text(f64::from(f32::from_be_bytes(
                b.try_into().map_err(|_| bad())?
            )))
        ),
        Type::FLOAT8 => format!(
            "('{}'::float8)",
            float_text(f64::from_be_bytes(b.try_into().map_err(|_| bad())?))
        ),
        Type::TEXT => format!("({}::text)", quote(b, index)?),
        Type::JSONB => match b.split_first() {
            Some((1, json)) => format!("({}::jsonb)", quote(json, index)?),
            _ => return Err(bad()),
        },
        Type::BYTEA => {
            let mut hex = String::with_capacity(b.len() * 2 + 16);
            hex.push_str("('\\x");
            for byte in b {
                hex.push_str(&format!("{byte:02x}"));
            }
            hex.push_str("'::bytea)");
            hex
        }
        Type::UUID => {
            let bytes: [u8; 16] = b.try_into().map_err(|_| bad())?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "('{}-{}-{}-{}-{}'::uuid)",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        }
        Type::DATE => match int(4)? {
            n if n == i64::from(i32::MAX) => "('infinity'::date)".to_string(),
            n if n == i64::from(i32::MIN) => "('-infinity'::date)".to_string(),
            n => format!("('2000-01-01'::date + ('{n}'::int4))"),
        },
        Type::TIMESTAMP => match int(8)? {
            i64::MAX => "('infinity'::timestamp)".to_string(),
            i64::MIN => "('-infinity'::timestamp)".to_string(),
            n => format!("('2000-01-01 00:00:00'::timestamp + '{n} microseconds'::interval)"),
        },
        Type::TIMESTAMPTZ => match int(8)? {
            i64::MAX => "('infinity'::timestamptz)".to_string(),
            i64::MIN => "('-infinity'::timestamptz)".to_string(),
            n => format!("('2000-01-01 00:00:00+00'::timestamptz + '{n} microseconds'::interval)"),
        },
        Type::TIME => format!("('00:00:00'::time + '{} microseconds'::interval)", int(8)?),
        other => {
            return Err(unsupported(format_args!(
                "parameter ${} of type {other}",
                index + 1
            )));
        }
    })
}

/// A float as PostgreSQL reads it back exactly (Rust prints the shortest text that round-trips).
fn float_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else {
        format!("{v:?}")
    }
}

/// A standard string literal: quotes doubled, nothing else special (standard_conforming_strings is on).
fn quote(text: &[u8], index: usize) -> Result<String, Error> {
    let text = std::str::from_utf8(text)
        .map_err(|_| Error::to_sql(&Type::TEXT, index, "text is not UTF-8".into()))?;
    if text.contains('\0') {
        return Err(Error::to_sql(
            &Type::TEXT,
            index,
            "text with a NUL byte cannot be sent as a literal".into(),
        ));
    }
    Ok(format!("'{}'", text.replace('\'', "''")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_outside_literals_comments_and_identifiers_only() {
        let sql = "SELECT $1, '$1', E'\\'$1', \"$1\", $$ $1 $$, $tag$ $1 $tag$, a$1, 1-$2 -- $1\n/* $1 /* $1 */ */";
        let rendered = render(sql, &[&1i32, &-5i32], true).unwrap();
        assert_eq!(
            rendered,
            "SELECT ('1'::int4), '$1', E'\\'$1', \"$1\", $$ $1 $$, $tag$ $1 $tag$, a$1, 1-('-5'::int4) -- $1\n/* $1 /* $1 */ */"
        );
    }

    #[test]
    fn literals_are_quoted_and_cast() {
        let rendered = render(
            "$1 $2 $3 $4 $5",
            &[&"it's", &None::<i64>, &vec![0u8, 255], &true, &f64::NAN],
            true,
        )
        .unwrap();
        assert_eq!(
            rendered,
            "('it''s'::text) (NULL::int8) ('\\x00ff'::bytea) (true) ('NaN'::float8)"
        );
    }

    #[test]
    fn refusals() {
        assert!(render("$1", &[&"a"], false).is_err());
        assert!(render("$2", &[&1i32], true).is_err());
        assert!(render("$1", &[&1i32, &2i32], true).is_err());
        assert!(render("$1", &[&"nul\0"], true).is_err());
        assert!(render("$1", &[&vec![1i32]], true).is_err());
    }
}
