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

/// Microseconds and days between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_DAYS_FROM_UNIX: i64 = 10_957;

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

/// The type a text result column is reported and decoded as: itself when [`text_to_binary`] converts it, else
/// `text`, whose `FromSql` for `String` reads the server's text form unchanged.
pub(crate) fn column_type(ty: Type) -> Type {
    match ty {
        Type::BOOL
        | Type::INT2
        | Type::INT4
        | Type::INT8
        | Type::OID
        | Type::FLOAT4
        | Type::FLOAT8
        | Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::JSON
        | Type::JSONB
        | Type::BYTEA
        | Type::UUID
        | Type::DATE
        | Type::TIME
        | Type::TIMESTAMP
        | Type::TIMESTAMPTZ => ty,
        _ => Type::TEXT,
    }
}

/// The binary form of a text value of type `ty` (a type [`column_type`] kept), or `None` if the text does not
/// parse (the server never sends such text in the ISO DateStyle with hex bytea output).
pub(crate) fn text_to_binary(ty: &Type, text: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(text).ok()?;
    Some(match *ty {
        Type::BOOL => match s {
            "t" => vec![1],
            "f" => vec![0],
            _ => return None,
        },
        Type::INT2 => s.parse::<i16>().ok()?.to_be_bytes().to_vec(),
        Type::INT4 => s.parse::<i32>().ok()?.to_be_bytes().to_vec(),
        Type::INT8 => s.parse::<i64>().ok()?.to_be_bytes().to_vec(),
        Type::OID => s.parse::<u32>().ok()?.to_be_bytes().to_vec(),
        Type::FLOAT4 => s.parse::<f32>().ok()?.to_be_bytes().to_vec(),
        Type::FLOAT8 => s.parse::<f64>().ok()?.to_be_bytes().to_vec(),
        Type::JSONB => [&[1u8][..], text].concat(),
        Type::BYTEA => {
            let hex = s.strip_prefix("\\x")?.as_bytes();
            if hex.len() % 2 != 0 {
                return None;
            }
            hex.chunks(2)
                .map(|pair| {
                    let digit = |c: u8| (c as char).to_digit(16);
                    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
                })
                .collect::<Option<Vec<u8>>>()?
        }
        Type::UUID => {
            let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
            if hex.len() != 32 || s.len() != 36 {
                return None;
            }
            hex.chunks(2)
                .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
                .collect::<Option<Vec<u8>>>()?
        }
        Type::DATE => match s {
            "infinity" => i32::MAX.to_be_bytes().to_vec(),
            "-infinity" => i32::MIN.to_be_bytes().to_vec(),
            _ => {
                let days = parse_date(s)?;
                i32::try_from(days).ok()?.to_be_bytes().to_vec()
            }
        },
        Type::TIME => parse_time(s)?.to_be_bytes().to_vec(),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => match s {
            "infinity" => i64::MAX.to_be_bytes().to_vec(),
            "-infinity" => i64::MIN.to_be_bytes().to_vec(),
            _ => parse_timestamp(s, *ty == Type::TIMESTAMPTZ)?
                .to_be_bytes()
                .to_vec(),
        },
        // text, varchar, bpchar, name, json: the text is the binary form.
        _ => text.to_vec(),
    })
}

/// Days since 2000-01-01 of an ISO date `YYYY-MM-DD`, with an optional ` BC`.
fn parse_date(s: &str) -> Option<i64> {
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(s) => (s, true),
        None => (s, false),
    };
    let mut parts = s.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    // 5874897 AD is the last year PostgreSQL's date type holds; the bound also keeps `days_from_civil` from
    // overflowing on a year of twenty digits.
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || !(1..=5_874_897).contains(&year) {
        return None;
    }
    // 1 BC is year 0 in the proleptic Gregorian calendar.
    let year = if bc { 1 - year } else { year };
    Some(days_from_civil(year, month, day) - PG_EPOCH_DAYS_FROM_UNIX)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Microseconds since midnight of `HH:MM:SS[.ffffff]`.
