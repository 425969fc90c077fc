// Reports: a count taken out of the box. One page, its modes as tabs (the mode is in the address, as
// #/reports/compare): Query (filters, group-by, totals, saved queries), Snapshot (a run frozen by name),
// Compare (two snapshots, or a snapshot and the run now), Audit (the log's chains and who decided
// what), Insights, Import, and the box's export jobs. Every report exports as CSV, XLSX or PDF through
// a background job whose progress the page follows.
//
// Nothing runs a report on its own when a mode opens: a report is asked for (Run, Compare), so opening
// the page reads lists only. An auditor sees every mode and changes nothing; a verifier has no reports.
//
// The Query, Compare and Audit panels take a ``source`` (where the reports live: this box's
// /api/reports, or HQ's copy of a store) so the HQ page draws the same panels over a store.

import { ApiError, download, enc, get, post, query, request, token } from "../api.js";
import { action, clear, describeError, fill, formDialog, h, stat, statusBadge, table, toast, when } from "../dom.js";

export const GROUPS = ["floor", "rack", "category", "subcategory", "condition", "verifier", "device", "product"];
// The columns each group brings (as the box's query module has them): a sort must name one of them.
const GROUP_COLUMNS = {
  floor: ["floor"],
  rack: ["floor", "rack"],
  category: ["category"],
  subcategory: ["category", "subcategory"],
  condition: ["condition"],
  verifier: ["verifier_id", "verifier"],
  device: ["writer_id", "device"],
  product: ["product_id", "sku", "name", "code"],
};
const MEASURES = ["qty", "damage", "lines", "expected", "variance"];
const FILTERS = ["floor", "rack", "category", "subcategory", "condition", "verifier", "device"];
const FLAGS = [
  ["with_variance", "With variance"],
  ["damaged", "Damaged"],
  ["unmatched", "Unmatched codes"],
];
export const LABELS = {
  floor: "Floor",
  rack: "Rack",
  category: "Category",
  subcategory: "Subcategory",
  condition: "Condition",
  verifier_id: "Verifier id",
  verifier: "Verifier",
  writer_id: "Device id",
  device: "Device",
  product: "Product",
  product_id: "Product id",
  sku: "SKU",
  name: "Name",
  code: "Unmatched code",
  qty: "Counted",
  damage: "Damaged",
  lines: "Lines",
  expected: "Expected",
  variance: "Variance",
  store_id: "Store",
};
// Columns a person reads; the ids beside them stay in the data (and the exports) but not on screen.
const HIDDEN = new Set(["verifier_id", "writer_id", "product_id"]);
// A filter's value is the id the box filters on; what the list shows is its name.
const FACET = {
  floor: ["floor", "floor"],
  rack: ["rack", "rack"],
  category: ["category", "category"],
  subcategory: ["subcategory", "subcategory"],
  condition: ["condition", "condition"],
  verifier: ["verifier_id", "verifier"],
  device: ["writer_id", "device"],
};
const PAGE = 50;
const COMPARE_PAGE = 100;
const CHANGES = [
  ["added", "Added"],
  ["removed", "Removed"],
  ["changed", "Changed"],
  ["same", "Same"],
];
const COMPARE_COLUMNS = [
  ["floor", "Floor", null],
  ["rack", "Rack", "rack"],
  ["sku", "SKU", "sku"],
  ["name", "Name", "name"],
  ["category", "Category", "category"],
  ["a_qty", "A", "a_qty"],
  ["b_qty", "B", "b_qty"],
  ["diff", "Difference", "diff"],
  ["change", "Change", "change"],
];
const CHANGE_BADGE = { added: "ok", removed: "bad", changed: "warn", same: "" };
const INSIGHTS = [
  ["trends", "KPIs across runs"],
  ["kpis", "KPIs of this run"],
  ["productivity", "Productivity"],
  ["damage", "Damage"],
  ["serials", "Serials"],
  ["heatmap", "Floor heatmap"],
  ["quality", "Data quality"],
];
const IMPORT_COLUMNS = {
  products: ["sku", "barcodes", "name", "category", "subcategory", "uom", "mrp", "expected_qty"],
  scope: ["sku", "rack", "expected_qty"],
};
const IMPORT_TARGETS = [
  ["products", "Product master"],
  ["scope", "A run's scope and expected quantities"],
];

const MODES = [
  { name: "query", label: "Query", show: () => true },
  { name: "snapshot", label: "Snapshot", show: () => true },
  { name: "compare", label: "Compare", show: () => true },
  { name: "audit", label: "Audit", show: () => true },
  { name: "insights", label: "Insights", show: () => true },
  { name: "import", label: "Import", show: (ctx) => ctx.can("reports.import") },
  { name: "exports", label: "Exports", show: () => true },
];

export const num = (value) => (value === null || value === undefined ? "" : Number(value).toLocaleString("en-US"));

/** The page's life: polls stop when the person leaves it. */
export function lifetime(ctx) {
  const timers = new Set();
  return {
    get alive() {
      return ctx.isCurrent();
    },
    later(fn, ms) {
      const id = setTimeout(() => {
        timers.delete(id);
        if (ctx.isCurrent()) fn();
      }, ms);
      timers.add(id);
    },
    end() {
      for (const id of timers) clearTimeout(id);
      timers.clear();
    },
  };
}

export async function render(ctx) {
  const main = clear(ctx.main);
  const life = lifetime(ctx);
  const modes = MODES.filter((mode) => mode.show(ctx));
  const wanted = ctx.params[0] || "query";
  const mode = MODES.find((m) => m.name === wanted);
  const tabs = h(
    "nav",
    { class: "tabs", "aria-label": "Report modes" },
    modes.map((m) =>
      h("a", { href: `#/reports/${m.name}`, "aria-current": m.name === wanted ? "page" : null, dataset: { mode: m.name } }, m.label),
    ),
  );
  const body = h("div", { class: "report-body", dataset: { mode: wanted } });
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Reports"), ctx.can("reports.write") ? null : h("span", { class: "badge info" }, "read only")),
    tabs,
    body,
  );
  if (!mode) {
    body.append(h("p", {}, "No such report mode."));
    return () => life.end();
  }
  if (!mode.show(ctx)) {
    body.append(h("p", { dataset: { denied: mode.name } }, `A ${ctx.me.role} does not import files.`));
    return () => life.end();
  }
  const source = storeSource();
  const runs = await get("/api/runs");
  const draw = {
    query: () => queryPanel(ctx, life, source, runs),
    snapshot: () => snapshotPanel(ctx, life, source, runs, ctx.params[1]),
    compare: () => comparePanel(ctx, life, source, runs),
    audit: () => auditPanel(ctx, life, source, runs),
    insights: () => insightsPanel(ctx, life, runs),
    import: () => importPanel(ctx, life, runs),
    exports: () => exportsPanel(ctx, life),
  }[mode.name];
  body.append(await draw());
  return () => life.end();
}

/** This box's reports. */
function storeSource() {
  return {
    base: "/api/reports",
    exports: true,
    saved: true,
    snapshots: (runId) => get(`/api/reports/snapshots${query({ run_id: runId })}`),
  };
}

// -- pieces shared by the modes ---------------------------------------------------------------------
function field(id, label, control, hint) {
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("p", { class: "muted small" }, hint) : null);
}

