//! [`Guard`]: one listener's operator check, and [`Gate`], the layer that puts it in front of
//! a route.
//!
//! The check is synchronous (a header parse, at most one MAC, a bucket), so the gate answers
//! a refusal itself without boxing a future, and lets everything else through to the route
//! untouched.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::{Either, Ready};
use serde_json::json;
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::debug;

use super::judge::{self, Presented, Signals, Untrusted};
use super::Access;
use crate::rate_limit::RateLimit;

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A read: anyone, unless `--protect-reads`.
    Read,
    /// The operator; a trusted loopback client counts.
    Operator,
    /// The operator's token, from anywhere, loopback included.
    OperatorAlways,
}

/// Who a request is, for a route to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The operator: by its token (`token: true`) or as a trusted loopback client.
    Operator {
        /// It presented the token (rather than being trusted by its address).
        token: bool,
    },
    /// Anyone: no credential, and no trust. Holds the refusal it gets where the operator is
    /// needed.
    Anyone(Denied),
}

/// Why a request was refused. Each is a `reason` label of `colony_auth_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, and loopback trust does not apply.
    Untrusted(Untrusted),
    /// No token, on a route that needs it even from a trusted loopback client.
    TokenRequired,
    /// This node has no operator token, and the caller is not trusted by its address.
    NoOperatorToken,
    /// A token that is not the operator's.
    WrongToken,
    /// `Authorization: Bearer` with nothing after it.
    EmptyToken,
    /// An `Authorization` header that is not `Bearer <token>`.
    MalformedAuthorization,
}

impl Denied {
    /// The stable machine-readable reason.
    pub fn reason(self) -> &'static str {
        match self {
            Denied::Untrusted(Untrusted::NoLoopbackTrust) => "missing_token",
            Denied::Untrusted(Untrusted::ForeignOrigin) => "foreign_origin",
            Denied::Untrusted(Untrusted::CrossSite) => "cross_site",
            Denied::Untrusted(Untrusted::ForeignHost) => "foreign_host",
            Denied::TokenRequired => "token_required",
            Denied::NoOperatorToken => "no_operator_token",
            Denied::WrongToken => "wrong_token",
            Denied::EmptyToken => "empty_token",
            Denied::MalformedAuthorization => "malformed_authorization",
        }
    }

    /// 403 for a browser sent by another site (it is refused for what it is, not for a
    /// missing credential), 401 for the rest.
    pub fn status(self) -> StatusCode {
        match self {
            Denied::Untrusted(why) if why.is_foreign() => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// What went wrong and what to send, in words; never the token.
    pub fn message(self, need: Need) -> String {
        const SEND: &str = "send `Authorization: Bearer <operator token>` (the token is the \
            node's COLONY_OPERATOR_TOKEN or --operator-token-file; `colony up` writes it to \
            output/operator.token)";
        let what = match need {
            Need::Read => "reads on this node are protected (--protect-reads)",
            Need::Operator => "this call changes cluster state and needs the operator",
            Need::OperatorAlways => "this call needs the operator token, even from this machine",
        };
        match self {
            Denied::Untrusted(Untrusted::NoLoopbackTrust) | Denied::TokenRequired => {
                format!("{what}: {SEND}")
            }
            Denied::Untrusted(Untrusted::ForeignOrigin) => format!(
                "{what}, and this request comes from a web page of another origin: loopback \
                 trust covers local tools and this node's own dashboard only; {SEND}"
            ),
            Denied::Untrusted(Untrusted::CrossSite) => format!(
                "{what}, and the browser says this request comes from another site \
                 (Sec-Fetch-Site: cross-site); {SEND}"
            ),
            Denied::Untrusted(Untrusted::ForeignHost) => format!(
                "{what}, and the Host header does not name this machine by a loopback name \
                 (localhost, 127.x.x.x, [::1]), as a page rebinding its own name would not; \
                 {SEND}"
            ),
            Denied::NoOperatorToken => format!(
                "{what}, and this node has no operator token configured, so nothing but a \
                 local tool on a loopback-only listener can act as the operator: start it \
                 with COLONY_OPERATOR_TOKEN or --operator-token-file"
            ),
            Denied::WrongToken => "wrong operator token".to_owned(),
            Denied::EmptyToken => format!("empty operator token: {SEND}"),
            Denied::MalformedAuthorization => {
                format!("the Authorization header must be `Bearer <operator token>`: {SEND}")
            }
        }
    }

    /// The HTTP answer: `{"error","code"}`, with `WWW-Authenticate` on a 401.
    pub fn into_response(self, need: Need) -> Response {
        let status = self.status();
        let body = Json(json!({ "error": self.message(need), "code": self.reason() }));
        let mut response = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"colony\""),
            );
        }
        response
    }
}

