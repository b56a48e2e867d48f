// The side panels, one per mode. A panel registers itself at module load; main.js makes a tab for each
// (id `tab-<mode>`, in `order`), shows its <section> (in index.html) when its mode is open, and calls its
// hooks with the explorer context `ctx` (main.js: state, app, overlay data, chip selection, errors):
//
//   registerPanel({
//     mode: "fewshot", label: "Few-shot", section: "fewshot-panel", order: 40,
//     init(ctx)   {}  // once, at start: wire the panel's controls
//     grid(ctx)   {}  // an AOI/grid was opened: reset, fill date lists (ctx.app.summary)
//     enter(ctx)  {}  // the panel's tab was opened (ctx.state.chip may be set already)
//     leave(ctx)  {}  // another tab was opened
//     chip(ctx)   {}  // a chip was selected while the panel is open (ctx.state.chip, ctx.app.series)
//     view(ctx)   {}  // the imagery layer or a date changed (ctx.state.layer/date/before/after)
//     restore(ctx) {} // the state was restored from the URL (e.g. read ctx.state.pos / ctx.state.neg)
//   });
// Every hook is optional and may be async. A panel that changes the view sets ctx.state and calls
// ctx.commit() (a history entry) or ctx.commit("replace"), so the URL always names what is shown.

const PANELS = [];

export function registerPanel(panel) {
  if (!panel.mode || !panel.section) throw new Error("a panel needs a mode and a section id");
  if (PANELS.some((p) => p.mode === panel.mode)) throw new Error(`panel mode ${panel.mode} is registered twice`);
  PANELS.push({ order: 100, ...panel });
  PANELS.sort((a, b) => a.order - b.order);
}

export function allPanels() {
  return PANELS;
}

export function panelFor(mode) {
  return PANELS.find((p) => p.mode === mode) || null;
}
