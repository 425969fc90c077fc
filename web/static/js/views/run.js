// One count run: its lifecycle and gates, progress, the four buckets, pace charts, sessions to approve
// or void, and the variance table with tolerances, blind recounts and decisions with reason codes.

import { ApiError, enc, get, post, put } from "../api.js";
import { barChart, lineChart } from "../chart.js";
import {
  action,
  clear,
  debounce,
  describeError,
  formDialog,
  h,
  stat,
  statusBadge,
  table,
  throttle,
  toast,
  fill,
} from "../dom.js";

// The reason codes the box accepts for a decision (appliance/counting/variance.py; a test keeps them equal).
export const REASON_CODES = [
  "COUNT_CONFIRMED",
  "DAMAGED",
  "THEFT",
  "MISPLACED",
  "RECEIVING_ERROR",
  "DATA_ERROR",
  "NOT_FOUND",
  "OTHER",
];
const DECISIONS = [
  ["applied", "Apply the count to stock"],
  ["skipped", "Skip: keep the book quantity"],
  ["zeroed", "Zero: the item is not there"],
];
const OPEN_SESSION = new Set(["CREATED", "ASSIGNED", "IN_PROGRESS", "SUBMITTED"]);
const PAGE_ROWS = 100;

export async function render(ctx) {
  const runId = decodeURIComponent(ctx.params[0]);
  const view = new RunView(ctx, runId);
  await view.load();
  view.mount();
  const again = debounce(() => view.reload(), 600);
  const paced = throttle(() => view.reload({ variance: false }), 5000);
  const stop = ctx.live.listen((kind, message) => {
    if (kind === "scan" || (kind === "rack" && message.run_id === runId)) paced();
    else if (["session", "run", "conflict", "held", "open", "resync"].includes(kind)) again();
  });
  const minutely = setInterval(() => view.reload({ variance: false }), 60000);
  return () => {
    stop();
    again.cancel();
    paced.cancel();
    clearInterval(minutely);
  };
}

class RunView {
  constructor(ctx, runId) {
    this.ctx = ctx;
    this.runId = runId;
    this.base = `/api/runs/${enc(runId)}`;
    this.filters = { outOnly: true, undecided: false, text: "", limit: PAGE_ROWS };
    this.sections = {
      head: h("div", {}),
      gates: h("div", {}),
      progress: h("div", { class: "cards" }),
      buckets: h("div", {}),
      charts: h("div", { class: "grid-2" }),
      sessions: h("div", {}),
      variance: h("div", {}),
    };
  }

  async load({ variance = true } = {}) {
    const [run, board, pace, tolerances] = await Promise.all([
      get(this.base),
      get(`${this.base}/racks`),
      get(`${this.base}/activity?minutes=60`),
      get("/api/tolerances"),
    ]);
    this.run = run;
    this.board = board;
    this.pace = pace;
    this.tolerances = tolerances;
    if (!this.counters) this.counters = await get("/api/counters");
    if (variance || !this.lines) this.lines = await get(`${this.base}/variance`);
  }

  async reload(options) {
    if (!this.ctx.isCurrent()) return;
    try {
      await this.load(options);
    } catch (error) {
      toast(`Could not refresh the run: ${describeError(error)}`, "bad");
      return;
    }
    this.draw();
  }

  mount() {
    const s = this.sections;
    clear(this.ctx.main).append(
      s.head,
      s.gates,
      h("h2", {}, "Progress"),
      s.progress,
      h("h2", {}, "Buckets"),
      h("p", { class: "muted small" }, "Live, over every session that is not void, as scans land."),
      s.buckets,
      h("h2", {}, "Pace"),
      s.charts,
      h("h2", { id: "sessions" }, "Sessions"),
      s.sessions,
      h("h2", { id: "variance" }, "Variance"),
      h("p", { class: "muted small" }, "Counted is over approved sessions only; an approved recount replaces the first count of its SKUs."),
      s.variance,
    );
    this.draw();
  }

  draw() {
    this.drawHead();
    this.drawGates();
    this.drawProgress();
    this.drawBuckets();
    this.drawCharts();
    this.drawSessions();
    this.drawVariance();
  }

