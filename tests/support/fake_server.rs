//! A scripted fake PostgreSQL server, for tests of how the client copes with a hostile or broken server.
//!
//! Modelled on pgx's pgmock: a [`Script`] lists, in protocol order, what the client must send and what the
//! server answers, so a test reads like the protocol spec:
//!
//! ```ignore
//! let server = FakeServer::start(
//!     Script::new()
//!         .expect_ssl_request()
//!         .send(b"N")
//!         .expect_startup()
//!         .send(&backend::authentication_cleartext_password())
//!         .expect_eof(),
//! );
//! // ... point the client at 127.0.0.1:server.port() ...
//! let connections = server.finish();
//! assert!(!connections[0].has_message(b'p'), "a password was sent");
//! ```
//!
//! Every accepted connection runs the whole script on its own thread and keeps a [`Transcript`]: every frame
//! the steps read, every byte that arrived (as plaintext and as it crossed the wire), the ALPN protocol a TLS
//! handshake settled on, and where the script stopped if the client went off it. A step that finds something
//! else than it expects ends the script and closes the connection, as a real server would.
//!
//! Nothing here can hang a test: every read waits at most [`READ_TIMEOUT`], and [`FakeServer::finish`] waits a
//! bounded time for the connections before it reports them.
//!
//! TLS uses rustls with ring on the server side and certificates from rcgen ([`FakeCerts`]): after an answered
//! SSLRequest (`.send(b"S").start_tls(config)`) or as the first step (direct TLS, with or without ALPN).
//! Native only: the server runs on std threads and rcgen is a native dev-dependency.

#![cfg(not(target_os = "wasi"))]
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// How long one read waits for the client before the step fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`FakeServer::finish`] waits for connections still running their script: a little longer than
/// one read, so a script waiting on a silent client reports its own timeout.
const FINISH_TIMEOUT: Duration = Duration::from_secs(12);
/// After a step failed, how long the server keeps reading what the client still sends, for the transcript.
const DRAIN_AFTER_FAILURE: Duration = Duration::from_millis(100);
/// The largest frame a fake server reads from a client; a longer length is a step failure.
const MAX_FRAME_LEN: usize = 1 << 20;
/// How often the acceptor looks for new connections and for the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(2);

/// The request codes that take the place of a protocol version in untagged first messages.
const SSL_REQUEST_CODE: i32 = 80_877_103;
const GSSENC_REQUEST_CODE: i32 = 80_877_104;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Protocol 3.0 (3.2 and later are 3 << 16 | minor).
const PROTOCOL_3: i32 = 3 << 16;

/// The ALPN protocol of direct TLS connections to PostgreSQL.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The steps every accepted connection runs, in order.
#[derive(Clone, Default)]
pub struct Script {
    steps: Vec<Step>,
}

/// A custom step: reads and writes through the [`Session`] API; an `Err` ends the script like a failed step.
type Custom = Arc<dyn Fn(&mut Session) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
enum Step {
    ExpectSslRequest,
    AnswerSslRequestIfAny(u8),
    ExpectStartup,
    Expect(u8),
    Send(Vec<u8>),
    StartTls(Arc<ServerConfig>),
    ExpectEof,
    DrainToEof,
    Custom(&'static str, Custom),
}

impl Step {
    fn describe(&self) -> String {
        match self {
            Step::ExpectSslRequest => "expect an SSLRequest".to_string(),
            Step::AnswerSslRequestIfAny(answer) => {
                format!(
                    "answer an SSLRequest, if any, with {:?}",
                    char::from(*answer)
                )
            }
            Step::ExpectStartup => "expect a StartupMessage".to_string(),
            Step::Expect(tag) => format!("expect a {} message", tag_name(*tag)),
            Step::Send(bytes) => format!("send {} bytes", bytes.len()),
            Step::StartTls(_) => "TLS handshake".to_string(),
            Step::ExpectEof => "expect the client to close the connection".to_string(),
            Step::DrainToEof => "read until the client closes the connection".to_string(),
            Step::Custom(name, _) => (*name).to_string(),
        }
    }
}

impl Script {
    /// An empty script: the server accepts and closes at once.
    pub fn new() -> Script {
        Script::default()
    }

    /// The client must send an SSLRequest (8 bytes: length 8, code 80877103). Answer it with [`Script::send`].
    pub fn expect_ssl_request(self) -> Script {
        self.then(Step::ExpectSslRequest)
    }

    /// If the client's first message is an SSLRequest, answer it with `answer` (one byte); if it is the
    /// StartupMessage, keep it for the next [`Script::expect_startup`]. For `sslmode=prefer` on builds that do
    /// not ask for TLS at all.
    pub fn answer_ssl_request_if_any(self, answer: u8) -> Script {
        self.then(Step::AnswerSslRequestIfAny(answer))
    }

    /// The client must send a StartupMessage (protocol 3.x); its parameters land in the transcript.
    pub fn expect_startup(self) -> Script {
        self.then(Step::ExpectStartup)
    }

    /// The client must send a message with this tag (`b'p'`, `b'Q'`, `b'X'`, ...).
    pub fn expect(self, tag: u8) -> Script {
        self.then(Step::Expect(tag))
    }

