//! `GET /heartbeat/ws`: the persistent heartbeat channel (DESIGN §9, §13; frames in
//! [`crate::wire::channel`]). Backends send their heartbeats here by default, one signed frame
//! each, so a heartbeat costs one frame instead of a connection's worth of HTTP.
//!
//! Every frame is checked like `POST /heartbeat`: the signature (method `CHANNEL`, the channel
//! path) before the body is parsed, then the body, then the tracker's replay and boot-id
//! checks. A refused frame changes nothing, is counted in `colony_auth_refusals_total`, and
//! closes at most its own channel: a channel that has not yet carried an accepted heartbeat
//! is closed (1008) on its first refused frame or after [`ChannelLimits::first_frame`] of
//! silence, so an unauthenticated peer cannot hold a slot; a channel bound to a node only
//! gets the refusal as an answer.
//!
//! The first accepted heartbeat binds a channel to its node and boot; later frames must come
//! from the same node, and are recorded through the node's record held by the binding
//! ([`crate::coordinator::health::tracker::NodeHandle`]), not by finding the node in the
//! tracker's map each time. When a bound channel closes without a goodbye, its node is suspected
//! at once ([`HealthTracker::suspect`]: STALE now, DOWN still by threshold) — unless the node
//! has opened a newer channel meanwhile.
//!
//! A channel opened with `?answers=sparse` (backends do) is answered as
//! [`crate::wire::channel`] says: refusals, its first heartbeat, goodbyes, and otherwise one
//! answer per [`SPARSE_ANSWER_EVERY`]; without it every frame is answered.
//!
//! Channels have a cap of their own ([`ChannelLimits::max_channels`], sized for 10 000+
//! nodes), apart from `/ws`'s: neither can use up the other's slots.
//!
//! The transport is the channel's own, not axum's WebSocket (tungstenite): the HTTP/1.1
//! handshake (`handshake`: the checks and status codes of axum's `WebSocketUpgrade`), then
//! RFC 6455 frames ([`crate::wire::ws_frame`]) over the upgraded stream, read into the
//! thread's scratch buffer and answered in one write per batch. Over plain TCP the socket is
//! taken out of the HTTP server after the handshake and served by the heartbeat channels'
//! own thread (`reactor`); over TLS (or if that thread is not running) the channel is a task
//! on the management thread (`socket`). Any RFC
//! 6455 client (tungstenite, `websocat`, a browser) speaks to it unchanged: pings are
//! answered with pongs, fragmented messages are reassembled, a close is answered with a
//! close, and a broken frame closes the channel with the code RFC 6455 names (1002 a
//! protocol error, 1007 text that is not UTF-8, 1009 a message over
//! [`ChannelLimits::max_frame`]). After the coordinator closes a channel, the peer gets
//! `socket::CLOSE_LINGER` to read why and hang up.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dashmap::DashMap;
use futures::FutureExt;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use shared::log_limit::LogLimit;
use shared::signing::{unix_millis, SignatureError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::coordinator::health::node_state::NodeState;
use crate::coordinator::health::tracker::{BootId, HealthTracker, NodeHandle};
use crate::error::ApiError;
use crate::management::batching;
use crate::node_auth::NodeAuth;
use crate::serve::Handover;
use crate::state::MgmtState;
use crate::wire::channel::{
    split, Answers, ChannelAnswer, CHANNEL_METHOD, CHANNEL_PATH, SPARSE_ANSWER_EVERY,
};
use crate::wire::heartbeat::{Heartbeat, HeartbeatError};
use crate::wire::ws_frame::{self, close_code, Message, Opcode};

mod handshake;
mod reactor;
mod socket;
mod stop;

use socket::{Input, Next, Socket};
use stop::Stop;

/// Refusals at the channel cap, at most one line per interval.
static REFUSED_LOG: LogLimit = LogLimit::new(
    "heartbeat_channel_refused",
    shared::log_limit::DEFAULT_INTERVAL,
);

/// The channel's limits.
#[derive(Debug, Clone, Copy)]
pub struct ChannelLimits {
    /// Channels open at once; more are refused 503 (their nodes fall back to `POST`).
    pub max_channels: usize,
    /// Largest frame: a heartbeat is a few hundred bytes, 64 metrics at most.
    pub max_frame: usize,
    /// How long a new channel may stay open without an accepted heartbeat.
    pub first_frame: Duration,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        ChannelLimits {
            // 10 000 nodes and room for their reconnects; each idle channel is a socket and a
            // few KiB of buffers.
            max_channels: 16_384,
            max_frame: 16 * 1024,
            first_frame: Duration::from_secs(10),
        }
    }
}

