//! Helpers shared by the whole-cluster tests: starting servers and processes on free
//! loopback ports, and talking to them the way `nc` would.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use dataplane::{DataPlane, DataPlaneConfig};
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

/// A `colony` child process whose stderr is scanned for a line containing `marker`.
pub struct Proc {
    pub child: Child,
    pub lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Proc {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(colony_bin());
        cmd.args(args)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
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
        Proc { child, lines }
    }

    /// Waits for an output line containing `needle` and returns it.
    pub async fn wait_for(&mut self, needle: &str) -> String {
        tokio::time::timeout(DEADLINE, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("process output ended without {needle:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} before the deadline"))
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
