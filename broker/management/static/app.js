"use strict";
// Leveret's management page: logs in with HTTP basic auth against /api/whoami, as RabbitMQ's UI does, then
// polls the management API and renders each answer in the browser. Every name shown comes from clients
// (queues, exchanges, users), so text only ever enters the page as text nodes, never as markup.

const HISTORY_MS = 10 * 60 * 1000; // the charts show the last ten minutes
const MAX_ROWS = 500; // rows drawn per table; the queue filter narrows longer lists
const STORAGE_KEY = "leveret.auth";

const state = {
  auth: sessionStorage.getItem(STORAGE_KEY), // base64 "user:password", for this tab only
  user: null,
  run: 0, // the refresh in progress; older ones drop their answers
  timer: null,
  history: [], // overview samples: {at, ready, unacked, publish, deliver_get, ack}
};

// ---- DOM helpers ----------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes and children; strings become text nodes, so names are never parsed. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined) el.append(child);
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, value);
  for (const child of children) el.append(child);
  return el;
}

const count = (n) => (typeof n === "number" ? n.toLocaleString("en") : "–");
const perSecond = (r) => (typeof r === "number" ? r.toFixed(1) + "/s" : "–");
const clock = (ms) => new Date(ms).toLocaleTimeString("en-GB");

// ---- the API --------------------------------------------------------------------------------------

// The listener sends no reason phrase (HTTP/1.1 200 with nothing after it): name the common statuses here.
const STATUS_TEXT = {
  400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
  413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
};

class ApiError extends Error {
  constructor(status, body) {
    const reason = (body && (body.reason || body.error)) || STATUS_TEXT[status] || "HTTP error";
    super(`${status} ${reason}`);
    this.status = status;
    this.reason = reason;
  }
}

/** A path from segments, each percent-encoded ("/" -> %2F, so vhost "/" stays one segment). */
function path(...segments) {
  for (const s of segments) {
    // The URL standard resolves "." and ".." segments (even percent-encoded) before a request leaves the
    // browser, so a queue with such a name cannot be addressed safely.
    if (s === "." || s === "..") throw new Error(`a name "${s}" cannot be used in a URL`);
  }
  return segments.map(encodeURIComponent).join("/");
}

