//! Tests of the real [`Client`] sharing one connection among futures, over a scripted transport, each future
//! polled only when woken: every future gets its own answers, and no wakeup is lost when a driver goes away.
//! The routing model they complement is `conn/slots_tests.rs`, whose message builders they use.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::conn::slots::tests::WakeCount;
use crate::proto::scripted::{self, command_complete, message, text_columns, text_row};
use crate::{Client, Config, SimpleQueryMessage, Transport};

/// The server's end of a scripted connection: the test hands it bytes, and it wakes whoever waits to read.
#[derive(Default)]
pub(super) struct Pipe {
    readable: VecDeque<u8>,
    reader: Option<Waker>,
}

pub(super) struct PipeTransport(Arc<Mutex<Pipe>>);

impl Transport for PipeTransport {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut pipe = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if pipe.readable.is_empty() {
            pipe.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(pipe.readable.len());
        for (slot, byte) in buf.iter_mut().zip(pipe.readable.drain(..n)) {
            *slot = byte;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write(&mut self, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The server sends `bytes`: the transport wakes the reader (the client's io waker, so its driver).
pub(super) fn server_sends(pipe: &Mutex<Pipe>, bytes: &[u8]) {
    let reader = {
        let mut pipe = pipe.lock().unwrap_or_else(PoisonError::into_inner);
        pipe.readable.extend(bytes);
        pipe.reader.take()
    };
    if let Some(reader) = reader {
        reader.wake();
    }
}

/// A client over a pipe, past a trust startup.
pub(super) fn piped_client() -> (Client, Arc<Mutex<Pipe>>) {
    let pipe = Arc::new(Mutex::new(Pipe::default()));
    server_sends(
        &pipe,
        &[message(b'R', &0u32.to_be_bytes()), scripted::ready()].concat(),
    );
    let config = Config::parse("user=model dbname=model sslmode=disable").expect("a valid config");
    let connect = Client::connect_with_transport(Box::new(PipeTransport(pipe.clone())), &config);
    let client = ready(connect, Waker::noop()).expect("the scripted startup");
    (client, pipe)
}

/// Polls `future` with `waker` until it is ready; it must not wait for the server.
fn ready<F: Future>(future: F, waker: &Waker) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(waker);
    for _ in 0..1000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("a future that needs nothing from the server stays pending");
}

/// The answer to a simple query of one row holding `value`.
pub(super) fn simple_answer(value: &str) -> Vec<u8> {
    [
        text_columns(&["v"]),
        text_row(&[value]),
        command_complete("SELECT 1"),
        scripted::ready(),
    ]
    .concat()
}

/// What the tasks of a test received, by task name.
type Received = Rc<RefCell<BTreeMap<&'static str, Vec<String>>>>;

/// A future in a task of its own, polled as an executor polls it: once at first, then only after a wake.
struct Task<'a> {
    name: &'static str,
    future: Pin<Box<dyn Future<Output = ()> + 'a>>,
    wakes: Arc<WakeCount>,
    /// The wakes counted before its last poll.
    polled_at: Option<usize>,
    done: bool,
}

impl<'a> Task<'a> {
    fn new(name: &'static str, future: impl Future<Output = ()> + 'a) -> Task<'a> {
        Task {
            name,
            future: Box::pin(future),
            wakes: Arc::new(WakeCount::default()),
            polled_at: None,
            done: false,
        }
    }

    /// `simple_query(sql)`, its row values (or its error) recorded under `name`.
    fn query(
        client: &'a Client,
        received: &Received,
        name: &'static str,
        sql: &'a str,
    ) -> Task<'a> {
        let received = received.clone();
        Task::new(name, async move {
            let values = match client.simple_query(sql).await {
                Ok(messages) => messages
                    .iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                        _ => None,
                    })
                    .collect(),
                Err(e) => vec![format!("error: {e}")],
            };
            received.borrow_mut().insert(name, values);
        })
    }

    /// `simple_query_stream(sql)`, of which up to `messages` messages are read (all, to its end, for
    /// `usize::MAX`); then the stream is kept and never polled again, as a caller keeps a stream it is done
    /// with, or stops reading one for a while.
    fn kept_stream(
        client: &'a Client,
        received: &Received,
        name: &'static str,
        sql: &'a str,
        messages: usize,
    ) -> Task<'a> {
        let received = received.clone();
        Task::new(name, async move {
            let mut stream = client.simple_query_stream(sql).await.expect("queued");
            let mut values = Vec::new();
            for _ in 0..messages {
                match stream.next().await.expect("the stream's answer") {
                    Some(SimpleQueryMessage::Row(row)) => {
                        values.extend(row.get(0).map(str::to_string))
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            received.borrow_mut().insert(name, values);
            std::future::pending::<()>().await;
            drop(stream);
        })
    }

    fn woken(&self) -> bool {
        !self.done && self.polled_at.is_none_or(|seen| self.wakes.get() > seen)
    }

    fn poll(&mut self) {
        self.polled_at = Some(self.wakes.get());
        let waker = Waker::from(self.wakes.clone());
        self.done = self
            .future
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
    }
}

/// Polls the tasks that were woken, oldest first, until none is.
fn run(tasks: &mut [&mut Task<'_>]) {
    for _ in 0..10_000 {
        let Some(task) = tasks.iter_mut().find(|task| task.woken()) else {
            return;
        };
        task.poll();
    }
    panic!("tasks keep waking each other");
}

/// Every task that is not done waits for a wake that will not come.
fn stuck(tasks: &[&mut Task<'_>]) -> Vec<&'static str> {
    tasks
        .iter()
        .filter(|task| !task.done)
        .map(|task| task.name)
        .collect()
}

#[test]
fn futures_sharing_a_client_each_get_their_own_answer() {
    // Every order of first polls, the answers at once or one at a time, on an executor that polls a future
    // only when woken: each future finishes, with its own value.
    for order in [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ] {
        for one_at_a_time in [false, true] {
            let (client, pipe) = piped_client();
            let received = Received::default();
            let mut a = Task::query(&client, &received, "a", "SELECT 1");
            let mut b = Task::query(&client, &received, "b", "SELECT 2");
            let mut c = Task::query(&client, &received, "c", "SELECT 3");
            let mut tasks = [&mut a, &mut b, &mut c];
            for i in order {
                tasks[i].poll();
            }
            // Requests go out in the order their futures were first polled, and the server answers in that order.
            let answers = order.map(|i| simple_answer(&(i + 1).to_string()));
            if one_at_a_time {
                for answer in answers {
                    server_sends(&pipe, &answer);
                    run(&mut tasks);
                }
            } else {
                server_sends(&pipe, &answers.concat());
                run(&mut tasks);
            }
            assert_eq!(
                stuck(&tasks),
                Vec::<&str>::new(),
                "lost wakeup (first polls {order:?})"
            );
            let received = received.borrow();
            for (name, value) in [("a", "1"), ("b", "2"), ("c", "3")] {
                assert_eq!(received[name], [value], "{name} (first polls {order:?})");
            }
        }
    }
}

/// Four futures wait; two are dropped (the driver, a successor woken to take over before it polled, or any
/// other: every ordered pair); the server answers all four. Those left must be woken and finish.
#[test]
fn futures_dropped_while_others_wait_pass_the_socket_on() {
    let names = ["a", "b", "c", "d"];
    for first in 0..4 {
        for second in (0..4).filter(|&i| i != first) {
            let (client, pipe) = piped_client();
            let received = Received::default();
            let mut tasks: Vec<Option<Task<'_>>> = names
                .iter()
                .zip(["SELECT 1", "SELECT 2", "SELECT 3", "SELECT 4"])
                .map(|(&name, sql)| Some(Task::query(&client, &received, name, sql)))
                .collect();
            for task in tasks.iter_mut().flatten() {
                task.poll();
            }
            tasks[first] = None;
            tasks[second] = None;
            server_sends(&pipe, &["1", "2", "3", "4"].map(simple_answer).concat());
            let mut left: Vec<&mut Task<'_>> = tasks.iter_mut().flatten().collect();
            run(&mut left);
            assert_eq!(
                stuck(&left),
                Vec::<&str>::new(),
                "lost wakeup after dropping {} then {}",
                names[first],
                names[second]
            );
        }
    }
}

/// A stream kept (not dropped, never polled again) after its first message or at its end, while a request
/// queued after it waits. The stream's future drove the socket up to there: it must hand the socket on, so
/// the other future is woken, reads the rest of the stream's answer into its slot, and gets its own.
///
/// `step_back` once called `wake_successor` while the stream's own slot still held the waker it registered
/// before it read: the oldest such slot was its own, so it woke itself, and `b` was never woken. A future that
/// steps back no longer waits, so its waker is cleared first.
#[test]
fn a_stream_kept_after_its_end_passes_the_socket_on() {
    for (messages, expected) in [(1, vec![]), (usize::MAX, vec!["1".to_string()])] {
        let (client, pipe) = piped_client();
        let received = Received::default();
        let mut a = Task::kept_stream(&client, &received, "a", "SELECT 1", messages);
        let mut b = Task::query(&client, &received, "b", "SELECT 2");
        a.poll();
        b.poll();
        let mut tasks = [&mut a, &mut b];
        // The stream's answer comes in two reads, so whoever drove the first, the stream drives the second.
        let answer = simple_answer("1");
        let description = text_columns(&["v"]).len();
        server_sends(&pipe, &answer[..description]);
        run(&mut tasks);
        server_sends(&pipe, &answer[description..]);
        run(&mut tasks);
        server_sends(&pipe, &simple_answer("2"));
        run(&mut tasks);
        assert_eq!(received.borrow().get("a"), Some(&expected));
        assert_eq!(
            stuck(&tasks),
            ["a"],
            "lost wakeup: b waits for an answer that arrived (the stream read {messages} messages)"
        );
        assert_eq!(received.borrow()["b"], ["2"]);
    }
}
