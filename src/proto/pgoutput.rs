//! The decoder of the `pgoutput` logical decoding plugin's messages (protocol versions 1 to 4), sans-IO: what
//! an XLogData of a logical replication stream carries. Every length and count is checked against the bytes
//! that are there before anything is reserved or sliced; a message that does not parse is an error value.
//! Values are [`Bytes`] slices of the message: nothing is copied.

use bytes::Bytes;

use crate::Error;
use crate::proto::replication::{Lsn, PgTimestamp, Reader};

/// A message of the `pgoutput` logical decoding plugin.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LogicalMessage {
    /// A transaction starts; its changes follow, then [`Commit`](LogicalMessage::Commit).
    Begin(Begin),
    /// The transaction begun last committed.
    Commit(Commit),
    /// The transaction came from another node (replication origin).
    Origin(Origin),
    /// The columns of a table, sent before the first change of it in a session and after its definition changes.
    Relation(Relation),
    /// A data type that is not built in, sent before a relation that uses it.
    Type(TypeMessage),
    /// A row was inserted.
    Insert(Insert),
    /// A row was updated.
    Update(Update),
    /// A row was deleted.
    Delete(Delete),
    /// Tables were truncated.
    Truncate(Truncate),
    /// A message written with `pg_logical_emit_message` (option `messages`).
    Message(Message),
    /// A block of a streamed in-progress transaction starts (option `streaming`, protocol 2 and later).
    StreamStart {
        /// The top-level transaction the block belongs to.
        xid: u32,
        /// Whether this is the transaction's first block.
        first_segment: bool,
    },
    /// The current streamed block ends.
    StreamStop,
    /// A streamed transaction committed: apply its blocks.
    StreamCommit(StreamCommit),
    /// A streamed transaction, or one of its subtransactions, aborted: drop its changes.
    StreamAbort(StreamAbort),
    /// A two-phase transaction starts (option `two_phase`, protocol 3 and later).
    BeginPrepare(Prepared),
    /// The transaction begun with [`BeginPrepare`](LogicalMessage::BeginPrepare) was prepared.
    Prepare(Prepared),
    /// A prepared transaction committed.
    CommitPrepared(Prepared),
    /// A prepared transaction rolled back.
    RollbackPrepared(RollbackPrepared),
    /// A streamed transaction was prepared.
    StreamPrepare(Prepared),
}

/// [`LogicalMessage::Begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
    /// Its transaction id.
    pub xid: u32,
}

/// [`LogicalMessage::Commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags (none defined yet).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the transaction in the WAL: the position to acknowledge once it is applied.
    pub end_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
}

/// [`LogicalMessage::Origin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The LSN of the commit on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: String,
}

/// [`LogicalMessage::Relation`]: a table's columns, by which later changes are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The streamed transaction this came in, if inside a stream block.
    pub xid: Option<u32>,
    /// The table's OID, which changes refer to.
    pub oid: u32,
    /// Its schema.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its REPLICA IDENTITY setting: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Its columns, in order.
    pub columns: Vec<RelationColumn>,
}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity (the key old values are sent with).
    pub key: bool,
    /// Its name.
    pub name: String,
    /// The OID of its type.
    pub type_oid: u32,
    /// Its type modifier (-1 for none).
    pub type_modifier: i32,
}

/// [`LogicalMessage::Type`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    /// The streamed transaction this came in, if inside a stream block.
    pub xid: Option<u32>,
    /// The type's OID.
    pub oid: u32,
    /// Its schema.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// [`LogicalMessage::Insert`].
#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    /// The streamed transaction this came in, if inside a stream block.
    pub xid: Option<u32>,
    /// The table's OID (see [`Relation`]).
    pub relation: u32,
    /// The new row.
    pub new: Tuple,
}

/// [`LogicalMessage::Update`].
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The streamed transaction this came in, if inside a stream block.
    pub xid: Option<u32>,
    /// The table's OID (see [`Relation`]).
    pub relation: u32,
    /// The old row's values, when the server sends them: the key columns if the key changed (REPLICA IDENTITY
    /// DEFAULT or INDEX), the whole row under REPLICA IDENTITY FULL.
    pub old: Option<OldTuple>,
    /// The new row. A TOASTed value the update did not change is [`TupleValue::UnchangedToast`].
    pub new: Tuple,
}

