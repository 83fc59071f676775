//! The backend's side of heartbeats: find the coordinator through the registry, then send a
//! heartbeat to its management port every interval; say goodbye on shutdown. Every
//! heartbeat is a signed node call (DESIGN §13) carrying this process's boot id and a `seq`
//! that rises with each one, so the coordinator can refuse a replayed one.
//!
//! Heartbeats go over the persistent heartbeat channel ([`crate::wire::channel`]) by default:
//! one WebSocket frame each, and a channel the coordinator sees close tells it at once that
//! this node may be gone. The channel is opened to be answered sparsely: the sender does not
//! wait for each answer, it reads those that came whenever it beats, and takes the channel
//! for broken only when frames have had no answer at all for [`SPARSE_ANSWER_TIMEOUT`], or
//! when its kernel gives the connection up because the coordinator's host acknowledged
//! nothing for [`CHANNEL_TCP_USER_TIMEOUT`] (a host or network gone). When the channel
//! cannot be opened (an older coordinator, its channel cap reached) or breaks, that
//! heartbeat is `POST`ed instead, and the channel is tried again after [`CHANNEL_RETRY`].
//!
//! Start order does not matter: until the coordinator is registered the sender waits,
//! logging that it does. After repeated failures it looks the coordinator up again, since a
//! restarted coordinator may have new ports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shared::registry::ClusterRegistry;
use shared::signing::{RequestSigner, HEADER};
use shared::NodeAddress;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use futures::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::wire::channel::{
    frame, ChannelAnswer, CHANNEL_METHOD, CHANNEL_PATH, CHANNEL_TCP_USER_TIMEOUT,
    SPARSE_ANSWER_TIMEOUT, SPARSE_PATH,
};
use crate::wire::heartbeat::{new_boot_id, Heartbeat, NodeType};

/// Failed posts in a row after which the coordinator is looked up again.
const REDISCOVER_AFTER: u32 = 3;
/// Longest wait for the goodbye to be delivered on shutdown.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// The route heartbeats go to.
const HEARTBEAT_PATH: &str = "/heartbeat";
/// After the channel could not be opened, heartbeats are `POST`ed this long before the
/// channel is tried again.
pub const CHANNEL_RETRY: Duration = Duration::from_secs(5);
/// How long opening the channel or a `POST` may take: the coordinator's default
/// `--down-after`. Past it the node is DOWN there anyway, so giving up sooner only adds a
/// suspicion. (Frames on an open channel wait longer, [`SPARSE_ANSWER_TIMEOUT`]: it is
/// answered only every [`crate::wire::channel::SPARSE_ANSWER_EVERY`].)
pub const CHANNEL_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// An open heartbeat channel: a WebSocket over plain TCP, or over TLS between nodes.
type Channel = tokio_tungstenite::WebSocketStream<dataplane::Socket>;

