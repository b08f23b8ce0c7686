//! Backend message framing with explicit limits.
//!
//! `postgres_protocol::message::backend::Message::parse` reserves whatever length a header claims, does not know
//! NegotiateProtocolVersion and reads a 4-byte cancel key, so every frame passes through [`next_frame`] first:
//! the header is checked against the configured cap before a single byte is reserved, only complete frames
//! reach a parser, and `v` and `K` go to our own parsers in [`wire`](super::wire) instead of postgres-protocol's.

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::message::backend::Message;

use super::wire::{self, HEADER_LEN, NegotiateProtocolVersion};
use super::{BackendKey, RawRow};
use crate::Error;
use crate::config::ProtocolVersion;

/// Tag of NegotiateProtocolVersion, which postgres-protocol does not parse.
const NEGOTIATE_PROTOCOL_VERSION_TAG: u8 = b'v';

/// Tag of BackendKeyData, whose protocol 3.2 form postgres-protocol does not parse.
const BACKEND_KEY_DATA_TAG: u8 = b'K';

/// Tag of DataRow, which has a parser of its own for speed.
const DATA_ROW_TAG: u8 = b'D';

/// Tag of CopyData, whose body is the data itself: no parser needed.
const COPY_DATA_TAG: u8 = b'd';

/// Tag of CopyBothResponse (replication), which postgres-protocol does not parse.
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// One backend message.
pub(crate) enum Frame {
    /// Any message postgres-protocol parses (never `v` or `K`).
    Message(Message),
    /// NegotiateProtocolVersion (`v`).
    NegotiateProtocolVersion(NegotiateProtocolVersion),
    /// BackendKeyData (`K`), checked against the protocol version in use.
    BackendKeyData(BackendKey),
    /// A DataRow (`D`), its field lengths checked.
    DataRow(RawRow),
    /// The data of a CopyData (`d`) message: one per row in a COPY TO STDOUT, so it skips the general parser.
    CopyData(Bytes),
    /// CopyBothResponse (`W`): the connection enters CopyBoth mode (`START_REPLICATION`), its formats
    /// checked. Replication streams are text (0); their CopyData carry replication messages either way.
    CopyBothResponse,
}

/// Tags the backend may send in protocol 3.0 and 3.2; anything else is a protocol violation.
const KNOWN_TAGS: &[u8] = b"123AcCdDEGHIKnNRsStTZWv";

/// [`KNOWN_TAGS`] as a table indexed by tag: every message is checked, so no search through the list.
const IS_KNOWN_TAG: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < KNOWN_TAGS.len() {
        table[KNOWN_TAGS[i] as usize] = true;
        i += 1;
    }
    table
};

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
    if !IS_KNOWN_TAG[usize::from(tag)] {
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

/// Splits the complete CopyData frame of `total` bytes off `inbound` and returns its data.
pub(crate) fn split_copy_data(inbound: &mut BytesMut, total: usize) -> Bytes {
    let mut data = inbound.split_to(total).freeze();
    data.advance(HEADER_LEN);
    data
}

/// Splits the next complete frame off `inbound` and parses it; `version` is the protocol version in use, which
/// decides how long a cancel key may be.
pub(crate) fn next_frame(
    inbound: &mut BytesMut,
    max_message_size: usize,
    version: ProtocolVersion,
) -> Result<Option<Frame>, Error> {
    let Some(total) = complete_frame_len(inbound, max_message_size)? else {
        return Ok(None);
    };
    if inbound[0] == DATA_ROW_TAG {
        return RawRow::split_from(inbound, total).map(|row| Some(Frame::DataRow(row)));
    }
    if inbound[0] == COPY_DATA_TAG {
        return Ok(Some(Frame::CopyData(split_copy_data(inbound, total))));
    }
    let mut frame = inbound.split_to(total);
    match frame[0] {
        NEGOTIATE_PROTOCOL_VERSION_TAG => NegotiateProtocolVersion::parse(&frame[HEADER_LEN..])
            .map(|n| Some(Frame::NegotiateProtocolVersion(n))),
        BACKEND_KEY_DATA_TAG => wire::backend_key_data(&frame[HEADER_LEN..], version)
            .map(|key| Some(Frame::BackendKeyData(key))),
        COPY_BOTH_RESPONSE_TAG => {
            copy_both_response(&frame[HEADER_LEN..]).map(|_format| Some(Frame::CopyBothResponse))
        }
        _ => match Message::parse(&mut frame) {
            Ok(Some(message)) if frame.is_empty() => Ok(Some(Frame::Message(message))),
            Ok(Some(_)) => Err(Error::protocol("trailing bytes after a message")),
            // Unreachable with a complete frame, but an error is the honest answer if it happens.
            Ok(None) => Err(Error::protocol("incomplete message after framing")),
            Err(e) => Err(Error::protocol(format!("malformed message: {e}"))),
        },
    }
}

/// Parses the body of a CopyBothResponse: an overall format, a column count and that many column formats, each
/// 0 or 1 and all 0 in a text COPY, with nothing after them.
fn copy_both_response(body: &[u8]) -> Result<u8, Error> {
    let bad = |why: &str| Error::protocol(format!("malformed CopyBothResponse: {why}"));
    let (&format, rest) = body.split_first().ok_or_else(|| bad("no format"))?;
    let (count, mut columns) = rest
        .split_first_chunk::<2>()
        .map(|(count, columns)| (i16::from_be_bytes(*count), columns))
        .ok_or_else(|| bad("no column count"))?;
    if format > 1 {
        return Err(bad(&format!("format {format}")));
    }
    let count = usize::try_from(count).map_err(|_| bad(&format!("column count {count}")))?;
    if columns.len() != count * 2 {
        return Err(bad("its length does not match its column count"));
    }
    while let Some((column, rest)) = columns.split_first_chunk::<2>() {
        let column = i16::from_be_bytes(*column);
        if !(0..=1).contains(&column) || (format == 0 && column != 0) {
            return Err(bad(&format!(
                "column format {column} in a COPY of format {format}"
            )));
        }
        columns = rest;
    }
    Ok(format)
}