function sourceSelect(id, runs, snapshots, value, { runsLabel = "now" } = {}) {
  const select = h(
    "select",
    { id },
    runs.length ? h("optgroup", { label: "Runs" }, runs.map((run) => h("option", { value: `run:${run.run_id}` }, `${run.name} (${runsLabel}, ${String(run.status).toLowerCase().replace("_", " ")})`))) : null,
    snapshots.length
      ? h("optgroup", { label: "Snapshots" }, snapshots.map((s) => h("option", { value: `snap:${s.snapshot_id}` }, `${s.name} · ${when(s.taken_at)}`)))
      : null,
  );
  if (value) select.value = value;
  return select;
}

function sideOf(value) {
  const [kind, id] = String(value || "").split(/:(.*)/s);
  return kind === "snap" ? { snapshot_id: id } : { run_id: id };
}

function pager(offset, size, total, go) {
  if (total <= size && offset === 0) return h("p", { class: "muted small pager" }, `${num(total)} in all`);
  const last = Math.min(offset + size, total);
  return h(
    "div",
    { class: "actions pager" },
    h("button", { type: "button", class: "ghost small", disabled: offset === 0, dataset: { page: "previous" }, onclick: () => go(Math.max(0, offset - size)) }, "Previous"),
    h("span", { class: "small" }, `${num(total ? offset + 1 : 0)}–${num(last)} of ${num(total)}`),
    h("button", { type: "button", class: "ghost small", disabled: last >= total, dataset: { page: "next" }, onclick: () => go(offset + size) }, "Next"),
  );
}

function sortHeader(label, key, state, onSort, attrs = {}) {
  if (!key) return h("th", { scope: "col", ...attrs }, label);
  const active = state.sort === key;
  const arrow = active ? (state.descending ? " ▼" : " ▲") : "";
  return h(
    "th",
    { scope: "col", "aria-sort": active ? (state.descending ? "descending" : "ascending") : null, ...attrs },
    h("button", { type: "button", class: "sort", dataset: { sort: key }, onclick: () => onSort(key) }, label + arrow),
  );
}

/** Export buttons for one report: each starts a job on the box and follows it to its download. */
export function exportBar(ctx, life, what, { title = "Export" } = {}) {
  const jobs = h("ul", { class: "jobs" });
  const start = async (format, button) => {
    const body = typeof what === "function" ? what() : what;
    if (!body) return toast("Run the report first, then export it.", "bad");
    button.disabled = true;
    try {
      const job = await post("/api/reports/exports", { format, ...body });
      const line = h("li", { dataset: { job: job.job_id, format, status: job.status } });
      jobs.prepend(line);
      follow(life, job, line);
    } catch (error) {
      toast(describeError(error), "bad");
    } finally {
      button.disabled = false;
    }
  };
  const buttons = ["csv", "xlsx", "pdf"].map((format) => {
    const button = h("button", { type: "button", class: "ghost small", dataset: { export: format } }, format.toUpperCase());
    button.addEventListener("click", () => start(format, button));
    return button;
  });
  return h("div", { class: "export-bar" }, h("span", { class: "small strong" }, title), buttons, jobs);
}

function jobText(job) {
  const rows = job.rows_total ? `${num(job.rows_done)} of ${num(job.rows_total)} rows` : `${num(job.rows_done)} rows`;
  if (job.status === "done") return `${job.format.toUpperCase()} ready · ${rows}${job.bytes ? ` · ${Math.max(1, Math.round(job.bytes / 1024))} KB` : ""}`;
  if (job.status === "failed") return `${job.format.toUpperCase()} failed: ${job.error || "no reason given"}`;
  return `${job.format.toUpperCase()} ${job.status}… ${rows}`;
}

function downloadLink(job) {
  return h(
    "a",
    {
      href: `/api/exports/${enc(job.job_id)}/download`,
      class: "download",
      dataset: { download: job.job_id },
      onclick: (event) => {
        event.preventDefault();
        download(`/api/exports/${enc(job.job_id)}/download`, job.file || `export.${job.format}`).catch((error) => toast(describeError(error), "bad"));
      },
    },
    `Download ${job.file || job.format.toUpperCase()}`,
  );
}

function progressBar(job) {
  const bar = h("progress", { max: job.rows_total || 1, value: job.status === "done" ? job.rows_total || 1 : job.rows_done || 0 });
  bar.setAttribute("aria-label", "Export progress");
  return bar;
}

function follow(life, job, line) {
  line.dataset.status = job.status;
  fill(line, h("span", { class: "small" }, jobText(job)), job.status === "done" ? downloadLink(job) : job.status === "failed" ? null : progressBar(job));
  if (job.status === "done" || job.status === "failed") return;
  life.later(async () => {
    try {
      follow(life, await get(`/api/exports/${enc(job.job_id)}`), line);
    } catch (error) {
      fill(line, h("span", { class: "error-text small" }, describeError(error)));
    }
  }, 400);
}

