//! Benchmark of replicated state on real `roost` processes on loopback (the `Cluster`
//! harness, default settings):
//!
//! - latency: a three-node cluster; one writer on node-a puts `devices/node-a/lat/<i % 100>`
//!   through `PUT /api/state/..` (keep-alive HTTP/1.1), one write at a time, and a reader
//!   on node-b follows `GET /api/state/events`. Reported: the write's acknowledgement on
//!   node-a (durable there) and the time from the start of the write until node-b has
//!   committed it and announced it, p50/p99/max;
//! - catch-up: node-a and node-b hold 10,000 keys; node-c starts with an empty data dir.
//!   Reported: from spawning node-c to its `Ready.` line, and from then until its `/health`
//!   says `in_sync` with all 10,000 keys;
//! - memory: a two-node cluster holds 100,000 keys (written on node-a with 8 connections);
//!   reported: each node's RSS and its `state.redb` and `retained.redb` sizes.
//!
//! Prints its figures; asserts nothing. Panics name what they need (a built `roost`).
//! Run: `cargo build --release --workspace --bins && target/release/state_bench [LATENCY_N [MEMORY_KEYS]]`

use std::thread;
use std::time::{Duration, Instant};

use roost_tests::bench::pct;
use roost_tests::cluster::Cluster;
use roost_tests::state::{sync_state, ChangeStream, Http};
use roost_tests::{proc_status, EVENT_TIMEOUT};
use serde_json::json;

fn main() {
    let mut args = std::env::args().skip(1);
    let latency_n: u64 = args.next().map_or(2_000, |a| a.parse().expect("LATENCY_N"));
    let memory_keys: u64 = args
        .next()
        .map_or(100_000, |a| a.parse().expect("MEMORY_KEYS"));
    println!("roost replicated state benchmark (loopback, default settings)\n");
    latency(latency_n);
    catch_up(10_000);
    memory(memory_keys);
}

fn latency(n: u64) {
    let cluster = Cluster::new(3).start();
    let reader = ChangeStream::open(cluster.node(1).http, "ns=devices&prefix=node-a/lat/");
    let mut writer = Http::connect(cluster.node(0).http).expect("node-a answers HTTP");
    let mut versions = std::collections::HashMap::new();
    let mut acked = Vec::with_capacity(n as usize);
    let mut replicated = Vec::with_capacity(n as usize);
    for i in 0..n {
        let key = format!("devices/node-a/lat/{:02}", i % 100);
        let started = Instant::now();
        let (code, body) = writer.put(&key, &json!({ "i": i })).expect("PUT");
        assert_eq!(code, 200, "{body}");
        acked.push(started.elapsed());
        let version = body["version"].as_u64().expect("a version");
        versions.insert(key.clone(), version);
        let seen = reader.wait_for(&key, version, EVENT_TIMEOUT);
        replicated.push(seen.at.duration_since(started));
    }
    acked.sort();
    replicated.sort();
    println!("write on node-a, read on node-b ({n} writes, one at a time)");
    println!(
        "  acknowledged on node-a  p50 {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms",
        pct(&acked, 0.5),
        pct(&acked, 0.99),
        pct(&acked, 1.0)
    );
    println!(
        "  committed on node-b     p50 {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms\n",
        pct(&replicated, 0.5),
        pct(&replicated, 0.99),
        pct(&replicated, 1.0)
    );
}

/// Puts `count` keys `devices/node-a/<prefix><i>` on member 0, with 8 connections.
fn fill(cluster: &Cluster, prefix: &str, count: u64) {
    let http = cluster.node(0).http;
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let prefix = prefix.to_owned();
            thread::spawn(move || {
                let mut client = Http::connect(http).expect("node-a answers HTTP");
                for i in (w..count).step_by(8) {
                    let key = format!("devices/node-a/{prefix}{i:06}");
                    let (code, body) = client
                        .put(&key, &json!({ "i": i, "on": i % 2 == 0 }))
                        .expect("PUT");
                    assert_eq!(code, 200, "{body}");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("a writer");
    }
}

/// Waits until member `i` is in sync and holds at least `keys` records.
fn wait_synced(cluster: &Cluster, i: usize, keys: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let state = sync_state(cluster.node(i).http);
        if state["in_sync"] == true && state["keys"].as_u64().unwrap_or(0) >= keys {
            return;
        }
        assert!(Instant::now() < deadline, "not in sync in time: {state}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn catch_up(keys: u64) {
    let mut cluster = Cluster::new(3);
    cluster.start_member(0);
    cluster.start_member(1);
    cluster.wait_agreed_leader(&[0, 1], EVENT_TIMEOUT);
    fill(&cluster, "s", keys);
    wait_synced(&cluster, 1, keys, Duration::from_secs(120));
    let spawned = Instant::now();
    cluster.start_member(2);
    let ready = spawned.elapsed();
    wait_synced(&cluster, 2, keys, Duration::from_secs(120));
    let synced = spawned.elapsed();
    println!("an empty node-c joins node-a and node-b holding {keys} keys");
    println!(
        "  spawn to Ready.  {:6} ms\n  Ready. to in sync with all keys  {:6} ms  (spawn to in sync {} ms)\n",
        ready.as_millis(),
        (synced - ready).as_millis(),
        synced.as_millis()
    );
}

fn memory(keys: u64) {
    let cluster = Cluster::new(2).start();
    let started = Instant::now();
    fill(&cluster, "m", keys);
    let filled = started.elapsed();
    wait_synced(&cluster, 1, keys, Duration::from_secs(300));
    println!(
        "{keys} keys written on node-a in {:.1} s ({:.0} writes/s, 8 connections), replicated to node-b",
        filled.as_secs_f64(),
        keys as f64 / filled.as_secs_f64()
    );
    for i in 0..2 {
        let node = cluster.node(i);
        let size = |f: &str| {
            std::fs::metadata(node.data_dir.join(f))
                .map(|m| m.len() / (1024 * 1024))
                .unwrap_or(0)
        };
        println!(
            "  {}  RSS {:4} MiB  (peak {:4} MiB)  state.redb {:4} MiB  retained.redb {:4} MiB",
            node.id,
            proc_status(node.pid(), "VmRSS:") / 1024,
            proc_status(node.pid(), "VmHWM:") / 1024,
            size("state.redb"),
            size("retained.redb"),
        );
    }
}
