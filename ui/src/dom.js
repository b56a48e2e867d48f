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

/** A search hit as a clickable thumbnail with a caption (`data-testid` `testid`, data-chip-id, data-score). */
export function resultFigure(hit, caption, testid, onClick) {
  const item = document.createElement("figure");
  item.className = "result";
  item.setAttribute("data-testid", testid);
  item.dataset.chipId = hit.chip_id;
  item.dataset.score = hit.score;
  const img = document.createElement("img");
  img.src = hit.thumbnail_url.replace(/^\//, "");
  img.alt = `chip ${hit.chip_id} on ${hit.date}`;
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  item.append(img, cap);
  item.addEventListener("click", onClick);
  return item;
}
