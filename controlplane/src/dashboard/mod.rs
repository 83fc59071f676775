//! The live dashboard (DESIGN §11), served from the coordinator's management port. Routes:
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the dashboard page |
//! | `GET /assets/{file}` | its script, style sheet and icon, compiled into the binary |
//! | `GET /api/cluster` | the coordinator's address and ports, thresholds, whether processes are managed |
//! | `GET,POST /api/control/{*path}` | forwards the colony calls the page makes to the control port: `GET topology`, `POST colony-start`, `GET colony`, `POST colony/run`, `POST colony/pause`, `POST colony/rebalance`, `GET colony/image.png` |
//! | `GET /api/shards/{x}/{y}` | one shard's cells, fetched from the backend that holds it |
//!
//! Everything the page needs comes from this one origin: no CDN, no other host, no CORS.
//! The control calls are forwarded over HTTP rather than answered here, so the page sees the
//! control plane's own answers (status codes, `Idempotency-Key` handling) and this module
//! need not follow the control plane's internals. Only the listed calls are forwarded.
//!
//! The page itself lives in `assets/` as plain HTML, CSS and JavaScript, no build step. It
//! reads state from `/ws`. The colony view changes state (it starts a colony when there
//! is none, and has run/pause buttons), and so does the services view (deployed packages:
//! state, version, node, last health check, with start/stop/restart sent as `/ws`
//! `service_action`); the health view only reads.
//!
//! Who may call what (DESIGN §13, [`crate::operator`]): the page and its assets are open (they
//! hold no cluster data); the `GET`s under `/api` are reads; a forwarded `POST` needs the
//! operator, checked here exactly as the control port checks it, and the caller's
//! `Authorization` goes on with the call, so the forwarder is no way around the check. The
//! page asks for the operator token when a call is refused or it is opened from another host,
//! keeps it in `sessionStorage`, and sends it as a header and as a `/ws` `auth`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use shared::topology::ShardCoord;
use tracing::warn;

use crate::error::ApiError;
use crate::state::MgmtState;

/// How long a forwarded call may take (a colony start inits every shard).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(25);
/// Largest answer forwarded (a rendered colony picture is well under this).
const MAX_FORWARDED: usize = 32 * 1024 * 1024;
/// The control-plane calls the page may make through `/api/control`.
const FORWARDED: [(Method, &str); 7] = [
    (Method::GET, "topology"),
    (Method::POST, "colony-start"),
    (Method::GET, "colony"),
    (Method::POST, "colony/run"),
    (Method::POST, "colony/pause"),
    (Method::POST, "colony/rebalance"),
    (Method::GET, "colony/image.png"),
];

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

#[derive(Clone)]
struct Dashboard {
    state: MgmtState,
    client: reqwest::Client,
    /// `http`, or `https` with TLS between nodes (and on this node's ports).
    scheme: &'static str,
}

/// The dashboard's routes over the coordinator's management state.
pub fn router(state: MgmtState) -> Router {
    let tls = state.colony.as_ref().and_then(|c| c.tls());
    let scheme = shared::tls::scheme(tls);
    let client = shared::tls::http_client(tls)
        .timeout(FORWARD_TIMEOUT)
        .build()
        .unwrap_or_default();
    let guard = state.guard.clone();
    let api = Router::new()
        .route("/api/cluster", get(cluster))
        .route("/api/control/{*path}", get(forward))
        .route("/api/shards/{x}/{y}", get(shard))
        .route_layer(guard.reads())
        // A forwarded POST is checked as the control port checks a direct one.
        .route(
            "/api/control/{*path}",
            post(forward).route_layer(guard.operator()),
        );
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .merge(api)
        .with_state(Dashboard {
            state,
            client,
            scheme,
        })
}

