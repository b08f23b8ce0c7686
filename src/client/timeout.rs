//! [`QueryTimeoutScope`]: a client with another query timeout for a while.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use crate::Client;

/// A client whose query timeout is replaced until this scope is dropped; see
/// [`Client::with_query_timeout`](crate::Client::with_query_timeout). It derefs to the [`Client`].
pub struct QueryTimeoutScope<'a> {
    client: &'a mut Client,
    previous: Option<Duration>,
}

impl<'a> QueryTimeoutScope<'a> {
    pub(crate) fn new(client: &'a mut Client, timeout: Option<Duration>) -> QueryTimeoutScope<'a> {
        let previous = client.query_timeout();
        client.set_query_timeout(timeout);
        QueryTimeoutScope { client, previous }
    }
}

impl Deref for QueryTimeoutScope<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
    }
}

impl DerefMut for QueryTimeoutScope<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
    }
}

impl Drop for QueryTimeoutScope<'_> {
    fn drop(&mut self) {
        // Synchronous, so a scope dropped with its future restores the timeout too.
        self.client.set_query_timeout(self.previous);
    }
}

impl std::fmt::Debug for QueryTimeoutScope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryTimeoutScope")
            .field("timeout", &self.client.query_timeout())
            .field("previous", &self.previous)
            .finish_non_exhaustive()
    }
}
