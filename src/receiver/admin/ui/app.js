// hookwarden's status page: the admin API and its live stream, rendered.
// No framework and nothing from elsewhere: this file, app.css and index.html
// are served by the receiver itself.
"use strict";

const TOKEN_KEY = "hookwarden-admin-token";
const MAX_DELIVERIES = 50;
const $ = (selector) => document.querySelector(selector);
const state = { policies: new Map(), hooks: [], deliveries: [], lastEventId: null };
let stopStream = null;

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class Unauthorized extends Error {}

async function api(method, path) {
  const response = await fetch(path, { method, headers: { Authorization: `Bearer ${token()}` } });
  if (response.status === 401) throw new Unauthorized("the token was refused");
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text ?? "-";
  if (className) td.className = className;
  return td;
}

// Each cell names its column, for the narrow layout (a card per row).
function label(table) {
  const names = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
  for (const tr of table.querySelectorAll("tbody tr")) {
    [...tr.children].forEach((td, i) => { td.dataset.label = names[i] || ""; });
  }
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function renderPolicies() {
  const body = $("#policies tbody");
  body.replaceChildren();
  for (const p of state.policies.values()) {
    const tr = document.createElement("tr");
    tr.dataset.policy = p.policy;
    tr.append(cell(p.policy, "mono"));
    const dispatch = cell("", "dispatch");
    const badge = document.createElement("span");
    badge.className = `badge ${p.enabled ? "on" : "off"}`;
    badge.textContent = p.enabled ? "enabled" : "disabled";
    badge.title = p.reason || "";
    const flip = document.createElement("button");
    flip.className = "small flip";
    flip.textContent = p.enabled ? "Disable" : "Enable";
    flip.onclick = () => confirmThen(
      p.enabled
        ? `Stop dispatching ${p.policy}? Deliveries keep being queued; nothing is sent to its agents until it is enabled again.`
        : `Resume dispatching ${p.policy}?`,
      () => api("POST", `/admin/policies/${p.policy}/${p.enabled ? "disable" : "enable"}`),
    );
    dispatch.append(badge, " ", flip);
    tr.append(dispatch, cell(p.concurrency, "num"), cell(p.queued, "num"), cell(p.retrying, "num"));
    const dead = cell("", "num");
    dead.append(String(p.deadLetters ?? 0));
    if (p.deadLetters > 0) {
      const show = document.createElement("button");
      show.className = "small";
      show.textContent = "Show";
      show.onclick = () => showDeadLetters(p.policy);
      dead.append(" ", show);
    }
    tr.append(dead);
    const agents = cell("");
    for (const a of p.agents || []) {
      const span = document.createElement("span");
      span.className = `badge ${a.circuit}`;
      span.dataset.agent = a.name;
      span.textContent = `${a.name}: ${a.circuit}`;
      agents.append(span, " ");
    }
    tr.append(agents);
    body.append(tr);
  }
  label($("#policies"));
}

function renderHooks() {
  const body = $("#hooks tbody");
  body.replaceChildren();
  for (const h of state.hooks) {
    const tr = document.createElement("tr");
    tr.dataset.hook = h.hook;
    const ready = h.ready === "True" ? "ok" : h.ready === "False" ? "bad" : "warn";
    const last = h.lastDelivery
      ? `${h.lastDelivery.event} → ${h.lastDelivery.statusCode || "unreachable"}, ${ago(Date.parse(h.lastDelivery.deliveredAt))}`
      : "-";
    tr.append(cell(h.hook, "mono"), cell(h.policy, "mono"), cell(h.ready || "Unknown", ready), cell(last));
    body.append(tr);
  }
  label($("#hooks"));
}

function renderDeliveries() {
  const body = $("#deliveries tbody");
  body.replaceChildren();
  for (const d of state.deliveries) {
    const tr = document.createElement("tr");
    tr.dataset.guid = d.guid;
    tr.dataset.status = d.status;
    const who = d.agent ? `${d.hook} → ${d.agent}` : d.hook;
    const status = d.detail ? `${d.status} (${d.detail})` : d.status;
    tr.append(cell(ago(d.atMs)), cell(status, d.status), cell(d.event), cell(d.repository),
      cell(who, "mono"), cell(d.guid, "mono"));
    body.append(tr);
  }
  label($("#deliveries"));
}

function addDelivery(d) {
  state.deliveries.unshift(d);
  state.deliveries.length = Math.min(state.deliveries.length, MAX_DELIVERIES);
  renderDeliveries();
}

async function refresh() {
  const [policies, hooks] = await Promise.all([api("GET", "/admin/policies"), api("GET", "/admin/hooks")]);
  state.policies = new Map(policies.map((p) => [p.policy, p]));
  state.hooks = hooks;
  renderPolicies();
  renderHooks();
}

async function showDeadLetters(policy) {
  $("#dead-policy").textContent = policy;
  $("#dead-letters").hidden = false;
  const letters = await api("GET", `/admin/policies/${policy}/dead-letters`);
  const body = $("#dead-letters tbody");
  body.replaceChildren();
  for (const l of letters) {
    const tr = document.createElement("tr");
    const replay = document.createElement("button");
    replay.className = "small";
    replay.textContent = "Replay";
    replay.onclick = () => confirmThen(`Send dead letter ${l.id} (${l.event}) to ${l.agent} again?`, async () => {
      await api("POST", `/admin/policies/${policy}/dead-letters/${l.id}/replay`);
      await showDeadLetters(policy);
    });
    const actions = cell("");
    actions.append(replay);
    tr.append(cell(ago(l.failedMs)), cell(l.event), cell(l.agent), cell(l.error), actions);
    body.append(tr);
  }
  label($("#dead-letters table"));
}

function confirmThen(text, action) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "yes") return;
    try {
      await action();
      await refresh();
    } catch (e) {
      alertLine(e);
    }
  };
  dialog.showModal();
}

