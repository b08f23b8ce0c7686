//! The driver between a [`Transport`] and the sans-IO [`Protocol`]: moves bytes both ways and hands out the
//! responses of one request. No background task: whoever awaits a response drives the socket.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::conn::cancel::{CancelToken, Due, TimeLimits};
use crate::conn::dial::CancelRoute;
use crate::conn::slots::{Routed, Slots};
use crate::proto::{Backend, Event, Notification, Protocol, RequestId};
use crate::transport::Transport;
use crate::transport::read_size::ReadSize;
use crate::{DbError, Error, ErrorKind};

/// Notices kept for [`Client::take_notices`](crate::Client::take_notices) before the oldest are dropped.
const MAX_KEPT_NOTICES: usize = 1024;

/// Where notices go when the user set a handler ([`Client::set_notice_handler`](crate::Client::set_notice_handler)).
#[cfg(not(target_os = "wasi"))]
pub(crate) type NoticeHandler = Box<dyn FnMut(&DbError) + Send>;
/// Where notices go when the user set a handler ([`Client::set_notice_handler`](crate::Client::set_notice_handler)).
#[cfg(target_os = "wasi")]
pub(crate) type NoticeHandler = Box<dyn FnMut(&DbError)>;

/// A transport, the protocol state machine, and the events that arrived outside any request.
pub(crate) struct Connection {
    transport: Box<dyn Transport>,
    pub(crate) protocol: Protocol,
    read_buf: Box<[u8]>,
    read_size: ReadSize,
    needs_flush: bool,
    notifications: VecDeque<Notification>,
    notices: VecDeque<DbError>,
    /// Takes notices instead of `notices` when set.
    notice_handler: Option<NoticeHandler>,
    /// Whether dropping untaken notices was reported (once per connection: after that it is no news).
    notices_overflowed: bool,
    /// The query timeout and the read deadline, with their clocks (see `cancel.rs`).
    pub(crate) limits: TimeLimits,
    /// How to reach the server for a cancel request: the driver cancels timed-out requests itself.
    pub(crate) cancel_route: Option<CancelRoute>,
    /// The requests of futures that share the client, whose answers may arrive while another one reads.
    pub(crate) slots: Slots,
}

impl Connection {
    pub(crate) fn new(transport: Box<dyn Transport>, protocol: Protocol) -> Connection {
        Connection {
            transport,
            protocol,
            read_buf: vec![0; ReadSize::MAX].into_boxed_slice(),
            read_size: ReadSize::new(),
            needs_flush: false,
            notifications: VecDeque::new(),
            notices: VecDeque::new(),
            notice_handler: None,
            notices_overflowed: false,
            limits: TimeLimits::default(),
            cancel_route: None,
            slots: Slots::default(),
        }
    }

