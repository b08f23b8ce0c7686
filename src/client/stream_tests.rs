//! The lending reads of a [`RowStream`] (`next_ref`, `for_each_ref`) against the owned one (`next`), over a
//! scripted server whose reads stop at every size: rows cut by a read come the general way, and every way
//! must hand out the same rows, in order, ending the same way.

use super::*;
use crate::client::pipeline::tests::{Server, block_on, connect_reading};
use crate::config::QueryMode;
use crate::proto::scripted::{Column, command_complete, data_row, message, ready, row_description};

const SQL: &str = "SELECT n, t FROM s";

/// A row as the test compares it.
type Values = (Option<i32>, Option<String>);

/// The rows the server sends: NULLs, empty and long texts (over the size a row is copied at), a wide spread
/// of lengths.
fn rows() -> Vec<Values> {
    (0..60)
        .map(|i: i32| {
            let text = match i % 5 {
                0 => None,
                1 => Some(String::new()),
                _ => Some("x".repeat((i as usize * 13) % 150)),
            };
            ((i % 7 != 3).then_some(i), text)
        })
        .collect()
}

fn described() -> Vec<u8> {
    row_description(&[Column::int4("n"), Column::text("t")])
}

fn wire_row((n, t): &Values) -> Vec<u8> {
    let n = n.map(i32::to_be_bytes);
    data_row(&[n.as_ref().map(|n| &n[..]), t.as_deref().map(str::as_bytes)])
}

fn error(code: &str) -> Vec<u8> {
    message(
        b'E',
        format!("SERROR\0VERROR\0C{code}\0Mscripted failure\0\0").as_bytes(),
    )
}

/// A client whose reads return at most `max_read` bytes, with `SQL` prepared; then the server answers the
/// stream's Bind/Execute with BindComplete, the rows in `body`, and `end`.
fn streaming(max_read: usize, body: Vec<u8>, end: Vec<u8>) -> (Client, Server) {
    let (client, server) = connect_reading(false, QueryMode::Cached, max_read);
    server
        .then(
            [
                message(b'1', b""),
                message(b't', &0u16.to_be_bytes()),
                described(),
                ready(),
            ]
            .concat(),
        )
        .then([message(b'2', b""), body, end].concat());
    (client, server)
}

fn all_rows() -> Vec<u8> {
    rows().iter().map(wire_row).collect::<Vec<_>>().concat()
}

fn complete() -> Vec<u8> {
    [command_complete("SELECT 60"), ready()].concat()
}

fn values_of(row: RowRef<'_>) -> Values {
    (
        row.get(0),
        row.get::<_, Option<&str>>("t").map(str::to_string),
    )
}

/// How a test reads the stream.
#[derive(Debug, Clone, Copy)]
enum Way {
    Owned,
    Lent,
    Each,
    /// Alternately owned and lent, and lent rows kept with `to_row`.
    Mixed,
}

