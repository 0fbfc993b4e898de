// Billow's dashboard: calls the same /v1 API as the CLI, with the token kept in this
// tab's sessionStorage (never in a URL). No inline script or style: the page's
// Content-Security-Policy is default-src 'self'. Text is set with textContent only.
"use strict";

const KEY = "billow.token";
const POLL_MS = 2000;
let timer = null;
let chart = null;
let me = null; // the caller (GET /v1/whoami)

const $ = (id) => document.getElementById(id);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(KEY) };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error((data && data.message) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

function showError(e) {
  $("error").textContent = e ? String(e.message || e) : "";
}

function age(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

// -- clusters -------------------------------------------------------------------------

async function loadClusters() {
  const [listed, usage] = await Promise.all([
    api("GET", "/v1/clusters"),
    api("GET", "/v1/usage").catch(() => null),
  ]);
  const hours = usage ? usage.metered.by_cluster : {};
  const rows = $("cluster-rows");
  rows.replaceChildren();
  for (const c of listed.clusters) {
    const tr = el("tr", null, { "data-cluster": c.name, "data-id": c.id });
    tr.append(el("td", c.name), el("td", c.owner));
    tr.append(el("td", c.status, { class: "status status-" + c.status, "data-field": "status" }));
    tr.append(el("td", c.workers), el("td", age(c.created_at)));
    const used = hours[c.id] ? hours[c.id].cpu_hours : 0;
    tr.append(el("td", used.toFixed(4)), el("td", c.stop_reason || ""));
    const dash = el("td");
    if (c.dashboard_address && !["stopped", "failed"].includes(c.status)) {
      dash.append(el("a", "dashboard", { href: c.dashboard_address, target: "_blank", rel: "noopener" }));
    }
    tr.append(dash);
    const actions = el("td");
    const logs = el("button", "logs", { "data-action": "logs" });
    logs.addEventListener("click", () => showLogs(c).catch(showError));
    actions.append(logs);
    if (!["stopped", "failed", "stopping"].includes(c.status)) {
      const stop = el("button", "stop", { "data-action": "stop" });
      stop.addEventListener("click", () => stopCluster(c).catch(showError));
      actions.append(stop);
    }
    tr.append(actions);
    rows.append(tr);
  }
}

async function showLogs(c) {
  const answer = await api("GET", `/v1/clusters/${encodeURIComponent(c.id)}/logs?lines=200`);
  const text = answer.instances
    .map((i) => `== ${i.name} (${i.role}, ${i.state}) ==\n` + i.lines.join("\n"))
    .join("\n\n");
  $("logs-name").textContent = c.name;
  $("logs").textContent = text || "(no log lines yet)";
  $("logs-panel").hidden = false;
}

async function stopCluster(c) {
  if (!window.confirm(`Stop cluster ${c.name}? Its workers and scheduler are terminated.`)) return;
  await api("POST", `/v1/clusters/${encodeURIComponent(c.id)}/stop`);
  await loadClusters();
}

// -- usage ----------------------------------------------------------------------------

async function loadUsage() {
  const report = await api("GET", "/v1/usage");
  const m = report.metered;
  $("usage-month").textContent = m.month;
  $("usage-total").textContent = m.total.cpu_hours.toFixed(6);
  $("usage-gpu").textContent = m.total.gpu_hours.toFixed(3);
  drawChart(m);
  drawQuotas(report);
  const rows = $("usage-rows");
  rows.replaceChildren();
  for (const group of ["team", "user"]) {
    for (const [name, t] of Object.entries(m["by_" + group])) {
      const tr = el("tr");
      tr.append(el("td", group), el("td", name), el("td", t.cpu_hours.toFixed(6)));
      tr.append(el("td", t.gpu_hours.toFixed(3)), el("td", t.memory_gib_hours.toFixed(3)));
      rows.append(tr);
    }
  }
  await loadInvoice(m.month);
}

const COLORS = ["#3b6fd8", "#d8703b", "#2f9e5b", "#9b3bd8", "#c9a227", "#d83b6f", "#3bb5d8"];

// Every day of the month up to today (the whole month once it has ended), in UTC.
function monthDays(month) {
  const [y, m] = month.split("-").map(Number);
  const days = [];
  for (let d = new Date(Date.UTC(y, m - 1, 1)); d.getUTCMonth() === m - 1; d.setUTCDate(d.getUTCDate() + 1)) {
    if (d.getTime() > Date.now()) break;
    days.push(d.toISOString().slice(0, 10));
  }
  return days;
}

function plot(box, title, days, groups, unit, asBars) {
  const xs = days.map((d) => Date.parse(d + "T00:00:00Z") / 1000);
  const names = Object.keys(groups).sort();
  const series = [{}];
  const data = [xs];
  names.forEach((name, i) => {
    const color = COLORS[i % COLORS.length];
    series.push({ label: name, stroke: color, width: 2,
      fill: asBars ? color + "55" : undefined,
      paths: asBars ? window.uPlot.paths.bars({ size: [0.7 / Math.max(1, names.length), 40] }) : undefined });
    data.push(days.map((d) => Number(groups[name][d] || 0)));
  });
  const opts = {
    title, width: Math.min(900, box.clientWidth || 900), height: 240,
    scales: { x: { time: true, range: [xs[0] - 43200, xs[xs.length - 1] + 43200] } },
    series, axes: [{}, { label: unit }],
  };
  box.replaceChildren();
  return new window.uPlot(opts, data, box);
}

function drawChart(m) {
  const days = monthDays(m.month);
  const box = $("usage-chart");
  // a team's view: one series per team; a member's: their own
  const groups = m.spend_by_day ? m.daily_by_team : m.daily_by_user;
  let total = 0;
  for (const g of Object.values(groups)) for (const d of days) total += g[d] || 0;
  box.setAttribute("data-total", total.toFixed(6));
  if (chart) chart.destroy();
  chart = plot(box, "CPU-hours per day", days, groups, "CPU-hours", true);
  window.billowChart = chart;
  const spendBox = $("spend-chart");
  if (m.spend_by_day && Object.keys(m.spend_by_day).length) {
    const carried = {};
    for (const [team, byDay] of Object.entries(m.spend_by_day)) {
      let last = 0;
      carried[team] = {};
      for (const d of days) {
        if (byDay[d] !== undefined) last = Number(byDay[d]);
        carried[team][d] = last;
      }
    }
    spendBox.hidden = false;
    plot(spendBox, "Billow price of the month so far, by team (USD)", days, carried, "USD", false);
  } else {
    spendBox.hidden = true;
  }
}

function drawQuotas(report) {
  const box = $("quota-bars");
  box.replaceChildren();
  for (const who of ["user", "team"]) {
    const part = report[who];
    if (!part || !part.use) continue;
    for (const [field, limit] of Object.entries(part.limits)) {
      if (limit === null) continue;
      const used = part.use[field];
      const row = el("div", null, { class: "quota", "data-quota": `${who}:${field}` });
      row.append(el("div", `${who} ${part.name}: ${field.replace("_", "-")} ${used} / ${limit}`));
      const track = el("div", null, { class: "quota-track" });
      const fill = el("div", null, { class: used >= limit ? "quota-fill over" : "quota-fill" });
      fill.style.width = Math.min(100, limit ? (100 * used) / limit : 100) + "%"; // CSSOM: CSP-safe
      track.append(fill);
      row.append(track);
      box.append(row);
    }
  }
}

async function loadInvoice(month) {
  const box = $("invoice");
  box.replaceChildren();
  if (!me.is_admin && !["admin", "viewer"].includes(me.role)) {
    box.append(el("p", "Invoices are for team admins and viewers; this is your own usage."));
    return;
  }
  let answer;
  try {
    answer = await api("GET", `/v1/invoices/${month}`);
  } catch (e) {
    box.append(el("p", e.message));
    return;
  }
  for (const bill of answer.invoices) {
    box.append(el("h3", `team ${bill.team}: ${bill.cpu_hours} CPU-hours, ${bill.total} ${bill.currency}`));
    const table = el("table");
    for (const line of bill.lines) {
      const tr = el("tr");
      tr.append(el("td", line.description), el("td", line.arithmetic));
      table.append(tr);
    }
    box.append(table);
    const est = bill.cloud_estimate;
    box.append(el("p", `Cloud cost estimate (billed by your cloud): $${est.total}` +
      (est.unpriced_instances ? `; ${est.unpriced_instances} instance(s) without a list price` : "")));
  }
}

// -- tokens ---------------------------------------------------------------------------

async function loadTokens() {
  const answer = await api("GET", "/v1/tokens");
  const rows = $("token-rows");
  rows.replaceChildren();
  for (const t of answer.tokens) {
    const tr = el("tr", null, { "data-token": t.id });
    tr.append(el("td", t.id), el("td", t.name), el("td", t.scope || "full"));
    tr.append(el("td", (t.created_at || "").slice(0, 16)), el("td", (t.expires_at || "never").slice(0, 16)));
    tr.append(el("td", (t.last_used_at || "").slice(0, 16)));
    const cell = el("td");
    const revoke = el("button", "revoke", { "data-action": "revoke" });
    revoke.addEventListener("click", async () => {
      if (!window.confirm(`Revoke token ${t.id}${t.name ? " (" + t.name + ")" : ""}?`)) return;
      await api("DELETE", `/v1/tokens/${encodeURIComponent(t.id)}`).catch(showError);
      await loadTokens().catch(showError);
    });
    cell.append(revoke);
    tr.append(cell);
    rows.append(tr);
  }
}

async function createToken(event) {
  event.preventDefault();
  const body = { name: $("token-name").value };
  if ($("token-scope").value) body.scope = $("token-scope").value;
  const made = await api("POST", "/v1/tokens", body);
  const notice = $("new-token");
  notice.textContent = `New token ${made.id} (shown once, copy it now): ${made.token}`;
  notice.hidden = false;
  await loadTokens();
}

// -- navigation -----------------------------------------------------------------------

const VIEWS = { clusters: loadClusters, usage: loadUsage, tokens: loadTokens };

function show(view) {
  clearInterval(timer);
  showError(null);
  for (const name of ["login", ...Object.keys(VIEWS)]) $(name).hidden = name !== view;
  for (const name of Object.keys(VIEWS)) {
    $("nav-" + name).classList.toggle("active", name === view);
  }
  const load = VIEWS[view];
  if (!load) return;
  load().catch(onApiError);
  if (view === "clusters") timer = setInterval(() => loadClusters().catch(onApiError), POLL_MS);
}

function onApiError(e) {
  if (e.status === 401) return logout("your token is no longer valid; log in again");
  showError(e);
}

function route() {
  if (!sessionStorage.getItem(KEY)) return show("login");
  const view = (location.hash || "#clusters").slice(1);
  show(VIEWS[view] ? view : "clusters");
}

async function login(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("token").value.trim());
  $("token").value = "";
  try {
    me = await api("GET", "/v1/whoami");
    $("whoami").textContent = `${me.name} (${me.role}, team ${me.team})`;
    $("nav").hidden = false;
    $("logout").hidden = false;
    $("login-error").textContent = "";
    route();
  } catch (e) {
    sessionStorage.removeItem(KEY);
    $("login-error").textContent = e.message;
  }
}

function logout(message) {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("whoami").textContent = "";
  $("login-error").textContent = typeof message === "string" ? message : "";
  show("login");
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("token-form").addEventListener("submit", (e) => createToken(e).catch(showError));
  $("logout").addEventListener("click", () => logout());
  window.addEventListener("hashchange", route);
  if (sessionStorage.getItem(KEY)) {
    api("GET", "/v1/whoami")
      .then((found) => {
        me = found;
        $("whoami").textContent = `${me.name} (${me.role}, team ${me.team})`;
        $("nav").hidden = false;
        $("logout").hidden = false;
        route();
      })
      .catch(() => logout());
  } else {
    show("login");
  }
});
