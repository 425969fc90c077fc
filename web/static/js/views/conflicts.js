// The conflict queue: what the box flagged for a supervisor, in words, with the resolutions each kind
// allows. Accept keeps the data; reject takes the flagged data back (with a reason); edit corrects it.

import { enc, get, post, query } from "../api.js";
import { action, clear, debounce, formDialog, h, throttle, toast, fill } from "../dom.js";

const TITLES = {
  serial_duplicate: "Serial counted twice",
  damage_exceeds: "Damage above the counted quantity",
  mfg_date_impossible: "Impossible manufacturing date",
  barcode_mismatch: "Barcode of another product",
  late_lease: "Scans under a lease that had passed on",
};
const REJECT_MEANS = {
  serial_duplicate: "removes the serial from the item you choose",
  damage_exceeds: "sets the damage back to 0",
  mfg_date_impossible: "clears the date",
  barcode_mismatch: "undoes the scan",
  late_lease: "stops these scans counting (they stay in the log)",
};

function product(conflict, productId) {
  const found = conflict.products?.[productId];
  return found ? `${found.sku} ${found.name}` : productId;
}

function who(conflict, sessionId) {
  return conflict.verifiers?.[sessionId] || "a verifier";
}

export function describe(conflict) {
  switch (conflict.kind) {
    case "serial_duplicate":
      return `Serial ${conflict.serial} is on ${conflict.claims.length} items: ${conflict.claims
        .map((claim) => `${product(conflict, claim.product_id)} (${who(conflict, claim.session_id)})`)
        .join("; ")}.`;
    case "damage_exceeds":
      return `${who(conflict, conflict.session_id)} recorded ${conflict.damage_qty} damaged of ${product(conflict, conflict.product_id)} but counted only ${conflict.qty}.`;
    case "mfg_date_impossible":
      return `${who(conflict, conflict.session_id)} gave ${product(conflict, conflict.product_id)} the manufacturing date ${conflict.mfg_date}.`;
    case "barcode_mismatch":
      return `While verifying ${product(conflict, conflict.product_id)}, ${who(conflict, conflict.session_id)} scanned ${conflict.code}, which is ${product(conflict, conflict.resolves_to)} (${conflict.qty} units).`;
    case "late_lease":
      return `${conflict.qty} units were scanned on rack ${conflict.rack} under lease ${conflict.token} after it had passed to lease ${conflict.current_token}.`;
    default:
      return conflict.conflict_id;
  }
}

function editFields(conflict) {
  switch (conflict.kind) {
    case "damage_exceeds":
      return [
        { name: "qty", label: "Counted quantity", type: "number", min: 0, value: String(conflict.qty) },
        { name: "damage_qty", label: "Damaged quantity", type: "number", min: 0, value: String(conflict.damage_qty) },
      ];
    case "mfg_date_impossible":
      return [{ name: "mfg_date", label: "Manufacturing date", type: "date", value: "", required: true }];
    case "barcode_mismatch":
      return [
        {
          name: "count_as",
          label: "Count these units as",
          type: "select",
          options: [
            ["claimed", `${product(conflict, conflict.product_id)} (what was being verified)`],
            ["scanned", `${product(conflict, conflict.resolves_to)} (what the barcode says)`],
          ],
        },
      ];
    case "serial_duplicate":
      return [claimField(conflict, "Item whose serial to correct"), { name: "serial", label: "Correct serial", required: true }];
    default:
      return null;
  }
}

function claimField(conflict, label) {
  return {
    name: "session_id",
    label,
    type: "select",
    options: conflict.claims.map((claim) => [claim.session_id, `${product(conflict, claim.product_id)} · ${who(conflict, claim.session_id)}`]),
  };
}

function editsOf(conflict, values) {
  switch (conflict.kind) {
    case "damage_exceeds": {
      // Only what was changed: each change is an event of its own in the log.
      const edits = {};
      const qty = Number.parseInt(values.qty, 10);
      const damage = Number.parseInt(values.damage_qty, 10);
      if (qty !== conflict.qty) edits.qty = qty;
      if (damage !== conflict.damage_qty) edits.damage_qty = damage;
      return edits;
    }
    case "mfg_date_impossible":
      return { mfg_date: values.mfg_date };
    case "barcode_mismatch":
      return { count_as: values.count_as };
    case "serial_duplicate":
      return { session_id: values.session_id, serial: values.serial };
    default:
      return {};
  }
}

