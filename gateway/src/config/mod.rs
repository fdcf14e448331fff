//! The node's TOML config: the raw `*Config` structs that mirror the file (private to this
//! module), their validation into typed [`Settings`], and [`ConfigError`]s that point at
//! `FILE:LINE:COL`. `main.rs` calls [`load`] for `roost run` / `roost check` and
//! [`Settings::defaults`] for the no-argument mode; the rest of the gateway only sees `Settings`.
//! Settings are read once at start (changing any of them needs a restart); this module reads
//! the config file and the hostname and does no other I/O.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

mod devices;

pub use devices::{
    Attachment, DeviceSettings, EntitySettings, GpioSettings, DEFAULT_DEBOUNCE, DEFAULT_PULSE,
};

// === defaults and limits ===

const DEFAULT_DATA_DIR: &str = "./roost-data";
const DEFAULT_MQTT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1883);
const DEFAULT_TOPIC_PREFIX: &str = "roost";
const DEFAULT_MAX_CONNECTIONS: usize = 1000;
const DEFAULT_MAX_PACKET_SIZE: usize = 1024 * 1024;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
const DEFAULT_MISSED_HEARTBEATS: u32 = 5;
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_MAX_QUEUED_MESSAGES: usize = 1000;
const DEFAULT_HTTP_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
const DEFAULT_CLUSTER_NAME: &str = "home";
const DEFAULT_LOG_LEVEL: &str = "info";
const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(30);

/// Node id used when the hostname yields nothing usable.
const FALLBACK_NODE_ID: &str = "roost";
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

const ID_MAX_LEN: usize = 32;
const ID_RULE: &str = "must be 1-32 characters of a-z, 0-9, '_' or '-'";
const MAX_CONNECTIONS_RANGE: RangeInclusive<i64> = 1..=65_535;
const MAX_QUEUED_MESSAGES_RANGE: RangeInclusive<i64> = 10..=1_000_000;
/// 268,435,455 is the largest size MQTT's variable-length encoding can express.
const MAX_PACKET_SIZE_RANGE: RangeInclusive<i64> = 1024..=268_435_455;

// === errors ===

/// One problem in a config file, with the position of the offending value when known.
///
/// Displays as `FILE:LINE:COL: message`, or `FILE: message` without a position; `roost check`
/// prints one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given to [`parse`] or [`load`].
    pub file: String,
    /// 1-based line of the offending value, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending value, when known.
    pub col: Option<usize>,
    /// What is wrong, naming the key, e.g. `node.id "Node A" must be ...`.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.col) {
            (Some(line), Some(col)) => write!(f, "{}:{line}:{col}: {}", self.file, self.message),
            (Some(line), None) => write!(f, "{}:{line}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why [`load`] could not produce [`Settings`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Io {
        /// The path that was being read.
        path: PathBuf,
        /// The underlying read error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config; every problem found, sorted by position.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<ConfigError>),
}

fn join_lines(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

// === public entry points ===

/// Reads the config file at `path` and validates it; errors name the file as `path` displays.
///
/// # Errors
/// [`LoadError::Io`] if the file cannot be read, [`LoadError::Invalid`] with every problem
/// found otherwise.
pub fn load(path: &Path) -> Result<Settings, LoadError> {
    let source = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&source, &path.display().to_string()).map_err(LoadError::Invalid)
}

/// Parses and validates config text; `file` is only used to label errors.
///
/// Syntax, unknown-key and type errors stop at the first one (they come from the TOML reader);
/// otherwise every validation problem is returned at once, sorted by position.
///
/// # Errors
/// One [`ConfigError`] per problem, never an empty list.
pub fn parse(source: &str, file: &str) -> Result<Settings, Vec<ConfigError>> {
    let mut v = Validator::new(source, file);
    let raw: FileConfig = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(e) => {
            // Keep to one line: `roost check` prints one line per problem.
            let message = e.message().trim().replace('\n', "; ");
            v.error(e.span(), message);
            return Err(v.errors);
        }
    };
    let settings = raw.validate(&mut v);
    if v.errors.is_empty() {
        Ok(settings)
    } else {
        v.errors.sort_by_key(|e| (e.line, e.col));
        Err(v.errors)
    }
}

/// Turns a hostname into a valid node id: lowercase, every character outside `[a-z0-9_-]`
/// becomes `-`, leading and trailing `-` are trimmed, at most 32 characters are kept, and an
/// empty result becomes `roost`.
#[must_use]
pub fn node_id_from_hostname(raw: &str) -> NodeId {
    let mapped: String = raw
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if is_id_char(c) { c } else { '-' })
        .collect();
    let truncated: String = mapped.trim_matches('-').chars().take(ID_MAX_LEN).collect();
    // Truncating can expose a '-' at the end again.
    let id = truncated.trim_end_matches('-');
    if id.is_empty() {
        NodeId(FALLBACK_NODE_ID.to_owned())
    } else {
        NodeId(id.to_owned())
    }
}

// === impl NodeId ===

/// A node id: 1-32 characters of `a-z`, `0-9`, `_` or `-`. Unique within a cluster; it
/// appears in MQTT topics and the redb files, so it must stay stable for a node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// Checks `raw` against the id rule.
    ///
    /// # Errors
    /// A sentence saying what is wrong, quoting `raw`: `"Node A" must be 1-32 characters ...`.
    pub fn parse(raw: &str) -> Result<NodeId, String> {
        if is_valid_id(raw) {
            Ok(NodeId(raw.to_owned()))
        } else {
            Err(format!("{raw:?} {ID_RULE}"))
        }
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

/// The rule shared by node ids and the cluster name.
fn is_valid_id(raw: &str) -> bool {
    !raw.is_empty() && raw.len() <= ID_MAX_LEN && raw.chars().all(is_id_char)
}

// === settings ===

/// The validated configuration of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Who this node is and where it keeps its data.
    pub node: NodeSettings,
    /// The embedded MQTT broker.
    pub mqtt: MqttSettings,
    /// The dashboard, `/health`, `/metrics` and JSON API listener.
    pub http: HttpSettings,
    /// The cluster this node belongs to and its other members.
    pub cluster: ClusterSettings,
    /// Logging.
    pub log: LogSettings,
    /// Simulated demo devices.
    pub demo: DemoSettings,
    /// Replicated state.
    pub state: StateSettings,
    /// The GPIO backend.
    pub gpio: GpioSettings,
    /// The devices the node drives (`[[devices]]`), not counting the demo devices.
    pub devices: Vec<DeviceSettings>,
}

impl Settings {
    /// The settings of the no-argument mode: node id from the hostname (read from
    /// `/proc/sys/kernel/hostname`, `roost` if unreadable, cleaned by
    /// [`node_id_from_hostname`]), every other setting at its default, and demo devices on.
    #[must_use]
    pub fn defaults() -> Settings {
        let hostname = std::fs::read_to_string(HOSTNAME_FILE).unwrap_or_default();
        Settings {
            node: NodeSettings {
                id: node_id_from_hostname(&hostname),
                data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            },
            mqtt: MqttSettings::default(),
            http: HttpSettings::default(),
            cluster: ClusterSettings::default(),
            log: LogSettings::default(),
            demo: DemoSettings { enabled: true },
            state: StateSettings::default(),
            gpio: GpioSettings::default(),
            devices: Vec::new(),
        }
    }
}

/// `[node]`: this node's identity and storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// `node.id`: unique in the cluster. Required in a file; the no-argument mode derives it
    /// from the hostname.
    pub id: NodeId,
    /// `node.data_dir`: where the redb files and anything else the node keeps live. Default
    /// `./roost-data`; a relative path is relative to the current directory and kept as given.
    pub data_dir: PathBuf,
}