async function api(relative, options = {}) {
  const response = await fetch("api/" + relative, {
    ...options,
    cache: "no-store",
    // The explicit header carries the login; "omit" also keeps the browser from prompting for credentials
    // itself when a 401 carries RabbitMQ's WWW-Authenticate challenge (the Fetch standard's rule).
    credentials: "omit",
    headers: { authorization: "Basic " + state.auth, ...(options.headers || {}) },
  });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

/** Basic credentials as UTF-8 bytes in base64 (btoa alone takes Latin-1 only). */
function basic(username, password) {
  const bytes = new TextEncoder().encode(`${username}:${password}`);
  return btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
}

// ---- rates ----------------------------------------------------------------------------------------

/**
 * message_stats rates: the API's `*_details.rate` when it has one, else the change in the counter between
 * two refreshes. One per table, so the counters of objects that disappeared are dropped at each refresh.
 */
class Rates {
  constructor() {
    this.previous = new Map();
    this.current = new Map();
    this.now = 0;
  }
  begin() {
    this.previous = this.current;
    this.current = new Map();
    this.now = Date.now();
  }
  of(id, stats, key) {
    const details = stats && stats[key + "_details"];
    if (details && typeof details.rate === "number") return details.rate;
    const total = stats && stats[key];
    if (typeof total !== "number") return null;
    const slot = id + "\u0000" + key;
    this.current.set(slot, { total, at: this.now });
    const before = this.previous.get(slot);
    if (!before || this.now <= before.at) return null;
    return Math.max(0, (total - before.total) / ((this.now - before.at) / 1000));
  }
}

const rates = { overview: new Rates(), queues: new Rates(), exchanges: new Rates(), channels: new Rates() };

// ---- tables ---------------------------------------------------------------------------------------

/** columns: [label, cell(row) -> text or node, "num" for right-aligned]. */
function table(columns, rows, total, empty) {
  if (rows.length === 0) return h("p", { class: "empty" }, empty);
  const shown = rows.slice(0, MAX_ROWS);
  const head = h("tr", null, columns.map(([label, , kind]) => h("th", { class: kind || "" }, label)));
  const body = shown.map((row) =>
    h("tr", null, columns.map(([label, cell, kind]) => h("td", { class: kind || "", "data-label": label }, cell(row)))));
  const more = total > shown.length ? h("p", { class: "more" }, `Showing ${shown.length} of ${count(total)}.`) : null;
  return [h("table", null, h("thead", null, head), h("tbody", null, body)), more];
}

function features(item) {
  const tags = [];
  if (item.durable) tags.push(["D", "durable"]);
  if (item.auto_delete) tags.push(["AD", "auto-delete"]);
  if (item.exclusive) tags.push(["Excl", "exclusive"]);
  if (item.internal) tags.push(["I", "internal"]);
  if (item.arguments && Object.keys(item.arguments).length) tags.push(["Args", JSON.stringify(item.arguments)]);
  return tags.map(([label, title]) => h("abbr", { class: "tag", title }, label));
}

function render(containerId, content) {
  $(containerId).replaceChildren(...[content].flat().filter(Boolean));
}

// ---- tabs -----------------------------------------------------------------------------------------

async function showOverview(overview) {
  const totals = overview.object_totals || {};
  const queued = overview.queue_totals || {};
  const cards = [
    ["Connections", totals.connections], ["Channels", totals.channels], ["Exchanges", totals.exchanges],
    ["Queues", totals.queues], ["Consumers", totals.consumers], ["Ready", queued.messages_ready],
    ["Unacked", queued.messages_unacknowledged], ["Total messages", queued.messages],
  ];
  render("totals", cards.map(([label, n]) => h("div", { class: "card" }, h("span", null, label), h("strong", null, count(n)))));
  chart("queued-chart", [["ready", "Ready"], ["unacked", "Unacked"]]);
  chart("rates-chart", [["publish", "Publish"], ["deliver_get", "Deliver / get"], ["ack", "Ack"]]);
}

async function showQueues() {
  const queues = await api("queues");
  const filter = $("queue-filter").value.trim().toLowerCase();
  const matching = filter ? queues.filter((q) => q.name.toLowerCase().includes(filter)) : queues;
  const r = rates.queues;
  r.begin();
  const id = (q) => q.vhost + "\u0000" + q.name;
  const columns = [
    ["Virtual host", (q) => q.vhost],
    ["Name", (q) => h("span", { class: "name" }, q.name)],
    ["Type", (q) => q.type || "classic"],
    ["Features", features],
    ["Policy", (q) => q.policy || ""],
    ["State", (q) => q.state || ""],
    ["Ready", (q) => count(q.messages_ready), "num"],
    ["Unacked", (q) => count(q.messages_unacknowledged), "num"],
    ["Total", (q) => count(q.messages), "num"],
    ["Consumers", (q) => count(q.consumers), "num"],
    ["Incoming", (q) => perSecond(r.of(id(q), q.message_stats, "publish")), "num"],
    ["Deliver / get", (q) => perSecond(r.of(id(q), q.message_stats, "deliver_get")), "num"],
    ["Ack", (q) => perSecond(r.of(id(q), q.message_stats, "ack")), "num"],
    ["Actions", (q) => h("button", { type: "button", class: "purge", onclick: () => purge(q) }, "Purge")],
  ];
  render("queue-table", table(columns, matching, matching.length, filter ? "No queue matches." : "No queues."));
}

async function showExchanges() {
  const exchanges = await api("exchanges");
  const r = rates.exchanges;
  r.begin();
  const id = (x) => x.vhost + "\u0000" + x.name;
  const columns = [
    ["Virtual host", (x) => x.vhost],
    ["Name", (x) => (x.name === "" ? h("em", null, "(AMQP default)") : h("span", { class: "name" }, x.name))],
    ["Type", (x) => x.type],
    ["Features", features],
    ["Policy", (x) => x.policy || ""],
    ["In", (x) => perSecond(r.of(id(x), x.message_stats, "publish_in")), "num"],
    ["Out", (x) => perSecond(r.of(id(x), x.message_stats, "publish_out")), "num"],
  ];
  render("exchange-table", table(columns, exchanges, exchanges.length, "No exchanges."));
}

/** The name a client gave its connection (client property connection_name), under RabbitMQ's name. */
function given(c) {
  const name = (c.client_properties || {}).connection_name;
  return typeof name === "string" ? h("div", { class: "given" }, name) : null;
}

async function showConnections() {
  const connections = await api("connections");
  const client = (c) => {
    const p = c.client_properties || {};
    return [p.product, p.version].filter((v) => typeof v === "string").join(" ");
  };
  const columns = [
    ["Name", (c) => [h("span", { class: "name" }, c.name), given(c)]],
    ["User", (c) => c.user],
    ["Virtual host", (c) => c.vhost],
    ["State", (c) => c.state],
    ["TLS", (c) => (c.ssl ? "yes" : "no")],
    ["Protocol", (c) => c.protocol],
    ["Client", client],
    ["Channels", (c) => count(c.channels), "num"],
    ["Heartbeat", (c) => (typeof c.timeout === "number" ? c.timeout + " s" : "–"), "num"],
    ["Connected", (c) => (typeof c.connected_at === "number" ? clock(c.connected_at) : "–")],
  ];
  render("connection-table", table(columns, connections, connections.length, "No connections."));
}

async function showChannels() {
  const channels = await api("channels");
  const r = rates.channels;
  r.begin();
  const mode = (ch) => [ch.confirm ? "C" : "", ch.transactional ? "T" : ""].join("");
  const columns = [
    ["Channel", (ch) => h("span", { class: "name" }, ch.name)],
    ["User", (ch) => ch.user],
    ["Virtual host", (ch) => ch.vhost],
    ["Mode", (ch) => h("abbr", { title: "C: confirm, T: transactional" }, mode(ch))],
    ["State", (ch) => ch.state],
    ["Prefetch", (ch) => count(ch.prefetch_count), "num"],
    ["Unacked", (ch) => count(ch.messages_unacknowledged), "num"],
    ["Consumers", (ch) => count(ch.consumer_count), "num"],
    ["Publish", (ch) => perSecond(r.of(ch.name, ch.message_stats, "publish")), "num"],
    ["Deliver / get", (ch) => perSecond(r.of(ch.name, ch.message_stats, "deliver_get")), "num"],
    ["Ack", (ch) => perSecond(r.of(ch.name, ch.message_stats, "ack")), "num"],
  ];
  render("channel-table", table(columns, channels, channels.length, "No channels."));
}

const TABS = {
  overview: showOverview,
  queues: showQueues,
  exchanges: showExchanges,
  connections: showConnections,
  channels: showChannels,
};

function currentTab() {
  const name = location.hash.slice(1);
  return Object.hasOwn(TABS, name) ? name : "overview";
}

// ---- the chart ------------------------------------------------------------------------------------

function record(overview) {
  const r = rates.overview;
  r.begin();
  const stats = overview.message_stats;
  const queued = overview.queue_totals || {};
  state.history.push({
    at: r.now,
    ready: queued.messages_ready,
    unacked: queued.messages_unacknowledged,
    publish: r.of("", stats, "publish"),
    deliver_get: r.of("", stats, "deliver_get"),
    ack: r.of("", stats, "ack"),
  });
  while (state.history.length && state.history[0].at < r.now - HISTORY_MS) state.history.shift();
}

/** A line chart of the recorded samples; `series`: [key, label]. Gaps where a value is unknown. */
function chart(figureId, series) {
  const W = 640, H = 140, PAD = 4;
  const samples = state.history;
  const last = samples.length ? samples[samples.length - 1].at : Date.now();
  const first = Math.min(samples.length ? samples[0].at : last, last - 60 * 1000);
  const values = samples.flatMap((s) => series.map(([key]) => s[key])).filter((v) => typeof v === "number");
  const top = niceCeiling(Math.max(1, ...values));
  const x = (at) => PAD + ((at - first) / (last - first)) * (W - 2 * PAD);
  const y = (v) => H - PAD - (v / top) * (H - 2 * PAD);
  const lines = series.map(([key], i) => {
    const segments = [[]];
    for (const s of samples) {
      if (typeof s[key] === "number") segments[segments.length - 1].push(`${x(s.at).toFixed(1)},${y(s[key]).toFixed(1)}`);
      else if (segments[segments.length - 1].length) segments.push([]);
    }
    return segments.filter((points) => points.length).map((points) =>
      points.length === 1
        ? svg("circle", { class: `series-${i}`, cx: points[0].split(",")[0], cy: points[0].split(",")[1], r: 2 })
        : svg("polyline", { class: `series-${i}`, points: points.join(" ") }));
  }).flat();
  const grid = [0.25, 0.5, 0.75].map((f) => svg("line", { class: "grid", x1: 0, x2: W, y1: y(top * f), y2: y(top * f) }));
  const picture = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": series.map(([, l]) => l).join(", ") },
    ...grid, ...lines);
  const latest = samples[samples.length - 1] || {};
  const legend = h("div", { class: "legend" },
    h("span", { class: "axis" }, `max ${count(top)} · ${clock(first)} – ${clock(last)}`),
    series.map(([key, label], i) => h("span", { class: "key" }, h("i", { class: `swatch series-${i}` }), `${label} `,
      h("strong", { "data-series": key }, key === "ready" || key === "unacked" ? count(latest[key]) : perSecond(latest[key])))));
  render(figureId, [picture, legend]);
}