function alertLine(e) {
  if (e instanceof Unauthorized) return signOut("The token was refused: sign in again.");
  setLive("off", `error: ${e.message}`);
}

function setLive(kind, text) {
  const live = $("#live");
  live.className = `badge ${kind}`;
  live.textContent = text;
}

// Server-Sent Events over fetch (EventSource cannot send the token).
function follow() {
  let stopped = false;
  const controller = new AbortController();
  const run = async () => {
    while (!stopped) {
      try {
        const headers = { Authorization: `Bearer ${token()}` };
        if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
        const response = await fetch("/admin/stream", { headers, signal: controller.signal });
        if (response.status === 401) throw new Unauthorized("the token was refused");
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        setLive("on", "live");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            handle(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
          }
        }
      } catch (e) {
        if (stopped) return;
        if (e instanceof Unauthorized) return signOut("The token was refused: sign in again.");
      }
      setLive("warn", "reconnecting…");
      await new Promise((r) => setTimeout(r, 1000));
    }
  };
  run();
  return () => { stopped = true; controller.abort(); };
}

function handle(block) {
  let event = "message", data = "", id = null;
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const at = line.indexOf(":");
    const field = at < 0 ? line : line.slice(0, at);
    const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data += (data ? "\n" : "") + value;
    else if (field === "id") id = value;
  }
  if (!data) return;
  if (id) state.lastEventId = id;
  const body = JSON.parse(data);
  if (event === "snapshot") {
    state.policies = new Map(body.map((p) => [p.policy, p]));
    renderPolicies();
  } else if (event === "policy") {
    const p = state.policies.get(body.policy);
    if (p) Object.assign(p, { enabled: body.enabled, concurrency: body.concurrency });
    renderPolicies();
  } else if (event === "circuit") {
    const p = state.policies.get(body.policy);
    const a = p && (p.agents || []).find((x) => x.name === body.agent);
    if (a) a.circuit = body.circuit;
    renderPolicies();
  } else if (event === "delivery") {
    addDelivery(body);
  }
}

async function start() {
  $("#sign-in").hidden = true;
  $("#board").hidden = false;
  $("#sign-out").hidden = false;
  try {
    await refresh();
    const recent = await api("GET", `/admin/deliveries?limit=${MAX_DELIVERIES}`);
    state.deliveries = recent;
    renderDeliveries();
  } catch (e) {
    return alertLine(e);
  }
  stopStream = follow();
  // The counts (queued, retrying, dead letters) and the hooks are not on the stream.
  setInterval(() => refresh().catch(alertLine), 5000);
  setInterval(renderDeliveries, 10000); // relative times
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (stopStream) stopStream();
  location.hash = "";
  $("#board").hidden = true;
  $("#sign-out").hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = message || "";
  setLive("off", "not connected");
}

$("#sign-in").addEventListener("submit", async (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value);
  $("#token").value = "";
  try {
    await api("GET", "/admin/policies");
  } catch (err) {
    return signOut(err instanceof Unauthorized ? "That token was refused." : `The receiver did not answer: ${err.message}`);
  }
  start();
});
$("#sign-out").onclick = () => location.reload(signOut());
$("#dead-close").onclick = () => { $("#dead-letters").hidden = true; };

if (token()) start(); else signOut();
