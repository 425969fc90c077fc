// Scanners plugged into the store's boxes: which are in, reading or failing and why, the last code each
// read (raw and as counted), the station each counts for (a session and a rack), a test mode for a
// field tech checking a scanner's settings, the settings themselves, and the codes no session took
// (kept), which a supervisor counts into a session or sets aside with a reason.

import { enc, get, patch, post, put, request } from "../api.js";
import { action, ago, clear, describeError, fill, formDialog, h, statusBadge, table, throttle, toast, when } from "../dom.js";

const OPEN_SESSION = new Set(["ASSIGNED", "IN_PROGRESS"]);
const OUTCOME_BADGE = { counted: "ok", held: "warn", kept: "bad", test: "info" };
const OUTCOME_TEXT = {
  counted: "counted",
  held: "held for a supervisor",
  kept: "kept: not counted",
  test: "test: not counted",
};
const FIELD_LABELS = {
  gtin: "GTIN",
  batch: "Batch",
  expiry: "Expiry",
  best_before: "Best before",
  production_date: "Produced",
  serial: "Serial",
  count: "Count",
};
const SUFFIXES = { hid: [["enter", "Enter"], ["tab", "Tab"]], serial: [["cr", "CR"], ["lf", "LF"], ["crlf", "CR LF"], ["none", "None"]] };
const BAUDS = [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200];
const TEST_CODES = 10; // codes read in test mode shown under a scanner

export function outcomeBadge(outcome) {
  return h("span", { class: `badge ${OUTCOME_BADGE[outcome] || ""}`, dataset: { outcome: outcome || "" } }, OUTCOME_TEXT[outcome] || outcome || "");
}

export function productText(entry) {
  if (entry.product) return `${entry.product.name} (${entry.product.sku})`;
  if (entry.outcome === "kept" && !entry.counted_as) return null;
  return "unknown code: no product has it";
}

export function fieldsText(fields) {
  return Object.entries(fields || {})
    .filter(([, value]) => value !== null && value !== undefined && value !== "")
    .map(([name, value]) => `${FIELD_LABELS[name] || name} ${value}`)
    .join(" · ");
}

/** The latest of two code results (by when they were read). */
function later(a, b) {
  if (!a) return b || null;
  if (!b) return a;
  return (b.read_at || 0) > (a.read_at || 0) ? b : a;
}

/** A code as read, its control characters (a GS1 code's group separator) shown rather than hidden. */
export function visible(code) {
  return String(code ?? "").replace(/[\x00-\x1f]/g, (c) => (c === "\x1d" ? "‹GS›" : `‹${c.charCodeAt(0).toString(16).padStart(2, "0")}›`));
}

function keyOf(entry) {
  return `${entry.read_at}:${entry.code}`;
}

function lastCodeCell(entry) {
  if (!entry) return h("span", { class: "muted" }, "no code read yet");
  const product = productText(entry);
  const fields = fieldsText(entry.fields);
  return [
    h("div", { class: "code-raw" }, h("code", { dataset: { raw: "" } }, visible(entry.code))),
    entry.counted_as && entry.counted_as !== entry.code
      ? h("div", { class: "small" }, "counted as ", h("code", { dataset: { countedAs: "" } }, visible(entry.counted_as)))
      : null,
    product ? h("div", { class: "small", dataset: { product: "" } }, product) : null,
    fields ? h("div", { class: "small muted", dataset: { fields: "" } }, fields) : null,
    h(
      "div",
      { class: "small" },
      outcomeBadge(entry.outcome),
      entry.reason ? ` ${entry.reason}` : "",
      entry.read_at ? h("span", { class: "muted" }, ` · ${ago(entry.read_at)}`) : null,
    ),
    entry.message ? h("div", { class: "small muted" }, entry.message) : null,
  ];
}

function pluggedBadge(scanner) {
  if (!scanner.on_this_box) return h("span", { class: "badge info" }, "on another box");
  return scanner.plugged ? h("span", { class: "badge ok" }, "plugged in") : h("span", { class: "badge" }, "not plugged in");
}

function stateCell(scanner) {
  const live = scanner.live;
  if (!live) return h("span", { class: "muted" }, scanner.on_this_box ? "—" : "read by its own box");
  const cls = { reading: "ok", opening: "info", failed: "bad" }[live.state] || "";
  return [
    h("span", { class: `badge ${cls}`, dataset: { state: live.state } }, live.state),
    live.error ? h("div", { class: "small error-text", dataset: { error: "" } }, live.error) : null,
    h(
      "div",
      { class: "small muted" },
      `${live.codes} code${live.codes === 1 ? "" : "s"} read`,
      live.waiting ? ` · ${live.waiting} waiting to be written` : "",
      live.dropped_chars ? ` · ${live.dropped_chars} characters dropped` : "",
    ),
  ];
}

