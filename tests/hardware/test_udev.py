"""Scanners found and followed through udev: the real pyudev code under umockdev.

umockdev's preload library has to be in the process from its start (``LD_PRELOAD``) to divert /sys,
/dev and the udev netlink socket into a test bed, and the test bed that sends the uevents must be in
that same diverted process (its sender resolves the device through /sys). So each scenario runs in a
child: ``umockdev-wrapper python -m tests.hardware.test_udev <scenario>``. The child builds the test
bed through libumockdev's C API with ctypes (no PyGObject, so nothing to build in the venv), plugs
and unplugs the device descriptions in ``tests/fixtures/scanners/``, runs ``hardware.udev`` on an
asyncio loop and prints what arrived as JSON; the test here asserts on that.

Debian 12 ships umockdev 0.17.16, whose ``remove_device`` sends no "remove" uevent (0.18.4 added
it), so unplugging sends the removes itself, children first as the kernel does; on a newer umockdev
the second remove is a duplicate the watcher ignores, which it must do with real udev too.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pyudev

from hardware.udev import DEFAULT_ALLOW, AllowList, ScannerEvent, ScannerKind, ScannerWatcher, recognise

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "scanners"
SCANNERS = {
    "zebra_ds2208_hid": (ScannerKind.HID, "usb:05e0:1200:S_N_21063010502637_Rev_PAADWS00-004-R03"),
    "honeywell_vuquest3310g_hid": (ScannerKind.HID, "usb:0c2e:0b61:15157B0B7B"),
    "datalogic_gryphon_hid": (ScannerKind.HID, "path:pci-0000:00:14.0-usb-0:3:1.0"),
    "zebra_cdc_acm": (ScannerKind.SERIAL, "usb:05e0:1701:S_N_20317010501214_Rev_PAADWS00-004-R03"),
}
KEYBOARD = "logitech_k120_keyboard"
WAIT_S = 5.0


# --- recognition from properties alone: no udev needed -------------------------------------------


def _fixture_props(name: str) -> tuple[str, dict[str, str]]:
    """The (subsystem, properties) of a fixture's device node, as udev would report them."""
    for block in _device_blocks(_fixture_text(name)):
        props = dict(line[3:].split("=", 1) for line in block.splitlines() if line.startswith("E: "))
        if props.get("DEVNAME", "").startswith(("/dev/input/event", "/dev/tty")):
            return props["SUBSYSTEM"], props
    raise AssertionError(f"{name} has no device node")


@pytest.mark.parametrize("name", sorted(SCANNERS))
def test_each_model_is_a_scanner_of_its_kind(name: str) -> None:
    kind, identity = SCANNERS[name]
    found = recognise(*_fixture_props(name))
    assert found is not None
    assert (found.kind, found.identity) == (kind, identity)


@pytest.mark.parametrize("name", sorted(SCANNERS))
def test_without_our_rules_the_allow_list_still_knows_the_vendor(name: str) -> None:
    subsystem, props = _fixture_props(name)
    del props["STOCKVERIFY_SCANNER"]
    assert recognise(subsystem, props) is not None
    assert recognise(subsystem, props, AllowList(vendors=frozenset())) is None


def test_a_keyboard_is_not_a_scanner_until_a_field_tech_says_so() -> None:
    subsystem, props = _fixture_props(KEYBOARD)
    assert recognise(subsystem, props) is None
    assert recognise(subsystem, props, DEFAULT_ALLOW.extended(["046d:c31d"])) is None
    extended = recognise(subsystem, props, DEFAULT_ALLOW.extended(["046d:c31c"]))
    assert extended is not None
    assert extended.identity == "path:pci-0000:00:14.0-usb-0:5:1.0"  # no USB serial: known by its port


def test_only_the_keyboard_event_node_of_a_scanner_counts() -> None:
    subsystem, props = _fixture_props("zebra_ds2208_hid")
    assert recognise(subsystem, {**props, "ID_INPUT_KEYBOARD": "0"}) is None  # its mouse or consumer node
    assert recognise(subsystem, {**props, "DEVNAME": "/dev/input/mouse3"}) is None
    serial_subsystem, serial = _fixture_props("zebra_cdc_acm")
    assert recognise(serial_subsystem, {**serial, "ID_USB_DRIVER": "option"}) is None  # a modem's driver


def test_the_model_is_the_product_string_as_sent() -> None:
    found = recognise(*_fixture_props("zebra_ds2208_hid"))
    assert found is not None
    assert found.model == "Symbol Bar Code Scanner"
    assert found.serial == "S_N_21063010502637_Rev_PAADWS00-004-R03"