// -- Query ------------------------------------------------------------------------------------------
export async function queryPanel(ctx, life, source, runs, { title = "Query" } = {}) {
  const snapshots = await source.snapshots();
  const saved = source.saved ? await get("/api/reports/queries") : [];
  const state = { group_by: [], sort: "", descending: false, offset: 0, facets: null, facetsFor: "", last: null };
  const firstRun = runs[0] ? `run:${runs[0].run_id}` : snapshots[0] ? `snap:${snapshots[0].snapshot_id}` : "";
  const sourcePick = sourceSelect("q-source", runs, snapshots, firstRun);
  const chips = h("div", { class: "chips", role: "group", "aria-label": "Group by" });
  const order = h("p", { class: "muted small", dataset: { order: "" } });
  const drawChips = () => {
    fill(
      chips,
      GROUPS.map((group) => {
        const at = state.group_by.indexOf(group);
        return h(
          "button",
          { type: "button", class: "chip", "aria-pressed": at >= 0 ? "true" : "false", dataset: { group } },
          at >= 0 ? h("span", { class: "chip-n" }, String(at + 1)) : null,
          LABELS[group],
        );
      }),
    );
    order.textContent = state.group_by.length ? `Grouped by ${state.group_by.map((g) => LABELS[g]).join(" › ")}` : "Not grouped: one line of totals.";
  };
  chips.addEventListener("click", (event) => {
    const chip = event.target.closest("button[data-group]");
    if (!chip) return;
    const group = chip.dataset.group;
    const at = state.group_by.indexOf(group);
    if (at >= 0) state.group_by.splice(at, 1);
    else state.group_by.push(group);
    drawChips();
  });
  drawChips();

  const filterSelects = {};
  const filterBox = h("div", { class: "filters" });
  for (const name of FILTERS) {
    const select = h("select", { id: `f-${name}`, multiple: true, size: 4, dataset: { filter: name } }, h("option", { disabled: true, value: "" }, "Run the query to list values"));
    filterSelects[name] = select;
    filterBox.append(field(`f-${name}`, LABELS[name], select));
  }
  const skuInput = h("input", { id: "f-sku", dataset: { filter: "sku" }, placeholder: "SKU, SKU…", autocomplete: "off" });
  filterBox.append(field("f-sku", "SKUs", skuInput, "Separated by commas or spaces"));
  const flags = {};
  const flagBox = h(
    "div",
    { class: "actions" },
    FLAGS.map(([name, label]) => {
      flags[name] = h("input", { type: "checkbox", id: `flag-${name}`, dataset: { flag: name } });
      return h("label", { class: "inline", for: `flag-${name}` }, flags[name], label);
    }),
  );
  const results = h("div", { class: "results", "aria-live": "polite" }, h("p", { class: "muted" }, "Choose a source, filters and groups, then run the query."));
  const runButton = h("button", { type: "button", id: "q-run" }, "Run query");

  const spec = (offset = state.offset) => {
    const filters = {};
    for (const [name, select] of Object.entries(filterSelects)) {
      const values = [...select.selectedOptions].map((o) => o.value).filter(Boolean);
      if (values.length) filters[name] = values;
    }
    const skus = skuInput.value.split(/[\s,;]+/).map((s) => s.trim()).filter(Boolean);
    if (skus.length) filters.sku = skus;
    return {
      ...sideOf(sourcePick.value),
      filters,
      with_variance: flags.with_variance.checked,
      damaged: flags.damaged.checked,
      unmatched: flags.unmatched.checked,
      group_by: [...state.group_by],
      sort: state.sort,
      descending: state.descending,
      limit: PAGE,
      offset,
    };
  };

  // The values a filter offers are those the source has: one query grouped by every filter's column.
  const loadFacets = async () => {
    if (state.facetsFor === sourcePick.value) return;
    const answer = await post(`${source.base}/query`, { ...sideOf(sourcePick.value), group_by: FILTERS, limit: 100000 });
    const facets = {};
    for (const name of FILTERS) facets[name] = new Map();
    for (const group of answer.groups) {
      for (const name of FILTERS) {
        const [valueKey, labelKey] = FACET[name];
        const value = group[valueKey];
        if (value !== null && value !== undefined && value !== "") facets[name].set(String(value), String(group[labelKey] ?? value));
      }
    }
    for (const name of FILTERS) {
      const chosen = new Set([...filterSelects[name].selectedOptions].map((o) => o.value));
      const entries = [...facets[name].entries()].sort((a, b) => a[1].localeCompare(b[1]));
      fill(
        filterSelects[name],
        entries.length ? entries.map(([value, label]) => h("option", { value, selected: chosen.has(value) }, label)) : h("option", { disabled: true, value: "" }, "None in this source"),
      );
    }
    state.facetsFor = sourcePick.value;
  };

  const run = async (offset = 0) => {
    if (!sourcePick.value) return fill(results, h("p", { class: "muted" }, "There is no run or snapshot to report on yet."));
    state.offset = offset;
    runButton.disabled = true;
    results.dataset.loading = "1";
    try {
      const asked = spec(offset);
      const [answer] = await Promise.all([post(`${source.base}/query`, asked), loadFacets()]);
      if (!life.alive) return;
      state.last = asked;
      fill(results, groupsTable(answer, state, (key) => sortBy(key)), pager(offset, PAGE, answer.total.groups, (next) => run(next)));
      results.dataset.loading = "0";
    } catch (error) {
      fill(results, h("p", { class: "error-text" }, describeError(error)));
      results.dataset.loading = "0";
    } finally {
      runButton.disabled = false;
    }
  };
  const sortBy = (key) => {
    if (state.sort === key) state.descending = !state.descending;
    else {
      state.sort = key;
      state.descending = MEASURES.includes(key);
    }
    run(0);
  };
  runButton.addEventListener("click", () => {
    // A sort by a column the new grouping no longer has is dropped (the box would refuse it).
    const columns = state.group_by.flatMap((g) => GROUP_COLUMNS[g]);
    if (state.sort && !MEASURES.includes(state.sort) && !columns.includes(state.sort)) state.sort = "";
    run(0);
  });
  sourcePick.addEventListener("change", () => {
    state.facetsFor = "";
    for (const select of Object.values(filterSelects)) for (const option of select.options) option.selected = false;
  });

  // Saved queries: anyone who reads reports loads them; a supervisor or admin keeps and removes them.
  const savedSelect = h(
    "select",
    { id: "q-saved" },
    h("option", { value: "" }, saved.length ? "Choose a saved query…" : "No saved query yet"),
    saved.map((item) => h("option", { value: item.query_id }, item.name)),
  );
  savedSelect.addEventListener("change", async () => {
    const item = saved.find((s) => s.query_id === savedSelect.value);
    if (!item) return;
    const s = item.spec;
    const wanted = s.snapshot_id ? `snap:${s.snapshot_id}` : s.run_id ? `run:${s.run_id}` : "";
    if (wanted && [...sourcePick.options].some((o) => o.value === wanted)) sourcePick.value = wanted;
    state.group_by = [...(s.group_by || [])];
    state.sort = s.sort || "";
    state.descending = !!s.descending;
    for (const [name, flag] of Object.entries(flags)) flag.checked = !!s[name];
    skuInput.value = (s.filters?.sku || []).join(", ");
    drawChips();
    state.facetsFor = "";
    await loadFacets().catch(() => {});
    for (const [name, select] of Object.entries(filterSelects)) {
      const values = new Set(s.filters?.[name] || []);
      for (const value of values) if (![...select.options].some((o) => o.value === value)) select.append(h("option", { value }, value));
      for (const option of select.options) option.selected = values.has(option.value);
    }
    run(0);
  });
  const saveButton = source.saved
    ? action(ctx, "reports.write", "Save query…", async () => {
        const made = await formDialog({
          title: "Save this query",
          permission: "reports.write",
          submitLabel: "Save",
          intro: "Everyone who reads reports at this store, and HQ, can load it by its name. Saving a name again replaces it.",
          fields: [{ name: "name", label: "Name", required: true }],
          submit: (values) => post("/api/reports/queries", { name: values.name, spec: spec(0) }),
        });
        if (made) {
          toast(`Query "${made.name}" saved.`);
          const old = saved.findIndex((s) => s.query_id === made.query_id);
          if (old >= 0) saved.splice(old, 1);
          saved.push(made);
          saved.sort((a, b) => a.name.localeCompare(b.name));
          fill(savedSelect, h("option", { value: "" }, "Choose a saved query…"), saved.map((item) => h("option", { value: item.query_id, selected: item.query_id === made.query_id }, item.name)));
        }
      }, { class: "ghost", id: "q-save" })
    : null;
  const forget = source.saved
    ? action(ctx, "reports.write", "Delete saved query", async () => {
        const item = saved.find((s) => s.query_id === savedSelect.value);
        if (!item) return toast("Choose the saved query to delete first.", "bad");
        try {
          await request("DELETE", `/api/reports/queries/${enc(item.query_id)}`);
          saved.splice(saved.indexOf(item), 1);
          savedSelect.querySelector(`option[value="${CSS.escape(item.query_id)}"]`)?.remove();
          savedSelect.value = "";
          toast(`Query "${item.name}" deleted.`);
        } catch (error) {
          toast(describeError(error), "bad");
        }
      }, { class: "ghost small", id: "q-forget" })
    : null;

  const showForget = () => {
    if (forget) forget.hidden = !savedSelect.value;
  };
  savedSelect.addEventListener("change", showForget);
  showForget();
  if (forget) forget.addEventListener("click", () => setTimeout(showForget));
  return h(
    "section",
    { class: "report query", "aria-label": title },
    h(
      "div",
      { class: "card report-form" },
      h("div", { class: "field-row" }, field("q-source", "Source", sourcePick), source.saved ? field("q-saved", "Saved queries", savedSelect) : null, forget),
      h("h3", {}, "Group by"),
      chips,
      order,
      h("details", { class: "filter-box", open: true }, h("summary", {}, "Filters"), filterBox, flagBox),
      h("div", { class: "actions" }, runButton, saveButton),
    ),
    results,
    source.exports ? exportBar(ctx, life, () => (state.last ? { query: { ...state.last, offset: 0, limit: 100000 } } : null)) : null,
  );
}

