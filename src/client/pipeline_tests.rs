//! Scripted tests of [`Pipeline`](crate::Pipeline): a transport that replays a server's answers, so the
//! reading of each statement's results, errors mid-pipeline and the Sync points are checked without a server.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::*;
use crate::config::QueryMode;
use crate::proto::scripted::{
    Column, command_complete, data_row, message, ready, ready_in, row_description,
};
use crate::{Config, ErrorKind, Transport};

/// What the client did on the scripted transport, in order.
#[derive(Debug, Clone, PartialEq)]
enum Io {
    /// The bytes of one write.
    Write(Vec<u8>),
    /// A read that returned this many bytes.
    Read(usize),
}

/// Plays one turn of backend bytes per write of the client, like a server answering each request it
/// gets, and logs the writes and reads. Out of turns, it reports the end of the stream, so a client waiting
/// for more fails instead of hanging. With `latency`, the first read after each write is pending once,
/// like a server that takes its time: a future polled once stops there.
struct Scripted {
    turns: Arc<Mutex<VecDeque<Vec<u8>>>>,
    readable: Vec<u8>,
    log: Arc<Mutex<Vec<Io>>>,
    latency: bool,
    waited: bool,
    /// The most bytes one read returns.
    max_read: usize,
}

impl Transport for Scripted {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.latency && !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = buf.len().min(self.readable.len()).min(self.max_read);
        buf[..n].copy_from_slice(&self.readable[..n]);
        self.readable.drain(..n);
        if n > 0 {
            self.log.lock().unwrap().push(Io::Read(n));
        }
        Poll::Ready(Ok(n))
    }
    fn poll_write(&mut self, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.log.lock().unwrap().push(Io::Write(buf.to_vec()));
        if let Some(turn) = self.turns.lock().unwrap().pop_front() {
            self.readable.extend_from_slice(&turn);
        }
        self.waited = false;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The test's side of a scripted transport: the turns still to play, and the log.
pub(in crate::client) struct Server {
    turns: Arc<Mutex<VecDeque<Vec<u8>>>>,
    log: Arc<Mutex<Vec<Io>>>,
}

impl Server {
    /// Adds the answer to a later write.
    pub(in crate::client) fn then(&self, turn: Vec<u8>) -> &Server {
        self.turns.lock().unwrap().push_back(turn);
        self
    }

    /// Everything logged after the first `from` entries.
    fn log_from(&self, from: usize) -> Vec<Io> {
        self.log.lock().unwrap()[from..].to_vec()
    }

    fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The writes logged after the first `from` entries.
    fn writes_from(&self, from: usize) -> Vec<Vec<u8>> {
        self.log_from(from)
            .into_iter()
            .filter_map(|io| match io {
                Io::Write(bytes) => Some(bytes),
                Io::Read(_) => None,
            })
            .collect()
    }
}

/// A client connected (trust authentication, default config: the statement cache on) to a scripted server.
fn connect(latency: bool) -> (Client, Server) {
    connect_in(latency, QueryMode::Cached)
}

fn connect_in(latency: bool, mode: QueryMode) -> (Client, Server) {
    connect_reading(latency, mode, usize::MAX)
}

/// A client connected to a scripted server whose reads return at most `max_read` bytes each.
pub(in crate::client) fn connect_reading(
    latency: bool,
    mode: QueryMode,
    max_read: usize,
) -> (Client, Server) {
    let server = Server {
        turns: Arc::new(Mutex::new(VecDeque::new())),
        log: Arc::new(Mutex::new(Vec::new())),
    };
    server.then([message(b'R', &0u32.to_be_bytes()), ready()].concat());
    let transport = Scripted {
        turns: server.turns.clone(),
        readable: Vec::new(),
        log: server.log.clone(),
        latency,
        waited: false,
        max_read,
    };
    let mut config = Config::parse("user=u dbname=d sslmode=disable").unwrap();
    config.query_mode(mode);
    let client = block_on(Client::connect_with_transport(Box::new(transport), &config)).unwrap();
    (client, server)
}

/// Polls a future to its end; the scripted transport's waits end at once, so a no-op waker does.
pub(in crate::client) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// The frontend messages in `bytes`: tag and body.
fn frontend(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut messages = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        messages.push((rest[0], &rest[5..1 + len]));
        rest = &rest[1 + len..];
    }
    messages
}

