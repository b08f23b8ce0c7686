//! The OpenTelemetry conventions on the client's spans and metrics, against a real server, on both targets.
//!
//! A `tracing` subscriber installed for each case records every span with its fields and its parent; a
//! `metrics` recorder installed for each case records every counter increment, gauge value and histogram
//! sample. Both are this thread's defaults only while the case runs, so the cases do not see each other.
//! Natively the cases run on a current-thread tokio runtime; then this file is built for wasm32-wasip2 and run
//! under the real wasmtime CLI on WASI 0.2 and on WASI 0.3, against the same cluster.
//!
//! Each target prints `<target>: N passed, M failed`; any failure fails the test.

#[cfg(not(target_os = "wasi"))]
#[allow(dead_code)]
mod support;
#[macro_use]
#[path = "support/two_target.rs"]
mod two_target;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName};
use metrics::{Metadata, Recorder, SharedString, Unit};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata as SpanMetadata, Subscriber};

use two_target::{Check, Outcome, with_timeout};
use wasi_pg_client::pool::{Pool, PoolOptions};
use wasi_pg_client::{Client, Config, Pipeline, PipelineMode};

/// How long a case may take before it counts as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// A parameter value that must never appear in any span field.
const SECRET_TEXT: &str = "otel-parameter-s3cret";
const SECRET_NUMBER: i32 = 918_273_645;

/// Where the server is, as the cases see it.
struct Env {
    /// A conninfo for the trust role (`dbname=postgres`).
    conninfo: String,
    host: String,
    port: u16,
    /// A port nothing listens on.
    closed_port: u16,
}

impl Env {
    fn config(&self, extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{} {extra}", self.conninfo)).check("config")
    }

    async fn connect(&self, extra: &str) -> Result<Client, String> {
        Client::connect(&self.config(extra)?).await.check("connect")
    }
}

// ---------------------------------------------------------------------------------------------------------
// What the cases record.
// ---------------------------------------------------------------------------------------------------------

/// One span as the subscriber saw it: its name, fields (with those recorded later) and parent.
#[derive(Debug, Clone)]
struct SeenSpan {
    id: u64,
    name: &'static str,
    parent: Option<u64>,
    fields: HashMap<String, String>,
}

impl SeenSpan {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// Fails unless each `(field, value)` is as given (`None`: absent).
    fn expect(&self, fields: &[(&str, Option<&str>)]) -> Result<(), String> {
        for (name, want) in fields {
            let got = self.field(name);
            ensure!(
                got == *want,
                "span {} ({:?}): {name} is {got:?}, expected {want:?}; fields {:?}",
                self.name,
                self.field("otel.name"),
                self.fields
            );
        }
        Ok(())
    }
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

/// Keeps every span of every level, with its parent (explicit, or the span entered when it was made).
#[derive(Clone, Default)]
struct SpanLog {
    spans: Arc<Mutex<Vec<SeenSpan>>>,
    entered: Arc<Mutex<Vec<u64>>>,
}

impl SpanLog {
    fn spans(&self) -> Vec<SeenSpan> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The spans called `name` whose `field` is `value`.
    fn find(&self, name: &str, field: &str, value: &str) -> Vec<SeenSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name && s.field(field) == Some(value))
            .collect()
    }

    /// The one span called `name` whose `field` is `value`.
    fn one(&self, name: &str, field: &str, value: &str) -> Result<SeenSpan, String> {
        let found = self.find(name, field, value);
        ensure!(
            found.len() == 1,
            "{} spans {name} with {field}={value}: {found:?}",
            found.len()
        );
        Ok(found.into_iter().next().unwrap_or_else(|| unreachable!()))
    }
}

