//! `roost check` and `roost run` on bad configs: exit 2, one line per problem, naming the
//! problem and its line. A valid file passes with exit 0.

// Test code: a panic with the value is the failure report.
#![allow(clippy::unwrap_used)]

use roost_tests::{roost, temp_file};

/// Runs `roost check` on `toml`; returns the exit code and stderr.
fn check(toml: &str) -> (Option<i32>, String) {
    let (_dir, path) = temp_file("node.toml", toml);
    let (code, _out, err) = roost(&["check", "--config", path.to_str().unwrap()]);
    (code, err)
}

#[test]
fn valid_config_passes() {
    let (code, err) = check(
        "[node]\nid = \"node-a\"\n[mqtt]\nlisten = \"127.0.0.1:1883\"\n[cluster]\npeers = [{ id = \"node-b\", mqtt = \"pi-b.local:1883\" }]\n",
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn unknown_key_names_key_and_line() {
    let (code, err) = check(
        "[node]\nid = \"node-a\"\n\n[mqtt]\nlisten = \"127.0.0.1:1883\"\nlisten_port = 1884\n",
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("node.toml:6:"), "{err}");
    assert!(err.contains("listen_port"), "{err}");
}

#[test]
fn bad_address_names_key_and_line() {
    let (code, err) = check("[node]\nid = \"node-a\"\n[http]\nlisten = \"127.0.0.1:99999\"\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("node.toml:4:"), "{err}");
    assert!(err.contains("http.listen"), "{err}");
}

#[test]
fn duplicate_peer_id_names_id_and_line() {
    let (code, err) = check(
        "[node]\nid = \"node-a\"\n[cluster]\npeers = [\n  { id = \"node-b\", mqtt = \"127.0.0.1:1884\" },\n  { id = \"node-b\", mqtt = \"127.0.0.1:1885\" },\n]\n",
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("node.toml:6:"), "{err}");
    assert!(err.contains("duplicate peer id \"node-b\""), "{err}");
}

#[test]
fn bad_node_id_names_rule_and_line() {
    let (code, err) = check("[node]\nid = \"Kitchen Pi!\"\n");
    assert_eq!(code, Some(2));
    assert!(err.contains("node.toml:2:"), "{err}");
    assert!(err.contains("node.id"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let (code, err) = check("[node]\nid = \"BAD ID\"\n[mqtt]\nlisten = \"nowhere\"\n[http]\nlisten = \"also-nowhere\"\n");
    assert_eq!(code, Some(2));
    assert_eq!(
        err.lines().filter(|l| l.contains("node.toml:")).count(),
        3,
        "{err}"
    );
}

#[test]
fn run_refuses_a_bad_config_with_exit_2() {
    let (_dir, path) = temp_file("node.toml", "[node]\nid = \"node-a\"\ncolour = \"blue\"\n");
    let (code, _out, err) = roost(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("node.toml:3:"), "{err}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _out, err) = roost(&["check", "--config", "/nonexistent/roost.toml"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/roost.toml"), "{err}");
}

#[test]
fn device_errors_name_the_device_entity_and_position() {
    let (code, err) = check(
        "[node]\nid = \"node-a\"\n[[devices]]\nid = \"hall\"\nentities = [\n  { id = \"relay\", kind = \"switch\", pin = 40 },\n  { id = \"door\", kind = \"binary_sensor\", pin = 27, pulse = \"1s\" },\n]\n",
    );
    assert_eq!(code, Some(2), "{err}");
    // Each line is FILE:LINE:COL: message, the file as given.
    let lines: Vec<&str> = err
        .lines()
        .map(|l| l.split_once("node.toml:").map_or(l, |(_, rest)| rest))
        .collect();
    assert_eq!(
        lines,
        [
            "6:42: device \"hall\", entity \"relay\": pin 40 must be a BCM pin number, 0-27",
            "7:60: device \"hall\", entity \"door\": pulse applies only to button entities",
        ]
    );
}