  name(userId) {
    const person = (this.counters || []).find((p) => p.user_id === userId);
    return person ? person.display_name : userId || "—";
  }

  async act(path, body, done) {
    try {
      await post(path, body);
      toast(done);
      await this.reload();
    } catch (error) {
      toast(describeError(error), "bad");
    }
  }

  // -- lifecycle ---------------------------------------------------------------------------------
  drawHead() {
    const run = this.run;
    const c = this.ctx;
    const buttons = [];
    if (run.status === "PLANNED") {
      buttons.push(action(c, "runs.manage", "Start run", () => this.act(`${this.base}/start`, undefined, "The run has started; expected quantities are frozen.")));
    }
    if (run.status === "IN_PROGRESS") buttons.push(action(c, "runs.manage", "Complete run", () => this.complete()));
    if (run.status === "COMPLETED") {
      buttons.push(
        action(c, "runs.manage", "Close run", () =>
          formDialog({
            title: "Close the run",
            intro: "A closed run is final: no more decisions, no more changes.",
            submitLabel: "Close run",
            permission: "runs.manage",
            submit: () => post(`${this.base}/close`),
          }).then((done) => done && this.reload()),
        ),
      );
    }
    if (["PLANNED", "IN_PROGRESS", "COMPLETED"].includes(run.status)) {
      buttons.push(
        action(
          c,
          "runs.manage",
          "Cancel run",
          () =>
            formDialog({
              title: "Cancel the run",
              intro: "Its open sessions are voided. This cannot be undone.",
              fields: [{ name: "reason", label: "Reason", required: true }],
              submitLabel: "Cancel run",
              danger: true,
              permission: "runs.manage",
              submit: (values) => post(`${this.base}/cancel`, { reason: values.reason }),
            }).then((done) => done && this.reload()),
          { class: "ghost" },
        ),
      );
    }
    if (["PLANNED", "IN_PROGRESS"].includes(run.status)) {
      buttons.push(action(c, "runs.manage", "Add to scope", () => this.addScope(), { class: "ghost" }));
    }
    fill(this.sections.head,
      h(
        "div",
        { class: "page-head" },
        h("h1", {}, run.name, " ", statusBadge(run.status)),
        h("div", { class: "actions" }, h("a", { class: "button ghost", href: `#/floor/${enc(this.runId)}` }, "Floor map"), buttons),
      ),
      h("p", { class: "muted" }, `${run.kind === "hard" ? "Hard count" : "Directed count"}${run.notes ? ` · ${run.notes}` : ""}${run.status_reason ? ` · ${run.status_reason}` : ""}`),
    );
  }

  uncountedUndecided() {
    if (this.run.kind !== "directed") return [];
    return this.lines.filter((line) => line.counted === 0 && !line.decision);
  }

  drawGates() {
    const run = this.run;
    if (run.status !== "IN_PROGRESS") {
      fill(this.sections.gates);
      return;
    }
    const open = run.sessions.filter((session) => OPEN_SESSION.has(session.status));
    const uncounted = this.uncountedUndecided();
    const item = (ok, text) => h("li", {}, h("span", { class: `badge ${ok ? "ok" : "warn"}` }, ok ? "ready" : "to do"), " ", text);
    fill(this.sections.gates,
      h(
        "section",
        { class: "card", "aria-labelledby": "gates-title" },
        h("h2", { id: "gates-title" }, "Before the run can complete"),
        h(
          "ul",
          {},
          item(!open.length, open.length ? `${open.length} session(s) still open: approve or void them.` : "Every session is approved or void."),
          item(
            !uncounted.length,
            uncounted.length
              ? `${uncounted.length} directed SKU(s) have no approved count: approve the sessions that counted them, or zero or skip them with a reason.`
              : "Every directed SKU is counted or decided.",
          ),
        ),
      ),
    );
  }

