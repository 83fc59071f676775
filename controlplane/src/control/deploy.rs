//! A backend's end of a forwarded deployment (DESIGN §16):
//!
//! | route | who | answer |
//! |---|---|---|
//! | `PUT /deploy/{file}?activate=bool` | the coordinator (a signed node call) | installs and starts the package, streaming its steps as NDJSON ([`crate::deploy::forward`]) |
//! | `GET /deploy/services` | the coordinator (a signed node call) | `{"services":[…]}`: every service deployed here, with its state and last health check |
//! | `POST /deploy/services/{name}/{action}` | the coordinator (a signed node call) | `start`, `stop` or `restart` one: `{"service":{…}}`, or `{"error","code"}` |
//!
//! The signature is checked before a byte of the body is read; the body is streamed to disk
//! under the package limit and its SHA-256 compared with the signed digest before anything
//! is installed. The service list is signed too although it changes nothing: it names
//! install directories and pids, which are the node's business. Merged after
//! [`crate::http::harden`]: it brings its own timeout, which a start (up to the start
//! timeout) or a stop (up to the stop grace, twice) needs.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use shared::signing::unix_millis;
use tokio::sync::mpsc;

use crate::deploy::deployer::{Deployer, UploadLimits};
use crate::deploy::forward::{Line, RemoteProgress, ServicesAnswer, DIGEST_HEADER};
use crate::deploy::lifecycle::DeployEvent;
use crate::deploy::package::PackageFile;
use crate::error::ApiError;
use crate::node_auth::{single_header, NodeAuth, NodeAuthRejection};
use crate::ws::services::Verb;

#[derive(Debug, Clone)]
struct DeployState {
    deployer: Deployer,
    auth: NodeAuth,
    limits: UploadLimits,
    node: String,
}

/// `PUT /deploy/{file}` and the service routes for node `node`. Merge it after
/// [`crate::http::harden`].
pub fn router(deployer: Deployer, auth: NodeAuth, limits: UploadLimits, node: String) -> Router {
    let routes = Router::new()
        .route("/deploy/{file}", put(receive))
        .route("/deploy/services", get(services_list))
        .route("/deploy/services/{name}/{action}", post(service_action));
    crate::upload::streamed(routes, limits.timeout).with_state(DeployState {
        deployer,
        auth,
        limits,
        node,
    })
}

async fn receive(
    State(state): State<DeployState>,
    Path(file): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Body,
) -> Result<Response, Response> {
    // The digest stands for the body in the signature, so it is checked as sent: a request
    // without a valid signature is refused (401) whatever its digest looks like.
    let sent = headers
        .get(DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    check_signed(
        &state.auth,
        (&headers, &extensions),
        "PUT",
        &uri,
        sent.as_bytes(),
    )
    .map_err(IntoResponse::into_response)?;
    if sent.len() != 64 || !sent.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!(
            "{DIGEST_HEADER} must be the body's hex SHA-256"
        ))
        .into_response());
    }
    let digest = sent.to_ascii_lowercase();
    let activate = uri.query().is_some_and(|q| q.contains("activate=true"));
    let file = PackageFile::parse(&file)
        .map_err(|e| ApiError::BadRequest(e.to_string()).into_response())?;
    crate::upload::receive(
        body,
        &state.deployer.package_path(&file),
        state.limits.max_package,
        Some(&digest),
    )
    .await
    .map_err(IntoResponse::into_response)?;
    Ok(stream_deploy(state, file, activate))
}

/// Refuses the request unless it carries a node's signature of `method`, its path with its
/// query as sent, and `body` (for a package, the digest that stands for it).
fn check_signed(
    auth: &NodeAuth,
    (headers, extensions): (&HeaderMap, &axum::http::Extensions),
    method: &str,
    uri: &axum::http::Uri,
    body: &[u8],
) -> Result<(), NodeAuthRejection> {
    let path = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    auth.require_node(extensions, path)?;
    let refuse = |e: shared::signing::SignatureError| {
        auth.count_refusal(e.code());
        NodeAuthRejection::Signature(e)
    };
    single_header(headers)
        .and_then(|value| auth.verifier().check_header(value, unix_millis()))
        .and_then(|pending| pending.verify(method, path, body))
        .map_err(refuse)
}

async fn services_list(
    State(state): State<DeployState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> Result<Json<ServicesAnswer>, Response> {
    check_signed(&state.auth, (&headers, &extensions), "GET", &uri, b"")
        .map_err(IntoResponse::into_response)?;
    Ok(Json(ServicesAnswer::List {
        services: state.deployer.services().list(),
    }))
}

async fn service_action(
    State(state): State<DeployState>,
    Path((name, action)): Path<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Result<Json<ServicesAnswer>, Response> {
    check_signed(&state.auth, (&headers, &extensions), "POST", &uri, &body)
        .map_err(IntoResponse::into_response)?;
    let refuse = |status: StatusCode, code: &str, error: String| {
        let answer = ServicesAnswer::Error {
            error,
            code: code.to_owned(),
        };
        (status, Json(answer)).into_response()
    };
    let Some(verb) = Verb::parse(&action) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_params",
            format!("the action must be start, stop or restart, not {action:?}"),
        ));
    };
    tracing::info!(service = %name, action = %action, "service action from the coordinator");
    let services = state.deployer.services();
    let result = match verb {
        Verb::Start => services.start(&name).await,
        Verb::Stop => services.stop(&name).await,
        Verb::Restart => services.restart(&name).await,
    };
    match result {
        Ok(entry) => Ok(Json(ServicesAnswer::One {
            service: Box::new(entry),
        })),
        Err(e) => {
            let code = crate::deploy::deployer::error_code(&e);
            let status = match code {
                "not_found" => StatusCode::NOT_FOUND,
                "deploy_failed" => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            Err(refuse(status, code, e.to_string()))
        }
    }
}

