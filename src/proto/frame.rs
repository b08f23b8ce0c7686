//! Backend message framing with explicit limits.
//!
//! `postgres_protocol::message::backend::Message::parse` reserves whatever length a header claims and does not
//! know NegotiateProtocolVersion, so every frame passes through [`next_frame`] first: the header is checked against
//! the configured cap before a single byte is reserved, and only complete frames reach the parser.

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;

use crate::Error;

/// The size of a backend message header: one tag byte and a 4-byte length that counts itself.
pub(crate) const HEADER_LEN: usize = 5;

/// Tag of NegotiateProtocolVersion, which postgres-protocol does not parse.
const NEGOTIATE_PROTOCOL_VERSION_TAG: u8 = b'v';

/// Tags the backend may send in protocol 3.0; anything else is a protocol violation.
const KNOWN_TAGS: &[u8] = b"123AcCdDEGHIKnNRsStTZWv";

/// Checks the header of the frame at the start of `inbound` and returns the total frame length (tag
/// included) once the whole frame is buffered.
///
/// Returns `Ok(None)` when more bytes are needed. Never reserves memory: the caller's buffer grows only with
/// bytes that actually arrived.
pub(crate) fn complete_frame_len(
    inbound: &[u8],
    max_message_size: usize,
) -> Result<Option<usize>, Error> {
    let Some(header) = inbound.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = header[0];
    if !KNOWN_TAGS.contains(&tag) {
        return Err(Error::protocol(format!(
            "unknown message type {:?} (0x{tag:02x}) from the server",
            char::from(tag)
        )));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(Error::protocol(format!(
            "invalid message length {len} (below 4)"
        )));
    }
    let total = usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_add(1))
        .filter(|&total| total <= max_message_size.saturating_add(1))
        .ok_or_else(|| {
            Error::protocol(format!(
                "message of {len} bytes exceeds the limit of {max_message_size} bytes (max_message_size)"
            ))
        })?;
    Ok((inbound.len() >= total).then_some(total))
}

/// Splits the next complete frame off `inbound` and parses it.
pub(crate) fn next_frame(
    inbound: &mut BytesMut,
    max_message_size: usize,
) -> Result<Option<Message>, Error> {
    let Some(total) = complete_frame_len(inbound, max_message_size)? else {
        return Ok(None);
    };
    if inbound[0] == NEGOTIATE_PROTOCOL_VERSION_TAG {
        // We request protocol 3.0 with no `_pq_` options, so a server has nothing to negotiate down.
        return Err(Error::protocol(
            "the server sent NegotiateProtocolVersion although protocol 3.0 without options was requested",
        ));
    }
    let mut frame = inbound.split_to(total);
    match Message::parse(&mut frame) {
        Ok(Some(message)) if frame.is_empty() => Ok(Some(message)),
        Ok(Some(_)) => Err(Error::protocol("trailing bytes after a message")),
        // Unreachable with a complete frame, but an error is the honest answer if it happens.
        Ok(None) => Err(Error::protocol("incomplete message after framing")),
        Err(e) => Err(Error::protocol(format!("malformed message: {e}"))),
    }
}