fn tags(bytes: &[u8]) -> Vec<u8> {
    frontend(bytes).into_iter().map(|(tag, _)| tag).collect()
}

/// The statement each Parse, Bind, Describe or Close of a statement in `bytes` names, with its tag.
fn statements(bytes: &[u8]) -> Vec<(u8, String)> {
    let cstrs = |body: &[u8]| -> Vec<String> {
        body.split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    };
    frontend(bytes)
        .into_iter()
        .filter_map(|(tag, body)| match tag {
            b'P' => Some((tag, cstrs(body)[0].clone())),
            b'B' => Some((tag, cstrs(body)[1].clone())),
            b'D' | b'C' if body[0] == b'S' => Some((tag, cstrs(&body[1..])[0].clone())),
            _ => None,
        })
        .collect()
}

/// The SQL text of each Parse in `bytes`.
fn parsed_sql(bytes: &[u8]) -> Vec<String> {
    frontend(bytes)
        .into_iter()
        .filter(|(tag, _)| *tag == b'P')
        .map(|(_, body)| {
            let text = body.split(|b| *b == 0).nth(1).unwrap();
            String::from_utf8_lossy(text).into_owned()
        })
        .collect()
}

/// A RowDescription of one binary int4 column.
fn int4_description() -> Vec<u8> {
    row_description(&[Column::int4("v")])
}

fn int4_row(v: i32) -> Vec<u8> {
    data_row(&[Some(&v.to_be_bytes())])
}

fn error(code: &str) -> Vec<u8> {
    message(
        b'E',
        format!("SERROR\0VERROR\0C{code}\0Mscripted failure\0\0").as_bytes(),
    )
}

/// One int4 row answering one statement of a pipeline (BindComplete, RowDescription, DataRow,
/// CommandComplete).
fn answer(v: i32) -> Vec<u8> {
    [
        message(b'2', b""),
        int4_description(),
        int4_row(v),
        command_complete("SELECT 1"),
    ]
    .concat()
}

/// What [`run`] returns: the pipeline's result, whether the client is closed, the message tags sent.
type Run = (
    Result<Vec<Result<PipelineOutput, Error>>, Error>,
    bool,
    Vec<u8>,
);

/// Runs a pipeline of `SELECT $1::int4` with 1, 2, ... against `script` (the answers after the startup
/// and the one prepare). Returns the result, whether the client is closed, and the tags of the messages
/// the client sent for the pipeline itself.
fn run(mode: PipelineMode, statements: i32, script: &[Vec<u8>]) -> Run {
    let prepare = [
        message(b'1', b""),
        message(
            b't',
            &[&1u16.to_be_bytes()[..], &23u32.to_be_bytes()].concat(),
        ),
        int4_description(),
        ready(),
    ]
    .concat();
    let (mut client, server) = connect(false);
    let start = server.log_len();
    server.then(prepare).then(script.concat());
    let values: Vec<i32> = (1..=statements).collect();
    let mut pipeline = Pipeline::new(mode);
    for v in &values {
        pipeline.push("SELECT $1::int4", &[v]);
    }
    let result = block_on(client.run_pipeline(&pipeline));
    let tags = tags(&server.writes_from(start).concat());
    assert_eq!(&tags[..3], b"PDS", "the prepare");
    (result, client.is_closed(), tags[3..].to_vec())
}

fn value(result: &Result<PipelineOutput, Error>) -> i32 {
    result.as_ref().unwrap().rows()[0].get(0)
}

fn code(result: &Result<PipelineOutput, Error>) -> Option<&str> {
    result.as_ref().err().and_then(Error::code)
}

fn error_saying(code: &str, text: &str) -> Vec<u8> {
    message(
        b'E',
        format!("SERROR\0VERROR\0C{code}\0M{text}\0\0").as_bytes(),
    )
}

/// The answer to one Parse/Describe/Sync of a text without parameters returning one int4 column.
fn described() -> Vec<u8> {
    [
        message(b'1', b""),
        message(b't', &0u16.to_be_bytes()),
        int4_description(),
        ready(),
    ]
    .concat()
}