/// Deploys, answering each step as a line as it happens, then the result.
fn stream_deploy(state: DeployState, file: PackageFile, activate: bool) -> Response {
    let (lines, rx) = mpsc::channel::<Bytes>(64);
    let mut events = state.deployer.services().subscribe();
    // Not cancelled if the coordinator hangs up: a deployment half done is worse than one
    // finished that nobody watched.
    tokio::spawn(async move {
        let send = |line: Line| {
            let lines = lines.clone();
            async move {
                let mut text = serde_json::to_vec(&line).unwrap_or_default();
                text.push(b'\n');
                let _ = lines.send(Bytes::from(text)).await;
            }
        };
        let deploy = state.deployer.deploy(&file, &state.node, activate);
        tokio::pin!(deploy);
        let result = loop {
            tokio::select! {
                result = &mut deploy => break result,
                event = events.recv() => {
                    if let Ok(DeployEvent::Progress(p)) = event {
                        if p.package == file.as_str() && p.step != "failed" {
                            send(Line::Progress(RemoteProgress::from(&p))).await;
                        }
                    }
                }
            }
        };
        while let Ok(event) = events.try_recv() {
            if let DeployEvent::Progress(p) = event {
                if p.package == file.as_str() && p.step != "failed" {
                    send(Line::Progress(RemoteProgress::from(&p))).await;
                }
            }
        }
        let last = match result {
            Ok(entry) => Line::Service(Box::new(entry)),
            Err(e) => Line::Error {
                code: crate::deploy::deployer::error_code(&e).to_owned(),
                message: e.to_string(),
            },
        };
        send(last).await;
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        StatusCode::OK,
        [("content-type", "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::Request;
    use serde_json::Value;
    use shared::secret::ClusterSecret;
    use shared::signing::{RequestSigner, SignatureVerifier, HEADER};

    use super::*;
    use crate::deploy::install::Installer;
    use crate::deploy::lifecycle::{RunAs, Services, ServicesConfig};

    fn secret(text: &str) -> ClusterSecret {
        ClusterSecret::from_env_value(text).unwrap()
    }

    /// A backend's deploy routes over an empty deploy root, and its node auth.
    fn backend(dir: &tempfile::TempDir) -> (Router, NodeAuth) {
        let services = Services::open(ServicesConfig {
            node: "b1".to_owned(),
            host: "127.0.0.1".to_owned(),
            state_dir: dir.path().join("state"),
            run_as: RunAs::Current,
            start_timeout: Duration::from_secs(5),
            stop_grace: Duration::from_secs(1),
        })
        .unwrap();
        let deployer = Deployer::new(
            Installer::new(dir.path().join("opt"), Default::default()),
            services,
        );
        let auth = NodeAuth::new(
            SignatureVerifier::new(&secret("deploy-routes-secret-0123")),
            crate::metrics::AuthRefusals::default(),
            "control",
        );
        let app = router(
            deployer,
            auth.clone(),
            UploadLimits::default(),
            "b1".to_owned(),
        );
        (app, auth)
    }

    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        signature: Option<String>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(signature) = signature {
            request = request.header(HEADER, signature);
        }
        crate::test_http::answer(app, request.body(Body::empty()).unwrap()).await
    }

    #[tokio::test]
    async fn the_service_routes_answer_only_a_node_and_say_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let (app, auth) = backend(&dir);
        let node = RequestSigner::new(&secret("deploy-routes-secret-0123"));
        let stranger = RequestSigner::new(&secret("not-the-cluster-secret-01"));
        let list = "/deploy/services";
        let stop = "/deploy/services/web/stop";
        for (method, path, signature, reason) in [
            ("GET", list, None, "missing"),
            (
                "GET",
                list,
                Some(stranger.sign("GET", list, b"")),
                "unknown_key",
            ),
            // Signed for another route: the path is part of what is signed.
            ("GET", list, Some(node.sign("GET", stop, b"")), "bad_mac"),
            ("POST", stop, None, "missing"),
            ("POST", stop, Some(node.sign("POST", list, b"")), "bad_mac"),
        ] {
            let before = auth.refusals(reason);
            let (status, answer) = call(&app, method, path, signature).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path}: {answer}"
            );
            assert_eq!(answer["code"], reason);
            assert_eq!(auth.refusals(reason), before + 1);
        }

        let (status, answer) = call(&app, "GET", list, Some(node.sign("GET", list, b""))).await;
        assert_eq!(
            (status, answer),
            (StatusCode::OK, serde_json::json!({"services": []}))
        );
        let (status, answer) = call(&app, "POST", stop, Some(node.sign("POST", stop, b""))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
        assert_eq!(answer["code"], "not_found");
        let explode = "/deploy/services/web/explode";
        let (status, answer) =
            call(&app, "POST", explode, Some(node.sign("POST", explode, b""))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["code"], "invalid_params");
    }
}
