// Change detection: the change-intensity layer, the AOI's change alerts (polygons with their first date,
// to download as GeoJSON, GeoPackage or GeoParquet), a date's per-patch change raster (COG), the selected chip's similarity-over-time chart
// (trend, outliers), its per-patch change map on a clicked date, and its before/after images in the
// imagery layer (true colour or a spectral index). URL state: chip, date (the clicked date), before,
// after, layer.
import { aoiBase, alertsExportUrl, changeRasterUrl, chipImageUrl, getJSON } from "../api.js";
import { drawChart } from "../chart.js";
import { fillSelect } from "../dom.js";
import { EMPTY_FC, INTENSITY_COLOURS, layerDates, patchCells, registerOverlay } from "../layers.js";
import { DAY_MS } from "../stats.js";
import { registerPanel } from "./registry.js";

const FIELD_LABELS = { cosine_sim: "cosine similarity to baseline" };
const alertsShown = (s, ctx) => s.mode === "change" && ctx.checked("toggle-alerts");
registerOverlay({
  id: "alerts-fill", source: "alerts", type: "fill", maps: ["main"], visible: alertsShown,
  paint: { "fill-color": ["case", ["get", "confirmed"], "#b000d8", "#e58cff"], "fill-opacity": 0.35 },
}, { below: "grid-fill" });
registerOverlay({
  id: "alerts-line", source: "alerts", type: "line", maps: ["main"], visible: alertsShown,
  paint: { "line-color": "#b000d8", "line-width": 2 },
}, { below: "grid-fill" });
let alertsOf = null; // the AOI whose alerts the map holds
let pickedDate = null; // the chart's selected date

// Legend swatches in the layer's colours (set through the DOM: the page's CSP allows no inline styles).
function paintLegend() {
  for (const swatch of document.querySelectorAll("#legend i[data-level]")) {
    const at = INTENSITY_COLOURS.indexOf(swatch.dataset.level);
    swatch.style.background = at > 1 ? INTENSITY_COLOURS[at + 1] : INTENSITY_COLOURS.at(-1);
  }
}

function showChange(ctx) {
  const { $, state, app } = ctx;
  const s = app.series;
  if (!s) return;
  $("change-chip").hidden = false; $("change-hint").hidden = true;
  $("change-title").textContent = `chip ${s.chip_id} (baseline ${s.baseline_date || "?"})`;
  const level = s.change ? s.change.change_intensity : null;
  const badge = $("severity");
  badge.textContent = level ? `${level} change (min ${Number(s.change.min_sim).toFixed(3)})` : "no change summary";
  badge.dataset.level = level || "";
  const fields = Object.keys(s.series);
  const current = fields.includes($("series-field").value) ? $("series-field").value : "cosine_sim";
  fillSelect($("series-field"), fields, current);
  ctx.ensureBeforeAfter(s.baseline_date);
  showBeforeAfter(ctx);
  const picked = s.dates.includes(state.date) ? state.date : s.dates[s.dates.length - 1];
  showDate(ctx, picked);
}

function renderChart(ctx) {
  const { $, app } = ctx;
  const s = app.series;
  if (!s) return;
  const field = $("series-field").value || "cosine_sim";
  const { points, trend } = drawChart($("chart"), s.dates, s.series[field] || [], {
    label: FIELD_LABELS[field] || field, trend: $("toggle-trend").checked,
    excludeOutliers: $("toggle-outliers").checked, baselineDate: s.baseline_date, selectedDate: pickedDate,
    onPick: (d) => { showDate(ctx, d); ctx.commit(); },
  });
  $("trend-text").textContent = trend && points.length > 1
    ? `trend ${(trend.slope * 365 * DAY_MS).toFixed(4)} per year over ${points.length} dates` : "";
}

// A date of the chart: its image, its per-patch change map and the map's imagery of that date.
function showDate(ctx, date) {
  const { $, state, app } = ctx;
  const s = app.series;
  pickedDate = date;
  $("date-view").hidden = false;
  $("date-thumbnail").src = chipImageUrl(state.aoi, state.grid, s.chip_id, state.layer, date);
  const i = s.dates.indexOf(date);
  const sim = i >= 0 ? s.series.cosine_sim?.[i] : null;
  $("date-caption").textContent = `${date}${sim != null ? ` · cosine similarity ${sim.toFixed(3)}` : ""}`;
  $("date-view").dataset.date = date;
  showPatchMap(ctx, i);
  if (layerDates(app.summary, state.layer).includes(date)) ctx.setDate(date);
  renderChart(ctx);
}

