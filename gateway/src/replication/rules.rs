//! The rules of replicated state, as pure functions: which topic a key travels on, who owns a
//! key (and so who may write it and who repairs it), and whether a message on the state
//! topics is a record this node may apply. No I/O; docs/state.md states the same rules.

use crate::state::{Key, Namespace, Record};
use crate::topics::Topics;

/// Who may write a key of a replicated namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// The node named by the key's first path level (`devices/<node>/...`).
    Node(&'a str),
    /// Whichever node holds the lease, fenced by its term (`cluster/...`).
    Leader,
}

/// The owner of `key`, or `None` for a key that is not replicated (`node/...`) or a device
/// key without a node level.
pub fn owner(key: &Key) -> Option<Owner<'_>> {
    match key.ns {
        Namespace::Node => None,
        Namespace::Cluster => Some(Owner::Leader),
        Namespace::Devices => match key.path.split_once('/') {
            Some((node, rest)) if !node.is_empty() && !rest.is_empty() => Some(Owner::Node(node)),
            _ => None,
        },
    }
}

/// Why a message on the state topics was not applied; the label of
/// `roost_state_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The topic names no namespace Roost replicates.
    UnknownNamespace,
    /// The topic's path is not a valid key (or a device key without a node level).
    BadKey,
    /// The payload is not a state record.
    BadJson,
    /// The record's origin is not the key's owner (device keys) or not a cluster member.
    NotOwner,
    /// The record's term does not fit its key: not 0 for a device key, 0 for a leader's key.
    BadTerm,
    /// The key holds a later version of the same term.
    StaleVersion,
    /// The key holds a record of a later term: the writer was a replaced leader.
    StaleTerm,
    /// The key holds a different record of the same term and version, which the tie-break
    /// keeps.
    Conflict,
}

impl Rejection {
    /// Every reason, for registering the metric's series up front.
    pub const ALL: [Rejection; 8] = [
        Rejection::UnknownNamespace,
        Rejection::BadKey,
        Rejection::BadJson,
        Rejection::NotOwner,
        Rejection::BadTerm,
        Rejection::StaleVersion,
        Rejection::StaleTerm,
        Rejection::Conflict,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::UnknownNamespace => "unknown_namespace",
            Rejection::BadKey => "bad_key",
            Rejection::BadJson => "bad_json",
            Rejection::NotOwner => "not_owner",
            Rejection::BadTerm => "bad_term",
            Rejection::StaleVersion => "stale_version",
            Rejection::StaleTerm => "stale_term",
            Rejection::Conflict => "conflict",
        }
    }

    /// Why a record that lost against `stored` was refused.
    pub fn of_stale(incoming: &Record, stored: &Record) -> Rejection {
        if incoming.term < stored.term {
            Rejection::StaleTerm
        } else if (incoming.term, incoming.version) == (stored.term, stored.version) {
            Rejection::Conflict
        } else {
            Rejection::StaleVersion
        }
    }
}

/// The state topics of one cluster: `<prefix>/<cluster>/state/<ns>/<path>` under a `$` root
/// (`$roost/home/state/devices/node-a/demo-relay`), like the cluster's other internal topics.
#[derive(Debug, Clone)]
pub struct StateTopics {
    /// `$<prefix>/<cluster>/state/`.
    root: String,
}

impl StateTopics {
    /// The state topics of the node's topic prefix and cluster.
    pub fn new(topics: &Topics) -> StateTopics {
        StateTopics {
            root: topics.state_root(),
        }
    }

    /// The filter matching every state topic.
    pub fn filter(&self) -> String {
        format!("{}#", self.root)
    }

    /// The topic `key` is replicated on.
    pub fn topic(&self, key: &Key) -> String {
        format!("{}{}/{}", self.root, key.ns, key.path)
    }

    /// The key a state topic names, or why it names none.
    pub fn key(&self, topic: &str) -> Result<Key, Rejection> {
        let rest = topic.strip_prefix(&self.root).ok_or(Rejection::BadKey)?;
        let (ns, path) = rest.split_once('/').ok_or(Rejection::UnknownNamespace)?;
        let ns = Namespace::parse(ns)
            .filter(|ns| ns.is_replicated())
            .ok_or(Rejection::UnknownNamespace)?;
        let key = Key::new(ns, path).map_err(|_| Rejection::BadKey)?;
        owner(&key).ok_or(Rejection::BadKey)?;
        Ok(key)
    }
}

