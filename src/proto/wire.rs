//! What postgres-protocol lacks: protocol 3.2, NegotiateProtocolVersion, variable-length cancel keys, and
//! the size limits of messages we send.
//!
//! postgres-protocol's `frontend::startup_message` always asks for protocol 3.0 and its `backend` parser reads
//! a 4-byte cancel key, so the StartupMessage, NegotiateProtocolVersion, BackendKeyData and CancelRequest are
//! encoded and parsed here, in one place, with every length checked before it is trusted or written. The Bind
//! encoder both APIs use ([`write_bind_portal`]) is here too, for its parameter-count check.

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;
use postgres_types::{Format, IsNull, ToSql, Type};

use super::BackendKey;
use crate::Error;
use crate::config::ProtocolVersion;

/// The size of a backend message header: one tag byte and a 4-byte length that counts itself.
pub(crate) const HEADER_LEN: usize = 5;

/// The only major protocol version there is.
const MAJOR: u32 = 3;

/// The code a CancelRequest carries instead of a protocol version (1234 in the high half, 5678 in the low).
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// The largest length word of a message the server accepts: `PQ_LARGE_MESSAGE_LIMIT` (1 GiB - 2; the length
/// counts itself, not the tag). The server drops the connection on anything longer, so we refuse it first.
pub(crate) const MAX_FRONTEND_MESSAGE_LEN: u32 = 0x3fff_fffe;

/// The largest startup packet the server reads, not counting its length word (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// The most parameters one Bind (or Parse) can carry: their count is an Int16 the server reads unsigned.
const MAX_BIND_PARAMETERS: usize = 65_535;

/// The longest cancel key protocol 3.2 allows.
const MAX_CANCEL_KEY_LEN: usize = 256;

/// The cancel key length protocol 3.0 requires.
const V3_0_CANCEL_KEY_LEN: usize = 4;

/// The version number a StartupMessage carries: the major version in the high 16 bits, the minor in the low.
pub(crate) fn version_code(version: ProtocolVersion) -> u32 {
    let minor = match version {
        ProtocolVersion::V3_0 => 0,
        ProtocolVersion::V3_2 => 2,
    };
    (MAJOR << 16) | minor
}

/// Writes a version code as `major.minor`, for error messages about codes we do not know.
fn describe_code(code: u32) -> String {
    format!("{}.{}", code >> 16, code & 0xffff)
}

