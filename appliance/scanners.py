"""The box's scanners at work: found by udev, each read by a reader of its own, its codes recorded.

``hardware.udev.ScannerWatcher`` reports scanners plugged and unplugged on the event loop. For each one
plugged in, the service enrols it (``counting.stations.enroll``: the same scanner again after a replug),
opens a reader for its kind (``hardware.evdev_reader`` grabbed, or ``hardware.serial_scanner``) with the
layout, suffix and baud the store set for it, and runs a **supervisor** task that reopens the reader
if it fails while the scanner is still there (another program holding the grab, a settings change)
with a backed-off delay, and a **recorder** task that takes the codes the reader hands over and writes
them, in the order read, through ``counting.stations.record_codes``: codes read while a write is under
way go in the next write together, so a scanner read at 30 codes a second costs a few commits a
second, not thirty.

The readers' threads touch nothing of the service: each callback is handed to the loop with
``call_soon_threadsafe``. A reader ends on an unplug after handing over every complete code it read,
and the recorder writes what it holds before the scanner is forgotten, so an unplug loses only an
unfinished code (which the reader reports, and the page shows). A write the box refuses (a full disk)
is retried, with the codes kept in order meanwhile.

Live news goes on the box's bus as ``kind: "scanner"`` messages: ``plugged``, ``unplugged``,
``status`` (a reader opened, failed, dropped characters) and ``code`` (what became of each code), which
the dashboard's Scanners page and a station's screen follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from appliance.box import Box
from appliance.counting import codes, stations
from appliance.errors import Conflict, StockVerifyError
from hardware import gs1
from hardware.evdev_reader import EvdevScanner
from hardware.reader import DropReason, ScannerReader
from hardware.serial_scanner import SerialScanner, Suffix
from hardware.udev import AllowList, ScannerDevice, ScannerEvent, ScannerKind, ScannerWatcher
from replication.wire.hlc import wall_ms

log = logging.getLogger(__name__)

MAX_BATCH = 200  # codes of one scanner in one write
# A node udev announced may take a moment to open (its permissions applied): the first retry is quick.
REOPEN_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0, 15.0, 30.0)
WRITE_RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)
MAX_TEST_MINUTES = 30
RECENT = 20  # results each scanner keeps for the page
COMMIT_WINDOW = 2000
STOP_WRITE_S = 10.0  # how long a stopping box waits for codes read before the stop to be written
SETTINGS_CHECK_S = 5.0  # how often a reading scanner's settings are compared with the store's


@dataclass
class _Pending:
    read: stations.Read
    at: float  # time.monotonic() when the reader handed it over: code_to_commit starts here


@dataclass
class Plugged:
    """One scanner plugged in now, as the loop knows it."""

    writer_id: str
    device: ScannerDevice
    name: str
    reader: ScannerReader | None = None
    state: str = "opening"  # opening, reading, failed, unplugged
    error: str | None = None
    codes: int = 0
    dropped_chars: int = 0
    test_until_ms: int = 0
    recent: list[dict[str, Any]] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)
    plugged_at: float = field(default_factory=time.monotonic)
    plugged_at_ms: int = field(default_factory=wall_ms)
    ready_at: float | None = None  # when its reader first opened: ready_ms is from plugged_at (udev's news) to here
    # Seconds from the reader handing a code over to its COMMIT, for the last codes: a slow card shows here.
    commit_s: deque[float] = field(default_factory=lambda: deque(maxlen=COMMIT_WINDOW))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    reopen: asyncio.Event = field(default_factory=asyncio.Event)  # close the reader and open it again
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the current reader ended
    end_error: BaseException | None = None
    settings: tuple[Any, ...] = ()  # what the reader was opened with
    gone: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        return {
            "writer_id": self.writer_id,
            "devnode": self.device.devnode,
            "reader": self.device.kind.value,
            "state": self.state,
            "error": self.error,
            "plugged_at": self.plugged_at_ms,
            "codes": self.codes,
            "dropped_chars": self.dropped_chars,
            "waiting": len(self.pending),
            "test_until": self.test_until_ms or None,
            # The settings its reader was opened with: after a change, the new ones once it has reopened.
            "opened_with": dict(zip(("layout", "variant", "suffix", "baud"), self.settings, strict=True))
            if self.settings
            else None,
            "ready_ms": round((self.ready_at - self.plugged_at) * 1000, 1) if self.ready_at is not None else None,
            "commit_ms": _percentiles(self.commit_s),
            "recent": self.recent,
        }


def _settings(row: Any) -> tuple[Any, ...]:
    """What a reader is opened with: a change to any of these opens it again."""
    return (row["layout"], row["variant"], row["suffix"], row["baud"])


def _percentiles(seconds: deque[float]) -> dict[str, float] | None:
    if not seconds:
        return None
    ordered = sorted(seconds)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {
        "n": len(ordered),
        "p50": round(cuts[49] * 1000, 2),
        "p99": round(cuts[98] * 1000, 2),
        "max": round(ordered[-1] * 1000, 2),
    }


Recorded = Callable[[Plugged, list[stations.Result], list[float]], None]


class ScannerService:
    """Owns the watcher, the readers and the recorders; started and stopped by the box's lifespan."""

    def __init__(self, box: Box, *, allow: AllowList) -> None:
        self.box = box
        self.allow = allow
        self.plugged: dict[str, Plugged] = {}  # by writer id
        self.unavailable: str | None = None  # why there are no scanners here (no udev), if so
        # Told of every write: the scanner, its results and each code's seconds from reader to commit.
        self.on_recorded: list[Recorded] = []
        self._by_devnode: dict[str, Plugged] = {}
        self._watcher: ScannerWatcher | None = None
        self._udev: asyncio.Queue[ScannerEvent] = asyncio.Queue()
        self._follower: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- life ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._follower = asyncio.create_task(self._follow(), name="scanner-follow")
        watcher = ScannerWatcher(self._udev.put_nowait, allow=self.allow)
        try:
            await watcher.start()
        except Exception as exc:  # no udev here (a container, a laptop without it): the box runs on
            self.unavailable = str(exc)
            log.warning("scanners: none can be read on this box: %s", exc)
            return
        self._watcher = watcher
        log.info("scanners: watching for scanners plugged into the box", extra={"present": len(watcher.present)})

    async def stop(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None
        # Scanners still in are closed as at an unplug: each reader hands over what it read, each
        # recorder writes what it holds.
        for plugged in list(self.plugged.values()):
            await self._unplugged(plugged, write_within_s=STOP_WRITE_S)
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower

    async def _follow(self) -> None:
        """udev's news, one at a time and in order: a replug is never handled before its unplug."""
        while True:
            event = await self._udev.get()
            heard_at = time.monotonic()
            try:
                if event.action == "added":
                    await self._added(event.device, heard_at)
                else:
                    plugged = self._by_devnode.get(event.device.devnode)
                    if plugged is not None:
                        await self._unplugged(plugged)
            except Exception:
                log.exception("scanners: handling %s of %s failed", event.action, event.device.devnode)

    async def _added(self, device: ScannerDevice, heard_at: float) -> None:
        box = self.box
        row = await box.db.awrite(
            lambda conn: stations.enroll(conn, box.log, box.node, device, layout=box.settings.scanner_layout)
        )
        plugged = Plugged(row["writer_id"], device, row["name"], plugged_at=heard_at)
        self.plugged[plugged.writer_id] = plugged
        self._by_devnode[device.devnode] = plugged
        log.info(
            "scanner plugged in",
            extra={"scanner": plugged.name, "writer_id": plugged.writer_id, "devnode": device.devnode},
        )
        self._publish(plugged, "plugged")
        plugged.tasks = [
            asyncio.create_task(self._supervise(plugged), name=f"scanner-read {device.devnode}"),
            asyncio.create_task(self._record(plugged), name=f"scanner-record {device.devnode}"),
        ]

    async def _unplugged(self, plugged: Plugged, *, write_within_s: float | None = None) -> None:
        plugged.gone = True
        plugged.reopen.set()
        supervise, record = plugged.tasks
        await supervise  # the reader is closed: every code it read is in ``pending``
        plugged.wake.set()
        try:
            async with asyncio.timeout(write_within_s):
                await record  # and written
        except TimeoutError:
            # Stopping while the box refuses writes: what could not be written is said in full, for
            # the field tech, rather than dropped without a word.
            log.error(
                "scanner codes NOT written at stop",
                extra={"scanner": plugged.name, "codes": [p.read.code for p in plugged.pending]},
            )
        plugged.state = "unplugged"
        self.plugged.pop(plugged.writer_id, None)
        self._by_devnode.pop(plugged.device.devnode, None)
        log.info("scanner unplugged", extra={"scanner": plugged.name, "writer_id": plugged.writer_id})
        self._publish(plugged, "unplugged")

    # -- reading ------------------------------------------------------------------------------------
    async def _supervise(self, plugged: Plugged) -> None:
        failures = 0
        while not plugged.gone:
            reader = await self._open(plugged)
            if reader is None:
                delay = REOPEN_DELAYS_S[min(failures, len(REOPEN_DELAYS_S) - 1)]
                failures += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await plugged.reopen.wait()
                plugged.reopen.clear()
                continue
            failures = 0
            ended = asyncio.create_task(plugged.ended.wait())
            reopen = asyncio.create_task(plugged.reopen.wait())
            while not (ended.done() or reopen.done()):
                await asyncio.wait({ended, reopen}, timeout=SETTINGS_CHECK_S, return_when=asyncio.FIRST_COMPLETED)
                if self._settings_of(plugged) != plugged.settings:
                    # Changed on another box of the store, and replicated here: read with the new ones.
                    break
            ended.cancel()
            reopen.cancel()
            plugged.reopen.clear()
            await asyncio.to_thread(reader.close)  # reads what the device holds, then ends
            await plugged.ended.wait()  # its last callbacks are on the loop before this
            error = plugged.end_error
            plugged.reader = None
            if error is not None and not plugged.gone:
                # Ended by itself, the scanner still in: a fault, or an unplug udev has not told yet.
                plugged.state, plugged.error = "failed", f"{type(error).__name__}: {error}"
                self._publish(plugged, "status")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(REOPEN_DELAYS_S[0]):
                        await plugged.reopen.wait()
                plugged.reopen.clear()

    async def _open(self, plugged: Plugged) -> ScannerReader | None:
        box = self.box
        row = box.db.read().execute("SELECT * FROM scanners WHERE writer_id = ?", (plugged.writer_id,)).fetchone()
        plugged.name = row["name"]
        plugged.settings = _settings(row)
        plugged.ended = asyncio.Event()
        plugged.end_error = None
        try:
            reader = self._reader(plugged, row)
            await asyncio.to_thread(reader.start)
        except (OSError, ValueError) as exc:
            plugged.state, plugged.error = "failed", f"cannot read {plugged.device.devnode}: {exc}"
            log.error(
                "scanner cannot be read",
                extra={"scanner": plugged.name, "devnode": plugged.device.devnode, "error": str(exc)},
            )
            self._publish(plugged, "status")
            return None
        plugged.reader = reader
        plugged.state, plugged.error = "reading", None
        if plugged.ready_at is None:
            plugged.ready_at = time.monotonic()
        self._publish(plugged, "status")
        return reader

    def _settings_of(self, plugged: Plugged) -> tuple[Any, ...]:
        row = self.box.db.read().execute("SELECT * FROM scanners WHERE writer_id = ?", (plugged.writer_id,)).fetchone()
        return _settings(row)

    def _reader(self, plugged: Plugged, row: Any) -> ScannerReader:
        loop = self._loop
        assert loop is not None

        def on_code(code: str) -> None:
            loop.call_soon_threadsafe(self._code, plugged, code, wall_ms(), time.monotonic())

        def on_dropped(chars: int, reason: DropReason) -> None:
            loop.call_soon_threadsafe(self._dropped, plugged, chars, reason)

        ended = plugged.ended

        def on_end(error: BaseException | None) -> None:
            def done() -> None:
                plugged.end_error = error
                ended.set()

            loop.call_soon_threadsafe(done)

        suffix = row["suffix"] or stations.DEFAULT_SUFFIX[plugged.device.kind.value]
        if plugged.device.kind is ScannerKind.HID:
            return EvdevScanner(
                plugged.device.devnode,
                on_code=on_code,
                on_dropped=on_dropped,
                on_end=on_end,
                layout=row["layout"],
                variant=row["variant"],
                suffix=suffix,
            )
        return SerialScanner(
            plugged.device.devnode,
            on_code=on_code,
            on_dropped=on_dropped,
            on_end=on_end,
            baud=row["baud"],
            suffix=cast(Suffix, suffix),
        )

    def _code(self, plugged: Plugged, code: str, read_at: int, at: float) -> None:
        if not code.isascii() and plugged.device.kind is ScannerKind.HID:
            # Barcodes are ASCII; "é" for "2" or "à" for "0" is a scanner typing in another layout.
            plugged.error = (
                f"a code with letters no barcode has ({code!r}): is the scanner set to the keyboard layout"
                " the box reads it in? Check its layout in Settings, with Test mode"
            )
            self._publish(plugged, "status")
        if plugged.test_until_ms > read_at:
            self._tested(plugged, code, read_at)
            return
        plugged.pending.append(_Pending(stations.Read(code, read_at), at))
        plugged.wake.set()

    def _dropped(self, plugged: Plugged, chars: int, reason: DropReason) -> None:
        plugged.dropped_chars += chars
        message = {
            "vanished": f"unplugged in the middle of a code: its {chars} characters were dropped, scan it again",
            "closed": f"closed in the middle of a code: its {chars} characters were dropped, scan it again",
            "too_long": f"a code of more than {chars} characters without its suffix was dropped: check the suffix",
            "undecodable": f"{chars} characters the box could not read were dropped: check the scanner's settings",
            "failed": f"{chars} characters were dropped when the reader failed",
        }[reason]
        plugged.error = message
        log.warning("scanner dropped characters", extra={"scanner": plugged.name, "chars": chars, "reason": reason})
        self._publish(plugged, "status", dropped={"chars": chars, "reason": reason, "message": message})

    # -- recording ----------------------------------------------------------------------------------
    async def _record(self, plugged: Plugged) -> None:
        box = self.box
        failures = 0
        while True:
            if not plugged.pending:
                if plugged.gone and (plugged.tasks[0].done()):
                    return
                await plugged.wake.wait()
                plugged.wake.clear()
                continue
            batch = plugged.pending[:MAX_BATCH]
            reads = [p.read for p in batch]

            def write(conn: sqlite3.Connection, reads: list[stations.Read] = reads) -> list[stations.Result]:
                return stations.record_codes(conn, box.log, box.node, plugged.writer_id, reads)

            try:
                results = await box.db.awrite(write)
            except Exception as exc:
                # The box refuses writes (a full disk): the codes wait, in order, and are written when it can.
                why = exc.message if isinstance(exc, StockVerifyError) else f"{type(exc).__name__}: {exc}"
                delay = WRITE_RETRY_S[min(failures, len(WRITE_RETRY_S) - 1)]
                failures += 1
                plugged.error = f"{len(plugged.pending)} codes wait to be written: {why}"
                if failures == 1:
                    log.error(
                        "scanner codes cannot be written; they wait",
                        exc_info=not isinstance(exc, StockVerifyError),
                        extra={"scanner": plugged.name, "error": why},
                    )
                    self._publish(plugged, "status")
                await asyncio.sleep(delay)
                continue
            committed = time.monotonic()
            failures = 0
            del plugged.pending[: len(batch)]
            plugged.codes += len(batch)
            latencies = [committed - p.at for p in batch]
            plugged.commit_s.extend(latencies)
            self._recorded(plugged, results)
            for hook in self.on_recorded:
                hook(plugged, results, latencies)

    def _recorded(self, plugged: Plugged, results: list[stations.Result]) -> None:
        names = self._names([r.product_id for r in results if r.product_id])
        out = []
        for result in results:
            entry = result.to_dict()
            entry["product"] = names.get(result.product_id or "")
            out.append(entry)
        plugged.recent = (list(reversed(out)) + plugged.recent)[:RECENT]
        messages: list[tuple[int | None, dict[str, Any]]] = [
            (None, {"kind": "scanner", "type": "code", "writer_id": plugged.writer_id, "name": plugged.name, **entry})
            for entry in out
        ]
        held = [r for r in results if r.outcome == "held"]
        messages += [
            (None, {"kind": "held", "type": "events.held", "session_id": r.session_id, "event_id": r.event_id,
                    "reason": r.reason, "writer_id": plugged.writer_id})
            for r in held
        ]  # fmt: skip
        self.box.bus.publish(messages)

    def _names(self, product_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not product_ids:
            return {}
        wanted = sorted(set(product_ids))
        rows = self.box.db.read().execute(
            f"SELECT product_id, sku, name FROM products WHERE product_id IN ({','.join('?' * len(wanted))})", wanted
        )
        return {row["product_id"]: {"sku": row["sku"], "name": row["name"]} for row in rows}

    # -- test mode ----------------------------------------------------------------------------------
    def set_test(self, writer_id: str, minutes: float) -> Plugged:
        """Codes read in the next ``minutes`` are shown, parsed and resolved, and recorded nowhere: for a
        field tech checking a scanner's layout and suffix. 0 ends it."""
        plugged = self.plugged.get(writer_id)
        if plugged is None:
            raise Conflict("the scanner is not plugged into this box", code="SCANNER_NOT_PLUGGED")
        plugged.test_until_ms = wall_ms() + int(minutes * 60_000) if minutes > 0 else 0
        self._publish(plugged, "status")
        return plugged

    def _tested(self, plugged: Plugged, code: str, read_at: int) -> None:
        scan = gs1.scanned(code)
        product_id, matched_by = codes.resolve_code(self.box.db.read(), scan.code)
        entry = {
            "code": code,
            "read_at": read_at,
            "outcome": "test",
            "counted_as": scan.code,
            "product_id": product_id,
            "matched_by": matched_by,
            "product": self._names([product_id]).get(product_id) if product_id else None,
            "fields": {k: v for k, v in scan.fields.items() if v},
            "message": scan.error,
        }
        plugged.recent = [entry, *plugged.recent][:RECENT]
        self.box.bus.publish(
            [(None, {"kind": "scanner", "type": "code", "writer_id": plugged.writer_id, "name": plugged.name, **entry})]
        )

    # -- the rest of the box ------------------------------------------------------------------------
    def reconfigured(self, writer_id: str) -> None:
        """The scanner's layout, suffix or baud changed: its reader is opened again with them."""
        plugged = self.plugged.get(writer_id)
        # Only for a real change: reopening drops a code being typed at that moment.
        if plugged is not None and self._settings_of(plugged) != plugged.settings:
            plugged.reopen.set()

    def status(self, writer_id: str) -> dict[str, Any] | None:
        plugged = self.plugged.get(writer_id)
        return plugged.status() if plugged is not None else None

    def _publish(self, plugged: Plugged, what: str, **extra: Any) -> None:
        self.box.bus.publish(
            [(None, {**plugged.status(), "kind": "scanner", "type": what, "name": plugged.name, **extra})]
        )