/// `[mqtt]`: the embedded broker's listener and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSettings {
    /// `mqtt.listen`: the plain MQTT 3.1.1/5 listener. Default `127.0.0.1:1883`; port 0 lets
    /// the OS pick.
    pub listen: SocketAddr,
    /// `mqtt.topic_prefix`: root of every topic Roost publishes about itself. Default
    /// `roost`; non-empty, no `+`, `#` or NUL, no leading or trailing `/`.
    pub topic_prefix: String,
    /// `mqtt.max_connections`: most concurrent client connections. Default 1000; 1..=65535.
    pub max_connections: usize,
    /// `mqtt.max_packet_size`: largest accepted packet in bytes. Default 1 MiB (1048576);
    /// 1024..=268435455 (the MQTT maximum).
    pub max_packet_size: usize,
    /// `mqtt.connect_timeout`: how long a new connection has to send CONNECT. Default 10 s;
    /// never zero.
    pub connect_timeout: Duration,
    /// `mqtt.send_timeout`: how long a client may leave data unread (a slow or stuck client)
    /// before the edge disconnects it. Default 30 s; never zero.
    pub send_timeout: Duration,
    /// `mqtt.max_session_expiry`: the longest a session is kept for a client that is away:
    /// the expiry of MQTT 3.1.1 persistent sessions and the cap on MQTT 5 Session Expiry
    /// Intervals. Default 7 days (`"7d"`); never zero.
    pub max_session_expiry: Duration,
    /// `mqtt.max_queued_messages`: QoS 1/2 messages kept per session for a client that is
    /// away, and the backlog past which a connected client holds publishers back. Default
    /// 1000; 10..=1000000.
    pub max_queued_messages: usize,
}

impl Default for MqttSettings {
    fn default() -> Self {
        MqttSettings {
            listen: DEFAULT_MQTT_LISTEN,
            topic_prefix: DEFAULT_TOPIC_PREFIX.to_owned(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            max_session_expiry: DEFAULT_MAX_SESSION_EXPIRY,
            max_queued_messages: DEFAULT_MAX_QUEUED_MESSAGES,
        }
    }
}

/// `[http]`: the dashboard, health, metrics and JSON API listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// `http.listen`. Default `127.0.0.1:8080`; port 0 lets the OS pick. Never the same
    /// address as `mqtt.listen`.
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: DEFAULT_HTTP_LISTEN,
        }
    }
}

/// `[cluster]`: the cluster's name and the other members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `cluster.name`: appears in topics (`roost/<cluster>/...`). Default `home`; same
    /// character rule as node ids.
    pub name: String,
    /// `cluster.peers`: the other members, never this node itself, ids unique. Default empty
    /// (a cluster of one).
    pub peers: Vec<PeerSettings>,
    /// `cluster.heartbeat_interval`: how often each node says it is alive. Default 200 ms.
    pub heartbeat_interval: Duration,
    /// `cluster.missed_heartbeats`: a member is down after this many intervals unheard, and
    /// a dead leader is replaced a little after that (docs/cluster.md). Default 5 (1 s);
    /// 4 to 100: a leader counts an acknowledgement for 0.4 × this many intervals, which
    /// must span more than one interval (the next heartbeat) with room for delays.
    pub missed_heartbeats: u32,
    /// `[cluster.witness]`: an outside MQTT broker that counts as one more vote, for
    /// clusters with an even number of nodes. Default none.
    pub witness: Option<WitnessSettings>,
}

/// `[cluster.witness]`: the witness broker (docs/cluster.md#the-witness).
#[derive(Clone, PartialEq, Eq)]
pub struct WitnessSettings {
    /// `mqtt`: where the broker listens (`host:port`).
    pub mqtt: PeerAddr,
    /// `username`: for brokers that require a login. Default none.
    pub username: Option<String>,
    /// `password`: with `username`. Default none.
    pub password: Option<String>,
}

impl fmt::Debug for WitnessSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password stays out of logs and debug output.
        f.debug_struct("WitnessSettings")
            .field("mqtt", &self.mqtt)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            name: DEFAULT_CLUSTER_NAME.to_owned(),
            peers: Vec::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            missed_heartbeats: DEFAULT_MISSED_HEARTBEATS,
            witness: None,
        }
    }
}

/// One entry of `cluster.peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    /// The peer's `node.id`.
    pub id: NodeId,
    /// Where the peer's MQTT listener can be reached.
    pub mqtt: PeerAddr,
}

/// A peer's MQTT address: an IP, a bracketed IPv6 address or a DNS name, and a port 1..=65535.
/// Names are resolved when connecting, not here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// IP address or DNS name, as written (IPv6 without brackets).
    pub host: String,
    /// TCP port, never 0.
    pub port: u16,
}

impl PeerAddr {
    /// Parses `host:port`, where host is an IPv4 address, `[IPv6]`, or a DNS name made of
    /// dot-separated labels of letters, digits, `-` and `_`.
    ///
    /// # Errors
    /// What is wrong, e.g. `expected HOST:PORT` or `port "0" is not 1-65535`.
    pub fn parse(raw: &str) -> Result<PeerAddr, String> {
        let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or("missing ']' after the IPv6 address")?;
            let port = after
                .strip_prefix(':')
                .ok_or("expected :PORT after the ']'")?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(format!("{host:?} is not an IPv6 address"));
            }
            (host, port)
        } else {
            let (host, port) = raw.rsplit_once(':').ok_or("expected HOST:PORT")?;
            if host.contains(':') {
                return Err("an IPv6 address must be in brackets, like [::1]:1883".to_owned());
            }
            if host.is_empty() {
                return Err("the host is empty".to_owned());
            }
            if host.parse::<Ipv4Addr>().is_err() && !is_dns_name(host) {
                return Err(format!("{host:?} is not an IP address or DNS name"));
            }
            (host, port)
        };
        let port = parse_port(port).ok_or_else(|| format!("port {port:?} is not 1-65535"))?;
        Ok(PeerAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn parse_port(raw: &str) -> Option<u16> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Hostname syntax (RFC 1123, plus `_` for container service names). A last label of only
/// digits is refused so that a mistyped IPv4 address like `10.0.0.300` is not taken as a name.
fn is_dns_name(host: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    host.len() <= 253
        && host.split('.').all(label_ok)
        && host
            .rsplit('.')
            .next()
            .is_some_and(|last| !last.bytes().all(|b| b.is_ascii_digit()))
}

/// `[log]`: what the tracing subscriber prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `log.level`: a tracing `EnvFilter` directive such as `info` or `roost=debug,info`.
    /// Default `info`. Only checked for being non-empty without whitespace here; the
    /// subscriber parses it.
    pub level: String,
    /// `log.format`: `text` or `json`. Default `text`.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: DEFAULT_LOG_LEVEL.to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (`format = "text"`, the default).
    #[default]
    Text,
    /// One JSON object per line (`format = "json"`).
    Json,
}

/// `[demo]`: simulated devices for a first look.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DemoSettings {
    /// `demo.enabled`: run the demo devices (a relay, a button, a door contact and a
    /// temperature sensor) on a simulated board of their own. Default `false`
    /// in a file; the no-argument mode turns it on.
    pub enabled: bool,
}

/// `[state]`: how the replicated state store keeps in step (docs/state.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSettings {
    /// `state.tombstone_ttl`: how long a deleted key's tombstone is kept and replicated
    /// before it is cleared everywhere. Default 1 h.
    pub tombstone_ttl: Duration,
    /// `state.anti_entropy_interval`: how often the store is compared with the retained
    /// state topics (also after every peer link's sync). Default 30 s.
    pub anti_entropy_interval: Duration,
}

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings {
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            anti_entropy_interval: DEFAULT_ANTI_ENTROPY_INTERVAL,
        }
    }
}

