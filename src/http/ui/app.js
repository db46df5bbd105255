// Sluice's control panel. Every value from the server is put in the page as text
// (textContent), never as HTML, so an event's payload cannot inject anything.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("sluice-admin-token") || "";
let dlBefore = null;
let currentJob = null;
// Each stream's recent rows/s readings, for its sparkline (the last two minutes).
const rates = new Map();
const RATE_SAMPLES = 60;

// A small line chart of `values` (inline SVG built node by node).
function sparkline(values) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 " + RATE_SAMPLES + " 20");
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...values);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute(
    "points",
    values.map((v, i) => (RATE_SAMPLES - values.length + i) + "," + (19 - (18 * v) / max).toFixed(1)).join(" "),
  );
  svg.appendChild(line);
  return svg;
}

async function showSchema(name) {
  const s = await api("/v1/streams/" + encodeURIComponent(name) + "/schema");
  $("schema").hidden = false;
  $("schema-stream").textContent = s.stream + " → table " + s.table;
  $("schema-json").textContent = JSON.stringify(s.schema, null, 2);
  $("schema-ddl").textContent = s.ddl;
  const rows = $("schema-privacy").querySelector("tbody");
  rows.replaceChildren();
  for (const p of s.privacy || []) {
    const tr = document.createElement("tr");
    for (const text of [p.pointer, p.treatment, p.column ? "column " + p.column : "not stored"]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    rows.appendChild(tr);
  }
  $("schema-privacy").hidden = !(s.privacy || []).length;
  await showLoads(name);
}

// The stream's watermark, its most recent loads (newest first) and its rows per day.
async function showLoads(name) {
  const stream = encodeURIComponent(name);
  const [w, recent, daily] = await Promise.all([
    api("/v1/streams/" + stream + "/watermark"),
    api("/v1/streams/" + stream + "/loads?before=9223372036854775807&limit=10"),
    api("/v1/streams/" + stream + "/daily?days=14"),
  ]);
  $("loads-watermark").textContent = "watermark " + w.watermark;
  fill($("loads").tBodies[0], recent.loads, (tr, l) => {
    cell(tr, l.load_id, "num");
    cell(tr, l.rows, "num");
    cell(tr, l.source);
    cell(tr, l.committed_at);
    cell(tr, l.instance);
  });
  fill($("daily").tBodies[0], daily.days, (tr, d) => {
    cell(tr, d.day);
    cell(tr, d.rows, "num");
    cell(tr, d.loads, "num");
    cell(tr, d.dead_letters, d.dead_letters > 0 ? "num error" : "num");
  });
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const r = await fetch(path, Object.assign({}, options, { headers }));
  if (r.status === 401) {
    $("token-box").hidden = false;
    $("status").textContent = "this Sluice needs its admin token";
    throw new Error("unauthorized");
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fill(tbody, rows, render) {
  tbody.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    render(tr, row);
    tbody.appendChild(tr);
  }
}

function setOptions(select, names) {
  const keep = select.value;
  const first = select.options[0];
  select.replaceChildren(first);
  for (const n of names) {
    const o = document.createElement("option");
    o.value = n;
    o.textContent = n;
    select.appendChild(o);
  }
  select.value = keep;
}

async function refreshStreams() {
  const { streams } = await api("/v1/streams");
  fill($("streams").tBodies[0], streams, (tr, s) => {
    tr.dataset.stream = s.stream;
    tr.className = "clickable";
    tr.addEventListener("click", () => showSchema(s.stream).catch(report));
    cell(tr, s.stream);
    cell(tr, s.table);
    const history = rates.get(s.stream) || [];
    history.push(s.written_per_second_1m);
    if (history.length > RATE_SAMPLES) history.shift();
    rates.set(s.stream, history);
    const rate = cell(tr, s.written_per_second_1m.toFixed(1), "num");
    rate.prepend(sparkline(history));
    const q = cell(tr, "");
    const bar = document.createElement("span");
    bar.className = "bar" + (s.saturated ? " full" : "");
    const fillEl = document.createElement("span");
    fillEl.style.width = Math.min(100, (100 * s.queue_events) / Math.max(1, s.queue_max_events)) + "%";
    bar.appendChild(fillEl);
    q.appendChild(bar);
    q.appendChild(document.createTextNode(s.queue_events + " / " + s.queue_max_events));
    // ok | retrying (the database is away) | refusing (every row is dead-lettered
    // until an operator fixes the table: see the last error).
    cell(tr, s.write_state, "write-state " + s.write_state);
    cell(tr, s.written, "num");
    cell(tr, s.dead_lettered, "num");
    const by = s.dead_lettered_by_stage;
    cell(
      tr,
      ["parse", "route", "validate", "write"].filter((k) => by[k] > 0).map((k) => k + " " + by[k]).join(", "),
      "stages",
    );
    cell(tr, s.last_error ? s.last_error.at + " " + s.last_error.message : "", s.last_error ? "error" : "");
  });
  const names = streams.map((s) => s.stream);
  setOptions($("dl-stream"), names);
  setOptions($("replay-stream"), names);
  $("status").textContent = "updated " + new Date().toLocaleTimeString();
}

async function loadDeadLetters(older) {
  const params = new URLSearchParams({ limit: "50" });
  if ($("dl-stream").value) params.set("stream", $("dl-stream").value);
  if ($("dl-stage").value) params.set("stage", $("dl-stage").value);
  if ($("dl-since").value.trim()) params.set("since", $("dl-since").value.trim());
  if ($("dl-until").value.trim()) params.set("until", $("dl-until").value.trim());
  if (older && dlBefore) params.set("before", String(dlBefore));
  const page = await api("/v1/dead-letters?" + params);
  dlBefore = page.next_before;
  $("dl-next").disabled = page.next_before == null;
  fill($("dead-letters").tBodies[0], page.dead_letters, (tr, d) => {
    tr.className = "clickable";
    tr.dataset.id = d.id;
    cell(tr, d.id, "num");
    cell(tr, d.stream == null ? "(none)" : d.stream);
    cell(tr, d.stage);
    cell(tr, d.error.length > 120 ? d.error.slice(0, 120) + "…" : d.error, "error");
    cell(tr, d.received_at);
    tr.addEventListener("click", () => showDeadLetter(d, tr));
  });
}

// The property an error points at ("at /items/0/qty: …"), to highlight in the payload.
function pointedKey(error) {
  const m = /at (\/[^\s:]*)/.exec(error);
  if (!m) return null;
  const parts = m[1].split("/").filter((p) => p !== "" && !/^\d+$/.test(p));
  return parts.length ? parts[parts.length - 1].replace(/~1/g, "/").replace(/~0/g, "~") : null;
}

function showDeadLetter(d, tr) {
  for (const r of $("dead-letters").tBodies[0].rows) r.classList.remove("selected");
  tr.classList.add("selected");
  $("dl-detail").hidden = false;
  $("dl-id").textContent = "#" + d.id;
  $("dl-error").textContent = d.error;
  $("dl-meta").textContent =
    "stream " + (d.stream == null ? "(none)" : d.stream) + " · stage " + d.stage + " · " +
    (d.source || "") + " · received " + d.received_at + " · attempts " + d.attempts;
  let text = d.payload;
  try {
    text = JSON.stringify(JSON.parse(d.payload), null, 2);
  } catch (_) {
    // Not JSON (a parse-stage dead letter): shown as it came.
  }
  const key = pointedKey(d.error);
  const pre = $("dl-payload");
  pre.replaceChildren();
  for (const line of text.split("\n")) {
    const hit = key != null && line.trimStart().startsWith(JSON.stringify(key) + ":");
    const node = document.createElement(hit ? "mark" : "span");
    node.textContent = line + "\n";
    pre.appendChild(node);
  }
}

function showJob(j) {
  currentJob = j;
  $("job").hidden = false;
  $("job-progress").value = j.progress.percent;
  $("job-percent").textContent = j.progress.percent.toFixed(0) + " %";
  $("job-state").textContent = j.state;
  const r = j.result || {};
  $("job-result").textContent =
    r.replayed == null ? "" : r.replayed + " replayed, " + r.still_failing + " still failing";
  $("job-log").textContent = j.logs.concat(j.errors.map((e) => "error: " + e)).join("\n");
  const running = j.state === "running" || j.state === "ready";
  $("replay-cancel").disabled = !running;
  $("replay-start").disabled = running;
}

async function followJob(id) {
  const j = await api("/v1/jobs/" + encodeURIComponent(id));
  showJob(j);
  if (j.state === "running" || j.state === "ready") {
    setTimeout(() => followJob(id).catch(report), 300);
  } else {
    refreshJobs().catch(report);
    loadDeadLetters(false).catch(report);
  }
}

// A button in `parent` that POSTs to `url`, follows the job it starts with `follow`
// (if given), then calls `refresh`.
function actionButton(parent, label, url, follow, refresh) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", () =>
    api(url, { method: "POST" })
      .then((r) => (follow ? follow(r.id) : null))
      .then(refresh)
      .catch(report),
  );
  parent.appendChild(b);
}