/// `GET /`.
async fn index() -> Response {
    page(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /assets/{file}`.
async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => page(APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => page(STYLE_CSS, "text/css; charset=utf-8"),
        "icon.svg" => page(ICON_SVG, "image/svg+xml"),
        _ => ApiError::NotFound(format!("no asset named {file:?}")).into_response(),
    }
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The files change only with the binary; revalidating keeps an upgraded
            // coordinator from serving a browser yesterday's script.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/cluster`.
async fn cluster(State(d): State<Dashboard>) -> Json<Value> {
    let node = &d.state.node;
    Json(json!({
        "node_id": node.node_id,
        "address": node.address,
        "control": format!("{}://{}", d.scheme, node.address.to_http_address()),
        "mgmt": format!("{}://{}", d.scheme, node.address.to_mgmt_address()),
        "managed_processes": d.state.processes.is_some(),
        "thresholds": d.state.health.as_ref().map(|h| {
            let c = h.config();
            json!({
                "stale_after_ms": c.stale_after.as_millis(),
                "down_after_ms": c.down_after.as_millis(),
            })
        }),
    }))
}

/// `GET|POST /api/control/{*path}`: one of [`FORWARDED`], sent to this coordinator's own
/// control port.
async fn forward(
    State(d): State<Dashboard>,
    method: Method,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !FORWARDED.iter().any(|(m, p)| *m == method && *p == path) {
        return Err(ApiError::NotFound(format!(
            "{method} /{path} is not a call the dashboard forwards; it forwards {}",
            FORWARDED
                .iter()
                .map(|(m, p)| format!("{m} /{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut url = format!(
        "{}://{}/{path}",
        d.scheme,
        d.state.node.address.to_http_address()
    );
    if let Some(q) = query {
        url.push('?');
        url.push_str(&q);
    }
    let mut request = d.client.request(method, &url).body(body);
    for name in [
        header::CONTENT_TYPE,
        header::AUTHORIZATION,
        header::HeaderName::from_static("idempotency-key"),
    ] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value);
        }
    }
    relay(request, &url).await
}

/// `GET /api/shards/{x}/{y}`: the shard's cells, from the backend the topology places it on
/// (with the caller's `Authorization`, for a backend with `--protect-reads`).
async fn shard(
    State(d): State<Dashboard>,
    Path((x, y)): Path<(u32, u32)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let colony = d
        .state
        .colony
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("only the coordinator knows the colony".into()))?;
    let topology = colony
        .topology()
        .ok_or_else(|| ApiError::NotFound("topology not initialized".into()))?;
    let backend = topology
        .backend_of(ShardCoord::new(x, y))
        .ok_or_else(|| ApiError::NotFound(format!("no shard ({x}, {y}) in this colony")))?;
    let url = format!(
        "{}://{}/shards/{x}/{y}",
        d.scheme,
        backend.address.to_http_address()
    );
    let mut request = d.client.get(&url);
    if let Some(credential) = headers.get(header::AUTHORIZATION) {
        request = request.header(header::AUTHORIZATION, credential);
    }
    relay(request, &url).await
}

/// Sends `request` and answers with its status, content type and body.
async fn relay(request: reqwest::RequestBuilder, url: &str) -> Result<Response, ApiError> {
    let answer = request.send().await.map_err(|e| {
        warn!(url, error = %e, "forwarded dashboard call failed");
        ApiError::BadGateway(format!("{url} did not answer: {e}"))
    })?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
    if answer
        .content_length()
        .is_some_and(|n| n > MAX_FORWARDED as u64)
    {
        return Err(ApiError::BadGateway(format!(
            "{url} answered more than {MAX_FORWARDED} bytes"
        )));
    }
    let body = answer
        .bytes()
        .await
        .map_err(|e| ApiError::BadGateway(format!("{url} answer broke off: {e}")))?;
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    if let Some(ct) = content_type {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_uses_only_its_own_assets() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
        ] {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                let hits: Vec<&str> = text
                    .lines()
                    // SVG's namespace name is an identifier, never fetched.
                    .filter(|l| l.contains(needle) && !l.contains("http://www.w3.org/"))
                    .collect();
                assert!(hits.is_empty(), "{name} refers to {needle}: {hits:?}");
            }
        }
        for asset in ["/assets/app.js", "/assets/style.css", "/assets/icon.svg"] {
            assert!(
                INDEX_HTML.contains(asset),
                "index.html does not load {asset}"
            );
        }
    }
}
