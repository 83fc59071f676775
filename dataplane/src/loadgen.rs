//! The data-plane loads of `colony bench ping|frames` and the `pingpong` cargo bench, run in
//! [`shared::loadgen::Load`]:
//! - [`ping`]: each connection keeps `depth` inline `PING\r\n` in flight and counts answer
//!   lines, so the same load runs against Colony (`PONG\n`), Redis (`+PONG\r\n`), NATS
//!   (`PONG\r\n`, after its handshake: [`Handshake::Nats`]) or a line echo ([`spawn_echo`]);
//! - [`frames`]: each connection keeps `depth` binary `echo` frames of a given payload in
//!   flight, so the payload crosses the connection both ways.
//!
//! Loopback-only use is the caller's check; this only generates load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use codec::{Limits, Message, Redacted};
use shared::loadgen::{connect, timed, Load, Worker};
use shared::operator::OperatorToken;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::client::{Client, ClientError};

/// What a connection says before its first PING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Nothing (Colony, Redis, a line echo).
    None,
    /// NATS: read the server's `INFO` line, answer `CONNECT {}` (not verbose, so no `+OK`
    /// follows), then PINGs are answered `PONG`.
    Nats,
}

/// Opens a ping connection to `addr` and does `handshake`.
async fn open_ping(addr: SocketAddr, handshake: Handshake) -> std::io::Result<TcpStream> {
    let mut socket = connect(addr).await?;
    if handshake == Handshake::Nats {
        let mut info = String::new();
        // The INFO line is read through a buffer dropped right after: NATS sends nothing
        // more until it is spoken to, so no bytes of a later answer can be lost in it.
        timed(BufReader::new(&mut socket).read_line(&mut info)).await?;
        if !info.starts_with("INFO ") {
            return Err(std::io::Error::other(format!(
                "not a NATS server: it said {:?}",
                info.trim_end()
            )));
        }
        socket
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
            .await?;
    }
    Ok(socket)
}

/// Starts the ping load: `connections` connections to `addr`, each with `depth` PINGs in
/// flight. Every connection is made (and has done its handshake) before this returns.
///
/// # Errors
/// A connection that cannot be made or a failed handshake.
pub async fn ping(
    addr: SocketAddr,
    connections: usize,
    depth: usize,
    handshake: Handshake,
) -> std::io::Result<Load> {
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        sockets.push(open_ping(addr, handshake).await?);
    }
    let depth = depth.max(1);
    Ok(Load::spawn(sockets, move |socket, worker| {
        drive_ping(socket, depth, worker)
    }))
}

async fn drive_ping(
    mut socket: TcpStream,
    depth: usize,
    mut worker: Worker,
) -> std::io::Result<Vec<std::time::Duration>> {
    let burst = b"PING\r\n".repeat(depth);
    let mut buf = vec![0u8; 64 * 1024];
    while worker.running() {
        let sent = Instant::now();
        socket.write_all(&burst).await?;
        let mut answers = 0;
        while answers < depth {
            let n = timed(socket.read(&mut buf)).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            answers += buf
                .get(..n)
                .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
        }
        worker.completed(depth as u64, sent);
    }
    Ok(worker.into_samples())
}

/// Starts the frame load: `connections` binary connections to `addr`, each with `depth`
/// `echo` frames of `size` payload bytes in flight; each answer must carry the payload back.
/// With `token`, each connection first presents the operator token (a node with
/// `--protect-reads` answers nothing else before it).
///
/// # Errors
/// A connection that cannot be made, or a refused token.
pub async fn frames(
    addr: SocketAddr,
    connections: usize,
    depth: usize,
    size: usize,
    token: Option<&OperatorToken>,
) -> Result<Load, ClientError> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut client = Client::from_stream(Box::new(connect(addr).await?), Limits::default());
        if let Some(token) = token {
            let presented = Message::Token {
                token: Redacted(token.expose().to_owned()),
            };
            match client.request(&presented).await? {
                Message::TokenAccepted => {}
                other => return Err(ClientError::Unexpected(Box::new(other))),
            }
        }
        clients.push(client);
    }
    let payload = Arc::new(vec![0xA5u8; size]);
    Ok(Load::spawn(clients, move |client, worker| {
        drive_frames(client, depth.max(1), payload.clone(), worker)
    }))
}

async fn drive_frames(
    mut client: Client,
    depth: usize,
    payload: Arc<Vec<u8>>,
    mut worker: Worker,
) -> std::io::Result<Vec<std::time::Duration>> {
    let echo = Message::Echo {
        payload: payload.as_ref().clone(),
    };
    let failed = |e: ClientError| std::io::Error::other(e.to_string());
    while worker.running() {
        let sent = Instant::now();
        for _ in 0..depth {
            client.queue(&echo).map_err(failed)?;
        }
        client.flush().await.map_err(failed)?;
        for _ in 0..depth {
            match timed(async { client.recv().await.map_err(failed) }).await? {
                Message::EchoReply { payload: back } if back.len() == payload.len() => {}
                other => return Err(failed(ClientError::Unexpected(Box::new(other)))),
            }
        }
        worker.completed(depth as u64, sent);
    }
    Ok(worker.into_samples())
}

/// A line echo on `127.0.0.1`: every byte read is written back, so each `PING\r\n` gets its
/// line back. Against it, [`ping`] measures the loopback limit of this machine. Serves
/// until the returned task is aborted.
///
/// # Errors
/// The listener cannot bind.
pub async fn spawn_echo() -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            connections.spawn(async move {
                let _ = socket.set_nodelay(true);
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_load_against_the_echo_counts_answers_and_latencies() {
        let (addr, echo) = spawn_echo().await.unwrap();
        let load = ping(addr, 2, 4, Handshake::None).await.unwrap();
        load.record_latencies();
        let deadline = Instant::now() + Duration::from_secs(10);
        while load.completed() < 100 {
            assert!(Instant::now() < deadline, "no answers");
            tokio::task::yield_now().await;
        }
        let samples = load.stop().await.unwrap();
        assert!(!samples.is_empty());
        echo.abort();
    }

    #[tokio::test]
    async fn a_nats_handshake_refuses_a_server_that_is_not_nats() {
        // A server that greets with something other than INFO is refused.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(b"+OK redis?\r\n").await.unwrap();
            let _ = socket.read(&mut [0u8; 64]).await;
        });
        let err = ping(addr, 1, 1, Handshake::Nats).await.unwrap_err();
        assert!(err.to_string().contains("not a NATS server"), "{err}");
        server.abort();
    }
}