/// One listener's operator check. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Guard {
    access: Access,
    plane: &'static str,
    trusts_loopback: bool,
    dashboard_port: Option<u16>,
}

impl Guard {
    pub(super) fn new(
        access: Access,
        plane: &'static str,
        trusts_loopback: bool,
        dashboard_port: Option<u16>,
    ) -> Self {
        Guard {
            access,
            plane,
            trusts_loopback,
            dashboard_port,
        }
    }

    /// Marks a route "operator (loopback trust allowed)": the token, or a trusted loopback
    /// client. Calls other than `GET`/`HEAD` are rate limited per client address.
    pub fn operator(&self) -> Gate {
        self.gate(Need::Operator)
    }

    /// Marks a route "operator only, always": the token is needed even from loopback.
    /// Calls other than `GET`/`HEAD` are rate limited per client address.
    pub fn operator_always(&self) -> Gate {
        self.gate(Need::OperatorAlways)
    }

    /// Marks a route a read: open to anyone, unless `--protect-reads`.
    pub fn reads(&self) -> Gate {
        self.gate(Need::Read)
    }

    fn gate(&self, need: Need) -> Gate {
        Gate {
            guard: self.clone(),
            need,
        }
    }

    /// The metrics label of this listener.
    pub fn plane(&self) -> &'static str {
        self.plane
    }

    /// True if reads need the operator (`--protect-reads`).
    pub fn protect_reads(&self) -> bool {
        self.access.config().protect_reads
    }

    /// The rate limit of each `/ws` connection.
    pub fn ws_rate(&self) -> RateLimit {
        self.access.config().ws_rate
    }

    /// Who sent a request with these headers and target from `peer` (see [`Peer`]; an
    /// unknown peer is not loopback).
    ///
    /// # Errors
    /// A credential that is wrong, empty or malformed: refused wherever it is sent.
    pub fn judge(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        peer: Option<IpAddr>,
    ) -> Result<Caller, Denied> {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        match judge::presented(authorization) {
            Presented::Bearer(token) => self
                .verify_token(token)
                .map(|()| Caller::Operator { token: true }),
            Presented::Empty => Err(Denied::EmptyToken),
            Presented::Malformed => Err(Denied::MalformedAuthorization),
            Presented::Nothing => {
                let signals = Signals {
                    peer,
                    origin: headers.get(header::ORIGIN).map(HeaderValue::as_bytes),
                    sec_fetch_site: headers.get("sec-fetch-site").map(HeaderValue::as_bytes),
                    host: headers
                        .get(header::HOST)
                        .map(HeaderValue::as_bytes)
                        .or_else(|| uri.authority().map(|a| a.as_str().as_bytes())),
                };
                Ok(
                    match judge::loopback_trust(&signals, self.trusts_loopback, self.dashboard_port)
                    {
                        Ok(()) => Caller::Operator { token: false },
                        Err(Untrusted::NoLoopbackTrust) if self.access.config().token.is_none() => {
                            Caller::Anyone(Denied::NoOperatorToken)
                        }
                        Err(why) => Caller::Anyone(Denied::Untrusted(why)),
                    },
                )
            }
        }
    }

    /// Checks a presented token (a `/ws` `auth`, or a bearer header).
    ///
    /// # Errors
    /// [`Denied::EmptyToken`], [`Denied::NoOperatorToken`] or [`Denied::WrongToken`].
    pub fn verify_token(&self, token: &[u8]) -> Result<(), Denied> {
        if token.is_empty() {
            return Err(Denied::EmptyToken);
        }
        match &self.access.config().token {
            None => Err(Denied::NoOperatorToken),
            Some(operator) if operator.verify(token) => Ok(()),
            Some(_) => Err(Denied::WrongToken),
        }
    }

    /// Whether `caller` may make a call that needs `need`.
    ///
    /// # Errors
    /// The refusal to answer with.
    pub fn admit(&self, caller: Caller, need: Need) -> Result<(), Denied> {
        match (caller, need) {
            (Caller::Operator { token: true }, _) => Ok(()),
            (Caller::Operator { token: false }, Need::OperatorAlways) => Err(Denied::TokenRequired),
            (Caller::Operator { token: false }, _) => Ok(()),
            (Caller::Anyone(_), Need::Read) if !self.protect_reads() => Ok(()),
            (Caller::Anyone(denied), _) => Err(denied),
        }
    }

    /// Counts a refusal on `plane` (this listener's, or `ws`) and logs it at debug level:
    /// anyone can cause these, and the counter is the durable record.
    pub fn count_refusal(&self, plane: &'static str, denied: Denied) {
        self.access.inner.refusals.count(plane, denied.reason());
        debug!(
            plane,
            reason = denied.reason(),
            "operator check refused a request"
        );
    }

    /// Counts a request turned away by a rate limit on `plane`.
    pub fn count_rate_limited(&self, plane: &'static str) {
        self.access.inner.rate_limited.count(plane);
    }

    /// The whole check of one HTTP request for a route that needs `need`: the answer to
    /// refuse it with, or `None` to let it through.
    fn refusal(&self, request: &Request, need: Need) -> Option<Response> {
        let changes_state = !matches!(*request.method(), Method::GET | Method::HEAD);
        if need != Need::Read && changes_state {
            let limiter = &self.access.inner.http_limiter;
            if let Err(wait) = limiter.check(peer(request.extensions()), Instant::now()) {
                self.count_rate_limited(self.plane);
                return Some(rate_limited(limiter.limit(), wait));
            }
        }
        let caller = self.judge(request.headers(), request.uri(), peer(request.extensions()));
        let denied = caller.and_then(|caller| self.admit(caller, need)).err()?;
        self.count_refusal(self.plane, denied);
        Some(denied.into_response(need))
    }
}

