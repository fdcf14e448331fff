//! Benchmark: publish → subscribe through one broker, for a Roost node and for Mosquitto in the
//! same run, with the same client code (rumqttc, MQTT 3.1.1, 64-byte payloads, loopback).
//!
//! - latency: one publisher at a steady 1,000 msg/s, one subscriber; p50 and p99 of the time
//!   from publish call to delivery, at QoS 0 and QoS 1; once with the client's default socket
//!   (Nagle on, as most device clients have it) and once with TCP_NODELAY (`latency-nd`);
//! - throughput: one publisher as fast as the client goes, one subscriber; messages delivered
//!   per second between the first publish and the last delivery, at QoS 0 and QoS 1;
//! - retained: 10,000 retained messages stored, then the time for a new subscriber to
//!   `bench/retained/#` to receive them all, at QoS 0 and QoS 1 (`p50 µs` column: the whole delivery, in ms).
//!
//! - burst: 4 publishers send 50,000 QoS 1 messages each as fast as they can to one QoS 1
//!   subscriber: messages lost, and the broker's peak RSS (`msg/s` column: delivered per second);
//! - RSS of the broker: idle (before the first run), holding the 10,000 retained messages
//!   (before the burst), after the burst, and its peak.
//!
//! Panics: a benchmark, not a service; each `expect` names what it needs (a broker that
//! accepts the clients' packets) and stops the run with that message.
//!
//! Prints a table; asserts nothing. Run:
//! `cargo build --release --workspace --bins && target/release/mqtt_bench [LATENCY_N] [THROUGHPUT_N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use roost_tests::bench::client;
use roost_tests::{Mosquitto, Node};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::oneshot;

const PAYLOAD: usize = 64;
/// Publish rate of the latency run.
const LATENCY_RATE: u64 = 1_000;
/// Publishers in the burst run.
const BURST_PUBLISHERS: usize = 4;
/// Messages each burst publisher sends.
const BURST_EACH: usize = 50_000;
/// Retained messages stored for the retained run.
const RETAINED_N: usize = 10_000;
/// The bound on one run; a run that does not finish reports what it got.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// What one run measured.
struct Figures {
    sent: usize,
    received: usize,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    per_second: Option<f64>,
}

fn main() {
    let (latency_n, throughput_n) = roost_tests::bench::counts();
    let runtime = roost_tests::bench::runtime();

    let roost = Node::builder("bench").start();
    let mosquitto = Mosquitto::start();
    let mut targets = vec![("roost", roost.port(), roost.pid())];
    match &mosquitto {
        Some(m) => targets.push(("mosquitto", m.port, m.process.0.id())),
        None => {
            eprintln!("mosquitto not installed: measuring roost only (apt-get install mosquitto)")
        }
    }

    println!(
        "{:<10} {:<4} {:<11} {:>9} {:>9} {:>12} {:>17}",
        "broker", "qos", "run", "p50 µs", "p99 µs", "msg/s", "received/sent"
    );
    for (name, port, pid) in &targets {
        let (idle, _) = memory_mib(*pid);
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let latency = runtime.block_on(latency_run(*port, qos, latency_n, false));
            print_row(name, qos, "latency", &latency);
            let latency = runtime.block_on(latency_run(*port, qos, latency_n, true));
            print_row(name, qos, "latency-nd", &latency);
            let throughput = runtime.block_on(throughput_run(*port, qos, throughput_n));
            print_row(name, qos, "throughput", &throughput);
        }
        runtime.block_on(store_retained(*port, RETAINED_N));
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let retained = runtime.block_on(retained_run(*port, qos, RETAINED_N));
            print_row(name, qos, "retained ms", &retained);
        }
        let (retained, _) = memory_mib(*pid);
        let burst = runtime.block_on(burst_run(*port, BURST_PUBLISHERS, BURST_EACH));
        print_row(name, QoS::AtLeastOnce, "burst", &burst);
        let (after, peak) = memory_mib(*pid);
        println!(
            "{name:<10} rss MiB: idle {idle:.1}, holding 10,000 retained {retained:.1}, \
             after the burst {after:.1}, peak {peak:.1}"
        );
    }
    // Where Roost's missing messages went: counted drops by reason, and losses inside
    // rumqttd's router (its commitlog overran a lagging link), which it only logs.
    let (_, metrics) = roost.get("/metrics");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("roost_mqtt_messages_dropped_total") && !l.ends_with(" 0"))
    {
        println!("roost      {line}");
    }
    let jumps = roost.logs().matches("cursor start jumped").count();
    println!("roost      router cursor jumps (messages lost inside rumqttd): {jumps}");
}

