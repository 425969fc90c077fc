"""The box's identity: its Ed25519 node key on disk and its row in the database.

The key is made on first start and kept in ``<data_dir>/keys/node.key`` (mode 0600); the node id,
store id and role are kept in the database. The box is itself a writer whose id is its node id, so
every command it carries out is an event signed by this key.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.errors import Unavailable
from replication.wire import codec
from replication.wire.hlc import wall_ms

log = logging.getLogger(__name__)

KEY_FILE = "node.key"


@dataclass(frozen=True)
class Node:
    node_id: str
    store_id: str
    role: str
    key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return public_bytes(self.key)


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def derived_key(node_key: Ed25519PrivateKey, purpose: str) -> Ed25519PrivateKey:
    """A key the box holds for a writer it speaks for (a scanner plugged into it), derived from the
    node key rather than kept in a file of its own: a restored backup of the node key brings every
    such key back, and there is no second secret to lose or to leave behind on a replaced card."""
    seed = node_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"stockverify-edge writer key", info=purpose.encode())
    return Ed25519PrivateKey.from_private_bytes(hkdf.derive(seed))


def load_or_create_key(keys_dir: Path) -> tuple[Ed25519PrivateKey, bool]:
    """Return the node key and whether it was just made."""
    path = keys_dir / KEY_FILE
    try:
        key, made = codec.load_or_create_key(path)
    except ValueError as exc:
        raise Unavailable(f"node key: {exc}") from None
    if made:
        log.info("node key created", extra={"path": str(path)})
    return key, made


def read_node(conn: sqlite3.Connection) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM node WHERE singleton = 1").fetchone()
    return row


def insert_node(conn: sqlite3.Connection, node_id: str, store_id: str, role: str) -> None:
    conn.execute(
        "INSERT INTO node (singleton, node_id, store_id, role, created_at) VALUES (1, ?, ?, ?, ?)",
        (node_id, store_id, role, wall_ms()),
    )
