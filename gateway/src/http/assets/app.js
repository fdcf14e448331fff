// Roost dashboard: one EventSource on /api/live; rates are derived from the totals it sends.
"use strict";

const HISTORY = 120;
const history = { in: [], out: [] };
let last = null;

const $ = (id) => document.getElementById(id);

function duration(s) {
  if (s < 120) return s + " s";
  if (s < 7200) return Math.floor(s / 60) + " min";
  if (s < 172800) return Math.floor(s / 3600) + " h";
  return Math.floor(s / 86400) + " d";
}

function rate(now, prev, pick) {
  if (!prev) return 0;
  const dt = (now.uptime_ms - prev.uptime_ms) / 1000;
  if (dt <= 0) return 0;
  return Math.max(0, (pick(now) - pick(prev)) / dt);
}

function push(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

function draw() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...history.in, ...history.out);
  const line = (series, color) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    series.forEach((v, i) => {
      const x = (i / (HISTORY - 1)) * w;
      const y = h - (v / max) * (h - 4) - 2;
      i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    });
    ctx.stroke();
  };
  line(history.in, "#3b82f6");
  line(history.out, "#10b981");
}

function render(s) {
  $("node").textContent = s.node;
  $("cluster").textContent = s.cluster;
  const st = $("status");
  st.textContent = s.health.status;
  st.className = "pill " + s.health.status;
  $("leader").textContent = s.health.leader || "none";
  $("term").textContent = s.health.term;
  $("uptime").textContent = duration(s.uptime_seconds);
  $("version").textContent = s.version;
  $("mqtt").textContent = s.mqtt.listen;
  const rin = rate(s, last, (x) => x.mqtt.messages_received);
  const rout = rate(s, last, (x) => x.mqtt.messages_sent);
  $("rate-in").textContent = rin.toFixed(rin < 10 ? 1 : 0);
  $("rate-out").textContent = rout.toFixed(rout < 10 ? 1 : 0);
  $("connections").textContent = s.mqtt.connections;
  $("retained").textContent = s.mqtt.retained;
  $("keys").textContent = s.state.keys;
  if (last) {
    push(history.in, rin);
    push(history.out, rout);
    draw();
  }
  const rows = s.health.members.map((m) => {
    const tr = document.createElement("tr");
    for (const text of [m.id + (m.self ? " (this node)" : ""), m.online ? "online" : "offline", m.role]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  });
  $("members").replaceChildren(...rows);
  last = s;
}

function connect() {
  const es = new EventSource("/api/live");
  es.addEventListener("node", (e) => {
    $("conn").textContent = "live";
    $("conn").className = "pill on";
    render(JSON.parse(e.data));
  });
  es.onerror = () => {
    // EventSource reconnects by itself; show that the page is waiting for the node.
    $("conn").textContent = "reconnecting…";
    $("conn").className = "pill off";
    last = null;
  };
}

connect();
