// geofm explorer: a MapLibre map of the chip grid with imagery tiles, similarity search (LanceDB)
// and change detection (cosine similarity over time, per-patch change maps, before/after).
import maplibregl from "maplibre-gl";
import "maplibre-gl/dist/maplibre-gl.css";
import "./style.css";
import { getJSON, gridBase, onLoadingChange, thumbnailUrl } from "./api.js";
import { drawChart } from "./chart.js";
import { DAY_MS } from "./stats.js";

const $ = (id) => document.getElementById(id);
const EMPTY_FC = { type: "FeatureCollection", features: [] };
const BASEMAP_URL = "https://tile.openstreetmap.org/{z}/{x}/{y}.png";
const INTENSITY_COLOURS = ["match", ["get", "change_intensity"], "High", "#d7191c", "Medium", "#fdae61", "#1a9641"];
const FIELD_LABELS = { cosine_sim: "cosine similarity to baseline" };
// Legend swatches in the layer's colours (set through the DOM: the page's CSP allows no inline styles).
for (const swatch of document.querySelectorAll("#legend i[data-level]")) {
  const at = INTENSITY_COLOURS.indexOf(swatch.dataset.level);
  swatch.style.background = at > 1 ? INTENSITY_COLOURS[at + 1] : INTENSITY_COLOURS.at(-1);
}

const state = {
  aoi: null, grid: null, summary: null, mode: "similarity", chip: null, series: null,
  seriesCache: new Map(), gridFeatures: new Map(), pickedDate: null, lastResults: [], imageryGrid: null,
};

// ---- errors and loading ----------------------------------------------------------------------
function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  console.error(message);
}
function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}
$("error").addEventListener("click", clearError);
onLoadingChange((busy) => {
  $("loading").hidden = !busy;
  document.body.dataset.loading = busy ? "true" : "false";
});
async function guarded(fn) {
  try {
    return await fn();
  } catch (err) {
    showError(err.message || String(err));
    return undefined;
  }
}

// ---- map -------------------------------------------------------------------------------------
let map;
try {
  map = new maplibregl.Map({
    container: "map",
    style: { version: 8, sources: {}, layers: [{ id: "background", type: "background", paint: { "background-color": "#1d2330" } }] },
    center: [0, 0], zoom: 1, attributionControl: { compact: true },
  });
  map.addControl(new maplibregl.NavigationControl(), "top-right");
  map.addControl(new maplibregl.ScaleControl(), "bottom-left");
  map.on("error", (e) => {
    const src = e.sourceId || (e.source && e.source.id);
    if (src === "basemap") return; // the online base map is optional
    if (src === "imagery" && e.error && e.error.status === 503) return; // render slots busy: shown on the next move
    showError(`map: ${e.error ? e.error.message : "error"}${src ? ` (layer ${src})` : ""}`);
  });
} catch (err) {
  showError(`the map cannot start (WebGL unavailable?): ${err.message}`);
}
window.geofmExplorer = { state, get map() { return map; } };

function setGeoJSON(id, data) {
  const src = map.getSource(id);
  if (src) src.setData(data);
  else map.addSource(id, { type: "geojson", data });
}

function tileUrl(date) {
  return `${new URL(gridBase(state.aoi, state.grid), window.location.href).href}/tiles/{z}/{x}/{y}.png?date=${date}`;
}

function ensureLayers() {
  for (const id of ["grid", "change", "results", "selected"]) if (!map.getSource(id)) setGeoJSON(id, EMPTY_FC);
  const add = (layer) => { if (!map.getLayer(layer.id)) map.addLayer(layer); };
  add({ id: "change-fill", type: "fill", source: "change", paint: { "fill-color": INTENSITY_COLOURS, "fill-opacity": 0.45 } });
  add({ id: "grid-fill", type: "fill", source: "grid", paint: { "fill-color": "#ffffff", "fill-opacity": 0.01 } });
  add({ id: "grid-line", type: "line", source: "grid", paint: { "line-color": "#ffd400", "line-width": 1 } });
  add({ id: "results-line", type: "line", source: "results", paint: { "line-color": "#ffffff", "line-width": 2.5 } });
  add({ id: "selected-line", type: "line", source: "selected", paint: { "line-color": "#00e5ff", "line-width": 3.5 } });
}

