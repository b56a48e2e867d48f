// Similarity search: the chips most like the selected chip on the query date (LanceDB), as thumbnails
// and outlines on the map. URL state: chip, qdate, k.
import { getJSON, gridBase, thumbnailUrl } from "../api.js";
import { EMPTY_FC } from "../layers.js";
import { fillSelect, resultFigure } from "../dom.js";
import { registerPanel } from "./registry.js";

function showSelected(ctx) {
  const { $, state, app } = ctx;
  const s = app.series;
  if (!s) return;
  $("selected").hidden = false; $("similarity-hint").hidden = true;
  $("selected-thumbnail").src = thumbnailUrl(state.aoi, state.grid, s.chip_id, state.qdate);
  const [lon, lat] = s.centroid;
  const rows = [["chip", s.chip_id], ["grid", s.grid], ["lat, lon", lon == null ? "?" : `${lat.toFixed(5)}, ${lon.toFixed(5)}`],
    ["date", state.qdate]];
  $("selected-details").replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
}

async function runSearch(ctx) {
  const { $, state } = ctx;
  if (!state.chip) return;
  const results = $("results");
  results.dataset.state = "loading";
  const params = {
    chip_id: state.chip, date: state.qdate, k: state.k, min_score: $("score-slider").value,
    start: $("range-start").value, end: $("range-end").value,
  };
  const resp = await getJSON(`${gridBase(state.aoi, state.grid)}/search`, params);
  results.replaceChildren(...resp.results.map((hit) => resultFigure(hit, `${hit.chip_id} · ${hit.date} · ${hit.score.toFixed(3)}`,
    "result-item", () => ctx.fitBounds([hit.minx, hit.miny, hit.maxx, hit.maxy], { padding: 120, maxZoom: 15 }))));
  if (resp.results.length === 0) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = `No chip scores ${Number(params.min_score).toFixed(2)} or more.`;
    results.appendChild(p);
  }
  results.dataset.count = String(resp.results.length);
  results.dataset.state = "done";
  ctx.setOverlayData("results", {
    type: "FeatureCollection",
    features: resp.results.filter((h) => h.minx != null).map((h) => ({
      type: "Feature", properties: { chip_id: h.chip_id, score: h.score },
      geometry: { type: "Polygon", coordinates: [[[h.minx, h.miny], [h.maxx, h.miny], [h.maxx, h.maxy], [h.minx, h.maxy], [h.minx, h.miny]]] },
    })),
  });
}

function showK(ctx) {
  ctx.$("k-slider").value = String(ctx.state.k);
  ctx.$("k-value").textContent = String(ctx.state.k);
}

registerPanel({
  mode: "similarity", label: "Similarity search", section: "similarity-panel", order: 10,
  init(ctx) {
    const { $, state, guarded } = ctx;
    $("k-slider").addEventListener("input", (e) => { $("k-value").textContent = e.target.value; });
    $("k-slider").addEventListener("change", (e) => {
      state.k = Number(e.target.value);
      ctx.commit();
      guarded(() => runSearch(ctx));
    });
    $("score-slider").addEventListener("input", (e) => { $("score-value").textContent = Number(e.target.value).toFixed(2); });
    for (const id of ["score-slider", "range-start", "range-end"]) $(id).addEventListener("change", () => guarded(() => runSearch(ctx)));
    $("query-date").addEventListener("change", (e) => {
      state.qdate = e.target.value;
      ctx.commit();
      showSelected(ctx);
      guarded(() => runSearch(ctx));
    });
    $("search-button").addEventListener("click", () => guarded(() => runSearch(ctx)));
    $("show-results").addEventListener("change", ctx.refreshOverlays);
  },
  grid(ctx) {
    const { $, app, state } = ctx;
    fillSelect($("query-date"), app.summary.dates, state.qdate);
    $("selected").hidden = true; $("similarity-hint").hidden = false;
    $("results").replaceChildren(); $("search-button").disabled = true;
    ctx.setOverlayData("results", EMPTY_FC);
  },
  restore(ctx) {
    ctx.$("query-date").value = ctx.state.qdate;
    showK(ctx);
  },
  async enter(ctx) {
    if (ctx.state.chip && ctx.app.series) await this.chip(ctx);
  },
  async chip(ctx) {
    ctx.$("search-button").disabled = false;
    showSelected(ctx);
    await runSearch(ctx);
  },
});
