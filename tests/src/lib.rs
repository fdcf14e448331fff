//! The end-to-end harness: start real `roost` processes on loopback with a temp config and
//! data dir, find where they listen, talk to them with real clients, and clean up.
//!
//! - [`Node::builder`] writes a config (ports 0: the OS picks free ones), spawns the binary,
//!   and waits for its `Ready.` line, which comes after every listener is up.
//! - [`MosquittoSub`] runs `mosquitto_sub -d` and waits for its SUBACK before returning, so
//!   a test never publishes before the subscription exists.
//!
//! The binary is `$ROOST_BIN`, or the `roost` that `cargo build --workspace --bins` put in the
//! same target profile as the running test or benchmark. Every process is killed when its
//! handle drops.
//!
//! Panics: this crate only serves tests and benchmarks, so every `expect` here checks the
//! environment the caller needs (a binary, a tool, a writable temp dir, a node that answers)
//! and its message names that precondition; the panic is the calling test's failure report.

pub mod bench;
pub mod browser;
pub mod cluster;
pub mod serial;
pub mod state;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a node gets to print `Ready.`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The bound on any single wait for an event in a test.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the `roost` binary under test is.
pub fn roost_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ROOST_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("roost"))
        .collect();
    candidates
        .iter()
        .find(|bin| bin.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no roost binary at {candidates:?}: run `cargo build --workspace --bins` first, or set ROOST_BIN"
            )
        })
}

/// Builds a node's config and starts it.
pub struct NodeBuilder {
    id: String,
    data_dir: Option<PathBuf>,
    extra: String,
    demo: bool,
    /// The IP both listeners bind (MQTT on `mqtt_port`, HTTP on a free port).
    ip: std::net::IpAddr,
    /// The MQTT port; 0 lets the OS pick.
    mqtt_port: u16,
    /// Where stderr goes (appended), instead of a file in the node's temp dir.
    log_file: Option<PathBuf>,
}

/// A running `roost` process and its temp dir.
pub struct Node {
    /// The process, killed when the node handle drops.
    child: ChildGuard,
    /// The node's id.
    pub id: String,
    /// Where its MQTT listener is.
    pub mqtt: SocketAddr,
    /// Where its HTTP server is.
    pub http: SocketAddr,
    /// Its data dir (kept across restarts when given to the builder).
    pub data_dir: PathBuf,
    stderr_path: PathBuf,
    /// Keeps the stdout pipe read, so the node never writes into a closed pipe.
    _stdout: std::sync::Mutex<Receiver<String>>,
    _dir: tempfile::TempDir,
}

impl Node {
    /// A builder for a node with the given id and no peers.
    pub fn builder(id: &str) -> NodeBuilder {
        NodeBuilder {
            id: id.to_owned(),
            data_dir: None,
            extra: String::new(),
            demo: false,
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            mqtt_port: 0,
            log_file: None,
        }
    }
}

impl NodeBuilder {
    /// Keeps state in `dir` (so a later node can reopen it) instead of a fresh temp dir.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Adds TOML to the config (whole sections). A `[mqtt]` section given here replaces the
    /// default one, so it must set `listen` (use port 0).
    pub fn config(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// Listens on `addr` for MQTT (and on its IP, any port, for HTTP): a cluster member's
    /// address must be known before it starts, for its peers' configs.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.ip = addr.ip();
        self.mqtt_port = addr.port();
        self
    }

    /// Appends the node's stderr (its logs) to `path`, which outlives the node: a cluster
    /// keeps one log per member across restarts.
    pub fn log_file(mut self, path: &Path) -> Self {
        self.log_file = Some(path.to_owned());
        self
    }

    /// Turns the simulated demo devices on.
    pub fn demo(mut self) -> Self {
        self.demo = true;
        self
    }

