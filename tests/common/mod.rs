//! Helpers shared by the whole-cluster tests: starting servers and processes on free
//! loopback ports, and talking to them the way `nc` would.
//!
//! Every `colony` process started here dies with the test: dropping its [`Proc`] stops it
//! gracefully (SIGTERM, then SIGKILL), and if the test binary dies first, even by SIGKILL,
//! the process is told by the kernel ([`shared::lifeline`]: its parent-death signal fires
//! when the test's thread ends). Each one also carries [`TEST_RUN_ENV`], so
//! `scripts/test.sh` can find and name any that outlived the suite.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use dataplane::{DataPlane, DataPlaneConfig};
use shared::secret::ClusterSecret;
use shared::signing::{RequestSigner, HEADER};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// An in-process data-plane server on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
    pub server: DataPlane,
}

pub async fn start_server(config: DataPlaneConfig) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = DataPlane::new(config);
    let task = tokio::spawn({
        let server = server.clone();
        let shutdown = shutdown.clone();
        async move { server.serve(listener, shutdown).await }
    });
    TestServer {
        addr,
        shutdown,
        task,
        server,
    }
}

/// A line-oriented client, like `nc`.
pub struct LineClient {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl LineClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        LineClient {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next line without its newline; `None` at end of stream.
    pub async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(DEADLINE, self.reader.read_line(&mut line))
            .await
            .expect("no line before the deadline")
            .unwrap();
        (n > 0).then(|| line.trim_end_matches('\n').to_owned())
    }

    pub async fn json(&mut self) -> serde_json::Value {
        let line = self.line().await.expect("connection closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Asserts the server closes the connection (after any pending bytes).
    pub async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        tokio::time::timeout(DEADLINE, self.reader.read_to_end(&mut rest))
            .await
            .expect("connection not closed before the deadline")
            .ok();
    }
}

/// Path of the `colony` binary built for these tests.
pub fn colony_bin() -> &'static str {
    env!("CARGO_BIN_EXE_colony")
}

/// The marker every process a test starts carries in its environment, with the id of the
/// test run: `scripts/test.sh` sets it, and looks for `colony` processes still carrying it
/// once the suite is over.
pub const TEST_RUN_ENV: &str = "COLONY_TEST_RUN";

/// This run's id: the one `scripts/test.sh` gave, else one naming this test binary.
pub fn test_run_id() -> String {
    std::env::var(TEST_RUN_ENV).unwrap_or_else(|_| format!("adhoc-{}", std::process::id()))
}

/// A `colony` command that dies with this test process: it carries our pid (it asks the
/// kernel for SIGTERM when the spawning thread, the test's, ends) and the run marker. For
/// one-shot commands; long-running ones go through [`Proc`], which also stops them on drop.
pub fn colony_command() -> Command {
    let mut cmd = Command::new(colony_bin());
    cmd.env(
        shared::lifeline::PARENT_PID_ENV,
        std::process::id().to_string(),
    )
    .env(TEST_RUN_ENV, test_run_id());
    cmd
}