function niceCeiling(v) {
  const magnitude = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 5, 10]) if (v <= step * magnitude) return step * magnitude;
  return 10 * magnitude;
}

// ---- refreshing, actions, login -------------------------------------------------------------------

async function refresh() {
  const run = ++state.run;
  clearTimeout(state.timer);
  try {
    const overview = await api("overview");
    if (run !== state.run) return;
    record(overview);
    $("node").textContent = `${overview.product_name || ""} ${overview.product_version || ""} · ${overview.node || ""}`;
    const tab = currentTab();
    for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("active", link.dataset.tab === tab);
    for (const name of Object.keys(TABS)) $(name).hidden = name !== tab;
    await TABS[tab](overview);
    if (run !== state.run) return;
    $("error").hidden = true;
    document.body.dataset.refreshed = String(run); // lets tests wait for a completed refresh
  } catch (error) {
    if (run !== state.run) return;
    if (error.status === 401) return logout(error.reason);
    $("error").textContent = `Could not load: ${error.message}`;
    $("error").hidden = false;
  }
  schedule();
}

/** The next refresh; none while the tab is hidden (a forgotten tab costs the broker nothing). */
function schedule() {
  clearTimeout(state.timer);
  if (!document.hidden) state.timer = setTimeout(refresh, Number($("refresh").value) * 1000);
}