  async complete() {
    try {
      await post(`${this.base}/complete`, {});
      toast("The run is completed.");
      await this.reload();
    } catch (error) {
      if (error instanceof ApiError && error.code === "RUN_HAS_OPEN_SESSIONS") {
        const done = await formDialog({
          title: "Complete with open sessions?",
          intro: `${error.details?.sessions?.length ?? "Some"} session(s) are not approved or void. Completing now voids them.`,
          fields: [{ name: "reason", label: "Reason for forcing", required: true }],
          submitLabel: "Complete anyway",
          danger: true,
          permission: "runs.manage",
          submit: (values) => post(`${this.base}/complete`, { force: true, reason: values.reason }),
        });
        if (done) await this.reload();
      } else {
        toast(describeError(error), "bad");
        if (error instanceof ApiError && error.code === "RUN_HAS_UNCOUNTED_SKUS") {
          this.filters = { ...this.filters, outOnly: false, undecided: true, text: "" };
          this.drawVariance();
          document.getElementById("variance")?.scrollIntoView();
        }
      }
    }
  }

  addScope() {
    const split = (text) => text.split(/[\s,;]+/).map((part) => part.trim()).filter(Boolean);
    formDialog({
      title: "Add to the run's scope",
      intro: "SKUs to count (a directed run) and racks to cover; separate them with commas or new lines.",
      fields: [
        { name: "skus", label: "SKUs", type: "textarea" },
        { name: "racks", label: "Racks", type: "textarea" },
      ],
      submitLabel: "Add",
      permission: "runs.manage",
      submit: (values) => post(`${this.base}/scope`, { skus: split(values.skus), racks: split(values.racks) }),
    }).then((done) => done && (toast(`Added ${done.products} SKUs and ${done.racks} racks to the scope.`), this.reload()));
  }

  // -- progress, buckets, charts -------------------------------------------------------------------
  drawProgress() {
    const sessions = this.run.sessions;
    const approved = sessions.filter((s) => s.status === "APPROVED").length;
    const live = sessions.filter((s) => s.status !== "VOID").length;
    const done = this.board.filter((rack) => rack.state === "completed").length;
    const b = this.run.buckets;
    const directed = b.counted + b.uncounted;
    const pct = (part, whole) => (whole ? `${Math.round((100 * part) / whole)} %` : "—");
    const lastMinute = this.pace.scans[this.pace.scans.length - 1] || 0;
    fill(this.sections.progress,
      stat(`${done} / ${this.board.length}`, `racks completed (${pct(done, this.board.length)})`),
      stat(`${b.counted} / ${directed}`, `directed SKUs seen (${pct(b.counted, directed)})`),
      stat(`${approved} / ${live}`, "sessions approved"),
      stat(String(lastMinute), "scans this minute"),
      this.ctx.can("conflicts.read")
        ? h("a", { href: "#/conflicts", class: "card stat" }, h("span", { class: "value" }, String(this.run.open_conflicts)), h("span", { class: "label" }, "open conflicts"))
        : null,
    );
  }

  drawBuckets() {
    const b = this.run.buckets;
    const cards = h(
      "div",
      { class: "cards" },
      stat(String(b.counted), "counted: directed and seen", { dataset: { bucket: "counted" } }),
      stat(String(b.uncounted), "uncounted: directed, not yet seen", { dataset: { bucket: "uncounted" } }),
      stat(String(b.undirected), "undirected: seen, not directed", { dataset: { bucket: "undirected" } }),
      stat(String(b.unmatched), "unmatched: code of no product", { dataset: { bucket: "unmatched" } }),
    );
    const codes = b.unmatched_codes.length
      ? h(
          "div",
          { class: "card" },
          h("h3", {}, "Unmatched codes"),
          h(
            "ul",
            {},
            b.unmatched_codes.map((code) =>
              h(
                "li",
                {},
                h("code", {}, code),
                " ",
                action(this.ctx, "codes.map", "Map to a SKU", () =>
                  formDialog({
                    title: `Map ${code} to a product`,
                    intro: "Counts already made with this code move to the product.",
                    fields: [{ name: "sku", label: "SKU", required: true }],
                    submitLabel: "Map code",
                    permission: "codes.map",
                    submit: (values) => post("/api/codes/map", { code, sku: values.sku }),
                  }).then((done) => done && this.reload()),
                  { class: "small ghost" },
                ),
              ),
            ),
          ),
        )
      : null;
    fill(this.sections.buckets, cards, codes);
  }

