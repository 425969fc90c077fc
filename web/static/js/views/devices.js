// Handhelds: pair one (a code to type, or a QR code drawn by the box), see which are alive (last
// heartbeat, queue of scans not yet sent, app version) and revoke one, then decide on what a revoked
// device had counted (its quarantine).

import { enc, get, post, request } from "../api.js";
import { action, ago, clear, debounce, formDialog, h, infoDialog, statusBadge, table, toast, fill } from "../dom.js";

const OFFLINE_AFTER_MS = 2 * 60 * 1000;

export async function render(ctx) {
  const main = clear(ctx.main);
  const list = h("div", {});
  const quarantine = h("div", {});
  const pair = action(ctx, "devices.manage", "Pair a handheld", () => pairDialog());
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Devices"), pair),
    h("p", { class: "muted" }, "Handhelds send a heartbeat every 20 seconds; one silent for two minutes shows as offline."),
    list,
    h("h2", {}, "Quarantine"),
    h("p", { class: "muted small" }, "Counts of a revoked device in sessions not yet approved wait here for a decision."),
    quarantine,
  );

  let devices = [];
  let held = [];
  const draw = () => {
    const now = Date.now();
    fill(list,
      table(
        ["Device", "Status", "Last heartbeat", "Queue", "Version", "Address", "Events", ""],
        devices.map((device) => {
          const offline = !device.last_seen || now - device.last_seen > OFFLINE_AFTER_MS;
          const status =
            device.status === "revoked"
              ? h("span", { class: "badge bad" }, "revoked")
              : h("span", { class: `badge ${offline ? "warn" : "ok"}` }, offline ? "offline" : "online");
          return h(
            "tr",
            { dataset: { device: device.writer_id } },
            h("td", {}, device.name, h("div", { class: "muted small" }, device.writer_id)),
            h("td", {}, status, device.revoke_reason ? h("div", { class: "muted small" }, device.revoke_reason) : null),
            h("td", {}, ago(device.last_seen, now)),
            h("td", { class: "num" }, device.queue_depth == null ? "—" : String(device.queue_depth)),
            h("td", {}, device.app_version || "—"),
            h("td", {}, device.address || "—"),
            h("td", { class: "num" }, String(device.head_seq)),
            h(
              "td",
              {},
              h(
                "div",
                { class: "actions" },
                device.status !== "revoked"
                  ? [
                      action(ctx, "devices.manage", "Rename", () => rename(device), { class: "small ghost" }),
                      action(ctx, "devices.manage", "Revoke", () => revoke(device), { class: "small danger" }),
                    ]
                  : null,
              ),
            ),
          );
        }),
        { caption: "Paired devices", empty: "No handheld is paired yet." },
      ),
    );
    fill(quarantine,
      table(
        ["Device", "Session", "Session status", "Units", "Decision", ""],
        held.map((row) =>
          h(
            "tr",
            {},
            h("td", {}, row.device),
            h("td", {}, h("a", { href: `#/sessions/${enc(row.session_id)}` }, row.session_id.slice(-6))),
            h("td", {}, statusBadge(row.session_status)),
            h("td", { class: "num" }, String(row.units)),
            h("td", {}, row.decision),
            h(
              "td",
              {},
              h(
                "div",
                { class: "actions" },
                action(ctx, "devices.manage", "Accept", () => decide(row, "accepted"), { class: "small" }),
                action(ctx, "devices.manage", "Reject", () => decide(row, "rejected"), { class: "small danger" }),
              ),
            ),
          ),
        ),
        { caption: "Quarantine", empty: "Nothing in quarantine." },
      ),
    );
  };

  const load = async () => {
    [devices, held] = await Promise.all([get("/api/devices"), get("/api/quarantine")]);
    if (ctx.isCurrent()) draw();
  };

  function rename(device) {
    formDialog({
      title: `Rename ${device.name}`,
      fields: [{ name: "name", label: "Name", value: device.name, required: true }],
      submitLabel: "Rename",
      permission: "devices.manage",
      submit: (values) => request("PATCH", `/api/devices/${enc(device.writer_id)}`, { name: values.name }),
    }).then((done) => done && load());
  }

  function revoke(device) {
    formDialog({
      title: `Revoke ${device.name}`,
      intro: "The device is refused at once. Its counts in sessions not yet approved go to quarantine.",
      fields: [{ name: "reason", label: "Reason", required: true }],
      submitLabel: "Revoke",
      danger: true,
      permission: "devices.manage",
      submit: (values) => post(`/api/devices/${enc(device.writer_id)}/revoke`, { reason: values.reason }),
    }).then((done) => done && (toast(`${device.name} revoked.`), load()));
  }

  function decide(row, decision) {
    formDialog({
      title: `${decision === "accepted" ? "Accept" : "Reject"} the counts of ${row.device}`,
      fields: [{ name: "reason", label: "Reason", required: true }],
      submitLabel: decision === "accepted" ? "Accept" : "Reject",
      danger: decision === "rejected",
      permission: "devices.manage",
      submit: (values) =>
        post("/api/quarantine/decide", { writer_id: row.writer_id, session_id: row.session_id, decision, reason: values.reason }),
    }).then((done) => done && load());
  }

  async function pairDialog() {
    let made;
    try {
      made = await post("/api/devices/pairing-codes");
    } catch (error) {
      toast(String(error.message), "bad");
      return;
    }
    const image = await request("GET", `/api/devices/pairing-qr?code=${enc(made.code)}`, undefined, { blob: true });
    const url = URL.createObjectURL(image);
    const left = h("p", { class: "muted", role: "timer" });
    const tick = () => {
      const seconds = Math.max(0, Math.round((made.expires_at - Date.now()) / 1000));
      left.textContent = seconds ? `Valid for ${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")} more, for one device.` : "This code has expired; make a new one.";
    };
    tick();
    const timer = setInterval(tick, 1000);
    const dialog = infoDialog(
      "Pair a handheld",
      h(
        "div",
        { class: "pairing" },
        h("img", { src: url, alt: `QR code for pairing code ${made.code}`, width: 220, height: 220 }),
        h(
          "div",
          {},
          h("p", {}, "On the handheld, scan the QR code, or type this code:"),
          h("p", { class: "pair-code", dataset: { pairingCode: made.code } }, made.code),
          left,
          h(
            "p",
            { class: "muted" },
            "A phone or handheld without the app opens the scanning page at ",
            h("b", { dataset: { handheldUrl: "" } }, `${location.origin}/handheld/`),
            " and pairs there (Scan QR code uses its camera).",
          ),
        ),
      ),
    );
    dialog.addEventListener("close", () => {
      clearInterval(timer);
      URL.revokeObjectURL(url);
      load();
    });
  }

  await load();
  const again = debounce(load, 500);
  const stop = ctx.live.listen((kind, message) => {
    if (kind === "presence") {
      const device = devices.find((d) => d.writer_id === message.writer_id);
      if (device) {
        device.last_seen = Date.now();
        device.queue_depth = message.queue_depth;
        draw();
      } else again();
    } else if (kind === "device" || kind === "open" || kind === "resync") again();
  });
  const ticker = setInterval(draw, 10000);
  return () => {
    stop();
    again.cancel();
    clearInterval(ticker);
  };
}
