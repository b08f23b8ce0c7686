//! DataRow, the message of every result row, parsed without postgres-protocol's general `Message::parse`.
//!
//! A result streams one DataRow per row, so this is the hottest path of the client (see BENCHMARKS.md). The
//! fields are walked once, to check every length against the bytes that are there. A small row (up to
//! [`INLINE_BYTES`] bytes of fields) is then copied into the row itself: no allocation and no reference
//! count to touch, which is what a row of a few numbers, a short text and a timestamp costs otherwise; its
//! fields are found again by walking the checked lengths, which for a handful of fields is cheaper than
//! keeping their offsets. A larger row stays where it arrived, as a reference-counted slice of the inbound
//! buffer, with the offsets of its fields.

use bytes::{Buf, Bytes, BytesMut};

use super::wire::HEADER_LEN;
use crate::Error;

/// Rows whose fields (length words included) take up to this many bytes are copied into the row.
const INLINE_BYTES: usize = 56;

/// Larger rows with up to this many columns keep their field offsets inline; wider ones allocate them.
const INLINE_OFFSETS: usize = 8;

/// Where a DataRow's fields start in its frame: after the header and the 16-bit field count.
const FIELDS_START: usize = HEADER_LEN + 2;

/// A DataRow whose field boundaries were checked once, when it was framed.
///
/// Its fields are as the protocol has them, each a 32-bit big-endian length (-1 for NULL) followed by that
/// many bytes.
#[derive(Debug, Clone)]
pub(crate) struct RawRow(Fields);

// A tag of a whole word: the payload then starts word-aligned, so moving a row copies whole aligned words
// (with a one-byte tag, moves copied the bytes after it with unaligned loads that could not be forwarded
// from the stores that built the row).
#[derive(Debug, Clone)]
#[repr(u64)]
enum Fields {
    /// `count` fields in the first `len` bytes of `bytes`.
    Inline {
        bytes: InlineBytes,
        count: u32,
        len: u32,
    },
    /// Fields whose length words are at `offsets` in `bytes`.
    Shared { bytes: Bytes, offsets: Offsets },
}

/// The bytes of a small row, aligned so that the row moves in whole words (a row is moved several times on
/// its way to the caller, and moves that straddle byte-sized writes stall the processor).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct InlineBytes([u8; INLINE_BYTES]);

impl std::fmt::Debug for InlineBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InlineBytes")
    }
}

/// Where the fields' length words are: inline and 32-bit for the rows PostgreSQL sends (a message is at most
/// 1 GiB there), on the heap for wider rows and for rows over 4 GiB.
#[derive(Debug, Clone)]
enum Offsets {
    Inline { len: u8, at: [u32; INLINE_OFFSETS] },
    Heap(Box<[usize]>),
}

impl Offsets {
    fn len(&self) -> usize {
        match self {
            Offsets::Inline { len, .. } => usize::from(*len),
            Offsets::Heap(at) => at.len(),
        }
    }

    /// Where field `i`'s length word is. Panics if `i` is out of bounds.
    fn get(&self, i: usize) -> usize {
        match self {
            Offsets::Inline { len, at } => {
                assert!(i < usize::from(*len), "BUG: field {i} of a row of {len}");
                at[i] as usize
            }
            Offsets::Heap(at) => at[i],
        }
    }
}

impl RawRow {
    /// Takes the complete DataRow frame of `frame_len` bytes (tag and length included) off the front of
    /// `inbound`, checking every field length against the bytes of the frame. The frame is taken even when
    /// it is malformed (the error breaks the connection anyway).
    pub(crate) fn split_from(inbound: &mut BytesMut, frame_len: usize) -> Result<RawRow, Error> {
        let row = RawRow::parse(inbound, frame_len);
        match row {
            Ok(Some(row)) => {
                inbound.advance(frame_len);
                Ok(row)
            }
            Ok(None) => {
                let offsets = offsets(&inbound[FIELDS_START..frame_len]);
                let mut bytes = inbound.split_to(frame_len).freeze();
                bytes.advance(FIELDS_START);
                Ok(RawRow(Fields::Shared { bytes, offsets }))
            }
            Err(e) => {
                inbound.advance(frame_len);
                Err(e)
            }
        }
    }

