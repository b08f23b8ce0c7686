//! Connects with libpq's configuration (a conninfo string in DATABASE_URL, the PG* environment), says whether
//! the connection is encrypted, and runs one query.
//!
//! WASI:   `wasmtime run -S inherit-network -S allow-ip-name-lookup --dir CERTS::/certs \
//!          --env "DATABASE_URL=host=db.example sslmode=verify-full sslrootcert=/certs/root.crt" pg-app.wasm`
//! Native: `DATABASE_URL="host=db.example sslmode=verify-full sslrootcert=root.crt" cargo run`

use wasi_pg_client::{Client, Config, Error};

async fn run() -> Result<(), Error> {
    let conninfo = std::env::var("DATABASE_URL").unwrap_or_default();
    let config = Config::from_conninfo_and_env(&conninfo)?;
    let client = Client::connect(&config).await?;
    let row = client
        .query_one(
            "SELECT version(), coalesce((SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()), 'none')",
            &[],
        )
        .await?;
    let server: &str = row.get(0);
    let protocol: &str = row.get(1);
    println!("server: {server}");
    println!(
        "tls: {} (sslmode {:?}, the server reports {protocol})",
        if client.uses_tls() { "on" } else { "off" },
        config.get_ssl_mode()
    );
    client.close().await
}

fn report(result: Result<(), Error>) {
    if let Err(e) = result {
        eprintln!("pg-app: {e}");
        std::process::exit(1);
    }
}

#[cfg(target_os = "wasi")]
#[wstd::main]
async fn main() {
    report(run().await);
}

#[cfg(not(target_os = "wasi"))]
#[tokio::main(flavor = "current_thread")]
async fn main() {
    report(run().await);
}