/** A query's groups with a totals row; its headers sort. */
export function groupsTable(answer, state, onSort, { extra = [] } = {}) {
  const columns = [...extra, ...answer.columns.filter((c) => !HIDDEN.has(c))];
  const measures = answer.measures;
  const whole = !columns.length; // not grouped: one line, named as such
  const head = h("tr", {}, whole ? h("th", { scope: "col" }, "") : null, columns.map((c) => sortHeader(LABELS[c] || c, extra.includes(c) ? null : c, state, onSort)), measures.map((m) => sortHeader(LABELS[m], m, state, onSort, { class: "num" })));
  const rows = answer.groups.map((group) =>
    h(
      "tr",
      { dataset: { group: columns.map((c) => group[c] ?? "").join(" | "), ...(group.sku ? { sku: group.sku } : {}) }, class: group.variance ? "variance" : "" },
      whole ? h("td", {}, "Everything chosen") : null,
      columns.map((c) => h("td", {}, group[c] ?? h("span", { class: "muted" }, c === "code" ? "" : "(none)"))),
      measures.map((m) => h("td", { class: `num${m === "variance" && group[m] ? (group[m] > 0 ? " over" : " under") : ""}`, dataset: { measure: m } }, num(group[m]))),
    ),
  );
  const total = answer.total;
  const foot = h(
    "tr",
    { class: "totals" },
    h("th", { scope: "row", colspan: Math.max(1, columns.length) }, `Total · ${num(total.groups)} ${total.groups === 1 ? "group" : "groups"}`),
    measures.map((m) => h("td", { class: "num", dataset: { measure: m } }, m in total ? num(total[m]) : "")),
  );
  const empty = !rows.length ? h("tr", {}, h("td", { colspan: Math.max(1, columns.length) + measures.length, class: "muted" }, "Nothing matches.")) : null;
  return h("div", { class: "table-wrap" }, h("table", { class: "report-table", id: "q-results" }, h("thead", {}, head), h("tbody", {}, rows, empty), h("tfoot", {}, foot)));
}

// -- Snapshot ---------------------------------------------------------------------------------------
async function snapshotPanel(ctx, life, source, runs, openId) {
  const list = h("div", { id: "snapshot-list" });
  const detail = h("div", { id: "snapshot-detail" });
  let form = null;
  if (ctx.can("reports.write")) {
    const runPick = h("select", { id: "s-run" }, runs.map((run) => h("option", { value: run.run_id }, `${run.name} (${String(run.status).toLowerCase().replace("_", " ")})`)));
    const name = h("input", { id: "s-name", autocomplete: "off", required: true, maxlength: 120 });
    const note = h("input", { id: "s-note", autocomplete: "off", maxlength: 1000 });
    const take = action(ctx, "reports.write", "Take snapshot", async () => {
      if (!name.value.trim()) {
        name.focus();
        return toast("Name the snapshot first.", "bad");
      }
      take.disabled = true;
      try {
        const made = await post("/api/reports/snapshots", { run_id: runPick.value, name: name.value, note: note.value });
        toast(`Snapshot "${made.name}" taken: ${num(made.row_count)} rows.`);
        name.value = "";
        note.value = "";
        await draw();
        open(made.snapshot_id);
      } catch (error) {
        toast(describeError(error), "bad");
      } finally {
        take.disabled = false;
      }
    }, { id: "s-take" });
    form = h(
      "div",
      { class: "card report-form" },
      h("h2", {}, "Take a snapshot"),
      h("p", { class: "muted small" }, "Freezes the run's approved counts as they are now, with who took it and which sessions were in. A snapshot never changes."),
      h("div", { class: "field-row" }, field("s-run", "Run", runPick), field("s-name", "Name", name), field("s-note", "Note", note), h("div", {}, take)),
    );
  }
  const draw = async () => {
    const snapshots = await source.snapshots();
    if (!life.alive) return;
    fill(
      list,
      table(
        ["Name", "Run", "Taken by", "When", "Run state", "Summary", "Complete", ""],
        snapshots.map((s) =>
          h(
            "tr",
            { dataset: { snapshot: s.snapshot_id } },
            h("td", {}, h("strong", {}, s.name), s.note ? h("div", { class: "muted small" }, s.note) : null),
            h("td", {}, runs.find((r) => r.run_id === s.run_id)?.name || s.run_id),
            h("td", {}, s.by_name || s.by_user),
            h("td", { class: "nowrap" }, when(s.taken_at)),
            h("td", {}, statusBadge(s.run_status)),
            h("td", { class: "small" }, summaryText(s.summary)),
            h("td", {}, s.complete ? h("span", { class: "badge ok" }, "complete") : h("span", { class: "badge warn" }, `${num(s.rows_held)} of ${num(s.row_count)} rows`)),
            h("td", {}, h("button", { type: "button", class: "ghost small", dataset: { open: s.snapshot_id }, onclick: () => open(s.snapshot_id) }, "Open")),
          ),
        ),
        { caption: "Snapshots", empty: "No snapshot yet." },
      ),
    );
  };
  const open = async (snapshotId) => {
    try {
      const snap = await get(`${source.base}/snapshots/${enc(snapshotId)}`);
      if (!life.alive) return;
      history.replaceState(null, "", `#/reports/snapshot/${enc(snapshotId)}`);
      fill(detail, snapshotDetail(ctx, life, source, snap));
      detail.scrollIntoView({ block: "start" });
    } catch (error) {
      fill(detail, h("p", { class: "error-text" }, describeError(error)));
    }
  };
  await draw();
  if (openId) await open(decodeURIComponent(openId));
  return h("section", { class: "report snapshots", "aria-label": "Snapshots" }, form, h("h2", {}, "Snapshots"), list, detail);
}

function summaryText(summary) {
  if (!summary) return "";
  return `${num(summary.qty)} counted · ${num(summary.products_counted)} products · ${num(summary.racks)} racks · variance ${num(summary.variance)}${summary.unmatched_codes ? ` · ${num(summary.unmatched_codes)} unmatched` : ""}`;
}

