//! Replicated state end to end, with real `roost` processes on loopback: writers on every
//! node, a node killed with SIGKILL mid-stream and restarted, an empty node catching up,
//! forged and malformed messages on the state topics, tombstones that spread and are
//! cleared, and the ownership and term rules of writes. Every store is compared whole
//! (`/api/state` dumps of the replicated namespaces, tombstones included).

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use roost_tests::cluster::Cluster;
use roost_tests::state::{dump, sync_state, write_stream, ChangeStream, Expected, Http};
use roost_tests::{mosquitto_pub, MosquittoSub, EVENT_TIMEOUT};
use serde_json::{json, Value};

/// Anti-entropy often enough that repairs land within a test's patience.
const STATE: &str = "[state]\nanti_entropy_interval = \"1s\"\n";
/// How long a cluster gets to converge after the last write.
const CONVERGE: Duration = Duration::from_secs(60);

/// Waits until every member in `among` says its state is in sync and all their dumps are
/// identical; returns the dump. Polls: the condition spans several processes, and no single
/// event announces it.
fn wait_converged(cluster: &Cluster, among: &[usize], limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let synced: Vec<bool> = among
            .iter()
            .map(|&i| sync_state(cluster.node(i).http)["in_sync"] == true)
            .collect();
        let dumps: Vec<Vec<Value>> = among.iter().map(|&i| dump(cluster.node(i).http)).collect();
        if synced.iter().all(|s| *s) && dumps.iter().all(|d| *d == dumps[0]) {
            return dumps.into_iter().next().unwrap_or_default();
        }
        if Instant::now() > deadline {
            let sizes: Vec<usize> = dumps.iter().map(Vec::len).collect();
            let first_difference = dumps[0]
                .iter()
                .zip(&dumps[1..].concat())
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("{a}\n  vs {b}"));
            panic!(
                "members {among:?} did not converge: in sync {synced:?}, records {sizes:?}, first difference {first_difference:?}"
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The sum of `roost_state_rejected_total` over every reason on member `i`.
fn rejected_total(cluster: &Cluster, i: usize) -> f64 {
    let (_, text) = cluster.node(i).get("/metrics");
    text.lines()
        .filter(|l| l.starts_with("roost_state_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Checks a dump against what the writers did: every key they wrote is there with its last
/// value (or as a tombstone), written by its node.
fn assert_matches(dump: &[Value], expected: &Expected) {
    let devices: BTreeMap<&str, &Value> = dump
        .iter()
        .filter(|e| e["namespace"] == "devices")
        .map(|e| (e["key"].as_str().unwrap_or_default(), e))
        .collect();
    assert_eq!(
        devices.len(),
        expected.len(),
        "device keys in the store vs keys written"
    );
    for (key, last) in expected {
        let entry = devices
            .get(key.as_str())
            .unwrap_or_else(|| panic!("{key} missing from the store"));
        match last {
            Some(n) => assert_eq!(entry["value"], json!({ "n": n }), "{key}"),
            None => assert_eq!(entry["deleted"], true, "{key} should be a tombstone"),
        }
        let owner = key.split('/').nth(1).unwrap_or_default();
        assert_eq!(entry["origin"], owner, "{key} written by its node");
    }
}

#[test]
fn three_nodes_converge_after_ten_thousand_writes_and_a_node_killed_mid_stream() {
    let mut cluster = Cluster::new(3).config(STATE).start();
    let (leader, term) = cluster.wait_agreed_leader(&[0, 1, 2], EVENT_TIMEOUT);

    // The leader's keys: automation runtime, fenced by its term.
    let mut on_leader = Http::connect(cluster.node(leader).http).expect("connect");
    for i in 0..100 {
        let (code, body) = on_leader
            .put(&format!("cluster/runtime/r{i:02}"), &json!({ "runs": i }))
            .expect("PUT");
        assert_eq!(code, 200, "{body}");
    }

    // Writers on every node: 3,400 + 3,300 + 3,300 = 10,000 writes. node-c writes half of
    // its stream, is killed while node-a and node-b keep writing, and writes the rest after
    // its restart.
    let (half_tx, half_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Arc::new(std::sync::Mutex::new(go_rx));
    let writers: Vec<_> = [(0usize, 3400u64), (1, 3300)]
        .into_iter()
        .map(|(i, total)| {
            let http = cluster.node(i).http;
            let id = cluster.id(i).to_owned();
            let half_tx = half_tx.clone();
            let go_rx = go_rx.clone();
            thread::spawn(move || {
                let mut expected = write_stream(http, &id, 0..total / 2);
                half_tx.send(()).expect("the test waits");
                // Both halves wait for the kill, so it lands while they write.
                let _ = go_rx.lock().map(|rx| rx.recv());
                expected.extend(write_stream(http, &id, total / 2..total));
                expected
            })
        })
        .collect();
    let mut expected = write_stream(cluster.node(2).http, "node-c", 0..1650);
    for _ in 0..2 {
        half_rx
            .recv_timeout(CONVERGE)
            .expect("the writers reach half-way");
    }
    cluster.kill(2);
    go_tx.send(()).expect("writers wait");
    go_tx.send(()).expect("writers wait");
    for writer in writers {
        expected.extend(writer.join().expect("a writer finished"));
    }

    // node-c comes back: its store opens after the kill, catches up, and it writes the rest.
    cluster.start_member(2);
    expected.extend(write_stream(cluster.node(2).http, "node-c", 1650..3300));

    let converged = wait_converged(&cluster, &[0, 1, 2], CONVERGE);
    assert_matches(&converged, &expected);
    let runtime: Vec<&Value> = converged
        .iter()
        .filter(|e| e["namespace"] == "cluster")
        .collect();
    assert_eq!(runtime.len(), 100);
    assert!(runtime.iter().all(|e| e["term"] == term));
    for i in 0..3 {
        assert_eq!(
            rejected_total(&cluster, i),
            0.0,
            "legitimate traffic rejected on {}",
            cluster.id(i)
        );
    }
}

#[test]
fn an_empty_node_catches_up_with_ten_thousand_keys() {
    let mut cluster = Cluster::new(3).config(STATE);
    cluster.start_member(0);
    cluster.start_member(1);
    cluster.wait_agreed_leader(&[0, 1], EVENT_TIMEOUT);
    let http = cluster.node(0).http;
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            thread::spawn(move || {
                let mut client = Http::connect(http).expect("connect");
                for i in (w..10_000).step_by(8) {
                    let (code, body) = client
                        .put(&format!("devices/node-a/s{i:05}"), &json!({ "i": i }))
                        .expect("PUT");
                    assert_eq!(code, 200, "{body}");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let before = wait_converged(&cluster, &[0, 1], CONVERGE);
    assert_eq!(before.len(), 10_000);

    let started = Instant::now();
    cluster.start_member(2);
    let after = wait_converged(&cluster, &[0, 1, 2], CONVERGE);
    println!(
        "node-c: 10,000 keys in sync {} ms after its start began",
        started.elapsed().as_millis()
    );
    assert_eq!(after, before);
}

#[test]
fn forged_and_malformed_state_messages_are_rejected_counted_and_repaired() {
    // Passes far apart, so the owners' repairs come from rejections they see themselves.
    let mut cluster = Cluster::new(3)
        .config("[state]\nanti_entropy_interval = \"5s\"\n")
        .start();
    // A second term, so that there is a past one to forge.
    let (first, first_term) = cluster.wait_agreed_leader(&[0, 1, 2], EVENT_TIMEOUT);
    cluster.stop(first);
    cluster.start_member(first);
    let (leader, term) = cluster.wait_agreed_leader_beyond(&[0, 1, 2], first_term, EVENT_TIMEOUT);
    let follower = (0..3).find(|&i| i != leader).unwrap_or(0);
    let mut a = Http::connect(cluster.node(0).http).expect("connect");
    for on in [true, false, true] {
        assert_eq!(
            a.put("devices/node-a/relay", &json!({ "on": on }))
                .expect("PUT")
                .0,
            200
        );
    }
    let (code, _) = a
        .put("devices/node-a/fan", &json!({ "speed": 2 }))
        .expect("PUT");
    assert_eq!(code, 200);
    let mut lead = Http::connect(cluster.node(leader).http).expect("connect");
    for runs in 0..2 {
        let (code, _) = lead
            .put("cluster/runtime/porch", &json!({ "runs": runs }))
            .expect("PUT");
        assert_eq!(code, 200);
    }
    let good = wait_converged(&cluster, &[0, 1, 2], CONVERGE);

    let root = format!("$roost/{}/state", cluster.name);
    let relay = format!("{root}/devices/node-a/relay");
    let porch = format!("{root}/cluster/runtime/porch");
    let forged = |origin: &str, term: u64, version: u64, value: Value| {
        json!({"version": version, "term": term, "origin": origin, "updated_ms": 1, "value": value})
            .to_string()
    };
    let reasons = [
        // An older version of node-a's relay.
        (
            relay.clone(),
            forged("node-a", 0, 1, json!({ "on": false })),
            "stale_version",
        ),
        // Not a record, over a key every node holds: none may forget the key for it.
        (
            format!("{root}/devices/node-a/fan"),
            "{not json".to_owned(),
            "bad_json",
        ),
        // A namespace nobody replicates.
        (
            format!("{root}/garden/hose"),
            forged("node-a", 0, 1, json!(1)),
            "unknown_namespace",
        ),
        // node-b writing node-a's device.
        (
            format!("{root}/devices/node-a/intruder"),
            forged("node-b", 0, 9, json!({ "on": false })),
            "not_owner",
        ),
        // The leader's key, from a term before the one it was written in.
        (
            porch.clone(),
            forged(cluster.id(follower), term - 1, 50, json!({ "runs": 99 })),
            "stale_term",
        ),
        // A leader's key without a term.
        (
            format!("{root}/cluster/runtime/gate"),
            forged(cluster.id(follower), 0, 1, json!(1)),
            "bad_term",
        ),
    ];
    const APPLIED: &str = "roost_state_replicated_total{direction=\"in\"}";
    let applied_before: Vec<f64> = (0..3).map(|i| cluster.node(i).metric(APPLIED)).collect();
    let before: Vec<Vec<f64>> = (0..3)
        .map(|i| {
            reasons
                .iter()
                .map(|(_, _, r)| {
                    cluster
                        .node(i)
                        .metric(&format!("roost_state_rejected_total{{reason=\"{r}\"}}"))
                })
                .collect()
        })
        .collect();
    // Published retained on node-b, from where they reach every node.
    for (topic, payload, _) in &reasons {
        mosquitto_pub(cluster.node(1), &["-r", "-t", topic, "-m", payload]);
    }

    // Every node but the record's claimed origin (which skips its own name) counts each one.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let mut missing = Vec::new();
        for (i, counted_before) in before.iter().enumerate() {
            for (r, (_, payload, reason)) in reasons.iter().enumerate() {
                let claimed = serde_json::from_str::<Value>(payload)
                    .ok()
                    .and_then(|v| v["origin"].as_str().map(str::to_owned));
                // Checks of the topic and the owner come first; only then is a node's own
                // name skipped as the echo of its own write.
                let skips = claimed.as_deref() == Some(cluster.id(i))
                    && !matches!(*reason, "not_owner" | "unknown_namespace" | "bad_term");
                let series = format!("roost_state_rejected_total{{reason=\"{reason}\"}}");
                if !skips && cluster.node(i).metric(&series) <= counted_before[r] {
                    missing.push(format!("{} {reason}", cluster.id(i)));
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rejections not counted: {missing:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }

    // No store changed, and the topics are repaired: the owners put their records back and
    // the leader clears the garbage.
    assert_eq!(wait_converged(&cluster, &[0, 1, 2], CONVERGE), good);
    let mut relay_sub = MosquittoSub::start(cluster.node(2), &["-t", &relay, "-v"]);
    relay_sub.wait_for(
        |line| line.contains(r#""origin":"node-a""#) && line.contains(r#""version":3"#),
        "node-a's relay record back on its topic",
    );
    let fan = format!("{root}/devices/node-a/fan");
    let mut fan_sub = MosquittoSub::start(cluster.node(2), &["-t", &fan, "-v"]);
    fan_sub.wait_for(
        |line| line.contains(r#""speed":2"#),
        "node-a's fan record back on its topic",
    );
    let mut porch_sub = MosquittoSub::start(cluster.node(2), &["-t", &porch, "-v"]);
    porch_sub.wait_for(
        |line| line.contains(&format!(r#""term":{term}"#)) && line.contains(r#""version":2"#),
        "the leader's record back on its topic",
    );
    assert!(cluster.node(leader).metric("roost_state_repairs_total") >= 1.0);
    // Not one record was stored anew anywhere: no node forgot a key over the garbage on its
    // topic and took it back from the repair.
    for (i, applied) in applied_before.iter().enumerate() {
        assert_eq!(
            cluster.node(i).metric(APPLIED),
            *applied,
            "{}",
            cluster.id(i)
        );
    }
    for i in 0..3 {
        assert!(cluster.node(i).health().1["state"]["in_sync"] == true);
    }
}

#[test]
fn deletes_spread_as_tombstones_and_are_then_cleared_everywhere() {
    let cluster = Cluster::new(3)
        .config("[state]\nanti_entropy_interval = \"300ms\"\ntombstone_ttl = \"2s\"\n")
        .start();
    let watch_c = ChangeStream::open(cluster.node(2).http, "ns=devices");
    let mut a = Http::connect(cluster.node(0).http).expect("connect");
    assert_eq!(
        a.put("devices/node-a/lamp", &json!({ "on": true }))
            .expect("PUT")
            .0,
        200
    );
    watch_c.wait_for("devices/node-a/lamp", 1, EVENT_TIMEOUT);
    let (code, body) = a.delete("devices/node-a/lamp").expect("DELETE");
    assert_eq!((code, body["deleted"].clone()), (200, json!(true)));
    let tombstone = watch_c.wait_for("devices/node-a/lamp", 2, EVENT_TIMEOUT);
    assert_eq!(tombstone.change["deleted"], true);
    assert!(dump(cluster.node(1).http)
        .iter()
        .any(|e| e["key"] == "devices/node-a/lamp" && e["deleted"] == true));

    // After the TTL: no record on any node, and no retained message on the topic.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while (0..3).any(|i| !dump(cluster.node(i).http).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "tombstone not cleared everywhere"
        );
        thread::sleep(Duration::from_millis(100));
    }
    for i in 0..3 {
        assert_eq!(cluster.node(i).health().1["state"]["tombstones"], 0);
    }
    // A retained message would be delivered at once to this subscription, before the
    // marker published after it.
    let topic = format!("$roost/{}/state/devices/node-a/lamp", cluster.name);
    let mut sub = MosquittoSub::start(cluster.node(1), &["-t", &topic, "-t", "marker/lamp", "-v"]);
    mosquitto_pub(cluster.node(1), &["-t", "marker/lamp", "-m", "end"]);
    let first = sub.wait_for(
        |line| line.starts_with("marker/lamp ") || line.starts_with(&topic),
        "the marker",
    );
    assert!(
        first.starts_with("marker/lamp "),
        "a retained state message is left: {first}"
    );
}

#[test]
fn only_owners_write_device_keys_and_only_the_leader_writes_cluster_keys() {
    let cluster = Cluster::new(3).config(STATE).start();
    let (leader, term) = cluster.wait_agreed_leader(&[0, 1, 2], EVENT_TIMEOUT);
    let follower = (0..3).find(|&i| i != leader).unwrap_or(0);
    let mut on_a = Http::connect(cluster.node(0).http).expect("connect");
    let (code, body) = on_a
        .put("devices/node-b/relay", &json!({ "on": true }))
        .expect("PUT");
    assert_eq!(code, 403, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("node-b"));
    let (code, _) = on_a.put("devices/relay", &json!(1)).expect("PUT");
    assert_eq!(code, 403, "a device key names its node");
    let (code, _) = on_a.put("garden/x", &json!(1)).expect("PUT");
    assert_eq!(code, 400);
    let (code, _) = on_a
        .request("PUT", "/api/state/devices/node-a/x", None)
        .expect("PUT");
    assert_eq!(code, 400, "an empty body is not JSON");

    let mut on_follower = Http::connect(cluster.node(follower).http).expect("connect");
    let (code, body) = on_follower
        .put("cluster/runtime/x", &json!(1))
        .expect("PUT");
    assert_eq!(code, 409, "{body}");
    let mut on_leader = Http::connect(cluster.node(leader).http).expect("connect");
    let (code, body) = on_leader.put("cluster/runtime/x", &json!(1)).expect("PUT");
    assert_eq!((code, body["version"].clone()), (200, json!(1)));
    let converged = wait_converged(&cluster, &[0, 1, 2], CONVERGE);
    let x = converged
        .iter()
        .find(|e| e["key"] == "cluster/runtime/x")
        .expect("replicated");
    assert_eq!(
        (x["term"].clone(), x["origin"].clone()),
        (json!(term), json!(cluster.id(leader)))
    );
    assert!(
        cluster
            .node(0)
            .metric("roost_http_bad_requests_total{endpoint=\"PUT /api/state\"}")
            >= 3.0
    );
}
