//! LISTEN/NOTIFY and notices: subscribing, sending, waiting for notifications, and where notices go.
//!
//! Notifications that arrive during other queries or while the connection is idle are kept in the client until
//! taken, never dropped. Waiting reads the socket itself (no background task), and its timeout really waits on
//! both targets: tokio's timer natively, a wasi:clocks pollable on WASI.
//!
//! Notices (`RAISE NOTICE`, warnings) are emitted as `tracing` events with the target `wasi_pg_client::notice`
//! (WARNING at level WARN, DEBUG and LOG at DEBUG, the rest at INFO), then handed to the handler set with
//! [`Client::set_notice_handler`], or kept for [`Client::take_notices`] when there is none.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use futures_core::Stream;
use futures_core::stream::FusedStream;

use crate::client::Driver;
use crate::client::identifier::quote_identifier;
use crate::transport::MaybeSend;
use crate::{Client, DbError, Error, Notification, transport::runtime};

impl Client {
    /// Subscribes to `channel` (`LISTEN`). The name is quoted, so it keeps its case and may hold any character.
    ///
    /// With [`Config::session_rebuild`](crate::Config::session_rebuild) the channel is subscribed again when
    /// the session is rebuilt. Inside a transaction block `LISTEN` takes effect at `COMMIT`; a rebuild restores
    /// the channels as `listen` and `unlisten` last asked, whether or not that transaction committed.
    pub async fn listen(&self, channel: &str) -> Result<(), Error> {
        self.batch_execute(&format!("LISTEN {}", quote_identifier(channel)))
            .await?;
        if let Some(session) = &mut self.lock().session {
            session.remember_listen(channel);
        }
        Ok(())
    }

    /// Unsubscribes from `channel` (`UNLISTEN`).
    pub async fn unlisten(&self, channel: &str) -> Result<(), Error> {
        self.batch_execute(&format!("UNLISTEN {}", quote_identifier(channel)))
            .await?;
        if let Some(session) = &mut self.lock().session {
            session.forget_listen(channel);
        }
        Ok(())
    }

    /// Unsubscribes from every channel (`UNLISTEN *`).
    pub async fn unlisten_all(&self) -> Result<(), Error> {
        self.batch_execute("UNLISTEN *").await?;
        if let Some(session) = &mut self.lock().session {
            session.forget_all_listens();
        }
        Ok(())
    }

    /// Sends a notification on `channel` with `payload` (through `pg_notify`, so both are parameters).
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), Error> {
        self.execute("SELECT pg_catalog.pg_notify($1, $2)", &[&channel, &payload])
            .await
            .map(drop)
    }

    /// Waits for the next notification: one already received, or the next one the server sends.
    ///
    /// Takes `&self`: a task can wait for notifications while others run queries on the same client, and
    /// whichever of them reads the socket keeps the notifications for it. With several waiting at once, each
    /// notification goes to one of them.
    ///
    /// Cancel-safe: if the future is dropped, no notification is lost.
    pub async fn next_notification(&self) -> Result<Notification, Error> {
        self.rebuild_if_lost().await?;
        let listener = Listener {
            client: self,
            id: self.lock().new_listener(),
        };
        std::future::poll_fn(|cx| listener.poll(cx)).await
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
        &self,
        timeout: Duration,
    ) -> Result<Option<Notification>, Error> {
        match runtime::timeout(Some(timeout), self.next_notification()).await {
            Ok(result) => result.map(Some),
            Err(()) => Ok(None),
        }
    }

    /// The notifications as a [`Stream`]: those already received first, then each one as the server sends it.
    /// The stream reads the socket itself while it is polled, and other calls on the client go on meanwhile.
    ///
    /// Cancel-safe: a notification leaves the client only when the stream yields it, so dropping the stream
    /// (or a `next` future, for example on a timeout) loses nothing.
    ///
    /// An error is yielded as `Some(Err(_))`. After one that broke the connection the stream ends, unless
    /// [`Config::session_rebuild`](crate::Config::session_rebuild) is on: then the next poll connects again,
    /// subscribes to the [`listen`](Self::listen)ed channels again and goes on (notifications sent while the
    /// connection was down are lost).
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// client.listen("jobs").await?;
    /// let mut notifications = client.notifications();
    /// while let Some(n) = notifications.next().await {
    ///     let n = n?;
    ///     println!("{} from {}: {}", n.channel(), n.process_id(), n.payload());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn notifications(&self) -> NotificationStream<'_> {
        NotificationStream {
            client: self,
            waiting: None,
            ended: false,
        }
    }

    /// Hands every notice (`RAISE NOTICE`, warnings) to `handler` as it arrives, instead of keeping it for
    /// [`take_notices`](Self::take_notices); notices already kept stay there. Each notice is still emitted as a
    /// `tracing` event first. The handler runs inside the client's calls, so it should be quick; to handle
    /// notices elsewhere, send them into a channel:
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// client.set_notice_handler(move |notice| {
    ///     let _ = tx.send(format!("{}: {}", notice.severity(), notice.message()));
    /// });
    /// client.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello'; END $$").await?;
    /// assert_eq!(rx.try_recv().as_deref(), Ok("NOTICE: hello"));
    /// # Ok(()) }
    /// ```
    ///
    /// Without a handler (the default), notices are kept until [`take_notices`](Self::take_notices), at most
    /// 1024 of them: beyond that the oldest is dropped, with a `tracing` warning.
    ///
    /// The handler is `Send` on native targets (clients move between threads), not on wasm32-wasip2.
    pub fn set_notice_handler<F>(&mut self, handler: F)
    where
        F: FnMut(&DbError) + MaybeSend + 'static,
    {
        self.connection_mut()
            .set_notice_handler(Some(Box::new(handler)));
    }

    /// Removes the notice handler: notices are kept for [`take_notices`](Self::take_notices) again.
    pub fn clear_notice_handler(&mut self) {
        self.connection_mut().set_notice_handler(None);
    }
}

