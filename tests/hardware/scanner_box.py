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
        self.texts: dict[str, str] = {}
        self.lock = threading.Lock()

    def plug(self, model: str) -> dict[str, Any]:
        from tests.hardware.test_udev import _GError, _sys_paths

        devnode, has_ioctls = MODELS[model]
        text = (FIXTURES / f"{model}.umockdev").read_text()
        text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
        node = devnode.removeprefix("/dev/")
        # The scanner's own node stays without contents, so umockdev makes it a pty; the others are files.
        text = re.sub(r"^N: ([^=\n]+)$", lambda m: m[0] if m[1] == node else f"{m[0]}=00", text, flags=re.MULTILINE)
        lib, bed = self.bed._lib, self.bed._bed
        error = ctypes.POINTER(_GError)()
        if not lib.umockdev_testbed_add_from_string(bed, text.encode(), ctypes.byref(error)):
            raise RuntimeError(f"umockdev cannot load {model}: {error.contents.message!r}")
        if has_ioctls:
            ioctl = str(FIXTURES / f"{model}.ioctl").encode()
            if not lib.umockdev_testbed_load_ioctl(bed, devnode.encode(), ioctl, ctypes.byref(error)):
                raise RuntimeError(f"umockdev cannot load {ioctl!r}: {error.contents.message!r}")
        master = lib.umockdev_testbed_get_dev_fd(bed, devnode.encode())
        if master < 0:
            raise RuntimeError(f"{devnode} has no pty")
        self.masters[model], self.texts[model] = master, text
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
        UmockdevBed.unplug(self.bed, self.texts.pop(model))  # type: ignore[arg-type]
        return {"unplugged_at": time.monotonic()}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.pop("op")
        with self.lock:
            return dict(getattr(self, op)(**request))


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

    def _ask(self, op: str, **args: Any) -> dict[str, Any]:
        self._stream.write(json.dumps({"op": op, **args}) + "\n")
        self._stream.flush()
        answer: dict[str, Any] = json.loads(self._stream.readline())
        if not answer.pop("ok"):
            raise RuntimeError(f"{op} failed in the box: {answer['error']}")
        return answer

    def plug(self, model: str) -> dict[str, Any]:
        return self._ask("plug", model=model)

    def type(self, model: str, text: str, layout: str = "us", **pacing: Any) -> dict[str, Any]:
        return self._ask("type", model=model, text=text, layout=layout, **pacing)

    def send(self, model: str, data: str) -> dict[str, Any]:
        return self._ask("send", model=model, data=data)

    def unplug(self, model: str) -> dict[str, Any]:
        return self._ask("unplug", model=model)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.close()
            self._sock.close()
        self.server.stop()


if __name__ == "__main__":
    main()
