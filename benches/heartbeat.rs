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
//! The load is `colony bench heartbeats`'s (`controlplane::loadgen`): every heartbeat is
//! signed with the cluster secret as a backend signs it, one at a time per connection, and
//! each answer is read and must accept it (a refusal fails the bench). The load generator
//! shares this machine with the coordinator: its CPU share is printed too.
//!
//! 3. and 4. The same two figures over the persistent heartbeat channel (`/heartbeat/ws`, the
//!    backends' default): ingest over `HB_CONNS` channels (one node each, each answer read
//!    and checked), first one frame at a time as the sender does, then `HB_WINDOW` frames
//!    written together per channel (default 32: the frames of many nodes arriving at once,
//!    without the load generator's round trips setting the pace); then 10 000 nodes at 1/s,
//!    each on a channel of its own as a backend holds it (`HB_CHANNEL_NODES` to change the
//!    count; the bench needs twice that many file descriptors between the two processes),
//!    with the coordinator's RSS while they are open. That phase is measured over at least
//!    one period of sparse answers (20 s), so its figure includes them as a steady cluster
//!    pays them.
//!
//! `HB_WORKERS` sets the coordinator's `--worker-threads` (the management plane, heartbeats
//! included, runs on a thread of its own either way); `HB_COLONY` runs another `colony`
//! binary; `HB_COMPARE=<colony binary>` runs every phase against that binary as well, first,
//! and prints the two side by side (before and after a change, under the same load).
//!
//! Run: `cargo bench --bench heartbeat`. The load generator runs on the same machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use controlplane::loadgen::{heartbeats, Nodes, Transport};
use controlplane::wire::channel::SPARSE_ANSWER_EVERY;
use shared::loadgen::Connector;
use shared::secret::ClusterSecret;
use shared::signing::RequestSigner;
use shared::test_support::free_port;
use shared::test_support::proc_cpu::{cpu_seconds, rss_bytes};

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
        // Upgraded channels still hold a slot of the management listener's HTTP cap (8 192
        // by default), so 10 000 channels need it raised; an env var, which older builds
        // run with HB_COMPARE ignore.
        .env("COLONY_HTTP_MAX_CONNECTIONS", "20000")
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

/// One phase: the load `start` makes runs `settle` (every node's first heartbeat), then is
/// measured for `measure`. Heartbeats/s, the coordinator's and this process's CPU shares
/// (user %, kernel %), and how long the load took to start (its connections opening).
struct Phase {
    rate: f64,
    server: (f64, f64),
    client: (f64, f64),
    opened: Duration,
    /// The coordinator's `/health/status` at the end, before the nodes said goodbye.
    status: serde_json::Value,
    /// The coordinator's RSS at the end, in MiB, with the load's connections still open.
    rss_mib: f64,
}

/// The coordinator's `/health/status`.
async fn health(mgmt: SocketAddr) -> serde_json::Value {
    let url = format!("http://{mgmt}/health/status");
    let client = shared::tls::http_client(None).no_proxy().build().unwrap();
    client.get(url).send().await.unwrap().json().await.unwrap()
}

fn phase(
    rt: &tokio::runtime::Runtime,
    pid: &str,
    target: (SocketAddr, &RequestSigner),
    transport: Transport,
    nodes: Nodes,
    (settle, measure): (Duration, Duration),
) -> Phase {
    rt.block_on(async {
        let opening = Instant::now();
        let load = heartbeats(
            target.0,
            &Connector::plain(),
            target.1.clone(),
            transport,
            &nodes,
        )
        .await
        .unwrap();
        let opened = opening.elapsed();
        tokio::time::sleep(settle).await;
        let (server0, client0) = (cpu_seconds(pid), cpu_seconds("self"));
        let (before, at) = (load.completed(), Instant::now());
        tokio::time::sleep(measure).await;
        let done = load.completed() - before;
        let wall = at.elapsed().as_secs_f64();
        let share = |before: (f64, f64), after: (f64, f64)| {
            (
                100.0 * (after.0 - before.0) / wall,
                100.0 * (after.1 - before.1) / wall,
            )
        };
        let (server, client) = (
            share(server0, cpu_seconds(pid)),
            share(client0, cpu_seconds("self")),
        );
        let status = health(target.0).await;
        let rss_mib = rss_bytes(pid) as f64 / f64::from(1 << 20);
        // A worker that failed (a channel closed or unanswered for 30 s) is reported, not a
        // panic: the figures above were measured before the stop, and are printed with it.
        if let Err(e) = load.stop().await {
            println!("the load ended with an error (figures below still measured): {e}");
        }
        Phase {
            rate: done as f64 / wall,
            server,
            client,
            opened,
            status,
            rss_mib,
        }
    })
}