fn parse_time(s: &str) -> Option<i64> {
    let (hms, fraction) = match s.split_once('.') {
        Some((hms, f)) => (hms, f),
        None => (s, ""),
    };
    let mut parts = hms.splitn(3, ':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let sec: i64 = parts.next()?.parse().ok()?;
    if fraction.len() > 6 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").parse().ok()?
    };
    if !(0..=24).contains(&h) || !(0..60).contains(&m) || !(0..=60).contains(&sec) {
        return None;
    }
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + micros)
}

/// Microseconds since 2000-01-01 00:00 (UTC for timestamptz) of an ISO timestamp.
fn parse_timestamp(s: &str, with_zone: bool) -> Option<i64> {
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(s) => (s, true),
        None => (s, false),
    };
    let (date, rest) = s.split_once(' ')?;
    let (time, offset_seconds) = if with_zone {
        let at = rest.rfind(['+', '-'])?;
        let (time, zone) = rest.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let mut fields = zone[1..].split(':');
        let h: i64 = fields.next()?.parse().ok()?;
        let m: i64 = fields.next().map_or(Some(0), |f| f.parse().ok())?;
        let sec: i64 = fields.next().map_or(Some(0), |f| f.parse().ok())?;
        // The server's offsets stay within ±15:59:59; bounding them keeps the arithmetic below from overflowing.
        if !(0..100).contains(&h) || !(0..60).contains(&m) || !(0..60).contains(&sec) {
            return None;
        }
        (time, sign * (h * 3600 + m * 60 + sec))
    } else {
        (rest, 0)
    };
    let date = if bc {
        format!("{date} BC")
    } else {
        date.to_string()
    };
    let days = parse_date(&date)?;
    let micros = parse_time(time)?;
    days.checked_mul(86_400_000_000)?
        .checked_add(micros)?
        .checked_sub(offset_seconds.checked_mul(1_000_000)?)
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

    #[test]
    fn text_results_convert_to_binary() {
        assert_eq!(text_to_binary(&Type::BOOL, b"t"), Some(vec![1]));
        assert_eq!(
            text_to_binary(&Type::INT4, b"-7"),
            Some((-7i32).to_be_bytes().to_vec())
        );
        assert_eq!(text_to_binary(&Type::BYTEA, b"\\x00ff"), Some(vec![0, 255]));
        assert_eq!(
            text_to_binary(&Type::DATE, b"2000-01-02"),
            Some(1i32.to_be_bytes().to_vec())
        );
        assert_eq!(
            text_to_binary(&Type::DATE, b"1999-12-31"),
            Some((-1i32).to_be_bytes().to_vec())
        );
        assert_eq!(
            text_to_binary(&Type::TIMESTAMP, b"2000-01-01 00:00:01.5"),
            Some(1_500_000i64.to_be_bytes().to_vec())
        );
        assert_eq!(
            text_to_binary(&Type::TIMESTAMPTZ, b"2000-01-01 02:00:00+02"),
            Some(0i64.to_be_bytes().to_vec())
        );
        assert_eq!(
            text_to_binary(&Type::TIMESTAMPTZ, b"2000-01-01 00:00:00-05:30"),
            Some(19_800_000_000i64.to_be_bytes().to_vec())
        );
        assert_eq!(
            text_to_binary(&Type::UUID, b"00112233-4455-6677-8899-aabbccddeeff"),
            Some((0u8..16).map(|i| i * 17).collect())
        );
        assert_eq!(text_to_binary(&Type::INT4, b"x"), None);
        // Numbers no server sends are refused, not overflowed.
        assert_eq!(
            text_to_binary(&Type::TIMESTAMPTZ, b"2000-01-01 00:00:00+9999999999999999"),
            None
        );
        assert_eq!(
            text_to_binary(&Type::DATE, b"9223372036854775807-01-01"),
            None
        );
        // PostgreSQL's last date, 2145031948 days after 2000-01-01 (as the server computes it).
        assert_eq!(
            text_to_binary(&Type::DATE, b"5874897-12-31"),
            Some(2_145_031_948i32.to_be_bytes().to_vec())
        );
        assert_eq!(text_to_binary(&Type::BYTEA, b"\\x0"), None);
        assert_eq!(column_type(Type::NUMERIC), Type::TEXT);
    }
}
