//! The cluster with real `roost` processes on loopback (each member on its own 127.x.y.z):
//! messages cross the mesh exactly once at QoS 0 and 1 in 3- and 5-node meshes, retained
//! messages and deletes reach a member that was down, a killed leader is replaced (20 times,
//! never two leaders in one term), a clean stop hands the lease over, and bad peers are
//! refused with a log line and a metric while the cluster keeps working. Two nodes with a
//! witness (a Mosquitto broker) elect a leader while either is down, and without the witness
//! they cannot.
//!
//! The partition test, which needs network namespaces, is in `partition.rs`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use roost_tests::cluster::Cluster;
use roost_tests::{roost, Mosquitto, MosquittoSub, Node, EVENT_TIMEOUT};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// A subscriber on `addr` that counts every payload it receives on `filter`, until `expected`
/// distinct payloads arrived and nothing more came for a moment (so a duplicate arriving
/// late is still counted), or the deadline passes.
struct Counter {
    counts: std::sync::mpsc::Receiver<HashMap<String, usize>>,
}

impl Counter {
    /// Subscribes and returns once the SUBACK arrived.
    fn start(
        addr: SocketAddr,
        client_id: &str,
        filter: &str,
        qos: QoS,
        expected: usize,
    ) -> Counter {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (counts_tx, counts) = std::sync::mpsc::channel();
        let (client_id, filter) = (client_id.to_owned(), filter.to_owned());
        std::thread::spawn(move || {
            let runtime = client_runtime();
            runtime.block_on(async move {
                let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
                options.set_max_packet_size(1 << 20, 1 << 20);
                options.set_inflight(100);
                let (client, mut events) = AsyncClient::new(options, 1000);
                client
                    .subscribe(&filter, qos)
                    .await
                    .expect("subscribe is queued");
                let mut counts: HashMap<String, usize> = HashMap::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                // Once everything arrived, wait this long for duplicates.
                let settle = Duration::from_millis(500);
                loop {
                    let limit = if counts.len() >= expected {
                        settle
                    } else {
                        deadline.saturating_duration_since(tokio::time::Instant::now())
                    };
                    match tokio::time::timeout(limit, events.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            let _ = ready_tx.send(());
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            *counts
                                .entry(String::from_utf8_lossy(&p.payload).into_owned())
                                .or_default() += 1;
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => panic!("subscriber on {addr}: {e}"),
                        Err(_) => break,
                    }
                }
                let _ = counts_tx.send(counts);
            });
        });
        ready_rx
            .recv_timeout(EVENT_TIMEOUT)
            .expect("the subscriber got its SUBACK");
        Counter { counts }
    }

    /// What it counted.
    fn finish(self) -> HashMap<String, usize> {
        self.counts
            .recv_timeout(Duration::from_secs(90))
            .expect("the subscriber finished")
    }
}

/// Publishes `payloads` on `topic` at `qos` to `addr`, waiting for every PUBACK at QoS 1.
fn publish_all(addr: SocketAddr, client_id: &str, topic: &str, qos: QoS, payloads: Vec<String>) {
    let runtime = client_runtime();
    runtime.block_on(async move {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_inflight(100);
        let (client, mut events) = AsyncClient::new(options, 1000);
        let total = payloads.len();
        let topic = topic.to_owned();
        let sender = tokio::spawn(async move {
            for p in payloads {
                client
                    .publish(&topic, qos, false, p)
                    .await
                    .expect("publish is queued");
            }
            client
        });
        let mut acked = 0;
        let mut sent = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while (qos == QoS::AtLeastOnce && acked < total) || (qos == QoS::AtMostOnce && sent < total)
        {
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_)))) => sent += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publisher on {addr}: {e}"),
                Err(_) => panic!("publisher on {addr}: {acked} acked, {sent} sent of {total}"),
            }
        }
        let client = sender.await.expect("the sender finished");
        client.disconnect().await.expect("disconnect is queued");
        // Flush the DISCONNECT.
        let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
    });
}

