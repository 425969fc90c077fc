"""Barcode scanners plugged into the box, found and followed through udev.

udev is the only place that knows a scanner from a keyboard: the kernel sees both as HID keyboards (or
a scanner in CDC mode as a modem), and only the USB ids and the property our rules set
(``systemd/60-stockverify-scanners.rules``: ``STOCKVERIFY_SCANNER=1``) tell them apart. The allow-list
here mirrors the rules so that a box whose rules are not installed yet (a developer's laptop, a box
half way through provisioning) still finds the scanners every box should know.

libudev calls block (sysfs reads, a netlink socket), so they never run on the event loop: a thread
reads the monitor and hands each change to the loop with ``call_soon_threadsafe``, and every piece of
state (which scanners are present) lives on the loop alone. The thread can die (pyudev's own
observer thread does, pyudev #194; a full netlink buffer raises ``ENOBUFS`` and the events in it are
gone), so a dead thread is replaced and the replacement starts with a fresh enumeration that the loop
reconciles against what it believed, which is also how the devices present at start are found.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import re
import selectors
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import pyudev

log = logging.getLogger(__name__)

SUBSYSTEMS = ("input", "tty")
RULES_PROPERTY = "STOCKVERIFY_SCANNER"

# Serial drivers a scanner comes through: its own CDC-ACM interface ("USB COM port emulation" in the
# vendors' manuals), or a USB-serial adaptor in front of an RS-232 scanner.
SERIAL_DRIVERS = frozenset({"cdc_acm", "ftdi_sio", "pl2303", "ch341", "cp210x", "usb_serial_simple"})

_EVENT_NODE = re.compile(r"^/dev/input/event[0-9]+$")
_HEX_ID = re.compile(r"^[0-9a-f]{4}$")
_UDEV_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


class ScannerKind(enum.StrEnum):
    HID = "hid"  # keyboard wedge: read from /dev/input/eventN with evdev
    SERIAL = "serial"  # CDC-ACM or USB-serial: read from /dev/ttyACMN or /dev/ttyUSBN with pyserial


@dataclass(frozen=True)
class ScannerDevice:
    kind: ScannerKind
    devnode: str
    # What the box remembers a scanner by across unplug and replug (its writer key and station
    # assignment hang off it): the USB serial when the scanner reports one, else the port it is in.
    identity: str
    vendor_id: str
    product_id: str
    model: str
    serial: str | None


@dataclass(frozen=True)
class ScannerEvent:
    action: str  # "added" or "removed"
    device: ScannerDevice


def _parse_id(entry: str) -> tuple[str, str | None]:
    vendor, _, product = entry.strip().lower().partition(":")
    if not _HEX_ID.match(vendor) or (product and not _HEX_ID.match(product)):
        raise ValueError(f"not a USB id: {entry!r} (want 'vvvv' or 'vvvv:pppp', lower-case hex, as lsusb shows)")
    return vendor, product or None


@dataclass(frozen=True)
class AllowList:
    """USB ids taken for scanners even without our rules' property.

    Kept as data so a field tech (through settings) can add a scanner the box does not know, the same
    way they add a local rule; a whole vendor for the scanner makers, a single ``vendor:product`` for
    makers of other things too (a USB-serial chip, a keyboard maker's OEM scanner).
    """

    vendors: frozenset[str] = field(
        default_factory=lambda: frozenset(
            {
                "05e0",  # Zebra (Symbol Technologies)
                "0c2e",  # Honeywell (Metrologic)
                "0536",  # Honeywell (Hand Held Products)
                "05f9",  # Datalogic (PSC Scanning)
                "080c",  # Datalogic S.p.A.
                "1eab",  # Newland
            }
        )
    )
    products: frozenset[tuple[str, str]] = frozenset()

    def extended(self, entries: Iterable[str]) -> AllowList:
        vendors, products = set(self.vendors), set(self.products)
        for entry in entries:
            vendor, product = _parse_id(entry)
            if product is None:
                vendors.add(vendor)
            else:
                products.add((vendor, product))
        return AllowList(frozenset(vendors), frozenset(products))

    def allows(self, vendor_id: str, product_id: str) -> bool:
        return vendor_id in self.vendors or (vendor_id, product_id) in self.products


DEFAULT_ALLOW = AllowList()


def _decode(value: str) -> str:
    return _UDEV_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)


def _model(props: Mapping[str, str]) -> str:
    # ID_MODEL_ENC is the product string as the device sent it; ID_MODEL has its spaces turned to "_".
    if props.get("ID_MODEL_ENC"):
        return _decode(props["ID_MODEL_ENC"]).strip()
    if props.get("ID_MODEL"):
        return props["ID_MODEL"].replace("_", " ")
    return props.get("ID_MODEL_FROM_DATABASE", "")


def identity_of(props: Mapping[str, str]) -> str | None:
    """A USB serial number is unique only within its vendor and product, so those are part of it; a
    scanner without one is known by its port, which is stable while it stays plugged into the same
    socket of the same box (moved to another socket, it is a new scanner to assign)."""
    vendor, product = props.get("ID_VENDOR_ID", "").lower(), props.get("ID_MODEL_ID", "").lower()
    serial = props.get("ID_SERIAL_SHORT")
    if serial:
        return f"usb:{vendor}:{product}:{serial}"
    if props.get("ID_PATH"):
        return f"path:{props['ID_PATH']}"
    return None


def recognise(subsystem: str, props: Mapping[str, str], allow: AllowList = DEFAULT_ALLOW) -> ScannerDevice | None:
    """A scanner from a device's udev properties, or None for anything else (a keyboard, a mouse's
    event node, a modem, a console tty): only what udev says, so the same answer on every event."""
    devnode = props.get("DEVNAME", "")
    vendor, product = props.get("ID_VENDOR_ID", "").lower(), props.get("ID_MODEL_ID", "").lower()
    marked = props.get(RULES_PROPERTY) == "1" or allow.allows(vendor, product)
    if not marked:
        return None
    if subsystem == "input":
        if props.get("ID_INPUT_KEYBOARD") != "1" or not _EVENT_NODE.match(devnode):
            return None
        kind = ScannerKind.HID
    elif subsystem == "tty":
        if props.get("ID_USB_DRIVER") not in SERIAL_DRIVERS or not devnode:
            return None
        kind = ScannerKind.SERIAL
    else:
        return None
    identity = identity_of(props)
    if identity is None:
        return None
    return ScannerDevice(
        kind=kind,
        devnode=devnode,
        identity=identity,
        vendor_id=vendor,
        product_id=product,
        model=_model(props),
        serial=props.get("ID_SERIAL_SHORT") or None,
    )


def _props(device: pyudev.Device) -> dict[str, str]:
    return {str(k): str(v) for k, v in device.properties.items()}


def _classify(device: pyudev.Device, allow: AllowList) -> ScannerDevice | None:
    return recognise(str(device.subsystem or ""), _props(device), allow)


def enumerate_scanners(context: pyudev.Context, allow: AllowList = DEFAULT_ALLOW) -> dict[str, ScannerDevice]:
    """The scanners present now, by sysfs path. Blocking (it walks sysfs): call it off the loop."""
    found: dict[str, ScannerDevice] = {}
    for subsystem in SUBSYSTEMS:
        for device in context.list_devices(subsystem=subsystem):
            try:
                scanner = _classify(device, allow)
            except (OSError, pyudev.DeviceNotFoundError):
                continue  # unplugged while we walked past it; its "remove" event is on its way
            if scanner is not None:
                found[str(device.sys_path)] = scanner
    return found


@dataclass
class _Worker:
    """One monitor thread and the pipe that wakes it to stop; the loop owns and closes the pipe, after
    the thread has ended, so a late wake-up never writes into a descriptor number already reused."""

    thread: threading.Thread
    stop: threading.Event
    wake_r: int
    wake_w: int
    started: float

    def close(self) -> None:
        os.close(self.wake_r)
        os.close(self.wake_w)


class ScannerWatcher:
    """Follows scanners coming and going and calls ``on_event`` on the loop for each.

    ``on_event`` runs on the loop thread, one call per scanner added or removed, in the order udev
    reported them; the same scanner is never reported added twice without a removal between (a
    duplicate or late event from udev, or the re-enumeration after a restart, is folded in silently).
    """

    # A monitor that ran this long before dying is restarted at once again, not after the backed-off delay.
    HEALTHY_AFTER_S = 60.0

    def __init__(
        self,
        on_event: Callable[[ScannerEvent], None],
        *,
        allow: AllowList = DEFAULT_ALLOW,
        restart_delay: float = 0.2,
        max_restart_delay: float = 5.0,
    ) -> None:
        self._on_event = on_event
        self._allow = allow
        self._restart_delay = restart_delay
        self._max_restart_delay = max_restart_delay
        self._present: dict[str, ScannerDevice] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: _Worker | None = None
        self._restart_handle: asyncio.TimerHandle | None = None
        self._ready: asyncio.Future[None] | None = None
        self._failures = 0
        self.restarts = 0

    @property
    def present(self) -> dict[str, ScannerDevice]:
        """The scanners plugged in now, by sysfs path."""
        return dict(self._present)

    async def start(self) -> None:
        """Returns once the monitor listens and the scanners present at start have been reported, so
        a caller can show a complete list from the first moment. Raises if the first monitor cannot
        start at all (no udev here): retrying forever would hide that."""
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        self._spawn()
        try:
            await self._ready
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._restart_handle is not None:
            self._restart_handle.cancel()
            self._restart_handle = None
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop.set()
            os.write(worker.wake_w, b"x")
            await asyncio.to_thread(worker.thread.join)
            worker.close()

    async def __aenter__(self) -> ScannerWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self) -> None:
        assert self._loop is not None
        self._restart_handle = None
        stop = threading.Event()
        wake_r, wake_w = os.pipe()
        thread = threading.Thread(
            target=self._run, args=(self._loop, stop, wake_r), name="scanner-udev-monitor", daemon=True
        )
        self._worker = _Worker(thread, stop, wake_r, wake_w, time.monotonic())
        thread.start()

    # --- the monitor thread: blocking libudev calls; it touches no state, it only posts to the loop ---

    def _run(self, loop: asyncio.AbstractEventLoop, stop: threading.Event, wake_r: int) -> None:
        try:
            context = pyudev.Context()
            monitor = pyudev.Monitor.from_netlink(context)
            for subsystem in SUBSYSTEMS:
                monitor.filter_by(subsystem)
            # Listening before enumerating: a scanner plugged in between the two is in the snapshot,
            # the event queue, or both, never in neither.
            monitor.start()
            snapshot = enumerate_scanners(context, self._allow)
            loop.call_soon_threadsafe(self._reconcile, snapshot)
            with selectors.DefaultSelector() as selector:
                selector.register(monitor.fileno(), selectors.EVENT_READ)
                selector.register(wake_r, selectors.EVENT_READ)
                while not stop.is_set():
                    for key, _ in selector.select():
                        if key.fd == monitor.fileno():
                            for change in self._drain(monitor):
                                loop.call_soon_threadsafe(self._apply, *change)
        except Exception as exc:
            if stop.is_set():
                return
            # Logged here, and only its repr sent on: the traceback holds this frame, and with it the
            # monitor's socket, for as long as anything keeps the exception.
            log.exception("scanner udev monitor died")
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody left to restart us
                loop.call_soon_threadsafe(self._died, stop, repr(exc))

    def _drain(self, monitor: pyudev.Monitor) -> Iterator[tuple[str, str, ScannerDevice | None]]:
        while (device := monitor.poll(timeout=0)) is not None:
            yield str(device.action), str(device.sys_path), _classify(device, self._allow)

    # --- the loop thread: all state lives here ---

    def _emit(self, action: str, device: ScannerDevice) -> None:
        try:
            self._on_event(ScannerEvent(action, device))
        except Exception:
            log.exception("scanner event handler failed for %s %s", action, device.devnode)

    def _reconcile(self, snapshot: dict[str, ScannerDevice]) -> None:
        if self._worker is not None:  # else stopped: what a thread posted meanwhile is nobody's news
            for sys_path in [p for p in self._present if p not in snapshot]:
                self._emit("removed", self._present.pop(sys_path))
            for sys_path, device in snapshot.items():
                self._apply("add", sys_path, device)
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _apply(self, action: str, sys_path: str, scanner: ScannerDevice | None) -> None:
        if self._worker is None:
            return
        known = self._present.get(sys_path)
        if action == "remove" or scanner is None:
            # A "change" that makes a device no longer a scanner (its rule removed and udev
            # re-triggered) ends it like an unplug.
            if known is not None:
                del self._present[sys_path]
                self._emit("removed", known)
            return
        if known == scanner:
            return
        if known is not None:
            self._emit("removed", self._present.pop(sys_path))
        self._present[sys_path] = scanner
        self._emit("added", scanner)

    def _died(self, stop: threading.Event, reason: str) -> None:
        worker = self._worker
        if worker is None or stop is not worker.stop:
            return  # stopped meanwhile
        worker.thread.join()  # it has posted this as its last act; only its return remains
        worker.close()
        self._worker = None
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(RuntimeError(f"the scanner udev monitor cannot start: {reason}"))
            return
        if time.monotonic() - worker.started > self.HEALTHY_AFTER_S:
            self._failures = 0
        self._failures += 1
        self.restarts += 1
        delay = min(self._restart_delay * 2 ** (self._failures - 1), self._max_restart_delay)
        log.warning("restarting the scanner udev monitor in %.1f s (it died of %s)", delay, reason)
        assert self._loop is not None
        self._restart_handle = self._loop.call_later(delay, self._spawn)
