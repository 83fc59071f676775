//! The data plane over TLS: the handshake comes before the first-byte sniffing, a node
//! certificate is needed for HELLO, and a plaintext client gets nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use codec::{Limits, Message};
use dataplane::{Client, DataPlane, DataPlaneConfig, Identity, ReadAccess, ShardStore};
use shared::secret::ClusterSecret;
use shared::test_support::pki::TestCa;
use shared::tls::Tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const HANDSHAKE: Duration = Duration::from_millis(500);

struct Server {
    addr: std::net::SocketAddr,
    node: Tls,
    secret: Arc<ClusterSecret>,
    dir: tempfile::TempDir,
    refusals: Arc<parking_lot::Mutex<Vec<&'static str>>>,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let server_tls = Tls::load(&ca.node("server"), HANDSHAKE).unwrap();
    let node = Tls::load(&ca.node("node"), HANDSHAKE).unwrap();
    let secret = Arc::new(ClusterSecret::from_bytes(vec![7; 32], "test").unwrap());
    let plane = DataPlane::with_access(
        DataPlaneConfig::default(),
        ShardStore::new(),
        Some(Identity {
            instance_id: "server".into(),
            secret: secret.clone(),
            tls: Some(server_tls),
        }),
        ReadAccess::default(),
    );
    let refusals = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = refusals.clone();
    plane.on_refusal(move |reason| seen.lock().push(reason));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move { plane.serve(listener, token).await });
    Server {
        addr,
        node,
        secret,
        dir,
        refusals,
        shutdown,
    }
}

/// A TLS client of `server` over `tcp` that trusts its CA and shows no certificate.
async fn anonymous_tls(
    server: &Server,
    tcp: TcpStream,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let roots = shared::tls::roots(&server.dir.path().join("ca.pem")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(server.addr.ip().into());
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_node_certificate_pings_and_authenticates_over_tls() {
    let server = server().await;
    let mut client = Client::connect_tls(server.addr, Limits::default(), Some(&server.node))
        .await
        .unwrap();
    assert!(matches!(
        client.request(&Message::Ping).await.unwrap(),
        Message::Pong
    ));
    let peer = client.authenticate("node", &server.secret).await.unwrap();
    assert_eq!(peer, "server");
    assert!(server.refusals.lock().is_empty());
}

#[tokio::test]
async fn a_client_without_a_certificate_pings_but_may_not_hello() {
    let server = server().await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut tls = anonymous_tls(&server, tcp).await;
    // Text framing, as a human's `openssl s_client` would send it.
    tls.write_all(b"PING\r\n").await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = [0u8; 256];
    let n = tls.read(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(text.contains("PONG"), "{text}");
    tls.write_all(b"{\"type\":\"hello\",\"instance_id\":\"intruder\"}\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let n = tls.read(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(text.contains("not_a_node_certificate"), "{text}");
    assert_eq!(*server.refusals.lock(), ["not_a_node_certificate"]);
}

#[tokio::test]
async fn a_plaintext_client_gets_nothing_and_is_cut() {
    let server = server().await;
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain.write_all(b"PING\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    // The server closes (perhaps after a TLS alert); it never answers PONG.
    assert!(read.is_ok(), "the server must cut a plaintext client");
    assert!(!String::from_utf8_lossy(&answer).contains("PONG"));
    // A silent client is cut by the handshake timeout.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(HANDSHAKE * 10, silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}

#[tokio::test]
async fn every_answer_to_a_long_pipeline_over_tls_arrives() {
    // 20 000 requests pipelined over TLS to a client with a small receive window: the
    // server's writes keep meeting a full socket, and TLS holds what it took until a flush
    // sends it. Every answer must arrive, long before the idle timeout. (Written for a
    // flush skipped when TLS held the last answers; the kernel here buffers too much for
    // this test to catch that case reliably.)
    let server = server().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive window keeps most answers waiting on the server's side.
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let tls = anonymous_tls(&server, tcp).await;
    const REQUESTS: usize = 20_000;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let writing = tokio::spawn(async move {
        writer.write_all(&b"HELP\n".repeat(REQUESTS)).await.unwrap();
        writer.flush().await.unwrap();
        writer
    });
    let mut seen = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    let read_all = async {
        while seen < REQUESTS {
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {seen} answers");
            seen += chunk[..n].iter().filter(|&&b| b == b'\n').count();
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .unwrap_or_else(|_| panic!("only {seen} of {REQUESTS} answers arrived"));
    drop(writing.await.unwrap());
}
