// The writer's chain, byte for byte as docs/sync-protocol.md §1 defines it and as the Python client and
// the box compute it: canonical msgpack (sorted keys, shortest integers, no floats), BLAKE2b-256 hashes,
// an Ed25519 signature over the head of each batch. The protocol's test vectors run against this module
// in the browser (tests/web/test_handheld_chain.py).

import { Encoder, blake2b, decode, monotonicFactory } from "/static/vendor/handheld.js";

export const ZERO_HASH = new Uint8Array(32);
const HEAD_DOMAIN = "stockverify/chain-head/v1";
// sortKeys: maps in key order (our keys are ASCII, where UTF-16 order is UTF-8 byte order).
// useBigInt64: an hlc is above 2^53, so it is a BigInt here, written as a 64-bit integer. With it the
// encoder writes a *number* above 32 bits as a float, so ``wide`` first turns every such integer (an
// occurred_at) into a BigInt, and every small BigInt back into a number: each integer then takes its
// shortest form, as the canonical rules want.
const encoder = new Encoder({ sortKeys: true, useBigInt64: true });
const U32 = 2 ** 32;
const I32 = -(2 ** 31);

export const newEventId = monotonicFactory();

function wide(value) {
  if (typeof value === "number") {
    if (!Number.isInteger(value)) throw new TypeError(`no floats in an event: ${value}`);
    return value >= U32 || value < I32 ? BigInt(value) : value;
  }
  if (typeof value === "bigint") return value < BigInt(U32) && value >= BigInt(I32) ? Number(value) : value;
  if (value === null || typeof value !== "object" || value instanceof Uint8Array) return value;
  if (Array.isArray(value)) return value.map(wide);
  const out = {};
  for (const [key, item] of Object.entries(value)) out[key] = wide(item);
  return out;
}

export function canonical(value) {
  return encoder.encode(wide(value));
}

/** msgpack from the box: 64-bit integers (an hlc) come back as BigInt, every smaller one as a number. */
export function unpack(bytes) {
  return decode(bytes, { useBigInt64: true });
}

export function eventBytes(writerId, event) {
  return canonical([
    1,
    writerId,
    event.seq,
    event.event_id,
    event.type,
    event.hlc,
    event.occurred_at,
    event.prev_hash,
    event.payload,
  ]);
}

export function eventHash(writerId, event) {
  return blake2b(eventBytes(writerId, event), { dkLen: 32 });
}

export function headMessage(writerId, seq, hash) {
  return canonical([HEAD_DOMAIN, writerId, seq, hash]);
}

export async function signHead(privateKey, writerId, seq, hash) {
  const signature = await crypto.subtle.sign("Ed25519", privateKey, headMessage(writerId, seq, hash));
  return new Uint8Array(signature);
}

/** The device's key pair: made here, its private half never extractable (not even by this page's own
 * code), kept in IndexedDB as a CryptoKey. */
export async function makeKeyPair() {
  return crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
}

export async function publicKeyHex(publicKey) {
  return hex(new Uint8Array(await crypto.subtle.exportKey("raw", publicKey)));
}

/** The next hlc after ``last``: the wall clock in the high bits, always above the writer's last one. */
export function nextHlc(last) {
  const wall = BigInt(Date.now()) << 16n;
  return wall > last ? wall : last + 1n;
}

export function hex(bytes) {
  let out = "";
  for (const byte of bytes) out += byte.toString(16).padStart(2, "0");
  return out;
}

export function fromHex(text) {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i += 1) out[i] = Number.parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function sameBytes(a, b) {
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i += 1) if (a[i] !== b[i]) return false;
  return true;
}
