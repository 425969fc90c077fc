// HQ's reports: the stores HQ holds with their runs, each store's Query, Compare and Audit run over
// HQ's copy of that store (the same panels as a store's own Reports page, so the figures read alike),
// and one query across stores, side by side. Only HQ answers these; a store box says it is not HQ.

import { ApiError, enc, get, post } from "../api.js";
import { clear, describeError, fill, h, statusBadge, table, when } from "../dom.js";
import { GROUPS, LABELS, auditPanel, comparePanel, groupsTable, lifetime, num, queryPanel } from "./reports.js";

const MODES = [
  ["query", "Query"],
  ["compare", "Compare"],
  ["audit", "Audit"],
];
const FLAGS = [
  ["with_variance", "With variance"],
  ["damaged", "Damaged"],
  ["unmatched", "Unmatched codes"],
];

export async function render(ctx) {
  const main = clear(ctx.main);
  const life = lifetime(ctx);
  const [storeId, mode = "query"] = ctx.params.map((p) => (p ? decodeURIComponent(p) : p));
  main.append(h("div", { class: "page-head" }, h("h1", {}, storeId ? `HQ reports · store ${storeId}` : "HQ reports")));
  let stores;
  try {
    stores = (await get("/api/hq/stores")).stores;
  } catch (error) {
    if (error instanceof ApiError && error.code === "NOT_HQ") {
      main.append(h("p", { dataset: { notHq: "1" } }, "This is a store box, not HQ: HQ's reports are on HQ's dashboard."));
      return () => life.end();
    }
    throw error;
  }
  if (!storeId) {
    main.append(await storesOverview(ctx, life, stores));
    return () => life.end();
  }
  const runs = await get(`/api/hq/stores/${enc(storeId)}/runs`);
  const base = `/api/hq/stores/${enc(storeId)}/reports`;
  const source = { base, exports: false, saved: false, snapshots: (runId) => get(`${base}/snapshots${runId ? `?run_id=${enc(runId)}` : ""}`) };
  const tabs = h(
    "nav",
    { class: "tabs", "aria-label": "Report modes" },
    h("a", { href: "#/hq-reports" }, "All stores"),
    MODES.map(([name, label]) => h("a", { href: `#/hq-reports/${enc(storeId)}/${name}`, "aria-current": name === mode ? "page" : null, dataset: { mode: name } }, label)),
  );
  const panel = { query: queryPanel, compare: comparePanel, audit: auditPanel }[mode];
  main.append(
    tabs,
    h("p", { class: "muted small" }, "From HQ's copy of the store's log: the store's own figures, as of HQ's last pull from it. Exports are made on the store's box."),
    panel ? await panel(ctx, life, source, runs) : h("p", {}, "No such report mode."),
  );
  return () => life.end();
}

async function storesOverview(ctx, life, stores) {
  const runsOf = {};
  await Promise.all(
    stores.map(async (store) => {
      try {
        runsOf[store.store_id] = await get(`/api/hq/stores/${enc(store.store_id)}/runs`);
      } catch {
        runsOf[store.store_id] = [];
      }
    }),
  );
  const list = table(
    ["Store", "Events", "Products", "Runs", "Last contact", "Reports"],
    stores.map((store) =>
      h(
        "tr",
        { dataset: { store: store.store_id } },
        h("td", {}, h("strong", {}, store.store_id)),
        h("td", { class: "num" }, num(store.events)),
        h("td", { class: "num" }, num(store.products)),
        h(
          "td",
          {},
          runsOf[store.store_id].length
            ? h("ul", { class: "plain small" }, runsOf[store.store_id].map((run) => h("li", {}, run.name, " ", statusBadge(run.status))))
            : h("span", { class: "muted" }, "none"),
        ),
        h("td", { class: "nowrap" }, when(store.last_contact_at)),
        h(
          "td",
          { class: "nowrap" },
          MODES.map(([name, label]) => h("a", { href: `#/hq-reports/${enc(store.store_id)}/${name}`, class: "tab-link" }, label)),
        ),
      ),
    ),
    { caption: "Stores", empty: "HQ holds no store yet." },
  );
  return h("div", {}, h("h2", {}, "Stores"), list, acrossStores(ctx, life, stores, runsOf));
}