/// Publishes `per_node` messages from every member (payload `<member>-<n>`) and checks that
/// a subscriber on every member received each of them exactly once.
fn exactly_once(cluster: &Cluster, qos: QoS, per_node: usize, tag: &str) {
    let members = cluster.running();
    let total = per_node * members.len();
    let topic = format!("mesh/{tag}");
    let counters: Vec<Counter> = members
        .iter()
        .map(|&i| {
            Counter::start(
                cluster.mqtt(i),
                &format!("sub-{tag}-{i}"),
                &topic,
                qos,
                total,
            )
        })
        .collect();
    std::thread::scope(|scope| {
        for &i in &members {
            let topic = topic.clone();
            let payloads = (0..per_node)
                .map(|n| format!("{}-{n}", cluster.id(i)))
                .collect();
            let addr = cluster.mqtt(i);
            scope
                .spawn(move || publish_all(addr, &format!("pub-{tag}-{i}"), &topic, qos, payloads));
        }
    });
    for (counter, &i) in counters.into_iter().zip(&members) {
        let counts = counter.finish();
        let missing: Vec<String> = members
            .iter()
            .flat_map(|&j| (0..per_node).map(move |n| (j, n)))
            .map(|(j, n)| format!("{}-{n}", cluster.id(j)))
            .filter(|p| !counts.contains_key(p))
            .collect();
        let duplicated: Vec<(&String, &usize)> = counts.iter().filter(|(_, c)| **c > 1).collect();
        assert!(
            missing.is_empty() && duplicated.is_empty() && counts.len() == total,
            "subscriber on {}: {} of {total} received, {} missing (first {:?}), {} duplicated (first {:?})",
            cluster.id(i),
            counts.len(),
            missing.len(),
            missing.first(),
            duplicated.len(),
            duplicated.first()
        );
    }
}

#[test]
fn ten_thousand_messages_cross_a_three_node_mesh_exactly_once_at_qos_0_and_1() {
    let cluster = Cluster::new(3).start();
    exactly_once(&cluster, QoS::AtLeastOnce, 3_334, "q1");
    exactly_once(&cluster, QoS::AtMostOnce, 3_334, "q0");
    // Nothing was resent as a duplicate on healthy links.
    for i in 0..3 {
        for j in (0..3).filter(|&j| j != i) {
            let series = format!(
                "roost_cluster_peer_duplicates_total{{peer=\"{}\"}}",
                cluster.id(j)
            );
            assert_eq!(
                cluster.node(i).metric(&series),
                0.0,
                "{series} on {}",
                cluster.id(i)
            );
        }
    }
}

#[test]
fn a_five_node_mesh_delivers_every_message_once_to_every_node() {
    let cluster = Cluster::new(5).start();
    exactly_once(&cluster, QoS::AtLeastOnce, 400, "five");
}

/// The retained messages `filter` matches on member `i`, as `topic payload` lines.
fn retained_on(cluster: &Cluster, i: usize, filter: &str) -> Vec<String> {
    let addr = cluster.mqtt(i);
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", filter, "-v", "--retained-only", "-W", "1"])
        .output()
        .expect("mosquitto_sub is installed");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[test]
fn retained_messages_and_deletes_reach_a_member_that_was_down() {
    let mut cluster = Cluster::new(3).start();
    let pub_on = |cluster: &Cluster, i: usize, topic: &str, payload: &str| {
        let addr = cluster.mqtt(i);
        let status = std::process::Command::new("mosquitto_pub")
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-t", topic, "-r", "-q", "1"])
            .args(if payload.is_empty() {
                vec!["-n"]
            } else {
                vec!["-m", payload]
            })
            .status()
            .expect("mosquitto_pub is installed");
        assert!(status.success());
    };
    // Set on one member, seen on another.
    pub_on(&cluster, 0, "house/old", "stale");
    let mut watch = MosquittoSub::start(cluster.node(2), &["-t", "house/old"]);
    watch.expect_message("house/old", "stale");
    drop(watch);
    cluster.kill(2);
    // While node-c is down: a new retained message on node-a, a delete on node-b.
    pub_on(&cluster, 0, "house/new", "fresh");
    let mut deleted = MosquittoSub::start(cluster.node(0), &["-t", "house/old"]);
    pub_on(&cluster, 1, "house/old", "");
    deleted.wait_for(|l| l == "house/old (null)", "the delete on node-a");
    cluster.start_member(2);
    // node-c merges the others' sets when its links open: the new message arrives and the
    // deleted one goes (its own stale copy is older than the delete).
    let mut live = MosquittoSub::start(cluster.node(2), &["-t", "house/#"]);
    live.wait_for(
        |l| l == "house/new fresh",
        "house/new on the restarted member",
    );
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let now = retained_on(&cluster, 2, "house/#");
        if now == ["house/new fresh"] {
            break;
        }
        assert!(Instant::now() < deadline, "node-c still serves {now:?}");
    }
    // And node-c's stale copy did not come back anywhere.
    for i in 0..3 {
        assert_eq!(
            retained_on(&cluster, i, "house/#"),
            ["house/new fresh"],
            "on {}",
            cluster.id(i)
        );
    }
}