/// Why the channel could not carry a heartbeat.
#[derive(Debug, thiserror::Error)]
enum ChannelError {
    /// The heartbeat could not be encoded.
    #[error("cannot encode the heartbeat: {0}")]
    Encode(#[from] serde_json::Error),
    /// The channel broke, closed, or did not answer in time.
    #[error("heartbeat channel broke: {0}")]
    Broken(String),
}

/// Why one heartbeat was not accepted.
#[derive(Debug, thiserror::Error)]
enum PostError {
    /// The heartbeat could not be encoded.
    #[error("cannot encode the heartbeat: {0}")]
    Encode(#[from] serde_json::Error),
    /// The coordinator could not be reached (or the request could not be sent).
    #[error(transparent)]
    Unreachable(#[from] reqwest::Error),
    /// The coordinator answered, but not with success.
    #[error("coordinator answered {status}: {body}")]
    Refused {
        /// Its status.
        status: reqwest::StatusCode,
        /// Its answer.
        body: String,
    },
    /// The coordinator refused a heartbeat sent over the channel.
    #[error("coordinator refused the heartbeat ({code}): {error}")]
    ChannelRefused {
        /// The reason code.
        code: String,
        /// Its message.
        error: String,
    },
}

/// Produces the metrics a heartbeat carries.
pub type MetricsSource = Arc<dyn Fn() -> BTreeMap<String, f64> + Send + Sync>;

/// A node's heartbeat loop.
pub struct HeartbeatSender {
    registry: Arc<dyn ClusterRegistry>,
    client: reqwest::Client,
    /// `http`, or `https` with TLS between nodes.
    scheme: &'static str,
    /// The node's TLS material, for the heartbeat channel's handshake.
    tls: Option<shared::tls::Tls>,
    instance_id: String,
    node_type: NodeType,
    address: NodeAddress,
    interval: Duration,
    metrics: MetricsSource,
    signer: RequestSigner,
    boot_id: String,
    use_channel: bool,
}

/// Where heartbeats go now: the coordinator, and the channel to it if one is open.
#[derive(Default)]
struct Link {
    channel: Option<OpenChannel>,
    /// No channel is tried before this.
    retry_at: Option<tokio::time::Instant>,
}

/// An open channel and what it still owes.
struct OpenChannel {
    channel: Channel,
    /// When the oldest frame no answer has come for since was sent.
    unanswered_since: Option<tokio::time::Instant>,
    /// When the last frame was sent.
    last_sent: Option<tokio::time::Instant>,
    /// Some answer came on it.
    heard_any: bool,
}

/// What an answer on the channel says about the frame just sent.
enum Heard {
    /// A refusal (of this frame or an earlier one).
    Refused(PostError),
    /// An acknowledgement of it (and of every frame before).
    Covers,
    /// An acknowledgement of earlier frames only.
    Earlier,
}

impl OpenChannel {
    /// Takes in `answer`, read after the frame `seq` was sent at `sent_at`.
    fn heard(&mut self, answer: ChannelAnswer, seq: u64, sent_at: tokio::time::Instant) -> Heard {
        self.heard_any = true;
        match answer {
            ChannelAnswer {
                error: Some(error),
                code,
                ..
            } => {
                // The coordinator is reading; the frame it refused will not be acknowledged.
                self.unanswered_since = Some(sent_at);
                Heard::Refused(PostError::ChannelRefused {
                    code: code.unwrap_or_default(),
                    error,
                })
            }
            ChannelAnswer { seq: acked, .. } => {
                debug!(
                    seq = acked,
                    "coordinator acknowledged heartbeats over the channel"
                );
                if acked.is_some_and(|acked| acked >= seq) {
                    self.unanswered_since = None;
                    Heard::Covers
                } else {
                    self.unanswered_since = Some(sent_at);
                    Heard::Earlier
                }
            }
        }
    }
}

/// Makes the kernel close `tcp` when data written on it stays unacknowledged by the peer's
/// host for `limit` (`TCP_USER_TIMEOUT`), instead of retrying for about a quarter of an hour:
/// a heartbeat channel to a host that vanished breaks in that long, and the node falls back
/// and looks the coordinator up again.
fn give_up_unacknowledged_after(tcp: &tokio::net::TcpStream, limit: Duration) -> nix::Result<()> {
    let millis = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX);
    nix::sys::socket::setsockopt(tcp, nix::sys::socket::sockopt::TcpUserTimeout, &millis)
}

/// The next answer on `channel`: `Err` when it broke or closed.
async fn next_answer(channel: &mut Channel) -> Result<ChannelAnswer, ChannelError> {
    loop {
        match channel.next().await {
            Some(Ok(WsMessage::Text(text))) => {
                return serde_json::from_str::<ChannelAnswer>(&text)
                    .map_err(|e| ChannelError::Broken(format!("unreadable answer: {e}")))
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
            Some(Ok(WsMessage::Close(frame))) => {
                return Err(ChannelError::Broken(format!("closed: {frame:?}")))
            }
            Some(Ok(WsMessage::Binary(_))) => {
                return Err(ChannelError::Broken("a binary answer".into()))
            }
            Some(Err(e)) => return Err(ChannelError::Broken(e.to_string())),
            None => return Err(ChannelError::Broken("closed".into())),
        }
    }
}

impl HeartbeatSender {
    /// A sender for the node `instance_id` at `address`, signing with `signer` and calling
    /// over `tls` when given, with a new boot id: one sender per process start.
    ///
    /// # Errors
    /// The system random source failed to make the boot id.
    pub fn new(
        registry: Arc<dyn ClusterRegistry>,
        instance_id: String,
        node_type: NodeType,
        address: NodeAddress,
        interval: Duration,
        metrics: MetricsSource,
        (signer, tls): (RequestSigner, Option<&shared::tls::Tls>),
    ) -> Result<Self, getrandom::Error> {
        let client = shared::tls::http_client(tls)
            .timeout(CHANNEL_ANSWER_TIMEOUT.max(3 * interval))
            .build()
            .unwrap_or_default();
        Ok(HeartbeatSender {
            registry,
            client,
            scheme: shared::tls::scheme(tls),
            tls: tls.cloned(),
            instance_id,
            node_type,
            address,
            interval,
            metrics,
            signer,
            boot_id: new_boot_id()?,
            use_channel: true,
        })
    }

    /// Whether to use the heartbeat channel (the default) or only `POST /heartbeat`.
    #[must_use]
    pub fn with_channel(mut self, use_channel: bool) -> Self {
        self.use_channel = use_channel;
        self
    }

    /// This run's boot id.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// Runs until `shutdown`, then sends a goodbye to the coordinator it last reached.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(shutdown).await })
    }

    async fn run(self, shutdown: CancellationToken) {
        let mut coordinator: Option<NodeAddress> = None;
        let mut seq = 0u64;
        let mut waits = 0u64;
        let mut failures = 0u32;
        let mut link = Link::default();
        // Beats keep their rhythm: the next one is due an interval after the last was due,
        // not an interval after its answer came, so a slow answer does not stretch the gap
        // the coordinator sees by its own length.
        let mut schedule = tokio::time::interval(self.interval.max(Duration::from_millis(1)));
        schedule.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        schedule.tick().await;
        loop {
            if coordinator.is_none() {
                match self.registry.discover_coordinator().await {
                    Ok(Some(found)) => {
                        info!(coordinator = %found.to_mgmt_address(), "found the coordinator; sending heartbeats");
                        coordinator = Some(found);
                        waits = 0;
                    }
                    Ok(None) => {
                        if waits.is_multiple_of(10) {
                            info!(registry = %self.registry.describe(), attempt = waits + 1, "waiting for the coordinator to register");
                        }
                        waits += 1;
                    }
                    Err(e) => {
                        if waits.is_multiple_of(10) {
                            warn!(error = %e, "cannot read the registry to find the coordinator; retrying");
                        }
                        waits += 1;
                    }
                }
            }
            if let Some(target) = coordinator {
                match self.beat(&mut link, target, &mut seq, false).await {
                    Ok(()) => {
                        if failures > 0 {
                            info!(failed = failures, "heartbeats reach the coordinator again");
                        }
                        failures = 0;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(10) {
                            warn!(coordinator = %target.to_mgmt_address(), error = %e, failures, "heartbeat failed");
                        }
                        if failures >= REDISCOVER_AFTER {
                            coordinator = None;
                            link = Link::default();
                        }
                    }
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = schedule.tick() => {}
            }
        }
        if let Some(target) = coordinator {
            let goodbye = self.beat(&mut link, target, &mut seq, true);
            match tokio::time::timeout(GOODBYE_TIMEOUT, goodbye).await {
                Ok(Ok(())) => {
                    info!("told the coordinator we are leaving");
                    if let Some(mut open) = link.channel.take() {
                        // After the goodbye, so the close is not taken for a crash.
                        let _ =
                            tokio::time::timeout(GOODBYE_TIMEOUT, open.channel.close(None)).await;
                    }
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "goodbye not delivered; the coordinator will see us go STALE")
                }
                Err(_) => warn!("goodbye timed out; the coordinator will see us go STALE"),
            }
        }
    }

    /// Sends heartbeat `seq + 1` (a goodbye if `leaving`): over the channel when there is one
    /// or it can be opened, else (or when the channel breaks) by `POST`, with a new `seq`
    /// since the broken frame may have arrived.
    async fn beat(
        &self,
        link: &mut Link,
        target: NodeAddress,
        seq: &mut u64,
        leaving: bool,
    ) -> Result<(), PostError> {
        let now = tokio::time::Instant::now();
        if self.use_channel && link.channel.is_none() && link.retry_at.is_none_or(|at| now >= at) {
            match self.open(target).await {
                Ok(channel) => {
                    info!(coordinator = %target.to_mgmt_address(), "heartbeat channel open");
                    link.channel = Some(OpenChannel {
                        channel,
                        unanswered_since: None,
                        last_sent: None,
                        heard_any: false,
                    });
                    link.retry_at = None;
                }
                Err(e) => {
                    debug!(error = %e, "cannot open the heartbeat channel; posting heartbeats");
                    link.retry_at = Some(now + CHANNEL_RETRY);
                }
            }
        }
        if let Some(open) = link.channel.as_mut() {
            *seq += 1;
            match self.send_frame(open, *seq, leaving).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(refused)) => return Err(refused),
                Err(e) => {
                    warn!(error = %e, "heartbeat channel lost; posting this heartbeat");
                    link.channel = None;
                    link.retry_at = Some(tokio::time::Instant::now() + CHANNEL_RETRY);
                }
            }
        }
        *seq += 1;
        self.post(target, *seq, leaving).await
    }

