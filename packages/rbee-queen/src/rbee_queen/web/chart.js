// A small time-series chart on a canvas: one line per worker over a sliding window.
// No library: the page must work offline and load nothing from elsewhere.
"use strict";

const CHART_COLORS = ["#c98a00", "#1f6fb2", "#2f7d32", "#b3261e", "#7b4ab0", "#00838f", "#6d4c41", "#d81b60"];

class TimeChart {
  // canvas: the <canvas>; unit: shown after the y-axis labels; windowMs: the visible span
  constructor(canvas, unit, windowMs) {
    this.canvas = canvas;
    this.unit = unit;
    this.windowMs = windowMs;
  }

  // series: Map(name -> {color, points: [{t, v}]}), t in ms since the epoch
  draw(series, now) {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const left = 46, right = 18, top = 22, bottom = 18;
    const plotW = Math.max(1, width - left - right), plotH = Math.max(1, height - top - bottom);
    const start = now - this.windowMs;
    let max = 0;
    for (const s of series.values()) {
      for (const p of s.points) if (p.t >= start && p.v > max) max = p.v;
    }
    max = 4 * niceCeil((max || 1) / 4); // four grid steps of a round size
    const x = (t) => left + ((t - start) / this.windowMs) * plotW;
    const y = (v) => top + plotH - (v / max) * plotH;

    // grid and labels
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#6f6a5e";
    ctx.strokeStyle = "#eee9dc";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(left + plotW, yy);
      ctx.stroke();
      ctx.fillText(formatValue(v), left - 4, yy);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const minutes = Math.round(this.windowMs / 60000);
    for (let m = 0; m <= minutes; m += Math.max(1, Math.round(minutes / 5))) {
      const xx = Math.min(left + plotW - 10, Math.max(left + 12, x(now - m * 60000)));
      ctx.fillText(m === 0 ? "now" : `-${m}m`, xx, top + plotH + 3);
    }

    // one line (and its points) per worker
    for (const s of series.values()) {
      const pts = s.points.filter((p) => p.t >= start);
      if (!pts.length) continue;
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      pts.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
      ctx.stroke();
      for (const p of pts) {
        ctx.beginPath();
        ctx.arc(x(p.t), y(p.v), 2.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    if (!series.size) {
      ctx.fillStyle = "#6f6a5e";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("no generations yet", left + plotW / 2, top + plotH / 2);
    }
  }
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function formatValue(v) {
  if (v >= 1000) return `${(v / 1000).toFixed(v % 1000 ? 1 : 0)}k`;
  return v >= 10 || v === 0 ? String(Math.round(v)) : v.toFixed(1);
}

// Generations per worker: tokens/s and time to first token, drawn on two TimeCharts.
class WorkerCharts {
  constructor(tpsCanvas, ttftCanvas, legend, windowMs) {
    this.windowMs = windowMs;
    this.tps = new TimeChart(tpsCanvas, "tok/s", windowMs);
    this.ttft = new TimeChart(ttftCanvas, "ms", windowMs);
    this.legend = legend;
    this.workers = new Map(); // name -> {color, tps: [{t, v}], ttft: [{t, v}]}
  }

  add(worker, t, tokensPerS, ttftMs) {
    let w = this.workers.get(worker);
    if (!w) {
      w = { color: CHART_COLORS[this.workers.size % CHART_COLORS.length], tps: [], ttft: [] };
      this.workers.set(worker, w);
      this.renderLegend();
    }
    if (Number.isFinite(tokensPerS)) insertSorted(w.tps, { t, v: tokensPerS });
    if (Number.isFinite(ttftMs)) insertSorted(w.ttft, { t, v: ttftMs });
  }

  draw(now) {
    const cutoff = now - this.windowMs;
    for (const w of this.workers.values()) {
      while (w.tps.length && w.tps[0].t < cutoff) w.tps.shift();
      while (w.ttft.length && w.ttft[0].t < cutoff) w.ttft.shift();
    }
    const pick = (key) => new Map([...this.workers].map(([n, w]) => [n, { color: w.color, points: w[key] }]));
    this.tps.draw(pick("tps"), now);
    this.ttft.draw(pick("ttft"), now);
  }

  renderLegend() {
    this.legend.replaceChildren(
      ...[...this.workers].map(([name, w]) => {
        const li = document.createElement("li");
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = w.color;
        li.append(swatch, name);
        li.dataset.worker = name;
        return li;
      }),
    );
  }

  count() {
    let n = 0;
    for (const w of this.workers.values()) n += w.tps.length;
    return n;
  }
}

function insertSorted(list, point) {
  let i = list.length;
  while (i > 0 && list[i - 1].t > point.t) i--;
  list.splice(i, 0, point);
}

window.WorkerCharts = WorkerCharts;
