//! Values in the server's text form turned into the binary form `FromSql` reads: text results of the simple
//! query mode and text tuples of logical replication. Only the types the server writes unambiguously in its
//! default settings (ISO dates, hex bytea) are converted; [`column_type`] reports the rest as `text`.

use postgres_types::Type;

/// Days between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_DAYS_FROM_UNIX: i64 = 10_957;

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

/// A text value in the binary form `FromSql` reads: the text itself where both forms are the same (the text
/// types and json), a small inline buffer for the fixed-size types, an owned buffer for the rest (bytea,
/// jsonb). Converting an integer or a timestamp allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Binary<'a> {
    Same(&'a [u8]),
    Inline { bytes: [u8; 16], len: usize },
    Owned(Vec<u8>),
}

impl std::ops::Deref for Binary<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Binary::Same(bytes) => bytes,
            Binary::Inline { bytes, len } => &bytes[..*len],
            Binary::Owned(bytes) => bytes,
        }
    }
}

impl Binary<'_> {
    /// The bytes, owned.
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Binary::Owned(bytes) => bytes,
            other => other.to_vec(),
        }
    }

    /// Up to 16 bytes, inline.
    fn inline(value: &[u8]) -> Binary<'static> {
        let mut bytes = [0; 16];
        bytes[..value.len()].copy_from_slice(value);
        Binary::Inline {
            bytes,
            len: value.len(),
        }
    }
}

/// The binary form of a text value of type `ty` (a type [`column_type`] kept), or `None` if the text does not
/// parse (the server never sends such text in the ISO DateStyle with hex bytea output).
pub(crate) fn text_to_binary<'a>(ty: &Type, text: &'a [u8]) -> Option<Binary<'a>> {
    let s = std::str::from_utf8(text).ok()?;
    Some(match *ty {
        Type::BOOL => match s {
            "t" => Binary::inline(&[1]),
            "f" => Binary::inline(&[0]),
            _ => return None,
        },
        Type::INT2 => Binary::inline(&s.parse::<i16>().ok()?.to_be_bytes()),
        Type::INT4 => Binary::inline(&s.parse::<i32>().ok()?.to_be_bytes()),
        Type::INT8 => Binary::inline(&s.parse::<i64>().ok()?.to_be_bytes()),
        Type::OID => Binary::inline(&s.parse::<u32>().ok()?.to_be_bytes()),
        Type::FLOAT4 => Binary::inline(&s.parse::<f32>().ok()?.to_be_bytes()),
        Type::FLOAT8 => Binary::inline(&s.parse::<f64>().ok()?.to_be_bytes()),
        Type::JSONB => Binary::Owned([&[1u8][..], text].concat()),
        Type::BYTEA => {
            let hex = s.strip_prefix("\\x")?.as_bytes();
            if hex.len() % 2 != 0 {
                return None;
            }
            Binary::Owned(
                hex.chunks(2)
                    .map(|pair| hex_byte(pair[0], pair[1]))
                    .collect::<Option<Vec<u8>>>()?,
            )
        }
        Type::UUID => {
            // 8-4-4-4-12 hex digits.
            if s.len() != 36 || [8, 13, 18, 23].iter().any(|&at| s.as_bytes()[at] != b'-') {
                return None;
            }
            let mut bytes = [0u8; 16];
            let mut digits = s.bytes().filter(|&b| b != b'-');
            for byte in &mut bytes {
                *byte = hex_byte(digits.next()?, digits.next()?)?;
            }
            if digits.next().is_some() {
                return None;
            }
            Binary::inline(&bytes)
        }
        Type::DATE => match s {
            "infinity" => Binary::inline(&i32::MAX.to_be_bytes()),
            "-infinity" => Binary::inline(&i32::MIN.to_be_bytes()),
            _ => {
                let days = parse_date(s)?;
                Binary::inline(&i32::try_from(days).ok()?.to_be_bytes())
            }
        },
        Type::TIME => Binary::inline(&parse_time(s)?.to_be_bytes()),
        Type::TIMESTAMP | Type::TIMESTAMPTZ => match s {
            "infinity" => Binary::inline(&i64::MAX.to_be_bytes()),
            "-infinity" => Binary::inline(&i64::MIN.to_be_bytes()),
            _ => Binary::inline(&parse_timestamp(s, *ty == Type::TIMESTAMPTZ)?.to_be_bytes()),
        },
        // text, varchar, bpchar, name, json: the text is the binary form.
        _ => Binary::Same(text),
    })
}

/// The byte written as two hex digits.
fn hex_byte(high: u8, low: u8) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(high)? * 16 + digit(low)?) as u8)
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

    /// The conversion, owned (shadows the one under test for the comparisons below).
    fn text_to_binary(ty: &Type, text: &[u8]) -> Option<Vec<u8>> {
        super::text_to_binary(ty, text).map(Binary::into_vec)
    }

    #[test]
    fn conversions_allocate_only_for_bytea_and_jsonb() {
        assert!(matches!(
            super::text_to_binary(&Type::INT8, b"-9"),
            Some(Binary::Inline { len: 8, .. })
        ));
        assert!(matches!(
            super::text_to_binary(&Type::TIMESTAMPTZ, b"2024-02-29 12:00:00+00"),
            Some(Binary::Inline { len: 8, .. })
        ));
        assert_eq!(
            super::text_to_binary(&Type::TEXT, b"as is"),
            Some(Binary::Same(b"as is"))
        );
        assert!(matches!(
            super::text_to_binary(&Type::JSONB, b"{}"),
            Some(Binary::Owned(_))
        ));
    }

    #[test]
    fn uuids_convert_in_their_one_form() {
        let uuid = b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let expected: Vec<u8> = vec![
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        assert_eq!(text_to_binary(&Type::UUID, uuid), Some(expected));
        for bad in [
            &b"a0eebc999c0b4ef8bb6d6bb9bd380a11"[..],
            b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            b"a0eebc99-9c0b-4ef8-bb6d6-bb9bd380a11",
            b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g",
            b"+0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert_eq!(text_to_binary(&Type::UUID, bad), None, "{bad:?}");
        }
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
