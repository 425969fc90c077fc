"""Per-device request limits for the sync routes (docs/sync-protocol.md §4, ``429 RATE_LIMITED``).

A handheld stuck in a loop (a bug that resends at once, a heartbeat timer gone wild) would otherwise
take the box's write path from every other device in the store. Each device gets a token bucket per
route: a burst large enough for a handheld draining a day's backlog, refilled at a sustained rate far
above what a working one sends. Buckets live in memory, like the login throttle's: a restart that
forgives a flood costs nothing, and the check stays off the disk on the hottest route.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from appliance.errors import RateLimited

# Devices a box remembers buckets for. A store pairs tens of handhelds; past this many, the device
# least recently heard from is forgotten, which only refills its bucket.
MAX_DEVICES = 10_000


class TokenBuckets:
    """One token bucket per key: ``burst`` tokens at most, ``per_s`` added back each second.

    Thread-safe, since Litestar may run a caller on its worker threads; the lock is held for a few
    arithmetic steps per request, never across anything that waits."""

    def __init__(
        self,
        per_s: float,
        burst: int,
        *,
        what: str,
        max_keys: int = MAX_DEVICES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a bucket needs a positive rate, a burst of at least 1 and room for a key")
        self._per_s = per_s
        self._burst = float(burst)
        self._what = what
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """Spend a token of ``key``'s bucket, or refuse with the whole seconds until one is back."""
        now = self._clock()
        with self._lock:
            held = self._buckets.pop(key, None)
            tokens = self._burst if held is None else min(self._burst, held[0] + (now - held[1]) * self._per_s)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = 0
            else:
                wait = max(1, math.ceil((1.0 - tokens) / self._per_s))
            self._buckets[key] = (tokens, now)  # most recently heard from last, for the eviction below
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        if wait:
            raise RateLimited(
                f"too many {self._what} from this device; wait {wait} s and try again",
                details={"retry_after_s": wait},
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)


class DeviceThrottle:
    """The sync routes' buckets, one set per route a device may flood."""

    def __init__(self, batches_per_s: float, batch_burst: int, heartbeats_per_s: float, heartbeat_burst: int) -> None:
        self.batches = TokenBuckets(batches_per_s, batch_burst, what="batches")
        self.heartbeats = TokenBuckets(heartbeats_per_s, heartbeat_burst, what="heartbeats")
