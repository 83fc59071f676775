//! One `/ws` connection: a reader that answers requests in order, and a writer that sends
//! responses and the subscribed events, each bounded so a stuck client cannot hold memory or
//! stall anyone else.
//!
//! Each connection knows who is on the other end ([`WsSession`]): the operator (by the token
//! on the upgrade or a later `auth` request, or as a trusted loopback client) or anyone.
//! Anyone may read and subscribe; an action that changes state is answered `unauthorized`.
//! With `--protect-reads`, anyone reads nothing until it authenticates ([`unlock`]). Every
//! request, read or not, takes a token from the connection's bucket; pushed events never do.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::deployed;
use super::hub::{Attached, Core, Published};
use super::protocol::{
    events_param, parse_request, response_text, string_param, Action, EventKind, EventSet, Request,
    WsError,
};
use super::services::{self, Verb};
use crate::operator::{Caller, Denied, Guard, Need};
use crate::rate_limit::{RateLimit, TokenBucket};

/// Clients dropped for being too slow, at most one line per interval: anyone can be slow.
static SLOW_LOG: shared::log_limit::LogLimit =
    shared::log_limit::LogLimit::new("ws_client_too_slow", shared::log_limit::DEFAULT_INTERVAL);

/// The metrics label of refusals and rate limits on `/ws`.
const PLANE: &str = "ws";

/// Who is on one connection, and its request budget.
#[derive(Debug)]
pub(crate) struct WsSession {
    /// The operator, or anyone (with the refusal it gets for changing state).
    pub(crate) caller: Caller,
    rate: RateLimit,
    bucket: TokenBucket,
}

impl WsSession {
    /// A connection opened by `caller`, allowed `rate` requests.
    pub(crate) fn new(caller: Caller, rate: RateLimit) -> Self {
        WsSession {
            caller,
            rate,
            bucket: TokenBucket::full(rate, Instant::now()),
        }
    }

    /// Takes a token for one request; the `rate_limited` answer (counted) when there is none.
    fn limit(&mut self, guard: &Guard, text: Option<&str>) -> Option<String> {
        let wait = self.bucket.take(self.rate, Instant::now()).err()?;
        guard.count_rate_limited(PLANE);
        let id = text
            .and_then(|t| parse_request(t).ok())
            .map_or(Value::Null, |r| r.id);
        Some(
            WsError::new(
                id,
                "rate_limited",
                format!(
                    "at most {} requests per second (bursts of {}) per connection; retry in {} ms",
                    self.rate.per_second,
                    self.rate.burst,
                    wait.as_millis().max(1)
                ),
            )
            .to_text(),
        )
    }
}

/// What each action needs of the caller (DESIGN §13): deploying runs code, so it needs the
/// token even from a trusted loopback client.
fn need(action: Action) -> Need {
    match action {
        Action::ServiceAction => Need::Operator,
        Action::DeployPackage => Need::OperatorAlways,
        Action::ListServices
        | Action::GetService
        | Action::ListEndpoints
        | Action::Subscribe
        | Action::Unsubscribe
        | Action::Auth => Need::Read,
    }
}

/// How to authenticate, for the `unauthorized` answers.
const AUTH_HINT: &str = "send {\"id\":…,\"type\":\"request\",\"action\":\"auth\",\"params\":{\"token\":\"<operator token>\"}} first, or open the socket with `Authorization: Bearer <operator token>`";

/// Responses waiting for the writer; the reader waits when it is full.
const RESPONSE_QUEUE: usize = 32;

/// Serves one upgraded socket until either side ends it.
pub(crate) async fn serve(
    socket: WebSocket,
    core: Arc<Core>,
    subscribed: EventSet,
    attached: Attached,
    _permit: OwnedSemaphorePermit,
    mut session: WsSession,
) {
    let (sink, stream) = socket.split();
    let done = core.shutdown.child_token();
    let subscription = Arc::new(AtomicU32::new(subscribed.bits()));
    let (responses, outbox) = mpsc::channel(RESPONSE_QUEUE);
    let writer = tokio::spawn(write_loop(
        sink,
        core.clone(),
        attached,
        subscription.clone(),
        outbox,
        done.clone(),
    ));
    read_loop(
        stream,
        &core,
        &subscription,
        &responses,
        &done,
        &mut session,
    )
    .await;
    drop(responses);
    // The writer sends what the reader queued (a final close, say), then stops.
    if tokio::time::timeout(core.limits.write_timeout, writer)
        .await
        .is_err()
    {
        debug!("ws writer did not finish in time");
    }
    done.cancel();
}

