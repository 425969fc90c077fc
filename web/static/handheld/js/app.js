// The verifier's page: pair, log in, pick a session, claim a rack, scan. Every change is an event
// committed to the device's queue before the page shows it (queue.js); the sender moves the queue to the
// box whenever it is reachable (sender.js). The page works with the box out of reach: its shell comes
// from the service worker, the sessions, catalog and counts from IndexedDB.

import * as db from "./db.js";
import * as queue from "./queue.js";
import { ApiError, device, link, net, pair, person, setBearer } from "./api.js";
import { makeKeyPair, publicKeyHex } from "./chain.js";
import { CatalogIndex } from "./barcodes.js";
import { Heartbeat, Sender } from "./sender.js";
import { Tally } from "./tally.js";
import { signal, unlock } from "./feedback.js";
import { readCode } from "./camera.js";
import * as photo from "./photo.js";

const $ = (id) => document.getElementById(id);
const STOP_SCANNING = new Set(["APPROVED", "VOID", "SUBMITTED"]);

const app = {
  identity: null, // {writer_id, device_token, keys, name, store_id}
  login: null, // {token, user, expires_at}
  sessions: [],
  session: null,
  work: null, // {session_id, run_id, rack, rack_id, token, state}
  catalog: new CatalogIndex({ products: [], codes: [] }),
  tally: null,
  recent: [], // the latest scans of this rack, newest first
  last: null, // the code the verifier scanned last: {code, product_id}
  sender: new Sender(),
  heartbeat: null,
  feedbackMs: [], // the latest scans' time from the Enter key to committed and shown
};
app.heartbeat = new Heartbeat(app.sender);
window.__handheld = app; // for a field tech's console and the page's tests

// -- views --------------------------------------------------------------------------------------------
function show(view) {
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  document.body.dataset.view = view;
  if (view === "count") focusScan();
}

function fail(where, error) {
  const text = error instanceof ApiError ? `${error.message} (${error.code})` : String(error.message || error);
  $(where).textContent = text;
  return text;
}

function clearError(where) {
  $(where).textContent = "";
}

for (const button of document.querySelectorAll("[data-go]")) {
  button.addEventListener("click", () => (button.dataset.go === "sessions" ? openSessions() : openSession(app.session.session_id)));
}

// -- the banner ---------------------------------------------------------------------------------------
function age(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

async function refreshBanner() {
  const stats = await queue.stats();
  const reachable = link.reachable;
  $("link").dataset.state = reachable === null ? "unknown" : reachable ? "online" : "offline";
  $("link-text").textContent =
    reachable === null ? "Connecting…" : reachable ? "Box connected" : `Offline for ${age(link.since)} — scans are kept here`;
  $("queue").dataset.pending = String(stats.pending);
  $("queue-depth").textContent = String(stats.pending);
  $("queue-age").textContent = stats.oldestMs ? ` · oldest ${age(stats.oldestMs)}` : "";
  const sender = app.sender;
  $("sender-state").textContent =
    sender.state === "waiting" && sender.nextRetryAt ? `retry in ${Math.max(0, Math.ceil((sender.nextRetryAt - Date.now()) / 1000))} s` : "";
  $("sender-stopped").hidden = sender.state !== "stopped";
  if (sender.state === "stopped") {
    const error = sender.stoppedFor || {};
    $("sender-stopped-text").textContent = `Sending stopped: ${error.message || "the box refused a record"} (${error.code || "?"}). A supervisor must look; nothing is lost.`;
    $("sender-drop").hidden = !queue.DROPPABLE.has(error.code);
  }
  document.body.dataset.pending = String(stats.pending);
}

net.addEventListener("change", refreshBanner);
queue.changes.addEventListener("answered", refreshBanner);
queue.changes.addEventListener("answered", () => refreshRecentStates());
app.sender.addEventListener("change", refreshBanner);
addEventListener("offline", refreshBanner);
$("sender-resume").addEventListener("click", () => app.sender.resume());
// A record refused for what it says (a session or product that does not exist on the box) can never be
// accepted: a supervisor sets it aside on the device, where it stays listed, and the records after it go.
$("sender-drop").addEventListener("click", async () => {
  const [refused] = await queue.failed();
  if (!refused || !confirm(`Set aside the refused record #${refused.seq} (${refused.error?.code})? It stays listed on this device.`)) return;
  await queue.dropAndRechain(app.identity.writer_id, refused.seq);
  app.sender.stoppedFor = null;
  app.sender.retryNow();
  if (app.session) await loadSession(app.session.session_id); // its counts without the record set aside
  if (document.body.dataset.view === "count") renderCount();
});
setInterval(refreshBanner, 1000);

// -- pairing ------------------------------------------------------------------------------------------
function pairingCode(text) {
  // A QR code carries stockverify://pair?code=…; a typed code is the code itself.
  try {
    const url = new URL(text);
    return url.searchParams.get("code") || text;
  } catch {
    return text.trim();
  }
}

$("pair-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError("pair-error");
  try {
    const keys = await makeKeyPair();
    const answer = await pair(pairingCode($("pair-code").value), $("pair-name").value.trim(), await publicKeyHex(keys.publicKey));
    const identity = {
      writer_id: answer.writer_id,
      device_token: answer.device_token,
      store_id: answer.store_id,
      node_id: answer.node_id,
      name: $("pair-name").value.trim(),
      keys,
      paired_at: Date.now(),
    };
    await db.setMeta("device", identity);
    await queue.observeServerHlc(BigInt(answer.server_hlc));
    await startDevice(identity);
    show("login");
  } catch (error) {
    fail("pair-error", error);
  }
});