def test_the_default_allow_list_is_the_rules_vendor_list() -> None:
    rules = (ROOT / "systemd" / "60-stockverify-scanners.rules").read_text()
    vendors = set(re.findall(r'^SUBSYSTEMS=="usb", ATTRS\{idVendor\}=="([0-9a-f]{4})"', rules, re.MULTILINE))
    assert vendors == DEFAULT_ALLOW.vendors


def test_an_allow_list_entry_is_checked() -> None:
    with pytest.raises(ValueError, match="not a USB id"):
        DEFAULT_ALLOW.extended(["Zebra"])


# --- under umockdev ------------------------------------------------------------------------------


def _fixture_text(name: str) -> str:
    """A fixture as the test bed takes it: umockdev's format has no comments (ours say where each
    description came from), and a node named without contents becomes a pty whose master umockdev
    keeps in a table for the test bed's life, so the same device cannot be plugged twice (0.17 asserts
    ``!dev_fd.contains(devname)``) and every plug holds one more descriptor. Hot-plug needs no
    working node, so each gets one byte of contents, which makes it a plain file."""
    text = (FIXTURES / f"{name}.umockdev").read_text()
    text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    return re.sub(r"^(N: [^=\n]+)$", r"\1=00", text, flags=re.MULTILINE)


def _device_blocks(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block.strip()]


def _sys_paths(text: str) -> list[str]:
    return ["/sys" + block.splitlines()[0].removeprefix("P: ") for block in _device_blocks(text)]


def _moved_to_port(text: str, old: int, new: int) -> str:
    """The same device in another USB socket: its sysfs path and ID_PATH change, its serial does not."""
    text = re.sub(rf"usb1/1-{old}\b", f"usb1/1-{new}", text)
    text = re.sub(rf"/1-{old}:", f"/1-{new}:", text)
    text = re.sub(rf"usb-0:{old}\b", f"usb-0:{new}", text)
    return re.sub(rf"usb-0_{old}\b", f"usb-0_{new}", text)


class _GError(ctypes.Structure):
    _fields_ = [("domain", ctypes.c_uint32), ("code", ctypes.c_int), ("message", ctypes.c_char_p)]


