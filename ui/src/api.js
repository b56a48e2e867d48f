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
  setLoading(1);
  try {
    let resp;
    try {
      resp = await fetch(url);
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
  return `api/aois/${encodeURIComponent(aoi)}/grids/${encodeURIComponent(grid)}`;
}

export function thumbnailUrl(aoi, grid, chipId, date) {
  return `${gridBase(aoi, grid)}/chips/${encodeURIComponent(chipId)}/thumbnail?date=${date}`;
}