$("pair-camera").addEventListener("click", async () => {
  const code = await readCode($("camera-dialog"));
  if (code) $("pair-code").value = pairingCode(code);
});

async function startDevice(identity) {
  app.identity = identity;
  $("login-device").textContent = `This handheld: ${identity.name}`;
  app.sender.start(identity);
  app.heartbeat.start(identity);
  refreshCatalog();
}

/** The product master, so that codes resolve and names show with the box out of reach. */
async function refreshCatalog() {
  const cached = await db.getMeta("catalog");
  if (cached) app.catalog = new CatalogIndex(cached);
  try {
    const fresh = await device("GET", "/api/sync/catalog", app.identity.device_token, undefined, { etag: cached?.version });
    if (fresh) {
      await db.setMeta("catalog", fresh);
      app.catalog = new CatalogIndex(fresh);
    }
  } catch {
    // offline: the cached catalog serves
  }
}

// -- logging in ---------------------------------------------------------------------------------------
$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError("login-error");
  try {
    const answer = await person("POST", "/api/auth/login", { username: $("login-user").value.trim(), password: $("login-pass").value });
    app.login = { token: answer.token, user: answer.user, expires_at: answer.expires_at };
    await db.setMeta("login", app.login);
    setBearer(answer.token);
    $("login-pass").value = "";
    await openSessions();
  } catch (error) {
    fail("login-error", error);
  }
});

$("logout").addEventListener("click", async () => {
  try {
    await person("POST", "/api/auth/logout");
  } catch {
    // the token ends here either way
  }
  app.login = null;
  setBearer(null);
  await db.deleteMeta("login");
  await db.deleteMeta("work");
  show("login");
});

// -- sessions -----------------------------------------------------------------------------------------
async function openSessions() {
  show("sessions");
  $("sessions-note").textContent = "";
  try {
    app.sessions = await person("GET", "/api/sessions");
    await db.setMeta("sessions", { at: Date.now(), list: app.sessions });
  } catch (error) {
    if (error.status === 401) return loggedOut();
    const cached = await db.getMeta("sessions");
    app.sessions = cached?.list ?? [];
    $("sessions-note").textContent = `The box is out of reach: the list as of ${cached ? new Date(cached.at).toLocaleTimeString() : "never"}.`;
  }
  const list = $("sessions-list");
  list.replaceChildren();
  const open = app.sessions.filter((s) => !["APPROVED", "VOID"].includes(s.status));
  if (!open.length) list.append(Object.assign(document.createElement("li"), { className: "muted", textContent: "No sessions are assigned to you." }));
  for (const session of open) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "card";
    button.dataset.session = session.session_id;
    button.innerHTML = `<b></b><span class="pill"></span><small></small>`;
    button.querySelector("b").textContent = `${session.kind === "recount" ? "Recount" : "Count"} · ${session.racks.length} rack${session.racks.length === 1 ? "" : "s"}`;
    button.querySelector(".pill").textContent = session.status.replace("_", " ").toLowerCase();
    button.querySelector("small").textContent = session.racks.join(", ");
    button.addEventListener("click", () => openSession(session.session_id));
    item.append(button);
    list.append(item);
  }
}

