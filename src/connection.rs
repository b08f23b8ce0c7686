//! The driver between a [`Transport`] and the sans-IO [`Protocol`]: moves bytes both ways and hands out the
//! responses of one request. No background task: whoever awaits a response drives the socket.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll, ready};

use tracing::{debug, info, warn};

use crate::proto::{Backend, Event, Notification, Protocol, RequestId};
use crate::transport::Transport;
use crate::{DbError, Error};

/// How many bytes one read asks the transport for.
const READ_CHUNK: usize = 16 * 1024;

/// Notices kept for [`Client::take_notices`](crate::Client::take_notices) before the oldest are dropped.
const MAX_KEPT_NOTICES: usize = 1024;

/// A transport, the protocol state machine, and the events that arrived outside any request.
pub(crate) struct Connection {
    transport: Box<dyn Transport>,
    pub(crate) protocol: Protocol,
    read_buf: Box<[u8]>,
    needs_flush: bool,
    notifications: VecDeque<Notification>,
    notices: VecDeque<DbError>,
}

impl Connection {
    pub(crate) fn new(transport: Box<dyn Transport>, protocol: Protocol) -> Connection {
        Connection {
            transport,
            protocol,
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            needs_flush: false,
            notifications: VecDeque::new(),
            notices: VecDeque::new(),
        }
    }