// === raw file structs ===
// Every field is optional here so that a missing value is reported by validation together
// with everything else; `Spanned` keeps the byte range of each value that validation inspects.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    node: NodeConfig,
    #[serde(default)]
    mqtt: MqttConfig,
    #[serde(default)]
    http: HttpConfig,
    #[serde(default)]
    cluster: ClusterConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    demo: DemoConfig,
    #[serde(default)]
    state: StateConfig,
    #[serde(default)]
    gpio: devices::GpioConfig,
    #[serde(default)]
    devices: Vec<Spanned<devices::DeviceConfig>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeConfig {
    id: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttConfig {
    listen: Option<Spanned<String>>,
    topic_prefix: Option<Spanned<String>>,
    // Signed so that a negative number gets a range error with a position, not a type error.
    max_connections: Option<Spanned<i64>>,
    max_packet_size: Option<Spanned<i64>>,
    connect_timeout: Option<Spanned<String>>,
    send_timeout: Option<Spanned<String>>,
    max_session_expiry: Option<Spanned<String>>,
    max_queued_messages: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterConfig {
    name: Option<Spanned<String>>,
    #[serde(default)]
    peers: Vec<Spanned<PeerConfig>>,
    heartbeat_interval: Option<Spanned<String>>,
    missed_heartbeats: Option<Spanned<i64>>,
    witness: Option<Spanned<WitnessConfig>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WitnessConfig {
    mqtt: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerConfig {
    id: Option<Spanned<String>>,
    mqtt: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogConfig {
    level: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoConfig {
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateConfig {
    tombstone_ttl: Option<Spanned<String>>,
    anti_entropy_interval: Option<Spanned<String>>,
}

// === validation ===

/// Collects errors with positions. Invalid values are replaced by their defaults so that
/// validation can go on and report everything; `parse` discards the result if any error
/// was recorded.
struct Validator<'a> {
    file: &'a str,
    source: &'a str,
    /// Byte offset where each line starts; `line_starts[0] == 0`.
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    fn new(source: &'a str, file: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Validator {
            file,
            source,
            line_starts,
            errors: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let col = self
            .source
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }

    fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let pos = span.map(|s| self.position(s.start));
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: pos.map(|p| p.0),
            col: pos.map(|p| p.1),
            message: message.into(),
        });
    }

    /// `LINE:COL` of a span, for messages that refer to another value.
    fn describe(&self, span: &Range<usize>) -> String {
        let (line, col) = self.position(span.start);
        format!("{line}:{col}")
    }

    fn socket_addr(
        &mut self,
        key: &str,
        raw: Option<Spanned<String>>,
        default: SocketAddr,
    ) -> SocketAddr {
        let Some(raw) = raw else { return default };
        match raw.get_ref().parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(e) => {
                self.error(
                    Some(raw.span()),
                    format!("{key} {:?} is not a valid address: {e} (expected IP:PORT, e.g. \"127.0.0.1:1883\")", raw.get_ref()),
                );
                default
            }
        }
    }

    fn ranged(
        &mut self,
        key: &str,
        raw: Option<Spanned<i64>>,
        range: RangeInclusive<i64>,
        default: usize,
    ) -> usize {
        let Some(raw) = raw else { return default };
        let n = *raw.get_ref();
        match usize::try_from(n) {
            Ok(value) if range.contains(&n) => value,
            _ => {
                self.error(
                    Some(raw.span()),
                    format!(
                        "{key} {n} must be between {} and {}",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    /// A duration key (`"500ms"`, `"10s"`): reported when it does not parse or is zero.
    fn positive_duration(
        &mut self,
        key: &str,
        raw: Option<Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let Some(raw) = raw else {
            return default;
        };
        match parse_duration(raw.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(
                    Some(raw.span()),
                    format!("{key} {:?} must be greater than zero", raw.get_ref()),
                );
                default
            }
            Err(why) => {
                self.error(
                    Some(raw.span()),
                    format!("{key} {:?} is not a valid duration: {why}", raw.get_ref()),
                );
                default
            }
        }
    }

    /// A string checked by `check`, which returns what is wrong.
    fn checked_string(
        &mut self,
        key: &str,
        raw: Option<Spanned<String>>,
        default: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> String {
        let Some(raw) = raw else {
            return default.to_owned();
        };
        match check(raw.get_ref()) {
            Ok(()) => raw.into_inner(),
            Err(why) => {
                self.error(Some(raw.span()), format!("{key} {:?} {why}", raw.get_ref()));
                default.to_owned()
            }
        }
    }
}

impl FileConfig {
    fn validate(self, v: &mut Validator<'_>) -> Settings {
        let FileConfig {
            node,
            mqtt,
            http,
            cluster,
            log,
            demo,
            state,
            gpio,
            devices,
        } = self;

        let node_id = match node.id {
            None => {
                v.error(None, "node.id is required");
                None
            }
            Some(raw) => match NodeId::parse(raw.get_ref()) {
                Ok(id) => Some(id),
                Err(why) => {
                    v.error(Some(raw.span()), format!("node.id {why}"));
                    None
                }
            },
        };
        let data_dir = v.checked_string("node.data_dir", node.data_dir, DEFAULT_DATA_DIR, |s| {
            if s.is_empty() {
                Err("must not be empty".to_owned())
            } else {
                Ok(())
            }
        });

        // A listener that does not parse is reported on its own; comparing its default with the
        // other listener would only add a confusing second message.
        let parses = |raw: &Option<Spanned<String>>| {
            raw.as_ref()
                .is_none_or(|r| r.get_ref().parse::<SocketAddr>().is_ok())
        };
        let both_parse = parses(&mqtt.listen) && parses(&http.listen);
        let mqtt_listen_span = mqtt.listen.as_ref().map(Spanned::span);
        let http_listen_span = http.listen.as_ref().map(Spanned::span);
        let mqtt = mqtt.validate(v);
        let http = HttpSettings {
            listen: v.socket_addr("http.listen", http.listen, DEFAULT_HTTP_LISTEN),
        };
        if both_parse && listeners_clash(mqtt.listen, http.listen) {
            let mqtt_at = mqtt_listen_span.as_ref().map_or_else(
                || "the default".to_owned(),
                |s| format!("at {}", v.describe(s)),
            );
            let message = format!(
                "http.listen \"{}\" clashes with mqtt.listen \"{}\" ({mqtt_at}); give them different ports",
                http.listen, mqtt.listen
            );
            // Point at whichever of the two the file actually sets.
            v.error(http_listen_span.or(mqtt_listen_span), message);
        }

        let cluster = cluster.validate(v, node_id.as_ref());

        let log = LogSettings {
            level: v.checked_string("log.level", log.level, DEFAULT_LOG_LEVEL, |s| {
                if s.is_empty() || s.chars().any(char::is_whitespace) {
                    Err("must be a non-empty filter directive without whitespace, like \"info\" or \"roost=debug,info\"".to_owned())
                } else {
                    // The same parser the logger uses, so `check` accepts exactly what `run` can.
                    tracing_subscriber::EnvFilter::try_new(s)
                        .map(drop)
                        .map_err(|e| format!("is not a valid log filter: {e}"))
                }
            }),
            format: match log.format {
                None => LogFormat::Text,
                Some(raw) => match raw.get_ref().as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => {
                        v.error(
                            Some(raw.span()),
                            format!("log.format {other:?} must be \"text\" or \"json\""),
                        );
                        LogFormat::Text
                    }
                },
            },
        };

        let demo = DemoSettings {
            enabled: demo.enabled.unwrap_or(false),
        };
        let reserved: &[&str] = if demo.enabled {
            &crate::demo::DEVICE_IDS
        } else {
            &[]
        };
        let gpio = gpio.validate(v);
        let devices = devices::validate(v, devices, reserved, gpio.backend);

        Settings {
            node: NodeSettings {
                id: node_id.unwrap_or_else(|| NodeId(FALLBACK_NODE_ID.to_owned())),
                data_dir: PathBuf::from(data_dir),
            },
            mqtt,
            http,
            cluster,
            log,
            demo,
            gpio,
            devices,
            state: StateSettings {
                tombstone_ttl: v.positive_duration(
                    "state.tombstone_ttl",
                    state.tombstone_ttl,
                    DEFAULT_TOMBSTONE_TTL,
                ),
                anti_entropy_interval: v.positive_duration(
                    "state.anti_entropy_interval",
                    state.anti_entropy_interval,
                    DEFAULT_ANTI_ENTROPY_INTERVAL,
                ),
            },
        }
    }
}

/// Whether two listeners would try to bind the same socket. Port 0 never clashes (the OS
/// picks); an unspecified IP (`0.0.0.0`, `[::]`) covers every address on its port.
fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl MqttConfig {
    fn validate(self, v: &mut Validator<'_>) -> MqttSettings {
        let connect_timeout = v.positive_duration(
            "mqtt.connect_timeout",
            self.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        );
        let send_timeout =
            v.positive_duration("mqtt.send_timeout", self.send_timeout, DEFAULT_SEND_TIMEOUT);
        MqttSettings {
            listen: v.socket_addr("mqtt.listen", self.listen, DEFAULT_MQTT_LISTEN),
            topic_prefix: v.checked_string(
                "mqtt.topic_prefix",
                self.topic_prefix,
                DEFAULT_TOPIC_PREFIX,
                check_topic_prefix,
            ),
            max_connections: v.ranged(
                "mqtt.max_connections",
                self.max_connections,
                MAX_CONNECTIONS_RANGE,
                DEFAULT_MAX_CONNECTIONS,
            ),
            max_packet_size: v.ranged(
                "mqtt.max_packet_size",
                self.max_packet_size,
                MAX_PACKET_SIZE_RANGE,
                DEFAULT_MAX_PACKET_SIZE,
            ),
            connect_timeout,
            send_timeout,
            max_session_expiry: v.positive_duration(
                "mqtt.max_session_expiry",
                self.max_session_expiry,
                DEFAULT_MAX_SESSION_EXPIRY,
            ),
            max_queued_messages: v.ranged(
                "mqtt.max_queued_messages",
                self.max_queued_messages,
                MAX_QUEUED_MESSAGES_RANGE,
                DEFAULT_MAX_QUEUED_MESSAGES,
            ),
        }
    }
}

fn check_topic_prefix(prefix: &str) -> Result<(), String> {
    let why = if prefix.is_empty() {
        "must not be empty"
    } else if prefix.contains(['+', '#']) {
        "must not contain the MQTT wildcards '+' or '#'"
    } else if prefix.contains('\0') {
        "must not contain NUL"
    } else if prefix.starts_with('/') || prefix.ends_with('/') {
        "must not start or end with '/'"
    } else {
        return Ok(());
    };
    Err(why.to_owned())
}

impl ClusterConfig {
    fn validate(self, v: &mut Validator<'_>, own_id: Option<&NodeId>) -> ClusterSettings {
        let name = v.checked_string("cluster.name", self.name, DEFAULT_CLUSTER_NAME, |s| {
            if is_valid_id(s) {
                Ok(())
            } else {
                Err(ID_RULE.to_owned())
            }
        });

        let mut peers = Vec::with_capacity(self.peers.len());
        // Where each peer id was first seen, for duplicate reports.
        let mut first_seen: HashMap<String, Range<usize>> = HashMap::new();
        for entry in self.peers {
            let entry_span = entry.span();
            let PeerConfig { id, mqtt } = entry.into_inner();

            let id = match id {
                None => {
                    v.error(
                        Some(entry_span.clone()),
                        "cluster.peers: peer entry has no id",
                    );
                    None
                }
                Some(raw) => match NodeId::parse(raw.get_ref()) {
                    Err(why) => {
                        v.error(Some(raw.span()), format!("cluster.peers: peer id {why}"));
                        None
                    }
                    Ok(id) => {
                        if let Some(first) = first_seen.get(id.as_str()) {
                            let message = format!(
                                "cluster.peers: duplicate peer id \"{id}\" (first at {})",
                                v.describe(first)
                            );
                            v.error(Some(raw.span()), message);
                            None
                        } else if own_id == Some(&id) {
                            first_seen.insert(id.0, raw.span());
                            v.error(
                                Some(raw.span()),
                                format!("cluster.peers: peer id \"{}\" is this node's own node.id; list only the other members", raw.get_ref()),
                            );
                            None
                        } else {
                            first_seen.insert(id.0.clone(), raw.span());
                            Some(id)
                        }
                    }
                },
            };

            let addr = match mqtt {
                None => {
                    v.error(
                        Some(entry_span),
                        "cluster.peers: peer entry has no mqtt address",
                    );
                    None
                }
                Some(raw) => remote_addr(v, "cluster.peers", &raw),
            };

            if let (Some(id), Some(mqtt)) = (id, addr) {
                peers.push(PeerSettings { id, mqtt });
            }
        }
        let heartbeat_interval = v.positive_duration(
            "cluster.heartbeat_interval",
            self.heartbeat_interval,
            DEFAULT_HEARTBEAT_INTERVAL,
        );
        let missed_heartbeats = v.ranged(
            "cluster.missed_heartbeats",
            self.missed_heartbeats,
            4..=100,
            DEFAULT_MISSED_HEARTBEATS as usize,
        ) as u32;
        let witness = self
            .witness
            .and_then(|w| validate_witness(v, w, peers.len() + 1));
        ClusterSettings {
            name,
            peers,
            heartbeat_interval,
            missed_heartbeats,
            witness,
        }
    }
}

/// The `mqtt` address of an entry of `section` (a peer, the witness), or an error at it.
fn remote_addr(v: &mut Validator<'_>, section: &str, raw: &Spanned<String>) -> Option<PeerAddr> {
    match PeerAddr::parse(raw.get_ref()) {
        Ok(addr) => Some(addr),
        Err(why) => {
            v.error(
                Some(raw.span()),
                format!(
                    "{section}: mqtt {:?} is not a valid address: {why}",
                    raw.get_ref()
                ),
            );
            None
        }
    }
}

/// `[cluster.witness]`: an address, credentials that come as a pair, and a cluster it can
/// help: with an odd number of nodes a witness would make the vote count even.
fn validate_witness(
    v: &mut Validator<'_>,
    raw: Spanned<WitnessConfig>,
    nodes: usize,
) -> Option<WitnessSettings> {
    let span = raw.span();
    let WitnessConfig {
        mqtt,
        username,
        password,
    } = raw.into_inner();
    let mut ok = true;
    if nodes % 2 == 1 {
        v.error(
            Some(span.clone()),
            format!(
                "cluster.witness: a witness only helps a cluster with an even number of nodes; \
                 this one has {nodes} (remove the witness, or add a node)"
            ),
        );
        ok = false;
    }
    if username.is_some() != password.is_some() {
        v.error(
            Some(span.clone()),
            "cluster.witness: username and password go together",
        );
        ok = false;
    }
    let mqtt = match mqtt {
        None => {
            v.error(Some(span), "cluster.witness: no mqtt address");
            None
        }
        Some(raw) => remote_addr(v, "cluster.witness", &raw),
    };
    Some(WitnessSettings {
        mqtt: mqtt?,
        username: username.map(Spanned::into_inner),
        password: password.map(Spanned::into_inner),
    })
    .filter(|_| ok)
}

/// Parses `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`, e.g. `500ms`, `10s`, `2m`.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected an integer followed by ms, s, m, h or d, like \"10s\"";
    let digits_end = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(digits_end);
    if digits.is_empty() {
        return Err(EXPECTED.to_owned());
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| "the number is too large".to_owned())?;
    let secs_per_unit = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => return Err(format!("missing unit; {EXPECTED}")),
        other => return Err(format!("unknown unit {other:?}; {EXPECTED}")),
    };
    n.checked_mul(secs_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| "the number is too large".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_firmware_bridge::entity::Kind;
    use roost_firmware_bridge::gpio::{Backend, Pull};
    use roost_firmware_bridge::serial::Protocol;

    const FILE: &str = "roost.toml";

    fn valid(source: &str) -> Settings {
        match parse(source, FILE) {
            Ok(settings) => settings,
            Err(errors) => panic!("expected a valid config, got:\n{}", join_lines(&errors)),
        }
    }

    fn invalid(source: &str) -> Vec<ConfigError> {
        match parse(source, FILE) {
            Ok(settings) => panic!("expected errors, got {settings:?}"),
            Err(errors) => errors,
        }
    }

    /// The only error, as `(line, col, message)`.
    fn single(source: &str) -> (Option<usize>, Option<usize>, String) {
        let errors = invalid(source);
        assert_eq!(
            errors.len(),
            1,
            "expected one error, got:\n{}",
            join_lines(&errors)
        );
        let e = &errors[0];
        (e.line, e.col, e.message.clone())
    }

    fn id(raw: &str) -> NodeId {
        NodeId::parse(raw).expect("test id is valid")
    }

    #[test]
    fn full_file_with_every_key() {
        let s = valid(
            r#"[node]
id = "node-a"
data_dir = "data/node-a"

[mqtt]
listen = "0.0.0.0:1884"
topic_prefix = "lab/roost"
max_connections = 50
max_packet_size = 4096
connect_timeout = "500ms"
send_timeout = "5s"
max_session_expiry = "2d"
max_queued_messages = 500

[http]
listen = "[::1]:8081"

[cluster]
name = "attic_2"
heartbeat_interval = "250ms"
missed_heartbeats = 6
peers = [
  { id = "node-b", mqtt = "127.0.0.1:1885" },
  { id = "node-c", mqtt = "pi-kitchen.local:1883" },
  { id = "node-d", mqtt = "[fe80::1]:1883" },
]

[log]
level = "roost=debug,info"
format = "json"

[demo]
enabled = true

[state]
tombstone_ttl = "10m"
anti_entropy_interval = "5s"

[gpio]
backend = "simulated"

[[devices]]
id = "hall"
name = "Hall"
entities = [
  { id = "relay", name = "Hall light relay", kind = "switch", pin = 17, invert = true, safe_state = "on" },
  { id = "door", kind = "binary_sensor", pin = 27, pull = "up", invert = true, debounce = "50ms" },
  { id = "dimmer", kind = "light", pin = 18, safe_state = "off" },
  { id = "bell", kind = "button", pin = 22, pulse = "150ms" },
  { id = "probe", kind = "sensor", pin = 3, unit = "°C" },
]

[[devices]]
id = "uno"
serial = { port = "/dev/ttyACM0", protocol = "firmata", baud = 115200 }
[[devices.entities]]
id = "soil"
kind = "sensor"
pin = 14
unit = "%"
[[devices.entities]]
id = "pump"
kind = "button"
pin = 13
pulse = "2s"

[[devices]]
id = "esp"
serial = { port = "/dev/serial/by-id/usb-esp", protocol = "json_lines" }
entities = [{ id = "fan", kind = "switch" }]
"#,
        );
        let entity = |id: &str, kind: Kind, pin: u8| EntitySettings::new(id, kind, pin);
        let expected = Settings {
            node: NodeSettings {
                id: id("node-a"),
                data_dir: PathBuf::from("data/node-a"),
            },
            mqtt: MqttSettings {
                listen: "0.0.0.0:1884".parse().expect("addr"),
                topic_prefix: "lab/roost".to_owned(),
                max_connections: 50,
                max_packet_size: 4096,
                connect_timeout: Duration::from_millis(500),
                send_timeout: Duration::from_secs(5),
                max_session_expiry: Duration::from_secs(2 * 86_400),
                max_queued_messages: 500,
            },
            http: HttpSettings {
                listen: "[::1]:8081".parse().expect("addr"),
            },
            cluster: ClusterSettings {
                name: "attic_2".to_owned(),
                peers: vec![
                    PeerSettings {
                        id: id("node-b"),
                        mqtt: PeerAddr {
                            host: "127.0.0.1".to_owned(),
                            port: 1885,
                        },
                    },
                    PeerSettings {
                        id: id("node-c"),
                        mqtt: PeerAddr {
                            host: "pi-kitchen.local".to_owned(),
                            port: 1883,
                        },
                    },
                    PeerSettings {
                        id: id("node-d"),
                        mqtt: PeerAddr {
                            host: "fe80::1".to_owned(),
                            port: 1883,
                        },
                    },
                ],
                heartbeat_interval: Duration::from_millis(250),
                missed_heartbeats: 6,
                witness: None,
            },
            log: LogSettings {
                level: "roost=debug,info".to_owned(),
                format: LogFormat::Json,
            },
            demo: DemoSettings { enabled: true },
            state: StateSettings {
                tombstone_ttl: Duration::from_secs(600),
                anti_entropy_interval: Duration::from_secs(5),
            },
            gpio: GpioSettings {
                backend: Backend::Simulated,
            },
            devices: vec![
                DeviceSettings {
                    id: "hall".into(),
                    name: "Hall".into(),
                    attachment: Attachment::Gpio,
                    entities: vec![
                        EntitySettings {
                            name: "Hall light relay".into(),
                            invert: true,
                            safe_on: true,
                            ..entity("relay", Kind::Switch, 17)
                        },
                        EntitySettings {
                            pull: Pull::Up,
                            invert: true,
                            debounce: Duration::from_millis(50),
                            ..entity("door", Kind::BinarySensor, 27)
                        },
                        entity("dimmer", Kind::Light, 18),
                        EntitySettings {
                            pulse: Duration::from_millis(150),
                            ..entity("bell", Kind::Button, 22)
                        },
                        EntitySettings {
                            unit: Some("°C".into()),
                            ..entity("probe", Kind::Sensor, 3)
                        },
                    ],
                },
                DeviceSettings {
                    id: "uno".into(),
                    name: "uno".into(),
                    attachment: Attachment::Serial {
                        port: "/dev/ttyACM0".into(),
                        protocol: Protocol::Firmata,
                        baud: 115_200,
                    },
                    entities: vec![
                        EntitySettings {
                            unit: Some("%".into()),
                            ..entity("soil", Kind::Sensor, 14)
                        },
                        EntitySettings {
                            pulse: Duration::from_secs(2),
                            ..entity("pump", Kind::Button, 13)
                        },
                    ],
                },
                DeviceSettings {
                    id: "esp".into(),
                    name: "esp".into(),
                    attachment: Attachment::Serial {
                        port: "/dev/serial/by-id/usb-esp".into(),
                        protocol: Protocol::JsonLines,
                        baud: 115_200,
                    },
                    entities: vec![entity("fan", Kind::Switch, 0)],
                },
            ],
        };
        assert_eq!(s, expected);
    }

    #[test]
    fn empty_file_is_invalid_only_for_missing_node_id() {
        let (line, col, message) = single("");
        assert_eq!((line, col), (None, None));
        assert_eq!(message, "node.id is required");
        let errors = invalid("[node]\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].to_string(), "roost.toml: node.id is required");
    }

    #[test]
    fn defaults_applied() {
        let s = valid("[node]\nid = \"solo\"\n");
        assert_eq!(s.node.id.as_str(), "solo");
        assert_eq!(s.node.data_dir, PathBuf::from("./roost-data"));
        assert_eq!(s.mqtt.listen, "127.0.0.1:1883".parse().expect("addr"));
        assert_eq!(s.mqtt.topic_prefix, "roost");
        assert_eq!(s.mqtt.max_connections, 1000);
        assert_eq!(s.mqtt.max_packet_size, 1_048_576);
        assert_eq!(s.mqtt.connect_timeout, Duration::from_secs(10));
        assert_eq!(s.http.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(s.cluster.name, "home");
        assert!(s.cluster.peers.is_empty());
        assert_eq!(s.log.level, "info");
        assert_eq!(s.log.format, LogFormat::Text);
        assert!(!s.demo.enabled);
        // Empty sections are the same as absent ones.
        let with_sections =
            valid("[node]\nid = \"solo\"\n[mqtt]\n[http]\n[cluster]\n[log]\n[demo]\n");
        assert_eq!(with_sections, s);
    }

    #[test]
    fn no_argument_defaults() {
        let s = Settings::defaults();
        assert!(NodeId::parse(s.node.id.as_str()).is_ok());
        assert!(s.demo.enabled);
        assert_eq!(s.mqtt, MqttSettings::default());
        assert_eq!(s.http, HttpSettings::default());
        assert_eq!(s.cluster, ClusterSettings::default());
        assert_eq!(s.log, LogSettings::default());
        assert_eq!(s.node.data_dir, PathBuf::from("./roost-data"));
    }

    #[test]
    fn unknown_top_level_key() {
        let (line, col, message) =
            single("[node]\nid = \"a\"\n\n[mqqt]\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!((line, col), (Some(4), Some(2)));
        assert!(message.contains("unknown field `mqqt`"), "{message}");
    }

    #[test]
    fn unknown_nested_key() {
        let (line, col, message) =
            single("[node]\nid = \"a\"\n\n[mqtt]\nlisten = \"127.0.0.1:1883\"\nport = 1883\n");
        assert_eq!((line, col), (Some(6), Some(1)));
        assert!(message.contains("unknown field `port`"), "{message}");

        let (line, _, message) = single(
            "[node]\nid = \"a\"\n[cluster]\npeers = [\n  { id = \"b\", mqtt = \"h:1\" },\n  { id = \"c\", addr = \"h:2\" },\n]\n",
        );
        assert_eq!(line, Some(6));
        assert!(message.contains("unknown field `addr`"), "{message}");
    }

    #[test]
    fn type_error_has_position() {
        let (line, col, message) =
            single("[node]\nid = \"a\"\n[mqtt]\nmax_connections = \"many\"\n");
        assert_eq!((line, col), (Some(4), Some(19)));
        assert!(message.contains("invalid type"), "{message}");
    }

    #[test]
    fn syntax_error_has_position() {
        let (line, _, _) = single("[node]\nid = \"a\"\n[mqtt\n");
        assert_eq!(line, Some(3));
    }

    #[test]
    fn bad_listen_address() {
        let (line, col, message) =
            single("[node]\nid = \"a\"\n\n[mqtt]\nlisten = \"127.0.0.1:99999\"\n");
        assert_eq!((line, col), (Some(5), Some(10)));
        assert!(
            message.starts_with("mqtt.listen \"127.0.0.1:99999\" is not a valid address: "),
            "{message}"
        );
        let (line, _, message) =
            single("[node]\nid = \"a\"\n[http]\nlisten = \"localhost:8080\"\n");
        assert_eq!(line, Some(4));
        assert!(
            message.starts_with("http.listen \"localhost:8080\""),
            "{message}"
        );
    }

    #[test]
    fn listeners_on_the_same_port() {
        let (line, col, message) = single(
            "[node]\nid = \"a\"\n[mqtt]\nlisten = \"127.0.0.1:8080\"\n[http]\nlisten = \"127.0.0.1:8080\"\n",
        );
        assert_eq!((line, col), (Some(6), Some(10)));
        assert!(message.contains("clashes with mqtt.listen"), "{message}");
        assert!(message.contains("(at 4:10)"), "{message}");

        // http.listen left at its default: the error points at mqtt.listen.
        let (line, _, _) = single("[node]\nid = \"a\"\n[mqtt]\nlisten = \"0.0.0.0:8080\"\n");
        assert_eq!(line, Some(4));

        // Port 0 twice is fine, and so are different IPs on one port.
        valid("[node]\nid = \"a\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n");
        valid("[node]\nid = \"a\"\n[mqtt]\nlisten = \"127.0.0.1:9000\"\n[http]\nlisten = \"127.0.0.2:9000\"\n");
    }

    #[test]
    fn duplicate_peer_id() {
        let source = r#"[node]
id = "node-a"

[cluster]
peers = [
  { id = "node-b", mqtt = "127.0.0.1:1884" },
  { id = "node-c", mqtt = "127.0.0.1:1885" },
  { id = "node-b", mqtt = "127.0.0.1:1886" },
]
"#;
        let (line, col, message) = single(source);
        assert_eq!((line, col), (Some(8), Some(10)));
        assert_eq!(
            message,
            "cluster.peers: duplicate peer id \"node-b\" (first at 6:10)"
        );
    }

    #[test]
    fn duplicate_peer_id_in_array_of_tables() {
        let source = r#"[node]
id = "node-a"

[[cluster.peers]]
id = "node-b"
mqtt = "127.0.0.1:1884"

[[cluster.peers]]
id = "node-b"
mqtt = "127.0.0.1:1885"
"#;
        let (line, col, message) = single(source);
        assert_eq!((line, col), (Some(9), Some(6)));
        assert!(message.contains("(first at 5:6)"), "{message}");
    }

    #[test]
    fn bad_node_id() {
        let (line, col, message) = single("[node]\nid = \"Node A\"\n");
        assert_eq!((line, col), (Some(2), Some(6)));
        assert_eq!(
            message,
            "node.id \"Node A\" must be 1-32 characters of a-z, 0-9, '_' or '-'"
        );
        assert!(NodeId::parse("").is_err());
        assert!(NodeId::parse(&"a".repeat(33)).is_err());
        assert!(NodeId::parse(&"a".repeat(32)).is_ok());
        assert!(NodeId::parse("node_1-b").is_ok());
        assert!(NodeId::parse("nöde").is_err());
    }

    #[test]
    fn bad_cluster_name() {
        let (line, col, message) = single("[node]\nid = \"a\"\n[cluster]\nname = \"my home\"\n");
        assert_eq!((line, col), (Some(4), Some(8)));
        assert!(
            message.starts_with("cluster.name \"my home\" must be 1-32 characters"),
            "{message}"
        );
    }

    #[test]
    fn bad_peer_id_and_missing_fields() {
        let source = r#"[node]
id = "node-a"
[cluster]
peers = [
  { id = "Node-B", mqtt = "127.0.0.1:1884" },
  { mqtt = "127.0.0.1:1885" },
  { id = "node-d" },
]
"#;
        let errors = invalid(source);
        let got: Vec<_> = errors.iter().map(|e| (e.line, e.col)).collect();
        assert_eq!(
            got,
            vec![(Some(5), Some(10)), (Some(6), Some(3)), (Some(7), Some(3))]
        );
        assert!(errors[0]
            .message
            .starts_with("cluster.peers: peer id \"Node-B\" must be"));
        assert_eq!(errors[1].message, "cluster.peers: peer entry has no id");
        assert_eq!(
            errors[2].message,
            "cluster.peers: peer entry has no mqtt address"
        );
    }

    #[test]
    fn peer_with_own_id() {
        let source = r#"[node]
id = "node-a"
[cluster]
peers = [{ id = "node-b", mqtt = "127.0.0.1:1884" }, { id = "node-a", mqtt = "127.0.0.1:1883" }]
"#;
        let (line, col, message) = single(source);
        assert_eq!((line, col), (Some(4), Some(61)));
        assert!(
            message.starts_with("cluster.peers: peer id \"node-a\" is this node's own node.id"),
            "{message}"
        );
    }

    #[test]
    fn bad_peer_address() {
        let source = r#"[node]
id = "node-a"
[cluster]
peers = [
  { id = "node-b", mqtt = "127.0.0.1" },
  { id = "node-c", mqtt = "::1:1883" },
  { id = "node-d", mqtt = "host.local:0" },
  { id = "node-e", mqtt = "bad host:1883" },
]
"#;
        let errors = invalid(source);
        let lines: Vec<_> = errors.iter().map(|e| (e.line, e.col)).collect();
        assert_eq!(
            lines,
            vec![
                (Some(5), Some(27)),
                (Some(6), Some(27)),
                (Some(7), Some(27)),
                (Some(8), Some(27))
            ]
        );
        assert_eq!(
            errors[0].message,
            "cluster.peers: mqtt \"127.0.0.1\" is not a valid address: expected HOST:PORT"
        );
        assert!(errors[1].message.contains("must be in brackets"));
        assert!(errors[2].message.contains("port \"0\" is not 1-65535"));
        assert!(errors[3].message.contains("not an IP address or DNS name"));
    }

    #[test]
    fn peer_addr_parse_and_display() {
        let ok = |raw: &str| PeerAddr::parse(raw).expect("valid peer address");
        assert_eq!(ok("127.0.0.1:1884").to_string(), "127.0.0.1:1884");
        assert_eq!(ok("pi-kitchen.local:1883").host, "pi-kitchen.local");
        assert_eq!(ok("node_b:1883").host, "node_b");
        let v6 = ok("[::1]:1883");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1883));
        assert_eq!(v6.to_string(), "[::1]:1883");
        assert_eq!(ok("localhost:65535").port, 65535);
        for bad in [
            "",
            "host",
            ":1883",
            "host:",
            "host:65536",
            "host:+1",
            "host:0",
            "[::1]",
            "[::1]1883",
            "[zz]:1883",
            "10.0.0.300:1883",
            "-host:1883",
            "a..b:1883",
            "fe80::1:1883",
        ] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn bad_duration() {
        for (raw, why) in [
            ("10", "missing unit"),
            ("10 s", "unknown unit"),
            ("1w", "unknown unit"),
            ("s", "expected an integer"),
            ("-1s", "expected an integer"),
            ("99999999999999999999s", "too large"),
        ] {
            let source = format!("[node]\nid = \"a\"\n[mqtt]\nconnect_timeout = \"{raw}\"\n");
            let (line, col, message) = single(&source);
            assert_eq!((line, col), (Some(4), Some(19)), "{raw}");
            assert!(
                message.starts_with(&format!(
                    "mqtt.connect_timeout {raw:?} is not a valid duration"
                )),
                "{message}"
            );
            assert!(message.contains(why), "{raw}: {message}");
        }
        let (line, _, message) = single("[node]\nid = \"a\"\n[mqtt]\nconnect_timeout = \"0ms\"\n");
        assert_eq!(line, Some(4));
        assert_eq!(
            message,
            "mqtt.connect_timeout \"0ms\" must be greater than zero"
        );
    }

    #[test]
    fn duration_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("+5s").is_err());
    }

    #[test]
    fn log_level_must_parse_as_a_filter() {
        let (line, _, message) = single("[node]\nid = \"a\"\n[log]\nlevel = \"roost=loud\"\n");
        assert_eq!(line, Some(4));
        assert!(message.contains("is not a valid log filter"), "{message}");
    }

    #[test]
    fn invalid_listener_is_not_also_reported_as_a_clash() {
        let errors = parse(
            "[node]\nid = \"a\"\n[mqtt]\nlisten = \"localhost:1883\"\n[http]\nlisten = \"127.0.0.1:1883\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.starts_with("mqtt.listen"), "{errors:?}");
    }

    #[test]
    fn bad_log_format_and_level() {
        let (line, col, message) = single("[node]\nid = \"a\"\n[log]\nformat = \"xml\"\n");
        assert_eq!((line, col), (Some(4), Some(10)));
        assert_eq!(message, "log.format \"xml\" must be \"text\" or \"json\"");

        let (line, col, message) = single("[node]\nid = \"a\"\n[log]\nlevel = \"roost = debug\"\n");
        assert_eq!((line, col), (Some(4), Some(9)));
        assert!(
            message.starts_with("log.level \"roost = debug\" must be"),
            "{message}"
        );
        let (line, _, _) = single("[node]\nid = \"a\"\n[log]\nlevel = \"\"\n");
        assert_eq!(line, Some(4));
    }

    #[test]
    fn out_of_range_max_packet_size() {
        let (line, col, message) = single("[node]\nid = \"a\"\n[mqtt]\nmax_packet_size = 1023\n");
        assert_eq!((line, col), (Some(4), Some(19)));
        assert_eq!(
            message,
            "mqtt.max_packet_size 1023 must be between 1024 and 268435455"
        );
        let (line, _, _) = single("[node]\nid = \"a\"\n[mqtt]\nmax_packet_size = 268435456\n");
        assert_eq!(line, Some(4));
        let s = valid("[node]\nid = \"a\"\n[mqtt]\nmax_packet_size = 268435455\n");
        assert_eq!(s.mqtt.max_packet_size, 268_435_455);
    }

    #[test]
    fn out_of_range_max_connections() {
        for n in ["0", "-5", "65536"] {
            let source = format!("[node]\nid = \"a\"\n[mqtt]\nmax_connections = {n}\n");
            let (line, col, message) = single(&source);
            assert_eq!((line, col), (Some(4), Some(19)));
            assert_eq!(
                message,
                format!("mqtt.max_connections {n} must be between 1 and 65535")
            );
        }
    }

    #[test]
    fn bad_topic_prefix_and_data_dir() {
        for bad in ["", "a/+/b", "home#", "/roost", "roost/", "a\\u0000b"] {
            let source = format!("[node]\nid = \"a\"\n[mqtt]\ntopic_prefix = \"{bad}\"\n");
            let (line, col, message) = single(&source);
            assert_eq!((line, col), (Some(4), Some(16)), "{bad}");
            assert!(message.starts_with("mqtt.topic_prefix "), "{message}");
        }
        let (line, _, message) = single("[node]\nid = \"a\"\ndata_dir = \"\"\n");
        assert_eq!(line, Some(3));
        assert_eq!(message, "node.data_dir \"\" must not be empty");
    }

    #[test]
    fn several_errors_at_once() {
        let source = r#"[node]
id = "Node A"

[mqtt]
listen = "127.0.0.1:99999"
max_packet_size = 10
connect_timeout = "soon"

[cluster]
name = ""
peers = [{ id = "node-b", mqtt = "nowhere" }]

[log]
format = "yaml"
"#;
        let errors = invalid(source);
        let got: Vec<_> = errors
            .iter()
            .map(|e| {
                (
                    e.line.unwrap_or(0),
                    e.message.split(' ').next().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let want: Vec<_> = [
            (2, "node.id"),
            (5, "mqtt.listen"),
            (6, "mqtt.max_packet_size"),
            (7, "mqtt.connect_timeout"),
            (10, "cluster.name"),
            (11, "cluster.peers:"),
            (14, "log.format"),
        ]
        .iter()
        .map(|(l, k)| (*l, (*k).to_owned()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn error_display_format() {
        let errors = invalid("[node]\nid = \"a\"\n[log]\nformat = \"xml\"\n");
        assert_eq!(
            errors[0].to_string(),
            "roost.toml:4:10: log.format \"xml\" must be \"text\" or \"json\""
        );
        let no_pos = ConfigError {
            file: "x.toml".to_owned(),
            line: None,
            col: None,
            message: "node.id is required".to_owned(),
        };
        assert_eq!(no_pos.to_string(), "x.toml: node.id is required");

        let load_err = LoadError::Invalid(vec![errors[0].clone(), no_pos]);
        assert_eq!(
            load_err.to_string(),
            "roost.toml:4:10: log.format \"xml\" must be \"text\" or \"json\"\nx.toml: node.id is required"
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let (line, col, _) =
            single("log = { level = \"ééé\", format = \"x\" }\n[node]\nid = \"a\"\n");
        assert_eq!((line, col), (Some(1), Some(33)));
        let (line, col, _) = single("[node]\r\nid = \"a\"\r\n[log]\r\nformat = \"x\"\r\n");
        assert_eq!((line, col), (Some(4), Some(10)));
    }

    #[test]
    fn load_reports_missing_file_and_file_name() {
        let missing = Path::new("/nonexistent/roost-test/roost.toml");
        match load(missing) {
            Err(LoadError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected an Io error, got {other:?}"),
        }
        let dir = std::env::temp_dir().join(format!("roost-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[node]\nid = \"BAD\"\n").expect("write temp config");
        let result = load(&path);
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
        match result {
            Err(LoadError::Invalid(errors)) => {
                assert_eq!(errors.len(), 1);
                assert!(errors[0]
                    .to_string()
                    .starts_with(&format!("{}:2:6: node.id", path.display())));
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn hostname_sanitizer() {
        for (raw, want) in [
            ("node-a", "node-a"),
            ("Pi-Kitchen\n", "pi-kitchen"),
            ("pi-kitchen.local", "pi-kitchen-local"),
            ("  My Laptop  ", "my-laptop"),
            ("--edge--", "edge"),
            ("host_1", "host_1"),
            ("Ünïcode-Box", "n-code-box"),
            ("", "roost"),
            ("\n", "roost"),
            ("...", "roost"),
            (
                "a-very-long-hostname-that-goes-on-and-on.example.com",
                "a-very-long-hostname-that-goes-o",
            ),
            // Truncation must not leave a trailing '-'.
            (
                "abcdefghijklmnopqrstuvwxyz01234-tail",
                "abcdefghijklmnopqrstuvwxyz01234",
            ),
        ] {
            let id = node_id_from_hostname(raw);
            assert_eq!(id.as_str(), want, "{raw:?}");
            assert!(NodeId::parse(id.as_str()).is_ok(), "{raw:?}");
        }
    }

    #[test]
    fn example_configs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut dirs = vec![root];
        let mut checked = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("read config dir") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "toml") {
                    if let Err(e) = load(&path) {
                        panic!("{e}");
                    }
                    checked += 1;
                }
            }
        }
        assert!(
            checked >= 4,
            "expected the example and three cluster files, found {checked}"
        );
    }

    #[test]
    fn a_witness_for_two_nodes() {
        let s = valid(
            r#"[node]
id = "node-a"
[cluster]
peers = [{ id = "node-b", mqtt = "127.0.0.1:1884" }]
[cluster.witness]
mqtt = "homeassistant.local:1883"
username = "roost"
password = "s3cret"
"#,
        );
        let witness = s.cluster.witness.expect("a witness");
        assert_eq!(witness.mqtt.to_string(), "homeassistant.local:1883");
        assert_eq!(witness.username.as_deref(), Some("roost"));
        assert!(!format!("{witness:?}").contains("s3cret"));
    }

    #[test]
    fn a_witness_is_refused_where_it_cannot_help_or_is_incomplete() {
        let (line, col, message) =
            single("[node]\nid = \"node-a\"\n[cluster.witness]\nmqtt = \"h:1883\"\n");
        assert_eq!((line, col), (Some(3), Some(1)));
        assert_eq!(
            message,
            "cluster.witness: a witness only helps a cluster with an even number of nodes; \
             this one has 1 (remove the witness, or add a node)"
        );
        let pair =
            "[node]\nid = \"node-a\"\n[cluster]\npeers = [{ id = \"node-b\", mqtt = \"h:1\" }]\n";
        let (_, _, message) = single(&format!(
            "{pair}[cluster.witness]\nmqtt = \"h:1883\"\nusername = \"u\"\n"
        ));
        assert_eq!(
            message,
            "cluster.witness: username and password go together"
        );
        let (line, _, message) = single(&format!("{pair}[cluster.witness]\nmqtt = \"h\"\n"));
        assert_eq!(line, Some(6));
        assert_eq!(
            message,
            "cluster.witness: mqtt \"h\" is not a valid address: expected HOST:PORT"
        );
        let (_, _, message) = single(&format!("{pair}[cluster.witness]\n"));
        assert_eq!(message, "cluster.witness: no mqtt address");
    }

    #[test]
    fn device_errors_point_at_the_value() {
        let head = "[node]\nid = \"node-a\"\n";
        let cases: &[(&str, usize, usize, &str)] = &[
            (
                "[gpio]\nbackend = \"gpiod\"\n",
                4, 11,
                "gpio.backend \"gpiod\" must be \"auto\", \"rppal\" or \"simulated\"",
            ),
            (
                "[[devices]]\nid = \"a\"\nentities = [{ id = \"r\", kind = \"switch\", pin = 40 }]\n",
                5, 48,
                "device \"a\", entity \"r\": pin 40 must be a BCM pin number, 0-27",
            ),
            (
                "[[devices]]\nid = \"a\"\nentities = [{ id = \"r\", kind = \"relay\", pin = 4 }]\n",
                5, 32,
                "device \"a\", entity \"r\": kind \"relay\" must be switch, binary_sensor, sensor, light or button",
            ),
            (
                "[[devices]]\nid = \"a\"\nentities = [{ id = \"r\", kind = \"switch\", pin = 4, debounce = \"5ms\" }]\n",
                5, 62,
                "device \"a\", entity \"r\": debounce applies only to binary_sensor entities",
            ),
            (
                "[[devices]]\nid = \"a\"\nentities = [{ id = \"b\", kind = \"button\", pin = 4, pulse = \"2m\" }]\n",
                5, 59,
                "device \"a\", entity \"b\": pulse \"2m\" must be between 1ms and 60s",
            ),
            (
                "[[devices]]\nid = \"Bad Id\"\nentities = [{ id = \"r\", kind = \"switch\", pin = 4 }]\n",
                4, 6,
                "devices[0].id \"Bad Id\" must be 1-32 characters of a-z, 0-9, '_' or '-'",
            ),
            (
                "[[devices]]\nid = \"a\"\nserial = { port = \"/dev/x\", protocol = \"modbus\" }\nentities = [{ id = \"t\", kind = \"sensor\" }]\n",
                5, 40,
                "device \"a\": serial.protocol \"modbus\" must be \"json_lines\" or \"firmata\"",
            ),
            (
                "[[devices]]\nid = \"a\"\nserial = { port = \"/dev/x\", protocol = \"json_lines\" }\nentities = [{ id = \"t\", kind = \"sensor\", pin = 3 }]\n",
                6, 48,
                "device \"a\", entity \"t\": pin does not apply to a json_lines device (its entities are matched by id)",
            ),
            (
                "[[devices]]\nid = \"a\"\nserial = { port = \"/dev/x\", protocol = \"firmata\" }\nentities = [{ id = \"t\", kind = \"switch\", pin = 3, invert = true }]\n",
                6, 60,
                "device \"a\", entity \"t\": invert applies only to GPIO entities",
            ),
            (
                "[[devices]]\nid = \"a\"\nentities = [{ id = \"t\", kind = \"sensor\", pin = 0, debounce = \"x\" }]\n[gpio]\nbackend = \"simulated\"\n",
                5, 62,
                "device \"a\", entity \"t\": debounce applies only to binary_sensor entities",
            ),
            (
                "[gpio]\nbackend = \"rppal\"\n[[devices]]\nid = \"a\"\nentities = [{ id = \"t\", kind = \"sensor\", pin = 0 }]\n",
                7, 32,
                "device \"a\", entity \"t\": a GPIO sensor reads an analog input, which only the simulated board has (gpio.backend = \"simulated\"); on a Raspberry Pi, read it through a serial board (a Firmata board's analog pins)",
            ),
        ];
        for (body, line, col, message) in cases {
            let (l, c, m) = single(&format!("{head}{body}"));
            assert_eq!(
                (l, c, m.as_str()),
                (Some(*line), Some(*col), *message),
                "for {body}"
            );
        }
    }

    #[test]
    fn devices_pins_and_ports_are_not_shared() {
        let errors = invalid(
            r#"[node]
id = "node-a"
[[devices]]
id = "a"
entities = [
  { id = "r", kind = "switch", pin = 4 },
  { id = "r", kind = "light", pin = 5 },
]
[[devices]]
id = "b"
entities = [{ id = "d", kind = "binary_sensor", pin = 4 }, { id = "t", kind = "sensor", pin = 4 }]
[[devices]]
id = "a"
entities = [{ id = "x", kind = "switch", pin = 6 }]
[[devices]]
id = "c"
serial = { port = "/dev/ttyUSB0", protocol = "firmata" }
entities = [{ id = "x", kind = "switch", pin = 6 }, { id = "y", kind = "switch", pin = 6 }]
[[devices]]
id = "d"
serial = { port = "/dev/ttyUSB0", protocol = "json_lines" }
entities = [{ id = "x", kind = "switch" }]
[[devices]]
id = "e"
[gpio]
backend = "simulated"
"#,
        );
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "roost.toml:7:10: device \"a\": entity \"r\" is already defined at 6:10",
                "roost.toml:11:55: device \"b\", entity \"d\": pin 4 is already used by a/r at 6:38",
                "roost.toml:13:6: device \"a\" is already defined at 4:6",
                "roost.toml:18:88: device \"c\", entity \"y\": pin 6 is already used by another entity at 18:48",
                "roost.toml:21:19: device \"d\": serial.port \"/dev/ttyUSB0\" is already used at 17:19",
                "roost.toml:23:1: device \"e\" has no entities; give it at least one",
            ],
            "a GPIO pin and an analog channel of the same number are different inputs"
        );
    }

    #[test]
    fn demo_device_ids_are_reserved_while_the_demo_is_on() {
        let source = "[node]\nid = \"node-a\"\n[demo]\nenabled = true\n[[devices]]\nid = \"demo-relay\"\nentities = [{ id = \"r\", kind = \"switch\", pin = 4 }]\n";
        let (line, col, message) = single(source);
        assert_eq!((line, col), (Some(6), Some(6)));
        assert_eq!(
            message,
            "device \"demo-relay\": the id is taken by a demo device ([demo] enabled = true)"
        );
        valid(&source.replace("enabled = true", "enabled = false"));
    }
}