/// The peer's address of a request, as an extractor: from axum's `ConnectInfo` (which the
/// server must be started with), `None` when it is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Peer(peer(&parts.extensions)))
    }
}

/// The peer's address, from axum's connection info (or the stand-in tests give routers,
/// which axum's own `ConnectInfo` extractor also falls back to).
fn peer(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .or_else(|| {
            extensions
                .get::<MockConnectInfo<SocketAddr>>()
                .map(|MockConnectInfo(addr)| addr.ip())
        })
}

/// `429` with `Retry-After` (whole seconds, at least one).
fn rate_limited(limit: RateLimit, wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let body = Json(json!({
        "error": format!(
            "rate limited: at most {} state-changing calls per second (bursts of {}) per client \
             address; retry in {} ms",
            limit.per_second,
            limit.burst,
            wait.as_millis().max(1)
        ),
        "code": "rate_limited",
    }));
    let mut response = (StatusCode::TOO_MANY_REQUESTS, body).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// The layer of [`Guard::operator`], [`Guard::operator_always`] and [`Guard::reads`]; apply it
/// with `route_layer` to a route or a router.
#[derive(Debug, Clone)]
pub struct Gate {
    guard: Guard,
    need: Need,
}

impl<S> Layer<S> for Gate {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            inner,
            gate: self.clone(),
        }
    }
}

/// The service of a [`Gate`]: refusals are answered here; everything else goes to the route.
#[derive(Debug, Clone)]
pub struct GateService<S> {
    inner: S,
    gate: Gate,
}

impl<S> Service<Request> for GateService<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.gate.guard.refusal(&request, self.gate.need) {
            None => Either::Right(self.inner.call(request)),
            Some(refusal) => Either::Left(futures::future::ready(Ok(refusal))),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::{get, post};
    use axum::Router;
    use http_body_util::BodyExt;
    use serde_json::Value;
    use shared::operator::OperatorToken;
    use std::sync::Arc;
    use tower::ServiceExt;

    use super::*;
    use crate::metrics::Metrics;
    use crate::operator::OperatorConfig;

    const TOKEN: &str = "the-operator-token-0123";
    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn metrics() -> Metrics {
        Metrics::new(
            dataplane::DataPlane::new(dataplane::DataPlaneConfig::default()),
            None,
        )
    }

