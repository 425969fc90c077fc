"""Version vectors: what a replica holds, as ``{writer_id: highest contiguous seq}``.

Every writer's stream is gap-free (DESIGN §3), so one number per writer says exactly which events a
replica holds, and all the arithmetic replication needs is here: how many events one vector lacks
against another, the join of two (per-writer max), the vector a page leaves behind, and the vector's
form on the wire and in the ``peers`` table. Replicas compare and merge vectors on every exchange;
keeping the rules in one module keeps the pull, the push, HQ's counter rows and a peer's status in
agreement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

Vector = dict[str, int]


def lacking(theirs: Mapping[str, int], ours: Mapping[str, int]) -> int:
    """How many events ``ours`` holds that ``theirs`` does not."""
    return sum(max(0, seq - theirs.get(writer, 0)) for writer, seq in ours.items())


def join(vector: Mapping[str, int], other: Mapping[str, int]) -> Vector:
    """Per-writer max: what a replica holding both holds."""
    joined = dict(vector)
    for writer, seq in other.items():
        if seq > joined.get(writer, 0):
            joined[writer] = seq
    return joined


def after_rows(vector: Mapping[str, int], rows: Iterable[Any]) -> Vector:
    """The vector a replica holds once wire rows ``(writer_id, seq, …)`` are applied on top of ``vector``.

    A page holds each writer's events in seq order and continues its stream (or is refused whole), so
    the last row of a writer carries its new head."""
    return join(vector, {row[0]: row[1] for row in rows})


def after_page(vector: Mapping[str, int], page: Mapping[str, Any]) -> Vector:
    return after_rows(vector, page.get("events") or [])


def parse(value: Any) -> Vector:
    """A vector as another replica sent it; ``ValueError`` (or ``TypeError``) when it is not one."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"a version vector is a map of writer ids to seqs, not {type(value).__name__}")
    out: Vector = {}
    for writer, seq in value.items():
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"writer {str(writer)[:40]!r} has seq {seq!r:.40}; a seq is a whole number >= 0")
        out[str(writer)] = seq
    return out


def pack(vector: Mapping[str, int]) -> bytes:
    return msgpack.packb(dict(vector), use_bin_type=True)  # type: ignore[no-any-return]


def unpack(blob: bytes | None) -> Vector:
    return dict(msgpack.unpackb(blob, raw=False)) if blob else {}