impl Subscriber for SpanLog {
    fn enabled(&self, _: &SpanMetadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        let mut fields = HashMap::new();
        attributes.record(&mut Fields(&mut fields));
        let parent = match attributes.parent() {
            Some(parent) => Some(parent.into_u64()),
            None if attributes.is_contextual() => self
                .entered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last()
                .copied(),
            None => None,
        };
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        let id = u64::try_from(spans.len()).unwrap_or(u64::MAX - 1) + 1;
        spans.push(SeenSpan {
            id,
            name: attributes.metadata().name(),
            parent,
            fields,
        });
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(seen) = usize::try_from(span.into_u64() - 1)
            .ok()
            .and_then(|i| spans.get_mut(i))
        {
            values.record(&mut Fields(&mut seen.fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, span: &Id) {
        self.entered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(span.into_u64());
    }
    fn exit(&self, span: &Id) {
        let mut entered = self.entered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = entered.iter().rposition(|&id| id == span.into_u64()) {
            entered.remove(at);
        }
    }
}

/// One metric series: a name and its labels, with every value recorded into it (counter increments, gauge
/// values, histogram samples) in order.
#[derive(Debug)]
struct Series {
    name: String,
    labels: Vec<(String, String)>,
    values: Mutex<Vec<f64>>,
}

impl Series {
    fn values(&self) -> Vec<f64> {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn push(&self, value: f64) {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(value);
    }
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl CounterFn for Series {
    fn increment(&self, value: u64) {
        self.push(value as f64);
    }
    fn absolute(&self, value: u64) {
        self.push(value as f64);
    }
}

impl GaugeFn for Series {
    fn increment(&self, value: f64) {
        let last = self.values().last().copied().unwrap_or(0.0);
        self.push(last + value);
    }
    fn decrement(&self, value: f64) {
        let last = self.values().last().copied().unwrap_or(0.0);
        self.push(last - value);
    }
    fn set(&self, value: f64) {
        self.push(value);
    }
}

impl HistogramFn for Series {
    fn record(&self, value: f64) {
        self.push(value);
    }
}

/// Records every metric into [`Series`], one per name and label set.
#[derive(Clone, Default)]
struct MetricLog {
    series: Arc<Mutex<Vec<Arc<Series>>>>,
}

impl MetricLog {
    fn series(&self, key: &Key) -> Arc<Series> {
        let labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = all
            .iter()
            .find(|s| s.name == key.name() && s.labels == labels)
        {
            return found.clone();
        }
        let series = Arc::new(Series {
            name: key.name().to_string(),
            labels,
            values: Mutex::new(Vec::new()),
        });
        all.push(series.clone());
        series
    }

    /// Every series called `name` whose labels include each of `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<Arc<Series>> {
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .cloned()
            .collect()
    }

    /// The values of the one series called `name` with `labels`.
    fn values(&self, name: &str, labels: &[(&str, &str)]) -> Result<Vec<f64>, String> {
        let found = self.find(name, labels);
        ensure!(
            found.len() == 1,
            "{} series {name} with {labels:?}",
            found.len()
        );
        Ok(found[0].values())
    }
}

impl Recorder for MetricLog {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.series(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.series(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.series(key))
    }
}

// ---------------------------------------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------------------------------------

/// The attributes every span of an operation on the main server carries.
fn server_fields<'a>(env: &'a Env, port: &'a str) -> [(&'a str, Option<&'a str>); 5] {
    [
        ("otel.kind", Some("client")),
        ("db.system.name", Some("postgresql")),
        ("db.namespace", Some("postgres")),
        ("server.address", Some(env.host.as_str())),
        ("server.port", Some(port)),
    ]
}

/// No field of any span holds a parameter value.
fn no_parameters(log: &SpanLog) -> Result<(), String> {
    for span in log.spans() {
        for (name, value) in &span.fields {
            ensure!(
                !value.contains(SECRET_TEXT) && !value.contains(&SECRET_NUMBER.to_string()),
                "span {} field {name} holds a parameter: {value}",
                span.name
            );
        }
    }
    Ok(())
}

/// A query, a failing query, a pipeline of three, a COPY and a transaction, each with the attributes the
/// conventions give it, and no parameter anywhere.
async fn operation_spans(env: &Env) -> Outcome {
    let log = SpanLog::default();
    let _subscriber = tracing::dispatcher::set_default(&tracing::Dispatch::new(log.clone()));
    let port = env.port.to_string();
    let server = server_fields(env, &port);
    let mut c = env.connect("").await?;
    c.batch_execute("CREATE TEMP TABLE otel_items (id int, name text)")
        .await
        .check("create")?;

    // A query: operation and collection from the SQL, the span named after both.
    let rows = c
        .query(
            "SELECT id FROM otel_items WHERE id = $1 OR name = $2",
            &[&SECRET_NUMBER, &SECRET_TEXT],
        )
        .await
        .check("select")?;
    ensure_eq!(rows.len(), 0);
    let select = log.one("request", "kind", "query")?;
    select.expect(&server)?;
    select.expect(&[
        ("db.operation.name", Some("SELECT")),
        ("db.collection.name", Some("otel_items")),
        ("otel.name", Some("SELECT otel_items")),
        ("db.query.text", None),
        ("error.type", None),
        ("db.response.status_code", None),
        ("otel.status_code", None),
    ])?;

    // A failing query: its SQLSTATE twice, and an error status.
    let failed = c.query_one("SELECT 1 / $1::int", &[&0i32]).await;
    ensure!(failed.is_err(), "1/0 succeeded");
    let failing = log.one("request", "db.response.status_code", "22012")?;
    failing.expect(&server)?;
    failing.expect(&[
        ("kind", Some("query")),
        ("db.operation.name", Some("SELECT")),
        ("db.collection.name", None),
        ("otel.name", Some("SELECT postgres")),
        ("error.type", Some("22012")),
        ("otel.status_code", Some("ERROR")),
    ])?;

    // A pipeline of three inserts: one span for the batch.
    let names = [SECRET_TEXT, "two", "three"];
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    let ids = [1i32, 2, 3];
    for (id, name) in ids.iter().zip(&names) {
        pipeline.push("INSERT INTO otel_items VALUES ($1, $2)", &[id, name]);
    }
    let outputs = c.run_pipeline(&pipeline).await.check("pipeline")?;
    ensure!(outputs.iter().all(Result::is_ok), "{outputs:?}");
    let batch = log.one("request", "kind", "pipeline")?;
    batch.expect(&server)?;
    batch.expect(&[
        ("db.operation.batch.size", Some("3")),
        ("db.operation.name", Some("BATCH INSERT")),
        ("db.collection.name", Some("otel_items")),
        ("otel.name", Some("BATCH INSERT otel_items")),
        ("error.type", None),
    ])?;

    // A COPY.
    let mut writer = c
        .copy_in("COPY otel_items (id, name) FROM STDIN")
        .await
        .check("copy_in")?;
    writer.write(b"4\tfour\n5\tfive\n").await.check("write")?;
    ensure_eq!(writer.finish().await.check("finish")?, 2);
    let copy = log.one("request", "kind", "copy_in")?;
    copy.expect(&server)?;
    copy.expect(&[
        ("db.operation.name", Some("COPY")),
        ("db.collection.name", Some("otel_items")),
        ("otel.name", Some("COPY otel_items")),
        ("error.type", None),
    ])?;

    // A transaction: one parent for its BEGIN, its statements and its COMMIT.
    let tx = c.transaction().await.check("begin")?;
    tx.execute(
        "UPDATE otel_items SET name = $1 WHERE id = 2",
        &[&SECRET_TEXT],
    )
    .await
    .check("update")?;
    tx.commit().await.check("commit")?;
    let transaction = log.one("transaction", "outcome", "commit")?;
    transaction.expect(&server)?;
    transaction.expect(&[
        ("otel.name", Some("TRANSACTION postgres")),
        ("error.type", None),
    ])?;
    for (kind, operation) in [
        ("begin", "BEGIN"),
        ("execute", "UPDATE"),
        ("commit", "COMMIT"),
    ] {
        let child = log.one("request", "kind", kind)?;
        ensure_eq!(child.parent, Some(transaction.id));
        child.expect(&[("db.operation.name", Some(operation))])?;
    }
    // Outside the transaction again, a request has no transaction parent.
    c.execute("DELETE FROM otel_items WHERE id = 5", &[])
        .await
        .check("delete")?;
    let delete = log.one("request", "db.operation.name", "DELETE")?;
    ensure_eq!(delete.parent, None);

    no_parameters(&log)?;
    c.close().await.check("close")?;
    Ok(format!("{} spans", log.spans().len()))
}

/// The SQL text only with trace_statements, and parameters never.
async fn query_text_only_when_asked(env: &Env) -> Outcome {
    let log = SpanLog::default();
    let _subscriber = tracing::dispatcher::set_default(&tracing::Dispatch::new(log.clone()));
    let c = env.connect("").await?;
    let sql = "SELECT $1::text, $2::int4";
    c.query(sql, &[&SECRET_TEXT, &SECRET_NUMBER])
        .await
        .check("without")?;
    let mut config = env.config("")?;
    config.trace_statements(true);
    let traced = Client::connect(&config).await.check("connect")?;
    traced
        .query(sql, &[&SECRET_TEXT, &SECRET_NUMBER])
        .await
        .check("with")?;
    let statement = traced
        .prepare("SELECT $1::int4 + 1")
        .await
        .check("prepare")?;
    traced
        .query_one(&statement, &[&SECRET_NUMBER])
        .await
        .check("prepared")?;
    let texts: Vec<Option<String>> = log
        .spans()
        .iter()
        .filter(|s| s.name == "request" && s.field("kind") == Some("query"))
        .map(|s| s.field("db.query.text").map(String::from))
        .collect();
    ensure_eq!(
        texts,
        vec![
            None,
            Some(sql.to_string()),
            Some("SELECT $1::int4 + 1".to_string())
        ]
    );
    no_parameters(&log)?;
    c.close().await.check("close")?;
    traced.close().await.check("close").map(|()| String::new())
}

/// A connection refused: the attempt's span carries `error.type` and an error status.
async fn connect_to_a_closed_port(env: &Env) -> Outcome {
    let log = SpanLog::default();
    let _subscriber = tracing::dispatcher::set_default(&tracing::Dispatch::new(log.clone()));
    let config = Config::parse(&format!(
        "host={} port={} user=nobody dbname=postgres connect_timeout=10",
        env.host, env.closed_port
    ))
    .check("config")?;
    let refused = Client::connect(&config).await;
    ensure!(refused.is_err(), "connected to a closed port");
    let connect = log.one("connect", "server.port", &env.closed_port.to_string())?;
    connect.expect(&[
        ("otel.kind", Some("client")),
        ("db.system.name", Some("postgresql")),
        ("db.namespace", Some("postgres")),
        ("server.address", Some(env.host.as_str())),
        ("otel.status_code", Some("ERROR")),
        ("otel.name", Some("connect postgres")),
    ])?;
    let error_type = connect.field("error.type").unwrap_or_default().to_string();
    ensure!(
        error_type == "connection_refused",
        "error.type is {error_type:?}"
    );
    Ok(format!("error.type={error_type}"))
}

/// `db.client.operation.duration`: one sample per operation, labelled with the operation, and with the
/// SQLSTATE when it failed.
async fn operation_duration(env: &Env) -> Outcome {
    let metrics = MetricLog::default();
    let _recorder = metrics::set_default_local_recorder(&metrics);
    let c = env.connect("").await?;
    for _ in 0..3 {
        c.query("SELECT 1 FROM pg_class LIMIT 1", &[])
            .await
            .check("select")?;
    }
    let failed = c.execute("SELECT 1 / 0", &[]).await;
    ensure!(failed.is_err(), "1/0 succeeded");
    let port = env.port.to_string();
    let base = [
        ("db.system.name", "postgresql"),
        ("db.namespace", "postgres"),
        ("server.address", env.host.as_str()),
        ("server.port", port.as_str()),
        ("db.operation.name", "SELECT"),
    ];
    let ok = metrics.find(
        "db.client.operation.duration",
        &[&base[..], &[("db.collection.name", "pg_class")]].concat(),
    );
    ensure_eq!(ok.len(), 1);
    ensure!(ok[0].label("error.type").is_none(), "{:?}", ok[0].labels);
    let samples = ok[0].values();
    ensure_eq!(samples.len(), 3);
    ensure!(
        samples.iter().all(|&s| s > 0.0 && s < 60.0),
        "durations in seconds: {samples:?}"
    );
    let failed = metrics.values(
        "db.client.operation.duration",
        &[
            &base[..],
            &[
                ("error.type", "22012"),
                ("db.response.status_code", "22012"),
            ],
        ]
        .concat(),
    )?;
    ensure_eq!(failed.len(), 1);
    c.close().await.check("close")?;
    Ok(format!("{:.2} ms first", samples[0] * 1000.0))
}

/// 20 tasks on a pool of 5: the gauges never pass 5 used, the waiters show, every get is timed, exactly 5
/// connections are created; then a get that cannot be served times out and is counted.
async fn pool_metrics_under_load(env: &Env) -> Outcome {
    const TASKS: usize = 20;
    const MAX: usize = 5;
    let metrics = MetricLog::default();
    let _recorder = metrics::set_default_local_recorder(&metrics);
    let options = PoolOptions::new()
        .max_size(MAX)
        .acquire_timeout(Some(Duration::from_secs(60)));
    let pool = Pool::new(env.config("application_name=otel_pool")?, options).check("pool")?;
    let tasks = (0..TASKS).map(|i| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await.check("get")?;
            client
                .query_one("SELECT pg_sleep(0.2), $1::int", &[&(i as i32)])
                .await
                .check("query")?;
            Ok::<(), String>(())
        }
    });
    for result in futures::future::join_all(tasks).await {
        result?;
    }

    let name = format!("{}:{}/postgres", env.host, env.port);
    let pool_label = [("db.client.connection.pool.name", name.as_str())];
    let used = metrics.values(
        "db.client.connection.count",
        &[&pool_label[..], &[("db.client.connection.state", "used")]].concat(),
    )?;
    let idle = metrics.values(
        "db.client.connection.count",
        &[&pool_label[..], &[("db.client.connection.state", "idle")]].concat(),
    )?;
    let pending = metrics.values("db.client.connection.pending_requests", &pool_label)?;
    let max = metrics.values("db.client.connection.max", &pool_label)?;
    let wait = metrics.values("db.client.connection.wait_time", &pool_label)?;
    let create = metrics.values("db.client.connection.create_time", &pool_label)?;
    let peak = |values: &[f64]| values.iter().copied().fold(0.0, f64::max);
    ensure!(max.iter().all(|&m| m == MAX as f64), "max: {max:?}");
    ensure_eq!(peak(&used), MAX as f64);
    let most_waiting = peak(&pending);
    ensure!(
        (1.0..TASKS as f64).contains(&most_waiting),
        "waiting at most {most_waiting}: {pending:?}"
    );
    ensure_eq!(wait.len(), TASKS);
    ensure_eq!(create.len(), MAX);
    ensure!(
        wait.iter()
            .chain(&create)
            .all(|&s| (0.0..60.0).contains(&s)),
        "seconds: {wait:?} {create:?}"
    );
    // Every task returned its connection.
    ensure_eq!(used.last().copied(), Some(0.0));
    ensure_eq!(idle.last().copied(), Some(MAX as f64));
    ensure_eq!(pending.last().copied(), Some(0.0));
    ensure!(
        metrics
            .find("db.client.connection.timeouts", &pool_label)
            .is_empty(),
        "a timeout under load"
    );

    // All five held: a get with a short acquire_timeout times out, and is counted.
    let short = Pool::new(
        env.config("application_name=otel_pool_short")?,
        PoolOptions::new()
            .max_size(1)
            .acquire_timeout(Some(Duration::from_millis(100))),
    )
    .check("short pool")?;
    let held = short.get().await.check("hold")?;
    let timed_out = short.get().await;
    ensure!(timed_out.is_err(), "a second connection from a pool of one");
    drop(held);
    let timeouts = metrics.values("db.client.connection.timeouts", &pool_label)?;
    ensure_eq!(timeouts, vec![1.0]);
    Ok(format!(
        "peak used {}, peak pending {}, {} waits, {} creates",
        peak(&used),
        peak(&pending),
        wait.len(),
        create.len()
    ))
}

type Case = fn(&Env) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + '_>>;

fn all_cases() -> Vec<(&'static str, Case)> {
    vec![
        ("operation_spans", |env| Box::pin(operation_spans(env))),
        ("query_text_only_when_asked", |env| {
            Box::pin(query_text_only_when_asked(env))
        }),
        ("connect_to_a_closed_port", |env| {
            Box::pin(connect_to_a_closed_port(env))
        }),
        ("operation_duration", |env| {
            Box::pin(operation_duration(env))
        }),
        ("pool_metrics_under_load", |env| {
            Box::pin(pool_metrics_under_load(env))
        }),
    ]
}

async fn run_case(case: Case, env: &Env) -> Outcome {
    match with_timeout(CASE_TIMEOUT, case(env)).await {
        Some(outcome) => outcome,
        None => Err(format!("hung for {CASE_TIMEOUT:?}")),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The two harnesses.
// ---------------------------------------------------------------------------------------------------------

const CONNINFO_VAR: &str = "OTEL_CONNINFO";
const HOST_VAR: &str = "OTEL_HOST";
const PORT_VAR: &str = "OTEL_PORT";
const CLOSED_PORT_VAR: &str = "OTEL_CLOSED_PORT";

#[cfg(not(target_os = "wasi"))]
fn main() {
    // `run` returns before the exit, so the cluster is stopped either way.
    run().finish("otel");
}

/// Runs every case natively, then under wasmtime (WASI 0.2, then 0.3).
#[cfg(not(target_os = "wasi"))]
fn run() -> two_target::Totals {
    use support::{Cluster, Role};
    use two_target::{Guest, Tally, Totals};

    let build = Guest::build_in_background();
    let cluster = Cluster::start();
    let env = Env {
        conninfo: format!("{} dbname=postgres", cluster.conninfo(Role::Trust)),
        host: cluster.host.clone(),
        port: cluster.port,
        closed_port: support::free_port(),
    };
    let guest = build.wait();
    let mut native = Tally::native();
    let runtime = two_target::native_runtime();
    for (name, case) in all_cases() {
        native.record(name, runtime.block_on(run_case(case, &env)));
    }
    drop(runtime);
    native.end();

    let port = env.port.to_string();
    let closed = env.closed_port.to_string();
    let vars = [
        (CONNINFO_VAR, env.conninfo.as_str()),
        (HOST_VAR, env.host.as_str()),
        (PORT_VAR, port.as_str()),
        (CLOSED_PORT_VAR, closed.as_str()),
    ];
    let run_guest = |guest: Guest| {
        let mut tally = Tally::for_guest(&guest);
        let run = guest.run(&vars, &[]);
        tally.record_guest(&run, all_cases().into_iter().map(|(name, _)| name));
        tally.end();
        tally
    };
    let wasm = run_guest(guest);
    let wasi_p3 = run_guest(Guest::build_p3());
    Totals {
        native,
        wasm,
        wasi_p3,
        notes: Vec::new(),
    }
}

#[cfg(target_os = "wasi")]
fn main() {
    let env = Env {
        conninfo: two_target::guest_var(CONNINFO_VAR),
        host: two_target::guest_var(HOST_VAR),
        port: two_target::guest_port(PORT_VAR),
        closed_port: two_target::guest_port(CLOSED_PORT_VAR),
    };
    for (name, case) in all_cases() {
        two_target::run_in_guest(name, run_case(case, &env));
    }
}
