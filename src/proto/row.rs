//! Result rows: typed rows from the extended protocol and text rows from the simple protocol.

use std::fmt;
use std::sync::Arc;

use postgres_types::FromSql;

use crate::Error;
use crate::proto::statement::Column;
use crate::proto::{RawRow, RowView};

mod sealed {
    pub trait Sealed {}
}

/// Something that picks a column: a `usize` index or a `&str` name.
pub trait RowIndex: sealed::Sealed + fmt::Display {
    /// The position of the column in `columns`, if it exists.
    #[doc(hidden)]
    fn find(&self, columns: &[Column]) -> Option<usize>;
}

impl sealed::Sealed for usize {}
impl RowIndex for usize {
    fn find(&self, columns: &[Column]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }
}

impl sealed::Sealed for str {}
impl RowIndex for str {
    fn find(&self, columns: &[Column]) -> Option<usize> {
        // An exact match first, then a case-insensitive one, as tokio-postgres does.
        columns.iter().position(|c| c.name == self).or_else(|| {
            columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(self))
        })
    }
}

impl<T: sealed::Sealed + ?Sized> sealed::Sealed for &T {}
impl<T: RowIndex + ?Sized> RowIndex for &T {
    fn find(&self, columns: &[Column]) -> Option<usize> {
        (**self).find(columns)
    }
}

/// A row returned by `query` and friends, decoded lazily in binary format.
#[derive(Clone)]
pub struct Row {
    columns: Arc<[Column]>,
    raw: RawRow,
}

impl Row {
    /// Builds a row; the protocol core already checked the field count against the columns.
    pub(crate) fn new(columns: Arc<[Column]>, raw: RawRow) -> Result<Row, Error> {
        RowRef::check(&columns, raw.len())?;
        Ok(Row { columns, raw })
    }

    /// The columns of the row.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Decodes a column.
    ///
    /// # Panics
    /// Panics if the column does not exist or cannot be decoded as `T`; use [`try_get`](Self::try_get) to get
    /// an error instead.
    #[track_caller]
    pub fn get<'a, I, T>(&'a self, index: I) -> T
    where
        I: RowIndex,
        T: FromSql<'a>,
    {
        match self.try_get(index) {
            Ok(value) => value,
            Err(e) => panic!("error retrieving column: {e}"),
        }
    }

    /// Decodes a column, checking first that the column exists and that `T` accepts its type.
    pub fn try_get<'a, I, T>(&'a self, index: I) -> Result<T, Error>
    where
        I: RowIndex,
        T: FromSql<'a>,
    {
        decode(&self.columns, index, |i| self.raw.field(i))
    }

    /// The raw binary value of a column (`None` for NULL), for types this crate cannot decode.
    pub fn raw<I: RowIndex>(&self, index: I) -> Result<Option<&[u8]>, Error> {
        let i = index
            .find(&self.columns)
            .ok_or_else(|| Error::column(index.to_string()))?;
        Ok(self.raw.field(i))
    }
}

/// Decodes column `index` of a row with `columns`, whose raw values `field` gives.
#[inline]
fn decode<'a, I, T>(
    columns: &[Column],
    index: I,
    field: impl FnOnce(usize) -> Option<&'a [u8]>,
) -> Result<T, Error>
where
    I: RowIndex,
    T: FromSql<'a>,
{
    let i = index
        .find(columns)
        .ok_or_else(|| Error::column(index.to_string()))?;
    let column = &columns[i];
    if !T::accepts(&column.type_) {
        return Err(Error::from_sql_mismatch(
            &column.name,
            &column.type_,
            std::any::type_name::<T>(),
        ));
    }
    let raw = field(i);
    // postgres-types reserves room for as many array elements as the header claims before reading one:
    // counts are checked against the value's bytes first.
    if let Some(raw) = raw
        && column.counted
    {
        crate::proto::check_counts(&column.type_, raw)
            .map_err(|e| Error::from_sql(&column.name, e))?;
    }
    T::from_sql_nullable(&column.type_, raw).map_err(|e| Error::from_sql(&column.name, e))
}

/// A row lent by [`RowStream::next_ref`](crate::RowStream::next_ref): the same reads as [`Row`], from the
/// bytes where they arrived, valid until the stream's next call. Nothing is copied or counted to hand it out,
/// which makes it the cheapest way through a large result; [`to_row`](Self::to_row) keeps one.
#[derive(Clone, Copy)]
pub struct RowRef<'a> {
    columns: &'a Arc<[Column]>,
    raw: RowView<'a>,
}