/// What the channel route shares between its connections.
#[derive(Debug)]
struct Core {
    health: Option<HealthTracker>,
    auth: NodeAuth,
    received: Counter,
    channel_received: Counter,
    open: Gauge,
    limits: ChannelLimits,
    permits: Arc<Semaphore>,
    /// The newest channel of each node: a close suspects the node only if it is still this.
    newest: DashMap<String, u64>,
    next_id: AtomicU64,
    tasks: TaskTracker,
    /// What every channel on the management thread waits on besides its socket (the
    /// channels' own thread looks at the flag after every turn).
    stop: Stop,
    /// Cancelled with [`Core::stop`]: ends the lingering of closed channels.
    shutdown: CancellationToken,
    /// The channels' own thread, which serves every channel over plain TCP; unset if it
    /// could not start (they are then served on the management thread, as TLS ones are).
    reactor: OnceLock<reactor::Handle>,
    /// The channels served on the management thread, whose turns are batched for them.
    thread_flow: batching::Flow,
    /// Turns lengthened (`colony_mgmt_batched_turns_total`).
    batched: Counter,
}

impl Core {
    fn stop(&self) {
        self.stop.stop();
        self.shutdown.cancel();
        if let Some(reactor) = self.reactor.get() {
            reactor.wake();
        }
    }
}

/// The channel route's state. The drop guard lives with the router, so when the listener
/// stops and drops it, every channel is closed (upgraded sockets outlive axum's graceful
/// shutdown otherwise).
#[derive(Debug, Clone)]
pub struct ChannelState {
    core: Arc<Core>,
    _alive: Arc<Alive>,
}

/// Stops every channel when the router that holds it is dropped.
#[derive(Debug)]
struct Alive(Arc<Core>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl ChannelState {
    /// The channel's share of the management state, under `limits`. Channels that stay on
    /// the management thread (over TLS) count their heartbeats in `thread_flow`, for that
    /// thread's batching; a coordinator's plain channels go to a thread of their own, started
    /// here.
    pub fn new(state: &MgmtState, limits: ChannelLimits, thread_flow: batching::Flow) -> Self {
        let core = Arc::new(Core {
            health: state.health.clone(),
            auth: state.node_auth.clone(),
            received: state.metrics.heartbeats.clone(),
            channel_received: state.metrics.channel_heartbeats.clone(),
            open: state.metrics.heartbeat_channels.clone(),
            limits,
            permits: Arc::new(Semaphore::new(limits.max_channels)),
            newest: DashMap::new(),
            next_id: AtomicU64::new(1),
            tasks: state.tasks.clone(),
            stop: Stop::default(),
            shutdown: CancellationToken::new(),
            reactor: OnceLock::new(),
            thread_flow,
            batched: state.metrics.batched_turns.clone(),
        });
        if core.health.is_some() {
            match reactor::Handle::start(core.clone(), core.tasks.token()) {
                Ok(handle) => {
                    let _ = core.reactor.set(handle);
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "heartbeat channels' thread did not start; they are served on the management thread"
                ),
            }
        }
        ChannelState {
            core: core.clone(),
            _alive: Arc::new(Alive(core)),
        }
    }
}

/// The `/heartbeat/ws` route.
pub fn router(state: ChannelState) -> Router {
    Router::new()
        .route(CHANNEL_PATH, get(upgrade))
        .with_state(state)
}

/// `GET /heartbeat/ws`: anyone may open a channel (every frame is signed), except, over TLS,
/// a caller without a node certificate for its address; the cap is checked before the
/// upgrade. The handshake is [`handshake`]'s; the upgraded connection is handed to the
/// channels' own thread over plain TCP ([`hand_over`]), else served by [`serve`] on a task of
/// its own; either is tracked so shutdown waits for it.
async fn upgrade(State(state): State<ChannelState>, mut request: Request) -> Response {
    let core = state.core;
    if core.health.is_none() {
        return ApiError::NotFound("heartbeats go to the coordinator".into()).into_response();
    }
    if let Err(refused) = core.auth.require_node(request.extensions(), CHANNEL_PATH) {
        return refused.into_response();
    }
    let Some(answers) = Answers::from_query(request.uri().query()) else {
        return ApiError::BadRequest("answers= is `every` (the default) or `sparse`".into())
            .into_response();
    };
    let accept = match handshake::check(request.method(), request.version(), request.headers()) {
        Ok(accept) => accept,
        Err(e) => {
            return ApiError::BadRequest(format!("GET {CHANNEL_PATH} is a WebSocket endpoint: {e}"))
                .into_response()
        }
    };
    if request
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return ApiError::BadRequest(format!(
            "GET {CHANNEL_PATH} is a WebSocket endpoint: the connection cannot be upgraded"
        ))
        .into_response();
    }
    let Ok(permit) = core.permits.clone().try_acquire_owned() else {
        shared::warn_limited!(
            REFUSED_LOG,
            limit = core.limits.max_channels,
            "heartbeat channel refused: at the limit"
        );
        return ApiError::Unavailable(format!(
            "too many heartbeat channels (limit {}); use POST /heartbeat",
            core.limits.max_channels
        ))
        .into_response();
    };
    // Only the TLS listener marks its requests; only plain connections can be handed over.
    let plain = request
        .extensions()
        .get::<crate::serve::TlsPeer>()
        .is_none();
    let handover = request.extensions().get::<Handover>().cloned();
    let upgrading = hyper::upgrade::on(&mut request);
    let tracked = core.tasks.token();
    tokio::spawn(async move {
        let _tracked = tracked;
        let upgraded = match upgrading.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => return tracing::debug!(error = %e, "heartbeat channel upgrade failed"),
        };
        let reactor = core
            .reactor
            .get()
            .filter(|reactor| handover.is_some() && reactor.is_running());
        let channel = Channel::new(core.clone(), answers, reactor.is_none());
        match (reactor, handover) {
            (Some(reactor), Some(handover)) => {
                hand_over(reactor, handover, upgraded, channel, permit)
            }
            _ => serve(upgraded, channel, permit, plain).await,
        }
    });
    handshake::switching(accept)
}

