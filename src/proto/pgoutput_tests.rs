//! The replication messages and the pgoutput decoder, byte by byte: each message type built as the server
//! lays it out, decoded, and every truncation of it refused with an error.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::proto::replication::*;

/// Builds a message field by field, as the server writes it.
#[derive(Default)]
struct Out(BytesMut);

impl Out {
    fn tag(tag: u8) -> Out {
        let mut out = Out::default();
        out.0.put_u8(tag);
        out
    }
    fn u8(mut self, v: u8) -> Out {
        self.0.put_u8(v);
        self
    }
    fn u16(mut self, v: u16) -> Out {
        self.0.put_u16(v);
        self
    }
    fn u32(mut self, v: u32) -> Out {
        self.0.put_u32(v);
        self
    }
    fn i32(mut self, v: i32) -> Out {
        self.0.put_i32(v);
        self
    }
    fn u64(mut self, v: u64) -> Out {
        self.0.put_u64(v);
        self
    }
    fn i64(mut self, v: i64) -> Out {
        self.0.put_i64(v);
        self
    }
    fn str(mut self, v: &str) -> Out {
        self.0.put_slice(v.as_bytes());
        self.0.put_u8(0);
        self
    }
    fn raw(mut self, v: &[u8]) -> Out {
        self.0.put_slice(v);
        self
    }
    /// A tuple: `None` is NULL, `Some(b"\0u")` the unchanged-TOAST marker, else a text value.
    fn tuple(mut self, values: &[Option<&[u8]>]) -> Out {
        self.0.put_u16(values.len() as u16);
        for value in values {
            match value {
                None => self.0.put_u8(b'n'),
                Some(b"\0u") => self.0.put_u8(b'u'),
                Some(text) => {
                    self.0.put_u8(b't');
                    self.0.put_i32(text.len() as i32);
                    self.0.put_slice(text);
                }
            }
        }
        self
    }
    fn done(self) -> Bytes {
        self.0.freeze()
    }
}

fn text(v: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(v.as_bytes()))
}

/// Decodes `bytes` with a decoder in the given stream state, and checks that every proper prefix of it fails
/// cleanly (an error, no panic) from the same state.
fn decode(bytes: Bytes, in_stream: bool) -> LogicalMessage {
    for cut in 0..bytes.len() {
        let mut decoder = PgOutputDecoder { in_stream };
        assert!(
            decoder.decode(bytes.slice(..cut)).is_err(),
            "a message cut to {cut} of {} bytes decoded",
            bytes.len()
        );
    }
    let mut decoder = PgOutputDecoder { in_stream };
    let message = decoder.decode(bytes.clone()).expect("decodes");
    // A byte more is an error too: lengths are exact.
    let mut longer = BytesMut::from(&bytes[..]);
    longer.put_u8(0);
    let mut decoder = PgOutputDecoder { in_stream };
    assert!(
        decoder.decode(longer.freeze()).is_err(),
        "a trailing byte was accepted"
    );
    message
}