/// [`LogicalMessage::Delete`].
#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    /// The streamed transaction this came in, if inside a stream block.
    pub xid: Option<u32>,
    /// The table's OID (see [`Relation`]).
    pub relation: u32,
    /// The deleted row's key, or the whole row under REPLICA IDENTITY FULL.
    pub old: OldTuple,
}

/// The old values of an update or delete.
#[derive(Debug, Clone, PartialEq)]
pub enum OldTuple {
    /// The replica identity's columns (`K`); the other columns are null.
    Key(Tuple),
    /// The whole old row (`O`, REPLICA IDENTITY FULL).
    Full(Tuple),
}

impl OldTuple {
    /// The values, whichever kind they are.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

/// [`LogicalMessage::Truncate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// The streamed transaction this came in, if inside a stream block.
    pub xid: Option<u32>,
    /// `TRUNCATE ... CASCADE`.
    pub cascade: bool,
    /// `TRUNCATE ... RESTART IDENTITY`.
    pub restart_identity: bool,
    /// The truncated tables' OIDs.
    pub relations: Vec<u32>,
}

/// [`LogicalMessage::Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The streamed transaction this came in, if inside a stream block.
    pub xid: Option<u32>,
    /// Whether it was emitted as part of a transaction (else it is sent at once).
    pub transactional: bool,
    /// The LSN of the message.
    pub lsn: Lsn,
    /// The prefix it was emitted with.
    pub prefix: String,
    /// Its content.
    pub content: Bytes,
}

/// [`LogicalMessage::StreamCommit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCommit {
    /// The streamed transaction.
    pub xid: u32,
    /// Flags (none defined yet).
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the transaction in the WAL: the position to acknowledge once it is applied.
    pub end_lsn: Lsn,
    /// When it committed.
    pub commit_time: PgTimestamp,
}

/// [`LogicalMessage::StreamAbort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbort {
    /// The streamed top-level transaction.
    pub xid: u32,
    /// The (sub)transaction that aborted: `xid` itself when the whole transaction did.
    pub subxid: u32,
    /// The abort's LSN and time, sent with `streaming = parallel` (protocol 4).
    pub abort: Option<(Lsn, PgTimestamp)>,
}

/// The two-phase messages Begin Prepare, Prepare, Commit Prepared and Stream Prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Flags (none defined yet; absent, so 0, in Begin Prepare).
    pub flags: u8,
    /// The LSN of the prepare (or, in Commit Prepared, of the commit).
    pub lsn: Lsn,
    /// The end of the prepared (or committed) transaction in the WAL.
    pub end_lsn: Lsn,
    /// When it was prepared (or committed).
    pub time: PgTimestamp,
    /// The transaction id.
    pub xid: u32,
    /// The global identifier given to PREPARE TRANSACTION.
    pub gid: String,
}

/// [`LogicalMessage::RollbackPrepared`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// Flags (none defined yet).
    pub flags: u8,
    /// The end of the prepared transaction in the WAL.
    pub prepare_end_lsn: Lsn,
    /// The end of the rollback in the WAL.
    pub rollback_end_lsn: Lsn,
    /// When it was prepared.
    pub prepare_time: PgTimestamp,
    /// When it was rolled back.
    pub rollback_time: PgTimestamp,
    /// The transaction id.
    pub xid: u32,
    /// The global identifier given to PREPARE TRANSACTION.
    pub gid: String,
}

/// The values of one row, in the relation's column order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tuple(pub Vec<TupleValue>);

/// One value of a [`Tuple`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// SQL NULL.
    Null,
    /// A TOASTed value the change did not touch, so the server did not send it: NOT the same as NULL. The
    /// row's value is whatever it was before.
    UnchangedToast,
    /// A value in text form (the default).
    Text(Bytes),
    /// A value in binary form (option `binary`).
    Binary(Bytes),
}

/// Decodes the `pgoutput` messages of one replication stream, in order.
///
/// It keeps the one piece of state the format needs: whether a streamed block is open (between Stream Start
/// and Stream Stop), inside which changes carry their transaction id.
#[derive(Debug, Default, Clone)]
pub struct PgOutputDecoder {
    in_stream: bool,
}

