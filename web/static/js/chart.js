// Charts as SVG drawn here, a few dozen lines instead of a chart library: the box has no internet to
// fetch one from and the dashboard ships no third-party code. Every chart has a title and a
// description for screen readers, and its numbers as a table under "Show the numbers".

import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const MARGIN = { top: 12, right: 12, bottom: 26, left: 44 };

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A round upper bound and tick step for ``max`` (0 → 1), so the axis reads 0, 5, 10, … */
export function niceScale(max, ticks = 4) {
  const top = Math.max(1, max);
  const raw = top / ticks;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((candidate) => candidate >= raw);
  return { max: step * Math.ceil(top / step), step };
}

function frame({ title, description, width, height, labels, yMax, yUnit }) {
  const titleId = `chart-${Math.random().toString(36).slice(2, 9)}`;
  const root = svg(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": `${titleId}-t ${titleId}-d` },
    svg("title", { id: `${titleId}-t` }, title),
    svg("desc", { id: `${titleId}-d` }, description),
  );
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - MARGIN.top - MARGIN.bottom;
  const { max, step } = niceScale(yMax);
  const y = (value) => MARGIN.top + plotH - (value / max) * plotH;
  for (let tick = 0; tick <= max + 1e-9; tick += step) {
    root.append(
      svg("line", { class: "grid", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(tick), y2: y(tick) }),
      svg("text", { x: MARGIN.left - 6, y: y(tick) + 4, "text-anchor": "end" }, `${Number(tick.toFixed(2))}${yUnit || ""}`),
    );
  }
  root.append(svg("line", { class: "axis", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(0), y2: y(0) }));
  const every = Math.max(1, Math.ceil(labels.length / 8));
  const slot = plotW / Math.max(1, labels.length);
  // Label every n-th slot counted back from the newest, so "now" always has its label.
  labels.forEach((label, index) => {
    if ((labels.length - 1 - index) % every !== 0) return;
    root.append(svg("text", { x: MARGIN.left + slot * (index + 0.5), y: height - 8, "text-anchor": "middle" }, label));
  });
  return { root, y, slot, plotH };
}

function numbers(title, labels, series) {
  return h(
    "details",
    {},
    h("summary", {}, "Show the numbers"),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        {},
        h("caption", { class: "visually-hidden" }, title),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Time"), series.map(([name]) => h("th", { scope: "col", class: "num" }, name)))),
        h(
          "tbody",
          {},
          labels.map((label, index) => h("tr", {}, h("td", {}, label), series.map(([, values]) => h("td", { class: "num" }, String(values[index]))))),
        ),
      ),
    ),
  );
}

export function barChart({ title, description, labels, values, width = 640, height = 220 }) {
  const { root, y, slot } = frame({ title, description, width, height, labels, yMax: Math.max(0, ...values) });
  const gap = Math.min(4, slot * 0.2);
  values.forEach((value, index) => {
    if (!value) return;
    const x = MARGIN.left + slot * index + gap / 2;
    root.append(
      svg("rect", { class: "bar", x, y: y(value), width: Math.max(1, slot - gap), height: y(0) - y(value) }, svg("title", {}, `${labels[index]}: ${value}`)),
    );
  });
  return h("figure", { class: "chart card" }, h("figcaption", {}, h("strong", {}, title)), root, numbers(title, labels, [[title, values]]));
}

export function lineChart({ title, description, labels, values, max, width = 640, height = 220 }) {
  const top = Math.max(max ?? 0, ...values);
  const { root, y, slot } = frame({ title, description, width, height, labels, yMax: top });
  const points = values.map((value, index) => [MARGIN.left + slot * (index + 0.5), y(value)]);
  if (points.length) {
    const path = points.map(([px, py], index) => `${index ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join(" ");
    const last = points[points.length - 1];
    root.append(
      svg("path", { class: "area", d: `${path} L${last[0].toFixed(1)},${y(0)} L${points[0][0].toFixed(1)},${y(0)} Z` }),
      svg("path", { class: "line", d: path }),
    );
  }
  if (max) {
    root.append(svg("line", { class: "axis", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(max), y2: y(max), "stroke-dasharray": "4 4" }));
  }
  return h("figure", { class: "chart card" }, h("figcaption", {}, h("strong", {}, title)), root, numbers(title, labels, [[title, values]]));
}