/// `(term, leader)` of every `elected leader` line in the members' logs.
fn elections(cluster: &Cluster, members: usize) -> Vec<(u64, String)> {
    let mut all = Vec::new();
    for i in 0..members {
        for line in cluster.logs(i).lines() {
            let plain = strip_ansi(line);
            if !plain.contains("elected leader") {
                continue;
            }
            let term = plain
                .split_whitespace()
                .find_map(|w| w.strip_prefix("term="))
                .and_then(|t| t.parse().ok())
                .expect("an election line names its term");
            all.push((term, cluster.id(i).to_owned()));
        }
    }
    all
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_killed_leader_is_replaced_twenty_times_never_two_leaders_in_a_term() {
    let mut cluster = Cluster::new(3).start();
    let mut failovers = Vec::new();
    for round in 0..20 {
        let (leader, term) = cluster.wait_agreed_leader(&[0, 1, 2], EVENT_TIMEOUT);
        let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let killed = Instant::now();
        cluster.kill(leader);
        let (new_leader, new_term) =
            cluster.wait_agreed_leader_beyond(&survivors, term, EVENT_TIMEOUT);
        failovers.push(killed.elapsed());
        assert!(
            new_term > term,
            "round {round}: term {new_term} after {term}"
        );
        assert_ne!(new_leader, leader);
        cluster.start_member(leader);
    }
    cluster.wait_agreed_leader(&[0, 1, 2], EVENT_TIMEOUT);
    // Every election in every member's log: one leader per term.
    one_leader_per_term(&cluster, 3, 21);
    failovers.sort();
    let ms = |d: &Duration| d.as_millis();
    let line = format!(
        "failover (kill -9 to new leader agreed), 20 runs: min {} ms, median {} ms, p90 {} ms, max {} ms",
        ms(&failovers[0]),
        ms(&failovers[10]),
        ms(&failovers[17]),
        ms(&failovers[19])
    );
    println!("{line}");
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn a_leader_that_stops_cleanly_hands_the_lease_over_at_once() {
    let mut cluster = Cluster::new(3).start();
    let (leader, term) = cluster.wait_agreed_leader(&[0, 1, 2], EVENT_TIMEOUT);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut events = MosquittoSub::start(
        cluster.node(survivors[0]),
        &["-t", &format!("roost/{}/events", cluster.name)],
    );
    cluster.stop(leader);
    let elected = events.wait_for(|l| l.contains("\"leader_elected\""), "leader_elected");
    let (new_leader, _) = cluster.wait_agreed_leader_beyond(&survivors, term, EVENT_TIMEOUT);
    assert!(elected.contains(cluster.id(new_leader)), "{elected}");
    // The stopped leader said goodbye itself; the new leader did not need its lease to expire.
    let logs = cluster.logs(new_leader);
    assert!(logs.contains("elected leader"), "{logs}");
}

/// Waits until `series` on `node` is at least 1.
fn wait_metric(node: &Node, series: &str) {
    poll_until(|| {
        if node.metric(series) >= 1.0 {
            Ok(())
        } else {
            Err(format!("{series} stayed 0 on {}", node.id))
        }
    });
}

/// Polls `check` until it holds; panics with its last reason after [`EVENT_TIMEOUT`]. For
/// state a node shows (metrics, `/health`), which no event announces.
fn poll_until(mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        match check() {
            Ok(()) => return,
            Err(why) => assert!(Instant::now() < deadline, "{why}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A single-threaded runtime for a client run on a test thread.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn bad_peers_are_refused_with_a_log_line_and_a_metric_and_the_cluster_keeps_working() {
    let cluster = Cluster::new(2).start();
    let (a, b) = (cluster.node(0), cluster.node(1));
    // A peer that speaks garbage after the preamble.
    let mut garbage = std::net::TcpStream::connect(a.mqtt).expect("connect to node-a");
    garbage
        .write_all(b"\0ROOST/1\0\0\0\x05\x63junk")
        .expect("write garbage");
    wait_metric(
        a,
        "roost_cluster_links_refused_total{direction=\"in\",reason=\"protocol\"}",
    );
    // A node of another cluster.
    let stranger = Node::builder("node-x")
        .config(&format!(
            "[cluster]\nname = \"elsewhere\"\npeers = [ {{ id = \"node-a\", mqtt = \"{}\" }} ]\n",
            a.mqtt
        ))
        .start();
    wait_metric(
        a,
        "roost_cluster_links_refused_total{direction=\"in\",reason=\"wrong_cluster\"}",
    );
    wait_metric(
        &stranger,
        "roost_cluster_links_refused_total{direction=\"out\",reason=\"wrong_cluster\"}",
    );
    // A node whose peer list names its own address.
    let lonely_addr = roost_tests::cluster::free_loopback_addr();
    let lonely = Node::builder("node-y")
        .listen(lonely_addr)
        .config(&format!(
            "[cluster]\nname = \"{}\"\npeers = [ {{ id = \"node-z\", mqtt = \"{lonely_addr}\" }} ]\n",
            cluster.name
        ))
        .start();
    wait_metric(
        &lonely,
        "roost_cluster_links_refused_total{direction=\"in\",reason=\"self\"}",
    );
    wait_metric(
        &lonely,
        "roost_cluster_links_refused_total{direction=\"out\",reason=\"self\"}",
    );
    // A second process calling itself node-a.
    let twin = Node::builder("node-a")
        .config(&format!(
            "[cluster]\nname = \"{}\"\npeers = [ {{ id = \"node-b\", mqtt = \"{}\" }} ]\n",
            cluster.name, b.mqtt
        ))
        .start();
    wait_metric(
        b,
        "roost_cluster_links_refused_total{direction=\"in\",reason=\"duplicate_node\"}",
    );
    wait_metric(
        &twin,
        "roost_cluster_links_refused_total{direction=\"out\",reason=\"duplicate_node\"}",
    );
    // Each refusal was logged where it happened.
    for (node, words) in [
        (a, "reason=\"protocol\""),
        (a, "reason=\"wrong_cluster\""),
        (&lonely, "reason=\"self\""),
        (b, "reason=\"duplicate_node\""),
    ] {
        let logs = strip_ansi(&node.logs());
        assert!(
            logs.lines()
                .any(|l| l.contains("peer link refused") && l.contains(words)),
            "{} logged no refusal with {words}:\n{logs}",
            node.id
        );
    }
    // The cluster kept its leader and still carries messages both ways.
    cluster.wait_agreed_leader(&[0, 1], EVENT_TIMEOUT);
    let mut on_b = MosquittoSub::start(b, &["-t", "still/works"]);
    roost_tests::mosquitto_pub(a, &["-t", "still/works", "-m", "yes", "-q", "1"]);
    on_b.expect_message("still/works", "yes");
}

/// Two nodes whose `[cluster]` names a Mosquitto broker on `port` as the witness.
fn pair_with_witness(port: u16) -> Cluster {
    Cluster::new(2).cluster_config(&format!("witness = {{ mqtt = \"127.0.0.1:{port}\" }}"))
}

/// Asserts that every election in the members' logs is the only one of its term.
fn one_leader_per_term(cluster: &Cluster, members: usize, at_least: usize) {
    let mut by_term: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (term, leader) in elections(cluster, members) {
        by_term.entry(term).or_default().push(leader);
    }
    assert!(by_term.len() >= at_least, "elections: {by_term:?}");
    for (term, leaders) in &by_term {
        assert_eq!(leaders.len(), 1, "term {term} had leaders {leaders:?}");
    }
}

#[test]
fn two_nodes_with_a_witness_elect_a_leader_while_either_is_down() {
    let witness = Mosquitto::start().expect("mosquitto runs (scripts/test.sh installs it)");
    let mut cluster = pair_with_witness(witness.port).start();
    for i in 0..2 {
        let (_, health) = cluster.node(i).health();
        assert_eq!(
            health["witness"]["address"],
            format!("127.0.0.1:{}", witness.port)
        );
    }
    let mut survivors_seen = Vec::new();
    let mut failovers = Vec::new();
    let mut terms = Vec::new();
    for round in 0..6 {
        let (leader, term) = cluster.wait_agreed_leader(&[0, 1], EVENT_TIMEOUT);
        let survivor = 1 - leader;
        // The witness's vote counts once its connection has been up for `down_after`.
        wait_metric(cluster.node(survivor), "roost_cluster_witness_up");
        let killed = Instant::now();
        cluster.kill(leader);
        let (new_leader, new_term) =
            cluster.wait_agreed_leader_beyond(&[survivor], term, EVENT_TIMEOUT);
        failovers.push(killed.elapsed().as_millis());
        assert_eq!(new_leader, survivor, "round {round}");
        assert!(new_term > term);
        survivors_seen.push(survivor);
        terms.push(new_term);
        cluster.start_member(leader);
    }
    cluster.wait_agreed_leader(&[0, 1], EVENT_TIMEOUT);
    // The witness carried both nodes through, not one of them by luck.
    assert!(
        survivors_seen.contains(&0) && survivors_seen.contains(&1),
        "{survivors_seen:?}"
    );
    // Each failover was won with the witness's vote: every survivor's election follows a
    // claim of that term decided in its favour (logs span the restarts; metrics do not).
    for (round, (&survivor, term)) in survivors_seen.iter().zip(&terms).enumerate() {
        let won = format!("claim of the witness's vote decided term={term} result=\"won\"");
        let log = cluster.logs(survivor);
        assert!(
            log.lines().map(strip_ansi).any(|l| l.contains(&won)),
            "round {round}: {} won term {term} without the witness's vote",
            cluster.id(survivor)
        );
    }
    one_leader_per_term(&cluster, 2, 7);
    // A witness that comes back without its retained messages (a crash before it saved
    // them) gets the claims back from the nodes as they reconnect.
    let last = *survivors_seen.last().expect("six rounds ran");
    let (_, health) = cluster.node(last).health();
    let last_term = health["term"].as_u64().expect("a numeric term");
    let port = witness.port;
    drop(witness);
    let _witness = Mosquitto::start_on(port).expect("mosquitto restarts on its port");
    let topic = format!("roost/{}/witness/claim/{}", cluster.name, cluster.id(last));
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", &topic])
        .args(["-C", "1", "-W", "15"])
        .output()
        .expect("mosquitto_sub is installed");
    let claim: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no restored claim on {topic} ({e}): {out:?}"));
    assert_eq!(claim["node"], cluster.id(last));
    assert_eq!(claim["term"].as_u64(), Some(last_term));
    failovers.sort_unstable();
    let line = format!(
        "failover of a pair with a witness (kill -9 to new leader), 6 runs: min {} ms, median {} ms, max {} ms",
        failovers[0], failovers[3], failovers[5]
    );
    println!("{line}");
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Reads `/health` on `node` until `done` holds for it.
fn wait_health(node: &Node, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    poll_until(|| {
        let (_, health) = node.health();
        if done(&health) {
            Ok(())
        } else {
            Err(format!("{}: {what}: {health}", node.id))
        }
    });
}

#[test]
fn without_its_witness_a_pair_keeps_its_leader_but_cannot_replace_it() {
    let witness = Mosquitto::start().expect("mosquitto runs (scripts/test.sh installs it)");
    let port = witness.port;
    let mut cluster = pair_with_witness(port).start();
    let (leader, term) = cluster.wait_agreed_leader(&[0, 1], EVENT_TIMEOUT);
    let survivor = 1 - leader;
    wait_metric(cluster.node(survivor), "roost_cluster_witness_up");
    let status = || {
        let http = format!("http://{}", cluster.node(survivor).http);
        let (code, out, err) = roost(&["status", "--http", &http]);
        assert_eq!(code, Some(0), "{err}");
        out
    };
    let witness_line = format!("witness 127.0.0.1:{port}: ");
    assert!(
        status().contains(&format!("{witness_line}connected")),
        "{}",
        status()
    );
    // The witness goes away: both nodes notice, and two of three votes still hold the lease.
    drop(witness);
    for i in 0..2 {
        wait_health(cluster.node(i), "witness disconnected", |h| {
            h["witness"]["connected"] == false
        });
    }
    assert!(
        status().contains(&format!("{witness_line}not connected")),
        "{}",
        status()
    );
    assert_eq!(
        cluster.wait_agreed_leader(&[0, 1], EVENT_TIMEOUT),
        (leader, term)
    );
    // Now the leader dies: one node of two, without the witness, is no majority.
    cluster.kill(leader);
    wait_health(cluster.node(survivor), "the leader seen down", |h| {
        h["healthy_nodes"] == 1
    });
    // A bounded look: the survivor would have stood within down_after + a heartbeat + a
    // quarter of down_after (1.45 s with the defaults); give it well over that.
    let look_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < look_until {
        let (code, health) = cluster.node(survivor).health();
        assert_eq!(code, 503, "{health}");
        assert!(health["leader"].is_null(), "{health}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The witness comes back on its address: the survivor reconnects and is elected.
    let _witness = Mosquitto::start_on(port).expect("mosquitto restarts on its port");
    let (new_leader, new_term) =
        cluster.wait_agreed_leader_beyond(&[survivor], term, EVENT_TIMEOUT);
    assert_eq!(new_leader, survivor);
    assert!(new_term > term);
    one_leader_per_term(&cluster, 2, 2);
}
