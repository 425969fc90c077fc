// The live floor map: every rack of a run as a tile, coloured by its state, with its holder, the units
// counted on it and its open conflicts. Rack moves arrive over the live feed and repaint one tile in
// place (no reload, no refetch); anything the feed cannot say precisely (a conflict found, a reconnect)
// refetches the board and repaints tiles that changed.

import { enc, get, post } from "../api.js";
import { action, clear, debounce, describeError, formDialog, h, infoDialog, shortId, stat, throttle, toast, fill } from "../dom.js";

export const STATES = ["available", "claimed", "active", "paused", "completed", "re-verify"];
const HELD = new Set(["claimed", "active", "paused"]);
const SHOW = [
  ["all", "All racks"],
  ["held", "Being counted"],
  ["completed", "Completed"],
  ["available", "Not started"],
  ["re-verify", "Re-verify"],
  ["conflicts", "With open conflicts"],
];

/** Runs ``callback`` once the frame that shows the current DOM has been painted: the frame's callback
 * runs before its layout and paint, and a message posted from it is handled after them. */
export function afterPaint(callback) {
  requestAnimationFrame(() => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => callback();
    channel.port2.postMessage(null);
  });
}

// One tile's elements, cloned for each rack (cheaper than building 300 tiles node by node).
const TILE = h(
  "button",
  { type: "button", class: "tile" },
  h("span", { class: "code" }),
  h("span", { class: "state" }),
  h("span", { class: "holder" }),
  h("span", { class: "units" }),
  h("span", { class: "flag", "aria-hidden": "true", hidden: true }),
);

export async function runsFor(ctx) {
  if (ctx.can("runs.read")) return get("/api/runs");
  // A verifier reads no run list; their own sessions name the runs they count in.
  const mine = await get("/api/sessions");
  const seen = new Map();
  for (const session of mine) {
    if (!seen.has(session.run_id)) seen.set(session.run_id, { run_id: session.run_id, name: `Run …${shortId(session.run_id)}`, status: "" });
  }
  return [...seen.values()];
}

export function preferredRun(runs) {
  return (runs.find((run) => run.status === "IN_PROGRESS") || runs[0] || null)?.run_id ?? null;
}

export async function render(ctx) {
  performance.mark("floor:start");
  // Listen before fetching: news that lands while the board is on its way is held, then applied.
  let board = null;
  let runId = null;
  const held = [];
  const refresh = debounce(() => board?.reload(), 400);
  const scansRefresh = throttle(() => board?.reload(), 10000);
  const hear = (kind, message, late = false) => {
    if (kind === "rack" && message.run_id === runId) board.move(message);
    // A held scan may already be in the fetched units: refetch rather than add it twice.
    else if (kind === "scan") (!late && board.scan(message)) || scansRefresh();
    else if (kind === "open" || kind === "resync" || kind === "conflict" || kind === "held" || kind === "session") refresh();
  };
  const stop = ctx.live.listen((kind, message) => (board ? hear(kind, message) : held.push([kind, message])));
  const cleanup = () => {
    stop();
    refresh.cancel();
    scansRefresh.cancel();
  };

  const asked = ctx.params[0] ? decodeURIComponent(ctx.params[0]) : null;
  // A run named in the address is fetched at once, alongside the run list (not after it).
  const early = asked ? new Board(ctx, asked).load() : null;
  early?.catch(() => {}); // its failure is reported where it is awaited
  let runs;
  try {
    runs = await runsFor(ctx);
  } catch (error) {
    cleanup();
    throw error;
  }
  runId = asked || preferredRun(runs);
  const main = clear(ctx.main);
  const head = h("div", { class: "page-head" }, h("h1", {}, "Floor map"));
  main.append(head);
  if (!runId) {
    main.append(
      h("p", {}, "No count run yet."),
      ctx.can("runs.manage") ? h("p", {}, h("a", { href: "#/runs" }, "Plan a run")) : null,
    );
    return cleanup;
  }
  const picker = h(
    "select",
    { id: "floor-run", onchange: (event) => ctx.go(`#/floor/${enc(event.target.value)}`) },
    runs.map((run) => h("option", { value: run.run_id, selected: run.run_id === runId }, `${run.name}${run.status ? ` · ${run.status.replace("_", " ").toLowerCase()}` : ""}`)),
  );
  head.append(
    h(
      "div",
      { class: "actions" },
      h("label", { for: "floor-run", class: "inline" }, "Run", picker),
      ctx.can("runs.read") ? h("a", { class: "button ghost", href: `#/runs/${enc(runId)}` }, "Run details") : null,
    ),
  );

  let loaded;
  try {
    loaded = early ? await early : await new Board(ctx, runId).load();
  } catch (error) {
    cleanup();
    throw error;
  }
  performance.mark("floor:data");
  main.append(loaded.summary, loaded.toolbar(), loaded.legend, loaded.floorsEl);
  loaded.draw();
  afterPaint(() => {
    performance.mark("floor:painted");
    document.documentElement.dataset.floorPainted = "1";
  });
  board = loaded;
  // Moves carry fencing tokens, so one the fetched board already shows changes nothing.
  for (const [kind, message] of held.splice(0)) hear(kind, message, true);
  return cleanup;
}

