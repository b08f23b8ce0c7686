//! Typed rows over the binary COPY format: values encoded with [`ToSql`], decoded with [`FromSql`].
//!
//! The format (PostgreSQL's "Binary Format" of COPY): an 11-byte signature, a 32-bit flags word, a 32-bit
//! header-extension length and that many bytes; then per row a 16-bit field count and per field a 32-bit length
//! (-1 for NULL) and the value in its binary send format; then a 16-bit -1 as trailer. Everything read from the
//! server is checked before it is trusted: the signature, the flags, every count and length.
//!
//! Rows written directly from typed tuples (`write_row`) are encoded in `typed.rs`, next to the `ToSql` row
//! encoding they must match.
//!
//! Longer than 800 lines (near 1 000): the writer, the reader (owned and lent rows) and their checks of every
//! length share the format's constants and read best side by side; a fifth of it is tests.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_core::Stream;
use postgres_types::{FromSql, ToSql, Type};

#[cfg(doc)]
use super::CopyValue;
use super::typed::{MAX_FIELD_LEN, encode_row};
use super::{CopyInWriter, CopyOutReader, CopyRow};
use crate::Error;
use crate::proto::{RawRow, RowView};

/// The signature that opens binary COPY data.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Flags bit 16: every row carries an OID (`WITH OIDS`, gone since PostgreSQL 12).
const FLAG_OIDS: u32 = 1 << 16;

/// Flags bits 0 to 15 are critical: a reader must refuse data with one it does not know.
const CRITICAL_FLAGS: u32 = 0xffff;

/// The header this writer sends: the signature, no flags, no extension.
fn write_header(out: &mut BytesMut) {
    out.put_slice(SIGNATURE);
    out.put_u32(0);
    out.put_u32(0);
}

/// Writes rows in the binary COPY format, each value encoded by its [`ToSql`] for the column's [`Type`].
///
/// ```no_run
/// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
/// use wasi_pg_client::BinaryCopyInWriter;
/// use wasi_pg_client::types::Type;
///
/// let writer = client.copy_in("COPY items (id, name) FROM STDIN (FORMAT binary)").await?;
/// let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT4, Type::TEXT]);
/// writer.write(&[&1i32, &"apple"]).await?;
/// writer.write(&[&2i32, &None::<&str>]).await?;
/// assert_eq!(writer.finish().await?, 2);
/// # Ok(()) }
/// ```
///
/// Any error from [`write`](Self::write) (a value that does not fit its type, a wrong number of values)
/// aborts the COPY with CopyFail: nothing is applied, the connection stays usable, and later calls return an
/// error. Dropped without [`finish`](Self::finish), the writer aborts the COPY too.
#[derive(Debug)]
pub struct BinaryCopyInWriter<'a> {
    writer: CopyInWriter<'a>,
    types: Vec<Type>,
    /// Whether the header and the column count were checked and the header queued.
    started: bool,
    rows: u64,
}

