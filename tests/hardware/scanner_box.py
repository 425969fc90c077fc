"""The real box (``stockverify serve``) in a process whose udev and /dev are a umockdev test bed.

umockdev's preload library must be in the process from its start, and what plugs devices and types on
them must live in the same process as the reader, so the box cannot be an ordinary ``ServerProcess``
with scanners plugged from outside. This module is the process: started under ``umockdev-wrapper``, it
makes the test bed, listens on a Unix socket for what a test does with the hardware, and runs the very
``serve`` command a box runs, in its main thread::

    umockdev-wrapper python -m tests.hardware.scanner_box CONTROL_SOCKET serve --data-dir … --port …

The test side is ``ScannerBox``: a ``ServerProcess`` started that way, with ``plug``, ``type``,
``send`` (serial bytes) and ``unplug``. Each request is one JSON line, answered by one.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "scanners"
# Each model's device node, and whether python-evdev's ioctls need answering for it (HID) or not (serial).
MODELS = {
    "zebra_ds2208_hid": ("/dev/input/event11", True),
    "honeywell_vuquest3310g_hid": ("/dev/input/event12", True),
    "datalogic_gryphon_hid": ("/dev/input/event13", True),
    "zebra_cdc_acm": ("/dev/ttyACM0", False),
}


# --- the box's side -------------------------------------------------------------------------------
class _Hardware:
    """The test bed and the scanners plugged into it, driven from the control socket's thread."""

    def __init__(self) -> None:
        from tests.hardware.test_evdev_reader import EvdevBed

        self.bed = EvdevBed()
        self.masters: dict[str, int] = {}
        self.devnodes: dict[str, str] = {}
        self.plugs: dict[str, int] = {}
        # Descriptors this harness holds for the bed: a placeholder per unplug (see ``unplug``). A leak
        # check of the box process subtracts them.
        self.placeholders = 0
        self.texts: dict[str, str] = {}
        self.lock = threading.Lock()

    def plug(self, model: str) -> dict[str, Any]:
        """Plug ``model`` in. A replug gets a new device node, as from the kernel (event11, then event111,
        event211, …; ttyACM0, ttyACM1, …): umockdev cannot make a pty for a node name it made one for."""
        from tests.hardware.test_udev import _GError, _sys_paths

        base, has_ioctls = MODELS[model]
        count = self.plugs.get(model, 0)
        self.plugs[model] = count + 1
        text = (FIXTURES / f"{model}.umockdev").read_text()
        text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
        devnode, text = _renumbered(base, count, text)
        node = devnode.removeprefix("/dev/")
        # The scanner's own node stays without contents, so umockdev makes it a pty; the others are files.
        text = re.sub(r"^N: ([^=\n]+)$", lambda m: m[0] if m[1] == node else f"{m[0]}=00", text, flags=re.MULTILINE)
        lib, bed = self.bed._lib, self.bed._bed
        error = ctypes.POINTER(_GError)()
        if not lib.umockdev_testbed_add_from_string(bed, text.encode(), ctypes.byref(error)):
            raise RuntimeError(f"umockdev cannot load {model}: {error.contents.message!r}")
        if has_ioctls:
            ioctl = self.bed.root / f"{node.replace('/', '_')}.ioctl"
            ioctl.write_text((FIXTURES / f"{model}.ioctl").read_text().replace(f"@DEV {base}", f"@DEV {devnode}"))
            if not lib.umockdev_testbed_load_ioctl(bed, devnode.encode(), str(ioctl).encode(), ctypes.byref(error)):
                raise RuntimeError(f"umockdev cannot load {ioctl}: {error.contents.message!r}")
        master = lib.umockdev_testbed_get_dev_fd(bed, devnode.encode())
        if master < 0:
            raise RuntimeError(f"{devnode} has no pty")
        self.masters[model], self.texts[model], self.devnodes[model] = master, text, devnode
        plugged_at = time.monotonic()
        for path in sorted(_sys_paths(text), key=lambda p: p.count("/")):  # parents first, as the kernel
            lib.umockdev_testbed_uevent(bed, path.encode(), b"add")
        return {"devnode": devnode, "plugged_at": plugged_at}

    def type(self, model: str, text: str, layout: str = "us", chunk: int = 0, pause_s: float = 0.0) -> dict[str, Any]:
        """Type ``text`` as the scanner's keys; with ``chunk``, that many key events at a time, ``pause_s`` apart."""
        from hardware.keyboard import keystrokes
        from tests.hardware.test_evdev_reader import packed

        events = keystrokes(text, layout)
        master = self.masters[model]
        if not chunk:
            os.write(master, packed(events))
        else:
            for at in range(0, len(events), chunk):
                os.write(master, packed(events[at : at + chunk]))
                time.sleep(pause_s)
        return {"keys": len(events), "typed_at": time.monotonic()}

    def send(self, model: str, data: str) -> dict[str, Any]:
        """Bytes a serial scanner sends (latin-1)."""
        os.write(self.masters[model], data.encode("latin-1"))
        return {"bytes": len(data), "typed_at": time.monotonic()}

    def unplug(self, model: str) -> dict[str, Any]:
        from tests.hardware.test_udev import UmockdevBed

        master = self.masters.pop(model)
        os.close(master)
        # The bed closes the master it keeps when it is freed: a placeholder takes the number back (a pipe,
        # not /dev/null, which umockdev's preload would wire to an ioctl socket).
        read_end, write_end = os.pipe()
        if read_end != master:
            os.dup2(read_end, master)
            os.close(read_end)
        os.close(write_end)
        self.placeholders += 1
        text = self.texts.pop(model)
        UmockdevBed.unplug(self.bed, text)
        # Nor does the bed forget the pty it made for the node (dev/.ptymap/_dev_pts_N -> major:minor);
        # a replug would then meet the same pty number's entry and abort.
        block = text[text.index(f"E: DEVNAME={self.devnodes.pop(model)}") :]
        majmin = "{}:{}".format(*re.findall(r"^E: MAJOR=(\d+)\nE: MINOR=(\d+)$", block, re.MULTILINE)[0])
        for entry in (self.bed.root / "dev" / ".ptymap").glob("*"):
            if entry.is_symlink() and os.readlink(entry) == majmin:
                entry.unlink()
        return {"unplugged_at": time.monotonic(), "placeholders": self.placeholders}

    def udev_cycle(self, model: str) -> dict[str, Any]:
        """udev says the scanner went and came back (remove, then add) while its node stays: the box's
        whole unplug and plug, without a new pty (umockdev keeps each pty it made until the bed is
        freed, so hundreds of real replugs exhaust the bed before they could show a leak in the box)."""
        from tests.hardware.test_udev import _sys_paths

        lib, bed, paths = self.bed._lib, self.bed._bed, _sys_paths(self.texts[model])
        for path in sorted(paths, key=lambda p: p.count("/"), reverse=True):
            lib.umockdev_testbed_uevent(bed, path.encode(), b"remove")
        for path in sorted(paths, key=lambda p: p.count("/")):
            lib.umockdev_testbed_uevent(bed, path.encode(), b"add")
        return {"cycled_at": time.monotonic()}

    def root(self) -> dict[str, Any]:
        """The bed's directory: another process given it as UMOCKDEV_DIR (under the preload) sees this bed."""
        return {"root": str(self.bed.root)}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.pop("op")
        with self.lock:
            return dict(getattr(self, op)(**request))


