//! A minimal Chrome DevTools Protocol client over tokio-tungstenite: enough to launch
//! headless Chromium, open a page, evaluate JavaScript, take screenshots and record the
//! console, exceptions and every network request the page makes.
//!
//! Lighter than a WebDriver stack: no chromedriver process, no extra crates to build.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, Mutex};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One protocol event: `(method, params)`.
pub type Event = (String, Value);

/// The Chromium binary: `$COLONY_CHROMIUM`, else `chromium` (Debian) or `chromium-browser`
/// on PATH. A missing browser is a test failure that says how to install it, never a skip.
pub fn chromium_path() -> PathBuf {
    if let Ok(path) = std::env::var("COLONY_CHROMIUM") {
        return PathBuf::from(path);
    }
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "Chromium is not installed, so the dashboard's browser tests cannot run: run ./scripts/setup.sh \
         (it installs Debian's chromium), or set COLONY_CHROMIUM to a Chromium binary"
    );
}

/// A headless Chromium with a fresh profile, killed on drop.
pub struct Browser {
    _child: Child,
    _profile: tempfile::TempDir,
    sink: Mutex<Sink>,
    pending: Pending,
    next_id: AtomicU64,
    /// Every event received, per session id ("" for the browser itself).
    pub events: Arc<Mutex<Vec<(String, Event)>>>,
}

impl Browser {
    /// Launches Chromium headless with `width`×`height` windows.
    pub async fn launch(width: u32, height: u32) -> Browser {
        let path = chromium_path();
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(&path)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--mute-audio",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.path().display()),
                &format!("--window-size={width},{height}"),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run ./scripts/setup.sh to install Chromium",
                    path.display()
                )
            });
        // Chromium says where its DevTools endpoint is on stderr.
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let endpoint = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(at) = line.find("ws://") {
                    return line[at..].trim().to_owned();
                }
            }
            panic!("Chromium exited without a DevTools endpoint");
        })
        .await
        .expect("Chromium did not open its DevTools endpoint within 30s");
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (socket, _) = tokio_tungstenite::connect_async(&endpoint).await.unwrap();
        let (sink, mut stream) = socket.split();
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<(String, Event)>>> = Arc::default();
        tokio::spawn({
            let pending = pending.clone();
            let events = events.clone();
            async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if let Some(id) = v["id"].as_u64() {
                        if let Some(tx) = pending.lock().await.remove(&id) {
                            let _ = tx.send(v);
                        }
                    } else if let Some(method) = v["method"].as_str() {
                        let session = v["sessionId"].as_str().unwrap_or_default().to_owned();
                        events
                            .lock()
                            .await
                            .push((session, (method.to_owned(), v["params"].clone())));
                    }
                }
            }
        });
        Browser {
            _child: child,
            _profile: profile,
            sink: Mutex::new(sink),
            pending,
            next_id: AtomicU64::new(1),
            events,
        }
    }

    /// Sends one command (to `session`, or to the browser when `None`) and returns its result.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().await.insert(id, tx);
        self.sink
            .lock()
            .await
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("no answer to {method} within 30s"))
            .unwrap();
        if let Some(error) = answer.get("error") {
            panic!("{method} failed: {error}");
        }
        answer["result"].clone()
    }

    /// Opens a new page with Runtime, Log, Network and Page events enabled.
    pub async fn new_page(&self) -> Page<'_> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        let page = Page {
            browser: self,
            session,
        };
        for domain in ["Runtime", "Log", "Network", "Page"] {
            page.call(&format!("{domain}.enable"), json!({})).await;
        }
        page
    }
}

/// One page (a flattened target session).
pub struct Page<'a> {
    browser: &'a Browser,
    session: String,
}

impl Page<'_> {
    /// A command to this page.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Navigates and waits for the load event.
    pub async fn navigate(&self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await;
    }

    /// Evaluates `expression` (promises awaited) and returns its value.
    pub async fn eval(&self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expression` every 20 ms until it is truthy; returns that value.
    pub async fn wait_for(&self, expression: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = self.eval(expression).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("not within {within:?}: {expression}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A full-page PNG screenshot.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap()
    }

    /// Every event this page has sent so far.
    pub async fn events(&self) -> Vec<Event> {
        self.browser
            .events
            .lock()
            .await
            .iter()
            .filter(|(s, _)| *s == self.session)
            .map(|(_, e)| e.clone())
            .collect()
    }
}
