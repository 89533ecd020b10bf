"""The gateway's status page: one self-contained HTML document (no external scripts, styles
or fonts), served at `/` on the admin port.

It polls `/status.json` every `REFRESH_MS` milliseconds and keeps the last `HISTORY` samples
in the browser. Rates are differences of the cumulative counters between samples; latency
percentiles come from the differences of the histogram buckets (linear within a bucket).
Charts are inline SVG. Nothing is stored on the server for the page.
"""

from __future__ import annotations

#: How often the page polls, in milliseconds.
REFRESH_MS = 2000
#: Samples kept for the charts (at REFRESH_MS each: two minutes).
HISTORY = 60

_TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>glammp gateway</title>
<style>
 :root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --mute:#6b7385; --line:#e3e6ec;
         --ok:#1f9d55; --warn:#d98b00; --bad:#d64545; --blue:#2f6fde; --violet:#8a4fd8; }
 * { box-sizing: border-box; }
 body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
        background:var(--bg); color:var(--ink); }
 header { display:flex; align-items:center; gap:16px; padding:14px 22px; background:#1d2330;
          color:#fff; }
 header h1 { font-size:18px; margin:0; font-weight:600; }
 header .meta { color:#b9c0cf; font-size:13px; }
 main { padding:18px 22px; display:grid; gap:18px; }
 .badge { display:inline-block; padding:2px 9px; border-radius:10px; font-size:12px;
          font-weight:600; color:#fff; background:var(--mute); }
 .ALIVE, .up { background:var(--ok); } .WARNING, .draining { background:var(--warn); }
 .STOPPING, .STOPPED, .DEAD, .down { background:var(--bad); }
 .tiles { display:grid; grid-template-columns:repeat(auto-fit, minmax(150px, 1fr)); gap:12px; }
 .tile { background:var(--card); border:1px solid var(--line); border-radius:8px;
         padding:10px 14px; }
 .tile .v { font-size:22px; font-weight:600; } .tile .k { color:var(--mute); font-size:12px; }
 section.svc { background:var(--card); border:1px solid var(--line); border-radius:8px;
               padding:14px 16px; }
 section.svc h2 { margin:0 0 10px; font-size:16px; display:flex; gap:10px; align-items:center; }
 .charts { display:grid; grid-template-columns:repeat(auto-fit, minmax(260px, 1fr)); gap:14px;
           margin:8px 0 12px; }
 .chart h3 { margin:0 0 4px; font-size:12px; color:var(--mute); font-weight:600; }
 .chart svg { width:100%; height:110px; background:#fbfcfd; border:1px solid var(--line);
              border-radius:6px; }
 .legend span { font-size:11px; color:var(--mute); margin-right:10px; }
 .legend i { display:inline-block; width:10px; height:3px; margin-right:4px;
             vertical-align:middle; }
 table { border-collapse:collapse; width:100%; font-size:13px; }
 th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); }
 th { color:var(--mute); font-weight:600; font-size:12px; }
 td.n { text-align:right; font-variant-numeric:tabular-nums; }
 #err { color:var(--bad); }
 footer { color:var(--mute); font-size:12px; padding:0 22px 18px; }
</style></head>
<body>
<header><h1>glammp gateway</h1><span id="status" class="badge">…</span>
 <span class="meta" id="meta"></span><span id="err"></span></header>
<main>
 <div class="tiles" id="tiles"></div>
 <div id="services"></div>
 <section class="svc"><h2>Backends</h2><div id="backends"></div></section>
 <section class="svc"><h2>Methods</h2><table id="methods"></table></section>
</main>
<footer>Refreshes every __REFRESH__ ms from <code>/status.json</code>; rates and percentiles
 are over the last interval. Prometheus metrics: <code>/metrics</code>.</footer>
<script>
"use strict";
const REFRESH = __REFRESH__, HISTORY = __HISTORY__;
const hist = {};        // service -> [{t, rps, eps, p50, p95, p99}]
let prev = null;
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",
  '"':"&quot;"}[c]));
const fmt = (n, d) => n === null || isNaN(n) ? "–" : (n >= 1000 ? n.toFixed(0) : n.toFixed(d));

function totals(doc) {
  // service -> {calls, errors, hist:[...]} from the cumulative counters
  const out = {};
  const get = (s) => out[s] || (out[s] = {calls:0, errors:0, hist:null});
  for (const [s, , code, n] of doc.requests) {
    const t = get(s); t.calls += n; if (code !== 0) t.errors += n;
  }
  for (const [s, , h] of doc.latency) {
    const t = get(s);
    t.hist = t.hist ? t.hist.map((v, i) => v + h[i]) : h.slice();
  }
  return out;
}

