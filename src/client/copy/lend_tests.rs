//! [`BinaryCopyOutReader::for_each_ref`] against [`BinaryCopyOutReader::next`] over a scripted server: the
//! same rows in the same order and the same end, whatever the reads and however the server cuts its data into
//! CopyData messages (one row each as PostgreSQL does, several per message, a row across messages).

use super::*;
use crate::client::pipeline::tests::{Server, block_on, connect_reading};
use crate::config::QueryMode;
use crate::proto::scripted::{command_complete, message, ready};
use crate::{Client, ErrorKind};

const SQL: &str = "COPY t TO STDOUT (FORMAT binary)";

/// A row as the test compares it.
type Values = (i32, Option<String>, Vec<u8>);

fn rows() -> Vec<(i32, Option<String>, Vec<u8>)> {
    (0..40)
        .map(|i: i32| {
            let name = (i % 4 != 1).then(|| "n".repeat((i as usize * 7) % 90));
            (i, name, vec![i as u8; (i as usize * 3) % 70])
        })
        .collect()
}

/// The binary COPY data of `rows`: header, rows, trailer, as one byte string.
fn data(rows: &[Values]) -> Vec<Vec<u8>> {
    let types = [Type::INT4, Type::TEXT, Type::BYTEA];
    let mut header = BytesMut::new();
    write_header(&mut header);
    let mut pieces = vec![header.to_vec()];
    for (id, name, blob) in rows {
        let mut row = BytesMut::new();
        encode_row(&mut row, &types, &[id, name, blob]).unwrap();
        pieces.push(row.to_vec());
    }
    pieces.push((-1i16).to_be_bytes().to_vec());
    pieces
}

/// How the server cuts the data into CopyData messages.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// As PostgreSQL: the header with the first row, then a row per message, then the trailer alone.
    PerRow,
    /// Two rows to a message.
    Pairs,
    /// Every 11 bytes, rows or not.
    Every11,
}

fn copy_data(pieces: &[Vec<u8>], cut: Cut) -> Vec<u8> {
    let messages: Vec<Vec<u8>> = match cut {
        Cut::PerRow => {
            let mut messages = vec![[pieces[0].clone(), pieces[1].clone()].concat()];
            messages.extend(pieces[2..].iter().cloned());
            messages
        }
        Cut::Pairs => pieces.chunks(2).map(<[Vec<u8>]>::concat).collect(),
        Cut::Every11 => pieces.concat().chunks(11).map(<[u8]>::to_vec).collect(),
    };
    messages
        .iter()
        .map(|m| message(b'd', m))
        .collect::<Vec<_>>()
        .concat()
}

fn copy_out_response() -> Vec<u8> {
    let mut body = vec![1u8];
    body.extend_from_slice(&3i16.to_be_bytes());
    for _ in 0..3 {
        body.extend_from_slice(&1i16.to_be_bytes());
    }
    message(b'H', &body)
}

/// A client whose reads return at most `max_read` bytes; the server answers the COPY with `body` and `end`.
fn copying(max_read: usize, body: Vec<u8>, end: Vec<u8>) -> (Client, Server) {
    let (client, server) = connect_reading(false, QueryMode::Cached, max_read);
    server.then([copy_out_response(), body, end].concat());
    (client, server)
}

fn done(rows: usize) -> Vec<u8> {
    [
        message(b'c', b""),
        command_complete(&format!("COPY {rows}")),
        ready(),
    ]
    .concat()
}

