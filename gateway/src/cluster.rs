//! The cluster as this node sees it: its members, who is online, the leader and the term,
//! and the node's own presence on MQTT (its retained status topic and cluster events).
//!
//! The coordinator (`coordinator.rs`) keeps this view current from heartbeats and the lease;
//! the broker's mesh reports the links to each peer.

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use roost_broker::{PeerLinks, PeerStatus};
use serde::Serialize;

use crate::config::{NodeId, Settings};

/// Shared, cheap-to-clone view of the cluster.
#[derive(Clone)]
pub struct ClusterView {
    inner: Arc<RwLock<View>>,
    /// The broker's links to the peers.
    links: Option<PeerLinks>,
}

struct View {
    /// This node.
    node: NodeId,
    /// The cluster's name.
    cluster: String,
    /// Every configured member, this node first.
    members: Vec<Member>,
    /// The lease holder, if any.
    leader: Option<NodeId>,
    /// The lease term: grows each time leadership changes hands.
    term: u64,
    /// The witness broker, when one is configured.
    witness: Option<WitnessStatus>,
}

/// The witness broker as seen from here (`[cluster.witness]`).
#[derive(Debug, Clone, Serialize)]
pub struct WitnessStatus {
    /// Where it is, `host:port`.
    pub address: String,
    /// Whether this node's connection to it is up and subscribed.
    pub connected: bool,
}

/// One member as seen from here.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// The member's node id.
    pub id: String,
    /// Whether this member is the node answering.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Whether the member is seen online.
    pub online: bool,
    /// `leader` or `follower`, derived from the lease holder when a health snapshot is taken
    /// (the stored members keep `follower`).
    pub role: &'static str,
    /// Milliseconds since its last heartbeat arrived (null for this node, or never heard).
    pub last_heartbeat_ms: Option<u64>,
    /// The term its last heartbeat carried.
    pub term: Option<u64>,
    /// Its uptime, as its last heartbeat said.
    pub uptime_seconds: Option<u64>,
    /// Its version, as its last heartbeat said.
    pub version: Option<String>,
}

/// What the coordinator knows of a member, for the view.
#[derive(Debug, Clone, Default)]
pub struct MemberUpdate {
    /// Heard within the down-after time.
    pub online: bool,
    /// Milliseconds since its last heartbeat.
    pub last_heartbeat_ms: Option<u64>,
    /// Its last heartbeat's term.
    pub term: Option<u64>,
    /// Its uptime.
    pub uptime_seconds: Option<u64>,
    /// Its version.
    pub version: Option<String>,
}

/// The cluster's health, in the shape of `GET /health` (CONTRACT.md).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterHealth {
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: &'static str,
    /// The node answering.
    pub node: String,
    /// The cluster's name.
    pub cluster: String,
    /// Configured members, this node included.
    pub cluster_nodes: usize,
    /// Members seen online.
    pub healthy_nodes: usize,
    /// The lease holder, or null.
    pub leader: Option<String>,
    /// The lease term.
    pub term: u64,
    /// Every member.
    pub members: Vec<Member>,
    /// The broker's link to each peer.
    pub peers: Vec<PeerStatus>,
    /// The witness broker, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witness: Option<WitnessStatus>,
}

impl ClusterHealth {
    /// Whether the node should answer 200 (healthy, degraded) rather than 503.
    pub fn is_serving(&self) -> bool {
        self.leader.is_some()
    }
}

impl ClusterView {
    /// The view at start: this node online, peers not yet seen, no leader; `links` reports
    /// the broker's links to the peers.
    pub fn new(settings: &Settings, links: Option<PeerLinks>) -> Self {
        let member = |id: String, is_self: bool| Member {
            id,
            is_self,
            online: is_self,
            role: "follower",
            last_heartbeat_ms: None,
            term: None,
            uptime_seconds: None,
            version: None,
        };
        let mut members = vec![member(settings.node.id.to_string(), true)];
        members.extend(
            settings
                .cluster
                .peers
                .iter()
                .map(|p| member(p.id.to_string(), false)),
        );
        ClusterView {
            links,
            inner: Arc::new(RwLock::new(View {
                node: settings.node.id.clone(),
                cluster: settings.cluster.name.clone(),
                members,
                leader: None,
                term: 0,
                witness: settings.cluster.witness.as_ref().map(|w| WitnessStatus {
                    address: w.mqtt.to_string(),
                    connected: false,
                }),
            })),
        }
    }

    /// Records `leader` as the lease holder for `term`.
    pub fn set_leader(&self, leader: Option<NodeId>, term: u64) {
        // A poisoned lock means a reader panicked; the view itself is still consistent.
        let mut v = self.inner.write().unwrap_or_else(|e| e.into_inner());
        v.leader = leader;
        v.term = term;
    }

