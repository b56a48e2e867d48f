// MapLibre maps of the explorer: made with the same style and controls, the overlays of layers.js
// installed, the imagery raster set, and two maps kept in step (the split map).
import maplibregl from "maplibre-gl";
import "maplibre-gl/dist/maplibre-gl.css";
import { tileTemplate } from "./api.js";
import { EMPTY_FC, OVERLAYS, layerMinzoom, overlaySources } from "./layers.js";

export const BASEMAP_URL = "https://tile.openstreetmap.org/{z}/{x}/{y}.png";
const IMAGERY = "imagery";

/** A map in `container`; `onError(message)` gets the map errors that matter: not those of the optional
 * base map, of a busy render slot (those tiles come on the next move) or of requests cancelled because the
 * view moved on. */
export function createMap(container, onError) {
  const map = new maplibregl.Map({
    container,
    style: { version: 8, sources: {}, layers: [{ id: "background", type: "background", paint: { "background-color": "#1d2330" } }] },
    center: [0, 0], zoom: 1, attributionControl: { compact: true },
  });
  map.addControl(new maplibregl.NavigationControl(), "top-right");
  map.addControl(new maplibregl.ScaleControl(), "bottom-left");
  map.on("error", (e) => {
    const src = e.sourceId || (e.source && e.source.id);
    if (src === "basemap") return;
    if (src === IMAGERY && e.error && e.error.status === 503) return;
    if (e.error && e.error.name === "AbortError") return; // tiles no longer wanted (the view moved on)
    onError(`map: ${e.error ? e.error.message : "error"}${src ? ` (layer ${src})` : ""}`);
  });
  return map;
}

export function whenLoaded(map) {
  return new Promise((resolve) => { if (map.loaded() || map.isStyleLoaded()) resolve(map); else map.once("load", () => resolve(map)); });
}

/** Add the overlays of layers.js that this map (`name`: "main" or "after") carries, in order. */
export function installOverlays(map, name) {
  for (const id of overlaySources(name)) if (!map.getSource(id)) map.addSource(id, { type: "geojson", data: EMPTY_FC });
  for (const o of OVERLAYS) {
    if (!o.maps.includes(name) || map.getLayer(o.id)) continue;
    const layer = { id: o.id, type: o.type, source: o.source, paint: o.paint };
    if (o.layout) layer.layout = o.layout;
    map.addLayer(layer, nextLayer(map, name, o.id));
  }
}

// The first installed overlay after `id` in list order (so a later-registered overlay keeps its place).
function nextLayer(map, name, id) {
  const after = OVERLAYS.slice(OVERLAYS.findIndex((o) => o.id === id) + 1);
  const found = after.find((o) => o.maps.includes(name) && map.getLayer(o.id));
  return found ? found.id : undefined;
}

/** Show or hide each overlay of a map by its `visible` rule. */
export function applyOverlayVisibility(map, name, state, ctx) {
  for (const o of OVERLAYS) {
    if (!o.maps.includes(name) || !map.getLayer(o.id)) continue;
    const on = !o.visible || o.visible(state, ctx);
    map.setLayoutProperty(o.id, "visibility", on ? "visible" : "none");
  }
}

/**
 * The imagery raster of `layer` at `date` under the overlays. Its bounds and min zoom (the server's
 * useful zoom for the layer) keep the map from asking for tiles that would show the data as a few
 * pixels (the server answers those empty anyway). The container's data-imagery-* attributes say what
 * is shown.
 */
export function setImagery(map, { aoi, grid, summary, layer, date, visible = true }) {
  if (!date) return;
  const tiles = [tileTemplate(aoi, grid, layer, date)];
  const key = `${aoi}/${grid}/${layer}`;
  const src = map.getSource(IMAGERY);
  if (src && map.geofmImageryKey === key) {
    if (map.geofmImageryTiles !== tiles[0]) src.setTiles(tiles); // the same tiles again would abort those in flight
  } else {
    if (map.getLayer(IMAGERY)) map.removeLayer(IMAGERY);
    if (src) map.removeSource(IMAGERY);
    map.addSource(IMAGERY, {
      type: "raster", tiles, tileSize: 256, bounds: summary.bounds, minzoom: layerMinzoom(summary, layer), maxzoom: 18,
    });
    const first = OVERLAYS.find((o) => map.getLayer(o.id));
    map.addLayer({ id: IMAGERY, type: "raster", source: IMAGERY }, first ? first.id : undefined);
    map.geofmImageryKey = key;
  }
  map.geofmImageryTiles = tiles[0];
  map.setLayoutProperty(IMAGERY, "visibility", visible ? "visible" : "none");
  const box = map.getContainer();
  box.dataset.imageryDate = date;
  box.dataset.imageryLayer = layer;
}

/** Keep two maps on the same view while `enabled()`: a move of either is copied to the other. */
export function syncMaps(a, b, enabled = () => true) {
  let copying = false;
  const follow = (from, to) => () => {
    if (copying || !enabled()) return;
    copying = true;
    try {
      to.jumpTo({ center: from.getCenter(), zoom: from.getZoom(), bearing: from.getBearing(), pitch: from.getPitch() });
    } finally {
      copying = false;
    }
  };
  a.on("move", follow(a, b));
  b.on("move", follow(b, a));
}

export function fitTo(map, [minx, miny, maxx, maxy], options = {}) {
  map.fitBounds([[minx, miny], [maxx, maxy]], { padding: 40, duration: 0, ...options });
}

// ---- the optional online base map ------------------------------------------------------------------
/** Calls `onReachable()` when the base map's tiles can be loaded (offline the page works without it). */
export function probeBasemap(onReachable, onUnreachable) {
  const img = new Image();
  const timer = setTimeout(() => { img.src = ""; }, 4000);
  img.onload = () => { clearTimeout(timer); onReachable(); };
  img.onerror = () => { clearTimeout(timer); onUnreachable(); };
  img.src = BASEMAP_URL.replace("{z}/{x}/{y}", "0/0/0");
}

export function setBasemap(map, visible) {
  if (!map.getSource("basemap")) {
    if (!visible) return;
    map.addSource("basemap", { type: "raster", tiles: [BASEMAP_URL], tileSize: 256, maxzoom: 19,
      attribution: "© OpenStreetMap contributors" });
    const first = map.getStyle().layers.find((l) => l.id !== "background");
    map.addLayer({ id: "basemap", type: "raster", source: "basemap" }, first ? first.id : undefined);
  }
  map.setLayoutProperty("basemap", "visibility", visible ? "visible" : "none");
}