function loggedOut() {
  app.login = null;
  setBearer(null);
  db.deleteMeta("login");
  $("login-error").textContent = "Your login has ended; please log in again. Your scans are kept.";
  show("login");
}

async function loadSession(sessionId) {
  let session = app.sessions.find((s) => s.session_id === sessionId) ?? null;
  try {
    session = await person("GET", `/api/sessions/${encodeURIComponent(sessionId)}`);
    await db.setMeta(`session:${sessionId}`, session);
  } catch (error) {
    if (error.status === 401) loggedOut();
    session = session ?? (await db.getMeta(`session:${sessionId}`));
  }
  app.session = session;
  app.heartbeat.sessionId = sessionId;
  // Refresh before write (docs/sync-protocol.md §2.8): the box's counts, plus this device's later events.
  let pulled = await db.getMeta(`pull:${sessionId}`);
  try {
    pulled = await device("GET", `/api/sync/pull?session_id=${encodeURIComponent(sessionId)}`, app.identity.device_token);
    await db.setMeta(`pull:${sessionId}`, pulled);
  } catch {
    // out of reach: the last pull and the queue serve
  }
  app.tally = new Tally((code) => app.catalog.resolve(code), pulled);
  const events = await queue.ofSession(sessionId);
  for (const event of events) app.tally.apply(event);
  app.recent = events.filter((e) => e.type === "scan.recorded").slice(-30).reverse();
  return session;
}

async function openSession(sessionId) {
  clearError("session-error");
  const session = await loadSession(sessionId);
  show("session");
  $("session-title").textContent = `${session.kind === "recount" ? "Recount" : "Count"} · round ${session.round ?? 1}`;
  $("session-status").textContent = `${session.status.replace("_", " ").toLowerCase()}${session.status_reason ? ` — ${session.status_reason}` : ""}`;
  $("session-totals").textContent = `${app.tally.units} units · ${app.tally.products} products · ${app.tally.damaged} damaged`;
  const actions = $("session-actions");
  actions.replaceChildren();
  if (session.status === "ASSIGNED") actions.append(button("Start counting", "session-start", () => startSession()));
  if (session.status === "IN_PROGRESS") actions.append(button("Submit session", "session-submit", () => submitSession()));
  const list = $("racks-list");
  list.replaceChildren();
  session.racks.forEach((code, i) => {
    const item = document.createElement("li");
    const mine = app.work?.session_id === session.session_id && app.work.rack === code;
    const label = mine ? `Continue ${code}` : `Count ${code}`;
    const claim = button(label, `rack-${code}`, () => claimRack(code, session.rack_ids[i]), "card");
    claim.disabled = session.status !== "IN_PROGRESS"; // scans count only in a started session
    item.append(claim);
    list.append(item);
  });
  await showFlags();
}

function button(text, id, onClick, className = "") {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.dataset.action = id;
  element.className = className;
  element.addEventListener("click", onClick);
  return element;
}

async function startSession() {
  try {
    await person("POST", `/api/sessions/${app.session.session_id}/start`);
    await openSession(app.session.session_id);
  } catch (error) {
    fail("session-error", error);
  }
}

async function submitSession() {
  const waiting = (await queue.pending()).filter((e) => e.payload.session_id === app.session.session_id);
  if (waiting.length) {
    $("session-error").textContent = `${waiting.length} records of this session are still waiting for the box; submit once they are sent.`;
    return;
  }
  try {
    await person("POST", `/api/sessions/${app.session.session_id}/submit`);
    await openSessions();
  } catch (error) {
    fail("session-error", error);
  }
}

/** Held and flagged records of the session: what a supervisor will look at, shown to the verifier too. */
async function showFlags() {
  if (!app.session) return;
  const events = (await queue.ofSession(app.session.session_id)).filter((e) => e.held || e.conflict || e.state === "failed");
  $("flags-title").hidden = !events.length;
  const list = $("flags-list");
  list.replaceChildren();
  for (const event of events.slice(-50).reverse()) {
    const item = document.createElement("li");
    item.dataset.kind = event.state === "failed" ? "failed" : event.conflict ? "conflict" : "held";
    const what = event.payload.code ?? event.payload.serial ?? event.type;
    const why = event.state === "failed" ? `refused: ${event.error?.code}` : event.conflict ? `flagged: ${event.conflict.kind}` : `held: ${event.held}`;
    item.textContent = `${what} — ${why}`;
    list.append(item);
  }
}