fn print_row(broker: &str, qos: QoS, run: &str, f: &Figures) {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    println!(
        "{broker:<10} {:<4} {run:<11} {:>9} {:>9} {:>12} {:>17}",
        qos as u8,
        opt(f.p50_us, 0),
        opt(f.p99_us, 0),
        opt(f.per_second, 0),
        format!("{}/{}", f.received, f.sent)
    );
}

/// A payload carrying the send time (nanoseconds since `epoch`), padded to 64 bytes.
fn stamped(epoch: Instant) -> Vec<u8> {
    let mut payload = vec![0u8; PAYLOAD];
    let nanos = epoch.elapsed().as_nanos() as u64;
    payload[..8].copy_from_slice(&nanos.to_be_bytes());
    payload
}

async fn latency_run(port: u16, qos: QoS, n: usize, nodelay: bool) -> Figures {
    let epoch = Instant::now();
    let (done_tx, done_rx) = oneshot::channel::<Vec<u64>>();
    let mut done_tx = Some(done_tx);
    let mut samples = Vec::with_capacity(n);
    let (sub, ready) = client(local(port), "bench-lat-sub", nodelay, move |payload, at| {
        if payload.len() >= 8 {
            let sent = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
            let now = at.duration_since(epoch).as_nanos() as u64;
            samples.push(now.saturating_sub(sent));
        }
        if samples.len() == n {
            if let Some(tx) = done_tx.take() {
                let _ = tx.send(std::mem::take(&mut samples));
            }
        }
    });
    sub.subscribe("bench/latency", qos)
        .await
        .expect("the broker takes the SUBSCRIBE");
    ready.await.expect("the broker answers SUBACK");
    let (publisher, _) = client(local(port), "bench-lat-pub", nodelay, |_, _| {});
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / LATENCY_RATE));
    let sender = async {
        for _ in 0..n {
            tick.tick().await;
            publisher
                .publish("bench/latency", qos, false, stamped(epoch))
                .await
                .expect("the client queue accepts the publish");
        }
    };
    let collect = async { tokio::time::timeout(RUN_LIMIT, done_rx).await };
    let ((), samples) = tokio::join!(sender, collect);
    let _ = publisher.disconnect().await;
    let _ = sub.disconnect().await;
    let mut samples = match samples {
        Ok(Ok(samples)) => samples,
        _ => Vec::new(),
    };
    samples.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        let i = ((samples.len() as f64 * p).ceil() as usize).checked_sub(1)?;
        samples.get(i).map(|ns| *ns as f64 / 1000.0)
    };
    Figures {
        sent: n,
        received: samples.len(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        per_second: None,
    }
}

/// A subscriber that counts deliveries and notes the time of the last one.
struct Counting {
    client: AsyncClient,
    start: Instant,
    received: Arc<std::sync::atomic::AtomicUsize>,
    last_ns: Arc<std::sync::atomic::AtomicU64>,
}

impl Counting {
    /// Subscribes `filter` at `qos` and returns once the SUBACK is in.
    async fn subscribe(port: u16, id: &str, filter: &str, qos: QoS) -> Counting {
        use std::sync::atomic::Ordering;
        let start = Instant::now();
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let last_ns = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (count, last) = (received.clone(), last_ns.clone());
        let (client, ready) = client(local(port), id, false, move |_, at| {
            count.fetch_add(1, Ordering::Relaxed);
            last.store(
                at.duration_since(start).as_nanos() as u64,
                Ordering::Relaxed,
            );
        });
        client
            .subscribe(filter, qos)
            .await
            .expect("the broker takes the SUBSCRIBE");
        ready.await.expect("the broker answers SUBACK");
        Counting {
            client,
            start,
            received,
            last_ns,
        }
    }