/// Checks the writer (`origin`) and `term` of a peer's record for `key` against the ownership
/// rules: a device key's record comes from the node it names, with term 0; a leader's key's
/// record comes from a cluster member, with a term of at least 1.
pub fn check(key: &Key, origin: &str, term: u64, members: &[String]) -> Result<(), Rejection> {
    match owner(key) {
        None => Err(Rejection::BadKey),
        Some(Owner::Node(node)) => {
            if origin != node {
                Err(Rejection::NotOwner)
            } else if term != 0 {
                Err(Rejection::BadTerm)
            } else {
                Ok(())
            }
        }
        Some(Owner::Leader) => {
            if !members.iter().any(|m| m == origin) {
                Err(Rejection::NotOwner)
            } else if term == 0 {
                Err(Rejection::BadTerm)
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: Namespace, path: &str) -> Key {
        Key::new(ns, path).unwrap()
    }

    fn rec(origin: &str, term: u64, version: u64) -> Record {
        Record {
            version,
            term,
            origin: origin.into(),
            updated_ms: 1,
            value: Some(serde_json::json!(1)),
        }
    }

    #[test]
    fn owners() {
        assert_eq!(
            owner(&key(Namespace::Devices, "node-a/relay")),
            Some(Owner::Node("node-a"))
        );
        assert_eq!(owner(&key(Namespace::Devices, "node-a")), None);
        assert_eq!(owner(&key(Namespace::Devices, "/relay")), None);
        assert_eq!(
            owner(&key(Namespace::Cluster, "rules/x")),
            Some(Owner::Leader)
        );
        assert_eq!(owner(&key(Namespace::Node, "lease/term")), None);
    }

    #[test]
    fn topics_and_keys() {
        let t = StateTopics::new(&Topics::new("roost", "home"));
        let k = key(Namespace::Devices, "node-a/demo-relay");
        assert_eq!(t.topic(&k), "$roost/home/state/devices/node-a/demo-relay");
        assert_eq!(t.key(&t.topic(&k)), Ok(k));
        assert_eq!(t.filter(), "$roost/home/state/#");
        assert_eq!(
            t.key("$roost/home/state/node/lease/term"),
            Err(Rejection::UnknownNamespace)
        );
        assert_eq!(
            t.key("$roost/home/state/garden/x"),
            Err(Rejection::UnknownNamespace)
        );
        assert_eq!(
            t.key("$roost/home/state/devices"),
            Err(Rejection::UnknownNamespace)
        );
        assert_eq!(
            t.key("$roost/home/state/devices/node-a"),
            Err(Rejection::BadKey)
        );
        assert_eq!(
            t.key("$roost/away/state/devices/a/b"),
            Err(Rejection::BadKey)
        );
    }

    #[test]
    fn ownership_and_terms() {
        let members = vec!["node-a".to_owned(), "node-b".to_owned()];
        let check =
            |key: &Key, r: &Record, members: &[String]| check(key, &r.origin, r.term, members);
        let dev = key(Namespace::Devices, "node-a/relay");
        assert_eq!(check(&dev, &rec("node-a", 0, 1), &members), Ok(()));
        assert_eq!(
            check(&dev, &rec("node-b", 0, 1), &members),
            Err(Rejection::NotOwner)
        );
        assert_eq!(
            check(&dev, &rec("node-a", 3, 1), &members),
            Err(Rejection::BadTerm)
        );
        let run = key(Namespace::Cluster, "automations/porch");
        assert_eq!(check(&run, &rec("node-b", 4, 1), &members), Ok(()));
        assert_eq!(
            check(&run, &rec("node-z", 4, 1), &members),
            Err(Rejection::NotOwner)
        );
        assert_eq!(
            check(&run, &rec("node-b", 0, 1), &members),
            Err(Rejection::BadTerm)
        );
    }

    #[test]
    fn stale_reasons() {
        let stored = rec("node-a", 5, 3);
        assert_eq!(
            Rejection::of_stale(&rec("node-b", 4, 9), &stored),
            Rejection::StaleTerm
        );
        assert_eq!(
            Rejection::of_stale(&rec("node-a", 5, 2), &stored),
            Rejection::StaleVersion
        );
        assert_eq!(
            Rejection::of_stale(&rec("node-0", 5, 3), &stored),
            Rejection::Conflict
        );
    }
}