/// `count` nodes named `{name}_{n}`, `per_connection` on each POST connection, paced or not,
/// one frame at a time on a channel.
fn nodes(name: &str, count: usize, per_connection: usize, pace: Option<Duration>) -> Nodes {
    Nodes {
        prefix: format!("sim_{name}"),
        count,
        per_connection,
        pace,
        boot: name.to_owned(),
        in_flight: 1,
    }
}

/// The run's settings, from the environment.
#[derive(Debug, Clone, Copy)]
struct Settings {
    secs: f64,
    conns: usize,
    window: usize,
    track_conns: usize,
    per_conn: usize,
    channel_nodes: usize,
    /// The shortest window of the channel tracking phase.
    channel_window: Duration,
}

/// One build's figures, for the side-by-side table.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    post_ingest: f64,
    post_tracking_cpu: f64,
    channel_ingest: f64,
    channel_ingest_window: f64,
    channel_tracking_cpu: f64,
    channel_tracking_rate: f64,
    rss_mib: f64,
}

/// Every phase against the coordinator binary `program`, each figure printed as it comes.
fn run(rt: &tokio::runtime::Runtime, program: &str, s: Settings) -> Figures {
    let coordinator = start(program);
    let signer = coordinator.signer();
    let target = (
        SocketAddr::from(([127, 0, 0, 1], coordinator.mgmt)),
        &signer,
    );
    let pid = coordinator.child.id().to_string();
    let (secs, conns, track_conns) = (s.secs, s.conns, s.track_conns);
    let tracked = s.per_conn * track_conns;
    let channel_nodes = s.channel_nodes;
    let measure = Duration::from_secs_f64(secs);
    // Paced phases run at least a second, so every node heartbeats in the window.
    let paced = (Duration::from_secs(1), measure.max(Duration::from_secs(1)));
    let once = Some(Duration::from_secs(1));
    let cpu = |p: &Phase| {
        format!(
            "coordinator CPU {:.1}% of one core (user {:.1}%, kernel {:.1}%), load generator {:.0}%",
            p.server.0 + p.server.1,
            p.server.0,
            p.server.1,
            p.client.0 + p.client.1
        )
    };
    let mut figures = Figures::default();
    println!("== {program}");

    // 1. Ingest: 125 nodes per keep-alive connection, as fast as answered.
    let ingest = nodes("ingest", conns * 125, 125, None);
    let p = phase(
        rt,
        &pid,
        target,
        Transport::Post,
        ingest,
        (Duration::ZERO, measure),
    );
    figures.post_ingest = p.rate;
    println!(
        "heartbeat ingest: {:.0} heartbeats/s over {conns} keep-alive connections ({secs}s); {}",
        p.rate,
        cpu(&p)
    );

    // 2. Tracking many nodes at 1 heartbeat/s each.
    let many = nodes("tracked", tracked, s.per_conn, once);
    let p = phase(rt, &pid, target, Transport::Post, many, paced);
    figures.post_tracking_cpu = p.server.0 + p.server.1;
    println!(
        "tracking {tracked} nodes at 1 heartbeat/s over {track_conns} keep-alive connections: {:.0} heartbeats/s received, {}; {} components, {} active",
        p.rate,
        cpu(&p),
        p.status["total_components"],
        p.status["active"],
    );

    // 3. Ingest over the channel: one node per channel, as fast as answered; one frame at
    // a time, then `window` written together.
    for window in [1, s.window] {
        let mut ingest = nodes(&format!("channel_ingest_{window}"), conns, 1, None);
        ingest.in_flight = window;
        let p = phase(
            rt,
            &pid,
            target,
            Transport::Channel,
            ingest,
            (Duration::ZERO, measure),
        );
        if window == 1 {
            figures.channel_ingest = p.rate;
        } else {
            figures.channel_ingest_window = p.rate;
        }
        println!(
            "heartbeat ingest over the channel: {:.0} heartbeats/s over {conns} channels, {window} frame(s) in flight each ({secs}s); {}",
            p.rate,
            cpu(&p)
        );
    }

    // 4. Many nodes at 1 heartbeat/s, each on its own channel. Measured over a whole period
    // of sparse answers (each channel is answered once per `SPARSE_ANSWER_EVERY`), so the
    // answers are in the figure as they are in a steady cluster: a shorter window after the
    // first answers would leave them out.
    let many = nodes("channel", channel_nodes, 1, once);
    let steady = (paced.0, paced.1.max(s.channel_window));
    let p = phase(rt, &pid, target, Transport::Channel, many, steady);
    figures.channel_tracking_cpu = p.server.0 + p.server.1;
    figures.channel_tracking_rate = p.rate;
    figures.rss_mib = p.rss_mib;
    println!(
        "tracking {channel_nodes} nodes at 1 heartbeat/s over a channel each (opened in {:.1}s): {:.0} heartbeats/s received, {}; coordinator RSS {:.0} MiB with them open; {} components, {} active",
        p.opened.as_secs_f64(),
        p.rate,
        cpu(&p),
        p.rss_mib,
        p.status["total_components"],
        p.status["active"],
    );
    figures
}