    /// Sends these bytes in one write (build them with [`backend`], or anything raw).
    pub fn send(self, bytes: &[u8]) -> Script {
        self.then(Step::Send(bytes.to_vec()))
    }

    /// Runs the server side of a TLS handshake; later steps go through TLS. After `.send(b"S")` this is TLS
    /// after an SSLRequest; as the first step it is direct TLS (the ClientHello arrives first).
    pub fn start_tls(self, config: Arc<ServerConfig>) -> Script {
        self.then(Step::StartTls(config))
    }

    /// The client must close the connection without sending anything more.
    pub fn expect_eof(self) -> Script {
        self.then(Step::ExpectEof)
    }

    /// Records whatever the client sends, unparsed, until it closes the connection.
    pub fn drain_to_eof(self) -> Script {
        self.then(Step::DrainToEof)
    }

    /// A step the fixed ones cannot express, such as the server side of a SCRAM exchange.
    pub fn run(
        self,
        name: &'static str,
        step: impl Fn(&mut Session) -> Result<(), String> + Send + Sync + 'static,
    ) -> Script {
        self.then(Step::Custom(name, Arc::new(step)))
    }

    fn then(mut self, step: Step) -> Script {
        self.steps.push(step);
        self
    }
}

/// A frame the client sent, as one of the steps read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// SSLRequest.
    SslRequest,
    /// GSSENCRequest.
    GssEncRequest,
    /// CancelRequest (process id and secret key are in the raw bytes).
    CancelRequest,
    /// StartupMessage with its protocol version and parameters.
    Startup {
        version: i32,
        params: Vec<(String, String)>,
    },
    /// An untagged first message with an unknown code.
    Unknown { code: i32, body: Vec<u8> },
    /// A regular message: its tag and body (without tag and length).
    Message { tag: u8, body: Vec<u8> },
}

impl Frame {
    /// A short description for failure messages.
    pub fn describe(&self) -> String {
        match self {
            Frame::SslRequest => "an SSLRequest".to_string(),
            Frame::GssEncRequest => "a GSSENCRequest".to_string(),
            Frame::CancelRequest => "a CancelRequest".to_string(),
            Frame::Startup { version, .. } => format!(
                "a StartupMessage (protocol {}.{})",
                version >> 16,
                version & 0xffff
            ),
            Frame::Unknown { code, .. } => format!("an untagged message with code {code}"),
            Frame::Message { tag, body } => {
                format!("a {} message ({} bytes)", tag_name(*tag), body.len())
            }
        }
    }
}

/// The name of a frontend message tag.
fn tag_name(tag: u8) -> String {
    let name = match tag {
        b'p' => "PasswordMessage/SASL",
        b'Q' => "Query",
        b'X' => "Terminate",
        b'P' => "Parse",
        b'B' => "Bind",
        b'E' => "Execute",
        b'S' => "Sync",
        b'D' => "Describe",
        b'C' => "Close",
        b'H' => "Flush",
        _ => "",
    };
    let shown = char::from(tag).escape_default();
    if name.is_empty() {
        format!("'{shown}'")
    } else {
        format!("'{shown}' ({name})")
    }
}

/// Everything one connection saw.
#[derive(Clone, Debug)]
pub struct Transcript {
    /// The frames the steps read, in order (including one that did not match its step).
    pub frames: Vec<Frame>,
    /// Every byte of protocol the client sent: decrypted once TLS started, with partial frames too.
    pub received: Vec<u8>,
    /// Every byte as it crossed TCP: TLS records once TLS started.
    pub wire: Vec<u8>,
    /// Whether a TLS handshake completed.
    pub tls: bool,
    /// The ALPN protocol the TLS handshake settled on.
    pub alpn: Option<Vec<u8>>,
    /// `Ok` if the script ran to its end, else which step failed and why.
    pub result: Result<(), String>,
}

impl Transcript {
    /// A transcript of nothing, with this result.
    fn empty(result: Result<(), String>) -> Transcript {
        Transcript {
            frames: Vec::new(),
            received: Vec::new(),
            wire: Vec::new(),
            tls: false,
            alpn: None,
            result,
        }
    }

    /// Whether the client sent an SSLRequest.
    pub fn saw_ssl_request(&self) -> bool {
        self.frames.contains(&Frame::SslRequest)
    }

    /// The parameters of the StartupMessage, if one arrived.
    pub fn startup_params(&self) -> Option<&[(String, String)]> {
        self.frames.iter().find_map(|f| match f {
            Frame::Startup { params, .. } => Some(params.as_slice()),
            _ => None,
        })
    }

    /// The bodies of the messages with this tag.
    pub fn messages(&self, tag: u8) -> impl Iterator<Item = &[u8]> {
        self.frames.iter().filter_map(move |f| match f {
            Frame::Message { tag: t, body } if *t == tag => Some(body.as_slice()),
            _ => None,
        })
    }

    /// Whether the client sent a message with this tag.
    pub fn has_message(&self, tag: u8) -> bool {
        self.messages(tag).next().is_some()
    }

    /// Whether `needle` appears in anything the client sent, as plaintext or on the wire.
    pub fn received_contains(&self, needle: &[u8]) -> bool {
        let within = |haystack: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
        within(&self.received) || within(&self.wire)
    }

