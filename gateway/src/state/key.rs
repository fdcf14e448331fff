//! Names of things in the store: the [`Namespace`] a key lives in and the validated [`Key`].
//! Every caller of the store builds keys here; the writer and the read path turn them into the
//! `"ns/path"` strings that redb sorts. This file knows nothing about redb or values, and it
//! must not accept a key that the store could not later hand back unchanged.

use std::fmt;

use super::Error;

/// The longest path a key may have, in bytes (UTF-8), so that `ns/path` stays a sane MQTT topic
/// suffix once keys are replicated.
pub const MAX_PATH_LEN: usize = 256;

/// Which part of the node's state a key belongs to; decides whether it is replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// This node's private bookkeeping (its own counters, last clean shutdown, local queues).
    /// Never replicated to other nodes.
    Node,
    /// Device descriptions and their last known state. Replicated to every node, so any node
    /// can answer for any device.
    Devices,
    /// Cluster-wide state: automation bookkeeping, leases, membership facts. Replicated to every
    /// node.
    Cluster,
}

impl Namespace {
    /// Every namespace, in the order their keys sort in the database.
    pub const ALL: [Namespace; 3] = [Namespace::Cluster, Namespace::Devices, Namespace::Node];

    /// The namespace's name as it appears in encoded keys and topics: `node`, `devices` or
    /// `cluster`.
    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::Node => "node",
            Namespace::Devices => "devices",
            Namespace::Cluster => "cluster",
        }
    }

    /// The namespace named `name` (the inverse of [`Namespace::as_str`]), if there is one.
    pub fn parse(name: &str) -> Option<Namespace> {
        Namespace::ALL.into_iter().find(|ns| ns.as_str() == name)
    }

    /// Whether writes in this namespace are meant to be shared with the other nodes.
    /// Only [`Namespace::Node`] stays local.
    pub fn is_replicated(self) -> bool {
        !matches!(self, Namespace::Node)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated key: a namespace plus a path such as `burst/000042` or `relay-1/state`.
///
/// The path is 1 to [`MAX_PATH_LEN`] bytes of UTF-8 without NUL, `+` or `#`; `/` is allowed
/// and is what [`Store::scan_prefix`](super::Store::scan_prefix) is usually given. Build keys with
/// [`Key::new`]; the fields are public for matching and reading, and the store re-checks a key
/// built by hand before using it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The namespace the key lives in.
    pub ns: Namespace,
    /// The path inside the namespace.
    pub path: String,
}

impl Key {
    /// A key in `ns` at `path`, or [`Error::InvalidKey`] if the path is empty, longer than
    /// [`MAX_PATH_LEN`] bytes, or contains NUL, `+` or `#`.
    pub fn new(ns: Namespace, path: impl Into<String>) -> Result<Key, Error> {
        let key = Key {
            ns,
            path: path.into(),
        };
        key.validate()?;
        Ok(key)
    }

    /// Checks the rules of [`Key::new`] again, for keys built from the public fields.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let reason = if self.path.is_empty() {
            "path is empty"
        } else if self.path.len() > MAX_PATH_LEN {
            "path is longer than 256 bytes"
        } else if self.path.contains('\0') {
            "path contains NUL"
        } else if self.path.contains(['+', '#']) {
            // Replicated keys are MQTT topic levels (docs/state.md), where these are wildcards.
            "path contains '+' or '#'"
        } else {
            return Ok(());
        };
        Err(Error::InvalidKey {
            ns: self.ns,
            path: self.path.clone(),
            reason,
        })
    }

    /// The string the key is stored under: `ns/path`.
    pub(crate) fn encode(&self) -> String {
        encode(self.ns, &self.path)
    }

    /// The key stored under `raw`, which is known to start with `ns/`.
    pub(crate) fn decode_in(ns: Namespace, raw: &str) -> Key {
        Key {
            ns,
            path: raw
                .get(ns.as_str().len() + 1..)
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// `ns/path`, the form keys are stored and sorted in. Every namespace name is free of `/`, so
/// all keys of one namespace are contiguous and sorted by path.
pub(crate) fn encode(ns: Namespace, path: &str) -> String {
    let mut s = String::with_capacity(ns.as_str().len() + 1 + path.len());
    s.push_str(ns.as_str());
    s.push('/');
    s.push_str(path);
    s
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.path)
    }
}
