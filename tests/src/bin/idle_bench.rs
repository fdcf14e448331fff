//! Benchmark: the idle footprint of a running node, with Mosquitto measured in the same run
//! for scale. Starts `roost` with the demo devices on (as `roost` with no arguments does, but
//! on free ports), lets it settle, then reads its resident memory and the CPU time it used
//! over a window from /proc. Prints a table; asserts nothing.
//!
//! Panics: a benchmark, not a service; each `expect` names what it needs (Linux /proc, getconf,
//! a node that starts) and stops the run with that message.
//!
//! Run: `cargo build --release --workspace --bins && ROOST_BIN=target/release/roost
//! cargo run --release -p roost-tests --bin idle_bench -- [WINDOW_SECONDS]`

use std::process::Command;
use std::time::{Duration, Instant};

use roost_tests::{Mosquitto, Node};

/// Time given to a process to finish starting before the window opens.
const SETTLE: Duration = Duration::from_secs(5);

/// One process's figures.
struct Footprint {
    rss_mib: f64,
    peak_rss_mib: f64,
    cpu_percent: f64,
    threads: u64,
}

fn main() {
    let window = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("WINDOW_SECONDS is a number"))
        .unwrap_or(30);
    let window = Duration::from_secs(window);
    let ticks = clock_ticks();

    let roost = Node::builder("idle-bench").demo().start();
    let roost_figures = measure(roost.pid(), window, ticks);
    drop(roost);

    let mosquitto_figures =
        Mosquitto::start().map(|broker| measure(broker.process.0.id(), window, ticks));

    println!(
        "idle footprint over a {}s window after {}s settling",
        window.as_secs(),
        SETTLE.as_secs()
    );
    println!(
        "{:<22} {:>10} {:>14} {:>10} {:>8}",
        "process", "RSS MiB", "peak RSS MiB", "CPU %", "threads"
    );
    print_row("roost (demo devices)", &roost_figures);
    match &mosquitto_figures {
        Some(f) => print_row("mosquitto 2 (empty)", f),
        None => println!("mosquitto: not installed, skipped (apt-get install mosquitto)"),
    }
}

fn print_row(name: &str, f: &Footprint) {
    println!(
        "{name:<22} {:>10.1} {:>14.1} {:>10.3} {:>8}",
        f.rss_mib, f.peak_rss_mib, f.cpu_percent, f.threads
    );
}

/// Waits out the settle time, then measures CPU over `window` and memory at its end.
fn measure(pid: u32, window: Duration, ticks: f64) -> Footprint {
    std::thread::sleep(SETTLE);
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();
    std::thread::sleep(window);
    let cpu_after = cpu_ticks(pid);
    let elapsed = started.elapsed().as_secs_f64();
    let field = |name: &str| roost_tests::proc_status(pid, name);
    Footprint {
        rss_mib: field("VmRSS:") as f64 / 1024.0,
        peak_rss_mib: field("VmHWM:") as f64 / 1024.0,
        cpu_percent: (cpu_after - cpu_before) as f64 / ticks / elapsed * 100.0,
        threads: field("Threads:"),
    }
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .expect("Linux /proc/<pid>/stat of a running process");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat
        .rfind(')')
        .expect("/proc/<pid>/stat holds the command name in parentheses")
        + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11]
        .parse::<u64>()
        .expect("field 14 of /proc/<pid>/stat is utime")
        + fields[12]
            .parse::<u64>()
            .expect("field 15 of /proc/<pid>/stat is stime")
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf is installed (libc-bin)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("getconf CLK_TCK prints a number")
}
