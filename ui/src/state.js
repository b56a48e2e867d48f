// The explorer's view state, one object, mirrored in the URL query string so that a view can be shared:
// a reload or a shared link opens the same view, and back/forward step through the views.
//
// URL keys (declared once, in URL_KEYS; registerUrlKey adds more):
//   aoi, grid    the open AOI and MGRS grid
//   date         the imagery date of the map (similarity and change modes)
//   qdate        the query date of a similarity search (and the date a few-shot classifier scores)
//   mode         the open panel (a registered panel's mode: similarity, change, compare, ...)
//   chip         the selected chip id
//   k            top-k of similarity search
//   layer        the imagery layer: true-colour or a spectral index (ndvi, nbr, ndwi, ...)
//   before, after  the two dates of the split map (compare mode)
//   pos, neg     few-shot positives and negatives: repeated CHIP@DATE values (pos=2_1@2024-01-05&pos=...)
//   view         the map view: lon,lat,zoom
// Values that do not parse are dropped (and reported by parseQuery), never applied.

const CHIP = /^\d+_\d+$/;
const DAY = /^\d{4}-\d{2}-\d{2}$/;
const CHIP_AT_DATE = /^(\d+_\d+)@(\d{4}-\d{2}-\d{2})$/;
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;
export const MAX_EXAMPLES = 50; // per list: keeps URLs bounded; the classify API takes at most 50 a list

export function isDay(value) {
  if (typeof value !== "string" || !DAY.test(value)) return false;
  const t = Date.parse(`${value}T00:00:00Z`);
  return !Number.isNaN(t) && new Date(t).toISOString().slice(0, 10) === value; // no 2024-02-30
}

/** "2_1@2024-01-05" -> {chip: "2_1", date: "2024-01-05"}; null when malformed. */
export function parseChipAt(text) {
  const m = CHIP_AT_DATE.exec(String(text).trim());
  return m && isDay(m[2]) ? { chip: m[1], date: m[2] } : null;
}

export function formatChipAt({ chip, date }) {
  return `${chip}@${date}`;
}

const single = (test) => ({
  list: false,
  parse: (v) => (test(v) ? v : undefined),
  format: (v) => (v === null || v === undefined || v === "" ? null : String(v)),
});
const examples = {
  list: true,
  // repeated keys, and comma-separated values within one, are both read
  parse: (values) => {
    const out = [];
    for (const v of values.flatMap((x) => x.split(","))) {
      if (!v.trim()) continue;
      const p = parseChipAt(v);
      if (!p) return undefined;
      if (!out.some((o) => o.chip === p.chip && o.date === p.date)) out.push(p);
    }
    return out.slice(0, MAX_EXAMPLES);
  },
  format: (list) => (list && list.length ? list.map(formatChipAt) : null),
};

export const URL_KEYS = {
  aoi: single((v) => v.length > 0 && v.length <= 255 && !/[/\\]/.test(v) && v !== "." && v !== ".."),
  grid: single((v) => /^\d{1,2}[C-X][A-Z]{2}$/.test(v)),
  date: single(isDay),
  qdate: single(isDay),
  mode: single((v) => NAME.test(v)),
  chip: single((v) => CHIP.test(v)),
  k: {
    list: false,
    parse: (v) => (/^\d{1,3}$/.test(v) && +v >= 1 && +v <= 100 ? +v : undefined),
    format: (v) => (v ? String(v) : null),
  },
  layer: single((v) => NAME.test(v)),
  before: single(isDay),
  after: single(isDay),
  pos: examples,
  neg: examples,
  view: {
    list: false,
    parse: (v) => {
      const n = v.split(",").map(Number);
      const ok = n.length === 3 && n.every(Number.isFinite) && Math.abs(n[0]) <= 180 && Math.abs(n[1]) <= 90
        && n[2] >= 0 && n[2] <= 24;
      return ok ? n : undefined;
    },
    format: (v) => (v ? `${v[0].toFixed(5)},${v[1].toFixed(5)},${v[2].toFixed(2)}` : null),
  },
};

/** Another URL key (e.g. a new panel's setting): {list, parse(value or values), format(v) -> string(s)|null}. */
export function registerUrlKey(name, spec) {
  URL_KEYS[name] = spec;
}

export function defaultState() {
  return {
    aoi: null, grid: null, date: null, qdate: null, mode: "similarity", chip: null, k: 5,
    layer: "true-colour", before: null, after: null, pos: [], neg: [], view: null,
  };
}

/** The state the page shows; panels read and write it, then call commit(). */
export const state = defaultState();

/** {values, invalid}: the URL keys present in a query string that parse, and the names of those that don't. */
export function parseQuery(search) {
  const params = new URLSearchParams(search);
  const values = {};
  const invalid = [];
  for (const [key, spec] of Object.entries(URL_KEYS)) {
    if (!params.has(key)) continue;
    const parsed = spec.parse(spec.list ? params.getAll(key) : params.get(key));
    if (parsed === undefined) invalid.push(key);
    else values[key] = parsed;
  }
  return { values, invalid };
}

/** The query string ("?..." or "") of a state: keys in URL_KEYS order, empty values left out. */
export function toQuery(s) {
  const params = new URLSearchParams();
  for (const [key, spec] of Object.entries(URL_KEYS)) {
    const text = spec.format(s[key]);
    if (text === null || text === undefined) continue;
    for (const t of Array.isArray(text) ? text : [text]) params.append(key, t);
  }
  const q = params.toString();
  return q ? `?${q}` : "";
}

let restoring = 0;

/** Run fn (sync or async) without writing the URL: used while a view is restored from it. */
export async function whileRestoring(fn) {
  restoring += 1;
  try {
    return await fn();
  } finally {
    restoring -= 1;
  }
}

function write(query, how) {
  if (query === window.location.search) return;
  const url = `${window.location.pathname}${query}${window.location.hash}`;
  if (how === "replace") window.history.replaceState(null, "", url);
  else window.history.pushState(null, "", url);
}

/**
 * Write the state into the URL: "push" makes a history entry (a new view: mode, chip, dates...),
 * "replace" rewrites the current one (the view read from it, normalised). Nothing is written while
 * restoring or when the URL already says the same.
 */
export function commit(how = "push") {
  if (!restoring) write(toQuery(state), how);
}

/** The map moved: only the current entry's `view` follows (a move in the middle of a change of view
 * must not rewrite the entry it leaves). */
export function commitView() {
  if (restoring) return;
  const params = new URLSearchParams(window.location.search);
  const text = URL_KEYS.view.format(state.view);
  if (text) params.set("view", text);
  else params.delete("view");
  const query = params.toString();
  write(query ? `?${query}` : "", "replace");
}
