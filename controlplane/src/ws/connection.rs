//! One `/ws` connection: a reader that answers requests in order, and a writer that sends
//! responses and the subscribed events, each bounded so a stuck client cannot hold memory or
//! stall anyone else.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::hub::{Attached, Core, Published};
use super::protocol::{
    events_param, parse_request, response_text, string_param, Action, EventKind, EventSet, Request,
    WsError,
};
use super::services::{self, Verb};

/// Responses waiting for the writer; the reader waits when it is full.
const RESPONSE_QUEUE: usize = 32;

/// Serves one upgraded socket until either side ends it.
pub(crate) async fn serve(
    socket: WebSocket,
    core: Arc<Core>,
    subscribed: EventSet,
    attached: Attached,
    _permit: OwnedSemaphorePermit,
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
    read_loop(stream, &core, &subscription, &responses, &done).await;
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
) {
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
                let too_big = matches!(
                    e.downcast_ref::<tokio_tungstenite::tungstenite::Error>(),
                    Some(tokio_tungstenite::tungstenite::Error::Capacity(_))
                );
                debug!(error = %e, "ws read failed");
                if too_big {
                    // tungstenite will not read past a message over the hard limit, so the
                    // connection cannot go on; say why before closing.
                    let text = format!("message larger than {} bytes", core.limits.max_frame);
                    let _ = responses.send(close(close_code::SIZE, &text)).await;
                } else {
                    done.cancel();
                }
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(_))) => WsError::new(
                Value::Null,
                "binary_not_supported",
                "requests are JSON text messages",
            )
            .to_text(),
            Some(Ok(Message::Text(text))) if text.len() > core.limits.max_message => WsError::new(
                Value::Null,
                "message_too_large",
                format!(
                    "a request may be at most {} bytes; this one is {}",
                    core.limits.max_message,
                    text.len()
                ),
            )
            .to_text(),
            Some(Ok(Message::Text(text))) => match parse_request(&text) {
                Ok(request) => handle(core, subscription, request).await,
                Err(e) => e.to_text(),
            },
        };
        if responses.send(Message::Text(answer.into())).await.is_err() {
            return;
        }
    }
}

/// Answers one request.
async fn handle(core: &Core, subscription: &AtomicU32, request: Request) -> String {
    match answer(core, subscription, &request).await {
        Ok(data) => response_text(&request.id, &data),
        Err(e) => e.to_text(),
    }
}

async fn answer(
    core: &Core,
    subscription: &AtomicU32,
    request: &Request,
) -> Result<Value, WsError> {
    let state = &core.state;
    let id = || request.id.clone();
    match request.action {
        Action::ListServices => Ok(json!({
            "services": services::list(state).await,
            "seq": core.seq(),
        })),
        Action::GetService => {
            let name = string_param(request, "name")?;
            let service = services::get(state, name)
                .await
                .ok_or_else(|| WsError::new(id(), "not_found", format!("no service named {name:?}")))?;
            Ok(json!({ "service": service }))
        }
        Action::ListEndpoints => Ok(json!({ "endpoints": services::list_endpoints(state).await })),
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
            info!(service = name, action = verb_name, "service action requested over /ws");
            services::act(state, name, verb)
                .await
                .map_err(|e| WsError::new(id(), e.code(), e.to_string()))
        }
        Action::DeployPackage => Err(WsError::new(
            id(),
            "not_supported",
            "deploy_package is not supported: Colony runs only its own `colony backend` processes, started by `colony up` or by hand; there is no package format to deploy yet",
        )),
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
    for text in first.collect::<Vec<_>>() {
        if !write(&mut sink, Message::Text(text), timeout).await {
            done.cancel();
            return;
        }
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
                Ok(event) => match wanted(&event, &mut seen, &subscription) {
                    Some(text) => Message::Text(text),
                    None => continue,
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, last_seq = seen, "ws client too slow; dropping it");
                    let reason = format!("too slow: {missed} events missed; reconnect with ?since={seen}");
                    let _ = write(&mut sink, close(close_code::POLICY, &reason), timeout).await;
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
    match tokio::time::timeout(timeout, sink.send(message)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            debug!(error = %e, "ws write failed");
            false
        }
        Err(_) => {
            warn!(timeout = ?timeout, "ws write timed out; dropping the client");
            false
        }
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