async fn read_loop(
    mut stream: SplitStream<WebSocket>,
    core: &Core,
    subscription: &AtomicU32,
    responses: &mpsc::Sender<Message>,
    done: &CancellationToken,
    session: &mut WsSession,
) {
    let guard = &core.state.guard;
    let mut heard = Instant::now();
    loop {
        let idle = tokio::time::sleep_until(heard + core.limits.idle_timeout);
        let message = tokio::select! {
            biased;
            _ = done.cancelled() => return,
            _ = idle => {
                let _ = responses.send(close(close_code::AWAY, "idle: nothing heard, not even a pong")).await;
                return;
            }
            m = stream.next() => m,
        };
        heard = Instant::now();
        let answer = match message {
            // tungstenite queued the close reply; reading on sends it and then ends.
            Some(Ok(Message::Close(_))) => continue,
            None => {
                done.cancel();
                return;
            }
            Some(Err(e)) => {
                let e = e.into_inner();
                debug!(error = %e, "ws read failed");
                match read_failure(&e, core) {
                    // Say why before closing; the connection cannot go on either way.
                    Some(closing) => {
                        let _ = responses.send(closing).await;
                    }
                    None => done.cancel(),
                }
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => session.limit(guard, None).unwrap_or_else(|| {
                WsError::new(
                    Value::Null,
                    "binary_not_supported",
                    "requests are JSON text messages",
                )
                .to_text()
            }),
            Some(Ok(Message::Text(text))) if text.len() > core.limits.max_message => {
                session.limit(guard, None).unwrap_or_else(|| {
                    WsError::new(
                        Value::Null,
                        "message_too_large",
                        format!(
                            "a request may be at most {} bytes; this one is {}",
                            core.limits.max_message,
                            text.len()
                        ),
                    )
                    .to_text()
                })
            }
            Some(Ok(Message::Text(text))) => answer_text(core, subscription, session, &text).await,
        };
        // Time spent answering (a deploy_package waits for its service to start) is not the
        // client's silence.
        heard = Instant::now();
        if responses.send(Message::Text(answer.into())).await.is_err() {
            return;
        }
    }
}

/// The answer to one text message: its share of the rate limit, then the request it holds.
/// The fuzz campaign (`crate::fuzzing`) answers its inputs through here too.
pub(crate) async fn answer_text(
    core: &Core,
    subscription: &AtomicU32,
    session: &mut WsSession,
    text: &str,
) -> String {
    match session.limit(&core.state.guard, Some(text)) {
        Some(limited) => limited,
        None => match parse_request(text) {
            Ok(request) => handle(core, subscription, request, session).await,
            Err(e) => e.to_text(),
        },
    }
}

/// Answers one request.
async fn handle(
    core: &Core,
    subscription: &AtomicU32,
    request: Request,
    session: &mut WsSession,
) -> String {
    match answer(core, subscription, &request, session).await {
        Ok(data) => response_text(&request.id, &data),
        Err(e) => e.to_text(),
    }
}

async fn answer(
    core: &Core,
    subscription: &AtomicU32,
    request: &Request,
    session: &mut WsSession,
) -> Result<Value, WsError> {
    let state = &core.state;
    let id = || request.id.clone();
    if let Err(denied) = state.guard.admit(session.caller, need(request.action)) {
        state.guard.count_refusal(PLANE, denied);
        return Err(unauthorized(request, denied));
    }
    match request.action {
        Action::Auth => auth(&state.guard, session, request),
        Action::ListServices => Ok(json!({
            "services": services::list(state).await,
            "deployed": deployed::list(state),
            "seq": core.seq(),
        })),
        Action::GetService => {
            let name = string_param(request, "name")?;
            if let Some(service) = services::get(state, name).await {
                return Ok(json!({ "service": service }));
            }
            let service = deployed::get(state, name).ok_or_else(|| {
                WsError::new(id(), "not_found", format!("no service named {name:?}"))
            })?;
            Ok(json!({ "service": service, "deployed": true }))
        }
        Action::ListEndpoints => {
            let mut endpoints: Vec<Value> = services::list_endpoints(state)
                .await
                .into_iter()
                .filter_map(|e| serde_json::to_value(e).ok())
                .collect();
            endpoints.extend(deployed::endpoints(state));
            Ok(json!({ "endpoints": endpoints }))
        }
        Action::ServiceAction => {
            let name = string_param(request, "name")?;
            let verb_name = string_param(request, "action")?;
            let verb = Verb::parse(verb_name).ok_or_else(|| {
                WsError::new(
                    id(),
                    "invalid_params",
                    format!("params.action must be start, stop or restart, not {verb_name:?}"),
                )
            })?;
            info!(
                service = name,
                action = verb_name,
                "service action requested over /ws"
            );
            if let Some(result) = deployed::act(state, request, name, verb).await {
                return result;
            }
            services::act(state, name, verb)
                .await
                .map_err(|e| WsError::new(id(), e.code(), e.to_string()))
        }
        Action::DeployPackage => deployed::deploy(state, request).await,
        Action::Subscribe | Action::Unsubscribe => {
            let kinds = events_param(request)?;
            let mut now = EventSet::none();
            let _ = subscription.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let set = EventSet::from_bits(bits);
                now = if request.action == Action::Subscribe {
                    set.with(kinds)
                } else {
                    set.without(kinds)
                };
                Some(now.bits())
            });
            Ok(json!({ "subscribed": now.names(), "seq": core.seq() }))
        }
    }
}