    /// Checks the frame at the start of `frame_and_more`; `Some` with the row copied in if it is small, `None`
    /// for a larger one.
    fn parse(frame_and_more: &[u8], frame_len: usize) -> Result<Option<RawRow>, Error> {
        let (count, fields) = count_and_fields(&frame_and_more[..frame_len])?;
        walk(fields, count, |_| {})?;
        if fields.len() > INLINE_BYTES {
            return Ok(None);
        }
        // A copy of fixed size where the buffer has the bytes (what follows the frame is never read), so it
        // is a few whole-word moves.
        let mut bytes = InlineBytes([0; INLINE_BYTES]);
        match frame_and_more.get(FIELDS_START..FIELDS_START + INLINE_BYTES) {
            Some(window) => bytes.0.copy_from_slice(window),
            None => bytes.0[..fields.len()].copy_from_slice(fields),
        }
        // Each field takes at least 4 bytes, so the count of INLINE_BYTES bytes fits too.
        Ok(Some(RawRow(Fields::Inline {
            count: u32::try_from(count).unwrap_or(u32::MAX),
            len: u32::try_from(fields.len()).unwrap_or(u32::MAX),
            bytes,
        })))
    }

    /// A row of `count` fields, checked by the caller, that take the first `len` bytes of `fields_and_more`
    /// (the bytes after them are never read), copied into the row; `None` if they are too many bytes for
    /// that, and [`shared`](Self::shared) is the way. Binary COPY rows come this way: their fields are laid
    /// out as a DataRow's.
    pub(crate) fn copied(fields_and_more: &[u8], len: usize, count: usize) -> Option<RawRow> {
        if len > INLINE_BYTES {
            return None;
        }
        let mut bytes = InlineBytes([0; INLINE_BYTES]);
        match fields_and_more.get(..INLINE_BYTES) {
            Some(window) => bytes.0.copy_from_slice(window),
            None => bytes.0[..len].copy_from_slice(&fields_and_more[..len]),
        }
        Some(RawRow(Fields::Inline {
            // At most INLINE_BYTES bytes, and each field takes at least 4 of them.
            count: u32::try_from(count).unwrap_or(u32::MAX),
            len: u32::try_from(len).unwrap_or(u32::MAX),
            bytes,
        }))
    }

    /// The row as a [`RowView`], with `offsets` to keep where its fields are when the row does not; `None`
    /// for a row over 4 GiB (only with a raised message limit), whose offsets a view cannot hold.
    pub(crate) fn view<'a>(&'a self, offsets: &'a mut Vec<u32>) -> Option<RowView<'a>> {
        let (fields, offsets) = match &self.0 {
            Fields::Inline { count, len, bytes } => {
                let fields = &bytes.0[..*len as usize];
                offsets.clear();
                // The row was checked when it was framed: the walk cannot fail.
                walk(fields, *count as usize, |at| offsets.push(at as u32)).ok()?;
                (fields, &offsets[..])
            }
            Fields::Shared {
                bytes,
                offsets: Offsets::Inline { len, at },
            } => (&bytes[..], &at[..usize::from(*len)]),
            Fields::Shared {
                bytes,
                offsets: Offsets::Heap(at),
            } => {
                offsets.clear();
                for &at in at.iter() {
                    offsets.push(u32::try_from(at).ok()?);
                }
                (&bytes[..], &offsets[..])
            }
        };
        Some(RowView { fields, offsets })
    }

    /// A copy of a lent row, to keep.
    pub(crate) fn from_view(view: RowView<'_>) -> RawRow {
        let count = view.len();
        RawRow::copied(view.fields, view.fields.len(), count)
            .unwrap_or_else(|| RawRow::shared(Bytes::copy_from_slice(view.fields)))
    }

    /// A row whose fields, checked by the caller, are all of `fields`, kept where they are.
    pub(crate) fn shared(fields: Bytes) -> RawRow {
        let offsets = offsets(&fields);
        RawRow(Fields::Shared {
            bytes: fields,
            offsets,
        })
    }

