// A counting station's screen: the monitor beside a fixed scanner, read from across the table. Where
// the scanner counts (a session and a rack), the running totals, and each scan as it happens: the
// latest large, with a sound (a short high beep when it counted, a low double buzz when it did not) and
// a flash of colour, the ones before it below, newest first.

import { ApiError, enc, get } from "../api.js";
import { clear, describeError, fill, h, throttle } from "../dom.js";

const SHOWN = 12; // scans listed
const WORD = { counted: "Counted", held: "Held", kept: "Not counted", test: "Test" };
const MEANS = {
  counted: "counted in the session",
  held: "stored, held for a supervisor",
  kept: "kept for a supervisor: scan again or call them",
  test: "test mode: counted nowhere",
};
const TOTALS = [
  ["rack_units", "units on this rack"],
  ["rack_lines", "codes on this rack"],
  ["session_units", "units in the session"],
  ["scanner_units", "units by this scanner"],
];
const FIELD_LABELS = { gtin: "GTIN", batch: "Batch", expiry: "Expiry", best_before: "Best before", production_date: "Produced", serial: "Serial" };
const REFRESH_MS = 15000; // a verifier's screen hears no scanner news: assignments are looked up this often

function fieldsText(fields) {
  return Object.entries(fields || {})
    .filter(([name, value]) => name !== "gtin" && value !== null && value !== undefined && value !== "")
    .map(([name, value]) => `${FIELD_LABELS[name] || name} ${value}`)
    .join(" · ");
}

/** A code as read, its control characters (a GS1 code's group separator) shown rather than hidden. */
function visible(code) {
  return String(code ?? "").replace(/[\x00-\x1f]/g, (c) => (c === "\x1d" ? "‹GS›" : `‹${c.charCodeAt(0).toString(16).padStart(2, "0")}›`));
}

function keyOf(entry) {
  return `${entry.read_at}:${entry.code}`;
}

function good(outcome) {
  return outcome === "counted" || outcome === "test";
}

// -- sound -------------------------------------------------------------------------------------------
class Sounder {
  constructor() {
    this.context = null;
  }

  get on() {
    return Boolean(this.context && this.context.state === "running");
  }

  /** Browsers start audio only after a person's gesture: called from a click or a key press. */
  async enable() {
    const Audio = window.AudioContext || window.webkitAudioContext;
    if (!Audio) return false;
    this.context ||= new Audio();
    if (this.context.state === "suspended") {
      try {
        await this.context.resume();
      } catch {
        return false;
      }
    }
    return this.on;
  }

  tone(frequency, start, seconds, wave) {
    const context = this.context;
    const oscillator = context.createOscillator();
    const gain = context.createGain();
    oscillator.type = wave;
    oscillator.frequency.value = frequency;
    gain.gain.setValueAtTime(0.0001, start);
    gain.gain.exponentialRampToValueAtTime(0.35, start + 0.01);
    gain.gain.setValueAtTime(0.35, start + seconds - 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + seconds);
    oscillator.connect(gain).connect(context.destination);
    oscillator.start(start);
    oscillator.stop(start + seconds + 0.02);
  }

  play(outcome) {
    if (!this.on) return;
    const now = this.context.currentTime + 0.01;
    if (outcome === "counted") this.tone(1760, now, 0.09, "sine");
    else if (outcome === "test") this.tone(1175, now, 0.07, "sine");
    else {
      this.tone(150, now, 0.16, "square");
      this.tone(150, now + 0.24, 0.16, "square");
    }
  }

  close() {
    if (this.context) this.context.close().catch(() => {});
    this.context = null;
  }
}