/// The most bytes taken from the upgraded connection before its socket is handed over: what
/// the HTTP server read past the request (frames sent before the `101` arrived) comes first.
/// A client does not send much before its channel opens: a few frames, well under this.
const MAX_EARLY: usize = 64 * 1024;

/// Moves a plain channel's socket to the channels' own thread ([`reactor`]), with whatever
/// the HTTP server already read from it.
fn hand_over<S>(
    reactor: &reactor::Handle,
    handover: Handover,
    mut upgraded: S,
    channel: Channel,
    permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + Unpin,
{
    let mut early = Vec::new();
    let mut chunk = vec![0; socket::SCRATCH];
    while early.len() < MAX_EARLY {
        match tokio::io::AsyncReadExt::read(&mut upgraded, &mut chunk).now_or_never() {
            // The peer already hung up: what it sent before still counts (a goodbye, say),
            // and the channel's thread sees the end of the stream again.
            Some(Ok(0)) | None => break,
            Some(Err(_)) => return,
            Some(Ok(read)) => early.extend_from_slice(&chunk[..read]),
        }
    }
    let Some(detached) = handover.take(upgraded) else {
        tracing::debug!("heartbeat channel could not be handed over; closed");
        return;
    };
    let arrival = reactor::Arrival {
        stream: detached.stream,
        slot: detached.slot,
        early,
        channel,
        permit,
    };
    if reactor.hand(arrival).is_err() {
        tracing::debug!("heartbeat channel arrived as the coordinator stopped; closed");
    }
}

/// Which node a channel carries, once a heartbeat on it was accepted.
///
/// Every frame is checked against it and recorded through it, so it holds what that needs
/// in place, not behind pointers: the node's record ([`NodeHandle`], its id inline) and the
/// boot id. At 10 000 channels beating once a second, a heap copy of either is cold in the
/// cache at every frame, and so is the tracker's map, which the handle skips.
#[derive(Debug)]
struct Binding {
    node: NodeHandle,
    boot_id: BootId,
    /// The last accepted heartbeat was a goodbye.
    left: bool,
}

/// One channel on the management thread, until it closes, the listener stops, or a stranger
/// misbehaves on it.
async fn serve<S>(io: S, mut channel: Channel, _permit: OwnedSemaphorePermit, plain: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut socket = Socket::new(io, channel.core.limits.max_frame, plain);
    let ending = channel.run(&mut socket).await;
    channel.closed();
    if ending == Ending::ClosedByUs {
        socket.linger(&channel.core.shutdown).await;
    }
}

/// Answers held back while more frames are read at once ([`Channel::run`]): past this they
/// are written.
const MAX_HELD_BACK: usize = 16 * 1024;

/// How a channel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The server sent its close first: the peer gets a moment to read it.
    ClosedByUs,
    /// The peer closed (and was answered), the stream ended or failed, or the coordinator
    /// is stopping.
    Done,
}