function percentile(counts, bounds, q) {
  // counts: per-bucket (last two entries: +Inf count, sum); linear within a bucket
  const n = counts.slice(0, bounds.length + 1).reduce((a, b) => a + b, 0);
  if (n <= 0) return null;
  let want = q * n, seen = 0;
  for (let i = 0; i <= bounds.length; i++) {
    const c = counts[i];
    if (seen + c >= want && c > 0) {
      const lo = i === 0 ? 0 : bounds[i - 1];
      const hi = i < bounds.length ? bounds[i] : bounds[bounds.length - 1] * 2;
      return (lo + (hi - lo) * ((want - seen) / c)) * 1000;
    }
    seen += c;
  }
  return bounds[bounds.length - 1] * 1000;
}

function chart(series, colors, unit) {
  const W = 300, H = 110, P = 4;
  let max = 0;
  for (const s of series) for (const v of s) if (v !== null && v > max) max = v;
  const top = max;
  max = max > 0 ? max * 1.15 : 1;
  const n = Math.max(2, HISTORY);
  const x = (i, len) => P + (W - 2 * P) * (i + (n - len)) / (n - 1);
  const y = (v) => H - P - (H - 2 * P) * (v / max);
  let svg = `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img">`;
  for (let g = 1; g < 4; g++) {
    const gy = P + (H - 2 * P) * g / 4;
    svg += `<line x1="0" x2="${W}" y1="${gy}" y2="${gy}" stroke="#eef0f4" stroke-width="1"/>`;
  }
  series.forEach((s, k) => {
    const pts = [];
    s.forEach((v, i) => {
      if (v !== null) pts.push(`${x(i, s.length).toFixed(1)},${y(v).toFixed(1)}`);
    });
    if (pts.length > 1) {
      const x0 = pts[0].split(",")[0], x1 = pts[pts.length - 1].split(",")[0];
      if (k === 0) svg += `<polygon fill="${colors[k]}" fill-opacity="0.12" points="` +
        `${x0},${H - P} ${pts.join(" ")} ${x1},${H - P}"/>`;
      svg += `<polyline fill="none" stroke="${colors[k]}" stroke-width="2" ` +
             `vector-effect="non-scaling-stroke" points="${pts.join(" ")}"/>`;
    }
  });
  svg += `<text x="${W - 6}" y="14" text-anchor="end" font-size="11" fill="#6b7385">` +
         `${fmt(top, 1)} ${unit}</text></svg>`;
  return svg;
}

function legend(names, colors) {
  return `<div class="legend">` + names.map((nm, i) =>
    `<span><i style="background:${colors[i]}"></i>${esc(nm)}</span>`).join("") + `</div>`;
}

