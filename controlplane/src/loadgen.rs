//! The heartbeat load of `colony bench heartbeats` and the `heartbeat` cargo bench: simulated
//! nodes sending signed heartbeats to a coordinator's management port, run in
//! [`shared::loadgen::Load`], over either transport a backend has:
//! - [`Transport::Post`]: `POST /heartbeat` on keep-alive HTTP/1.1 connections, one request
//!   at a time per connection as the backends' sender does, several nodes per connection;
//! - [`Transport::Channel`]: the persistent channel ([`CHANNEL_PATH`]), one node per channel
//!   (a channel is bound to the node of its first heartbeat), one frame at a time as the
//!   sender does, or [`Nodes::in_flight`] frames written together before their answers are
//!   read (the frames of many nodes arriving at once, without the load generator's round
//!   trips setting the pace).
//!
//! A paced channel is opened as a backend opens its own, answered sparsely
//! ([`crate::wire::channel`]): its heartbeats count when sent, fail the load if no answer
//! acknowledges them in time, and have no latency of their own (the load, like a backend,
//! reads answers only when it next sends). A load as fast as answered needs an answer per frame and asks for one.
//!
//! Each heartbeat is signed with the cluster secret as a backend signs it and its answer is
//! read; a refusal (a wrong secret, a replayed `seq`) fails the load rather than lowering a
//! figure. POSTs are written and read here rather than through reqwest: the load shares the
//! machine with the coordinator, and reqwest's own per-request cost took CPU from the server.
//! When the load stops, every node says goodbye (`leaving`), so a measured cluster shows the
//! simulated nodes `LEFT` rather than raising alerts for them.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use shared::loadgen::{connect, timed, Connector, Load, LoadStream, Worker};
use shared::signing::{RequestSigner, HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::wire::channel::{
    frame, ChannelAnswer, CHANNEL_METHOD, CHANNEL_PATH, SPARSE_ANSWER_TIMEOUT, SPARSE_PATH,
};

/// Where heartbeats are posted.
pub const HEARTBEAT_PATH: &str = "/heartbeat";

/// Connections opened at once while a load starts: the listen backlog is finite.
const OPEN_BATCH: usize = 256;
/// Each channel's read buffer. An answer is a few dozen bytes; tungstenite's default
/// (128 KiB) is zero-filled before every read and, over 10 000 channels, cost the load
/// generator more memory and CPU than the coordinator it measures.
const READ_BUFFER: usize = 4 * 1024;

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
    /// Channel only: heartbeats written together on a channel before their answers are
    /// read, each turn (1, or 0, is one at a time, as a backend's sender does). POST sends
    /// one at a time whatever this is.
    pub in_flight: usize,
}

/// A heartbeat of node `id` (its `n` picks a distinct fake address), as a backend with no
/// deployed service sends it.
fn body(id: &str, n: usize, boot: &str, seq: u64, leaving: bool) -> String {
    format!(
        r#"{{"instance_id":"{id}","node_type":"backend","address":{{"ip":"127.0.0.1","internal_port":{p},"http_port":{p},"mgmt_port":{p}}},"boot_id":"{boot}","seq":{seq},"metrics":{{"connections":1,"deployed_digest":0}},"leaving":{leaving}}}"#,
        p = 10000 + n % 50000
    )
}

/// A refused heartbeat, as the error that ends a worker.
fn refused(answer: &str) -> std::io::Error {
    std::io::Error::other(format!("the coordinator refused a heartbeat: {answer}"))
}

/// One keep-alive HTTP/1.1 connection posting heartbeats, one request at a time.
struct Post {
    stream: LoadStream,
    host: String,
    request: Vec<u8>,
    answer: Vec<u8>,
}