// The imagery source of the open grid: its bounds and the server's useful min zoom keep the map from
// asking for tiles that would show the data as a few pixels (the server answers those empty anyway).
function setImagery(date) {
  if (!date) return;
  const tiles = [tileUrl(date)];
  const { bounds, imagery_minzoom: minzoom = 0 } = state.summary;
  const grid = `${state.aoi}/${state.grid}`;
  if (map.getSource("imagery") && state.imageryGrid === grid) {
    map.getSource("imagery").setTiles(tiles);
  } else {
    if (map.getLayer("imagery")) map.removeLayer("imagery");
    if (map.getSource("imagery")) map.removeSource("imagery");
    map.addSource("imagery", { type: "raster", tiles, tileSize: 256, bounds, minzoom, maxzoom: 18 });
    map.addLayer({ id: "imagery", type: "raster", source: "imagery" }, "change-fill");
    state.imageryGrid = grid;
  }
  map.setLayoutProperty("imagery", "visibility", $("toggle-imagery").checked ? "visible" : "none");
  $("map").dataset.imageryDate = date;
}

function applyVisibility() {
  if (!map.getLayer("change-fill")) return;
  const vis = (on) => (on ? "visible" : "none");
  map.setLayoutProperty("change-fill", "visibility", vis(state.mode === "change" && $("toggle-change").checked));
  map.setLayoutProperty("results-line", "visibility", vis(state.mode === "similarity" && $("show-results").checked));
  if (map.getLayer("patch-map")) {
    map.setLayoutProperty("patch-map", "visibility", vis(state.mode === "change" && $("toggle-patch-map").checked));
  }
  if (map.getLayer("imagery")) map.setLayoutProperty("imagery", "visibility", vis($("toggle-imagery").checked));
}

// Online base map, only when its tiles can be reached (offline the page works without it).
function probeBasemap() {
  const img = new Image();
  const timer = setTimeout(() => { img.src = ""; }, 4000);
  img.onload = () => {
    clearTimeout(timer);
    const box = $("toggle-basemap");
    box.disabled = false;
    box.checked = true;
    addBasemap();
  };
  img.onerror = () => { clearTimeout(timer); $("toggle-basemap").title = "base map unreachable (offline)"; };
  img.src = BASEMAP_URL.replace("{z}/{x}/{y}", "0/0/0");
}
function addBasemap() {
  if (map.getSource("basemap")) return;
  map.addSource("basemap", { type: "raster", tiles: [BASEMAP_URL], tileSize: 256, maxzoom: 19,
    attribution: "© OpenStreetMap contributors" });
  const first = map.getStyle().layers.find((l) => l.id !== "background");
  map.addLayer({ id: "basemap", type: "raster", source: "basemap" }, first ? first.id : undefined);
}
$("toggle-basemap").addEventListener("change", (e) => {
  if (map.getLayer("basemap")) map.setLayoutProperty("basemap", "visibility", e.target.checked ? "visible" : "none");
});

// ---- AOIs and grids ----------------------------------------------------------------------------
function fillSelect(select, values, selected) {
  select.replaceChildren(...values.map((v) => {
    const o = document.createElement("option");
    o.value = v; o.textContent = v; o.selected = v === selected;
    return o;
  }));
}

async function loadAois() {
  const aois = await getJSON("api/aois");
  const options = aois.flatMap((a) => a.grids.map((g) => `${a.aoi_name}/${g}`));
  if (options.length === 0) throw new Error("no AOI with consolidated output under this root (run the pipeline first)");
  const params = new URLSearchParams(window.location.search);
  let wanted = options[0];
  if (params.get("aoi")) wanted = `${params.get("aoi")}/${params.get("grid") || (aois.find((a) => a.aoi_name === params.get("aoi"))?.grids[0] ?? "")}`;
  fillSelect($("aoi-select"), options, wanted);
  return wanted;
}

