"""Barcode scanners plugged into a demo box: hotplug, code to commit, and four scanners at once.

The real box (``stockverify serve --demo``) runs under umockdev (``tests/hardware/scanner_box.py``): its
udev and /dev are a test bed, each scanner's device node is a pty that the harness, inside the box's
process, writes key events (keyboard-wedge HID scanners) or bytes (the CDC-ACM serial scanner) into.
Times on both sides are ``time.monotonic()``, one clock for the two processes.

- ``hotplug_ready_ms``: each model plugged in (its first plug enrols it: a write), and at the end
  unplugged and plugged in again ``--cycles`` times: from the plug request until ``GET /api/scanners``
  (polled every 5 ms) shows its reader ``reading``; beside it the same end measured from the harness's
  uevent, and the box's own ``ready_ms`` (from the service's record of the plugged scanner, made after
  the enrolment write, to the reader open). Each replug gets a new device node (``event11``, then
  ``event111``…), as from the kernel. Replugs come last: a failing one ends them, and the bench prints
  how many it measured and why it stopped.
- ``code_to_commit_p50_ms`` / ``code_to_commit_p99_ms``: the box's ``commit_ms`` for one assigned
  scanner after ``--codes`` codes typed at ``--rate`` codes/s, each key (press and release) written
  ``KEY_PAUSE_S`` apart as a USB scanner reports them: from the reader handing a complete code over
  (right after its last key is read) to the COMMIT of its events. Beside it, ``last_key_to_live_ms``:
  from the harness writing a code's last key to the test hearing its result on the live stream
  (``GET /api/events``), which adds reading and decoding the keys, publishing and the stream. And
  ``baseline_commit_ms``: a one-row commit to SQLite on the same disk (WAL, ``synchronous=FULL``, as
  the box's), from the test process before the box starts: the floor of any commit here.
- ``scans_per_s``: the three HID scanners and the serial one, each typed from a thread of its own at
  ``--each-rate`` codes/s for ``--seconds``: codes committed per second per scanner (typed, over the
  time from its first code typed to its last code heard committed on the live stream) and in total.
  Every code is then checked: the session's units, each station's ``scanner_units``, each scanner's
  ``codes``, nothing kept, nothing held, and ``dropped_chars`` (must be 0). The harness types one code
  at a time for all scanners (its requests take one lock), so here a HID code's keys go 7 to a write,
  writes 1 ms apart, to leave room for the other three; the serial scanner sends a code in one write,
  as a CDC-ACM scanner sends it in one USB packet.

A live-stream listener (``GET /api/events`` as a supervisor) is open throughout, as the Scanners page
would be.

Codes are EAN-13s of demo products, read from ``GET /api/products/{sku}``; every tenth is a GS1
DataMatrix (``]d2``, AI 01 with a demo product's GTIN, AI 10 a batch, GS, AI 17 an expiry).

    .venv/bin/python -m tests.bench.bench_scanners [--cycles 10] [--codes 2000] [--rate 20]
        [--each-rate 40] [--seconds 20]

Targets are printed beside the figures; like the other benches it exits 0 when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.bench.bench_claims import percentile
from tests.hardware.scanner_box import ScannerBox, station_session

HID = ("zebra_ds2208_hid", "honeywell_vuquest3310g_hid", "datalogic_gryphon_hid")
SERIAL = "zebra_cdc_acm"
MODELS = (*HID, SERIAL)
KEY_PAUSE_S = 0.002  # a key (press and release) every 2 ms: one HID report a millisecond
GS1_EVERY = 10
POLL_S = 0.005
READY_TARGET_MS = 1000.0
COMMIT_TARGET_MS = 30.0
RATE_TARGET = 30.0


class Control:
    """A connection of its own to the harness's control socket, for one thread (``ScannerBox`` has one)."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._stream = self._sock.makefile("rw")

    def ask(self, op: str, **args: Any) -> dict[str, Any]:
        self._stream.write(json.dumps({"op": op, **args}) + "\n")
        self._stream.flush()
        answer: dict[str, Any] = json.loads(self._stream.readline())
        if not answer.pop("ok"):
            raise RuntimeError(f"{op} failed in the box: {answer['error']}")
        return answer

    def scan(self, model: str, code: str, *, chunk: int, pause_s: float) -> dict[str, Any]:
        """The code as the scanner sends it: keys (and Enter) for HID, bytes and CR for the serial one."""
        if model == SERIAL:
            return self.ask("send", model=model, data=code + "\r")
        return self.ask("type", model=model, text=code + "\r", layout="us", chunk=chunk, pause_s=pause_s)

    def close(self) -> None:
        self._stream.close()
        self._sock.close()


