//! A node's life: the built-in defaults, state that survives a restart, a clean SIGTERM that
//! announces offline, and the `status` and `--version` commands.

// Test code: a panic with the value is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use roost_tests::state::Http;
use roost_tests::{
    roost, roost_bin, spawn_line_reader, turn_demo_relay_on, wait_line, ChildGuard, MosquittoSub,
    Node, START_TIMEOUT,
};

#[test]
fn state_survives_a_restart_and_outputs_start_in_their_safe_state() {
    let data = tempfile::tempdir().unwrap();
    let relay = "roost/home/devices/keeper/demo-relay/relay/state";
    let note = serde_json::json!({ "text": "kept" });
    let term_before = {
        let node = Node::builder("keeper").data_dir(data.path()).demo().start();
        turn_demo_relay_on(&node);
        let mut http = Http::connect(node.http).unwrap();
        let (code, body) = http.put("devices/keeper/note", &note).unwrap();
        assert_eq!(code, 200, "{body}");
        let term = node.health().1["term"].as_u64().unwrap();
        let mut node = node;
        assert!(node.terminate(Duration::from_secs(5)).unwrap().success());
        term
    };
    let node = Node::builder("keeper").data_dir(data.path()).demo().start();
    let (code, body) = node.get("/api/state?ns=devices&prefix=keeper/note");
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["entries"][0]["value"], note, "{body}");
    // The relay was on when the node stopped; it starts in its safe state, off.
    let mut sub = MosquittoSub::start(&node, &["-t", relay]);
    sub.expect_message(relay, "OFF");
    let (_, pin) = node.get("/api/sim/demo-relay/relay");
    let pin: serde_json::Value = serde_json::from_str(&pin).unwrap();
    assert_eq!(pin["level"], false, "{pin}");
    assert_eq!(node.health().1["term"].as_u64().unwrap(), term_before + 1);
}

#[test]
fn sigterm_announces_offline_and_exits_0_within_5s() {
    let mut node = Node::builder("leaver").start();
    let mut status =
        MosquittoSub::start(&node, &["-t", "roost/home/nodes/leaver/status", "-q", "1"]);
    status.expect_message("roost/home/nodes/leaver/status", "online");
    let mut events = MosquittoSub::start(&node, &["-t", "roost/home/events", "-q", "1"]);
    let exit = node
        .terminate(Duration::from_secs(5))
        .expect("stopped within 5 s");
    assert!(exit.success(), "exit status {exit:?}\n{}", node.logs());
    status.expect_message("roost/home/nodes/leaver/status", "offline");
    let line = events.wait_for(|l| l.starts_with("roost/home/events "), "an event");
    let event: serde_json::Value =
        serde_json::from_str(line.trim_start_matches("roost/home/events ")).unwrap();
    assert_eq!(event["event"], "node_down");
    assert_eq!(event["node"], "leaver");
    assert!(event["ts"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn status_command_prints_the_cluster() {
    let node = Node::builder("watched").start();
    let (code, out, err) = roost(&["status", "--http", &format!("http://{}", node.http)]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("cluster home: healthy (1/1 nodes), leader watched"),
        "{out}"
    );
    assert!(out.contains("watched"), "{out}");
    let (code, _, err) = roost(&["status", "--http", "http://127.0.0.1:9"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot reach roost at http://127.0.0.1:9"),
        "{err}"
    );
}

#[test]
fn version_and_usage() {
    let (code, out, _) = roost(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), format!("roost {}", env!("CARGO_PKG_VERSION")));
    let (code, _, err) = roost(&["launch"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("unknown command `launch`") && err.contains("Usage:"),
        "{err}"
    );
}

/// The contract's no-argument mode: fixed ports 1883 and 8080, `./roost-data`, demo devices,
/// node id from the hostname. The only test on fixed ports.
#[test]
fn no_arguments_runs_the_defaults() {
    for port in [1883, 8080] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is busy: this test runs the contract's fixed defaults (stop the local broker or web server)"
        );
    }
    let cwd = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = ChildGuard(
        Command::new(roost_bin())
            .current_dir(cwd.path())
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let lines = spawn_line_reader(child.0.stdout.take().unwrap());
    let banner = wait_line(&lines, |l| l == "Ready.", START_TIMEOUT).join("\n");
    assert!(banner.contains("mqtt://127.0.0.1:1883"), "{banner}");
    assert!(banner.contains("http://127.0.0.1:8080/"), "{banner}");
    assert!(banner.contains("Demo"), "{banner}");
    assert!(cwd.path().join("roost-data").is_dir());
    let (code, body) = roost_gateway::status::http_get("http://127.0.0.1:8080/health").unwrap();
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let expected = roost_gateway::config::node_id_from_hostname(hostname.trim());
    assert_eq!(health["node"], expected.as_str());
    roost_tests::signal(child.0.id(), "TERM");
    let status = roost_tests::wait_exit(&mut child.0, Duration::from_secs(5)).expect("stops");
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        std::fs::read_to_string(log.path()).unwrap()
    );
}