/// A line of the side-by-side table: its name, its figure, its decimals.
type Row = (&'static str, fn(&Figures) -> f64, usize);

/// The side-by-side table of `HB_COMPARE`.
fn compare(before: &Figures, after: &Figures) {
    let rows: [Row; 7] = [
        ("POST ingest, heartbeats/s", |f| f.post_ingest, 0),
        (
            "POST, N nodes at 1/s: coordinator CPU % of a core",
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
        (
            "coordinator RSS with the channels open, MiB",
            |f| f.rss_mib,
            0,
        ),
    ];
    println!("\n{:<56} {:>12} {:>12}", "", "HB_COMPARE", "this build");
    for (name, get, decimals) in rows {
        println!(
            "{name:<56} {:>12.decimals$} {:>12.decimals$}",
            get(before),
            get(after)
        );
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
    let wanted = if benching { 10_000 } else { 500 };
    let track_conns = (env("HB_TRACK_CONNS", 20.0) as usize).clamp(1, wanted);
    let settings = Settings {
        secs: if benching { env("HB_SECS", 3.0) } else { 0.3 },
        conns: env("HB_CONNS", 8.0) as usize,
        window: (env("HB_WINDOW", 32.0) as usize).max(1),
        track_conns,
        per_conn: wanted / track_conns,
        channel_nodes: if benching {
            env("HB_CHANNEL_NODES", 10_000.0) as usize
        } else {
            200
        },
        channel_window: if benching {
            SPARSE_ANSWER_EVERY
        } else {
            Duration::ZERO
        },
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let this = std::env::var("HB_COLONY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_colony").into());
    match std::env::var("HB_COMPARE") {
        Ok(before) => {
            let before = run(&rt, &before, settings);
            let after = run(&rt, &this, settings);
            compare(&before, &after);
        }
        Err(_) => {
            run(&rt, &this, settings);
        }
    }
}