function snapshotDetail(ctx, life, source, snap) {
  const s = snap.summary || {};
  const rows = h("div", { "aria-live": "polite" });
  const state = { sort: "", descending: false };
  const load = async (offset = 0) => {
    try {
      const answer = await post(`${source.base}/query`, { snapshot_id: snap.snapshot_id, group_by: ["rack", "product"], sort: state.sort, descending: state.descending, limit: PAGE, offset });
      if (!life.alive) return;
      fill(rows, groupsTable(answer, state, (key) => {
        state.descending = state.sort === key ? !state.descending : ["qty", "damage", "lines"].includes(key);
        state.sort = key;
        load(0);
      }), pager(offset, PAGE, answer.total.groups, load));
    } catch (error) {
      fill(rows, h("p", { class: "error-text" }, describeError(error)));
    }
  };
  load();
  const csv = h(
    "a",
    {
      href: `${source.base}/snapshots/${enc(snap.snapshot_id)}/export.csv`,
      class: "button ghost small",
      dataset: { download: "csv" },
      onclick: (event) => {
        event.preventDefault();
        download(`${source.base}/snapshots/${enc(snap.snapshot_id)}/export.csv`, `snapshot-${snap.snapshot_id}.csv`).catch((error) => toast(describeError(error), "bad"));
      },
    },
    "CSV (streamed, every row)",
  );
  return h(
    "div",
    { class: "card snapshot-detail", dataset: { snapshot: snap.snapshot_id } },
    h("h2", {}, `Snapshot "${snap.name}"`),
    h("p", { class: "muted" }, `Taken ${when(snap.taken_at)} by ${snap.by_name || snap.by_user}, the run ${String(snap.run_status).toLowerCase().replace("_", " ")}, from ${num((snap.sessions || []).length)} approved sessions.`, snap.note ? ` Note: ${snap.note}` : ""),
    h(
      "div",
      { class: "cards" },
      stat(num(s.qty), "counted"),
      stat(num(s.expected), "expected"),
      stat(num(s.variance), "variance"),
      stat(num(s.products_counted), "products counted"),
      stat(num(s.products_with_variance), "products with variance"),
      stat(num(s.damage), "damaged"),
      stat(num(s.unmatched_codes), "unmatched codes"),
      stat(num(s.racks), "racks"),
    ),
    source.exports ? h("div", { class: "actions export-line" }, csv, exportBar(ctx, life, { snapshot_id: snap.snapshot_id }, { title: "As a file" })) : null,
    h("h3", {}, "Rows by rack and product"),
    rows,
  );
}

// -- Compare ----------------------------------------------------------------------------------------
export async function comparePanel(ctx, life, source, runs) {
  const snapshots = await source.snapshots();
  const newest = snapshots[0] ? `snap:${snapshots[0].snapshot_id}` : "";
  const older = snapshots[1] ? `snap:${snapshots[1].snapshot_id}` : newest;
  const runNow = runs[0] ? `run:${runs[0].run_id}` : "";
  const aPick = sourceSelect("c-a", runs, snapshots, snapshots.length >= 2 ? older : newest || runNow);
  const bPick = sourceSelect("c-b", runs, snapshots, snapshots.length >= 2 ? newest : runNow);
  const state = { changes: new Set(["added", "removed", "changed"]), sort: "abs_diff", descending: true, offset: 0, racks: new Set(), categories: new Set(), last: null };
  const toggles = h("div", { class: "actions change-toggles", role: "group", "aria-label": "Show" });
  const rackPick = h("select", { id: "c-rack", multiple: true, size: 4 });
  const categoryPick = h("select", { id: "c-category", multiple: true, size: 4 });
  const results = h("div", { class: "results", "aria-live": "polite" }, h("p", { class: "muted" }, snapshots.length ? "Choose A and B, then compare." : "Take a snapshot first: compare needs one, or two runs."));
  const go = h("button", { type: "button", id: "c-run" }, "Compare");
  const drawToggles = (counts = null) => {
    fill(
      toggles,
      CHANGES.map(([name, label]) => {
        const box = h("input", { type: "checkbox", id: `c-show-${name}`, dataset: { change: name } });
        box.checked = state.changes.has(name);
        box.addEventListener("change", () => {
          if (box.checked) state.changes.add(name);
          else state.changes.delete(name);
          if (!state.changes.size) {
            state.changes.add(name);
            box.checked = true;
            return;
          }
          if (state.last) run(0);
        });
        return h("label", { class: `inline toggle ${CHANGE_BADGE[name]}`, for: `c-show-${name}` }, box, label, counts ? h("span", { class: "count", dataset: { count: name } }, num(counts[name])) : null);
      }),
    );
  };
  drawToggles();
  const refillOptions = (select, seen) => {
    const chosen = new Set([...select.selectedOptions].map((o) => o.value));
    fill(select, [...seen].sort().map((value) => h("option", { value, selected: chosen.has(value) }, value)));
  };
  const spec = (offset) => ({
    a: sideOf(aPick.value),
    b: sideOf(bPick.value),
    changes: CHANGES.map(([name]) => name).filter((name) => state.changes.has(name)),
    rack: [...rackPick.selectedOptions].map((o) => o.value),
    category: [...categoryPick.selectedOptions].map((o) => o.value),
    sort: state.sort,
    descending: state.descending,
    limit: COMPARE_PAGE,
    offset,
  });
  const run = async (offset = 0) => {
    if (!aPick.value || !bPick.value) return;
    go.disabled = true;
    results.dataset.loading = "1";
    try {
      const asked = spec(offset);
      const answer = await post(`${source.base}/compare`, asked);
      if (!life.alive) return;
      state.last = asked;
      for (const row of answer.rows) {
        if (row.rack) state.racks.add(row.rack);
        if (row.category) state.categories.add(row.category);
      }
      refillOptions(rackPick, state.racks);
      refillOptions(categoryPick, state.categories);
      drawToggles(answer.counts);
      fill(results, compareTable(answer, state, sortBy), pager(offset, COMPARE_PAGE, answer.matching, run));
    } catch (error) {
      fill(results, h("p", { class: "error-text" }, describeError(error)));
    } finally {
      results.dataset.loading = "0";
      go.disabled = false;
    }
  };
  const sortBy = (key) => {
    if (state.sort === key) state.descending = !state.descending;
    else {
      state.sort = key;
      state.descending = ["a_qty", "b_qty", "diff", "abs_diff"].includes(key);
    }
    run(0);
  };
  go.addEventListener("click", () => run(0));
  // Other sides start the lists afresh; a rack or category chosen asks the box again at once.
  for (const pick of [aPick, bPick]) {
    pick.addEventListener("change", () => {
      state.racks.clear();
      state.categories.clear();
      fill(rackPick);
      fill(categoryPick);
    });
  }
  for (const pick of [rackPick, categoryPick]) pick.addEventListener("change", () => state.last && run(0));
  const filterBox = h("details", { class: "filter-box" }, h("summary", {}, "Rack and category"), h("div", { class: "filters" }, field("c-rack", "Racks", rackPick), field("c-category", "Categories", categoryPick)), h("p", { class: "muted small" }, "Lists the racks and categories the comparisons so far have shown; none chosen shows them all."));
  return h(
    "section",
    { class: "report compare", "aria-label": "Compare" },
    h("div", { class: "card report-form" }, h("div", { class: "field-row" }, field("c-a", "A (before)", aPick), field("c-b", "B (after)", bPick), h("div", {}, go)), filterBox),
    toggles,
    results,
    source.exports ? exportBar(ctx, life, () => (state.last ? { compare: { ...state.last, offset: 0, limit: 100000 } } : null)) : null,
  );
}