async function openGrid(key) {
  const [aoi, grid] = key.split("/");
  state.aoi = aoi; state.grid = grid; state.chip = null; state.series = null; state.seriesCache.clear();
  $("map").dataset.ready = "false";
  const base = gridBase(aoi, grid);
  const summary = await getJSON(base);
  state.summary = summary;
  const [gridFc, changeFc] = await Promise.all([
    getJSON(`${base}/chip-grid`),
    summary.has_change_intensity ? getJSON(`${base}/change-intensity`) : Promise.resolve(EMPTY_FC),
  ]);
  state.gridFeatures = new Map(gridFc.features.map((f) => [f.properties.chip_id, f]));
  ensureLayers();
  setGeoJSON("grid", gridFc);
  setGeoJSON("change", changeFc);
  setGeoJSON("results", EMPTY_FC);
  setGeoJSON("selected", EMPTY_FC);
  const cfg = summary.config && summary.config.demos ? summary.config.demos[0].config : summary.config || {};
  const latest = summary.dates[summary.dates.length - 1];
  const searchDate = cfg && summary.dates.includes(cfg.similarity_search_date) ? cfg.similarity_search_date : latest;
  fillSelect($("date-select"), summary.imagery_dates, summary.imagery_dates.includes(latest) ? latest : summary.imagery_dates.at(-1));
  fillSelect($("query-date"), summary.dates, searchDate);
  setImagery($("date-select").value);
  const [minx, miny, maxx, maxy] = summary.bounds;
  map.fitBounds([[minx, miny], [maxx, maxy]], { padding: 40, duration: 0 });
  applyVisibility();
  resetPanels();
  $("map").dataset.gridFeatures = String(gridFc.features.length);
  $("map").dataset.ready = "true";
}

function resetPanels() {
  $("selected").hidden = true; $("similarity-hint").hidden = false;
  $("change-chip").hidden = true; $("change-hint").hidden = false;
  $("results").replaceChildren(); $("search-button").disabled = true;
}

// ---- chip selection ----------------------------------------------------------------------------
async function chipSeries(chipId) {
  if (!state.seriesCache.has(chipId)) {
    state.seriesCache.set(chipId, await getJSON(`${gridBase(state.aoi, state.grid)}/chips/${encodeURIComponent(chipId)}`));
  }
  return state.seriesCache.get(chipId);
}

async function selectChip(chipId) {
  state.chip = chipId;
  const feature = state.gridFeatures.get(chipId);
  setGeoJSON("selected", feature ? { type: "FeatureCollection", features: [feature] } : EMPTY_FC);
  state.series = await chipSeries(chipId);
  $("search-button").disabled = false;
  showSelected();
  if (state.mode === "similarity") await runSearch();
  else showChange();
}

function showSelected() {
  const s = state.series;
  const date = $("query-date").value;
  $("selected").hidden = false; $("similarity-hint").hidden = true;
  $("selected-thumbnail").src = thumbnailUrl(state.aoi, state.grid, s.chip_id, date);
  const [lon, lat] = s.centroid;
  const rows = [["chip", s.chip_id], ["grid", s.grid], ["lat, lon", lon == null ? "?" : `${lat.toFixed(5)}, ${lon.toFixed(5)}`],
    ["date", date]];
  $("selected-details").replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
}

