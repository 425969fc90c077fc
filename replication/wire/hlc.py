"""Hybrid logical clock.

Orders events across writers without trusting anyone's wall clock: an HLC never runs backwards, stays
close to physical time, and moves past every timestamp it has seen. A timestamp is one integer,
``physical_ms << 16 | logical``, so it sorts and compares as a number in SQLite and msgpack.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from replication.errors import Retryable

LOGICAL_BITS = 16


class ClockDriftError(Retryable, ValueError):
    """A remote timestamp is further ahead of our clock than we accept.

    Retryable because our clock catches up with it: the box answers it as ``CLOCK_AHEAD``, which a
    handheld's sender waits out rather than failing the scan. Still a ``ValueError`` for older callers.
    """


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def encode(physical_ms: int, logical: int) -> int:
    return (physical_ms << LOGICAL_BITS) | logical


def physical_ms(hlc: int) -> int:
    return hlc >> LOGICAL_BITS


class HybridClock:
    def __init__(self, last: int = 0, *, wall: Callable[[], int] = wall_ms, max_drift_ms: int = 5 * 60_000) -> None:
        self._last = last
        self._wall = wall
        self._max_drift_ms = max_drift_ms
        self._lock = threading.Lock()

    @property
    def last(self) -> int:
        return self._last

    def now(self) -> int:
        """A timestamp for a local event, greater than every one issued or observed before."""
        with self._lock:
            self._last = max(encode(self._wall(), 0), self._last + 1)
            return self._last

    def check(self, remote: int) -> None:
        """Refuse a timestamp too far ahead of this clock, without moving the clock."""
        ahead = physical_ms(remote) - self._wall()
        if ahead > self._max_drift_ms:
            raise ClockDriftError(f"timestamp is {ahead} ms ahead of this box's clock")

    def observe(self, remote: int, *, lead_ms: int | None = None) -> int:
        """Move past a timestamp received from another writer; refuse one too far in the future.

        ``lead_ms`` bounds how far past this clock's wall time the remote may pull it: a handheld's clock
        a few minutes fast is accepted, but it must not drag every other writer's time along with it.
        """
        with self._lock:
            wall = self._wall()
            if physical_ms(remote) - wall > self._max_drift_ms:
                raise ClockDriftError(f"timestamp is {physical_ms(remote) - wall} ms ahead of this box's clock")
            if lead_ms is not None:
                remote = min(remote, encode(wall + lead_ms, 0))
            self._last = max(encode(wall, 0), self._last + 1, remote + 1)
            return self._last
