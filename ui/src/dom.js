// Small DOM and date helpers shared by main.js and the panels.
import { toTime } from "./stats.js";

export const $ = (id) => document.getElementById(id);

export function fillSelect(select, values, selected, labels = null) {
  select.replaceChildren(...values.map((v, i) => {
    const o = document.createElement("option");
    o.value = v; o.textContent = labels ? labels[i] : v; o.selected = v === selected;
    return o;
  }));
}

/** The date of `dates` nearest to `date` (itself when present); null when `dates` is empty. */
export function nearestDate(dates, date) {
  if (!dates.length) return null;
  if (!date || dates.includes(date)) return date || null;
  const t = toTime(date);
  return dates.reduce((best, d) => (Math.abs(toTime(d) - t) < Math.abs(toTime(best) - t) ? d : best), dates[0]);
}