// The pulled sources, each with its pointer, its runs and buttons to run, pause or
// resume it.
async function refreshSources() {
  const { sources } = await api("/v1/sources");
  $("sources-none").hidden = sources.length > 0;
  fill($("sources").tBodies[0], sources, (tr, s) => {
    tr.dataset.source = s.name;
    cell(tr, s.name);
    cell(tr, s.stream);
    cell(tr, s.state, "write-state " + s.state);
    cell(
      tr,
      s.files_loaded != null
        ? s.files_loaded + " file(s) loaded"
        : s.pointer == null
          ? "from the start"
          : JSON.stringify(s.pointer),
    );
    cell(tr, s.rows, "num");
    cell(tr, s.last_job ? s.last_state + " (" + s.last_job + ")" : "");
    cell(tr, s.next_run || (s.every_seconds ? "" : "on demand"));
    cell(tr, s.failures, "num");
    const actions = cell(tr, "");
    const at = "/v1/sources/" + encodeURIComponent(s.name) + "/";
    actionButton(actions, "Run", at + "run", followJob, refreshSources);
    if (s.state === "paused") actionButton(actions, "Resume", at + "resume", null, refreshSources);
    else actionButton(actions, "Pause", at + "pause", null, refreshSources);
  });
}

// The transforms as a graph: what each reads on its left (streams, sources, other
// transforms), one column per depth; a transform's box takes the state of its last
// task (or of the flow being followed). Built node by node, text as text.
let flowStates = new Map();
let currentFlow = null;

