"""Serial barcode scanners (CDC-ACM ``/dev/ttyACM*`` or USB-serial ``/dev/ttyUSB*``), read with pyserial.

A serial scanner sends each code as bytes followed by the suffix it is configured for (CR, LF, CRLF or
nothing, when only a pause ends a code). It is read in a thread of its own because a serial port is a
blocking device to pyserial; the thread waits in ``poll`` on the port and on a wake-up pipe, so an idle
scanner costs no CPU and ``close()`` is prompt. Codes are handed to ``on_code`` from that thread: the
box's scanner service passes them to its event loop with ``loop.call_soon_threadsafe``.

What goes wrong with scanners in stores, and what this does about it:

- Unplugged, the port's reads fail (EIO or end of file, ENODEV on some adapters). The reader ends at
  once, never retries the dead port (other readers are known to spin at 100 % CPU there), reports the
  bytes of an unfinished code as dropped through ``on_dropped``, then calls ``on_end`` with the error.
  A replug is a new device node, for which the service makes a new ``SerialScanner``.
- A code is never lost at ``close()``: what already arrived is read and delivered first; only an
  unfinished code is dropped, and reported.
- A scanner set to the wrong suffix would grow one endless "code"; past ``max_code_chars`` it is
  dropped and reported, so the box's memory is not the limit.
"""

from __future__ import annotations

import codecs
import errno
import fcntl
import logging
import math
import select
import termios
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Literal, get_args

import serial

from hardware.reader import DropReason, ScannerReader

log = logging.getLogger(__name__)

Suffix = Literal["cr", "lf", "crlf", "none"]

_TERMINATORS: dict[Suffix, bytes] = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n", "none": b""}
_CHUNK = 4096
# poll() said "readable" and a read gave nothing this many times in a row: the port is dead without
# saying so, and going round again would be the busy loop this module exists to avoid.
_MAX_EMPTY_READS = 3


def open_exclusive(port: str, baud: int = 9600) -> serial.Serial:
    """Open ``port`` for this process alone, so no other reader's bytes interleave with ours.

    Two locks, because neither is enough alone. pyserial's ``exclusive=True`` takes an advisory
    ``flock``: it keeps out every program that also locks (a second reader of ours, pyserial tools,
    minicom) and works for root too. ``TIOCEXCL`` makes the kernel refuse any further ``open`` of the
    tty with EBUSY, locking or not, but not to root. ModemManager probes as root and takes no flock
    (only its own ``TIOCEXCL``, which makes *our* open fail with EBUSY while it probes), so neither
    lock keeps its AT commands, flushes and baud changes off a scanner: the shipped udev rule
    (``systemd/60-stockverify-scanners.rules``) does, by setting ``ID_MM_DEVICE_IGNORE`` on every
    scanner's tty; a scanner of a vendor the rules do not list needs its line added there.

    The port is non-blocking (``timeout=0``): the caller waits for data with ``poll``. Raises
    ``serial.SerialException`` when the port is missing, busy or not a tty.
    """
    port_ = serial.Serial()
    port_.port = port
    port_.baudrate = baud
    port_.timeout = 0
    port_.exclusive = True
    port_.open()
    try:
        fcntl.ioctl(port_.fileno(), termios.TIOCEXCL)
    except OSError as exc:
        if exc.errno not in (errno.ENOTTY, errno.EINVAL):  # a port without tty ioctls keeps the flock only
            port_.close()
            raise serial.SerialException(exc.errno, f"could not lock port {port}: {exc}") from exc
    return port_


def close_exclusive(port: serial.Serial) -> None:
    """Close a port from ``open_exclusive``, clearing ``TIOCEXCL`` first.

    The flag belongs to the tty, not to our file: a pty, or a tty another process still has open,
    would otherwise stay refused to every later ``open`` (our own reopen included) until a reboot.
    """
    if port.is_open:
        with suppress(OSError):  # a vanished device refuses ioctls; closing is all that is left
            fcntl.ioctl(port.fileno(), termios.TIOCNXCL)
    with suppress(OSError):
        port.close()


