//! `examples/http-service` built for wasm32-wasip2 and served by the real `wasmtime serve`, asked over plain
//! HTTP/1.1 (written by hand on a `TcpStream`) and checked against what PostgreSQL holds.
//!
//! - [`rest_api_answers_from_postgresql`]: the API and its statuses with a fresh instance per request (the
//!   default), configured through `PG*` variables; the connections go away with their instances; 503 once
//!   the server stops.
//! - [`reused_instance_keeps_its_connection`]: with `--max-instance-reuse-count`, one connection serves many
//!   requests; a GET on a connection the server killed is retried, a POST is not.
//! - [`unreachable_database_answers_503`]: a closed port gives 503 and a bad `DATABASE_URL` 500, without the
//!   password in any body.
//!
//! Every `wasmtime serve` is killed when its [`Serve`] is dropped, panics included.

// Everything here drives wasmtime and PostgreSQL from the host.
#![cfg(not(target_os = "wasi"))]

mod support;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Cluster, Role, WasmBuild};

/// How long `wasmtime serve` may take to compile the component and start listening.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline for one HTTP exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to notice that a connection went away.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Tries at a free port for `wasmtime serve` before giving up.
const START_ATTEMPTS: u32 = 5;
/// What the component logs once per new connection.
const CONNECTED: &str = "connected to PostgreSQL";

/// The component's answers to the API's failures, word for word.
const UNAVAILABLE: &str = "the database is unavailable; try again later";

