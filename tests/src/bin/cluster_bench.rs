//! Benchmark: publish on one node, subscribe on another, for a two-node Roost cluster and for
//! a pair of bridged Mosquitto brokers in the same run, with the same client code (rumqttc,
//! MQTT 3.1.1, 64-byte payloads, loopback).
//!
//! - Roost pair: two `roost` processes peered with each other (the `Cluster` harness, each on
//!   its own loopback address), measured once they agree on a leader;
//! - Mosquitto pair: two Debian `mosquitto` processes with default settings on free loopback
//!   ports, the second bridged to the first (`topic bench/# both 1`, MQTT 3.1.1, try_private).
//!
//! Every run publishes on node/broker 1 and subscribes on node/broker 2, on a topic of its
//! own; before it measures, the subscriber has its SUBACK and a probe message has crossed from
//! 1 to 2 on that topic (so the mesh link or the bridge, and the subscription's reach across
//! it, are up). Each measured payload carries its sequence number and its send time
//! (nanoseconds since a shared `Instant`), so deliveries are counted once each, duplicates
//! apart, and late or missing ones show as `delivered/sent`.
//!
//! - latency: one publisher at a steady 1,000 msg/s, one subscriber; p50 and p99 of the time
//!   from publish call to delivery, at QoS 0 and QoS 1; once with the client's default socket
//!   (Nagle on, as most device clients have it) and once with TCP_NODELAY (`latency-nd`);
//! - throughput: one QoS 1 publisher as fast as the client goes, one QoS 1 subscriber;
//!   messages delivered per second between the first publish and the last delivery.
//!
//! A run ends when every message arrived, when nothing arrived for 5 s, or after 120 s; it
//! then reports what it got. Under the table, to say where missing messages went: the Roost
//! nodes' non-zero drop, duplicate, reconnect and peer-message counters, and the Mosquitto
//! brokers' log lines about dropped messages (Mosquitto queues at most 1,000 QoS 1 messages
//! per client by default, the bridge included, and drops the rest).
//!
//! Panics: a benchmark, not a service; each `expect` names what it needs (a built `roost`,
//! an installed `mosquitto`, brokers that accept the clients' packets) and stops the run with
//! that message.
//!
//! Prints a table; asserts nothing. Run:
//! `cargo build --release --workspace --bins && target/release/cluster_bench [LATENCY_N] [THROUGHPUT_N]`

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roost_tests::bench::client;
use roost_tests::cluster::Cluster;
use roost_tests::{ChildGuard, START_TIMEOUT};
use rumqttc::QoS;

const PAYLOAD: usize = 64;
/// Publish rate of the latency run.
const LATENCY_RATE: u64 = 1_000;
/// The bound on one run; a run that does not finish reports what it got.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// A run whose deliveries stop for this long is over.
const QUIET_LIMIT: Duration = Duration::from_secs(5);
/// How long a probe may take to cross from node 1 to node 2.
const PROBE_LIMIT: Duration = Duration::from_secs(15);
/// First payload byte: a probe (ignored by the counts) or a measured message.
const PROBE: u8 = 0;
const MEASURED: u8 = 1;

/// Where a pair's clients connect: publisher on `first`, subscriber on `second`.
#[derive(Clone, Copy)]
struct Pair {
    first: SocketAddr,
    second: SocketAddr,
}

/// The runs, in table order: (row label, QoS, TCP_NODELAY, throughput run).
const RUNS: [(&str, QoS, bool, bool); 5] = [
    ("latency", QoS::AtMostOnce, false, false),
    ("latency", QoS::AtLeastOnce, false, false),
    ("latency-nd", QoS::AtMostOnce, true, false),
    ("latency-nd", QoS::AtLeastOnce, true, false),
    ("throughput", QoS::AtLeastOnce, false, true),
];

/// What one run measured.
#[derive(Default)]
struct Figures {
    sent: usize,
    delivered: usize,
    duplicates: usize,
    /// The run hit [`RUN_LIMIT`] or [`QUIET_LIMIT`] before every message arrived.
    incomplete: bool,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    per_second: Option<f64>,
}

