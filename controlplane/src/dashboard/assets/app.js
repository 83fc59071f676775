// Colony dashboard. Plain JavaScript, no build step, no network beyond this page's origin.
//
// State comes from the coordinator's /ws stream (DESIGN §10): a registry_loaded event with
// everything, then numbered events. On a dropped socket the page shows a stale-data banner
// and reconnects with ?since=<last seq> so it gets only what it missed.
//
// The health view only reads. The colony view, when opened, starts a colony if there is
// none (POST /colony-start with a fresh Idempotency-Key, then GET /topology with exponential
// backoff, at most 10 tries) and has run/pause buttons. Control-plane calls go through the
// management port's /api/control/ forwarder, so everything stays on this origin.
//
// The operator token (DESIGN §13): from this machine the coordinator trusts the page without
// one, unless it runs with --require-token. When a call is refused (401/403), /ws answers
// `unauthorized`, or the page is opened from another host, the page asks for the token once,
// keeps it in sessionStorage (this tab only), and sends it as an Authorization header and as
// a /ws `auth` request. It never goes in a URL or a log line.
(function () {
  "use strict";

  const SPARK_POINTS = 40;
  const TOPOLOGY_TRIES = 10;
  const PICTURE_MIN_INTERVAL_MS = 1000;
  const STATES = ["ACTIVE", "STALE", "DOWN", "LEFT"];
  const PALETTE = ["#60a5fa", "#f472b6", "#a78bfa", "#34d399", "#fbbf24", "#f87171",
    "#22d3ee", "#a3e635", "#fb923c", "#e879f9", "#2dd4bf", "#facc15"];

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children || []) node.append(c);
    return node;
  };

  // ---- state ----
  const model = {
    services: new Map(), // name -> {name, kind, state, health, process, endpoints, spark: [], at}
    deployed: new Map(), // "node/name" -> the service entry of a deployed package (DESIGN §16)
    alerts: { open: [], resolved: [] },
    colony: null,
    topology: null,
    stream: null,
    seq: 0,
    coordinator: null,
  };
  let filter = "ALL";
  let socket = null;
  let connected = false;
  let lostAt = null;
  let reconnectDelay = 500;
  let reconnectAt = 0;

  // ---- helpers ----
  function fmtDuration(ms) {
    if (ms == null || !isFinite(ms)) return "—";
    if (ms < 1000) return Math.round(ms) + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + Math.floor(s % 60) + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h " + (m % 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }
  function fmtTime(rfc3339) {
    if (!rfc3339) return "—";
    const d = new Date(rfc3339);
    return isNaN(d) ? rfc3339 : d.toLocaleTimeString();
  }
  function fmtNumber(n) {
    if (n == null) return "—";
    return Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 });
  }
  function newKey() {
    // crypto.randomUUID needs a secure context; getRandomValues works on plain http too.
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return "dashboard-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---- settled ----
  // <body data-settled="true"> once the page has drawn its first /ws state, has no request of
  // its own in flight and, on the colony view, has finished its auto-start. Tests wait for it
  // instead of sleeping.
  let pending = 0;
  let loaded = false;
  function markSettled() {
    const p = $("colony-view").dataset.phase;
    const starting = colonyOpened && p !== "ready" && p !== "failed";
    document.body.dataset.settled = String(loaded && pending === 0 && !starting);
  }
  // fetch, as the operator if the tab has the token; a call refused for want of it asks for
  // the token and is made again (a refused token is forgotten and asked for again).
  async function request(url, opts) {
    pending += 1;
    markSettled();
    try {
      for (let attempt = 1; ; attempt++) {
        const options = Object.assign({}, opts || {});
        const headers = new Headers(options.headers || {});
        if (operatorToken) headers.set("Authorization", "Bearer " + operatorToken);
        options.headers = headers;
        const r = await fetch(url, options);
        if ((r.status !== 401 && r.status !== 403) || attempt > 3) return r;
        let why = "";
        try { why = (await r.clone().json()).error || ""; } catch (_) { why = ""; }
        const refused = !!operatorToken;
        if (refused) setToken(null);
        const token = await askToken((refused ? "The coordinator refused that token. " : "") +
          (why || "This call needs the operator token."));
        if (!token) return r;
      }
    } finally { pending -= 1; markSettled(); }
  }

  // ---- the operator token ----
  const TOKEN_KEY = "colony.operatorToken";
  let operatorToken = null;
  try { operatorToken = sessionStorage.getItem(TOKEN_KEY); } catch (_) { operatorToken = null; }
  let asking = null;
  let wsAuthed = false;
  let authSeq = 0;

  function isLoopbackHost(host) {
    return host === "localhost" || /^127\./.test(host) || host === "[::1]" || host === "::1";
  }

  function setToken(token) {
    operatorToken = token || null;
    wsAuthed = false;
    try {
      if (operatorToken) sessionStorage.setItem(TOKEN_KEY, operatorToken);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage off: the token lives as long as the page */ }
    renderOperator();
    if (operatorToken) wsAuth();
  }

  function renderOperator() {
    const pill = $("operator-state");
    pill.textContent = operatorToken ? (wsAuthed ? "operator" : "operator (token)") : "no token";
    pill.className = "pill " + (operatorToken ? "pill-live" : "pill-wait");
    $("operator-btn").textContent = operatorToken ? "Forget token" : "Enter operator token";
  }

  // Shows the token form once, however many calls wait on it; resolves to the token, or null
  // if the user cancelled.
  function askToken(reason) {
    if (asking) return asking;
    asking = new Promise((resolve) => {
      const dialog = $("token-dialog");
      $("token-reason").textContent = reason;
      $("token-input").value = "";
      dialog.returnValue = "";
      const closed = () => {
        dialog.removeEventListener("close", closed);
        const token = dialog.returnValue === "ok" ? $("token-input").value.trim() : "";
        $("token-input").value = "";
        asking = null;
        if (token) setToken(token);
        resolve(token || null);
      };
      dialog.addEventListener("close", closed);
      dialog.showModal();
      $("token-input").focus();
    });
    return asking;
  }

  // Presents the token on the live socket (browsers cannot set headers on a WebSocket).
  function wsAuth() {
    if (!socket || socket.readyState !== WebSocket.OPEN || !operatorToken) return;
    authSeq += 1;
    socket.send(JSON.stringify({ id: "auth-" + authSeq, type: "request", action: "auth", params: { token: operatorToken } }));
  }

  function onResponse(msg) {
    const e = msg.error;
    if (typeof msg.id === "string" && msg.id.startsWith("svc-")) {
      if (e && e.code === "unauthorized" && !operatorToken) askToken(e.message);
      return onServiceResponse(msg);
    }
    if (typeof msg.id === "string" && msg.id.startsWith("auth-")) {
      if (!e) { wsAuthed = true; renderOperator(); return; }
      setToken(null);
      askToken("The coordinator refused that token: " + e.message);
      return;
    }
    // With --protect-reads the socket says at once that it needs the token.
    if (e && e.code === "unauthorized" && !operatorToken) askToken(e.message);
  }

  // ---- the socket ----
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let url = scheme + "://" + location.host + "/ws";
    if (model.stream) url += "?since=" + model.seq + "&stream=" + encodeURIComponent(model.stream);
    setConn("connecting", "connecting…");
    socket = new WebSocket(url);
    socket.onopen = () => {
      connected = true;
      lostAt = null;
      reconnectDelay = 500;
      setConn("live", "live");
      $("stale-banner").hidden = true;
      document.body.classList.remove("stale");
      wsAuthed = false;
      wsAuth();
      renderOperator();
    };
    socket.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch (_) { return; }
      if (msg.type === "event") onEvent(msg);
      else if (msg.type === "response") onResponse(msg);
    };
    socket.onclose = () => {
      const was = connected;
      connected = false;
      socket = null;
      if (was || lostAt == null) lostAt = new Date();
      setConn("down", "disconnected");
      $("stale-banner").hidden = false;
      document.body.classList.add("stale");
      $("stale-since").textContent = lostAt.toLocaleTimeString();
      reconnectAt = Date.now() + reconnectDelay;
      setTimeout(connect, reconnectDelay);
      reconnectDelay = Math.min(reconnectDelay * 2, 5000);
    };
  }
  function setConn(state, text) {
    const pill = $("conn-state");
    pill.textContent = text;
    pill.dataset.state = state;
    pill.className = "pill " + (state === "live" ? "pill-live" : state === "down" ? "pill-down" : "pill-wait");
  }

  function onEvent(msg) {
    if (typeof msg.seq === "number") model.seq = Math.max(model.seq, msg.seq);
    $("last-seq").textContent = model.seq;
    const d = msg.data || {};
    switch (msg.event) {
      case "registry_loaded": return loadRegistry(d, msg.seq);
      case "service_state_changed": return stateChanged(d);
      case "endpoint_updated": return endpointUpdated(d);
      case "health_check_result": return healthCheck(d);
      case "colony_progress": return colonyProgress(d);
      case "colony_recovery": return colonyRecovery(d);
      default: return undefined;
    }
  }

  function loadRegistry(d, seq) {
    model.stream = d.stream;
    model.seq = seq || 0;
    model.coordinator = d.coordinator;
    const old = model.services;
    model.services = new Map();
    for (const s of d.services || []) {
      const prev = old.get(s.name);
      model.services.set(s.name, {
        name: s.name, kind: s.kind, state: s.state, health: s.health, process: s.process,
        endpoints: s.endpoints, spark: prev ? prev.spark : [], at: performance.now(),
      });
    }
    model.deployed = new Map((d.deployed || []).map((s) => [deployedKey(s), s]));
    renderDeployed();
    if (d.alerts) model.alerts = d.alerts;
    if (d.coordinator) {
      const a = d.coordinator.address;
      $("coord-addr").textContent = a.ip + " (data " + a.internal_port + ", control " + a.http_port + ", mgmt " + a.mgmt_port + ")";
    }
    renderAll();
    if (d.colony) colonyProgress(d.colony);
    loaded = true;
    markSettled();
  }

  function service(name, kind) {
    let s = model.services.get(name);
    if (!s) {
      s = { name, kind: kind || "backend", state: "UNKNOWN", health: null, process: null, endpoints: [], spark: [], at: performance.now() };
      model.services.set(name, s);
    }
    return s;
  }

  function stateChanged(d) {
    if (d.kind === "deployed") {
      if (d.deployed) model.deployed.set(deployedKey(d.deployed), d.deployed);
      return renderDeployed();
    }
    if (d.kind === "process") {
      service(d.service).process = d.process;
    } else {
      const s = service(d.service, d.node_type);
      s.state = d.to;
      if (d.component) { s.health = d.component; s.at = performance.now(); }
      refreshAlerts();
    }
    renderNodes();
    renderSummary();
    renderShardMap();
  }

  function endpointUpdated(d) {
    service(d.service).endpoints = d.endpoints || [];
  }

  function healthCheck(d) {
    if (d.kind === "deployed") {
      const s = model.deployed.get(d.node + "/" + d.service);
      if (s) s.last_health_check = { healthy: d.healthy, at: d.at, detail: d.detail };
      return renderDeployed();
    }
    const s = service(d.service, d.node_type);
    const h = s.health || (s.health = { node_id: d.service, metrics: {} });
    h.status = d.status;
    h.last_seen = d.at;
    h.heartbeat_age_ms = 0;
    h.metrics = d.metrics || {};
    if (d.uptime_seconds != null) h.uptime_seconds = d.uptime_seconds;
    if (d.flaps != null) h.flaps = d.flaps;
    s.state = d.status;
    s.at = performance.now();
    if (d.interval_ms != null) {
      s.spark.push(d.interval_ms);
      if (s.spark.length > SPARK_POINTS) s.spark.shift();
    }
    renderNodes();
  }

  async function refreshAlerts() {
    try {
      const r = await request("/alerts");
      if (r.ok) { model.alerts = await r.json(); renderAlerts(); renderSummary(); }
    } catch (_) { /* the banner already says we are offline */ }
  }

  // ---- health view ----
  function renderAll() {
    renderSummary();
    renderNodes();
    renderAlerts();
    renderShardMap();
  }

  function renderSummary() {
    const counts = { ACTIVE: 0, STALE: 0, DOWN: 0, LEFT: 0 };
    for (const s of model.services.values()) if (s.state in counts) counts[s.state] += 1;
    for (const k of STATES) $("count-" + k).textContent = counts[k];
    const overall = counts.STALE + counts.DOWN === 0 ? "HEALTHY" : "DEGRADED";
    $("overall-status").textContent = overall;
    $("overall").dataset.status = overall;
    $("count-alerts").textContent = (model.alerts.open || []).length;
  }

  function spark(points) {
    const w = 100, h = 22;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    if (points.length < 2) return svg;
    // Newest on the right; the scale starts at zero so steady heartbeats draw a flat line
    // and only real gaps stand out.
    const max = Math.max(...points, 1), min = Math.min(...points);
    const step = (w - 2) / (SPARK_POINTS - 1);
    const right = w - 1;
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.map((p, i) =>
      (right - (points.length - 1 - i) * step).toFixed(1) + "," + (h - 2 - p / max * (h - 4)).toFixed(1)).join(" "));
    svg.append(line);
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = "last " + points[points.length - 1] + " ms, min " + min + " ms, max " + max + " ms";
    svg.append(title);
    return svg;
  }

  function metric(h, name) {
    return h && h.metrics && h.metrics[name] != null ? fmtNumber(h.metrics[name]) : "—";
  }

  function renderNodes() {
    const body = document.querySelector("#nodes tbody");
    body.replaceChildren();
    let shown = 0;
    for (const s of model.services.values()) {
      if (filter !== "ALL" && s.state !== filter) continue;
      shown += 1;
      const h = s.health;
      const self = s.kind === "coordinator";
      const t = h && h.last_transition;
      const p = s.process;
      const row = el("tr", { "data-node": s.name, "data-state": s.state, class: "row-" + s.state }, [
        el("td", {}, [el("span", { class: "node-name", text: s.name }), el("span", { class: "node-type", text: s.kind })]),
        el("td", {}, [el("span", { class: "badge state-" + s.state, text: s.state })]),
        el("td", { text: self ? "(self)" : fmtTime(h && h.last_seen) }),
        el("td", { class: "age mono", "data-age": self ? "" : s.name, text: "—" }),
        el("td", { class: "uptime mono", "data-uptime": s.name, text: "—" }),
        el("td", { class: "mono", text: metric(h, "connections") }),
        el("td", { class: "mono", text: metric(h, "frames_in") + " / " + metric(h, "frames_out") }),
        el("td", { class: "mono", text: metric(h, "errors") }),
        el("td", {}, [spark(s.spark)]),
        el("td", { class: "mono", text: h && h.flaps != null ? String(h.flaps) : "0" }),
        el("td", { text: t ? (t.from || "new") + " → " + t.to + " at " + fmtTime(t.at) : "—" }),
        el("td", { class: "small", text: p ? p.state + (p.pid ? " (pid " + p.pid + ")" : "") + (p.restarts ? ", " + p.restarts + " restarts" : "") : "not managed" }),
      ]);
      if (h && h.metrics) row.title = Object.entries(h.metrics).map(([k, v]) => k + " = " + v).join("\n");
      body.append(row);
    }
    $("nodes-empty").hidden = shown > 0;
    tickClocks();
  }

  // Heartbeat age and uptime move every 250 ms without waiting for an event.
  function tickClocks() {
    const now = performance.now();
    for (const cell of document.querySelectorAll("td[data-age]")) {
      const s = model.services.get(cell.dataset.age);
      if (!s || !s.health || s.health.heartbeat_age_ms == null) continue;
      const frozen = s.state === "LEFT";
      cell.textContent = frozen ? "—" : fmtDuration(s.health.heartbeat_age_ms + (now - s.at));
    }
    for (const cell of document.querySelectorAll("td[data-uptime]")) {
      const s = model.services.get(cell.dataset.uptime);
      if (!s || !s.health || s.health.uptime_seconds == null) continue;
      const live = s.state === "ACTIVE" || s.kind === "coordinator";
      cell.textContent = fmtDuration(s.health.uptime_seconds * 1000 + (live ? now - s.at : 0));
    }
    if (!connected && reconnectAt) {
      const left = Math.max(0, reconnectAt - Date.now());
      $("stale-retry").textContent = "Reconnecting" + (left > 0 ? " in " + (left / 1000).toFixed(1) + " s" : "…");
    }
  }

  function renderAlerts() {
    const fill = (id, list, resolved) => {
      const ul = $(id);
      ul.replaceChildren();
      if (!list || list.length === 0) {
        ul.append(el("li", { class: "none", text: resolved ? "None yet." : "No open alerts." }));
        return;
      }
      for (const a of list.slice(0, 50)) {
        ul.append(el("li", { class: "sev-" + a.severity + (resolved ? " resolved" : "") }, [
          el("span", { text: a.message }),
          el("span", { class: "when", text: resolved ? "resolved " + fmtTime(a.resolved_at) : "since " + fmtTime(a.raised_at) }),
        ]));
      }
    };
    fill("alerts-open", model.alerts.open, false);
    fill("alerts-resolved", model.alerts.resolved, true);
  }

  // ---- colony view ----
  let colonyOpened = false;
  let pictureBusy = false;
  let pictureTick = null;
  let pictureAt = 0;
  let pictureMode = "png"; // "png" until /colony/image.png is found missing, then "shards"

  function colonyProgress(c) {
    // A new colony, or the same one placed again (its epoch moved): the shard map follows.
    const changed = !model.colony || model.colony.colony_id !== c.colony_id
      || model.colony.epoch !== c.epoch;
    model.colony = c;
    $("colony-id").textContent = c.colony_id || "";
    $("colony-state").textContent = c.state || "—";
    $("colony-state").dataset.state = c.state || "";
    $("colony-tick").textContent = c.tick != null ? fmtNumber(c.tick) : "—";
    $("colony-population").textContent = c.population != null ? fmtNumber(c.population) : "—";
    $("colony-tps").textContent = c.ticks_per_second != null ? fmtNumber(c.ticks_per_second) : "—";
    $("summary-colony").textContent = c.colony_id ? c.state + ", tick " + fmtNumber(c.tick) : "none";
    const running = !!c.colony_id;
    $("run-btn").disabled = !running;
    $("pause-btn").disabled = !running;
    if (changed && running && colonyOpened) loadTopology();
    if (colonyOpened) refreshPicture();
  }

  // A re-placement: who was lost, what moved where, what was redone. The alert about each lost
  // backend comes with it, and the shard map recolours the shards that moved.
  function colonyRecovery(d) {
    const what = d.kind === "backend_lost" ? "lost " + (d.lost || []).join(", ")
      : d.kind === "adopted" ? "taken over by a restarted coordinator"
      : "rebalanced";
    const moved = (d.moved || []).length;
    log("colony " + what + ": " + moved + " shard" + (moved === 1 ? "" : "s") + " moved, back to tick "
      + fmtNumber(d.restored_tick) + ", " + fmtNumber(d.ticks_redone) + " ticks redone (epoch " + d.epoch + ")",
      d.kind === "backend_lost" ? "bad" : "good");
    refreshAlerts();
    loadTopology();
  }

  function log(text, kind) {
    const li = el("li", { class: kind || "", text: new Date().toLocaleTimeString() + "  " + text });
    $("autostart-log").append(li);
    while ($("autostart-log").children.length > 40) $("autostart-log").firstChild.remove();
  }

  function phase(p) { $("colony-view").dataset.phase = p; markSettled(); }

  async function control(method, path, opts) {
    const r = await request("/api/control/" + path, Object.assign({ method, cache: "no-store" }, opts || {}));
    let body = null;
    const type = r.headers.get("content-type") || "";
    if (type.includes("json")) { try { body = await r.json(); } catch (_) { body = null; } }
    return { status: r.status, ok: r.ok, body };
  }

  // The seed GUI's auto-start: only the colony view does this.
  async function ensureColony() {
    $("autostart-retry").hidden = true;
    phase("checking");
    log("GET /topology");
    let t;
    try { t = await control("GET", "topology"); } catch (e) { return failStart("cannot reach the coordinator: " + e.message); }
    if (t.ok) { log("topology found: colony " + t.body.colony_id, "good"); return haveTopology(t.body); }
    if (t.status !== 404) return failStart("GET /topology answered " + t.status + ": " + errorText(t));
    const key = newKey();
    phase("starting");
    log("no colony yet (404); POST /colony-start, Idempotency-Key " + key.slice(0, 18) + "…");
    let s;
    try {
      s = await control("POST", "colony-start", { headers: { "Idempotency-Key": key } });
    } catch (e) { return failStart("colony-start failed: " + e.message); }
    if (s.ok) log("colony-start: " + s.status + ", colony " + (s.body && s.body.colony_id), "good");
    else if (s.status === 409) log("colony-start: 409, a colony is already running", "good");
    else log("colony-start answered " + s.status + ": " + errorText(s), "bad");
    phase("waiting");
    let delay = 250;
    for (let attempt = 1; attempt <= TOPOLOGY_TRIES; attempt++) {
      log("GET /topology (try " + attempt + "/" + TOPOLOGY_TRIES + ")");
      try {
        t = await control("GET", "topology");
        if (t.ok) { log("topology ready: colony " + t.body.colony_id, "good"); return haveTopology(t.body); }
        log("GET /topology: " + t.status + "; next try in " + fmtDuration(delay));
      } catch (e) {
        log("GET /topology failed: " + e.message + "; next try in " + fmtDuration(delay), "bad");
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 8000);
    }
    return failStart("no topology after " + TOPOLOGY_TRIES + " tries");
  }

  function errorText(r) { return (r.body && r.body.error) || "(no message)"; }

  function failStart(text) {
    log(text, "bad");
    phase("failed");
    $("autostart-retry").hidden = false;
  }

  function haveTopology(t) {
    model.topology = t;
    phase("ready");
    renderShardMap();
    refreshPicture(true);
  }

  async function loadTopology() {
    try {
      const t = await control("GET", "topology");
      if (t.ok) { model.topology = t.body; renderShardMap(); refreshPicture(true); }
    } catch (_) { /* shown as stale by the socket */ }
  }

  // Each backend keeps its colour for the page's life, so when shards move only they change
  // colour (by position in the backend list, the survivors would all change).
  const ownColours = new Map();
  function backendColours() {
    const t = model.topology;
    if (!t) return ownColours;
    for (const b of t.backends) {
      if (!ownColours.has(b.instance_id)) {
        ownColours.set(b.instance_id, PALETTE[ownColours.size % PALETTE.length]);
      }
    }
    return ownColours;
  }

  function renderShardMap() {
    const t = model.topology;
    const map = $("shard-map");
    const legend = $("shard-legend");
    if (!t) { map.replaceChildren(el("div", { class: "muted", text: "No colony yet." })); legend.replaceChildren(); return; }
    const colours = backendColours();
    map.style.gridTemplateColumns = "repeat(" + t.width_in_shards + ", 1fr)";
    const cells = new Array(t.width_in_shards * t.height_in_shards);
    for (const p of t.placement) cells[p.shard.y * t.width_in_shards + p.shard.x] = p.instance_id;
    map.replaceChildren(...Array.from(cells, (owner, i) => {
      const x = i % t.width_in_shards, y = Math.floor(i / t.width_in_shards);
      const s = model.services.get(owner);
      const healthy = !s || s.state === "ACTIVE";
      const cell = el("div", {
        class: "shard" + (healthy ? "" : " unhealthy"),
        title: "shard (" + x + ", " + y + ") on " + owner + (s ? " — " + s.state : ""),
        "data-owner": owner || "",
        text: x + "," + y,
      });
      cell.style.background = colours.get(owner) || "#334155";
      return cell;
    }));
    legend.replaceChildren(...t.backends.map((b) => {
      const s = model.services.get(b.instance_id);
      const count = t.placement.filter((p) => p.instance_id === b.instance_id).length;
      const sw = el("span", { class: "swatch" });
      sw.style.background = colours.get(b.instance_id);
      return el("li", {}, [sw, b.instance_id + " · " + count + " shards · " + (s ? s.state : "?")]);
    }));
  }

  // The picture: /colony/image.png while the coordinator has it, else drawn from the shards.
  function setPictureMode(mode) {
    pictureMode = mode;
    $("picture-toggle").textContent = mode === "png" ? "Draw from shards" : "Use /colony/image.png";
  }

  async function refreshPicture(force) {
    if (!model.topology || pictureBusy) return;
    const tick = model.colony ? model.colony.tick : null;
    if (!force && (tick === pictureTick || Date.now() - pictureAt < PICTURE_MIN_INTERVAL_MS)) return;
    pictureBusy = true;
    pictureAt = Date.now();
    try {
      if (pictureMode === "png" && await loadPng(tick)) { pictureTick = tick; return; }
      if (pictureMode === "png") setPictureMode("shards");
      if (await drawShards()) pictureTick = tick;
    } finally {
      pictureBusy = false;
    }
  }

  function loadPng(tick) {
    pending += 1;
    markSettled();
    const done = (ok) => { pending -= 1; markSettled(); return ok; };
    return new Promise((resolve) => {
      const img = new Image();
      img.onload = () => {
        const shown = $("colony-img");
        shown.src = img.src;
        shown.hidden = false;
        $("colony-canvas").hidden = true;
        $("picture-empty").hidden = true;
        $("picture-source").textContent = "GET /colony/image.png · tick " + fmtNumber(tick);
        resolve(done(true));
      };
      img.onerror = () => resolve(done(false));
      img.src = "/api/control/colony/image.png?tick=" + encodeURIComponent(tick == null ? "" : tick) + "&t=" + Date.now();
    });
  }

  async function drawShards() {
    const t = model.topology;
    const W = t.width_in_shards * t.shard_width, H = t.height_in_shards * t.shard_height;
    const canvas = $("colony-canvas");
    if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
    const ctx = canvas.getContext("2d");
    const queue = t.placement.map((p) => p.shard);
    let drawn = 0, tick = null;
    const worker = async () => {
      while (queue.length) {
        const s = queue.shift();
        let r;
        try { r = await request("/api/shards/" + s.x + "/" + s.y, { cache: "no-store" }); } catch (_) { continue; }
        if (!r.ok) continue;
        const v = await r.json();
        const img = ctx.createImageData(v.width, v.height);
        const px = img.data;
        for (let y = 0; y < v.height; y++) {
          const row = v.rows[y] || "";
          for (let x = 0; x < v.width; x++) {
            const o = (y * v.width + x) * 4;
            const alive = row.charCodeAt(x) === 35; // '#'
            px[o] = alive ? 74 : 5; px[o + 1] = alive ? 222 : 10; px[o + 2] = alive ? 128 : 22; px[o + 3] = 255;
          }
        }
        ctx.putImageData(img, s.x * t.shard_width, s.y * t.shard_height);
        drawn += 1;
        tick = v.tick;
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    if (drawn === 0) return false;
    canvas.hidden = false;
    $("colony-img").hidden = true;
    $("picture-empty").hidden = true;
    $("picture-source").textContent = "drawn from " + drawn + " shards (GET /shards/{x}/{y}) · tick " + fmtNumber(tick);
    return true;
  }

  async function runOrPause(path, body) {
    const box = $("control-message");
    box.hidden = false;
    box.className = "message";
    box.textContent = "POST /" + path + "…";
    try {
      const r = await control("POST", path, body ? { headers: { "content-type": "application/json" }, body: JSON.stringify(body) } : {});
      if (r.ok) box.textContent = "POST /" + path + ": " + r.status + (r.body && r.body.state ? ", colony " + r.body.state : "");
      else {
        box.className = "message error";
        box.textContent = "POST /" + path + " answered " + r.status + ": " + errorText(r);
      }
    } catch (e) {
      box.className = "message error";
      box.textContent = "POST /" + path + " failed: " + e.message;
    }
  }

  // ---- services view: deployed packages ----
  // Services of one name may run on several nodes (the coordinator's and its backends').
  function deployedKey(s) { return ((s.location || {}).node || "") + "/" + s.name; }
  let actionSeq = 0;
  function renderDeployed() {
    const body = document.querySelector("#deployed tbody");
    body.replaceChildren();
    $("deployed-empty").hidden = model.deployed.size > 0;
    for (const s of model.deployed.values()) {
      const tr = document.createElement("tr");
      const cell = (text, title) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (title) td.title = title;
        tr.append(td);
        return td;
      };
      cell(s.name, s.dir);
      cell(s.version + (s.pending ? " (" + s.pending.version + " on restart)" : ""));
      const state = s.state || {};
      cell(state.state || "?", state.reason || "").dataset.state = state.state || "";
      cell((s.location || {}).node || "");
      cell((s.endpoints || []).map((e) => e.name + " " + e.address).join(", "));
      const h = s.last_health_check;
      cell(h ? (h.healthy ? "healthy" : "unhealthy") + " at " + new Date(h.at).toLocaleTimeString() : "—", h ? h.detail : "");
      const actions = document.createElement("td");
      for (const verb of ["start", "stop", "restart"]) {
        const b = document.createElement("button");
        b.textContent = verb;
        b.dataset.service = s.name;
        b.dataset.node = (s.location || {}).node || "";
        b.dataset.action = verb;
        actions.append(b);
      }
      tr.append(actions);
      body.append(tr);
    }
  }
  // service_action over the socket, as the operator (the socket presents the tab's token).
  function serviceAction(name, node, verb) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    actionSeq += 1;
    const box = $("services-message");
    box.className = "message";
    box.textContent = verb + " " + name + " on " + node + "…";
    socket.send(JSON.stringify({ id: "svc-" + actionSeq, type: "request", action: "service_action", params: { name, node, action: verb } }));
  }
  function onServiceResponse(msg) {
    const box = $("services-message");
    if (msg.error) {
      box.className = "message error";
      box.textContent = msg.error.message;
      return;
    }
    const s = msg.data && msg.data.deployed;
    if (s) { model.deployed.set(deployedKey(s), s); renderDeployed(); }
    box.textContent = (msg.data && msg.data.service) + ": " + (s && s.state ? s.state.state : "done");
  }

  // ---- views ----
  function showView() {
    const colony = location.hash === "#colony";
    const services = location.hash === "#services";
    $("health-view").hidden = colony || services;
    $("colony-view").hidden = !colony;
    $("services-view").hidden = !services;
    $("tab-health").classList.toggle("current", !colony && !services);
    $("tab-colony").classList.toggle("current", colony);
    $("tab-services").classList.toggle("current", services);
    if (colony && !colonyOpened) {
      colonyOpened = true;
      ensureColony();
    }
  }

  // ---- wiring ----
  $("filters").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-filter]");
    if (!b) return;
    filter = b.dataset.filter;
    for (const other of $("filters").querySelectorAll("button")) other.classList.toggle("active", other === b);
    renderNodes();
  });
  $("run-btn").addEventListener("click", () => {
    const n = Math.max(1, Math.floor(Number($("run-ticks").value) || 1));
    runOrPause("colony/run", { ticks: n, wait: false });
  });
  $("pause-btn").addEventListener("click", () => runOrPause("colony/pause", null));
  $("autostart-retry").addEventListener("click", () => ensureColony());
  $("operator-btn").addEventListener("click", () => {
    if (operatorToken) setToken(null);
    else askToken("Enter the operator token to start, run and pause the colony.");
  });
  $("picture-toggle").addEventListener("click", () => {
    setPictureMode(pictureMode === "png" ? "shards" : "png");
    pictureTick = null;
    refreshPicture(true);
  });
  $("deployed").addEventListener("click", (e) => {
    const b = e.target.closest("button[data-action]");
    if (b) serviceAction(b.dataset.service, b.dataset.node, b.dataset.action);
  });
  window.addEventListener("hashchange", showView);
  setInterval(tickClocks, 250);
  setInterval(() => { if (colonyOpened) refreshPicture(); }, 2000);

  showView();
  renderAll();
  renderOperator();
  connect();
  // From another host nothing is trusted by address: ask up front.
  if (!operatorToken && !isLoopbackHost(location.hostname)) {
    askToken("This dashboard is open from another host, so changing anything needs the operator token.");
  }
})();
