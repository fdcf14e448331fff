//! The dashboard in a real browser (headless Chromium): it shows the node, its health and
//! uptime, connects to the live feed, and turns a stream of MQTT messages into a rate.

// Test code: a panic with the value is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roost_tests::browser::Browser;
use roost_tests::{mosquitto_pub_command, ChildGuard, Node};

/// Resolves once the page is live and shows a non-zero inbound rate, with what it shows.
const LIVE_WITH_A_RATE: &str = r#"
new Promise((resolve) => {
  const text = (id) => document.getElementById(id).textContent;
  const shown = () => ({
    node: text("node"), status: text("status"), conn: text("conn"),
    uptime: text("uptime"), term: text("term"), rateIn: parseFloat(text("rate-in")),
  });
  const ready = () => { const s = shown(); return s.conn === "live" && s.rateIn > 0 ? s : null; };
  const now = ready();
  if (now) { resolve(now); return; }
  new MutationObserver((_, observer) => {
    const s = ready();
    if (s) { observer.disconnect(); resolve(s); }
  }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
})
"#;

#[test]
fn dashboard_shows_the_node_and_live_message_rates() {
    let node = Node::builder("dash-live").start();
    // A steady stream of messages: mosquitto_pub -l publishes each line it reads.
    let mut publisher = ChildGuard(
        mosquitto_pub_command(&node)
            .args(["-t", "test/load", "-l"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = publisher.0.stdin.take().unwrap();
    let streaming = Arc::new(AtomicBool::new(true));
    let feeder = {
        let streaming = streaming.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while streaming.load(Ordering::Relaxed) {
                i += 1;
                if writeln!(lines, "reading {i}").is_err() {
                    break;
                }
                // The pace of the load, not a wait for an outcome.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let mut browser = Browser::start();
    browser.navigate(&format!("http://{}/", node.http));
    let shown = browser.eval(LIVE_WITH_A_RATE, Duration::from_secs(15));
    streaming.store(false, Ordering::Relaxed);
    feeder.join().unwrap();
    let _ = publisher.0.wait();

    assert_eq!(shown["node"], "dash-live");
    assert_eq!(shown["status"], "healthy");
    assert_eq!(shown["conn"], "live");
    assert_eq!(shown["term"], "1");
    assert!(shown["uptime"].as_str().unwrap().ends_with(" s"), "{shown}");
    let rate = shown["rateIn"].as_f64().unwrap();
    // About 50 msg/s are sent; the page must show a rate of that order, not a total.
    assert!(rate > 5.0 && rate < 500.0, "rate shown: {rate}");
}
