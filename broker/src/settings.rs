//! Validated settings of the embedded broker. The gateway maps its config file onto these;
//! nothing in this crate reads files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the node's MQTT broker listens and what it accepts.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// The public listener for MQTT 3.1.1 and MQTT 5 clients (port 0 lets the OS choose).
    pub listen: SocketAddr,
    /// The most network clients connected at once; more are refused at accept.
    pub max_connections: usize,
    /// The largest MQTT packet a client may send, in bytes (fixed header included).
    pub max_packet_size: usize,
    /// How long a new connection has to send its CONNECT packet.
    pub connect_timeout: Duration,
    /// How long a write to a client may wait (the client not reading) before the edge
    /// disconnects it as a slow consumer.
    pub send_timeout: Duration,
    /// The longest a session is kept for a client that is away: caps MQTT 5 Session Expiry
    /// Intervals, and is the expiry of MQTT 3.1.1 persistent sessions (clean session 0).
    pub max_session_expiry: Duration,
    /// QoS 1/2 messages queued per session: the most kept for a client that is away, and
    /// the mark past which a connected client's backlog holds publishers back.
    pub max_queued_messages: usize,
    /// Where the broker keeps its durable state (the retained set, `retained.redb`).
    pub data_dir: PathBuf,
    /// This node's id: the writer of its retained changes, and its name on peer links.
    pub node: String,
    /// The cluster's other members, linked in a full mesh.
    pub mesh: crate::MeshSettings,
}