    fn config() -> OperatorConfig {
        OperatorConfig {
            token: Some(Arc::new(OperatorToken::new(TOKEN, "test").unwrap())),
            ..OperatorConfig::default()
        }
    }

    /// `GET /read`, `POST /act`, `POST /always` behind `guard`, called from `peer`.
    fn app(guard: &Guard, peer: IpAddr) -> Router {
        Router::new()
            .route("/read", get(|| async { "read" }).route_layer(guard.reads()))
            .route(
                "/act",
                post(|| async { "acted" }).route_layer(guard.operator()),
            )
            .route(
                "/always",
                post(|| async { "audited" }).route_layer(guard.operator_always()),
            )
            .layer(MockConnectInfo(SocketAddr::new(peer, 40000)))
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value, HeaderMap) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, body, headers)
    }

    const CURL: &[(&str, &str)] = &[
        ("host", "localhost:8083"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    const BEARER: &str = "Bearer the-operator-token-0123";

    #[tokio::test]
    async fn local_tools_act_on_a_loopback_listener_and_browsers_of_other_sites_do_not() {
        let metrics = metrics();
        let guard = Access::new(config(), &metrics).guard("control", LOOPBACK, Some(8084));
        let app = app(&guard, LOOPBACK);
        let (status, body, _) = call(&app, "POST", "/act", CURL).await;
        assert_eq!((status, body), (StatusCode::OK, Value::from("acted")));
        let dashboard = [
            ("host", "127.0.0.1:8084"),
            ("origin", "http://127.0.0.1:8084"),
        ];
        assert_eq!(
            call(&app, "POST", "/act", &dashboard).await.0,
            StatusCode::OK
        );

        let attacks: [(&[(&str, &str)], &str); 5] = [
            (
                &[
                    ("host", "evil.example"),
                    ("origin", "http://evil.example"),
                    ("content-type", "text/plain"),
                ],
                "foreign_origin",
            ),
            (
                &[("host", "127.0.0.1:8083"), ("origin", "null")],
                "foreign_origin",
            ),
            (
                &[("host", "localhost:8083"), ("sec-fetch-site", "cross-site")],
                "cross_site",
            ),
            (&[("host", "evil.example:8083")], "foreign_host"),
            (
                &[
                    ("host", "localhost:8083"),
                    ("origin", "http://localhost:3000"),
                ],
                "foreign_origin",
            ),
        ];
        for (headers, reason) in attacks {
            let (status, body, _) = call(&app, "POST", "/act", headers).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}: {body}");
            assert_eq!(body["code"], reason);
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("Authorization: Bearer"),
                "{body}"
            );
        }
        // Reads stay open to them; the token makes them the operator whatever their Host.
        let evil = [("host", "evil.example"), ("origin", "http://evil.example")];
        assert_eq!(call(&app, "GET", "/read", &evil).await.0, StatusCode::OK);
        let with_token = [
            ("host", "evil.example"),
            ("origin", "http://evil.example"),
            ("authorization", BEARER),
        ];
        assert_eq!(
            call(&app, "POST", "/act", &with_token).await.0,
            StatusCode::OK
        );
        assert_eq!(metrics.auth_refusals.get("control", "foreign_origin"), 3);
        assert_eq!(metrics.auth_refusals.get("control", "cross_site"), 1);
        assert_eq!(metrics.auth_refusals.get("control", "foreign_host"), 1);
    }

    #[tokio::test]
    async fn wrong_empty_and_malformed_tokens_are_401_everywhere() {
        let metrics = metrics();
        let guard = Access::new(config(), &metrics).guard("control", LOOPBACK, None);
        let app = app(&guard, LOOPBACK);
        for (authorization, reason) in [
            ("Bearer not-the-token-000000", "wrong_token"),
            ("Bearer ", "empty_token"),
            ("", "empty_token"),
            ("Basic b3A6dG9rZW4=", "malformed_authorization"),
        ] {
            for (method, uri) in [("POST", "/act"), ("GET", "/read"), ("POST", "/always")] {
                let headers = [("host", "localhost:8083"), ("authorization", authorization)];
                let (status, body, response_headers) = call(&app, method, uri, &headers).await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{authorization:?} {uri}: {body}"
                );
                assert_eq!(body["code"], reason);
                assert_eq!(
                    response_headers[header::WWW_AUTHENTICATE],
                    "Bearer realm=\"colony\""
                );
                assert!(!body.to_string().contains(TOKEN));
            }
        }
        assert_eq!(metrics.auth_refusals.get("control", "wrong_token"), 3);
        assert_eq!(metrics.auth_refusals.get("control", "empty_token"), 6);
    }

    #[tokio::test]
    async fn require_token_and_other_binds_trust_no_address() {
        let metrics = metrics();
        let access = Access::new(
            OperatorConfig {
                require_token: true,
                ..config()
            },
            &metrics,
        );
        let required = app(&access.guard("control", LOOPBACK, None), LOOPBACK);
        let open_bind = Access::new(config(), &metrics).guard("mgmt", [0, 0, 0, 0].into(), None);
        let any = app(&open_bind, LOOPBACK);
        let remote = app(
            &Access::new(config(), &metrics).guard("mgmt", LOOPBACK, None),
            [192, 0, 2, 1].into(),
        );
        for app in [&required, &any, &remote] {
            let (status, body, _) = call(app, "POST", "/act", CURL).await;
            assert_eq!(
                (status, &body["code"]),
                (StatusCode::UNAUTHORIZED, &Value::from("missing_token")),
                "{body}"
            );
            let authorized = [("host", "localhost:8083"), ("authorization", BEARER)];
            assert_eq!(
                call(app, "POST", "/act", &authorized).await.0,
                StatusCode::OK
            );
            assert_eq!(call(app, "GET", "/read", CURL).await.0, StatusCode::OK);
        }
    }

    #[tokio::test]
    async fn operator_always_wants_the_token_even_from_trusted_loopback() {
        let guard = Access::new(config(), &metrics()).guard("mgmt", LOOPBACK, None);
        let app = app(&guard, LOOPBACK);
        let (status, body, _) = call(&app, "POST", "/always", CURL).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::UNAUTHORIZED, &Value::from("token_required"))
        );
        let authorized = [("host", "localhost"), ("authorization", BEARER)];
        assert_eq!(
            call(&app, "POST", "/always", &authorized).await.0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn protected_reads_want_the_operator_and_a_node_without_a_token_says_so() {
        let metrics = metrics();
        let access = Access::new(
            OperatorConfig {
                protect_reads: true,
                ..OperatorConfig::default()
            },
            &metrics,
        );
        let local = app(&access.guard("mgmt", LOOPBACK, None), LOOPBACK);
        assert_eq!(call(&local, "GET", "/read", CURL).await.0, StatusCode::OK);
        let remote = app(&access.guard("mgmt", LOOPBACK, None), [192, 0, 2, 1].into());
        let (status, body, _) = call(&remote, "GET", "/read", CURL).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::UNAUTHORIZED, &Value::from("no_operator_token"))
        );
        assert!(
            body["error"].as_str().unwrap().contains("--protect-reads"),
            "{body}"
        );
        let authorized = [("authorization", "Bearer anything-at-all-0000")];
        let (_, body, _) = call(&remote, "GET", "/read", &authorized).await;
        assert_eq!(body["code"], "no_operator_token");
    }

    #[tokio::test]
    async fn state_changing_calls_are_rate_limited_per_address_and_reads_never() {
        let metrics = metrics();
        let access = Access::new(
            OperatorConfig {
                http_rate: RateLimit {
                    per_second: 1,
                    burst: 2,
                },
                ..config()
            },
            &metrics,
        );
        let guard = access.guard("control", LOOPBACK, None);
        let first = app(&guard, LOOPBACK);
        let second = app(&guard, [192, 0, 2, 1].into());
        for _ in 0..2 {
            assert_eq!(call(&first, "POST", "/act", CURL).await.0, StatusCode::OK);
        }
        let (status, body, headers) = call(&first, "POST", "/act", CURL).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["code"], "rate_limited");
        assert_eq!(headers[header::RETRY_AFTER], "1");
        for _ in 0..5 {
            assert_eq!(call(&first, "GET", "/read", CURL).await.0, StatusCode::OK);
        }
        // Another address has its own bucket (and is refused for its credential, not its rate).
        let authorized = [("authorization", BEARER)];
        assert_eq!(
            call(&second, "POST", "/act", &authorized).await.0,
            StatusCode::OK
        );
        assert_eq!(metrics.rate_limited.get("control"), 1);
    }
}
