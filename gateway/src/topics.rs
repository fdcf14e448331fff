//! Every MQTT topic the node publishes or listens on, built in one place so docs/topics.md
//! has a single source to stay true to.

use crate::config::NodeId;

/// Topic builder for one node of one cluster under the configured prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `<prefix>/<cluster>`, the root of everything the cluster publishes about itself.
    root: String,
}

impl Topics {
    /// Topics under `<prefix>/<cluster>/`.
    pub fn new(prefix: &str, cluster: &str) -> Self {
        Topics {
            root: format!("{prefix}/{cluster}"),
        }
    }

    /// `<prefix>/<cluster>/nodes/+/status`: every member's status.
    pub fn node_statuses(&self) -> String {
        format!("{}/nodes/+/status", self.root)
    }

    /// `<prefix>/<cluster>/leader`: retained, the lease holder and its term.
    pub fn leader(&self) -> String {
        format!("{}/leader", self.root)
    }

    /// `$<prefix>/<cluster>/heartbeat/<node>`: a member's heartbeats (a `$` topic, so `#`
    /// subscriptions of people debugging do not drown in them).
    pub fn heartbeat(&self, node: &NodeId) -> String {
        format!("${}/heartbeat/{node}", self.root)
    }

    /// `$<prefix>/<cluster>/heartbeat/+`: every member's heartbeats.
    pub fn heartbeats(&self) -> String {
        format!("${}/heartbeat/+", self.root)
    }

    /// `$<prefix>/<cluster>/lease`: vote requests, votes and resignations.
    pub fn lease(&self) -> String {
        format!("${}/lease", self.root)
    }

    /// `<prefix>/<cluster>/nodes/<node>/status`: retained `online` / `offline`.
    pub fn node_status(&self, node: &NodeId) -> String {
        format!("{}/nodes/{node}/status", self.root)
    }

    /// `<prefix>/<cluster>/events`: one JSON object per cluster event, not retained.
    pub fn events(&self) -> String {
        format!("{}/events", self.root)
    }

    /// `<prefix>/<cluster>/witness/heartbeat/<node>`, on the witness broker: a member's
    /// heartbeats, the same as on the mesh.
    pub fn witness_heartbeat(&self, node: &NodeId) -> String {
        format!("{}/witness/heartbeat/{node}", self.root)
    }

    /// `<prefix>/<cluster>/witness/heartbeat/+`, on the witness broker.
    pub fn witness_heartbeats(&self) -> String {
        format!("{}/witness/heartbeat/+", self.root)
    }

    /// `<prefix>/<cluster>/witness/claim/<node>`, on the witness broker: retained, the
    /// latest term the member claimed the witness's vote for.
    pub fn witness_claim(&self, node: &NodeId) -> String {
        format!("{}/witness/claim/{node}", self.root)
    }

    /// `<prefix>/<cluster>/witness/claim/+`, on the witness broker.
    pub fn witness_claims(&self) -> String {
        format!("{}/witness/claim/+", self.root)
    }

    /// The root of the replicated state's topics, `$<prefix>/<cluster>/state/`; a key goes on
    /// `<root><ns>/<path>` (`replication/rules.rs`).
    pub fn state_root(&self) -> String {
        format!("${}/state/", self.root)
    }

    /// `<prefix>/<cluster>/devices/<node>/`: where the node's devices' topics start.
    fn devices_of(&self, node: &NodeId) -> String {
        format!("{}/devices/{node}/", self.root)
    }

    /// `<prefix>/<cluster>/devices/<node>/<device>/<entity>/state`: retained, the entity's
    /// state.
    pub fn entity_state(&self, node: &NodeId, device: &str, entity: &str) -> String {
        format!("{}{device}/{entity}/state", self.devices_of(node))
    }

    /// `<prefix>/<cluster>/devices/<node>/<device>/<entity>/set`: commands to the entity.
    pub fn entity_command(&self, node: &NodeId, device: &str, entity: &str) -> String {
        format!("{}{device}/{entity}/set", self.devices_of(node))
    }

    /// `<prefix>/<cluster>/devices/<node>/+/+/set`: commands to every entity of the node.
    pub fn entity_commands(&self, node: &NodeId) -> String {
        format!("{}+/+/set", self.devices_of(node))
    }

    /// The device and entity a topic of [`Topics::entity_commands`] names.
    pub fn command_target<'t>(&self, node: &NodeId, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let rest = topic
            .strip_prefix(self.devices_of(node).as_str())?
            .strip_suffix("/set")?;
        rest.split_once('/').filter(|(_, e)| !e.contains('/'))
    }

    /// `<prefix>/<cluster>/devices/<node>/<device>/availability`: retained, `online` while
    /// the device can be reached, else `offline`.
    pub fn device_availability(&self, node: &NodeId, device: &str) -> String {
        format!("{}{device}/availability", self.devices_of(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let t = Topics::new("roost", "home");
        let n = NodeId::parse("node-a").unwrap();
        assert_eq!(t.node_status(&n), "roost/home/nodes/node-a/status");
        assert_eq!(t.events(), "roost/home/events");
        assert_eq!(t.leader(), "roost/home/leader");
        assert_eq!(t.heartbeat(&n), "$roost/home/heartbeat/node-a");
        assert_eq!(t.heartbeats(), "$roost/home/heartbeat/+");
        assert_eq!(t.lease(), "$roost/home/lease");
        assert_eq!(t.node_statuses(), "roost/home/nodes/+/status");
        assert_eq!(t.witness_claim(&n), "roost/home/witness/claim/node-a");
        assert_eq!(t.witness_claims(), "roost/home/witness/claim/+");
        assert_eq!(
            t.witness_heartbeat(&n),
            "roost/home/witness/heartbeat/node-a"
        );
        assert_eq!(t.witness_heartbeats(), "roost/home/witness/heartbeat/+");
        assert_eq!(t.state_root(), "$roost/home/state/");
        assert_eq!(
            t.entity_state(&n, "demo-relay", "relay"),
            "roost/home/devices/node-a/demo-relay/relay/state"
        );
        let set = t.entity_command(&n, "demo-relay", "relay");
        assert_eq!(set, "roost/home/devices/node-a/demo-relay/relay/set");
        assert_eq!(t.command_target(&n, &set), Some(("demo-relay", "relay")));
        assert_eq!(
            t.command_target(&n, "roost/home/devices/node-a/x/set"),
            None
        );
        assert_eq!(
            t.command_target(&n, "roost/home/devices/node-b/x/y/set"),
            None
        );
        assert_eq!(t.entity_commands(&n), "roost/home/devices/node-a/+/+/set");
        assert_eq!(
            t.device_availability(&n, "demo-relay"),
            "roost/home/devices/node-a/demo-relay/availability"
        );
    }
}