class Board {
  constructor(ctx, runId) {
    this.ctx = ctx;
    this.runId = runId;
    this.tiles = new Map(); // rack_id -> {data, el}
    this.byCode = new Map();
    this.sessions = new Set();
    this.withConflicts = ctx.can("conflicts.read");
    this.summary = h("div", { class: "cards", "aria-live": "polite" });
    this.legend = h("ul", { class: "legend", "aria-label": "Rack states" });
    this.floorsEl = h("div", { id: "floors" });
    // One listener for all 300 tiles.
    this.floorsEl.addEventListener("click", (event) => {
      const tile = event.target.closest("button.tile");
      if (tile) this.details(tile.dataset.rackId);
    });
    this.floorFilter = "";
    this.show = "all";
  }

  async load() {
    const [racks, sessions] = await Promise.all([
      get(`/api/runs/${enc(this.runId)}/racks`),
      get(`/api/sessions?run_id=${enc(this.runId)}`),
    ]);
    this.racks = racks;
    this.sessions = new Set(sessions.map((session) => session.session_id));
    return this;
  }

  async reload() {
    if (!this.ctx.isCurrent()) return;
    try {
      await this.load();
    } catch (error) {
      toast(`Could not refresh the floor map: ${describeError(error)}`, "bad");
      return;
    }
    if (this.floorFilter || this.show !== "all" || this.racks.some((rack) => !this.tiles.has(rack.rack_id))) {
      this.draw(); // what is shown may have changed
      return;
    }
    for (const rack of this.racks) {
      const tile = this.tiles.get(rack.rack_id);
      const before = JSON.stringify(tile.data);
      tile.data = rack;
      if (JSON.stringify(rack) !== before) this.paint(tile);
    }
    for (const floor of new Set(this.racks.map((rack) => rack.floor))) this.drawFloorCount(floor);
    this.drawSummary();
  }

  toolbar() {
    const floors = [...new Map(this.racks.map((rack) => [rack.floor, rack.floor_name])).entries()];
    const floorSelect = h(
      "select",
      { id: "floor-filter", onchange: (event) => { this.floorFilter = event.target.value; this.draw(); } },
      h("option", { value: "" }, "All floors"),
      floors.map(([code, name]) => h("option", { value: code }, `${name} (${code})`)),
    );
    const showSelect = h(
      "select",
      { id: "floor-show", onchange: (event) => { this.show = event.target.value; this.draw(); } },
      SHOW.filter(([value]) => value !== "conflicts" || this.withConflicts).map(([value, label]) => h("option", { value }, label)),
    );
    return h(
      "div",
      { class: "toolbar" },
      h("div", {}, h("label", { for: "floor-filter" }, "Floor"), floorSelect),
      h("div", {}, h("label", { for: "floor-show" }, "Show"), showSelect),
    );
  }