    /// A one-line summary for failure messages.
    pub fn summary(&self) -> String {
        let frames: Vec<String> = self.frames.iter().map(Frame::describe).collect();
        let mut out = format!(
            "frames [{}], {} bytes on the wire",
            frames.join(", "),
            self.wire.len()
        );
        if self.tls {
            let alpn = self.alpn.as_deref().map_or("none".to_string(), |p| {
                String::from_utf8_lossy(p).into_owned()
            });
            let _ = write!(out, ", TLS (ALPN {alpn})");
        }
        match &self.result {
            Ok(()) => out.push_str(", script completed"),
            Err(e) => {
                let _ = write!(out, ", script stopped: {e}");
            }
        }
        out
    }
}

/// A fake server listening on 127.0.0.1; every accepted connection runs the script.
pub struct FakeServer {
    port: u16,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<Vec<JoinHandle<Transcript>>>>,
}

impl FakeServer {
    /// Binds 127.0.0.1 on a port the kernel picks and starts accepting.
    pub fn start(script: Script) -> FakeServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("fake server: cannot bind 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake server: no local address: {e}"))
            .port();
        // Non-blocking, so the acceptor notices the stop flag without a wake-up connection.
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("fake server: cannot make the listener non-blocking: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        let acceptor = {
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name(format!("fake-server-{port}"))
                .spawn(move || accept_loop(&listener, &script, &stop))
                .unwrap_or_else(|e| panic!("fake server: cannot spawn the acceptor: {e}"))
        };
        FakeServer {
            port,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops accepting (after taking every connection already made) and returns the transcripts, in the order
    /// the connections were accepted. A connection still running its script after a bounded wait is reported
    /// as such and left to end by its read timeout.
    pub fn finish(mut self) -> Vec<Transcript> {
        self.stop.store(true, Ordering::Release);
        let handles = match self.acceptor.take().map(JoinHandle::join) {
            Some(Ok(handles)) => handles,
            Some(Err(_)) => panic!("fake server on port {}: the acceptor panicked", self.port),
            None => Vec::new(),
        };
        let deadline = Instant::now() + FINISH_TIMEOUT;
        while Instant::now() < deadline && !handles.iter().all(JoinHandle::is_finished) {
            thread::sleep(Duration::from_millis(5));
        }
        handles
            .into_iter()
            .map(|handle| {
                if !handle.is_finished() {
                    return Transcript::empty(Err(format!(
                        "the script was still running after {FINISH_TIMEOUT:?}"
                    )));
                }
                handle.join().unwrap_or_else(|_| {
                    Transcript::empty(Err("the connection thread panicked".to_string()))
                })
            })
            .collect()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(acceptor) = self.acceptor.take() {
            // Connection threads end by their read timeouts; only the acceptor is waited for.
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    script: &Arc<Script>,
    stop: &AtomicBool,
) -> Vec<JoinHandle<Transcript>> {
    let mut connections = Vec::new();
    loop {
        // Read the flag before accepting: a connection the client made before `finish` is then still taken
        // from the backlog before the loop ends.
        let stopping = stop.load(Ordering::Acquire);
        match listener.accept() {
            Ok((stream, _)) => {
                let script = Arc::clone(script);
                let spawned = thread::Builder::new()
                    .name("fake-server-connection".to_string())
                    .spawn(move || run_script(stream, &script));
                match spawned {
                    Ok(handle) => connections.push(handle),
                    Err(e) => eprintln!("fake server: cannot spawn a connection thread: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stopping {
                    return connections;
                }
                thread::sleep(ACCEPT_POLL);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("fake server: accept failed: {e}");
                return connections;
            }
        }
    }
}

fn run_script(stream: TcpStream, script: &Script) -> Transcript {
    let mut session = match Session::new(stream) {
        Ok(session) => session,
        Err(e) => return Transcript::empty(Err(e)),
    };
    for (index, step) in script.steps.iter().enumerate() {
        if let Err(e) = session.run_step(step) {
            session.transcript.result = Err(format!(
                "step {} of {} ({}): {e}",
                index + 1,
                script.steps.len(),
                step.describe()
            ));
            session.drain_briefly();
            break;
        }
    }
    session.close()
}

/// One accepted connection, as the steps see it.
pub struct Session {
    stream: Stream,
    transcript: Transcript,
    /// A StartupMessage read by `answer_ssl_request_if_any`, for the next `expect_startup`.
    pending_startup: Option<Frame>,
    /// Whether the StartupMessage arrived: before it, frames are untagged.
    startup_seen: bool,
}

/// The connection's byte stream, plaintext or TLS over the recording socket.
enum Stream {
    Plain(Wire),
    Tls(Box<StreamOwned<ServerConnection, Wire>>),
    /// Only while moving into TLS.
    Switching,
}

/// The TCP socket, recording every byte read from it.
struct Wire {
    tcp: TcpStream,
    log: Vec<u8>,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.log.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

impl Stream {
    fn wire(&mut self) -> Option<&mut Wire> {
        match self {
            Stream::Plain(wire) => Some(wire),
            Stream::Tls(tls) => Some(&mut tls.sock),
            Stream::Switching => None,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(wire) => wire.read(buf),
            Stream::Tls(tls) => tls.read(buf),
            Stream::Switching => Err(io::Error::other("BUG: read while switching to TLS")),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(wire) => wire.write(buf),
            Stream::Tls(tls) => tls.write(buf),
            Stream::Switching => Err(io::Error::other("BUG: write while switching to TLS")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(wire) => wire.flush(),
            Stream::Tls(tls) => tls.flush(),
            Stream::Switching => Ok(()),
        }
    }
}

impl Session {
    fn new(tcp: TcpStream) -> Result<Session, String> {
        // Accepted sockets may inherit the listener's non-blocking mode on some platforms.
        tcp.set_nonblocking(false)
            .and_then(|()| tcp.set_read_timeout(Some(READ_TIMEOUT)))
            .and_then(|()| tcp.set_write_timeout(Some(READ_TIMEOUT)))
            .and_then(|()| tcp.set_nodelay(true))
            .map_err(|e| format!("cannot set up the accepted socket: {e}"))?;
        Ok(Session {
            stream: Stream::Plain(Wire {
                tcp,
                log: Vec::new(),
            }),
            transcript: Transcript::empty(Ok(())),
            pending_startup: None,
            startup_seen: false,
        })
    }

    fn run_step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::ExpectSslRequest => self.expect_ssl_request(),
            Step::AnswerSslRequestIfAny(answer) => self.answer_ssl_request_if_any(*answer),
            Step::ExpectStartup => self.expect_startup().map(drop),
            Step::Expect(tag) => self.expect(*tag).map(drop),
            Step::Send(bytes) => self.send(bytes),
            Step::StartTls(config) => self.start_tls(Arc::clone(config)),
            Step::ExpectEof => self.expect_eof(),
            Step::DrainToEof => self.drain_to_eof(),
            Step::Custom(_, step) => step(self),
        }
    }

    /// Reads the client's next frame: untagged before the StartupMessage, tagged after it. `None` means the
    /// client closed the connection at a frame boundary.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        let frame = if self.startup_seen {
            self.read_tagged()?
        } else {
            self.read_untagged()?
        };
        if let Some(frame) = &frame {
            if matches!(frame, Frame::Startup { .. }) {
                self.startup_seen = true;
            }
            self.transcript.frames.push(frame.clone());
        }
        Ok(frame)
    }

    /// Reads an SSLRequest, or fails.
    pub fn expect_ssl_request(&mut self) -> Result<(), String> {
        match self.next_frame()? {
            Some(Frame::SslRequest) => Ok(()),
            other => Err(unexpected("an SSLRequest", other.as_ref())),
        }
    }

    /// Answers an SSLRequest with `answer` if the client sent one; keeps a StartupMessage for later.
    pub fn answer_ssl_request_if_any(&mut self, answer: u8) -> Result<(), String> {
        match self.next_frame()? {
            Some(Frame::SslRequest) => self.send(&[answer]),
            Some(startup @ Frame::Startup { .. }) => {
                self.pending_startup = Some(startup);
                Ok(())
            }
            other => Err(unexpected(
                "an SSLRequest or a StartupMessage",
                other.as_ref(),
            )),
        }
    }

    /// Reads a StartupMessage and returns its parameters, or fails.
    pub fn expect_startup(&mut self) -> Result<Vec<(String, String)>, String> {
        let frame = match self.pending_startup.take() {
            Some(frame) => Some(frame),
            None => self.next_frame()?,
        };
        match frame {
            Some(Frame::Startup { params, .. }) => Ok(params),
            other => Err(unexpected("a StartupMessage", other.as_ref())),
        }
    }

    /// Reads a message with this tag and returns its body, or fails.
    pub fn expect(&mut self, tag: u8) -> Result<Vec<u8>, String> {
        match self.next_frame()? {
            Some(Frame::Message { tag: t, body }) if t == tag => Ok(body),
            other => Err(unexpected(
                &format!("a {} message", tag_name(tag)),
                other.as_ref(),
            )),
        }
    }

    /// Sends `bytes` in one write.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| format!("cannot send {} bytes: {e}", bytes.len()))
    }

    /// Runs the server side of a TLS handshake; afterwards every read and write goes through TLS.
    pub fn start_tls(&mut self, config: Arc<ServerConfig>) -> Result<(), String> {
        let Stream::Plain(mut wire) = std::mem::replace(&mut self.stream, Stream::Switching) else {
            panic!("BUG: a script started TLS twice");
        };
        let mut conn = match ServerConnection::new(config) {
            Ok(conn) => conn,
            Err(e) => {
                self.stream = Stream::Plain(wire);
                return Err(format!("cannot create the TLS session: {e}"));
            }
        };
        let handshake = loop {
            if !conn.is_handshaking() {
                break Ok(());
            }
            match conn.complete_io(&mut wire) {
                Ok((0, 0)) => break Err("the client closed the connection".to_string()),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => break Err(format!("no progress for {READ_TIMEOUT:?}")),
                // rustls has already written the alert that describes its error.
                Err(e) => break Err(e.to_string()),
            }
        };
        if let Err(e) = handshake {
            self.stream = Stream::Plain(wire);
            return Err(format!("TLS handshake failed: {e}"));
        }
        self.transcript.tls = true;
        self.transcript.alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        self.stream = Stream::Tls(Box::new(StreamOwned::new(conn, wire)));
        Ok(())
    }

    /// Expects the client to close the connection without sending anything more.
    pub fn expect_eof(&mut self) -> Result<(), String> {
        match self.next_frame()? {
            None => Ok(()),
            Some(frame) => Err(format!(
                "expected the client to close the connection, got {}",
                frame.describe()
            )),
        }
    }

    /// Records whatever arrives, unparsed, until the client closes the connection.
    pub fn drain_to_eof(&mut self) -> Result<(), String> {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.transcript.received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    return Err(format!(
                        "the client kept the connection open for {READ_TIMEOUT:?}"
                    ));
                }
                // A reset, or a TLS close without close_notify: the client is gone either way.
                Err(_) => return Ok(()),
            }
        }
    }

    /// Reads whatever the client sends next, unparsed, in one read (at most 16 KiB); empty if it closed the
    /// connection. For steps that stop in the middle of something, such as a TLS handshake.
    pub fn read_some(&mut self) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    self.transcript.received.extend_from_slice(&buf);
                    return Ok(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(format!("nothing within {READ_TIMEOUT:?}")),
                Err(e) if is_close(&e) => return Ok(Vec::new()),
                Err(e) => return Err(format!("reading failed: {e}")),
            }
        }
    }

    /// After a failed step: whatever the client already sent goes into the transcript before the close.
    fn drain_briefly(&mut self) {
        let Some(wire) = self.stream.wire() else {
            return;
        };
        let deadline = Instant::now() + DRAIN_AFTER_FAILURE;
        if wire
            .tcp
            .set_read_timeout(Some(DRAIN_AFTER_FAILURE))
            .is_err()
        {
            return;
        }
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.transcript.received.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn close(mut self) -> Transcript {
        if let Stream::Tls(tls) = &mut self.stream {
            tls.conn.send_close_notify();
            // Only write: complete_io could also wait to read.
            while tls.conn.wants_write() {
                if !matches!(tls.conn.write_tls(&mut tls.sock), Ok(n) if n > 0) {
                    break;
                }
            }
        }
        if let Some(wire) = self.stream.wire() {
            let _ = wire.tcp.shutdown(Shutdown::Both);
            self.transcript.wire = std::mem::take(&mut wire.log);
        }
        self.transcript
    }

    fn read_untagged(&mut self) -> Result<Option<Frame>, String> {
        let Some(header) = self.read_exact_or_eof(4, "a message length")? else {
            return Ok(None);
        };
        let len = frame_len(&header, 4)?;
        let body = self.read_exact(len - 4, "a message body")?;
        if body.len() < 4 {
            return Err(format!("an untagged message of {len} bytes has no code"));
        }
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        Ok(Some(match code {
            SSL_REQUEST_CODE => Frame::SslRequest,
            GSSENC_REQUEST_CODE => Frame::GssEncRequest,
            CANCEL_REQUEST_CODE => Frame::CancelRequest,
            version if version >> 16 == PROTOCOL_3 >> 16 => Frame::Startup {
                version,
                params: startup_params(&body[4..])?,
            },
            code => Frame::Unknown {
                code,
                body: body[4..].to_vec(),
            },
        }))
    }

    fn read_tagged(&mut self) -> Result<Option<Frame>, String> {
        let Some(header) = self.read_exact_or_eof(5, "a message header")? else {
            return Ok(None);
        };
        let tag = header[0];
        let len = frame_len(&header[1..], 4)?;
        let body = self.read_exact(len - 4, "a message body")?;
        Ok(Some(Frame::Message { tag, body }))
    }

    fn read_exact(&mut self, n: usize, what: &str) -> Result<Vec<u8>, String> {
        match self.read_exact_or_eof(n, what)? {
            Some(bytes) => Ok(bytes),
            None if n == 0 => Ok(Vec::new()),
            None => Err(format!(
                "the client closed the connection instead of sending {what}"
            )),
        }
    }

    /// Reads exactly `n` bytes; `None` if the client closed the connection before the first one.
    fn read_exact_or_eof(&mut self, n: usize, what: &str) -> Result<Option<Vec<u8>>, String> {
        let mut buf = vec![0u8; n];
        let mut filled = 0;
        while filled < n {
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => {
                    return Err(format!(
                        "the client closed the connection in the middle of {what}"
                    ));
                }
                Ok(read) => {
                    self.transcript
                        .received
                        .extend_from_slice(&buf[filled..filled + read]);
                    filled += read;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    return Err(format!("no {what} within {READ_TIMEOUT:?}"));
                }
                // A TLS peer that closes TCP without close_notify, or one that closes with our last message
                // unread (the kernel then resets): still the end of the stream.
                Err(e) if filled == 0 && is_close(&e) => return Ok(None),
                Err(e) => return Err(format!("reading {what} failed: {e}")),
            }
        }
        Ok(Some(buf))
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

fn unexpected(wanted: &str, got: Option<&Frame>) -> String {
    match got {
        Some(frame) => format!("expected {wanted}, got {}", frame.describe()),
        None => format!("expected {wanted}, but the client closed the connection"),
    }
}

/// A length field that counts itself; at least `min` and at most [`MAX_FRAME_LEN`].
fn frame_len(bytes: &[u8], min: usize) -> Result<usize, String> {
    let len = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    match usize::try_from(len) {
        Ok(len) if (min..=MAX_FRAME_LEN).contains(&len) => Ok(len),
        _ => Err(format!("invalid message length {len}")),
    }
}

/// The NUL-terminated name/value pairs of a StartupMessage, ending with an empty name.
fn startup_params(mut body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut params = Vec::new();
    loop {
        let name = take_cstr(&mut body)?;
        if name.is_empty() {
            return Ok(params);
        }
        let value = take_cstr(&mut body)?;
        params.push((name, value));
    }
}

fn take_cstr(body: &mut &[u8]) -> Result<String, String> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or("a string without its NUL terminator")?;
    let text = String::from_utf8_lossy(&body[..end]).into_owned();
    *body = &body[end + 1..];
    Ok(text)
}