// -- racks: claim, pause, resume, finish --------------------------------------------------------------
async function claimRack(code, rackId) {
  clearError("session-error");
  const session = app.session;
  const work = await db.getMeta("work");
  if (work?.session_id === session.session_id && work.rack === code && work.token != null) {
    app.work = work;
    return openCount();
  }
  try {
    await person("POST", `/api/sessions/${session.session_id}/lock`, { device_id: app.identity.writer_id });
    const claim = await person("POST", `/api/runs/${session.run_id}/racks/${encodeURIComponent(code)}/claim`, {
      session_id: session.session_id,
      device_id: app.identity.writer_id,
    });
    try {
      await person("POST", `/api/runs/${session.run_id}/racks/${encodeURIComponent(code)}/start`);
    } catch (error) {
      if (error.code !== "RACK_INVALID_TRANSITION") throw error;
    }
    app.work = { session_id: session.session_id, run_id: session.run_id, rack: code, rack_id: rackId, token: claim.token, state: "active" };
    await db.setMeta("work", app.work);
    await openCount();
  } catch (error) {
    fail("session-error", error.status === 0 ? new Error("Claiming a rack needs the box; it is out of reach. Try again in a moment.") : error);
  }
}

async function rackMove(move) {
  clearError("count-error");
  const work = app.work;
  try {
    const answer = await person("POST", `/api/runs/${work.run_id}/racks/${encodeURIComponent(work.rack)}/${move}`);
    work.state = answer.state ?? work.state;
    await db.setMeta("work", work);
    if (move === "resume") await loadSession(work.session_id);
    return true;
  } catch (error) {
    fail("count-error", error);
    return false;
  }
}

$("rack-pause").addEventListener("click", async () => {
  const move = app.work.state === "paused" ? "resume" : "pause";
  if (await rackMove(move)) {
    renderCount();
    focusScan();
  }
});

$("rack-finish").addEventListener("click", async () => {
  if (await rackMove("finish")) {
    await db.deleteMeta("work");
    app.work = null;
    await openSession(app.session.session_id);
  }
});

// -- counting -----------------------------------------------------------------------------------------
async function openCount() {
  if (!app.session || app.session.session_id !== app.work.session_id) await loadSession(app.work.session_id);
  show("count");
  renderCount();
}

function productName(productId) {
  const product = app.catalog.product(productId);
  return product ? `${product.name}` : app.tally.items.get(productId)?.name ?? productId;
}

function renderCount() {
  const { work, tally, session } = app;
  $("hud-rack").textContent = `Rack ${work.rack}`;
  $("hud-lease").textContent = work.lost ? "lease lost" : work.state === "paused" ? "paused" : "lease held";
  $("hud-lease").title = `fencing token ${work.token}`;
  $("hud-lease").dataset.state = work.lost ? "lost" : work.state;
  $("hud-session").textContent = `${session.kind === "recount" ? "Recount" : "Count"} · ${session.status.replace("_", " ").toLowerCase()}`;
  $("rack-units").textContent = String(tally.racks.get(work.rack_id) ?? 0);
  $("session-units").textContent = String(tally.units);
  $("session-products").textContent = String(tally.products);
  $("rack-pause").textContent = work.state === "paused" ? "Resume" : "Pause";
  $("scan").disabled = work.state === "paused";
  renderLast();
  renderRecent();
}

function renderLast() {
  const last = app.last;
  $("last").hidden = !last;
  if (!last) return;
  $("last").dataset.kind = last.kind;
  $("last-name").textContent = last.product_id ? productName(last.product_id) : last.kind === "conflict" ? "Ambiguous code — type the SKU" : "Unknown code";
  $("last-code").textContent = last.code.replaceAll("\x1d", "⟨GS⟩");
  $("last-qty").textContent = String(last.product_id ? app.tally.items.get(last.product_id)?.qty ?? 0 : app.tally.unmatched.get(last.code) ?? 0);
  $("last-details").disabled = !last.product_id;
}

const STATE_TEXT = { pending: "waiting", synced: "sent", failed: "refused" };

const recentRows = new Map(); // seq → its row, kept between draws: a scan redraws only what changed

