//! `http-shared`: a wasi:http@0.3 handler (`--features wasip3`) whose concurrent requests share one instance's
//! `Client` and `Pool`.
//!
//! ```text
//! GET /shared?ms=N   200  {"instance":..., "request":..., "in_flight":..., "backend_pid":..., "ms":N}
//! GET /pool?ms=N     200  the same, on a connection taken from the instance's pool (max 4)
//! ```
//!
//! Each request runs `SELECT pg_backend_pid() FROM pg_sleep(N / 1000.0)` (N at most 10000, default 0). On
//! `/shared` every request of the instance goes through one `&Client`: concurrent requests are pipelined on
//! its one connection, so `backend_pid` is the same for all of them. `instance` is drawn at random when the
//! instance starts, `request` counts the instance's requests, and `in_flight` says how many of its requests
//! (this one included) were running when this one started: above 1 means the host ran requests concurrently
//! in one instance. Failures answer 503 or 500 with `{"error": "..."}`; details go to stderr.
//!
//! # Running it
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2 --features wasip3 --example http-shared
//! wasmtime serve -S cli -S inherit-network -S allow-ip-name-lookup --addr 127.0.0.1:8080 \
//!     --env DATABASE_URL=postgresql://app@localhost/app \
//!     target/wasm32-wasip2/release/examples/http-shared.wasm
//! for i in 1 2 3 4; do curl -s 'localhost:8080/shared?ms=200' & done; wait
//! ```
//!
//! `scripts/http-shared.sh` does this against a throwaway cluster and counts instances and connections.
//! WASI 0.3 hosts may run several requests in one instance at once: `wasmtime serve` 48 reuses a 0.3
//! instance for up to 128 requests, up to 16 at a time (`--max-instance-reuse-count`,
//! `--max-instance-concurrent-reuse-count`) and drops it after 1 s idle (`--idle-instance-timeout`).
//!
//! Natively and on WASI 0.2 this example only explains that and exits with status 2.

#[cfg(all(target_os = "wasi", feature = "wasip3"))]
mod handler {
    use std::cell::{Cell, OnceCell};
    use std::rc::Rc;
    use std::time::Duration;

    use wasi_pg_client::pool::{Pool, PoolOptions};
    use wasi_pg_client::{Client, Config, Error};
    use wasip3::http::types::{ErrorCode, Fields, Request, Response};
    use wasip3::{wit_future, wit_stream};

    /// What the instance keeps between requests: its id, counters, the shared client and the pool.
    struct Instance {
        id: u64,
        requests: Cell<u64>,
        in_flight: Cell<u64>,
        /// Connected by the first request that needs it; a broken one is replaced by the next request.
        shared: async_cell::Slot<Rc<Client>>,
        pool: OnceCell<Pool>,
    }

    thread_local! {
        static INSTANCE: Rc<Instance> = Rc::new(Instance {
            id: wasip3::random::random::get_random_u64() >> 16,
            requests: Cell::new(0),
            in_flight: Cell::new(0),
            shared: async_cell::Slot::new(),
            pool: OnceCell::new(),
        });
    }

    mod async_cell {
        //! A slot filled once by whichever concurrent request gets there first; the others wait for it.
        use std::cell::RefCell;

        use wasi_pg_client::Error;

        pub(super) struct Slot<T> {
            value: RefCell<Option<T>>,
            filling: std::cell::Cell<bool>,
        }

        impl<T: Clone> Slot<T> {
            pub(super) fn new() -> Self {
                Slot {
                    value: RefCell::new(None),
                    filling: std::cell::Cell::new(false),
                }
            }

            /// The value, made by `make` if there is none (one request makes it; the others poll until it is
            /// there or the maker failed, then try themselves).
            pub(super) async fn get_or_make<F, Fut>(&self, make: F) -> Result<T, Error>
            where
                F: Fn() -> Fut,
                Fut: std::future::Future<Output = Result<T, Error>>,
            {
                loop {
                    if let Some(value) = self.value.borrow().clone() {
                        return Ok(value);
                    }
                    if !self.filling.replace(true) {
                        let made = make().await;
                        self.filling.set(false);
                        let value = made?;
                        *self.value.borrow_mut() = Some(value.clone());
                        return Ok(value);
                    }
                    wasip3::clocks::monotonic_clock::wait_for(1_000_000).await;
                }
            }

            /// Empties the slot (its value broke).
            pub(super) fn clear(&self) {
                self.value.borrow_mut().take();
            }
        }
    }