/// The notifications of a client as a [`Stream`]; see [`Client::notifications`].
///
/// It never ends while the connection works: `None` comes only after an error that broke the connection
/// (when session rebuild is off).
pub struct NotificationStream<'a> {
    client: &'a Client,
    /// The wait in progress.
    waiting: Option<NextNotification<'a>>,
    ended: bool,
}

#[cfg(not(target_os = "wasi"))]
type NextNotification<'a> = Pin<Box<dyn Future<Output = Result<Notification, Error>> + Send + 'a>>;
#[cfg(target_os = "wasi")]
type NextNotification<'a> = Pin<Box<dyn Future<Output = Result<Notification, Error>> + 'a>>;

/// A future waiting for a notification, by its number: its drop unregisters it, and hands the socket on if it
/// was driving.
struct Listener<'c> {
    client: &'c Client,
    id: u64,
}

impl Listener<'_> {
    fn poll(&self, cx: &mut Context<'_>) -> Poll<Result<Notification, Error>> {
        let mut state = self.client.lock();
        let poll = state.poll_notification(self.id, cx, self.client);
        if poll.is_ready() {
            state.step_back(Driver::Listener(self.id));
        }
        let wakes = state.conn.slots.take_wakes();
        drop(state);
        wakes.into_iter().for_each(Waker::wake);
        poll
    }
}

impl Drop for Listener<'_> {
    fn drop(&mut self) {
        let mut state = self.client.lock();
        state.release_listener(self.id);
        let wakes = state.conn.slots.take_wakes();
        drop(state);
        wakes.into_iter().for_each(Waker::wake);
    }
}

impl std::fmt::Debug for NotificationStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationStream")
            .field("waiting", &self.waiting.is_some())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl NotificationStream<'_> {
    /// The next notification: `Some(Ok(_))`, `Some(Err(_))` on an error, `None` once the stream ended.
    /// Cancel-safe, like the stream.
    pub async fn next(&mut self) -> Option<Result<Notification, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for NotificationStream<'_> {
    type Item = Result<Notification, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let client = this.client;
        // One wait per item, kept across polls: a session rebuild takes several awaits. Dropping it (with the
        // stream) loses nothing, as `next_notification` is cancel-safe.
        let waiting = this
            .waiting
            .get_or_insert_with(|| Box::pin(client.next_notification()));
        let result = ready!(waiting.as_mut().poll(cx));
        this.waiting = None;
        if let Err(e) = &result {
            this.ended = e.is_connection_broken() && !client.will_rebuild();
        }
        Poll::Ready(Some(result))
    }
}

impl FusedStream for NotificationStream<'_> {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

#[cfg(all(test, not(target_os = "wasi")))]
mod tests {
    use crate::{Client, NotificationStream};

    fn assert_send<T: Send>(_: &T) {}

    /// Natively the stream, its waits and the session calls must be `Send`, like the rest of the client.
    /// Checked by type only: the closures are never called.
    #[test]
    fn notification_stream_and_session_calls_are_send() {
        let _client = |client: &mut Client| {
            client.set_notice_handler(|_| {});
            let set = client.set_parameter("search_path", "public");
            assert_send(&set);
            drop(set);
            let next = client.next_notification();
            assert_send(&next);
            drop(next);
            let mut stream = client.notifications();
            assert_send(&stream);
            let next = stream.next();
            assert_send(&next);
        };
        let _stream = |stream: NotificationStream<'_>| assert_send(&stream);
    }
}
