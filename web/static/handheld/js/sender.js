// The sender: moves pending events to the box in seq order, and keeps the device's leases alive.
//
// The rules are the contract's (docs/sync-protocol.md §3.1, §4.5), as the Python client keeps them:
// batches of 150, at most 2 in flight; network failures, timeouts, 5xx, 408, 429 and CLOCK_AHEAD wait
// 2 s doubling to 5 min with jitter in [0.5, 1.5] (a Retry-After is the shortest wait); SEQUENCE_GAP
// resends at once from expected_seq; anything else stops and waits for a person.
//
// One tab sends: a Web Lock elects it, and when that tab is closed or killed the lock passes to another
// open tab of the page. What is on disk is the whole state, so an answer lost with a killed tab costs a
// resend, which the box answers "ok" again. The sender never waits for the next scan: it wakes on every
// recorded event, when the browser says it is online, when a heartbeat gets through, and every few
// seconds while anything is pending.

import * as db from "./db.js";
import * as queue from "./queue.js";
import { ApiError, device, num } from "./api.js";
import { signHead } from "./chain.js";

const RESEND = new Set(["SEQUENCE_GAP", "NOT_PROCESSED"]);
const WAIT = new Set(["CLOCK_AHEAD", "PHOTO_NOT_UPLOADED"]);
export const APP_VERSION = "handheld/1";

export class Sender extends EventTarget {
  constructor({ batchSize = 150, maxInFlight = 2, baseMs = 2000, maxMs = 300000 } = {}) {
    super();
    this.batchSize = batchSize;
    this.maxInFlight = maxInFlight;
    this.baseMs = baseMs;
    this.maxMs = maxMs;
    this.failures = 0;
    this.state = "idle"; // idle | sending | waiting | stopped | standby (another tab sends)
    this.lastError = null;
    this.nextRetryAt = null;
    this.stoppedFor = null;
    this._wake = null;
    queue.changes.addEventListener("recorded", () => this.wake());
    addEventListener("online", () => this.retryNow());
  }

  start(identity) {
    this.identity = identity;
    if (this.started) return;
    this.started = true;
    this._set("standby");
    const run = () => this._run();
    if (navigator.locks) navigator.locks.request("stockverify-sender", run);
    else run();
  }

  wake() {
    if (this._wake) this._wake();
  }

  retryNow() {
    this.nextRetryAt = null;
    this.wake();
  }

  /** A person dealt with what stopped the sender: send again. */
  async resume() {
    this.stoppedFor = null;
    await queue.retryFailed();
    this.retryNow();
  }

