"""The box's identity: its Ed25519 node key on disk and its row in the database.

The key is made on first start and kept in ``<data_dir>/keys/node.key`` (mode 0600); the node id,
store id and role are kept in the database. The box is itself a writer whose id is its node id, so
every command it carries out is an event signed by this key.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.errors import Unavailable
from replication.hlc import wall_ms

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


def load_or_create_key(keys_dir: Path) -> tuple[Ed25519PrivateKey, bool]:
    """Return the node key and whether it was just made."""
    path = keys_dir / KEY_FILE
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise Unavailable(f"node key {path} is damaged ({len(seed)} bytes, expected 32)")
        return Ed25519PrivateKey.from_private_bytes(seed), False
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, seed)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    log.info("node key created", extra={"path": str(path)})
    return key, True


def read_node(conn: sqlite3.Connection) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute("SELECT * FROM node WHERE singleton = 1").fetchone()
    return row


def insert_node(conn: sqlite3.Connection, node_id: str, store_id: str, role: str) -> None:
    conn.execute(
        "INSERT INTO node (singleton, node_id, store_id, role, created_at) VALUES (1, ?, ?, ?, ?)",
        (node_id, store_id, role, wall_ms()),
    )
