//! The heartbeat load of `colony bench heartbeats` and the `heartbeat` cargo bench: simulated
//! nodes sending signed heartbeats to a coordinator's management port, run in
//! [`shared::loadgen::Load`], over either transport a backend has:
//! - [`Transport::Post`]: `POST /heartbeat` on keep-alive HTTP/1.1 connections, one request
//!   at a time per connection as the backends' sender does, several nodes per connection;
//! - [`Transport::Channel`]: the persistent channel ([`CHANNEL_PATH`]), one node per channel
//!   (a channel is bound to the node of its first heartbeat), one frame at a time.
//!
//! Each heartbeat is signed with the cluster secret as a backend signs it and its answer is
//! read; a refusal (a wrong secret, a replayed `seq`) fails the load rather than lowering a
//! figure. POSTs are written and read here rather than through reqwest: the load shares the
//! machine with the coordinator, and reqwest's own per-request cost took CPU from the server.
//! When the load stops, every node says goodbye (`leaving`), so a measured cluster shows the
//! simulated nodes `LEFT` rather than raising alerts for them.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use shared::loadgen::{connect, timed, Load, Worker};
use shared::signing::{RequestSigner, HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::wire::channel::{frame, CHANNEL_METHOD, CHANNEL_PATH};

/// Where heartbeats are posted.
pub const HEARTBEAT_PATH: &str = "/heartbeat";

/// Connections opened at once while a load starts: the listen backlog is finite.
const OPEN_BATCH: usize = 256;

/// How heartbeats reach the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `POST /heartbeat`, keep-alive.
    Post,
    /// The heartbeat channel, one node per channel.
    Channel,
}

impl Transport {
    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Post => "post",
            Transport::Channel => "channel",
        }
    }
}

/// The simulated nodes of a load.
#[derive(Debug, Clone)]
pub struct Nodes {
    /// Their instance ids are `{prefix}_{n}`, `n` from 0 to `count - 1`.
    pub prefix: String,
    /// How many.
    pub count: usize,
    /// Nodes per connection (POST only; a channel carries one).
    pub per_connection: usize,
    /// Each node heartbeats once per `pace`, spread evenly; `None`: as fast as answered.
    pub pace: Option<Duration>,
    /// The boot id of this run of the nodes: `seq` starts again at 1 under a new one.
    pub boot: String,
}

/// A heartbeat of node `id` (its `n` picks a distinct fake address), as a backend sends it.
fn body(id: &str, n: usize, boot: &str, seq: u64, leaving: bool) -> String {
    format!(
        r#"{{"instance_id":"{id}","node_type":"backend","address":{{"ip":"127.0.0.1","internal_port":{p},"http_port":{p},"mgmt_port":{p}}},"boot_id":"{boot}","seq":{seq},"metrics":{{"connections":1}},"leaving":{leaving}}}"#,
        p = 10000 + n % 50000
    )
}

/// A refused heartbeat, as the error that ends a worker.
fn refused(answer: &str) -> std::io::Error {
    std::io::Error::other(format!("the coordinator refused a heartbeat: {answer}"))
}

/// One keep-alive HTTP/1.1 connection posting heartbeats, one request at a time.
struct Post {
    stream: TcpStream,
    host: String,
    request: Vec<u8>,
    answer: Vec<u8>,
}

impl Post {
    async fn open(addr: SocketAddr) -> std::io::Result<Post> {
        Ok(Post {
            stream: connect(addr).await?,
            host: addr.to_string(),
            request: Vec::with_capacity(512),
            answer: Vec::with_capacity(512),
        })
    }