/// How long a dropped [`Proc`] gets to stop after SIGTERM before SIGKILL: longer than
/// `colony up` takes to stop its backends within their default grace period.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A `colony` child process whose stderr is scanned for a line containing `marker`.
pub struct Proc {
    pub child: Child,
    pub lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Every line received so far, so a later wait can find an earlier line.
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = colony_command();
        cmd.args(args).envs(envs.iter().copied());
        Proc::from_command(cmd)
    }

    /// Starts `cmd` (which must carry what [`colony_command`] sets, and may wrap `colony`
    /// in a program that execs it, such as `prlimit`) with its output scanned.
    pub fn from_command(mut cmd: Command) -> Proc {
        if !cmd.as_std().get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn colony");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        for out in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[child] {line}");
                    let _ = tx.send(line);
                }
            });
        }
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for an output line containing `needle` and returns it.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        tokio::time::timeout(DEADLINE, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("process output ended without {needle:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} before the deadline"))
    }

    /// The pid, while the process has not been waited for.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("child has exited")
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("child has exited").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Proc {
    /// Stops the process as an operator would, so it unregisters and stops its own
    /// children (SIGKILL would orphan those of `colony up`): SIGTERM, then SIGKILL if it has
    /// not exited within [`STOP_GRACE`]. Blocks: a drop cannot await.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let Some(pid) = self.child.id() else {
            return;
        };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while matches!(self.child.try_wait(), Ok(None)) {
            if std::time::Instant::now() >= deadline {
                eprintln!("[harness] pid {pid} ignored SIGTERM for {STOP_GRACE:?}; killing it");
                let _ = self.child.start_kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The `ip:port` after `key=` in a log line.
pub fn field(line: &str, key: &str) -> String {
    let start = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        + key.len()
        + 1;
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

/// The cluster secret of the nodes sharing the file registry under `registry_dir`: the key
/// the first of them created there.
pub fn cluster_secret(registry_dir: &std::path::Path) -> ClusterSecret {
    ClusterSecret::from_file(&registry_dir.join("output/cluster.key")).unwrap()
}

/// A `POST` of the JSON `body` to `url` signed with `secret`, as one node calls another
/// (DESIGN §13): the `Colony-Signature` covers the method, the URL's path and the body.
pub fn signed_post(
    http: &reqwest::Client,
    secret: &ClusterSecret,
    url: &str,
    body: impl Into<Vec<u8>>,
) -> reqwest::RequestBuilder {
    let body = body.into();
    let parsed = reqwest::Url::parse(url).unwrap();
    let path = match parsed.query() {
        Some(query) => format!("{}?{query}", parsed.path()),
        None => parsed.path().to_owned(),
    };
    let signature = RequestSigner::new(secret).sign("POST", &path, &body);
    http.post(url)
        .header("content-type", "application/json")
        .header(HEADER, signature)
        .body(body)
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A coordinator and backends as real processes on free ports, sharing a temporary
/// file registry.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub coordinator: Option<Proc>,
    pub backends: Vec<Proc>,
    pub http: reqwest::Client,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            coordinator: None,
            backends: Vec::new(),
            http: shared::tls::http_client(None)
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    pub fn registry_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    pub fn ssm_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("output/ssm")
    }

    /// The nodes' cluster secret; the coordinator creates it before it registers, so call
    /// this once [`Cluster::coordinator_address`] has answered.
    pub fn secret(&self) -> ClusterSecret {
        cluster_secret(self.dir.path())
    }

    pub fn start_coordinator(&mut self, extra: &[&str]) {
        let dir = self.registry_dir();
        let mut args = vec![
            "coordinator",
            "--internal-port",
            "0",
            "--http-port",
            "0",
            "--mgmt-port",
            "0",
            "--registry-dir",
            &dir,
        ];
        args.extend_from_slice(extra);
        self.coordinator = Some(Proc::spawn(&args, &[]));
    }

    pub fn start_backend(&mut self, extra: &[&str]) -> usize {
        let dir = self.registry_dir();
        let mut args = vec!["backend", "--registry-dir", &dir];
        args.extend_from_slice(extra);
        self.backends.push(Proc::spawn(&args, &[]));
        self.backends.len() - 1
    }

    /// The coordinator's address from the registry, once it is there.
    pub async fn coordinator_address(&self) -> serde_json::Value {
        let path = self.ssm_dir().join("coordinator.json");
        eventually(DEADLINE, "coordinator registered", || {
            let path = path.clone();
            async move {
                let text = tokio::fs::read_to_string(&path).await.ok()?;
                serde_json::from_str(&text).ok()
            }
        })
        .await
    }

    pub async fn mgmt_url(&self, path: &str) -> String {
        let a = self.coordinator_address().await;
        format!(
            "http://{}:{}{}",
            a["ip"].as_str().unwrap(),
            a["mgmt_port"],
            path
        )
    }

    /// `POST url` with a JSON body, which must succeed; its JSON answer (null if none).
    pub async fn post_ok(&self, url: String, body: serde_json::Value) -> serde_json::Value {
        let r = self
            .http
            .post(url)
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
        assert!(status.is_success(), "{status}: {body}");
        body
    }

    /// The coordinator's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(self.mgmt_url("/metrics").await)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, url: &str) -> serde_json::Value {
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn health(&self) -> serde_json::Value {
        let url = self.mgmt_url("/health/status").await;
        self.get_json(&url).await
    }

    /// Waits until the coordinator's health shows `n` backends ACTIVE.
    pub async fn backends_active(&self, n: usize) {
        eventually(DEADLINE, &format!("{n} backends ACTIVE"), || async {
            let h = self.health().await;
            let active = h["components"]
                .as_array()?
                .iter()
                .filter(|c| c["type"] == "backend" && c["status"] == "ACTIVE")
                .count();
            (active == n).then_some(())
        })
        .await;
    }

    /// The health component of `node_id`, if the coordinator knows it.
    pub async fn component(&self, node_id: &str) -> Option<serde_json::Value> {
        let health = self.health().await;
        health["components"]
            .as_array()?
            .iter()
            .find(|c| c["node_id"] == node_id)
            .cloned()
    }

    /// The instance id and address a backend registered, from its log.
    pub async fn backend_identity(&mut self, index: usize) -> (String, String) {
        let line = self.backends[index].wait_for("node listening").await;
        (field(&line, "instance_id"), field(&line, "internal"))
    }
}

// === WebSocket registry and `colony up` helpers (the /ws and dashboard tests) ===

/// A `/ws` client speaking the registry protocol of DESIGN §10.
pub struct WsClient {
    pub stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    /// Messages read while waiting for a response, handed out first by `next`.
    backlog: std::collections::VecDeque<serde_json::Value>,
}

impl WsClient {
    /// Connects to `ws://{mgmt}/ws{query}` with extra headers on the upgrade request (a
    /// browser's `Origin`, a `Host`, an `Authorization`); the refusal if it is refused.
    pub async fn connect_with(
        mgmt: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://{mgmt}/ws{query}");
        let mut request = url.as_str().into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let (stream, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
            .await
            .unwrap_or_else(|_| panic!("no WebSocket to {url} before the deadline"))?;
        Ok(WsClient {
            stream,
            next_id: 0,
            backlog: std::collections::VecDeque::new(),
        })
    }

    /// Connects to `ws://{mgmt}/ws{query}` (`mgmt` is `ip:port`).
    pub async fn connect(mgmt: &str, query: &str) -> WsClient {
        let url = format!("ws://{mgmt}/ws{query}");
        let (stream, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(&url))
            .await
            .unwrap_or_else(|_| panic!("no WebSocket to {url} before the deadline"))
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        WsClient {
            stream,
            next_id: 0,
            backlog: std::collections::VecDeque::new(),
        }
    }

    /// The next JSON text message within `within` (control frames are skipped), or `None`
    /// when the stream ends.
    pub async fn next_within(&mut self, within: Duration) -> Option<serde_json::Value> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        if let Some(m) = self.backlog.pop_front() {
            return Some(m);
        }
        tokio::time::timeout(within, async {
            loop {
                match self.stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        return Some(serde_json::from_str(&text).expect("a JSON message"))
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no WebSocket message within {within:?}"))
    }

    /// The next JSON text message.
    pub async fn next(&mut self) -> serde_json::Value {
        self.next_within(DEADLINE)
            .await
            .expect("the WebSocket closed")
    }

    /// The next event named `event` whose data satisfies `matches`, skipping others.
    pub async fn event_where(
        &mut self,
        event: &str,
        within: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self
                .next_within(left)
                .await
                .unwrap_or_else(|| panic!("the WebSocket closed before {event}"));
            if m["type"] == "event" && m["event"] == event && matches(&m["data"]) {
                return m;
            }
        }
    }

    /// Sends a text message as is.
    pub async fn send_text(&mut self, text: &str) {
        use futures::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(
                text.to_owned().into(),
            ))
            .await
            .unwrap();
    }

    /// Sends a request and returns its response (events in between are skipped).
    pub async fn request(&mut self, action: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        let text =
            serde_json::json!({"id": id, "type": "request", "action": action, "params": params});
        self.send_text(&text.to_string()).await;
        self.response_to(&serde_json::Value::String(id)).await
    }

    /// The next response whose id is `id`; what comes before it stays for `next`.
    pub async fn response_to(&mut self, id: &serde_json::Value) -> serde_json::Value {
        let mut skipped = Vec::new();
        let backlog: Vec<_> = self.backlog.drain(..).collect();
        let mut found = None;
        for m in backlog {
            if found.is_none() && m["type"] == "response" && m["id"] == *id {
                found = Some(m);
            } else {
                skipped.push(m);
            }
        }
        let response = match found {
            Some(m) => m,
            None => loop {
                let m = self
                    .next_within(DEADLINE)
                    .await
                    .expect("the WebSocket closed");
                if m["type"] == "response" && m["id"] == *id {
                    break m;
                }
                skipped.push(m);
            },
        };
        self.backlog.extend(skipped);
        response
    }
}

/// A base port whose next `backends * 10` ports are all free right now.
pub fn free_port_range(backends: u16) -> u16 {
    // Tests in one binary run at once: each call starts its search elsewhere, so two of them
    // do not both find the same range free before either binds it.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = (std::process::id() as u16).wrapping_add(call.wrapping_mul(7919));
    // Below Linux's ephemeral range (32768 and up), so a port-0 listener of another test
    // cannot take a port between this check and the backend binding it.
    for attempt in 0..500u16 {
        let base = 10_000 + (seed.wrapping_mul(37).wrapping_add(attempt * 101) % 22_000);
        let all_free = (0..backends * 10)
            .all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free port range");
}

/// `colony up` with `backends` backends on free ports, a 100 ms heartbeat and the given
/// extra flags, waited for until it prints the dashboard URL.
pub struct Up {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    /// The coordinator's management address, `ip:port`.
    pub mgmt: String,
    /// The first backend's base port (backend k is `backend_{base + 10k}`).
    pub base: u16,
}

impl Up {
    /// `colony up` in a new registry, on free ports (the coordinator on port 0).
    pub async fn start(backends: u16, extra: &[&str]) -> Up {
        Up::start_with_env(backends, extra, &[]).await
    }

    /// [`Up::start`] with extra environment variables.
    pub async fn start_with_env(backends: u16, extra: &[&str], envs: &[(&str, &str)]) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let base = free_port_range(backends);
        Up::start_at_with_env(dir, base, [0, 0, 0], backends, extra, envs).await
    }

    /// `colony up` with its registry in `dir`, backends from `base` on and the coordinator
    /// on `coordinator` (data, control, mgmt; 0 for any free port).
    pub async fn start_at(
        dir: tempfile::TempDir,
        base: u16,
        coordinator: [u16; 3],
        backends: u16,
        extra: &[&str],
    ) -> Up {
        Up::start_at_with_env(dir, base, coordinator, backends, extra, &[]).await
    }

    /// [`Up::start_at`] with extra environment variables.
    pub async fn start_at_with_env(
        dir: tempfile::TempDir,
        base: u16,
        coordinator: [u16; 3],
        backends: u16,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Up {
        let (base_s, backends_s, registry) = (
            base.to_string(),
            backends.to_string(),
            dir.path().display().to_string(),
        );
        let [data, control, mgmt] = coordinator.map(|p| p.to_string());
        let mut args = vec![
            "up",
            "--backends",
            &backends_s,
            "--base-port",
            &base_s,
            "--internal-port",
            &data,
            "--http-port",
            &control,
            "--mgmt-port",
            &mgmt,
            "--heartbeat-interval",
            "100ms",
            "--registry-dir",
            &registry,
        ];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(&args, envs);
        // Longer than `wait_for`'s deadline: a busy machine may take a while to bring
        // every backend up.
        let line = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = proc.lines.recv().await {
                proc.seen.push(line.clone());
                if line.contains("Dashboard: http://") {
                    return line;
                }
            }
            panic!("colony up ended without printing its dashboard URL");
        })
        .await
        .expect("colony up did not print its dashboard URL within 60s");
        let mgmt = line
            .split("http://")
            .nth(1)
            .unwrap()
            .trim_end_matches('/')
            .trim()
            .to_owned();
        Up {
            proc,
            dir,
            mgmt,
            base,
        }
    }

    /// Instance id of backend `k`.
    pub fn backend(&self, k: u16) -> String {
        format!("backend_{}", self.base + 10 * k)
    }
}