// -- the screen ----------------------------------------------------------------------------------------
export async function render(ctx) {
  const id = decodeURIComponent(ctx.params[0] || "");
  const main = clear(ctx.main);
  let data;
  try {
    data = await get(`/api/scanners/${enc(id)}/station`);
  } catch (error) {
    const text =
      error instanceof ApiError && error.code === "NOT_YOUR_STATION"
        ? "This station counts for none of your sessions (it may be unassigned): only the verifier it counts for, and the supervisors, see it."
        : error instanceof ApiError && error.code === "SCANNER_NOT_FOUND"
          ? "No scanner of this store has this id: open the station from the Scanners page."
          : describeError(error);
    main.append(h("h1", {}, "Station"), h("p", { class: "error-text", role: "alert", dataset: { stationError: "" } }, text));
    return null;
  }

  const sounder = new Sounder();
  const title = h("h1", {}, data.name);
  const where = h("div", { class: "station-where" });
  const note = h("p", { class: "station-note" });
  const soundButton = h("button", { type: "button", class: "station-sound", dataset: { sound: "off" } }, "Sound off: tap to turn on");
  const fullButton = h("button", { type: "button", class: "ghost station-full" }, "Full screen");
  const totals = h(
    "div",
    { class: "station-totals" },
    TOTALS.map(([name, label]) =>
      h("div", { class: "station-total", dataset: { total: name } }, h("span", { class: "value" }, "0"), h("span", { class: "label" }, label)),
    ),
  );
  const latest = h("div", { class: "station-latest", dataset: { outcome: "" }, role: "status", "aria-live": "assertive", "aria-atomic": "true" });
  const earlier = h("ol", { class: "station-recent", "aria-label": "Earlier scans, newest first" });
  const screen = h(
    "section",
    { class: "station", dataset: { station: id } },
    h("header", { class: "station-head" }, h("div", {}, title, where), h("div", { class: "actions" }, soundButton, fullButton)),
    note,
    totals,
    latest,
    earlier,
  );
  main.append(screen);

  const scans = []; // newest first
  const seen = new Set();

  const showSound = () => {
    soundButton.dataset.sound = sounder.on ? "on" : "off";
    soundButton.textContent = sounder.on ? "Sound on" : "Sound off: tap to turn on";
  };
  const wake = async () => {
    await sounder.enable();
    showSound();
  };
  soundButton.addEventListener("click", wake);
  fullButton.addEventListener("click", () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else screen.requestFullscreen?.().catch(() => {});
  });
  // Any tap or key on the screen turns the sound on: a station is often started with a touch.
  document.addEventListener("pointerdown", wake, { once: true });
  document.addEventListener("keydown", wake, { once: true });

  function drawHead() {
    title.textContent = data.name;
    const station = data.station;
    screen.dataset.assigned = station ? "1" : "0";
    if (station) {
      fill(
        where,
        h("span", { class: "station-who", dataset: { verifier: station.verifier_id || "" } }, station.verifier_name || "A verifier"),
        h("span", { class: "station-rack", dataset: { rack: station.rack || "" } }, station.rack ? `Rack ${station.rack}` : "Any rack"),
        h("span", { class: "station-status" }, (station.session_status || "").replace("_", " ").toLowerCase()),
      );
    } else {
      fill(
        where,
        h(
          "p",
          { class: "station-unassigned", dataset: { unassigned: "" } },
          "Not assigned: this scanner counts for no session. What it reads is kept for a supervisor, who assigns it on the Scanners page.",
        ),
      );
    }
    let text = "";
    if (!data.on_this_box) text = "This scanner is plugged into another box of the store: open this screen on that box to see its scans.";
    else if (!data.plugged) text = "The scanner is not plugged in.";
    else if (data.live?.state === "failed") text = `The scanner cannot be read: ${data.live.error || "unknown error"}`;
    else if (data.station && data.station.session_status && !["ASSIGNED", "IN_PROGRESS"].includes(data.station.session_status))
      text = "The session is no longer open: scans are kept for a supervisor.";
    else if (data.live?.test_until && data.live.test_until > Date.now()) text = "Test mode: scans are shown and counted nowhere.";
    note.textContent = text;
    note.hidden = !text;
  }

  function drawTotals() {
    for (const [name] of TOTALS) {
      const value = data.totals?.[name] ?? 0;
      totals.querySelector(`[data-total="${name}"] .value`).textContent = String(value);
    }
  }

  function productName(entry) {
    if (entry.product) return entry.product.name;
    if (entry.outcome === "kept" && !entry.counted_as) return "Kept for a supervisor";
    return "Unknown code";
  }

  function drawScans() {
    const [first, ...rest] = scans;
    if (!first) {
      latest.dataset.outcome = "";
      fill(latest, h("p", { class: "station-waiting" }, "Scan a code."));
    } else {
      latest.dataset.outcome = first.outcome || "";
      latest.dataset.code = first.code;
      const fields = fieldsText(first.fields);
      fill(
        latest,
        h("div", { class: "station-outcome" }, WORD[first.outcome] || first.outcome),
        h("div", { class: "station-product", dataset: { product: "" } }, productName(first)),
        h("div", { class: "station-code" }, h("code", {}, visible(first.code)), first.product ? h("span", { class: "station-sku" }, ` · ${first.product.sku}`) : null),
        fields ? h("div", { class: "station-fields" }, fields) : null,
        h("div", { class: "station-means" }, first.outcome === "kept" && first.message ? first.message : MEANS[first.outcome] || ""),
      );
    }
    fill(
      earlier,
      rest.map((entry) =>
        h(
          "li",
          { dataset: { outcome: entry.outcome || "", code: entry.code } },
          h("span", { class: "station-mark" }, WORD[entry.outcome] || entry.outcome),
          h("span", { class: "station-item" }, productName(entry)),
          h("code", {}, visible(entry.code)),
        ),
      ),
    );
  }

  function flash(outcome) {
    screen.classList.remove("flash-good", "flash-bad");
    void screen.offsetWidth; // restart the animation
    screen.classList.add(good(outcome) ? "flash-good" : "flash-bad");
  }

  /** Takes in scans not shown yet (oldest first); with ``loud``, the newest is heard and flashed. */
  function take(entries, loud) {
    const fresh = entries.filter((entry) => !seen.has(keyOf(entry))).sort((a, b) => a.read_at - b.read_at);
    if (!fresh.length) return;
    for (const entry of fresh) {
      seen.add(keyOf(entry));
      scans.unshift(entry);
    }
    scans.sort((a, b) => b.read_at - a.read_at);
    scans.length = Math.min(scans.length, SHOWN);
    drawScans();
    if (loud) {
      const newest = fresh.at(-1);
      sounder.play(newest.outcome);
      flash(newest.outcome);
      screen.dataset.heard = newest.outcome || "";
    }
  }

  let loadSeq = 0;
  async function refresh(loud = true) {
    const seq = ++loadSeq;
    try {
      const answer = await get(`/api/scanners/${enc(id)}/station`);
      if (seq !== loadSeq || !ctx.isCurrent()) return;
      data = answer;
      drawHead();
      drawTotals();
      take(data.live?.recent || [], loud);
    } catch (error) {
      if (seq === loadSeq && ctx.isCurrent()) note.textContent = `The station could not be refreshed: ${describeError(error)}`;
      note.hidden = false;
    }
  }

  drawHead();
  drawTotals();
  take(data.live?.recent || [], false);
  drawScans();

  const soon = throttle(() => refresh(true), 300);
  const stop = ctx.live.listen((kind, message) => {
    if (kind === "open" || kind === "resync") soon();
    if (!message || message.writer_id !== id) return;
    if (kind === "scanner") {
      if (message.type === "code") take([message], true);
      soon();
    } else if (kind === "scan" || kind === "held") {
      // What a verifier hears of their own session: the scan, not the scanner's news.
      soon();
    }
  });
  const ticker = setInterval(() => refresh(true), REFRESH_MS);
  return () => {
    stop();
    soon.cancel();
    clearInterval(ticker);
    document.removeEventListener("pointerdown", wake);
    document.removeEventListener("keydown", wake);
    sounder.close();
  };
}
