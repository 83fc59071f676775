//! Heartbeat ingest on a real coordinator process, and the cost of tracking many nodes.
//!
//! 1. Ingest: `HB_CONNS` keep-alive connections (default 8) post heartbeats for 1 000
//!    distinct nodes as fast as the coordinator answers, for `HB_SECS` (default 3): the
//!    figure is heartbeats/s accepted.
//! 2. Tracking: 10 000 simulated nodes, each heartbeating once a second (paced), over
//!    `HB_TRACK_CONNS` keep-alive connections (default 20, 500 nodes each), for `HB_SECS`:
//!    the figure is the coordinator's CPU time over wall time (share of one core), read from
//!    its own /proc/<pid>/stat only.
//!
//! Every heartbeat is a full `POST /heartbeat` (the body a backend sends, the headers reqwest
//! sends, and a `Colony-Signature` made for that request with the cluster secret, as a backend
//! signs it) on a keep-alive HTTP/1.1 connection, one request at a time per connection, as the
//! backends' sender does; each answer is read and must be 200, so a refused signature or a
//! replayed `seq` would show as a lower figure. The load generator writes
//! requests and reads answers itself rather than through reqwest: it shares this machine with
//! the coordinator, and reqwest's own per-request cost took CPU from the server in the ingest
//! phase. Its CPU share is printed too.
//!
//! 3. and 4. The same two figures over the persistent heartbeat channel (`/heartbeat/ws`, the
//!    backends' default): ingest over `HB_CONNS` channels (one node each, one frame at a time
//!    as the sender does, each answer read and checked), then 10 000 nodes at 1/s, each on a
//!    channel of its own as a backend holds it (`HB_CHANNEL_NODES` to change the count; the
//!    bench needs twice that many file descriptors between the two processes).
//!
//! `HB_WORKERS` sets the coordinator's `--worker-threads` (the management plane, heartbeats
//! included, runs on a thread of its own either way); `HB_COLONY` runs another `colony`
//! binary, to compare builds under the same load.
//!
//! Run: `cargo bench --bench heartbeat`. The load generator runs on the same machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use shared::secret::ClusterSecret;
use shared::signing::RequestSigner;
use shared::test_support::free_port;
use shared::test_support::proc_cpu::cpu_seconds;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Coordinator {
    child: Child,
    mgmt: u16,
    dir: tempfile::TempDir,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Coordinator {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = free_port();
    let program =
        std::env::var("HB_COLONY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_colony").into());
    let child = Command::new(program)
        .args([
            "coordinator",
            "--internal-port",
            "0",
            "--http-port",
            "0",
            "--mgmt-port",
            &mgmt.to_string(),
            "--registry-dir",
            &dir.path().display().to_string(),
            "--stale-after",
            "3s",
            "--down-after",
            "10s",
        ])
        .env("RUST_LOG", "warn")
        .envs(
            std::env::var("HB_WORKERS")
                .ok()
                .map(|w| ("COLONY_WORKER_THREADS", w)),
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", mgmt)).is_err() {
        assert!(Instant::now() < deadline, "coordinator did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Coordinator { child, mgmt, dir }
}

impl Coordinator {
    /// The secret the coordinator created under its registry directory (before it listened).
    fn signer(&self) -> RequestSigner {
        let key = self.dir.path().join("output/cluster.key");
        RequestSigner::new(&ClusterSecret::from_file(&key).unwrap())
    }
}

/// A heartbeat of node `node`, run `boot`, number `seq`; seqs rise per node within a boot.
fn body(node: usize, boot: &str, seq: u64) -> String {
    format!(
        r#"{{"instance_id":"sim_{node}","node_type":"backend","address":{{"ip":"127.0.0.1","internal_port":{p},"http_port":{p},"mgmt_port":{p}}},"boot_id":"{boot}","seq":{seq},"metrics":{{"connections":1,"frames_in":{seq}}}}}"#,
        p = 10000 + node % 50000
    )
}

/// One keep-alive HTTP/1.1 connection posting heartbeats, one request at a time.
struct Conn {
    stream: TcpStream,
    host: String,
    signer: RequestSigner,
    request: Vec<u8>,
    answer: Vec<u8>,
}

impl Conn {
    async fn open(port: u16, signer: RequestSigner) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            host: format!("127.0.0.1:{port}"),
            signer,
            request: Vec::with_capacity(512),
            answer: Vec::with_capacity(512),
        }
    }

    /// Signs and posts one heartbeat and reads the whole answer; true if it was a 200.
    async fn post(&mut self, body: &str) -> bool {
        let signature = self.signer.sign("POST", "/heartbeat", body.as_bytes());
        self.request.clear();
        write!(
            self.request,
            "POST /heartbeat HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: */*\r\ncolony-signature: {signature}\r\ncontent-length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        )
        .unwrap();
        self.stream.write_all(&self.request).await.unwrap();
        self.answer.clear();
        let mut chunk = [0u8; 2048];
        loop {
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the coordinator closed a keep-alive connection");
            self.answer.extend_from_slice(&chunk[..n]);
            let Some(end) = self.answer.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&self.answer[..end]).unwrap();
            let ok = head.starts_with("HTTP/1.1 200 ");
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("answers have a content-length");
            while self.answer.len() < end + 4 + length {
                let n = self.stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the coordinator closed a keep-alive connection");
                self.answer.extend_from_slice(&chunk[..n]);
            }
            return ok;
        }
    }
}