    /// Posts one signed heartbeat and reads the whole answer, which must be a 200.
    async fn send(&mut self, signer: &RequestSigner, body: &str) -> std::io::Result<()> {
        let signature = signer.sign("POST", HEARTBEAT_PATH, body.as_bytes());
        self.request.clear();
        write!(
            self.request,
            "POST {HEARTBEAT_PATH} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: */*\r\n{HEADER}: {signature}\r\ncontent-length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        )?;
        self.stream.write_all(&self.request).await?;
        self.answer.clear();
        let mut chunk = [0u8; 2048];
        let closed = || std::io::Error::other("the coordinator closed a keep-alive connection");
        loop {
            let n = timed(self.stream.read(&mut chunk)).await?;
            if n == 0 {
                return Err(closed());
            }
            // A read returns at most the buffer's length.
            self.answer.extend_from_slice(&chunk[..n]);
            let Some(end) = self.answer.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(self.answer.get(..end).unwrap_or_default());
            let ok = head.starts_with("HTTP/1.1 200 ");
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .ok_or_else(|| std::io::Error::other("an answer without content-length"))?;
            while self.answer.len() < end + 4 + length {
                let n = timed(self.stream.read(&mut chunk)).await?;
                if n == 0 {
                    return Err(closed());
                }
                self.answer.extend_from_slice(&chunk[..n]);
            }
            if !ok {
                return Err(refused(&String::from_utf8_lossy(&self.answer)));
            }
            return Ok(());
        }
    }
}

/// One heartbeat channel.
struct Channel(WebSocketStream<TcpStream>);

impl Channel {
    async fn open(addr: SocketAddr) -> std::io::Result<Channel> {
        let url = format!("ws://{addr}{CHANNEL_PATH}");
        let (ws, _) = tokio_tungstenite::client_async(url, connect(addr).await?)
            .await
            .map_err(std::io::Error::other)?;
        Ok(Channel(ws))
    }

