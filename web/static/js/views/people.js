// People and their roles (an admin adds them; an auditor reads the list).

import { get, post } from "../api.js";
import { action, clear, formDialog, h, table, toast, fill } from "../dom.js";

const ROLES = [
  ["verifier", "Verifier: counts racks on a handheld; never sees book quantities"],
  ["supervisor", "Supervisor: runs the count, approves sessions, resolves conflicts, orders recounts"],
  ["admin", "Admin: everything a supervisor does, plus people and the store layout"],
  ["auditor", "Auditor: reads everything, changes nothing"],
];

export async function render(ctx) {
  const main = clear(ctx.main);
  const list = h("div", {});
  const add = action(ctx, "users.write", "Add a person", () =>
    formDialog({
      title: "Add a person",
      fields: [
        { name: "username", label: "Username", required: true, hint: "Letters, digits, '-', '_', '.' or '@'." },
        { name: "display_name", label: "Name shown on the floor map" },
        { name: "role", label: "Role", type: "select", options: ROLES.map(([role]) => [role, role]), value: "verifier" },
        { name: "password", label: "First password (at least 8 characters)", type: "password", required: true, autocomplete: "new-password" },
      ],
      submitLabel: "Add person",
      permission: "users.write",
      submit: (values) => post("/api/users", values),
    }).then((made) => made && (toast(`${made.display_name} added as ${made.role}.`), draw())),
  );
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "People and roles"), add),
    list,
    h("h2", {}, "What each role may do"),
    h("ul", {}, ROLES.map(([role, text]) => h("li", { dataset: { role } }, text))),
  );
  async function draw() {
    const people = await get("/api/users");
    fill(list,
      table(
        ["Username", "Name", "Role", "Active"],
        people.map((person) =>
          h(
            "tr",
            { dataset: { user: person.username } },
            h("td", {}, person.username),
            h("td", {}, person.display_name),
            h("td", {}, h("span", { class: "badge info" }, person.role)),
            h("td", {}, person.active ? "yes" : "no"),
          ),
        ),
        { caption: "People", empty: "Nobody yet." },
      ),
    );
  }
  await draw();
  return null;
}