// ---- similarity search -------------------------------------------------------------------------
async function runSearch() {
  if (!state.chip) return;
  const results = $("results");
  results.dataset.state = "loading";
  const params = {
    chip_id: state.chip, date: $("query-date").value, k: $("k-slider").value, min_score: $("score-slider").value,
    start: $("range-start").value, end: $("range-end").value,
  };
  const resp = await getJSON(`${gridBase(state.aoi, state.grid)}/search`, params);
  state.lastResults = resp.results;
  results.replaceChildren(...resp.results.map((hit) => {
    const item = document.createElement("figure");
    item.className = "result";
    item.dataset.testid = "result-item";
    item.setAttribute("data-testid", "result-item");
    item.dataset.chipId = hit.chip_id;
    item.dataset.score = hit.score;
    const img = document.createElement("img");
    img.src = hit.thumbnail_url.replace(/^\//, "");
    img.alt = `chip ${hit.chip_id} on ${hit.date}`;
    const cap = document.createElement("figcaption");
    cap.textContent = `${hit.chip_id} · ${hit.date} · ${hit.score.toFixed(3)}`;
    item.append(img, cap);
    item.addEventListener("click", () => flyToChip(hit));
    return item;
  }));
  if (resp.results.length === 0) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = `No chip scores ${Number(params.min_score).toFixed(2)} or more.`;
    results.appendChild(p);
  }
  results.dataset.count = String(resp.results.length);
  results.dataset.state = "done";
  setGeoJSON("results", {
    type: "FeatureCollection",
    features: resp.results.filter((h) => h.minx != null).map((h) => ({
      type: "Feature", properties: { chip_id: h.chip_id, score: h.score },
      geometry: { type: "Polygon", coordinates: [[[h.minx, h.miny], [h.maxx, h.miny], [h.maxx, h.maxy], [h.minx, h.maxy], [h.minx, h.miny]]] },
    })),
  });
}

function flyToChip(hit) {
  if (hit.minx == null) return;
  map.fitBounds([[hit.minx, hit.miny], [hit.maxx, hit.maxy]], { padding: 120, maxZoom: 15 });
}

// ---- change detection --------------------------------------------------------------------------
function showChange() {
  const s = state.series;
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
  const dates = s.imagery_dates && s.imagery_dates.length ? s.imagery_dates : s.dates;
  fillSelect($("before-date"), dates, s.baseline_date && dates.includes(s.baseline_date) ? s.baseline_date : dates[0]);
  fillSelect($("after-date"), dates, dates[dates.length - 1]);
  state.pickedDate = s.dates[s.dates.length - 1];
  renderChart();
  showBeforeAfter();
  showDate(state.pickedDate, false);
}

function renderChart() {
  const s = state.series;
  const field = $("series-field").value || "cosine_sim";
  const { points, trend } = drawChart($("chart"), s.dates, s.series[field] || [], {
    label: FIELD_LABELS[field] || field, trend: $("toggle-trend").checked,
    excludeOutliers: $("toggle-outliers").checked, baselineDate: s.baseline_date, selectedDate: state.pickedDate,
    onPick: (d) => showDate(d, true),
  });
  $("trend-text").textContent = trend && points.length > 1
    ? `trend ${(trend.slope * 365 * DAY_MS).toFixed(4)} per year over ${points.length} dates` : "";
}

function showDate(date, redraw) {
  const s = state.series;
  state.pickedDate = date;
  $("date-view").hidden = false;
  $("date-thumbnail").src = thumbnailUrl(state.aoi, state.grid, s.chip_id, date);
  const i = s.dates.indexOf(date);
  const sim = i >= 0 ? s.series.cosine_sim?.[i] : null;
  $("date-caption").textContent = `${date}${sim != null ? ` · cosine similarity ${sim.toFixed(3)}` : ""}`;
  $("date-view").dataset.date = date;
  showPatchMap(i);
  if (state.summary.imagery_dates.includes(date)) {
    $("date-select").value = date;
    setImagery(date);
  }
  if (redraw) renderChart();
}