function drawGraph(transforms) {
  const ns = "http://www.w3.org/2000/svg";
  const depth = new Map();
  const kinds = new Map();
  for (const t of transforms) {
    kinds.set(t.name, "transform");
    for (const a of t.after) if (!kinds.has(a.name)) kinds.set(a.name, a.kind);
  }
  const depthOf = (name, seen = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    const t = transforms.find((x) => x.name === name);
    if (!t || seen.has(name)) return 0;
    seen.add(name);
    const d = 1 + Math.max(0, ...t.after.map((a) => depthOf(a.name, seen)));
    depth.set(name, d);
    return d;
  };
  const columns = [];
  for (const name of kinds.keys()) {
    const d = kinds.get(name) === "transform" ? depthOf(name) : 0;
    (columns[d] = columns[d] || []).push(name);
  }
  const W = 170, H = 30, GX = 60, GY = 14;
  const at = new Map();
  columns.forEach((names, d) =>
    (names || []).forEach((name, i) => at.set(name, { x: 10 + d * (W + GX), y: 10 + i * (H + GY) })),
  );
  const height = 20 + Math.max(...columns.map((c) => (c || []).length)) * (H + GY);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "graph");
  svg.setAttribute("id", "flow-graph");
  svg.setAttribute("width", String(20 + columns.length * (W + GX)));
  svg.setAttribute("height", String(height));
  const defs = document.createElementNS(ns, "defs");
  const marker = document.createElementNS(ns, "marker");
  for (const [k, v] of Object.entries({ id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "6", markerHeight: "6", orient: "auto" })) marker.setAttribute(k, v);
  const tip = document.createElementNS(ns, "path");
  tip.setAttribute("d", "M 0 0 L 10 5 L 0 10 z");
  tip.setAttribute("fill", "#8a94a6");
  marker.appendChild(tip);
  defs.appendChild(marker);
  svg.appendChild(defs);
  for (const t of transforms) {
    for (const a of t.after) {
      const from = at.get(a.name), to = at.get(t.name);
      const line = document.createElementNS(ns, "line");
      line.setAttribute("x1", from.x + W);
      line.setAttribute("y1", from.y + H / 2);
      line.setAttribute("x2", to.x);
      line.setAttribute("y2", to.y + H / 2);
      line.dataset.edge = a.name + "→" + t.name;
      svg.appendChild(line);
    }
  }
  for (const [name, p] of at) {
    const t = transforms.find((x) => x.name === name);
    const state = flowStates.get(name) || (t && t.last_task ? t.last_task.state : "");
    const g = document.createElementNS(ns, "g");
    g.setAttribute("class", kinds.get(name) + " " + state);
    g.dataset.node = name;
    g.dataset.state = state;
    const rect = document.createElementNS(ns, "rect");
    for (const [k, v] of Object.entries({ x: p.x, y: p.y, width: W, height: H })) rect.setAttribute(k, v);
    const text = document.createElementNS(ns, "text");
    text.setAttribute("x", p.x + 8);
    text.setAttribute("y", p.y + 19);
    text.textContent = name + (kinds.get(name) === "transform" ? "" : " (" + kinds.get(name) + ")");
    const title = document.createElementNS(ns, "title");
    title.textContent = state ? name + ": " + state : name;
    g.append(rect, text, title);
    svg.appendChild(g);
  }
  $("flow-graph-box").replaceChildren(svg);
}

