//! The dashboard in headless Chromium against a real `colony up` cluster: the page loads
//! without console errors, shows one row per node in the right state, follows a `kill -9`
//! to STALE and DOWN without a reload, its colony view starts a colony on a fresh cluster
//! and shows its picture, and follows a lost backend (the shard map recolours, the alert
//! names it), and with `--require-token` it asks for the operator token and then runs and
//! pauses the colony; its services view lists a deployed package and stops and starts it.
//! Every request the page makes goes to the coordinator's
//! management port (no CDN, nothing external). Screenshots are saved under
//! `target/test-artifacts/`.
//!
//! Needs Chromium (`./scripts/setup.sh` installs it); without it these tests fail, saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod cdp;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The page's own signal that it has drawn its first `/ws` state and has none of its requests
/// in flight (and, on the colony view, has finished its auto-start).
const SETTLED: &str = "document.body.dataset.settled === 'true'";

const WIDTH: u32 = 1440;
const HEIGHT: u32 = 1000;

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn save_screenshot(page: &cdp::Page<'_>, name: &str) -> PathBuf {
    let png = page.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // IHDR: width and height, big-endian, at bytes 16..24.
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert!(width >= WIDTH / 2, "screenshot only {width} px wide");
    let path = artifacts().join(name);
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot saved: {}", path.display());
    path
}

/// Fails on any JavaScript exception, `console.error`, or error log entry, except network
/// errors for URLs the page is expected to see fail (`allowed_404s`, matched as suffixes).
fn assert_no_console_errors(events: &[cdp::Event], allowed_404s: &[&str]) {
    let mut problems = Vec::new();
    for (method, params) in events {
        match method.as_str() {
            "Runtime.exceptionThrown" => problems.push(format!("exception: {params}")),
            "Runtime.consoleAPICalled"
                if matches!(params["type"].as_str(), Some("error" | "assert")) =>
            {
                problems.push(format!("console.{}: {}", params["type"], params["args"]))
            }
            "Log.entryAdded" if params["entry"]["level"] == "error" => {
                let entry = &params["entry"];
                // A failed WebSocket is reported by Chromium under the URL of the script
                // that opened it, and names the socket's own URL in its text.
                let text = entry["text"].as_str().unwrap_or_default();
                let url = text
                    .strip_prefix("WebSocket connection to '")
                    .and_then(|rest| rest.split('\'').next())
                    .or(entry["url"].as_str())
                    .unwrap_or_default();
                let path = url.split('?').next().unwrap_or_default();
                let expected =
                    entry["source"] == "network" && allowed_404s.iter().any(|a| path.ends_with(a));
                if !expected {
                    problems.push(format!("log error: {entry}"));
                }
            }
            _ => {}
        }
    }
    assert!(
        problems.is_empty(),
        "console errors:\n{}",
        problems.join("\n")
    );
}

/// Every request and WebSocket the page opened went to `mgmt` (`ip:port`).
fn assert_only_own_origin(events: &[cdp::Event], mgmt: &str) -> usize {
    let own = [format!("http://{mgmt}/"), format!("ws://{mgmt}/")];
    let mut urls = Vec::new();
    for (method, params) in events {
        let url = match method.as_str() {
            "Network.requestWillBeSent" => params["request"]["url"].as_str(),
            "Network.webSocketCreated" => params["url"].as_str(),
            _ => None,
        };
        if let Some(url) = url {
            urls.push(url.to_owned());
        }
    }
    let external: Vec<&String> = urls
        .iter()
        .filter(|u| !own.iter().any(|o| u.starts_with(o.as_str())))
        .filter(|u| !u.starts_with("data:") && *u != "about:blank")
        .collect();
    assert!(
        external.is_empty(),
        "the page made requests outside its origin: {external:?}"
    );
    assert!(
        urls.iter().any(|u| u.starts_with(&own[1])),
        "no WebSocket seen: {urls:?}"
    );
    urls.len()
}

/// The requests (`METHOD url`) the page sent to a path ending in `suffix`.
fn requests_to(events: &[cdp::Event], suffix: &str) -> Vec<String> {
    events
        .iter()
        .filter(|(method, _)| method == "Network.requestWillBeSent")
        .filter_map(|(_, params)| {
            let request = &params["request"];
            let url = request["url"].as_str()?;
            let path = url.split('?').next().unwrap_or_default();
            path.ends_with(suffix)
                .then(|| format!("{} {url}", request["method"].as_str().unwrap_or("?")))
        })
        .collect()
}