  drawCharts() {
    const labels = this.pace.minute_ms.map((ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }));
    fill(this.sections.charts,
      barChart({
        title: "Scans per minute, last hour",
        description: `Scans recorded in this run per minute; ${this.pace.scans.reduce((a, b) => a + b, 0)} in the last hour.`,
        labels,
        values: this.pace.scans,
      }),
      lineChart({
        title: "Racks completed over time",
        description: `Racks standing completed at the end of each minute, out of ${this.pace.racks_total}.`,
        labels,
        values: this.pace.racks_completed,
        max: this.pace.racks_total,
      }),
    );
  }

  // -- sessions ----------------------------------------------------------------------------------
  drawSessions() {
    const c = this.ctx;
    const sessionPath = (session) => `/api/sessions/${enc(session.session_id)}`;
    const reasonDialog = (session, verb, path, danger) =>
      formDialog({
        title: `${verb} the session of ${this.name(session.verifier_id)}`,
        fields: [{ name: "reason", label: "Reason (the verifier sees it)", required: true }],
        submitLabel: verb,
        danger,
        permission: "sessions.manage",
        submit: (values) => post(path, { reason: values.reason }),
      }).then((done) => done && (toast(`Session ${verb.toLowerCase()}: done.`), this.reload()));
    const rows = this.run.sessions.map((session) => {
      const buttons = [];
      if (session.status === "SUBMITTED") {
        buttons.push(
          action(c, "sessions.manage", "Approve", () => this.act(`${sessionPath(session)}/approve`, undefined, `Session of ${this.name(session.verifier_id)} approved.`), {
            class: "small",
            "aria-label": `Approve the session of ${this.name(session.verifier_id)}`,
          }),
          action(c, "sessions.manage", "Send back", () => reasonDialog(session, "Send back", `${sessionPath(session)}/send-back`, false), { class: "small ghost" }),
        );
      }
      if (OPEN_SESSION.has(session.status)) {
        buttons.push(action(c, "sessions.manage", "Void", () => reasonDialog(session, "Void", `${sessionPath(session)}/void`, true), { class: "small ghost" }));
      }
      return h(
        "tr",
        { dataset: { session: session.session_id, status: session.status } },
        h("td", {}, h("a", { href: `#/sessions/${enc(session.session_id)}` }, this.name(session.verifier_id))),
        h("td", {}, session.kind === "recount" ? h("span", { class: "badge info" }, "blind recount") : "count"),
        h("td", { class: "status" }, statusBadge(session.status)),
        h("td", { class: "small" }, session.racks.length ? session.racks.join(", ") : "any rack"),
        h("td", { class: "num" }, String(session.round)),
        h("td", { class: "small" }, session.status_reason || ""),
        h("td", {}, h("div", { class: "actions" }, buttons)),
      );
    });
    const add = ["PLANNED", "IN_PROGRESS"].includes(this.run.status)
      ? action(c, "sessions.manage", "Add a session", () => this.addSession(), { class: "ghost" })
      : null;
    fill(this.sections.sessions,
      table(["Verifier", "Kind", "Status", "Racks", "Round", "Note", "Actions"], rows, { caption: "Sessions", empty: "No session yet." }),
      add ? h("p", {}, add) : null,
    );
  }

  verifierOptions() {
    return this.counters.map((person) => [person.username, `${person.display_name} (${person.role})`]);
  }

  addSession() {
    formDialog({
      title: "Add a session",
      fields: [
        { name: "verifier", label: "Verifier", type: "select", options: this.verifierOptions(), required: true },
        { name: "racks", label: "Racks (optional; any rack when empty)", hint: "Separate rack codes with commas." },
      ],
      submitLabel: "Add session",
      permission: "sessions.manage",
      submit: (values) =>
        post(`${this.base}/sessions`, {
          verifier: values.verifier,
          racks: values.racks.split(/[\s,;]+/).filter(Boolean),
        }),
    }).then((done) => done && (toast("Session added."), this.reload()));
  }

  // -- variance ----------------------------------------------------------------------------------
  tolerance() {
    const store = this.tolerances.find((t) => t.scope === "store");
    if (!store) return "none set: every difference is out of tolerance";
    return `${store.units} units or ${(store.pct_bp / 100).toFixed(2)} % for the store`;
  }

  varianceToolbar() {
    const f = this.filters;
    const redraw = () => {
      this.filters.limit = PAGE_ROWS;
      this.drawVariance();
    };
    const outOnly = h("input", { type: "checkbox", id: "var-out", checked: f.outOnly });
    outOnly.addEventListener("change", () => {
      this.filters.outOnly = outOnly.checked;
      redraw();
    });
    const undecided = h("input", { type: "checkbox", id: "var-undecided", checked: f.undecided });
    undecided.addEventListener("change", () => {
      this.filters.undecided = undecided.checked;
      redraw();
    });
    const search = h("input", { type: "search", id: "var-search", value: f.text, placeholder: "SKU or name" });
    search.addEventListener(
      "input",
      debounce(() => {
        this.filters.text = search.value;
        redraw();
      }, 250),
    );
    this.syncToolbar = () => {
      outOnly.checked = this.filters.outOnly;
      undecided.checked = this.filters.undecided;
      search.value = this.filters.text;
    };
    return h(
      "div",
      { class: "toolbar" },
      h("label", { class: "inline", for: "var-out" }, outOnly, "Only lines out of tolerance"),
      h("label", { class: "inline", for: "var-undecided" }, undecided, "Only lines without a decision"),
      h("div", {}, h("label", { for: "var-search" }, "Find"), search),
    );
  }

  drawVariance() {
    if (!this.varianceParts) {
      this.varianceParts = { note: h("p", {}), toolbar: this.varianceToolbar(), table: h("div", {}) };
      const parts = this.varianceParts;
      fill(this.sections.variance, parts.note, parts.toolbar, parts.table);
    }
    this.syncToolbar();
    const f = this.filters;
    const text = f.text.trim().toLowerCase();
    const lines = this.lines.filter(
      (line) =>
        (!f.outOnly || !line.within_tolerance) &&
        (!f.undecided || !line.decision) &&
        (!text || `${line.sku} ${line.name}`.toLowerCase().includes(text)),
    );
    const out = this.lines.filter((line) => !line.within_tolerance).length;
    const setTolerance = action(this.ctx, "tolerances.write", "Set tolerance", () => this.setTolerance(), { class: "small ghost" });
    const running = this.run.status === "IN_PROGRESS";
    const deciding = ["IN_PROGRESS", "COMPLETED"].includes(this.run.status);
    const rows = lines.slice(0, f.limit).map((line) => {
      const buttons = [];
      if (running && !line.within_tolerance && !OPEN_SESSION.has(line.recount)) {
        buttons.push(action(this.ctx, "runs.manage", "Recount", () => this.recount(line), { class: "small", "aria-label": `Order a blind recount of ${line.sku}` }));
      }
      if (deciding) {
        buttons.push(action(this.ctx, "runs.manage", "Decide", () => this.decide(line), { class: "small ghost", "aria-label": `Decide on ${line.sku}` }));
      }
      const decision = line.decision ? `${line.decision.decision} · ${line.decision.reason_code}${line.decision.note ? ` · ${line.decision.note}` : ""}` : "";
      return h(
        "tr",
        { class: line.within_tolerance ? "" : "out", dataset: { sku: line.sku } },
        h("td", { class: "nowrap" }, line.sku),
        h("td", { class: "small" }, line.name || ""),
        h("td", { class: "num" }, String(line.expected)),
        h("td", { class: "num" }, String(line.counted)),
        h("td", { class: "num" }, line.variance > 0 ? `+${line.variance}` : String(line.variance)),
        h("td", { class: "num" }, `${line.variance_pct} %`),
        h("td", { class: "small" }, `±${line.tolerance.units} u / ${(line.tolerance.pct_bp / 100).toFixed(1)} % (${line.tolerance.scope})`),
        h("td", {}, h("span", { class: `badge ${line.within_tolerance ? "ok" : "bad"}` }, line.within_tolerance ? "within" : "out")),
        h("td", { class: "small recount" }, line.recount ? line.recount.toLowerCase().replaceAll("_", " ") : ""),
        h("td", { class: "small decision" }, decision),
        h("td", {}, h("div", { class: "actions" }, buttons)),
      );
    });
    const more =
      lines.length > f.limit
        ? h(
            "button",
            {
              type: "button",
              class: "ghost",
              onclick: () => {
                this.filters.limit += PAGE_ROWS;
                this.drawVariance();
              },
            },
            `Show ${Math.min(PAGE_ROWS, lines.length - f.limit)} more of ${lines.length - f.limit}`,
          )
        : null;
    fill(this.varianceParts.note, `Tolerance: ${this.tolerance()}. ${out} of ${this.lines.length} lines are out of tolerance. `, setTolerance || "");
    fill(this.varianceParts.table,
      table(
        ["SKU", "Product", "Expected", "Counted", "Variance", "%", "Tolerance", "", "Recount", "Decision", "Actions"],
        rows,
        { caption: "Variance lines", empty: "No line matches." },
      ),
      more || "",
    );
  }

  setTolerance() {
    const store = this.tolerances.find((t) => t.scope === "store") || { units: 0, pct_bp: 0 };
    formDialog({
      title: "Store tolerance",
      intro: "A line is within tolerance when its difference is at most this many units, or at most this percentage of the book quantity. 0 switches a test off.",
      fields: [
        { name: "units", label: "Units", type: "number", min: 0, value: String(store.units), required: true },
        { name: "pct", label: "Percent", type: "number", min: 0, value: String(store.pct_bp / 100), required: true },
      ],
      submitLabel: "Set tolerance",
      permission: "tolerances.write",
      submit: (values) =>
        put("/api/tolerances", { scope: "store", units: Number.parseInt(values.units, 10), pct_bp: Math.round(Number.parseFloat(values.pct) * 100) }),
    }).then((done) => done && this.reload());
  }

  recount(line) {
    formDialog({
      title: `Blind recount of ${line.sku}`,
      intro: "The recount goes to a verifier who did not count these SKUs; they see neither the first count nor the book quantity.",
      fields: [
        { name: "verifier", label: "Verifier", type: "select", options: this.verifierOptions(), required: true },
        { name: "skus", label: "SKUs", value: line.sku, required: true, hint: "More out-of-tolerance SKUs may join, separated by commas." },
        { name: "racks", label: "Racks (optional)" },
      ],
      submitLabel: "Order recount",
      permission: "runs.manage",
      submit: (values) =>
        post(`${this.base}/recounts`, {
          verifier: values.verifier,
          skus: values.skus.split(/[\s,;]+/).filter(Boolean),
          racks: values.racks.split(/[\s,;]+/).filter(Boolean),
        }),
    }).then((done) => done && (toast(`Recount of ${line.sku} ordered.`), this.reload()));
  }

  decide(line) {
    formDialog({
      title: `Decide on ${line.sku}`,
      intro: `${line.name || ""} counted ${line.counted} against ${line.expected}.`,
      fields: [
        { name: "decision", label: "Decision", type: "select", options: DECISIONS, value: line.decision?.decision || (line.counted ? "applied" : "zeroed") },
        { name: "reason_code", label: "Reason code", type: "select", options: REASON_CODES.map((code) => [code, code.replaceAll("_", " ").toLowerCase()]), value: line.decision?.reason_code || "COUNT_CONFIRMED" },
        { name: "note", label: "Note", type: "textarea", value: line.decision?.note || "" },
      ],
      submitLabel: "Record decision",
      permission: "runs.manage",
      submit: (values) => post(`${this.base}/decisions`, { sku: line.sku, ...values }),
    }).then((done) => done && (toast(`Decision on ${line.sku} recorded.`), this.reload()));
  }
}