class Live:
    """The box's live stream, read in a thread: each scanner ``code`` message with when it arrived."""

    def __init__(self, url: str, ticket: str) -> None:
        self.codes: list[tuple[float, dict[str, Any]]] = []
        self.resyncs = 0
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=url, timeout=httpx.Timeout(10.0, read=None))
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._follow, args=(ticket,), name="live", daemon=True)
        self._thread.start()
        if not self._open.wait(10):
            raise RuntimeError("the live stream did not open")

    def _follow(self, ticket: str) -> None:
        with (
            contextlib.suppress(httpx.HTTPError, RuntimeError, OSError),
            self._client.stream("GET", "/api/events", params={"ticket": ticket}) as r,
        ):
            self._open.set()
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                at = time.monotonic()
                message = json.loads(line[6:])
                if message.get("kind") == "resync":
                    self.resyncs += 1
                elif message.get("kind") == "scanner" and message.get("type") == "code":
                    with self._lock:
                        self.codes.append((at, message))

    def of(self, writer_id: str) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return [(at, m) for at, m in self.codes if m["writer_id"] == writer_id]

    def close(self) -> None:
        self._client.close()


def _ok(client: httpx.Client, method: str, path: str, body: Any = None) -> Any:
    answer = client.request(method, path, json=body)
    if answer.status_code >= 300:
        raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
    return answer.json()


def _live_by_devnode(client: httpx.Client) -> dict[str, dict[str, Any]]:
    rows = _ok(client, "GET", "/api/scanners")["scanners"]
    return {row["live"]["devnode"]: row for row in rows if row["live"]}