/// What the next step of a channel's loop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    End(Ending),
}

/// One channel's state.
#[derive(Debug)]
struct Channel {
    core: Arc<Core>,
    id: u64,
    answers: Answers,
    bound: Option<Binding>,
    /// When this channel last answered an accepted frame (sparse answering only).
    answered: Option<Instant>,
    /// Served on the management thread: counted in [`Core::thread_flow`].
    on_mgmt_thread: bool,
    /// [`Channel::closed`] ran.
    closed: bool,
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.closed();
    }
}

impl Channel {
    /// A new channel of `core`'s, counted open until [`Channel::closed`].
    fn new(core: Arc<Core>, answers: Answers, on_mgmt_thread: bool) -> Channel {
        core.open.inc();
        if on_mgmt_thread {
            core.thread_flow.channels.inc();
        }
        Channel {
            id: core.next_id.fetch_add(1, Ordering::Relaxed),
            core,
            answers,
            bound: None,
            answered: None,
            on_mgmt_thread,
            closed: false,
        }
    }

    /// Whether a heartbeat was accepted on the channel.
    fn is_bound(&self) -> bool {
        self.bound.is_some()
    }

    /// The channel is over (the peer left, or it was closed): it no longer counts as open,
    /// and its node is suspected at once unless it said goodbye or opened a newer channel.
    /// Runs once; dropping the channel runs it if nobody did.
    fn closed(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let core = &self.core;
        core.open.dec();
        if self.on_mgmt_thread {
            core.thread_flow.channels.dec();
        }
        let Some(binding) = &self.bound else {
            return;
        };
        let node = binding.node.node_id();
        let newest = core
            .newest
            .remove_if(node, |_, newest| *newest == self.id)
            .is_some();
        if newest && !binding.left {
            if let Some(health) = &core.health {
                health.suspect(node, binding.boot_id.as_str(), Instant::now());
            }
        }
    }