impl<'a> BinaryCopyInWriter<'a> {
    /// Wraps a writer of a `COPY ... FROM STDIN (FORMAT binary)` whose columns have `types`, in order.
    pub fn new(writer: CopyInWriter<'a>, types: &[Type]) -> BinaryCopyInWriter<'a> {
        BinaryCopyInWriter {
            writer,
            types: types.to_vec(),
            started: false,
            rows: 0,
        }
    }

    /// Checks the COPY against the types once, then queues the header.
    fn start(&mut self) -> Result<(), Error> {
        if self.started {
            return Ok(());
        }
        let problem = if !self.writer.is_binary() {
            Some("the COPY is not in binary format (add FORMAT binary)".to_string())
        } else if self.writer.column_count() != self.types.len() {
            Some(format!(
                "the COPY has {} columns but {} types were given",
                self.writer.column_count(),
                self.types.len()
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            self.writer.abort(&problem);
            return Err(Error::config(problem));
        }
        write_header(self.writer.buffer()?);
        self.started = true;
        Ok(())
    }

    /// Adds one row: one value per column, in the order of the types given to [`new`](Self::new). Rows are
    /// collected and sent in chunks of about 64 KiB.
    pub async fn write(&mut self, values: &[&(dyn ToSql + Sync)]) -> Result<(), Error> {
        self.writer.check_open()?;
        self.start()?;
        let row = self.rows + 1;
        let encoded = self
            .writer
            .buffer()
            .and_then(|buf| encode_row(buf, &self.types, values));
        if let Err(e) = encoded {
            let e = e.context(format!("binary COPY row {row}"));
            self.writer.abort(&e.to_string());
            return Err(e);
        }
        self.rows = row;
        self.writer.send_full_chunks().await
    }

    /// Adds one row given as a tuple of plain values (`(i32, &str, Option<i64>)`, see [`CopyValue`]), one per
    /// column in the order of the types given to [`new`](Self::new): the same data and the same errors as
    /// [`write`](Self::write), written straight into the buffer where each value's type allows (one size
    /// check per row), which makes it the cheapest way to load many rows.
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// use wasi_pg_client::BinaryCopyInWriter;
    /// use wasi_pg_client::types::Type;
    ///
    /// let writer = client.copy_in("COPY items (id, name) FROM STDIN (FORMAT binary)").await?;
    /// let mut writer = BinaryCopyInWriter::new(writer, &[Type::INT4, Type::TEXT]);
    /// for id in 1..=1000 {
    ///     writer.write_row(&(id, format!("item {id}"))).await?;
    /// }
    /// writer.write_row(&(1001, None::<&str>)).await?;
    /// assert_eq!(writer.finish().await?, 1001);
    /// # Ok(()) }
    /// ```
    pub async fn write_row<R: CopyRow>(&mut self, row: &R) -> Result<(), Error> {
        self.start()?;
        let number = self.rows + 1;
        let encoded = self
            .writer
            .buffer()
            .and_then(|buf| row.encode(&self.types, buf));
        if let Err(e) = encoded {
            let e = e.context(format!("binary COPY row {number}"));
            self.writer.abort(&e.to_string());
            return Err(e);
        }
        self.rows = number;
        self.writer.send_full_chunks().await
    }

    /// Sends the trailer and the rest of the data, ends the COPY, and returns the number of rows copied.
    pub async fn finish(mut self) -> Result<u64, Error> {
        self.start()?;
        self.writer.buffer()?.put_i16(-1);
        self.writer.finish().await
    }
}

/// Where a [`BinaryCopyOutReader`] is in the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// Before the fixed part of the header.
    Header,
    /// Skipping this many bytes of header extension.
    Extension(usize),
    /// Rows, until the trailer.
    Rows,
    /// After the trailer: no more data may come.
    Trailer,
    /// The COPY ended (or failed); `next` returns `Ok(None)`.
    Finished,
}

/// Reads rows of a `COPY ... TO STDOUT (FORMAT binary)`, checking the format strictly.
///
/// ```no_run
/// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
/// use wasi_pg_client::BinaryCopyOutReader;
/// use wasi_pg_client::types::Type;
///
/// let reader = client.copy_out("COPY items (id, name) TO STDOUT (FORMAT binary)").await?;
/// let mut reader = BinaryCopyOutReader::new(reader, &[Type::INT4, Type::TEXT]);
/// while let Some(row) = reader.next().await? {
///     let id: i32 = row.get(0);
///     let name: Option<&str> = row.get(1);
///     println!("{id} {name:?}");
/// }
/// # Ok(()) }
/// ```
///
/// Data that breaks the format (a wrong signature, an unknown critical flag, a field count or length that does
/// not fit, bytes after the trailer) is a [`Protocol`](crate::ErrorKind::Protocol) error and ends the
/// connection, as any other protocol violation does.
#[derive(Debug)]
pub struct BinaryCopyOutReader<'a> {
    reader: CopyOutReader<'a>,
    decoder: Decoder,
    checked: bool,
    /// Where the fields of the row lent by [`for_each_ref`](Self::for_each_ref) are.
    offsets: Vec<u32>,
}

impl<'a> BinaryCopyOutReader<'a> {
    /// Wraps a reader of a `COPY ... TO STDOUT (FORMAT binary)` whose columns have `types`, in order.
    pub fn new(reader: CopyOutReader<'a>, types: &[Type]) -> BinaryCopyOutReader<'a> {
        BinaryCopyOutReader {
            reader,
            decoder: Decoder::new(types),
            checked: false,
            offsets: Vec::new(),
        }
    }

    /// The next row, or `Ok(None)` after the trailer once the COPY finished.
    ///
    /// Cancel-safe: a dropped future loses no data. The reader is also a [`Stream`] of the same rows.
    #[allow(
        clippy::should_implement_trait,
        reason = "the async counterpart of Iterator::next, for callers without a Stream extension crate"
    )]
    pub async fn next(&mut self) -> Result<Option<BinaryCopyRow>, Error> {
        poll_fn(|cx| self.poll_row(cx)).await
    }