    /// Writes the config, starts `roost run --config`, and waits until it is ready.
    pub fn start(self) -> Node {
        let dir = tempfile::tempdir().expect("a writable temp dir");
        let data_dir = self.data_dir.unwrap_or_else(|| dir.path().join("data"));
        let config = dir.path().join("roost.toml");
        let has_mqtt = self.extra.contains("[mqtt]");
        let mut toml = format!(
            "[node]\nid = \"{}\"\ndata_dir = \"{}\"\n\n[http]\nlisten = \"{}\"\n\n[demo]\nenabled = {}\n\n",
            self.id,
            data_dir.display(),
            SocketAddr::new(self.ip, 0),
            self.demo
        );
        if !has_mqtt {
            toml.push_str(&format!(
                "[mqtt]\nlisten = \"{}\"\n\n",
                SocketAddr::new(self.ip, self.mqtt_port)
            ));
        }
        toml.push_str(&self.extra);
        std::fs::write(&config, toml).expect("the node config is writable in its temp dir");
        let stderr_path = self
            .log_file
            .clone()
            .unwrap_or_else(|| dir.path().join("stderr.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("the stderr log is creatable");
        let (child, lines) = start_roost(Command::new(roost_bin()), &config, stderr);
        let banner = wait_ready(&lines, &self.id, &stderr_path);
        let mqtt = banner.iter().find_map(|l| address_after(l, "mqtt://"));
        let http = banner
            .iter()
            .filter(|l| l.trim_start().starts_with("Dashboard"))
            .find_map(|l| address_after(l, "http://"));
        Node {
            child,
            id: self.id,
            mqtt: mqtt.expect("banner names the MQTT address"),
            http: http.expect("banner names the dashboard address"),
            data_dir,
            stderr_path,
            _stdout: std::sync::Mutex::new(lines),
            _dir: dir,
        }
    }
}

/// Starts `roost run --config <config>` through `launcher` (the binary itself, or a wrapper
/// such as `ip netns exec NS <binary>` that execs it), logging at info without colour to
/// `stderr`, its stdout read line by line.
pub fn start_roost(
    mut launcher: Command,
    config: &Path,
    stderr: std::fs::File,
) -> (ChildGuard, Receiver<String>) {
    let mut child = ChildGuard(
        launcher
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the roost binary starts"),
    );
    let lines = spawn_line_reader(child.0.stdout.take().expect("stdout was piped above"));
    (child, lines)
}

/// Reads a starting node's stdout up to its `Ready.` line and returns the banner before it;
/// panics with `who` and the node's stderr log after [`START_TIMEOUT`].
pub fn wait_ready(lines: &Receiver<String>, who: &str, stderr_path: &Path) -> Vec<String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut banner = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line == "Ready." => return banner,
            Ok(line) => banner.push(line),
            Err(e) => {
                let log = std::fs::read_to_string(stderr_path).unwrap_or_default();
                panic!("node {who} did not become ready ({e:?}); stderr:\n{log}");
            }
        }
    }
}

/// Switches the demo relay of `node` (started with `.demo()`, cluster `home`) on over MQTT
/// and returns once its state says `ON` and the state store has it (its replicated record,
/// published once committed, says so).
pub fn turn_demo_relay_on(node: &Node) {
    let relay = format!("roost/home/devices/{}/demo-relay/relay", node.id);
    let state = format!("{relay}/state");
    let stored = format!("$roost/home/state/devices/{}/demo-relay/relay", node.id);
    let mut sub = MosquittoSub::start(node, &["-t", &state, "-t", &stored, "-q", "1"]);
    sub.expect_message(&state, "OFF");
    mosquitto_pub(
        node,
        &["-t", &format!("{relay}/set"), "-m", "ON", "-q", "1"],
    );
    sub.expect_message(&state, "ON");
    sub.wait_for(
        |l| l.starts_with(&format!("{stored} ")) && l.contains(r#""on":true"#),
        "the relay's ON in the store",
    );
}

fn address_after(line: &str, scheme: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(scheme)? + scheme.len()..];
    let end = rest
        .find(|c: char| c == '/' || c.is_whitespace())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Reads lines from a child's output on a thread, so waits can have deadlines.
pub fn spawn_line_reader(out: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Node {
    /// The MQTT port.
    pub fn port(&self) -> u16 {
        self.mqtt.port()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// `GET path` on the node's HTTP server: status code and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.http);
        let (code, body) =
            roost_gateway::status::http_get(&url).unwrap_or_else(|e| panic!("GET {url}: {e:#}"));
        (
            code,
            String::from_utf8(body).expect("the node answers UTF-8 (JSON, text, HTML)"),
        )
    }

    /// `GET /health` as JSON, with its status code.
    pub fn health(&self) -> (u16, serde_json::Value) {
        let (code, body) = self.get("/health");
        let json =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("/health JSON: {e}: {body}"));
        (code, json)
    }

    /// The value of one metric series from `/metrics` (`name` with its labels, as printed,
    /// e.g. `roost_mqtt_messages_received_total{source="network"}`); 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map(|v| {
                v.trim()
                    .parse()
                    .expect("a Prometheus sample value is a number")
            })
            .unwrap_or(0.0)
    }

    /// Sends SIGTERM and waits for the exit, at most `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        signal(self.pid(), "TERM");
        wait_exit(&mut self.child.0, limit)
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    /// The node's stderr so far (its logs), for failure messages.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