/// Appends a StartupMessage asking for `version` with `params` (name, value) to `out`. Nothing is appended
/// if a parameter holds a NUL byte or the packet would exceed what the server reads.
pub(crate) fn startup_message(
    version: ProtocolVersion,
    params: &[(String, String)],
    out: &mut BytesMut,
) -> Result<(), Error> {
    let mut body_len = 4usize; // the version
    for (name, value) in params {
        if name.contains('\0') || value.contains('\0') {
            return Err(Error::config(format!(
                "startup parameter {name:?} contains a NUL byte"
            )));
        }
        body_len = body_len
            .checked_add(name.len())
            .and_then(|n| n.checked_add(value.len()))
            .and_then(|n| n.checked_add(2))
            .ok_or_else(startup_too_long)?;
    }
    body_len = body_len.checked_add(1).ok_or_else(startup_too_long)?; // the terminating NUL
    if body_len > MAX_STARTUP_PACKET_LEN {
        return Err(startup_too_long());
    }
    // At most 10 004 by the check above.
    let len = u32::try_from(body_len + 4).map_err(|_| startup_too_long())?;
    out.reserve(body_len + 4);
    out.put_u32(len);
    out.put_u32(version_code(version));
    for (name, value) in params {
        out.put_slice(name.as_bytes());
        out.put_u8(0);
        out.put_slice(value.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
    Ok(())
}

fn startup_too_long() -> Error {
    Error::config(format!(
        "the startup parameters (user, database, options, application_name, ...) exceed the {MAX_STARTUP_PACKET_LEN} \
         bytes the server accepts in a startup packet"
    ))
}

/// A NegotiateProtocolVersion message: the server speaks an older minor version than we asked for, or did
/// not recognise some `_pq_.` options of the StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NegotiateProtocolVersion {
    /// The newest protocol version the server speaks of the major version we asked for, as a version code.
    pub(crate) newest: u32,
    /// The options of the StartupMessage the server did not recognise.
    pub(crate) unrecognized: Vec<String>,
}

impl NegotiateProtocolVersion {
    /// Parses the body of a `v` message (after tag and length).
    pub(crate) fn parse(body: &[u8]) -> Result<NegotiateProtocolVersion, Error> {
        let invalid =
            |what: &str| Error::protocol(format!("invalid NegotiateProtocolVersion: {what}"));
        let mut cursor = Cursor(body);
        let newest = cursor.u32().ok_or_else(|| invalid("missing the version"))?;
        let count = cursor
            .u32()
            .ok_or_else(|| invalid("missing the option count"))?;
        let count = i32::try_from(count)
            .ok()
            .and_then(|count| usize::try_from(count).ok())
            .ok_or_else(|| invalid("negative option count"))?;
        // Each name takes at least its NUL, so the remaining bytes bound the count before anything is reserved.
        if count > cursor.0.len() {
            return Err(invalid(&format!(
                "{count} options announced in {} bytes",
                cursor.0.len()
            )));
        }
        let mut unrecognized = Vec::with_capacity(count);
        for _ in 0..count {
            let name = cursor
                .cstr()
                .ok_or_else(|| invalid("an option name without its NUL terminator"))?;
            unrecognized.push(String::from_utf8_lossy(name).into_owned());
        }
        if !cursor.0.is_empty() {
            return Err(invalid("trailing bytes after the option names"));
        }
        Ok(NegotiateProtocolVersion {
            newest,
            unrecognized,
        })
    }

    /// The version the connection continues with, after the checks libpq makes: the server may only go down,
    /// to a version we know and `min` allows, and may not refuse options we never sent.
    pub(crate) fn accept(
        &self,
        requested: ProtocolVersion,
        min: ProtocolVersion,
    ) -> Result<ProtocolVersion, Error> {
        let invalid =
            |what: String| Error::protocol(format!("invalid NegotiateProtocolVersion: {what}"));
        let newest = self.newest;
        if newest > version_code(requested) {
            return Err(invalid(format!(
                "the server offers protocol {} although {} was requested",
                describe_code(newest),
                requested.as_str()
            )));
        }
        let version = [ProtocolVersion::V3_2, ProtocolVersion::V3_0]
            .into_iter()
            .find(|&v| version_code(v) == newest)
            .ok_or_else(|| {
                invalid(format!(
                    "the server offers protocol {}, which does not exist",
                    describe_code(newest)
                ))
            })?;
        if version == requested && self.unrecognized.is_empty() {
            return Err(invalid(
                "the server negotiated but asked for no change".to_string(),
            ));
        }
        if version < min {
            return Err(Error::protocol(format!(
                "the server supports protocol version {} at most, but min_protocol_version is {}",
                version.as_str(),
                min.as_str()
            )));
        }
        // We send no `_pq_.` options, so the server cannot have refused any.
        if let Some(name) = self.unrecognized.first() {
            return Err(invalid(format!(
                "the server refused the protocol option {name:?}, which was not requested"
            )));
        }
        Ok(version)
    }
}

/// Parses the body of a BackendKeyData message (`K`): the process id, then a cancel key of exactly 4 bytes in
/// protocol 3.0 and of 4 to 256 bytes in protocol 3.2.
pub(crate) fn backend_key_data(body: &[u8], version: ProtocolVersion) -> Result<BackendKey, Error> {
    let invalid = |what: String| Error::protocol(format!("invalid BackendKeyData: {what}"));
    let mut cursor = Cursor(body);
    let process_id = cursor
        .u32()
        .map(|id| i32::from_be_bytes(id.to_be_bytes()))
        .ok_or_else(|| invalid("missing the process id".to_string()))?;
    let key = cursor.0;
    match version {
        ProtocolVersion::V3_0 if key.len() != V3_0_CANCEL_KEY_LEN => {
            return Err(invalid(format!(
                "a cancel key of {} bytes in protocol 3.0, which requires {V3_0_CANCEL_KEY_LEN}",
                key.len()
            )));
        }
        _ if !(V3_0_CANCEL_KEY_LEN..=MAX_CANCEL_KEY_LEN).contains(&key.len()) => {
            return Err(invalid(format!(
                "a cancel key of {} bytes in protocol {}, which allows {V3_0_CANCEL_KEY_LEN} to \
                 {MAX_CANCEL_KEY_LEN}",
                key.len(),
                version.as_str()
            )));
        }
        _ => {}
    }
    Ok(BackendKey {
        process_id,
        secret_key: key.into(),
    })
}

/// Appends a CancelRequest for `key` to `out`: length, the cancel code, the process id and the key.
pub(crate) fn cancel_request(key: &BackendKey, out: &mut BytesMut) {
    // A key comes only from `backend_key_data`, which caps it at 256 bytes.
    let len = key
        .secret_key
        .len()
        .checked_add(12)
        .and_then(|len| u32::try_from(len).ok())
        .expect("BUG: a cancel key longer than BackendKeyData allows");
    out.reserve(len as usize);
    out.put_u32(len);
    out.put_u32(CANCEL_REQUEST_CODE);
    out.put_i32(key.process_id);
    out.put_slice(&key.secret_key);
}

/// Checks the frontend messages in `written` (tag, length, body each) against the server's size limit.
pub(crate) fn check_frontend_messages(written: &[u8]) -> Result<(), Error> {
    check_frontend_messages_within(written, MAX_FRONTEND_MESSAGE_LEN)
}

fn check_frontend_messages_within(mut written: &[u8], max_len: u32) -> Result<(), Error> {
    while let Some(&tag) = written.first() {
        let Some(len) = written.get(1..5) else {
            return Err(Error::protocol(
                "BUG: a frontend message was cut off in its header",
            ));
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        if len > max_len {
            return Err(Error::config(format!(
                "cannot send a {} message of {len} bytes: the server accepts at most {max_len} (1 GiB)",
                frontend_name(tag)
            )));
        }
        let total = usize::try_from(len)
            .ok()
            .filter(|&len| len >= 4)
            .and_then(|len| len.checked_add(1))
            .filter(|&total| total <= written.len())
            .ok_or_else(|| {
                Error::protocol(format!(
                    "BUG: a frontend {} message whose length {len} does not match its bytes",
                    frontend_name(tag)
                ))
            })?;
        written = &written[total..];
    }
    Ok(())
}

/// Checks the number of parameters of a Parse or Bind before it is encoded.
pub(crate) fn check_parameter_count(count: usize) -> Result<(), Error> {
    if count > MAX_BIND_PARAMETERS {
        return Err(Error::config(format!(
            "a statement takes at most {MAX_BIND_PARAMETERS} parameters (a limit of the protocol), but {count} were given"
        )));
    }
    Ok(())
}

/// The name of a frontend message, for error messages.
fn frontend_name(tag: u8) -> &'static str {
    match tag {
        b'B' => "Bind",
        b'C' => "Close",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'f' => "CopyFail",
        b'D' => "Describe",
        b'E' => "Execute",
        b'H' => "Flush",
        b'F' => "FunctionCall",
        b'P' => "Parse",
        b'p' => "password or SASL",
        b'Q' => "Query",
        b'S' => "Sync",
        b'X' => "Terminate",
        _ => "frontend",
    }
}

/// Reads big-endian integers and C strings off the front of a message body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*head))
    }

    fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let s = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Some(s)
    }
}

