//! Connect (DATABASE_URL, or the PG* environment), create a table, insert with parameters, select, print.
//!
//! Native: `DATABASE_URL=postgresql://user:pw@localhost/db cargo run --example quickstart`
//! WASI:   `wasmtime run -S inherit-network -S allow-ip-name-lookup --env DATABASE_URL=... quickstart.wasm`
//!         (WASI 0.2 by default; built with `--features wasip3` it exports `wasi:cli/run@0.3` and runs on 0.3)

use wasi_pg_client::{Client, Config, Error};

async fn run() -> Result<(), Error> {
    let conninfo = std::env::var("DATABASE_URL").unwrap_or_default();
    let config = Config::from_conninfo_and_env(&conninfo)?;
    let client = Client::connect(&config).await?;
    println!(
        "connected to PostgreSQL {} (backend pid {})",
        client.parameter("server_version").as_deref().unwrap_or("?"),
        client.backend_pid().unwrap_or(0)
    );

    client
        .batch_execute("CREATE TEMPORARY TABLE fruit (id serial PRIMARY KEY, name text NOT NULL, price float8)")
        .await?;
    let insert = client
        .prepare("INSERT INTO fruit (name, price) VALUES ($1, $2)")
        .await?;
    for (name, price) in [
        ("apple", Some(0.5f64)),
        ("banana", Some(0.25)),
        ("cherry", None),
    ] {
        client.execute(&insert, &[&name, &price]).await?;
    }

    for row in client
        .query("SELECT id, name, price FROM fruit ORDER BY id", &[])
        .await?
    {
        let id: i32 = row.get("id");
        let name: &str = row.get("name");
        let price: Option<f64> = row.get("price");
        match price {
            Some(price) => println!("{id}: {name} costs {price:.2}"),
            None => println!("{id}: {name} has no price"),
        }
    }

    let count: i64 = client
        .query_one("SELECT count(*) FROM fruit", &[])
        .await?
        .get(0);
    println!("{count} rows");
    client.close().await
}

fn report(result: Result<(), Error>) {
    if let Err(e) = result {
        eprintln!("quickstart failed: {e}");
        std::process::exit(1);
    }
}

#[cfg(all(target_os = "wasi", not(feature = "wasip3")))]
#[wstd::main]
async fn main() {
    report(run().await);
}

/// WASI 0.3 (`--features wasip3`): the component exports `wasi:cli/run@0.3`, which wasmtime calls instead of
/// `main`, and `run` is awaited inside wit-bindgen's task.
#[cfg(all(target_os = "wasi", feature = "wasip3"))]
mod wasi_p3 {
    struct Quickstart;

    impl wasip3::exports::cli::run::Guest for Quickstart {
        async fn run() -> Result<(), ()> {
            super::report(super::run().await);
            Ok(())
        }
    }

    wasip3::cli::command::export!(Quickstart);
}

/// Never called on WASI 0.3: the host runs the exported `wasi:cli/run@0.3` instead.
#[cfg(all(target_os = "wasi", feature = "wasip3"))]
fn main() {}

#[cfg(not(target_os = "wasi"))]
#[tokio::main(flavor = "current_thread")]
async fn main() {
    report(run().await);
}
