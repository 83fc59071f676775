//! The service registry over WebSocket (DESIGN §10), on the coordinator's management port.
//! Routes:
//!
//! | route | answer |
//! |---|---|
//! | `GET /ws` | upgrades to the registry protocol; `?since=N&stream=ID` resumes a stream, `?events=a,b` picks the first subscription |
//!
//! Protocol: requests `{"id","type":"request","action","params"}`, responses
//! `{"id","type":"response","data"|"error":{"code","message"}}`, events
//! `{"type":"event","event","seq","data"}`. The first message of every connection is a
//! `registry_loaded` event with the whole state (or, on a resume, the events missed since
//! `N`). Actions: `list_services`, `get_service`, `list_endpoints`, `service_action`,
//! `deploy_package` ([`deployed`]), `subscribe`, `unsubscribe`, `auth`. Deployed services
//! are listed under `deployed` beside the nodes' `services`. A new
//! connection receives every event type until it unsubscribes.
//!
//! Who may do what (DESIGN §13): the upgrade is judged like any HTTP request
//! ([`crate::operator::Guard::judge`]); a wrong token on it is refused with 401, and a
//! cross-site upgrade is not trusted as the operator even from loopback. Anyone may read and
//! subscribe; `service_action` needs the operator and `deploy_package` the token itself,
//! given on the upgrade (`Authorization: Bearer`) or at any time by an `auth` request
//! (browsers cannot set headers on a WebSocket). With `--protect-reads`, a connection that is
//! not the operator's gets nothing but `unauthorized` until it authenticates. Each connection
//! may make 50 requests a second (bursts of 100; `--ws-rate-limit`, `--ws-rate-burst`), and
//! is answered `rate_limited` beyond; events are never limited.
//!
//! Bad input (malformed JSON, a missing id, an unknown action, wrong params, a binary or
//! oversized message) is answered with an error response; the socket stays open. Only a
//! message over the hard frame limit (which cannot be skipped) closes it, with 1009.
//!
//! Not here: what the events mean ([`crate::coordinator`]) and the dashboard that reads them
//! ([`crate::dashboard`]).

mod connection;
pub mod deployed;
mod hub;
pub mod protocol;
pub mod services;

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

pub use hub::{Hub, Published, Resume, WsLimits};
use protocol::EventSet;

use crate::error::ApiError;
use crate::operator::{Need, Peer};

/// Refusals at the connection cap, at most one line per interval: a reconnect loop makes
/// them at line rate.
static REFUSED_LOG: shared::log_limit::LogLimit =
    shared::log_limit::LogLimit::new("ws_connection_refused", shared::log_limit::DEFAULT_INTERVAL);

/// The answer of the `/ws` handler to one text message on a fresh connection opened by
/// `caller` (subscribed to every event): the fuzz campaign's way in (`crate::fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) async fn answer_one(hub: &Hub, caller: crate::operator::Caller, text: &str) -> String {
    let subscription = std::sync::atomic::AtomicU32::new(EventSet::all().bits());
    let rate = crate::rate_limit::RateLimit::WS_DEFAULT;
    let mut session = connection::WsSession::new(caller, rate);
    connection::answer_text(&hub.core, &subscription, &mut session, text).await
}

/// The `/ws` route over `hub`.
pub fn router(hub: Hub) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(hub)
}

/// Query parameters of `GET /ws`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WsQuery {
    since: Option<String>,
    stream: Option<String>,
    events: Option<String>,
}

impl WsQuery {
    fn resume(&self) -> Result<Option<Resume>, ApiError> {
        let Some(since) = &self.since else {
            return Ok(None);
        };
        let since = since.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "since must be the last event seq received (a whole number), not {since:?}"
            ))
        })?;
        Ok(Some(Resume {
            since,
            stream: self.stream.clone().filter(|s| !s.is_empty()),
        }))
    }

    fn events(&self) -> Result<EventSet, ApiError> {
        match &self.events {
            None => Ok(EventSet::all()),
            Some(list) => EventSet::parse(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
                .map_err(|e| ApiError::BadRequest(format!("events: {e}"))),
        }
    }
}

/// `GET /ws`: judges the caller, checks the query and the connection limit, then upgrades.
async fn upgrade(
    State(hub): State<Hub>,
    Peer(peer): Peer,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let guard = hub.core.state.guard.clone();
    let caller = match guard.judge(&headers, &uri, peer) {
        Ok(caller) => caller,
        Err(denied) => {
            guard.count_refusal("ws", denied);
            return denied.into_response(Need::Read);
        }
    };
    let result = async {
        let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let resume = query.resume()?;
        let events = query.events()?;
        let upgrade = upgrade.map_err(|e| {
            ApiError::BadRequest(format!(
                "GET /ws is a WebSocket endpoint: {}",
                e.body_text()
            ))
        })?;
        let core = hub.core.clone();
        let permit = core.connections.clone().try_acquire_owned().map_err(|_| {
            shared::warn_limited!(
                REFUSED_LOG,
                limit = core.limits.max_connections,
                "ws connection refused: at the limit"
            );
            ApiError::Unavailable(format!(
                "too many WebSocket connections (limit {}); try again later",
                core.limits.max_connections
            ))
        })?;
        core.ensure_pump();
        let limits = core.limits;
        // Counted from here, not from the upgrade: axum runs the socket on a task of its own,
        // and the server waits on this tracker for it after the listener stops.
        let tracked = core.state.tasks.token();
        let mut session = connection::WsSession::new(caller, guard.ws_rate());
        let locked = guard.admit(caller, Need::Read).is_err();
        Ok::<_, ApiError>(
            upgrade
                .max_message_size(limits.max_frame)
                .max_frame_size(limits.max_frame)
                .on_upgrade(move |socket| async move {
                    let _tracked = tracked;
                    let socket = if locked {
                        match connection::unlock(socket, &core, &mut session).await {
                            Some(socket) => socket,
                            None => return,
                        }
                    } else {
                        socket
                    };
                    let attached = core.attach(resume).await;
                    let open = core.state.metrics.ws_connections.clone();
                    open.inc();
                    connection::serve(socket, core, events, attached, permit, session).await;
                    open.dec();
                }),
        )
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests;