function compareTable(answer, state, onSort) {
  const head = h("tr", {}, COMPARE_COLUMNS.map(([key, label, sort]) => sortHeader(label, sort, state, onSort, ["a_qty", "b_qty", "diff"].includes(key) ? { class: "num" } : {})));
  const rows = answer.rows.map((row) =>
    h(
      "tr",
      { dataset: { change: row.change, sku: row.sku || row.code || "", rack: row.rack || "" } },
      h("td", {}, row.floor || ""),
      h("td", {}, row.rack || ""),
      h("td", {}, row.sku || h("span", { class: "muted" }, row.code || "")),
      h("td", {}, row.name || ""),
      h("td", {}, row.category || ""),
      h("td", { class: "num", dataset: { col: "a" } }, num(row.a_qty)),
      h("td", { class: "num", dataset: { col: "b" } }, num(row.b_qty)),
      h("td", { class: `num diff ${row.diff > 0 ? "over" : row.diff < 0 ? "under" : ""}`, dataset: { col: "diff" } }, row.diff > 0 ? `+${num(row.diff)}` : num(row.diff)),
      h("td", {}, h("span", { class: `badge ${CHANGE_BADGE[row.change]}` }, row.change)),
    ),
  );
  const empty = !rows.length ? h("tr", {}, h("td", { colspan: COMPARE_COLUMNS.length, class: "muted" }, "No difference of the kinds chosen.")) : null;
  return h(
    "div",
    {},
    h("p", { class: "compare-sides" }, h("strong", {}, "A: "), `${answer.a.label} (${num(answer.a.qty)} counted)`, " · ", h("strong", {}, "B: "), `${answer.b.label} (${num(answer.b.qty)} counted)`),
    h("div", { class: "table-wrap" }, h("table", { class: "report-table", id: "c-results" }, h("thead", {}, head), h("tbody", {}, rows, empty))),
  );
}

// -- Audit ------------------------------------------------------------------------------------------
export async function auditPanel(ctx, life, source, runs) {
  const scope = h("select", { id: "a-scope" }, h("option", { value: "" }, "The whole store"), runs.map((run) => h("option", { value: run.run_id }, run.name)));
  const out = h("div", { "aria-live": "polite" });
  const load = async () => {
    out.dataset.loading = "1";
    try {
      const report = await get(`${source.base}/audit${query({ run_id: scope.value })}`);
      if (!life.alive) return;
      fill(out, auditReport(report));
    } catch (error) {
      fill(out, h("p", { class: "error-text" }, describeError(error)));
    } finally {
      out.dataset.loading = "0";
    }
  };
  scope.addEventListener("change", load);
  await load();
  return h(
    "section",
    { class: "report audit", "aria-label": "Audit" },
    h("div", { class: "toolbar" }, field("a-scope", "Scope", scope), source.exports ? exportBar(ctx, life, () => ({ audit: { run_id: scope.value || null } })) : null),
    out,
  );
}

function entryRow(entry) {
  return h(
    "tr",
    { dataset: { type: entry.type } },
    h("td", { class: "nowrap" }, when(entry.at)),
    h("td", {}, entry.what),
    h("td", { dataset: { by: entry.by || "" } }, entry.by_name || h("span", { class: "muted" }, "(the box)")),
    h("td", { class: "small" }, entry.subject),
    h("td", { class: "small" }, entry.detail),
    h("td", { class: "small" }, entry.recorded_by),
  );
}

function auditReport(report) {
  const bad = report.chains.filter((c) => !c.ok);
  const verdict = bad.length
    ? h("p", { class: "card warn-card", dataset: { chains: "problems" } }, `${bad.length} of ${report.chains.length} chains have problems: look at the rows marked below.`)
    : h("p", { class: "card ok-card", dataset: { chains: "ok" } }, `All ${report.chains.length} writers' chains are whole and signed.`);
  const chains = table(
    ["Writer", "Kind", "Status", "Events", "Head", "Signed to", "Verdict"],
    report.chains.map((c) =>
      h(
        "tr",
        { class: c.ok ? "" : "out", dataset: { chain: c.writer_id, ok: c.ok ? "1" : "0" } },
        h("td", {}, c.name || c.writer_id),
        h("td", {}, c.kind),
        h("td", {}, c.status),
        h("td", { class: "num" }, num(c.events)),
        h("td", { class: "num" }, num(c.head_seq)),
        h("td", { class: "num" }, num(c.signed_seq)),
        h("td", {}, c.ok ? h("span", { class: "badge ok" }, "ok") : h("span", {}, h("span", { class: "badge bad" }, "problems"), h("ul", { class: "small problems" }, c.problems.map((p) => h("li", {}, p))))),
      ),
    ),
    { caption: "Chains", empty: "No writer yet." },
  );
  const headers = ["When", "What", "By", "About", "Detail", "Recorded by"];
  const decisions = table(headers, report.decisions.map(entryRow), { caption: "Decisions", empty: "No decision yet." });
  decisions.id = "audit-decisions";
  const admin = table(headers, report.administration.map(entryRow), { caption: "Administration", empty: "No administrative action." });
  admin.id = "audit-administration";
  return [verdict, h("h2", {}, "Chains"), chains, h("h2", {}, `Decisions (${num(report.decisions.length)})`), decisions, h("h2", {}, `Administration (${num(report.administration.length)})`), admin];
}

// -- Insights ---------------------------------------------------------------------------------------
async function probe(path) {
  try {
    await get(path);
    return true;
  } catch (error) {
    // The route itself missing answers a bare 404; a run or a kind the box does not know is its own code.
    return !(error instanceof ApiError && error.status === 404 && (error.code === "NOT_FOUND" || error.code === "HTTP_404"));
  }
}

function notAvailable(what) {
  return h("div", { class: "card", dataset: { unavailable: what } }, h("h2", {}, `${what} is not available on this box yet`), h("p", { class: "muted" }, "This box's software does not offer it; it arrives with an update of the box."));
}

async function insightsPanel(ctx, life, runs) {
  const runId = runs[0]?.run_id || "";
  if (!(await probe(`/api/reports/insights/kpis${query({ run_id: runId })}`))) return notAvailable("Insights");
  const kindPick = h("select", { id: "i-kind" }, INSIGHTS.map(([value, label]) => h("option", { value }, label)));
  const runPick = h("select", { id: "i-run" }, runs.map((run) => h("option", { value: run.run_id }, run.name)));
  const out = h("div", { "aria-live": "polite" });
  const load = async () => {
    out.dataset.loading = "1";
    try {
      const kind = kindPick.value;
      const answer = kind === "trends" ? await get("/api/reports/trends") : await get(`/api/reports/insights/${enc(kind)}${query({ run_id: runPick.value })}`);
      if (!life.alive) return;
      fill(out, kind === "heatmap" ? heatmap(answer) : insightView(kind, answer));
    } catch (error) {
      fill(out, h("p", { class: "error-text" }, describeError(error)));
    } finally {
      out.dataset.loading = "0";
    }
  };
  kindPick.addEventListener("change", load);
  runPick.addEventListener("change", load);
  const showRun = () => {
    runPick.closest(".field").hidden = kindPick.value === "trends";
  };
  kindPick.addEventListener("change", showRun);
  await load();
  const section = h("section", { class: "report insights", "aria-label": "Insights" }, h("div", { class: "toolbar" }, field("i-kind", "Insight", kindPick), field("i-run", "Run", runPick)), out);
  showRun();
  return section;
}

function cellText(key, value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") {
    if (/(^|_)ms(_|$)/.test(key)) return /(first|last|seen|finished|claim|started|ended|created|taken|updated)/.test(key) ? when(value) : minutes(value);
    if (/_at$/.test(key)) return when(value);
    if (/(rate|share|within|accuracy)/.test(key) && value <= 1) return `${(value * 100).toFixed(1)}%`;
    return Number.isInteger(value) ? num(value) : value.toFixed(1);
  }
  if (Array.isArray(value)) return value.length && typeof value[0] !== "object" ? value.join(", ") : `${value.length}`;
  if (typeof value === "object") return Object.entries(value).filter(([, v]) => typeof v !== "object").map(([k, v]) => `${k}: ${cellText(k, v)}`).join(" · ");
  return String(value);
}