  _set(state, error = this.lastError) {
    this.state = state;
    this.lastError = error;
    this.dispatchEvent(new CustomEvent("change"));
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(finish, ms);
      function finish() {
        clearTimeout(timer);
        resolve();
      }
      this._wake = finish;
    });
  }

  _backoffMs(retryAfterS) {
    const step = Math.min(this.maxMs, this.baseMs * 2 ** Math.min(this.failures, 20));
    this.failures += 1;
    const jittered = step * (0.5 + Math.random());
    return Math.max(jittered, retryAfterS * 1000);
  }

  async _run() {
    for (;;) {
      const [refused] = await queue.failed();
      if (refused) {
        this.stoppedFor = this.stoppedFor || refused.error;
        this._set("stopped", this.stoppedFor);
        await this._sleep(60000);
        continue;
      }
      const waiting = await queue.pending(this.batchSize * this.maxInFlight);
      if (!waiting.length) {
        this._set("idle", null);
        await this._sleep(5000);
        continue;
      }
      this._set("sending");
      let outcome;
      try {
        outcome = await this._round(waiting);
      } catch (error) {
        outcome = { wait: error instanceof ApiError ? error : new ApiError(0, { message: String(error) }) };
      }
      if (outcome.wait) {
        const ms = this._backoffMs(outcome.wait.retryAfterS);
        this.nextRetryAt = Date.now() + ms;
        this._set("waiting", { code: outcome.wait.code, message: outcome.wait.message });
        const until = this.nextRetryAt;
        while (this.nextRetryAt === until && Date.now() < until) await this._sleep(until - Date.now());
        this.nextRetryAt = null;
        continue;
      }
      this.failures = 0;
    }
  }

  /** One round: up to two batches in flight, then what their answers say. */
  async _round(waiting) {
    const batches = [];
    for (let i = 0; i < waiting.length && batches.length < this.maxInFlight; i += this.batchSize) {
      batches.push(waiting.slice(i, i + this.batchSize));
    }
    await this._uploadPhotos(waiting);
    const answers = await Promise.allSettled(batches.map((batch) => this._send(batch)));
    answers.forEach((answer, i) => {
      answer.batch = batches[i];
    });
    let wait = null;
    let gap = null;
    for (const answer of answers) {
      if (answer.status === "rejected") {
        const error = answer.reason instanceof ApiError ? answer.reason : new ApiError(0, { message: String(answer.reason) });
        if (!error.retryable) {
          await this._refuseWhole(answer.batch, error);
          continue;
        }
        wait = wait || error;
        continue;
      }
      const body = answer.value;
      await queue.observeServerHlc(body.server_hlc);
      const notes = await queue.applyAnswer(body, new Set([...RESEND, ...WAIT]));
      if (notes.held.length || notes.conflicts.length) {
        this.dispatchEvent(new CustomEvent("flagged", { detail: notes }));
      }
      const codes = new Set((body.errors ?? []).map((e) => e.code));
      if (codes.has("SEQUENCE_GAP")) gap = num(body.expected_seq);
      if (codes.has("PHOTO_NOT_UPLOADED")) await this._forgetUploads(body.errors, answer.batch);
      for (const code of WAIT) {
        if (codes.has(code)) {
          const first = body.errors.find((e) => e.code === code);
          wait = wait || new ApiError(200, { code, message: first.message });
        }
      }
    }
    if (gap !== null) {
      const lowest = waiting[0].seq;
      if (gap < lowest) await queue.resendFrom(gap);
    }
    return { wait };
  }

  async _send(events) {
    const last = events[events.length - 1];
    const signature = await signHead(this.identity.keys.privateKey, this.identity.writer_id, last.seq, last.hash);
    const body = {
      writer_id: this.identity.writer_id,
      events: events.map((e) => ({
        seq: e.seq,
        event_id: e.event_id,
        type: e.type,
        hlc: e.hlc,
        occurred_at: e.occurred_at,
        prev_hash: e.prev_hash,
        payload: e.payload,
      })),
      head: { seq: last.seq, hash: last.hash, signature },
    };
    return device("POST", "/api/sync/batch", this.identity.device_token, body);
  }

  /** A whole request refused (400, 401, 403 REVOKED, 413): its events are failed, a person must look. */
  async _refuseWhole(events, error) {
    const seqs = (events ?? []).map((e) => e.seq);
    await queue.applyAnswer(
      { ok: [], errors: seqs.map((seq) => ({ seq, code: error.code, message: error.message })) },
      new Set(),
    );
  }

  /** The box does not have a photo this device thought it had sent (it was restored from a backup, say):
   * send it again before the batch goes again. */
  async _forgetUploads(errors, batch) {
    const missing = new Set(errors.filter((e) => e.code === "PHOTO_NOT_UPLOADED").map((e) => Number(e.seq)));
    for (const event of batch.filter((e) => missing.has(e.seq))) {
      await db.write(["photos"], async (tx) => {
        const store = tx.objectStore("photos");
        const photo = await db.done(store.get(event.payload.sha256));
        if (photo) store.put({ ...photo, uploaded: false });
      });
    }
  }

  /** Photos go before the events that name them: the box refuses a photo.attached it does not hold. */
  async _uploadPhotos(events) {
    for (const event of events) {
      if (event.type !== "photo.attached") continue;
      const photo = await db.read(["photos"], (tx) => db.done(tx.objectStore("photos").get(event.payload.sha256)));
      if (!photo || photo.uploaded) continue;
      await device("PUT", `/api/sync/photos/${photo.sha256}`, this.identity.device_token, undefined, {
        raw: photo.blob,
        contentType: photo.content_type,
        timeoutMs: 60000,
      });
      await db.write(["photos"], (tx) => db.done(tx.objectStore("photos").put({ ...photo, uploaded: true })));
    }
  }
}

/**
 * Heartbeats: every ``lease_renew_s`` (the box says how often) while the device is paired. They renew the
 * device's rack leases and session lock, tell the box the queue's depth, and bring back the sessions
 * assigned to the device; one that gets through tells the sender the box is back.
 */
export class Heartbeat extends EventTarget {
  constructor(sender) {
    super();
    this.sender = sender;
    this.everyS = 20;
    this.sessionId = null;
    this.last = null;
  }

  start(identity) {
    this.identity = identity;
    if (this.timer) return;
    const beat = async () => {
      await this.beat();
      this.timer = setTimeout(beat, this.everyS * 1000);
    };
    this.timer = setTimeout(beat, 0);
  }

  async beat() {
    try {
      const { pending } = await queue.stats();
      const answer = await device("POST", "/api/sync/heartbeat", this.identity.device_token, {
        queue_depth: pending,
        app_version: APP_VERSION,
        session_id: this.sessionId,
      });
      this.everyS = Math.max(1, num(answer.lease_renew_s) || 20); // the box's word: leases lapse after lease_ttl_s
      await queue.observeServerHlc(answer.server_hlc);
      this.last = answer;
      this.sender.retryNow();
      this.dispatchEvent(new CustomEvent("beat", { detail: answer }));
    } catch (error) {
      this.dispatchEvent(new CustomEvent("failed", { detail: error }));
    }
  }
}