    /// Sends one signed heartbeat frame and reads its answer, which must accept it.
    async fn send(&mut self, signer: &RequestSigner, body: &str) -> std::io::Result<()> {
        let signature = signer.sign(CHANNEL_METHOD, CHANNEL_PATH, body.as_bytes());
        self.0
            .send(WsMessage::Text(frame(&signature, body.as_bytes()).into()))
            .await
            .map_err(std::io::Error::other)?;
        loop {
            match timed(async { Ok(self.0.next().await) }).await? {
                Some(Ok(WsMessage::Text(answer))) if answer.contains(r#""status":"#) => {
                    return Ok(())
                }
                Some(Ok(WsMessage::Text(answer))) => return Err(refused(&answer)),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                other => {
                    return Err(std::io::Error::other(format!(
                        "the coordinator closed a heartbeat channel: {other:?}"
                    )))
                }
            }
        }
    }
}

/// A connection of either transport (the channel boxed: it is three times the size).
enum Conn {
    Post(Post),
    Channel(Box<Channel>),
}

impl Conn {
    async fn send(&mut self, signer: &RequestSigner, body: &str) -> std::io::Result<()> {
        match self {
            Conn::Post(post) => post.send(signer, body).await,
            Conn::Channel(channel) => channel.send(signer, body).await,
        }
    }
}

/// What one worker carries: its connection, its nodes' numbers and their last `seq`.
struct Carrier {
    conn: Conn,
    nodes: Vec<usize>,
    seq: u64,
    /// Its place among the connections, to spread paced heartbeats.
    index: usize,
    connections: usize,
}

/// Starts the heartbeat load of `nodes` against the management port `addr`, signed by
/// `signer`. Every connection is open before this returns; a channel's first heartbeat
/// goes at once, as a backend's does (the coordinator closes a channel that carries none
/// within 10 s).
///
/// # Errors
/// A connection that cannot be made or a first heartbeat refused.
pub async fn heartbeats(
    addr: SocketAddr,
    signer: RequestSigner,
    transport: Transport,
    nodes: &Nodes,
) -> std::io::Result<Load> {
    let per = match transport {
        Transport::Post => nodes.per_connection.max(1),
        Transport::Channel => 1,
    };
    let connections = nodes.count.div_ceil(per).max(1);
    let mut carriers = Vec::with_capacity(connections);
    let starts: Vec<usize> = (0..connections).collect();
    for batch in starts.chunks(OPEN_BATCH) {
        let opening = batch.iter().map(|&index| {
            let signer = signer.clone();
            let nodes_of: Vec<usize> =
                (index * per..((index + 1) * per).min(nodes.count)).collect();
            let first = nodes_of.first().copied();
            let (prefix, boot) = (nodes.prefix.clone(), nodes.boot.clone());
            async move {
                let mut conn = match transport {
                    Transport::Post => Conn::Post(Post::open(addr).await?),
                    Transport::Channel => Conn::Channel(Box::new(Channel::open(addr).await?)),
                };
                let mut seq = 0;
                if let (Transport::Channel, Some(n)) = (transport, first) {
                    seq = 1;
                    conn.send(
                        &signer,
                        &body(&format!("{prefix}_{n}"), n, &boot, seq, false),
                    )
                    .await?;
                }
                Ok::<_, std::io::Error>(Carrier {
                    conn,
                    nodes: nodes_of,
                    seq,
                    index,
                    connections,
                })
            }
        });
        for carrier in futures::future::join_all(opening).await {
            carriers.push(carrier?);
        }
    }
    let (prefix, boot, pace) = (nodes.prefix.clone(), nodes.boot.clone(), nodes.pace);
    Ok(Load::spawn(carriers, move |carrier, worker| {
        drive(
            carrier,
            signer.clone(),
            prefix.clone(),
            boot.clone(),
            pace,
            worker,
        )
    }))
}

async fn drive(
    mut c: Carrier,
    signer: RequestSigner,
    prefix: String,
    boot: String,
    pace: Option<Duration>,
    mut worker: Worker,
) -> std::io::Result<Vec<Duration>> {
    // Paced: this connection's nodes take turns, one every pace / nodes, its first turn
    // shifted by its place so the connections do not send in step.
    let mut tick = pace.filter(|_| !c.nodes.is_empty()).map(|pace| {
        let every = pace / c.nodes.len() as u32;
        let shift = every.mul_f64(c.index as f64 / c.connections as f64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + shift, every);
        // Nodes sharing a connection wait for each other's answers: a slow answer is made
        // up at once so each still averages one per pace. A node alone keeps its spacing.
        if c.nodes.len() == 1 {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        tick
    });
    let mut turn = 0usize;
    while worker.running() && !c.nodes.is_empty() {
        if let Some(tick) = tick.as_mut() {
            // Never wait past a stop for a slow pace: look again every 100 ms.
            if tokio::time::timeout(Duration::from_millis(100), tick.tick())
                .await
                .is_err()
            {
                continue;
            }
        }
        let n = c.nodes.get(turn % c.nodes.len()).copied().unwrap_or(0);
        turn += 1;
        // Every node of a connection shares its seq counter: seqs still rise per node.
        c.seq += 1;
        let started = Instant::now();
        c.conn
            .send(
                &signer,
                &body(&format!("{prefix}_{n}"), n, &boot, c.seq, false),
            )
            .await?;
        worker.completed(1, started);
    }
    for &n in &c.nodes {
        c.seq += 1;
        c.conn
            .send(
                &signer,
                &body(&format!("{prefix}_{n}"), n, &boot, c.seq, true),
            )
            .await?;
    }
    Ok(worker.into_samples())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::heartbeat::Heartbeat;

    #[test]
    fn the_body_is_a_heartbeat_of_the_wire() {
        let beat: Heartbeat = serde_json::from_str(&body("bench_7", 7, "b00t", 3, true)).unwrap();
        assert_eq!(beat.instance_id, "bench_7");
        assert_eq!(beat.seq, 3);
        assert!(beat.leaving);
        assert_eq!(beat.address.internal_port, 10007);
    }
}
