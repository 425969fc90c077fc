"""When replication tries again, and how long it waits first: one rule for every caller.

A handheld's sender and a box's replicator used to decide on their own which HTTP refusals time heals,
and disagreed (a 408 stopped a handheld for a person but only delayed a peer). They share this module
now, so the same answer from a box means the same thing on every link.

Retryable refusals::

    status        code            why trying again can help
    >= 500        any             the other end is failing or restarting
    408           any             the request timed out on its way; it was not refused as such
    429           any             the other end is busy; Retry-After says for how long
    any           NOT_ENROLLED    the peer forgot this node (restored from a backup): a new hello
                                  fixes it, and the caller enrols again before the next try

Everything else (400, 401, 403, 404, 409, 413, 422, ...) comes back the same however often it is sent.
413 is not retryable as such; the device sender answers it by splitting the batch, which is a
different request, not the same one again.
"""

from __future__ import annotations

import random

RETRYABLE_STATUSES = frozenset({408, 429})
RETRYABLE_CODES = frozenset({"NOT_ENROLLED"})


def retryable_status(status: int, code: str | None = None) -> bool:
    """Whether an HTTP refusal with this ``status`` and the answer's ``code`` may pass later."""
    return status >= 500 or status in RETRYABLE_STATUSES or code in RETRYABLE_CODES


class Backoff:
    """Exponential waits with jitter; ``reset`` after a success.

    The wait doubles from ``base`` to ``ceiling``, each time a random factor in [0.5, 1.5], so that a
    floor of handhelds, or the boxes of a store, do not all come back to a box in the same second.
    """

    def __init__(self, base: float, ceiling: float, rng: random.Random) -> None:
        self.base, self.ceiling, self._rng = base, ceiling, rng
        self.attempts = 0

    def next_delay(self) -> float:
        # The exponent stops at 32 so a link down for weeks cannot overflow the float.
        delay: float = min(self.ceiling, self.base * 2.0 ** min(self.attempts, 32)) * self._rng.uniform(0.5, 1.5)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0
