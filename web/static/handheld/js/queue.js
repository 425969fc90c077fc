// The queue: every change a verifier makes is an event of this device's chain, committed to IndexedDB
// before the page shows it, and sent to the box by the sender (sender.js) whenever the box is reachable.
// Other tabs of the page learn of new events through a BroadcastChannel, so the one tab that sends
// (sender.js holds a Web Lock) sends at once, whichever tab recorded.

import * as db from "./db.js";
import { ZERO_HASH, eventHash, newEventId, nextHlc } from "./chain.js";

export const changes = new EventTarget();
const channel = "BroadcastChannel" in self ? new BroadcastChannel("stockverify-queue") : null;
if (channel) channel.onmessage = (message) => changes.dispatchEvent(new CustomEvent(message.data.kind, { detail: message.data }));

export function announce(kind, detail = {}) {
  changes.dispatchEvent(new CustomEvent(kind, { detail }));
  channel?.postMessage({ kind, ...detail });
}

const PENDING = IDBKeyRange.only("pending");
const FAILED = IDBKeyRange.only("failed");

/**
 * Append events to the chain and commit them; resolves once they are on disk.
 *
 * The head (last seq, hash, hlc) is read and moved in the same read-write transaction as the events are
 * written, so two tabs recording at once still make a gap-free chain, and a tab killed half-way leaves
 * all or none. Scans that arrive while the previous commit is under way are written together in one
 * transaction (app.js): a commit costs about the same for one event as for ten, so the page keeps up
 * with a scanner however fast it reads.
 */
export async function recordMany(writerId, made) {
  const events = await db.write(["meta", "events"], async (tx) => {
    const meta = tx.objectStore("meta");
    const store = tx.objectStore("events");
    let head = (await db.done(meta.get("head"))) ?? { seq: 0, hash: ZERO_HASH, hlc: 0n, floor: 0n };
    const out = [];
    for (const { type, payload } of made) {
      const last = head.hlc > head.floor ? head.hlc : head.floor;
      const event = {
        seq: head.seq + 1,
        event_id: newEventId(),
        type,
        hlc: nextHlc(last),
        occurred_at: Date.now(),
        prev_hash: head.hash,
        payload,
      };
      event.hash = eventHash(writerId, event);
      event.state = "pending";
      store.add(event);
      head = { seq: event.seq, hash: event.hash, hlc: event.hlc, floor: head.floor };
      out.push(event);
    }
    meta.put(head, "head");
    return out;
  });
  announce("recorded", { seq: events[events.length - 1].seq });
  return events;
}

export async function record(writerId, type, payload) {
  const [event] = await recordMany(writerId, [{ type, payload }]);
  return event;
}

/** After every answer: the writer's next hlc is above the box's clock too (docs/sync-protocol.md §1). */
export async function observeServerHlc(serverHlc) {
  if (typeof serverHlc !== "bigint") serverHlc = BigInt(serverHlc ?? 0);
  await db.write(["meta"], async (tx) => {
    const meta = tx.objectStore("meta");
    const head = (await db.done(meta.get("head"))) ?? { seq: 0, hash: ZERO_HASH, hlc: 0n, floor: 0n };
    if (serverHlc > head.floor) meta.put({ ...head, floor: serverHlc }, "head");
  });
}

export async function pending(limit) {
  return db.all("events", { index: "state", range: PENDING, limit });
}

export async function failed() {
  return db.all("events", { index: "state", range: FAILED });
}

/** What the banner shows: how many events wait for the box, and since when the oldest has. */
export async function stats() {
  return db.read(["events"], async (tx) => {
    const index = tx.objectStore("events").index("state");
    const [waiting, stopped, oldest] = await Promise.all([
      db.done(index.count(PENDING)),
      db.done(index.count(FAILED)),
      db.done(index.get(PENDING)),
    ]);
    return { pending: waiting, failed: stopped, oldestMs: oldest ? oldest.occurred_at : null };
  });
}

/** The events of one session, oldest first: the page's running totals and its list of scans. */
export async function ofSession(sessionId) {
  return db.all("events", { index: "session", range: IDBKeyRange.bound([sessionId, 0], [sessionId, Infinity]) });
}

/**
 * Record what the box answered for a batch, in one transaction: ``ok`` → synced, ``held`` and
 * ``conflicts`` noted on their (synced) events for the verifier to see, refused events failed with the
 * box's code. ``NOT_PROCESSED`` and ``SEQUENCE_GAP`` leave an event pending: it is sent again.
 */
