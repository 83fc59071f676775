//! Node authentication on the HTTP planes (DESIGN §13): [`SignedJson`], the extractor every
//! node-only route takes its body through, and [`NodeAuth`], what it checks with.
//!
//! A request is admitted only with a `Colony-Signature` that [`shared::signing`] accepts. The
//! checks that need no body (header present and well formed, key known, timestamp in the
//! window) run before the body is read; the MAC runs over the raw bytes before they are
//! parsed. A refusal answers 401 `{"error":"…","code":"<reason>"}`, is counted in
//! `colony_auth_refusals_total{plane,reason}`, and reaches no handler, so it changes nothing.
//!
//! This module does not decide which routes are node-only: a route is, by taking its body as
//! [`SignedJson`]. Whether the operator may call a route is a separate check.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRef, FromRequest, OriginalUri, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;
use shared::signing::{unix_millis, SignatureError, SignatureVerifier, HEADER};

use crate::serve::TlsPeer;

use crate::error::{ApiError, ApiJson};
use crate::metrics::AuthRefusals;

/// What a node-only route checks signatures with, and where it counts refusals. Cheap to
/// clone (an `Arc` and a counter handle).
#[derive(Debug, Clone)]
pub struct NodeAuth {
    verifier: Arc<SignatureVerifier>,
    refusals: AuthRefusals,
    plane: &'static str,
}

impl NodeAuth {
    /// Checks with `verifier`, counting refusals in `refusals` under `plane` (`control` or
    /// `mgmt`).
    pub fn new(verifier: SignatureVerifier, refusals: AuthRefusals, plane: &'static str) -> Self {
        NodeAuth {
            verifier: Arc::new(verifier),
            refusals,
            plane,
        }
    }

    /// The verifier.
    pub fn verifier(&self) -> &SignatureVerifier {
        &self.verifier
    }

    /// Counts a refusal decided after the signature passed (a replayed heartbeat, a refused
    /// init token), so every refusal of a node call lands in the same counter.
    pub fn count_refusal(&self, reason: &'static str) {
        self.refusals.count(self.plane, reason);
    }

    /// How many refusals for `reason` were counted on this plane.
    pub fn refusals(&self, reason: &'static str) -> u64 {
        self.refusals.get(self.plane, reason)
    }

    /// Refuses, as `not_a_node_certificate` (counted), a caller whose TLS connection showed
    /// no node certificate for its address: over TLS the signature alone is not enough, the
    /// secret may have leaked and the node key is per host (DESIGN §13). Plaintext callers
    /// carry no [`TlsPeer`] and pass.
    ///
    /// # Errors
    /// [`NodeAuthRejection::NotANode`].
    pub fn require_node(
        &self,
        extensions: &axum::http::Extensions,
        path: &str,
    ) -> Result<(), NodeAuthRejection> {
        if let Some(TlsPeer { is_node: false }) = extensions.get::<TlsPeer>() {
            self.count_refusal(NOT_A_NODE);
            tracing::debug!(
                plane = self.plane,
                path,
                reason = NOT_A_NODE,
                "node call refused"
            );
            return Err(NodeAuthRejection::NotANode);
        }
        Ok(())
    }

    fn refuse(&self, error: SignatureError, path: &str) -> NodeAuthRejection {
        self.count_refusal(error.code());
        // Debug, not warn: anyone can make these, and the counter is the durable record.
        tracing::debug!(
            plane = self.plane,
            path,
            reason = error.code(),
            "node call refused"
        );
        NodeAuthRejection::Signature(error)
    }
}

/// Why [`SignedJson`] refused a request.
#[derive(Debug, thiserror::Error)]
pub enum NodeAuthRejection {
    /// The signature is missing or wrong: 401.
    #[error(transparent)]
    Signature(SignatureError),
    /// Over TLS, the caller showed no node certificate for its address: 401
    /// `not_a_node_certificate`, whatever it signed.
    #[error("node calls need a node certificate from the cluster CA naming the caller's address")]
    NotANode,
    /// The signature is right but the body is not (unreadable, too large, not JSON, wrong
    /// shape): the same answers as [`ApiJson`]'s.
    #[error(transparent)]
    Body(ApiError),
}

impl IntoResponse for NodeAuthRejection {
    fn into_response(self) -> Response {
        match self {
            NodeAuthRejection::Signature(e) => (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": e.to_string(), "code": e.code() })),
            )
                .into_response(),
            NodeAuthRejection::NotANode => (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": self.to_string(), "code": NOT_A_NODE })),
            )
                .into_response(),
            NodeAuthRejection::Body(e) => e.into_response(),
        }
    }
}

/// The refusal reason of a node call over TLS without a node certificate.
pub const NOT_A_NODE: &str = "not_a_node_certificate";

/// A JSON body from a request signed by a node (and, over TLS, sent with a node
/// certificate). Refusals answer as [`NodeAuthRejection`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SignedJson<T>(pub T);

impl<S, T> FromRequest<S> for SignedJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
    NodeAuth: FromRef<S>,
{
    type Rejection = NodeAuthRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let auth = NodeAuth::from_ref(state);
        // The path as the client sent it, even under a nested router.
        let uri = req
            .extensions()
            .get::<OriginalUri>()
            .map_or_else(|| req.uri().clone(), |o| o.0.clone());
        let path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
        auth.require_node(req.extensions(), path)?;
        let pending = match single_header(req.headers()) {
            Ok(value) => auth.verifier.check_header(value, unix_millis()),
            Err(e) => Err(e),
        }
        .map_err(|e| auth.refuse(e, path))?;
        let method = req.method().clone();
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        // Bytes honours the route's body limit; a body over it is a 413, as for any route.
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| NodeAuthRejection::Body(JsonRejection::from(e).into()))?;
        pending
            .verify(method.as_str(), path, &bytes)
            .map_err(|e| auth.refuse(e, path))?;
        // Parsed exactly as an unsigned JSON body would be, so the answers to a bad body do
        // not depend on how it was authenticated. `Bytes` is shared, not copied.
        let mut signed = Request::new(Body::from(bytes));
        if let Some(value) = content_type {
            signed.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        let ApiJson(value) = ApiJson::from_request(signed, state)
            .await
            .map_err(NodeAuthRejection::Body)?;
        Ok(SignedJson(value))
    }
}