function renderRecent() {
  const list = $("recent");
  const shown = app.recent.slice(0, 30);
  const wanted = new Set(shown.map((e) => e.seq));
  for (const [seq, row] of recentRows) {
    if (!wanted.has(seq)) {
      row.remove();
      recentRows.delete(seq);
    }
  }
  let cursor = list.firstChild;
  for (const event of shown) {
    let row = recentRows.get(event.seq);
    if (!row) {
      row = document.createElement("li");
      row.dataset.seq = String(event.seq);
      recentRows.set(event.seq, row);
    }
    const state = event.conflict ? "conflict" : event.held ? "held" : event.state;
    if (row.dataset.state !== state) {
      const found = app.catalog.resolve(event.payload.code);
      const name = found.product_id ? productName(found.product_id) : "unknown code";
      const said = event.conflict ? `flagged: ${event.conflict.kind}` : event.held ? `held: ${event.held}` : STATE_TEXT[event.state];
      row.dataset.state = state;
      row.textContent = `${event.payload.code.replaceAll("\x1d", "⟨GS⟩")} · ${name} · ${said}`;
    }
    if (row === cursor) cursor = cursor.nextSibling;
    else list.insertBefore(row, cursor);
  }
}

async function refreshRecentStates() {
  if (document.body.dataset.view !== "count" || !app.recent.length) return;
  const seqs = new Set(app.recent.map((e) => e.seq));
  const fresh = await db.all("events", { range: IDBKeyRange.bound(Math.min(...seqs), Math.max(...seqs)) });
  const bySeq = new Map(fresh.map((e) => [e.seq, e]));
  app.recent = app.recent.map((e) => bySeq.get(e.seq) ?? e);
  renderRecent();
}

function classify(found) {
  if (app.work.lost) return "conflict";
  if (found.matched_by === "ambiguous") return "conflict";
  return found.product_id ? "ok" : "unknown";
}

const SEVERITY = { ok: 0, unknown: 1, conflict: 2 };
const waiting = []; // scans read but not yet committed: {code, keyAt, resolve}
let writing = null;
app.busy = () => waiting.length > 0 || writing !== null; // a scan is being committed

/** One scanned code: committed to the queue first, then shown, heard and felt. Codes read while the
 * previous commit is under way wait and are committed together, in the order they were read. Resolves
 * once this scan is on disk (or was refused, with the reason shown). */
function scan(code, keyAt = performance.now()) {
  const done = new Promise((resolve) => waiting.push({ code, keyAt, resolve }));
  if (!writing) writing = commitWaiting().finally(() => (writing = null));
  return done;
}

async function commitWaiting() {
  while (waiting.length) {
    const batch = waiting.splice(0, 200);
    const work = app.work;
    const by = app.login.user.user_id;
    try {
      const events = await queue.recordMany(
        app.identity.writer_id,
        batch.map(({ code }) => ({
          type: "scan.recorded",
          payload: { session_id: work.session_id, code, qty: 1, rack_id: work.rack_id, product_id: null, token: work.token, by },
        })),
      );
      let loudest = "ok";
      for (const event of events) {
        const found = app.catalog.resolve(event.payload.code);
        const kind = classify(found);
        if (SEVERITY[kind] > SEVERITY[loudest]) loudest = kind;
        app.tally.apply(event);
        app.last = { code: event.payload.code, product_id: found.product_id, kind, seq: event.seq, event_id: event.event_id };
      }
      app.recent = [...events.reverse(), ...app.recent].slice(0, 30);
      renderCount();
      signal(loudest, $("main"));
      document.body.dataset.scans = String(Number(document.body.dataset.scans || 0) + events.length);
      // Enter → committed and drawn (the next frame), for the page's bench and a field tech's console.
      requestAnimationFrame(() => {
        const now = performance.now();
        for (const { keyAt } of batch) app.feedbackMs.push(now - keyAt);
        if (app.feedbackMs.length > 5000) app.feedbackMs.splice(0, app.feedbackMs.length - 4000);
      });
    } catch (error) {
      fail("count-error", new Error(`${batch.length === 1 ? "This scan was" : `These ${batch.length} scans were`} NOT kept: ${error.message}. Scan again.`));
      signal("error", $("main"));
    }
    for (const { resolve } of batch) resolve();
  }
}

function focusScan() {
  const field = $("scan");
  if (document.activeElement !== field && !document.querySelector("dialog[open]")) field.focus({ preventScroll: true });
}