/** One query over a run of each chosen store: each store's groups with the store, and all the totals. */
function acrossStores(ctx, life, stores, runsOf) {
  const picks = stores.map((store) => {
    const select = h(
      "select",
      { id: `x-run-${store.store_id}`, dataset: { store: store.store_id } },
      h("option", { value: "" }, "(leave out)"),
      runsOf[store.store_id].map((run) => h("option", { value: run.run_id }, run.name)),
    );
    if (runsOf[store.store_id][0]) select.value = runsOf[store.store_id][0].run_id;
    return h("div", { class: "field" }, h("label", { for: select.id }, `Store ${store.store_id}`), select);
  });
  const state = { group_by: ["category"], sort: "", descending: false };
  const chips = h("div", { class: "chips", role: "group", "aria-label": "Group by" });
  const drawChips = () =>
    fill(
      chips,
      GROUPS.map((group) => {
        const at = state.group_by.indexOf(group);
        return h("button", { type: "button", class: "chip", "aria-pressed": at >= 0 ? "true" : "false", dataset: { group } }, at >= 0 ? h("span", { class: "chip-n" }, String(at + 1)) : null, LABELS[group]);
      }),
    );
  chips.addEventListener("click", (event) => {
    const chip = event.target.closest("button[data-group]");
    if (!chip) return;
    const at = state.group_by.indexOf(chip.dataset.group);
    if (at >= 0) state.group_by.splice(at, 1);
    else state.group_by.push(chip.dataset.group);
    drawChips();
  });
  drawChips();
  const flags = {};
  const flagBox = h(
    "div",
    { class: "actions" },
    FLAGS.map(([name, label]) => {
      flags[name] = h("input", { type: "checkbox", id: `x-${name}` });
      return h("label", { class: "inline", for: `x-${name}` }, flags[name], label);
    }),
  );
  const out = h("div", { "aria-live": "polite" });
  const go = h("button", { type: "button", id: "x-run" }, "Run across stores");
  const run = async () => {
    const runs = picks.map((p) => p.querySelector("select")).filter((s) => s.value).map((s) => ({ store_id: s.dataset.store, run_id: s.value }));
    if (!runs.length) return fill(out, h("p", { class: "muted" }, "Choose a run of at least one store."));
    go.disabled = true;
    try {
      const spec = { group_by: state.group_by, with_variance: flags.with_variance.checked, damaged: flags.damaged.checked, unmatched: flags.unmatched.checked, limit: 100000 };
      const answer = await post("/api/hq/reports/query", { runs, spec });
      if (!life.alive) return;
      const measures = ["qty", "damage", "lines", ...(answer.groups.some((g) => "expected" in g) ? ["expected", "variance"] : [])];
      const columns = Object.keys(answer.groups[0] || {}).filter((k) => k !== "store_id" && !measures.includes(k));
      const shaped = { columns, measures, groups: answer.groups, total: { ...answer.total, groups: answer.groups.length } };
      const perStore = table(
        ["Store", "Counted", "Damaged", "Groups", "Expected", "Variance"],
        answer.stores.map((s) => h("tr", { dataset: { store: s.store_id } }, h("td", {}, s.store_id), h("td", { class: "num" }, num(s.qty)), h("td", { class: "num" }, num(s.damage)), h("td", { class: "num" }, num(s.groups)), h("td", { class: "num" }, num(s.expected)), h("td", { class: "num" }, num(s.variance)))),
        { caption: "Per store" },
      );
      perStore.id = "x-stores";
      fill(
        out,
        h("h3", {}, "Per store"),
        perStore,
        h("h3", {}, "Groups"),
        groupsTable(shaped, state, () => {}, { extra: ["store_id"] }),
      );
    } catch (error) {
      fill(out, h("p", { class: "error-text" }, describeError(error)));
    } finally {
      go.disabled = false;
    }
  };
  go.addEventListener("click", run);
  return h(
    "section",
    { class: "report across", "aria-label": "Across stores" },
    h("h2", {}, "Across stores"),
    h("div", { class: "card report-form" }, h("div", { class: "field-row" }, picks), h("h3", {}, "Group by"), chips, flagBox, h("div", { class: "actions" }, go)),
    out,
  );
}