// -- held events -----------------------------------------------------------------------------------
// What a handheld sent that could not count as it arrived (docs/sync-protocol.md §4.3): stored, left out
// of every count until a supervisor accepts it. Shown in groups: one session, one device, one reason.

const HELD_BECAUSE = {
  SESSION_APPROVED: "after the session was approved",
  SESSION_VOID: "after the session was voided",
  SESSION_NOT_IN_PROGRESS: "while the session was not in progress (not started yet, or already submitted)",
  NOT_ASSIGNED: "into a session given to another device or verifier",
  SESSION_LOCKED: "while another device held the session",
  PERSON_INACTIVE: "in the name of a person who is deactivated or may not count",
};
const HELD_WHAT = {
  "scan.recorded": ["scan", "scans"],
  "scan.undone": ["undone scan", "undone scans"],
  "count.adjusted": ["quantity correction", "quantity corrections"],
  "damage.adjusted": ["damage change", "damage changes"],
  "item.attributes_set": ["change to an item's details", "changes to items' details"],
  "serial.added": ["serial added", "serials added"],
  "serial.removed": ["serial removed", "serials removed"],
};
const HELD_UNITS = new Set(["scan.recorded", "scan.undone", "count.adjusted"]);
const HELD_OUTCOME = {
  open: "not counted",
  accepted: "accepted by a supervisor: counted",
  rejected: "rejected by a supervisor: never counted (kept in the log)",
};
// The page's "Show" filter in the held list's terms.
const HELD_STATUS = { open: "open", resolved: "decided", all: "all" };

function plural(n, [one, many]) {
  return `${n} ${n === 1 ? one : many}`;
}

function listed(parts) {
  return parts.length < 2 ? parts.join("") : `${parts.slice(0, -1).join(", ")} and ${parts.at(-1)}`;
}

function heldGroups(rows) {
  const groups = new Map();
  for (const row of rows) {
    const decision = row.decision || "open";
    const key = [row.session_id, row.writer_id, row.reasons.join("+"), decision].join("|");
    if (!groups.has(key)) groups.set(key, { key, session_id: row.session_id, run_id: row.run_id, writer_name: row.writer_name, reasons: row.reasons, decision, events: [] });
    groups.get(key).events.push(row);
  }
  return [...groups.values()];
}

export function describeHeld(group) {
  const types = new Map();
  for (const event of group.events) types.set(event.type, (types.get(event.type) || 0) + 1);
  const what = listed([...types].map(([type, n]) => plural(n, HELD_WHAT[type] || ["change", "changes"])));
  const counted = group.events.filter((event) => HELD_UNITS.has(event.type));
  const units = counted.length ? ` (${plural(counted.reduce((sum, event) => sum + event.qty, 0), ["unit", "units"])})` : "";
  const racks = [...new Set(group.events.map((event) => event.rack).filter(Boolean))].sort();
  const where = racks.length ? ` on rack${racks.length === 1 ? "" : "s"} ${racks.join(", ")}` : "";
  const why = listed(group.reasons.map((reason) => HELD_BECAUSE[reason] || `(held: ${reason})`));
  return `${group.writer_name || "A device"} sent ${what}${units}${where} ${why} — ${HELD_OUTCOME[group.decision] || group.decision}.`;
}

/** Names for the sessions held events name: "Session of Sam", from the sessions and the people who count. */
async function learnSessions(ctx, known, sessionIds) {
  if (sessionIds.every((id) => known.sessions.has(id))) return;
  const [sessions, people] = await Promise.all([get("/api/sessions"), known.people || (ctx.can("runs.read") ? get("/api/counters") : [])]);
  known.people = people;
  const names = new Map(people.map((person) => [person.user_id, person.display_name || person.username]));
  for (const session of sessions) known.sessions.set(session.session_id, names.get(session.verifier_id) || null);
  for (const id of sessionIds) if (!known.sessions.has(id)) known.sessions.set(id, null); // asked once, not at every draw
}

function sessionLabel(known, runs, group, showRun) {
  const name = known.sessions.get(group.session_id);
  const label = name ? `Session of ${name}` : `Session …${group.session_id.slice(-6)}`;
  const run = showRun ? runs.find((r) => r.run_id === group.run_id) : null;
  return run ? `${label} · ${run.name}` : label;
}

async function decideHeld(group, decision, reason) {
  const ids = group.events.map((event) => event.event_id);
  for (let at = 0; at < ids.length; at += 1000) {
    await post("/api/held/decide", { event_ids: ids.slice(at, at + 1000), decision, reason });
  }
}

