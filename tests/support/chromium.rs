//! Headless Chromium (Debian's `chromium`, installed by `scripts/install-test-deps.sh`) driven
//! over the DevTools protocol: load a page, collect every console error, uncaught exception and
//! failed load, evaluate an expression in the page, take a screenshot. The browser runs as its
//! own process with a fresh profile and is killed on `Drop`.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

use super::DEADLINE;

/// A running browser and one page, connected over DevTools.
pub struct Chromium {
    child: Child,
    _profile: TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Console errors, exceptions and failed loads seen so far.
    pub errors: Vec<String>,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Chromium {
    /// Starts `chromium --headless` with a `width`×`height` window and connects to its page.
    ///
    /// # Panics
    /// When the binary is missing (the test script installs it) or does not start.
    pub async fn start(width: u32, height: u32) -> Self {
        let profile = std::env::temp_dir().join(format!(
            "tracemesh-chromium-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium (Debian's package; scripts/install-test-deps.sh installs it)");
        let stderr = child.stderr.take().unwrap();
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        let _ = tx.send(url.trim().to_owned());
                        sent = true;
                    }
                }
            }
        });
        let browser_ws = rx
            .recv_timeout(DEADLINE)
            .expect("chromium printed no DevTools address");
        let port: u16 = browser_ws
            .trim_start_matches("ws://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("DevTools address {browser_ws}"));
        let targets: Value = super::eventually(DEADLINE, "a DevTools page target", || async {
            let addr = format!("127.0.0.1:{port}").parse().unwrap();
            let (status, _, body) = super::client::http1_get(addr, "/json/list", &[]).await;
            if status != 200 {
                return None;
            }
            let v: Value = serde_json::from_slice(&body).ok()?;
            v.as_array()?
                .iter()
                .any(|t| t["type"] == "page")
                .then_some(v)
        })
        .await;
        let page_ws = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap()
            .to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(page_ws.as_str())
            .await
            .expect("connecting to the page's DevTools socket");
        let mut c = Chromium {
            child,
            _profile: TempDir(profile),
            ws,
            next_id: 0,
            errors: Vec::new(),
        };
        for method in [
            "Runtime.enable",
            "Log.enable",
            "Page.enable",
            "Network.enable",
        ] {
            c.call(method, json!({})).await;
        }
        c
    }

    /// Sends a command and waits for its result, noting the events that arrive meanwhile.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::text(msg)).await.unwrap();
        tokio::time::timeout(DEADLINE, async {
            loop {
                let v = self.next_message().await;
                if v["id"] == id {
                    if let Some(e) = v.get("error") {
                        panic!("{method}: {e}");
                    }
                    return v["result"].clone();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer within {DEADLINE:?}"))
    }

    async fn next_message(&mut self) -> Value {
        loop {
            let msg = self
                .ws
                .next()
                .await
                .expect("the DevTools socket closed")
                .unwrap();
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            self.note(&v);
            return v;
        }
    }

    /// Keeps what counts as a page error.
    fn note(&mut self, v: &Value) {
        let p = &v["params"];
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.errors.push(format!("exception: {p}")),
            Some("Runtime.consoleAPICalled")
                if matches!(p["type"].as_str(), Some("error" | "assert")) =>
            {
                self.errors
                    .push(format!("console.{}: {}", p["type"], p["args"]));
            }
            Some("Log.entryAdded") if matches!(p["entry"]["level"].as_str(), Some("error")) => {
                self.errors.push(format!("log: {}", p["entry"]));
            }
            Some("Network.loadingFailed") => self.errors.push(format!("load failed: {p}")),
            _ => {}
        }
    }

    /// Navigates to `url` and waits for its `load` event.
    pub async fn load(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        tokio::time::timeout(DEADLINE, async {
            loop {
                if self.next_message().await["method"] == "Page.loadEventFired" {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{url}: no load event within {DEADLINE:?}"));
        // Late console messages (a script that runs on load) arrive within a moment.
        let _ = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                self.next_message().await;
            }
        })
        .await;
    }

    /// Evaluates `expression` in the page; its value, as JSON.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap()
    }
}