    /// Reads, checks and answers frames until the channel ends. Every frame read together
    /// is answered into one buffer, written once: frames that arrive together cost one
    /// write between them, not one each.
    async fn run<S>(&mut self, socket: &mut Socket<S>) -> Ending
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let core = self.core.clone();
        // One wait for the stop across every frame, registered once.
        let stopping = core.stop.stopped(self.id);
        tokio::pin!(stopping);
        let first_frame = tokio::time::sleep(core.limits.first_frame);
        tokio::pin!(first_frame);
        loop {
            if let Some(ending) = self.on_input(&mut socket.input, &mut socket.output, &mut 0) {
                let _ = socket.flush().await;
                return ending;
            }
            // Frames already waiting are read before anything is answered: a client that
            // writes many at once gets one write back, not one per read buffer (on loopback a
            // write costs as much as handling a frame). Bounded by the answers held back and
            // by tokio's budget, which ends the run of ready reads. On plain TCP a read that
            // did not fill the buffer emptied the socket: nothing is waiting.
            if socket.more_waiting() && socket.output.len() < MAX_HELD_BACK {
                match socket.fill().now_or_never() {
                    Some(Ok(0) | Err(_)) => {
                        let _ = socket.flush().await;
                        return Ending::Done;
                    }
                    Some(Ok(_)) => continue,
                    None => {}
                }
            }
            if socket.flush().await.is_err() {
                return Ending::Done;
            }
            let event = tokio::select! {
                biased;
                _ = &mut stopping => Event::Stopping,
                _ = &mut first_frame, if self.bound.is_none() => Event::Silent,
                read = socket.fill() => Event::Read(read),
            };
            match event {
                Event::Stopping | Event::Silent => {
                    let (code, reason, ending) = if matches!(event, Event::Stopping) {
                        (close_code::AWAY, "coordinator stopping", Ending::Done)
                    } else {
                        let reason = "no accepted heartbeat in time";
                        (close_code::POLICY, reason, Ending::ClosedByUs)
                    };
                    ws_frame::encode_close(&mut socket.output, code, reason);
                    let _ = socket.flush().await;
                    return ending;
                }
                Event::Read(Ok(0) | Err(_)) => return Ending::Done,
                Event::Read(Ok(_)) => {}
            }
        }
    }

    /// Handles every complete frame in `input`, appending the answers to `output` and
    /// counting the messages in `messages`; `Some` when the channel ends (a broken frame is
    /// answered with its close code). Either thread serving channels reads into `input`
    /// and calls this.
    fn on_input(
        &mut self,
        input: &mut Input,
        output: &mut Vec<u8>,
        messages: &mut u64,
    ) -> Option<Ending> {
        loop {
            let flow = match input.next() {
                Ok(Next::Message(message)) => {
                    *messages += 1;
                    self.on_message(message, output)
                }
                Ok(Next::Fragment) => Flow::Continue,
                Ok(Next::NeedMore) => return None,
                Err(e) => {
                    tracing::debug!(error = %e, "heartbeat channel closed: bad frame");
                    ws_frame::encode_close(output, e.close_code(), &e.to_string());
                    Flow::End(Ending::ClosedByUs)
                }
            };
            if let Flow::End(ending) = flow {
                return Some(ending);
            }
        }
    }

    /// Handles one message, appending what answers it to `output`.
    fn on_message(&mut self, message: Message<'_>, output: &mut Vec<u8>) -> Flow {
        match message {
            Message::Text(text) => self.on_text(text, output),
            Message::Binary(_) => {
                let refusal = refusal(
                    "bad_request",
                    "frames are text: signature, newline, heartbeat".into(),
                );
                answer_or_close(output, self.bound.is_some(), &refusal)
            }
            Message::Ping(payload) => {
                ws_frame::encode(output, Opcode::Pong, payload);
                Flow::Continue
            }
            Message::Pong(_) => Flow::Continue,
            Message::Close(frame) => {
                // Answered with its own code, as RFC 6455 §5.5.1 suggests; the peer then
                // closes the connection.
                let code = frame.map_or(close_code::NORMAL, |f| f.code);
                ws_frame::encode_close(output, code, "");
                Flow::End(Ending::Done)
            }
        }
    }

    /// Checks and records one heartbeat frame, appending its answer (if it gets one) to
    /// `output`.
    fn on_text(&mut self, text: &str, output: &mut Vec<u8>) -> Flow {
        // One clock read per frame: when it was recorded, and when it was answered.
        let now = Instant::now();
        let accepted = match accept(&self.core, text, &mut self.bound, now) {
            Ok(accepted) => accepted,
            Err(refused) => return answer_or_close(output, self.bound.is_some(), &refused),
        };
        let answer = self.answers == Answers::Every
            || accepted.rebound
            || accepted.state != NodeState::Active
            || self
                .answered
                .is_none_or(|at| now.saturating_duration_since(at) >= SPARSE_ANSWER_EVERY);
        if let Some(binding) = accepted.bound {
            self.core
                .newest
                .insert(binding.node.node_id().to_owned(), self.id);
            self.bound = Some(binding);
        }
        if self.on_mgmt_thread {
            self.core.thread_flow.heartbeats.inc();
        }
        if answer {
            self.answered = Some(now);
            let text = accepted_text(accepted.seq, accepted.state);
            ws_frame::encode(output, Opcode::Text, text.as_bytes());
        }
        Flow::Continue
    }
}

/// What woke a channel waiting for its peer.
#[derive(Debug)]
enum Event {
    Stopping,
    /// No accepted heartbeat within [`ChannelLimits::first_frame`].
    Silent,
    Read(std::io::Result<usize>),
}

/// A frame accepted.
#[derive(Debug)]
struct Accepted {
    /// What the channel is bound to from now on, when it was not bound yet (its first
    /// accepted heartbeat).
    bound: Option<Binding>,
    /// The frame bound the channel, or came from a new boot of its node.
    rebound: bool,
    seq: u64,
    /// The node's state after it.
    state: NodeState,
}