/// Writes a Bind of `statement` to the portal called `portal` (the unnamed portal when empty) with every
/// parameter type-checked and encoded, and every result column requested in binary.
pub(crate) fn write_bind_portal(
    buf: &mut BytesMut,
    portal: &str,
    statement: &str,
    types: &[Type],
    params: &[&(dyn ToSql + Sync)],
) -> Result<(), Error> {
    check_parameter_count(params.len())?;
    let formats: Vec<i16> = params
        .iter()
        .zip(types)
        .map(|(p, t)| match p.encode_format(t) {
            Format::Text => 0,
            Format::Binary => 1,
        })
        .collect();
    let mut failure = None;
    let result = frontend::bind(
        portal,
        statement,
        formats,
        params.iter().zip(types).enumerate(),
        |(i, (param, ty)), buf| match param.to_sql_checked(ty, buf) {
            Ok(IsNull::No) => Ok(postgres_protocol::IsNull::No),
            Ok(IsNull::Yes) => Ok(postgres_protocol::IsNull::Yes),
            Err(e) => {
                // WrongType names the Rust and SQL types; the value itself never enters the message.
                failure = Some(Error::to_sql(ty, i, e));
                Err("parameter encoding failed".into())
            }
        },
        Some(1),
        buf,
    );
    if let Some(failure) = failure {
        return Err(failure);
    }
    match result {
        Ok(()) => Ok(()),
        Err(frontend::BindError::Conversion(e)) => {
            Err(Error::config(format!("cannot encode parameters: {e}")))
        }
        Err(frontend::BindError::Serialization(e)) => Err(encode_error(e)),
    }
}