/// Reads the whole stream one way: the rows, and how it ended.
fn read(client: &mut Client, way: Way) -> (Vec<Values>, Result<Option<u64>, Error>) {
    block_on(async {
        let mut seen = Vec::new();
        let mut stream = match client.query_stream(SQL, &[]).await {
            Ok(stream) => stream,
            Err(e) => return (seen, Err(e)),
        };
        let end = match way {
            Way::Owned => loop {
                match stream.next().await {
                    Ok(Some(row)) => seen.push((row.get(0), row.get(1))),
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            },
            Way::Lent => loop {
                match stream.next_ref().await {
                    Ok(Some(row)) => seen.push(values_of(row)),
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            },
            Way::Each => {
                stream
                    .for_each_ref(|row| {
                        seen.push(values_of(row));
                        Ok::<_, Error>(())
                    })
                    .await
            }
            Way::Mixed => {
                let mut kept = Vec::new();
                let end = loop {
                    let next = if seen.len() % 2 == 0 {
                        stream
                            .next()
                            .await
                            .map(|row| row.map(|row| (row.get(0), row.get(1))))
                    } else {
                        match stream.next_ref().await {
                            Ok(Some(row)) => {
                                kept.push(row.to_row());
                                Ok(Some(values_of(row)))
                            }
                            Ok(None) => Ok(None),
                            Err(e) => Err(e),
                        }
                    };
                    match next {
                        Ok(Some(values)) => seen.push(values),
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                // Rows kept past later reads still read as they were lent.
                for (k, row) in kept.iter().enumerate() {
                    let values: Values = (row.get(0), row.get(1));
                    assert_eq!(values, seen[2 * k + 1], "kept row {k}");
                }
                end
            }
        };
        (seen, end.map(|()| stream.rows_affected()))
    })
}

#[test]
fn every_way_reads_the_same_rows_at_every_read_size() {
    let expected = rows();
    for max_read in [1, 2, 3, 5, 8, 13, 64, 200, 4096, usize::MAX] {
        for way in [Way::Owned, Way::Lent, Way::Each, Way::Mixed] {
            let (mut client, server) = streaming(max_read, all_rows(), complete());
            let (seen, end) = read(&mut client, way);
            assert_eq!(seen, expected, "{way:?}, reads of {max_read}");
            assert_eq!(end.unwrap(), Some(60), "{way:?}, reads of {max_read}");
            // The connection is in step: the next request gets its own answer.
            server.then([message(b'2', b""), complete()].concat());
            let (seen, end) = read(&mut client, way);
            assert!(seen.is_empty());
            assert_eq!(end.unwrap(), Some(60), "{way:?}, reads of {max_read}");
        }
    }
}

#[test]
fn a_server_error_ends_every_way_after_the_rows_before_it() {
    let expected = rows();
    let before: Vec<u8> = expected[..7]
        .iter()
        .map(wire_row)
        .collect::<Vec<_>>()
        .concat();
    for max_read in [1, 7, usize::MAX] {
        for way in [Way::Owned, Way::Lent, Way::Each, Way::Mixed] {
            let (mut client, server) =
                streaming(max_read, before.clone(), [error("22012"), ready()].concat());
            let (seen, end) = read(&mut client, way);
            assert_eq!(seen, expected[..7], "{way:?}, reads of {max_read}");
            let err = end.unwrap_err();
            assert_eq!(err.code(), Some("22012"), "{way:?}: {err}");
            assert!(!client.is_closed());
            server.then([message(b'2', b""), complete()].concat());
            assert_eq!(read(&mut client, way).1.unwrap(), Some(60));
        }
    }
}

#[test]
fn a_malformed_row_breaks_the_connection_every_way() {
    let good = wire_row(&(Some(1), Some("a".to_string())));
    let mut bad = good.clone();
    // The text's length word claims more bytes than the row has.
    let at = bad.len() - 5;
    bad[at..at + 4].copy_from_slice(&100i32.to_be_bytes());
    for max_read in [1, 4, usize::MAX] {
        for way in [Way::Owned, Way::Lent, Way::Each, Way::Mixed] {
            let (mut client, _server) =
                streaming(max_read, [good.clone(), bad.clone()].concat(), complete());
            let (seen, end) = read(&mut client, way);
            assert_eq!(seen.len(), 1, "{way:?}, reads of {max_read}");
            let err = end.unwrap_err();
            assert!(
                err.to_string().contains("malformed DataRow"),
                "{way:?}: {err}"
            );
            assert!(client.is_closed(), "{way:?}, reads of {max_read}");
        }
    }
}

/// The callback's own error, or the client's.
#[derive(Debug)]
enum Stop {
    Enough,
    #[allow(dead_code, reason = "only printed when a test fails")]
    Client(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Client(e)
    }
}

#[test]
fn for_each_ref_returns_the_callers_error_and_goes_on_after_it() {
    let expected = rows();
    for max_read in [3, usize::MAX] {
        let (mut client, _server) = streaming(max_read, all_rows(), complete());
        let (first, rest) = block_on(async {
            let mut stream = client.query_stream(SQL, &[]).await.unwrap();
            let mut first = Vec::new();
            let stopped = stream
                .for_each_ref(|row| {
                    if first.len() == 10 {
                        return Err(Stop::Enough);
                    }
                    first.push(values_of(row));
                    Ok(())
                })
                .await;
            assert!(matches!(stopped, Err(Stop::Enough)), "{stopped:?}");
            let mut rest = Vec::new();
            stream
                .for_each_ref(|row| {
                    rest.push(values_of(row));
                    Ok::<_, Error>(())
                })
                .await
                .unwrap();
            (first, rest)
        });
        assert_eq!(first, expected[..10]);
        // The row the callback refused is not handed out again: it saw it.
        assert_eq!(rest, expected[11..], "reads of {max_read}");
    }
}

#[test]
fn a_stream_dropped_with_a_row_lent_leaves_the_connection_in_step() {
    for max_read in [1, 9, usize::MAX] {
        let (mut client, server) = streaming(max_read, all_rows(), complete());
        block_on(async {
            let mut stream = client.query_stream(SQL, &[]).await.unwrap();
            let row = stream.next_ref().await.unwrap().unwrap();
            assert_eq!(values_of(row), rows()[0]);
        });
        server.then([message(b'2', b""), wire_row(&rows()[5]), complete()].concat());
        let (seen, end) = read(&mut client, Way::Lent);
        assert_eq!(seen, [rows()[5].clone()], "reads of {max_read}");
        assert_eq!(end.unwrap(), Some(60));
    }
}

#[test]
fn a_new_description_in_the_middle_fails_every_way() {
    // The server describes three columns in the middle of the answer, then sends rows of three.
    let three = row_description(&[Column::int4("n"), Column::text("t"), Column::int4("x")]);
    let row = data_row(&[
        Some(&1i32.to_be_bytes()),
        Some(b"a"),
        Some(&2i32.to_be_bytes()),
    ]);
    for max_read in [1, usize::MAX] {
        for way in [Way::Owned, Way::Lent, Way::Each, Way::Mixed] {
            let (mut client, _server) =
                streaming(max_read, [three.clone(), row.clone()].concat(), complete());
            let (seen, end) = read(&mut client, way);
            assert!(seen.is_empty(), "{way:?}");
            let err = end.unwrap_err();
            // The stream refuses the RowDescription itself; were the rows to come anyway, their width is
            // checked against the statement's columns whichever way they are read.
            assert!(
                err.to_string()
                    .contains("unexpected RowDescription in response to Bind/Execute"),
                "{way:?}, reads of {max_read}: {err}"
            );
            assert!(client.is_closed(), "{way:?}, reads of {max_read}");
        }
    }
}