function minutes(ms) {
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const m = ms / 60000;
  return m < 90 ? `${m.toFixed(1)} min` : `${(m / 60).toFixed(1)} h`;
}

const pretty = (key) => LABELS[key] || key.replace(/(^|_)ms(_|$)/, "$2").replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());

/** Scalars as figures, lists of records as tables; a serial seen in two places is marked. */
function insightView(kind, answer) {
  const figures = [];
  const tables = [];
  for (const [key, value] of Object.entries(answer)) {
    if (key === "run_id") continue;
    if (Array.isArray(value) && value.length && typeof value[0] === "object") {
      const keys = Object.keys(value[0]).filter((k) => !HIDDEN.has(k) && !/_id$/.test(k) && !(value[0][k] && typeof value[0][k] === "object" && !Array.isArray(value[0][k])) && !(Array.isArray(value[0][k]) && typeof value[0][k][0] === "object"));
      tables.push(
        h("h3", {}, pretty(key)),
        table(
          keys.map(pretty),
          value.map((row) => h("tr", { class: row.duplicate ? "out" : "", dataset: { insight: kind, ...(row.duplicate ? { duplicate: "1" } : {}) } }, keys.map((k) => h("td", { class: typeof row[k] === "number" ? "num" : "" }, k === "status" && row[k] ? statusBadge(row[k]) : cellText(k, row[k]))))),
          { caption: pretty(key) },
        ),
      );
    } else if (Array.isArray(value)) {
      figures.push(stat(value.length ? value.slice(0, 6).join(", ") + (value.length > 6 ? "…" : "") : "none", pretty(key)));
    } else if (value && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) if (typeof v !== "object") figures.push(stat(cellText(k, v), `${pretty(key)}: ${pretty(k)}`));
    } else {
      figures.push(stat(cellText(key, value), pretty(key)));
    }
  }
  return [figures.length ? h("div", { class: "cards" }, figures) : null, ...tables, !figures.length && !tables.length ? h("p", { class: "muted" }, "Nothing to show for this run yet.") : null];
}

function heatmap(answer) {
  const by = { value: "variance" };
  const grid = h("div", {});
  const picker = h(
    "div",
    { class: "actions", role: "group", "aria-label": "Colour by" },
    [
      ["variance", "Variance rate"],
      ["time", "Time per rack"],
    ].map(([value, label]) => {
      const box = h("input", { type: "radio", name: "heat-by", id: `heat-${value}`, value });
      box.checked = value === by.value;
      box.addEventListener("change", () => {
        by.value = value;
        draw();
      });
      return h("label", { class: "inline", for: `heat-${value}` }, box, label);
    }),
  );
  const racks = answer.racks || [];
  const longest = Math.max(1, ...racks.map((r) => r.duration_ms || 0));
  const draw = () => {
    const floors = new Map();
    for (const rack of racks) {
      if (!floors.has(rack.floor)) floors.set(rack.floor, []);
      floors.get(rack.floor).push(rack);
    }
    const names = new Map((answer.floors || []).map((f) => [f.floor, f.name || f.floor]));
    fill(
      grid,
      [...floors.entries()].map(([floor, items]) =>
        h(
          "div",
          { class: "heat-floor" },
          h("h3", {}, names.get(floor) || floor || "No floor"),
          h(
            "div",
            { class: "heatmap", role: "list" },
            items.map((rack) => {
              const share = by.value === "variance" ? rack.variance_rate : rack.duration_ms ? rack.duration_ms / longest : null;
              const level = share === null || share === undefined ? "none" : String(Math.min(5, Math.floor(share * 5.999)));
              const figure = by.value === "variance" ? (rack.variance_rate === null || rack.variance_rate === undefined ? "–" : `${Math.round(rack.variance_rate * 100)}%`) : rack.duration_ms ? minutes(rack.duration_ms) : "–";
              return h(
                "div",
                { class: `heat heat-${level}`, role: "listitem", dataset: { rack: rack.rack, level }, title: `${rack.rack}: ${rack.products_with_variance ?? 0} of ${rack.products ?? 0} products with variance; ${rack.duration_ms ? minutes(rack.duration_ms) : "not finished"}` },
                h("span", { class: "code" }, rack.rack),
                h("span", { class: "small" }, figure),
              );
            }),
          ),
        ),
      ),
    );
  };
  draw();
  const legend = h("ul", { class: "legend" }, ["0", "1", "2", "3", "4", "5"].map((n) => h("li", {}, h("span", { class: `swatch heat-${n}` }), n === "0" ? "low" : n === "5" ? "high" : "")), h("li", {}, h("span", { class: "swatch heat-none" }), "no data"));
  const floorTable = answer.floors?.length ? insightView("heatmap", { floors: answer.floors }) : [];
  return [picker, legend, grid, ...floorTable];
}