// -- choosing a session and a rack ---------------------------------------------------------------
/** The sessions a station (or a kept code) can count for: open, given to someone, in a run in progress. */
async function openSessions() {
  const [runs, sessions, people] = await Promise.all([get("/api/runs"), get("/api/sessions"), get("/api/counters")]);
  const running = new Map(runs.filter((run) => run.status === "IN_PROGRESS").map((run) => [run.run_id, run]));
  const names = new Map(people.map((person) => [person.user_id, person.display_name || person.username]));
  return sessions
    .filter((session) => running.has(session.run_id) && OPEN_SESSION.has(session.status) && session.verifier_id)
    .map((session) => ({ ...session, run: running.get(session.run_id), verifier: names.get(session.verifier_id) || "a verifier" }));
}

let storeRacks = null;

async function allRacks() {
  storeRacks ||= await get("/api/racks");
  return storeRacks;
}

/** Two selects: a session, then one of its racks (any rack of the store for a session without racks). */
function stationPicker(sessions, current) {
  const sessionSelect = h(
    "select",
    { id: "pick-session", name: "session_id", required: true },
    h("option", { value: "" }, "Choose a session…"),
    sessions.map((session) =>
      h(
        "option",
        { value: session.session_id, selected: current && current.session_id === session.session_id },
        `${session.verifier} · ${session.run.name} · ${session.racks.length ? `racks ${session.racks.join(", ")}` : "any rack"} (${session.status.replace("_", " ").toLowerCase()})`,
      ),
    ),
  );
  const rackSelect = h("select", { id: "pick-rack", name: "rack_id", required: true, disabled: true }, h("option", { value: "" }, "Choose a session first"));
  const fillRacks = async () => {
    const session = sessions.find((s) => s.session_id === sessionSelect.value);
    if (!session) {
      fill(rackSelect, h("option", { value: "" }, "Choose a session first"));
      rackSelect.disabled = true;
      return;
    }
    let options;
    if (session.racks.length) {
      options = session.racks.map((code, index) => [session.rack_ids[index], code]);
    } else {
      const racks = await allRacks();
      options = racks.map((rack) => [rack.rack_id, rack.code]);
    }
    const wanted = current && current.session_id === session.session_id ? current.rack_id : options.length === 1 ? options[0][0] : "";
    fill(
      rackSelect,
      h("option", { value: "" }, "Choose a rack…"),
      options.map(([value, label]) => h("option", { value, selected: value === wanted }, label)),
    );
    rackSelect.disabled = false;
  };
  sessionSelect.addEventListener("change", fillRacks);
  const ready = fillRacks();
  const element = sessions.length
    ? [
        h("label", { for: "pick-session" }, "Session"),
        sessionSelect,
        h("label", { for: "pick-rack" }, "Rack"),
        rackSelect,
      ]
    : h("p", { class: "error-text", role: "alert" }, "No session is open in a run in progress: start a run and give a session to a verifier first.");
  return {
    element,
    ready,
    empty: !sessions.length,
    values: () => ({ session_id: sessionSelect.value, rack_id: rackSelect.value }),
  };
}

function requireChoice(values) {
  if (!values.session_id) throw new Error("Choose a session.");
  if (!values.rack_id) throw new Error("Choose a rack.");
}