#[test]
fn lsn_reads_and_shows_as_postgresql_does() {
    let lsn: Lsn = "16/B374D848".parse().unwrap();
    assert_eq!(lsn, Lsn(0x16_B374_D848));
    assert_eq!(lsn.to_string(), "16/B374D848");
    assert_eq!(Lsn(0).to_string(), "0/0");
    for bad in ["", "16", "/1", "1/", "x/1", "1/2/3", "123456789/0", "-1/0"] {
        assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn xlogdata_and_keepalive_parse_and_status_updates_encode() {
    let w = Out::tag(b'w').u64(10).u64(20).i64(30).raw(b"BODY").done();
    assert_eq!(
        parse_server_message(w).unwrap(),
        ServerMessage::XLogData {
            wal_start: Lsn(10),
            wal_end: Lsn(20),
            send_time: 30,
            data: Bytes::from_static(b"BODY"),
        }
    );
    let k = Out::tag(b'k').u64(99).i64(7).u8(1).done();
    assert_eq!(
        parse_server_message(k.clone()).unwrap(),
        ServerMessage::Keepalive {
            wal_end: Lsn(99),
            send_time: 7,
            reply_requested: true,
        }
    );
    for cut in 0..k.len() {
        assert!(parse_server_message(k.slice(..cut)).is_err());
    }
    assert!(parse_server_message(Out::tag(b'k').u64(1).i64(2).u8(0).u8(0).done()).is_err());
    assert!(parse_server_message(Out::tag(b'w').u64(1).u64(2).done()).is_err());
    assert!(parse_server_message(Out::tag(b'x').done()).is_err());

    let update = standby_status_update(Lsn(1), Lsn(2), Lsn(3), 4, false);
    let expected = Out::tag(b'r').u64(1).u64(2).u64(3).i64(4).u8(0).done();
    assert_eq!(update, expected);
    assert_eq!(update.len(), 34);
}

#[test]
fn transaction_messages() {
    let begin = Out::tag(b'B').u64(0x100).i64(55).u32(700).done();
    assert_eq!(
        decode(begin, false),
        LogicalMessage::Begin(Begin {
            final_lsn: Lsn(0x100),
            commit_time: 55,
            xid: 700
        })
    );
    let commit = Out::tag(b'C').u8(0).u64(0x100).u64(0x180).i64(56).done();
    assert_eq!(
        decode(commit, false),
        LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x100),
            end_lsn: Lsn(0x180),
            commit_time: 56
        })
    );
    let origin = Out::tag(b'O').u64(9).str("node_a").done();
    assert_eq!(
        decode(origin, false),
        LogicalMessage::Origin(Origin {
            commit_lsn: Lsn(9),
            name: "node_a".into()
        })
    );
}

#[test]
fn relation_and_type_messages_in_and_out_of_streams() {
    let columns = |out: Out| {
        out.str("public")
            .str("items")
            .u8(b'd')
            .u16(2)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .str("name")
            .u32(25)
            .i32(-1)
    };
    let expected = |xid| Relation {
        xid,
        oid: 16384,
        namespace: "public".into(),
        name: "items".into(),
        replica_identity: b'd',
        columns: vec![
            RelationColumn {
                key: true,
                name: "id".into(),
                type_oid: 23,
                type_modifier: -1,
            },
            RelationColumn {
                key: false,
                name: "name".into(),
                type_oid: 25,
                type_modifier: -1,
            },
        ],
    };
    let plain = columns(Out::tag(b'R').u32(16384)).done();
    assert_eq!(
        decode(plain, false),
        LogicalMessage::Relation(expected(None))
    );
    let streamed = columns(Out::tag(b'R').u32(900).u32(16384)).done();
    assert_eq!(
        decode(streamed, true),
        LogicalMessage::Relation(expected(Some(900)))
    );

    let ty = Out::tag(b'Y').u32(99999).str("public").str("mood").done();
    assert_eq!(
        decode(ty, false),
        LogicalMessage::Type(TypeMessage {
            xid: None,
            oid: 99999,
            namespace: "public".into(),
            name: "mood".into()
        })
    );
}