/// Waits for a line matching `pred` from a line reader; panics after `limit` or at EOF.
pub fn wait_line(
    lines: &Receiver<String>,
    pred: impl Fn(&str) -> bool,
    limit: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let done = pred(&line);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(e) => panic!("no expected line ({e:?}); saw:\n{}", seen.join("\n")),
        }
    }
}

/// A child process that is killed and reaped when the guard drops, panics included.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a signal by name (`TERM`, `KILL`, ...) to a process we started.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("the kill command is installed");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Waits for a child to exit, at most `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("the child is ours to wait for") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `mosquitto_pub` command aimed at a node; add the topic and message arguments.
pub fn mosquitto_pub_command(node: &Node) -> Command {
    let mut command = Command::new("mosquitto_pub");
    command.args([
        "-h",
        &node.mqtt.ip().to_string(),
        "-p",
        &node.port().to_string(),
    ]);
    command
}

/// `mosquitto_pub` against a node; panics with its output unless it succeeds.
pub fn mosquitto_pub(node: &Node, args: &[&str]) {
    let out = mosquitto_pub_command(node)
        .args(args)
        .output()
        .expect("mosquitto_pub is installed (apt-get install mosquitto-clients)");
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `mosquitto_sub -d -v`, ready (SUBACK received) when constructed.
pub struct MosquittoSub {
    child: Child,
    lines: Receiver<String>,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub` with extra `args` (topics, QoS, will...) and waits for SUBACK.
    pub fn start(node: &Node, args: &[&str]) -> Self {
        // mosquitto_sub 2.0 block-buffers a piped stdout and has no flag against it.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-d",
                "-v",
                "-h",
                &node.mqtt.ip().to_string(),
                "-p",
                &node.port().to_string(),
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub is installed (apt-get install mosquitto-clients)");
        let lines = spawn_line_reader(child.stdout.take().expect("stdout was piped above"));
        let mut sub = MosquittoSub { child, lines };
        sub.wait_for(|l| l.starts_with("Subscribed (mid:"), "SUBACK");
        sub
    }

    /// Waits for the message line `topic payload` (mosquitto_sub's `-v` format).
    pub fn expect_message(&mut self, topic: &str, payload: &str) {
        let want = format!("{topic} {payload}");
        self.wait_for(|l| l == want, &want);
    }

    /// Waits for a line matching `pred` and returns it; panics after [`EVENT_TIMEOUT`].
    pub fn wait_for(&mut self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if pred(&line) => return line,
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {what} from mosquitto_sub; saw:\n{}", seen.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "mosquitto_sub exited before {what}; saw:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// The process id, to kill it like a crashing device.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the client with SIGKILL (no DISCONNECT: the broker must fire its will).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Mosquitto broker on a free loopback port: measured beside Roost in benchmarks, and the
/// witness of two-node clusters in tests.
pub struct Mosquitto {
    /// The broker process, killed on drop.
    pub process: ChildGuard,
    /// Its MQTT port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts Debian's `mosquitto` with anonymous access on 127.0.0.1, or `None` when it is
    /// not installed (`apt-get install mosquitto`). Returns once the port accepts connections.
    pub fn start() -> Option<Mosquitto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        Mosquitto::start_on(port)
    }

    /// [`Mosquitto::start`] on a given port (to bring a broker back where it was).
    pub fn start_on(port: u16) -> Option<Mosquitto> {
        let dir = tempfile::tempdir().ok()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
        .ok()?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut process = ChildGuard(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            // Mosquitto gives no readiness signal but its open port.
            std::thread::sleep(Duration::from_millis(10));
        }
        // A Mosquitto that could not bind (another process took the port) has exited: the
        // open port is someone else's.
        if !matches!(process.0.try_wait(), Ok(None)) {
            return None;
        }
        Some(Mosquitto {
            process,
            port,
            _dir: dir,
        })
    }
}

/// A numeric field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`, `Threads:`...), in the units
/// the kernel prints (kB for memory); 0 when the process or the field is gone.
pub fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs `roost` with arguments to completion: exit code, stdout, stderr.
pub fn roost(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(roost_bin())
        .args(args)
        .output()
        .expect("the roost binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `contents` to a file named `name` in a new temp dir; keep the dir alive.
pub fn temp_file(name: &str, contents: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a writable temp dir");
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).expect("a file in a fresh temp dir is creatable");
    f.write_all(contents.as_bytes())
        .expect("a file in a fresh temp dir is writable");
    (dir, path)
}