impl Post {
    async fn open(addr: SocketAddr, connector: &Connector) -> std::io::Result<Post> {
        Ok(Post {
            stream: connect(addr, connector).await?,
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
        // A no-op on TCP; over TLS it makes sure the records have left.
        self.stream.flush().await?;
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
struct Channel {
    ws: WebSocketStream<LoadStream>,
    /// Answered sparsely: frames sent and not yet acknowledged, oldest first, with their
    /// `seq` and when they were written.
    unacked: Option<VecDeque<(u64, Instant)>>,
}

impl Channel {
    async fn open(
        addr: SocketAddr,
        connector: &Connector,
        sparse: bool,
    ) -> std::io::Result<Channel> {
        let path = if sparse { SPARSE_PATH } else { CHANNEL_PATH };
        let url = format!("{}://{addr}{path}", connector.ws_scheme());
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            url,
            connect(addr, connector).await?,
            Some(config),
        )
        .await
        .map_err(std::io::Error::other)?;
        Ok(Channel {
            ws,
            unacked: sparse.then(VecDeque::new),
        })
    }

    /// Writes one signed heartbeat frame per body, together.
    async fn write(&mut self, signer: &RequestSigner, bodies: &[String]) -> std::io::Result<()> {
        for body in bodies {
            let signature = signer.sign(CHANNEL_METHOD, CHANNEL_PATH, body.as_bytes());
            let text = frame(&signature, body.as_bytes());
            self.ws
                .feed(WsMessage::Text(text.into()))
                .await
                .map_err(std::io::Error::other)?;
        }
        self.ws.flush().await.map_err(std::io::Error::other)
    }

    /// Sends the frames of `bodies`, the last with `seq`, then reads answers until one
    /// acknowledges it (each frame's own answer, or on a sparse channel the one answer every
    /// frame up to it gets).
    async fn send(
        &mut self,
        signer: &RequestSigner,
        bodies: &[String],
        seq: u64,
    ) -> std::io::Result<()> {
        self.write(signer, bodies).await?;
        if let Some(unacked) = &mut self.unacked {
            unacked.clear();
        }
        while self.answer().await? < seq {}
        Ok(())
    }

    /// Sparse: sends the frames of `bodies`, the last with `seq`, counting them into
    /// `worker`, then takes in the answers already there without waiting for any: `Err` when
    /// one refuses a heartbeat or a frame has had no answer for [`SPARSE_ANSWER_TIMEOUT`], as
    /// a backend's sender would give the channel up.
    async fn send_sparse(
        &mut self,
        signer: &RequestSigner,
        bodies: &[String],
        seq: u64,
        worker: &mut Worker,
    ) -> std::io::Result<()> {
        self.write(signer, bodies).await?;
        // Counted as sent: an answer covers them some seconds later, possibly after the
        // measured window, and a frame never acknowledged fails the load below.
        worker.counted(bodies.len() as u64);
        let sent = Instant::now();
        let first = seq + 1 - bodies.len() as u64;
        if let Some(unacked) = &mut self.unacked {
            unacked.extend((first..=seq).map(|s| (s, sent)));
        }
        while let Some(answer) = self.answer().now_or_never() {
            let acked = answer?;
            let Some(unacked) = &mut self.unacked else {
                break;
            };
            while unacked.front().is_some_and(|&(s, _)| s <= acked) {
                unacked.pop_front();
            }
        }
        match self.unacked.as_ref().and_then(|u| u.front()) {
            Some((_, at)) if at.elapsed() > SPARSE_ANSWER_TIMEOUT => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "a heartbeat channel acknowledged nothing in time",
            )),
            _ => Ok(()),
        }
    }

    /// Reads the next answer, which must accept a heartbeat: the `seq` it acknowledges.
    async fn answer(&mut self) -> std::io::Result<u64> {
        loop {
            match timed(async { Ok(self.ws.next().await) }).await? {
                Some(Ok(WsMessage::Text(text))) => {
                    return match serde_json::from_str::<ChannelAnswer>(&text) {
                        Ok(ChannelAnswer {
                            seq: Some(seq),
                            error: None,
                            ..
                        }) => Ok(seq),
                        _ => Err(refused(&text)),
                    }
                }
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
    /// Sends the heartbeats of `bodies`, the last with `seq` (on a channel together, by POST
    /// one by one), and waits until they are all answered.
    async fn send(
        &mut self,
        signer: &RequestSigner,
        bodies: &[String],
        seq: u64,
    ) -> std::io::Result<()> {
        match self {
            Conn::Post(post) => {
                for body in bodies {
                    post.send(signer, body).await?;
                }
                Ok(())
            }
            Conn::Channel(channel) => channel.send(signer, bodies, seq).await,
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

/// Starts the heartbeat load of `nodes` against the management port `addr` (connections
/// made by `connector`: over TLS, a coordinator takes heartbeats only from a node
/// certificate naming the caller's address), signed by `signer`. Every connection is open before this returns; a channel's first heartbeat
/// goes at once, as a backend's does (the coordinator closes a channel that carries none
/// within 10 s).
///
/// # Errors
/// A connection that cannot be made or a first heartbeat refused.
pub async fn heartbeats(
    addr: SocketAddr,
    connector: &Connector,
    signer: RequestSigner,
    transport: Transport,
    nodes: &Nodes,
) -> std::io::Result<Load> {
    let per = match transport {
        Transport::Post => nodes.per_connection.max(1),
        Transport::Channel => 1,
    };
    let connections = nodes.count.div_ceil(per).max(1);
    // Paced channels are answered sparsely, as a backend's is.
    let sparse = transport == Transport::Channel && nodes.pace.is_some();
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
                    Transport::Post => Conn::Post(Post::open(addr, connector).await?),
                    Transport::Channel => {
                        Conn::Channel(Box::new(Channel::open(addr, connector, sparse).await?))
                    }
                };
                let mut seq = 0;
                if let (Transport::Channel, Some(n)) = (transport, first) {
                    seq = 1;
                    let first = body(&format!("{prefix}_{n}"), n, &boot, seq, false);
                    conn.send(&signer, &[first], seq).await?;
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
    let turn = Turn {
        prefix: nodes.prefix.clone(),
        boot: nodes.boot.clone(),
        pace: nodes.pace,
        in_flight: match transport {
            Transport::Post => 1,
            Transport::Channel => nodes.in_flight.max(1),
        },
    };
    Ok(Load::spawn(carriers, move |carrier, worker| {
        drive(carrier, signer.clone(), turn.clone(), worker)
    }))
}

/// What every worker of a load does each turn.
#[derive(Debug, Clone)]
struct Turn {
    prefix: String,
    boot: String,
    pace: Option<Duration>,
    /// Heartbeats sent together each turn.
    in_flight: usize,
}

async fn drive(
    mut c: Carrier,
    signer: RequestSigner,
    turn_of: Turn,
    mut worker: Worker,
) -> std::io::Result<Vec<Duration>> {
    let Turn {
        prefix,
        boot,
        pace,
        in_flight,
    } = turn_of;
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
    let mut bodies = Vec::with_capacity(in_flight);
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
        bodies.clear();
        for _ in 0..in_flight {
            c.seq += 1;
            bodies.push(body(&format!("{prefix}_{n}"), n, &boot, c.seq, false));
        }
        match &mut c.conn {
            Conn::Channel(channel) if channel.unacked.is_some() => {
                channel
                    .send_sparse(&signer, &bodies, c.seq, &mut worker)
                    .await?;
            }
            conn => {
                let started = Instant::now();
                conn.send(&signer, &bodies, c.seq).await?;
                worker.completed(bodies.len() as u64, started);
            }
        }
    }
    for &n in &c.nodes {
        c.seq += 1;
        let goodbye = body(&format!("{prefix}_{n}"), n, &boot, c.seq, true);
        c.conn.send(&signer, &[goodbye], c.seq).await?;
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