$("scan").addEventListener("keydown", (event) => {
  unlock();
  // GS (FNC1 in GS1 codes) arrives as Ctrl+] from keyboard-wedge scanners set to send control characters.
  if (event.ctrlKey && (event.key === "]" || event.code === "BracketRight")) {
    event.preventDefault();
    insertAtCursor(event.target, "\x1d");
    return;
  }
  if (event.key !== "Enter") return;
  event.preventDefault();
  const code = event.target.value.replace(/^[\r\n]+|[\r\n]+$/g, "");
  event.target.value = "";
  if (code.trim()) scan(code, event.timeStamp);
});

function insertAtCursor(field, text) {
  const at = field.selectionStart ?? field.value.length;
  field.value = field.value.slice(0, at) + text + field.value.slice(field.selectionEnd ?? at);
  field.selectionStart = field.selectionEnd = at + text.length;
}

$("scan-form").addEventListener("submit", (event) => event.preventDefault());
$("scan").addEventListener("focus", () => {
  $("scanner-ready").dataset.ready = "1";
  $("scanner-text").textContent = "Scanner ready";
});
$("scan").addEventListener("blur", () => {
  $("scanner-ready").dataset.ready = "0";
  $("scanner-text").textContent = "Tap here to scan";
  // Keep the field focused for the scanner unless the verifier went to another field or a dialog.
  setTimeout(() => {
    const active = document.activeElement;
    if (document.body.dataset.view === "count" && (!active || active === document.body || active.tagName === "BUTTON")) focusScan();
  }, 0);
});
document.addEventListener("pointerdown", unlock);

$("count-camera").addEventListener("click", async () => {
  const code = await readCode($("camera-dialog"));
  if (code) await scan(code);
  focusScan();
});

async function adjust(delta) {
  const last = app.last;
  if (!last) return;
  if (!last.product_id) {
    // An unknown code has no item to adjust: one more is another scan, one less undoes the last.
    if (delta > 0) return scan(last.code);
    return undoLast();
  }
  const shown = app.tally.items.get(last.product_id)?.qty ?? 0;
  if (shown + delta < 0) return;
  await recordItem("count.adjusted", last.product_id, { delta, target: shown + delta });
  renderCount();
  focusScan();
}

$("qty-plus").addEventListener("click", () => adjust(1));
$("qty-minus").addEventListener("click", () => adjust(-1));
$("last-undo").addEventListener("click", () => undoLast());

async function undoLast() {
  const target = app.recent.find((e) => e.type === "scan.recorded" && app.tally.scans.has(e.event_id) && e.payload.rack_id === app.work.rack_id);
  if (!target) return;
  const p = target.payload;
  const event = await queue.record(app.identity.writer_id, "scan.undone", {
    session_id: p.session_id,
    undoes: target.event_id,
    of_writer: app.identity.writer_id,
    code: p.code,
    rack_id: p.rack_id,
    qty: p.qty,
    by: app.login.user.user_id,
  });
  app.tally.apply(event);
  app.recent = app.recent.filter((e) => e.event_id !== target.event_id);
  renderCount();
  focusScan();
}

async function recordItem(type, productId, fields) {
  const event = await queue.record(app.identity.writer_id, type, {
    session_id: app.work?.session_id ?? app.session.session_id,
    product_id: productId,
    ...fields,
    by: app.login.user.user_id,
  });
  app.tally.apply(event);
  return event;
}

// -- an item's details ----------------------------------------------------------------------------------
$("last-details").addEventListener("click", () => openItem(app.last.product_id));

function openItem(productId) {
  const entry = app.tally.item(productId);
  const product = app.catalog.product(productId) ?? {};
  const attrs = entry.attrs;
  app.editing = productId;
  $("item-title").textContent = product.name ?? productId;
  $("item-sku").textContent = product.sku ? `SKU ${product.sku}` : "";
  $("item-qty").value = String(entry.qty);
  $("item-damage").value = String(entry.damage);
  $("item-mfg").value = attrs.mfg_date ?? "";
  $("item-mrp").value = attrs.mrp_minor != null ? (attrs.mrp_minor / 100).toFixed(2) : "";
  $("item-uom").value = attrs.uom ?? product.uom ?? "";
  $("item-category").value = attrs.category ?? product.category ?? "";
  $("item-subcategory").value = attrs.subcategory ?? product.subcategory ?? "";
  $("item-condition").value = attrs.condition ?? "";
  $("item-photo").value = "";
  $("item-serial").value = $("item-serial-list").value = $("item-serial-from").value = $("item-serial-to").value = "";
  clearError("item-error");
  renderSerials();
  $("item-photos").textContent = entry.photos ? `${entry.photos} photo${entry.photos === 1 ? "" : "s"} attached` : "";
  $("item-dialog").showModal();
}