    /// Writes what is queued and reads what is available. `Ready(Ok(()))` means input (or end of stream)
    /// arrived, or the awaited request timed out and its expiry began: either way the caller polls again.
    /// While requests are pending, the time limits decide how long nothing may arrive.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self.poll_transport(cx) {
            Poll::Ready(Ok(())) => {
                self.limits.progress();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                self.protocol.mark_broken(&e);
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                match ready!(self.limits.poll_due(cx, self.protocol.has_pending(), true)) {
                    Due::Read(limit) => Poll::Ready(Err(self.read_deadline_passed(limit))),
                    Due::Query(limit) => {
                        let Some(request) = self.protocol.front_request() else {
                            return Poll::Ready(Ok(()));
                        };
                        debug!(?limit, "a request timed out; cancelling it on the server");
                        let token = self.cancel_token();
                        self.limits.expire(
                            request,
                            limit,
                            Box::pin(async move { token.cancel_query().await }),
                        );
                        Poll::Ready(Ok(()))
                    }
                    Due::GiveUp => Poll::Ready(Err(self.expiry_overdue())),
                }
            }
        }
    }

    /// No byte arrived within the read deadline: an answer may still be on its way, so the protocol is out of
    /// step and the connection is given up.
    fn read_deadline_passed(&mut self, limit: Duration) -> Error {
        let error = Error::timeout("waiting for the server to answer", limit).broken();
        self.protocol.mark_broken(&error);
        error
    }

    /// A cancel token for this session: its route and its backend key.
    pub(crate) fn cancel_token(&self) -> CancelToken {
        CancelToken::new(
            self.cancel_route.clone(),
            self.protocol.backend_key().cloned(),
        )
    }

    /// Reads into `read_buf`, adapting the size of the next read to this one.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let n = ready!(
            self.transport
                .poll_read(cx, &mut self.read_buf[..self.read_size.get()])
        )?;
        self.read_size.record(n);
        Poll::Ready(Ok(n))
    }

    fn poll_transport(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Write first so a request queued by this caller (or left by a dropped one) reaches the server.
        if let Poll::Ready(Err(e)) = self.poll_write_queued(cx) {
            return Poll::Ready(Err(e));
        }
        match self.poll_read(cx) {
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
        // Sending is not waiting for the server: the query timeout counts from the next wait for its answer.
        self.limits.restart_query_clock();
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
                let unsent = self.protocol.poll_transmit().len();
                let all_sent = match self.poll_write_queued(cx) {
                    Poll::Ready(Ok(())) => true,
                    Poll::Ready(Err(e)) => {
                        self.protocol.mark_broken(&e);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => false,
                };
                // While COPY data flows the server answers nothing: bytes going out count as progress too.
                if self.protocol.poll_transmit().len() != unsent {
                    self.limits.progress();
                }
                match self.poll_read(cx) {
                    Poll::Ready(Ok(0)) => self.protocol.handle_eof(),
                    Poll::Ready(Ok(n)) => {
                        self.limits.progress();
                        self.protocol.handle_input(&self.read_buf[..n]);
                    }
                    Poll::Ready(Err(e)) => {
                        let e = Error::io(e);
                        self.protocol.mark_broken(&e);
                        return Poll::Ready(Err(e));
                    }
                    // Nothing to read: done if everything went out, else wait for either direction, as long as
                    // the read deadline allows.
                    Poll::Pending if all_sent => {
                        self.limits.disarm();
                        return Poll::Ready(Ok(None));
                    }
                    Poll::Pending => {
                        if let Poll::Ready(Due::Read(limit)) = self.limits.poll_due(cx, true, false)
                        {
                            return Poll::Ready(Err(self.read_deadline_passed(limit)));
                        }
                        return Poll::Pending;
                    }
                }
            }
        })
        .await
    }

    /// Reads and discards the responses of every request still pending (left by dropped futures).
    pub(crate) async fn drain_abandoned(&mut self) -> Result<(), Error> {
        // A new operation starts here: clocks left by dropped futures do not count against it.
        self.limits.new_wait();
        poll_fn(|cx| self.poll_next(cx, None)).await?;
        // Only an exclusive operation drains: every future that shared the client is gone, and so are the
        // slots of their requests, all read out now.
        self.slots.clear();
        Ok(())
    }

    /// With `Some(id)`: the next response to `id`: one routed to its slot by another future's read, or the next
    /// one read now. Responses to other requests go to their slots, or are discarded when nobody waits for them
    /// (their futures were dropped). With `None`: discards everything until no request is pending, then
    /// `Ok(None)`.
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        id: Option<RequestId>,
    ) -> Poll<Result<Option<Backend>, Error>> {
        loop {
            if let Some(id) = id
                && let Some(answer) = self.slots.take(id)
            {
                return Poll::Ready(answer.map(Some));
            }
            if self.limits.expiry.is_some() {
                // A request timed out. Its cancel goes out first; its answers are discarded up to its
                // ReadyForQuery, and then its owner gets the timeout. Requests behind it go on as usual.
                match self.poll_expiry(cx) {
                    Poll::Ready(Ok((expired, limit))) => {
                        let timeout = Error::timeout("the query", limit);
                        if Some(expired) == id {
                            return Poll::Ready(Err(timeout));
                        }
                        self.slots.route(expired, Err(timeout), true);
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if id.is_none() && !self.protocol.has_pending() && self.limits.expiry.is_none() {
                return Poll::Ready(Ok(None));
            }
            let expired = self.limits.expiry.as_ref().map(|expiry| expiry.request);
            let routed = self.slots.route_next(&mut self.protocol, id, expired);
            self.collect_events();
            match routed {
                Ok(Routed::Answer(message)) => return Poll::Ready(Ok(Some(message))),
                Ok(Routed::Elsewhere) => continue,
                Ok(Routed::Nothing) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Some(id) = id
                && !self.protocol.is_pending(id)
                && self.limits.expiry.is_none()
            {
                return Poll::Ready(Err(Error::protocol(format!(
                    "BUG: request {id} is waited for, but it finished and nothing of it is left to read"
                ))));
            }
            self.limits.watch(self.protocol.front_request());
            if let Err(e) = ready!(self.poll_io(cx)) {
                return Poll::Ready(Err(e));
            }
        }
    }

    /// Drives the expiry of a timed-out request: its cancel first, then the wait for its ReadyForQuery (read
    /// by the caller's loop), within a grace time. `Ready(Ok((request, limit)))` once both are done.
    fn poll_expiry(&mut self, cx: &mut Context<'_>) -> Poll<Result<(RequestId, Duration), Error>> {
        let Some(expiry) = &mut self.limits.expiry else {
            return Poll::Ready(Err(Error::protocol(
                "BUG: no timed-out request to read out",
            )));
        };
        if let Some(cancel) = &mut expiry.cancel {
            match cancel.as_mut().poll(cx) {
                // The server closed the cancel connection: the backend has been signalled.
                Poll::Ready(Ok(())) => expiry.cancel = None,
                Poll::Ready(Err(e)) => {
                    let why = format!("the cancel request failed ({e})");
                    return Poll::Ready(Err(self.expiry_failed(&why)));
                }
                Poll::Pending => {}
            }
        }
        let (request, limit, cancelled) = (expiry.request, expiry.limit, expiry.cancel.is_none());
        if cancelled && !self.protocol.is_pending(request) {
            self.limits.expiry = None;
            self.limits.disarm();
            return Poll::Ready(Ok((request, limit)));
        }
        Poll::Pending
    }

    /// The grace time of an expiry ran out.
    fn expiry_overdue(&mut self) -> Error {
        let why = if self
            .limits
            .expiry
            .as_ref()
            .is_some_and(|e| e.cancel.is_some())
        {
            "the cancel request did not finish in time"
        } else {
            "the server did not end the cancelled request in time"
        };
        self.expiry_failed(why)
    }

    /// A timed-out request could not be stopped: its answer may still come, so the connection is given up.
    fn expiry_failed(&mut self, why: &str) -> Error {
        let limit = self
            .limits
            .expiry
            .take()
            .map_or(Duration::ZERO, |expiry| expiry.limit);
        let error = Error::timeout("the query", limit)
            .broken()
            .context(format!("{why}; the connection was closed"));
        self.protocol.mark_broken(&error);
        error
    }

    /// The oldest notification received and not taken yet.
    pub(crate) fn take_notification(&mut self) -> Option<Notification> {
        self.notifications.pop_front()
    }

    /// The next notification to arrive, reading the socket: answers to requests in flight are routed to
    /// their slots on the way (or discarded when nobody waits for them). A notification leaves the queue only
    /// when this returns it, so dropping the caller's future (for example on a timeout) loses nothing.
    pub(crate) fn poll_notification(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Notification, Error>> {
        loop {
            if let Some(notification) = self.notifications.pop_front() {
                return Poll::Ready(Ok(notification));
            }
            if self.protocol.has_pending() || self.limits.expiry.is_some() {
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
    }

    /// Writes everything queued, without reading: for a short message that must go out now even while answers
    /// wait in the read buffer (a replication stream's status update, which the server times out without).
    pub(crate) async fn write_queued(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.poll_write_queued(cx)).await
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
                    trace_notice(&notice);
                    if let Some(handler) = &mut self.notice_handler {
                        handler(&notice);
                        continue;
                    }
                    if self.notices.len() == MAX_KEPT_NOTICES {
                        if !self.notices_overflowed {
                            self.notices_overflowed = true;
                            warn!(
                                "more than {MAX_KEPT_NOTICES} notices not taken: dropping the oldest \
                                 (reported once per connection; see Client::take_notices)"
                            );
                        }
                        self.notices.pop_front();
                    }
                    self.notices.push_back(*notice);
                }
                Event::Notification(notification) => {
                    self.notifications.push_back(notification);
                    self.slots.wake_listeners();
                }
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

    /// Sets (or with `None` removes) the handler that takes notices instead of the queue.
    pub(crate) fn set_notice_handler(&mut self, handler: Option<NoticeHandler>) {
        self.notice_handler = handler;
    }

    /// Session rebuild: this new connection takes over from `lost` its notice handler and what it received
    /// but nobody took yet, older than anything received here. Notices this connection queued before it had
    /// the handler go to the handler now.
    pub(crate) fn take_over_events(&mut self, lost: &mut Connection) {
        let mut notifications = std::mem::take(&mut lost.notifications);
        notifications.append(&mut self.notifications);
        self.notifications = notifications;
        self.notice_handler = lost.notice_handler.take();
        let mut notices = std::mem::take(&mut lost.notices);
        match &mut self.notice_handler {
            Some(handler) => self.notices.drain(..).for_each(|notice| handler(&notice)),
            None => notices.append(&mut self.notices),
        }
        self.notices = notices;
    }

    /// If the connection can no longer be used, the kind of the error that ended it: `Io` for a transport
    /// failure or an unexpected end of stream, `Db` for a FATAL error from the server.
    pub(crate) fn broken_kind(&mut self) -> Option<ErrorKind> {
        if !self.protocol.is_closed() {
            return None;
        }
        // A closed protocol answers a poll with the error that ended it (an end of stream not yet seen as an
        // error becomes one now) and changes nothing else.
        match self.protocol.poll_response() {
            Err(e) => Some(e.kind()),
            Ok(_) => Some(ErrorKind::Closed),
        }
    }
}

/// Emits a notice as a `tracing` event (target `wasi_pg_client::notice`), at a level that follows its severity:
/// WARNING at WARN, and INFO (which the server sends whatever `client_min_messages` says, for output the session
/// asked for such as `RAISE INFO` or `VACUUM VERBOSE`) at INFO. Routine NOTICEs ("relation already exists,
/// skipping"), LOG and DEBUG go to DEBUG, so an application logging at INFO sees no noise; the notices
/// themselves stay available from `take_notices` or the notice handler.
fn trace_notice(notice: &DbError) {
    let (severity, code, message) = (notice.severity(), notice.code(), notice.message());
    match severity {
        "WARNING" => warn!(target: "wasi_pg_client::notice", severity, code, "{message}"),
        "INFO" => info!(target: "wasi_pg_client::notice", severity, code, "{message}"),
        _ => debug!(target: "wasi_pg_client::notice", severity, code, "{message}"),
    }
}
