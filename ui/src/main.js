// geofm explorer: a MapLibre map of the chip grid over imagery (true colour or a spectral index), with
// panels for similarity search, few-shot search, change detection (and alerts) and a before/after split
// map. The view state lives in state.js and in the URL (shareable; restored on reload and back/forward).
//
// Modules: api.js (HTTP and URLs), state.js (view state <-> URL), layers.js (sources and layers as data),
// map.js (MapLibre), panels/registry.js (the panels; similarity.js, fewshot.js, change.js, compare.js),
// chart.js.
import "./style.css";
import { ApiError, TRUE_COLOUR, aoiBase, getJSON, gridBase, legendUrl, onLoadingChange } from "./api.js";
import { $, fillSelect, nearestDate } from "./dom.js";
import { EMPTY_FC, IMAGERY_LAYERS, imageryLayer, layerDates, layerMinzoom, setIndices } from "./layers.js";
import {
  applyOverlayVisibility, createMap, fitTo, installOverlays, probeBasemap, setBasemap, setImagery, syncMaps,
  whenLoaded,
} from "./map.js";
import { allPanels, panelFor } from "./panels/registry.js";
import "./panels/similarity.js";
import "./panels/fewshot.js";
import "./panels/change.js";
import "./panels/compare.js";
import { commit, commitView, parseQuery, state, whileRestoring } from "./state.js";

// What the page holds besides the view state: the open grid's data and the maps.
const app = {
  aois: [], summary: null, series: null, seriesCache: new Map(), gridFeatures: new Map(),
  maps: { main: null, after: null }, overlayData: new Map(), restored: 0,
};

// ---- errors and loading ----------------------------------------------------------------------
function showError(message) {
  const box = $("error");
  box.textContent = box.hidden ? message : `${box.textContent}\n${message}`;
  box.hidden = false;
  console.error(message);
}
$("error").addEventListener("click", () => { $("error").hidden = true; $("error").textContent = ""; });
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

// ---- maps --------------------------------------------------------------------------------------
const maps = () => Object.entries(app.maps).filter(([, m]) => m);

/** Set a GeoJSON overlay source on every map that carries it (and on maps made later). */
function setOverlayData(source, data) {
  app.overlayData.set(source, data);
  for (const [, m] of maps()) if (m.getSource(source)) m.getSource(source).setData(data);
}

function refreshOverlays() {
  for (const [name, m] of maps()) applyOverlayVisibility(m, name, state, ctx);
}

function refreshImagery() {
  if (!app.summary) return;
  const common = { aoi: state.aoi, grid: state.grid, summary: app.summary, layer: state.layer,
    visible: $("toggle-imagery").checked };
  const compare = state.mode === "compare";
  setImagery(app.maps.main, { ...common, date: compare ? state.before : state.date });
  if (compare && app.maps.after) setImagery(app.maps.after, { ...common, date: state.after });
  $("label-main").textContent = compare ? `before · ${state.before}` : "";
  $("label-after").textContent = compare ? `after · ${state.after}` : "";
  updateLegend();
}

function updateLegend() {
  const layer = imageryLayer(state.layer);
  const box = $("index-legend");
  box.hidden = !(layer && layer.index);
  if (box.hidden) return;
  const { index } = layer;
  box.dataset.index = layer.id;
  $("legend-label").textContent = `${index.label} = ${index.formula}`;
  $("legend-label").title = index.title;
  if (!$("legend-ramp").src.endsWith(legendUrl(layer.id))) $("legend-ramp").src = legendUrl(layer.id);
  $("legend-min").textContent = String(index.vmin);
  $("legend-max").textContent = String(index.vmax);
  const minzoom = app.summary ? layerMinzoom(app.summary, layer.id) : 0;
  const tooFar = app.maps.main && app.maps.main.getZoom() < minzoom;
  $("legend-hint").hidden = !tooFar;
  $("legend-hint").textContent = `zoom in to see ${index.label} (from zoom ${minzoom})`;
}

function fitBounds(bounds, options) {
  fitTo(app.maps.main, bounds, options);
}