/// Encoders for backend messages, each returning the complete message (tag, length, body).
pub mod backend {
    /// A message with `tag` whose body `fill` writes; the length is filled in afterwards.
    fn message(tag: u8, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = vec![tag, 0, 0, 0, 0];
        fill(&mut out);
        let len = i32::try_from(out.len() - 1).expect("BUG: a test message over 2 GiB");
        out[1..5].copy_from_slice(&len.to_be_bytes());
        out
    }

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn authentication(code: i32, data: &[u8]) -> Vec<u8> {
        message(b'R', |out| {
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(data);
        })
    }

    /// AuthenticationOk.
    pub fn authentication_ok() -> Vec<u8> {
        authentication(0, &[])
    }

    /// AuthenticationCleartextPassword.
    pub fn authentication_cleartext_password() -> Vec<u8> {
        authentication(3, &[])
    }

    /// AuthenticationMD5Password with its salt.
    pub fn authentication_md5_password(salt: [u8; 4]) -> Vec<u8> {
        authentication(5, &salt)
    }

    /// AuthenticationSASL offering these mechanisms.
    pub fn authentication_sasl(mechanisms: &[&str]) -> Vec<u8> {
        let mut data = Vec::new();
        for mechanism in mechanisms {
            cstr(&mut data, mechanism);
        }
        data.push(0);
        authentication(10, &data)
    }

