//! [`pipeline`]: the response routing of [`Client::run_pipeline`] under arbitrary interleavings.
//!
//! A scripted transport plays a server: one turn of bytes per write of the client (the startup, an earlier
//! query whose caller gave up, the pipeline's prepare, the pipeline, a query after it). The fuzzer picks the
//! pipeline's mode and size, which statements fail, whether the implicit commit fails, how the bytes are
//! cut into reads, where the reads pause, where notices, notifications and parameter changes slip in, after
//! how many polls the earlier caller gives up, and optionally one fault in the pipeline's answer (a message
//! dropped, duplicated, or raw bytes inserted).
//!
//! Without a fault the script is a correct server, so the outcome is known and checked exactly: each
//! statement gets its own value or its own error, skipped statements say so, every notification and notice
//! reaches the client, the query after the pipeline gets its own answer, and the connection stays usable.
//! With a fault, the client must end in an error or a result without panicking or hanging, a broken
//! connection must say so, and the next query must fail on a closed connection.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use super::{Input, message, violated};
use crate::proto::scripted::{
    Column, command_complete, cstr, data_row, row_description, text_columns, text_row,
};
pub(super) use crate::proto::scripted::{parameter_status, ready};
use crate::{
    Client, Config, Error, ErrorKind, Pipeline, PipelineMode, PipelineOutput, SimpleQueryMessage,
    Transport,
};

/// The SQLSTATE of a statement that fails, and of a failed implicit commit.
const STATEMENT_ERROR: &str = "22012";
const COMMIT_ERROR: &str = "40001";
/// Polls of one future before the harness calls it a hang: every poll either reads or fails.
const MAX_POLLS: usize = 100_000;

/// Runs a fuzzer's input: five bytes of scenario (mode and size, failing statements, flags, read size,
/// where the fault goes), two of where asynchronous messages slip in, then the bytes a fault inserts.
pub fn pipeline(data: &[u8]) {
    let mut input = Input(data);
    let shape = input.byte();
    let failing = input.byte();
    let flags = input.byte();
    let read_size = match input.byte() {
        0 => usize::MAX,
        n => usize::from(n),
    };
    let fault_at = usize::from(input.byte());
    let async_mask = input.u16();
    let inserted = input.rest();

    let scenario = Scenario {
        mode: if shape & 1 == 0 {
            PipelineMode::Atomic
        } else {
            PipelineMode::Independent
        },
        statements: 1 + usize::from(shape >> 1) % 6,
        failing,
        commit_fails: flags & 1 != 0,
        abandoned_polls: (flags & 2 != 0).then_some(1 + usize::from((flags >> 2) & 7)),
        pauses: flags & 0x20 != 0,
        fault: match flags >> 6 {
            0 => None,
            1 => Some(Fault::Drop(fault_at)),
            2 => Some(Fault::Duplicate(fault_at)),
            _ => Some(Fault::Insert(fault_at, inserted)),
        },
    };
    let mut script = Script::new(async_mask);
    let turns = scenario.turns(&mut script);
    let transport = Scripted::new(turns, read_size, scenario.pauses);
    scenario.run(transport, &script);
}

#[derive(Debug, Clone, Copy)]
enum Fault<'a> {
    Drop(usize),
    Duplicate(usize),
    Insert(usize, &'a [u8]),
}

struct Scenario<'a> {
    mode: PipelineMode,
    statements: usize,
    /// Bit `i`: statement `i` fails.
    failing: u8,
    commit_fails: bool,
    /// A `SELECT 7` before the pipeline whose future is dropped after this many polls.
    abandoned_polls: Option<usize>,
    pauses: bool,
    fault: Option<Fault<'a>>,
}

/// Builds the server's turns, slipping asynchronous messages in where the mask says.
struct Script {
    async_mask: u16,
    position: usize,
    notifications: usize,
    notices: usize,
}

impl Script {
    fn new(async_mask: u16) -> Script {
        Script {
            async_mask,
            position: 0,
            notifications: 0,
            notices: 0,
        }
    }

    /// Joins `messages` into one turn, with an asynchronous message before those the mask picks.
    fn turn(&mut self, messages: Vec<Vec<u8>>) -> Vec<u8> {
        let mut out = Vec::new();
        for message in messages {
            let slot = self.position % 16;
            self.position += 1;
            if self.async_mask & (1 << slot) != 0 {
                out.extend(match self.position % 3 {
                    0 => {
                        self.notifications += 1;
                        notification(self.position)
                    }
                    1 => {
                        self.notices += 1;
                        notice(self.position)
                    }
                    _ => parameter_status("application_name", &self.position.to_string()),
                });
            }
            out.extend(message);
        }
        out
    }
}