    /// Opens the channel to `target`: TCP, the TLS handshake when nodes speak TLS (checking
    /// the coordinator's certificate and presenting ours), then the WebSocket upgrade.
    async fn open(&self, target: NodeAddress) -> Result<Channel, ChannelError> {
        let address = target.to_mgmt_address();
        let url = format!("{}://{address}{SPARSE_PATH}", self.ws_scheme());
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(&address)
                .await
                .map_err(|e| ChannelError::Broken(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            if let Err(e) = give_up_unacknowledged_after(&tcp, CHANNEL_TCP_USER_TIMEOUT) {
                // The channel still works; only a vanished host is noticed later.
                debug!(error = %e, "cannot bound the channel's unacknowledged time");
            }
            let socket: dataplane::Socket = match &self.tls {
                Some(tls) => Box::new(
                    tls.connect(target.ip, tcp)
                        .await
                        .map_err(|e| ChannelError::Broken(e.to_string()))?,
                ),
                None => Box::new(tcp),
            };
            tokio_tungstenite::client_async(url, socket)
                .await
                .map(|(channel, _)| channel)
                .map_err(|e| ChannelError::Broken(e.to_string()))
        };
        match tokio::time::timeout(self.answer_timeout(), connect).await {
            Ok(result) => result,
            Err(_) => Err(ChannelError::Broken("timed out opening it".into())),
        }
    }

    /// `wss` over TLS, `ws` without.
    fn ws_scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "wss"
        } else {
            "ws"
        }
    }

    /// Sends one frame, then reads the answers that have come meanwhile without waiting for
    /// more: the channel is answered sparsely ([`crate::wire::channel`]), an answer now and
    /// then acknowledging every frame up to its `seq`. A goodbye, and the first frame on a
    /// channel, wait for their own answer.
    /// `Err` when the channel is no longer usable, including when a frame has waited longer
    /// than [`Self::frame_answer_timeout`] with no answer at all; `Ok(Err)` when the
    /// coordinator refused a heartbeat (this one or an earlier one).
    async fn send_frame(
        &self,
        open: &mut OpenChannel,
        seq: u64,
        leaving: bool,
    ) -> Result<Result<(), PostError>, ChannelError> {
        let body = serde_json::to_vec(&self.heartbeat(seq, leaving))?;
        let signature = self.signer.sign(CHANNEL_METHOD, CHANNEL_PATH, &body);
        // Writing a frame and waiting for an answer that is always sent (the first frame's,
        // the goodbye's) take no longer than opening the channel; only the sparse answers
        // get the longer [`Self::frame_answer_timeout`].
        let timeout = self.answer_timeout();
        let sent_at = tokio::time::Instant::now();
        // This process's own pause (stopped, starved) is not the coordinator's silence.
        if open
            .last_sent
            .is_some_and(|last| sent_at.saturating_duration_since(last) > 2 * self.interval)
        {
            open.unanswered_since = None;
        }
        tokio::time::timeout(
            timeout,
            open.channel
                .send(WsMessage::Text(frame(&signature, &body).into())),
        )
        .await
        .map_err(|_| ChannelError::Broken("could not write a frame in time".into()))?
        .map_err(|e| ChannelError::Broken(e.to_string()))?;
        open.last_sent = Some(sent_at);
        open.unanswered_since.get_or_insert(sent_at);
        let mut refused = None;
        let first = !open.heard_any;
        if leaving || first {
            // Both are always answered: the first so that a channel refused outright says
            // so now, the goodbye so the node leaves only once it is recorded. Answers to
            // earlier frames may come first.
            let deadline = sent_at + timeout;
            loop {
                let answer =
                    match tokio::time::timeout_at(deadline, next_answer(&mut open.channel)).await {
                        Ok(answer) => answer?,
                        Err(_) => {
                            return match refused {
                                Some(e) => Ok(Err(e)),
                                None => Err(ChannelError::Broken("no answer in time".into())),
                            }
                        }
                    };
                match open.heard(answer, seq, sent_at) {
                    // On the first frame, a refusal is of this one.
                    Heard::Refused(e) if first => return Ok(Err(e)),
                    Heard::Refused(e) => refused = Some(e),
                    Heard::Covers => return Ok(Ok(())),
                    Heard::Earlier => {}
                }
            }
        }
        while let Some(answer) = next_answer(&mut open.channel).now_or_never() {
            if let Heard::Refused(e) = open.heard(answer?, seq, sent_at) {
                refused = Some(e);
            }
        }
        if let Some(since) = open.unanswered_since {
            if since.elapsed() > self.frame_answer_timeout() {
                return Err(ChannelError::Broken(format!(
                    "no answer for {:?}",
                    since.elapsed()
                )));
            }
        }
        Ok(refused.map_or(Ok(()), Err))
    }

    /// How long a frame's answer may take before the channel is given up:
    /// [`SPARSE_ANSWER_TIMEOUT`], for a slow answer is not a broken channel. Giving a
    /// channel up closes it, and the coordinator suspects a node whose channel closed at
    /// once (STALE), while a heartbeat that is only slow (the coordinator is behind) is
    /// forgiven there as the coordinator's own stall. A channel that really breaks says so
    /// sooner: an error or a close.
    fn frame_answer_timeout(&self) -> Duration {
        SPARSE_ANSWER_TIMEOUT.max(3 * self.interval)
    }

    /// How long opening the channel or a `POST` may take: [`CHANNEL_ANSWER_TIMEOUT`], three
    /// intervals if longer. With a second, a coordinator that was behind refused every
    /// fallback of a node whose channel had gone.
    fn answer_timeout(&self) -> Duration {
        CHANNEL_ANSWER_TIMEOUT.max(3 * self.interval)
    }

    fn heartbeat(&self, seq: u64, leaving: bool) -> Heartbeat {
        Heartbeat {
            instance_id: self.instance_id.clone(),
            node_type: self.node_type,
            address: self.address,
            boot_id: self.boot_id.clone(),
            seq,
            metrics: (self.metrics)().into(),
            leaving,
        }
    }

    async fn post(&self, target: NodeAddress, seq: u64, leaving: bool) -> Result<(), PostError> {
        let body = serde_json::to_vec(&self.heartbeat(seq, leaving))?;
        let url = format!(
            "{}://{}{HEARTBEAT_PATH}",
            self.scheme,
            target.to_mgmt_address()
        );
        let response = self
            .client
            .post(&url)
            .header("content-type", "application/json")
            .header(HEADER, self.signer.sign("POST", HEARTBEAT_PATH, &body))
            .body(body)
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            debug!(seq, "heartbeat accepted");
            Ok(())
        } else {
            let body = response.text().await.unwrap_or_default();
            Err(PostError::Refused { status, body })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_channel_socket_gives_up_on_a_silent_host_in_ten_seconds() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let before =
            nix::sys::socket::getsockopt(&tcp, nix::sys::socket::sockopt::TcpUserTimeout).unwrap();
        assert_eq!(before, 0, "the kernel's default: no bound");
        give_up_unacknowledged_after(&tcp, CHANNEL_TCP_USER_TIMEOUT).unwrap();
        let after =
            nix::sys::socket::getsockopt(&tcp, nix::sys::socket::sockopt::TcpUserTimeout).unwrap();
        assert_eq!(after, 10_000);
    }
}