/// `[node, state]` for every row of the node table.
async fn rows(page: &cdp::Page<'_>) -> Vec<(String, String)> {
    let v = page
        .eval("[...document.querySelectorAll('#nodes tbody tr')].map(r => [r.dataset.node, r.dataset.state])")
        .await;
    serde_json::from_value(v).unwrap()
}

/// The pid of a managed backend, asked over `/ws`.
async fn pid_of(mgmt: &str, name: &str) -> u32 {
    let mut ws = WsClient::connect(mgmt, "").await;
    let r = ws.request("get_service", json!({ "name": name })).await;
    r["data"]["service"]["process"]["pid"].as_u64().unwrap() as u32
}

async fn control_status(mgmt: &str, path: &str) -> (u16, Value) {
    let http = shared::tls::http_client(None).no_proxy().build().unwrap();
    let cluster: Value = http
        .get(format!("http://{mgmt}/api/cluster"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{}/{path}", cluster["control"].as_str().unwrap());
    let r = http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_health_view_shows_every_node_and_follows_a_kill_without_reload() {
    let up = Up::start(
        2,
        // The killed backend must stay dead for the row to reach DOWN.
        &[
            "--no-start",
            "--stale-after",
            "600ms",
            "--down-after",
            "2s",
            "--restart",
            "never",
        ],
    )
    .await;
    let browser = cdp::Browser::launch(WIDTH, HEIGHT).await;
    let page = browser.new_page().await;
    page.navigate(&format!("http://{}/", up.mgmt)).await;
    page.wait_for(
        "document.getElementById('conn-state').dataset.state === 'live'",
        DEADLINE,
    )
    .await;

    // One row per node, each ACTIVE, the coordinator first.
    let (b0, b1) = (up.backend(0), up.backend(1));
    let expected = vec![
        ("coordinator".to_owned(), "ACTIVE".to_owned()),
        (b0.clone(), "ACTIVE".to_owned()),
        (b1.clone(), "ACTIVE".to_owned()),
    ];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while rows(&page).await != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rows: {:?}",
            rows(&page).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        page.eval("document.getElementById('overall-status').textContent")
            .await,
        "HEALTHY"
    );
    assert_eq!(
        page.eval("document.getElementById('count-ACTIVE').textContent")
            .await,
        "3"
    );
    // The heartbeat age ticks by itself.
    let age = format!("document.querySelector('td[data-age=\"{b0}\"]').textContent");
    page.wait_for(&format!("{age} !== '—'"), DEADLINE).await;

    // Looking at the health view changes nothing: once the page has settled (its first /ws
    // state drawn, none of its own requests in flight), there is still no colony.
    page.wait_for(SETTLED, DEADLINE).await;
    let (status, _) = control_status(&up.mgmt, "topology").await;
    assert_eq!(status, 404, "the health view started a colony");

    // kill -9 one backend: the row turns STALE, then DOWN, with no reload.
    page.eval("window.__sameDocument = 'yes'").await;
    let state_of_b1 = format!(
        "(document.querySelector('#nodes tr[data-node=\"{b1}\"]') || {{dataset: {{}}}}).dataset.state"
    );
    // Read before the kill: its channel closing makes it STALE at once, which the page may
    // draw before the first look after the kill.
    let before = page
        .eval(&state_of_b1)
        .await
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert_eq!(before, "ACTIVE", "{b1} before the kill");
    let pid = pid_of(&up.mgmt, &b1).await;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut seen: Vec<String> = vec![before];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while seen.last().map(String::as_str) != Some("DOWN") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{b1} states seen: {seen:?}"
        );
        let state = page
            .eval(&state_of_b1)
            .await
            .as_str()
            .unwrap_or("")
            .to_owned();
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, ["ACTIVE", "STALE", "DOWN"], "{b1} states seen");
    assert_eq!(
        page.eval("window.__sameDocument").await,
        "yes",
        "the page reloaded"
    );
    assert_eq!(
        page.eval("document.getElementById('overall-status').textContent")
            .await,
        "DEGRADED"
    );
    page.wait_for(
        &format!("[...document.querySelectorAll('#alerts-open li')].some(li => li.textContent.includes('{b1} is DOWN'))"),
        DEADLINE,
    )
    .await;
    let badge = page
        .eval(&format!(
            "getComputedStyle(document.querySelector('#nodes tr[data-node=\"{b1}\"] .badge')).color"
        ))
        .await;
    assert_eq!(badge, "rgb(239, 68, 68)", "DOWN is not shown in red");
    // The dead node's heartbeat age keeps growing.
    let age_b1 = format!("document.querySelector('td[data-age=\"{b1}\"]').textContent");
    page.wait_for(
        &format!("{age_b1}.endsWith(' s') && parseFloat({age_b1}) >= 2"),
        DEADLINE,
    )
    .await;

    // Filtering by state.
    page.eval("document.querySelector('#filters button[data-filter=DOWN]').click()")
        .await;
    assert_eq!(rows(&page).await, [(b1.clone(), "DOWN".to_owned())]);
    page.eval("document.querySelector('#filters button[data-filter=ALL]').click()")
        .await;
    assert_eq!(rows(&page).await.len(), 3);

    save_screenshot(&page, "dashboard.png").await;
    // Seconds later, settled again: the page never asked for a colony while it was open, and
    // there is none.
    page.wait_for(SETTLED, DEADLINE).await;
    let events = page.events().await;
    let starts = requests_to(&events, "/colony-start");
    assert!(
        starts.is_empty(),
        "the health view asked for a colony: {starts:?}"
    );
    let (status, _) = control_status(&up.mgmt, "topology").await;
    assert_eq!(status, 404, "the health view started a colony");
    assert_no_console_errors(&events, &[]);
    let requests = assert_only_own_origin(&events, &up.mgmt);
    assert!(requests >= 4, "only {requests} requests seen");
    up.proc.signal("INT");
}