#[test]
fn row_changes_keep_null_and_unchanged_toast_apart() {
    let insert = Out::tag(b'I')
        .u32(16384)
        .u8(b'N')
        .tuple(&[Some(b"1"), None, Some(b"\0u")])
        .done();
    assert_eq!(
        decode(insert, false),
        LogicalMessage::Insert(Insert {
            xid: None,
            relation: 16384,
            new: Tuple(vec![
                text("1"),
                TupleValue::Null,
                TupleValue::UnchangedToast
            ]),
        })
    );

    let update_plain = Out::tag(b'U')
        .u32(16384)
        .u8(b'N')
        .tuple(&[Some(b"2")])
        .done();
    assert_eq!(
        decode(update_plain, false),
        LogicalMessage::Update(Update {
            xid: None,
            relation: 16384,
            old: None,
            new: Tuple(vec![text("2")]),
        })
    );
    let update_key = Out::tag(b'U')
        .u32(7)
        .u32(16384)
        .u8(b'K')
        .tuple(&[Some(b"1"), None])
        .u8(b'N')
        .tuple(&[Some(b"3"), Some(b"x")])
        .done();
    assert_eq!(
        decode(update_key, true),
        LogicalMessage::Update(Update {
            xid: Some(7),
            relation: 16384,
            old: Some(OldTuple::Key(Tuple(vec![text("1"), TupleValue::Null]))),
            new: Tuple(vec![text("3"), text("x")]),
        })
    );
    let update_full = Out::tag(b'U')
        .u32(16384)
        .u8(b'O')
        .tuple(&[Some(b"1")])
        .u8(b'N')
        .tuple(&[Some(b"4")])
        .done();
    assert!(matches!(
        decode(update_full, false),
        LogicalMessage::Update(Update {
            old: Some(OldTuple::Full(_)),
            ..
        })
    ));

    let delete = Out::tag(b'D')
        .u32(16384)
        .u8(b'K')
        .tuple(&[Some(b"1")])
        .done();
    assert_eq!(
        decode(delete, false),
        LogicalMessage::Delete(Delete {
            xid: None,
            relation: 16384,
            old: OldTuple::Key(Tuple(vec![text("1")])),
        })
    );

    let binary = {
        let mut out = Out::tag(b'I').u32(1).u8(b'N').u16(1).u8(b'b').i32(4);
        out = out.raw(&42i32.to_be_bytes());
        out.done()
    };
    assert_eq!(
        decode(binary, false),
        LogicalMessage::Insert(Insert {
            xid: None,
            relation: 1,
            new: Tuple(vec![TupleValue::Binary(Bytes::copy_from_slice(
                &42i32.to_be_bytes()
            ))]),
        })
    );
}

#[test]
fn malformed_changes_are_errors() {
    let mut decoder = PgOutputDecoder::new();
    // A value longer than the message, a negative length, an unknown column kind, a missing 'N'.
    for bad in [
        Out::tag(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b't')
            .i32(100)
            .raw(b"short")
            .done(),
        Out::tag(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b't')
            .i32(-5)
            .done(),
        Out::tag(b'I').u32(1).u8(b'N').u16(1).u8(b'z').done(),
        Out::tag(b'I').u32(1).u8(b'X').u16(0).done(),
        Out::tag(b'U').u32(1).u8(b'K').u16(0).u8(b'X').u16(0).done(),
        Out::tag(b'D').u32(1).u8(b'N').u16(0).done(),
        // A column count far beyond the bytes present: refused before anything is reserved.
        Out::tag(b'I').u32(1).u8(b'N').u16(u16::MAX).done(),
        Out::tag(b'T').u32(u32::MAX).u8(0).done(),
        Out::tag(b'M').u8(1).u64(1).str("p").u32(u32::MAX).done(),
        Out::tag(b'R').u32(1).raw(b"no terminator").done(),
        Out::tag(b'R')
            .u32(1)
            .raw(b"\xff\xfe\0")
            .str("t")
            .u8(b'd')
            .u16(0)
            .done(),
        Out::tag(b'?').done(),
        Bytes::new(),
    ] {
        assert!(decoder.decode(bad.clone()).is_err(), "{bad:?} decoded");
    }
}

#[test]
fn truncate_and_logical_messages() {
    let truncate = Out::tag(b'T').u32(2).u8(3).u32(10).u32(11).done();
    assert_eq!(
        decode(truncate, false),
        LogicalMessage::Truncate(Truncate {
            xid: None,
            cascade: true,
            restart_identity: true,
            relations: vec![10, 11],
        })
    );
    let message = Out::tag(b'M')
        .u8(1)
        .u64(0x500)
        .str("audit")
        .u32(5)
        .raw(b"hello")
        .done();
    assert_eq!(
        decode(message, false),
        LogicalMessage::Message(Message {
            xid: None,
            transactional: true,
            lsn: Lsn(0x500),
            prefix: "audit".into(),
            content: Bytes::from_static(b"hello"),
        })
    );
}