    /// A row built by the client itself (the simple query mode converts text fields to binary).
    pub(crate) fn from_fields(fields: Vec<Option<Vec<u8>>>) -> RawRow {
        let size = fields.iter().flatten().map(Vec::len).sum::<usize>() + 4 * fields.len();
        let mut buffer = Vec::with_capacity(size);
        let mut offsets = Vec::with_capacity(fields.len());
        for field in fields {
            offsets.push(buffer.len());
            match field {
                Some(bytes) => {
                    // The values are binary forms of text fields of a DataRow, whose lengths were i32s; no
                    // built-in type's binary form is more than a few bytes longer than its text.
                    let len = i32::try_from(bytes.len())
                        .expect("BUG: a converted field longer than a DataRow field can be");
                    buffer.extend_from_slice(&len.to_be_bytes());
                    buffer.extend_from_slice(&bytes);
                }
                None => buffer.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        RawRow(Fields::Shared {
            bytes: buffer.into(),
            offsets: Offsets::Heap(offsets.into_boxed_slice()),
        })
    }

    /// The number of fields.
    pub(crate) fn len(&self) -> usize {
        match &self.0 {
            Fields::Inline { count, .. } => *count as usize,
            Fields::Shared { offsets, .. } => offsets.len(),
        }
    }

    /// The raw bytes of field `i`, `None` for SQL NULL. Panics only if `i` is out of bounds, which callers
    /// rule out against the column count.
    pub(crate) fn field(&self, i: usize) -> Option<&[u8]> {
        match &self.0 {
            Fields::Inline { count, len, bytes } => {
                assert!(i < *count as usize, "BUG: field {i} of a row of {count}");
                let fields = &bytes.0[..*len as usize];
                field_at(fields, skip(fields, i)?)
            }
            Fields::Shared { bytes, offsets } => field_at(bytes, offsets.get(i)),
        }
    }
}

/// The fields of a DataRow lent to a row stream: still in the inbound buffer (see [`Lender`]), or in a row the
/// stream holds ([`RawRow::view`]). The fast path: neither a copy nor a reference count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowView<'a> {
    /// The fields, as the protocol has them.
    fields: &'a [u8],
    /// Where each field's length word is in `fields`, checked when the row was framed.
    offsets: &'a [u32],
}

impl<'a> RowView<'a> {
    /// The number of fields.
    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }

    /// The raw bytes of field `i`, `None` for SQL NULL. Panics only if `i` is out of bounds, which callers
    /// rule out against the column count.
    #[inline]
    pub(crate) fn field(&self, i: usize) -> Option<&'a [u8]> {
        field_at(self.fields, self.offsets[i] as usize)
    }
}

/// Lends the DataRows of one request where they are in the inbound buffer, one at a time, reading ahead of
/// what the buffer gave up: a lent row stays valid while the stream's caller holds it, and the bytes of the
/// rows read are taken off the buffer in one step when anything else reads it ([`release`](Self::release)).
#[derive(Debug, Default)]
pub(crate) struct Lender {
    /// The row lent now, as a range of the inbound buffer (empty when none is); its end is how far the rows
    /// were read.
    lent: std::ops::Range<usize>,
    /// Where the lent row's fields are (the first `count`), kept to reuse the allocation.
    offsets: Vec<u32>,
    count: usize,
    /// The request whose rows are lent and the field count its RowDescription gave, while nothing but its
    /// DataRows was read: what the checks of the first row found stays true for the next ones.
    request: Option<(u64, usize)>,
    /// The request whose CopyData are lent, likewise.
    copy: Option<u64>,
}

impl Lender {
    /// How many bytes at the front of the inbound buffer were read (the lent row's included).
    pub(crate) fn read(&self) -> usize {
        self.lent.end
    }

    /// The field count of request `request`'s rows, if its rows are being lent.
    pub(crate) fn lending(&self, request: u64) -> Option<usize> {
        self.request
            .filter(|&(lending, _)| lending == request)
            .map(|(_, fields)| fields)
    }

    /// Takes the rows read off `inbound` and forgets the request: whoever calls this reads `inbound` next,
    /// so no row is lent any more.
    pub(crate) fn release(&mut self, inbound: &mut BytesMut) {
        if self.lent.end > 0 {
            inbound.advance(self.lent.end);
            self.lent = 0..0;
        }
        self.request = None;
        self.copy = None;
    }

