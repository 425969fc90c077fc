// The disk banner: a box whose disk is full keeps answering reads, so nothing else on the page would
// show that scans are no longer being saved. GET /api/health says so (status "degraded", disk.problem
// or disk.low, and a reason in words); this polls it every 10 s, and at once when a write is refused
// with 507, and shows the box's own reason until health is "ok" again.

import { get, whenDiskRefused } from "./api.js";

const POLL_MS = 10000;

export function watchDisk(banner) {
  let timer = null;
  let checking = false;

  async function check() {
    if (checking) return;
    checking = true;
    clearTimeout(timer);
    try {
      show(await get("/api/health"));
    } catch {
      // An unreachable box is the live dot's news, not the disk's; keep what was shown.
    } finally {
      checking = false;
      timer = setTimeout(check, POLL_MS);
    }
  }

  function show(health) {
    const disk = health?.disk;
    const full = Boolean(disk && (disk.problem || disk.low));
    banner.hidden = !full;
    banner.dataset.problem = disk?.problem || (disk?.low ? "LOW" : "");
    banner.textContent = full ? health.reason || "The box's disk is full: scans are not being saved." : "";
  }

  whenDiskRefused(check);
  check();
}
