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
//! from the same node. When a bound channel closes without a goodbye, its node is suspected
//! at once ([`HealthTracker::suspect`]: STALE now, DOWN still by threshold) — unless the node
//! has opened a newer channel meanwhile.
//!
//! A channel opened with `?answers=sparse` (backends do) is answered as
//! [`crate::wire::channel`] says: refusals, its first heartbeat, goodbyes, and otherwise one
//! answer per [`SPARSE_ANSWER_EVERY`]; without it every frame is answered.
//!
//! Channels have a cap of their own ([`ChannelLimits::max_channels`], sized for 10 000+
//! nodes), apart from `/ws`'s: neither can use up the other's slots.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::extract::{RawQuery, State, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dashmap::DashMap;
use futures::{FutureExt, SinkExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use shared::log_limit::LogLimit;
use shared::signing::{unix_millis, SignatureError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::coordinator::health::node_state::NodeState;
use crate::coordinator::health::tracker::HealthTracker;
use crate::error::ApiError;
use crate::node_auth::NodeAuth;
use crate::state::MgmtState;
use crate::wire::channel::{
    split, Answers, ChannelAnswer, CHANNEL_METHOD, CHANNEL_PATH, SPARSE_ANSWER_EVERY,
};
use crate::wire::heartbeat::{Heartbeat, HeartbeatError};

/// Refusals at the channel cap, at most one line per interval.
static REFUSED_LOG: LogLimit = LogLimit::new(
    "heartbeat_channel_refused",
    shared::log_limit::DEFAULT_INTERVAL,
);

/// Each channel's read buffer. A heartbeat frame is a few hundred bytes (a larger one, up to
/// [`ChannelLimits::max_frame`], takes several reads). tungstenite zero-fills the whole
/// buffer before every read: at its default, 128 KiB, that memset was most of the cost of a
/// frame and 10 000 idle channels held over a GiB; at 4 KiB it was still 3% of the
/// management thread at 10 000 nodes.
const READ_BUFFER: usize = 1024;

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
    shutdown: CancellationToken,
}

/// The channel route's state. The drop guard lives with the router, so when the listener
/// stops and drops it, every channel is closed (upgraded sockets outlive axum's graceful
/// shutdown otherwise).
#[derive(Debug, Clone)]
pub struct ChannelState {
    core: Arc<Core>,
    _alive: Arc<DropGuard>,
}

impl ChannelState {
    /// The channel's share of the management state, under `limits`.
    pub fn new(state: &MgmtState, limits: ChannelLimits) -> Self {
        let shutdown = CancellationToken::new();
        ChannelState {
            core: Arc::new(Core {
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
                shutdown: shutdown.clone(),
            }),
            _alive: Arc::new(shutdown.drop_guard()),
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
/// upgrade.
async fn upgrade(
    State(state): State<ChannelState>,
    RawQuery(query): RawQuery,
    extensions: axum::http::Extensions,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let core = state.core;
    if core.health.is_none() {
        return ApiError::NotFound("heartbeats go to the coordinator".into()).into_response();
    }
    if let Err(refused) = core.auth.require_node(&extensions, CHANNEL_PATH) {
        return refused.into_response();
    }
    let Some(answers) = Answers::from_query(query.as_deref()) else {
        return ApiError::BadRequest("answers= is `every` (the default) or `sparse`".into())
            .into_response();
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(e) => {
            return ApiError::BadRequest(format!(
                "GET {CHANNEL_PATH} is a WebSocket endpoint: {}",
                e.body_text()
            ))
            .into_response()
        }
    };
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
    let tracked = core.tasks.token();
    let max_frame = core.limits.max_frame;
    upgrade
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let _tracked = tracked;
            serve(socket, core, answers, permit).await;
        })
}

/// Which node a channel carries, once a heartbeat on it was accepted.
#[derive(Debug)]
struct Binding {
    node: String,
    boot_id: String,
    /// The last accepted heartbeat was a goodbye.
    left: bool,
}

/// One channel, until it closes, the listener stops, or a stranger misbehaves on it.
async fn serve(
    mut socket: WebSocket,
    core: Arc<Core>,
    answers: Answers,
    _permit: OwnedSemaphorePermit,
) {
    core.open.inc();
    let id = core.next_id.fetch_add(1, Ordering::Relaxed);
    let mut bound: Option<Binding> = None;
    let opened = Instant::now();
    // When this channel last answered an accepted frame (sparse answering only).
    let mut answered: Option<Instant> = None;
    // One wait for shutdown across every frame: a fresh `cancelled()` per frame joined and
    // left the token's waiter list (a mutex) each time.
    let stopping = core.shutdown.clone().cancelled_owned();
    tokio::pin!(stopping);
    // Answers fed to the socket but not yet written: they go out together once no frame is
    // waiting, so frames that arrive together cost one write between them, not one each.
    let mut unflushed = false;
    loop {
        let waiting = if unflushed {
            socket.next().now_or_never()
        } else {
            None
        };
        let message = match waiting {
            Some(message) => message,
            None => {
                if unflushed {
                    if socket.flush().await.is_err() {
                        break;
                    }
                    unflushed = false;
                }
                let deadline = opened + core.limits.first_frame;
                tokio::select! {
                    biased;
                    _ = &mut stopping => {
                        let _ = socket.send(close(close_code::AWAY, "coordinator stopping")).await;
                        break;
                    }
                    _ = tokio::time::sleep_until(deadline), if bound.is_none() => {
                        let _ = socket.send(close(close_code::POLICY, "no accepted heartbeat in time")).await;
                        break;
                    }
                    message = socket.recv() => message,
                }
            }
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                let refusal = refusal(
                    "bad_request",
                    "frames are text: signature, newline, heartbeat".into(),
                );
                if !answer_or_close(&mut socket, bound.is_some(), refusal).await {
                    break;
                }
                continue;
            }
            // A close, an error (reset, oversized frame), or the end of the stream.
            Some(Ok(Message::Close(_)) | Err(_)) | None => break,
        };
        // One clock read per frame: when it was recorded, and when it was answered.
        let now = Instant::now();
        match accept(&core, &text, bound.as_ref(), now) {
            Ok(accepted) => {
                let answer = answers == Answers::Every
                    || accepted.binding.is_some()
                    || accepted.state != NodeState::Active
                    || answered
                        .is_none_or(|at| now.saturating_duration_since(at) >= SPARSE_ANSWER_EVERY);
                match (accepted.binding, bound.as_mut()) {
                    (Some(binding), None) => {
                        core.newest.insert(binding.node.clone(), id);
                        bound = Some(binding);
                    }
                    (Some(binding), Some(old)) => *old = binding,
                    (None, Some(old)) => old.left = accepted.left,
                    (None, None) => {}
                }
                if !answer {
                    continue;
                }
                answered = Some(now);
                let answer = Message::Text(accepted_text(accepted.seq, accepted.state));
                if socket.feed(answer).await.is_err() {
                    break;
                }
                unflushed = true;
            }
            Err(refused) => {
                if !answer_or_close(&mut socket, bound.is_some(), refused).await {
                    break;
                }
            }
        }
    }
    core.open.dec();
    if let Some(binding) = bound {
        let newest = core
            .newest
            .remove_if(&binding.node, |_, newest| *newest == id)
            .is_some();
        if newest && !binding.left {
            if let Some(health) = &core.health {
                health.suspect(&binding.node, &binding.boot_id, Instant::now());
            }
        }
    }
}

/// A frame accepted.
#[derive(Debug)]
struct Accepted {
    /// What the channel is bound to from now on, when that changed (its first heartbeat, or
    /// a new boot of its node).
    binding: Option<Binding>,
    /// The frame was a goodbye.
    left: bool,
    seq: u64,
    /// The node's state after it.
    state: NodeState,
}

/// Checks and records one frame, received at `now`; or the answer refusing it.
fn accept(
    core: &Core,
    text: &str,
    bound: Option<&Binding>,
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
    let heartbeat: Heartbeat = serde_json::from_str(body)
        .map_err(|e| refusal("bad_request", format!("malformed heartbeat: {e}")))?;
    heartbeat
        .validate()
        .map_err(|e| refusal("bad_request", e.to_string()))?;
    if let Some(binding) = bound {
        if binding.node != heartbeat.instance_id {
            core.auth.count_refusal("channel_node");
            return Err(refusal(
                "channel_node",
                format!(
                    "this channel carries {}'s heartbeats, not {}'s",
                    binding.node, heartbeat.instance_id
                ),
            ));
        }
    }
    let (seq, left) = (heartbeat.seq, heartbeat.leaving);
    // A bound channel's next heartbeat of the same run copies nothing; the metrics move
    // into the tracker uncopied.
    let binding = match bound {
        Some(b) if b.boot_id == heartbeat.boot_id => None,
        _ => Some(Binding {
            node: heartbeat.instance_id.clone(),
            boot_id: heartbeat.boot_id.clone(),
            left,
        }),
    };
    let recorded = health.record(heartbeat, now).map_err(|e| {
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
        binding,
        left,
        seq,
        state: recorded.state,
    })
}

/// Sends `answer`; on a channel no heartbeat was accepted on yet, closes it instead (1008).
/// False when the channel is done.
async fn answer_or_close(socket: &mut WebSocket, bound: bool, answer: ChannelAnswer) -> bool {
    let sent = socket.send(Message::Text(text_of(&answer))).await.is_ok();
    if bound {
        return sent;
    }
    let reason = answer.code.as_deref().unwrap_or("refused");
    let _ = socket.send(close(close_code::POLICY, reason)).await;
    false
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
fn accepted_text(seq: u64, state: NodeState) -> Utf8Bytes {
    let mut text = String::with_capacity(48);
    text.push_str(r#"{"seq":"#);
    // Writing to a String cannot fail.
    let _ = write!(text, "{seq}");
    text.push_str(r#","status":""#);
    text.push_str(state.as_str());
    text.push_str(r#""}"#);
    text.into()
}

fn text_of(answer: &ChannelAnswer) -> Utf8Bytes {
    serde_json::to_string(answer)
        .unwrap_or_else(|_| r#"{"error":"unencodable answer","code":"internal"}"#.to_owned())
        .into()
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
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
                    accepted_text(seq, state).as_str(),
                    serde_json::to_string(&answer).unwrap()
                );
            }
        }
    }
}
