// Small statistics for the change chart: OLS trend and per-year outliers (mean +- 2 sigma),
// as the reference UI computed them.

export const DAY_MS = 86400000;

export function toTime(date) {
  return Date.parse(`${date}T00:00:00Z`);
}

/** Ordinary least squares y = a + b t over points {t, v}; null with fewer than two points. */
export function olsTrend(points) {
  const n = points.length;
  if (n < 2) return null;
  const mt = points.reduce((s, p) => s + p.t, 0) / n;
  const mv = points.reduce((s, p) => s + p.v, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.t - mt) * (p.v - mv);
    den += (p.t - mt) ** 2;
  }
  if (den === 0) return null;
  const slope = num / den;
  return { slope, intercept: mv - slope * mt, at: (t) => mv + slope * (t - mt) };
}

/** Flags points outside their year's mean +- 2 standard deviations. */
export function outlierFlags(points) {
  const byYear = new Map();
  points.forEach((p, i) => {
    const y = new Date(p.t).getUTCFullYear();
    if (!byYear.has(y)) byYear.set(y, []);
    byYear.get(y).push(i);
  });
  const flags = new Array(points.length).fill(false);
  for (const idx of byYear.values()) {
    if (idx.length < 3) continue;
    const vals = idx.map((i) => points[i].v);
    const mean = vals.reduce((a, b) => a + b, 0) / vals.length;
    const sd = Math.sqrt(vals.reduce((a, b) => a + (b - mean) ** 2, 0) / vals.length);
    for (const i of idx) if (sd > 0 && Math.abs(points[i].v - mean) > 2 * sd) flags[i] = true;
  }
  return flags;
}
