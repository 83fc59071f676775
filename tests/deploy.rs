//! Deploying a package to the coordinator's host against a real coordinator (DESIGN §16):
//! upload with the operator token (refused without it, even from loopback, and over the
//! limit), `deploy_package` over `/ws` with every progress step in order, the service's
//! port answering as the deploy user, stop and restart, the service back after the
//! coordinator restarts and gone when it is killed; and a package forwarded to a backend,
//! listed and stopped and started through the coordinator, its events relayed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const TOKEN: &str = "deploy-test-operator-token-0123";

/// A package whose start.sh serves TCP on `port`, answering its version.
fn package(name: &str, version: &str, port: u16) -> Vec<u8> {
    let manifest = format!(
        "name: {name}\nversion: '{version}'\nservice:\n  ports:\n    - name: tcp\n      port: {port}\nhealth:\n  interval: 300ms\n  timeout: 2s\n"
    );
    let start = format!(
        "#!/bin/sh\nexec python3 -c 'import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", {port})); s.listen()\nwhile True:\n    c,_=s.accept(); c.sendall(b\"{version}\\n\"); c.close()'\n"
    );
    let health = format!(
        "#!/bin/sh\nexec python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 1).close()'\n"
    );
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("manifest.yaml", manifest.as_str()),
        ("scripts/start.sh", start.as_str()),
        ("scripts/stop.sh", "#!/bin/sh\n"),
        ("scripts/health.sh", health.as_str()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder
            .append_data(&mut header, path, data.as_bytes())
            .unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&builder.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn probe(port: u16) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text.trim().to_owned())
}

fn start_coordinator(cluster: &mut Cluster, root: &str) {
    let dir = cluster.registry_dir();
    cluster.coordinator = Some(Proc::spawn(
        &[
            "coordinator",
            "--internal-port",
            "0",
            "--http-port",
            "0",
            "--mgmt-port",
            "0",
            "--registry-dir",
            &dir,
            "--deploy-root",
            root,
            "--max-package",
            "3000000",
            "--deploy-poll-interval",
            "200ms",
        ],
        &[("COLONY_OPERATOR_TOKEN", TOKEN)],
    ));
}

async fn mgmt(cluster: &Cluster) -> String {
    let a = cluster.coordinator_address().await;
    format!("127.0.0.1:{}", a["mgmt_port"])
}

/// The one place this file builds an HTTP client (the transport is chosen here).
fn http_client() -> reqwest::Client {
    shared::tls::http_client(None).build().unwrap()
}

async fn upload(mgmt: &str, file: &str, body: Vec<u8>, token: Option<&str>) -> StatusCode {
    let mut request = http_client()
        .put(format!("http://{mgmt}/packages/{file}"))
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status()
}

async fn operator_ws(mgmt: &str) -> WsClient {
    let auth = format!("Bearer {TOKEN}");
    WsClient::connect_with(mgmt, "", &[("authorization", auth.as_str())])
        .await
        .unwrap()
}

fn deployed<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["data"]["deployed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list}"))
}