    /// AuthenticationSASLContinue (a SCRAM server-first message).
    pub fn authentication_sasl_continue(data: &[u8]) -> Vec<u8> {
        authentication(11, data)
    }

    /// AuthenticationSASLFinal (a SCRAM server-final message).
    pub fn authentication_sasl_final(data: &[u8]) -> Vec<u8> {
        authentication(12, data)
    }

    /// ParameterStatus.
    pub fn parameter_status(name: &str, value: &str) -> Vec<u8> {
        message(b'S', |out| {
            cstr(out, name);
            cstr(out, value);
        })
    }

    /// BackendKeyData (protocol 3.0: a 4-byte secret key).
    pub fn backend_key_data(process_id: i32, secret_key: i32) -> Vec<u8> {
        message(b'K', |out| {
            out.extend_from_slice(&process_id.to_be_bytes());
            out.extend_from_slice(&secret_key.to_be_bytes());
        })
    }

    /// ReadyForQuery with a transaction status (`b'I'`, `b'T'` or `b'E'`).
    pub fn ready_for_query(status: u8) -> Vec<u8> {
        message(b'Z', |out| out.push(status))
    }

    /// ErrorResponse with these fields (`b'S'` severity, `b'C'` SQLSTATE, `b'M'` message, ...).
    pub fn error_response(fields: &[(u8, &str)]) -> Vec<u8> {
        message(b'E', |out| {
            for (code, value) in fields {
                out.push(*code);
                cstr(out, value);
            }
            out.push(0);
        })
    }

