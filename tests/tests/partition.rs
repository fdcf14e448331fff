//! Partition: a three-node cluster on a real (virtual) network is cut in two, and heals; and
//! a pair with a witness, cut apart, keeps exactly one leader, the one that reaches the
//! witness.
//!
//! The test builds its own network and removes it again, as root:
//! - a "hub" network namespace holding a Linux bridge, and one namespace per node;
//! - each node namespace is joined to the bridge by a veth pair, with the node at
//!   `10.R.0.<n>/24` (R derived from the test's pid) and `lo` up in every namespace;
//! - every node runs `roost run --config FILE` through `ip netns exec`, which execs roost in
//!   place, so the pid spawned is roost's own and killing it stops the node.
//!
//! Names carry the test's pid, so parallel runs never share a namespace. A guard kills the
//! nodes and deletes the namespaces (and with them every veth and the bridge) when the test
//! ends, panics included. Where namespaces cannot be created (not root, no permission, no `ip`)
//! the test says so loudly on stderr and returns: that is its only skip.
//!
//! The cut takes the current leader's bridge port down (the hub end of its veth), so its
//! connections stall as on a pulled cable. The leader, now a minority of one, must step down;
//! the two others must elect one of themselves in a higher term. After the port comes back up
//! all three must agree on one leader in a term above the first, and a retained message
//! published on each side during the cut must be served by every node.
//!
//! The pair's witness is a Mosquitto broker in the hub namespace, on the bridge's own address
//! `10.R.0.254`. Its cuts are routes: a blackhole route in a node's namespace for an address
//! drops everything that node sends there, so the pair's mesh can be cut while both still
//! reach the witness, and then the leader's way to the witness too.
//!
//! The same routes cut a pair's link in the middle of a QoS 1 stream: what was in flight is
//! resent after the heal and every message reaches the subscriber on the other node once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use roost_tests::{
    roost_bin, spawn_line_reader, start_roost, wait_ready, ChildGuard, EVENT_TIMEOUT,
};

const IDS: [&str; 3] = ["node-a", "node-b", "node-c"];
const MQTT_PORT: u16 = 1883;
const HTTP_PORT: u16 = 8080;
/// How often `/health` is read while waiting for the cluster to reach a state.
const POLL: Duration = Duration::from_millis(50);
/// The bound on the first agreement, which includes the nodes meeting each other.
const FIRST_AGREEMENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How many lines of each node's log a failure message carries.
const LOG_TAIL: usize = 60;

/// Runs `ip` with `args`; the error names the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("`ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip` with `args` once namespaces are known to work; a failure is a broken setup.
fn ip_setup(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("network setup failed: {e}");
    }
}

/// The hub namespace with its bridge, and one namespace per node; all deleted on drop.
struct Net {
    hub: String,
    /// Each node's namespace, by node index.
    node_ns: Vec<String>,
    /// The hub end of each node's veth: its bridge port, taken down to cut the node off.
    hub_veth: Vec<String>,
    /// Each node's address.
    node_ip: Vec<String>,
    /// The bridge's own address, in the hub namespace.
    hub_ip: String,
    /// Every namespace created so far, deleted on drop.
    created: Vec<String>,
}