/// Reads the COPY either way: the rows and how it ended.
fn read(client: &mut Client, lend: bool) -> (Vec<Values>, Result<Option<u64>, Error>) {
    block_on(async {
        let mut seen = Vec::new();
        let reader = match client.copy_out(SQL).await {
            Ok(reader) => reader,
            Err(e) => return (seen, Err(e)),
        };
        let mut reader = BinaryCopyOutReader::new(reader, &[Type::INT4, Type::TEXT, Type::BYTEA]);
        let end = if lend {
            reader
                .for_each_ref(|row| {
                    let blob: &[u8] = row.try_get(2)?;
                    seen.push((row.try_get(0)?, row.try_get(1)?, blob.to_vec()));
                    Ok::<_, Error>(())
                })
                .await
        } else {
            loop {
                match reader.next().await {
                    Ok(Some(row)) => {
                        let blob: &[u8] = row.get(2);
                        seen.push((row.get(0), row.get(1), blob.to_vec()));
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        };
        (seen, end.map(|()| reader.rows()))
    })
}

#[test]
fn lent_and_owned_copy_rows_match_however_the_data_is_cut() {
    let expected = rows();
    for cut in [Cut::PerRow, Cut::Pairs, Cut::Every11] {
        for max_read in [1, 6, 64, usize::MAX] {
            for lend in [false, true] {
                let body = copy_data(&data(&expected), cut);
                let (mut client, server) = copying(max_read, body, done(expected.len()));
                let (seen, end) = read(&mut client, lend);
                let what = format!("{cut:?}, reads of {max_read}, lend {lend}");
                assert_eq!(seen, expected, "{what}");
                assert_eq!(end.unwrap(), Some(40), "{what}");
                // In step: the next COPY gets its own data.
                let one = &expected[3..4];
                server.then([copy_out_response(), copy_data(&data(one), cut), done(1)].concat());
                assert_eq!(read(&mut client, lend).0, one, "{what}");
            }
        }
    }
}

#[test]
fn a_server_error_ends_the_lent_copy_after_the_rows_before_it() {
    let expected = rows();
    let pieces = data(&expected);
    // The header, the first 10 rows, then an error instead of the rest.
    let body = copy_data(&pieces[..11], Cut::PerRow);
    let error = message(b'E', b"SERROR\0VERROR\0C57014\0Mcanceled\0\0");
    for lend in [false, true] {
        let (mut client, _server) = copying(7, body.clone(), [error.clone(), ready()].concat());
        let (seen, end) = read(&mut client, lend);
        assert_eq!(seen, expected[..10], "lend {lend}");
        assert_eq!(end.unwrap_err().code(), Some("57014"), "lend {lend}");
        assert!(!client.is_closed());
    }
}

#[test]
fn malformed_copy_rows_break_the_connection_either_way() {
    let expected = rows();
    let mut pieces = data(&expected[..5]);
    // Row 3 claims a field count of 4.
    pieces[3][..2].copy_from_slice(&4i16.to_be_bytes());
    for lend in [false, true] {
        let (mut client, _server) = copying(usize::MAX, copy_data(&pieces, Cut::PerRow), done(5));
        let (seen, end) = read(&mut client, lend);
        assert_eq!(seen, expected[..2], "lend {lend}");
        let err = end.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(err.to_string().contains("4 fields"), "{err}");
        assert!(client.is_closed(), "lend {lend}");
    }
}

#[test]
fn the_callers_error_stops_the_lent_copy_and_reading_goes_on() {
    let expected = rows();
    let (mut client, _server) = copying(
        usize::MAX,
        copy_data(&data(&expected), Cut::PerRow),
        done(40),
    );
    let (first, rest) = block_on(async {
        let reader = client.copy_out(SQL).await.unwrap();
        let mut reader = BinaryCopyOutReader::new(reader, &[Type::INT4, Type::TEXT, Type::BYTEA]);
        let mut first = Vec::new();
        let stopped = reader
            .for_each_ref(|row| {
                if first.len() == 5 {
                    return Err(Error::config("enough"));
                }
                first.push(row.get::<i32>(0));
                Ok(())
            })
            .await;
        assert!(stopped.is_err());
        let mut rest = Vec::new();
        reader
            .for_each_ref(|row| {
                rest.push(row.to_row().get::<i32>(0));
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
        (first, rest)
    });
    assert_eq!(first, [0, 1, 2, 3, 4]);
    assert_eq!(rest, (6..40).collect::<Vec<i32>>());
}