#[test]
fn streamed_transactions_track_their_blocks() {
    let mut decoder = PgOutputDecoder::new();
    assert_eq!(
        decoder
            .decode(Out::tag(b'S').u32(900).u8(1).done())
            .unwrap(),
        LogicalMessage::StreamStart {
            xid: 900,
            first_segment: true
        }
    );
    // Inside the block, changes carry the xid.
    let insert = Out::tag(b'I')
        .u32(901)
        .u32(5)
        .u8(b'N')
        .tuple(&[Some(b"a")])
        .done();
    assert!(matches!(
        decoder.decode(insert).unwrap(),
        LogicalMessage::Insert(Insert {
            xid: Some(901),
            relation: 5,
            ..
        })
    ));
    assert!(
        decoder
            .decode(Out::tag(b'S').u32(900).u8(0).done())
            .is_err(),
        "nested Stream Start"
    );
    let mut decoder = PgOutputDecoder { in_stream: true };
    assert_eq!(
        decoder.decode(Out::tag(b'E').done()).unwrap(),
        LogicalMessage::StreamStop
    );
    assert!(
        decoder.decode(Out::tag(b'E').done()).is_err(),
        "Stream Stop without a block"
    );
    // Outside, the same change has no xid.
    let insert = Out::tag(b'I').u32(5).u8(b'N').tuple(&[Some(b"a")]).done();
    assert!(matches!(
        decoder.decode(insert).unwrap(),
        LogicalMessage::Insert(Insert { xid: None, .. })
    ));

    let commit = Out::tag(b'c').u32(900).u8(0).u64(1).u64(2).i64(3).done();
    assert_eq!(
        decode(commit, false),
        LogicalMessage::StreamCommit(StreamCommit {
            xid: 900,
            flags: 0,
            commit_lsn: Lsn(1),
            end_lsn: Lsn(2),
            commit_time: 3
        })
    );
    // Stream Abort: the short form (protocol 2-3, and what PostgreSQL 18 may send to a v1 subscriber) and
    // protocol 4's with the abort LSN and time.
    let mut decoder = PgOutputDecoder::new();
    assert_eq!(
        decoder
            .decode(Out::tag(b'A').u32(900).u32(901).done())
            .unwrap(),
        LogicalMessage::StreamAbort(StreamAbort {
            xid: 900,
            subxid: 901,
            abort: None
        })
    );
    assert_eq!(
        decoder
            .decode(Out::tag(b'A').u32(900).u32(900).u64(77).i64(88).done())
            .unwrap(),
        LogicalMessage::StreamAbort(StreamAbort {
            xid: 900,
            subxid: 900,
            abort: Some((Lsn(77), 88))
        })
    );
    assert!(
        decoder
            .decode(Out::tag(b'A').u32(900).u32(900).u64(77).done())
            .is_err()
    );
}

#[test]
fn two_phase_messages() {
    let prepared = |flags| Prepared {
        flags,
        lsn: Lsn(1),
        end_lsn: Lsn(2),
        time: 3,
        xid: 4,
        gid: "gid-1".into(),
    };
    let begin = Out::tag(b'b')
        .u64(1)
        .u64(2)
        .i64(3)
        .u32(4)
        .str("gid-1")
        .done();
    assert_eq!(
        decode(begin, false),
        LogicalMessage::BeginPrepare(prepared(0))
    );
    for (tag, wrap) in [
        (
            b'P',
            LogicalMessage::Prepare as fn(Prepared) -> LogicalMessage,
        ),
        (b'K', LogicalMessage::CommitPrepared),
        (b'p', LogicalMessage::StreamPrepare),
    ] {
        let bytes = Out::tag(tag)
            .u8(0)
            .u64(1)
            .u64(2)
            .i64(3)
            .u32(4)
            .str("gid-1")
            .done();
        assert_eq!(decode(bytes, false), wrap(prepared(0)));
    }
    let rollback = Out::tag(b'r')
        .u8(0)
        .u64(1)
        .u64(2)
        .i64(3)
        .i64(4)
        .u32(5)
        .str("gid-2")
        .done();
    assert_eq!(
        decode(rollback, false),
        LogicalMessage::RollbackPrepared(RollbackPrepared {
            flags: 0,
            prepare_end_lsn: Lsn(1),
            rollback_end_lsn: Lsn(2),
            prepare_time: 3,
            rollback_time: 4,
            xid: 5,
            gid: "gid-2".into(),
        })
    );
}