impl Net {
    /// Builds the network for the first `nodes` of `IDS`, with the bridge itself at
    /// `10.R.0.254` (where a witness can listen). `tag` (one letter) tells apart the
    /// networks of tests running at once in one process.
    fn setup_for(tag: char, nodes: usize) -> Result<Net, String> {
        let pid = std::process::id();
        // 10.1.x.x up to 10.250.x.x: only this run's namespaces ever see these addresses.
        let subnet = pid % 250 + 1;
        let mut net = Net {
            hub: format!("roost-part-{tag}{pid}-hub"),
            node_ns: (0..nodes)
                .map(|i| format!("roost-part-{tag}{pid}-{i}"))
                .collect(),
            // Interface names are at most 15 bytes: "rp", the tag, a pid of at most 7
            // digits, and 2 more.
            hub_veth: (0..nodes).map(|i| format!("rp{tag}{pid}h{i}")).collect(),
            node_ip: (0..nodes)
                .map(|i| format!("10.{subnet}.0.{}", i + 1))
                .collect(),
            hub_ip: format!("10.{subnet}.0.254"),
            created: Vec::new(),
        };
        // A namespace named after our pid is left over from a dead run that had it before us.
        for ns in std::iter::once(&net.hub).chain(&net.node_ns) {
            let _ = ip(&["netns", "del", ns]);
        }
        ip(&["netns", "add", &net.hub])?;
        net.created.push(net.hub.clone());
        ip_setup(&["-n", &net.hub, "link", "set", "lo", "up"]);
        ip_setup(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        ip_setup(&["-n", &net.hub, "link", "set", "br0", "up"]);
        let hub_addr = format!("{}/24", net.hub_ip);
        ip_setup(&["-n", &net.hub, "addr", "add", &hub_addr, "dev", "br0"]);
        for i in 0..nodes {
            let ns = net.node_ns[i].clone();
            let hub_veth = net.hub_veth[i].clone();
            let node_veth = format!("rp{tag}{pid}n{i}");
            let addr = format!("{}/24", net.node_ip[i]);
            ip_setup(&["netns", "add", &ns]);
            net.created.push(ns.clone());
            ip_setup(&["-n", &ns, "link", "set", "lo", "up"]);
            ip_setup(&[
                "-n", &net.hub, "link", "add", &hub_veth, "type", "veth", "peer", "name",
                &node_veth, "netns", &ns,
            ]);
            ip_setup(&["-n", &net.hub, "link", "set", &hub_veth, "master", "br0"]);
            ip_setup(&["-n", &net.hub, "link", "set", &hub_veth, "up"]);
            ip_setup(&["-n", &ns, "addr", "add", &addr, "dev", &node_veth]);
            ip_setup(&["-n", &ns, "link", "set", &node_veth, "up"]);
        }
        Ok(net)
    }

    /// Takes node `i`'s bridge port down (`up == false`) or brings it back.
    fn set_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip_setup(&["-n", &self.hub, "link", "set", &self.hub_veth[i], state]);
    }

    /// Cuts the link between nodes `a` and `b` both ways (`cut`), or mends it.
    fn cut_between(&self, a: usize, b: usize, cut: bool) {
        self.block(a, &self.node_ip[b], cut);
        self.block(b, &self.node_ip[a], cut);
    }

    /// Makes node `i` drop everything it sends to `addr` (`blocked`), or stop doing so.
    fn block(&self, i: usize, addr: &str, blocked: bool) {
        let verb = if blocked { "add" } else { "del" };
        let dest = format!("{addr}/32");
        ip_setup(&["-n", &self.node_ns[i], "route", verb, "blackhole", &dest]);
    }

    /// Starts Mosquitto in the hub namespace on the bridge's address, port 1883.
    fn start_witness(&self, dir: &Path) -> ChildGuard {
        let conf = dir.join("witness.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {MQTT_PORT} {}\nallow_anonymous true\n",
                self.hub_ip
            ),
        )
        .expect("the witness config is writable in the temp dir");
        ChildGuard(
            Command::new("ip")
                .args(["netns", "exec", &self.hub, "mosquitto", "-c"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto is installed (apt-get install mosquitto)"),
        )
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the interfaces in it: the veths and the bridge.
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("partition test cleanup: {e}");
            }
        }
    }
}

/// A `roost` process running in a node's namespace; killed when it drops.
struct NsNode {
    child: ChildGuard,
    id: &'static str,
    ns: String,
    ip: String,
    stderr_path: PathBuf,
    /// Keeps the stdout pipe read, so the node never writes into a closed pipe.
    _stdout: Receiver<String>,
}

/// What one node's `/health` says about the cluster.
#[derive(Debug, Clone, PartialEq)]
struct View {
    status: String,
    leader: Option<String>,
    term: u64,
    /// Its outbound mesh links that are up.
    links_up: usize,
    /// Whether its witness connection is up (false without a witness).
    witness: bool,
}

/// Each node's `/health`, or why it gave none.
type Views = Vec<Result<View, String>>;