    /// Calls `f` with each remaining row, lent where it arrived in the connection's buffer (a
    /// [`BinaryCopyRowRef`], valid for the call), until the end of the data or the first error, which it
    /// returns: the server's, a format violation, or the one `f` returned (after which reading can go on).
    ///
    /// The cheapest way through a large COPY: rows that arrived whole, one per CopyData as PostgreSQL sends
    /// them, are decoded in the connection's buffer in one loop, without a copy, an allocation or a return to
    /// the executor between them.
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// use wasi_pg_client::BinaryCopyOutReader;
    /// use wasi_pg_client::types::Type;
    ///
    /// let reader = client.copy_out("COPY items (id, name) TO STDOUT (FORMAT binary)").await?;
    /// let mut reader = BinaryCopyOutReader::new(reader, &[Type::INT4, Type::TEXT]);
    /// let mut bytes = 0;
    /// reader
    ///     .for_each_ref(|row| {
    ///         let name: Option<&str> = row.try_get(1)?;
    ///         bytes += name.map_or(0, str::len);
    ///         Ok::<_, wasi_pg_client::Error>(())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn for_each_ref<F, E>(&mut self, mut f: F) -> Result<(), E>
    where
        F: FnMut(BinaryCopyRowRef<'_>) -> Result<(), E>,
        E: From<Error>,
    {
        loop {
            if self.checked
                && self.decoder.state == ReadState::Rows
                && self.decoder.pending().is_empty()
                && self.reader.error.is_none()
                && !self.reader.done
            {
                let protocol = &mut self.reader.client.connection_mut().protocol;
                while let Some(payload) = protocol.lend_copy_data(self.reader.id) {
                    match lend_row(payload, self.decoder.types.len(), &mut self.offsets) {
                        Some(raw) => f(BinaryCopyRowRef {
                            types: &self.decoder.types,
                            raw,
                        })?,
                        None => {
                            // Not one whole row (the trailer, a row cut across messages, or data that breaks
                            // the format): the decoder takes it and reads it the checked way.
                            self.decoder.push(Bytes::copy_from_slice(payload))?;
                            break;
                        }
                    }
                }
            }
            let Some(row) = self.next().await? else {
                return Ok(());
            };
            let raw = row
                .row
                .view(&mut self.offsets)
                .ok_or_else(|| Error::protocol("a binary COPY row over 4 GiB cannot be lent"))?;
            f(BinaryCopyRowRef {
                types: &row.types,
                raw,
            })?;
        }
    }

    fn poll_row(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<BinaryCopyRow>, Error>> {
        if !self.checked {
            self.check_columns()?;
            self.checked = true;
        }
        loop {
            match self.decoder.next_copy_row() {
                Ok(Some(row)) => return Poll::Ready(Ok(Some(row))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(self.broken(e))),
            }
            if self.decoder.state == ReadState::Finished {
                return Poll::Ready(Ok(None));
            }
            let decoded = match ready!(self.reader.poll_chunk(cx))? {
                Some(chunk) => self.decoder.push(chunk),
                None => self.decoder.end(),
            };
            if let Err(e) = decoded {
                return Poll::Ready(Err(self.broken(e)));
            }
        }
    }

    /// The number of rows the COPY sent, once [`next`](Self::next) returned `Ok(None)`.
    pub fn rows(&self) -> Option<u64> {
        self.reader.rows()
    }

    fn check_columns(&mut self) -> Result<(), Error> {
        let types = self.decoder.types.len();
        let problem = if !self.reader.is_binary() {
            "the COPY is not in binary format (add FORMAT binary)".to_string()
        } else if self.reader.column_count() != types {
            format!(
                "the COPY has {} columns but {types} types were given",
                self.reader.column_count()
            )
        } else {
            return Ok(());
        };
        self.decoder.state = ReadState::Finished;
        Err(Error::config(problem))
    }

    /// Marks a format violation: the connection is closed, as after any other protocol violation.
    fn broken(&mut self, e: Error) -> Error {
        self.decoder.state = ReadState::Finished;
        self.reader.client.connection_mut().protocol.mark_broken(&e);
        e
    }
}

impl Stream for BinaryCopyOutReader<'_> {
    type Item = Result<BinaryCopyRow, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_row(cx).map(Result::transpose)
    }
}