/// Connection `conn` of the ingest phase: 125 nodes of its own, as fast as answered.
async fn ingest(
    port: u16,
    signer: RequestSigner,
    conn: usize,
    until: Instant,
    done: Arc<AtomicU64>,
) {
    let mut c = Conn::open(port, signer).await;
    let mut seq = 0u64;
    while Instant::now() < until {
        seq += 1;
        let node = conn * 125 + (seq as usize % 125);
        if c.post(&body(node, "ingest", seq)).await {
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Connection `conn` of `conns` in the tracking phase: carries nodes `conn`, `conn + conns`,
/// … (`per_conn` of them), each once a second, evenly spaced and out of phase with the other
/// connections. Each call is a new run of those nodes (boot `boot`), counting from 1.
#[allow(clippy::too_many_arguments)]
async fn track(
    port: u16,
    signer: RequestSigner,
    boot: &'static str,
    conn: usize,
    conns: usize,
    per_conn: usize,
    measure: Duration,
    sent: Arc<AtomicU64>,
) {
    let mut c = Conn::open(port, signer).await;
    let pace = Duration::from_secs(1) / per_conn as u32;
    let start = tokio::time::Instant::now() + pace.mul_f64(conn as f64 / conns as f64);
    let mut tick = tokio::time::interval_at(start, pace);
    let end = Instant::now() + measure;
    let mut seq = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        seq += 1;
        let node = conn + conns * (seq as usize % per_conn);
        if c.post(&body(100_000 + node, boot, seq)).await {
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type Channel =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type WsMessage = tokio_tungstenite::tungstenite::Message;

/// Opens one heartbeat channel.
async fn open_channel(port: u16) -> Channel {
    let (channel, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/heartbeat/ws"))
            .await
            .unwrap();
    channel
}

/// Sends one signed heartbeat frame and reads its answer; true if it was accepted.
async fn frame(channel: &mut Channel, signer: &RequestSigner, body: &str) -> bool {
    let signature = signer.sign("CHANNEL", "/heartbeat/ws", body.as_bytes());
    channel
        .send(WsMessage::Text(format!("{signature}\n{body}").into()))
        .await
        .unwrap();
    loop {
        match channel.next().await {
            Some(Ok(WsMessage::Text(answer))) => return answer.contains(r#""status":"ACTIVE""#),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
            other => panic!("the coordinator closed a heartbeat channel: {other:?}"),
        }
    }
}

/// Channel `conn` of the ingest phase: one node, as fast as answered.
async fn ingest_channel(
    port: u16,
    signer: RequestSigner,
    conn: usize,
    until: Instant,
    done: Arc<AtomicU64>,
) {
    let mut channel = open_channel(port).await;
    let mut seq = 0u64;
    while Instant::now() < until {
        seq += 1;
        if frame(&mut channel, &signer, &body(200_000 + conn, "ingest", seq)).await {
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Node `node` of `nodes` on its own channel, once a second from `start` (spread over the
/// first second by its number), until `end`; its seqs continue from `seq`. Hands back the
/// channel and the last seq, so the next phase goes on with the same run of the node.
#[allow(clippy::too_many_arguments)]
async fn track_channel(
    mut channel: Channel,
    mut seq: u64,
    signer: RequestSigner,
    node: usize,
    nodes: usize,
    start: tokio::time::Instant,
    end: Instant,
    sent: Arc<AtomicU64>,
) -> (Channel, u64) {
    let offset = Duration::from_secs(1).mul_f64(node as f64 / nodes as f64);
    let mut tick = tokio::time::interval_at(start + offset, Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = tokio::time::Instant::from_std(end);
    loop {
        // Not past `end` waiting for a tick: the phase's wall time is the measure.
        if tokio::time::timeout_at(end, tick.tick()).await.is_err() {
            return (channel, seq);
        }
        seq += 1;
        if frame(&mut channel, &signer, &body(300_000 + node, "channel", seq)).await {
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let secs = if benching { env("HB_SECS", 3.0) } else { 0.3 };
    let conns = env("HB_CONNS", 8.0) as usize;
    let wanted = if benching { 10_000 } else { 500 };
    let track_conns = (env("HB_TRACK_CONNS", 20.0) as usize).clamp(1, wanted);
    let per_conn = wanted / track_conns;
    let nodes = per_conn * track_conns;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let coordinator = start();
    let port = coordinator.mgmt;
    let signer = coordinator.signer();
    let pid = coordinator.child.id().to_string();
    // CPU shares (user %, kernel %) of the coordinator and of this process since `mark()`.
    let mark = || (cpu_seconds(&pid), cpu_seconds("self"), Instant::now());
    let shares = |(server0, client0, at): ((f64, f64), (f64, f64), Instant)| {
        let wall = at.elapsed().as_secs_f64();
        let share = |before: (f64, f64), after: (f64, f64)| {
            (
                100.0 * (after.0 - before.0) / wall,
                100.0 * (after.1 - before.1) / wall,
            )
        };
        (
            share(server0, cpu_seconds(&pid)),
            share(client0, cpu_seconds("self")),
            wall,
        )
    };

    // 1. Ingest.
    let done = Arc::new(AtomicU64::new(0));
    let ingest_mark = mark();
    let started = ingest_mark.2;
    let until = started + Duration::from_secs_f64(secs);
    rt.block_on(async {
        let tasks: Vec<_> = (0..conns)
            .map(|c| tokio::spawn(ingest(port, signer.clone(), c, until, done.clone())))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let (server, client, wall) = shares(ingest_mark);
    println!(
        "heartbeat ingest: {:.0} heartbeats/s over {conns} keep-alive connections ({secs}s); coordinator CPU {:.0}% of one core (user {:.0}%, kernel {:.0}%), load generator {:.0}%",
        done.load(Ordering::Relaxed) as f64 / wall,
        server.0 + server.1,
        server.0,
        server.1,
        client.0 + client.1,
    );

    // 2. Tracking many nodes at 1 heartbeat/s each.
    let sent = Arc::new(AtomicU64::new(0));
    let run = |boot: &'static str, measure: Duration| {
        let sent = sent.clone();
        let signer = signer.clone();
        async move {
            let tasks: Vec<_> = (0..track_conns)
                .map(|c| {
                    let task = track(
                        port,
                        signer.clone(),
                        boot,
                        c,
                        track_conns,
                        per_conn,
                        measure,
                        sent.clone(),
                    );
                    tokio::spawn(task)
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    // Register every node once, then measure steady state.
    rt.block_on(run("warmup", Duration::from_secs(1)));
    sent.store(0, Ordering::Relaxed);
    let tracking = mark();
    rt.block_on(run("measured", Duration::from_secs_f64(secs.max(1.0))));
    let (server, client, wall) = shares(tracking);
    let health = || -> serde_json::Value {
        rt.block_on(async {
            shared::tls::http_client(None)
                .no_proxy()
                .build()
                .unwrap()
                .get(format!("http://127.0.0.1:{port}/health/status"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
    };
    let status = health();
    println!(
        "tracking {nodes} nodes at 1 heartbeat/s over {track_conns} keep-alive connections: {:.0} heartbeats/s received, coordinator CPU {:.1}% of one core (user {:.1}%, kernel {:.1}%), load generator {:.0}%; {} components, {} active",
        sent.load(Ordering::Relaxed) as f64 / wall,
        server.0 + server.1,
        server.0,
        server.1,
        client.0 + client.1,
        status["total_components"],
        status["active"],
    );

    // 3. Ingest over the channel.
    let done = Arc::new(AtomicU64::new(0));
    let ingest_mark = mark();
    let until = ingest_mark.2 + Duration::from_secs_f64(secs);
    rt.block_on(async {
        let tasks: Vec<_> = (0..conns)
            .map(|c| tokio::spawn(ingest_channel(port, signer.clone(), c, until, done.clone())))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let (server, client, wall) = shares(ingest_mark);
    println!(
        "heartbeat ingest over the channel: {:.0} heartbeats/s over {conns} channels ({secs}s); coordinator CPU {:.0}% of one core (user {:.0}%, kernel {:.0}%), load generator {:.0}%",
        done.load(Ordering::Relaxed) as f64 / wall,
        server.0 + server.1,
        server.0,
        server.1,
        client.0 + client.1,
    );

    // 4. Many nodes at 1 heartbeat/s, each on its own channel.
    let channel_nodes = if benching {
        env("HB_CHANNEL_NODES", 10_000.0) as usize
    } else {
        200
    };
    let opened = Instant::now();
    let channels: Vec<(Channel, u64)> = rt.block_on(async {
        // A few hundred handshakes at a time: the listen backlog is finite.
        let mut channels = Vec::with_capacity(channel_nodes);
        for batch in (0..channel_nodes).collect::<Vec<_>>().chunks(256) {
            // Each channel's first heartbeat goes at once, as a backend's does: the
            // coordinator closes a channel that carries none within 10 s.
            let opening: Vec<_> = batch
                .iter()
                .map(|&node| {
                    let signer = signer.clone();
                    tokio::spawn(async move {
                        let mut channel = open_channel(port).await;
                        assert!(
                            frame(&mut channel, &signer, &body(300_000 + node, "channel", 1)).await
                        );
                        channel
                    })
                })
                .collect();
            for o in opening {
                channels.push((o.await.unwrap(), 1));
            }
        }
        channels
    });
    let opened = opened.elapsed();
    let sent = Arc::new(AtomicU64::new(0));
    let run = |channels: Vec<(Channel, u64)>, measure: Duration| {
        let signer = signer.clone();
        let sent = sent.clone();
        async move {
            let start = tokio::time::Instant::now();
            let end = Instant::now() + measure;
            let n = channels.len();
            let tasks: Vec<_> = channels
                .into_iter()
                .enumerate()
                .map(|(node, (channel, seq))| {
                    tokio::spawn(track_channel(
                        channel,
                        seq,
                        signer.clone(),
                        node,
                        n,
                        start,
                        end,
                        sent.clone(),
                    ))
                })
                .collect();
            let mut back = Vec::with_capacity(n);
            for t in tasks {
                back.push(t.await.unwrap());
            }
            back
        }
    };
    // Every node's first heartbeat binds its channel; then steady state is measured.
    let warm = rt.block_on(run(channels, Duration::from_secs(1)));
    sent.store(0, Ordering::Relaxed);
    let tracking = mark();
    let channels = rt.block_on(run(warm, Duration::from_secs_f64(secs.max(1.0))));
    let (server, client, wall) = shares(tracking);
    let status = health();
    println!(
        "tracking {channel_nodes} nodes at 1 heartbeat/s over a channel each (opened in {:.1}s): {:.0} heartbeats/s received, coordinator CPU {:.1}% of one core (user {:.1}%, kernel {:.1}%), load generator {:.0}%; {} components, {} active",
        opened.as_secs_f64(),
        sent.load(Ordering::Relaxed) as f64 / wall,
        server.0 + server.1,
        server.0,
        server.1,
        client.0 + client.1,
        status["total_components"],
        status["active"],
    );
    drop(channels);
}