impl Scenario<'_> {
    fn fails(&self, statement: usize) -> bool {
        self.failing & (1 << statement) != 0
    }

    /// The statement an atomic pipeline fails at, if any.
    fn first_failure(&self) -> Option<usize> {
        (0..self.statements).find(|&i| self.fails(i))
    }

    fn turns(&self, script: &mut Script) -> Vec<Vec<u8>> {
        let mut turns = vec![
            [
                message(b'R', &0u32.to_be_bytes()),
                parameter_status("standard_conforming_strings", "on"),
                message(b'K', &[0, 0, 0x10, 0x92, 0, 0, 0x5e, 0xed]),
                ready(),
            ]
            .concat(),
        ];
        if self.abandoned_polls.is_some() {
            turns.push(script.turn(simple_answer("7")));
        }
        turns.push(script.turn(vec![
            message(b'1', b""),
            message(
                b't',
                &[&1u16.to_be_bytes()[..], &23u32.to_be_bytes()].concat(),
            ),
            row_description(&[Column::int4("v")]),
            ready(),
        ]));
        let mut answer = Vec::new();
        let atomic = self.mode == PipelineMode::Atomic;
        for i in 0..self.statements {
            if self.fails(i) {
                answer.push(error(STATEMENT_ERROR));
                if atomic {
                    break;
                }
            } else {
                answer.extend(statement_answer(i32::try_from(i + 1).unwrap_or(0)));
            }
            if !atomic {
                answer.push(ready());
            }
        }
        if atomic {
            if self.commit_fails && self.first_failure().is_none() {
                answer.push(error(COMMIT_ERROR));
            }
            answer.push(ready());
        }
        if let Some(fault) = self.fault {
            let at = |k: usize| k % (answer.len() + 1);
            match fault {
                Fault::Drop(k) => {
                    let k = at(k).min(answer.len() - 1);
                    answer.remove(k);
                }
                Fault::Duplicate(k) => {
                    let k = at(k).min(answer.len() - 1);
                    answer.insert(k, answer[k].clone());
                }
                Fault::Insert(k, bytes) => answer.insert(at(k), bytes.to_vec()),
            }
        }
        turns.push(script.turn(answer));
        turns.push(script.turn(simple_answer("99")));
        turns
    }

    fn run(&self, transport: Scripted, script: &Script) {
        let config = Config::parse("user=fuzz dbname=fuzz sslmode=disable")
            .unwrap_or_else(|e| violated(format_args!("the harness config: {e}")));
        let mut client =
            match block_on(Client::connect_with_transport(Box::new(transport), &config)) {
                Ok(client) => client,
                Err(e) => violated(format_args!("the scripted startup failed: {e}")),
            };
        if let Some(polls) = self.abandoned_polls {
            self.abandon_query(&mut client, polls);
        }
        let values: Vec<i32> = (1..=i32::try_from(self.statements).unwrap_or(1)).collect();
        let mut pipeline = Pipeline::new(self.mode);
        for v in &values {
            pipeline.push("SELECT $1::int4", &[v]);
        }
        let result = block_on(client.run_pipeline(&pipeline));
        if let Ok(results) = &result
            && results.len() != self.statements
        {
            violated(format_args!(
                "{} results for {} statements",
                results.len(),
                self.statements
            ));
        }
        if let Err(e) = &result
            && e.is_connection_broken()
            && !client.is_closed()
        {
            violated(format_args!(
                "the pipeline failed with \"{e}\" but the client is not closed"
            ));
        }
        let after = block_on(client.simple_query("SELECT 99"));
        if self.fault.is_some() {
            if client.is_closed() && after.is_ok() {
                violated(format_args!("a closed client answered a query"));
            }
            return;
        }
        self.check(result, after, &mut client, script);
    }

    /// Starts `SELECT 7` and drops its future after `polls` polls; if it finished first, it must have its
    /// own answer.
    fn abandon_query(&self, client: &mut Client, polls: usize) {
        let mut future = pin!(client.simple_query("SELECT 7"));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..polls {
            if let Poll::Ready(result) = future.as_mut().poll(&mut cx) {
                if self.fault.is_none() {
                    expect_single_value(&result, "7", "the query before the pipeline");
                }
                return;
            }
        }
    }

    /// The outcome of a correct server is known exactly.
    fn check(
        &self,
        result: Result<Vec<Result<PipelineOutput, Error>>, Error>,
        after: Result<Vec<SimpleQueryMessage>, Error>,
        client: &mut Client,
        script: &Script,
    ) {
        let atomic = self.mode == PipelineMode::Atomic;
        match (atomic, self.first_failure(), result) {
            (true, None, Err(e)) if self.commit_fails => {
                if e.code() != Some(COMMIT_ERROR) {
                    violated(format_args!("a failed commit reported as {e}"));
                }
            }
            (_, _, Err(e)) => violated(format_args!("the pipeline failed: {e}")),
            (_, failure, Ok(results)) => {
                if atomic && self.commit_fails && failure.is_none() {
                    violated(format_args!("a failed commit was not reported"));
                }
                for (i, result) in results.iter().enumerate() {
                    let expected = match failure {
                        Some(f) if atomic && i > f => Expected::Skipped,
                        _ if self.fails(i) => Expected::Failed,
                        _ => Expected::Value(i32::try_from(i + 1).unwrap_or(0)),
                    };
                    check_statement(i, result, expected);
                }
            }
        }
        expect_single_value(&after, "99", "the query after the pipeline");
        if client.is_closed() {
            violated(format_args!(
                "the connection closed although the server was correct"
            ));
        }
        let notifications = client.take_notifications().len();
        let notices = client.take_notices().len();
        if (notifications, notices) != (script.notifications, script.notices) {
            violated(format_args!(
                "{notifications} notifications and {notices} notices reached the client, of {} and {} sent",
                script.notifications, script.notices
            ));
        }
    }
}