    /// Writes what is queued and reads what is available. `Ready(Ok(()))` means input (or end of stream)
    /// arrived and the protocol should be polled again.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let result = self.poll_transport(cx);
        if let Poll::Ready(Err(e)) = &result {
            self.protocol.mark_broken(e);
        }
        result
    }

    fn poll_transport(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Write first so a request queued by this caller (or left by a dropped one) reaches the server.
        if let Poll::Ready(Err(e)) = self.poll_write_queued(cx) {
            return Poll::Ready(Err(e));
        }
        match self.transport.poll_read(cx, &mut self.read_buf) {
            Poll::Ready(Ok(0)) => {
                self.protocol.handle_eof();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(n)) => {
                self.protocol.handle_input(&self.read_buf[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(Error::io(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes queued bytes and flushes them; `Ready(Ok(()))` once everything went out.
    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            let queued = self.protocol.poll_transmit();
            if queued.is_empty() {
                break;
            }
            match self.transport.poll_write(cx, queued) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Error::io(std::io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => {
                    self.protocol.advance_transmit(n);
                    self.needs_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::io(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.needs_flush {
            match self.transport.poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::io(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Runs the startup to its first ReadyForQuery.
    pub(crate) async fn startup(&mut self) -> Result<(), Error> {
        poll_fn(|cx| {
            loop {
                let ready = self.protocol.poll_startup();
                self.collect_events();
                match ready {
                    Ok(true) => return Poll::Ready(Ok(())),
                    Ok(false) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                if let Err(e) = ready!(self.poll_io(cx)) {
                    return Poll::Ready(Err(e));
                }
            }
        })
        .await
    }

    /// The next response to request `id`. Responses to older requests, whose callers were dropped before they
    /// read everything, are discarded on the way.
    pub(crate) async fn next_response(&mut self, id: RequestId) -> Result<Backend, Error> {
        poll_fn(|cx| self.poll_next(cx, Some(id)))
            .await?
            .ok_or_else(|| Error::protocol("BUG: request finished before its responses were read"))
    }

    /// Sends everything queued (the data of a COPY FROM STDIN), reading meanwhile: `Ok(None)` once every byte
    /// went out, or the next response to `id` as soon as one arrives (during COPY FROM STDIN the server answers
    /// only to end it with an error). Responses to older requests are discarded on the way.
    pub(crate) async fn send_watching(&mut self, id: RequestId) -> Result<Option<Backend>, Error> {
        poll_fn(|cx| {
            loop {
                let response = self.protocol.poll_response();
                self.collect_events();
                match response {
                    Ok(Some(response)) if response.request == id => {
                        return Poll::Ready(Ok(Some(response.message)));
                    }
                    Ok(Some(response)) if response.request > id => {
                        return Poll::Ready(Err(Error::protocol(
                            "BUG: a response for a request queued later arrived first",
                        )));
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                let all_sent = match self.poll_write_queued(cx) {
                    Poll::Ready(Ok(())) => true,
                    Poll::Ready(Err(e)) => {
                        self.protocol.mark_broken(&e);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => false,
                };
                match self.transport.poll_read(cx, &mut self.read_buf) {
                    Poll::Ready(Ok(0)) => self.protocol.handle_eof(),
                    Poll::Ready(Ok(n)) => self.protocol.handle_input(&self.read_buf[..n]),
                    Poll::Ready(Err(e)) => {
                        let e = Error::io(e);
                        self.protocol.mark_broken(&e);
                        return Poll::Ready(Err(e));
                    }
                    // Nothing to read: done if everything went out, else wait for either direction.
                    Poll::Pending if all_sent => return Poll::Ready(Ok(None)),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }

    /// Reads and discards the responses of every request still pending (left by dropped futures).
    pub(crate) async fn drain_abandoned(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.poll_next(cx, None)).await.map(drop)
    }

    /// With `Some(id)`: the next response to `id`, discarding those of older requests. With `None`: discards
    /// everything until no request is pending, then `Ok(None)`.
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        id: Option<RequestId>,
    ) -> Poll<Result<Option<Backend>, Error>> {
        loop {
            if id.is_none() && !self.protocol.has_pending() {
                return Poll::Ready(Ok(None));
            }
            let response = self.protocol.poll_response();
            self.collect_events();
            match (response, id) {
                (Ok(Some(response)), Some(id)) if response.request == id => {
                    return Poll::Ready(Ok(Some(response.message)));
                }
                (Ok(Some(response)), Some(id)) if response.request > id => {
                    return Poll::Ready(Err(Error::protocol(
                        "BUG: a response for a request queued later arrived first",
                    )));
                }
                // Cancel-safety: an abandoned request's rows and errors end here, not in a later caller's result.
                (Ok(Some(_)), _) => continue,
                (Ok(None), _) => {}
                (Err(e), _) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = ready!(self.poll_io(cx)) {
                return Poll::Ready(Err(e));
            }
        }
    }

    /// The next notification: one already received, or the next to arrive. Requests left by dropped futures
    /// are drained first. A notification leaves the queue only when this returns it, so dropping the future
    /// (for example on a timeout) loses nothing.
    pub(crate) async fn next_notification(&mut self) -> Result<Notification, Error> {
        poll_fn(|cx| {
            loop {
                if let Some(notification) = self.notifications.pop_front() {
                    return Poll::Ready(Ok(notification));
                }
                if self.protocol.has_pending() {
                    if let Err(e) = ready!(self.poll_next(cx, None)) {
                        return Poll::Ready(Err(e));
                    }
                    continue;
                }
                // Idle: whatever arrives now can only be asynchronous; anything else is a protocol error.
                let idle = self.protocol.poll_response();
                self.collect_events();
                match idle {
                    Ok(Some(_)) => {
                        return Poll::Ready(Err(Error::protocol(
                            "BUG: a response arrived with no request pending",
                        )));
                    }
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                if !self.notifications.is_empty() {
                    continue;
                }
                if let Err(e) = ready!(self.poll_io(cx)) {
                    return Poll::Ready(Err(e));
                }
            }
        })
        .await
    }

    /// Sends everything queued and closes the sending side (used by close, where no response follows).
    pub(crate) async fn flush_all(&mut self) -> Result<(), Error> {
        poll_fn(|cx| {
            ready!(self.poll_write_queued(cx))?;
            self.transport.poll_shutdown(cx).map_err(Error::io)
        })
        .await
    }

    /// Moves asynchronous events out of the protocol into the queues the client reads.
    fn collect_events(&mut self) {
        while let Some(event) = self.protocol.poll_event() {
            match event {
                Event::Notice(notice) => {
                    info!(
                        severity = notice.severity(),
                        code = notice.code(),
                        "{}",
                        notice.message()
                    );
                    if self.notices.len() == MAX_KEPT_NOTICES {
                        warn!(
                            "more than {MAX_KEPT_NOTICES} notices not taken: dropping the oldest"
                        );
                        self.notices.pop_front();
                    }
                    self.notices.push_back(*notice);
                }
                Event::Notification(notification) => self.notifications.push_back(notification),
                Event::ParameterStatus(name, value) => debug!(%name, %value, "parameter status"),
            }
        }
    }

    /// Passes an error through, marking the connection broken first if the error says it is.
    pub(crate) fn check<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &result {
            self.protocol.mark_broken(e);
        }
        result
    }

    pub(crate) fn take_notifications(&mut self) -> Vec<Notification> {
        self.notifications.drain(..).collect()
    }

    pub(crate) fn take_notices(&mut self) -> Vec<DbError> {
        self.notices.drain(..).collect()
    }
}
