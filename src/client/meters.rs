//! `db.client.operation.duration` (feature `metrics`): a histogram, in seconds, of each operation, with the
//! attributes the OpenTelemetry conventions give it (system, namespace, operation, collection, server, and
//! the error type and SQLSTATE of a failure), recorded through the `metrics` facade.

use std::time::Instant;

use metrics::Label;

use crate::Error;
use crate::client::semconv::{DB_SYSTEM, Peer, error_type};
use crate::proto::operation::Operation;

/// The conventions' name of the operation duration histogram.
pub(crate) const OPERATION_DURATION: &str = "db.client.operation.duration";

/// The labels that name the server, shared by the operation and the pool metrics.
pub(crate) fn peer_labels(peer: &Peer) -> Vec<Label> {
    let mut labels = vec![
        Label::from_static_parts("db.system.name", DB_SYSTEM),
        Label::new("db.namespace", peer.namespace.to_string()),
    ];
    if let Some(address) = &peer.address {
        labels.push(Label::new("server.address", address.to_string()));
    }
    if let Some(port) = peer.port {
        labels.push(Label::new("server.port", port.to_string()));
    }
    labels
}

/// The start of one operation and the labels its duration will carry.
pub(crate) struct OperationTiming {
    start: Instant,
    labels: Vec<Label>,
}

impl OperationTiming {
    pub(crate) fn start(peer: &Peer, operation: &Operation) -> OperationTiming {
        let mut labels = peer_labels(peer);
        if let Some(name) = &operation.name {
            labels.push(Label::new("db.operation.name", name.to_string()));
        }
        if let Some(collection) = &operation.collection {
            labels.push(Label::new("db.collection.name", collection.to_string()));
        }
        OperationTiming {
            start: Instant::now(),
            labels,
        }
    }

    /// Records the duration since the start, with the error's attributes if the operation failed.
    pub(crate) fn end(mut self, error: Option<&Error>) {
        let seconds = self.start.elapsed().as_secs_f64();
        if let Some(error) = error {
            if let Some(code) = error.code() {
                self.labels
                    .push(Label::new("db.response.status_code", code.to_string()));
            }
            self.labels
                .push(Label::new("error.type", error_type(error).into_owned()));
        }
        metrics::histogram!(OPERATION_DURATION, self.labels).record(seconds);
    }
}