// The per-patch similarity map of a date over the chip: one cell per patch, changed ones in red.
// (Vector cells rather than an image source: image sources render black on some software GL.)
function showPatchMap(index) {
  const s = state.series;
  const values = index >= 0 && s.patch_maps ? s.patch_maps[index] : null;
  if (!values || !s.patch_grid) {
    setGeoJSON("patch-map", EMPTY_FC);
    $("map").dataset.patchMap = "";
    return;
  }
  const g = s.patch_grid;
  const [minx, miny, maxx, maxy] = s.bounds;
  const dx = (maxx - minx) / g;
  const dy = (maxy - miny) / g;
  const features = [];
  values.forEach((v, k) => {
    if (v == null) return;
    const x0 = minx + (k % g) * dx;
    const y1 = maxy - Math.floor(k / g) * dy;
    features.push({
      type: "Feature", properties: { sim: v, patch: k },
      geometry: { type: "Polygon", coordinates: [[[x0, y1], [x0 + dx, y1], [x0 + dx, y1 - dy], [x0, y1 - dy], [x0, y1]]] },
    });
  });
  setGeoJSON("patch-map", { type: "FeatureCollection", features });
  if (!map.getLayer("patch-map")) {
    map.addLayer({
      id: "patch-map", type: "fill", source: "patch-map",
      paint: {
        "fill-color": "#d7191c",
        "fill-opacity": ["interpolate", ["linear"], ["get", "sim"], 0.5, 0.85, 0.8, 0.55, 0.95, 0.05],
      },
    }, "grid-fill");
  }
  $("map").dataset.patchMap = `${s.chip_id}@${s.dates[index]}`;
  applyVisibility();
}

function showBeforeAfter() {
  const s = state.series;
  for (const side of ["before", "after"]) {
    const date = $(`${side}-date`).value;
    $(`${side}-img`).src = thumbnailUrl(state.aoi, state.grid, s.chip_id, date);
    const i = s.dates.indexOf(date);
    const sim = i >= 0 ? s.series.cosine_sim?.[i] : null;
    $(`${side}-caption`).textContent = `${date}${sim != null ? ` · sim ${sim.toFixed(3)}` : " · not analysed"}`;
  }
}

// ---- controls ----------------------------------------------------------------------------------
function setMode(mode) {
  state.mode = mode;
  $("tab-similarity").classList.toggle("active", mode === "similarity");
  $("tab-change").classList.toggle("active", mode === "change");
  $("similarity-panel").hidden = mode !== "similarity";
  $("change-panel").hidden = mode !== "change";
  document.body.dataset.mode = mode;
  applyVisibility();
  if (state.chip) guarded(() => (mode === "similarity" ? runSearch() : Promise.resolve(showChange())));
}
$("tab-similarity").addEventListener("click", () => setMode("similarity"));
$("tab-change").addEventListener("click", () => setMode("change"));
$("aoi-select").addEventListener("change", (e) => guarded(() => openGrid(e.target.value)));
$("date-select").addEventListener("change", (e) => setImagery(e.target.value));
$("toggle-imagery").addEventListener("change", applyVisibility);
$("toggle-change").addEventListener("change", applyVisibility);
$("show-results").addEventListener("change", applyVisibility);
$("toggle-patch-map").addEventListener("change", applyVisibility);
$("k-slider").addEventListener("input", (e) => { $("k-value").textContent = e.target.value; });
$("score-slider").addEventListener("input", (e) => { $("score-value").textContent = Number(e.target.value).toFixed(2); });
for (const id of ["k-slider", "score-slider", "range-start", "range-end"]) {
  $(id).addEventListener("change", () => guarded(runSearch));
}
$("query-date").addEventListener("change", () => { if (state.series) showSelected(); guarded(runSearch); });
$("search-button").addEventListener("click", () => guarded(runSearch));
for (const id of ["series-field", "toggle-trend", "toggle-outliers"]) $(id).addEventListener("change", renderChart);
$("before-date").addEventListener("change", showBeforeAfter);
$("after-date").addEventListener("change", showBeforeAfter);

// ---- start -------------------------------------------------------------------------------------
if (map) {
  map.on("load", () => guarded(async () => {
    probeBasemap();
    map.on("click", "grid-fill", (e) => {
      if (e.features && e.features.length) guarded(() => selectChip(e.features[0].properties.chip_id));
    });
    map.on("mouseenter", "grid-fill", () => { map.getCanvas().style.cursor = "pointer"; });
    map.on("mouseleave", "grid-fill", () => { map.getCanvas().style.cursor = ""; });
    const key = await loadAois();
    await openGrid(key);
    const params = new URLSearchParams(window.location.search);
    if (params.get("mode") === "change") setMode("change");
    if (params.get("chip")) await selectChip(params.get("chip"));
  }));
}
