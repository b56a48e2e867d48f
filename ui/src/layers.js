// Map sources and layers as data. map.js installs them on a map and applies their visibility; panels only
// set their data (setOverlayData) and the state their `visible` rule reads.
//
// An overlay: {id, source, type, paint, layout?, maps, visible?(state, ctx)}
//   source   a GeoJSON source id (made empty on install; fill it with setOverlayData(source, fc))
//   maps     which maps carry it: "main" (the map of every mode) and/or "after" (the split map's right side)
//   visible  when it shows (default: always); ctx.checked(id) reads a checkbox of the page
// Drawing order is list order (first = bottom), always above the imagery. Add overlays with
// registerOverlay(def, {below: "grid-fill"}) before the maps are made (at module load of a panel).
//
// Imagery layers (the raster under the overlays): true colour, and one per spectral index of the server
// (/api/indices), added by setIndices at start.

import { TRUE_COLOUR } from "./api.js";

export const INTENSITY_COLOURS = ["match", ["get", "change_intensity"], "High", "#d7191c", "Medium", "#fdae61", "#1a9641"];
export const EMPTY_FC = { type: "FeatureCollection", features: [] };

export const OVERLAYS = [
  {
    id: "change-fill", source: "change", type: "fill", maps: ["main"],
    paint: { "fill-color": INTENSITY_COLOURS, "fill-opacity": 0.45 },
    visible: (s, ctx) => s.mode === "change" && ctx.checked("toggle-change"),
  },
  {
    // per-patch similarity of a date over the selected chip: one cell per patch, changed ones in red
    // (vector cells rather than an image source: image sources render black on some software GL)
    id: "patch-map", source: "patch-map", type: "fill", maps: ["main"],
    paint: {
      "fill-color": "#d7191c",
      "fill-opacity": ["interpolate", ["linear"], ["get", "sim"], 0.5, 0.85, 0.8, 0.55, 0.95, 0.05],
    },
    visible: (s, ctx) => s.mode === "change" && ctx.checked("toggle-patch-map"),
  },
  {
    id: "grid-fill", source: "grid", type: "fill", maps: ["main", "after"],
    paint: { "fill-color": "#ffffff", "fill-opacity": 0.01 },
  },
  { id: "grid-line", source: "grid", type: "line", maps: ["main", "after"], paint: { "line-color": "#ffd400", "line-width": 1 } },
  {
    id: "results-line", source: "results", type: "line", maps: ["main"],
    paint: { "line-color": "#ffffff", "line-width": 2.5 },
    visible: (s, ctx) => s.mode === "similarity" && ctx.checked("show-results"),
  },
  {
    id: "selected-line", source: "selected", type: "line", maps: ["main", "after"],
    paint: { "line-color": "#00e5ff", "line-width": 3.5 },
  },
];

/** Add an overlay (see above); `below` puts it under an existing one, else it goes on top. */
export function registerOverlay(def, { below } = {}) {
  if (OVERLAYS.some((o) => o.id === def.id)) throw new Error(`overlay ${def.id} is registered twice`);
  const at = below ? OVERLAYS.findIndex((o) => o.id === below) : -1;
  if (at >= 0) OVERLAYS.splice(at, 0, def);
  else OVERLAYS.push(def);
}

/** The GeoJSON sources the overlays of a map read. */
export function overlaySources(mapName) {
  return [...new Set(OVERLAYS.filter((o) => o.maps.includes(mapName)).map((o) => o.source))];
}

// ---- imagery -------------------------------------------------------------------------------------
// {id, label, index?}: index is the server's description of a spectral index (bands, range, ramp).
export const IMAGERY_LAYERS = [{ id: TRUE_COLOUR, label: "true colour" }];

export function setIndices(described) {
  IMAGERY_LAYERS.splice(1, IMAGERY_LAYERS.length - 1,
    ...described.map((d) => ({ id: d.name, label: d.label, index: d })));
}

export function imageryLayer(id) {
  return IMAGERY_LAYERS.find((l) => l.id === id) || null;
}

/** Dates a layer can show: scenes for true colour, dates with chips for the indices (made from chips). */
export function layerDates(summary, layerId) {
  const layer = imageryLayer(layerId);
  return layer && layer.index ? summary.chip_dates || summary.imagery_dates : summary.imagery_dates;
}

/** The zoom from which a layer's tiles are drawn (the server answers empty tiles below it). */
export function layerMinzoom(summary, layerId) {
  const layer = imageryLayer(layerId);
  return (layer && layer.index ? summary.index_minzoom : summary.imagery_minzoom) || 0;
}

/** One square cell per patch over a chip's lon/lat `bounds` ([minx, miny, maxx, maxy]), `g` x `g` patches,
 * row-major from the north-west; `values[k]` goes into property `prop` (null values make no cell). */
export function patchCells(bounds, g, values, prop) {
  const [minx, miny, maxx, maxy] = bounds;
  const dx = (maxx - minx) / g;
  const dy = (maxy - miny) / g;
  const features = [];
  values.forEach((v, k) => {
    if (v == null) return;
    const x0 = minx + (k % g) * dx;
    const y1 = maxy - Math.floor(k / g) * dy;
    features.push({
      type: "Feature", properties: { [prop]: v, patch: k },
      geometry: { type: "Polygon", coordinates: [[[x0, y1], [x0 + dx, y1], [x0 + dx, y1 - dy], [x0, y1 - dy], [x0, y1]]] },
    });
  });
  return features;
}
