//! Clusters of real `roost` processes on loopback. Each member gets its own loopback address
//! (a random `127.x.y.z`, MQTT on port 1883 there), so its peers' configs can name it before
//! it starts, it can be restarted on the same address, and tests running in parallel do not
//! collide. Members keep their data dirs across restarts.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{Node, EVENT_TIMEOUT};

/// The MQTT port every member listens on, each at its own loopback address.
pub const MQTT_PORT: u16 = 1883;

/// One member's fixed identity: what a restart reuses.
struct Member {
    id: String,
    mqtt: SocketAddr,
    data_dir: PathBuf,
}

/// A cluster of `roost` processes; every process is killed when it drops.
pub struct Cluster {
    /// The cluster's name.
    pub name: String,
    members: Vec<Member>,
    /// The running processes, by member index; `None` while a member is stopped.
    nodes: Vec<Option<Node>>,
    /// Extra TOML for every member's config (whole sections other than `[cluster]`).
    extra: String,
    /// Extra keys for every member's `[cluster]` section.
    cluster_extra: String,
    _dir: tempfile::TempDir,
}

/// A random loopback address, distinct enough that parallel tests never share one.
fn loopback_ip(salt: u32) -> Ipv4Addr {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let seed = nanos
        .wrapping_mul(2_654_435_761)
        .wrapping_add(std::process::id().wrapping_mul(40_503))
        .wrapping_add(salt.wrapping_mul(97_531));
    let [a, b, c, _] = seed.to_be_bytes();
    // 127.0.0.0/24 is where everything else on the machine lives; .0 and .255 are avoided.
    Ipv4Addr::new(127, a.clamp(1, 254), b, c.clamp(2, 253))
}

/// A loopback address no other test uses (a random `127.x.y.z`, port [`MQTT_PORT`]), for a
/// node whose address must be known before it starts.
pub fn free_loopback_addr() -> SocketAddr {
    SocketAddr::new(loopback_ip(std::process::id()).into(), MQTT_PORT)
}

impl Cluster {
    /// Members `node-a`, `node-b`, ... of a cluster named `test`, not yet started.
    pub fn new(size: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("a writable temp dir");
        let members = (0..size)
            .map(|i| {
                let id = format!("node-{}", (b'a' + i as u8) as char);
                Member {
                    mqtt: SocketAddr::new(loopback_ip(i as u32).into(), MQTT_PORT),
                    data_dir: dir.path().join(&id),
                    id,
                }
            })
            .collect();
        Cluster {
            name: "test".into(),
            members,
            nodes: (0..size).map(|_| None).collect(),
            extra: String::new(),
            cluster_extra: String::new(),
            _dir: dir,
        }
    }

    /// Adds keys to every member's `[cluster]` section (e.g. heartbeat settings).
    pub fn cluster_config(mut self, keys: &str) -> Cluster {
        self.cluster_extra.push_str(keys);
        self.cluster_extra.push('\n');
        self
    }

    /// Adds whole TOML sections to every member's config.
    pub fn config(mut self, toml: &str) -> Cluster {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// Starts every member, then waits until they all agree on one leader.
    pub fn start(mut self) -> Cluster {
        for i in 0..self.members.len() {
            self.start_member(i);
        }
        self.wait_agreed_leader(&self.running(), EVENT_TIMEOUT);
        self
    }

    /// Member `i`'s `[cluster]` section.
    fn cluster_section(&self, i: usize) -> String {
        let peers: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, m)| format!("  {{ id = \"{}\", mqtt = \"{}\" }},", m.id, m.mqtt))
            .collect();
        format!(
            "[cluster]\nname = \"{}\"\npeers = [\n{}\n]\n{}",
            self.name,
            peers.join("\n"),
            self.cluster_extra
        )
    }

    /// Starts (or restarts) member `i` on its address and data dir; returns once it is ready.
    pub fn start_member(&mut self, i: usize) -> &Node {
        assert!(self.nodes[i].is_none(), "member {i} is already running");
        let member = &self.members[i];
        let node = Node::builder(&member.id)
            .listen(member.mqtt)
            .data_dir(&member.data_dir)
            .log_file(&self.log_path(i))
            .config(&self.cluster_section(i))
            .config(&self.extra)
            .start();
        self.nodes[i] = Some(node);
        self.node(i)
    }

    /// Kills member `i` with SIGKILL (no goodbye, no handover).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill();
        }
    }

    /// Stops member `i` with SIGTERM (clean shutdown, lease handed over) and waits for it.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            let status = node.terminate(Duration::from_secs(10));
            assert!(
                status.is_some_and(|s| s.success()),
                "{} did not stop cleanly: {status:?}\n{}",
                node.id,
                node.logs()
            );
        }
    }

    /// The running member `i`.
    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("member {i} is not running"))
    }

    /// The indices of the running members.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    /// Member `i`'s log file, every run of it appended.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self._dir.path().join(format!("{}.log", self.members[i].id))
    }

    /// Member `i`'s logs so far, every run of it.
    pub fn logs(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// Member `i`'s id.
    pub fn id(&self, i: usize) -> &str {
        &self.members[i].id
    }

    /// Member `i`'s MQTT address.
    pub fn mqtt(&self, i: usize) -> SocketAddr {
        self.members[i].mqtt
    }

    /// The member index of node `id`.
    pub fn index_of(&self, id: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.id == id)
            .unwrap_or_else(|| panic!("no member {id}"))
    }

    /// Waits until every member in `among` reports the same leader and term in `/health`,
    /// with all of `among` seen online, and returns (leader index, term).
    pub fn wait_agreed_leader(&self, among: &[usize], limit: Duration) -> (usize, u64) {
        self.wait_agreed_leader_beyond(among, 0, limit)
    }

    /// [`Cluster::wait_agreed_leader`], for a term above `term` (a new leader).
    pub fn wait_agreed_leader_beyond(
        &self,
        among: &[usize],
        term: u64,
        limit: Duration,
    ) -> (usize, u64) {
        let deadline = Instant::now() + limit;
        loop {
            let views: Vec<(Option<String>, u64, u64)> = among
                .iter()
                .map(|&i| {
                    let (_, h) = self.node(i).health();
                    (
                        h["leader"].as_str().map(str::to_owned),
                        h["term"].as_u64().unwrap_or(0),
                        h["healthy_nodes"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            let first = &views[0];
            if let (Some(leader), true) = (
                &first.0,
                first.1 > term
                    && views
                        .iter()
                        .all(|v| v.0 == first.0 && v.1 == first.1 && v.2 >= among.len() as u64),
            ) {
                return (self.index_of(leader), first.1);
            }
            assert!(
                Instant::now() < deadline,
                "members {among:?} did not agree on a leader: {views:?}"
            );
            // /health is polled: the views are what is asserted, and no event announces
            // agreement across several processes.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