    /// Waits until `total` arrived or nothing arrived for 2 s (QoS 0 may be dropped under
    /// overload, and that is part of what is measured), then reports, with the rate counted
    /// from `first_send` (time since subscribing) to the last delivery.
    async fn finish(self, total: usize, first_send: Duration) -> Figures {
        use std::sync::atomic::Ordering;
        let mut seen = 0;
        let mut quiet_since = Instant::now();
        while self.received.load(Ordering::Relaxed) < total && self.start.elapsed() < RUN_LIMIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now_seen = self.received.load(Ordering::Relaxed);
            if now_seen != seen {
                seen = now_seen;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        let _ = self.client.disconnect().await;
        let got = self.received.load(Ordering::Relaxed);
        let span =
            Duration::from_nanos(self.last_ns.load(Ordering::Relaxed)).saturating_sub(first_send);
        Figures {
            sent: total,
            received: got,
            p50_us: None,
            p99_us: None,
            per_second: (got > 0 && !span.is_zero()).then(|| got as f64 / span.as_secs_f64()),
        }
    }
}

async fn throughput_run(port: u16, qos: QoS, n: usize) -> Figures {
    let sub = Counting::subscribe(port, "bench-tp-sub", "bench/throughput", qos).await;
    let (publisher, _) = client(local(port), "bench-tp-pub", false, |_, _| {});
    let payload = vec![b'x'; PAYLOAD];
    let first_send = sub.start.elapsed();
    for _ in 0..n {
        publisher
            .publish("bench/throughput", qos, false, payload.clone())
            .await
            .expect("the client queue accepts the publish");
    }
    let figures = sub.finish(n, first_send).await;
    let _ = publisher.disconnect().await;
    figures
}

/// Stores `n` retained messages under `bench/retained/` (QoS 1, every PUBACK awaited).
async fn store_retained(port: u16, n: usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let acked = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = oneshot::channel();
    let mut done_tx = Some(done_tx);
    let counter = acked.clone();
    let mut options = MqttOptions::new("bench-ret-pub", "127.0.0.1", port);
    options.set_inflight(100);
    let (publisher, mut events) = AsyncClient::new(options, 10_000);
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = event {
                if counter.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    if let Some(tx) = done_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    });
    for i in 0..n {
        let topic = format!("bench/retained/{:02}/{i:05}", i % 100);
        publisher
            .publish(topic, QoS::AtLeastOnce, true, vec![b'r'; PAYLOAD])
            .await
            .expect("the client queue accepts the publish");
    }
    let _ = tokio::time::timeout(RUN_LIMIT, done_rx).await;
    let _ = publisher.disconnect().await;
}

/// A new subscriber to `bench/retained/#`: how long until it has all `n` retained messages.
async fn retained_run(port: u16, qos: QoS, n: usize) -> Figures {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let received = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = oneshot::channel::<Instant>();
    let mut done_tx = Some(done_tx);
    let counter = received.clone();
    let id = format!("bench-ret-sub-{}", qos as u8);
    let (sub, _) = client(local(port), &id, false, move |_, at| {
        if counter.fetch_add(1, Ordering::Relaxed) + 1 == n {
            if let Some(tx) = done_tx.take() {
                let _ = tx.send(at);
            }
        }
    });
    let start = Instant::now();
    sub.subscribe("bench/retained/#", qos)
        .await
        .expect("the broker takes the SUBSCRIBE");
    // A broker that delivers fewer than `n` never completes; give it 10 s.
    let done = tokio::time::timeout(Duration::from_secs(10), done_rx).await;
    let _ = sub.disconnect().await;
    Figures {
        sent: n,
        received: received.load(Ordering::Relaxed),
        p50_us: match done {
            Ok(Ok(at)) => Some(at.duration_since(start).as_secs_f64() * 1000.0),
            _ => None,
        },
        p99_us: None,
        per_second: None,
    }
}

/// Four publishers flood one QoS 1 subscriber; counts what arrives.
async fn burst_run(port: u16, publishers: usize, each: usize) -> Figures {
    let sub = Counting::subscribe(port, "bench-burst-sub", "bench/burst/#", QoS::AtLeastOnce).await;
    let first_send = sub.start.elapsed();
    let sends = (0..publishers).map(|p| async move {
        let (publisher, _) = client(
            local(port),
            &format!("bench-burst-pub-{p}"),
            false,
            |_, _| {},
        );
        let payload = vec![b'b'; PAYLOAD];
        for _ in 0..each {
            publisher
                .publish(
                    format!("bench/burst/{p}"),
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .await
                .expect("the client queue accepts the publish");
        }
        publisher
    });
    let clients = futures_util::future::join_all(sends).await;
    let figures = sub.finish(publishers * each, first_send).await;
    for publisher in clients {
        let _ = publisher.disconnect().await;
    }
    figures
}

/// Resident and peak resident memory of a process, in MiB.
/// The loopback address of `port`.
fn local(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

fn memory_mib(pid: u32) -> (f64, f64) {
    let mib = |field| roost_tests::proc_status(pid, field) as f64 / 1024.0;
    (mib("VmRSS:"), mib("VmHWM:"))
}