/// The one `Colony-Signature` value; two are malformed, since a proxy or client that adds a
/// second one leaves it unclear which was signed.
pub(crate) fn single_header(headers: &HeaderMap) -> Result<Option<&[u8]>, SignatureError> {
    let mut values = headers.get_all(HEADER).iter();
    let first = values.next().map(|v| v.as_bytes());
    if values.next().is_some() {
        return Err(SignatureError::Malformed);
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use axum::routing::post;
    use axum::Router;
    use http_body_util::BodyExt;
    use serde_json::Value;
    use shared::secret::ClusterSecret;
    use shared::signing::RequestSigner;
    use tower::ServiceExt;

    use super::*;

    #[derive(Clone)]
    struct TestState {
        auth: NodeAuth,
        calls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl FromRef<TestState> for NodeAuth {
        fn from_ref(state: &TestState) -> NodeAuth {
            state.auth.clone()
        }
    }

    async fn handler(
        axum::extract::State(state): axum::extract::State<TestState>,
        SignedJson(value): SignedJson<Value>,
    ) -> Json<Value> {
        state
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Json(value)
    }

    fn secret(text: &str) -> ClusterSecret {
        ClusterSecret::from_env_value(text).unwrap()
    }

    fn app() -> (Router, TestState, RequestSigner) {
        let s = secret("router-test-secret-0123456789");
        let state = TestState {
            auth: NodeAuth::new(SignatureVerifier::new(&s), AuthRefusals::default(), "mgmt"),
            calls: Arc::default(),
        };
        let app = Router::new()
            .route("/signed", post(handler))
            .nest("/nested", Router::new().route("/signed", post(handler)))
            .layer(axum::extract::DefaultBodyLimit::max(1024))
            .with_state(state.clone());
        (app, state, RequestSigner::new(&s))
    }

    async fn send(
        app: &Router,
        uri: &str,
        signatures: &[String],
        content_type: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut req = Request::post(uri);
        for s in signatures {
            req = req.header(HEADER, s);
        }
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    const JSON: Option<&str> = Some("application/json");

    #[tokio::test]
    async fn a_signed_body_reaches_the_handler() {
        let (app, state, signer) = app();
        let body = r#"{"a":1}"#;
        for uri in ["/signed", "/nested/signed"] {
            let sig = signer.sign("POST", uri, body.as_bytes());
            let (status, answer) = send(&app, uri, &[sig], JSON, body).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {answer}");
            assert_eq!(answer, json!({"a": 1}));
        }
        assert_eq!(state.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refusals_are_401_with_a_reason_counted_and_never_reach_the_handler() {
        let (app, state, signer) = app();
        let body = r#"{"a":1}"#;
        let good = signer.sign("POST", "/signed", body.as_bytes());
        let stranger = RequestSigner::new(&secret("someone-elses-secret-0123"));
        let old = signer.sign_at(
            "POST",
            "/signed",
            body.as_bytes(),
            unix_millis() - 3_600_000,
        );
        let cases: Vec<(Vec<String>, &str, &str)> = vec![
            (vec![], body, "missing"),
            (vec![good[..good.len() - 4].to_owned()], body, "malformed"),
            (vec![good.clone(), good.clone()], body, "malformed"),
            (
                vec![stranger.sign("POST", "/signed", body.as_bytes())],
                body,
                "unknown_key",
            ),
            (vec![old], body, "bad_timestamp"),
            (vec![good.clone()], r#"{"a":2}"#, "bad_mac"),
            (
                vec![signer.sign("POST", "/other", body.as_bytes())],
                body,
                "bad_mac",
            ),
        ];
        for (signatures, body, reason) in cases {
            let (status, answer) = send(&app, "/signed", &signatures, JSON, body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{reason}: {answer}");
            assert_eq!(answer["code"], reason);
            assert!(answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("Colony-Signature")));
        }
        assert_eq!(state.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
        let refusals = &state.auth.refusals;
        assert_eq!(refusals.get("mgmt", "missing"), 1);
        assert_eq!(refusals.get("mgmt", "malformed"), 2);
        assert_eq!(refusals.get("mgmt", "unknown_key"), 1);
        assert_eq!(refusals.get("mgmt", "bad_timestamp"), 1);
        assert_eq!(refusals.get("mgmt", "bad_mac"), 2);
    }

    #[tokio::test]
    async fn a_signed_but_bad_body_gets_the_usual_answers() {
        let (app, state, signer) = app();
        let sign = |body: &str| vec![signer.sign("POST", "/signed", body.as_bytes())];
        let (status, answer) = send(&app, "/signed", &sign("{nope"), JSON, "{nope").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let (status, _) = send(&app, "/signed", &sign("{}"), None, "{}").await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
        let (status, _) = send(&app, "/signed", &sign(&big), JSON, &big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let (status, _) = send(
            &app,
            "/signed",
            &sign("{}"),
            Some("application/json; charset=utf-8"),
            "{}",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(state.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(state.auth.refusals.get("mgmt", "bad_mac"), 0);
    }
}