  visible(rack) {
    if (this.floorFilter && rack.floor !== this.floorFilter) return false;
    switch (this.show) {
      case "held":
        return HELD.has(rack.state);
      case "conflicts":
        return (rack.conflicts || 0) > 0;
      case "all":
        return true;
      default:
        return rack.state === this.show;
    }
  }

  draw() {
    this.tiles.clear();
    this.byCode.clear();
    const groups = new Map();
    for (const rack of this.racks) {
      if (!groups.has(rack.floor)) groups.set(rack.floor, { name: rack.floor_name, racks: [] });
      groups.get(rack.floor).racks.push(rack);
    }
    const sections = [];
    for (const [code, group] of groups) {
      const shown = group.racks.filter((rack) => this.visible(rack));
      const items = shown.map((rack) => {
        const el = TILE.cloneNode(true);
        el.dataset.rack = rack.rack;
        el.dataset.rackId = rack.rack_id;
        const tile = { data: rack, el };
        this.tiles.set(rack.rack_id, tile);
        this.byCode.set(rack.rack, tile);
        this.paint(tile, false);
        return h("li", {}, el);
      });
      if (!items.length) continue;
      const done = group.racks.filter((rack) => rack.state === "completed").length;
      const headingId = `floor-${code}`;
      sections.push(
        h(
          "section",
          { class: "floor", "aria-labelledby": headingId },
          h("h2", { id: headingId }, `${group.name} (${code})`, h("span", { class: "muted small", dataset: { floorDone: code } }, `${done} of ${group.racks.length} completed`)),
          h("ul", { class: "tiles" }, items),
        ),
      );
    }
    clear(this.floorsEl).append(...(sections.length ? sections : [h("p", { class: "muted" }, "No rack matches.")]));
    this.drawSummary();
  }

  paint(tile, flash = true) {
    const rack = tile.data;
    const held = HELD.has(rack.state);
    const conflicts = rack.conflicts || 0;
    const [code, state, holder, units, flag] = tile.el.children;
    code.textContent = rack.rack;
    state.textContent = rack.state;
    holder.textContent = held ? rack.holder_name || "held" : "\u00a0";
    units.textContent = rack.units ? `${rack.units} units` : "\u00a0";
    flag.hidden = !conflicts;
    flag.textContent = conflicts ? `!${conflicts}` : "";
    tile.el.className = `tile st-${rack.state}${flash ? " flash" : ""}`;
    tile.el.dataset.state = rack.state;
    tile.el.setAttribute(
      "aria-label",
      `${rack.rack}: ${rack.state}${held && rack.holder_name ? `, held by ${rack.holder_name}` : ""}, ${rack.units || 0} units` +
        (conflicts ? `, ${conflicts} open conflict${conflicts === 1 ? "" : "s"}` : ""),
    );
  }

  /** A rack moved (claimed, started, paused, finished, released, re-verify, lease lapsed). */
  move(message) {
    const tile = this.tiles.get(message.rack_id) || this.byCode.get(message.rack);
    const rack = tile ? tile.data : this.racks.find((r) => r.rack_id === message.rack_id);
    if (!rack) return;
    if (message.token != null && rack.token != null && message.token < rack.token) return; // an older move
    const held = HELD.has(message.state);
    const sameHolder = rack.holder && rack.holder === message.holder;
    rack.state = message.state;
    rack.token = message.token ?? rack.token;
    rack.holder = held ? message.holder : null;
    rack.holder_name = held ? message.holder_name || (sameHolder ? rack.holder_name : null) : null;
    rack.device_id = held ? message.device_id : null;
    if (this.show !== "all") {
      this.draw(); // the rack may now belong in or out of the filtered view
      return;
    }
    if (tile) {
      this.paint(tile);
      this.drawFloorCount(rack.floor);
    }
    this.drawSummary();
  }

  /** A scan landed: true if it was counted on a rack of this run we know. */
  scan(message) {
    if (!this.sessions.has(message.session_id)) return false;
    const tile = this.tiles.get(message.rack_id);
    const rack = tile ? tile.data : this.racks.find((r) => r.rack_id === message.rack_id);
    if (!rack) return false;
    rack.units = (rack.units || 0) + (message.qty || 0);
    if (tile) this.paint(tile, false);
    this.drawSummary();
    return true;
  }