function heldSection(ctx, state, runs) {
  const known = { sessions: new Map(), people: null };
  const list = h("div", { "aria-live": "polite" });
  const element = h(
    "section",
    { "aria-labelledby": "held-title" },
    h("h2", { id: "held-title" }, "Held for a supervisor"),
    h("p", { class: "muted" }, "What a handheld sent that could not count as it arrived: it is stored, and counts only once a supervisor accepts it. Rejected, it never counts but stays in the log."),
    list,
  );

  const decided = (done, text) => {
    if (done) {
      toast(text);
      draw();
    }
  };

  function buttons(group) {
    if (group.decision !== "open") return [];
    const n = group.events.length;
    return [
      action(ctx, "conflicts.resolve", "Accept", () =>
        formDialog({
          title: `Accept what ${group.writer_name || "the device"} sent`,
          intro: `${describeHeld(group)} Accepted, ${n === 1 ? "it counts" : "they count"} from now on.`,
          fields: [{ name: "reason", label: "Reason (kept in the log)", hint: "Optional: what you checked, say." }],
          submitLabel: "Accept",
          permission: "conflicts.resolve",
          submit: (values) => decideHeld(group, "accepted", values.reason.trim()),
        }).then((done) => decided(done, `${plural(n, ["held event", "held events"])} accepted.`)),
      ),
      action(
        ctx,
        "conflicts.resolve",
        "Reject",
        () =>
          formDialog({
            title: `Reject what ${group.writer_name || "the device"} sent`,
            intro: `${describeHeld(group)} Rejected, ${n === 1 ? "it never counts; it stays" : "they never count; they stay"} in the log.`,
            fields: [{ name: "reason", label: "Reason (kept in the log)", required: true }],
            submitLabel: "Reject",
            danger: true,
            permission: "conflicts.resolve",
            submit: (values) => decideHeld(group, "rejected", values.reason),
          }).then((done) => decided(done, `${plural(n, ["held event", "held events"])} rejected.`)),
        { class: "danger" },
      ),
    ];
  }

  function card(group) {
    const reasons = [...new Set(group.events.map((event) => event.decision_reason).filter(Boolean))];
    const controls = buttons(group).filter(Boolean);
    return h(
      "li",
      { class: "card conflict held", dataset: { held: group.key, session: group.session_id, reasons: group.reasons.join(" "), decision: group.decision } },
      h(
        "h3",
        {},
        h("a", { href: `#/sessions/${enc(group.session_id)}` }, sessionLabel(known, runs, group, !state.run)),
        " ",
        h("span", { class: `badge ${{ open: "warn", accepted: "ok", rejected: "bad" }[group.decision] || ""}` }, group.decision),
      ),
      h("p", {}, describeHeld(group)),
      reasons.length ? h("p", { class: "small" }, `Reason: ${reasons.join("; ")}`) : null,
      controls.length ? h("div", { class: "actions" }, controls) : null,
    );
  }

  async function draw() {
    const status = HELD_STATUS[state.status] || "open";
    const rows = await get(`/api/held${query({ status, run_id: state.run })}`);
    const groups = heldGroups(rows);
    if (groups.length) await learnSessions(ctx, known, groups.map((group) => group.session_id));
    if (!ctx.isCurrent()) return;
    fill(list,
      h("p", { class: "muted" }, `${plural(rows.length, [`${status === "all" ? "" : `${status} `}held event`, `${status === "all" ? "" : `${status} `}held events`])}.`),
      groups.length ? h("ul", { class: "conflict-list" }, groups.map(card)) : h("p", {}, "Nothing held."),
    );
  }

  return { element, draw };
}

