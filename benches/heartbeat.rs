//! Heartbeat ingest on a real coordinator process, and the cost of tracking many nodes, over
//! `POST /heartbeat` and over the persistent heartbeat channel (`/heartbeat/ws`, the backends'
//! default), in one run.
//!
//! 1. POST ingest: `HB_CONNS` keep-alive connections (default 8) post heartbeats for 1 000
//!    distinct nodes as fast as the coordinator answers, for `HB_SECS` (default 3): the
//!    figure is heartbeats/s accepted.
//! 2. POST tracking: 10 000 simulated nodes, each heartbeating once a second (paced), over
//!    `HB_TRACK_CONNS` keep-alive connections (default 20, 500 nodes each), for `HB_SECS`:
//!    the figure is the coordinator's CPU time over wall time (share of one core), read from
//!    its own /proc/<pid>/stat only.
//! 3. Channel ingest: `HB_CONNS` channels (one node each), first one frame at a time as the
//!    sender does, then `HB_WINDOW` frames in flight per channel (default 32: the frames of
//!    many nodes arriving together, without the load generator's round trips setting the
//!    pace); each answer is read and checked.
//! 4. Channel tracking: 10 000 nodes at 1/s (`HB_CHANNEL_NODES` to change the count), each on
//!    a channel of its own as a backend holds it; the figure is again the coordinator's CPU
//!    share, and its RSS with every channel open. The phase is bounded: channels that do not
//!    open within [`OPEN_TIMEOUT`] or answer within [`ANSWER_TIMEOUT`] are counted as lost,
//!    not waited for (the bench needs twice as many file descriptors as nodes).
//!
//! Every heartbeat is signed with the cluster secret as a backend signs it; each answer is
//! read and must accept it, so a refused signature or a replayed `seq` would show as a lower
//! figure. The POST load generator writes requests and reads answers itself rather than
//! through reqwest: it shares this machine with the coordinator, and reqwest's own
//! per-request cost took CPU from the server. The load generator's CPU share is printed too.
//!
//! `HB_WORKERS` sets the coordinator's `--worker-threads` (the management plane, heartbeats
//! included, runs on a thread of its own either way); `HB_COLONY` runs another `colony`
//! binary; `HB_COMPARE=<colony binary>` runs every phase against that binary as well, first,
//! and prints the two side by side (before/after a change, under the same load).
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
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Longest a channel may take to open and have its first heartbeat accepted.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the answer to one frame may take before its channel counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

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

