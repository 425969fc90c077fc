// The count runs of the store, newest first, and planning a new one.

import { enc, get, post } from "../api.js";
import { action, clear, formDialog, h, statusBadge, table, toast, fill } from "../dom.js";

export async function render(ctx) {
  const main = clear(ctx.main);
  const plan = action(ctx, "runs.manage", "Plan a run", async () => {
    const made = await formDialog({
      title: "Plan a count run",
      permission: "runs.manage",
      submitLabel: "Plan run",
      fields: [
        { name: "name", label: "Name", required: true },
        {
          name: "kind",
          label: "Kind",
          type: "select",
          value: "directed",
          options: [
            ["directed", "Directed: a list of SKUs and racks"],
            ["hard", "Hard count: everything in the store"],
          ],
        },
        { name: "notes", label: "Notes", type: "textarea" },
      ],
      submit: (values) => post("/api/runs", values),
    });
    if (made) {
      toast(`Run "${made.name}" planned.`);
      ctx.go(`#/runs/${enc(made.run_id)}`);
    }
  });
  const list = h("div", {});
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Count runs"), plan),
    h("p", { class: "muted" }, "A run is one count of the store. Its totals and variance count approved sessions only."),
    list,
  );
  const draw = async () => {
    const runs = await get("/api/runs");
    fill(list,
      table(
        ["Run", "Kind", "Status", "Notes", ""],
        runs.map((run) =>
          h(
            "tr",
            {},
            h("td", {}, h("a", { href: `#/runs/${enc(run.run_id)}` }, run.name || run.run_id)),
            h("td", {}, run.kind),
            h("td", {}, statusBadge(run.status), run.status_reason ? h("div", { class: "muted small" }, run.status_reason) : null),
            h("td", { class: "small" }, run.notes || ""),
            h("td", {}, h("a", { href: `#/floor/${enc(run.run_id)}` }, "Floor map")),
          ),
        ),
        { caption: "Count runs", empty: "No run yet." },
      ),
    );
  };
  await draw();
  return ctx.live.listen((kind) => {
    if (kind === "run") draw();
  });
}