// -- the page --------------------------------------------------------------------------------------
export async function render(ctx) {
  const main = clear(ctx.main);
  const service = h("div", {});
  const list = h("div", { "aria-live": "polite" });
  const problem = h("p", { class: "error-text", role: "alert" });
  const keptList = h("div", {});
  const keptTools = h("div", { class: "actions kept-tools" });
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Scanners")),
    h(
      "p",
      { class: "muted" },
      "Barcode scanners plugged into the store's boxes. A scanner counts for the station it is assigned to (a session and a rack); what it reads while it counts for none is kept below for a supervisor.",
    ),
    service,
    problem,
    list,
    h(
      "section",
      { "aria-labelledby": "kept-title", id: "kept" },
      h("h2", { id: "kept-title" }, "Kept codes"),
      h("p", { class: "muted small" }, "Codes no session took: read while the scanner counted for no station, refused by the session, or unreadable as a count. Count them into a session or set them aside with a reason."),
      keptTools,
      keptList,
    ),
  );

  const state = { scanners: [], service: null, kept: [], selected: new Set() };
  const lastCodes = new Map(); // writer_id -> the latest code result heard live
  const testCodes = new Map(); // writer_id -> codes read in test mode, newest first
  let loadSeq = 0;

  const latestOf = (scanner) => later(scanner.live?.recent?.[0], lastCodes.get(scanner.writer_id));
  const testing = (scanner) => Boolean(scanner.live?.test_until && scanner.live.test_until > Date.now());
  const testList = (scanner) => {
    const seen = new Set();
    const merged = [...(testCodes.get(scanner.writer_id) || []), ...(scanner.live?.recent || []).filter((e) => e.outcome === "test")];
    return merged
      .filter((entry) => !seen.has(keyOf(entry)) && seen.add(keyOf(entry)))
      .sort((a, b) => b.read_at - a.read_at)
      .slice(0, TEST_CODES);
  };

  function stationCell(scanner) {
    const station = scanner.station;
    const buttons = [
      action(ctx, "scanners.manage", station ? "Change station…" : "Assign…", () => assign(scanner), { class: "small", dataset: { do: "assign" } }),
      station ? action(ctx, "scanners.manage", "Unassign", () => unassign(scanner), { class: "small ghost", dataset: { do: "unassign" } }) : null,
    ];
    return [
      station
        ? h(
            "div",
            { dataset: { station: station.session_id, rack: station.rack || "" } },
            h("a", { href: `#/sessions/${enc(station.session_id)}` }, station.verifier_name || "a verifier"),
            ` · rack ${station.rack || "(any)"} `,
            station.session_status ? statusBadge(station.session_status) : null,
            station.session_status && !OPEN_SESSION.has(station.session_status)
              ? h("div", { class: "small error-text" }, "The session is no longer open: its codes are kept.")
              : null,
          )
        : h("span", { class: "muted", dataset: { station: "" } }, "not assigned"),
      h("div", { class: "actions" }, buttons),
    ];
  }

  function testRow(scanner, columns) {
    const codes = testList(scanner);
    if (!testing(scanner) && !codes.length) return null;
    return h(
      "tr",
      { class: "test-row", dataset: { testFor: scanner.writer_id } },
      h(
        "td",
        { colspan: columns },
        h(
          "p",
          { class: "small" },
          testing(scanner)
            ? h("b", {}, `Test mode until ${new Date(scanner.live.test_until).toLocaleTimeString()}: codes read now are shown here and counted nowhere.`)
            : h("span", { class: "muted" }, "Codes read in test mode (counted nowhere):"),
        ),
        codes.length
          ? h(
              "ol",
              { class: "test-codes" },
              codes.map((entry) =>
                h(
                  "li",
                  { dataset: { testCode: entry.code } },
                  h("code", {}, visible(entry.code)),
                  entry.counted_as && entry.counted_as !== entry.code ? [" → ", h("code", {}, visible(entry.counted_as))] : null,
                  ` · ${productText(entry) || ""}`,
                  fieldsText(entry.fields) ? ` · ${fieldsText(entry.fields)}` : "",
                  entry.message ? h("span", { class: "error-text" }, ` · ${entry.message}`) : null,
                ),
              ),
            )
          : h("p", { class: "muted small" }, "No code read in test mode yet: scan one."),
      ),
    );
  }

  function draw() {
    const why = state.service && !state.service.reading ? state.service.why : null;
    fill(service, why ? h("p", { class: "card warn-card", role: "status" }, `This box reads no scanner: ${why}`) : null);
    const headers = ["Scanner", "Plugged", "State", "Last code", "Station", ""];
    const rows = [];
    for (const scanner of state.scanners) {
      const here = scanner.on_this_box && scanner.plugged;
      const last = latestOf(scanner);
      rows.push(
        h(
          "tr",
          {
            dataset: {
              scanner: scanner.writer_id,
              plugged: scanner.plugged ? "1" : "0",
              state: scanner.live?.state || "",
              assigned: scanner.station?.session_id || "",
            },
          },
          h(
            "td",
            {},
            h("b", { dataset: { name: "" } }, scanner.name),
            h("div", { class: "small muted" }, `${scanner.model || "unknown model"} · ${scanner.kind === "hid" ? "USB keyboard" : "serial"} (${scanner.kind})`),
            h(
              "div",
              { class: "small muted" },
              scanner.kind === "hid" ? `layout ${scanner.layout}${scanner.variant ? ` (${scanner.variant})` : ""}` : `${scanner.baud} baud`,
              ` · suffix ${scanner.suffix}`,
            ),
            h("div", { class: "small" }, h("a", { href: `#/station/${enc(scanner.writer_id)}`, dataset: { stationLink: "" } }, "Station screen")),
            scanner.kept_open ? h("div", { class: "small" }, h("a", { href: "#kept", onclick: jumpToKept }, `${scanner.kept_open} kept code${scanner.kept_open === 1 ? "" : "s"}`)) : null,
          ),
          h("td", {}, pluggedBadge(scanner)),
          h("td", {}, stateCell(scanner)),
          h("td", { class: "last-code", dataset: { lastCode: scanner.writer_id, outcome: last?.outcome || "" } }, lastCodeCell(last)),
          h("td", {}, stationCell(scanner)),
          h(
            "td",
            {},
            h(
              "div",
              { class: "actions" },
              testing(scanner)
                ? action(ctx, "scanners.manage", "End test mode", () => setTest(scanner, 0), { class: "small ghost", dataset: { do: "test-end" } })
                : action(ctx, "scanners.manage", "Test mode…", () => testDialog(scanner), {
                    class: "small ghost",
                    disabled: !here,
                    title: here ? null : "Only a scanner plugged into this box can be tested here",
                    dataset: { do: "test" },
                  }),
              action(ctx, "scanners.manage", "Settings…", () => settings(scanner), { class: "small ghost", dataset: { do: "settings" } }),
            ),
          ),
        ),
      );
      const extra = testRow(scanner, headers.length);
      if (extra) rows.push(extra);
    }
    fill(list, table(headers, rows, { caption: "Scanners", empty: "No scanner has been plugged into a box of this store yet." }));
    drawKept();
  }

  function jumpToKept(event) {
    event.preventDefault();
    document.getElementById("kept")?.scrollIntoView();
  }

  function drawKept() {
    const manage = ctx.can("scanners.manage");
    const open = new Set(state.kept.map((row) => row.event_id));
    for (const id of [...state.selected]) if (!open.has(id)) state.selected.delete(id);
    const chosen = state.selected.size;
    const all = manage && state.kept.length
      ? h("input", {
          type: "checkbox",
          id: "kept-all",
          "aria-label": "Select every kept code",
          checked: chosen === state.kept.length,
          onchange: (event) => {
            state.selected = event.target.checked ? new Set(open) : new Set();
            drawKept();
          },
        })
      : null;
    const count = action(ctx, "scanners.manage", `Count into session…${chosen ? ` (${chosen})` : ""}`, () => countKept(), {
      disabled: !chosen,
      dataset: { do: "kept-count" },
    });
    const aside = action(ctx, "scanners.manage", `Set aside…${chosen ? ` (${chosen})` : ""}`, () => setAside(), {
      class: "ghost",
      disabled: !chosen,
      dataset: { do: "kept-aside" },
    });
    fill(
      keptTools,
      h("span", { class: "muted small" }, `${state.kept.length} kept code${state.kept.length === 1 ? "" : "s"} waiting${manage ? `, ${chosen} selected` : ""}.`),
      count,
      aside,
    );
    fill(
      keptList,
      table(
        [manage ? all || "" : null, "Read", "Scanner", "Code", "Why it was kept"].filter((x) => x !== null),
        state.kept.map((row) =>
          h(
            "tr",
            { dataset: { kept: row.event_id, code: row.code } },
            manage
              ? h(
                  "td",
                  {},
                  h("input", {
                    type: "checkbox",
                    "aria-label": `Select kept code ${row.code}`,
                    checked: state.selected.has(row.event_id),
                    onchange: (event) => {
                      if (event.target.checked) state.selected.add(row.event_id);
                      else state.selected.delete(row.event_id);
                      drawKept();
                    },
                  }),
                )
              : null,
            h("td", { class: "nowrap" }, when(row.read_at)),
            h("td", {}, row.scanner_name || row.scanner_id),
            h("td", {}, h("code", {}, visible(row.code))),
            h("td", {}, h("span", { class: "badge warn" }, row.reason), row.message ? h("div", { class: "small muted" }, row.message) : null),
          ),
        ),
        { caption: "Kept codes", empty: "No kept code waits for a decision." },
      ),
    );
  }

  async function load() {
    const seq = ++loadSeq;
    try {
      const [listed, kept] = await Promise.all([get("/api/scanners"), get("/api/scanners/kept")]);
      if (seq !== loadSeq || !ctx.isCurrent()) return;
      state.scanners = listed.scanners;
      state.service = listed.service;
      state.kept = kept;
      problem.textContent = "";
      draw();
    } catch (error) {
      if (seq === loadSeq && ctx.isCurrent()) problem.textContent = `The scanners could not be loaded: ${describeError(error)}`;
    }
  }

  // -- actions -------------------------------------------------------------------------------------
  async function assign(scanner) {
    let sessions;
    try {
      sessions = await openSessions();
    } catch (error) {
      toast(`The open sessions could not be listed: ${describeError(error)}`, "bad");
      return;
    }
    const picker = stationPicker(sessions, scanner.station);
    await picker.ready;
    const done = await formDialog({
      title: `Assign ${scanner.name} to a station`,
      intro: "Each code it reads counts in this session and rack, in the session verifier's name, under the session's rules.",
      body: picker.element,
      submitLabel: "Assign",
      permission: "scanners.manage",
      blocked: picker.empty,
      submit: async () => {
        const values = picker.values();
        requireChoice(values);
        return put(`/api/scanners/${enc(scanner.writer_id)}/station`, values);
      },
    });
    if (done) {
      toast(`${scanner.name} now counts for ${done.station?.verifier_name || "the session"} on rack ${done.station?.rack || ""}.`);
      load();
    }
  }

  async function unassign(scanner) {
    try {
      await request("DELETE", `/api/scanners/${enc(scanner.writer_id)}/station`);
      toast(`${scanner.name} counts for no station now: what it reads is kept.`);
    } catch (error) {
      toast(`${scanner.name} could not be unassigned: ${describeError(error)}`, "bad");
    }
    load();
  }

  async function setTest(scanner, minutes) {
    try {
      await post(`/api/scanners/${enc(scanner.writer_id)}/test`, { minutes });
      if (!minutes) toast(`${scanner.name} counts again.`);
    } catch (error) {
      toast(`Test mode: ${describeError(error)}`, "bad");
    }
    load();
  }

  async function testDialog(scanner) {
    const minutes = h("input", { id: "test-minutes", name: "minutes", type: "number", min: 1, max: 30, step: 1, value: "5", required: true });
    const done = await formDialog({
      title: `Test ${scanner.name}`,
      intro: "For the minutes you choose, what the scanner reads is shown on this page and counted nowhere: to check its layout and suffix.",
      body: [h("label", { for: "test-minutes" }, "Minutes (1 to 30)"), minutes],
      submitLabel: "Start test mode",
      permission: "scanners.manage",
      submit: () => post(`/api/scanners/${enc(scanner.writer_id)}/test`, { minutes: Number(minutes.value) }),
    });
    if (done) {
      testCodes.set(scanner.writer_id, []);
      load();
    }
  }

  async function settings(scanner) {
    const name = h("input", { id: "set-name", name: "name", value: scanner.name, required: true, maxlength: 64 });
    const suffix = h(
      "select",
      { id: "set-suffix", name: "suffix" },
      (SUFFIXES[scanner.kind] || []).map(([value, label]) => h("option", { value, selected: value === scanner.suffix }, label)),
    );
    const layout = h("input", { id: "set-layout", name: "layout", value: scanner.layout || "us", autocomplete: "off" });
    const variant = h("input", { id: "set-variant", name: "variant", value: scanner.variant || "", autocomplete: "off" });
    const baud = h(
      "select",
      { id: "set-baud", name: "baud" },
      BAUDS.map((value) => h("option", { value: String(value), selected: value === scanner.baud }, String(value))),
    );
    const body = [
      h("label", { for: "set-name" }, "Name"),
      name,
      scanner.kind === "hid"
        ? [
            h("label", { for: "set-layout" }, "Keyboard layout"),
            layout,
            h("p", { class: "muted small" }, "The layout the scanner types in (us, de, fr, gb…), as the box's keyboard tables name it."),
            h("label", { for: "set-variant" }, "Layout variant (optional)"),
            variant,
          ]
        : [h("label", { for: "set-baud" }, "Baud"), baud],
      h("label", { for: "set-suffix" }, "Suffix (what ends each code)"),
      suffix,
    ];
    const done = await formDialog({
      title: `Settings of ${scanner.name}`,
      intro: scanner.on_this_box ? "A change to how it is read reopens the scanner with the new settings." : "The scanner is read by another box; the change reaches it.",
      body,
      submitLabel: "Save",
      permission: "scanners.manage",
      submit: async () => {
        const changes = {};
        if (name.value.trim() !== scanner.name) changes.name = name.value.trim();
        if (suffix.value !== scanner.suffix) changes.suffix = suffix.value;
        if (scanner.kind === "hid") {
          if (layout.value.trim() !== (scanner.layout || "")) changes.layout = layout.value.trim();
          if (variant.value.trim() !== (scanner.variant || "")) changes.variant = variant.value.trim();
        } else if (Number(baud.value) !== scanner.baud) {
          changes.baud = Number(baud.value);
        }
        if (!Object.keys(changes).length) return true;
        return patch(`/api/scanners/${enc(scanner.writer_id)}`, changes);
      },
    });
    if (done) load();
  }

  function chosenKept() {
    return state.kept.filter((row) => state.selected.has(row.event_id));
  }

  async function countKept() {
    const rows = chosenKept();
    if (!rows.length) return;
    let sessions;
    try {
      sessions = await openSessions();
    } catch (error) {
      toast(`The open sessions could not be listed: ${describeError(error)}`, "bad");
      return;
    }
    const picker = stationPicker(sessions, null);
    await picker.ready;
    const done = await formDialog({
      title: `Count ${rows.length} kept code${rows.length === 1 ? "" : "s"} into a session`,
      intro: `${rows.map((row) => row.code).slice(0, 8).join(", ")}${rows.length > 8 ? "…" : ""}: counted in the session's verifier's name, under its rules. All or none: if the session would not take one, none is counted.`,
      body: picker.element,
      submitLabel: "Count",
      permission: "scanners.manage",
      blocked: picker.empty,
      submit: async () => {
        const values = picker.values();
        requireChoice(values);
        return post("/api/scanners/kept/decide", { event_ids: rows.map((row) => row.event_id), decision: "counted", ...values });
      },
    });
    if (done) decided(done, `${rows.length} kept code${rows.length === 1 ? "" : "s"} counted.`);
  }

  async function setAside() {
    const rows = chosenKept();
    if (!rows.length) return;
    const reason = h("textarea", { id: "aside-reason", name: "reason", required: true });
    const done = await formDialog({
      title: `Set aside ${rows.length} kept code${rows.length === 1 ? "" : "s"}`,
      intro: "They are counted nowhere; the decision and its reason stay in the log.",
      body: [h("label", { for: "aside-reason" }, "Reason (kept in the log)"), reason],
      submitLabel: "Set aside",
      danger: true,
      permission: "scanners.manage",
      submit: () => post("/api/scanners/kept/decide", { event_ids: rows.map((row) => row.event_id), decision: "discarded", reason: reason.value }),
    });
    if (done) decided(done, `${rows.length} kept code${rows.length === 1 ? "" : "s"} set aside.`);
  }

  function decided(answer, text) {
    toast(text);
    state.selected.clear();
    if (Array.isArray(answer.kept)) {
      state.kept = answer.kept;
      drawKept();
    }
    load();
  }

  // -- live ----------------------------------------------------------------------------------------
  function heardCode(message) {
    lastCodes.set(message.writer_id, later(lastCodes.get(message.writer_id), message));
    if (message.outcome === "test") {
      testCodes.set(message.writer_id, [message, ...(testCodes.get(message.writer_id) || [])].slice(0, TEST_CODES));
    }
    const cell = list.querySelector(`td[data-last-code="${CSS.escape(message.writer_id)}"]`);
    if (!cell) return;
    const latest = later(latestOf(state.scanners.find((s) => s.writer_id === message.writer_id) || {}), message);
    cell.dataset.outcome = latest.outcome || "";
    fill(cell, lastCodeCell(latest));
    cell.classList.remove("flash-cell");
    void cell.offsetWidth; // restart the highlight
    cell.classList.add("flash-cell");
  }

  await load();
  const again = throttle(load, 400);
  const stop = ctx.live.listen((kind, message) => {
    if (kind === "scanner") {
      if (message?.type === "code" && message.writer_id) heardCode(message);
      again();
    } else if (kind === "open" || kind === "resync") again();
  });
  const ticker = setInterval(() => {
    // Test mode ends by itself; "3 s ago" ages.
    if (ctx.isCurrent() && !document.querySelector("dialog[open]")) draw();
  }, 15000);
  return () => {
    stop();
    again.cancel();
    clearInterval(ticker);
  };
}