function renderSerials() {
  const serials = [...app.tally.item(app.editing).serials.keys()];
  $("item-serial-count").textContent = String(serials.length);
  const list = $("item-serials");
  list.replaceChildren(...serials.slice(-50).map((s) => Object.assign(document.createElement("li"), { textContent: s })));
}

/** SN0001 … SN0050: the same prefix, a number counting up, zero padding kept; at most 1,000. */
export function serialRange(from, to) {
  const a = /^(.*?)(\d+)$/.exec(from.trim());
  const b = /^(.*?)(\d+)$/.exec(to.trim());
  if (!a || !b || a[1] !== b[1]) throw new Error("a range needs two serials with the same prefix and a number at the end");
  const start = Number(a[2]);
  const end = Number(b[2]);
  if (end < start) throw new Error("the range ends before it starts");
  if (end - start >= 1000) throw new Error("a range adds at most 1,000 serials at a time");
  const width = a[2].length;
  const out = [];
  for (let n = start; n <= end; n += 1) out.push(a[1] + String(n).padStart(width, "0"));
  return out;
}

async function addSerials(serials) {
  const have = app.tally.item(app.editing).serials;
  for (const serial of serials) {
    const text = serial.trim();
    if (!text || have.has(text)) continue;
    if (text.length > 64) throw new Error(`serial ${text.slice(0, 20)}… is longer than 64 characters`);
    await recordItem("serial.added", app.editing, { serial: text });
  }
  renderSerials();
}

$("item-serial").addEventListener("keydown", async (event) => {
  if (event.key !== "Enter") return;
  event.preventDefault();
  const text = event.target.value;
  event.target.value = "";
  try {
    await addSerials([text]);
  } catch (error) {
    fail("item-error", error);
  }
});

$("item-serial-add").addEventListener("click", async () => {
  clearError("item-error");
  try {
    const listed = $("item-serial-list").value.split(/[\n,;\t]+/);
    const from = $("item-serial-from").value;
    const to = $("item-serial-to").value;
    const ranged = from.trim() || to.trim() ? serialRange(from, to || from) : [];
    await addSerials([...listed, ...ranged]);
    $("item-serial-list").value = $("item-serial-from").value = $("item-serial-to").value = "";
  } catch (error) {
    fail("item-error", error);
  }
});

function intField(id, what) {
  const text = $(id).value.trim();
  const value = Number(text);
  if (!text || !Number.isInteger(value) || value < 0 || value > 100000) throw new Error(`${what} must be a whole number from 0 to 100,000`);
  return value;
}

async function saveItem(status) {
  clearError("item-error");
  const productId = app.editing;
  const entry = app.tally.item(productId);
  try {
    const qty = intField("item-qty", "Quantity");
    const damage = intField("item-damage", "Damaged");
    const attrs = {};
    const mrpText = $("item-mrp").value.trim();
    const wanted = {
      mfg_date: $("item-mfg").value || null,
      mrp_minor: mrpText ? Math.round(Number(mrpText) * 100) : null,
      uom: $("item-uom").value.trim() || null,
      category: $("item-category").value.trim() || null,
      subcategory: $("item-subcategory").value.trim() || null,
      condition: $("item-condition").value || null,
    };
    if (wanted.mrp_minor !== null && !(wanted.mrp_minor >= 0 && wanted.mrp_minor <= 1e9)) throw new Error("MRP must be a price from 0 to 10,000,000");
    const product = app.catalog.product(productId) ?? {};
    for (const [name, value] of Object.entries(wanted)) {
      const current = entry.attrs[name] ?? (["uom", "category", "subcategory"].includes(name) ? product[name] ?? null : null);
      if (value !== current && !(value === null && current === undefined)) attrs[name] = value;
    }
    if (status) attrs.status = status;
    if (qty !== entry.qty) {
      // A larger change than the protocol's 100,000 per event never happens here: both are at most 100,000.
      await recordItem("count.adjusted", productId, { delta: qty - entry.qty, target: qty });
    }
    if (damage !== entry.damage) await recordItem("damage.adjusted", productId, { delta: damage - entry.damage, target: damage });
    if (Object.keys(attrs).length) await recordItem("item.attributes_set", productId, { attrs });
    const file = $("item-photo").files[0];
    if (file) {
      const kept = await photo.keep(await photo.shrink(file));
      await recordItem("photo.attached", productId, kept);
    }
    $("item-dialog").close();
    renderCount();
  } catch (error) {
    fail("item-error", error);
  }
}

