// Few-shot search: "more like these, not like those". The user marks chips at dates as positives (+)
// and negatives (−) (a chip after a change and the same chip before it make a pair); every chip of the
// query date is scored (POST .../classify: a linear SVM
// on the embeddings, or cosine for one positive alone), shown as a score layer on the map, a ranked list
// and, on request, a heat map of where inside each of the first hits the match sits. The score layer
// exports as GeoJSON. URL state: pos, neg (CHIP@DATE), qdate, k, chip.
import { gridBase, postJSON } from "../api.js";
import { fillSelect, resultFigure } from "../dom.js";
import { EMPTY_FC, patchCells, registerOverlay } from "../layers.js";
import { formatChipAt } from "../state.js";
import { registerPanel } from "./registry.js";

const SCORE_RAMP = ["interpolate", ["linear"], ["get", "level"], 0, "#2c1b5a", 0.5, "#21918c", 0.8, "#90d743", 1, "#fde725"];
const on = (ctx) => ctx.state.mode === "fewshot";

registerOverlay({
  id: "fewshot-score", source: "fewshot-score", type: "fill", maps: ["main"],
  paint: { "fill-color": SCORE_RAMP, "fill-opacity": ["interpolate", ["linear"], ["get", "level"], 0, 0.15, 1, 0.6] },
  visible: (s, ctx) => s.mode === "fewshot" && ctx.checked("show-score"),
}, { below: "grid-fill" });
registerOverlay({
  id: "fewshot-heat", source: "fewshot-heat", type: "fill", maps: ["main"],
  paint: { "fill-color": SCORE_RAMP, "fill-opacity": 0.75 },
  visible: (s, ctx) => s.mode === "fewshot" && ctx.checked("fewshot-heat"),
}, { below: "grid-fill" });
registerOverlay({
  id: "fewshot-examples", source: "fewshot-examples", type: "line", maps: ["main"],
  paint: { "line-color": ["match", ["get", "role"], "positive", "#00c853", "#ff1744"], "line-width": 3 },
  visible: (s) => s.mode === "fewshot",
});

let last = null; // the last answer of the API (the score layer to export)
let seq = 0; // answers to older requests are dropped

function examples(ctx) {
  return { positives: ctx.state.pos.map(formatChipAt), negatives: ctx.state.neg.map(formatChipAt) };
}

function showExamples(ctx) {
  const { $, state, app } = ctx;
  const list = $("examples");
  const items = [...state.pos.map((e) => ["positive", e]), ...state.neg.map((e) => ["negative", e])];
  list.replaceChildren(...items.map(([role, e]) => {
    const li = document.createElement("li");
    li.setAttribute("data-testid", "example");
    li.dataset.role = role;
    li.dataset.example = formatChipAt(e);
    li.className = `example ${role}`;
    const text = document.createElement("span");
    text.textContent = `${role === "positive" ? "+" : "−"} ${formatChipAt(e)}`;
    const remove = document.createElement("button");
    remove.textContent = "×";
    remove.title = "remove this example";
    remove.setAttribute("data-testid", "remove-example");
    remove.addEventListener("click", () => ctx.guarded(() => setExample(ctx, e, null)));
    li.append(text, remove);
    return li;
  }));
  list.dataset.count = String(items.length);
  const features = items.map(([role, e]) => {
    const f = app.gridFeatures.get(e.chip);
    return f ? { type: "Feature", geometry: f.geometry, properties: { role, chip_id: e.chip } } : null;
  }).filter(Boolean);
  ctx.setOverlayData("fewshot-examples", { type: "FeatureCollection", features });
  $("classify-button").disabled = state.pos.length === 0;
}

function showPicked(ctx) {
  const { $, state } = ctx;
  $("fewshot-picked").textContent = state.chip ? `chip ${state.chip} on ${state.qdate}` : "Click a chip on the map.";
  $("add-positive").disabled = !state.chip;
  $("add-negative").disabled = !state.chip;
}

/** Make `e` a positive, a negative, or (role null) neither; then score again. */
async function setExample(ctx, e, role) {
  const { state } = ctx;
  const same = (o) => o.chip === e.chip && o.date === e.date;
  state.pos = state.pos.filter((o) => !same(o));
  state.neg = state.neg.filter((o) => !same(o));
  if (role === "positive") state.pos = [...state.pos, e];
  if (role === "negative") state.neg = [...state.neg, e];
  ctx.commit();
  showExamples(ctx);
  await classify(ctx);
}

function clearResults(ctx, message = "") {
  const { $ } = ctx;
  last = null;
  $("fewshot-results").replaceChildren();
  $("fewshot-results").dataset.state = "";
  $("fewshot-results").dataset.count = "0";
  $("fewshot-summary").textContent = message;
  $("export-score").disabled = true;
  ctx.setOverlayData("fewshot-score", EMPTY_FC);
  ctx.setOverlayData("fewshot-heat", EMPTY_FC);
}