  drawFloorCount(floor) {
    const label = this.floorsEl.querySelector(`[data-floor-done="${CSS.escape(floor)}"]`);
    if (!label) return;
    const racks = this.racks.filter((rack) => rack.floor === floor);
    label.textContent = `${racks.filter((rack) => rack.state === "completed").length} of ${racks.length} completed`;
  }

  drawSummary() {
    const count = (state) => this.racks.filter((rack) => rack.state === state).length;
    const held = this.racks.filter((rack) => HELD.has(rack.state)).length;
    const units = this.racks.reduce((sum, rack) => sum + (rack.units || 0), 0);
    const cards = [
      stat(`${count("completed")} / ${this.racks.length}`, "racks completed", { dataset: { stat: "completed" } }),
      stat(String(held), "racks being counted", { dataset: { stat: "held" } }),
      stat(String(count("re-verify")), "to re-verify", { dataset: { stat: "reverify" } }),
      stat(units.toLocaleString(), "units counted", { dataset: { stat: "units" } }),
    ];
    if (this.withConflicts) {
      const open = this.racks.reduce((sum, rack) => sum + (rack.conflicts || 0), 0);
      cards.push(h("a", { href: "#/conflicts", class: "card stat" }, h("span", { class: "value" }, String(open)), h("span", { class: "label" }, "conflicts on racks")));
    }
    fill(this.summary, ...cards);
    fill(this.legend,
      ...STATES.map((state) => h("li", {}, h("span", { class: `swatch st-${state}`, "aria-hidden": "true" }), `${state} (${count(state)})`)),
    );
  }

  details(rackId) {
    const tile = this.tiles.get(rackId);
    if (!tile) return;
    const rack = tile.data;
    const held = HELD.has(rack.state);
    const rows = [
      ["Floor", `${rack.floor_name} (${rack.floor})`],
      ["State", rack.state + (rack.lapsed ? " (the last lease lapsed)" : "")],
      ["Held by", held ? rack.holder_name || rack.holder || "someone" : "nobody"],
      ["Device", held && rack.device_id ? rack.device_id : "—"],
      ["Lease ends", held && rack.expires_at ? `in ${Math.max(0, Math.round((rack.expires_at - Date.now()) / 1000))} s` : "—"],
      ["Units counted", String(rack.units || 0)],
    ];
    if (this.withConflicts) rows.push(["Open conflicts", String(rack.conflicts || 0)]);
    const body = h("dl", {}, rows.map(([label, value]) => [h("dt", {}, label), h("dd", {}, value)]));
    const buttons = [];
    const ask = (title, path, label, danger) =>
      formDialog({
        title,
        fields: [{ name: "reason", label: "Reason (kept in the log)", required: true }],
        submitLabel: label,
        danger,
        permission: "sessions.manage",
        submit: (values) => post(path, { reason: values.reason }),
      }).then((done) => {
        if (done) {
          toast(`${rack.rack}: ${label.toLowerCase()} done.`);
          this.reload();
        }
      });
    const base = `/api/runs/${enc(this.runId)}/racks/${enc(rack.rack)}`;
    if (held) {
      buttons.push(action(this.ctx, "sessions.manage", "Force release", () => { dialog.close(); ask(`Force release ${rack.rack}`, `${base}/force-release`, "Force release", true); }, { class: "danger" }));
    }
    if (rack.state === "completed") {
      buttons.push(action(this.ctx, "sessions.manage", "Request re-verify", () => { dialog.close(); ask(`Re-verify ${rack.rack}`, `${base}/reverify`, "Request re-verify", false); }));
    }
    if (this.withConflicts && rack.conflicts) buttons.push(h("a", { class: "button ghost", href: "#/conflicts" }, "Open the conflict queue"));
    const dialog = infoDialog(`Rack ${rack.rack}`, body, buttons);
  }
}
