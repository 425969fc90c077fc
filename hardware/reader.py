"""What every scanner reader on the box shares, serial or keyboard-wedge: a thread of its own from
``start()`` until ``close()`` or unplug, waiting in ``poll`` on the device and on a wake-up pipe (an idle
scanner costs no CPU, ``close()`` is prompt), the callbacks ``on_code``, ``on_dropped(chars, reason)`` and
``on_end(error)`` called from that thread (the box's scanner service hands them to its event loop with
``loop.call_soon_threadsafe``), and the ``codes`` / ``dropped_chars`` counters.

Whatever ends the reader — ``close()``, an unplug, a bug — it drops the unfinished code and says so,
releases the device itself (so a scanner nobody calls ``close()`` on leaks nothing) and calls
``on_end`` last. A subclass opens, reads, drains and releases its kind of device.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Literal, Self

log = logging.getLogger(__name__)

DropReason = Literal["vanished", "closed", "too_long", "undecodable", "failed"]


class ScannerReader:
    """One scanner, read in its own thread. Single use: a replugged scanner gets a new instance.

    Callbacks run in the reader thread and must not block for long; an exception in one is logged and
    the reader goes on. ``on_end(error)`` is the reader's last act: ``None`` after ``close()``, else why
    it stopped.
    """

    kind = "scanner"  # names its thread and its log lines

    def __init__(
        self,
        name: str,
        *,
        on_code: Callable[[str], object],
        on_dropped: Callable[[int, DropReason], object] | None,
        on_end: Callable[[BaseException | None], object] | None,
    ) -> None:
        self.codes = 0
        self.dropped_chars = 0
        self.error: BaseException | None = None
        self._name = name
        self._on_code = on_code
        self._on_dropped = on_dropped
        self._on_end = on_end
        self._lock = threading.Lock()  # the wake-up pipe: close() writes to it, the reader closes it
        self._stop = threading.Event()
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None

    # -- what a kind of scanner provides ------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _read_until_stopped(self) -> None:
        """Read until ``_stop`` is set (raise ``OSError`` when the device is gone)."""
        raise NotImplementedError

    def _drain(self) -> None:
        """At close, take what the device already holds, so a code scanned just before is not lost."""
        raise NotImplementedError

    def _drop_partial(self, reason: DropReason) -> None:
        raise NotImplementedError

    def _close_device(self) -> None:
        raise NotImplementedError

    # -- the shared life ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def start(self) -> None:
        """Open the device (its ``OSError`` propagates, nothing left open) and start reading."""
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError(f"a {self.kind} reader is started once; make a new one for a replugged scanner")
        self._open()
        try:
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(target=self._run, name=f"{self.kind} {self._name}", daemon=True)
            self._thread.start()
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        """Stop reading and wait for the reader to end; what the device already holds is read first.

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

    def __enter__(self) -> Self:
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
        except OSError as exc:  # serial.SerialException is an OSError
            error = exc
        except Exception as exc:  # a bug here must still release the device and say the reader ended
            log.exception("%s %s failed", self.kind, self._name)
            error = exc
        finally:
            self._drop_partial("closed" if error is None else "vanished" if isinstance(error, OSError) else "failed")
            self._release()
            self.error = error
            if self._on_end is not None:
                self._call(self._on_end, error)

    def _report_drop(self, chars: int, reason: DropReason) -> None:
        self.dropped_chars += chars
        log.warning("%s %s: dropped %d chars (%s)", self.kind, self._name, chars, reason)
        if self._on_dropped is not None:
            self._call(self._on_dropped, chars, reason)

    def _deliver(self, code: str) -> None:
        self.codes += 1
        self._call(self._on_code, code)

    def _call(self, callback: Callable[..., object], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("%s %s: callback %r failed", self.kind, self._name, callback)

    def _release(self) -> None:
        """Give back the wake-up pipe and the device; the reader does it itself."""
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
        self._close_device()


__all__ = ["DropReason", "ScannerReader"]