function wireMap(map) {
  map.on("click", "grid-fill", (e) => {
    if (e.features && e.features.length) {
      guarded(async () => { await selectChip(e.features[0].properties.chip_id); commit(); });
    }
  });
  map.on("mouseenter", "grid-fill", () => { map.getCanvas().style.cursor = "pointer"; });
  map.on("mouseleave", "grid-fill", () => { map.getCanvas().style.cursor = ""; });
}

let afterMapMade = null; // the split map's right side, made once (a second tab click waits for the first)

function makeAfterMap(main, sameView) {
  afterMapMade ||= (async () => {
    const after = createMap("map-after", showError);
    await whenLoaded(after);
    installOverlays(after, "after");
    for (const [source, data] of app.overlayData) if (after.getSource(source)) after.getSource(source).setData(data);
    wireMap(after);
    if ($("toggle-basemap").checked) setBasemap(after, true);
    after.jumpTo(sameView());
    app.maps.after = after;
    syncMaps(main, after, () => state.mode === "compare");
    return after;
  })();
  return afterMapMade;
}

/** Show the split map's right side (made at first use) in step with the main map; the page's CSS shows
 * its pane in compare mode only, and the maps follow each other only then. */
async function showSplitMap() {
  const main = app.maps.main;
  const sameView = () => ({ center: main.getCenter(), zoom: main.getZoom(), bearing: main.getBearing(), pitch: main.getPitch() });
  const after = await makeAfterMap(main, sameView);
  // the right side takes the main map's view first: any move of it (a resize too) is copied back
  after.jumpTo(sameView());
  after.resize();
  after.getContainer().dataset.ready = "true";
  refreshOverlays();
  refreshImagery();
}

// ---- view state ----------------------------------------------------------------------------------
function headerDates() {
  const dates = layerDates(app.summary, state.layer);
  fillSelect($("date-select"), dates, state.date);
  $("date-select").disabled = state.mode === "compare";
  $("date-select").title = state.mode === "compare" ? "the split map's dates are chosen in its panel" : "";
}

/** The map's imagery date (from the change chart, or the header). */
function setDate(date) {
  state.date = date;
  $("date-select").value = date;
  refreshImagery();
}

/** Default before/after dates (baseline or first, and last) where unset or not shown by the layer. */
function ensureBeforeAfter(baseline) {
  const dates = layerDates(app.summary, state.layer);
  if (!dates.includes(state.before)) state.before = baseline && dates.includes(baseline) ? baseline : dates[0];
  if (!dates.includes(state.after)) state.after = dates[dates.length - 1];
}

/** The imagery layer or a date changed: the maps and the panels follow. */
function viewChanged() {
  headerDates();
  refreshImagery();
  for (const p of allPanels()) p.view?.(ctx);
}

async function setMode(mode) {
  const panel = panelFor(mode) || panelFor("similarity");
  const previous = panelFor(state.mode);
  if (previous && previous !== panel && document.body.dataset.mode) await previous.leave?.(ctx);
  state.mode = panel.mode;
  for (const p of allPanels()) {
    $(`tab-${p.mode}`).classList.toggle("active", p === panel);
    $(p.section).hidden = p !== panel;
  }
  document.body.dataset.mode = panel.mode; // the page's layout (one map or two) follows
  for (const [, m] of maps()) m.resize();
  headerDates();
  refreshOverlays();
  refreshImagery();
  await panel.enter?.(ctx);
}

async function chipSeries(chipId) {
  if (!app.seriesCache.has(chipId)) {
    app.seriesCache.set(chipId, await getJSON(`${gridBase(state.aoi, state.grid)}/chips/${encodeURIComponent(chipId)}`));
  }
  return app.seriesCache.get(chipId);
}

async function selectChip(chipId) {
  state.chip = chipId;
  const feature = app.gridFeatures.get(chipId);
  setOverlayData("selected", feature ? { type: "FeatureCollection", features: [feature] } : EMPTY_FC);
  app.series = null;
  try {
    app.series = await chipSeries(chipId);
  } catch (err) {
    clearChip();
    throw err;
  }
  await panelFor(state.mode).chip?.(ctx);
}