/// Checks and records one frame, received at `now`; or the answer refusing it. On a bound
/// channel the frame is recorded through the binding's handle, which is kept up to date
/// (with the node's boot, and whether this was a goodbye); an unbound channel gets its
/// binding in the answer.
fn accept(
    core: &Core,
    text: &str,
    bound: &mut Option<Binding>,
    now: Instant,
) -> Result<Accepted, ChannelAnswer> {
    let Some(health) = &core.health else {
        return Err(refusal(
            "not_found",
            "heartbeats go to the coordinator".into(),
        ));
    };
    let signed = (|| {
        let (signature, body) = split(text).ok_or(SignatureError::Missing)?;
        core.auth
            .verifier()
            .check_header(Some(signature.as_bytes()), unix_millis())?
            .verify(CHANNEL_METHOD, CHANNEL_PATH, body.as_bytes())?;
        Ok::<_, SignatureError>(body)
    })();
    let body = signed.map_err(|e| {
        core.auth.count_refusal(e.code());
        tracing::debug!(reason = e.code(), "heartbeat frame refused");
        refusal(e.code(), e.to_string())
    })?;
    let heartbeat = Heartbeat::from_json(body)
        .map_err(|e| refusal("bad_request", format!("malformed heartbeat: {e}")))?;
    heartbeat
        .validate()
        .map_err(|e| refusal("bad_request", e.to_string()))?;
    if let Some(binding) = bound {
        if !binding.node.is_for(&heartbeat.instance_id) {
            core.auth.count_refusal("channel_node");
            return Err(refusal(
                "channel_node",
                format!(
                    "this channel carries {}'s heartbeats, not {}'s",
                    binding.node.node_id(),
                    heartbeat.instance_id
                ),
            ));
        }
    }
    let (seq, left) = (heartbeat.seq, heartbeat.leaving);
    // Validated, so never longer than a boot id may be.
    let boot_id = BootId::new(&heartbeat.boot_id)
        .ok_or_else(|| refusal("bad_request", HeartbeatError::BootId.to_string()))?;
    // The metrics move into the tracker uncopied.
    let recorded = match bound {
        Some(binding) => health
            .record_through(&mut binding.node, heartbeat, now)
            .map(|recorded| {
                let rebound = binding.boot_id != boot_id;
                binding.boot_id = boot_id;
                binding.left = left;
                (recorded, rebound, None)
            }),
        None => health
            .record_and_hold(heartbeat, now)
            .map(|(recorded, node)| {
                let binding = Binding {
                    node,
                    boot_id,
                    left,
                };
                (recorded, true, Some(binding))
            }),
    };
    let (recorded, rebound, bound) = recorded.map_err(|e| {
        let code = match e {
            HeartbeatError::Replayed { .. } | HeartbeatError::RetiredBoot { .. } => {
                core.auth.count_refusal("replay");
                "replay"
            }
            _ => "bad_request",
        };
        refusal(code, e.to_string())
    })?;
    core.received.inc();
    core.channel_received.inc();
    Ok(Accepted {
        bound,
        rebound,
        seq,
        state: recorded.state,
    })
}

/// Answers `answer`; on a channel no heartbeat was accepted on yet, closes it too (1008).
fn answer_or_close(output: &mut Vec<u8>, bound: bool, answer: &ChannelAnswer) -> Flow {
    ws_frame::encode(output, Opcode::Text, text_of(answer).as_bytes());
    if bound {
        return Flow::Continue;
    }
    let reason = answer.code.as_deref().unwrap_or("refused");
    ws_frame::encode_close(output, close_code::POLICY, reason);
    Flow::End(Ending::ClosedByUs)
}

fn refusal(code: &str, error: String) -> ChannelAnswer {
    ChannelAnswer {
        seq: None,
        status: None,
        error: Some(error),
        code: Some(code.to_owned()),
    }
}

/// The answer to an accepted frame, `{"seq":N,"status":"<state>"}`, written directly: it is
/// sent for every heartbeat, and is what serialising a [`ChannelAnswer`] would write.
fn accepted_text(seq: u64, state: NodeState) -> String {
    let mut text = String::with_capacity(48);
    text.push_str(r#"{"seq":"#);
    // Writing to a String cannot fail.
    let _ = write!(text, "{seq}");
    text.push_str(r#","status":""#);
    text.push_str(state.as_str());
    text.push_str(r#""}"#);
    text
}

fn text_of(answer: &ChannelAnswer) -> String {
    serde_json::to_string(answer)
        .unwrap_or_else(|_| r#"{"error":"unencodable answer","code":"internal"}"#.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_answers_are_what_serialising_would_write() {
        for state in [
            NodeState::Active,
            NodeState::Stale,
            NodeState::Down,
            NodeState::Left,
        ] {
            for seq in [0, 1, 42, u64::MAX] {
                let answer = ChannelAnswer {
                    seq: Some(seq),
                    status: Some(state.as_str().to_owned()),
                    error: None,
                    code: None,
                };
                assert_eq!(
                    accepted_text(seq, state),
                    serde_json::to_string(&answer).unwrap()
                );
            }
        }
    }
}
