//! A real browser for dashboard tests: headless Chromium driven over the DevTools protocol
//! (a WebSocket of JSON commands). Tests navigate to a page and evaluate JavaScript that
//! returns a promise; the promise resolves when the page reaches the state the test waits
//! for (a MutationObserver, not a poll), or the evaluation times out.
//!
//! Chromium is Debian's `chromium` package; scripts/test.sh installs it when missing.
//!
//! Panics: as in the rest of this crate, each `expect` names what the calling test needs
//! (Chromium installed, answering its DevTools protocol); the panic is that test's report.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::{ChildGuard, START_TIMEOUT};

/// A headless Chromium with one page open.
pub struct Browser {
    _child: ChildGuard,
    page: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium and attaches to its first page.
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().expect("a writable temp dir for the profile");
        // The flags keep Chromium off every network but loopback (the workplace's rule).
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium is installed (apt-get install chromium; scripts/test.sh does it)");
        // Killed on drop from here on, whatever fails below.
        let mut child = ChildGuard(child);
        let stderr = child.0.stderr.take().expect("stderr was piped above");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let browser_url = rx
            .recv_timeout(START_TIMEOUT)
            .expect("Chromium printed its DevTools address");
        let port = browser_url
            .trim_start_matches("ws://")
            .split(['/', ':'])
            .nth(1)
            .expect("DevTools URL has a port")
            .to_owned();
        let page_url = page_websocket(&port);
        let (page, _) = tungstenite::connect(page_url).expect("attach to the page");
        if let MaybeTlsStream::Plain(stream) = page.get_ref() {
            // Every wait on Chromium is bounded: a silent browser fails the test.
            stream
                .set_read_timeout(Some(START_TIMEOUT))
                .expect("a connected socket accepts a read timeout");
        }
        let mut browser = Browser {
            _child: child,
            page,
            next_id: 0,
            _profile: profile,
        };
        browser.call("Page.enable", json!({}));
        browser
    }

    /// Loads `url` and waits for its load event.
    pub fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_event("Page.loadEventFired");
    }

    /// Evaluates `expression` in the page, awaiting the promise it returns (at most
    /// `timeout`), and returns its value as JSON.
    pub fn eval(&mut self, expression: &str, timeout: Duration) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({
                "expression": expression,
                "awaitPromise": true,
                "returnByValue": true,
                "timeout": timeout.as_millis() as u64,
            }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("page script failed: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Sends one command and returns its result; events that arrive meanwhile are dropped.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({ "id": id, "method": method, "params": params });
        self.page
            .send(Message::text(command.to_string()))
            .expect("Chromium keeps the DevTools socket open");
        loop {
            let message = self.read();
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    panic!("{method} failed: {error}");
                }
                return message["result"].clone();
            }
        }
    }

    fn wait_event(&mut self, method: &str) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.read()["method"] == method {
                return;
            }
        }
        panic!("no {method} from Chromium");
    }

    fn read(&mut self) -> Value {
        loop {
            match self
                .page
                .read()
                .expect("Chromium answers within the read timeout")
            {
                Message::Text(text) => {
                    return serde_json::from_str(&text).expect("DevTools messages are JSON")
                }
                Message::Close(_) => panic!("Chromium closed the page"),
                _ => {}
            }
        }
    }
}

/// The WebSocket address of the first page target, from DevTools' `/json/list`.
fn page_websocket(port: &str) -> String {
    let url = format!("http://127.0.0.1:{port}/json/list");
    let (code, body) = roost_gateway::status::http_get(&url).expect("DevTools /json/list");
    assert_eq!(code, 200, "DevTools /json/list");
    let targets: Vec<Value> = serde_json::from_slice(&body).expect("target list JSON");
    targets
        .iter()
        .find(|t| t["type"] == "page")
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .expect("a page target")
        .to_owned()
}
