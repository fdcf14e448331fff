//! The one error type of the state store, returned by every [`Store`](super::Store) call.
//! Each variant carries the context needed to act on it (which file, which key, which step);
//! callers match on it rather than on redb's or serde's types. It must not grow variants that
//! merely wrap a lower error without saying what the store was doing.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Key, Namespace};

/// Everything that can go wrong in the state store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The data directory could not be created.
    #[error("cannot create state directory {}", path.display())]
    CreateDir {
        /// The directory that was being created.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be opened, created or prepared.
    #[error("cannot open state database {}", path.display())]
    Open {
        /// The `state.redb` file.
        path: PathBuf,
        /// What redb reported.
        #[source]
        source: redb::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the state writer thread")]
    Spawn {
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },
    /// The store's metrics could not be registered.
    #[error("cannot register state store metrics")]
    Metrics {
        /// What prometheus reported.
        #[source]
        source: prometheus::Error,
    },
    /// A batch of writes could not be committed; none of its writes took effect.
    ///
    /// Every write of the failed batch gets this error, sharing one source.
    #[error("state commit failed")]
    Commit {
        /// What redb reported for the batch.
        #[source]
        source: Arc<redb::Error>,
    },
    /// A read transaction failed.
    #[error("state read failed")]
    Read {
        /// What redb reported.
        #[source]
        source: redb::Error,
    },
    /// The database could not be closed cleanly; everything acknowledged is still durable.
    #[error("cannot close state database")]
    Close {
        /// What redb reported.
        #[source]
        source: redb::Error,
    },
    /// A value could not be serialized to JSON.
    #[error("cannot encode value for {key}")]
    Encode {
        /// The key being written.
        key: Key,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
    /// A stored record could not be deserialized into the requested type.
    #[error("cannot decode value of {key}")]
    Decode {
        /// The key being read.
        key: Key,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
    /// A stored record is not a record: the file was changed from outside.
    #[error("stored record of {key} is damaged")]
    Corrupt {
        /// The key being read.
        key: Key,
        /// What is wrong with it.
        #[source]
        source: super::RecordError,
    },
    /// A write of an older lease term than the record the key holds: the writer was a leader
    /// that has since been replaced.
    #[error("write to {key} in term {term} refused: the key holds a write of term {stored}")]
    StaleTerm {
        /// The key.
        key: Key,
        /// The term of the refused write.
        term: u64,
        /// The term of the record the key holds.
        stored: u64,
    },
    /// A background read task did not finish (the runtime is shutting down, or it panicked).
    #[error("state read task failed")]
    Task {
        /// What tokio reported.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The store was closed with [`Store::close`](super::Store::close), or its writer stopped.
    #[error("state store is closed")]
    Closed,
    /// The key or prefix breaks the rules of [`Key::new`].
    #[error("invalid state key {ns}/{path:?}: {reason}")]
    InvalidKey {
        /// The namespace given.
        ns: Namespace,
        /// The path or prefix given.
        path: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
}
