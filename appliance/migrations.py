"""Versioned schema migrations, applied at start.

Each migration is a small named function; it and its row in ``schema_migrations`` are committed in one
transaction, so a box that loses power mid-upgrade restarts from the last whole step. Running them
again does nothing. Never edit a migration that has shipped: add the next one.

Tables fall in two groups. The *log* (``node``, ``writers``, ``events``, ``chain_heads``) is the
truth and is never rebuilt. *Projections* are folds of the log; each domain module declares the
projection tables it owns so that ``stockverify rebuild`` can drop and refold them.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from appliance.db import transaction

log = logging.getLogger(__name__)

Migration = Callable[[sqlite3.Connection], None]


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run several statements inside the caller's transaction.

    ``executescript`` would COMMIT the open transaction first, breaking the one-step-one-transaction
    promise, so statements are split with SQLite's own completeness test and run one by one.
    """
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement.strip()[:80]}")


def m001_foundation(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        CREATE TABLE node (
            singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
            node_id     TEXT NOT NULL,
            store_id    TEXT NOT NULL,
            role        TEXT NOT NULL CHECK (role IN ('box', 'hq')),
            created_at  INTEGER NOT NULL
        ) STRICT;

        -- Every writer (this box, a paired handheld, a scanner on the box) and the head of its chain.
        -- head_seq per writer is the version vector of what this replica holds.
        CREATE TABLE writers (
            writer_id   TEXT PRIMARY KEY,
            kind        TEXT NOT NULL CHECK (kind IN ('box', 'device', 'scanner')),
            store_id    TEXT NOT NULL,
            name        TEXT NOT NULL,
            public_key  BLOB NOT NULL,
            status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
            head_seq    INTEGER NOT NULL DEFAULT 0,
            head_hash   BLOB NOT NULL,
            created_at  INTEGER NOT NULL
        ) STRICT;

        -- The immutable log. pos is this replica's arrival order (for cursors), not a global order.
        CREATE TABLE events (
            pos          INTEGER PRIMARY KEY,
            writer_id    TEXT NOT NULL REFERENCES writers (writer_id),
            seq          INTEGER NOT NULL CHECK (seq >= 1),
            event_id     TEXT NOT NULL UNIQUE,
            type         TEXT NOT NULL,
            payload      BLOB NOT NULL,
            hlc          INTEGER NOT NULL,
            occurred_at  INTEGER,
            prev_hash    BLOB NOT NULL,
            hash         BLOB NOT NULL,
            received_at  INTEGER NOT NULL,
            UNIQUE (writer_id, seq)
        ) STRICT;
        CREATE INDEX events_by_hlc ON events (hlc, writer_id, seq);

        -- Signed chain heads: one signature vouches for every event of the writer up to seq.
        CREATE TABLE chain_heads (
            writer_id   TEXT NOT NULL REFERENCES writers (writer_id),
            seq         INTEGER NOT NULL,
            hash        BLOB NOT NULL,
            signature   BLOB NOT NULL,
            signed_at   INTEGER NOT NULL,
            PRIMARY KEY (writer_id, seq)
        ) STRICT;

        CREATE TABLE stores (
            store_id    TEXT PRIMARY KEY,
            name        TEXT NOT NULL
        ) STRICT;

        CREATE TABLE floors (
            floor_id    TEXT PRIMARY KEY,
            code        TEXT NOT NULL UNIQUE,
            name        TEXT NOT NULL,
            position    INTEGER NOT NULL
        ) STRICT;

        CREATE TABLE racks (
            rack_id     TEXT PRIMARY KEY,
            floor_id    TEXT NOT NULL REFERENCES floors (floor_id),
            code        TEXT NOT NULL UNIQUE,
            name        TEXT NOT NULL
        ) STRICT;
        CREATE INDEX racks_by_floor ON racks (floor_id, code);

        CREATE TABLE products (
            product_id    TEXT PRIMARY KEY,
            sku           TEXT NOT NULL UNIQUE,
            name          TEXT NOT NULL,
            category      TEXT NOT NULL DEFAULT '',
            subcategory   TEXT NOT NULL DEFAULT '',
            uom           TEXT NOT NULL DEFAULT 'EA',
            mrp_minor     INTEGER,
            expected_qty  INTEGER NOT NULL DEFAULT 0
        ) STRICT;

        -- Barcodes normalised to GTIN-14; one code belongs to one product.
        CREATE TABLE product_codes (
            code        TEXT PRIMARY KEY,
            product_id  TEXT NOT NULL REFERENCES products (product_id),
            kind        TEXT NOT NULL,
            raw         TEXT NOT NULL
        ) STRICT;
        CREATE INDEX product_codes_by_product ON product_codes (product_id);

        CREATE TABLE users (
            user_id        TEXT PRIMARY KEY,
            username       TEXT NOT NULL UNIQUE COLLATE NOCASE,
            display_name   TEXT NOT NULL,
            role           TEXT NOT NULL CHECK (role IN ('verifier', 'supervisor', 'admin', 'auditor')),
            password_hash  TEXT NOT NULL,
            active         INTEGER NOT NULL DEFAULT 1
        ) STRICT;
        """,
    )


def m002_login_tokens(conn: sqlite3.Connection) -> None:
    # Login tokens are this box's local credentials, not store state: they are neither events nor
    # replicated, and a restored backup simply asks people to log in again.
    run_script(
        conn,
        """
        CREATE TABLE login_tokens (
            token_hash  BLOB PRIMARY KEY,
            user_id     TEXT NOT NULL REFERENCES users (user_id),
            created_at  INTEGER NOT NULL,
            expires_at  INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX login_tokens_by_expiry ON login_tokens (expires_at);
        """,
    )


MIGRATIONS: list[tuple[int, Migration]] = [
    (1, m001_foundation),
    (2, m002_login_tokens),
]

LATEST = MIGRATIONS[-1][0]


def current_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, *, upto: int | None = None) -> list[int]:
    """Apply every migration above the database's version (up to ``upto``); return those applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT"
    )
    version = current_version(conn)
    if version > LATEST:
        raise RuntimeError(
            f"database schema is version {version}, newer than this program knows ({LATEST}); "
            "install the newer release or restore a backup"
        )
    applied = []
    for number, migration in MIGRATIONS:
        if number <= version or (upto is not None and number > upto):
            continue
        with transaction(conn):
            migration(conn)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (number, migration.__name__, int(time.time() * 1000)),
            )
        log.info("schema migrated", extra={"version": number, "migration": migration.__name__})
        applied.append(number)
    return applied
