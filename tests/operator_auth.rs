//! The operator half of issue 12 against real processes (DESIGN §13): every attack on the
//! operator's calls is refused, leaves the cluster as it was (`/health/status`, `/colony` and
//! the managed processes compared before and after) and is counted in `/metrics`; the token
//! works from anywhere; floods are rate limited without slowing anyone else; and with
//! `--protect-reads` reads, `/ws` and the data plane want the token too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// What an attack must not change: node states, the colony, the managed processes.
#[derive(Debug, PartialEq)]
struct Snapshot {
    nodes: Vec<(String, String)>,
    colony: (Value, Value, Value),
    processes: Vec<(String, Value, Value)>,
}

async fn snapshot(http: &reqwest::Client, mgmt: &str, token: Option<&str>) -> Snapshot {
    let get = |path: &str| {
        let mut request = http.get(format!("http://{mgmt}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
    };
    let health: Value = get("/health/status")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut nodes: Vec<(String, String)> = health["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["node_id"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    nodes.sort();
    let colony: Value = get("/api/control/colony")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ws = WsClient::connect_with(mgmt, "", &[]).await.unwrap();
    if let Some(token) = token {
        ws.request("auth", json!({ "token": token })).await;
    }
    let services = ws.request("list_services", json!({})).await;
    let mut processes: Vec<(String, Value, Value)> = services["data"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["process"].is_null())
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["process"]["pid"].clone(),
                s["process"]["state"].clone(),
            )
        })
        .collect();
    processes.sort_by(|a, b| a.0.cmp(&b.0));
    Snapshot {
        nodes,
        colony: (
            colony["colony_id"].clone(),
            colony["state"].clone(),
            colony["tick"].clone(),
        ),
        processes,
    }
}