#[tokio::test]
async fn the_colony_view_starts_a_colony_on_a_fresh_cluster_and_shows_it() {
    let up = Up::start(2, &["--no-start"]).await;
    let (status, _) = control_status(&up.mgmt, "topology").await;
    assert_eq!(status, 404, "the cluster is not fresh");

    let browser = cdp::Browser::launch(WIDTH, HEIGHT).await;
    let page = browser.new_page().await;
    page.navigate(&format!("http://{}/#colony", up.mgmt)).await;
    let phase = "document.getElementById('colony-view').dataset.phase";
    page.wait_for(
        &format!("{phase} === 'ready' || {phase} === 'failed'"),
        Duration::from_secs(60),
    )
    .await;
    let log = page
        .eval("document.getElementById('autostart-log').innerText")
        .await;
    assert_eq!(page.eval(phase).await, "ready", "auto-start failed:\n{log}");
    let log = log.as_str().unwrap();
    assert!(log.contains("no colony yet (404)"), "{log}");
    assert!(log.contains("POST /colony-start"), "{log}");
    assert!(log.contains("topology ready"), "{log}");

    // The colony really runs, and the page names it.
    let (status, topology) = control_status(&up.mgmt, "topology").await;
    assert_eq!(status, 200);
    let colony_id = topology["colony_id"].as_str().unwrap().to_owned();
    page.wait_for(
        &format!("document.getElementById('colony-id').textContent === '{colony_id}'"),
        DEADLINE,
    )
    .await;

    // The shard map: one cell per shard, coloured by its backend.
    let shards = topology["placement"].as_array().unwrap().len();
    let map = page
        .eval("[...document.querySelectorAll('#shard-map .shard')].map(c => c.style.background)")
        .await;
    let colours: std::collections::BTreeSet<&str> = map
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(map.as_array().unwrap().len(), shards);
    assert_eq!(colours.len(), 2, "{colours:?}");

    // A picture: the PNG, or drawn from the shards.
    let picture = page
        .wait_for(
            "(() => { const i = document.getElementById('colony-img'); \
              const c = document.getElementById('colony-canvas'); \
              if (!i.hidden && i.naturalWidth > 0) return 'png ' + i.naturalWidth + 'x' + i.naturalHeight; \
              if (!c.hidden && c.width > 0) return 'canvas ' + c.width + 'x' + c.height; \
              return ''; })()",
            Duration::from_secs(30),
        )
        .await;
    eprintln!("colony picture: {picture}");

    // Run: ticks advance on the page, live from /ws.
    page.eval("document.getElementById('run-ticks').value = 20")
        .await;
    page.wait_for("!document.getElementById('run-btn').disabled", DEADLINE)
        .await;
    page.eval("document.getElementById('run-btn').click()")
        .await;
    let message = page
        .wait_for(
            "(() => { const m = document.getElementById('control-message'); \
              return m.textContent.includes(': ') && !m.textContent.endsWith('…') ? m.textContent : ''; })()",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        !message.as_str().unwrap().contains("answered"),
        "run was refused: {message}"
    );
    page.wait_for(
        "Number(document.getElementById('colony-tick').textContent.replace(/,/g, '')) >= 20",
        Duration::from_secs(60),
    )
    .await;
    page.eval("document.getElementById('pause-btn').click()")
        .await;
    page.wait_for(
        "document.getElementById('control-message').textContent.startsWith('POST /colony/pause: 2')",
        Duration::from_secs(30),
    )
    .await;
    // The picture follows the tick.
    page.wait_for(
        "document.getElementById('picture-source').textContent.includes('tick 20')",
        Duration::from_secs(30),
    )
    .await;

    save_screenshot(&page, "dashboard-colony.png").await;

    // The same world drawn from the cells the backends hold: every live cell of the paused
    // colony, exactly.
    page.eval("document.getElementById('picture-toggle').click()")
        .await;
    page.wait_for(
        "document.getElementById('picture-source').textContent.startsWith('drawn from ' + document.querySelectorAll('#shard-map .shard').length + ' shards')",
        Duration::from_secs(30),
    )
    .await;
    let (_, colony) = control_status(&up.mgmt, "colony").await;
    let alive = page
        .eval(
            "(() => { const c = document.getElementById('colony-canvas'); \
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
              let n = 0; for (let i = 1; i < d.length; i += 4) if (d[i] === 222) n++; return n; })()",
        )
        .await;
    assert_eq!(alive, colony["population"], "shard drawing vs GET /colony");
    assert_eq!(
        page.eval("document.getElementById('colony-canvas').hidden")
            .await,
        false
    );
    let events = page.events().await;
    // The 404 of GET /topology is the auto-start's cue; a missing PNG makes the page draw.
    assert_no_console_errors(
        &events,
        &["/api/control/topology", "/api/control/colony/image.png"],
    );
    assert_only_own_origin(&events, &up.mgmt);
    up.proc.signal("INT");
}