def _until(check: Any, timeout: float, what: str, every: float = POLL_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(every)


def catalog_codes(client: httpx.Client, count: int) -> tuple[list[str], list[str]]:
    """EAN-13s of demo products as a scanner reads them, and GS1 DataMatrix codes of others' GTINs."""
    skus = [p["sku"] for p in _ok(client, "GET", f"/api/products?limit={count * 2}")["items"]]
    eans: list[str] = []
    gtins: list[str] = []
    for sku in skus:
        for code in _ok(client, "GET", f"/api/products/{sku}")["codes"]:
            gtin = code["code"]
            if len(gtin) == 14 and gtin.isdigit() and gtin.startswith("0"):  # an EAN-13 as a GTIN-14
                (eans if len(eans) < count else gtins).append(gtin[1:])
                break
        if len(gtins) >= count // 4:
            break
    if not eans or not gtins:
        raise RuntimeError("the demo catalog has no EAN-13 barcodes")
    matrices = [f"]d201{'0' + ean}10LOT{n:03d}\x1d17281231" for n, ean in enumerate(gtins)]
    return eans, matrices


def code_stream(eans: list[str], matrices: list[str], offset: int = 0) -> Any:
    n = offset
    while True:
        yield matrices[n // GS1_EVERY % len(matrices)] if n % GS1_EVERY == GS1_EVERY - 1 else eans[n % len(eans)]
        n += 1


# -- hotplug ----------------------------------------------------------------------------------------
def plug(box: ScannerBox, client: httpx.Client, model: str, timeout: float = 5.0) -> dict[str, Any]:
    """Plug the model in; time until ``GET /api/scanners`` shows its reader open."""
    asked = time.monotonic()
    plugged = box.plug(model)
    devnode = plugged["devnode"]

    def reading() -> dict[str, Any] | None:
        row = _live_by_devnode(client).get(devnode)
        return row if row is not None and row["live"]["state"] == "reading" else None

    row = _until(reading, timeout, f"{model} reading at {devnode}")
    seen = time.monotonic()
    return {
        "devnode": devnode,
        "writer_id": row["writer_id"],
        "test_ms": (seen - asked) * 1000,
        "uevent_ms": (seen - plugged["plugged_at"]) * 1000,
        "box_ready_ms": float(row["live"]["ready_ms"]),
    }


def replugs(
    box: ScannerBox, client: httpx.Client, model: str, devnode: str, cycles: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Unplugged and plugged in again ``cycles`` times (each replug a new node, as from the kernel);
    stops at the first cycle that fails, and says why."""
    out: list[dict[str, Any]] = []
    for _ in range(cycles):
        try:
            box.unplug(model)
            _until(lambda gone=devnode: gone not in _live_by_devnode(client), 5, f"{model} unplugged")
            out.append(plug(box, client, model))
            devnode = out[-1]["devnode"]
        except (TimeoutError, RuntimeError, OSError, ValueError, httpx.HTTPError) as exc:
            alive = box.server.process.poll() is None
            return out, f"{type(exc).__name__}: {exc}" + ("" if alive else " (the box process ended)")
    return out, None


# -- code to commit -----------------------------------------------------------------------------------
def paced(control: Control, model: str, codes: Any, count: int, rate: float, chunk: int, pause_s: float,
          typed: list[tuple[float, str]], until: float | None = None) -> int:  # fmt: skip
    """Type ``count`` codes (or until ``until``) at ``rate`` a second; each code's last key's time is kept."""
    interval = 1.0 / rate
    next_at = time.monotonic()
    late = 0
    for _ in range(count):
        now = time.monotonic()
        if until is not None and now >= until:
            break
        if now < next_at:
            time.sleep(next_at - now)
        elif now - next_at > interval:
            late += 1  # a slot behind: keep the pace from here rather than type a burst to catch up
            next_at = now
        code = next(codes)
        answer = control.scan(model, code, chunk=chunk, pause_s=pause_s)
        # ``type`` returns after its last write and the pause after it.
        typed.append((answer["typed_at"] - (pause_s if chunk and model != SERIAL else 0.0), code))
        next_at += interval
    return late


def _written(client: httpx.Client, devnode: str, codes: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        live = _live_by_devnode(client)[devnode]["live"]
        return live if live["codes"] >= codes and live["waiting"] == 0 else None

    live: dict[str, Any] = _until(done, 60, f"{devnode}: {codes} codes written", every=0.05)
    return live


def baseline_commits(path: Path, count: int = 500) -> list[float]:
    """Milliseconds of a one-row commit to SQLite on the same disk, WAL with ``synchronous=FULL`` as the
    box's: the floor of any code's commit on this machine."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, code TEXT)")
    out = []
    for n in range(count):
        began = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (n, code) VALUES (?, ?)", (n, f"{n:013d}"))
        conn.execute("COMMIT")
        out.append((time.perf_counter() - began) * 1000)
        time.sleep(0.002)
    conn.close()
    return out


def _mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _dist(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.1f}, p99 {percentile(values, 0.99):.1f}, max {max(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=10, help="plug/unplug cycles per model")
    parser.add_argument("--codes", type=int, default=2000, help="codes typed for code_to_commit")
    parser.add_argument("--rate", type=float, default=20.0, help="codes/s typed for code_to_commit")
    parser.add_argument("--each-rate", type=float, default=40.0, help="codes/s offered by each scanner at once")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the four scanners type at once")
    args = parser.parse_args()

    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        "box under umockdev (each scanner's node a pty written by the harness in the box's process)"
    )
    print(
        f"targets: hotplug_ready_ms <= {READY_TARGET_MS:,.0f}; code_to_commit_p99_ms <= {COMMIT_TARGET_MS:g}; "
        f"scans_per_s >= {RATE_TARGET:g} per scanner with 0 dropped_chars"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-scanners-") as scratch:
        baseline = baseline_commits(Path(scratch) / "baseline.db")
        box = ScannerBox(Path(scratch) / "box", "--demo", env={"STOCKVERIFY_LOG_LEVEL": "warning"})
        live: Live | None = None
        try:
            station = station_session(box.server)
            client: httpx.Client = station["supervisor"]
            session_id = station["session_id"]
            racks = list(station["racks"].values())
            eans, matrices = catalog_codes(client, 40)
            ticket = _ok(client, "POST", "/api/events/ticket")["ticket"]
            live = Live(box.server.url, ticket)

            # Every scanner plugged in (the first time: it is enrolled) and assigned: two to a rack.
            first_plug: dict[str, dict[str, Any]] = {}
            for n, model in enumerate(MODELS):
                first_plug[model] = plug(box, client, model, timeout=10)
                _ok(client, "PUT", f"/api/scanners/{first_plug[model]['writer_id']}/station",
                    {"session_id": session_id, "rack_id": racks[n % len(racks)]})  # fmt: skip
            devnodes = {m: first_plug[m]["devnode"] for m in MODELS}
            writers = {m: first_plug[m]["writer_id"] for m in MODELS}
            typed_by: dict[str, list[tuple[float, str]]] = {model: [] for model in MODELS}

            # Code to commit: one scanner alone, at a scanner's pace.
            alone = HID[0]
            control = Control(box.control)
            late_alone = paced(
                control, alone, code_stream(eans, matrices), args.codes, args.rate, 2, KEY_PAUSE_S, typed_by[alone]
            )
            typed_alone = len(typed_by[alone])
            typed_alone_per_s = (typed_alone - 1) / (typed_by[alone][-1][0] - typed_by[alone][0][0])
            alone_live = _written(client, devnodes[alone], args.codes)
            commit = alone_live["commit_ms"]
            heard = _until(lambda: len(live.of(writers[alone])) >= args.codes and live.of(writers[alone]), 30,
                           "the live stream's codes")  # fmt: skip
            to_live = [(at - typed[0]) * 1000 for (at, _), typed in zip(heard, typed_by[alone], strict=True)]
            control.close()

            # Four scanners at once, each typed from its own thread.
            before_codes = {m: len(typed_by[m]) for m in MODELS}
            before_live = {m: len(live.of(writers[m])) for m in MODELS}
            lates: dict[str, int] = {}
            errors: list[BaseException] = []
            begin = time.monotonic() + 0.2
            until = begin + args.seconds

            def scanner(model: str, n: int) -> None:
                ctl = Control(box.control)
                try:
                    time.sleep(max(0.0, begin + n * 0.005 - time.monotonic()))
                    # 7 keys a write, writes 1 ms apart: the harness types one code at a time for all scanners.
                    lates[model] = paced(ctl, model, code_stream(eans, matrices, offset=n * 7), 10**9,
                                         args.each_rate, 14, 0.001, typed_by[model], until=until)  # fmt: skip
                except BaseException as exc:
                    errors.append(exc)
                finally:
                    ctl.close()

            threads = [threading.Thread(target=scanner, args=(m, n), name=m) for n, m in enumerate(MODELS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
            final = {m: _written(client, devnodes[m], len(typed_by[m])) for m in MODELS}
            rates: dict[str, dict[str, float]] = {}
            for m in MODELS:
                count = len(typed_by[m]) - before_codes[m]
                heard_m = _until(
                    lambda m=m, count=count: len(live.of(writers[m])) >= before_live[m] + count and live.of(writers[m]),
                    30,
                    f"{m}: codes on the live stream",
                )[before_live[m] :]
                first = typed_by[m][before_codes[m]][0]
                last = heard_m[-1][0]
                rates[m] = {
                    "typed": count,
                    "offered": count / (typed_by[m][-1][0] - first),
                    "per_s": count / (last - first),
                    "first": first,
                    "last": last,
                    "heard": len(heard_m),
                }
            total_s = max(r["last"] for r in rates.values()) - min(r["first"] for r in rates.values())
            total = sum(r["typed"] for r in rates.values())

            # Every code committed once: the session's units, each station's, each scanner's own count.
            session = _ok(client, "GET", f"/api/sessions/{session_id}")
            session_units = sum(i["qty"] for i in session["items"]) + sum(u["qty"] for u in session["unmatched"])
            unmatched = sum(u["qty"] for u in session["unmatched"])
            stations = {m: _ok(client, "GET", f"/api/scanners/{writers[m]}/station")["totals"] for m in MODELS}
            kept = _ok(client, "GET", "/api/scanners/kept")
            outcomes: dict[str, int] = {}
            for _, message in live.codes:
                outcomes[message["outcome"]] = outcomes.get(message["outcome"], 0) + 1
            dropped = sum(f["dropped_chars"] for f in final.values())
            resyncs = live.resyncs

            # Last, with the other figures in hand (a failing replug ends them): each model replugged.
            again: dict[str, list[dict[str, Any]]] = {}
            failed: dict[str, str] = {}
            for model in MODELS:
                again[model], why = replugs(box, client, model, devnodes[model], args.cycles)
                if why is not None:
                    failed[model] = why
                    if box.server.process.poll() is not None:
                        break
        except BaseException:
            print(f"the box's log ends:\n{box.server.output()[-4000:]}", file=sys.stderr)
            raise
        finally:
            if live is not None:
                live.close()
            box.close()
    elapsed = time.monotonic() - started

    # -- figures ------------------------------------------------------------------------------------
    samples = [first_plug[m] for m in MODELS] + [c for m in MODELS for c in again.get(m, [])]
    all_test = [c["test_ms"] for c in samples]
    worst = max(all_test)
    print(
        f"hotplug_ready_ms: p50 {statistics.median(all_test):.1f}, max {worst:.1f}  target <= "
        f"{READY_TARGET_MS:,.0f}: {_mark(worst <= READY_TARGET_MS)}  (plug request to GET /api/scanners showing "
        f"'reading', polled every {POLL_S * 1000:.0f} ms; {len(samples)} plugs: each model's first, which "
        f"enrols it, then up to {args.cycles} replugs)"
    )
    for model in MODELS:
        one, more = first_plug[model], again.get(model, [])
        line = (
            f"  {model:27} first: request {one['test_ms']:5.1f}, uevent {one['uevent_ms']:5.1f}, "
            f"box ready_ms {one['box_ready_ms']:5.1f}"
        )
        if more:
            test, uevent, own = ([c[k] for c in more] for k in ("test_ms", "uevent_ms", "box_ready_ms"))
            line += (
                f"; {len(more)} replugs p50/max: request {statistics.median(test):5.1f}/{max(test):5.1f}, "
                f"uevent {statistics.median(uevent):5.1f}/{max(uevent):5.1f}, "
                f"box ready_ms {statistics.median(own):5.1f}/{max(own):5.1f}"
            )
        print(line)
        if model in failed:
            print(f"    replugs stopped: the test bed failed: {failed[model]}")
    assert commit is not None
    print(f"code_to_commit_p50_ms: {commit['p50']:.2f}")
    print(
        f"code_to_commit_p99_ms: {commit['p99']:.2f}  target <= {COMMIT_TARGET_MS:g}: "
        f"{_mark(commit['p99'] <= COMMIT_TARGET_MS)}  (box's commit_ms of {alone}: n {commit['n']}, max "
        f"{commit['max']:.2f}; {args.codes} codes at {args.rate:g}/s offered, typed at "
        f"{typed_alone_per_s:.1f}/s, a key every {KEY_PAUSE_S * 1000:g} ms; "
        f"{late_alone} times over a slot behind)"
    )
    base50 = statistics.median(baseline)
    print(
        f"  baseline_commit_ms: p50 {base50:.2f}, p99 {percentile(baseline, 0.99):.2f}  (a one-row SQLite commit, "
        f"WAL with synchronous=FULL, on the same disk, from the test process); ratio_p50_vs_baseline: "
        f"{commit['p50'] / base50:.1f}"
    )
    print(f"  last_key_to_live_ms: {_dist(to_live)}  (harness's last key written to the test hearing the "
          "result on GET /api/events: adds reading, decoding, publishing and the stream)")  # fmt: skip
    print(
        f"scans_per_s: {total / total_s:.1f} in total  ({len(MODELS)} scanners at once for {args.seconds:g} s, "
        f"{args.each_rate:g}/s offered each; 7 keys a write, writes 1 ms apart; serial: a code a write)"
    )
    for m in MODELS:
        r, f = rates[m], final[m]
        cm = f["commit_ms"]
        print(
            f"  {m:28} {r['per_s']:5.1f}/s  target >= {RATE_TARGET:g}: {_mark(r['per_s'] >= RATE_TARGET)}  "
            f"({r['typed']} typed at {r['offered']:.1f}/s, {lates.get(m, 0)} times behind; commit_ms p50 "
            f"{cm['p50']:.1f} p99 {cm['p99']:.1f} max {cm['max']:.1f} over its last {cm['n']})"
        )
    typed_total = sum(len(v) for v in typed_by.values())
    per_scanner_ok = all(stations[m]["scanner_units"] == len(typed_by[m]) == final[m]["codes"] for m in MODELS)
    once = session_units == typed_total and per_scanner_ok and not kept and set(outcomes) == {"counted"}
    print(
        f"committed_once: {once}  (typed {typed_total}; session units {session_units}, of which unmatched "
        f"{unmatched}; station scanner_units "
        + ", ".join(f"{stations[m]['scanner_units']}/{len(typed_by[m])}" for m in MODELS)
        + f"; scanner codes {', '.join(str(final[m]['codes']) for m in MODELS)}; kept {len(kept)}; "
        f"outcomes on the live stream {outcomes}; stream resyncs {resyncs})"
    )
    print(f"dropped_chars: {dropped}  target 0: {_mark(dropped == 0)}")
    print(f"bench_s: {elapsed:.0f}")


if __name__ == "__main__":
    main()