#[test]
fn rest_api_answers_from_postgresql() {
    let mut cluster = Cluster::start();
    let password = Cluster::password(Role::Scram).expect("the SCRAM role has a password");
    let port = cluster.port.to_string();
    let app = "http-service-test";
    let serve = Serve::start(
        &[
            ("PGHOST", cluster.host.as_str()),
            ("PGPORT", &port),
            ("PGUSER", Cluster::user(Role::Scram)),
            ("PGPASSWORD", password),
            ("PGDATABASE", "postgres"),
            ("PGAPPNAME", app),
        ],
        &[],
    );
    let mut answers = Vec::new();

    // Four first requests at once, each in its own instance, race to create the table.
    let first: Vec<Answer> = thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| serve.get("/items")))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a request thread panicked"))
            .collect()
    });
    for answer in first {
        let answer = answer.expect_status(200, "GET /items on an empty table");
        assert_eq!(answer.json(), json!([]), "{answer}");
        answers.push(answer);
    }

    let apple = serve
        .post_json("/items", r#"{"name": "apple"}"#)
        .expect_status(201, "POST apple");
    let apple_id = apple.json()["id"].as_i64().expect("a numeric id");
    assert_eq!(apple.json(), json!({"id": apple_id, "name": "apple"}));
    assert_eq!(
        apple.header("location"),
        Some(format!("/items/{apple_id}").as_str())
    );
    let banana = serve
        .post_json("/items", r#"{"name": "banana split \u00e9"}"#)
        .expect_status(201, "POST banana");
    let banana_id = banana.json()["id"].as_i64().expect("a numeric id");
    assert!(banana_id > apple_id, "ids grow: {apple} then {banana}");

    let list = serve.get("/items").expect_status(200, "GET /items");
    assert_eq!(list.header("content-type"), Some("application/json"));
    assert_eq!(
        list.json(),
        json!([
            {"id": apple_id, "name": "apple"},
            {"id": banana_id, "name": "banana split é"},
        ])
    );
    let one = serve
        .get(&format!("/items/{banana_id}"))
        .expect_status(200, "GET one item");
    assert_eq!(
        one.json(),
        json!({"id": banana_id, "name": "banana split é"})
    );
    let missing = serve
        .get("/items/987654321")
        .expect_status(404, "GET a missing id");
    assert_eq!(missing.json(), json!({"error": "item not found"}));
    answers.extend([apple, banana, list, one, missing]);
    // Requests so far that reached the database, each on its own instance and so its own connection.
    let database_requests = answers.len();

    // Refused before the database is asked.
    for (body, content_type) in [
        ("not json", Some("application/json")),
        ("[1, 2]", Some("application/json")),
        (r#"{"nom": "x"}"#, Some("application/json")),
        (r#"{"name": 5}"#, Some("application/json")),
        (r#"{"name": "  "}"#, Some("application/json")),
        (r#"{"name": "x", "extra": 1}"#, Some("application/json")),
        (r#"{"name": "nul \u0000 inside"}"#, None),
    ] {
        let answer = serve
            .request("POST", "/items", content_type, body.as_bytes())
            .expect_status(400, &format!("POST {body}"));
        assert!(answer.json()["error"].is_string(), "{answer}");
        answers.push(answer);
    }
    let long_name = format!(r#"{{"name": "{}"}}"#, "n".repeat(1001));
    answers.push(
        serve
            .post_json("/items", &long_name)
            .expect_status(400, "a 1001-character name"),
    );
    let text = serve.request("POST", "/items", Some("text/plain"), b"apple");
    answers.push(text.expect_status(415, "POST text/plain"));
    let huge = format!(r#"{{"name": "{}"}}"#, "h".repeat(100 * 1024));
    answers.push(
        serve
            .post_json("/items", &huge)
            .expect_status(413, "a 100 KiB body"),
    );
    answers.push(
        serve
            .get("/items/abc")
            .expect_status(400, "a non-numeric id"),
    );
    answers.push(serve.get("/items/0").expect_status(400, "id 0"));
    answers.push(serve.get("/items/-1").expect_status(400, "a negative id"));
    answers.push(serve.get("/nothing").expect_status(404, "an unknown path"));
    answers.push(
        serve
            .get("/items/1/more")
            .expect_status(404, "a path below an item"),
    );
    let delete = serve.request("DELETE", "/items", None, b"");
    assert_eq!(delete.header("allow"), Some("GET, POST"), "{delete}");
    answers.push(delete.expect_status(405, "DELETE /items"));
    let put = serve.request("PUT", &format!("/items/{apple_id}"), None, b"{}");
    assert_eq!(put.header("allow"), Some("GET"), "{put}");
    answers.push(put.expect_status(405, "PUT an item"));

    // What PostgreSQL holds is what the API said.
    let stored = psql(&cluster, "SELECT id || ':' || name FROM items ORDER BY id");
    assert_eq!(
        stored,
        format!("{apple_id}:apple\n{banana_id}:banana split é\n")
    );

    // One instance per request: one connection per request that needed the database, each gone with its
    // instance.
    let log = serve.settled_log();
    assert_eq!(
        log.matches(CONNECTED).count(),
        database_requests,
        "one connection per database request expected; log:\n{log}"
    );
    assert_eq!(
        instances(&log).len(),
        serve.requests(),
        "one instance per request expected; log:\n{log}"
    );
    wait_for_sessions(&cluster, app, 0);

    cluster.stop();
    for answer in [
        serve.get("/items"),
        serve.get(&format!("/items/{apple_id}")),
        serve.post_json("/items", r#"{"name": "cherry"}"#),
    ] {
        let answer = answer.expect_status(503, "a request with the server stopped");
        assert_eq!(answer.json(), json!({"error": UNAVAILABLE}));
        answers.push(answer);
    }
    for answer in &answers {
        assert!(
            !answer.raw.contains(password),
            "the password leaked: {answer}"
        );
    }
    let log = serve.settled_log();
    assert!(
        !log.contains(password),
        "the password reached the log:\n{log}"
    );
}

#[test]
fn reused_instance_keeps_its_connection() {
    let cluster = Cluster::start();
    let app = "http-service-reuse";
    let url = format!("{}?application_name={app}", cluster.url(Role::Md5));
    let serve = Serve::start(
        &[("DATABASE_URL", &url)],
        &[
            "--max-instance-reuse-count",
            "1000",
            "--idle-instance-timeout",
            "300s",
        ],
    );

    let created = serve
        .post_json("/items", r#"{"name": "kept"}"#)
        .expect_status(201, "POST");
    let id = created.json()["id"].as_i64().expect("a numeric id");
    for _ in 0..3 {
        serve.get("/items").expect_status(200, "GET /items");
        serve
            .get(&format!("/items/{id}"))
            .expect_status(200, "GET one item");
    }
    // wasmtime hands a request to an idle instance if it has one, else it starts another: one that is still
    // finishing its last request after the answer went out is not idle yet. So there may be more than one
    // instance, but fewer than requests, and each connected once.
    let log = serve.settled_log();
    let instances = instances(&log);
    assert!(
        instances.len() < 7,
        "seven requests in a row should reuse an instance; log:\n{log}"
    );
    assert_eq!(
        log.matches(CONNECTED).count(),
        instances.len(),
        "each instance should connect once; log:\n{log}"
    );
    wait_for_sessions(&cluster, app, instances.len());

    // The server ends the kept connections between requests: a GET notices and retries on a new one.
    terminate_sessions(&cluster, app);
    let list = serve
        .get("/items")
        .expect_status(200, "GET /items after the connection was killed");
    assert_eq!(list.json(), json!([{"id": id, "name": "kept"}]));
    let log = serve.settled_log();
    assert_eq!(
        log.matches("retrying on a new one").count(),
        1,
        "log:\n{log}"
    );

    // A POST is not retried: it answers 503, and the next request on that instance connects again.
    terminate_sessions(&cluster, app);
    let refused = serve
        .post_json("/items", r#"{"name": "lost"}"#)
        .expect_status(503, "POST on a killed connection");
    assert_eq!(refused.json(), json!({"error": UNAVAILABLE}));
    // (Retried on a new connection, it would have succeeded with 201.) The GET after it finds either that
    // instance's slot empty or another instance's killed connection; both end well.
    serve.get("/items").expect_status(200, "GET after the 503");
    assert_eq!(
        psql(&cluster, "SELECT name FROM items ORDER BY id"),
        "kept\n"
    );
}

#[test]
fn unreachable_database_answers_503() {
    let password = "Hunter2-very-secret";
    let closed = support::free_port();
    let url = format!("postgresql://someone:{password}@127.0.0.1:{closed}/postgres");
    let serve = Serve::start(&[("DATABASE_URL", &url)], &[]);
    let mut answers = Vec::new();
    for answer in [
        serve.get("/items"),
        serve.get("/items/1"),
        serve.post_json("/items", r#"{"name": "apple"}"#),
    ] {
        let answer = answer.expect_status(503, "a request with nobody on the port");
        assert_eq!(answer.json(), json!({"error": UNAVAILABLE}));
        answers.push(answer);
    }
    // Routing and validation do not need the database.
    answers.push(serve.get("/nothing").expect_status(404, "an unknown path"));
    answers.push(
        serve
            .request("DELETE", "/items", None, b"")
            .expect_status(405, "DELETE /items"),
    );
    answers.push(
        serve
            .post_json("/items", "{")
            .expect_status(400, "a broken body"),
    );

    // A DATABASE_URL that cannot be parsed is the service's own fault: 500.
    let broken_url = format!("postgresql://someone:{password}@127.0.0.1:notaport/postgres");
    let misconfigured = Serve::start(&[("DATABASE_URL", &broken_url)], &[]);
    let answer = misconfigured
        .get("/items")
        .expect_status(500, "a request with a bad DATABASE_URL");
    assert_eq!(answer.json(), json!({"error": "internal error"}));
    answers.push(answer);

    for answer in &answers {
        for secret in [password, &closed.to_string(), "127.0.0.1", "someone"] {
            assert!(!answer.body.contains(secret), "{secret:?} leaked: {answer}");
        }
    }
    for log in [serve.settled_log(), misconfigured.settled_log()] {
        assert!(
            !log.contains(password),
            "the password reached the log:\n{log}"
        );
    }
}

/// A running `wasmtime serve` of the component; killed on drop.
struct Serve {
    child: Child,
    addr: SocketAddr,
    /// Everything wasmtime and the component wrote to stdout and stderr so far.
    output: Arc<Mutex<Vec<u8>>>,
    /// Requests sent so far; the component logs one line for each.
    requests: AtomicUsize,
}

impl Serve {
    /// Builds the component (once per test process) and serves it on a free loopback port with `--env K=V`
    /// for each of `env`, plus `args`; returns once the port accepts connections. Panics with wasmtime's
    /// output if it does not start.
    fn start(env: &[(&str, &str)], args: &[&str]) -> Serve {
        let wasm = support::build_wasm(WasmBuild::Example("http-service"));
        for attempt in 1..=START_ATTEMPTS {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, support::free_port()));
            let mut cmd = Command::new(wasmtime_path());
            cmd.args(["serve", "-S", "cli", "-S", "inherit-network", "--addr"])
                .arg(addr.to_string());
            for (key, value) in env {
                cmd.arg("--env").arg(format!("{key}={value}"));
            }
            cmd.args(args)
                .arg(&wasm)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
            let output = Arc::new(Mutex::new(Vec::new()));
            capture(child.stdout.take(), &output);
            capture(child.stderr.take(), &output);
            let mut serve = Serve {
                child,
                addr,
                output,
                requests: AtomicUsize::new(0),
            };
            match serve.wait_until_listening() {
                Ok(()) => return serve,
                // Someone took the port between free_port and wasmtime's bind.
                Err(status) if attempt < START_ATTEMPTS && serve.log().contains("in use") => {
                    eprintln!("[http_service] {addr} was taken ({status}); retrying");
                }
                Err(status) => panic!(
                    "wasmtime serve did not start on {addr} ({status}):\n{}",
                    serve.log()
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Waits until the port accepts connections; `Err` with a description if wasmtime exits or takes too
    /// long.
    fn wait_until_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("cannot wait for wasmtime: {e}"))
            {
                // Let the capture threads take in the last words.
                thread::sleep(Duration::from_millis(200));
                return Err(format!("exited with {status}"));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not listening after {START_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The output so far.
    fn log(&self) -> String {
        let output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&output).into_owned()
    }

    /// The output once it has one request line per request sent (or after [`SETTLE_TIMEOUT`]): the guest's
    /// stderr reaches wasmtime's after the answer has gone out.
    fn settled_log(&self) -> String {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let log = self.log();
            if request_lines(&log).count() >= self.requests() || Instant::now() >= deadline {
                return log;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn get(&self, path: &str) -> Answer {
        self.request("GET", path, None, b"")
    }

    fn post_json(&self, path: &str, body: &str) -> Answer {
        self.request("POST", path, Some("application/json"), body.as_bytes())
    }

    /// One HTTP/1.1 exchange on a new connection (`Connection: close`, so the answer ends at EOF).
    fn request(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Answer {
        let what = format!("{method} {path}");
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut stream = TcpStream::connect_timeout(&self.addr, REQUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("{what}: cannot connect to {}: {e}", self.addr));
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
            .unwrap_or_else(|e| panic!("{what}: cannot set timeouts: {e}"));
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(content_type) = content_type {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: cannot send the request head: {e}"));
        // A server that answers before reading the whole body (413) may close on the rest: its answer is
        // what counts.
        if let Err(e) = stream.write_all(body) {
            eprintln!("[http_service] {what}: the body was not sent in full: {e}");
        }
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A reset after the answer arrived (the unread part of a refused body) ends it too.
                Err(e) if e.kind() == ErrorKind::ConnectionReset && !raw.is_empty() => break,
                Err(e) => panic!(
                    "{what}: reading the answer failed after {} bytes: {e}\nwasmtime log:\n{}",
                    raw.len(),
                    self.log()
                ),
            }
        }
        Answer::parse(&what, raw)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // It may have exited already; either way it must not outlive the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "[http_service] wasmtime serve on {} logged:\n{}",
                self.addr,
                self.log()
            );
        }
    }
}

/// Copies a pipe into `output` on a thread of its own until EOF.
fn capture(pipe: Option<impl Read + Send + 'static>, output: &Arc<Mutex<Vec<u8>>>) {
    let Some(mut pipe) = pipe else {
        return;
    };
    let output = Arc::clone(output);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // A read error ends the capture early; what was read is kept.
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            output
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(&buf[..n]);
        }
    });
}

/// An HTTP answer: status, headers (names lower-cased), body.
struct Answer {
    what: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// The whole answer as received, for messages and leak checks.
    raw: String,
}

impl Answer {
    fn parse(what: &str, raw: Vec<u8>) -> Answer {
        let raw = String::from_utf8(raw)
            .unwrap_or_else(|e| panic!("{what}: the answer is not UTF-8: {e}"));
        let (head, rest) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{what}: no end of headers in {raw:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{what}: bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(what, rest)
        } else {
            rest.to_string()
        };
        if let Some((_, length)) = headers.iter().find(|(n, _)| n == "content-length") {
            assert_eq!(
                length.parse::<usize>().ok(),
                Some(body.len()),
                "{what}: content-length does not match the body in {raw:?}"
            );
        }
        Answer {
            what: what.to_string(),
            status,
            headers,
            body,
            raw,
        }
    }

    /// Panics unless the status is `status`; returns the answer for more checks.
    fn expect_status(self, status: u16, context: &str) -> Answer {
        assert_eq!(self.status, status, "{context}: {self}");
        if status != 204 {
            assert_eq!(
                self.header("content-type"),
                Some("application/json"),
                "{context}: {self}"
            );
        }
        self
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{}: the body is not JSON ({e}): {self}", self.what))
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} answered:\n{}", self.what, self.raw)
    }
}

/// Decodes a chunked body (no trailers expected).
fn dechunk(what: &str, mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .unwrap_or_else(|| panic!("{what}: truncated chunk size in {rest:?}"));
        let size = usize::from_str_radix(size.split(';').next().unwrap_or_default().trim(), 16)
            .unwrap_or_else(|e| panic!("{what}: bad chunk size {size:?}: {e}"));
        if size == 0 {
            return body;
        }
        let chunk = after
            .get(..size)
            .unwrap_or_else(|| panic!("{what}: truncated chunk in {after:?}"));
        body.push_str(chunk);
        rest = after[size..]
            .strip_prefix("\r\n")
            .unwrap_or_else(|| panic!("{what}: no CRLF after a chunk"));
    }
}

/// The component's one line per request, `<method> <path> -> <status>`, with wasmtime's prefix.
fn request_lines(log: &str) -> impl Iterator<Item = &str> {
    log.lines().filter(|line| {
        line.rsplit_once(" -> ").is_some_and(|(_, status)| {
            status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit())
        })
    })
}

/// The instances that wrote to the log, by wasmtime's prefix `stderr [N] :: `: one per request when instances
/// are not reused, one per instance when they are. Scans for the prefixes anywhere, since wasmtime may
/// interleave the output of instances that run side by side.
fn instances(log: &str) -> BTreeSet<&str> {
    log.match_indices("stderr [")
        .filter_map(|(start, _)| {
            let rest = &log[start + "stderr [".len()..];
            let number = &rest[..rest.find("] :: ")?];
            number.bytes().all(|b| b.is_ascii_digit()).then_some(number)
        })
        .collect()
}

/// Runs `sql` with the real psql as the trust role; returns its unaligned, tuples-only output.
fn psql(cluster: &Cluster, sql: &str) -> String {
    let out = cluster.psql(&["-X", "-q", "-A", "-t", "-c", sql], None);
    assert!(
        out.status.success(),
        "psql -c {sql:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many sessions `application_name` has.
fn sessions(cluster: &Cluster, application_name: &str) -> usize {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}'"
    );
    psql(cluster, &sql)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("count(*) is not a number: {e}"))
}

/// Waits until `application_name` has exactly `expected` sessions (the server notices closed connections a
/// moment later).
fn wait_for_sessions(cluster: &Cluster, application_name: &str, expected: usize) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let found = sessions(cluster, application_name);
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{application_name} has {found} sessions after {SETTLE_TIMEOUT:?}, expected {expected}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Ends every session of `application_name` from the server side and waits until they are gone.
fn terminate_sessions(cluster: &Cluster, application_name: &str) {
    psql(
        cluster,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{application_name}'"
        ),
    );
    wait_for_sessions(cluster, application_name, 0);
}

/// wasmtime from PATH, else from `~/.cargo/bin` (where scripts/setup.sh installs it).
fn wasmtime_path() -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("wasmtime"));
    let in_cargo_home = std::env::var_os("HOME")
        .map(|home| Path::new(&home).join(".cargo").join("bin").join("wasmtime"));
    in_path
        .chain(in_cargo_home)
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("wasmtime not found in PATH or ~/.cargo/bin; run scripts/setup.sh")
        })
}
