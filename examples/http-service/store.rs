//! The database side: the instance's connection, the table, and the three queries.

use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

use wasi_pg_client::types::Type;
use wasi_pg_client::{Client, Config, Error, ErrorKind, Row};

/// How long connecting may take when the configuration sets no `connect_timeout`: a request must not hang
/// on an address that swallows packets.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `application_name` unless the configuration sets one, so the sessions are easy to find in
/// `pg_stat_activity`.
const APPLICATION_NAME: &str = "wasi-pg-http-service";

/// Run once per connection, as one simple query and so one implicit transaction. Two instances starting at
/// once could otherwise both find the table missing and one fail on pg_type's unique index; the advisory lock
/// (an arbitrary key of this example's own) makes the second wait for the first. `SET LOCAL` silences the
/// "already exists, skipping" notice and ends with the transaction.
const SCHEMA: &str = "SET LOCAL client_min_messages = warning; \
     SELECT pg_advisory_xact_lock(8150620010); \
     CREATE TABLE IF NOT EXISTS items (id bigserial primary key, name text not null)";

thread_local! {
    /// The connection between requests of one instance (main.rs says when an instance has more than one). A request
    /// takes it out and puts it back when done, so a request whose future is dropped halfway leaves the slot
    /// empty rather than holding a half-used connection.
    static IDLE: RefCell<Option<Client>> = const { RefCell::new(None) };
}

/// An item as stored.
pub(crate) struct Item {
    pub(crate) id: i64,
    pub(crate) name: String,
}

impl Item {
    fn from_row(row: &Row) -> Result<Item, Error> {
        Ok(Item {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
        })
    }
}

/// Why the database could not answer; the HTTP side picks the status from the variant.
pub(crate) enum StoreError {
    /// PostgreSQL cannot be reached, or the connection broke: trying again later may work.
    Unavailable(Error),
    /// Anything else the client reports: the configuration, the schema, an unexpected server error.
    Failed(Error),
    /// Something this example checks itself went wrong.
    Other(&'static str),
}

impl StoreError {
    fn from_connect(error: Error) -> StoreError {
        match error.kind() {
            // A connection string we cannot use will not start working by waiting.
            ErrorKind::Config | ErrorKind::Unsupported => StoreError::Failed(error),
            _ => StoreError::Unavailable(error),
        }
    }

    fn from_query(error: Error) -> StoreError {
        let gone = error.is_connection_broken()
            || matches!(
                error.kind(),
                ErrorKind::Io | ErrorKind::Timeout | ErrorKind::Closed
            );
        if gone {
            StoreError::Unavailable(error)
        } else {
            StoreError::Failed(error)
        }
    }
}

/// For stderr only: the client's errors name hosts and users, never the password.
impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(e) => write!(f, "database unavailable: {e}"),
            StoreError::Failed(e) => write!(f, "database error: {e}"),
            StoreError::Other(what) => f.write_str(what),
        }
    }
}

/// Every item, by id.
pub(crate) async fn list_items() -> Result<Vec<Item>, StoreError> {
    with_client(Retry::Idempotent, async |client| {
        let rows = client
            .query_typed("SELECT id, name FROM items ORDER BY id", &[])
            .await?;
        rows.iter().map(Item::from_row).collect()
    })
    .await
}

/// The item with this id, if there is one.
pub(crate) async fn get_item(id: i64) -> Result<Option<Item>, StoreError> {
    with_client(Retry::Idempotent, async |client| {
        let rows = client
            .query_typed(
                "SELECT id, name FROM items WHERE id = $1",
                &[(&id, Type::INT8)],
            )
            .await?;
        rows.first().map(Item::from_row).transpose()
    })
    .await
}

/// Inserts an item and returns it with its new id.
pub(crate) async fn create_item(name: &str) -> Result<Item, StoreError> {
    let created = with_client(Retry::Never, async |client| {
        let rows = client
            .query_typed(
                "INSERT INTO items (name) VALUES ($1) RETURNING id, name",
                &[(&name, Type::TEXT)],
            )
            .await?;
        rows.first().map(Item::from_row).transpose()
    })
    .await?;
    created.ok_or(StoreError::Other("INSERT ... RETURNING returned no row"))
}

/// Whether an operation may run a second time after the kept connection turned out to be broken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// It only reads: running it twice is harmless.
    Idempotent,
    /// It writes, and may have committed before the connection broke.
    Never,
}

/// Runs `op` on the instance's kept connection, or on a new one, and keeps the connection for the next
/// request if it is still usable.
async fn with_client<T>(
    retry: Retry,
    mut op: impl AsyncFnMut(&mut Client) -> Result<T, Error>,
) -> Result<T, StoreError> {
    let kept = IDLE.with(|slot| slot.borrow_mut().take());
    let (mut client, reused) = match kept.filter(|client| !client.is_closed()) {
        Some(client) => (client, true),
        None => (connect().await?, false),
    };
    let mut result = op(&mut client).await;
    if let Err(e) = &result
        && reused
        && retry == Retry::Idempotent
        && e.is_connection_broken()
    {
        crate::log_line(format_args!(
            "the kept connection is broken ({e}); retrying on a new one"
        ));
        client = connect().await?;
        result = op(&mut client).await;
    }
    let broken = client.is_closed() || matches!(&result, Err(e) if e.is_connection_broken());
    if !broken {
        IDLE.with(|slot| *slot.borrow_mut() = Some(client));
    }
    result.map_err(StoreError::from_query)
}

/// Connects with the environment's settings and makes sure the table exists.
async fn connect() -> Result<Client, StoreError> {
    let config = config()?;
    let client = Client::connect(&config)
        .await
        .map_err(StoreError::from_connect)?;
    client
        .batch_execute(SCHEMA)
        .await
        .map_err(StoreError::from_query)?;
    crate::log_line(format_args!(
        "connected to PostgreSQL {} (backend pid {})",
        client.parameter("server_version").as_deref().unwrap_or("?"),
        client.backend_pid().unwrap_or(0)
    ));
    Ok(client)
}

/// `DATABASE_URL` (may be unset or empty), completed by the `PG*` variables as libpq does.
fn config() -> Result<Config, StoreError> {
    let conninfo = match std::env::var("DATABASE_URL") {
        Ok(conninfo) => conninfo,
        Err(std::env::VarError::NotPresent) => String::new(),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(StoreError::Other("DATABASE_URL is not valid UTF-8"));
        }
    };
    let mut config = Config::from_conninfo_and_env(&conninfo).map_err(StoreError::Failed)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_fallback_application_name().is_none() {
        config.fallback_application_name(APPLICATION_NAME);
    }
    Ok(config)
}
