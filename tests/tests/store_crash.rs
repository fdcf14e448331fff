//! Crash safety of the state store with a real process and a real SIGKILL.
//! The `store_writer` helper bursts 10,000 puts; one test kills it mid-burst and checks that
//! the file holds every acknowledged write and nothing but a gap-free continuation of them, the
//! other lets it finish and checks all 10,000 survive a reopen. Timing is printed, not asserted.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use roost_gateway::state::{Key, Namespace, Store};
use serde_json::json;

/// Writes in one burst.
const COUNT: usize = 10_000;

/// The test kills the writer right after it reports this many acknowledged writes: early
/// enough that the burst is still running, late enough that many batches were committed.
/// The writer cannot race ahead to the end meanwhile: it prints one line per write and stops
/// starting writes while its stdout pipe (64 KiB, about 6,500 lines) is full.
const KILL_AT: usize = 2_000;

const SIGKILL: i32 = 9;

fn store_writer(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_store_writer"));
    cmd.arg(dir)
        .arg(COUNT.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// The index in an `ack <i>` line.
fn parse_ack(line: &str) -> usize {
    line.strip_prefix("ack ")
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line from store_writer: {line:?}"))
}

/// Opens the store left in `dir` and checks that it holds exactly `burst/0 .. burst/n-1` with
/// the right values, for some `n >= at_least`. Returns `n`.
fn check_prefix(dir: &Path, at_least: usize) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = Store::open(dir, &prometheus::Registry::new()).expect("store reopens");
        let entries = store
            .scan_prefix(Namespace::Devices, "burst/")
            .await
            .expect("scan");
        let n = entries.len();
        for (i, (key, entry)) in entries.iter().enumerate() {
            // Position i holds key i: the present keys are exactly 0..n, no gaps.
            assert_eq!(key.path, format!("burst/{i:06}"), "gap before index {i}");
            assert_eq!(entry.value, json!({ "i": i }), "value of {key}");
            assert_eq!(entry.version, 1, "version of {key}");
        }
        assert!(
            n >= at_least,
            "only {n} writes survived, but {at_least} were acknowledged"
        );
        assert_eq!(store.len(), n as u64);
        if let Some(last) = at_least.checked_sub(1) {
            let key = Key::new(Namespace::Devices, format!("burst/{last:06}")).expect("key");
            let entry = store
                .get::<serde_json::Value>(&key)
                .await
                .expect("get")
                .expect("last acknowledged write present");
            assert_eq!(entry.value, json!({ "i": last }));
        }
        store.close().await.expect("close");
        n
    })
}

#[test]
fn sigkill_mid_burst_keeps_exactly_an_acknowledged_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = store_writer(dir.path())
        .spawn()
        .expect("spawn store_writer");
    let stdout = child.stdout.take().expect("stdout is piped");
    // A small buffer so that the test holds few lines it has not looked at yet.
    let mut lines = BufReader::with_capacity(512, stdout).lines();

    let mut last_acked = None;
    for line in lines.by_ref() {
        let line = line.expect("read store_writer output");
        assert_ne!(
            line, "done",
            "store_writer finished before {KILL_AT} acks were seen"
        );
        let i = parse_ack(&line);
        assert_eq!(i, last_acked.map_or(0, |l| l + 1), "acks come in order");
        last_acked = Some(i);
        if i >= KILL_AT {
            break;
        }
    }
    // `Child::kill` sends SIGKILL on Unix: no destructor, no close, no flush.
    child.kill().expect("SIGKILL store_writer");
    let status = child.wait().expect("wait for store_writer");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        !rest.iter().any(|l| l == "done"),
        "store_writer finished the burst before it was killed; the test proved nothing"
    );
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "killed, not exited: {status}"
    );
    // Lines already in the pipe when the writer died were acknowledged before it died.
    // (Each line is one write(2) well under PIPE_BUF, so none is cut in half.)
    for line in &rest {
        let i = parse_ack(line);
        assert_eq!(Some(i), last_acked.map(|l| l + 1), "acks come in order");
        last_acked = Some(i);
    }
    let last_acked = last_acked.expect("at least one ack");
    assert!(last_acked >= KILL_AT);

    let n = check_prefix(dir.path(), last_acked + 1);
    eprintln!(
        "store_crash: killed after ack {last_acked}; {n} of {COUNT} writes on disk ({} beyond the last ack)",
        n - (last_acked + 1)
    );
}

#[test]
fn clean_burst_of_ten_thousand_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let output = store_writer(dir.path()).output().expect("run store_writer");
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "store_writer failed: {}",
        output.status
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.last(), Some(&"done"));
    assert_eq!(lines.len(), COUNT + 1, "one ack per write, then done");
    for (i, line) in lines[..COUNT].iter().enumerate() {
        assert_eq!(parse_ack(line), i);
    }
    eprintln!(
        "store_crash: {COUNT} acknowledged writes (64 in flight, process start to exit) took {:.2?}",
        elapsed
    );

    assert_eq!(check_prefix(dir.path(), COUNT), COUNT);
}