async function refreshTransforms() {
  const { transforms } = await api("/v1/transforms");
  $("transforms-none").hidden = transforms.length > 0;
  $("flow-actions").hidden = transforms.length === 0;
  if (transforms.length) drawGraph(transforms);
  fill($("transforms").tBodies[0], transforms, (tr, t) => {
    tr.dataset.transform = t.name;
    cell(tr, t.name);
    cell(tr, t.incremental == null ? "unreadable SQL" : t.incremental ? "incremental" : "full refresh");
    cell(tr, t.after.map((a) => a.name).join(", "));
    cell(tr, t.state, "write-state " + t.state);
    cell(tr, t.pointer, "num");
    const last = t.last_task;
    cell(
      tr,
      last
        ? last.state + ", " + last.rows + " rows" + (last.range ? ", loads " + last.range[0] + "–" + last.range[1] : "") + (last.errors.length ? ": " + last.errors[0] : "")
        : "",
    );
    cell(tr, t.next_run || (t.every_seconds ? "" : "on demand"));
    cell(tr, t.failures, "num");
    const actions = cell(tr, "");
    const at = "/v1/transforms/" + encodeURIComponent(t.name) + "/";
    actionButton(actions, "Run", at + "run", followFlow, refreshTransforms);
    if (t.every_seconds) {
      if (t.state === "paused") actionButton(actions, "Resume", at + "resume", null, refreshTransforms);
      else actionButton(actions, "Pause", at + "pause", null, refreshTransforms);
    }
  });
}

// A flow job's tasks, live, until the job ends.
async function followFlow(id) {
  const j = await api("/v1/jobs/" + encodeURIComponent(id));
  currentFlow = j;
  const tasks = (j.result && j.result.tasks) || [];
  flowStates = new Map(tasks.map((t) => [t.name, t.state]));
  $("flow").hidden = false;
  $("flow-id").textContent = j.id;
  $("flow-state").textContent = j.state;
  $("flow-error").textContent = j.errors.join("; ");
  fill($("flow-tasks").tBodies[0], tasks, (tr, t) => {
    tr.dataset.task = t.name;
    cell(tr, t.name);
    cell(tr, t.kind);
    cell(tr, t.after.join(", "));
    cell(tr, t.state, "task-state " + t.state);
    cell(tr, t.progress.done + " / " + t.progress.total);
    cell(tr, t.rows, "num");
    cell(tr, t.range ? t.range[0] + "–" + t.range[1] : "");
    cell(tr, t.errors.length ? t.errors[t.errors.length - 1] : t.logs[t.logs.length - 1] || "");
  });
  const running = j.state === "running" || j.state === "ready";
  $("flow-cancel").disabled = !running;
  $("flow-all").disabled = running;
  await refreshTransforms();
  if (running) setTimeout(() => followFlow(id).catch(report), 300);
  else refreshJobs().catch(report);
}

async function refreshJobs() {
  const { jobs } = await api("/v1/jobs");
  fill($("jobs").tBodies[0], jobs, (tr, j) => {
    cell(tr, j.id);
    cell(tr, j.kind);
    cell(tr, j.state);
    cell(tr, j.progress.done + " / " + j.progress.total + " (" + j.progress.percent.toFixed(0) + " %)");
    cell(tr, j.result && j.result.replayed, "num");
    cell(tr, j.result && j.result.still_failing, "num");
    cell(tr, j.created_at);
  });
}

function report(e) {
  if (e.message !== "unauthorized") $("status").textContent = "error: " + e.message;
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").addEventListener("change", () => {
    token = $("token").value;
    sessionStorage.setItem("sluice-admin-token", token);
    refreshStreams().then(() => loadDeadLetters(false)).then(refreshJobs).catch(report);
  });
  $("dl-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    dlBefore = null;
    loadDeadLetters(false).catch(report);
  });
  $("dl-next").addEventListener("click", () => loadDeadLetters(true).catch(report));
  $("replay-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const body = { dry_run: $("replay-dry").checked };
    if ($("replay-stream").value) body.stream = $("replay-stream").value;
    if ($("replay-since").value) body.since = $("replay-since").value;
    api("/v1/jobs/replay", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    })
      .then((r) => followJob(r.id))
      .catch(report);
  });
  $("replay-cancel").addEventListener("click", () => {
    if (currentJob) api("/v1/jobs/" + encodeURIComponent(currentJob.id) + "/cancel", { method: "POST" }).catch(report);
  });
  $("flow-all").addEventListener("click", () =>
    api("/v1/transforms")
      .then(({ transforms }) =>
        api("/v1/jobs/flow", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ targets: transforms.map((t) => t.name) }),
        }),
      )
      .then((r) => followFlow(r.id))
      .catch(report),
  );
  $("flow-cancel").addEventListener("click", () => {
    if (currentFlow) api("/v1/jobs/" + encodeURIComponent(currentFlow.id) + "/cancel", { method: "POST" }).catch(report);
  });
  refreshStreams().then(() => loadDeadLetters(false)).then(refreshJobs).then(refreshSources).then(refreshTransforms).catch(report);
  setInterval(() => refreshStreams().then(refreshSources).then(refreshTransforms).catch(report), 2000);
});
