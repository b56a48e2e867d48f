// Before / after: the split map. Two maps side by side that move and zoom together, the left one at the
// "before" date, the right one at the "after" date, both in the header's imagery layer (true colour or a
// spectral index computed from the chips); a selected chip is shown at both dates below.
// URL state: before, after, layer, chip.
import { chipImageUrl } from "../api.js";
import { fillSelect } from "../dom.js";
import { imageryLayer, layerDates } from "../layers.js";
import { registerPanel } from "./registry.js";

function fillDates(ctx) {
  const { $, state, app } = ctx;
  const dates = layerDates(app.summary, state.layer);
  fillSelect($("compare-before"), dates, state.before);
  fillSelect($("compare-after"), dates, state.after);
}

function showChip(ctx) {
  const { $, state } = ctx;
  const box = $("compare-chip");
  box.hidden = !state.chip;
  $("compare-hint").hidden = !!state.chip;
  if (!state.chip) return;
  const label = imageryLayer(state.layer)?.label || state.layer;
  for (const side of ["before", "after"]) {
    const img = $(`compare-${side}-img`);
    const caption = $(`compare-${side}-caption`);
    const date = state[side];
    img.onerror = () => { caption.textContent = `${side} · ${date} · no image of this chip`; };
    img.src = chipImageUrl(state.aoi, state.grid, state.chip, state.layer, date);
    img.alt = `chip ${state.chip}, ${label}, ${date}`;
    img.dataset.date = date;
    img.dataset.layer = state.layer;
    caption.textContent = `${side} · ${label} · ${date}`;
  }
}

registerPanel({
  mode: "compare", label: "Before / after", section: "compare-panel", order: 30,
  init(ctx) {
    const { $, state } = ctx;
    for (const side of ["before", "after"]) {
      $(`compare-${side}`).addEventListener("change", (e) => {
        state[side] = e.target.value;
        ctx.commit();
        ctx.viewChanged();
      });
    }
    $("compare-swap").addEventListener("click", () => {
      [state.before, state.after] = [state.after, state.before];
      ctx.commit();
      ctx.viewChanged();
    });
  },
  async enter(ctx) {
    ctx.ensureBeforeAfter(ctx.app.series ? ctx.app.series.baseline_date : null);
    await ctx.showSplitMap();
    fillDates(ctx);
    showChip(ctx);
  },
  chip(ctx) {
    showChip(ctx);
  },
  view(ctx) {
    if (ctx.state.mode !== "compare") return;
    fillDates(ctx);
    showChip(ctx);
  },
});