function clearChip() {
  state.chip = null;
  app.series = null;
  setOverlayData("selected", EMPTY_FC);
}

async function openGrid(aoi, grid) {
  state.aoi = aoi; state.grid = grid;
  clearChip();
  app.seriesCache.clear();
  const base = gridBase(aoi, grid);
  const summary = await getJSON(base);
  const [gridFc, changeFc] = await Promise.all([
    getJSON(`${base}/chip-grid`),
    summary.has_change_intensity ? getJSON(`${base}/change-intensity`) : Promise.resolve(EMPTY_FC),
  ]);
  app.summary = summary;
  app.gridFeatures = new Map(gridFc.features.map((f) => [f.properties.chip_id, f]));
  setOverlayData("grid", gridFc);
  setOverlayData("change", changeFc);
  setOverlayData("selected", EMPTY_FC);
  $("aoi-select").value = `${aoi}/${grid}`;
  $("map").dataset.gridFeatures = String(gridFc.features.length);
}

function defaultDate(summary, dates) {
  const latest = summary.dates[summary.dates.length - 1];
  return dates.includes(latest) ? latest : dates[dates.length - 1];
}

function defaultQueryDate(summary) {
  const cfg = summary.config && summary.config.demos ? summary.config.demos[0].config : summary.config || {};
  return cfg && summary.dates.includes(cfg.similarity_search_date) ? cfg.similarity_search_date
    : summary.dates[summary.dates.length - 1];
}

/** The AOI and grid to open for URL values: the asked ones when they exist, else the first. */
async function pickGrid(values) {
  let aoi = app.aois.find((a) => a.aoi_name === values.aoi);
  if (values.aoi && !aoi) {
    app.aois = await getJSON("api/aois"); // made since the page loaded?
    aoi = app.aois.find((a) => a.aoi_name === values.aoi);
    if (!aoi) {
      try {
        await getJSON(aoiBase(values.aoi)); // the server says why
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        showError(err.message);
      }
    }
  }
  aoi = aoi || app.aois[0];
  if (values.grid && values.aoi === aoi.aoi_name && !aoi.grids.includes(values.grid)) {
    showError(`grid ${values.grid} not found for AOI ${aoi.aoi_name} (grids: ${aoi.grids.join(", ")})`);
  }
  return [aoi.aoi_name, aoi.grids.includes(values.grid) ? values.grid : aoi.grids[0]];
}

/** Show the view that URL values describe; what they leave out takes its default. The caller then
 * writes the URL (commit): "replace" for a view read from it, "push" for a new one. */
async function restore(values) {
  await whileRestoring(async () => {
    const [aoi, grid] = await pickGrid(values);
    if (aoi !== state.aoi || grid !== state.grid || !app.summary) {
      $("map").dataset.ready = "false";
      await openGrid(aoi, grid);
      for (const p of allPanels()) p.grid?.(ctx);
    }
    const s = app.summary;
    if (values.layer && !imageryLayer(values.layer)) {
      showError(`unknown layer ${values.layer} (layers: ${IMAGERY_LAYERS.map((l) => l.id).join(", ")})`);
    }
    if (values.mode && !panelFor(values.mode)) {
      showError(`unknown mode ${values.mode} (modes: ${allPanels().map((p) => p.mode).join(", ")})`);
    }
    state.layer = imageryLayer(values.layer) ? values.layer : TRUE_COLOUR;
    $("layer-select").value = state.layer;
    const dates = layerDates(s, state.layer);
    state.date = dates.includes(values.date) ? values.date : defaultDate(s, dates);
    state.qdate = s.dates.includes(values.qdate) ? values.qdate : defaultQueryDate(s);
    state.k = values.k || 5;
    state.before = nearestDate(dates, values.before || null);
    state.after = nearestDate(dates, values.after || null);
    state.pos = values.pos || [];
    state.neg = values.neg || [];
    if (state.chip) clearChip();
    for (const p of allPanels()) p.restore?.(ctx);
    await setMode(values.mode);
    if (values.view) app.maps.main.jumpTo({ center: [values.view[0], values.view[1]], zoom: values.view[2] });
    else fitBounds(s.bounds);
    if (values.chip) await guarded(() => selectChip(values.chip));
    refreshImagery();
    refreshOverlays();
  });
  $("map").dataset.ready = "true";
  app.restored += 1; // views restored so far (tests wait on it after back/forward)
}