    /// Lends the DataRow at [`read`](Self::read) in `inbound`, request `request`'s row with `expected` fields:
    /// `true` if it is there whole and well-formed (checked as [`RawRow::split_from`] does). Anything else
    /// (another message, a cut-off frame, a malformed row) is left for the general way, which reports what
    /// is wrong.
    #[inline]
    pub(crate) fn lend(
        &mut self,
        inbound: &[u8],
        max_message_size: usize,
        request: u64,
        expected: usize,
    ) -> bool {
        let start = self.lent.end;
        let rest = inbound.get(start..).unwrap_or_default();
        let Some((&[b'D', a, b, c, d, high, low], fields_and_more)) = rest.split_first_chunk::<7>()
        else {
            return false;
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        let count = usize::from(u16::from_be_bytes([high, low]));
        // The length counts itself and the field count; fields of over 4 GiB do not fit 32-bit offsets.
        if len < 6 || len > max_message_size || len - 6 > u32::MAX as usize || count != expected {
            return false;
        }
        let Some(fields) = fields_and_more.get(..len - 6) else {
            return false;
        };
        if self.offsets.len() < count {
            self.offsets.resize(count, 0);
        }
        if !record(fields, &mut self.offsets[..count]) {
            return false;
        }
        self.lent = start..start + 1 + len;
        self.count = count;
        self.request = Some((request, expected));
        true
    }

    /// Whether the CopyData of request `request`'s COPY TO STDOUT are being lent: what the checks of the first
    /// one found stays true for the next ones, while nothing else was read.
    pub(crate) fn lending_copy(&self, request: u64) -> bool {
        self.copy == Some(request)
    }

    /// Lends the CopyData message at [`read`](Self::read) in `inbound` if it is there whole (at most
    /// `max_message_size` bytes; anything else is left for the general way): the range of its payload in
    /// `inbound`. It belongs to request `request`'s COPY TO STDOUT, which the caller checked.
    #[inline]
    pub(crate) fn lend_copy_data(
        &mut self,
        inbound: &[u8],
        max_message_size: usize,
        request: u64,
    ) -> Option<std::ops::Range<usize>> {
        let start = self.lent.end;
        let rest = inbound.get(start..)?;
        let Some((&[b'd', a, b, c, d], _)) = rest.split_first_chunk::<HEADER_LEN>() else {
            return None;
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len < 4 || len > max_message_size || rest.len() - 1 < len {
            return None;
        }
        self.lent = start..start + 1 + len;
        self.count = 0;
        self.request = None;
        self.copy = Some(request);
        Some(start + HEADER_LEN..start + 1 + len)
    }

    /// The row lent now, if any, in `inbound` (the buffer [`lend`](Self::lend) read); `None` when nothing or a
    /// CopyData is lent.
    pub(crate) fn view<'a>(&'a self, inbound: &'a [u8]) -> Option<RowView<'a>> {
        self.request?;
        let frame = inbound.get(self.lent.clone()).filter(|f| !f.is_empty())?;
        Some(RowView {
            fields: &frame[FIELDS_START..],
            offsets: &self.offsets[..self.count],
        })
    }
}

/// The view of `fields` holding exactly `count` fields (each a length word, -1 for NULL, and that many bytes),
/// with where they are recorded in `offsets`; `None` if they are not exactly that (the caller then goes a way
/// that says what is wrong). Binary COPY rows are laid out this way after their field count.
pub(crate) fn view_fields<'a>(
    fields: &'a [u8],
    count: usize,
    offsets: &'a mut Vec<u32>,
) -> Option<RowView<'a>> {
    u32::try_from(fields.len()).ok()?;
    if offsets.len() < count {
        offsets.resize(count, 0);
    }
    let offsets = &mut offsets[..count];
    record(fields, offsets).then_some(RowView { fields, offsets })
}

/// Checks that `fields` holds exactly `offsets.len()` fields, as [`walk`] does (without saying what is wrong),
/// writing where each one's length word is into `offsets`. The fields are at most `u32::MAX` bytes.
#[inline]
fn record(fields: &[u8], offsets: &mut [u32]) -> bool {
    let mut at = 0usize;
    for slot in offsets {
        let Some((&word, _)) = fields.get(at..).and_then(<[u8]>::split_first_chunk::<4>) else {
            return false;
        };
        // At most u32::MAX, as the fields are.
        *slot = at as u32;
        at += 4;
        match usize::try_from(i32::from_be_bytes(word)) {
            Ok(len) => at = at.saturating_add(len),
            Err(_) if word == [0xff; 4] => {}
            Err(_) => return false,
        }
    }
    at == fields.len()
}

