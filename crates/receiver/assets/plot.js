// Sandglass plots: an SVG line chart of the points /api/series gives (one
// line per label set, already aggregated by the server to about one point
// per pixel column). No library: axes, grid, lines and a hover read-out.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#0b5cad", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#0a7f8c",
    "#bf3989", "#57606a", "#e16f24", "#3b82f6", "#65a30d", "#7c3aed"];
  const HEIGHT = 260;
  const PAD = { left: 64, right: 16, top: 12, bottom: 28 };

  function svg(tag, attrs) {
    const node = document.createElementNS(NS, tag);
    for (const k in attrs) node.setAttribute(k, attrs[k]);
    return node;
  }

  // About `n` round tick values covering [lo, hi].
  function ticks(lo, hi, n) {
    const span = hi - lo || Math.abs(hi) || 1;
    const raw = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
    return out;
  }

  function number(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (a >= 100 || v === 0) return String(Math.round(v));
    return String(Number(v.toPrecision(3)));
  }

  // A tick's label: as many decimals as the tick step needs, so close
  // ticks on a large value (60612, 60612.5) stay apart.
  function tickLabel(v, step) {
    if (Math.abs(v) >= 1e4 && step >= Math.abs(v) / 1000) return number(v);
    const frac = String(Number(step.toPrecision(3))).split(".")[1];
    return v.toFixed(frac ? Math.min(6, frac.length) : 0);
  }

  function timeLabel(ms, spanMs) {
    const d = new Date(ms);
    const hm = String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
    if (spanMs <= 36 * 3600e3) return hm;
    return (d.getMonth() + 1) + "/" + d.getDate() + (spanMs <= 4 * 86400e3 ? " " + hm : "");
  }

  function labelText(labels) {
    const parts = Object.keys(labels).map(k => k + "=" + labels[k]);
    return parts.length ? parts.join(", ") : "(no labels)";
  }

  // Draw `data` (an /api/series answer) into `box`, replacing what was there.
  function draw(box, data) {
    box.replaceChildren();
    const width = Math.max(200, box.clientWidth);
    const root = svg("svg", { width: width, height: HEIGHT, role: "img" });
    box.appendChild(root);
    const x0 = PAD.left, x1 = width - PAD.right, y0 = HEIGHT - PAD.bottom, y1 = PAD.top;
    const all = data.series.flatMap(s => s.points);
    if (!all.length) {
      const t = svg("text", { x: width / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty" });
      t.textContent = "no values in this range";
      root.appendChild(t);
      return;
    }
    let lo = Math.min(...all.map(p => p[1])), hi = Math.max(...all.map(p => p[1]));
    if (lo > 0 && lo < hi * 0.5) lo = 0;
    if (lo === hi) { lo -= 1; hi += 1; }
    const yt = ticks(lo, hi, 5);
    lo = Math.min(lo, yt[0]); hi = Math.max(hi, yt[yt.length - 1]);
    const t0 = data.since_ms, t1 = data.until_ms;
    const X = t => x0 + (t - t0) / (t1 - t0) * (x1 - x0);
    const Y = v => y0 - (v - lo) / (hi - lo) * (y0 - y1);
    for (const v of yt) {
      root.appendChild(svg("line", { x1: x0, x2: x1, y1: Y(v), y2: Y(v), class: "gridline" }));
      const t = svg("text", { x: x0 - 6, y: Y(v) + 4, "text-anchor": "end", class: "axis" });
      t.textContent = tickLabel(v, yt.length > 1 ? yt[1] - yt[0] : 1);
      root.appendChild(t);
    }
    const xt = Math.max(2, Math.floor((x1 - x0) / 110));
    for (let i = 0; i <= xt; i++) {
      const ms = t0 + (t1 - t0) * i / xt;
      const t = svg("text", { x: X(ms), y: HEIGHT - 8, "text-anchor": i === 0 ? "start" : i === xt ? "end" : "middle", class: "axis" });
      t.textContent = timeLabel(ms, t1 - t0);
      root.appendChild(t);
    }
    root.appendChild(svg("line", { x1: x0, x2: x1, y1: y0, y2: y0, stroke: "#d8dee4" }));
    // A gap longer than a few steps is no data, not a straight line.
    const gap = Math.max(data.step_ms * 3, 1);
    data.series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      let d = "", prev = null;
      for (const [t, v] of s.points) {
        d += (prev === null || t - prev > gap ? "M" : "L") + X(t).toFixed(1) + " " + Y(v).toFixed(1);
        prev = t;
      }
      root.appendChild(svg("path", { d: d, stroke: color, class: "series", "data-points": s.points.length }));
      if (s.points.length <= 60) {
        for (const [t, v] of s.points) {
          root.appendChild(svg("circle", { cx: X(t), cy: Y(v), r: 2.2, fill: color, class: "point" }));
        }
      }
    });
    hover(box, root, data, X, Y, { x0, x1, y0, y1 });
  }

  // A vertical line and the values of every series at the nearest time.
  function hover(box, root, data, X, Y, area) {
    const line = svg("line", { y1: area.y1, y2: area.y0, stroke: "#8c959f", "stroke-dasharray": "3 3", visibility: "hidden" });
    root.appendChild(line);
    const tip = document.createElement("div");
    tip.className = "tip";
    tip.hidden = true;
    box.appendChild(tip);
    root.addEventListener("mousemove", ev => {
      const r = root.getBoundingClientRect();
      const px = ev.clientX - r.left;
      if (px < area.x0 || px > area.x1) { line.setAttribute("visibility", "hidden"); tip.hidden = true; return; }
      const t = data.since_ms + (px - area.x0) / (area.x1 - area.x0) * (data.until_ms - data.since_ms);
      const rows = [];
      let at = null;
      data.series.forEach((s, i) => {
        let best = null;
        for (const p of s.points) if (best === null || Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
        if (best && Math.abs(best[0] - t) <= data.step_ms * 3) {
          rows.push([COLORS[i % COLORS.length], labelText(s.labels), best[1]]);
          at = best[0];
        }
      });
      if (at === null) { line.setAttribute("visibility", "hidden"); tip.hidden = true; return; }
      line.setAttribute("x1", X(at)); line.setAttribute("x2", X(at));
      line.setAttribute("visibility", "visible");
      tip.replaceChildren();
      const head = document.createElement("div");
      head.textContent = new Date(at).toLocaleString();
      tip.appendChild(head);
      for (const [color, name, v] of rows.slice(0, 12)) {
        const row = document.createElement("div");
        row.style.color = color === "#0b5cad" ? "#7cc4ff" : color;
        row.textContent = name + ": " + number(v) + (data.unit ? " " + data.unit : "");
        tip.appendChild(row);
      }
      tip.hidden = false;
      tip.style.left = Math.min(px + 12, r.width - 220) + "px";
      tip.style.top = "8px";
    });
    root.addEventListener("mouseleave", () => { line.setAttribute("visibility", "hidden"); tip.hidden = true; });
  }

  // The legend: a swatch and the label set of each line.
  function legend(box, data) {
    box.replaceChildren();
    data.series.forEach((s, i) => {
      const item = document.createElement("span");
      const sw = document.createElement("i");
      sw.style.background = COLORS[i % COLORS.length];
      item.appendChild(sw);
      item.appendChild(document.createTextNode(labelText(s.labels)));
      box.appendChild(item);
    });
  }

  window.SandglassPlot = { draw: draw, legend: legend, number: number };
})();