/// The answer to one request closing `n` statements.
fn closed(n: usize) -> Vec<u8> {
    [vec![message(b'3', b""); n].concat(), ready()].concat()
}

/// The names of the statements the Parse messages in `bytes` create.
fn parsed_names(bytes: &[u8]) -> Vec<String> {
    statements(bytes)
        .into_iter()
        .filter(|(tag, _)| *tag == b'P')
        .map(|(_, name)| name)
        .collect()
}

/// Runs `pipeline`, whose `texts` distinct texts the client prepares in its first round trip; `answer`
/// answers the pipeline itself.
fn run_fresh(
    client: &mut Client,
    server: &Server,
    pipeline: &Pipeline<'_>,
    texts: usize,
    answer: Vec<u8>,
) -> Vec<Result<PipelineOutput, Error>> {
    server.then(vec![described(); texts].concat()).then(answer);
    block_on(client.run_pipeline(pipeline)).unwrap()
}

#[test]
fn missing_texts_are_prepared_in_one_write_before_any_read() {
    const N: i32 = 20;
    let (mut client, server) = connect(true);
    let texts: Vec<String> = (1..=N).map(|k| format!("SELECT {k}::int4")).collect();
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    for text in &texts {
        pipeline.push(text.as_str(), &[]);
    }
    // The first text again: prepared once, bound twice.
    pipeline.push(texts[0].as_str(), &[]);
    let start = server.log_len();
    let answers: Vec<Vec<u8>> = (1..=N).chain([1]).map(answer).collect();
    let results = run_fresh(
        &mut client,
        &server,
        &pipeline,
        texts.len(),
        [answers.concat(), ready()].concat(),
    );
    let values: Vec<i32> = results.iter().map(value).collect();
    assert_eq!(values, (1..=N).chain([1]).collect::<Vec<_>>());

    // Two writes, the first before any read: every preparation, then the pipeline. One round trip each.
    let log = server.log_from(start);
    let writes: Vec<usize> = (0..log.len())
        .filter(|&i| matches!(log[i], Io::Write(_)))
        .collect();
    assert_eq!(writes.len(), 2, "{log:?}");
    assert_eq!(
        writes[0], 0,
        "a read before the preparations went out: {log:?}"
    );
    let writes = server.writes_from(start);
    assert_eq!(tags(&writes[0]), b"PDS".repeat(texts.len()));
    assert_eq!(parsed_sql(&writes[0]), texts);
    let names = parsed_names(&writes[0]);
    let described: Vec<(u8, String)> = statements(&writes[0])
        .into_iter()
        .filter(|(tag, _)| *tag == b'D')
        .collect();
    let expected: Vec<(u8, String)> = names.iter().map(|n| (b'D', n.clone())).collect();
    assert_eq!(described, expected, "each Parse is described by its name");
    let mut distinct = names.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), texts.len());
    assert!(names.iter().all(|n| n.starts_with("wpc")), "{names:?}");

    assert_eq!(
        tags(&writes[1]),
        [b"BDE".repeat(texts.len() + 1), b"S".to_vec()].concat()
    );
    let bound: Vec<String> = statements(&writes[1]).into_iter().map(|(_, n)| n).collect();
    let expected: Vec<String> = names.iter().chain(&names[..1]).cloned().collect();
    assert_eq!(bound, expected);
    assert_eq!(client.cached_statements(), texts.len());
}