/// The answer to an action the connection may not make.
fn unauthorized(request: &Request, denied: Denied) -> WsError {
    let action = Action::name(request.action);
    let message = match denied {
        Denied::TokenRequired => format!(
            "{action} needs the operator token, even from this machine: {AUTH_HINT}"
        ),
        Denied::NoOperatorToken => format!(
            "{action} needs the operator, and this node has no operator token configured \
             (COLONY_OPERATOR_TOKEN or --operator-token-file)"
        ),
        _ => format!(
            "{action} needs the operator and this connection is not authenticated ({}): {AUTH_HINT}",
            denied.reason()
        ),
    };
    WsError::new(request.id.clone(), "unauthorized", message)
}

/// `auth`: a right token makes the connection the operator's; a wrong one is refused and
/// changes nothing.
fn auth(guard: &Guard, session: &mut WsSession, request: &Request) -> Result<Value, WsError> {
    let token = match request.params.get("token") {
        Some(Value::String(token)) => token,
        Some(_) => {
            return Err(WsError::new(
                request.id.clone(),
                "invalid_params",
                "params.token must be a string",
            ))
        }
        None => {
            return Err(WsError::new(
                request.id.clone(),
                "invalid_params",
                "params.token is required",
            ))
        }
    };
    match guard.verify_token(token.as_bytes()) {
        Ok(()) => {
            session.caller = Caller::Operator { token: true };
            info!("ws connection authenticated as the operator");
            Ok(json!({ "authenticated": true }))
        }
        Err(denied) => {
            guard.count_refusal(PLANE, denied);
            let message = match denied {
                Denied::NoOperatorToken => "this node has no operator token configured \
                    (COLONY_OPERATOR_TOKEN or --operator-token-file); nothing can authenticate"
                    .to_owned(),
                Denied::EmptyToken => "empty operator token".to_owned(),
                _ => "wrong operator token".to_owned(),
            };
            let still = match session.caller {
                Caller::Operator { .. } => "the connection keeps what it had",
                Caller::Anyone(_) => "the connection is not authenticated",
            };
            Err(WsError::new(
                request.id.clone(),
                "auth_failed",
                format!("{message}; {still}"),
            ))
        }
    }
}

