//! Errors that cross the broker crate's seam: starting the embedded broker and using the
//! in-process client. Connection-level problems of network clients never surface here; the
//! edge logs them, counts them in metrics and closes that one connection.

use std::net::SocketAddr;

/// What can go wrong when starting or using the embedded broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The public MQTT listener could not be bound.
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        /// The address from the config.
        addr: SocketAddr,
        /// Why the bind failed.
        source: std::io::Error,
    },
    /// A thread of the embedded broker could not be started.
    #[error("the embedded broker did not start: {0}")]
    Startup(String),
    /// An in-process link to rumqttd's router could not be created or has failed.
    #[error("in-process broker link {client_id}: {source}")]
    Link {
        /// The link's client id.
        client_id: String,
        /// rumqttd's error.
        source: Box<rumqttd::local::LinkError>,
    },
    /// The durable retained set could not be opened or read.
    #[error("retained messages in {path}: {source}")]
    Retained {
        /// The redb file.
        path: std::path::PathBuf,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// A topic or filter handed to the in-process client is not valid MQTT.
    #[error("invalid MQTT {what} {value:?}: {reason}")]
    InvalidTopic {
        /// "topic" or "filter".
        what: &'static str,
        /// The offending string.
        value: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The broker has shut down; the in-process client can no longer be used.
    #[error("the broker has shut down")]
    Closed,
    /// Registering the broker's metrics failed (a name clash in the registry).
    #[error("registering broker metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Result with the broker crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