/// The sans-IO decoder of binary COPY data: chunks in, rows out, every count and length checked.
///
/// PostgreSQL sends one row per chunk (the first also holds the header), so rows are split off the chunk as
/// it arrived, without a copy. Only a row cut across chunks is put together in `carry`.
#[derive(Debug)]
struct Decoder {
    types: Arc<[CopyColumn]>,
    /// The last chunk, while rows are taken from it.
    chunk: Bytes,
    /// Data of a row cut across chunks, with what arrived after it: decoded before anything else, and
    /// empty whenever `chunk` is not.
    carry: BytesMut,
    state: ReadState,
}

impl Decoder {
    fn new(types: &[Type]) -> Decoder {
        Decoder {
            types: types
                .iter()
                .map(|ty| CopyColumn {
                    type_: ty.clone(),
                    counted: crate::proto::may_hold_counts(ty),
                })
                .collect(),
            chunk: Bytes::new(),
            carry: BytesMut::new(),
            state: ReadState::Header,
        }
    }

    /// Adds a chunk of data.
    fn push(&mut self, chunk: Bytes) -> Result<(), Error> {
        match self.state {
            ReadState::Trailer | ReadState::Finished => Err(after_trailer(chunk.len())),
            _ if self.carry.is_empty() && self.chunk.is_empty() => {
                self.chunk = chunk;
                Ok(())
            }
            _ => {
                // The start of a row is waiting: the pieces are joined (amortised, so a value cut into many
                // chunks costs linear time).
                self.carry.extend_from_slice(&self.chunk);
                self.chunk.clear();
                self.carry.extend_from_slice(&chunk);
                Ok(())
            }
        }
    }

    /// The data not decoded yet.
    fn pending(&self) -> &[u8] {
        if self.carry.is_empty() {
            &self.chunk
        } else {
            &self.carry
        }
    }

    /// Drops the first `n` pending bytes.
    fn consume(&mut self, n: usize) {
        if self.carry.is_empty() {
            self.chunk.advance(n);
        } else {
            self.carry.advance(n);
        }
    }

    /// Takes the first `n` pending bytes.
    fn take(&mut self, n: usize) -> Bytes {
        if self.carry.is_empty() {
            self.chunk.split_to(n)
        } else {
            self.carry.split_to(n).freeze()
        }
    }

    /// Records the end of the data, which must have ended with the trailer.
    fn end(&mut self) -> Result<(), Error> {
        match self.state {
            ReadState::Trailer => {
                self.state = ReadState::Finished;
                Ok(())
            }
            ReadState::Finished => Ok(()),
            _ => Err(Error::protocol(
                "the binary COPY data ended before its trailer",
            )),
        }
    }

    /// [`next_row`](Self::next_row) with the row typed.
    fn next_copy_row(&mut self) -> Result<Option<BinaryCopyRow>, Error> {
        Ok(self.next_row()?.map(|row| BinaryCopyRow {
            row,
            types: self.types.clone(),
        }))
    }

