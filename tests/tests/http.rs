//! `/health`, `/metrics` and the dashboard of a real node, over real sockets.

// Test code: a panic with the value is the failure report.
#![allow(clippy::unwrap_used)]

use roost_tests::{mosquitto_pub, turn_demo_relay_on, MosquittoSub, Node};

#[test]
fn health_of_a_single_node_is_healthy() {
    let node = Node::builder("health-one").start();
    let (code, h) = node.health();
    assert_eq!(code, 200);
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["node"], "health-one");
    assert_eq!(h["cluster"], "home");
    assert_eq!(h["cluster_nodes"], 1);
    assert_eq!(h["healthy_nodes"], 1);
    assert_eq!(h["leader"], "health-one");
    assert!(h["term"].as_u64().unwrap() >= 1);
    assert!(h["uptime_seconds"].is_u64());
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn health_without_a_leader_is_unhealthy_503() {
    // The peer is never seen and nobody holds the lease: no quorum.
    let node = Node::builder("health-alone")
        .config("[cluster]\nname = \"lab\"\npeers = [{ id = \"ghost\", mqtt = \"127.0.0.1:9\" }]")
        .start();
    let (code, h) = node.health();
    assert_eq!(code, 503);
    assert_eq!(h["status"], "unhealthy");
    assert_eq!(h["cluster"], "lab");
    assert_eq!(h["cluster_nodes"], 2);
    assert_eq!(h["healthy_nodes"], 1);
    assert!(h["leader"].is_null());
}

#[test]
fn metrics_parse_and_count_the_messages_just_sent() {
    let node = Node::builder("metrics").start();
    let received = "roost_mqtt_messages_received_total{qos=\"1\",source=\"network\"}";
    let sent = "roost_mqtt_messages_sent_total{destination=\"network\",qos=\"1\"}";
    let before_in = node.metric(received);
    let before_out = node.metric(sent);
    let mut sub = MosquittoSub::start(&node, &["-t", "test/count", "-q", "1"]);
    for i in 0..5 {
        mosquitto_pub(
            &node,
            &["-t", "test/count", "-m", &i.to_string(), "-q", "1"],
        );
    }
    sub.expect_message("test/count", "4");
    // The edge counts a publish before forwarding it, and a delivery before writing it to
    // the subscriber, so both counts are final once the subscriber has the last message.
    assert_eq!(node.metric(received) - before_in, 5.0);
    assert_eq!(node.metric(sent) - before_out, 5.0);

    let (code, text) = node.get("/metrics");
    assert_eq!(code, 200);
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for wanted in [
        "roost_process_resident_memory_bytes",
        "roost_process_cpu_seconds_total",
        "roost_mqtt_connections",
        "roost_mqtt_messages_received_total",
        "roost_mqtt_messages_sent_total",
        "roost_mqtt_bytes_received_total",
        "roost_mqtt_publish_bytes_received_total",
        "roost_mqtt_publish_bytes_sent_total",
        "roost_mqtt_sessions",
        "roost_mqtt_messages_dropped_total",
        "roost_mqtt_bytes_sent_total",
        "roost_mqtt_retained_messages",
        "roost_mqtt_retained_bytes",
        "roost_state_keys",
        "roost_state_write_seconds",
        "roost_uptime_seconds",
        "roost_build_info",
    ] {
        assert!(names.contains(&wanted), "/metrics lacks {wanted}");
    }
    assert!(
        names.iter().all(|n| n.starts_with("roost_")),
        "every metric is prefixed roost_"
    );
    let writes = scrape
        .samples
        .iter()
        .find(|s| s.metric == "roost_state_write_seconds")
        .expect("write latency histogram");
    match &writes.value {
        prometheus_parse::Value::Histogram(buckets) => {
            // The node wrote its lease term at start, so the histogram has an observation.
            assert!(buckets.iter().any(|b| b.count >= 1.0), "{buckets:?}");
        }
        other => panic!("roost_state_write_seconds is not a histogram: {other:?}"),
    }
    // Every sample line is `name{labels} value` with a finite number.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line: {line}");
    }
}

