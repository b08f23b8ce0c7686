//! Backend messages as bytes, for the tests and fuzz harnesses that play a server: one set of builders for the
//! transcript tests, the scripted transports of the client's tests and the fuzzers' servers. Compiled only for
//! tests and fuzzing.

/// A message: its tag, the length the protocol puts after it, its body.
pub(crate) fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len() + 4).expect("BUG: a scripted message over 4 GiB");
    [&[tag][..], &len.to_be_bytes(), body].concat()
}

/// A NUL-terminated string.
pub(crate) fn cstr(s: &str) -> Vec<u8> {
    [s.as_bytes(), &[0]].concat()
}

/// ReadyForQuery with this transaction status (`b'I'`, `b'T'`, `b'E'`).
pub(crate) fn ready_in(status: u8) -> Vec<u8> {
    message(b'Z', &[status])
}

/// ReadyForQuery, idle.
pub(crate) fn ready() -> Vec<u8> {
    ready_in(b'I')
}

/// One column of a [`row_description`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column<'a> {
    pub(crate) name: &'a str,
    pub(crate) type_oid: u32,
    pub(crate) type_size: i16,
    /// 0 text, 1 binary.
    pub(crate) format: i16,
}

impl Column<'_> {
    /// A text column (type `text`, sent as text).
    pub(crate) fn text(name: &str) -> Column<'_> {
        Column {
            name,
            type_oid: 25,
            type_size: -1,
            format: 0,
        }
    }

    /// A binary int4 column.
    pub(crate) fn int4(name: &str) -> Column<'_> {
        Column {
            name,
            type_oid: 23,
            type_size: 4,
            format: 1,
        }
    }
}

/// A RowDescription of `columns` (no table, type modifier -1).
pub(crate) fn row_description(columns: &[Column<'_>]) -> Vec<u8> {
    let count = u16::try_from(columns.len()).expect("BUG: a scripted row of 65536 columns");
    let mut body = count.to_be_bytes().to_vec();
    for column in columns {
        body.extend(cstr(column.name));
        body.extend(0u32.to_be_bytes());
        body.extend(0i16.to_be_bytes());
        body.extend(column.type_oid.to_be_bytes());
        body.extend(column.type_size.to_be_bytes());
        body.extend((-1i32).to_be_bytes());
        body.extend(column.format.to_be_bytes());
    }
    message(b'T', &body)
}

/// A RowDescription of text columns named `names`.
pub(crate) fn text_columns(names: &[&str]) -> Vec<u8> {
    let columns: Vec<Column<'_>> = names.iter().map(|name| Column::text(name)).collect();
    row_description(&columns)
}

/// A DataRow of `values` (`None` is NULL).
pub(crate) fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
    let count = u16::try_from(values.len()).expect("BUG: a scripted row of 65536 values");
    let mut body = count.to_be_bytes().to_vec();
    for value in values {
        match value {
            Some(value) => {
                let len = i32::try_from(value.len()).expect("BUG: a scripted value over 2 GiB");
                body.extend(len.to_be_bytes());
                body.extend_from_slice(value);
            }
            None => body.extend((-1i32).to_be_bytes()),
        }
    }
    message(b'D', &body)
}

/// A DataRow of text values.
pub(crate) fn text_row(values: &[&str]) -> Vec<u8> {
    let values: Vec<Option<&[u8]>> = values.iter().map(|v| Some(v.as_bytes())).collect();
    data_row(&values)
}

/// CommandComplete with this tag.
pub(crate) fn command_complete(tag: &str) -> Vec<u8> {
    message(b'C', &cstr(tag))
}

/// ParameterStatus.
pub(crate) fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    message(b'S', &[cstr(name), cstr(value)].concat())
}

/// An Authentication message: its code and the data after it (10 SASL, 11 SASLContinue, 12 SASLFinal, 0 Ok).
pub(crate) fn authentication(code: u32, data: &[u8]) -> Vec<u8> {
    message(b'R', &[&code.to_be_bytes()[..], data].concat())
}

/// AuthenticationSASL offering `mechanisms`.
pub(crate) fn sasl_offer(mechanisms: &[&str]) -> Vec<u8> {
    let mut list: Vec<u8> = mechanisms.iter().flat_map(|m| cstr(m)).collect();
    list.push(0);
    authentication(10, &list)
}

/// A FATAL ErrorResponse with this SQLSTATE and message.
pub(crate) fn fatal(code: &str, text: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', text)] {
        body.push(field);
        body.extend(cstr(value));
    }
    body.push(0);
    message(b'E', &body)
}
