// The handheld page's third-party code, bundled into /static/vendor/handheld.js by `make`.
// msgpack: the canonical bytes of an event (sorted keys, shortest integers, bigint for 64-bit hlcs).
// blake2b: an event's hash. ulid: event ids that sort by time.
export { Encoder, decode } from "@msgpack/msgpack";
export { blake2b } from "@noble/hashes/blake2.js";
export { monotonicFactory } from "ulid";