/// Where field `i`'s length word is in `fields`, whose lengths were checked: found by walking the ones before.
#[inline]
fn skip(fields: &[u8], i: usize) -> Option<usize> {
    let mut at = 0;
    for _ in 0..i {
        let (&word, _) = fields.get(at..)?.split_first_chunk::<4>()?;
        // -1 (NULL) is the only negative length the check let through.
        at += 4 + usize::try_from(i32::from_be_bytes(word)).unwrap_or(0);
    }
    Some(at)
}

/// The value whose length word is at `at` in `fields`, `None` for NULL.
#[inline]
fn field_at(fields: &[u8], at: usize) -> Option<&[u8]> {
    let (&word, value) = fields.get(at..)?.split_first_chunk::<4>()?;
    let len = usize::try_from(i32::from_be_bytes(word)).ok()?;
    value.get(..len)
}

fn malformed(what: String) -> Error {
    Error::protocol(format!("malformed DataRow: {what}"))
}

/// Checks a DataRow's field count against its RowDescription's.
pub(crate) fn check_field_count(fields: usize, expected: usize) -> Result<(), Error> {
    if fields != expected {
        return Err(Error::protocol(format!(
            "DataRow has {fields} fields but its RowDescription has {expected} columns"
        )));
    }
    Ok(())
}

/// The field count of a DataRow frame and the bytes of its fields.
fn count_and_fields(frame: &[u8]) -> Result<(usize, &[u8]), Error> {
    let Some((&[high, low], fields)) = frame[HEADER_LEN..].split_first_chunk::<2>() else {
        return Err(malformed("missing the field count".to_string()));
    };
    Ok((usize::from(u16::from_be_bytes([high, low])), fields))
}

/// Walks `count` fields in `fields`, checking that each length word and value is there and that nothing
/// follows the last one; `record` is told where each length word is.
fn walk(fields: &[u8], count: usize, mut record: impl FnMut(usize)) -> Result<(), Error> {
    let mut rest = fields;
    for _ in 0..count {
        let Some((&word, after)) = rest.split_first_chunk::<4>() else {
            return Err(malformed("a field length cut off".to_string()));
        };
        record(fields.len() - rest.len());
        let len = i32::from_be_bytes(word);
        rest = match usize::try_from(len) {
            Ok(len) => after.get(len..).ok_or_else(|| {
                malformed(format!(
                    "a field of {len} bytes where {} are left",
                    after.len()
                ))
            })?,
            Err(_) if len == -1 => after,
            Err(_) => return Err(malformed(format!("invalid field length {len}"))),
        };
    }
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{} bytes after the last field",
            rest.len()
        )));
    }
    Ok(())
}

