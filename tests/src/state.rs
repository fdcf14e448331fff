//! Talking to a node's replicated state from tests and benchmarks: a keep-alive HTTP/1.1
//! client for the state API (`PUT`/`DELETE /api/state/{ns}/{path}`), full dumps of the
//! replicated namespaces, and the live change stream (`GET /api/state/events`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// One keep-alive HTTP/1.1 connection to a node.
pub struct Http {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl Http {
    /// Connects to the node's HTTP server.
    pub fn connect(addr: SocketAddr) -> std::io::Result<Http> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        Ok(Http {
            addr,
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and reads its response: status and JSON body (`null` if empty).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        let json = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).map_err(std::io::Error::other)?
        };
        Ok((status, json))
    }

    /// `PUT /api/state/{key}` with `value`; `key` is `ns/path`.
    pub fn put(&mut self, key: &str, value: &Value) -> std::io::Result<(u16, Value)> {
        self.request("PUT", &format!("/api/state/{key}"), Some(value))
    }

    /// `DELETE /api/state/{key}`.
    pub fn delete(&mut self, key: &str) -> std::io::Result<(u16, Value)> {
        self.request("DELETE", &format!("/api/state/{key}"), None)
    }

    /// `GET path` as JSON.
    pub fn get(&mut self, path: &str) -> std::io::Result<(u16, Value)> {
        self.request("GET", path, None)
    }
}

/// What a writer did last to each key: `Some(n)` for a put of `{"n": n}`, `None` for a
/// delete.
pub type Expected = BTreeMap<String, Option<u64>>;

/// Writes ops `range` of node `node`'s stream through its HTTP API: op `j` puts `{"n": j}` on
/// `devices/<node>/k<j % 300>`, except every seventh, which deletes that key. Every write must
/// be acknowledged.
pub fn write_stream(http: SocketAddr, node: &str, range: std::ops::Range<u64>) -> Expected {
    let mut client = Http::connect(http).expect("the node's HTTP server accepts");
    let mut expected = Expected::new();
    for j in range {
        let key = format!("devices/{node}/k{:03}", j % 300);
        let (code, body) = if j % 7 == 6 {
            expected.insert(key.clone(), None);
            client.delete(&key)
        } else {
            expected.insert(key.clone(), Some(j));
            client.put(&key, &json!({ "n": j }))
        }
        .unwrap_or_else(|e| panic!("{node}: write {j} failed: {e}"));
        assert_eq!(code, 200, "{node}: write {j} refused: {body}");
    }
    expected
}

/// Every record of the replicated namespaces (`cluster`, `devices`) on the node at `addr`,
/// tombstones included, in key order: what must be identical on every node.
pub fn dump(addr: SocketAddr) -> Vec<Value> {
    let mut http = Http::connect(addr).expect("the node's HTTP server accepts a connection");
    let mut out = Vec::new();
    for ns in ["cluster", "devices"] {
        let mut after = String::new();
        loop {
            let (code, page) = http
                .get(&format!(
                    "/api/state?ns={ns}&tombstones=true&limit=10000&after={after}"
                ))
                .expect("GET /api/state answers");
            assert_eq!(code, 200, "GET /api/state: {page}");
            let entries = page["entries"].as_array().cloned().unwrap_or_default();
            out.extend(entries);
            match page["next"].as_str() {
                Some(next) => after = next.to_owned(),
                None => break,
            }
        }
    }
    out
}

/// The node's `/health` `state` object.
pub fn sync_state(addr: SocketAddr) -> Value {
    let mut http = Http::connect(addr).expect("the node's HTTP server accepts a connection");
    let (_, health) = http.get("/health").expect("GET /health answers");
    health["state"].clone()
}

/// One change from the stream, with when this process read it.
#[derive(Debug, Clone)]
pub struct SeenChange {
    /// The change as the node sent it (`key`, `version`, `value`, `deleted`, `remote`, ...).
    pub change: Value,
    /// When it was read.
    pub at: Instant,
}

/// A live `GET /api/state/events` stream, read on a thread.
pub struct ChangeStream {
    /// The changes, in order.
    pub changes: Receiver<SeenChange>,
    stream: TcpStream,
}

impl ChangeStream {
    /// Opens the stream (`query` as in `ns=devices&prefix=...`, may be empty); returns once
    /// the node has answered, so every change committed after this call is seen.
    pub fn open(addr: SocketAddr, query: &str) -> ChangeStream {
        let mut stream = TcpStream::connect(addr).expect("the node's HTTP server accepts");
        stream.set_nodelay(true).expect("set_nodelay");
        write!(
            stream,
            "GET /api/state/events?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("the request is sent");
        let mut reader = BufReader::new(stream.try_clone().expect("a socket clone"));
        let mut status = String::new();
        reader.read_line(&mut status).expect("a status line");
        assert!(status.contains(" 200 "), "events stream refused: {status}");
        // The headers: the subscription exists once they are sent.
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("headers");
            if line.trim_end().is_empty() {
                break;
            }
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut event = String::new();
            for line in reader.lines() {
                let Ok(line) = line else { return };
                // Chunked framing puts size lines between events; only `event:`/`data:` count.
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_owned();
                } else if let Some(data) = line.strip_prefix("data:") {
                    if event == "change" {
                        if let Ok(change) = serde_json::from_str(data.trim()) {
                            let seen = SeenChange {
                                change,
                                at: Instant::now(),
                            };
                            if tx.send(seen).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        ChangeStream {
            changes: rx,
            stream,
        }
    }

    /// Waits for the change of `key` at `version`, skipping others; panics after `limit`.
    pub fn wait_for(&self, key: &str, version: u64, limit: Duration) -> SeenChange {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let seen = self.changes.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no change of {key} to version {version} within {limit:?}")
            });
            if seen.change["key"] == key && seen.change["version"].as_u64() == Some(version) {
                return seen;
            }
        }
    }
}

impl Drop for ChangeStream {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