async function classify(ctx) {
  const { $, state } = ctx;
  const { positives, negatives } = examples(ctx);
  if (!positives.length) {
    clearResults(ctx, negatives.length ? "Mark at least one chip as like this." : "");
    return;
  }
  const body = { positives, negatives, date: state.qdate, k: state.k, heatmaps: $("fewshot-heat").checked };
  if ($("fewshot-changed").value) body.changed_since = $("fewshot-changed").value;
  const mine = ++seq;
  $("fewshot-results").dataset.state = "loading";
  const resp = await postJSON(`${gridBase(state.aoi, state.grid)}/classify`, body);
  if (mine !== seq) return;
  last = resp;
  showResults(ctx, resp);
}

function showResults(ctx, resp) {
  const { $ } = ctx;
  const box = $("fewshot-results");
  box.replaceChildren(...resp.results.map((hit) => resultFigure(hit, `#${hit.rank} ${hit.chip_id} · ${hit.score.toFixed(3)}`,
    "fewshot-result", () => ctx.fitBounds([hit.minx, hit.miny, hit.maxx, hit.maxy], { padding: 120, maxZoom: 15 }))));
  const how = resp.method === "cosine" ? "cosine similarity to the one positive" : `${resp.method.toUpperCase()} on the examples and a background of the date's chips`;
  $("fewshot-summary").textContent = `${resp.scored} chips scored on ${resp.date} (${how})${resp.heatmap_note ? `; no heat maps: ${resp.heatmap_note}` : ""}`;
  box.dataset.count = String(resp.results.length);
  box.dataset.method = resp.method;
  box.dataset.state = "done";
  // colours by rank within the date (scores of different methods are on different scales)
  const feats = resp.layer.features;
  const n = Math.max(feats.length - 1, 1);
  ctx.setOverlayData("fewshot-score", {
    type: "FeatureCollection",
    features: feats.map((f) => ({ ...f, properties: { ...f.properties, level: 1 - (f.properties.rank - 1) / n } })),
  });
  const heat = resp.results.filter((h) => h.heatmap);
  const values = heat.flatMap((h) => h.heatmap.flat()).filter((v) => v != null);
  const lo = Math.min(...values);
  const span = Math.max(...values) - lo || 1;
  ctx.setOverlayData("fewshot-heat", {
    type: "FeatureCollection",
    features: heat.flatMap((h) => patchCells([h.minx, h.miny, h.maxx, h.maxy], h.heatmap.length,
      h.heatmap.flat().map((v) => (v == null ? null : (v - lo) / span)), "level")
      .map((f) => ({ ...f, properties: { ...f.properties, chip_id: h.chip_id } }))),
  });
  $("map").dataset.fewshotHeat = heat.map((h) => h.chip_id).join(",");
  $("export-score").disabled = feats.length === 0;
  ctx.refreshOverlays();
}

function exportLayer(ctx) {
  if (!last) return;
  const { state } = ctx;
  const blob = new Blob([JSON.stringify(last.layer)], { type: "application/geo+json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `${state.aoi}_${state.grid}_fewshot_${last.date}.geojson`;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

registerPanel({
  mode: "fewshot", label: "Few-shot", section: "fewshot-panel", order: 15,
  init(ctx) {
    const { $, state, guarded } = ctx;
    $("add-positive").addEventListener("click", () => guarded(() => setExample(ctx, { chip: state.chip, date: state.qdate }, "positive")));
    $("add-negative").addEventListener("click", () => guarded(() => setExample(ctx, { chip: state.chip, date: state.qdate }, "negative")));
    $("classify-button").addEventListener("click", () => guarded(() => classify(ctx)));
    $("fewshot-date").addEventListener("change", (e) => guarded(async () => {
      state.qdate = e.target.value;
      ctx.commit();
      showPicked(ctx);
      showExamples(ctx);
      await classify(ctx);
    }));
    for (const id of ["fewshot-changed", "fewshot-heat"]) $(id).addEventListener("change", () => guarded(() => classify(ctx)));
    $("show-score").addEventListener("change", ctx.refreshOverlays);
    $("export-score").addEventListener("click", () => exportLayer(ctx));
  },
  grid(ctx) {
    const { $, app, state } = ctx;
    fillSelect($("fewshot-date"), app.summary.dates, state.qdate);
    fillSelect($("fewshot-changed"), ["", ...app.summary.dates], "", ["any chip", ...app.summary.dates.map((d) => `changed since ${d}`)]);
    clearResults(ctx);
  },
  restore(ctx) {
    ctx.$("fewshot-date").value = ctx.state.qdate;
    clearResults(ctx); // the examples may differ: scored again when the panel shows
    showExamples(ctx);
  },
  async enter(ctx) {
    showPicked(ctx);
    showExamples(ctx);
    if (!last) await classify(ctx);
  },
  chip(ctx) {
    if (on(ctx)) showPicked(ctx);
  },
});