    /// Decodes what the buffer holds: `Ok(Some(row))` for a complete row, `Ok(None)` when more data is needed
    /// (or, after the trailer, none may come).
    fn next_row(&mut self) -> Result<Option<RawRow>, Error> {
        loop {
            match self.state {
                ReadState::Rows => return self.split_row(),
                ReadState::Header => {
                    let pending = self.pending();
                    let Some(header) = pending.get(..SIGNATURE.len() + 8) else {
                        let seen = &pending[..pending.len().min(SIGNATURE.len())];
                        if !SIGNATURE.starts_with(seen) {
                            return Err(bad_signature());
                        }
                        return Ok(None);
                    };
                    if &header[..SIGNATURE.len()] != SIGNATURE {
                        return Err(bad_signature());
                    }
                    let mut fields = &header[SIGNATURE.len()..];
                    let flags = fields.get_u32();
                    let extension = fields.get_u32();
                    if flags & FLAG_OIDS != 0 {
                        return Err(Error::protocol(
                            "binary COPY data with OIDs (WITH OIDS) is not supported",
                        ));
                    }
                    if flags & CRITICAL_FLAGS != 0 {
                        return Err(Error::protocol(format!(
                            "binary COPY data with unknown critical flags 0x{:04x}",
                            flags & CRITICAL_FLAGS
                        )));
                    }
                    // Bits 17 to 31 are not critical: a reader ignores those it does not know.
                    let extension = usize::try_from(extension)
                        .map_err(|_| Error::protocol("binary COPY header extension too long"))?;
                    self.consume(SIGNATURE.len() + 8);
                    self.state = ReadState::Extension(extension);
                }
                ReadState::Extension(left) => {
                    // Skipped as it arrives, never buffered whole: its length is the server's word.
                    let skip = left.min(self.pending().len());
                    self.consume(skip);
                    if skip < left {
                        self.state = ReadState::Extension(left - skip);
                        return Ok(None);
                    }
                    self.state = ReadState::Rows;
                }
                ReadState::Trailer if !self.pending().is_empty() => {
                    return Err(after_trailer(self.pending().len()));
                }
                ReadState::Trailer | ReadState::Finished => return Ok(None),
            }
        }
    }

    /// Splits one complete row (or the trailer) off the pending data.
    fn split_row(&mut self) -> Result<Option<RawRow>, Error> {
        let pending = self.pending();
        let Some((&count, fields)) = pending.split_first_chunk::<2>() else {
            return Ok(None);
        };
        let count = i16::from_be_bytes(count);
        if count == -1 {
            self.consume(2);
            self.state = ReadState::Trailer;
            return self.next_row();
        }
        let columns = self.types.len();
        if usize::try_from(count).ok() != Some(columns) {
            return Err(Error::protocol(format!(
                "a binary COPY row with {count} fields, but the COPY has {columns} columns"
            )));
        }
        // Walked once to find the row's end; nothing is reserved from the lengths read.
        let mut at = 0usize;
        for _ in 0..columns {
            let Some(&word) = fields.get(at..).and_then(|rest| rest.first_chunk::<4>()) else {
                return Ok(None);
            };
            at += 4;
            let len = i32::from_be_bytes(word);
            if len == -1 {
                continue;
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= MAX_FIELD_LEN)
                .ok_or_else(|| {
                    Error::protocol(format!("invalid field length {len} in binary COPY data"))
                })?;
            if fields.len() - at < len {
                return Ok(None);
            }
            at += len;
        }
        if let Some(row) = RawRow::copied(fields, at, columns) {
            self.consume(2 + at);
            return Ok(Some(row));
        }
        let mut row = self.take(2 + at);
        row.advance(2);
        Ok(Some(RawRow::shared(row)))
    }
}

#[cfg(any(fuzzing, test))]
impl BinaryCopyRow {
    /// For the fuzzers (`crate::fuzzing`): decodes binary COPY data arriving in `chunks` for columns of
    /// `types` with the reader's decoder, handing each row to `each`; the error that ends the data, if any.
    pub(crate) fn decode_chunks<'c>(
        types: &[Type],
        chunks: impl IntoIterator<Item = &'c [u8]>,
        mut each: impl FnMut(&BinaryCopyRow),
    ) -> Result<(), Error> {
        let mut decoder = Decoder::new(types);
        for chunk in chunks {
            decoder.push(Bytes::copy_from_slice(chunk))?;
            while let Some(row) = decoder.next_copy_row()? {
                each(&row);
            }
        }
        decoder.end()?;
        match decoder.next_row()? {
            Some(_) => Err(Error::protocol("BUG: a row after the end of the data")),
            None => Ok(()),
        }
    }
}

/// The row in `payload` if it holds exactly one row of `columns` fields, each at most [`MAX_FIELD_LEN`]
/// bytes; `None` for anything else.
fn lend_row<'a>(
    payload: &'a [u8],
    columns: usize,
    offsets: &'a mut Vec<u32>,
) -> Option<RowView<'a>> {
    let (&count, fields) = payload.split_first_chunk::<2>()?;
    if usize::try_from(i16::from_be_bytes(count)).ok() != Some(columns)
        || fields.len() > MAX_FIELD_LEN
    {
        return None;
    }
    crate::proto::view_fields(fields, columns, offsets)
}