def _renumbered(devnode: str, count: int, text: str) -> tuple[str, str]:
    """The description with the device node a ``count``-th replug gets, and that node."""
    if count == 0:
        return devnode, text
    name, number = re.match(r"/dev/(input/event|ttyACM)(\d+)$", devnode).groups()  # type: ignore[union-attr]
    if name == "ttyACM":
        new = count
        text = re.sub(rf"\bttyACM{number}\b", f"ttyACM{new}", text)
        minor = new
    else:
        new = int(number) + 100 * count
        text = re.sub(rf"\b(event|input){number}\b", rf"\g<1>{new}", text)
        minor = 64 + new
    fresh = f"/dev/{name}{new}"
    at = text.index(f"E: DEVNAME={fresh}\n")
    block_end = text.find("\n\n", at)
    block = text[at:block_end]
    major = re.search(r"^E: MAJOR=(\d+)$", block, re.MULTILINE)[1]  # type: ignore[index]
    block = re.sub(r"^E: MINOR=\d+$", f"E: MINOR={minor}", block, flags=re.MULTILINE)
    block = re.sub(r"^A: dev=\d+:\d+", f"A: dev={major}:{minor}", block, flags=re.MULTILINE)
    text = text[:at] + block + text[block_end:]
    return fresh, text


def _serve_control(hardware: _Hardware, path: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def client(conn: socket.socket) -> None:
        with conn, conn.makefile("rw") as stream:
            for line in stream:
                try:
                    answer = {"ok": True, **hardware.handle(json.loads(line))}
                except Exception as exc:
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                stream.write(json.dumps(answer) + "\n")
                stream.flush()

    while True:
        conn, _ = server.accept()
        threading.Thread(target=client, args=(conn,), daemon=True).start()


def main() -> None:
    control, *serve_args = sys.argv[1:]
    hardware = _Hardware()
    threading.Thread(target=_serve_control, args=(hardware, control), name="scanner-box-control", daemon=True).start()
    from appliance.cli import main as cli

    try:
        cli(serve_args, prog_name="stockverify")
    finally:
        with contextlib.suppress(Exception):
            hardware.bed.close()


# --- the test's side ------------------------------------------------------------------------------
class ScannerBox:
    """A box in its own process under umockdev, with scanners a test plugs, types on and unplugs."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        import shutil

        from tests.conftest import ServerProcess, need

        if shutil.which("umockdev-wrapper") is None:
            need("umockdev is not installed (apt-get install umockdev)")
        self.control = str(data_dir.parent / f"{data_dir.name}-hw.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control)
        self.server = ServerProcess(
            data_dir,
            *args,
            env=env,
            launcher=("umockdev-wrapper",),
            module=("tests.hardware.scanner_box", self.control),
        )
        self.server.wait_ready()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(self.control)
        self._stream = self._sock.makefile("rw")
        self.devnodes: dict[str, str] = {}

    def _ask(self, op: str, **args: Any) -> dict[str, Any]:
        self._stream.write(json.dumps({"op": op, **args}) + "\n")
        self._stream.flush()
        answer: dict[str, Any] = json.loads(self._stream.readline())
        if not answer.pop("ok"):
            raise RuntimeError(f"{op} failed in the box: {answer['error']}")
        return answer

    def plug(self, model: str) -> dict[str, Any]:
        """Plug ``model`` in; ``devnodes[model]`` is then its device node (a new one after a replug)."""
        answer = self._ask("plug", model=model)
        self.devnodes[model] = answer["devnode"]
        return answer

    def type(self, model: str, text: str, layout: str = "us", **pacing: Any) -> dict[str, Any]:
        return self._ask("type", model=model, text=text, layout=layout, **pacing)

    def send(self, model: str, data: str) -> dict[str, Any]:
        return self._ask("send", model=model, data=data)

    def unplug(self, model: str) -> dict[str, Any]:
        return self._ask("unplug", model=model)

    def udev_cycle(self, model: str) -> dict[str, Any]:
        return self._ask("udev_cycle", model=model)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``stockverify ARGS`` in another process that sees the same test bed (a field tech's shell)."""
        env = {**os.environ, "UMOCKDEV_DIR": self._ask("root")["root"]}
        command = ["umockdev-wrapper", sys.executable, "-m", "appliance", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.close()
            self._sock.close()
        self.server.stop()


def station_session(
    server: Any, racks: tuple[str, ...] = ("G-01", "G-02"), verifier: str = "verifier"
) -> dict[str, Any]:
    """On a demo box: a run started, with a session of ``verifier`` over ``racks``, started; what a
    supervisor would assign a station to. Returns tokens, the run and session ids and the racks by code."""
    from tests.conftest import DEMO_PASSWORDS

    supervisor = server.client(server.login("supervisor", DEMO_PASSWORDS["supervisor"]))
    counter = server.client(server.login(verifier, DEMO_PASSWORDS[verifier]))

    def ok(client: Any, method: str, path: str, body: Any = None) -> Any:
        answer = client.request(method, path, json=body)
        assert answer.status_code < 300, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json()

    run = ok(supervisor, "POST", "/api/runs", {"name": "Back room station", "kind": "hard"})
    session = ok(
        supervisor, "POST", f"/api/runs/{run['run_id']}/sessions", {"verifier": verifier, "racks": list(racks)}
    )
    ok(supervisor, "POST", f"/api/runs/{run['run_id']}/start")
    ok(counter, "POST", f"/api/sessions/{session['session_id']}/start")
    detail = ok(supervisor, "GET", f"/api/sessions/{session['session_id']}")
    return {
        "supervisor": supervisor,
        "verifier": counter,
        "run_id": run["run_id"],
        "session_id": session["session_id"],
        "racks": dict(zip(detail["racks"], detail["rack_ids"], strict=True)),
        "session": detail,
    }


if __name__ == "__main__":
    main()