class UmockdevBed:
    """libumockdev's UMockdevTestbed through its C API: the calls the GI binding would make."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libumockdev.so.0")
        lib.umockdev_testbed_new.restype = ctypes.c_void_p
        lib.umockdev_testbed_add_from_string.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        lib.umockdev_testbed_add_from_string.restype = ctypes.c_int
        lib.umockdev_testbed_uevent.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.umockdev_testbed_remove_device.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.umockdev_testbed_set_property.argtypes = [ctypes.c_void_p, *[ctypes.c_char_p] * 3]
        lib.umockdev_testbed_get_root_dir.argtypes = [ctypes.c_void_p]
        lib.umockdev_testbed_get_root_dir.restype = ctypes.c_char_p
        self._gobject = ctypes.CDLL("libgobject-2.0.so.0")
        self._gobject.g_object_unref.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._bed = lib.umockdev_testbed_new()
        self.root = Path(lib.umockdev_testbed_get_root_dir(self._bed).decode())

    def close(self) -> None:
        self._gobject.g_object_unref(self._bed)  # removes the test bed's directory

    def plug(self, text: str) -> None:
        error = ctypes.POINTER(_GError)()
        if not self._lib.umockdev_testbed_add_from_string(self._bed, text.encode(), ctypes.byref(error)):
            raise RuntimeError(f"umockdev cannot load the description: {error.contents.message!r}")
        for path in sorted(_sys_paths(text), key=lambda p: p.count("/")):  # parents first, as the kernel
            self._lib.umockdev_testbed_uevent(self._bed, path.encode(), b"add")

    def retrigger(self, sys_path: str, name: str, value: str) -> None:
        """What ``udevadm trigger`` after a rules change does: the property changes, a "change" follows."""
        self._lib.umockdev_testbed_set_property(self._bed, sys_path.encode(), name.encode(), value.encode())
        self._lib.umockdev_testbed_uevent(self._bed, sys_path.encode(), b"change")

    def unplug(self, text: str) -> None:
        paths = sorted(_sys_paths(text), key=lambda p: p.count("/"), reverse=True)
        for path in paths:  # children first, as the kernel
            self._lib.umockdev_testbed_uevent(self._bed, path.encode(), b"remove")
        self._lib.umockdev_testbed_remove_device(self._bed, paths[-1].encode())
        # 0.17's remove_device leaves some /sys/bus and /sys/class links behind, and plugging the same
        # device again then aborts on the existing link; a kernel removes them with the device.
        sys_dir = self.root / "sys"
        for link in [*sys_dir.glob("bus/*/devices/*"), *sys_dir.glob("class/*/*"), *sys_dir.glob("dev/*/*")]:
            if link.is_symlink() and not link.exists():
                link.unlink()
        # Nor does it remove the device node or its links.
        for node in re.findall(r"^[NS]: ([^=\n]+)", text, flags=re.MULTILINE):
            for leftover in (self.root / "dev" / node, self.root / "dev" / ".node" / node.replace("/", "_")):
                if leftover.is_symlink() or leftover.exists():
                    leftover.unlink()


class Harness:
    """A test bed and a watcher on this loop, with the events as they arrive."""

    def __init__(self, bed: UmockdevBed) -> None:
        self.bed = bed
        self.events: asyncio.Queue[tuple[float, ScannerEvent]] = asyncio.Queue()

    def on_event(self, event: ScannerEvent) -> None:
        self.events.put_nowait((time.perf_counter(), event))

    async def next(self, timeout: float = WAIT_S) -> ScannerEvent:
        return (await asyncio.wait_for(self.events.get(), timeout))[1]

    async def quiet(self, timeout: float = 0.3) -> list[ScannerEvent]:
        """Whatever else arrives within ``timeout``: a test that expects nothing says so with ``== []``."""
        seen = []
        while True:
            try:
                seen.append(await self.next(timeout))
            except TimeoutError:
                return seen


def _brief(event: ScannerEvent) -> dict[str, Any]:
    d = event.device
    return {"action": event.action, "kind": str(d.kind), "identity": d.identity, "devnode": d.devnode,
            "vendor_id": d.vendor_id, "product_id": d.product_id, "model": d.model, "serial": d.serial}  # fmt: skip


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


def _monitors() -> int:
    return sum(thread.name == "scanner-udev-monitor" for thread in threading.enumerate())


@contextmanager
def _bed() -> Iterator[UmockdevBed]:
    bed = UmockdevBed()
    try:
        yield bed
    finally:
        bed.close()


async def scenario_startup() -> dict[str, Any]:
    with _bed() as bed:
        for name in [*SCANNERS, KEYBOARD]:
            bed.plug(_fixture_text(name))
        harness = Harness(bed)
        started = time.perf_counter()
        async with ScannerWatcher(harness.on_event) as watcher:
            ready_ms = (time.perf_counter() - started) * 1000
            events = [_brief(e) for e in await harness.quiet()]
            present = sorted(d.identity for d in watcher.present.values())
        return {"events": events, "present": present, "ready_ms": ready_ms}


async def scenario_hotplug() -> dict[str, Any]:
    with _bed() as bed:
        harness = Harness(bed)
        out: dict[str, Any] = {"models": {}}
        async with ScannerWatcher(harness.on_event):
            out["at_start"] = [_brief(e) for e in await harness.quiet(0.1)]
            for name in SCANNERS:
                text = _fixture_text(name)
                sent = time.perf_counter()
                bed.plug(text)
                added_at, added = await asyncio.wait_for(harness.events.get(), WAIT_S)
                bed.unplug(text)
                removed = await harness.next()
                out["models"][name] = {
                    "added": _brief(added),
                    "removed": _brief(removed),
                    "add_ms": (added_at - sent) * 1000,
                    "then": [_brief(e) for e in await harness.quiet(0.1)],
                }
            text = _fixture_text(KEYBOARD)
            bed.plug(text)
            out["keyboard_plugged"] = [_brief(e) for e in await harness.quiet(0.5)]
            bed.unplug(text)
            out["keyboard_unplugged"] = [_brief(e) for e in await harness.quiet(0.5)]
        return out


async def scenario_replug() -> dict[str, Any]:
    with _bed() as bed:
        harness = Harness(bed)
        out: dict[str, Any] = {}
        async with ScannerWatcher(harness.on_event):
            for name in ("zebra_ds2208_hid", "datalogic_gryphon_hid"):
                text = _fixture_text(name)
                port = int(re.search(r"usb1/1-(\d+)", text).group(1))  # type: ignore[union-attr]
                identities = []
                for plugged in (text, text, _moved_to_port(text, port, 7)):
                    bed.plug(plugged)
                    identities.append((await harness.next()).device.identity)
                    bed.unplug(plugged)
                    assert (await harness.next()).action == "removed"
                out[name] = identities
        return out


async def scenario_retrigger() -> dict[str, Any]:
    with _bed() as bed:
        harness = Harness(bed)
        text = _fixture_text(KEYBOARD)
        node = _sys_paths(text)[-1]
        bed.plug(text)
        async with ScannerWatcher(harness.on_event):
            out = {"plugged": [_brief(e) for e in await harness.quiet(0.2)]}
            bed.retrigger(node, "STOCKVERIFY_SCANNER", "1")  # a field tech's local rule for 046d
            out["rule_added"] = [_brief(e) for e in await harness.quiet(0.2)]
            bed.retrigger(node, "STOCKVERIFY_SCANNER", "0")  # and taken out again
            out["rule_removed"] = [_brief(e) for e in await harness.quiet(0.2)]
        return out


async def scenario_cycles() -> dict[str, Any]:
    cycles = int(os.environ.get("SCANNER_CYCLES", "500"))
    with _bed() as bed:
        harness = Harness(bed)
        text = _fixture_text("zebra_ds2208_hid")
        async with ScannerWatcher(harness.on_event):

            async def cycle() -> None:
                bed.plug(text)
                assert (await harness.next()).action == "added"
                bed.unplug(text)
                assert (await harness.next()).action == "removed"

            for _ in range(5):  # first-use allocations (libudev's hwdb, the selector) are not leaks
                await cycle()
            await harness.quiet(0.1)
            before = {"fds": _fds(), "tasks": _tasks(), "monitors": _monitors()}
            started = time.perf_counter()
            for _ in range(cycles):
                await cycle()
            elapsed = time.perf_counter() - started
            extra = [_brief(e) for e in await harness.quiet(0.2)]
            after = {"fds": _fds(), "tasks": _tasks(), "monitors": _monitors()}
        stopped = {"fds": _fds(), "monitors": _monitors()}
        return {"cycles": cycles, "before": before, "after": after, "stopped": stopped, "extra": extra,
                "cycles_per_s": cycles / elapsed}  # fmt: skip


async def scenario_crash() -> dict[str, Any]:
    """The monitor thread dies the way a real one does when the netlink buffer overflows (``ENOBUFS``
    from ``udev_monitor_receive_device``; the events in the buffer are gone), while one scanner is
    plugged in and another unplugged: the restarted monitor's enumeration must make up for both."""
    real_poll = pyudev.Monitor.poll
    armed = threading.Event()

    def failing_poll(self: Any, timeout: float | None = None) -> Any:
        if armed.is_set():
            armed.clear()
            raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
        return real_poll(self, timeout)

    pyudev.Monitor.poll = failing_poll
    with _bed() as bed:
        harness = Harness(bed)
        zebra, honeywell = _fixture_text("zebra_ds2208_hid"), _fixture_text("honeywell_vuquest3310g_hid")
        bed.plug(zebra)
        async with ScannerWatcher(harness.on_event, restart_delay=1.0) as watcher:
            at_start = [_brief(e) for e in await harness.quiet(0.1)]
            tasks_before, fds_before = _tasks(), _fds()
            armed.set()
            bed.plug(honeywell)  # the event that wakes the thread into its failing receive
            await asyncio.sleep(0.1)
            bed.unplug(zebra)  # while no monitor listens
            died_quietly = [_brief(e) for e in await harness.quiet(0.2)]
            after_restart = [_brief(e) for e in await harness.quiet(1.5)]
            monitors, fds_after = _monitors(), _fds()
            bed.plug(zebra)  # the new monitor hears hot-plug again
            replugged = [_brief(await harness.next())]
            return {
                "at_start": at_start,
                "died_quietly": died_quietly,
                "after_restart": after_restart,
                "replugged": replugged,
                "restarts": watcher.restarts,
                "monitor_threads": monitors,
                "tasks_before": tasks_before,
                "tasks_after": _tasks(),
                "fds_before": fds_before,
                "fds_after": fds_after,
            }