#[tokio::test]
async fn a_package_is_uploaded_deployed_run_stopped_and_outlives_a_coordinator_restart() {
    let mut cluster = Cluster::new();
    // The scripts run as `nobody` (we are root here): it must reach the install dir.
    let root = cluster.dir.path().join("opt");
    std::fs::create_dir_all(&root).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(cluster.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = root.display().to_string();
    start_coordinator(&mut cluster, &root);
    let mgmt = mgmt(&cluster).await;
    let port = free_port();
    let bytes = package("web", "1.0", port);

    // Uploads need the token, even from loopback; too big is refused.
    assert_eq!(
        upload(&mgmt, "web-1.0.tar.gz", bytes.clone(), None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        upload(&mgmt, "web-1.0.tar.gz", vec![0; 3_000_001], Some(TOKEN)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Past the 1 MiB of every other route: uploads have a limit of their own.
    assert_eq!(
        upload(&mgmt, "junk-1.tar.gz", vec![0; 2_000_000], Some(TOKEN)).await,
        StatusCode::CREATED
    );
    // A name that could leave the packages directory (decoded by the router) is refused.
    assert_eq!(
        upload(&mgmt, "..%2Fx-1.tar.gz", bytes.clone(), Some(TOKEN)).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        upload(&mgmt, "web-1.0.tar.gz", bytes, Some(TOKEN)).await,
        StatusCode::CREATED
    );

    // Deploying needs the token too, even from loopback.
    let mut anyone = WsClient::connect(&mgmt, "").await;
    let r = anyone
        .request(
            "deploy_package",
            json!({"package": "web-1.0.tar.gz", "target": "coordinator"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");

    let mut ws = operator_ws(&mgmt).await;
    let r = ws
        .request(
            "deploy_package",
            json!({"package": "web-1.0.tar.gz", "target": "nowhere"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
    let r = ws
        .request(
            "deploy_package",
            json!({"package": "web-1.0.tar.gz", "target": "coordinator"}),
        )
        .await;
    assert_eq!(r["data"]["service"]["state"]["state"], "running", "{r}");
    assert_eq!(probe(port).as_deref(), Some("1.0"));
    // Every step, in order, before the answer.
    let mut steps = Vec::new();
    for _ in 0..7 {
        let m = ws
            .event_where("deployment_progress", DEADLINE, |_| true)
            .await;
        steps.push(m["data"]["step"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        steps,
        [
            "received",
            "verified",
            "extracted",
            "installed",
            "dependencies",
            "starting",
            "running"
        ]
    );
    // It runs as the deploy user.
    let pid = r["data"]["service"]["execution"]["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid.contains("65534"), "{uid}");
    ws.event_where("health_check_result", DEADLINE, |d| {
        d["service"] == "web" && d["healthy"] == true
    })
    .await;

    let r = ws
        .request("service_action", json!({"name": "web", "action": "stop"}))
        .await;
    assert_eq!(r["data"]["deployed"]["state"]["state"], "stopped", "{r}");
    assert_eq!(probe(port), None);
    let r = ws
        .request(
            "service_action",
            json!({"name": "web", "action": "restart"}),
        )
        .await;
    assert_eq!(r["data"]["deployed"]["state"]["state"], "running", "{r}");
    assert_eq!(probe(port).as_deref(), Some("1.0"));

    // The coordinator stops: the service with it. Started again, it knows and restarts it.
    drop(ws);
    drop(anyone);
    drop(cluster.coordinator.take());
    assert_eq!(probe(port), None);
    start_coordinator(&mut cluster, &root);
    let mgmt = self::mgmt(&cluster).await;
    let mut ws = operator_ws(&mgmt).await;
    eventually(DEADLINE, "the service runs again", || async { probe(port) }).await;
    let list = ws.request("list_services", json!({})).await;
    let web = deployed(&list, "web");
    assert_eq!(web["version"], "1.0");
    assert_eq!(web["location"]["node"], "coordinator");
    assert_eq!(web["endpoints"][0]["address"], format!("127.0.0.1:{port}"));

    // Killed outright, the coordinator cannot stop its services: the kernel does.
    cluster.coordinator.as_ref().unwrap().signal("KILL");
    eventually(DEADLINE, "the service dies with its node", || async {
        probe(port).is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_package_is_forwarded_to_a_backend_by_a_signed_call_and_runs_there() {
    let mut cluster = Cluster::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(cluster.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let coordinator_root = cluster
        .dir
        .path()
        .join("coordinator-opt")
        .display()
        .to_string();
    let backend_root = cluster.dir.path().join("backend-opt").display().to_string();
    start_coordinator(&mut cluster, &coordinator_root);
    let mgmt = mgmt(&cluster).await;
    cluster.start_backend(&[
        "--heartbeat-interval",
        "100ms",
        "--deploy-root",
        &backend_root,
    ]);
    let (backend, _) = cluster.backend_identity(0).await;
    let line = cluster.backends[0].wait_for("node listening").await;
    let control = field(&line, "http");
    eventually(DEADLINE, "the backend is known", || async {
        cluster
            .component(&backend)
            .await
            .filter(|c| c["status"] == "ACTIVE")
    })
    .await;

    let port = free_port();
    assert_eq!(
        upload(
            &mgmt,
            "echo-2.1.tar.gz",
            package("echo", "2.1", port),
            Some(TOKEN)
        )
        .await,
        StatusCode::CREATED
    );
    // Nobody but a node may call the backend's deploy route.
    let forged = http_client()
        .put(format!("http://{control}/deploy/echo-2.1.tar.gz"))
        .body(package("echo", "2.1", port))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(probe(port), None);

    let mut ws = operator_ws(&mgmt).await;
    let r = ws
        .request(
            "deploy_package",
            json!({"package": "echo-2.1.tar.gz", "target": backend}),
        )
        .await;
    assert_eq!(r["data"]["service"]["state"]["state"], "running", "{r}");
    assert_eq!(r["data"]["service"]["location"]["node"], backend.as_str());
    assert_eq!(probe(port).as_deref(), Some("2.1"));
    let mut steps = Vec::new();
    for _ in 0..7 {
        let m = ws
            .event_where("deployment_progress", DEADLINE, |_| true)
            .await;
        assert_eq!(m["data"]["target"], backend.as_str(), "{m}");
        steps.push(m["data"]["step"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        steps,
        [
            "received",
            "verified",
            "extracted",
            "installed",
            "dependencies",
            "starting",
            "running"
        ]
    );
    // Installed on the backend's root, not the coordinator's.
    assert!(std::path::Path::new(&backend_root)
        .join("echo-2.1/manifest.yaml")
        .is_file());
    assert!(!std::path::Path::new(&coordinator_root)
        .join("echo-2.1")
        .exists());

    // The coordinator lists it, on the backend.
    let list = ws.request("list_services", json!({})).await;
    let echo = deployed(&list, "echo");
    assert_eq!(echo["location"]["node"], backend.as_str(), "{list}");
    assert_eq!(echo["state"]["state"], "running", "{list}");
    // Its health checks run on the backend and reach the coordinator's /ws by its polls.
    let health = ws
        .event_where("health_check_result", DEADLINE, |d| {
            d["service"] == "echo" && d["kind"] == "deployed"
        })
        .await;
    assert_eq!(health["data"]["node"], backend.as_str(), "{health}");
    assert_eq!(health["data"]["healthy"], true, "{health}");
    let list = ws.request("list_services", json!({})).await;
    assert_eq!(
        deployed(&list, "echo")["last_health_check"]["healthy"],
        true,
        "{list}"
    );

    // Nobody but a node may list or drive the backend's services.
    let anyone = http_client();
    let listed = anyone
        .get(format!("http://{control}/deploy/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::UNAUTHORIZED);
    let stopped = anyone
        .post(format!("http://{control}/deploy/services/echo/stop"))
        .send()
        .await
        .unwrap();
    assert_eq!(stopped.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(probe(port).as_deref(), Some("2.1"));

    // Stopped and started through the coordinator: forwarded to the backend.
    let r = ws
        .request("service_action", json!({"name": "echo", "action": "stop"}))
        .await;
    assert_eq!(r["data"]["deployed"]["state"]["state"], "stopped", "{r}");
    assert_eq!(r["data"]["node"], backend.as_str(), "{r}");
    assert_eq!(probe(port), None);
    let changed = ws
        .event_where("service_state_changed", DEADLINE, |d| {
            d["service"] == "echo" && d["to"] == "stopped"
        })
        .await;
    assert_eq!(
        changed["data"]["deployed"]["location"]["node"],
        backend.as_str(),
        "{changed}"
    );
    let r = ws
        .request(
            "service_action",
            json!({"name": "echo", "node": backend, "action": "start"}),
        )
        .await;
    assert_eq!(r["data"]["deployed"]["state"]["state"], "running", "{r}");
    assert_eq!(probe(port).as_deref(), Some("2.1"));
    // A node that does not run it is not asked.
    let r = ws
        .request(
            "service_action",
            json!({"name": "echo", "node": "coordinator", "action": "stop"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
    assert_eq!(probe(port).as_deref(), Some("2.1"));

    // The same name on the coordinator too (on another port): an action must say which.
    let port2 = free_port();
    assert_eq!(
        upload(
            &mgmt,
            "echo-2.1.tar.gz",
            package("echo", "2.1", port2),
            Some(TOKEN)
        )
        .await,
        StatusCode::CREATED
    );
    let r = ws
        .request(
            "deploy_package",
            json!({"package": "echo-2.1.tar.gz", "target": "coordinator"}),
        )
        .await;
    assert_eq!(r["data"]["service"]["state"]["state"], "running", "{r}");
    let r = ws
        .request("service_action", json!({"name": "echo", "action": "stop"}))
        .await;
    assert_eq!(r["error"]["code"], "invalid_params", "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("coordinator") && message.contains(backend.as_str()),
        "{r}"
    );
    assert_eq!(probe(port2).as_deref(), Some("2.1"));
    let r = ws
        .request(
            "service_action",
            json!({"name": "echo", "node": "coordinator", "action": "stop"}),
        )
        .await;
    assert_eq!(r["data"]["deployed"]["state"]["state"], "stopped", "{r}");
    assert_eq!(probe(port2), None);
    assert_eq!(probe(port).as_deref(), Some("2.1"));

    // The backend stops: its service with it, and it leaves the coordinator's list.
    drop(cluster.backends.remove(0));
    assert_eq!(probe(port), None);
    // Its goodbye makes it LEFT; the next poll takes its services away and every viewer
    // gets the whole state again.
    let loaded = ws
        .event_where("registry_loaded", DEADLINE, |d| {
            d["reason"] == "backend_gone"
        })
        .await;
    assert!(
        !loaded["data"]["deployed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["location"]["node"] == backend.as_str()),
        "{loaded}"
    );
}

#[tokio::test]
async fn colony_up_gives_its_backends_its_deploy_root() {
    let root = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    // The scripts run as `nobody` (we are root here): it must reach the install dir.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root_arg = root.path().display().to_string();
    let up = Up::start_with_env(
        1,
        &[
            "--no-start",
            "--deploy-root",
            &root_arg,
            "--deploy-poll-interval",
            "200ms",
        ],
        &[("COLONY_OPERATOR_TOKEN", TOKEN)],
    )
    .await;
    let backend = up.backend(0);
    let port = free_port();
    assert_eq!(
        upload(
            &up.mgmt,
            "echo-3.0.tar.gz",
            package("echo", "3.0", port),
            Some(TOKEN)
        )
        .await,
        StatusCode::CREATED
    );
    let mut ws = operator_ws(&up.mgmt).await;
    let r = ws
        .request(
            "deploy_package",
            json!({"package": "echo-3.0.tar.gz", "target": backend}),
        )
        .await;
    assert_eq!(r["data"]["service"]["state"]["state"], "running", "{r}");
    assert_eq!(probe(port).as_deref(), Some("3.0"));
    // Installed under the root colony up was given, and recorded by the backend there.
    assert!(root.path().join("echo-3.0/manifest.yaml").is_file());
    assert!(root
        .path()
        .join(".colony")
        .join(&backend)
        .join("services.json")
        .is_file());
    let list = ws.request("list_services", json!({})).await;
    assert_eq!(
        deployed(&list, "echo")["location"]["node"],
        backend.as_str()
    );
    drop(ws);
    drop(up);
    assert_eq!(probe(port), None);
}