fn main() {
    let (latency_n, throughput_n) = roost_tests::bench::counts();
    let runtime = roost_tests::bench::runtime();

    let measure = |name: &str, pair: Pair| -> Vec<Figures> {
        RUNS.iter()
            .enumerate()
            .map(|(i, &(run, qos, nodelay, throughput))| {
                let n = if throughput { throughput_n } else { latency_n };
                let topic = format!("bench/{name}/{i}");
                let f = runtime.block_on(run_once(pair, &topic, qos, nodelay, throughput, n));
                eprintln!(
                    "{name:<10} {run:<11} qos {}: {}/{} delivered{}{}",
                    qos as u8,
                    f.delivered,
                    f.sent,
                    if f.duplicates > 0 {
                        format!(", {} duplicates", f.duplicates)
                    } else {
                        String::new()
                    },
                    if f.incomplete { ", INCOMPLETE" } else { "" }
                );
                f
            })
            .collect()
    };

    let cluster = Cluster::new(2).start();
    let roost_pair = Pair {
        first: cluster.node(0).mqtt,
        second: cluster.node(1).mqtt,
    };
    let roost = measure("roost", roost_pair);
    let mut notes = Vec::new();
    for i in 0..2 {
        let node = cluster.node(i);
        let (_, metrics) = node.get("/metrics");
        for line in metrics.lines().filter(|l| {
            [
                "roost_mqtt_messages_dropped_total",
                "roost_cluster_peer_dropped_total",
                "roost_cluster_peer_duplicates_total",
                "roost_cluster_peer_reconnects_total",
                "roost_cluster_peer_messages_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
                && !l.ends_with(" 0")
        }) {
            notes.push(format!("{}: {line}", node.id));
        }
        let jumps = node.logs().matches("cursor start jumped").count();
        notes.push(format!(
            "{}: router cursor jumps (messages lost inside rumqttd): {jumps}",
            node.id
        ));
    }
    drop(cluster);

    let mosquitto = MosquittoPair::start();
    let mosquitto_figures = match &mosquitto {
        Some(m) => {
            let pair = Pair {
                first: SocketAddr::from(([127, 0, 0, 1], m.ports[0])),
                second: SocketAddr::from(([127, 0, 0, 1], m.ports[1])),
            };
            measure("mosquitto", pair)
        }
        None => {
            eprintln!("mosquitto not installed: measuring roost only (apt-get install mosquitto)");
            RUNS.iter().map(|_| Figures::default()).collect()
        }
    };
    if let Some(m) = &mosquitto {
        notes.extend(m.drop_notes());
    }
    drop(mosquitto);

    println!(
        "{:<16} | {:^43} | {:^43}",
        "", "roost pair", "mosquitto pair"
    );
    println!(
        "{:<11} {:<4} | {:>8} {:>8} {:>9} {:>15} | {:>8} {:>8} {:>9} {:>15}",
        "run",
        "qos",
        "p50 µs",
        "p99 µs",
        "msg/s",
        "delivered/sent",
        "p50 µs",
        "p99 µs",
        "msg/s",
        "delivered/sent"
    );
    for (i, &(run, qos, _, _)) in RUNS.iter().enumerate() {
        println!(
            "{run:<11} {:<4} | {} | {}",
            qos as u8,
            cells(&roost[i]),
            cells(&mosquitto_figures[i])
        );
    }
    for note in notes {
        println!("{note}");
    }
}

/// One system's four cells of a table row.
fn cells(f: &Figures) -> String {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let mut count = format!("{}/{}", f.delivered, f.sent);
    if f.duplicates > 0 {
        count.push_str(&format!(" +{}d", f.duplicates));
    }
    if f.incomplete {
        count.push('!');
    }
    format!(
        "{:>8} {:>8} {:>9} {:>15}",
        opt(f.p50_us),
        opt(f.p99_us),
        opt(f.per_second),
        count
    )
}

/// A payload: kind byte, sequence number, send time (nanoseconds since `epoch`), padded.
fn stamped(kind: u8, seq: u64, epoch: Instant) -> Vec<u8> {
    let mut payload = vec![0u8; PAYLOAD];
    payload[0] = kind;
    payload[1..9].copy_from_slice(&seq.to_be_bytes());
    let nanos = epoch.elapsed().as_nanos() as u64;
    payload[9..17].copy_from_slice(&nanos.to_be_bytes());
    payload
}

/// What the subscriber has seen of the measured messages.
struct Tally {
    /// Publish-to-delivery time of message `seq`, `u64::MAX` until it arrives.
    latency_ns: Vec<u64>,
    delivered: usize,
    duplicates: usize,
    last: Option<Instant>,
}

/// Publishes `n` messages on `pair.first` and receives them on `pair.second`.
async fn run_once(
    pair: Pair,
    topic: &str,
    qos: QoS,
    nodelay: bool,
    throughput: bool,
    n: usize,
) -> Figures {
    let epoch = Instant::now();
    // Client ids of their own per run, so no run's session meets the previous one's.
    let id = topic.replace('/', "-");
    let tally = Arc::new(Mutex::new(Tally {
        latency_ns: vec![u64::MAX; n],
        delivered: 0,
        duplicates: 0,
        last: None,
    }));
    let probed = Arc::new(AtomicBool::new(false));
    let (seen, probe_seen) = (tally.clone(), probed.clone());
    let (sub, ready) = client(
        pair.second,
        &format!("{id}-sub"),
        nodelay,
        move |payload, at| {
            if payload.len() < 17 {
                return;
            }
            if payload[0] == PROBE {
                probe_seen.store(true, Ordering::Relaxed);
                return;
            }
            let field = |range: std::ops::Range<usize>| {
                u64::from_be_bytes(payload[range].try_into().unwrap_or_default())
            };
            let (seq, sent) = (field(1..9) as usize, field(9..17));
            let latency = (at.duration_since(epoch).as_nanos() as u64).saturating_sub(sent);
            let mut t = seen.lock().expect("the tally lock is never poisoned");
            match t.latency_ns.get_mut(seq) {
                Some(slot) if *slot == u64::MAX => {
                    *slot = latency;
                    t.delivered += 1;
                }
                _ => t.duplicates += 1,
            }
            t.last = Some(at);
        },
    );
    sub.subscribe(topic, qos)
        .await
        .expect("node 2 takes the SUBSCRIBE");
    tokio::time::timeout(PROBE_LIMIT, ready)
        .await
        .expect("node 2 answers SUBACK in time")
        .expect("node 2 answers SUBACK");
    let (publisher, _) = client(pair.first, &format!("{id}-pub"), nodelay, |_, _| {});

    // Probe until one crosses: node 1 knows of the subscription on node 2.
    let probe_deadline = Instant::now() + PROBE_LIMIT;
    let mut probes = 0u64;
    while !probed.load(Ordering::Relaxed) && Instant::now() < probe_deadline {
        publisher
            .publish(topic, qos, false, stamped(PROBE, probes, epoch))
            .await
            .expect("the client queue accepts the probe");
        probes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !probed.load(Ordering::Relaxed) {
        eprintln!(
            "{topic}: no probe crossed from node 1 to node 2 in {PROBE_LIMIT:?}; measuring anyway"
        );
    }

    let first_send = Instant::now();
    let mut sent = 0;
    let sender = async {
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / LATENCY_RATE));
        for seq in 0..n {
            if !throughput {
                tick.tick().await;
            }
            publisher
                .publish(topic, qos, false, stamped(MEASURED, seq as u64, epoch))
                .await
                .expect("the client queue accepts the publish");
            sent += 1;
        }
    };
    let in_time = tokio::time::timeout(RUN_LIMIT, sender).await.is_ok();

    // Wait for the rest: all of it, or until deliveries stop, within the run's limit.
    let mut incomplete = !in_time;
    let mut delivered = 0;
    let mut quiet_since = Instant::now();
    loop {
        let now_delivered = tally.lock().expect("the tally lock").delivered;
        if now_delivered >= sent {
            break;
        }
        if now_delivered != delivered {
            delivered = now_delivered;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > QUIET_LIMIT || first_send.elapsed() > RUN_LIMIT {
            incomplete = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = publisher.disconnect().await;
    let _ = sub.disconnect().await;

    let t = tally.lock().expect("the tally lock");
    let mut samples: Vec<u64> = t
        .latency_ns
        .iter()
        .copied()
        .filter(|&ns| ns != u64::MAX)
        .collect();
    samples.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        let i = ((samples.len() as f64 * p).ceil() as usize).checked_sub(1)?;
        samples.get(i).map(|ns| *ns as f64 / 1000.0)
    };
    let span = t
        .last
        .map(|last| last.saturating_duration_since(first_send));
    Figures {
        sent,
        delivered: t.delivered,
        duplicates: t.duplicates,
        incomplete,
        p50_us: if throughput { None } else { pct(0.50) },
        p99_us: if throughput { None } else { pct(0.99) },
        per_second: match span {
            Some(span) if throughput && t.delivered > 0 && !span.is_zero() => {
                Some(t.delivered as f64 / span.as_secs_f64())
            }
            _ => None,
        },
    }
}

/// Two Debian `mosquitto` brokers on free loopback ports, the second bridged to the first;
/// both killed on drop.
struct MosquittoPair {
    ports: [u16; 2],
    _processes: [ChildGuard; 2],
    /// Configs and logs.
    dir: tempfile::TempDir,
}

impl MosquittoPair {
    /// Starts both brokers (the first, then the second with its bridge), or `None` when
    /// `mosquitto` is not installed. Returns once both ports accept connections; the bridge
    /// is known to be up only when a run's probe crosses it.
    fn start() -> Option<MosquittoPair> {
        let dir = tempfile::tempdir().expect("a writable temp dir");
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free loopback port")
        };
        let ports = [free_port(), free_port()];
        // Each logs to its stderr, a file in the temp dir, for its notices of dropped messages
        // (a file it opened itself would not be writable once it drops root for `mosquitto`).
        let configs = [
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n",
                ports[0]
            ),
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n\n\
                 connection bridge-to-1\naddress 127.0.0.1:{}\ntopic bench/# both 1\n\
                 bridge_protocol_version mqttv311\ncleansession true\ntry_private true\n\
                 notifications false\n",
                ports[1], ports[0]
            ),
        ];
        let first = spawn_mosquitto(dir.path(), 1, ports[0], &configs[0])?;
        let second = spawn_mosquitto(dir.path(), 2, ports[1], &configs[1])?;
        Some(MosquittoPair {
            ports,
            _processes: [first, second],
            dir,
        })
    }

    /// The brokers' log lines about dropped messages (the default `max_queued_messages` is
    /// 1,000 per client), each prefixed with its broker.
    fn drop_notes(&self) -> Vec<String> {
        (1..=2)
            .flat_map(|i| {
                let path = self.dir.path().join(format!("mosquitto-{i}.log"));
                std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("dropped") || l.contains("Dropp"))
                    .map(|l| format!("mosquitto {i}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Starts broker `i` with `config` and waits until it accepts connections on `port`; `None`
/// when `mosquitto` cannot be run.
fn spawn_mosquitto(dir: &std::path::Path, i: usize, port: u16, config: &str) -> Option<ChildGuard> {
    let path = dir.join(format!("mosquitto-{i}.conf"));
    std::fs::write(&path, config).expect("the mosquitto config is writable in its temp dir");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join(format!("mosquitto-{i}.log")))
                .expect("the mosquitto log is creatable in its temp dir"),
        )
        .spawn()
        .ok()?;
    let process = ChildGuard(child);
    let deadline = Instant::now() + START_TIMEOUT;
    // Mosquitto gives no readiness signal but its open port.
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto {i} opens port {port} within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(process)
}
