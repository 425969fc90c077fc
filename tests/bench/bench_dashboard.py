"""The dashboard's floor map in headless chromium: first render of the demo store's 300 racks, and the
time from a claim's response to its tile repainted.

A demo box runs as its own process with a count in progress (``tests/web/scenario.py``). Both figures are
taken inside the page, on the browser's own clock:

- ``floor_map_render_ms``: the map's first render in a fresh browser context (no cache, a new
  renderer): from the floor view's start to the end of the first frame that shows the 300 tiles, i.e.
  the run's rack board fetched, the tiles built, laid out and painted. Median of ``--loads``. Printed
  beside it: ``page_load_to_map_ms``, the same end point from navigation start (HTML, scripts and the
  person's permissions fetched first), and the part spent drawing once the board is in hand.
- ``event_to_paint_ms``: the page claims a rack with ``fetch`` (as a handheld would, with a verifier's
  token) and takes ``performance.now()`` when the response arrives; a MutationObserver on the tile
  notes when the live stream's message repainted it, and the end of the next frame is the paint. The
  figure is paint minus response, 0 when the tile was repainted before the response arrived. Median of
  ``--claims`` racks.

    .venv/bin/python -m tests.bench.bench_dashboard [--loads 5] [--claims 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from tests.bench.bench_claims import percentile
from tests.conftest import CHROMIUM, ServerProcess
from tests.web.conftest import TABLET
from tests.web.scenario import LONG_LEASES, build

_TOKEN = "token => sessionStorage.setItem('stockverify.token', token)"

_CLAIM = """
async ({runId, rack, sessionId, token}) => {
  const tile = document.querySelector(`button.tile[data-rack="${rack}"]`);
  const painted = new Promise((resolve) => {
    const watch = new MutationObserver(() => {
      if (tile.dataset.state !== "claimed") return;
      watch.disconnect();
      const changed = performance.now();
      // The frame's callback runs before its paint; a message posted from it is handled after.
      requestAnimationFrame(() => {
        const channel = new MessageChannel();
        channel.port1.onmessage = () => resolve({changed, painted: performance.now()});
        channel.port2.postMessage(null);
      });
    });
    watch.observe(tile, {attributes: true, attributeFilter: ["data-state"]});
  });
  const sent = performance.now();
  const answer = await fetch(`/api/runs/${runId}/racks/${rack}/claim`, {
    method: "POST",
    headers: {"Authorization": `Bearer ${token}`, "Content-Type": "application/json"},
    body: JSON.stringify({session_id: sessionId}),
  });
  const answered = performance.now();
  if (answer.status !== 201) throw new Error(`claim answered ${answer.status}: ${await answer.text()}`);
  return {sent, answered, ...(await painted)};
}
"""


def _render(browser: Any, url: str, token: str, run_id: str) -> tuple[float, float, float]:
    context = browser.new_context(viewport=TABLET)
    try:
        page = context.new_page()
        page.add_init_script(f"({_TOKEN})({token!r})")
        page.goto(f"{url}/#/floor/{run_id}")
        page.wait_for_selector("html[data-floor-painted]", timeout=30000)
        marks: dict[str, float] = page.evaluate(
            "() => Object.fromEntries(performance.getEntriesByType('mark').map(m => [m.name, m.startTime]))"
        )
        tiles = page.locator("button.tile").count()
        assert tiles == 300, tiles
        painted = marks["floor:painted"]
        return painted, painted - marks["floor:start"], painted - marks["floor:data"]
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--claims", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "box", "--demo", env={**LONG_LEASES, "STOCKVERIFY_LOG_LEVEL": "warning"})
        try:
            server.wait_ready()
            count = build(server)
            boss = count.tokens["supervisor"]
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
                _render(browser, server.url, boss, count.run_id)  # the box's first answers warm its caches
                loads = [_render(browser, server.url, boss, count.run_id) for _ in range(args.loads)]

                context = browser.new_context(viewport=TABLET)
                page = context.new_page()
                page.add_init_script(f"({_TOKEN})({boss!r})")
                page.goto(f"{server.url}/#/floor/{count.run_id}")
                page.wait_for_selector("#live[data-state='live']", timeout=30000)
                racks = [f"DMG-{n:02d}" for n in range(1, args.claims + 1)]
                claims = [
                    page.evaluate(
                        _CLAIM,
                        {
                            "runId": count.run_id,
                            "rack": rack,
                            "sessionId": count.sessions["verifier"],
                            "token": count.tokens["verifier"],
                        },
                    )
                    for rack in racks
                ]
                context.close()
                browser.close()
        finally:
            server.stop()

    total = [load[0] for load in loads]
    view = [load[1] for load in loads]
    drawing = [load[2] for load in loads]
    delays = [max(0.0, c["painted"] - c["answered"]) for c in claims]
    early = sum(c["painted"] <= c["answered"] for c in claims)
    round_trip = [c["answered"] - c["sent"] for c in claims]
    print("racks: 300")
    print(
        f"floor_map_render_ms: {statistics.median(view):.0f}  (view start to 300 tiles painted: board fetched, drawn)"
    )
    print(f"page_load_to_map_ms: {statistics.median(total):.0f}  (navigation start to the same paint, cold)")
    print(f"floor_draw_ms: {statistics.median(drawing):.0f}  (building, laying out and painting the tiles)")
    print(f"event_to_paint_ms: {statistics.median(delays):.0f}  (claim response to tile repainted)")
    print(f"event_to_paint_p95_ms: {percentile(delays, 0.95):.0f}")
    print(f"painted_before_response: {early} of {len(claims)}")
    print(f"claim_round_trip_ms: {statistics.median(round_trip):.0f}")


if __name__ == "__main__":
    main()