export async function render(ctx) {
  const main = clear(ctx.main);
  const runs = await get("/api/runs");
  const state = { status: "open", run: "" };
  const list = h("div", { "aria-live": "polite" });
  const statusSelect = h(
    "select",
    { id: "conflict-status" },
    [["open", "Open"], ["resolved", "Resolved"], ["all", "All"]].map(([value, label]) => h("option", { value }, label)),
  );
  const runSelect = h(
    "select",
    { id: "conflict-run" },
    h("option", { value: "" }, "All runs"),
    runs.map((run) => h("option", { value: run.run_id }, run.name)),
  );
  const held = heldSection(ctx, state, runs);
  statusSelect.addEventListener("change", () => { state.status = statusSelect.value; draw(); });
  runSelect.addEventListener("change", () => { state.run = runSelect.value; draw(); });
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Conflicts")),
    h("p", { class: "muted" }, "Found by looking at the counts: a condition that clears (the damage corrected, say) leaves the queue by itself."),
    h(
      "div",
      { class: "toolbar" },
      h("div", {}, h("label", { for: "conflict-status" }, "Show"), statusSelect),
      h("div", {}, h("label", { for: "conflict-run" }, "Run"), runSelect),
    ),
    list,
    held.element,
  );

  const resolve = (conflict, body) => post(`/api/conflicts/${enc(conflict.conflict_id)}/resolve`, body);
  const after = (done, text) => {
    if (done) {
      toast(text);
      draw();
    }
  };

  function card(conflict) {
    const title = TITLES[conflict.kind] || conflict.kind;
    const buttons = [];
    if (conflict.status === "open") {
      buttons.push(
        action(ctx, "conflicts.resolve", "Accept", () =>
          formDialog({
            title: `Accept: ${title}`,
            intro: "The data stays as it is and counts.",
            fields: [{ name: "reason", label: "Note (optional)" }],
            submitLabel: "Accept",
            permission: "conflicts.resolve",
            submit: (values) => resolve(conflict, { action: "accept", reason: values.reason }),
          }).then((done) => after(done, "Conflict accepted.")),
        ),
        action(
          ctx,
          "conflicts.resolve",
          "Reject",
          () =>
            formDialog({
              title: `Reject: ${title}`,
              intro: `Rejecting ${REJECT_MEANS[conflict.kind] || "takes the data back"}.`,
              fields: [
                ...(conflict.kind === "serial_duplicate" ? [claimField(conflict, "Remove the serial from")] : []),
                { name: "reason", label: "Reason (kept in the log)", required: true },
              ],
              submitLabel: "Reject",
              danger: true,
              permission: "conflicts.resolve",
              submit: (values) =>
                resolve(conflict, {
                  action: "reject",
                  reason: values.reason,
                  edits: values.session_id ? { session_id: values.session_id } : {},
                }),
            }).then((done) => after(done, "Conflict rejected.")),
          { class: "danger" },
        ),
      );
      const fields = editFields(conflict);
      if (fields) {
        buttons.push(
          action(
            ctx,
            "conflicts.resolve",
            "Edit",
            () =>
              formDialog({
                title: `Correct: ${title}`,
                fields: [...fields, { name: "reason", label: "Note (optional)" }],
                submitLabel: "Save and accept",
                permission: "conflicts.resolve",
                submit: (values) => resolve(conflict, { action: "edit", reason: values.reason, edits: editsOf(conflict, values) }),
              }).then((done) => after(done, "Conflict corrected.")),
            { class: "ghost" },
          ),
        );
      }
    }
    const resolution = conflict.resolution
      ? h("p", { class: "small" }, h("span", { class: "badge ok" }, conflict.resolution.action), ` ${conflict.resolution.reason || ""}`)
      : null;
    return h(
      "li",
      { class: "card conflict", dataset: { conflict: conflict.conflict_id, kind: conflict.kind } },
      h("h2", {}, title, " ", h("span", { class: `badge ${conflict.status === "open" ? "bad" : "ok"}` }, conflict.status)),
      h("p", {}, describe(conflict)),
      conflict.racks?.length ? h("p", { class: "muted small" }, `Rack ${conflict.racks.join(", ")}`) : null,
      resolution,
      buttons.length ? h("div", { class: "actions" }, buttons) : null,
    );
  }

  async function draw() {
    await Promise.all([drawQueue(), held.draw()]);
  }

  async function drawQueue() {
    const queue = await get(`/api/conflicts${query({ status: state.status, run_id: state.run })}`);
    if (!ctx.isCurrent()) return;
    fill(list,
      h("p", { class: "muted" }, `${queue.length} ${state.status === "all" ? "" : `${state.status} `}conflict${queue.length === 1 ? "" : "s"}.`),
      queue.length ? h("ul", { class: "conflict-list" }, queue.map(card)) : h("p", {}, "Nothing to resolve."),
    );
  }

  await draw();
  const again = debounce(draw, 500);
  const paced = throttle(draw, 5000);
  const stop = ctx.live.listen((kind) => {
    // A closing that reaches this box after the events it holds is a "session" message, not a "held" one.
    if (kind === "conflict" || kind === "held" || kind === "session" || kind === "open" || kind === "resync") again();
    else if (kind === "scan") paced();
  });
  return () => {
    stop();
    again.cancel();
    paced.cancel();
  };
}
