// Fetch wrapper for the explorer API: counts requests in flight (loading state) and turns API
// errors into messages that the page shows (never swallowed).

let inFlight = 0;
const listeners = new Set();

export function onLoadingChange(fn) {
  listeners.add(fn);
}

function setLoading(delta) {
  inFlight += delta;
  for (const fn of listeners) fn(inFlight > 0);
}

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function detailText(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return JSON.stringify(detail);
}

/** GET a JSON document; throws ApiError with the API's message on any failure. */
export async function getJSON(path, params = {}) {
  const url = new URL(path, window.location.href);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  return request(url, {});
}

/** POST a JSON body, get a JSON document back (errors as getJSON). */
export async function postJSON(path, body) {
  const url = new URL(path, window.location.href);
  return request(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

async function request(url, init) {
  setLoading(1);
  try {
    let resp;
    try {
      resp = await fetch(url, init);
    } catch (err) {
      throw new ApiError(`cannot reach the explorer API (${err.message})`, 0);
    }
    let body = null;
    try {
      body = await resp.json();
    } catch {
      body = null;
    }
    if (!resp.ok) {
      const msg = body && body.detail ? detailText(body.detail) : resp.statusText;
      throw new ApiError(`${resp.status} ${msg} (${url.pathname})`, resp.status);
    }
    return body;
  } finally {
    setLoading(-1);
  }
}

export function gridBase(aoi, grid) {
  return `${aoiBase(aoi)}/grids/${encodeURIComponent(grid)}`;
}

export const TRUE_COLOUR = "true-colour";

export function thumbnailUrl(aoi, grid, chipId, date) {
  return `${gridBase(aoi, grid)}/chips/${encodeURIComponent(chipId)}/thumbnail?date=${date}`;
}

/** A chip's image at a date in an imagery layer: its thumbnail (true colour) or a spectral index image. */
export function chipImageUrl(aoi, grid, chipId, layer, date) {
  if (layer === TRUE_COLOUR) return thumbnailUrl(aoi, grid, chipId, date);
  return `${gridBase(aoi, grid)}/chips/${encodeURIComponent(chipId)}/indices/${encodeURIComponent(layer)}.png?date=${date}`;
}

/** The absolute {z}/{x}/{y} tile template of an imagery layer at a date (MapLibre needs absolute URLs). */
export function tileTemplate(aoi, grid, layer, date) {
  const base = new URL(gridBase(aoi, grid), window.location.href).href;
  const path = layer === TRUE_COLOUR ? "tiles" : `indices/${encodeURIComponent(layer)}/tiles`;
  return `${base}/${path}/{z}/{x}/{y}.png?date=${date}`;
}

export function legendUrl(index) {
  return `api/indices/${encodeURIComponent(index)}/legend.png`;
}

export function aoiBase(aoi) {
  return `api/aois/${encodeURIComponent(aoi)}`;
}

/** The AOI's change alerts as a file to download (geojson, gpkg or parquet). */
export function alertsExportUrl(aoi, format) {
  return `${aoiBase(aoi)}/alerts/export?format=${encodeURIComponent(format)}`;
}

/** A grid's per-patch change raster of an analysed date (COG) to download. */
export function changeRasterUrl(aoi, grid, date) {
  return `${gridBase(aoi, grid)}/change-raster.tif?date=${encodeURIComponent(date)}`;
}