fn after_trailer(len: usize) -> Error {
    Error::protocol(format!("{len} bytes of binary COPY data after the trailer"))
}

fn bad_signature() -> Error {
    Error::protocol("binary COPY data does not start with the PGCOPY signature")
}

/// One row of binary COPY data; columns are picked by index and decoded with [`FromSql`].
#[derive(Clone)]
pub struct BinaryCopyRow {
    /// The fields, laid out as a DataRow's and checked as they arrived.
    row: RawRow,
    types: Arc<[CopyColumn]>,
}

/// The type of a column of binary COPY data.
#[derive(Debug)]
struct CopyColumn {
    type_: Type,
    /// Whether its values may hold counts to check before decoding (worked out once, not per value).
    counted: bool,
}

impl std::fmt::Debug for BinaryCopyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinaryCopyRow")
            .field(
                "types",
                &self.types.iter().map(|c| &c.type_).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl BinaryCopyRow {
    /// The number of columns.
    pub fn len(&self) -> usize {
        self.row.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.row.len() == 0
    }

    /// Decodes column `index`.
    ///
    /// # Panics
    /// Panics if the column does not exist or cannot be decoded as `T`; use [`try_get`](Self::try_get) to get
    /// an error instead.
    #[track_caller]
    pub fn get<'a, T: FromSql<'a>>(&'a self, index: usize) -> T {
        match self.try_get(index) {
            Ok(value) => value,
            Err(e) => panic!("error retrieving column {index}: {e}"),
        }
    }

    /// Decodes column `index`, checking first that it exists and that `T` accepts its type.
    pub fn try_get<'a, T: FromSql<'a>>(&'a self, index: usize) -> Result<T, Error> {
        decode(&self.types, index, self.row.len(), |i| self.row.field(i))
    }

    /// The raw binary value of column `index` (`None` for NULL).
    pub fn raw(&self, index: usize) -> Result<Option<&[u8]>, Error> {
        if index >= self.row.len() {
            return Err(Error::column(index.to_string()));
        }
        Ok(self.row.field(index))
    }
}

/// Decodes column `index` of a binary COPY row of `len` fields, whose raw values `field` gives.
#[inline]
fn decode<'a, T: FromSql<'a>>(
    types: &[CopyColumn],
    index: usize,
    len: usize,
    field: impl FnOnce(usize) -> Option<&'a [u8]>,
) -> Result<T, Error> {
    let Some(column) = types.get(index).filter(|_| index < len) else {
        return Err(Error::column(index.to_string()));
    };
    let ty = &column.type_;
    // The column's name is only needed for an error: built then, not for every value.
    let name = || index.to_string();
    if !T::accepts(ty) {
        return Err(Error::from_sql_mismatch(
            &name(),
            ty,
            std::any::type_name::<T>(),
        ));
    }
    let raw = field(index);
    // postgres-types reserves what an array's header announces: checked against the value's bytes first.
    if let Some(raw) = raw
        && column.counted
    {
        crate::proto::check_counts(ty, raw).map_err(|e| Error::from_sql(&name(), e))?;
    }
    T::from_sql_nullable(ty, raw).map_err(|e| Error::from_sql(&name(), e))
}

/// A row of binary COPY data lent by [`BinaryCopyOutReader::for_each_ref`]: read as a [`BinaryCopyRow`] is,
/// from where it arrived, for the length of the call. [`to_row`](Self::to_row) keeps it.
#[derive(Clone, Copy)]
pub struct BinaryCopyRowRef<'a> {
    types: &'a Arc<[CopyColumn]>,
    raw: RowView<'a>,
}