impl PgOutputDecoder {
    /// A decoder for a new stream.
    pub fn new() -> PgOutputDecoder {
        PgOutputDecoder::default()
    }

    /// Decodes the data of one XLogData message.
    pub fn decode(&mut self, data: Bytes) -> Result<LogicalMessage, Error> {
        let mut r = Reader::new(data, "pgoutput message");
        let tag = r.u8()?;
        let streamed = |r: &mut Reader, in_stream: bool| -> Result<Option<u32>, Error> {
            if in_stream {
                r.u32().map(Some)
            } else {
                Ok(None)
            }
        };
        let message = match tag {
            b'B' => LogicalMessage::Begin(Begin {
                final_lsn: Lsn(r.u64()?),
                commit_time: r.i64()?,
                xid: r.u32()?,
            }),
            b'C' => LogicalMessage::Commit(Commit {
                flags: r.u8()?,
                commit_lsn: Lsn(r.u64()?),
                end_lsn: Lsn(r.u64()?),
                commit_time: r.i64()?,
            }),
            b'O' => LogicalMessage::Origin(Origin {
                commit_lsn: Lsn(r.u64()?),
                name: r.string()?,
            }),
            b'R' => {
                let xid = streamed(&mut r, self.in_stream)?;
                let oid = r.u32()?;
                let namespace = r.string()?;
                let name = r.string()?;
                let replica_identity = r.u8()?;
                let count = r.u16()?;
                // Each column takes at least 10 bytes: no reservation beyond what the message can hold.
                let mut columns = Vec::with_capacity(usize::from(count).min(r.remaining() / 10));
                for _ in 0..count {
                    columns.push(RelationColumn {
                        key: r.u8()? & 1 != 0,
                        name: r.string()?,
                        type_oid: r.u32()?,
                        type_modifier: r.i32()?,
                    });
                }
                LogicalMessage::Relation(Relation {
                    xid,
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }
            b'Y' => LogicalMessage::Type(TypeMessage {
                xid: streamed(&mut r, self.in_stream)?,
                oid: r.u32()?,
                namespace: r.string()?,
                name: r.string()?,
            }),
            b'I' => {
                let xid = streamed(&mut r, self.in_stream)?;
                let relation = r.u32()?;
                r.expect(b'N', "the new tuple of an insert")?;
                LogicalMessage::Insert(Insert {
                    xid,
                    relation,
                    new: read_tuple(&mut r)?,
                })
            }
            b'U' => {
                let xid = streamed(&mut r, self.in_stream)?;
                let relation = r.u32()?;
                let old = match r.u8()? {
                    b'K' => Some(OldTuple::Key(read_tuple(&mut r)?)),
                    b'O' => Some(OldTuple::Full(read_tuple(&mut r)?)),
                    b'N' => None,
                    other => return Err(r.unexpected(other, "K, O or N in an update")),
                };
                if old.is_some() {
                    r.expect(b'N', "the new tuple of an update")?;
                }
                LogicalMessage::Update(Update {
                    xid,
                    relation,
                    old,
                    new: read_tuple(&mut r)?,
                })
            }
            b'D' => {
                let xid = streamed(&mut r, self.in_stream)?;
                let relation = r.u32()?;
                let old = match r.u8()? {
                    b'K' => OldTuple::Key(read_tuple(&mut r)?),
                    b'O' => OldTuple::Full(read_tuple(&mut r)?),
                    other => return Err(r.unexpected(other, "K or O in a delete")),
                };
                LogicalMessage::Delete(Delete { xid, relation, old })
            }
            b'T' => {
                let xid = streamed(&mut r, self.in_stream)?;
                let count = r.u32()?;
                let options = r.u8()?;
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                if count > r.remaining() / 4 {
                    return Err(r.short("the truncated relations"));
                }
                let mut relations = Vec::with_capacity(count);
                for _ in 0..count {
                    relations.push(r.u32()?);
                }
                LogicalMessage::Truncate(Truncate {
                    xid,
                    cascade: options & 1 != 0,
                    restart_identity: options & 2 != 0,
                    relations,
                })
            }
            b'M' => {
                let xid = streamed(&mut r, self.in_stream)?;
                let transactional = r.u8()? & 1 != 0;
                let lsn = Lsn(r.u64()?);
                let prefix = r.string()?;
                let len = r.u32()?;
                let content = r.bytes(
                    usize::try_from(len).unwrap_or(usize::MAX),
                    "the message content",
                )?;
                LogicalMessage::Message(Message {
                    xid,
                    transactional,
                    lsn,
                    prefix,
                    content,
                })
            }
            b'S' => {
                let xid = r.u32()?;
                let first_segment = r.u8()? == 1;
                if self.in_stream {
                    return Err(Error::protocol(
                        "pgoutput: Stream Start while a streamed block was already open",
                    ));
                }
                r.end()?;
                self.in_stream = true;
                return Ok(LogicalMessage::StreamStart { xid, first_segment });
            }
            b'E' => {
                if !self.in_stream {
                    return Err(Error::protocol(
                        "pgoutput: Stream Stop without a Stream Start",
                    ));
                }
                r.end()?;
                self.in_stream = false;
                return Ok(LogicalMessage::StreamStop);
            }
            b'c' => LogicalMessage::StreamCommit(StreamCommit {
                xid: r.u32()?,
                flags: r.u8()?,
                commit_lsn: Lsn(r.u64()?),
                end_lsn: Lsn(r.u64()?),
                commit_time: r.i64()?,
            }),
            b'A' => {
                let xid = r.u32()?;
                let subxid = r.u32()?;
                // Protocol 4 with parallel streaming adds the abort's LSN and time; older forms end here.
                let abort = if r.remaining() == 0 {
                    None
                } else {
                    Some((Lsn(r.u64()?), r.i64()?))
                };
                LogicalMessage::StreamAbort(StreamAbort { xid, subxid, abort })
            }
            b'b' => LogicalMessage::BeginPrepare(Prepared {
                flags: 0,
                lsn: Lsn(r.u64()?),
                end_lsn: Lsn(r.u64()?),
                time: r.i64()?,
                xid: r.u32()?,
                gid: r.string()?,
            }),
            b'P' | b'K' | b'p' => {
                let prepared = Prepared {
                    flags: r.u8()?,
                    lsn: Lsn(r.u64()?),
                    end_lsn: Lsn(r.u64()?),
                    time: r.i64()?,
                    xid: r.u32()?,
                    gid: r.string()?,
                };
                match tag {
                    b'P' => LogicalMessage::Prepare(prepared),
                    b'K' => LogicalMessage::CommitPrepared(prepared),
                    _ => LogicalMessage::StreamPrepare(prepared),
                }
            }
            b'r' => LogicalMessage::RollbackPrepared(RollbackPrepared {
                flags: r.u8()?,
                prepare_end_lsn: Lsn(r.u64()?),
                rollback_end_lsn: Lsn(r.u64()?),
                prepare_time: r.i64()?,
                rollback_time: r.i64()?,
                xid: r.u32()?,
                gid: r.string()?,
            }),
            other => {
                return Err(Error::protocol(format!(
                    "pgoutput: unknown message type {:?}",
                    other as char
                )));
            }
        };
        r.end()?;
        Ok(message)
    }
}

/// One TupleData: a column count, then each value's kind and, for text and binary, its length and bytes.
fn read_tuple(r: &mut Reader) -> Result<Tuple, Error> {
    let count = r.u16()?;
    // Each value takes at least its kind byte.
    if usize::from(count) > r.remaining() {
        return Err(r.short("a tuple's columns"));
    }
    let mut values = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        values.push(match r.u8()? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::UnchangedToast,
            kind @ (b't' | b'b') => {
                let len = r.i32()?;
                let len = usize::try_from(len).map_err(|_| {
                    Error::protocol(format!("pgoutput message: negative value length {len}"))
                })?;
                let value = r.bytes(len, "a column value")?;
                if kind == b't' {
                    TupleValue::Text(value)
                } else {
                    TupleValue::Binary(value)
                }
            }
            other => return Err(r.unexpected(other, "a column kind (n, u, t or b)")),
        });
    }
    Ok(Tuple(values))
}

#[cfg(test)]
#[path = "pgoutput_tests.rs"]
mod tests;
