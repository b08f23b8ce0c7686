//! The client's OpenTelemetry spans and metrics, printed to stdout: what an exporter would send.
//!
//! Spans: a `tracing-subscriber` fmt layer prints each span of the client when it closes, with its fields
//! (`otel.name`, `db.operation.name`, `db.collection.name`, `server.address`, `error.type`, ...), for the
//! operations below: a query, a failing query, a pipeline, a COPY and a transaction. An application exporting
//! to an OpenTelemetry collector puts `tracing_opentelemetry::layer()` where this puts the fmt layer: the
//! field names are the conventions' attributes, `otel.name` becomes the span name and `otel.kind` its kind.
//!
//! Metrics: a `metrics` recorder that prints each measurement (`db.client.operation.duration` in seconds, and
//! the pool's `db.client.connection.*`). An application installs its exporter's recorder instead
//! (metrics-exporter-prometheus, or a bridge to the OpenTelemetry SDK).
//!
//! Native: `DATABASE_URL=postgresql://user:pw@localhost/db cargo run --example otel`
//! WASI:   `wasmtime run -S inherit-network -S allow-ip-name-lookup --env DATABASE_URL=... otel.wasm`
//!         (WASI 0.2 by default; built with `--features wasip3` it exports `wasi:cli/run@0.3` and runs on 0.3)

use std::sync::Arc;

use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName};
use metrics::{Metadata, Recorder, SharedString, Unit};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::prelude::*;
use wasi_pg_client::pool::{Pool, PoolOptions};
use wasi_pg_client::{Client, Config, Error, Pipeline, PipelineMode};

/// Prints every measurement as `metric <name>{<labels>} <kind> <value>`.
struct PrintRecorder;

/// One series of [`PrintRecorder`]: its key, printed with each value.
struct Printed {
    key: String,
}

impl Printed {
    fn new(key: &Key) -> Arc<Printed> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={:?}", l.key(), l.value()))
            .collect();
        Arc::new(Printed {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
        })
    }
}

impl CounterFn for Printed {
    fn increment(&self, value: u64) {
        println!("metric {} counter +{value}", self.key);
    }
    fn absolute(&self, value: u64) {
        println!("metric {} counter ={value}", self.key);
    }
}

impl GaugeFn for Printed {
    fn increment(&self, value: f64) {
        println!("metric {} gauge +{value}", self.key);
    }
    fn decrement(&self, value: f64) {
        println!("metric {} gauge -{value}", self.key);
    }
    fn set(&self, value: f64) {
        println!("metric {} gauge ={value}", self.key);
    }
}

impl HistogramFn for Printed {
    fn record(&self, value: f64) {
        println!("metric {} histogram {value:.6}", self.key);
    }
}

impl Recorder for PrintRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Printed::new(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Printed::new(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Printed::new(key))
    }
}

/// Spans of this crate at DEBUG (requests are DEBUG spans; connects INFO), printed when they close.
fn install_telemetry() {
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_span_events(FmtSpan::CLOSE)
                .with_writer(std::io::stdout)
                .with_ansi(false)
                .without_time(),
        )
        .with(Targets::new().with_target("wasi_pg_client", Level::DEBUG))
        .init();
    if metrics::set_global_recorder(PrintRecorder).is_err() {
        eprintln!("otel: a metrics recorder was already installed");
    }
}

async fn run() -> Result<(), Error> {
    let conninfo = std::env::var("DATABASE_URL").unwrap_or_default();
    let mut config = Config::from_conninfo_and_env(&conninfo)?;
    // The SQL text goes into the spans (`db.query.text`) only when asked for; parameters never do.
    config.trace_statements(true);
    let mut client = Client::connect(&config).await?;

    client
        .batch_execute("CREATE TEMPORARY TABLE fruit (id int PRIMARY KEY, name text NOT NULL)")
        .await?;
    client
        .execute("INSERT INTO fruit VALUES ($1, $2)", &[&1i32, &"apple"])
        .await?;
    if let Err(e) = client.query("SELECT 1 / 0 FROM fruit", &[]).await {
        println!("expected: {e}");
    }

    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    let rows = [(2i32, "pear"), (3, "plum"), (4, "fig")];
    for (id, name) in &rows {
        pipeline.push("INSERT INTO fruit VALUES ($1, $2)", &[id, name]);
    }
    client.run_pipeline(&pipeline).await?;

    let mut copy = client.copy_in("COPY fruit (id, name) FROM STDIN").await?;
    copy.write(b"5\tkiwi\n6\tlime\n").await?;
    copy.finish().await?;

    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE fruit SET name = upper(name) WHERE id = $1",
        &[&2i32],
    )
    .await?;
    tx.commit().await?;
    client.close().await?;

    // The pool's metrics: three callers sharing a pool of two.
    let pool = Pool::new(config, PoolOptions::new().max_size(2))?;
    let callers = (0..3).map(|i| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await?;
            client.query_one("SELECT $1::int", &[&i]).await.map(drop)
        }
    });
    for result in futures::future::join_all(callers).await {
        result?;
    }
    Ok(())
}

fn report(result: Result<(), Error>) {
    if let Err(e) = result {
        eprintln!("otel failed: {e}");
        std::process::exit(1);
    }
}

#[cfg(all(target_os = "wasi", not(feature = "wasip3")))]
#[wstd::main]
async fn main() {
    install_telemetry();
    report(run().await);
}

/// WASI 0.3 (`--features wasip3`): the component exports `wasi:cli/run@0.3`, which wasmtime calls instead of
/// `main`, and `run` is awaited inside wit-bindgen's task.
#[cfg(all(target_os = "wasi", feature = "wasip3"))]
mod wasi_p3 {
    struct Otel;

    impl wasip3::exports::cli::run::Guest for Otel {
        async fn run() -> Result<(), ()> {
            super::install_telemetry();
            super::report(super::run().await);
            Ok(())
        }
    }

    wasip3::cli::command::export!(Otel);
}

/// Never called on WASI 0.3: the host runs the exported `wasi:cli/run@0.3` instead.
#[cfg(all(target_os = "wasi", feature = "wasip3"))]
fn main() {}

#[cfg(not(target_os = "wasi"))]
#[tokio::main(flavor = "current_thread")]
async fn main() {
    install_telemetry();
    report(run().await);
}