#[test]
fn a_text_that_fails_to_prepare_fails_alone() {
    let (mut client, server) = connect(false);
    let mut pipeline = Pipeline::new(PipelineMode::Independent);
    pipeline
        .push("SELECT 1::int4", &[])
        .push("SELEC 2", &[])
        .push("SELECT 3::int4", &[])
        .push("SELEC 2", &[]);
    server
        .then([described(), error("42601"), ready(), described()].concat())
        .then([closed(1), answer(1), ready(), answer(3), ready()].concat());
    let start = server.log_len();
    let results = block_on(client.run_pipeline(&pipeline)).unwrap();
    assert_eq!(value(&results[0]), 1);
    assert_eq!(code(&results[1]), Some("42601"));
    assert_eq!(value(&results[2]), 3);
    assert_eq!(code(&results[3]), Some("42601"));
    let writes = server.writes_from(start);
    assert_eq!(writes.len(), 2);
    assert_eq!(tags(&writes[0]), b"PDSPDSPDS");
    let names = parsed_names(&writes[0]);
    // The name of the text that failed is closed (in case its Parse had gone through) in front of the
    // pipeline, which binds the two others.
    assert_eq!(tags(&writes[1]), b"CSBDESBDES");
    assert_eq!(
        statements(&writes[1]),
        [
            (b'C', names[1].clone()),
            (b'B', names[0].clone()),
            (b'B', names[2].clone())
        ]
    );
    assert_eq!(client.cached_statements(), 2);
    assert!(!client.is_closed());
}

#[test]
fn a_dropped_preparation_caches_nothing_and_closes_its_names() {
    let (mut client, server) = connect(true);
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    pipeline
        .push("SELECT 1::int4", &[])
        .push("SELECT 2::int4", &[]);
    server.then([described(), described()].concat());
    let start = server.log_len();
    {
        let mut future = std::pin::pin!(client.run_pipeline(&pipeline));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(future.as_mut().poll(&mut cx).is_pending());
    }
    let writes = server.writes_from(start);
    assert_eq!(writes.len(), 1, "the preparations went out");
    let mut names = parsed_names(&writes[0]);
    assert_eq!(names.len(), 2);
    assert_eq!(client.cached_statements(), 0);

    // The next call reads the abandoned answers, closes both names, then does its own work.
    server.then([closed(2), message(b'I', b""), ready()].concat());
    let start = server.log_len();
    block_on(client.ping()).unwrap();
    let writes = server.writes_from(start);
    assert_eq!(writes.len(), 1);
    assert_eq!(tags(&writes[0]), b"CCSQ");
    let mut closed: Vec<String> = statements(&writes[0]).into_iter().map(|(_, n)| n).collect();
    closed.sort();
    names.sort();
    assert_eq!(closed, names);
    assert_eq!(client.cached_statements(), 0);
    assert!(!client.is_closed());
}

#[test]
fn unnamed_mode_describes_every_text_in_one_round_trip() {
    let (mut client, server) = connect_in(false, QueryMode::Unnamed);
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    pipeline
        .push("SELECT 1::int4", &[])
        .push("SELECT 2::int4", &[])
        .push("SELECT 1::int4", &[]);
    let start = server.log_len();
    let answers = [answer(1), answer(2), answer(1), ready()].concat();
    let results = run_fresh(&mut client, &server, &pipeline, 2, answers);
    assert_eq!(results.iter().map(value).collect::<Vec<_>>(), [1, 2, 1]);
    let writes = server.writes_from(start);
    assert_eq!(writes.len(), 2);
    assert_eq!(tags(&writes[0]), b"PDSPDS");
    assert_eq!(parsed_names(&writes[0]), ["", ""]);
    // The unnamed statement is parsed again in front of each Bind.
    assert_eq!(tags(&writes[1]), b"PBDEPBDEPBDES");
    assert_eq!(
        parsed_sql(&writes[1]),
        ["SELECT 1::int4", "SELECT 2::int4", "SELECT 1::int4"]
    );
    assert_eq!(client.cached_statements(), 0);
}

/// Caches `texts` (each returning one int4) with a pipeline, and returns their statement names.
fn cache(client: &mut Client, server: &Server, texts: &[&str]) -> Vec<String> {
    let mut pipeline = Pipeline::new(PipelineMode::Independent);
    for text in texts {
        pipeline.push(*text, &[]);
    }
    let start = server.log_len();
    let answers: Vec<u8> = (1..=texts.len())
        .flat_map(|v| [answer(i32::try_from(v).unwrap()), ready()].concat())
        .collect();
    let results = run_fresh(client, server, &pipeline, texts.len(), answers);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    parsed_names(&server.writes_from(start)[0])
}

