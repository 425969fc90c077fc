"""``GET /api/health``: unauthenticated, for discovery and connectivity checks.

It answers 200 whenever the database can be read, ``"status": "degraded"`` included: a box whose disk
is full still serves what it holds, and discovery and connectivity checks must still find it. 503 is
kept for a database that cannot be read at all. ``degraded`` comes with a human ``reason`` and, when
the disk is the cause, ``disk.problem`` (``DISK_FULL`` or ``DISK_READ_ONLY``: a write was refused) or
``disk.low`` (under ``DISK_LOW_BYTES`` free: writes still pass, not for long), or when two boxes of the
store are both its lock authority (``locks.role`` is ``conflict``: claims are refused until an admin
moves the authority). ``locks`` says who grants the store's locks, at which epoch, and this box's part
(``granting``, ``forwarding``, ``conflict`` or ``unknown``); HQ grants none and answers ``null``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler

from appliance import __version__
from appliance.box import Box
from appliance.store.db import DISK_FULL, DISK_LOW_BYTES

log = logging.getLogger(__name__)

FREE_SPACE_TTL_S = 1.0  # health is polled by every dashboard and device; statvfs once a second is plenty

REASON_FULL = "The box's disk is full: scans are not being saved. Free space on the box; writes resume by themselves."
REASON_READ_ONLY = (
    "The box's disk has become read-only: scans are not being saved. Restart the box; "
    "if it stays read-only, its card needs replacing."
)
REASON_LOW = "The box's disk is almost full ({mib} MiB free): free space before scans stop being saved."
REASON_DATABASE = "The box cannot read its database; see its log."

_free_lock = threading.Lock()
_free_cache: dict[Path, tuple[float, int | None]] = {}


def free_bytes(folder: Path) -> int | None:
    """Free space under ``folder`` as an unprivileged writer sees it, at most a second old."""
    now = time.monotonic()
    with _free_lock:
        cached = _free_cache.get(folder)
    if cached is not None and now - cached[0] < FREE_SPACE_TTL_S:
        return cached[1]
    try:
        free: int | None = shutil.disk_usage(folder).free
    except OSError:
        log.warning("health could not measure free space", extra={"data_dir": str(folder)})
        free = None
    with _free_lock:
        _free_cache[folder] = (now, free)
    return free


def _disk(box: Box) -> tuple[dict[str, Any], str | None]:
    """The ``disk`` field, and the reason to give when the disk makes the box degraded."""
    free = free_bytes(box.settings.data_dir)
    problem = box.db.storage_problem
    low = free is not None and free < DISK_LOW_BYTES
    disk: dict[str, Any] = {
        "free_bytes": free,
        "low": low,
        "problem": problem["code"] if problem else None,
        "since": problem["since_ms"] if problem else None,  # wall-clock ms of the first refused write
        "refused": problem["refused"] if problem else 0,  # writes refused since then
    }
    if problem:
        return disk, REASON_FULL if problem["code"] == DISK_FULL else REASON_READ_ONLY
    if low:
        return disk, REASON_LOW.format(mib=(free or 0) // 1024**2)
    return disk, None


@get("/api/health", opt={"public": True}, sync_to_thread=True)
def health(box: Box) -> Response[dict[str, Any]]:
    database_ok = True
    try:
        box.db.read().execute("SELECT 1 FROM node").fetchone()
    except Exception:
        log.exception("health check could not read the database")
        database_ok = False
    disk, disk_reason = _disk(box)
    standing = box.authority.standing() if box.node.role == "box" else None
    reason = (disk_reason or (standing.reason() if standing else None)) if database_ok else REASON_DATABASE
    body = {
        "status": "ok" if reason is None else "degraded",
        "node_id": box.node.node_id,
        "store_id": box.node.store_id,
        "role": box.node.role,
        "version": __version__,
        "database": "ok" if database_ok else "error",
        "disk": disk,
        "locks": standing.to_dict() if standing else None,
        "reason": reason,
    }
    return Response(body, status_code=200 if database_ok else 503)


ROUTES: list[HTTPRouteHandler] = [health]
