//! `roost status`: asks a running node for its `/health` and prints the cluster as that node
//! sees it. Plain HTTP/1.1 over a socket is all it needs, so it carries no HTTP client crate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde::Deserialize;

/// How long `roost status` waits for the node.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong asking a node over HTTP.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `http://host:port/path`.
    #[error("{0}: only http://HOST[:PORT][/PATH] URLs are supported")]
    Url(String),
    /// The node could not be reached or the exchange failed.
    #[error("cannot reach {addr}: {source}")]
    Io {
        /// host:port.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The answer is not HTTP/1.1 as expected.
    #[error("bad HTTP response: {0}")]
    Response(&'static str),
}

/// What can go wrong in `roost status`.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The node did not answer.
    #[error("cannot reach roost at {base}: {source}")]
    Unreachable {
        /// The URL given.
        base: String,
        /// Why.
        source: HttpError,
    },
    /// The node answered something other than its health.
    #[error("{url} answered HTTP {code}")]
    Status {
        /// The health URL.
        url: String,
        /// The status code.
        code: u16,
    },
    /// The body is not `/health` JSON.
    #[error("{url} did not answer /health JSON: {source}")]
    Json {
        /// The health URL.
        url: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// The fields of `/health` that `roost status` prints.
#[derive(Debug, Deserialize)]
struct Health {
    status: String,
    node: String,
    cluster: String,
    cluster_nodes: u64,
    healthy_nodes: u64,
    leader: Option<String>,
    term: u64,
    uptime_seconds: u64,
    version: String,
    #[serde(default)]
    members: Vec<Member>,
    #[serde(default)]
    peers: Vec<PeerLink>,
    #[serde(default)]
    witness: Option<Witness>,
}

#[derive(Debug, Deserialize)]
struct Witness {
    address: String,
    connected: bool,
}

#[derive(Debug, Deserialize)]
struct Member {
    id: String,
    online: bool,
    role: String,
    #[serde(default, rename = "self")]
    is_self: bool,
    #[serde(default)]
    last_heartbeat_ms: Option<u64>,
    #[serde(default)]
    term: Option<u64>,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PeerLink {
    id: String,
    outbound: String,
    inbound: bool,
    #[serde(default)]
    reconnects: u64,
    #[serde(default)]
    queued: u64,
}

/// Fetches `<base>/health` and prints it for a person.
pub fn run(base: &str) -> Result<(), StatusError> {
    let url = format!("{}/health", base.trim_end_matches('/'));
    let (code, body) = http_get(&url).map_err(|source| StatusError::Unreachable {
        base: base.to_owned(),
        source,
    })?;
    if code != 200 && code != 503 {
        return Err(StatusError::Status { url, code });
    }
    let h: Health =
        serde_json::from_slice(&body).map_err(|source| StatusError::Json { url, source })?;
    println!(
        "cluster {}: {} ({}/{} nodes), leader {}, term {}",
        h.cluster,
        h.status,
        h.healthy_nodes,
        h.cluster_nodes,
        h.leader.as_deref().unwrap_or("none"),
        h.term
    );
    println!(
        "seen from {} (roost {}), up {}",
        h.node,
        h.version,
        human_duration(h.uptime_seconds)
    );
    if let Some(w) = &h.witness {
        let state = if w.connected {
            "connected"
        } else {
            "not connected"
        };
        println!("witness {}: {state}", w.address);
    }
    println!(
        "  {:<20} {:<8} {:<9} {:>9} {:>6} {:<8} {:<10} {:<8} {:>10} {:>7}",
        "NODE",
        "STATE",
        "ROLE",
        "HEARD",
        "TERM",
        "VERSION",
        "LINK OUT",
        "LINK IN",
        "RECONNECTS",
        "QUEUED"
    );
    for m in &h.members {
        let state = if m.online { "online" } else { "offline" };
        let heard = match (m.is_self, m.last_heartbeat_ms) {
            (true, _) => "self".to_owned(),
            (false, Some(ms)) => format!("{ms} ms"),
            (false, None) => "never".to_owned(),
        };
        let term = m
            .term
            .or(m.is_self.then_some(h.term))
            .map_or_else(|| "-".to_owned(), |t| t.to_string());
        let version = m
            .version
            .clone()
            .or(m.is_self.then(|| h.version.clone()))
            .unwrap_or_else(|| "-".to_owned());
        let link = h.peers.iter().find(|p| p.id == m.id);
        let (out, inb, reconnects, queued) = match link {
            Some(p) => (
                p.outbound.clone(),
                if p.inbound { "up" } else { "down" }.to_owned(),
                p.reconnects.to_string(),
                p.queued.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "  {:<20} {:<8} {:<9} {:>9} {:>6} {:<8} {:<10} {:<8} {:>10} {:>7}",
            m.id, state, m.role, heard, term, version, out, inb, reconnects, queued
        );
    }
    Ok(())
}

/// A blocking HTTP/1.1 GET of an `http://host:port/path` URL: the status code and the body.
pub fn http_get(url: &str) -> Result<(u16, Vec<u8>), HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(HttpError::Url(url.to_owned()));
    }
    let addr = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let io = |source| HttpError::Io {
        addr: addr.clone(),
        source,
    };
    let mut stream = TcpStream::connect(&addr).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(io)?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    // Read until the body is complete by its own framing; servers may keep the socket open.
    while !is_complete(&response) {
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
    }
    parse_response(&response)
}

/// Whether `response` holds a whole HTTP/1.1 response, judged by Content-Length or chunked
/// framing; a response with neither is complete only at end of stream.
fn is_complete(response: &[u8]) -> bool {
    let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let body = &response[split + 4..];
    for line in head.lines() {
        if let Some(len) = line.strip_prefix("content-length:") {
            return len
                .trim()
                .parse::<usize>()
                .is_ok_and(|len| body.len() >= len);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
    }
    false
}

/// Splits a complete HTTP/1.1 response into status code and body.
fn parse_response(response: &[u8]) -> Result<(u16, Vec<u8>), HttpError> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(HttpError::Response("truncated"))?;
    let head = std::str::from_utf8(&response[..split])
        .map_err(|_| HttpError::Response("header is not UTF-8"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(HttpError::Response("no status code"))?;
    let body = &response[split + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((code, body))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, HttpError> {
    let bad = HttpError::Response("bad chunked body");
    let mut out = Vec::new();
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return Err(bad);
        };
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|t| usize::from_str_radix(t.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return Err(bad) };
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let Some(chunk) = body.get(..size) else {
            return Err(bad);
        };
        out.extend_from_slice(chunk);
        let Some(rest) = body.get(size + 2..) else {
            return Err(bad);
        };
        body = rest;
    }
}

fn human_duration(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (503, b"{}".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (200, b"abcde".to_vec()));
    }

    #[test]
    fn completeness_by_framing() {
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabc"
        ));
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
        ));
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n"
        ));
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ));
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\n\r\nuntil eof"));
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 86_400), "3d");
    }
}