    /// Records whether the witness connection is up.
    pub fn set_witness_connected(&self, connected: bool) {
        let mut v = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = &mut v.witness {
            w.connected = connected;
        }
    }

    /// Records what the coordinator knows of the peer `id`.
    pub fn update_member(&self, id: &str, update: MemberUpdate) {
        let mut v = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = v.members.iter_mut().find(|m| m.id == id && !m.is_self) {
            m.online = update.online;
            m.last_heartbeat_ms = update.last_heartbeat_ms;
            m.term = update.term;
            m.uptime_seconds = update.uptime_seconds;
            m.version = update.version;
        }
    }

    /// The lease holder (if any) and the current term, read together.
    pub fn leader_and_term(&self) -> (Option<NodeId>, u64) {
        self.read(|v| (v.leader.clone(), v.term))
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.read(|v| v.term)
    }

    /// The cluster's health right now.
    pub fn health(&self) -> ClusterHealth {
        let peers = self
            .links
            .as_ref()
            .map(PeerLinks::status)
            .unwrap_or_default();
        self.read(|v| {
            let healthy_nodes = v.members.iter().filter(|m| m.online).count();
            let status = match (&v.leader, healthy_nodes == v.members.len()) {
                (None, _) => "unhealthy",
                (Some(_), true) => "healthy",
                (Some(_), false) => "degraded",
            };
            ClusterHealth {
                status,
                node: v.node.to_string(),
                cluster: v.cluster.clone(),
                cluster_nodes: v.members.len(),
                healthy_nodes,
                leader: v.leader.as_ref().map(ToString::to_string),
                term: v.term,
                // A member's role follows from who holds the lease.
                members: v
                    .members
                    .iter()
                    .map(|m| Member {
                        role: if v.leader.as_ref().is_some_and(|l| l.as_str() == m.id) {
                            "leader"
                        } else {
                            "follower"
                        },
                        ..m.clone()
                    })
                    .collect(),
                peers,
                witness: v.witness.clone(),
            }
        })
    }

    fn read<T>(&self, f: impl FnOnce(&View) -> T) -> T {
        f(&self.inner.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A cluster event as published on `<prefix>/<cluster>/events`.
#[derive(Debug, Clone, Serialize)]
pub struct Event<'a> {
    /// `node_up`, `node_down`, `leader_elected`.
    pub event: &'a str,
    /// The node the event is about.
    pub node: &'a str,
    /// The term at the time of the event.
    pub term: u64,
    /// When it happened, RFC 3339 UTC.
    pub ts: String,
}

impl<'a> Event<'a> {
    /// An event stamped with the current time.
    pub fn now(event: &'a str, node: &'a str, term: u64) -> Self {
        Event {
            event,
            node,
            term,
            ts: rfc3339(SystemTime::now()),
        }
    }
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SSZ` (UTC), without a date-time crate.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian), era-based.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_341_600);
        assert_eq!(rfc3339(t), "2026-11-22T10:00:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    fn settings(peers: &str) -> Settings {
        let src = format!("[node]\nid = \"node-a\"\n[cluster]\npeers = [{peers}]\n");
        crate::config::parse(&src, "t.toml").unwrap()
    }

    #[test]
    fn single_node_leads_and_is_healthy() {
        let view = ClusterView::new(&settings(""), None);
        assert_eq!(view.health().status, "unhealthy");
        view.set_leader(Some(NodeId::parse("node-a").unwrap()), 3);
        let h = view.health();
        assert_eq!(
            (h.status, h.cluster_nodes, h.healthy_nodes, h.term),
            ("healthy", 1, 1, 3)
        );
        assert_eq!(h.leader.as_deref(), Some("node-a"));
        assert_eq!(h.members[0].role, "leader");
    }

    #[test]
    fn missing_peer_degrades_and_no_leader_is_unhealthy() {
        let view = ClusterView::new(
            &settings("{ id = \"node-b\", mqtt = \"127.0.0.1:1884\" }"),
            None,
        );
        let h = view.health();
        assert_eq!(
            (h.status, h.cluster_nodes, h.healthy_nodes),
            ("unhealthy", 2, 1)
        );
        assert!(!h.is_serving());
        view.set_leader(Some(NodeId::parse("node-a").unwrap()), 1);
        assert_eq!(view.health().status, "degraded");
        view.update_member(
            "node-b",
            MemberUpdate {
                online: true,
                ..MemberUpdate::default()
            },
        );
        assert_eq!(view.health().status, "healthy");
    }
}