/// With `--protect-reads`, a connection that is not the operator's: says so, then answers
/// every request `unauthorized` until an `auth` succeeds. Returns the socket then, ready for
/// [`serve`]; `None` if it ended first. Nothing of the cluster is sent before.
pub(crate) async fn unlock(
    mut socket: WebSocket,
    core: &Core,
    session: &mut WsSession,
) -> Option<WebSocket> {
    let guard = &core.state.guard;
    let Caller::Anyone(denied) = session.caller else {
        return Some(socket);
    };
    let locked = |id: Value| {
        WsError::new(
            id,
            "unauthorized",
            format!(
                "reads on this node are protected (--protect-reads) and this connection is not \
                 authenticated ({}): {AUTH_HINT}",
                denied.reason()
            ),
        )
        .to_text()
    };
    let timeout = core.limits.write_timeout;
    // Said at once, so a client that only listens (the dashboard) knows why nothing comes.
    if !send(
        &mut socket,
        Message::Text(locked(Value::Null).into()),
        timeout,
    )
    .await
    {
        return None;
    }
    let mut heard = Instant::now();
    loop {
        let idle = tokio::time::sleep_until(heard + core.limits.idle_timeout);
        let message = tokio::select! {
            biased;
            _ = core.shutdown.cancelled() => {
                let _ = send(&mut socket, close(close_code::AWAY, "coordinator shutting down"), timeout).await;
                return None;
            }
            _ = idle => {
                let _ = send(&mut socket, close(close_code::AWAY, "idle: nothing heard, not even a pong"), timeout).await;
                return None;
            }
            m = socket.recv() => m,
        };
        heard = Instant::now();
        let answer = match message {
            None => return None,
            Some(Err(e)) => {
                let e = e.into_inner();
                if let Some(closing) = read_failure(&e, core) {
                    let _ = send(&mut socket, closing, timeout).await;
                }
                return None;
            }
            // tungstenite queued the close reply; reading on sends it and then ends.
            Some(Ok(Message::Close(_) | Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => session.limit(guard, None).unwrap_or_else(|| {
                WsError::new(
                    Value::Null,
                    "binary_not_supported",
                    "requests are JSON text messages",
                )
                .to_text()
            }),
            Some(Ok(Message::Text(text))) if text.len() > core.limits.max_message => {
                session.limit(guard, None).unwrap_or_else(|| {
                    WsError::new(
                        Value::Null,
                        "message_too_large",
                        format!("a request may be at most {} bytes", core.limits.max_message),
                    )
                    .to_text()
                })
            }
            Some(Ok(Message::Text(text))) => match session.limit(guard, Some(&text)) {
                Some(limited) => limited,
                None => match parse_request(&text) {
                    Err(e) => e.to_text(),
                    Ok(request) if request.action == Action::Auth => {
                        match auth(guard, session, &request) {
                            Ok(data) => {
                                let text = response_text(&request.id, &data);
                                return send(&mut socket, Message::Text(text.into()), timeout)
                                    .await
                                    .then_some(socket);
                            }
                            Err(e) => e.to_text(),
                        }
                    }
                    Ok(request) => {
                        guard.count_refusal(PLANE, denied);
                        locked(request.id)
                    }
                },
            },
        };
        if !send(&mut socket, Message::Text(answer.into()), timeout).await {
            return None;
        }
    }
}

/// Sends one message on a socket not yet split, within `timeout`.
async fn send(socket: &mut WebSocket, message: Message, timeout: std::time::Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, socket.send(message)).await,
        Ok(Ok(()))
    )
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    core: Arc<Core>,
    attached: Attached,
    subscription: Arc<AtomicU32>,
    mut outbox: mpsc::Receiver<Message>,
    done: CancellationToken,
) {
    let Attached {
        loaded,
        replay,
        after,
        mut events,
    } = attached;
    let timeout = core.limits.write_timeout;
    // The last sequence number dealt with (sent, or skipped as unsubscribed).
    let mut seen = replay.first().map_or(after, |e| e.seq.saturating_sub(1));
    let first = loaded.into_iter().chain(
        replay
            .iter()
            .filter_map(|e| wanted(e, &mut seen, &subscription)),
    );
    if !write_batch(&mut sink, first.collect(), timeout).await {
        done.cancel();
        return;
    }
    seen = seen.max(after);
    let mut ping = tokio::time::interval_at(
        Instant::now() + core.limits.ping_every,
        core.limits.ping_every,
    );
    loop {
        let message = tokio::select! {
            biased;
            _ = done.cancelled() => {
                if core.shutdown.is_cancelled() {
                    let _ = write(&mut sink, close(close_code::AWAY, "coordinator shutting down"), timeout).await;
                }
                return;
            }
            m = outbox.recv() => match m {
                Some(m) => m,
                // The reader is gone; nothing more will be asked.
                None => return,
            },
            e = events.recv() => match e {
                Ok(event) => {
                    // Events already queued behind this one go out in the same write: in a
                    // burst (thousands of nodes joining) one system call per event per client
                    // kept the management thread from its heartbeats.
                    let mut batch: Vec<Utf8Bytes> = wanted(&event, &mut seen, &subscription).into_iter().collect();
                    let mut missed = None;
                    while batch.len() < WRITE_BATCH {
                        match events.try_recv() {
                            Ok(event) => batch.extend(wanted(&event, &mut seen, &subscription)),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                missed = Some(n);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if !write_batch(&mut sink, batch, timeout).await {
                        done.cancel();
                        return;
                    }
                    match missed {
                        Some(missed) => {
                            too_slow(&mut sink, missed, seen, timeout).await;
                            done.cancel();
                            return;
                        }
                        None => continue,
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    too_slow(&mut sink, missed, seen, timeout).await;
                    done.cancel();
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ping.tick() => Message::Ping(Default::default()),
        };
        let closing = matches!(message, Message::Close(_));
        if !write(&mut sink, message, timeout).await || closing {
            done.cancel();
            return;
        }
    }
}

/// Most events written out together.
const WRITE_BATCH: usize = 64;

/// Drops a client that fell `missed` events behind, telling it where to resume.
async fn too_slow(
    sink: &mut SplitSink<WebSocket, Message>,
    missed: u64,
    seen: u64,
    timeout: std::time::Duration,
) {
    shared::warn_limited!(
        SLOW_LOG,
        missed,
        last_seq = seen,
        "ws client too slow; dropping it"
    );
    let reason = format!("too slow: {missed} events missed; reconnect with ?since={seen}");
    let _ = write(sink, close(close_code::POLICY, &reason), timeout).await;
}

/// Writes `texts` with one flush, within `timeout`; false if the client is gone or too slow.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    texts: Vec<Utf8Bytes>,
    timeout: std::time::Duration,
) -> bool {
    if texts.is_empty() {
        return true;
    }
    let all = async {
        for text in texts {
            sink.feed(Message::Text(text)).await?;
        }
        sink.flush().await
    };
    written(tokio::time::timeout(timeout, all).await, timeout)
}

/// The event's text if this client wants it and has not dealt with it yet; moves `seen`.
fn wanted(event: &Published, seen: &mut u64, subscription: &AtomicU32) -> Option<Utf8Bytes> {
    if event.seq <= *seen {
        return None;
    }
    *seen = event.seq;
    let set = EventSet::from_bits(subscription.load(Ordering::Acquire));
    // registry_loaded is the state itself: a client always needs it.
    (set.contains(event.kind) || event.kind == EventKind::RegistryLoaded)
        .then(|| event.text.clone())
}

async fn write(
    sink: &mut SplitSink<WebSocket, Message>,
    message: Message,
    timeout: std::time::Duration,
) -> bool {
    written(
        tokio::time::timeout(timeout, sink.send(message)).await,
        timeout,
    )
}

/// Whether a write bounded by `timeout` went out; a failure is logged, a timeout warned of
/// (rate-limited), and either way the client is to be dropped.
fn written(
    outcome: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>,
    timeout: std::time::Duration,
) -> bool {
    match outcome {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!(error = %e, "ws write failed");
            false
        }
        Err(_) => {
            shared::warn_limited!(SLOW_LOG, timeout = ?timeout, "ws write timed out; dropping the client");
            false
        }
    }
}

/// The close frame a read failure deserves, if the client can still be told: 1009 for a
/// message over the hard limit (tungstenite will not read past it), 1007 for a text message
/// that is not UTF-8 (RFC 6455 §7.4.1). `None` for a broken connection.
fn read_failure(error: &axum::BoxError, core: &Core) -> Option<Message> {
    use tokio_tungstenite::tungstenite::Error;
    match error.downcast_ref::<Error>() {
        Some(Error::Capacity(_)) => {
            let text = format!("message larger than {} bytes", core.limits.max_frame);
            Some(close(close_code::SIZE, &text))
        }
        Some(Error::Utf8(_)) => Some(close(
            close_code::INVALID,
            "a text message must be valid UTF-8",
        )),
        _ => None,
    }
}

fn close(code: u16, reason: &str) -> Message {
    // A close reason may be at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}
