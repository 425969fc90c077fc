// The handheld's own storage: IndexedDB is the device's truth. A scan exists once its transaction has
// committed here (durability "strict": flushed to disk, so a killed tab or a dead battery keeps it), and
// only then does the page confirm it. Everything else (the login, the session list, the catalog) is a
// copy of the box's word kept so that the page works with the box out of reach.
//
// Stores:
//   meta    key → value: "device" (writer id, token, the non-extractable key pair), "head" (the chain's
//           last seq, hash and hlc), "login", "catalog", "sessions", "work" (what the verifier is on).
//   events  one row per event of this writer, by seq: the signed fields plus its state on the way to the
//           box ("pending" → "synced", or "failed" with the box's code) and what the box said of it.
//   photos  photos taken on the device, by SHA-256, until the box has them.

const NAME = "stockverify-handheld";
const VERSION = 1;
const STRICT = { durability: "strict" };

let opened = null;

export function open() {
  if (!opened) {
    opened = new Promise((resolve, reject) => {
      const request = indexedDB.open(NAME, VERSION);
      request.onupgradeneeded = () => {
        const db = request.result;
        db.createObjectStore("meta");
        const events = db.createObjectStore("events", { keyPath: "seq" });
        events.createIndex("state", "state");
        events.createIndex("session", ["payload.session_id", "seq"]);
        db.createObjectStore("photos", { keyPath: "sha256" });
      };
      request.onsuccess = () => {
        const db = request.result;
        // Another tab upgraded the page: let it, and reopen on the next call.
        db.onversionchange = () => {
          db.close();
          opened = null;
        };
        resolve(db);
      };
      request.onerror = () => reject(request.error);
      request.onblocked = () => reject(new Error("another tab of this page holds an older copy of its storage open"));
    });
  }
  return opened;
}

export function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export function committed(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error("the storage transaction was aborted"));
  });
}

/** Run ``work(tx)`` in one read-write transaction over ``stores`` and resolve with its result once the
 * transaction has committed to disk. IndexedDB runs read-write transactions over the same stores one
 * at a time, in every tab of the page, which is what keeps the chain gap-free. */
export async function write(stores, work) {
  const db = await open();
  const tx = db.transaction(stores, "readwrite", STRICT);
  const finished = committed(tx);
  let result;
  try {
    result = await work(tx);
  } catch (error) {
    try {
      tx.abort();
    } catch {
      // already finished
    }
    await finished.catch(() => {});
    throw error;
  }
  try {
    tx.commit?.(); // every request is made: commit now rather than when the browser notices
  } catch {
    // it was already committing
  }
  await finished;
  return result;
}

export async function read(stores, work) {
  const db = await open();
  const tx = db.transaction(stores, "readonly");
  return work(tx);
}

export async function getMeta(key) {
  return read(["meta"], (tx) => done(tx.objectStore("meta").get(key)));
}

export async function setMeta(key, value) {
  return write(["meta"], (tx) => done(tx.objectStore("meta").put(value, key)));
}

export async function deleteMeta(key) {
  return write(["meta"], (tx) => done(tx.objectStore("meta").delete(key)));
}

/** Rows of ``store`` (or of one of its indexes) in key order, at most ``limit``. */
export async function all(store, { index, range, limit } = {}) {
  return read([store], (tx) => {
    const source = index ? tx.objectStore(store).index(index) : tx.objectStore(store);
    return done(source.getAll(range ?? null, limit));
  });
}

export async function count(store, { index, range } = {}) {
  return read([store], (tx) => {
    const source = index ? tx.objectStore(store).index(index) : tx.objectStore(store);
    return done(source.count(range ?? null));
  });
}