// -- Import -----------------------------------------------------------------------------------------
async function upload(path, bytes) {
  let answer;
  try {
    answer = await fetch(path, { method: "POST", headers: { Accept: "application/json", "Content-Type": "application/octet-stream", Authorization: `Bearer ${token()}` }, body: bytes, cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, { code: "BOX_UNREACHABLE", message: `the box does not answer (${error.message})` });
  }
  let body = null;
  try {
    body = await answer.json();
  } catch {
    body = null;
  }
  if (!answer.ok) throw new ApiError(answer.status, body);
  return body;
}

async function importPanel(ctx, life, runs) {
  if (!(await probe("/api/imports/mappings"))) return notAvailable("Import");
  const target = h("select", { id: "m-target" }, IMPORT_TARGETS.map(([value, label]) => h("option", { value }, label)));
  const runPick = h("select", { id: "m-run" }, runs.map((run) => h("option", { value: run.run_id }, run.name)));
  const runField = field("m-run", "Run", runPick);
  const sourceName = h("input", { id: "m-source", autocomplete: "off", placeholder: "ERP weekly", maxlength: 100 });
  const file = h("input", { id: "m-file", type: "file", accept: ".csv,.xlsx,text/csv,application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" });
  const previewButton = h("button", { type: "button", id: "m-preview" }, "Preview");
  const out = h("div", { "aria-live": "polite", id: "import-out" });
  const state = { bytes: null, name: "", mapping: null, answer: null };
  const showRun = () => {
    runField.hidden = target.value !== "scope";
  };
  showRun();
  const params = (withMapping) => query({
    target: target.value,
    source: sourceName.value.trim(),
    filename: state.name,
    run_id: target.value === "scope" ? runPick.value : "",
    mapping: withMapping && state.mapping ? JSON.stringify(state.mapping) : "",
  });
  let asked = 0; // a later preview (the mapping changed again) wins over an earlier one answering late
  const preview = async (edited) => {
    const mine = ++asked;
    const withMapping = edited || !!state.mapping;
    if (!file.files.length) return toast("Choose a file first.", "bad");
    previewButton.disabled = true;
    out.dataset.loading = "1";
    try {
      if (!edited) {
        state.bytes = await file.files[0].arrayBuffer();
        state.name = file.files[0].name;
      }
      const answer = await upload(`/api/imports/preview${params(withMapping)}`, state.bytes);
      if (!life.alive || mine !== asked) return;
      state.answer = answer;
      state.mapping = answer.mapping;
      fill(out, importPreview(ctx, answer, state, () => preview(true), commit));
    } catch (error) {
      if (mine === asked) fill(out, h("p", { class: "error-text" }, describeError(error)));
    } finally {
      if (mine === asked) {
        out.dataset.loading = "0";
        previewButton.disabled = false;
      }
    }
  };
  const commit = async (button) => {
    button.disabled = true;
    try {
      const done = await upload(`/api/imports/commit${params(true)}`, state.bytes);
      fill(
        out,
        h(
          "div",
          { class: "card import-result", dataset: { result: done.import_id || "nothing" } },
          h("h2", {}, done.message ? "Nothing to change" : "Imported"),
          h("div", { class: "cards" }, stat(num(done.added), "added", { dataset: { count: "added" } }), stat(num(done.changed), "changed", { dataset: { count: "changed" } }), stat(num(done.unchanged), "unchanged", { dataset: { count: "unchanged" } })),
          h("p", { class: "muted small" }, done.message ? "The file adds and changes nothing; nothing was recorded." : `${num(done.rows)} rows read. The mapping is remembered for "${sourceName.value.trim() || "this source"}".`),
        ),
      );
      toast(done.message ? "Nothing to change." : "Import committed.");
    } catch (error) {
      toast(describeError(error), "bad");
      button.disabled = false;
    }
  };
  // A new file from the same source keeps the mapping set for the last one; another target starts afresh.
  previewButton.addEventListener("click", () => preview(false));
  sourceName.addEventListener("change", () => {
    state.mapping = null;
  });
  target.addEventListener("change", () => {
    showRun();
    state.mapping = null;
    fill(out);
  });
  return h(
    "section",
    { class: "report import", "aria-label": "Import" },
    h(
      "div",
      { class: "card report-form" },
      h("p", { class: "muted small" }, "Upload a CSV or XLSX file. Nothing is written until you commit; a file with any error commits nothing, and importing the same file again changes nothing."),
      h("div", { class: "field-row" }, field("m-target", "Import into", target), runField, field("m-source", "Source name", sourceName, "Its column mapping is remembered under this name."), field("m-file", "File", file), h("div", {}, previewButton)),
    ),
    out,
  );
}

function importPreview(ctx, answer, state, again, commit) {
  const ours = IMPORT_COLUMNS[answer.target] || [];
  const fileOf = {};
  for (const header of answer.headers) if (header.maps_to) fileOf[header.maps_to] = header.header;
  const selects = ours.map((column) => {
    const select = h(
      "select",
      { id: `map-${column}`, dataset: { column } },
      h("option", { value: "" }, "(not in the file)"),
      answer.headers.map((header) => h("option", { value: header.header, selected: fileOf[column] === header.header }, header.header)),
    );
    select.addEventListener("change", () => {
      const mapping = {};
      for (const header of answer.headers) mapping[header.header] = "";
      for (const other of selects) if (other.value) mapping[other.value] = other.dataset.column;
      state.mapping = mapping;
      again();
    });
    return select;
  });
  const headersTable = table(
    ["Column in the file", "Samples", "Read as"],
    answer.headers.map((header) => h("tr", { dataset: { header: header.header } }, h("td", {}, h("strong", {}, header.header)), h("td", { class: "small" }, header.samples.join(" · ")), h("td", {}, header.maps_to || h("span", { class: "muted" }, "ignored")))),
    { caption: "The file's columns" },
  );
  const previewKeys = answer.preview.length ? Object.keys(answer.preview[0]) : [];
  const previewTable = table(
    previewKeys.map(pretty),
    answer.preview.map((row) => h("tr", {}, previewKeys.map((k) => h("td", {}, cellText(k, row[k]))))),
    { caption: "Rows as they will be read", empty: "No row read." },
  );
  previewTable.id = "import-preview";
  const errors = table(
    ["Row", "Column", "File column", "Value", "Reason", "How to fix"],
    answer.errors.map((e) => h("tr", { class: "out", dataset: { row: e.row ?? "", column: e.column ?? "" } }, h("td", { class: "num" }, e.row ?? ""), h("td", {}, e.column ?? ""), h("td", {}, e.file_column ?? ""), h("td", {}, e.value ?? ""), h("td", {}, e.reason), h("td", { class: "small" }, e.fix ?? ""))),
    { caption: "Errors", empty: "No error: the file can be committed." },
  );
  errors.id = "import-errors";
  const commitButton = action(ctx, "reports.import", "Commit import", () => commit(commitButton), { id: "m-commit" });
  if (commitButton) commitButton.disabled = !answer.valid;
  return h(
    "div",
    { class: "import-preview", dataset: { valid: answer.valid ? "1" : "0", mappingFrom: answer.mapping_from } },
    h("h2", {}, "Mapping"),
    h("p", { class: "muted small" }, { given: "As you set it.", remembered: "Remembered for this source.", recognised: "Recognised from the file's headers." }[answer.mapping_from] || ""),
    h("div", { class: "field-row mapping" }, ours.map((column, i) => field(`map-${column}`, column, selects[i]))),
    headersTable,
    h("h2", {}, `Preview (${num(answer.rows)} rows in the file)`),
    previewTable,
    h("h2", {}, `Dry run: ${answer.errors.length ? `${num(answer.errors.length)} errors` : "no error"}`),
    errors,
    h("div", { class: "cards" }, stat(num(answer.added), "would be added"), stat(num(answer.changed), "would change"), stat(num(answer.unchanged), "unchanged")),
    h("div", { class: "actions" }, commitButton, answer.valid ? null : h("span", { class: "error-text small" }, "Fix every error before committing: nothing is imported while one remains.")),
  );
}

// -- Exports ----------------------------------------------------------------------------------------
function whatText(what) {
  if (!what) return "";
  if (what.query) return `Query over ${what.query.snapshot_id ? "a snapshot" : "a run"}${what.query.group_by?.length ? `, by ${what.query.group_by.join(", ")}` : ""}`;
  if (what.snapshot_id) return "Snapshot";
  if (what.compare) return "Comparison";
  if (what.audit) return what.audit.run_id ? "Audit of a run" : "Audit of the store";
  return Object.keys(what).join(", ");
}

async function exportsPanel(ctx, life) {
  const out = h("div", { id: "exports-list" });
  const draw = async () => {
    const jobs = await get("/api/exports");
    if (!life.alive) return;
    fill(
      out,
      table(
        ["When", "What", "Format", "Status", "Rows", "File"],
        jobs.map((job) =>
          h(
            "tr",
            { dataset: { job: job.job_id, status: job.status } },
            h("td", { class: "nowrap" }, when(job.created_at)),
            h("td", {}, whatText(job.what)),
            h("td", {}, job.format.toUpperCase()),
            h("td", {}, h("span", { class: `badge ${job.status === "done" ? "ok" : job.status === "failed" ? "bad" : "warn"}` }, job.status), job.error ? h("div", { class: "small error-text" }, job.error) : null),
            h("td", { class: "num" }, job.rows_total ? `${num(job.rows_done)} / ${num(job.rows_total)}` : num(job.rows_done)),
            h("td", {}, job.status === "done" ? downloadLink(job) : job.status === "failed" ? "" : progressBar(job)),
          ),
        ),
        { caption: "Export jobs", empty: "No export yet." },
      ),
    );
    if (jobs.some((job) => job.status === "queued" || job.status === "running")) life.later(draw, 1000);
  };
  await draw();
  return h("section", { class: "report exports", "aria-label": "Exports" }, h("p", { class: "muted" }, "This box's export jobs, newest first. A file is kept on the box for a while after it is made."), out);
}
