"""Keyboard-wedge barcode scanners (``/dev/input/eventN``), read with python-evdev and grabbed.

A wedge scanner is a USB keyboard to the kernel: unless someone takes its events, they go to whatever
has the focus, a console login included. So the device is grabbed (``EVIOCGRAB``) the moment it is
opened, and its key events reach only this reader; they are decoded through the scanner's configured
layout by ``hardware.keyboard.KeyDecoder``, without a display server.

Its life (a thread of its own, the callbacks, dropping an unfinished code, releasing the device) is
``hardware.reader.ScannerReader``'s, shared with the serial scanners.

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
from collections.abc import Callable
from contextlib import suppress

import evdev

from hardware.keyboard import KeyDecoder
from hardware.reader import DropReason, ScannerReader

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


class EvdevScanner(ScannerReader):
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
        super().__init__(devnode, on_code=on_code, on_dropped=on_dropped, on_end=on_end)
        self.devnode = devnode
        self.layout = layout
        self.grabbed = False
        self._device: evdev.InputDevice[str] | None = None
        self._pending = b""
        self._too_long = 0  # characters of an over-long code dropped so far, said once at its suffix

    kind = "evdev-scanner"

    @property
    def partial_chars(self) -> int:
        """Characters of a code begun and not yet ended: what an unplug now would drop."""
        return self.decoder.pending

    @property
    def name(self) -> str | None:
        """The name the device reports (``EVIOCGNAME``), once started."""
        return None if self._device is None else self._device.name

    def _open(self) -> None:
        """Open and grab the device. ``OSError`` propagates: a missing node, no permission, or
        ``EBUSY`` when another program holds the grab (then nothing is left open)."""
        self._device = evdev.InputDevice(self.devnode)
        try:
            self._device.grab()
        except BaseException:
            self._close_device()
            raise
        self.grabbed = True

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
                self._deliver(completed)

    def _drop_partial(self, reason: DropReason) -> None:
        dropped = self.decoder.reset()  # modifiers held at an unplug are forgotten too
        if dropped:
            self._report_drop(len(dropped), reason)

    def _close_device(self) -> None:
        """Give back the grab and the device."""
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
