"""Keyboard-wedge barcode scanners (``/dev/input/eventN``), read with python-evdev and grabbed.

A wedge scanner is a USB keyboard to the kernel: unless someone takes its events, they go to whatever
has the focus, a console login included. So the device is grabbed (``EVIOCGRAB``) the moment it is
opened, and its key events reach only this reader; they are decoded through the scanner's configured
layout by ``hardware.keyboard.KeyDecoder``, without a display server.

The reader is the same shape as ``hardware.serial_scanner.SerialScanner``, so the box's scanner service
treats both alike: a thread of its own from ``start()`` until ``close()`` or unplug, waiting in ``poll``
on the device and on a wake-up pipe (an idle scanner costs no CPU, ``close()`` is prompt), the callbacks
``on_code``, ``on_dropped(chars, reason)`` and ``on_end(error)`` called from that thread (the service
passes them to its event loop with ``loop.call_soon_threadsafe``), and ``codes`` / ``dropped_chars``
counters.

Unplugged, an event device's reads fail with ENODEV (EIO on some kernels), or end of file and POLLHUP
(a pty under umockdev). The reader then ends at once and never polls the dead descriptor again (users of
python-evdev know the 100 % CPU loop there, python-evdev #191, #64), drops the unfinished code and says
how many characters it lost, resets the decoder so no modifier held at the unplug sticks, and releases
the grab and the descriptor itself, so a scanner nobody calls ``close()`` on leaks nothing. A replug is
a new device node, for which the service makes a new ``EvdevScanner``.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType

import evdev

from hardware.keyboard import KeyDecoder
from hardware.serial_scanner import DropReason

log = logging.getLogger(__name__)

EV_KEY = evdev.ecodes.EV_KEY
# struct input_event: a struct timeval (two longs), type and code (u16), value (s32); 24 bytes on
# 64-bit Linux. The reader parses it itself: python-evdev's read() cannot tell end of file from no data.
INPUT_EVENT = struct.Struct("@llHHi")
_CHUNK = INPUT_EVENT.size * 64
# poll() said "readable" and a read gave nothing this many times in a row: the device is dead without
# saying so, and going round again would be a busy loop.
_MAX_EMPTY_READS = 3
_GONE_ERRNOS = frozenset({errno.ENODEV, errno.EIO, errno.ENXIO})


class DeviceGone(OSError):
    """The event device vanished (unplugged): end of file, POLLHUP or a dead descriptor."""


class EvdevScanner:
    """One keyboard-wedge scanner, read in its own thread from ``start()`` until ``close()`` or unplug.

    Single use: after it ends (``on_end`` called), a replugged scanner gets a new instance.

    ``layout``, ``variant``, ``suffix``, ``gs_key`` and ``keymap_text`` configure the ``KeyDecoder``
    (the keyboard country the scanner is set to, and how it ends a code and sends GS). Callbacks run in
    the reader thread and must not block for long; an exception in one is logged and the reader goes on.
    ``on_dropped(chars, reason)`` reports an unfinished code: ``"vanished"`` (unplugged mid-code),
    ``"closed"``, ``"too_long"`` (no suffix within ``max_code_chars``) or ``"failed"``. ``on_end(error)``
    is the reader's last act: ``None`` after ``close()``, else why it stopped (an ``OSError``, a
    ``DeviceGone`` for an unplug seen as end of file).
    """

    def __init__(
        self,
        devnode: str,
        *,
        on_code: Callable[[str], object],
        on_dropped: Callable[[int, DropReason], object] | None = None,
        on_end: Callable[[BaseException | None], object] | None = None,
        layout: str = "us",
        variant: str = "",
        suffix: str = "enter",
        gs_key: str | None = None,
        keymap_text: str | None = None,
        max_code_chars: int = 4096,
    ) -> None:
        # A layout xkbcommon cannot compile fails here (ValueError), not in the reader thread.
        self.decoder = KeyDecoder(
            layout, variant, suffix, gs_key=gs_key, keymap_text=keymap_text, max_length=max_code_chars
        )
        self.devnode = devnode
        self.layout = layout
        self.codes = 0
        self.dropped_chars = 0
        self.grabbed = False
        self.error: BaseException | None = None
        self._on_code = on_code
        self._on_dropped = on_dropped
        self._on_end = on_end
        self._device: evdev.InputDevice[str] | None = None
        self._pending = b""
        self._too_long = 0  # characters of an over-long code dropped so far, said once at its suffix
        self._lock = threading.Lock()  # the wake-up pipe: close() writes to it, the reader closes it
        self._stop = threading.Event()
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    @property
    def partial_chars(self) -> int:
        """Characters of a code begun and not yet ended: what an unplug now would drop."""
        return self.decoder.pending

    @property
    def name(self) -> str | None:
        """The name the device reports (``EVIOCGNAME``), once started."""
        return None if self._device is None else self._device.name

    def start(self) -> None:
        """Open and grab the device, then start reading. ``OSError`` propagates: a missing node, no
        permission, or ``EBUSY`` when another program holds the grab (then nothing is left open)."""
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError("an EvdevScanner is started once; make a new one for a replugged scanner")
        self._device = evdev.InputDevice(self.devnode)
        try:
            self._device.grab()
            self.grabbed = True
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(target=self._run, name=f"evdev-scanner {self.devnode}", daemon=True)
            self._thread.start()
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        """Stop reading and wait for the reader to end; events already received are decoded first.

        Safe to call more than once, after an unplug, before ``start()``, and from a callback (then it
        does not wait).
        """
        with self._lock:
            self._stop.set()
            if self._wake_w >= 0:
                os.write(self._wake_w, b"\0")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> EvdevScanner:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            self._read_until_stopped()
            self._drain()
        except OSError as exc:
            error = exc
        except Exception as exc:  # a bug here must still release the device and say the reader ended
            log.exception("evdev scanner %s failed", self.devnode)
            error = exc
        finally:
            dropped = self.decoder.reset()
            if dropped:
                reason: DropReason = (
                    "closed" if error is None else "vanished" if isinstance(error, OSError) else "failed"
                )
                self._report_drop(len(dropped), reason)
            self._release()
            self.error = error
            if self._on_end is not None:
                self._call(self._on_end, error)

    def _read_until_stopped(self) -> None:
        assert self._device is not None
        fd = self._device.fd
        poller = select.poll()
        poller.register(fd, select.POLLIN)  # POLLHUP, POLLERR and POLLNVAL come unasked
        poller.register(self._wake_r, select.POLLIN)
        empty_reads = 0
        while not self._stop.is_set():
            ready = dict(poller.poll())
            if self._stop.is_set():
                return
            revents = ready.get(fd, 0)
            if not revents:
                continue
            if revents & select.POLLNVAL:
                raise DeviceGone(errno.EBADF, "the event device's descriptor is no longer valid")
            if self._read_once(fd):
                empty_reads = 0
            elif revents & (select.POLLHUP | select.POLLERR):
                raise DeviceGone(errno.ENODEV, "the event device hung up (unplugged)")
            else:
                empty_reads += 1
                if empty_reads >= _MAX_EMPTY_READS:
                    raise DeviceGone(errno.ENODEV, "the event device is readable but gives no events (gone?)")

    def _read_once(self, fd: int) -> bool:
        """Read what the device holds and decode it; False when there was nothing (not even EOF's data)."""
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                raise DeviceGone(exc.errno, f"the event device vanished: {exc.strerror}") from exc
            raise
        if not data:
            raise DeviceGone(errno.ENODEV, "the event device reached end of file (unplugged)")
        self._feed(data)
        return True

    def _drain(self) -> None:
        """At close, decode what the device already holds, so a code scanned just before is not lost."""
        assert self._device is not None
        with suppress(BlockingIOError, DeviceGone):
            while self._read_once(self._device.fd):
                pass

    def _feed(self, data: bytes) -> None:
        if self._pending:
            data = self._pending + data
        whole = len(data) - len(data) % INPUT_EVENT.size
        self._pending = data[whole:]
        decoder = self.decoder
        for _sec, _usec, type_, code, value in INPUT_EVENT.iter_unpack(data[:whole]):
            if type_ != EV_KEY:
                continue
            before = decoder.dropped_chars
            completed = decoder.feed(code, value)
            self._too_long += decoder.dropped_chars - before  # the decoder passed max_code_chars
            if self._too_long and not decoder.overflowing:
                self._report_drop(self._too_long, "too_long")
                self._too_long = 0
            if completed is not None:
                self.codes += 1
                self._call(self._on_code, completed)

    def _report_drop(self, chars: int, reason: DropReason) -> None:
        self.dropped_chars += chars
        log.warning("evdev scanner %s: dropped %d chars (%s)", self.devnode, chars, reason)
        if self._on_dropped is not None:
            self._call(self._on_dropped, chars, reason)

    def _call(self, callback: Callable[..., object], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("evdev scanner %s: callback %r failed", self.devnode, callback)

    def _release(self) -> None:
        """Give back the wake-up pipe, the grab and the device; the reader does it itself."""
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
        device = self._device
        if device is not None:
            if self.grabbed:
                with suppress(OSError):  # a vanished device refuses ioctls; its grab went with it
                    device.ungrab()
                self.grabbed = False
            with suppress(OSError):
                device.close()
            self._device = None


__all__ = ["INPUT_EVENT", "DeviceGone", "DropReason", "EvdevScanner"]
