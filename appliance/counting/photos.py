"""Photos of an item: kept on disk under their SHA-256, attached to a session's product by an event.

The file is written (and fsynced) before the event that names it, so an attached photo is always on
disk; a photo whose attaching failed is removed again unless another item already uses it. The event
carries only the hash, so replicas learn that a photo exists without its bytes. A handheld's
``photo.attached`` (``counting.ingest``) is the same event with the same fields: it uploads the photo
first (``PUT /api/sync/photos/{sha256}``), and the box refuses the event until the file is here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
from pathlib import Path

from appliance.auth.people import User
from appliance.counting.items import counting_session, require_product
from appliance.errors import ValidationFailed
from appliance.store.eventlog import EventLog, projection_tables, projector
from replication.wire.codec import Event

projection_tables("photos")

PHOTO_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}


def check_photo_target(conn: sqlite3.Connection, actor: User, session_id: str, product_id: str) -> None:
    """Everything ``attach_photo`` will check, asked before the photo touches the disk."""
    counting_session(conn, actor, session_id)
    require_product(conn, product_id)


def forget_photo(conn: sqlite3.Connection, photos_dir: Path, digest: str) -> None:
    """Remove a stored photo that ended up attached to nothing."""
    if conn.execute("SELECT 1 FROM photos WHERE sha256 = ? LIMIT 1", (digest,)).fetchone() is None:
        photo_path(photos_dir, digest).unlink(missing_ok=True)


def store_photo(photos_dir: Path, data: bytes, content_type: str) -> str:
    """Keep a photo on disk under its SHA-256 (fsynced, written once); return the hash."""
    if content_type not in PHOTO_TYPES:
        raise ValidationFailed(
            f"photos must be one of {', '.join(PHOTO_TYPES)}",
            code="BAD_PHOTO",
            details={"content_type": content_type},
        )
    if not data:
        raise ValidationFailed("the photo is empty", code="BAD_PHOTO")
    digest = hashlib.sha256(data).hexdigest()
    path = photo_path(photos_dir, digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per write: a device resending a photo may have the first send still writing.
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(8)}.tmp")
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    return digest


def photo_path(photos_dir: Path, digest: str) -> Path:
    return photos_dir / digest[:2] / digest


def attach_photo(
    conn: sqlite3.Connection,
    log: EventLog,
    actor: User,
    session_id: str,
    product_id: str,
    *,
    sha256: str,
    content_type: str,
    size: int,
) -> None:
    counting_session(conn, actor, session_id)
    require_product(conn, product_id)
    log.record(
        conn,
        "photo.attached",
        {
            "session_id": session_id,
            "product_id": product_id,
            "sha256": sha256,
            "content_type": content_type,
            "size": size,
            "by": actor.user_id,
        },
    )


# -- projection -----------------------------------------------------------------------------------
@projector("photo.attached")
def _photo_attached(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT OR IGNORE INTO photos (session_id, product_id, sha256, content_type, size) VALUES (?, ?, ?, ?, ?)",
        (p["session_id"], p["product_id"], p["sha256"], p["content_type"], p["size"]),
    )