impl std::fmt::Debug for BinaryCopyRowRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinaryCopyRowRef")
            .field(
                "types",
                &self.types.iter().map(|c| &c.type_).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<'a> BinaryCopyRowRef<'a> {
    /// The number of columns.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.raw.len() == 0
    }

    /// Decodes column `index`; borrowed types (`&str`, `&[u8]`) borrow from the connection's buffer.
    ///
    /// # Panics
    /// Panics if the column does not exist or cannot be decoded as `T`; use [`try_get`](Self::try_get) to get
    /// an error instead.
    #[track_caller]
    #[inline]
    pub fn get<T: FromSql<'a>>(&self, index: usize) -> T {
        match self.try_get(index) {
            Ok(value) => value,
            Err(e) => panic!("error retrieving column {index}: {e}"),
        }
    }

    /// Decodes column `index`, checking first that it exists and that `T` accepts its type.
    #[inline]
    pub fn try_get<T: FromSql<'a>>(&self, index: usize) -> Result<T, Error> {
        let raw = self.raw;
        decode(self.types, index, raw.len(), |i| raw.field(i))
    }

    /// The raw binary value of column `index` (`None` for NULL).
    pub fn raw(&self, index: usize) -> Result<Option<&'a [u8]>, Error> {
        if index >= self.raw.len() {
            return Err(Error::column(index.to_string()));
        }
        Ok(self.raw.field(index))
    }

    /// The row as an owned [`BinaryCopyRow`] (its values are copied).
    pub fn to_row(&self) -> BinaryCopyRow {
        BinaryCopyRow {
            row: RawRow::from_view(self.raw),
            types: Arc::clone(self.types),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> Arc<[Type]> {
        vec![Type::INT4, Type::TEXT, Type::BYTEA].into()
    }

    /// A header, `rows` encoded by the writer's encoder, and the trailer.
    fn stream(rows: &[(i32, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        write_header(&mut buf);
        for (id, name, blob) in rows {
            encode_row(&mut buf, &types(), &[id, name, blob]).unwrap();
        }
        buf.put_i16(-1);
        buf.to_vec()
    }

    /// A decoded test row: id, name, blob.
    type Decoded = (i32, Option<String>, Vec<u8>);

    /// Decodes `data` fed in chunks of `chunk` bytes; the rows as (id, name, blob).
    fn decode(data: &[u8], chunk: usize) -> Result<Vec<Decoded>, Error> {
        let mut decoder = Decoder::new(&types());
        let mut rows = Vec::new();
        for piece in data.chunks(chunk) {
            decoder.push(Bytes::copy_from_slice(piece))?;
            while let Some(row) = decoder.next_copy_row()? {
                rows.push((
                    row.try_get(0)?,
                    row.try_get::<Option<String>>(1)?,
                    row.try_get::<Vec<u8>>(2)?,
                ));
            }
        }
        decoder.end()?;
        assert!(decoder.next_row()?.is_none());
        Ok(rows)
    }

    fn error_of(data: &[u8]) -> String {
        match decode(data, data.len().max(1)) {
            Ok(rows) => panic!("accepted: {rows:?}"),
            Err(e) => {
                assert_eq!(e.kind(), crate::ErrorKind::Protocol, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn round_trips_in_any_chunking() {
        let data = stream(&[
            (1, Some("one"), b"\x00\xff"),
            (-7, None, b""),
            (42, Some(""), b"x"),
        ]);
        let expected = vec![
            (1, Some("one".to_string()), vec![0, 255]),
            (-7, None, vec![]),
            (42, Some(String::new()), b"x".to_vec()),
        ];
        for chunk in [1, 2, 3, 7, 19, 20, data.len()] {
            assert_eq!(decode(&data, chunk).unwrap(), expected, "chunk {chunk}");
        }
    }

    #[test]
    fn header_is_checked_strictly() {
        let good = stream(&[]);
        assert_eq!(decode(&good, 1).unwrap(), vec![]);

        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(error_of(&bad).contains("PGCOPY signature"));
        // A wrong signature is refused as soon as its first wrong byte arrives.
        let mut decoder = Decoder::new(&types());
        decoder.push(Bytes::copy_from_slice(b"PGCOPZ")).unwrap();
        assert!(decoder.next_row().is_err());

        let mut oids = good.clone();
        oids[11..15].copy_from_slice(&(1u32 << 16).to_be_bytes());
        assert!(error_of(&oids).contains("OIDs"));

        let mut critical = good.clone();
        critical[11..15].copy_from_slice(&1u32.to_be_bytes());
        assert!(error_of(&critical).contains("critical flags 0x0001"));

        // Non-critical flags are ignored.
        let mut harmless = good.clone();
        harmless[11..15].copy_from_slice(&(1u32 << 20).to_be_bytes());
        assert_eq!(decode(&harmless, 4).unwrap(), vec![]);
    }

    #[test]
    fn header_extension_is_skipped_as_it_arrives() {
        let data = stream(&[(5, Some("five"), b"")]);
        let mut with_extension = data[..15].to_vec();
        with_extension.extend_from_slice(&5u32.to_be_bytes());
        with_extension.extend_from_slice(b"12345");
        with_extension.extend_from_slice(&data[19..]);
        assert_eq!(decode(&with_extension, 3).unwrap().len(), 1);
        // An extension longer than the data is never completed, and never buffered.
        let mut endless = data[..15].to_vec();
        endless.extend_from_slice(&u32::MAX.to_be_bytes());
        endless.extend_from_slice(&[0; 100]);
        let mut decoder = Decoder::new(&types());
        decoder.push(Bytes::copy_from_slice(&endless)).unwrap();
        assert!(decoder.next_row().unwrap().is_none());
        assert!(decoder.pending().is_empty());
        assert!(decoder.end().is_err());
    }

    #[test]
    fn trailer_is_required_and_final() {
        let data = stream(&[(1, None, b"")]);
        let missing = &data[..data.len() - 2];
        assert!(error_of(missing).contains("ended before its trailer"));
        let mut extra = data.clone();
        extra.push(0);
        assert!(error_of(&extra).contains("1 bytes of binary COPY data after the trailer"));
        // Data in a later chunk after the trailer is refused too.
        let mut decoder = Decoder::new(&types());
        decoder.push(Bytes::copy_from_slice(&data)).unwrap();
        while decoder.next_row().unwrap().is_some() {}
        assert!(decoder.push(Bytes::copy_from_slice(b"x")).is_err());
    }

    #[test]
    fn field_counts_and_lengths_are_bounded() {
        let header = stream(&[]);
        let header = &header[..19];
        let row = |count: i16, fields: &[i32]| {
            let mut out = header.to_vec();
            out.extend_from_slice(&count.to_be_bytes());
            for len in fields {
                out.extend_from_slice(&len.to_be_bytes());
            }
            out
        };
        assert!(error_of(&row(2, &[-1, -1])).contains("2 fields, but the COPY has 3 columns"));
        assert!(error_of(&row(-2, &[])).contains("-2 fields"));
        assert!(error_of(&row(3, &[-2])).contains("invalid field length -2"));
        assert!(error_of(&row(3, &[0x4000_0000])).contains("invalid field length 1073741824"));
        // A length within bounds waits for its bytes, reserving nothing for them.
        let mut decoder = Decoder::new(&types());
        decoder
            .push(Bytes::copy_from_slice(&row(3, &[1_000_000])))
            .unwrap();
        assert!(decoder.next_row().unwrap().is_none());
        assert!(decoder.carry.capacity() < 1_000_000 && decoder.chunk.len() < 1_000);
    }

    #[test]
    fn rows_decode_through_from_sql_by_index() {
        let data = stream(&[(3, Some("three"), b"\x01")]);
        let mut decoder = Decoder::new(&types());
        decoder.push(Bytes::copy_from_slice(&data)).unwrap();
        let row = decoder.next_copy_row().unwrap().unwrap();
        assert_eq!(row.len(), 3);
        assert_eq!(row.get::<i32>(0), 3);
        assert_eq!(row.get::<&str>(1), "three");
        assert_eq!(row.raw(2).unwrap(), Some(&b"\x01"[..]));
        assert_eq!(
            row.try_get::<String>(0).unwrap_err().kind(),
            crate::ErrorKind::FromSql
        );
        assert_eq!(
            row.try_get::<i32>(3).unwrap_err().kind(),
            crate::ErrorKind::Column
        );
    }

    #[test]
    fn encoding_errors_leave_the_buffer_as_it_was() {
        let mut buf = BytesMut::from(&b"kept"[..]);
        let err = encode_row(&mut buf, &types(), &[&1i32, &"x"]).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Parameters);
        let err = encode_row(&mut buf, &types(), &[&1i64, &"x", &None::<&[u8]>]).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::ToSql);
        assert_eq!(&buf[..], b"kept");
    }
}

/// The lending read of binary COPY data against the owned one, over a scripted server whose reads stop at
/// every size.
#[cfg(test)]
#[path = "lend_tests.rs"]
mod lend_tests;