impl<'a> RowRef<'a> {
    /// A lent row, whose field count [`check`](Self::check) found to be its columns'.
    pub(crate) fn new(columns: &'a Arc<[Column]>, raw: RowView<'a>) -> RowRef<'a> {
        RowRef { columns, raw }
    }

    /// Checks that a row of `fields` fields has `columns`, as [`Row::new`] does.
    pub(crate) fn check(columns: &[Column], fields: usize) -> Result<(), Error> {
        if fields != columns.len() {
            return Err(Error::protocol(format!(
                "row has {fields} fields but the statement has {} columns",
                columns.len()
            )));
        }
        Ok(())
    }

    #[inline]
    fn field(&self, i: usize) -> Option<&'a [u8]> {
        self.raw.field(i)
    }

    /// The columns of the row.
    pub fn columns(&self) -> &'a [Column] {
        self.columns
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Decodes a column. Borrowed types (`&str`, `&[u8]`) borrow from the connection's buffer, so they live
    /// as long as the row.
    ///
    /// # Panics
    /// Panics if the column does not exist or cannot be decoded as `T`; use [`try_get`](Self::try_get) to get
    /// an error instead.
    #[track_caller]
    #[inline]
    pub fn get<I, T>(&self, index: I) -> T
    where
        I: RowIndex,
        T: FromSql<'a>,
    {
        match self.try_get(index) {
            Ok(value) => value,
            Err(e) => panic!("error retrieving column: {e}"),
        }
    }

    /// Decodes a column, checking first that the column exists and that `T` accepts its type.
    #[inline]
    pub fn try_get<I, T>(&self, index: I) -> Result<T, Error>
    where
        I: RowIndex,
        T: FromSql<'a>,
    {
        decode(self.columns, index, |i| self.field(i))
    }

    /// The raw binary value of a column (`None` for NULL), for types this crate cannot decode.
    pub fn raw<I: RowIndex>(&self, index: I) -> Result<Option<&'a [u8]>, Error> {
        let i = index
            .find(self.columns)
            .ok_or_else(|| Error::column(index.to_string()))?;
        Ok(self.field(i))
    }

    /// The row as an owned [`Row`], which outlives the stream (its values are copied).
    pub fn to_row(&self) -> Row {
        Row {
            columns: Arc::clone(self.columns),
            raw: RawRow::from_view(self.raw),
        }
    }
}

impl fmt::Debug for RowRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowRef")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Row")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

/// A column of a simple-query result: just a name, as every value comes back as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleColumn {
    pub(crate) name: String,
    pub(crate) type_oid: u32,
}

impl SimpleColumn {
    /// The column name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OID of the column's type; [`Type::from_oid`](crate::types::Type::from_oid) names the built-in ones.
    pub fn type_oid(&self) -> u32 {
        self.type_oid
    }
}

/// A row of a simple-query result, every value as text.
#[derive(Clone)]
pub struct SimpleQueryRow {
    columns: Arc<[SimpleColumn]>,
    raw: RawRow,
}

impl SimpleQueryRow {
    pub(crate) fn new(columns: Arc<[SimpleColumn]>, raw: RawRow) -> Result<SimpleQueryRow, Error> {
        if raw.len() != columns.len() {
            return Err(Error::protocol(
                "row field count does not match its RowDescription",
            ));
        }
        // Values are decoded on access; check UTF-8 once here so `get` cannot fail later.
        for i in 0..raw.len() {
            if let Some(bytes) = raw.field(i) {
                std::str::from_utf8(bytes)
                    .map_err(|_| Error::protocol("a text value is not valid UTF-8"))?;
            }
        }
        Ok(SimpleQueryRow { columns, raw })
    }

    /// The columns of the row.
    pub fn columns(&self) -> &[SimpleColumn] {
        &self.columns
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether the row has no values.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The value of a column as text, `None` for NULL or for a column that does not exist.
    pub fn get<I: SimpleRowIndex>(&self, index: I) -> Option<&str> {
        self.try_get(index).ok().flatten()
    }

    /// The value of a column as text (`None` for NULL), or an error if the column does not exist.
    pub fn try_get<I: SimpleRowIndex>(&self, index: I) -> Result<Option<&str>, Error> {
        let i = index
            .find_simple(&self.columns)
            .ok_or_else(|| Error::column(index.to_string()))?;
        // UTF-8 was checked in `new`.
        Ok(self
            .raw
            .field(i)
            .map(|b| std::str::from_utf8(b).unwrap_or_default()))
    }
}

impl fmt::Debug for SimpleQueryRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let values: Vec<Option<&str>> = (0..self.len()).map(|i| self.get(i)).collect();
        f.debug_struct("SimpleQueryRow")
            .field("columns", &self.columns)
            .field("values", &values)
            .finish()
    }
}

/// Something that picks a column of a [`SimpleQueryRow`]: an index or a name.
pub trait SimpleRowIndex: sealed::Sealed + fmt::Display {
    /// The position of the column, if it exists.
    #[doc(hidden)]
    fn find_simple(&self, columns: &[SimpleColumn]) -> Option<usize>;
}

impl SimpleRowIndex for usize {
    fn find_simple(&self, columns: &[SimpleColumn]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }
}

impl SimpleRowIndex for str {
    fn find_simple(&self, columns: &[SimpleColumn]) -> Option<usize> {
        columns.iter().position(|c| c.name == self)
    }
}

impl<T: SimpleRowIndex + ?Sized> SimpleRowIndex for &T {
    fn find_simple(&self, columns: &[SimpleColumn]) -> Option<usize> {
        (**self).find_simple(columns)
    }
}

/// One item of a simple-query result.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SimpleQueryMessage {
    /// A result set starts; its rows follow.
    RowDescription(Arc<[SimpleColumn]>),
    /// A row of the current result set.
    Row(SimpleQueryRow),
    /// A statement finished; the number is the rows it affected or returned (0 where the command reports none).
    CommandComplete(u64),
}
