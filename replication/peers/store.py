"""What the replicator needs of the replica it runs in, and nothing more.

The replicator moves pages; it does not know SQL, projections or the box's writer thread. A box hands
it an object with these methods (``appliance.replica.store.BoxReplica``), so replication never imports
the appliance, and a test can follow the loop with any store that keeps the same promises:

* reads (``vector``, ``is_enrolled``, ``next_page``) are plain functions the replicator runs in a
  worker thread, against a snapshot;
* writes are coroutines that return once committed; ``apply_page`` queues the page before its first
  suspension, so a page handed over in one step of the loop is written after the one before it;
* ``note_sent`` is bookkeeping committed with the store's next write, never waited for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from replication.wire.vectors import Vector

Mode = Literal["log", "counters"]
LOG: Mode = "log"  # every event: peers, and HQ for audit
COUNTERS: Mode = "counters"  # only the CRDT rows that changed: HQ over a thin uplink


class ReplicaStore(Protocol):
    def vector(self) -> Vector:
        """Each writer's highest contiguous seq held here."""
        ...

    def is_enrolled(self, node_id: str, store_id: str, role: str, public_key: bytes, url: str) -> bool:
        """Whether ``enrol`` would change nothing (a hello that needs no write waits for no page)."""
        ...

    async def enrol(self, node_id: str, store_id: str, role: str, public_key: bytes, url: str) -> None:
        """Remember a node whose hello checked out; refuse one that comes back with another key."""
        ...

    async def note_failure(self, node_id: str, error: str) -> None: ...

    async def apply_page(self, page: dict[str, Any], source: str, nbytes: int) -> int:
        """Apply a pulled page in one transaction with the source's cursor; how many events were new."""
        ...

    def next_page(self, theirs: Vector, mode: Mode, limit: int) -> tuple[dict[str, Any], int] | None:
        """The next page the other side lacks and how many events or rows it carries; None when it has all."""
        ...

    def note_sent(self, node_id: str, their_vector: Vector, events_out: int, bytes_out: int) -> None: ...


class LinkSettings(Protocol):
    """The settings the replicator reads (the box's one settings object has them all)."""

    @property
    def peers(self) -> Sequence[str]: ...
    @property
    def hq_url(self) -> str: ...
    @property
    def hq_secret(self) -> str: ...
    @property
    def hq_mode(self) -> str: ...
    @property
    def store_secret(self) -> str: ...
    @property
    def lock_authority_url(self) -> str: ...
    @property
    def replicate_every_s(self) -> float: ...