// The context every panel gets (see panels/registry.js).
const ctx = {
  state, app, $, showError, guarded, commit, checked: (id) => $(id).checked,
  setOverlayData, refreshOverlays, refreshImagery, fitBounds, setMode, selectChip, setDate,
  ensureBeforeAfter, viewChanged, showSplitMap,
};
window.geofmExplorer = {
  state, app, ctx,
  get map() { return app.maps.main; },
  get afterMap() { return app.maps.after; },
};

// ---- header ----------------------------------------------------------------------------------------
function makeTabs() {
  $("tabs").replaceChildren(...allPanels().map((p) => {
    const b = document.createElement("button");
    b.id = `tab-${p.mode}`;
    b.className = "tab";
    b.setAttribute("data-testid", `tab-${p.mode}`);
    b.textContent = p.label;
    b.addEventListener("click", () => guarded(async () => {
      if (state.mode === p.mode) return;
      await setMode(p.mode);
      commit();
    }));
    return b;
  }));
}

function wireHeader() {
  $("aoi-select").addEventListener("change", (e) => guarded(async () => {
    const [aoi, grid] = e.target.value.split("/");
    await restore({ aoi, grid, mode: state.mode, layer: state.layer, k: state.k, pos: state.pos, neg: state.neg });
    commit();
  }));
  $("layer-select").addEventListener("change", (e) => {
    state.layer = e.target.value;
    const dates = layerDates(app.summary, state.layer);
    state.date = nearestDate(dates, state.date);
    state.before = nearestDate(dates, state.before);
    state.after = nearestDate(dates, state.after);
    commit();
    viewChanged();
  });
  $("date-select").addEventListener("change", (e) => {
    setDate(e.target.value);
    commit();
  });
  $("toggle-imagery").addEventListener("change", refreshImagery);
  $("toggle-basemap").addEventListener("change", (e) => {
    for (const [, m] of maps()) setBasemap(m, e.target.checked);
  });
}

// ---- start -------------------------------------------------------------------------------------
async function start(main) {
  installOverlays(main, "main");
  wireMap(main);
  main.on("moveend", () => {
    const c = main.getCenter();
    state.view = [c.lng, c.lat, main.getZoom()];
    commitView();
  });
  main.on("zoomend", updateLegend);
  probeBasemap(() => {
    const box = $("toggle-basemap");
    box.disabled = false;
    box.checked = true;
    for (const [, m] of maps()) setBasemap(m, true);
  }, () => { $("toggle-basemap").title = "base map unreachable (offline)"; });
  setIndices(await getJSON("api/indices"));
  fillSelect($("layer-select"), IMAGERY_LAYERS.map((l) => l.id), state.layer, IMAGERY_LAYERS.map((l) => l.label));
  app.aois = await getJSON("api/aois");
  if (app.aois.length === 0) throw new Error("no AOI with consolidated output under this root (run the pipeline first)");
  fillSelect($("aoi-select"), app.aois.flatMap((a) => a.grids.map((g) => `${a.aoi_name}/${g}`)), null);
  const { values, invalid } = parseQuery(window.location.search);
  if (invalid.length) showError(`URL parameters not understood, ignored: ${invalid.join(", ")}`);
  await restore(values);
  commit("replace"); // the URL now names the whole view (defaults and map position included)
  let restoring = Promise.resolve(); // one restore at a time, in the order of the history steps
  window.addEventListener("popstate", () => {
    restoring = restoring.then(() => guarded(async () => {
      await restore(parseQuery(window.location.search).values);
      commit("replace");
    }));
  });
}

makeTabs();
for (const p of allPanels()) p.init?.(ctx);
wireHeader();
try {
  app.maps.main = createMap("map", showError);
  app.maps.main.on("load", () => guarded(() => start(app.maps.main)));
} catch (err) {
  showError(`the map cannot start (WebGL unavailable?): ${err.message}`);
}