#[test]
fn statements_gone_after_discard_all_run_again_in_independent_mode() {
    let (mut client, server) = connect(false);
    let old = cache(&mut client, &server, &["SELECT 1::int4"]);
    let mut pipeline = Pipeline::new(PipelineMode::Independent);
    pipeline
        .push("SELECT 1::int4", &[])
        .push("SELECT 1::int4", &[]);
    // DISCARD ALL on the server: both Binds fail, so neither statement ran.
    let gone = error_saying(
        "26000",
        &format!("prepared statement \"{}\" does not exist", old[0]),
    );
    server
        .then([gone.clone(), ready(), gone, ready()].concat())
        .then([closed(1), described()].concat())
        .then([answer(1), ready(), answer(1), ready()].concat());
    let start = server.log_len();
    let results = block_on(client.run_pipeline(&pipeline)).unwrap();
    assert_eq!(results.iter().map(value).collect::<Vec<_>>(), [1, 1]);
    let writes = server.writes_from(start);
    assert_eq!(
        writes.len(),
        3,
        "the pipeline, the new preparation, the rerun"
    );
    assert_eq!(tags(&writes[1]), b"CSPDS");
    let new = parsed_names(&writes[1]);
    assert_ne!(new, old);
    assert_eq!(statements(&writes[1])[0], (b'C', old[0].clone()));
    assert_eq!(tags(&writes[2]), b"BDESBDES");
    assert_eq!(
        statements(&writes[2]),
        [(b'B', new[0].clone()), (b'B', new[0].clone())]
    );
    assert_eq!(client.cached_statements(), 1);
}

#[test]
fn a_stale_plan_reruns_the_whole_atomic_pipeline() {
    let (mut client, server) = connect(false);
    cache(&mut client, &server, &["SELECT 2::int4"]);
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    pipeline
        .push("SELECT 1::int4", &[])
        .push("SELECT 2::int4", &[]);
    let stale = error_saying("0A000", "cached plan must not change result type");
    server
        .then(described())
        // The new text ran; the cached one failed at Bind, which rolled the first back.
        .then([answer(1), stale, ready()].concat())
        .then([closed(1), described()].concat())
        .then([answer(1), answer(2), ready()].concat());
    let start = server.log_len();
    let results = block_on(client.run_pipeline(&pipeline)).unwrap();
    assert_eq!(results.iter().map(value).collect::<Vec<_>>(), [1, 2]);
    let writes = server.writes_from(start);
    assert_eq!(writes.len(), 4, "{writes:?}");
    assert_eq!(tags(&writes[1]), b"BDEBDES");
    assert_eq!(tags(&writes[2]), b"CSPDS");
    assert_eq!(parsed_sql(&writes[2]), ["SELECT 2::int4"]);
    assert_eq!(tags(&writes[3]), b"BDEBDES");
    assert_eq!(client.cached_statements(), 2);
}

#[test]
fn stale_statements_do_not_run_again_where_something_could_run_twice() {
    let stale = || error_saying("0A000", "cached plan must not change result type");
    let completed_as = |v: i32, tag: &str| {
        [
            message(b'2', b""),
            int4_description(),
            int4_row(v),
            command_complete(tag),
        ]
        .concat()
    };
    // Atomic: a COMMIT before the stale statement kept what came before it.
    let (mut client, server) = connect(false);
    cache(&mut client, &server, &["SELECT 1::int4", "SELECT 2::int4"]);
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    pipeline
        .push("SELECT 1::int4", &[])
        .push("SELECT 2::int4", &[]);
    server.then([completed_as(1, "COMMIT"), stale(), ready()].concat());
    let start = server.log_len();
    let results = block_on(client.run_pipeline(&pipeline)).unwrap();
    assert_eq!(code(&results[1]), Some("0A000"));
    assert_eq!(server.writes_from(start).len(), 1);
    // The stale entry is gone: its next use prepares it afresh.
    assert_eq!(client.cached_statements(), 1);

    // Independent: a statement after the stale one ran.
    let (mut client, server) = connect(false);
    cache(&mut client, &server, &["SELECT 1::int4", "SELECT 2::int4"]);
    let mut pipeline = Pipeline::new(PipelineMode::Independent);
    pipeline
        .push("SELECT 1::int4", &[])
        .push("SELECT 2::int4", &[]);
    server.then([stale(), ready(), answer(2), ready()].concat());
    let start = server.log_len();
    let results = block_on(client.run_pipeline(&pipeline)).unwrap();
    assert_eq!(code(&results[0]), Some("0A000"));
    assert_eq!(value(&results[1]), 2);
    assert_eq!(server.writes_from(start).len(), 1);
    assert_eq!(client.cached_statements(), 1);

    // Inside a transaction block, which the failure failed.
    for mode in [PipelineMode::Atomic, PipelineMode::Independent] {
        let (mut client, server) = connect(false);
        cache(&mut client, &server, &["SELECT 1::int4"]);
        let mut pipeline = Pipeline::new(mode);
        pipeline.push("SELECT 1::int4", &[]);
        server.then([stale(), ready_in(b'E')].concat());
        let start = server.log_len();
        let results = block_on(client.run_pipeline(&pipeline)).unwrap();
        assert_eq!(code(&results[0]), Some("0A000"), "{mode:?}");
        assert_eq!(server.writes_from(start).len(), 1, "{mode:?}");
        assert_eq!(client.cached_statements(), 0);
    }
}