/// The value of the counter line `name{labels}` in a Prometheus text, 0 if absent.
fn counter(metrics: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn metrics(http: &reqwest::Client, mgmt: &str, token: Option<&str>) -> String {
    let mut request = http.get(format!("http://{mgmt}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().text().await.unwrap()
}

fn client() -> reqwest::Client {
    shared::tls::http_client(None)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The control port's address, from the dashboard's view of the cluster.
async fn control(http: &reqwest::Client, mgmt: &str, token: Option<&str>) -> String {
    let mut request = http.get(format!("http://{mgmt}/api/cluster"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let cluster: Value = request.send().await.unwrap().json().await.unwrap();
    cluster["control"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned()
}

/// `POST http://{addr}{path}` with `body` and `headers`; status and JSON answer.
async fn post(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Value) {
    let mut request = http
        .post(format!("http://{addr}{path}"))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn read_token(up: &Up) -> String {
    std::fs::read_to_string(up.dir.path().join("output/operator.token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Stops `colony up` and waits for it, so it stops its backends and none outlives the test.
async fn stop(mut up: Up) {
    up.proc.signal("INT");
    tokio::time::timeout(Duration::from_secs(30), up.proc.child.wait())
        .await
        .expect("colony up did not stop within 30s")
        .unwrap();
}

/// A backend to stop, if anything could.
fn stop_backend(up: &Up) -> Value {
    json!({ "name": up.backend(1), "action": "stop" })
}

#[tokio::test]
async fn cross_site_requests_from_this_machine_change_nothing_and_are_counted() {
    // Loopback is trusted here, as on any `colony up`: the attacks come from a browser on
    // this machine, so from loopback too.
    let up = Up::start(2, &[]).await;
    let http = client();
    let token = read_token(&up);
    let control = control(&http, &up.mgmt, None).await;
    let before = snapshot(&http, &up.mgmt, None).await;
    assert_eq!(before.processes.len(), 2, "{before:?}");

    let restart = r#"{"restart":true,"width_in_shards":2}"#;
    let attacks: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("origin", "http://evil.example"),
                ("content-type", "text/plain"),
                ("host", "evil.example"),
            ],
            "foreign_origin",
        ),
        (
            &[("origin", "null"), ("content-type", "text/plain")],
            "foreign_origin",
        ),
        (
            &[
                ("sec-fetch-site", "cross-site"),
                ("content-type", "text/plain"),
            ],
            "cross_site",
        ),
        // DNS rebinding: the page's own name, resolved to 127.0.0.1.
        (
            &[
                ("host", "evil.example:8083"),
                ("content-type", "text/plain"),
            ],
            "foreign_host",
        ),
    ];
    for (headers, reason) in attacks {
        for (addr, path) in [
            (control.as_str(), "/colony-start"),
            (up.mgmt.as_str(), "/api/control/colony-start"),
        ] {
            let (status, answer) = post(&http, addr, path, headers, restart).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{path} {headers:?}: {answer}"
            );
            assert_eq!(answer["code"], reason, "{answer}");
            assert!(
                answer["error"]
                    .as_str()
                    .unwrap()
                    .contains("Authorization: Bearer"),
                "{answer}"
            );
        }
        for path in ["/colony/run", "/colony/pause"] {
            let (status, _) = post(&http, &control, path, headers, r#"{"ticks":5}"#).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path} {headers:?}");
        }
    }

    // The same page on /ws: it may read, but not stop a backend, and a guessed token fails.
    let mut ws = WsClient::connect_with(
        &up.mgmt,
        "",
        &[("origin", "http://evil.example"), ("host", "evil.example")],
    )
    .await
    .unwrap();
    let r = ws.request("list_services", json!({})).await;
    assert!(r["data"]["services"].is_array(), "{r}");
    let r = ws.request("service_action", stop_backend(&up)).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    let r = ws
        .request("auth", json!({ "token": "guessed-operator-token" }))
        .await;
    assert_eq!(r["error"]["code"], "auth_failed", "{r}");
    let r = ws.request("service_action", stop_backend(&up)).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");

    assert_eq!(snapshot(&http, &up.mgmt, None).await, before);
    let text = metrics(&http, &up.mgmt, None).await;
    // Each attack hit the control port three times (start, run, pause) and the forwarder once.
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="control",reason="foreign_origin""#
        ),
        6
    );
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="control",reason="cross_site""#
        ),
        3
    );
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="control",reason="foreign_host""#
        ),
        3
    );
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="mgmt",reason="foreign_origin""#
        ),
        2
    );
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="ws",reason="foreign_origin""#
        ),
        2
    );
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="ws",reason="wrong_token""#
        ),
        1
    );

    // With the token the same cross-site request is the operator's, whatever its Host.
    let bearer = format!("Bearer {token}");
    let (status, answer) = post(
        &http,
        &control,
        "/colony/run",
        &[
            ("origin", "http://evil.example"),
            ("host", "evil.example"),
            ("authorization", &bearer),
        ],
        r#"{"ticks":3,"wait":true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // And the README's curl (form content type, no Origin, Host localhost) still works.
    let port = control.rsplit(':').next().unwrap();
    let (status, answer) = post(
        &http,
        &control,
        "/colony/run",
        &[
            ("host", &format!("localhost:{port}")),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        r#"{"ticks":2,"wait":true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(snapshot(&http, &up.mgmt, None).await.colony.2, json!(5));
    stop(up).await;
}

#[tokio::test]
async fn with_require_token_no_wrong_or_empty_token_changes_anything() {
    let mut up = Up::start(2, &["--require-token"]).await;
    let http = client();
    let token = read_token(&up);
    // `colony up` printed where the token is, never the token; no child has it on its
    // command line, and the file is the operator's alone.
    let path = up.dir.path().join("output/operator.token");
    let line = up.proc.wait_for("Operator token: ").await;
    assert!(line.contains(&path.display().to_string()), "{line}");
    assert!(
        up.proc.seen.iter().all(|l| !l.contains(&token)),
        "colony up printed the token"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let control = control(&http, &up.mgmt, None).await;
    let before = snapshot(&http, &up.mgmt, Some(&token)).await;
    for (_, pid, _) in &before.processes {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(&token),
            "the token is on a command line"
        );
    }

    let calls = [
        ("/colony-start", r#"{"restart":true}"#),
        ("/colony/run", r#"{"ticks":50}"#),
        ("/colony/pause", ""),
    ];
    let credentials: [(&[(&str, &str)], &str); 4] = [
        (&[], "missing_token"),
        (
            &[("authorization", "Bearer not-the-operator-token")],
            "wrong_token",
        ),
        (&[("authorization", "Bearer ")], "empty_token"),
        (
            &[("authorization", "Basic b3BlcmF0b3I6dG9rZW4=")],
            "malformed_authorization",
        ),
    ];
    for (path, body) in calls {
        for (headers, reason) in credentials {
            for (addr, path) in [
                (control.as_str(), path.to_owned()),
                (up.mgmt.as_str(), format!("/api/control{path}")),
            ] {
                let mut headers = headers.to_vec();
                headers.push(("content-type", "application/json"));
                let (status, answer) = post(&http, addr, &path, &headers, body).await;
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{path} {reason}: {answer}"
                );
                assert_eq!(answer["code"], reason, "{answer}");
                assert!(!answer.to_string().contains(&token));
            }
        }
    }
    // service_action: without a token, after a wrong and after an empty one.
    let mut ws = WsClient::connect_with(&up.mgmt, "", &[]).await.unwrap();
    let r = ws.request("service_action", stop_backend(&up)).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    for wrong in ["not-the-operator-token", ""] {
        let r = ws.request("auth", json!({ "token": wrong })).await;
        assert_eq!(r["error"]["code"], "auth_failed", "{r}");
        let r = ws.request("service_action", stop_backend(&up)).await;
        assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    }
    let refused = WsClient::connect_with(
        &up.mgmt,
        "",
        &[("authorization", "Bearer not-the-operator-token")],
    )
    .await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401),
        "a wrong token on the upgrade must be a 401"
    );

    assert_eq!(snapshot(&http, &up.mgmt, Some(&token)).await, before);
    let text = metrics(&http, &up.mgmt, None).await;
    for reason in [
        "missing_token",
        "wrong_token",
        "empty_token",
        "malformed_authorization",
    ] {
        let labels = format!(r#"plane="control",reason="{reason}""#);
        assert_eq!(
            counter(&text, "colony_auth_refusals_total", &labels),
            3,
            "{labels}"
        );
        let labels = format!(r#"plane="mgmt",reason="{reason}""#);
        assert_eq!(
            counter(&text, "colony_auth_refusals_total", &labels),
            3,
            "{labels}"
        );
    }
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="ws",reason="missing_token""#
        ),
        3
    );
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="ws",reason="wrong_token""#
        ),
        2
    );
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="ws",reason="empty_token""#
        ),
        1
    );

    // The token itself works, over HTTP and /ws.
    let bearer = format!("Bearer {token}");
    let (status, answer) = post(
        &http,
        &control,
        "/colony/run",
        &[("authorization", &bearer)],
        r#"{"ticks":4,"wait":true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let r = ws.request("auth", json!({ "token": token })).await;
    assert_eq!(r["data"]["authenticated"], true, "{r}");
    let r = ws
        .request(
            "service_action",
            json!({"name": "backend_1", "action": "stop"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "not_found", "past the check: {r}");
    stop(up).await;
}

/// A coordinator bound to every address (0.0.0.0) with the token in COLONY_OPERATOR_TOKEN,
/// and one backend; reached through 127.0.0.1.
async fn open_bind_cluster(token: &str) -> (Cluster, String, String) {
    let mut cluster = Cluster::new();
    let dir = cluster.registry_dir();
    cluster.coordinator = Some(Proc::spawn(
        &[
            "coordinator",
            "--bind-ip",
            "0.0.0.0",
            "--advertise-ip",
            "127.0.0.1",
            "--internal-port",
            "0",
            "--http-port",
            "0",
            "--mgmt-port",
            "0",
            "--registry-dir",
            &dir,
        ],
        &[("COLONY_OPERATOR_TOKEN", token)],
    ));
    let a = cluster.coordinator_address().await;
    let control = format!("127.0.0.1:{}", a["http_port"]);
    let mgmt = format!("127.0.0.1:{}", a["mgmt_port"]);
    cluster.start_backend(&["--heartbeat-interval", "100ms"]);
    cluster.backend_identity(0).await;
    let http = client();
    eventually(DEADLINE, "the backend is ACTIVE", || {
        let (http, mgmt) = (http.clone(), mgmt.clone());
        async move {
            let health: Value = http
                .get(format!("http://{mgmt}/health/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (health["active"] == 2).then_some(())
        }
    })
    .await;
    (cluster, control, mgmt)
}

#[tokio::test]
async fn a_coordinator_bound_to_any_address_wants_the_token_even_from_loopback() {
    let token = "open-bind-operator-token-0123";
    let (cluster, control, mgmt) = open_bind_cluster(token).await;
    let http = client();
    let local = [("host", "localhost"), ("content-type", "application/json")];
    let before_colony: Value = http
        .get(format!("http://{control}/colony"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, body) in [
        ("/colony-start", ""),
        ("/colony/run", r#"{"ticks":5}"#),
        ("/colony/pause", ""),
    ] {
        let (status, answer) = post(&http, &control, path, &local, body).await;
        assert_eq!(
            (status, &answer["code"]),
            (StatusCode::UNAUTHORIZED, &json!("missing_token")),
            "{path}: {answer}"
        );
        let wrong = [("authorization", "Bearer wrong-wrong-wrong-wrong")];
        assert_eq!(
            post(&http, &control, path, &wrong, body).await.0,
            StatusCode::UNAUTHORIZED
        );
        let empty = [("authorization", "Bearer")];
        assert_eq!(
            post(&http, &control, path, &empty, body).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let mut ws = WsClient::connect_with(&mgmt, "", &[]).await.unwrap();
    let r = ws
        .request(
            "service_action",
            json!({"name": "coordinator", "action": "restart"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    let after_colony: Value = http
        .get(format!("http://{control}/colony"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before_colony, after_colony);
    let (status, _) = post(&http, &control, "/topology", &[], "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let text = metrics(&http, &mgmt, None).await;
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="control",reason="missing_token""#
        ),
        3
    );
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="control",reason="wrong_token""#
        ),
        3
    );
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="control",reason="empty_token""#
        ),
        3
    );
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="ws",reason="missing_token""#
        ),
        1
    );

    // The token from the environment makes the same calls work.
    let bearer = format!("Bearer {token}");
    let with_token = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, topology) = post(
        &http,
        &control,
        "/colony-start",
        &with_token,
        r#"{"width_in_shards":2,"height_in_shards":2,"shard_width":16,"shard_height":16}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{topology}");
    let (status, answer) = post(
        &http,
        &control,
        "/colony/run",
        &with_token,
        r#"{"ticks":3,"wait":true}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["tick"], 3, "{answer}");
    drop(cluster);
}

#[tokio::test]
async fn floods_are_rate_limited_and_others_are_not_slowed() {
    let up = Up::start(1, &["--no-start"]).await;
    let http = client();
    let control = control(&http, &up.mgmt, None).await;

    // /ws: 300 requests at once on one connection; the default burst is 100.
    let mut flood = WsClient::connect(&up.mgmt, "").await;
    let mut calm = WsClient::connect(&up.mgmt, "").await;
    for i in 0..300 {
        flood
            .send_text(&json!({"id": i, "type": "request", "action": "list_endpoints"}).to_string())
            .await;
    }
    let mut limited = 0u64;
    for i in 0..300 {
        let r = flood.response_to(&json!(i)).await;
        if r["error"]["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited >= 150, "only {limited} of 300 limited");
    let r = calm.request("list_services", json!({})).await;
    assert!(
        r["data"]["services"].is_array(),
        "the other client was limited: {r}"
    );

    // HTTP: state-changing calls beyond the burst of 40 get 429 and Retry-After; reads never.
    let mut too_many = 0;
    for _ in 0..60 {
        let response = http
            .post(format!("http://{control}/colony/pause"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().contains_key("retry-after"));
            too_many += 1;
        } else {
            assert_eq!(
                response.status(),
                StatusCode::NOT_FOUND,
                "no colony to pause"
            );
        }
    }
    assert!(too_many >= 15, "only {too_many} of 60 limited");
    for _ in 0..100 {
        assert_eq!(
            http.get(format!("http://{control}/colony"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    let text = metrics(&http, &up.mgmt, None).await;
    assert_eq!(
        counter(&text, "colony_rate_limited_total", r#"plane="ws""#),
        limited
    );
    assert_eq!(
        counter(&text, "colony_rate_limited_total", r#"plane="control""#),
        too_many
    );
    stop(up).await;
}

#[tokio::test]
async fn protected_reads_want_the_token_on_every_plane() {
    let up = Up::start(2, &["--protect-reads", "--require-token"]).await;
    let http = client();
    let token = read_token(&up);
    // `colony up` itself got here with the token: the colony started.
    let control = control(&http, &up.mgmt, Some(&token)).await;
    for url in [
        format!("http://{control}/colony"),
        format!("http://{control}/topology"),
        format!("http://{}/health/status", up.mgmt),
        format!("http://{}/metrics", up.mgmt),
        format!("http://{}/api/cluster", up.mgmt),
    ] {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{url}");
        let answer: Value = response.json().await.unwrap();
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("--protect-reads"),
            "{answer}"
        );
        let response = http.get(&url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
    }
    // The liveness probe stays open.
    assert_eq!(
        http.get(format!("http://{}/health", up.mgmt))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // The picture is drawn from the backends with the caller's token passed on.
    let png = http
        .get(format!("http://{control}/colony/image.png"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), StatusCode::OK);
    let colony: Value = http
        .get(format!("http://{control}/colony"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bytes = png.bytes().await.unwrap();
    assert!(bytes.starts_with(b"\x89PNG"));
    assert!(colony["population"].as_u64().unwrap() > 0, "{colony}");

    // /ws: nothing but `unauthorized` until `auth`.
    let mut ws = WsClient::connect_with(&up.mgmt, "", &[]).await.unwrap();
    let first = ws.next().await;
    assert_eq!(first["error"]["code"], "unauthorized", "{first}");
    let r = ws.request("list_services", json!({})).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    let r = ws.request("auth", json!({ "token": token })).await;
    assert_eq!(r["data"]["authenticated"], true, "{r}");
    assert_eq!(ws.next().await["event"], "registry_loaded");

    // The data plane: PING only, until TOKEN.
    let data: std::net::SocketAddr = format!("127.0.0.1:{}", up.base).parse().unwrap();
    let mut nc = LineClient::connect(data).await;
    nc.send(b"PING\nSHARDS\n").await;
    assert_eq!(nc.line().await.unwrap(), "PONG");
    assert_eq!(nc.json().await["code"], "unauthenticated");
    nc.send(format!("TOKEN {token}\nSHARDS\n").as_bytes()).await;
    assert_eq!(nc.line().await.unwrap(), "OK");
    assert_eq!(nc.json().await["type"], "shards_reply");
    let mut guess = LineClient::connect(data).await;
    guess.send(b"TOKEN a-guessed-operator-token\n").await;
    assert_eq!(guess.json().await["code"], "auth_failed");
    guess.expect_closed().await;
    // The backend counted its own refusals.
    let backend_mgmt = format!("127.0.0.1:{}", up.base + 2);
    let text = metrics(&http, &backend_mgmt, Some(&token)).await;
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="data",reason="reads_protected""#
        ),
        1
    );
    assert_eq!(
        counter(
            &text,
            "colony_auth_refusals_total",
            r#"plane="data",reason="wrong_token""#
        ),
        1
    );
    stop(up).await;
}
