// The time-series chart of the change panel, drawn as SVG. The plotted values and dates are kept
// on the SVG as data-values / data-dates (JSON) so tests and users can read them back.
import { olsTrend, outlierFlags, toTime, DAY_MS } from "./stats.js";

const NS = "http://www.w3.org/2000/svg";
const W = 380;
const H = 210;
const PAD = { l: 46, r: 10, t: 12, b: 30 };

function el(name, attrs = {}, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

/**
 * Draw `values` (numbers or null) against `dates` into `container`.
 * options: {label, trend, excludeOutliers, baselineDate, selectedDate, onPick(date)}
 * Returns {points, trend} for the caller (points actually plotted).
 */
export function drawChart(container, dates, values, options = {}) {
  container.replaceChildren();
  let points = dates
    .map((d, i) => ({ date: d, t: toTime(d), v: values[i] }))
    .filter((p) => p.v !== null && p.v !== undefined && Number.isFinite(p.v));
  const flags = outlierFlags(points);
  const outliers = points.filter((_, i) => flags[i]);
  if (options.excludeOutliers) points = points.filter((_, i) => !flags[i]);

  const svg = el("svg", {
    width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `${options.label || "value"} over time`,
    "data-testid": "chart-svg",
    "data-values": JSON.stringify(points.map((p) => p.v)),
    "data-dates": JSON.stringify(points.map((p) => p.date)),
    "data-outliers": JSON.stringify(outliers.map((p) => p.date)),
  });
  container.appendChild(svg);
  if (points.length === 0) {
    svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no data"));
    return { points, trend: null };
  }

  const t0 = Math.min(...points.map((p) => p.t));
  const t1 = Math.max(...points.map((p) => p.t));
  let v0 = Math.min(...points.map((p) => p.v));
  let v1 = Math.max(...points.map((p) => p.v));
  if (v1 - v0 < 1e-6) { v0 -= 0.05; v1 += 0.05; }
  const padV = (v1 - v0) * 0.08;
  v0 -= padV; v1 += padV;
  const tSpan = Math.max(t1 - t0, DAY_MS);
  const x = (t) => PAD.l + ((t - t0) / tSpan) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - ((v - v0) / (v1 - v0)) * (H - PAD.t - PAD.b);

  // axes and ticks
  svg.appendChild(el("line", { x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b, class: "axis-line" }));
  svg.appendChild(el("line", { x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b, class: "axis-line" }));
  for (let i = 0; i <= 4; i++) {
    const v = v0 + ((v1 - v0) * i) / 4;
    svg.appendChild(el("text", { x: PAD.l - 4, y: y(v) + 3, "text-anchor": "end", class: "axis" }, v.toFixed(2)));
  }
  const nTicks = Math.min(4, points.length);
  for (let i = 0; i < nTicks; i++) {
    const t = t0 + (tSpan * i) / Math.max(nTicks - 1, 1);
    const label = new Date(t).toISOString().slice(0, 10);
    svg.appendChild(el("text", { x: x(t), y: H - 10, "text-anchor": "middle", class: "axis" }, label));
  }
  svg.appendChild(el("text", { x: PAD.l + 4, y: PAD.t + 8, class: "axis" }, options.label || ""));
  if (options.baselineDate) {
    const bt = toTime(options.baselineDate);
    if (bt >= t0 && bt <= t1) {
      svg.appendChild(el("line", { x1: x(bt), y1: PAD.t, x2: x(bt), y2: H - PAD.b, class: "baseline" }));
    }
  }

  // series line, trend, points
  const path = points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
  svg.appendChild(el("path", { d: path, class: "series" }));
  const trend = olsTrend(points);
  if (options.trend && trend) {
    svg.appendChild(el("line", {
      x1: x(t0), y1: y(trend.at(t0)), x2: x(t1), y2: y(trend.at(t1)),
      class: "trend", "data-testid": "trend-line",
    }));
  }
  const outlierSet = new Set(outliers.map((p) => p.date));
  for (const p of points) {
    const c = el("circle", {
      cx: x(p.t), cy: y(p.v), r: p.date === options.selectedDate ? 6 : 4,
      class: `point${outlierSet.has(p.date) ? " outlier" : ""}${p.date === options.selectedDate ? " selected" : ""}`,
      "data-testid": "chart-point", "data-date": p.date, "data-value": p.v,
    });
    c.appendChild(el("title", {}, `${p.date}: ${p.v.toFixed(4)}`));
    c.addEventListener("click", () => options.onPick && options.onPick(p.date));
    svg.appendChild(c);
  }
  return { points, trend };
}