export async function applyAnswer(answer, resendCodes) {
  const ok = new Set(answer.ok.map(Number));
  const held = new Map((answer.held ?? []).map((h) => [Number(h.seq), h.reason]));
  const flagged = new Map((answer.conflicts ?? []).map((c) => [Number(c.seq), c]));
  const refused = new Map((answer.errors ?? []).map((e) => [Number(e.seq), e]));
  const touched = [...new Set([...ok, ...refused.keys()])].sort((a, b) => a - b);
  const notes = { held: [], conflicts: [], failed: [] };
  await db.write(["events"], async (tx) => {
    const store = tx.objectStore("events");
    for (const seq of touched) {
      const event = await db.done(store.get(seq));
      if (!event) continue;
      if (ok.has(seq)) {
        event.state = "synced";
        event.synced_at = Date.now();
        delete event.error;
        if (held.has(seq)) {
          event.held = held.get(seq);
          notes.held.push(event);
        }
        if (flagged.has(seq)) {
          event.conflict = { kind: flagged.get(seq).kind, conflict_id: flagged.get(seq).conflict_id };
          notes.conflicts.push(event);
        }
      } else {
        const error = refused.get(seq);
        event.error = { code: error.code, message: error.message };
        if (!resendCodes.has(error.code)) {
          event.state = "failed";
          notes.failed.push(event);
        }
      }
      store.put(event);
    }
  });
  announce("answered", { ok: ok.size, held: notes.held.length, conflicts: notes.conflicts.length, failed: notes.failed.length });
  return notes;
}

/** A box restored from a backup may lack events it once acknowledged: send them again from there. */
export async function resendFrom(seq) {
  return db.write(["events"], async (tx) => {
    const store = tx.objectStore("events");
    const again = await db.done(store.getAll(IDBKeyRange.lowerBound(seq)));
    for (const event of again) {
      if (event.state === "synced") {
        event.state = "pending";
        store.put(event);
      }
    }
    return again.length;
  });
}

/** A person looked at a refused event and sends it again as it is (the cause was put right on the box). */
export async function retryFailed() {
  await db.write(["events"], async (tx) => {
    const store = tx.objectStore("events");
    for (const event of await db.done(store.index("state").getAll(FAILED))) {
      event.state = "pending";
      store.put(event);
    }
  });
  announce("recorded", {});
}

/** The box refused these for what they say, whatever was resent (docs/sync-protocol.md §4.2): the
 * record is set aside and the next one takes its seq. */
export const DROPPABLE = new Set([
  "SESSION_NOT_FOUND",
  "USER_NOT_FOUND",
  "PRODUCT_NOT_FOUND",
  "RACK_NOT_FOUND",
  "RACK_NOT_IN_SESSION",
  "SCAN_NOT_FOUND",
]);

/**
 * A person set aside the refused event at ``seq``: it moves to the ``dropped`` list in ``meta`` (kept on
 * the device, with the box's code, for whoever looks later), and every later event, none of which the
 * box has accepted, is chained again from ``seq`` on — same ids, payloads and hlcs, new seq, prev_hash
 * and hash — in one transaction, so the chain is never half rewritten.
 */
export async function dropAndRechain(writerId, seq) {
  const moved = await db.write(["meta", "events"], async (tx) => {
    const meta = tx.objectStore("meta");
    const store = tx.objectStore("events");
    const refused = await db.done(store.get(seq));
    if (!refused || refused.state !== "failed" || !DROPPABLE.has(refused.error?.code)) {
      throw new Error("only a record the box refused for what it says can be set aside");
    }
    const later = await db.done(store.getAll(IDBKeyRange.lowerBound(seq, true)));
    if (later.some((e) => e.state === "synced")) throw new Error("the box already holds a later record");
    const before = seq > 1 ? await db.done(store.get(seq - 1)) : null;
    const dropped = (await db.done(meta.get("dropped"))) ?? [];
    dropped.push({ ...refused, dropped_at: Date.now() });
    meta.put(dropped, "dropped");
    store.delete(IDBKeyRange.lowerBound(seq));
    let head = (await db.done(meta.get("head"))) ?? { floor: 0n };
    let prev = before ? before.hash : ZERO_HASH;
    let next = seq;
    for (const event of later) {
      const again = { ...event, seq: next, prev_hash: prev, state: "pending" };
      delete again.error;
      again.hash = eventHash(writerId, again);
      store.add(again);
      prev = again.hash;
      next += 1;
    }
    const last = later.length ? later[later.length - 1].hlc : before ? before.hlc : 0n;
    head = { seq: next - 1, hash: prev, hlc: last, floor: head.floor };
    meta.put(head, "head");
    return later.length;
  });
  announce("recorded", {});
  return moved;
}