function render(doc) {
  $("status").textContent = doc.status;
  $("status").className = "badge " + doc.status;
  const up = Math.max(0, doc.now - doc.alive_since);
  $("meta").textContent = `version ${doc.version} · up ${Math.floor(up / 3600)}h ` +
    `${Math.floor(up % 3600 / 60)}m ${Math.floor(up % 60)}s` +
    (doc.details ? " · " + doc.details : "");
  const tot = totals(doc);
  const dt = prev ? Math.max(0.001, doc.now - prev.doc.now) : null;
  let rps = 0, eps = 0;
  for (const s of Object.keys(tot)) {
    const p = prev && prev.tot[s];
    const r = dt && p ? (tot[s].calls - p.calls) / dt : (dt ? tot[s].calls / dt : null);
    const e = dt && p ? (tot[s].errors - p.errors) / dt : (dt ? tot[s].errors / dt : null);
    let d = tot[s].hist;
    if (d && p && p.hist) d = d.map((v, i) => v - p.hist[i]);
    const h = hist[s] || (hist[s] = []);
    if (dt !== null) {
      const pc = (q) => d && percentile(d, doc.buckets, q);
      h.push({rps: r, eps: e, p50: pc(0.5), p95: pc(0.95), p99: pc(0.99)});
      if (h.length > HISTORY) h.shift();
      rps += r || 0; eps += e || 0;
    }
  }
  const nInst = Object.values(doc.services).reduce((a, s) => a + s.instances.length, 0);
  const nUp = Object.values(doc.services).reduce((a, s) => a + s.healthy, 0);
  $("tiles").innerHTML = [
    ["requests / s", prev ? fmt(rps, 1) : "…"], ["errors / s", prev ? fmt(eps, 2) : "…"],
    ["caller connections", doc.connections], ["in flight", doc.inflight],
    ["healthy instances", `${nUp} / ${nInst}`],
  ].map(([k, v]) =>
    `<div class="tile"><div class="v">${v}</div><div class="k">${k}</div></div>`).join("");

  let html = "";
  for (const [name, svc] of Object.entries(doc.services)) {
    const h = hist[name] || [];
    const state = svc.healthy === svc.instances.length ? "up" : (svc.healthy ? "draining" : "down");
    html += `<section class="svc"><h2>${esc(name)} <span class="badge ${state}">` +
      `${svc.healthy} / ${svc.instances.length} healthy</span></h2><div class="charts">` +
      `<div class="chart"><h3>Requests / s</h3>` +
      `${chart([h.map((p) => p.rps)], ["#2f6fde"], "/s")}</div>` +
      `<div class="chart"><h3>Errors / s</h3>` +
      `${chart([h.map((p) => p.eps)], ["#d64545"], "/s")}</div>` +
      `<div class="chart"><h3>Latency</h3>${chart([h.map((p) => p.p50), h.map((p) => p.p95),
        h.map((p) => p.p99)], ["#1f9d55", "#d98b00", "#8a4fd8"], "ms")}` +
      `${legend(["p50", "p95", "p99"], ["#1f9d55", "#d98b00", "#8a4fd8"])}</div></div>` +
      `<table><tr><th>instance</th><th>state</th><th>details</th><th>outstanding</th>` +
      `<th>connections</th><th>calls</th><th>failures</th></tr>`;
    for (const i of svc.instances) {
      html += `<tr><td>${esc(i.address)}</td><td><span class="badge ${esc(i.state)}">` +
        `${esc(i.state)}</span></td><td>${esc(i.details)}</td><td class="n">${i.outstanding}</td>` +
        `<td class="n">${i.connections}</td><td class="n">${i.calls}</td>` +
        `<td class="n">${i.errors}</td></tr>`;
    }
    html += `</table></section>`;
  }
  $("services").innerHTML = html || `<section class="svc">No upstreams configured.</section>`;

  const rows = {};
  for (const [s, m, code, n] of doc.requests) {
    const r = rows[s + "." + m] || (rows[s + "." + m] = {calls:0, errors:0, codes:{}});
    r.calls += n; if (code !== 0) { r.errors += n; r.codes[code] = (r.codes[code] || 0) + n; }
  }
  const lat = {};
  for (const [s, m, h] of doc.latency) lat[s + "." + m] = h;
  let mt = `<tr><th>method</th><th>calls</th><th>errors</th><th>by code</th><th>p50 ms</th>` +
           `<th>p99 ms</th></tr>`;
  for (const key of Object.keys(rows).sort()) {
    const r = rows[key], h = lat[key];
    const codes = Object.entries(r.codes).map(([c, n]) => `${c}: ${n}`).join(", ");
    mt += `<tr><td>${esc(key)}</td><td class="n">${r.calls}</td><td class="n">${r.errors}</td>` +
      `<td>${esc(codes)}</td><td class="n">${fmt(h && percentile(h, doc.buckets, 0.5), 2)}</td>` +
      `<td class="n">${fmt(h && percentile(h, doc.buckets, 0.99), 2)}</td></tr>`;
  }
  $("methods").innerHTML = mt;
  $("backends").innerHTML = backends(doc.backends || {});
  prev = {doc, tot};
}

function table(head, rows) {
  return `<table><tr>${head.map((h) => `<th>${esc(h)}</th>`).join("")}</tr>` +
    rows.map((r) => `<tr>${r.map((c, i) => `<td${i ? ' class="n"' : ""}>${esc(c)}</td>`)
      .join("")}</tr>`).join("") + `</table>`;
}

function backends(b) {
  let html = "";
  for (const [svc, st] of Object.entries(b)) {
    html += `<h3 style="margin:12px 0 6px;font-size:14px">${esc(svc)}</h3>`;
    if (!st.ok) { html += `<p id="backend-error">${esc(st.error)}</p>`; continue; }
    if (st.memcached) {
      html += table(["memcached", "items", "bytes", "hits", "misses", "connections", "uptime s",
                     "version"], Object.entries(st.memcached).map(([srv, v]) =>
        [srv, v.curr_items, v.bytes, v.get_hits, v.get_misses, v.curr_connections, v.uptime,
         v.version]));
    }
    if (st.functions) {
      html += table(["gearman function", "queued + running", "running", "workers"],
        st.functions.map((f) => [f.name, f.total, f.running, f.workers]));
    }
    if (st.domains) {
      html += table(["MogileFS domain", "classes"], st.domains.map((d) => [d.name, d.classes]));
    }
  }
  return html || "<p>No backend state reported yet.</p>";
}

async function poll() {
  try {
    const r = await fetch("status.json", {cache: "no-store"});
    render(await r.json());
    $("err").textContent = "";
  } catch (e) {
    $("err").textContent = "cannot reach the gateway: " + e;
  }
  setTimeout(poll, REFRESH);
}
poll();
</script>
</body></html>
"""

HTML = _TEMPLATE.replace("__REFRESH__", str(REFRESH_MS)).replace("__HISTORY__", str(HISTORY))
