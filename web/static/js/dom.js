// Small DOM helpers: elements from data (text is always set as text, never parsed as HTML), dialogs
// that keep focus where a keyboard user expects it, toasts, and the few formats the pages share.

import { ApiError } from "./api.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value" && "value" in el) el.value = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** Replace an element's children; like ``h``, it skips null and false and flattens arrays. */
export function fill(el, ...children) {
  return append(clear(el), children);
}

/** A control that changes something on the box. It is left out entirely for a person whose role lacks
 * the permission (the box would refuse anyway); ``data-action`` marks it, which the tests rely on. */
export function action(ctx, permission, label, onclick, attrs = {}) {
  if (!ctx.can(permission)) return null;
  return h("button", { type: "button", ...attrs, dataset: { action: permission, ...(attrs.dataset || {}) }, onclick }, label);
}

let toastRoot = null;

export function toast(message, kind = "") {
  toastRoot ||= document.getElementById("toasts");
  const item = h("div", { class: `toast ${kind}` }, message);
  toastRoot.append(item);
  setTimeout(() => item.remove(), kind === "bad" ? 8000 : 4000);
}

export function describeError(error) {
  if (error instanceof ApiError) {
    const detail = error.details && typeof error.details === "object" ? summariseDetails(error.details) : "";
    return `${error.message}${detail ? ` (${detail})` : ""} [${error.code}]`;
  }
  return String(error?.message || error);
}

function summariseDetails(details) {
  if (Array.isArray(details)) return details.slice(0, 8).join(", ");
  if (Array.isArray(details.skus)) return `${details.count ?? details.skus.length} SKUs: ${details.skus.slice(0, 8).join(", ")}`;
  if (Array.isArray(details.sessions)) return `${details.sessions.length} open sessions`;
  if (details.field) return `field: ${details.field}`;
  return "";
}

/**
 * A modal form. ``fields``: [{name, label, type ("text", "number", "select", "textarea", "date",
 * "password"), options: [[value, label]], required, value, hint}]; ``body``: controls the caller made
 * itself, after the fields (a rack list that follows a chosen session, say); ``blocked``: nothing to
 * submit yet. ``submit(values)`` runs the action; if it throws, the error is shown in the dialog and it
 * stays open. Resolves with the action's result, or null when cancelled. Focus returns to the control
 * that opened it.
 */
export function formDialog({
  title,
  intro,
  fields = [],
  body = null,
  submitLabel = "Save",
  danger = false,
  blocked = false,
  submit,
  permission,
}) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const errorBox = h("p", { class: "error-text", role: "alert" });
    const inputs = {};
    const rows = fields.map((field, index) => {
      const id = `dlg-${field.name}-${index}`;
      let control;
      if (field.type === "select") {
        control = h(
          "select",
          { id, name: field.name, required: field.required },
          field.options.map(([value, label]) => h("option", { value, selected: value === field.value }, label)),
        );
      } else if (field.type === "textarea") {
        control = h("textarea", { id, name: field.name, required: field.required }, field.value ?? "");
      } else {
        control = h("input", {
          id,
          name: field.name,
          type: field.type || "text",
          required: field.required,
          value: field.value ?? "",
          min: field.min,
          autocomplete: field.autocomplete || "off",
        });
      }
      inputs[field.name] = control;
      return h(
        "div",
        {},
        h("label", { for: id }, field.label),
        control,
        field.hint ? h("p", { class: "muted small" }, field.hint) : null,
      );
    });
    const confirm = h(
      "button",
      { type: "submit", class: danger ? "danger" : "", disabled: blocked, dataset: { action: permission || "dialog" } },
      submitLabel,
    );
    const cancel = h("button", { type: "button", class: "ghost" }, "Cancel");
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", {}, title),
      intro ? (intro instanceof Node ? intro : h("p", {}, intro)) : null,
      rows,
      body,
      errorBox,
      h("div", { class: "actions" }, cancel, confirm),
    );
    const dialog = h("dialog", { "aria-label": title }, form);
    let result = null;
    const done = () => {
      dialog.close();
    };
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(result);
    });
    cancel.addEventListener("click", done);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const values = {};
      for (const [name, control] of Object.entries(inputs)) values[name] = control.value;
      confirm.disabled = true;
      errorBox.textContent = "";
      try {
        result = (await submit(values)) ?? true;
        done();
      } catch (error) {
        errorBox.textContent = describeError(error);
        confirm.disabled = false;
      }
    });
    document.body.append(dialog);
    dialog.showModal();
    (form.querySelector("input, select, textarea") || confirm).focus();
  });
}

/** A read-only modal (details of a rack, say) with optional action buttons. */
export function infoDialog(title, body, buttons = []) {
  const opener = document.activeElement;
  const close = h("button", { type: "button", class: "ghost" }, "Close");
  const dialog = h(
    "dialog",
    { "aria-label": title },
    h("form", { method: "dialog" }, h("h2", {}, title), body, h("div", { class: "actions" }, buttons, close)),
  );
  close.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener && opener.isConnected) opener.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  close.focus();
  return dialog;
}

export function table(headers, rows, { caption, empty = "Nothing to show." } = {}) {
  const head = h("thead", {}, h("tr", {}, headers.map((label) => h("th", { scope: "col" }, label))));
  const body = h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, empty)));
  return h("div", { class: "table-wrap" }, h("table", {}, caption ? h("caption", { class: "visually-hidden" }, caption) : null, head, body));
}

export function stat(value, label, attrs = {}) {
  return h("div", { class: "card stat", ...attrs }, h("span", { class: "value" }, value), h("span", { class: "label" }, label));
}

export const STATUS_BADGE = {
  PLANNED: "info",
  IN_PROGRESS: "warn",
  COMPLETED: "ok",
  CLOSED: "ok",
  CANCELLED: "bad",
  CREATED: "",
  ASSIGNED: "info",
  SUBMITTED: "warn",
  APPROVED: "ok",
  VOID: "bad",
};

export function statusBadge(status) {
  return h("span", { class: `badge ${STATUS_BADGE[status] ?? ""}` }, String(status || "").replace("_", " ").toLowerCase());
}

export function shortId(id) {
  return id ? String(id).slice(-6) : "";
}

export function when(ms) {
  if (!ms) return "never";
  return new Date(ms).toLocaleString([], { dateStyle: "short", timeStyle: "medium" });
}

export function ago(ms, now = Date.now()) {
  if (!ms) return "never";
  const seconds = Math.max(0, Math.round((now - ms) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 90) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 36) return `${hours} h ago`;
  return when(ms);
}

export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

/** Runs ``fn`` at most once per ``ms`` (the trailing call included), for refreshes driven by scans. */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  const wrapped = () => {
    const wait = last + ms - Date.now();
    if (wait <= 0) {
      last = Date.now();
      fn();
    } else if (!timer) {
      timer = setTimeout(() => {
        timer = null;
        last = Date.now();
        fn();
      }, wait);
    }
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}
