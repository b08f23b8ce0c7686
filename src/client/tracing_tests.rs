//! What the client tells `tracing`: the spans of a connect and of each request with their fields, the levels of
//! its events, and what never appears (the password, parameters, statement text unless asked for). The server
//! is a script of backend messages behind an in-memory transport.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::proto::scripted::message;
use crate::{Client, Config, Transport};

/// One span or event as the subscriber saw it: a name (a span's) or target (an event's), its level, and its
/// fields as `name=value` text.
#[derive(Debug, Clone)]
struct Seen {
    span: bool,
    name: String,
    level: Level,
    fields: Vec<String>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
    }
}

struct Fields(Vec<String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.push(format!("{}={value:?}", field.name()));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push(format!("{}={value}", field.name()));
    }
}

/// Keeps every span (with the fields recorded later) and event, at every level.
#[derive(Clone, Default)]
struct Capture {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Fields(Vec::new());
        span.record(&mut fields);
        let mut seen = self.seen.lock().unwrap();
        seen.push(Seen {
            span: true,
            name: span.metadata().name().to_string(),
            level: *span.metadata().level(),
            fields: fields.0,
        });
        // Ids are 1-based positions in `seen`, so `record` finds its span.
        Id::from_u64(u64::try_from(seen.len()).unwrap())
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut fields = Fields(Vec::new());
        values.record(&mut fields);
        let index = usize::try_from(span.into_u64()).unwrap() - 1;
        self.seen.lock().unwrap()[index].fields.extend(fields.0);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(Vec::new());
        event.record(&mut fields);
        self.seen.lock().unwrap().push(Seen {
            span: false,
            name: event.metadata().target().to_string(),
            level: *event.metadata().level(),
            fields: fields.0,
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// A transport that answers with a fixed script and keeps what the client sent.
struct Scripted {
    script: VecDeque<u8>,
}

impl Transport for Scripted {
    fn poll_read(&mut self, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.script.len());
        for (slot, byte) in buf.iter_mut().zip(self.script.drain(..n)) {
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

/// A NoticeResponse with this severity and message.
fn notice(severity: &str, text: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', "00000"),
        (b'M', text),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    message(b'N', &body)
}

fn run(conninfo: &str) -> Vec<Seen> {
    run_with(Config::parse(conninfo).unwrap())
}

/// Connects with `config` over the script (which asks for a cleartext password), runs one query with a
/// parameter and one simple query whose answer carries a NOTICE and an INFO, and returns everything traced.
fn run_with(config: Config) -> Vec<Seen> {
    let mut field = b"n\0".to_vec();
    field.extend_from_slice(&[
        0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255, 0, 1,
    ]);
    let description = message(b'T', &[&[0, 1][..], &field].concat());
    let script = [
        message(b'R', &[0, 0, 0, 3]),
        message(b'R', &[0, 0, 0, 0]),
        message(b'S', b"server_version\x0017.0\0"),
        message(b'K', &[0, 0, 0, 7, 1, 2, 3, 4]),
        message(b'Z', b"I"),
        // query_typed: Parse, Bind, Describe portal, Execute, Sync.
        message(b'1', &[]),
        message(b'2', &[]),
        description,
        message(b'D', &[0, 1, 0, 0, 0, 4, 0, 0, 0, 42]),
        message(b'C', b"SELECT 1\0"),
        message(b'Z', b"I"),
        // simple_query
        notice("NOTICE", "relation \"t\" already exists, skipping"),
        notice("INFO", "asked for"),
        message(b'C', b"CREATE TABLE\0"),
        message(b'Z', b"I"),
    ]
    .concat();
    let capture = Capture::default();
    let seen = capture.seen.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    tracing::subscriber::with_default(capture, || {
        runtime.block_on(async {
            let transport = Box::new(Scripted {
                script: script.into(),
            });
            let client = Client::connect_with_transport(transport, &config)
                .await
                .unwrap();
            let secret = "parameter-value-s3cret";
            let rows = client
                .query_typed(
                    "SELECT $1::text AS n",
                    &[(&secret, crate::types::Type::TEXT)],
                )
                .await
                .unwrap();
            assert_eq!(rows[0].get::<_, i32>(0), 42);
            client
                .batch_execute("CREATE TABLE IF NOT EXISTS t ()")
                .await
                .unwrap();
        });
    });
    seen.lock().unwrap().clone()
}

#[test]
fn spans_name_the_connect_and_each_request_without_secrets() {
    let seen = run("user=alice password=hunter2 dbname=shop sslmode=disable");
    let everything = format!("{seen:?}");
    assert!(!everything.contains("hunter2"), "{everything}");
    assert!(
        !everything.contains("parameter-value-s3cret"),
        "{everything}"
    );

    let connect = seen.iter().find(|s| s.span && s.name == "connect").unwrap();
    assert_eq!(connect.level, Level::INFO);
    assert_eq!(connect.field("sslmode"), Some("disable"));
    assert_eq!(connect.field("user"), Some("alice"));
    assert_eq!(connect.field("db.namespace"), Some("shop"));
    assert_eq!(connect.field("db.system.name"), Some("postgresql"));
    assert_eq!(connect.field("otel.kind"), Some("client"));
    assert_eq!(connect.field("otel.name"), Some("connect shop"));
    assert_eq!(connect.field("transport"), Some("caller's"));
    // A caller's transport names no server.
    assert_eq!(connect.field("server.address"), None);

    let requests: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.span && s.name == "request")
        .collect();
    let kinds: Vec<Option<&str>> = requests.iter().map(|s| s.field("kind")).collect();
    assert_eq!(kinds, [Some("query_typed"), Some("simple_query")]);
    for request in &requests {
        assert_eq!(request.level, Level::DEBUG);
        assert_eq!(request.field("backend_pid"), Some("7"));
        assert_eq!(request.field("db.query.text"), None, "{request:?}");
        assert_eq!(request.field("db.system.name"), Some("postgresql"));
        assert_eq!(request.field("db.namespace"), Some("shop"));
        assert_eq!(request.field("otel.kind"), Some("client"));
        assert_eq!(request.field("error.type"), None);
    }
    let operations: Vec<_> = requests
        .iter()
        .map(|s| {
            (
                s.field("db.operation.name"),
                s.field("db.collection.name"),
                s.field("otel.name"),
            )
        })
        .collect();
    assert_eq!(
        operations,
        [
            (Some("SELECT"), None, Some("SELECT shop")),
            (Some("CREATE"), None, Some("CREATE shop")),
        ]
    );
}

#[test]
fn statement_text_is_recorded_only_when_asked_for() {
    let conninfo = "user=alice password=hunter2 sslmode=disable";
    let seen = run(conninfo);
    assert!(!format!("{seen:?}").contains("SELECT $1::text"));

    let mut config = Config::parse(conninfo).unwrap();
    config.trace_statements(true);
    let seen = run_with(config);
    let statements: Vec<Option<&str>> = seen
        .iter()
        .filter(|s| s.span && s.name == "request")
        .map(|s| s.field("db.query.text"))
        .collect();
    assert_eq!(
        statements,
        [
            Some("SELECT $1::text AS n"),
            Some("CREATE TABLE IF NOT EXISTS t ()")
        ]
    );
    assert!(!format!("{seen:?}").contains("parameter-value-s3cret"));
}

#[test]
fn nothing_is_logged_at_info_but_what_the_server_was_asked_to_say() {
    let seen = run("user=alice password=hunter2 sslmode=disable");
    let loud: Vec<&Seen> = seen
        .iter()
        .filter(|s| !s.span && s.level <= Level::INFO)
        .collect();
    // INFO notices are sent whatever client_min_messages says, for output the session asked for.
    assert_eq!(loud.len(), 1, "{loud:?}");
    assert_eq!(loud[0].name, "wasi_pg_client::notice");
    assert_eq!(loud[0].field("severity"), Some("INFO"));
    let routine = seen
        .iter()
        .find(|s| !s.span && s.field("message").is_some_and(|m| m.contains("skipping")))
        .unwrap();
    assert_eq!(routine.level, Level::DEBUG);
}
