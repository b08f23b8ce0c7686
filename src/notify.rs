//! LISTEN/NOTIFY: subscribing, sending, and waiting for notifications.
//!
//! Notifications that arrive during other queries or while the connection is idle are kept in the client until
//! taken, never dropped. Waiting reads the socket itself (no background task), and its timeout really waits on
//! both targets: tokio's timer natively, a wasi:clocks pollable on WASI.

use std::time::Duration;

use crate::identifier::quote_identifier;
use crate::{Client, Error, Notification, runtime};

impl Client {
    /// Subscribes to `channel` (`LISTEN`). The name is quoted, so it keeps its case and may hold any character.
    pub async fn listen(&mut self, channel: &str) -> Result<(), Error> {
        self.batch_execute(&format!("LISTEN {}", quote_identifier(channel)))
            .await
    }

    /// Unsubscribes from `channel` (`UNLISTEN`).
    pub async fn unlisten(&mut self, channel: &str) -> Result<(), Error> {
        self.batch_execute(&format!("UNLISTEN {}", quote_identifier(channel)))
            .await
    }

    /// Unsubscribes from every channel (`UNLISTEN *`).
    pub async fn unlisten_all(&mut self) -> Result<(), Error> {
        self.batch_execute("UNLISTEN *").await
    }

    /// Sends a notification on `channel` with `payload` (through `pg_notify`, so both are parameters).
    pub async fn notify(&mut self, channel: &str, payload: &str) -> Result<(), Error> {
        self.execute("SELECT pg_catalog.pg_notify($1, $2)", &[&channel, &payload])
            .await
            .map(drop)
    }

    /// Waits for the next notification: one already received, or the next one the server sends.
    ///
    /// Cancel-safe: if the future is dropped, no notification is lost.
    pub async fn next_notification(&mut self) -> Result<Notification, Error> {
        self.prepare_to_send().await?;
        self.connection_mut().next_notification().await
    }

    /// Waits up to `timeout` for the next notification; `Ok(None)` if none came in time.
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// client.listen("jobs").await?;
    /// while let Some(n) = client.wait_for_notification(std::time::Duration::from_secs(30)).await? {
    ///     println!("{} from {}: {}", n.channel(), n.process_id(), n.payload());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_notification(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Notification>, Error> {
        match runtime::timeout(Some(timeout), self.next_notification()).await {
            Ok(result) => result.map(Some),
            Err(()) => Ok(None),
        }
    }
}