function notice(text, ok) {
  $("notice-text").textContent = text;
  $("notice").className = ok ? "ok" : "error";
  $("notice").hidden = false;
}

async function purge(q) {
  if (!confirm(`Purge every ready message of queue "${q.name}" in virtual host "${q.vhost}"?`)) return;
  try {
    await api(`queues/${path(q.vhost, q.name)}/contents`, { method: "DELETE" });
    notice(`Queue "${q.name}" purged.`, true);
  } catch (error) {
    notice(`Purge of queue "${q.name}" failed: ${error.message}`, false);
  }
  refresh();
}

function showLogin(reason) {
  for (const id of ["tabs", "session", "error", "notice"]) $(id).hidden = true;
  for (const name of Object.keys(TABS)) $(name).hidden = true;
  $("node").textContent = "";
  $("login-error").textContent = reason || "";
  $("login").hidden = false;
  $("username").focus();
}

async function start() {
  try {
    state.user = await api("whoami");
  } catch (error) {
    state.auth = null;
    sessionStorage.removeItem(STORAGE_KEY);
    showLogin(error.status === 401 ? error.reason || "Login failed" : `Login failed: ${error.message}`);
    return;
  }
  sessionStorage.setItem(STORAGE_KEY, state.auth);
  const tags = Array.isArray(state.user.tags) ? state.user.tags.join(", ") : String(state.user.tags || "");
  $("who").textContent = `${state.user.name} (${tags || "no tags"})`;
  $("login").hidden = true;
  $("tabs").hidden = false;
  $("session").hidden = false;
  state.history = [];
  refresh();
}

function logout(reason) {
  state.run++;
  clearTimeout(state.timer);
  state.auth = null;
  state.user = null;
  sessionStorage.removeItem(STORAGE_KEY);
  showLogin(reason);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    state.auth = basic($("username").value, $("password").value);
    $("password").value = "";
    start();
  });
  $("logout").addEventListener("click", () => logout(""));
  $("refresh").addEventListener("change", refresh);
  $("queue-filter").addEventListener("input", refresh);
  $("notice-close").addEventListener("click", () => ($("notice").hidden = true));
  window.addEventListener("hashchange", () => state.user && refresh());
  document.addEventListener("visibilitychange", () => state.user && !document.hidden && refresh());
  if (state.auth) start();
  else showLogin("");
});
