//! The pool's metrics (feature `metrics`), named and labelled as OpenTelemetry's database client conventions
//! say, through the `metrics` facade:
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `db.client.connection.count` | gauge | connections idle (`db.client.connection.state = idle`) and handed out (`used`) |
//! | `db.client.connection.max` | gauge | `max_size` |
//! | `db.client.connection.pending_requests` | gauge | callers of `get` waiting for a connection |
//! | `db.client.connection.wait_time` | histogram, s | how long each successful `get` took |
//! | `db.client.connection.create_time` | histogram, s | how long each new connection took to open |
//! | `db.client.connection.timeouts` | counter | `get` calls that failed with `acquire_timeout` |
//!
//! Each carries `db.client.connection.pool.name`: `server.address:server.port/db.namespace` of the pool's
//! first host, as the conventions suggest for pools without a name of their own.

use std::time::Duration;

use metrics::Label;

use crate::Config;
use crate::client::meters::peer_labels;
use crate::client::semconv::Peer;
use crate::pool::PoolStatus;

/// The labels of one pool's metrics.
pub(super) struct PoolMeters {
    labels: Vec<Label>,
}

impl PoolMeters {
    pub(super) fn new(config: &Config) -> PoolMeters {
        let first = config.targets().ok().and_then(|t| t.into_iter().next());
        let peer = Peer::of(config, first.as_ref());
        let name = format!(
            "{}:{}/{}",
            peer.address.as_deref().unwrap_or(""),
            peer.port.map(|p| p.to_string()).unwrap_or_default(),
            peer.namespace
        );
        let mut labels = peer_labels(&peer);
        labels.push(Label::new("db.client.connection.pool.name", name));
        PoolMeters { labels }
    }

    fn with(&self, key: &'static str, value: &'static str) -> Vec<Label> {
        let mut labels = self.labels.clone();
        labels.push(Label::from_static_parts(key, value));
        labels
    }

    /// Sets the gauges to `status`.
    pub(super) fn publish(&self, status: &PoolStatus) {
        let state = "db.client.connection.state";
        metrics::gauge!("db.client.connection.count", self.with(state, "idle"))
            .set(status.idle as f64);
        metrics::gauge!("db.client.connection.count", self.with(state, "used"))
            .set(status.in_use as f64);
        metrics::gauge!("db.client.connection.max", self.labels.clone())
            .set(status.max_size as f64);
        metrics::gauge!("db.client.connection.pending_requests", self.labels.clone())
            .set(status.waiting as f64);
    }

    /// A `get` that returned a connection after `waited`.
    pub(super) fn waited(&self, waited: Duration) {
        metrics::histogram!("db.client.connection.wait_time", self.labels.clone())
            .record(waited.as_secs_f64());
    }

    /// A connection opened in `took`.
    pub(super) fn created(&self, took: Duration) {
        metrics::histogram!("db.client.connection.create_time", self.labels.clone())
            .record(took.as_secs_f64());
    }

    /// A `get` that timed out.
    pub(super) fn timed_out(&self) {
        metrics::counter!("db.client.connection.timeouts", self.labels.clone()).increment(1);
    }
}