function showPatchMap(ctx, index) {
  const s = ctx.app.series;
  const box = ctx.$("map");
  const values = index >= 0 && s.patch_maps ? s.patch_maps[index] : null;
  if (!values || !s.patch_grid) {
    ctx.setOverlayData("patch-map", EMPTY_FC);
    box.dataset.patchMap = "";
    return;
  }
  const features = patchCells(s.bounds, s.patch_grid, values, "sim");
  ctx.setOverlayData("patch-map", { type: "FeatureCollection", features });
  box.dataset.patchMap = `${s.chip_id}@${s.dates[index]}`;
  ctx.refreshOverlays();
}

function showBeforeAfter(ctx) {
  const { $, state, app } = ctx;
  const s = app.series;
  if (!s) return;
  const dates = layerDates(app.summary, state.layer);
  fillSelect($("before-date"), dates, state.before);
  fillSelect($("after-date"), dates, state.after);
  for (const side of ["before", "after"]) {
    const date = state[side];
    const img = $(`${side}-img`);
    const i = s.dates.indexOf(date);
    const sim = i >= 0 ? s.series.cosine_sim?.[i] : null;
    const caption = `${date}${sim != null ? ` · sim ${sim.toFixed(3)}` : " · not analysed"}`;
    img.onerror = () => { $(`${side}-caption`).textContent = `${date} · no image of this chip`; };
    img.src = chipImageUrl(state.aoi, state.grid, s.chip_id, state.layer, date);
    img.dataset.layer = state.layer;
    $(`${side}-caption`).textContent = caption;
  }
}

function rasterLink(ctx) {
  const { $, state } = ctx;
  const day = $("raster-date").value;
  $("raster-download").href = changeRasterUrl(state.aoi, state.grid, day);
  $("raster-download").download = `${state.aoi}_${state.grid}_change_raster_${day}.tif`;
}

async function showAlerts(ctx) {
  const { $, state } = ctx;
  const link = $("alerts-download");
  link.href = alertsExportUrl(state.aoi, $("alerts-format").value);
  link.download = `${state.aoi}_change_alerts.${$("alerts-format").value}`;
  if ($("toggle-alerts").checked && alertsOf !== state.aoi) {
    const fc = await getJSON(`${aoiBase(state.aoi)}/alerts`);
    alertsOf = state.aoi;
    ctx.setOverlayData("alerts", fc);
    const confirmed = fc.features.filter((f) => f.properties.confirmed).length;
    $("alerts-count").textContent = `${fc.features.length} alerts (${confirmed} confirmed)`;
    $("alerts-count").dataset.count = String(fc.features.length);
  }
  ctx.refreshOverlays();
}

registerPanel({
  mode: "change", label: "Change detection", section: "change-panel", order: 20,
  init(ctx) {
    const { $, state } = ctx;
    paintLegend();
    $("toggle-change").addEventListener("change", ctx.refreshOverlays);
    $("toggle-alerts").addEventListener("change", () => ctx.guarded(() => showAlerts(ctx)));
    $("alerts-format").addEventListener("change", () => ctx.guarded(() => showAlerts(ctx)));
    $("raster-date").addEventListener("change", () => rasterLink(ctx));
    $("toggle-patch-map").addEventListener("change", ctx.refreshOverlays);
    for (const id of ["series-field", "toggle-trend", "toggle-outliers"]) $(id).addEventListener("change", () => renderChart(ctx));
    for (const side of ["before", "after"]) {
      $(`${side}-date`).addEventListener("change", (e) => {
        state[side] = e.target.value;
        ctx.commit();
        ctx.viewChanged();
      });
    }
    $("open-split").addEventListener("click", () => ctx.guarded(async () => {
      await ctx.setMode("compare");
      if (ctx.app.series) ctx.fitBounds(ctx.app.series.bounds, { padding: 80, maxZoom: 16 });
      ctx.commit();
    }));
  },
  grid(ctx) {
    const { $, app } = ctx;
    const dates = app.summary.dates;
    fillSelect($("raster-date"), dates, dates[dates.length - 1]);
    rasterLink(ctx);
    alertsOf = null;
    ctx.setOverlayData("alerts", EMPTY_FC);
    $("alerts-count").textContent = "";
    $("change-chip").hidden = true; $("change-hint").hidden = false;
    ctx.setOverlayData("patch-map", EMPTY_FC);
    $("map").dataset.patchMap = "";
  },
  async enter(ctx) {
    if (ctx.state.chip && ctx.app.series) showChange(ctx);
    await showAlerts(ctx);
  },
  chip(ctx) {
    showChange(ctx);
  },
  view(ctx) {
    const { state, app } = ctx;
    if (state.mode !== "change" || !app.series) return;
    showBeforeAfter(ctx);
    if (pickedDate) ctx.$("date-thumbnail").src = chipImageUrl(state.aoi, state.grid, app.series.chip_id, state.layer, pickedDate);
  },
});
