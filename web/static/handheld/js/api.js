// Talking to the box. Person routes (the verifier's login) speak JSON with a bearer token; the device
// routes (/api/sync/*) speak msgpack with the device token, because an hlc is a 64-bit integer that JSON
// numbers cannot carry exactly. Every request also tells the page whether the box is reachable, which
// is what the banner shows: a phone on the store's Wi-Fi with the box down is offline for counting.

import { canonical, unpack } from "./chain.js";

export const MSGPACK = "application/msgpack";

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `the box answered ${status}`);
    this.status = status;
    this.code = body?.code || `HTTP_${status}`;
    this.details = body?.details ?? null;
    this.retryAfterS = Number(body?.details?.retry_after_s ?? 0) || 0;
  }

  /** Network failures, timeouts, 5xx, 408 and 429 may succeed later (docs/sync-protocol.md §4.5). */
  get retryable() {
    return this.status === 0 || this.status >= 500 || this.status === 408 || this.status === 429;
  }
}

export const net = new EventTarget();
export const link = { reachable: null, since: Date.now() };

function reached(ok) {
  if (link.reachable !== ok) {
    link.reachable = ok;
    link.since = Date.now();
    net.dispatchEvent(new CustomEvent("change", { detail: { reachable: ok } }));
  }
}

let bearer = null;
export function setBearer(token) {
  bearer = token;
}

async function boxFetch(path, init, timeoutMs) {
  let answer;
  try {
    answer = await fetch(path, { ...init, cache: "no-store", signal: AbortSignal.timeout(timeoutMs) });
  } catch (error) {
    reached(false);
    const timedOut = error?.name === "TimeoutError";
    throw new ApiError(0, {
      code: timedOut ? "TIMEOUT" : "BOX_UNREACHABLE",
      message: timedOut ? "the box did not answer in time" : "the box cannot be reached",
    });
  }
  reached(true);
  return answer;
}

async function problem(answer, parse) {
  let body = null;
  try {
    body = await parse(answer);
  } catch {
    body = null;
  }
  const error = new ApiError(answer.status, body);
  const header = Number(answer.headers.get("Retry-After"));
  if (header > 0) error.retryAfterS = Math.max(error.retryAfterS, header);
  return error;
}

/** A person route, as the logged-in verifier. */
export async function person(method, path, body, { timeoutMs = 15000 } = {}) {
  const headers = { Accept: "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const answer = await boxFetch(path, { method, headers, body: payload }, timeoutMs);
  if (!answer.ok) throw await problem(answer, (r) => r.json());
  if (answer.status === 204) return null;
  return answer.json();
}

/** A device route: msgpack both ways, with this device's token. ``raw`` sends bytes as they are. */
export async function device(method, path, deviceToken, body, { raw, contentType, timeoutMs = 20000, etag } = {}) {
  const headers = { Accept: MSGPACK, Authorization: `Device ${deviceToken}` };
  if (etag) headers["If-None-Match"] = `"${etag}"`;
  let payload;
  if (raw !== undefined) {
    headers["Content-Type"] = contentType;
    payload = raw;
  } else if (body !== undefined) {
    headers["Content-Type"] = MSGPACK;
    payload = canonical(body);
  }
  const answer = await boxFetch(path, { method, headers, body: payload }, timeoutMs);
  const parse = async (r) => {
    const bytes = new Uint8Array(await r.arrayBuffer());
    if (!bytes.length) return null;
    return (r.headers.get("Content-Type") || "").startsWith(MSGPACK) ? unpack(bytes) : JSON.parse(new TextDecoder().decode(bytes));
  };
  if (answer.status === 304) return null; // what the device holds is current
  if (!answer.ok) throw await problem(answer, parse);
  return parse(answer);
}

/** Pairing happens before the device has a token: JSON, no credentials. */
export async function pair(code, name, publicKey) {
  return person("POST", "/api/devices/pair", { code, name, public_key: publicKey });
}

/** A number from a msgpack answer: 64-bit values arrive as BigInt. */
export function num(value) {
  return typeof value === "bigint" ? Number(value) : value;
}
