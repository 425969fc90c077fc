// Photos of an item: shrunk on the device (at most 1280 px on the long side, JPEG), kept in IndexedDB
// under their SHA-256 with the event that attaches them, and sent before that event (sender.js).

import * as db from "./db.js";
import { hex } from "./chain.js";

const LONG_SIDE = 1280;

export async function shrink(file) {
  const bitmap = await createImageBitmap(file);
  const scale = Math.min(1, LONG_SIDE / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close?.();
  return new Promise((resolve, reject) =>
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the photo could not be encoded"))), "image/jpeg", 0.8),
  );
}

/** Keep the photo; resolve with what the photo.attached event names. */
export async function keep(blob) {
  const sha256 = hex(new Uint8Array(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer())));
  const photo = { sha256, blob, content_type: blob.type || "image/jpeg", size: blob.size, uploaded: false };
  await db.write(["photos"], (tx) => db.done(tx.objectStore("photos").put(photo)));
  return { sha256, content_type: photo.content_type, size: photo.size };
}