fn start(program: &str) -> Coordinator {
    let dir = tempfile::tempdir().unwrap();
    let mgmt = free_port();
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

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

/// The one HTTP client of this bench (reads `/health/status`).
fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
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

/// Opens one heartbeat channel. A small read buffer: tungstenite's default (128 KiB) is
/// zeroed on every read and, over 10 000 channels, would cost the load generator more memory
/// and CPU than the coordinator it measures.
async fn open_channel(port: u16) -> Option<Channel> {
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let url = format!("ws://127.0.0.1:{port}/heartbeat/ws");
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    match tokio::time::timeout(OPEN_TIMEOUT, connect).await {
        Ok(Ok((channel, _))) => Some(channel),
        _ => None,
    }
}

/// The frame of one signed heartbeat.
fn signed_frame(signer: &RequestSigner, body: &str) -> WsMessage {
    let signature = signer.sign("CHANNEL", "/heartbeat/ws", body.as_bytes());
    WsMessage::Text(format!("{signature}\n{body}").into())
}

/// The next answer on `channel`: `Some(accepted)`, or `None` if the channel closed or the
/// answer did not come within [`ANSWER_TIMEOUT`].
async fn answer(channel: &mut Channel) -> Option<bool> {
    let read = async {
        loop {
            match channel.next().await? {
                Ok(WsMessage::Text(answer)) => {
                    return Some(answer.contains(r#""status":"ACTIVE""#))
                }
                Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => {}
                _ => return None,
            }
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, read).await.ok()?
}

/// Sends one signed heartbeat frame and reads its answer (see [`answer`]).
async fn frame(channel: &mut Channel, signer: &RequestSigner, body: &str) -> Option<bool> {
    channel.send(signed_frame(signer, body)).await.ok()?;
    answer(channel).await
}

/// Channel `conn` of the ingest phase: one node, with `window` frames in flight (sent
/// together, then their answers read), until `until`; counted in `closed` and ended if the
/// coordinator closes it or does not answer.
async fn ingest_channel(
    port: u16,
    signer: RequestSigner,
    conn: usize,
    window: usize,
    until: Instant,
    done: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
) {
    let Some(mut channel) = open_channel(port).await else {
        closed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut seq = 0u64;
    while Instant::now() < until {
        for _ in 0..window {
            seq += 1;
            let frame = signed_frame(&signer, &body(200_000 + conn, "ingest", seq));
            channel.feed(frame).await.unwrap();
        }
        channel.flush().await.unwrap();
        for _ in 0..window {
            match answer(&mut channel).await {
                Some(true) => {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Some(false) => {}
                None => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// Node `node` of `nodes` on its own channel, once a second from `start` (spread over the
/// first second by its number), until `end`; its seqs continue from `seq`. Hands back the
/// channel and the last seq, so the next phase goes on with the same run of the node, or
/// `None` if the channel was lost.
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
) -> Option<(Channel, u64)> {
    let offset = Duration::from_secs(1).mul_f64(node as f64 / nodes as f64);
    let mut tick = tokio::time::interval_at(start + offset, Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = tokio::time::Instant::from_std(end);
    loop {
        // Not past `end` waiting for a tick: the phase's wall time is the measure.
        if tokio::time::timeout_at(end, tick.tick()).await.is_err() {
            return Some((channel, seq));
        }
        seq += 1;
        match frame(&mut channel, &signer, &body(300_000 + node, "channel", seq)).await {
            Some(true) => {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Some(false) => {}
            None => return None,
        }
    }
}

/// A line of the comparison: its name, its figure, its decimals.
type Row = (&'static str, fn(&Figures) -> f64, usize);

/// One run's figures.
#[derive(Debug, Default, Clone)]
struct Figures {
    post_ingest: f64,
    post_tracking_cpu: f64,
    channel_ingest: f64,
    channel_ingest_window: f64,
    channel_tracking_cpu: f64,
    channel_tracking_rate: f64,
    channels_open: usize,
    channels_lost: usize,
    opened_secs: f64,
    rss_mib: f64,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    secs: f64,
    conns: usize,
    window: usize,
    nodes: usize,
    track_conns: usize,
    channel_nodes: usize,
}

/// Every phase against `program`, printing each figure as it comes.
fn run(rt: &tokio::runtime::Runtime, program: &str, s: Settings) -> Figures {
    let mut figures = Figures::default();
    let coordinator = start(program);
    let port = coordinator.mgmt;
    let signer = coordinator.signer();
    let pid = coordinator.child.id().to_string();
    let per_conn = s.nodes / s.track_conns;
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
    let http = http_client();
    let health = || -> serde_json::Value {
        rt.block_on(async {
            http.get(format!("http://127.0.0.1:{port}/health/status"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
    };
    println!("== {program}");

    // 1. Ingest over POST.
    let done = Arc::new(AtomicU64::new(0));
    let ingest_mark = mark();
    let until = ingest_mark.2 + Duration::from_secs_f64(s.secs);
    rt.block_on(async {
        let tasks: Vec<_> = (0..s.conns)
            .map(|c| tokio::spawn(ingest(port, signer.clone(), c, until, done.clone())))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let (server, client, wall) = shares(ingest_mark);
    figures.post_ingest = done.load(Ordering::Relaxed) as f64 / wall;
    println!(
        "heartbeat ingest over POST: {:.0} heartbeats/s over {} keep-alive connections ({}s); coordinator CPU {:.0}% of one core (user {:.0}%, kernel {:.0}%), load generator {:.0}%",
        figures.post_ingest,
        s.conns,
        s.secs,
        server.0 + server.1,
        server.0,
        server.1,
        client.0 + client.1,
    );

    // 2. Tracking many nodes at 1 heartbeat/s over POST.
    let sent = Arc::new(AtomicU64::new(0));
    let tracking_run = |boot: &'static str, measure: Duration| {
        let sent = sent.clone();
        let signer = signer.clone();
        async move {
            let tasks: Vec<_> = (0..s.track_conns)
                .map(|c| {
                    let task = track(
                        port,
                        signer.clone(),
                        boot,
                        c,
                        s.track_conns,
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
    rt.block_on(tracking_run("warmup", Duration::from_secs(1)));
    sent.store(0, Ordering::Relaxed);
    let tracking = mark();
    rt.block_on(tracking_run(
        "measured",
        Duration::from_secs_f64(s.secs.max(1.0)),
    ));
    let (server, client, wall) = shares(tracking);
    figures.post_tracking_cpu = server.0 + server.1;
    let status = health();
    println!(
        "tracking {} nodes at 1 heartbeat/s over {} keep-alive connections: {:.0} heartbeats/s received, coordinator CPU {:.1}% of one core (user {:.1}%, kernel {:.1}%), load generator {:.0}%; {} components, {} active",
        per_conn * s.track_conns,
        s.track_conns,
        sent.load(Ordering::Relaxed) as f64 / wall,
        figures.post_tracking_cpu,
        server.0,
        server.1,
        client.0 + client.1,
        status["total_components"],
        status["active"],
    );

    // 3. Ingest over the channel: one frame at a time, then `window` in flight.
    for window in [1, s.window] {
        let done = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let ingest_mark = mark();
        let until = ingest_mark.2 + Duration::from_secs_f64(s.secs);
        rt.block_on(async {
            let tasks: Vec<_> = (0..s.conns)
                .map(|c| {
                    let (done, closed) = (done.clone(), closed.clone());
                    let task = ingest_channel(port, signer.clone(), c, window, until, done, closed);
                    tokio::spawn(task)
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        let (server, client, wall) = shares(ingest_mark);
        let rate = done.load(Ordering::Relaxed) as f64 / wall;
        if window == 1 {
            figures.channel_ingest = rate;
        } else {
            figures.channel_ingest_window = rate;
        }
        println!(
            "heartbeat ingest over the channel: {rate:.0} heartbeats/s over {} channels, {window} frame(s) in flight each ({}s, {} channels closed early); coordinator CPU {:.0}% of one core (user {:.0}%, kernel {:.0}%), load generator {:.0}%",
            s.conns,
            s.secs,
            closed.load(Ordering::Relaxed),
            server.0 + server.1,
            server.0,
            server.1,
            client.0 + client.1,
        );
    }

    // 4. Many nodes at 1 heartbeat/s, each on its own channel.
    let opened = Instant::now();
    let channels: Vec<(Channel, u64)> = rt.block_on(async {
        // A few hundred handshakes at a time: the listen backlog is finite.
        let mut channels = Vec::with_capacity(s.channel_nodes);
        for batch in (0..s.channel_nodes).collect::<Vec<_>>().chunks(256) {
            // Each channel's first heartbeat goes at once, as a backend's does: the
            // coordinator closes a channel that carries none within 10 s.
            let opening: Vec<_> = batch
                .iter()
                .map(|&node| {
                    let signer = signer.clone();
                    tokio::spawn(async move {
                        let mut channel = open_channel(port).await?;
                        let first = body(300_000 + node, "channel", 1);
                        match frame(&mut channel, &signer, &first).await {
                            Some(true) => Some(channel),
                            _ => None,
                        }
                    })
                })
                .collect();
            for o in opening {
                match o.await.unwrap() {
                    Some(channel) => channels.push((channel, 1)),
                    None => figures.channels_lost += 1,
                }
            }
        }
        channels
    });
    figures.opened_secs = opened.elapsed().as_secs_f64();
    let sent = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let channel_run = |channels: Vec<(Channel, u64)>, measure: Duration| {
        let signer = signer.clone();
        let (sent, lost) = (sent.clone(), lost.clone());
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
                match t.await.unwrap() {
                    Some(kept) => back.push(kept),
                    None => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            back
        }
    };
    // Every node's first heartbeat bound its channel; one more second settles the pace,
    // then steady state is measured.
    let warm = rt.block_on(channel_run(channels, Duration::from_secs(1)));
    sent.store(0, Ordering::Relaxed);
    let tracking = mark();
    let channels = rt.block_on(channel_run(warm, Duration::from_secs_f64(s.secs.max(1.0))));
    let (server, client, wall) = shares(tracking);
    figures.channel_tracking_cpu = server.0 + server.1;
    figures.channel_tracking_rate = sent.load(Ordering::Relaxed) as f64 / wall;
    figures.channels_lost += lost.load(Ordering::Relaxed) as usize;
    figures.channels_open = channels.len();
    figures.rss_mib = coordinator.rss_mib();
    let status = health();
    println!(
        "tracking {} nodes at 1 heartbeat/s over a channel each ({} open after {:.1}s, {} lost): {:.0} heartbeats/s received, coordinator CPU {:.1}% of one core (user {:.1}%, kernel {:.1}%), load generator {:.0}%, coordinator RSS {:.0} MiB; {} components, {} active",
        s.channel_nodes,
        figures.channels_open,
        figures.opened_secs,
        figures.channels_lost,
        figures.channel_tracking_rate,
        figures.channel_tracking_cpu,
        server.0,
        server.1,
        client.0 + client.1,
        figures.rss_mib,
        status["total_components"],
        status["active"],
    );
    drop(channels);
    figures
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let wanted = if benching { 10_000 } else { 500 };
    let track_conns = (env("HB_TRACK_CONNS", 20.0) as usize).clamp(1, wanted);
    let settings = Settings {
        secs: if benching { env("HB_SECS", 3.0) } else { 0.3 },
        conns: env("HB_CONNS", 8.0) as usize,
        window: (env("HB_WINDOW", 32.0) as usize).max(1),
        nodes: wanted / track_conns * track_conns,
        track_conns,
        channel_nodes: if benching {
            env("HB_CHANNEL_NODES", 10_000.0) as usize
        } else {
            200
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let this = std::env::var("HB_COLONY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_colony").into());
    let Ok(before) = std::env::var("HB_COMPARE") else {
        run(&rt, &this, settings);
        return;
    };
    let old = run(&rt, &before, settings);
    let new = run(&rt, &this, settings);
    println!("\n{:<58} {:>14} {:>14}", "", "HB_COMPARE", "this build");
    let rows: [Row; 9] = [
        ("POST ingest, heartbeats/s", |f| f.post_ingest, 0),
        (
            "POST, 10 000 nodes at 1/s: coordinator CPU % of a core",
            |f| f.post_tracking_cpu,
            1,
        ),
        (
            "channel ingest, 1 in flight, heartbeats/s",
            |f| f.channel_ingest,
            0,
        ),
        (
            "channel ingest, HB_WINDOW in flight, heartbeats/s",
            |f| f.channel_ingest_window,
            0,
        ),
        (
            "channels, N nodes at 1/s: coordinator CPU % of a core",
            |f| f.channel_tracking_cpu,
            1,
        ),
        (
            "channels, N nodes at 1/s: heartbeats/s answered",
            |f| f.channel_tracking_rate,
            0,
        ),
        ("channels open at the end", |f| f.channels_open as f64, 0),
        (
            "channels lost (not opened or not answered)",
            |f| f.channels_lost as f64,
            0,
        ),
        (
            "coordinator RSS with the channels open, MiB",
            |f| f.rss_mib,
            0,
        ),
    ];
    for (name, get, decimals) in rows {
        println!(
            "{name:<58} {:>14.decimals$} {:>14.decimals$}",
            get(&old),
            get(&new)
        );
    }
}
