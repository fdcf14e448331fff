//! What the benchmarks share: their command line (`[LATENCY_N [THROUGHPUT_N]]`), their
//! runtime, percentiles, and a rumqttc client whose event loop runs on its own task and hands every
//! delivered payload, with its arrival time, to a callback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet};
use tokio::sync::oneshot;

/// The message counts of a benchmark's command line: `[LATENCY_N [THROUGHPUT_N]]`, 5,000
/// and 100,000 by default. A count that is not a number stops the benchmark.
pub fn counts() -> (usize, usize) {
    let mut args = std::env::args().skip(1);
    let latency_n = args.next().map_or(5_000, |a| a.parse().expect("LATENCY_N"));
    let throughput_n = args
        .next()
        .map_or(100_000, |a| a.parse().expect("THROUGHPUT_N"));
    (latency_n, throughput_n)
}

/// The `p`-th percentile (0.0 to 1.0) of sorted `samples`, in milliseconds.
pub fn pct(samples: &[Duration], p: f64) -> f64 {
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i].as_secs_f64() * 1000.0
}

/// The multi-threaded runtime the clients of a benchmark run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built")
}

/// A client of the broker at `addr` (TCP_NODELAY if `nodelay`); `on_publish` sees every
/// delivered payload with its arrival time, and the receiver fires on the first SUBACK.
pub fn client(
    addr: SocketAddr,
    id: &str,
    nodelay: bool,
    on_publish: impl FnMut(&[u8], Instant) + Send + 'static,
) -> (AsyncClient, oneshot::Receiver<()>) {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_inflight(100);
    let (client, mut events) = AsyncClient::new(options, 10_000);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(nodelay);
    events.set_network_options(network);
    let (subscribed, ready) = oneshot::channel();
    tokio::spawn(drive(events, on_publish, subscribed));
    (client, ready)
}

async fn drive(
    mut events: EventLoop,
    mut on_publish: impl FnMut(&[u8], Instant),
    subscribed: oneshot::Sender<()>,
) {
    let mut subscribed = Some(subscribed);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p.payload, Instant::now()),
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                if let Some(tx) = subscribed.take() {
                    let _ = tx.send(());
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}
