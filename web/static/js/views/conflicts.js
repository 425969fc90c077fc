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
    if (kind === "conflict" || kind === "open" || kind === "resync") again();
    else if (kind === "scan") paced();
  });
  return () => {
    stop();
    again.cancel();
    paced.cancel();
  };
}