$("item-partial").addEventListener("click", () => saveItem("partial"));
$("item-finalize").addEventListener("click", () => saveItem("finalized"));
$("item-reverify").addEventListener("click", () => saveItem("re-verify"));
$("item-dialog").addEventListener("close", () => focusScan());

// -- what the box says back ---------------------------------------------------------------------------
function onFlagged(notes) {
  const flagged = [...notes.conflicts, ...notes.held];
  if (!flagged.length) return;
  if (flagged.some((e) => e.conflict?.kind === "late_lease") && app.work) markLeaseLost("The box says this rack's lease had passed to another verifier.");
  signal("conflict", $("main"));
  const first = flagged[0];
  const what = first.conflict ? `flagged ${first.conflict.kind.replaceAll("_", " ")}` : `held: ${first.held.replaceAll("_", " ").toLowerCase()}`;
  $("count-error").textContent = `${flagged.length} record${flagged.length === 1 ? " was" : "s were"} ${what} — a supervisor will look. Your scans are kept.`;
  refreshRecentStates();
  if (document.body.dataset.view === "session") showFlags();
}
app.sender.addEventListener("flagged", (event) => onFlagged(event.detail));

function markLeaseLost(why) {
  if (!app.work) return;
  app.work.lost = true;
  $("lease-lost").hidden = false;
  $("lease-lost").textContent = `Lease lost on rack ${app.work.rack}: ${why} Scans are still kept and shown to a supervisor.`;
  if (document.body.dataset.view === "count") renderCount();
}

app.heartbeat.addEventListener("beat", (event) => {
  const answer = event.detail;
  if (app.work && !app.work.lost && app.work.state === "active" && Number(answer.leases_renewed) === 0) {
    markLeaseLost("the box no longer has this device's lease (it lapsed while the handheld was out of reach).");
  }
  const mine = (answer.sessions ?? []).find((s) => s.session_id === app.work?.session_id);
  if (app.session && app.work && !mine && STOP_SCANNING.has(app.session.status)) {
    $("count-error").textContent = `This session is ${app.session.status.toLowerCase()}: stop scanning into it.`;
  }
});

// -- start --------------------------------------------------------------------------------------------
async function keepStorage() {
  if (!navigator.storage?.persist) return;
  const persisted = (await navigator.storage.persisted()) || (await navigator.storage.persist());
  document.body.dataset.persisted = persisted ? "1" : "0";
  $("storage-warning").hidden = persisted;
  $("storage-warning").textContent =
    "Storage not guaranteed: unsent scans could be cleared if the device runs out of space. Install this page (Add to Home screen).";
}

async function registerWorker() {
  if (!("serviceWorker" in navigator)) return;
  try {
    const registration = await navigator.serviceWorker.register("/handheld/sw.js", { scope: "/handheld/" });
    registration.addEventListener("updatefound", () => {
      const next = registration.installing;
      next?.addEventListener("statechange", () => {
        if (next.state === "installed" && navigator.serviceWorker.controller) $("update-ready").hidden = false;
      });
    });
  } catch {
    // the page still works; it only cannot open without the box
  }
}

$("update-reload").addEventListener("click", () => location.reload());

async function boot() {
  if (!window.isSecureContext || !crypto.subtle) {
    document.getElementById("view-boot").innerHTML = "<p class='error'>This page needs HTTPS: open it at the box's https:// address.</p>";
    return;
  }
  registerWorker();
  keepStorage();
  const identity = await db.getMeta("device");
  if (!identity) {
    $("pair-name").value = `Handheld ${Math.floor(Math.random() * 900 + 100)}`;
    show("pair");
    return;
  }
  await startDevice(identity);
  app.login = await db.getMeta("login");
  if (!app.login) return show("login");
  setBearer(app.login.token);
  app.work = await db.getMeta("work");
  if (app.work) {
    await loadSession(app.work.session_id);
    show("count");
    renderCount();
    return;
  }
  await openSessions();
}

boot().catch((error) => {
  document.getElementById("view-boot").textContent = `The page could not start: ${error.message}`;
});