/// The shard map's cells as `(owner, colour)`, row-major.
async fn shard_cells(page: &cdp::Page<'_>) -> Vec<(String, String)> {
    let v = page
        .eval("[...document.querySelectorAll('#shard-map .shard')].map(c => [c.dataset.owner, c.style.background])")
        .await;
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn the_colony_view_follows_a_lost_backend_and_the_shards_that_move() {
    let world = r#"{"width_in_shards":6,"height_in_shards":2,"shard_width":32,"shard_height":32}"#;
    let up = Up::start(3, &["--start-body", world]).await;
    let browser = cdp::Browser::launch(WIDTH, HEIGHT).await;
    let page = browser.new_page().await;
    page.navigate(&format!("http://{}/#colony", up.mgmt)).await;
    let phase = "document.getElementById('colony-view').dataset.phase";
    page.wait_for(&format!("{phase} === 'ready'"), Duration::from_secs(60))
        .await;
    let http = shared::tls::http_client(None).no_proxy().build().unwrap();
    let cluster: Value = http
        .get(format!("http://{}/api/cluster", up.mgmt))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let control = cluster["control"].as_str().unwrap().to_owned();
    let run = http
        .post(format!("{control}/colony/run"))
        .json(&json!({"ticks": 10_000_000}))
        .send()
        .await
        .unwrap();
    assert!(run.status().is_success());
    let before = shard_cells(&page).await;
    let lost = up.backend(1);
    assert!(before.iter().any(|(owner, _)| *owner == lost), "{before:?}");

    let pid = pid_of(&up.mgmt, &lost).await;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The map recolours: nothing on the lost backend; the survivors' shards keep their
    // colours, and the moved ones take a survivor's.
    page.wait_for(
        &format!(
            "[...document.querySelectorAll('#shard-map .shard')].length > 0 && \
             ![...document.querySelectorAll('#shard-map .shard')].some(c => c.dataset.owner === '{lost}')"
        ),
        Duration::from_secs(30),
    )
    .await;
    let after = shard_cells(&page).await;
    for ((was, colour), (now, now_colour)) in before.iter().zip(&after) {
        if *was != lost {
            assert_eq!(
                (was, colour),
                (now, now_colour),
                "a survivor's shard changed"
            );
        } else {
            let survivor_colour = after.iter().find(|(o, _)| o == now).map(|(_, c)| c);
            assert_eq!(Some(now_colour), survivor_colour);
        }
    }
    // The colony view says what happened, and the alert names the lost backend.
    page.wait_for(
        &format!(
            "document.getElementById('autostart-log').innerText.includes('colony lost {lost}')"
        ),
        DEADLINE,
    )
    .await;
    // Open, or already resolved: `colony up` restarts the killed backend after 500 ms, and
    // its first heartbeat back resolves the node's alerts (the suite once saw it resolved
    // before this first look).
    page.wait_for(
        &format!(
            "[...document.querySelectorAll('#alerts-open li, #alerts-resolved li')].some(li => li.textContent.includes('{lost} was lost from colony'))"
        ),
        DEADLINE,
    )
    .await;
    page.wait_for(
        "document.getElementById('colony-state').textContent === 'running'",
        DEADLINE,
    )
    .await;
    save_screenshot(&page, "dashboard-recovery.png").await;
    let events = page.events().await;
    assert_no_console_errors(&events, &["/api/control/colony/image.png"]);
    up.proc.signal("INT");
}

#[tokio::test]
async fn the_page_says_its_data_is_stale_while_the_coordinator_is_down_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().display().to_string();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let args = |registry: &str, port: &str| -> Vec<String> {
        [
            "coordinator",
            "--internal-port",
            "0",
            "--http-port",
            "0",
            "--mgmt-port",
            port,
            "--registry-dir",
            registry,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let spawn = |a: &[String]| Proc::spawn(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let mut coordinator = spawn(&args(&registry, &port));
    coordinator.wait_for("node listening").await;
    let mgmt = format!("127.0.0.1:{port}");

    let browser = cdp::Browser::launch(WIDTH, HEIGHT).await;
    let page = browser.new_page().await;
    page.navigate(&format!("http://{mgmt}/")).await;
    let conn = "document.getElementById('conn-state').dataset.state";
    let banner_shown = "!document.getElementById('stale-banner').hidden";
    page.wait_for(&format!("{conn} === 'live'"), DEADLINE).await;
    assert_eq!(page.eval(banner_shown).await, false);
    let before = page
        .eval("document.getElementById('coord-addr').textContent")
        .await;
    page.eval("window.__sameDocument = 'yes'").await;

    // The coordinator stops: the page keeps its data but says it is stale.
    coordinator.signal("TERM");
    let _ = tokio::time::timeout(DEADLINE, coordinator.child.wait()).await;
    page.wait_for(&format!("{conn} === 'down' && {banner_shown}"), DEADLINE)
        .await;
    page.wait_for(
        "document.getElementById('stale-retry').textContent.startsWith('Reconnecting')",
        DEADLINE,
    )
    .await;
    assert_eq!(rows(&page).await.len(), 1, "the stale data was dropped");
    save_screenshot(&page, "dashboard-stale.png").await;

    // A new coordinator on the same management port: the page reconnects by itself and
    // loads the new coordinator's state (its control port is new).
    let mut again = spawn(&args(&registry, &port));
    again.wait_for("node listening").await;
    page.wait_for(
        &format!("{conn} === 'live' && !({banner_shown})"),
        Duration::from_secs(20),
    )
    .await;
    page.wait_for(
        &format!("document.getElementById('coord-addr').textContent !== {before}"),
        DEADLINE,
    )
    .await;
    assert_eq!(
        page.eval("window.__sameDocument").await,
        "yes",
        "the page reloaded"
    );

    let events = page.events().await;
    // Reconnect attempts while the coordinator is down fail, as they should.
    assert_no_console_errors(&events, &["/ws"]);
    assert_only_own_origin(&events, &mgmt);
    again.signal("TERM");
}

#[tokio::test]
async fn with_require_token_the_page_asks_for_the_token_then_runs_and_pauses_the_colony() {
    let up = Up::start(2, &["--no-start", "--require-token"]).await;
    let token = std::fs::read_to_string(up.dir.path().join("output/operator.token"))
        .unwrap()
        .trim()
        .to_owned();
    // Reads stay open; the start itself wants the token, even from this machine.
    let (status, _) = control_status(&up.mgmt, "topology").await;
    assert_eq!(status, 404, "the cluster is not fresh");
    let http = shared::tls::http_client(None).no_proxy().build().unwrap();
    let refused = http
        .post(format!("http://{}/api/control/colony-start", up.mgmt))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let browser = cdp::Browser::launch(WIDTH, HEIGHT).await;
    let page = browser.new_page().await;
    page.navigate(&format!("http://{}/#colony", up.mgmt)).await;
    // The auto-start's POST is refused, so the page asks (once) for the token.
    page.wait_for(
        "document.getElementById('token-dialog').open",
        Duration::from_secs(30),
    )
    .await;
    let reason = page
        .eval("document.getElementById('token-reason').textContent")
        .await;
    assert!(
        reason.as_str().unwrap().contains("operator"),
        "the form does not say why: {reason}"
    );
    save_screenshot(&page, "dashboard-token.png").await;
    page.eval(&format!(
        "document.getElementById('token-input').value = {}; \
         document.getElementById('token-ok').click(); true",
        serde_json::to_string(&token).unwrap()
    ))
    .await;
    let phase = "document.getElementById('colony-view').dataset.phase";
    page.wait_for(
        &format!("{phase} === 'ready' || {phase} === 'failed'"),
        Duration::from_secs(60),
    )
    .await;
    let log = page
        .eval("document.getElementById('autostart-log').innerText")
        .await;
    assert_eq!(page.eval(phase).await, "ready", "auto-start failed:\n{log}");
    assert_eq!(
        page.eval("document.getElementById('token-dialog').open")
            .await,
        false
    );
    // The socket authenticated too.
    page.wait_for(
        "document.getElementById('operator-state').textContent === 'operator'",
        DEADLINE,
    )
    .await;

    // Run, then pause: both need the token, and the page sends it.
    page.eval("document.getElementById('run-ticks').value = 20")
        .await;
    page.wait_for("!document.getElementById('run-btn').disabled", DEADLINE)
        .await;
    page.eval("document.getElementById('run-btn').click()")
        .await;
    page.wait_for(
        "document.getElementById('control-message').textContent.startsWith('POST /colony/run: 2')",
        Duration::from_secs(30),
    )
    .await;
    page.wait_for(
        "Number(document.getElementById('colony-tick').textContent.replace(/,/g, '')) >= 20",
        Duration::from_secs(60),
    )
    .await;
    page.eval("document.getElementById('pause-btn').click()")
        .await;
    page.wait_for(
        "document.getElementById('control-message').textContent.startsWith('POST /colony/pause: 2')",
        Duration::from_secs(30),
    )
    .await;
    let (status, colony) = control_status(&up.mgmt, "colony").await;
    assert_eq!(status, 200);
    assert!(colony["tick"].as_u64().unwrap() >= 20, "{colony}");
    assert_ne!(colony["state"], "running", "{colony}");
    save_screenshot(&page, "dashboard-token-colony.png").await;

    // Kept for this tab only, and never in a URL or on the console.
    assert_eq!(
        page.eval("sessionStorage.getItem('colony.operatorToken')")
            .await,
        token.as_str()
    );
    let events = page.events().await;
    for (method, params) in &events {
        let shown = match method.as_str() {
            "Network.requestWillBeSent" => params["request"]["url"].to_string(),
            "Network.webSocketCreated" => params["url"].to_string(),
            "Runtime.consoleAPICalled" | "Log.entryAdded" | "Runtime.exceptionThrown" => {
                params.to_string()
            }
            _ => continue,
        };
        assert!(!shown.contains(&token), "the token leaked into {method}");
    }
    // The one refused call is the auto-start's first colony-start; 404s as in the other test.
    assert_no_console_errors(
        &events,
        &[
            "/api/control/colony-start",
            "/api/control/topology",
            "/api/control/colony/image.png",
        ],
    );
    assert_only_own_origin(&events, &up.mgmt);
    // Waited for, so its backends are stopped before the test ends.
    let mut up = up;
    up.proc.signal("INT");
    tokio::time::timeout(Duration::from_secs(30), up.proc.child.wait())
        .await
        .expect("colony up did not stop within 30s")
        .unwrap();
}

/// A package whose start.sh just sleeps: Running as soon as it starts.
fn sleeper_package(name: &str, version: &str) -> Vec<u8> {
    use std::io::Write;
    let manifest = format!("name: {name}\nversion: '{version}'\n");
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("manifest.yaml", manifest.as_str()),
        ("scripts/start.sh", "#!/bin/sh\nexec sleep 600\n"),
        ("scripts/stop.sh", "#!/bin/sh\n"),
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

#[tokio::test]
async fn the_services_view_lists_deployed_services_and_stops_and_starts_them() {
    use std::os::unix::fs::PermissionsExt;
    // The scripts run as `nobody` (the tests run as root): it must reach the install dir.
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root_arg = root.path().display().to_string();
    let up = Up::start(1, &["--no-start", "--deploy-root", &root_arg]).await;
    let token = std::fs::read_to_string(up.dir.path().join("output/operator.token"))
        .unwrap()
        .trim()
        .to_owned();
    let uploaded = shared::tls::http_client(None)
        .no_proxy()
        .build()
        .unwrap()
        .put(format!("http://{}/packages/nap-1.0.tar.gz", up.mgmt))
        .bearer_auth(&token)
        .body(sleeper_package("nap", "1.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201);
    let auth = format!("Bearer {token}");
    let mut ws = WsClient::connect_with(&up.mgmt, "", &[("authorization", auth.as_str())])
        .await
        .unwrap();
    let r = ws
        .request(
            "deploy_package",
            json!({"package": "nap-1.0.tar.gz", "target": "coordinator"}),
        )
        .await;
    assert_eq!(r["data"]["service"]["state"]["state"], "running", "{r}");
    // The same service on the backend too: the view lists both, each with its node.
    let backend = up.backend(0);
    let r = ws
        .request(
            "deploy_package",
            json!({"package": "nap-1.0.tar.gz", "target": backend}),
        )
        .await;
    assert_eq!(r["data"]["service"]["state"]["state"], "running", "{r}");

    let browser = cdp::Browser::launch(WIDTH, HEIGHT).await;
    let page = browser.new_page().await;
    page.navigate(&format!("http://{}/#services", up.mgmt))
        .await;
    page.wait_for(SETTLED, DEADLINE).await;
    let state = "(document.querySelector('#deployed tbody tr td:nth-child(3)') || {}).textContent";
    page.wait_for(&format!("{state} === 'running'"), DEADLINE)
        .await;
    assert_eq!(
        page.eval("document.querySelector('#deployed tbody tr td:nth-child(4)').textContent")
            .await,
        "coordinator"
    );
    assert_eq!(
        page.eval("document.getElementById('health-view').hidden")
            .await,
        true
    );
    // Stop and start from the page (a loopback page acts as the operator).
    page.eval("document.querySelector('#deployed button[data-action=\"stop\"]').click()")
        .await;
    page.wait_for(&format!("{state} === 'stopped'"), DEADLINE)
        .await;
    page.eval("document.querySelector('#deployed button[data-action=\"start\"]').click()")
        .await;
    page.wait_for(&format!("{state} === 'running'"), DEADLINE)
        .await;
    // The backend's row: its node, and its stop button stops it there, not the
    // coordinator's service of the same name.
    let second = |n: u8| {
        format!("(document.querySelector('#deployed tbody tr:nth-child(2) td:nth-child({n})') || {{}}).textContent")
    };
    page.wait_for(&format!("{} === 'running'", second(3)), DEADLINE)
        .await;
    assert_eq!(page.eval(&second(4)).await, backend.as_str());
    page.eval("document.querySelector('#deployed tbody tr:nth-child(2) button[data-action=\"stop\"]').click()")
        .await;
    page.wait_for(&format!("{} === 'stopped'", second(3)), DEADLINE)
        .await;
    assert_eq!(page.eval(state).await, "running");
    save_screenshot(&page, "services-view.png").await;
    assert_no_console_errors(&page.events().await, &[]);
}