/// A request that could not be encoded (a message over the protocol's limits).
pub(crate) fn encode_error(e: std::io::Error) -> Error {
    Error::config(format!("cannot encode the request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, len: u32, body_len: usize) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&len.to_be_bytes());
        out.resize(5 + body_len, 0);
        out
    }

    #[test]
    fn frontend_limit_is_inclusive() {
        let at_limit = message(b'Q', 104, 100);
        check_frontend_messages_within(&at_limit, 104).unwrap();
        let over = message(b'Q', 105, 101);
        let err = check_frontend_messages_within(&over, 104).unwrap_err();
        assert!(
            err.to_string().contains("Query message of 105 bytes"),
            "{err}"
        );
        assert!(!err.is_connection_broken());
    }

    #[test]
    fn frontend_messages_are_walked_one_by_one() {
        let bytes = [message(b'P', 10, 6), message(b'S', 4, 0)].concat();
        check_frontend_messages(&bytes).unwrap();
        assert!(check_frontend_messages(&bytes[..bytes.len() - 1]).is_err());
        assert!(check_frontend_messages(&message(b'S', 3, 0)).is_err());
    }

    #[test]
    fn startup_packet_size_is_capped() {
        let mut out = BytesMut::new();
        let long = vec![("options".to_string(), "x".repeat(MAX_STARTUP_PACKET_LEN))];
        assert!(startup_message(ProtocolVersion::V3_0, &long, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn cancel_request_carries_any_key_length() {
        for key_len in [4usize, 32, 256] {
            let key = BackendKey {
                process_id: 7,
                secret_key: vec![0xab; key_len].into(),
            };
            let mut out = BytesMut::new();
            cancel_request(&key, &mut out);
            assert_eq!(out.len(), 12 + key_len);
            assert_eq!(
                &out[0..4],
                &u32::try_from(12 + key_len).unwrap().to_be_bytes()
            );
            assert_eq!(&out[4..8], &80_877_102u32.to_be_bytes());
            assert_eq!(&out[8..12], &7i32.to_be_bytes());
            assert!(out[12..].iter().all(|&b| b == 0xab));
        }
    }

    #[test]
    fn parameter_count_limit() {
        check_parameter_count(65_535).unwrap();
        let err = check_parameter_count(65_536).unwrap_err();
        assert!(
            err.to_string().contains("at most 65535 parameters"),
            "{err}"
        );
    }
}
