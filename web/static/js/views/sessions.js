// Sessions: a verifier's own list, and one session's items (what was counted, never a book quantity;
// the box leaves those out of every answer to a verifier, and this page asks for none).

import { enc, get, post } from "../api.js";
import { action, clear, debounce, formDialog, h, stat, statusBadge, table, toast, fill } from "../dom.js";

export async function render(ctx) {
  if (ctx.page === "session") return renderOne(ctx, decodeURIComponent(ctx.params[0]));
  const main = clear(ctx.main);
  const mine = await get("/api/sessions");
  main.append(
    h("h1", {}, "My sessions"),
    h("p", { class: "muted" }, "Count on your handheld; this page shows what the box has received."),
    table(
      ["Session", "Kind", "Status", "Racks", ""],
      mine.map((session) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/sessions/${enc(session.session_id)}` }, `Session …${session.session_id.slice(-6)}`)),
          h("td", {}, session.kind === "recount" ? "blind recount" : "count"),
          h("td", {}, statusBadge(session.status), session.status_reason ? h("div", { class: "muted small" }, session.status_reason) : null),
          h("td", { class: "small" }, session.racks.length ? session.racks.join(", ") : "any rack"),
          h("td", {}, h("a", { href: `#/floor/${enc(session.run_id)}` }, "Floor map")),
        ),
      ),
      { caption: "My sessions", empty: "No session is assigned to you yet." },
    ),
  );
  return null;
}

async function renderOne(ctx, sessionId) {
  const path = `/api/sessions/${enc(sessionId)}`;
  const main = clear(ctx.main);
  const body = h("div", {});
  main.append(body);
  const draw = async () => {
    const session = await get(path);
    if (!ctx.isCurrent()) return;
    const b = session.buckets;
    const buttons = [];
    if (session.status === "SUBMITTED") {
      buttons.push(action(ctx, "sessions.manage", "Approve", () => post(`${path}/approve`).then(() => (toast("Session approved."), draw()), (e) => toast(e.message, "bad"))));
    }
    if (["CREATED", "ASSIGNED", "IN_PROGRESS", "SUBMITTED"].includes(session.status)) {
      buttons.push(
        action(
          ctx,
          "sessions.manage",
          "Void",
          () =>
            formDialog({
              title: "Void the session",
              fields: [{ name: "reason", label: "Reason", required: true }],
              submitLabel: "Void",
              danger: true,
              permission: "sessions.manage",
              submit: (values) => post(`${path}/void`, { reason: values.reason }),
            }).then((done) => done && draw()),
          { class: "ghost" },
        ),
      );
    }
    fill(body,
      h(
        "div",
        { class: "page-head" },
        h("h1", {}, session.kind === "recount" ? "Blind recount " : "Session ", statusBadge(session.status)),
        h("div", { class: "actions" }, buttons, ctx.can("runs.read") ? h("a", { class: "button ghost", href: `#/runs/${enc(session.run_id)}` }, "Run") : null),
      ),
      h("p", { class: "muted" }, `Racks: ${session.racks.length ? session.racks.join(", ") : "any"} · round ${session.round}${session.status_reason ? ` · ${session.status_reason}` : ""}`),
      h(
        "div",
        { class: "cards" },
        stat(String(b.counted), "counted"),
        stat(String(b.uncounted), "still to find"),
        stat(String(b.undirected), "not on the list"),
        stat(String(b.unmatched), "unknown codes"),
        stat(String(b.units), "units"),
      ),
      h("h2", {}, "Items"),
      table(
        ["SKU", "Product", "Counted", "Damaged", "Serials", "Status"],
        session.items.map((item) =>
          h(
            "tr",
            {},
            h("td", {}, item.sku || item.product_id),
            h("td", { class: "small" }, item.name || ""),
            h("td", { class: "num" }, String(item.qty)),
            h("td", { class: "num" }, String(item.damage_qty)),
            h("td", { class: "small" }, item.serials.join(", ")),
            h("td", {}, item.status),
          ),
        ),
        { caption: "Items", empty: "Nothing counted yet." },
      ),
      session.unmatched.length
        ? [h("h2", {}, "Unknown codes"), table(["Code", "Units"], session.unmatched.map((u) => h("tr", {}, h("td", {}, u.code), h("td", { class: "num" }, String(u.qty)))))]
        : null,
    );
  };
  await draw();
  const again = debounce(draw, 800);
  return ctx.live.listen((kind, message) => {
    if ((kind === "scan" || kind === "session") && message.session_id === sessionId) again();
  });
}