/// The offsets of the length words in `fields`, which [`RawRow::parse`] checked already.
fn offsets(fields: &[u8]) -> Offsets {
    let mut inline = [0u32; INLINE_OFFSETS];
    let mut count = 0;
    let mut heap = Vec::new();
    let mut at = 0;
    while at < fields.len() {
        match u32::try_from(at) {
            Ok(offset) if heap.is_empty() && count < INLINE_OFFSETS => inline[count] = offset,
            _ => {
                if heap.is_empty() {
                    heap.extend(inline[..count].iter().map(|&a| a as usize));
                }
                heap.push(at);
            }
        }
        count += 1;
        let word = [fields[at], fields[at + 1], fields[at + 2], fields[at + 3]];
        // -1 (NULL) is the only negative length the check let through.
        at += 4 + usize::try_from(i32::from_be_bytes(word)).unwrap_or(0);
    }
    if heap.is_empty() {
        Offsets::Inline {
            len: u8::try_from(count).unwrap_or(u8::MAX),
            at: inline,
        }
    } else {
        Offsets::Heap(heap.into_boxed_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DataRow frame with `fields` (`None` for NULL), its length word as the body says.
    fn frame(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = u16::try_from(fields.len()).unwrap().to_be_bytes().to_vec();
        for field in fields {
            match field {
                Some(bytes) => {
                    body.extend_from_slice(&i32::try_from(bytes.len()).unwrap().to_be_bytes());
                    body.extend_from_slice(bytes);
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        let mut out = vec![b'D'];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Splits the frame in `bytes` (followed by one more byte, which must stay) off a buffer.
    fn parse(bytes: Vec<u8>) -> Result<RawRow, Error> {
        let len = bytes.len();
        let mut inbound = BytesMut::from(&[bytes, vec![b'Z']].concat()[..]);
        let row = RawRow::split_from(&mut inbound, len);
        assert_eq!(&inbound[..], b"Z", "the frame and only the frame is taken");
        row
    }

    fn fields(row: &RawRow) -> Vec<Option<Vec<u8>>> {
        (0..row.len())
            .map(|i| row.field(i).map(<[u8]>::to_vec))
            .collect()
    }

    #[test]
    fn narrow_and_wide_rows_read_back() {
        for width in [0usize, 1, 3, INLINE_OFFSETS, INLINE_OFFSETS + 1, 15, 40] {
            let values: Vec<Vec<u8>> = (0..width).map(|i| vec![b'a'; i % 5]).collect();
            let given: Vec<Option<&[u8]>> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (i % 3 != 2).then_some(v.as_slice()))
                .collect();
            let row = parse(frame(&given)).unwrap();
            let expected: Vec<Option<Vec<u8>>> =
                given.iter().map(|f| f.map(<[u8]>::to_vec)).collect();
            assert_eq!(fields(&row), expected, "width {width}");
            let built = RawRow::from_fields(expected.clone());
            assert_eq!(fields(&built), expected, "from_fields, width {width}");
        }
    }

    #[test]
    fn rows_over_the_inline_size_are_shared() {
        let long = [b'x'; INLINE_BYTES];
        for given in [
            vec![Some(&long[..INLINE_BYTES - 4])],
            vec![Some(&long[..INLINE_BYTES - 3])],
            vec![Some(&long[..]), None, Some(&b"y"[..])],
        ] {
            let row = parse(frame(&given)).unwrap();
            let expected: Vec<Option<Vec<u8>>> =
                given.iter().map(|f| f.map(<[u8]>::to_vec)).collect();
            assert_eq!(fields(&row), expected);
        }
    }

    #[test]
    fn empty_and_null_fields_differ() {
        let row = parse(frame(&[Some(b""), None])).unwrap();
        assert_eq!(row.field(0), Some(&b""[..]));
        assert_eq!(row.field(1), None);
    }

    #[test]
    fn malformed_rows_are_refused() {
        let good = frame(&[Some(b"abcdefgh"), None]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..HEADER_LEN + 1].to_vec(), "missing the field count"),
            // The count says three fields; two are there (in enough bytes for the count to be possible).
            (
                {
                    let mut f = good.clone();
                    f[HEADER_LEN + 1] = 3;
                    f
                },
                "a field length cut off",
            ),
            // 1000 fields announced in 16 bytes.
            (
                {
                    let mut f = good.clone();
                    f[HEADER_LEN..FIELDS_START].copy_from_slice(&1000u16.to_be_bytes());
                    f
                },
                "a field length cut off",
            ),
            // The first field claims more bytes than the frame has.
            (
                {
                    let mut f = good.clone();
                    f[FIELDS_START..FIELDS_START + 4].copy_from_slice(&100i32.to_be_bytes());
                    f
                },
                "a field of 100 bytes",
            ),
            // Only -1 means NULL.
            (
                {
                    let mut f = good.clone();
                    f[FIELDS_START..FIELDS_START + 4].copy_from_slice(&(-2i32).to_be_bytes());
                    f
                },
                "invalid field length -2",
            ),
            (
                [good.clone(), vec![0]].concat(),
                "1 bytes after the last field",
            ),
        ];
        for (bytes, expected) in cases {
            let err = parse(bytes).unwrap_err();
            assert!(err.to_string().contains("malformed DataRow"), "{err}");
            assert!(
                err.to_string().contains(expected),
                "{err} (expected {expected})"
            );
        }
    }
}
