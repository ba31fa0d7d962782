// The dashboard: one EventSource (/dashboard/events), a table of services, a canvas chart, a service page.
"use strict";

const WINDOW_SECS = 300;
const params = new URLSearchParams(location.search);
const selected = params.get("service");
// service id -> [{t, outstanding, healthy}], the last WINDOW_SECS of snapshots (what the chart draws)
const series = {};
window.waiterDashboard = { series, snapshots: 0, selected };

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function cell(row, text, cls) {
  row.appendChild(el("td", text, cls));
}

function record(snapshot) {
  for (const s of snapshot.services) {
    const points = series[s.id] || (series[s.id] = []);
    points.push({ t: snapshot.time, outstanding: s.outstanding, healthy: s.instances.healthy });
    while (points.length && points[0].t < snapshot.time - WINDOW_SECS) points.shift();
  }
  for (const id of Object.keys(series)) {
    if (!snapshot.services.some((s) => s.id === id)) delete series[id];
  }
}

function renderServices(snapshot) {
  const body = document.querySelector("#services tbody");
  body.replaceChildren();
  for (const s of snapshot.services) {
    const row = el("tr");
    row.dataset.serviceId = s.id;
    if (s.id === selected) row.className = "selected";
    const name = el("td");
    const link = el("a", s.tokens.length ? s.tokens.join(", ") : s.name || s.id);
    link.href = "/dashboard?service=" + encodeURIComponent(s.id);
    link.title = s.id;
    name.appendChild(link);
    row.appendChild(name);
    cell(row, s.status, "status-" + s.status);
    for (const key of ["healthy", "starting", "expired"]) cell(row, s.instances[key], "num");
    cell(row, s.requested, "num");
    cell(row, s.queued, "num queued");
    cell(row, s.outstanding, "num outstanding");
    cell(row, s.scaling ? s.scaling.state + " (" + s.scaling.cause + ")" : "", "decision");
    if (s.scaling) row.lastChild.title = s.scaling.reason;
    body.appendChild(row);
  }
  document.getElementById("empty").hidden = snapshot.services.length > 0;
}

const COLOURS = ["#3b6fd4", "#d4693b", "#2e9d57", "#8e44ad", "#c0392b", "#16a085"];

function drawChart(now) {
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 30;
  ctx.clearRect(0, 0, w, h);
  const ids = Object.keys(series).filter((id) => !selected || id === selected);
  let top = 1;
  for (const id of ids) for (const p of series[id]) top = Math.max(top, p.outstanding, p.healthy);
  ctx.strokeStyle = "#e3e6eb";
  ctx.fillStyle = "#56607a";
  ctx.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = h - pad - (i / 4) * (h - 2 * pad);
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w - 5, y); ctx.stroke();
    const value = (top * i) / 4;
    ctx.fillText(Number.isInteger(value) ? String(value) : value.toFixed(1), 2, y + 4);
  }
  const x = (t) => pad + ((t - (now - WINDOW_SECS)) / WINDOW_SECS) * (w - pad - 5);
  const y = (v) => h - pad - (v / top) * (h - 2 * pad);
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  ids.forEach((id, index) => {
    const colour = COLOURS[index % COLOURS.length];
    for (const [key, dash] of [["outstanding", []], ["healthy", [6, 4]]]) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.setLineDash(dash);
      ctx.beginPath();
      series[id].forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p[key])) : ctx.moveTo(x(p.t), y(p[key]))));
      ctx.stroke();
      const item = el("span");
      const swatch = el("i");
      swatch.style.background = colour;
      if (dash.length) swatch.style.opacity = "0.5";
      item.append(swatch, (key === "outstanding" ? "outstanding " : "healthy instances ") + id.slice(-8));
      legend.appendChild(item);
    }
  });
  ctx.setLineDash([]);
  canvas.dataset.points = String(ids.reduce((n, id) => n + series[id].length, 0));
  canvas.dataset.top = String(top);
}

function when(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString();
}

function renderDetail(detail) {
  const section = document.getElementById("detail");
  section.hidden = false;
  document.getElementById("detail-id").textContent = detail.id;
  const error = document.getElementById("detail-error");
  error.hidden = !detail["deployment-error"];
  error.textContent = detail["deployment-error"] ? "Deployment error: " + detail["deployment-error"] : "";
  const instances = document.querySelector("#instances tbody");
  instances.replaceChildren();
  for (const i of detail.instances) {
    const row = el("tr");
    row.dataset.instanceId = i.id;
    cell(row, i.id);
    cell(row, i.host + ":" + i.port);
    cell(row, when(i["started-at"]));
    cell(row, (i.healthy ? "healthy" : "not healthy") + (i.expired ? ", expired" : ""));
    cell(row, i["in-use"], "num");
    instances.appendChild(row);
  }
  const decisions = document.querySelector("#decisions tbody");
  decisions.replaceChildren();
  for (const d of detail.decisions) {
    const row = el("tr");
    cell(row, when(d.time));
    cell(row, d.state);
    cell(row, d.cause);
    cell(row, d["scale-to"], "num");
    cell(row, d.reason);
    decisions.appendChild(row);
  }
}

function connect() {
  const url = "/dashboard/events" + (selected ? "?service=" + encodeURIComponent(selected) : "");
  const source = new EventSource(url);
  const status = document.getElementById("connection");
  source.onopen = () => { status.textContent = "live"; status.className = "up"; };
  source.onerror = () => { status.textContent = "reconnecting"; status.className = "down"; };
  source.onmessage = (event) => {
    const snapshot = JSON.parse(event.data);
    window.waiterDashboard.snapshots += 1;
    document.getElementById("router").textContent = "router " + snapshot["router-id"];
    record(snapshot);
    renderServices(snapshot);
    drawChart(snapshot.time);
    if (snapshot.service) renderDetail(snapshot.service);
  };
}

if (selected) document.getElementById("chart-title").textContent = "(" + selected + ")";
connect();