    /// A FATAL ErrorResponse with a SQLSTATE and a message.
    pub fn fatal(code: &str, text: &str) -> Vec<u8> {
        error_response(&[(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', text)])
    }

    /// RowDescription of text-format columns: (name, type OID).
    pub fn row_description(columns: &[(&str, u32)]) -> Vec<u8> {
        message(b'T', |out| {
            let count = i16::try_from(columns.len()).expect("BUG: too many test columns");
            out.extend_from_slice(&count.to_be_bytes());
            for (name, type_oid) in columns {
                cstr(out, name);
                out.extend_from_slice(&0i32.to_be_bytes()); // table OID
                out.extend_from_slice(&0i16.to_be_bytes()); // column number
                out.extend_from_slice(&type_oid.to_be_bytes());
                let size: i16 = match type_oid {
                    16 => 1,
                    21 => 2,
                    23 | 26 => 4,
                    20 => 8,
                    _ => -1,
                };
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
                out.extend_from_slice(&0i16.to_be_bytes()); // text format
            }
        })
    }

    /// DataRow of text values (`None` is NULL).
    pub fn data_row(values: &[Option<&str>]) -> Vec<u8> {
        message(b'D', |out| {
            let count = i16::try_from(values.len()).expect("BUG: too many test values");
            out.extend_from_slice(&count.to_be_bytes());
            for value in values {
                match value {
                    Some(value) => {
                        let len = i32::try_from(value.len()).expect("BUG: a test value over 2 GiB");
                        out.extend_from_slice(&len.to_be_bytes());
                        out.extend_from_slice(value.as_bytes());
                    }
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
        })
    }

    /// CommandComplete with a command tag (`SELECT 1`, `INSERT 0 1`, ...).
    pub fn command_complete(tag: &str) -> Vec<u8> {
        message(b'C', |out| cstr(out, tag))
    }

    /// The answer to a simple query returning one row of one column: RowDescription, DataRow,
    /// CommandComplete, ReadyForQuery.
    pub fn one_row_result(column: &str, type_oid: u32, value: &str) -> Vec<u8> {
        [
            row_description(&[(column, type_oid)]),
            data_row(&[Some(value)]),
            command_complete("SELECT 1"),
            ready_for_query(b'I'),
        ]
        .concat()
    }

    /// Any message: a tag and a body, with the length between them. For malformed and unexpected messages.
    pub fn raw(tag: u8, body: &[u8]) -> Vec<u8> {
        message(tag, |out| out.extend_from_slice(body))
    }

    /// CopyInResponse of a text COPY with `columns` columns.
    pub fn copy_in_response(columns: i16) -> Vec<u8> {
        copy_response(b'G', columns)
    }

    /// CopyOutResponse of a text COPY with `columns` columns.
    pub fn copy_out_response(columns: i16) -> Vec<u8> {
        copy_response(b'H', columns)
    }

    fn copy_response(tag: u8, columns: i16) -> Vec<u8> {
        message(tag, |out| {
            out.push(0);
            out.extend_from_slice(&columns.to_be_bytes());
            for _ in 0..columns {
                out.extend_from_slice(&0i16.to_be_bytes());
            }
        })
    }

    /// CopyData.
    pub fn copy_data(data: &[u8]) -> Vec<u8> {
        raw(b'd', data)
    }

    /// CopyDone.
    pub fn copy_done() -> Vec<u8> {
        raw(b'c', b"")
    }

    /// ParseComplete.
    pub fn parse_complete() -> Vec<u8> {
        raw(b'1', b"")
    }

    /// A NoticeResponse with this message.
    pub fn notice(text: &str) -> Vec<u8> {
        message(b'N', |out| {
            for (code, value) in [
                (b'S', "NOTICE"),
                (b'V', "NOTICE"),
                (b'C', "00000"),
                (b'M', text),
            ] {
                out.push(code);
                cstr(out, value);
            }
            out.push(0);
        })
    }

    /// What a server sends after AuthenticationOk: a few ParameterStatus messages, BackendKeyData and
    /// ReadyForQuery (idle).
    pub fn startup_complete() -> Vec<u8> {
        [
            parameter_status("server_version", "17.0"),
            parameter_status("server_encoding", "UTF8"),
            parameter_status("client_encoding", "UTF8"),
            parameter_status("DateStyle", "ISO, MDY"),
            parameter_status("integer_datetimes", "on"),
            parameter_status("standard_conforming_strings", "on"),
            backend_key_data(4242, 0x5eed),
            ready_for_query(b'I'),
        ]
        .concat()
    }
}

/// A private CA and a server certificate for `localhost` and `127.0.0.1`, written as PEM files to a temp dir
/// (deleted on drop) so a client can use `sslrootcert=`.
pub struct FakeCerts {
    dir: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl FakeCerts {
    /// Makes the CA and the server certificate and writes `ca.crt`, `server.crt` and `server.key`.
    pub fn generate() -> FakeCerts {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };

        let fail = |what: &str, e: rcgen::Error| -> ! { panic!("test certificates: {what}: {e}") };
        let ca_key = KeyPair::generate().unwrap_or_else(|e| fail("CA key", e));
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail("CA params", e));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wasi-pg-client fake server CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params
            .self_signed(&ca_key)
            .unwrap_or_else(|e| fail("CA certificate", e));

        let server_key = KeyPair::generate().unwrap_or_else(|e| fail("server key", e));
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap_or_else(|e| fail("server params", e));
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server_params
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap_or_else(|e| fail("server certificate", e));

        let dir = unique_temp_dir();
        for (name, contents) in [
            ("ca.crt", ca.pem()),
            ("server.crt", server.pem()),
            ("server.key", server_key.serialize_pem()),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, contents)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        FakeCerts {
            dir,
            chain: vec![server.der().clone(), ca.der().clone()],
            key: server_key.serialize_der(),
        }
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate, for `sslrootcert=`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A rustls server configuration (ring provider) presenting the server certificate and offering these
    /// ALPN protocols (none: the handshake negotiates no ALPN, whatever the client offers).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|builder| {
                builder
                    .with_no_client_auth()
                    .with_single_cert(self.chain.clone(), key)
            })
            .unwrap_or_else(|e| panic!("fake server TLS configuration: {e}"));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Drop for FakeCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory `wasi-pg-fake-<pid>-<n>-<nanos>` under the temp dir.
fn unique_temp_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("wasi-pg-fake-{}-{n}-{nanos}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
}

/// The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding, in the pieces a script
/// needs to deviate from it: a real server-first with any iteration count, a client proof checked against the
/// password, and the real server signature for the script to send (or to forge).
pub mod scram {
    use std::num::NonZeroU32;

    use ring::rand::{SecureRandom, SystemRandom};
    use ring::{digest, hmac, pbkdf2};

    use super::{Session, backend};

    /// What the server-first message fixed, for checking the client-final message.
    pub struct Exchange {
        client_first_bare: String,
        server_first: String,
        nonce: String,
        salt: Vec<u8>,
        iterations: u32,
    }

    /// Random bytes from the system's generator.
    pub fn random<const N: usize>() -> [u8; N] {
        let mut bytes = [0u8; N];
        SystemRandom::new()
            .fill(&mut bytes)
            .unwrap_or_else(|_| panic!("the system random generator failed"));
        bytes
    }

    /// Reads the SASLInitialResponse (which must choose SCRAM-SHA-256 without channel binding) and answers
    /// with a server-first message carrying this salt and iteration count.
    pub fn begin(session: &mut Session, salt: &[u8], iterations: u32) -> Result<Exchange, String> {
        let body = session.expect(b'p')?;
        let (mechanism, data) = initial_response(&body)?;
        if mechanism != "SCRAM-SHA-256" {
            return Err(format!("the client chose the SASL mechanism {mechanism:?}"));
        }
        let client_first = std::str::from_utf8(data).map_err(|_| "client-first is not UTF-8")?;
        // "n,," (no binding, no authzid) or "y,,"; "p=" would need a -PLUS mechanism.
        let client_first_bare = client_first
            .strip_prefix("n,,")
            .or_else(|| client_first.strip_prefix("y,,"))
            .ok_or_else(|| format!("unexpected GS2 header in {client_first:?}"))?;
        let client_nonce = attribute(client_first_bare, 'r')?;
        let nonce = format!("{client_nonce}{}", base64(&random::<18>()));
        let server_first = format!("r={nonce},s={},i={iterations}", base64(salt));
        session.send(&backend::authentication_sasl_continue(
            server_first.as_bytes(),
        ))?;
        Ok(Exchange {
            client_first_bare: client_first_bare.to_string(),
            server_first,
            nonce,
            salt: salt.to_vec(),
            iterations,
        })
    }

    /// Reads the client-final message, checks its nonce and its proof of `password`, and returns the
    /// server signature a real server would send as `v=`.
    pub fn verify_client_final(
        session: &mut Session,
        exchange: &Exchange,
        password: &str,
    ) -> Result<[u8; 32], String> {
        let body = session.expect(b'p')?;
        let client_final = std::str::from_utf8(&body).map_err(|_| "client-final is not UTF-8")?;
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or_else(|| format!("no proof in {client_final:?}"))?;
        if attribute(without_proof, 'r')? != exchange.nonce {
            return Err("the client-final nonce does not match".to_string());
        }
        let proof = base64_decode(proof).ok_or("the client proof is not base64")?;
        let auth_message = format!(
            "{},{},{without_proof}",
            exchange.client_first_bare, exchange.server_first
        );
        let iterations = NonZeroU32::new(exchange.iterations).ok_or("zero iterations")?;
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &exchange.salt,
            password.as_bytes(),
            &mut salted,
        );
        let salted = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
        let client_signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let recovered_key: Vec<u8> = proof
            .iter()
            .zip(client_signature.as_ref())
            .map(|(p, s)| p ^ s)
            .collect();
        if proof.len() != 32
            || digest::digest(&digest::SHA256, &recovered_key).as_ref() != stored_key.as_ref()
        {
            return Err("the client proof is wrong".to_string());
        }
        let server_key = hmac::sign(&salted, b"Server Key");
        let server_signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        let mut signature = [0u8; 32];
        signature.copy_from_slice(server_signature.as_ref());
        Ok(signature)
    }

    /// The mechanism name and the data of a SASLInitialResponse body.
    fn initial_response(body: &[u8]) -> Result<(String, &[u8]), String> {
        let end = body
            .iter()
            .position(|&b| b == 0)
            .ok_or("SASLInitialResponse without a mechanism")?;
        let mechanism = String::from_utf8_lossy(&body[..end]).into_owned();
        let rest = &body[end + 1..];
        let len = rest
            .get(..4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("SASLInitialResponse without a data length")?;
        let data = usize::try_from(len)
            .ok()
            .and_then(|len| rest.get(4..4 + len))
            .ok_or_else(|| format!("SASLInitialResponse with data length {len}"))?;
        Ok((mechanism, data))
    }

    /// The value of `name=` in a comma-separated SCRAM message.
    fn attribute(message: &str, name: char) -> Result<&str, String> {
        message
            .split(',')
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("no {name}= attribute in {message:?}"))
    }

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Standard base64 with padding.
    pub fn base64(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Decodes standard base64 with padding; `None` if it is not.
    pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
        let text = text.as_bytes();
        if !text.len().is_multiple_of(4) {
            return None;
        }
        let mut out = Vec::with_capacity(text.len() / 4 * 3);
        for chunk in text.chunks(4) {
            let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
            if pad > 2 {
                return None;
            }
            let mut n = 0u32;
            for &c in &chunk[..4 - pad] {
                let value = ALPHABET.iter().position(|&a| a == c)?;
                n = n << 6 | value as u32;
            }
            n <<= 6 * pad;
            let bytes = n.to_be_bytes();
            out.extend_from_slice(&bytes[1..4 - pad]);
        }
        Some(out)
    }
}