    fn config() -> Result<Config, Error> {
        let url = std::env::var("DATABASE_URL").unwrap_or_default();
        let mut config = Config::from_conninfo_and_env(&url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        Ok(config)
    }

    /// The milliseconds to sleep from `?ms=N`, at most 10 s.
    fn sleep_ms(path_with_query: &str) -> Result<u64, String> {
        let Some((_, query)) = path_with_query.split_once('?') else {
            return Ok(0);
        };
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("ms=") {
                return match value.parse::<u64>() {
                    Ok(ms) if ms <= 10_000 => Ok(ms),
                    _ => Err(format!(
                        "ms must be an integer from 0 to 10000, not {value:?}"
                    )),
                };
            }
        }
        Ok(0)
    }

    async fn backend_pid(client: &Client, ms: u64) -> Result<i32, Error> {
        // ms is at most 10 000: exact as f64.
        let seconds = ms as f64 / 1000.0;
        let row = client
            .query_one("SELECT pg_backend_pid() FROM pg_sleep($1)", &[&seconds])
            .await?;
        row.try_get(0)
    }

    /// Runs the request's query on the shared client or a pooled one.
    async fn run(instance: &Instance, route: &str, ms: u64) -> Result<i32, Error> {
        match route {
            "/shared" => {
                let client = instance
                    .shared
                    .get_or_make(|| async { Client::connect(&config()?).await.map(Rc::new) })
                    .await?;
                let result = backend_pid(&client, ms).await;
                if client.is_closed() {
                    instance.shared.clear();
                }
                result
            }
            _ => {
                let pool = match instance.pool.get() {
                    Some(pool) => pool,
                    None => {
                        let pool = Pool::new(config()?, PoolOptions::new().max_size(4))?;
                        instance.pool.get_or_init(|| pool)
                    }
                };
                let client = pool.get().await?;
                backend_pid(&client, ms).await
            }
        }
    }

    fn respond(status: u16, body: String) -> Result<Response, ErrorCode> {
        let headers =
            Fields::from_list(&[("content-type".to_string(), b"application/json".to_vec())])
                .map_err(|e| ErrorCode::InternalError(Some(format!("headers: {e:?}"))))?;
        let (mut body_writer, body_reader) = wit_stream::new();
        let (trailers_writer, trailers_reader) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(body_reader), trailers_reader);
        drop(trailers_writer);
        response
            .set_status_code(status)
            .map_err(|()| ErrorCode::InternalError(Some("bad status code".to_string())))?;
        // The body goes out after the response is returned, in a task of this request.
        wasip3::spawn_local(async move {
            let unsent = body_writer.write_all(body.into_bytes()).await;
            if !unsent.is_empty() {
                eprintln!("http-shared: the client went away before the body was sent");
            }
        });
        Ok(response)
    }

    pub(super) struct Service;

    impl wasip3::exports::http::handler::Guest for Service {
        async fn handle(request: Request) -> Result<Response, ErrorCode> {
            let instance = INSTANCE.with(Rc::clone);
            let number = instance.requests.get() + 1;
            instance.requests.set(number);
            let in_flight = instance.in_flight.get() + 1;
            instance.in_flight.set(in_flight);
            let path = request.get_path_with_query().unwrap_or_default();
            let route = path.split('?').next().unwrap_or_default().to_string();
            let outcome = match (route.as_str(), sleep_ms(&path)) {
                ("/shared" | "/pool", Ok(ms)) => match run(&instance, &route, ms).await {
                    Ok(pid) => Ok((200, pid, ms)),
                    Err(e) => {
                        eprintln!("http-shared: request {number} of {}: {e}", instance.id);
                        let status = if e.is_connection_broken() { 503 } else { 500 };
                        Err((status, "the database request failed".to_string()))
                    }
                },
                ("/shared" | "/pool", Err(why)) => Err((400, why)),
                _ => Err((404, "no such path; try /shared or /pool".to_string())),
            };
            instance.in_flight.set(instance.in_flight.get() - 1);
            match outcome {
                Ok((status, pid, ms)) => respond(
                    status,
                    format!(
                        "{{\"instance\":{},\"request\":{number},\"in_flight\":{in_flight},\"backend_pid\":{pid},\"ms\":{ms}}}",
                        instance.id
                    ),
                ),
                Err((status, why)) => respond(
                    status,
                    format!("{{\"error\":{why:?},\"instance\":{}}}", instance.id),
                ),
            }
        }
    }

    wasip3::http::service::export!(Service);
}

fn main() {
    // On WASI 0.3 the host calls the exported handler and never this.
    eprintln!(
        "http-shared is a wasi:http@0.3 component: build it with \
         `cargo build --release --target wasm32-wasip2 --features wasip3 --example http-shared` \
         and run it with `wasmtime serve` (see its documentation)"
    );
    std::process::exit(2);
}