impl NsNode {
    /// Writes node `i`'s config into `dir` (with `cluster_extra` in its `[cluster]`), starts
    /// it in its namespace, waits for `Ready.`.
    fn start(net: &Net, i: usize, dir: &Path, cluster_extra: &str) -> NsNode {
        let id = IDS[i];
        let ip = net.node_ip[i].clone();
        let peers: Vec<String> = (0..net.node_ip.len())
            .filter(|&j| j != i)
            .map(|j| {
                format!(
                    "{{ id = \"{}\", mqtt = \"{}:{MQTT_PORT}\" }}",
                    IDS[j], net.node_ip[j]
                )
            })
            .collect();
        let config = format!(
            "[node]\nid = \"{id}\"\ndata_dir = \"{}\"\n\n\
             [mqtt]\nlisten = \"{ip}:{MQTT_PORT}\"\n\n\
             [http]\nlisten = \"{ip}:{HTTP_PORT}\"\n\n\
             [demo]\nenabled = false\n\n\
             [cluster]\nname = \"part\"\npeers = [ {} ]\n{cluster_extra}\n",
            dir.join(id).display(),
            peers.join(", ")
        );
        let config_path = dir.join(format!("{id}.toml"));
        std::fs::write(&config_path, config).expect("the node config is writable in the temp dir");
        let stderr_path = dir.join(format!("{id}.stderr.log"));
        let stderr = std::fs::File::create(&stderr_path)
            .expect("the stderr log is creatable in the temp dir");
        let bin = roost_bin();
        let mut launcher = Command::new("ip");
        launcher.args(["netns", "exec", &net.node_ns[i]]).arg(&bin);
        let (child, lines) = start_roost(launcher, &config_path, stderr);
        wait_ready(
            &lines,
            &format!("{id} in namespace {}", net.node_ns[i]),
            &stderr_path,
        );
        // `ip netns exec` execs the program in place: the pid we hold is roost's, so the
        // guard's kill stops the node itself, not a wrapper that would leave it running.
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", child.0.id()))
            .expect("a ready node's /proc entry exists");
        let name = bin
            .file_name()
            .expect("the roost binary path names a file")
            .to_string_lossy();
        assert_eq!(
            comm.trim_end(),
            &name[..name.len().min(15)],
            "the pid spawned through `ip netns exec` is not the roost process"
        );
        NsNode {
            child,
            id,
            ns: net.node_ns[i].clone(),
            ip,
            stderr_path,
            _stdout: lines,
        }
    }

    /// `program` to run inside the node's namespace; add its arguments.
    fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns, program]);
        command
    }

    /// The node's `/health`, read from inside its namespace.
    fn health(&self) -> Result<View, String> {
        let url = format!("http://{}:{HTTP_PORT}/health", self.ip);
        let out = self
            .exec("curl")
            .args(["-s", "-m", "2", &url])
            .output()
            .expect("curl is installed");
        if !out.status.success() {
            return Err(format!("curl {url}: exit {:?}", out.status.code()));
        }
        let body = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| format!("/health is not JSON ({e}): {body}"))?;
        let leader = match &json["leader"] {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            _ => {
                return Err(format!(
                    "/health leader is neither a string nor null: {body}"
                ))
            }
        };
        Ok(View {
            status: json["status"]
                .as_str()
                .ok_or_else(|| format!("/health has no status: {body}"))?
                .to_owned(),
            leader,
            term: json["term"]
                .as_u64()
                .ok_or_else(|| format!("/health has no numeric term: {body}"))?,
            links_up: json["peers"]
                .as_array()
                .map_or(0, |p| p.iter().filter(|p| p["outbound"] == "up").count()),
            witness: json["witness"]["connected"] == true,
        })
    }

    /// Publishes a retained QoS 1 message to the node; panics unless it is acknowledged.
    fn publish_retained(&self, topic: &str, payload: &str) {
        let port = MQTT_PORT.to_string();
        // mosquitto_pub has no timeout of its own; `timeout` bounds a missing PUBACK.
        let out = self
            .exec("timeout")
            .args(["10", "mosquitto_pub", "-h", &self.ip, "-p", &port])
            .args(["-t", topic, "-m", payload, "-r", "-q", "1"])
            .output()
            .expect("mosquitto_pub is installed (apt-get install mosquitto-clients)");
        assert!(
            out.status.success(),
            "retained publish {topic}={payload} on {} failed ({:?}): {}{}\n{}",
            self.id,
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    /// The retained messages under `part/#` the node serves, as `topic payload` lines.
    fn retained(&self, count: usize) -> Output {
        let port = MQTT_PORT.to_string();
        let count = count.to_string();
        self.exec("mosquitto_sub")
            .args(["-h", &self.ip, "-p", &port, "-t", "part/#", "-v"])
            .args(["-C", &count, "-W", "3"])
            .output()
            .expect("mosquitto_sub is installed (apt-get install mosquitto-clients)")
    }

    /// The end of the node's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL);
        format!(
            "--- {} (pid {}) log, last {} lines ---\n{}",
            self.id,
            self.child.0.id(),
            lines.len() - start,
            lines[start..].join("\n")
        )
    }
}