SCENARIOS: dict[str, Callable[[], Any]] = {
    "startup": scenario_startup,
    "hotplug": scenario_hotplug,
    "replug": scenario_replug,
    "retrigger": scenario_retrigger,
    "cycles": scenario_cycles,
    "crash": scenario_crash,
}


def under_umockdev(module: str, scenario: str, **env: str) -> dict[str, Any]:
    """Run ``scenario`` of the test ``module`` in a child under ``umockdev-wrapper`` (umockdev is loaded
    at the child's start, and what sends its uevents must live in that process); its last line of
    output is the JSON the test asserts on."""
    from tests.conftest import need

    if shutil.which("umockdev-wrapper") is None:
        need("umockdev is not installed (apt-get install umockdev)")
    try:
        ctypes.CDLL("libumockdev.so.0")
    except OSError:
        need("libumockdev.so.0 is not installed (apt-get install umockdev, which brings libumockdev0)")
    done = subprocess.run(
        ["umockdev-wrapper", sys.executable, "-m", module, scenario],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"scenario {scenario} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _under_umockdev(scenario: str, **env: str) -> dict[str, Any]:
    return under_umockdev(__name__, scenario, **env)


def test_scanners_present_at_start_are_enumerated() -> None:
    result = _under_umockdev("startup")
    added = {e["identity"]: e for e in result["events"]}
    assert {e["action"] for e in result["events"]} == {"added"}
    assert set(added) == {identity for _, identity in SCANNERS.values()}  # and not the keyboard
    assert {e["kind"] for e in added.values()} == {"hid", "serial"}
    assert result["present"] == sorted(added)
    assert added[SCANNERS["zebra_cdc_acm"][1]]["devnode"] == "/dev/ttyACM0"


def test_hot_plug_of_each_model_arrives_on_the_loop() -> None:
    result = _under_umockdev("hotplug")
    assert result["at_start"] == []
    for name, (kind, identity) in SCANNERS.items():
        model = result["models"][name]
        assert (model["added"]["action"], model["added"]["kind"], model["added"]["identity"]) == (
            "added",
            kind,
            identity,
        )
        assert model["removed"] == {**model["added"], "action": "removed"}
        assert model["then"] == []  # no duplicate, whatever umockdev or udev sent twice
        assert model["add_ms"] < 1000
    assert result["keyboard_plugged"] == []
    assert result["keyboard_unplugged"] == []


def test_replug_gives_the_same_identity() -> None:
    result = _under_umockdev("replug")
    zebra_here, zebra_again, zebra_elsewhere = result["zebra_ds2208_hid"]
    assert zebra_here == zebra_again == zebra_elsewhere  # a USB serial follows the scanner
    datalogic_here, datalogic_again, datalogic_elsewhere = result["datalogic_gryphon_hid"]
    assert datalogic_here == datalogic_again  # no serial: the port is its identity...
    assert datalogic_elsewhere != datalogic_here  # ...so another socket is another scanner to assign


def test_a_rule_added_on_the_box_takes_effect_without_a_replug() -> None:
    result = _under_umockdev("retrigger")
    assert result["plugged"] == []
    assert [(e["action"], e["kind"], e["identity"]) for e in result["rule_added"]] == [
        ("added", "hid", "path:pci-0000:00:14.0-usb-0:5:1.0")
    ]
    assert [e["action"] for e in result["rule_removed"]] == ["removed"]


@pytest.mark.slow
def test_500_plug_cycles_leak_no_descriptor_or_thread() -> None:
    result = _under_umockdev("cycles")
    assert result["cycles"] == 500
    assert result["extra"] == []
    assert result["after"] == result["before"]
    assert result["before"]["monitors"] == 1
    assert result["stopped"] == {"fds": result["before"]["fds"] - 4, "monitors": 0}  # socket, pipe, epoll


def test_a_dead_monitor_thread_is_restarted_and_catches_up() -> None:
    result = _under_umockdev("crash")
    zebra, honeywell = SCANNERS["zebra_ds2208_hid"][1], SCANNERS["honeywell_vuquest3310g_hid"][1]
    assert [(e["action"], e["identity"]) for e in result["at_start"]] == [("added", zebra)]
    assert result["died_quietly"] == []
    assert sorted((e["action"], e["identity"]) for e in result["after_restart"]) == [
        ("added", honeywell),
        ("removed", zebra),
    ]
    assert result["restarts"] == 1
    assert result["monitor_threads"] == 1
    assert result["tasks_after"] == result["tasks_before"]
    assert result["fds_after"] == result["fds_before"]  # the dead monitor's socket and pipe were closed
    assert [(e["action"], e["identity"]) for e in result["replugged"]] == [("added", zebra)]


if __name__ == "__main__":
    print(json.dumps(asyncio.run(SCENARIOS[sys.argv[1]]())))