class SerialScanner(ScannerReader):
    """One serial scanner, read in its own thread from ``start()`` until ``close()`` or unplug.

    Single use: after it ends (``on_end`` called), a replugged scanner gets a new instance.

    Callbacks run in the reader thread and must not block for long; an exception in one is logged and
    the reader goes on. ``on_dropped(chars, reason)`` reports an unfinished or refused code; ``reason``
    is ``"vanished"`` (unplugged mid-code), ``"closed"``, ``"too_long"``, ``"undecodable"`` or
    ``"failed"``. ``on_end(error)`` is the reader's last act: ``None`` after ``close()``, else why it
    stopped (a ``serial.SerialException`` or ``OSError`` for a vanished device).

    ``suffix="none"`` ends a code after ``gap`` seconds without a byte, so codes arrive at most one per
    ``gap`` (20/s at 50 ms); a scanner meant for fast counting is better set to a suffix.
    """

    def __init__(
        self,
        port: str,
        *,
        on_code: Callable[[str], object],
        on_dropped: Callable[[int, DropReason], object] | None = None,
        on_end: Callable[[BaseException | None], object] | None = None,
        baud: int = 9600,
        suffix: Suffix = "cr",
        gap: float = 0.05,
        encoding: str = "latin-1",
        max_code_chars: int = 8192,
    ) -> None:
        if suffix not in get_args(Suffix):
            raise ValueError(f"suffix must be one of {', '.join(get_args(Suffix))}, not {suffix!r}")
        if gap <= 0:
            raise ValueError("gap must be a positive number of seconds")
        codecs.lookup(encoding)  # an unknown encoding fails here (LookupError), not in the reader thread
        super().__init__(port, on_code=on_code, on_dropped=on_dropped, on_end=on_end)
        self.port = port
        self.baud = baud
        self.suffix: Suffix = suffix
        self.gap = gap
        self.encoding = encoding
        self.max_code_chars = max_code_chars
        self._terminator = _TERMINATORS[suffix]
        self._buffer = bytearray()
        self._last_byte = 0.0
        self._serial: serial.Serial | None = None

    kind = "serial-scanner"

    @property
    def partial_chars(self) -> int:
        """Bytes of a code begun and not yet ended (characters, in a one-byte encoding): what an unplug
        now would drop, for ``doctor`` and a scanner's test mode."""
        return len(self._buffer)

    def _open(self) -> None:
        """``open_exclusive``; its ``SerialException`` propagates."""
        self._serial = open_exclusive(self.port, self.baud)

    def _read_until_stopped(self) -> None:
        assert self._serial is not None
        poller = select.poll()
        poller.register(self._serial.fileno(), select.POLLIN)  # POLLHUP and POLLERR come unasked
        poller.register(self._wake_r, select.POLLIN)
        empty_reads = 0
        while not self._stop.is_set():
            wait_ms = self._wait_ms()
            if wait_ms == 0:
                self._end_code_by_gap()
                continue
            ready = poller.poll(wait_ms)
            if self._stop.is_set() or not ready:
                continue  # closing, or the gap ran out: the loop's head deals with both
            data = self._serial.read(_CHUNK)  # raises SerialException on EIO / end of file
            if data:
                empty_reads = 0
                self._feed(data)
            else:
                empty_reads += 1
                if empty_reads >= _MAX_EMPTY_READS:
                    raise serial.SerialException("the port is readable but gives no data (device gone?)")

    def _wait_ms(self) -> int | None:
        """How long poll may sleep: forever, unless a ``none``-suffix code is waiting for its gap."""
        if self._terminator or not self._buffer:
            return None
        left = self._last_byte + self.gap - time.monotonic()
        return 0 if left <= 0 else math.ceil(left * 1000)

    def _drain(self) -> None:
        """At close, take what the port already holds, so a code scanned just before is not lost."""
        assert self._serial is not None
        while data := self._serial.read(_CHUNK):
            self._feed(data)
        if self._wait_ms() == 0:
            self._end_code_by_gap()

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        self._last_byte = time.monotonic()
        if self._terminator:
            while (end := self._buffer.find(self._terminator)) >= 0:
                code = bytes(self._buffer[:end])
                del self._buffer[: end + len(self._terminator)]
                self._deliver_raw(code)
        if len(self._buffer) > self.max_code_chars:
            self._drop_partial("too_long")

    def _end_code_by_gap(self) -> None:
        code = bytes(self._buffer)
        self._buffer.clear()
        self._deliver_raw(code)

    def _deliver_raw(self, raw: bytes) -> None:
        if not raw:
            return  # two suffixes in a row, e.g. a CRLF scanner set to "cr" then "lf": no code between
        try:
            code = raw.decode(self.encoding)
        except UnicodeDecodeError:
            self._report_drop(self._chars(raw), "undecodable")
            return
        self._deliver(code)

    def _drop_partial(self, reason: DropReason) -> None:
        if self._buffer:
            chars = self._chars(bytes(self._buffer))
            self._buffer.clear()
            self._report_drop(chars, reason)

    def _chars(self, raw: bytes) -> int:
        return len(raw.decode(self.encoding, errors="replace"))

    def _close_device(self) -> None:
        if self._serial is not None:
            close_exclusive(self._serial)
            self._serial = None


__all__ = ["DropReason", "SerialScanner", "Suffix", "close_exclusive", "open_exclusive"]