#[test]
fn retained_count_follows_sets_and_deletes() {
    let node = Node::builder("metrics-retained").start();
    let base = node.metric("roost_mqtt_retained_messages");
    mosquitto_pub(&node, &["-t", "test/r/1", "-m", "a", "-r", "-q", "1"]);
    mosquitto_pub(&node, &["-t", "test/r/2", "-m", "b", "-r", "-q", "1"]);
    assert_eq!(node.metric("roost_mqtt_retained_messages") - base, 2.0);
    mosquitto_pub(&node, &["-t", "test/r/1", "-n", "-r", "-q", "1"]);
    assert_eq!(node.metric("roost_mqtt_retained_messages") - base, 1.0);
}

#[test]
fn dashboard_and_its_api_are_served() {
    let node = Node::builder("dashboard").start();
    let (code, html) = node.get("/");
    assert_eq!(code, 200);
    assert!(html.contains("<title>Roost</title>"));
    assert!(html.contains("/assets/app.js"));
    let (code, js) = node.get("/assets/app.js");
    assert_eq!(code, 200);
    assert!(js.contains("EventSource(\"/api/live\")"));
    let (code, body) = node.get("/api/node");
    assert_eq!(code, 200);
    let snapshot: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(snapshot["node"], "dashboard");
    assert!(snapshot["mqtt"]["messages_received"].is_u64());
    assert_eq!(snapshot["health"]["status"], "healthy");
    let (code, _) = node.get("/no/such/page");
    assert_eq!(code, 404);
}

#[test]
fn api_state_shows_the_store_and_refuses_bad_queries() {
    let node = Node::builder("state-view").demo().start();
    turn_demo_relay_on(&node);

    let (code, body) = node.get("/api/state?ns=devices");
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["node"], "state-view");
    assert_eq!(view["truncated"], false);
    let entries = view["entries"].as_array().unwrap();
    // One key per entity of the four demo devices.
    assert_eq!(entries.len(), 4, "{body}");
    let relay_entry = entries
        .iter()
        .find(|e| e["key"] == "devices/state-view/demo-relay/relay")
        .unwrap();
    assert_eq!(relay_entry["namespace"], "devices");
    assert_eq!(relay_entry["path"], "state-view/demo-relay/relay");
    assert_eq!(
        relay_entry["value"],
        serde_json::json!({ "kind": "switch", "on": true })
    );
    // The safe state at start, then the command.
    assert_eq!(relay_entry["version"], 2);
    assert!(relay_entry["updated_ms"].as_u64().unwrap() > 0);

    // Every namespace, in key order: the lease term is the node's own bookkeeping.
    let (_, body) = node.get("/api/state");
    let all: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&str> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&"devices/state-view/demo-relay/relay"),
        "{keys:?}"
    );
    assert!(keys.contains(&"node/lease/term"), "{keys:?}");
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    assert_eq!(all["keys"].as_u64().unwrap(), keys.len() as u64);
    let (_, body) = node.get("/api/state?ns=node&prefix=lease/&limit=1");
    let one: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(one["entries"].as_array().unwrap().len(), 1);
    assert_eq!(one["truncated"], true, "{body}");

    // Bad queries: 400 with a reason, and counted.
    let (code, body) = node.get("/api/state?ns=bogus");
    assert_eq!(code, 400);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "unknown namespace \"bogus\": one of cluster, devices, node"
    );
    let (code, body) = node.get("/api/state?limit=0");
    assert_eq!(code, 400);
    assert!(
        body.contains("limit must be a number from 1 to 10000"),
        "{body}"
    );
    assert_eq!(
        node.metric("roost_http_bad_requests_total{endpoint=\"/api/state\"}"),
        2.0
    );
}