enum Expected {
    Value(i32),
    Failed,
    Skipped,
}

fn check_statement(i: usize, result: &Result<PipelineOutput, Error>, expected: Expected) {
    match (expected, result) {
        (Expected::Value(v), Ok(output)) => {
            let got: Vec<Option<i32>> = output
                .rows()
                .iter()
                .map(|row| row.try_get(0).ok())
                .collect();
            if got != [Some(v)] || output.rows_affected() != 1 {
                violated(format_args!(
                    "statement {i} returned {got:?} ({} affected) instead of [{v}]",
                    output.rows_affected()
                ));
            }
        }
        (Expected::Failed, Err(e)) if e.code() == Some(STATEMENT_ERROR) => {}
        (Expected::Skipped, Err(e)) if e.kind() == ErrorKind::Skipped => {}
        (Expected::Value(v), Err(e)) => {
            violated(format_args!("statement {i} failed with {e} instead of {v}"))
        }
        (_, result) => violated(format_args!("statement {i} got {result:?}")),
    }
}

fn expect_single_value(result: &Result<Vec<SimpleQueryMessage>, Error>, value: &str, what: &str) {
    let values: Vec<Option<String>> = match result {
        Ok(messages) => messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
                _ => None,
            })
            .collect(),
        Err(e) => violated(format_args!("{what} failed: {e}")),
    };
    if values != [Some(value.to_string())] {
        violated(format_args!(
            "{what} returned {values:?} instead of {value}"
        ));
    }
}

/// Plays one turn of the script per write, in reads of at most `read_size` bytes, pausing before every
/// other read if `pauses`; out of bytes, it reports the end of the stream.
pub(super) struct Scripted {
    turns: VecDeque<Vec<u8>>,
    readable: VecDeque<u8>,
    read_size: usize,
    pauses: bool,
    paused: bool,
}

impl Scripted {
    pub(super) fn new(turns: Vec<Vec<u8>>, read_size: usize, pauses: bool) -> Scripted {
        Scripted {
            turns: turns.into(),
            readable: VecDeque::new(),
            read_size,
            pauses,
            paused: false,
        }
    }
}

impl Transport for Scripted {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.pauses && !self.paused {
            self.paused = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.paused = false;
        let n = buf.len().min(self.read_size).min(self.readable.len());
        for (slot, byte) in buf.iter_mut().zip(self.readable.drain(..n)) {
            *slot = byte;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write(&mut self, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(turn) = self.turns.pop_front() {
            self.readable.extend(turn);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn notification(n: usize) -> Vec<u8> {
    let mut body = 4242i32.to_be_bytes().to_vec();
    body.extend(cstr("fuzz_channel"));
    body.extend(cstr(&format!("payload {n}")));
    message(b'A', &body)
}

fn notice(n: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "NOTICE"),
        (b'V', "NOTICE"),
        (b'C', "00000"),
        (b'M', &format!("notice {n}")),
    ] {
        body.push(field);
        body.extend(cstr(value));
    }
    body.push(0);
    message(b'N', &body)
}

fn error(code: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', code),
        (b'M', "scripted failure"),
    ] {
        body.push(field);
        body.extend(cstr(value));
    }
    body.push(0);
    message(b'E', &body)
}

/// One statement's answer: BindComplete, RowDescription, a DataRow holding `v`, CommandComplete.
fn statement_answer(v: i32) -> Vec<Vec<u8>> {
    vec![
        message(b'2', b""),
        row_description(&[Column::int4("v")]),
        data_row(&[Some(&v.to_be_bytes())]),
        command_complete("SELECT 1"),
    ]
}

/// The answer to a simple query returning one text value.
fn simple_answer(value: &str) -> Vec<Vec<u8>> {
    vec![
        text_columns(&["v"]),
        text_row(&[value]),
        command_complete("SELECT 1"),
        ready(),
    ]
}

/// Polls `future` to its end; [`MAX_POLLS`] polls without an end is a hang.
fn block_on<F: Future>(future: F) -> F::Output {
    super::block_on(future, MAX_POLLS)
}