#[test]
fn atomic_batch_has_one_sync() {
    let (result, closed, tags) = run(
        PipelineMode::Atomic,
        3,
        &[answer(1), answer(2), answer(3), ready()],
    );
    let results = result.unwrap();
    assert_eq!(results.iter().map(value).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(!closed);
    assert_eq!(tags, b"BDEBDEBDES");
}

#[test]
fn independent_batch_has_a_sync_per_statement() {
    let script = [
        error("22012"),
        ready(),
        answer(2),
        ready(),
        answer(3),
        ready(),
    ];
    let (result, closed, tags) = run(PipelineMode::Independent, 3, &script);
    let results = result.unwrap();
    assert_eq!(
        results[0].as_ref().err().and_then(Error::code),
        Some("22012")
    );
    assert_eq!(value(&results[1]), 2);
    assert_eq!(value(&results[2]), 3);
    assert!(!closed);
    assert_eq!(tags, b"BDESBDESBDES");
}

#[test]
fn atomic_error_skips_the_rest() {
    let (result, closed, _) = run(
        PipelineMode::Atomic,
        3,
        &[answer(1), error("23505"), ready()],
    );
    let results = result.unwrap();
    assert_eq!(value(&results[0]), 1);
    assert_eq!(
        results[1].as_ref().err().and_then(Error::code),
        Some("23505")
    );
    let skipped = results[2].as_ref().unwrap_err();
    assert_eq!(skipped.kind(), ErrorKind::Skipped);
    assert!(
        skipped.to_string().contains("scripted failure"),
        "{skipped}"
    );
    assert!(!closed);
}

#[test]
fn atomic_commit_failure_fails_the_whole_batch() {
    let (result, closed, _) = run(
        PipelineMode::Atomic,
        2,
        &[answer(1), answer(2), error("40001"), ready()],
    );
    let e = result.unwrap_err();
    assert_eq!(e.code(), Some("40001"));
    assert!(e.to_string().contains("implicit commit"), "{e}");
    assert!(!closed);
}

#[test]
fn a_result_for_a_statement_never_sent_breaks_the_connection() {
    // A fourth answer to a batch of three must not be taken as anyone's result.
    let script = [answer(1), answer(2), answer(3), answer(4), ready()];
    let (result, closed, _) = run(PipelineMode::Atomic, 3, &script);
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Protocol);
    assert!(closed);
}

#[test]
fn ready_before_a_statement_finished_breaks_the_connection() {
    // ReadyForQuery where statement 0's CommandComplete belongs: its rows must not run into statement 1.
    let early = [message(b'2', b""), int4_description(), int4_row(1), ready()].concat();
    let script = [early, answer(2), ready()];
    let (result, closed, _) = run(PipelineMode::Independent, 2, &script);
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Protocol);
    assert!(closed);
}

#[test]
fn rows_after_an_atomic_error_break_the_connection() {
    let script = [
        error("22012"),
        int4_row(9),
        command_complete("SELECT 1"),
        ready(),
    ];
    let (result, closed, _) = run(PipelineMode::Atomic, 2, &script);
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Protocol);
    assert!(closed);
}