/// Every node's `/health`, in node order.
fn views(nodes: &[NsNode]) -> Views {
    nodes.iter().map(NsNode::health).collect()
}

/// One line per node: what its `/health` says.
fn describe(nodes: &[NsNode], views: &Views) -> String {
    nodes
        .iter()
        .zip(views)
        .map(|(node, view)| match view {
            Ok(v) => format!(
                "  {}: status={} leader={} term={} links_up={} witness={}",
                node.id,
                v.status,
                v.leader.as_deref().unwrap_or("null"),
                v.term,
                v.links_up,
                v.witness
            ),
            Err(e) => format!("  {}: no health ({e})", node.id),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls every node's `/health` until `done` holds; panics with every view and log after
/// `limit`. Returns the views that satisfied it.
fn wait_for(nodes: &[NsNode], what: &str, limit: Duration, done: impl Fn(&Views) -> bool) -> Views {
    let deadline = Instant::now() + limit;
    loop {
        let views = views(nodes);
        if done(&views) {
            eprintln!("partition: {what}:\n{}", describe(nodes, &views));
            return views;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = nodes.iter().map(NsNode::log_tail).collect();
            panic!(
                "not reached within {limit:?}: {what}; last views:\n{}\n{}",
                describe(nodes, &views),
                logs.join("\n")
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The index of member `id` (an agreed leader, say).
fn member_index(id: &str) -> usize {
    IDS.iter()
        .position(|m| *m == id)
        .unwrap_or_else(|| panic!("{id:?} is not a member"))
}

/// The leader and term the given nodes all report, when they agree on a leader.
fn agreed(views: &Views, which: &[usize]) -> Option<(String, u64)> {
    let mut agreed: Option<(String, u64)> = None;
    for &i in which {
        let view = views[i].as_ref().ok()?;
        let this = (view.leader.clone()?, view.term);
        match &agreed {
            Some(first) if *first != this => return None,
            _ => agreed = Some(this),
        }
    }
    agreed
}

/// The network for `nodes` nodes, or `None` after a loud message where namespaces cannot be
/// created for want of permission or of `ip` (the only skip; any other failure fails).
fn network(tag: char, nodes: usize) -> Option<Net> {
    match Net::setup_for(tag, nodes) {
        Ok(net) => Some(net),
        Err(e)
            if !["not permitted", "Permission denied", "No such file"]
                .iter()
                .any(|cause| e.contains(cause)) =>
        {
            panic!("network setup failed: {e}")
        }
        Err(e) => {
            eprintln!(
                "\n==============================================================\n\
                 SKIPPED: network namespaces cannot be created here: {e}\n\
                 The partition tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2.\n\
                 ==============================================================\n"
            );
            None
        }
    }
}

/// Starts the three members in `net` (configs and data under `dir`) and waits until all agree
/// on a leader and a term; returns the nodes, the leader and the term.
fn start_agreed(net: &Net, dir: &Path) -> (Vec<NsNode>, String, u64) {
    let nodes: Vec<NsNode> = (0..IDS.len())
        .map(|i| NsNode::start(net, i, dir, ""))
        .collect();
    let all: Vec<usize> = (0..nodes.len()).collect();
    let views = wait_for(
        &nodes,
        "all three agree on a leader and a term",
        FIRST_AGREEMENT_TIMEOUT,
        |v| agreed(v, &all).is_some(),
    );
    let (leader, term) = agreed(&views, &all).expect("the wait above checked this");
    (nodes, leader, term)
}

#[test]
fn a_partitioned_leader_steps_down_and_the_cluster_heals() {
    let dir = tempfile::tempdir().expect("a writable temp dir");
    let Some(net) = network('t', IDS.len()) else {
        return;
    };
    // Declared after `net`, so dropped before it: the nodes die before their namespaces go.
    // 1. One leader, one term, seen by everyone.
    let (nodes, first_leader, first_term) = start_agreed(&net, dir.path());
    let all: Vec<usize> = (0..nodes.len()).collect();
    let cut = member_index(&first_leader);
    let majority: Vec<usize> = all.iter().copied().filter(|&i| i != cut).collect();

    // 2. Cut the leader off: the harder side to lose.
    eprintln!("partition: cutting off the leader {first_leader} (term {first_term})");
    net.set_link(cut, false);

    // 3. The minority steps down; the majority elects one of its own in a higher term.
    let views = wait_for(
        &nodes,
        &format!(
            "{first_leader} has stepped down and the majority has a leader of its own above term {first_term}"
        ),
        EVENT_TIMEOUT,
        |v| {
            let minority_down = v[cut]
                .as_ref()
                .is_ok_and(|m| m.leader.is_none() && m.status == "unhealthy");
            let majority_led = agreed(v, &majority).is_some_and(|(leader, term)| {
                term > first_term && majority.iter().any(|&i| IDS[i] == leader)
            });
            minority_down && majority_led
        },
    );
    let (_, partition_term) = agreed(&views, &majority).expect("the wait above checked this");

    // 4. Retained state written on both sides while they cannot talk.
    let writer = &nodes[majority[0]];
    writer.publish_retained("part/retained", "during-partition");
    nodes[cut].publish_retained("part/minority", "from-minority");

    // 5. Heal: everyone follows one leader, in a term above the first.
    eprintln!("partition: healing {first_leader}'s link");
    net.set_link(cut, true);
    wait_for(
        &nodes,
        &format!(
            "all three are healthy and agree on a leader in a term above {first_term} \
             (and not below the majority's {partition_term})"
        ),
        EVENT_TIMEOUT,
        |v| {
            let all_healthy = v
                .iter()
                .all(|v| v.as_ref().is_ok_and(|v| v.status == "healthy"));
            all_healthy
                && agreed(v, &all)
                    .is_some_and(|(_, term)| term > first_term && term >= partition_term)
        },
    );

    // 6. Both sides' retained messages are served everywhere. Convergence after the heal is
    // asynchronous, so each node is read until it serves both or the deadline passes.
    let want = [
        "part/minority from-minority",
        "part/retained during-partition",
    ];
    let deadline = Instant::now() + EVENT_TIMEOUT;
    for node in &nodes {
        loop {
            let out = node.retained(want.len());
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut got: Vec<&str> = stdout.lines().collect();
            got.sort_unstable();
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} does not serve both sides' retained messages within {EVENT_TIMEOUT:?}: \
                 got {got:?}, want {want:?}; mosquitto_sub stderr: {}\n{}",
                node.id,
                String::from_utf8_lossy(&out.stderr),
                node.log_tail()
            );
            std::thread::sleep(POLL);
        }
    }
}

#[test]
fn a_pair_cut_apart_keeps_one_leader_the_one_that_reaches_the_witness() {
    let dir = tempfile::tempdir().expect("a writable temp dir");
    let Some(net) = network('w', 2) else {
        return;
    };
    // Declared after `net`, so dropped before it.
    let _witness = net.start_witness(dir.path());
    let witness = format!("[cluster.witness]\nmqtt = \"{}:{MQTT_PORT}\"", net.hub_ip);
    let nodes: Vec<NsNode> = (0..2)
        .map(|i| NsNode::start(&net, i, dir.path(), &witness))
        .collect();
    let both = [0, 1];

    // 1. One leader, both linked to each other and to the witness.
    let views = wait_for(
        &nodes,
        "both agree on a leader, with their mesh links and the witness up",
        FIRST_AGREEMENT_TIMEOUT,
        |v| {
            agreed(v, &both).is_some()
                && v.iter()
                    .all(|v| v.as_ref().is_ok_and(|v| v.links_up == 1 && v.witness))
        },
    );
    let (leader_id, term) = agreed(&views, &both).expect("the wait above checked this");
    let leader = member_index(&leader_id);
    let follower = 1 - leader;

    // 2. Cut the mesh between them; both still reach the witness, which carries the
    // leader's heartbeats and acknowledges it: the same leader, the same term.
    eprintln!("partition: cutting the mesh between the pair");
    net.cut_between(leader, follower, true);
    wait_for(
        &nodes,
        &format!("the mesh is down both ways and both still follow {leader_id} in term {term}"),
        EVENT_TIMEOUT,
        |v| {
            v.iter().all(|v| v.as_ref().is_ok_and(|v| v.links_up == 0))
                && agreed(v, &both) == Some((leader_id.clone(), term))
        },
    );

    // 3. The leader loses the witness too: it is alone, a minority of one of three votes,
    // and steps down; the follower wins the witness's vote in a higher term.
    eprintln!("partition: cutting {leader_id} off the witness");
    net.block(leader, &net.hub_ip, true);
    let views = wait_for(
        &nodes,
        &format!("{leader_id} stepped down and the other node leads above term {term}"),
        EVENT_TIMEOUT,
        |v| {
            let old = v[leader].as_ref().is_ok_and(|m| m.leader.is_none());
            let new = v[follower]
                .as_ref()
                .is_ok_and(|m| m.leader.as_deref() == Some(IDS[follower]) && m.term > term);
            old && new
        },
    );
    let cut_term = views[follower].as_ref().map_or(0, |v| v.term);
    // One leader at a time: the old leader had stepped down before the new one was elected
    // (log lines start with their UTC time, so they compare as strings).
    let line_time = |node: &NsNode, pattern: &str| -> String {
        let log = std::fs::read_to_string(&node.stderr_path).unwrap_or_default();
        log.lines()
            .rev()
            .find(|l| l.contains(pattern))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no {pattern:?} in the log\n{}", node.log_tail()))
    };
    let stepped_down = line_time(&nodes[leader], "stepped down");
    let elected = line_time(&nodes[follower], &format!("elected leader term={cut_term}"));
    assert!(
        stepped_down < elected,
        "{leader_id} stepped down at {stepped_down}, after {} was elected at {elected}",
        IDS[follower]
    );

    // 4. Heal: one leader again, seen by both, in a term not below the one of the cut.
    eprintln!("partition: healing");
    net.block(leader, &net.hub_ip, false);
    net.cut_between(leader, follower, false);
    wait_for(
        &nodes,
        &format!("both healthy and agreed on a leader at or above term {cut_term}"),
        EVENT_TIMEOUT,
        |v| {
            v.iter().all(|v| {
                v.as_ref()
                    .is_ok_and(|v| v.status == "healthy" && v.links_up == 1)
            }) && agreed(v, &both).is_some_and(|(_, t)| t >= cut_term)
        },
    );
    // Every election in both logs: one leader per term.
    let mut by_term = std::collections::BTreeMap::<u64, Vec<&str>>::new();
    for node in &nodes {
        let log = std::fs::read_to_string(&node.stderr_path).unwrap_or_default();
        for line in log.lines().filter(|l| l.contains("elected leader")) {
            let elected = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("term="))
                .and_then(|t| t.parse().ok())
                .expect("an election line names its term");
            by_term.entry(elected).or_default().push(node.id);
        }
    }
    for (term, leaders) in &by_term {
        assert_eq!(leaders.len(), 1, "term {term} had leaders {leaders:?}");
    }
}

/// A client process in a node's namespace, its stdout read line by line.
struct NsClient {
    child: ChildGuard,
    lines: Receiver<String>,
}

impl NsClient {
    /// Runs `program args` in `node`'s namespace, line-buffered.
    fn start(node: &NsNode, program: &str, args: &[&str], stdin: Stdio) -> NsClient {
        let mut child = ChildGuard(
            node.exec("stdbuf")
                .args(["-oL", program])
                .args(args)
                .stdin(stdin)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto-clients are installed"),
        );
        let lines = spawn_line_reader(child.0.stdout.take().expect("stdout was piped above"));
        NsClient { child, lines }
    }

    /// The next line, or a panic naming `what` after `limit`.
    fn next_line(&self, what: &str, limit: Duration) -> String {
        self.lines
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("no line from the client while waiting for {what}: {e:?}"))
    }
}

#[test]
fn qos1_messages_in_flight_when_a_link_drops_are_resent_and_delivered_once() {
    const FIRST: usize = 5_000;
    const TOTAL: usize = 10_000;
    let dir = tempfile::tempdir().expect("a writable temp dir");
    let Some(net) = network('q', 2) else {
        return;
    };
    let nodes: Vec<NsNode> = (0..2)
        .map(|i| NsNode::start(&net, i, dir.path(), ""))
        .collect();
    wait_for(
        &nodes,
        "both agree on a leader with their mesh links up",
        FIRST_AGREEMENT_TIMEOUT,
        |v| {
            agreed(v, &[0, 1]).is_some()
                && v.iter().all(|v| v.as_ref().is_ok_and(|v| v.links_up == 1))
        },
    );
    let port = MQTT_PORT.to_string();
    let sub = NsClient::start(
        &nodes[1],
        "mosquitto_sub",
        &[
            "-d",
            "-h",
            &nodes[1].ip,
            "-p",
            &port,
            "-t",
            "part/stream",
            "-q",
            "1",
        ],
        Stdio::null(),
    );
    while !sub
        .next_line("SUBACK", EVENT_TIMEOUT)
        .starts_with("Subscribed (mid:")
    {}
    // The publisher on node-a reads one payload per line; the test feeds it.
    let mut publisher = NsClient::start(
        &nodes[0],
        "mosquitto_pub",
        &[
            "-h",
            &nodes[0].ip,
            "-p",
            &port,
            "-t",
            "part/stream",
            "-q",
            "1",
            "-l",
        ],
        Stdio::piped(),
    );
    let mut stdin = publisher
        .child
        .0
        .stdin
        .take()
        .expect("stdin was piped above");
    let (more_tx, more_rx) = std::sync::mpsc::channel::<()>();
    let feeder = std::thread::spawn(move || {
        use std::io::Write as _;
        let lines = |range: std::ops::Range<usize>| -> String {
            range.map(|i| format!("m{i}\n")).collect()
        };
        stdin
            .write_all(lines(0..FIRST).as_bytes())
            .expect("the publisher reads its stdin");
        // The rest once the link is down: those wait in node-a's queue for the peer.
        if more_rx.recv().is_ok() {
            stdin
                .write_all(lines(FIRST..TOTAL).as_bytes())
                .expect("the publisher reads its stdin");
        }
        stdin
            .write_all(b"end\n")
            .expect("the publisher reads its stdin");
    });

    let mut counts = std::collections::HashMap::<String, usize>::new();
    let record = |counts: &mut std::collections::HashMap<String, usize>, line: String| {
        if line.starts_with('m') || line == "end" {
            *counts.entry(line).or_default() += 1;
        }
    };
    // Cut the link as soon as the stream flows across it.
    loop {
        let line = sub.next_line("the first messages", EVENT_TIMEOUT);
        let first = line.starts_with('m');
        record(&mut counts, line);
        if first {
            break;
        }
    }
    net.cut_between(0, 1, true);
    wait_for(&nodes, "both links declared down", EVENT_TIMEOUT, |v| {
        v.iter().all(|v| v.as_ref().is_ok_and(|v| v.links_up == 0))
    });
    more_tx.send(()).expect("the feeder waits for the go");
    // Drain what crossed before the cut.
    while let Ok(line) = sub.lines.try_recv() {
        record(&mut counts, line);
    }
    let before_heal = counts.len();
    net.cut_between(0, 1, false);
    // Everything, then `end`, which was published last and so is delivered last.
    loop {
        let line = sub.next_line("every message and then `end`", EVENT_TIMEOUT);
        let end = line == "end";
        record(&mut counts, line);
        if end {
            break;
        }
    }
    feeder.join().expect("the feeder thread ends");
    let _ = publisher.child.0.wait();
    let missing: Vec<usize> = (0..TOTAL)
        .filter(|i| !counts.contains_key(&format!("m{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let repeated: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "delivered more than once: {repeated:?}"
    );
    // The cut hit a stream in flight: part of it crossed only after the heal.
    assert!(
        before_heal < FIRST,
        "the whole first part crossed before the cut ({before_heal}); nothing was in flight"
    );
    eprintln!(
        "partition: {before_heal} of {TOTAL} crossed before the cut; the rest after the heal"
    );
}

impl NsNode {
    /// `method path` with an optional JSON body on the node's HTTP API, from inside its
    /// namespace: the status code and the JSON answer.
    fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("http://{}:{HTTP_PORT}{path}", self.ip);
        let mut curl = self.exec("curl");
        curl.args(["-s", "-m", "10", "-X", method, "-w", "\n%{http_code}", &url]);
        if let Some(body) = body {
            curl.args([
                "-H",
                "Content-Type: application/json",
                "-d",
                &body.to_string(),
            ]);
        }
        let out = curl.output().expect("curl is installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (json, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The node's replicated records, tombstones included, and whether it says it is in sync.
    fn state_dump(&self) -> (bool, Vec<serde_json::Value>) {
        let mut all = Vec::new();
        for ns in ["cluster", "devices"] {
            let (code, page) = self.http(
                "GET",
                &format!("/api/state?ns={ns}&tombstones=true&limit=10000"),
                None,
            );
            assert_eq!(code, 200, "{}: GET /api/state: {page}", self.id);
            assert_eq!(page["truncated"], false, "one page holds this test's keys");
            all.extend(page["entries"].as_array().cloned().unwrap_or_default());
        }
        let (_, health) = self.http("GET", "/health", None);
        (health["state"]["in_sync"] == true, all)
    }

    /// Runs `state_load` inside the node's namespace: ops `first..end` of its write stream;
    /// returns what it wrote last to each key.
    fn write_stream(&self, first: u64, end: u64) -> std::thread::JoinHandle<serde_json::Value> {
        let mut command = self.exec(env!("CARGO_BIN_EXE_state_load"));
        command.args([
            &format!("{}:{HTTP_PORT}", self.ip),
            self.id,
            &first.to_string(),
            &end.to_string(),
        ]);
        let id = self.id;
        std::thread::spawn(move || {
            let out = command.output().expect("state_load runs");
            assert!(
                out.status.success(),
                "state_load on {id} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).expect("state_load prints JSON")
        })
    }
}

#[test]
fn state_written_on_both_sides_of_a_partition_converges_after_the_heal() {
    let dir = tempfile::tempdir().expect("a writable temp dir");
    let Some(net) = network('s', IDS.len()) else {
        return;
    };
    let (nodes, first_leader, first_term) = start_agreed(&net, dir.path());
    let all: Vec<usize> = (0..nodes.len()).collect();
    let cut = member_index(&first_leader);
    let majority: Vec<usize> = all.iter().copied().filter(|&i| i != cut).collect();
    let rule = serde_json::json!({ "by": first_leader });
    let (code, body) = nodes[cut].http("PUT", "/api/state/cluster/runtime/rule", Some(&rule));
    assert_eq!(code, 200, "{body}");

    // Writers on every node before, during and after the partition.
    let before: Vec<_> = nodes.iter().map(|n| n.write_stream(0, 400)).collect();
    let mut expected = serde_json::Map::new();
    for w in before {
        expected.extend(
            w.join()
                .expect("writer")
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
    }
    eprintln!("partition: cutting off the leader {first_leader} with writers on every node");
    net.set_link(cut, false);
    let views = wait_for(
        &nodes,
        "the majority elects a leader of its own",
        EVENT_TIMEOUT,
        |v| agreed(v, &majority).is_some_and(|(_, term)| term > first_term),
    );
    let (new_leader, new_term) = agreed(&views, &majority).expect("checked by the wait");
    let during: Vec<_> = nodes.iter().map(|n| n.write_stream(400, 1400)).collect();
    // The leader's key moves on in the majority's term; the cut-off node may not write it.
    let rule = serde_json::json!({ "by": new_leader });
    let (code, body) = nodes[member_index(&new_leader)].http(
        "PUT",
        "/api/state/cluster/runtime/rule",
        Some(&rule),
    );
    assert_eq!(code, 200, "{body}");
    for w in during {
        expected.extend(
            w.join()
                .expect("writer")
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
    }
    let (code, _) = nodes[cut].http(
        "PUT",
        "/api/state/cluster/runtime/rule",
        Some(&serde_json::json!(0)),
    );
    assert_eq!(
        code, 409,
        "a node without the lease may not write the leader's keys"
    );

    eprintln!("partition: healing");
    net.set_link(cut, true);
    let after: Vec<_> = nodes.iter().map(|n| n.write_stream(1400, 1600)).collect();
    for w in after {
        expected.extend(
            w.join()
                .expect("writer")
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
    }

    // Every store the same, and what the writers wrote.
    let deadline = Instant::now() + Duration::from_secs(60);
    let converged = loop {
        let dumps: Vec<(bool, Vec<serde_json::Value>)> =
            nodes.iter().map(NsNode::state_dump).collect();
        if dumps.iter().all(|(synced, d)| *synced && *d == dumps[0].1) {
            break dumps[0].1.clone();
        }
        assert!(
            Instant::now() < deadline,
            "stores did not converge after the heal: in sync {:?}, records {:?}",
            dumps.iter().map(|d| d.0).collect::<Vec<_>>(),
            dumps.iter().map(|d| d.1.len()).collect::<Vec<_>>()
        );
        std::thread::sleep(POLL);
    };
    let devices: Vec<&serde_json::Value> = converged
        .iter()
        .filter(|e| e["namespace"] == "devices")
        .collect();
    assert_eq!(devices.len(), expected.len());
    for entry in devices {
        let key = entry["key"].as_str().unwrap_or_default();
        match &expected[key] {
            serde_json::Value::Null => assert_eq!(entry["deleted"], true, "{key}"),
            n => assert_eq!(entry["value"], serde_json::json!({ "n": n }), "{key}"),
        }
    }
    let rule = converged
        .iter()
        .find(|e| e["key"] == "cluster/runtime/rule")
        .expect("the leader's key is replicated");
    assert_eq!(
        (&rule["value"]["by"], &rule["term"]),
        (&serde_json::json!(new_leader), &serde_json::json!(new_term))
    );
}
