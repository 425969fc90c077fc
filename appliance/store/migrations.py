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

from appliance.store.db import transaction
from replication.wire.codec import unpack

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


def m003_counting(conn: sqlite3.Connection) -> None:
    # Counting state is stored as CRDT rows (DESIGN §4) so that folding the same events in any order,
    # or merging another replica's rows, gives the same tables. Rollups are queries, never tables.
    run_script(
        conn,
        """
        -- Folds may see a run's events in any order across writers (a status change replicated before
        -- the creation), so every column has a neutral default and each fold only moves it forward.
        CREATE TABLE runs (
            run_id         TEXT PRIMARY KEY,
            kind           TEXT CHECK (kind IN ('hard', 'directed')),
            created_by     TEXT,
            created_hlc    INTEGER,
            name           TEXT NOT NULL DEFAULT '',
            notes          TEXT NOT NULL DEFAULT '',
            planned_start  TEXT,
            header_hlc     INTEGER NOT NULL DEFAULT 0,
            header_writer  TEXT NOT NULL DEFAULT '',
            status         TEXT NOT NULL DEFAULT 'PLANNED',
            status_rank    INTEGER NOT NULL DEFAULT 0,
            status_reason  TEXT NOT NULL DEFAULT '',
            status_by      TEXT NOT NULL DEFAULT '',
            status_hlc     INTEGER NOT NULL DEFAULT 0,
            status_writer  TEXT NOT NULL DEFAULT ''
        ) STRICT;

        -- What a directed run covers (grow-only sets).
        CREATE TABLE run_products (
            run_id      TEXT NOT NULL,
            product_id  TEXT NOT NULL,
            PRIMARY KEY (run_id, product_id)
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE run_racks (
            run_id   TEXT NOT NULL,
            rack_id  TEXT NOT NULL,
            PRIMARY KEY (run_id, rack_id)
        ) STRICT, WITHOUT ROWID;

        -- Expected on-hand quantities frozen when the run started (S in the variance).
        CREATE TABLE run_expected (
            run_id        TEXT NOT NULL,
            product_id    TEXT NOT NULL,
            expected_qty  INTEGER NOT NULL,
            PRIMARY KEY (run_id, product_id)
        ) STRICT, WITHOUT ROWID;

        CREATE TABLE sessions (
            session_id       TEXT PRIMARY KEY,
            run_id           TEXT,
            kind             TEXT CHECK (kind IN ('count', 'recount')),
            created_by       TEXT,
            created_hlc      INTEGER,
            verifier_id      TEXT,
            device_id        TEXT,
            assign_hlc       INTEGER NOT NULL DEFAULT 0,
            assign_writer    TEXT NOT NULL DEFAULT '',
            status           TEXT NOT NULL DEFAULT 'CREATED',
            status_round     INTEGER NOT NULL DEFAULT 0,
            status_rank      INTEGER NOT NULL DEFAULT 0,
            status_reason    TEXT NOT NULL DEFAULT '',
            status_by        TEXT NOT NULL DEFAULT '',
            status_hlc       INTEGER NOT NULL DEFAULT 0,
            status_writer    TEXT NOT NULL DEFAULT ''
        ) STRICT;
        CREATE INDEX sessions_by_run ON sessions (run_id);
        CREATE INDEX sessions_by_verifier ON sessions (verifier_id, status_rank);

        CREATE TABLE session_racks (
            session_id  TEXT NOT NULL,
            rack_id     TEXT NOT NULL,
            PRIMARY KEY (session_id, rack_id)
        ) STRICT, WITHOUT ROWID;
        -- A recount session's products (empty for an ordinary count session).
        CREATE TABLE session_products (
            session_id  TEXT NOT NULL,
            product_id  TEXT NOT NULL,
            PRIMARY KEY (session_id, product_id)
        ) STRICT, WITHOUT ROWID;

        -- Quantity: a PN-counter per (session, rack, scanned code) with one entry per writer.
        -- Codes are kept as scanned and resolved to products through scan_codes, so a code mapped
        -- or imported later re-resolves every count made with it.
        CREATE TABLE scan_counts (
            session_id  TEXT NOT NULL,
            rack_id     TEXT NOT NULL,
            code        TEXT NOT NULL,
            writer_id   TEXT NOT NULL,
            p           INTEGER NOT NULL DEFAULT 0,
            n           INTEGER NOT NULL DEFAULT 0,
            last_hlc    INTEGER NOT NULL,
            PRIMARY KEY (session_id, rack_id, code, writer_id)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX scan_counts_by_code ON scan_counts (code);

        -- Every code ever scanned and the product it resolves to now (NULL: unmatched).
        CREATE TABLE scan_codes (
            code        TEXT PRIMARY KEY,
            product_id  TEXT,
            matched_by  TEXT NOT NULL
        ) STRICT;
        CREATE INDEX scan_codes_by_product ON scan_codes (product_id);

        -- Codes a supervisor mapped to a product (last writer wins).
        CREATE TABLE code_mappings (
            code        TEXT PRIMARY KEY,
            product_id  TEXT NOT NULL,
            hlc         INTEGER NOT NULL,
            writer_id   TEXT NOT NULL
        ) STRICT;

        CREATE TABLE scan_undos (
            undoes  TEXT PRIMARY KEY
        ) STRICT;

        -- Scans made while verifying a given product: the barcode-mismatch conflict reads these.
        CREATE TABLE scan_claims (
            event_id    TEXT PRIMARY KEY,
            session_id  TEXT NOT NULL,
            code        TEXT NOT NULL,
            product_id  TEXT NOT NULL,
            qty         INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX scan_claims_by_session ON scan_claims (session_id);

        -- Damage quantity: PN-counter per (session, product) with one entry per writer.
        CREATE TABLE damage_counts (
            session_id  TEXT NOT NULL,
            product_id  TEXT NOT NULL,
            writer_id   TEXT NOT NULL,
            p           INTEGER NOT NULL DEFAULT 0,
            n           INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (session_id, product_id, writer_id)
        ) STRICT, WITHOUT ROWID;

        -- Item attributes (mfg_date, mrp_minor, uom, condition, category, status): LWW registers
        -- ordered by (hlc, writer_id).
        CREATE TABLE item_attrs (
            session_id  TEXT NOT NULL,
            product_id  TEXT NOT NULL,
            name        TEXT NOT NULL,
            value       ANY,
            hlc         INTEGER NOT NULL,
            writer_id   TEXT NOT NULL,
            PRIMARY KEY (session_id, product_id, name)
        ) STRICT, WITHOUT ROWID;

        -- Serial numbers: add-wins observed-remove set; the tag of an add is its event id.
        CREATE TABLE serial_adds (
            tag         TEXT PRIMARY KEY,
            session_id  TEXT NOT NULL,
            product_id  TEXT NOT NULL,
            serial      TEXT NOT NULL
        ) STRICT;
        CREATE INDEX serial_adds_by_item ON serial_adds (session_id, product_id);
        CREATE INDEX serial_adds_by_serial ON serial_adds (serial);
        CREATE TABLE serial_removes (
            tag  TEXT PRIMARY KEY
        ) STRICT;

        CREATE TABLE photos (
            session_id    TEXT NOT NULL,
            product_id    TEXT NOT NULL,
            sha256        TEXT NOT NULL,
            content_type  TEXT NOT NULL,
            size          INTEGER NOT NULL,
            PRIMARY KEY (session_id, product_id, sha256)
        ) STRICT, WITHOUT ROWID;

        -- Supervisors' answers: conflict resolutions, variance decisions, tolerances (all LWW).
        -- fingerprint: the state the supervisor saw; if the data changes, the conflict opens again.
        CREATE TABLE conflict_resolutions (
            conflict_id  TEXT PRIMARY KEY,
            fingerprint  TEXT NOT NULL,
            action       TEXT NOT NULL,
            reason       TEXT NOT NULL,
            by_user      TEXT NOT NULL,
            hlc          INTEGER NOT NULL,
            writer_id    TEXT NOT NULL
        ) STRICT;
        CREATE TABLE variance_decisions (
            run_id       TEXT NOT NULL,
            product_id   TEXT NOT NULL,
            decision     TEXT NOT NULL,
            reason_code  TEXT NOT NULL,
            note         TEXT NOT NULL,
            by_user      TEXT NOT NULL,
            at_ms        INTEGER NOT NULL,
            hlc          INTEGER NOT NULL,
            writer_id    TEXT NOT NULL,
            PRIMARY KEY (run_id, product_id)
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE tolerances (
            scope      TEXT NOT NULL CHECK (scope IN ('store', 'floor', 'rack')),
            scope_id   TEXT NOT NULL,
            units      INTEGER NOT NULL,
            pct_bp     INTEGER NOT NULL,  -- percent in basis points: 250 = 2.5 %
            hlc        INTEGER NOT NULL,
            writer_id  TEXT NOT NULL,
            PRIMARY KEY (scope, scope_id)
        ) STRICT, WITHOUT ROWID;
        """,
    )


def m004_devices(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        ALTER TABLE writers ADD COLUMN name_hlc INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE writers ADD COLUMN revoked_hlc INTEGER;
        ALTER TABLE writers ADD COLUMN revoke_reason TEXT NOT NULL DEFAULT '';

        -- Local credentials (not events, not replicated): pairing codes and device tokens, hashed.
        CREATE TABLE pairing_codes (
            code_hash   BLOB PRIMARY KEY,
            created_by  TEXT NOT NULL,
            expires_at  INTEGER NOT NULL,
            used_at     INTEGER
        ) STRICT;
        CREATE TABLE device_tokens (
            token_hash  BLOB PRIMARY KEY,
            writer_id   TEXT NOT NULL REFERENCES writers (writer_id),
            created_at  INTEGER NOT NULL
        ) STRICT;
        -- Presence from heartbeats: ephemeral, so kept out of the log.
        CREATE TABLE device_presence (
            writer_id    TEXT PRIMARY KEY,
            last_seen    INTEGER NOT NULL,
            queue_depth  INTEGER NOT NULL,
            app_version  TEXT NOT NULL,
            address      TEXT NOT NULL
        ) STRICT;

        CREATE TABLE quarantine_decisions (
            writer_id   TEXT NOT NULL,
            session_id  TEXT NOT NULL,
            decision    TEXT NOT NULL CHECK (decision IN ('accepted', 'rejected')),
            reason      TEXT NOT NULL,
            by_user     TEXT NOT NULL,
            hlc         INTEGER NOT NULL,
            writer      TEXT NOT NULL,
            PRIMARY KEY (writer_id, session_id)
        ) STRICT, WITHOUT ROWID;

        -- A revoked device's counts in a session that was not approved before the revocation wait in
        -- quarantine until a supervisor accepts them; rejected ones never count.
        CREATE VIEW quarantined AS
            SELECT w.writer_id, s.session_id, d.decision
            FROM writers w
            JOIN sessions s
            LEFT JOIN quarantine_decisions d ON d.writer_id = w.writer_id AND d.session_id = s.session_id
            WHERE w.status = 'revoked'
              AND NOT (s.status = 'APPROVED' AND s.status_hlc < w.revoked_hlc)
              AND EXISTS (
                  SELECT 1 FROM scan_counts c WHERE c.writer_id = w.writer_id AND c.session_id = s.session_id
                  UNION ALL
                  SELECT 1 FROM damage_counts c WHERE c.writer_id = w.writer_id AND c.session_id = s.session_id
              );

        -- What counts: every counter entry but those held back by quarantine.
        CREATE VIEW counted_scans AS
            SELECT c.* FROM scan_counts c
            WHERE NOT EXISTS (
                SELECT 1 FROM quarantined q
                WHERE q.writer_id = c.writer_id AND q.session_id = c.session_id
                  AND coalesce(q.decision, '') != 'accepted'
            );
        CREATE VIEW counted_damage AS
            SELECT c.* FROM damage_counts c
            WHERE NOT EXISTS (
                SELECT 1 FROM quarantined q
                WHERE q.writer_id = c.writer_id AND q.session_id = c.session_id
                  AND coalesce(q.decision, '') != 'accepted'
            );
        """,
    )


def m005_locks(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        -- Rack state per run, folded from rack moves; a move counts only if its fencing token is the
        -- newest seen (ties by HLC), so replicas agree whatever order the moves arrive in.
        CREATE TABLE rack_states (
            run_id      TEXT NOT NULL,
            rack_id     TEXT NOT NULL,
            state       TEXT NOT NULL,
            session_id  TEXT,
            user_id     TEXT,
            device_id   TEXT,
            token       INTEGER NOT NULL,
            hlc         INTEGER NOT NULL,
            reason      TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (run_id, rack_id)
        ) STRICT, WITHOUT ROWID;

        -- Scans made under a rack lease, by the token they carried: a token older than the rack's
        -- current one means the lease had passed to someone else (a late_lease conflict).
        CREATE TABLE lease_scans (
            session_id  TEXT NOT NULL,
            rack_id     TEXT NOT NULL,
            writer_id   TEXT NOT NULL,
            token       INTEGER NOT NULL,
            code        TEXT NOT NULL,
            qty         INTEGER NOT NULL,
            PRIMARY KEY (session_id, rack_id, writer_id, token, code)
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE lease_voids (
            conflict_id  TEXT PRIMARY KEY
        ) STRICT;

        -- The lock authority's own state: not events, not replicated (DESIGN §6).
        CREATE TABLE lock_authority (
            singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
            epoch      INTEGER NOT NULL,
            counter    INTEGER NOT NULL
        ) STRICT;
        INSERT INTO lock_authority (singleton, epoch, counter) VALUES (1, 1, 0);
        CREATE TABLE rack_leases (
            run_id      TEXT NOT NULL,
            rack_id     TEXT NOT NULL,
            session_id  TEXT NOT NULL,
            user_id     TEXT NOT NULL,
            device_id   TEXT,
            token       INTEGER NOT NULL,
            expires_at  INTEGER NOT NULL,
            PRIMARY KEY (run_id, rack_id)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX rack_leases_by_device ON rack_leases (device_id);
        CREATE INDEX rack_leases_by_user ON rack_leases (user_id);
        CREATE TABLE session_locks (
            session_id  TEXT PRIMARY KEY,
            user_id     TEXT NOT NULL,
            device_id   TEXT NOT NULL,
            token       INTEGER NOT NULL,
            expires_at  INTEGER NOT NULL
        ) STRICT;
        """,
    )


def m006_replication(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        -- Other nodes this box exchanges events with (boxes of its store, its HQ; at HQ, store boxes),
        -- enrolled once their proof checked out, and how the exchange with each is going.
        CREATE TABLE peers (
            node_id        TEXT PRIMARY KEY,
            store_id       TEXT NOT NULL,
            role           TEXT NOT NULL,
            public_key     BLOB NOT NULL,
            url            TEXT NOT NULL DEFAULT '',
            enrolled_at    INTEGER NOT NULL,
            their_vector   BLOB,
            last_ok_at     INTEGER,
            last_error     TEXT,
            last_error_at  INTEGER,
            events_in      INTEGER NOT NULL DEFAULT 0,
            events_out     INTEGER NOT NULL DEFAULT 0,
            bytes_in       INTEGER NOT NULL DEFAULT 0,
            bytes_out      INTEGER NOT NULL DEFAULT 0
        ) STRICT;

        -- Small named values a replica keeps about itself (e.g. the store vector HQ's counters cover).
        CREATE TABLE replica_meta (
            name   TEXT PRIMARY KEY,
            value  BLOB
        ) STRICT;

        -- The store's name is a last-writer-wins register, so every box of a store shows the same one.
        ALTER TABLE stores ADD COLUMN hlc INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE stores ADD COLUMN writer_id TEXT NOT NULL DEFAULT '';

        -- The part of n that undos put on a writer's entry. Undos may come from any writer, so unlike
        -- p and the rest of n this part is not a per-writer prefix; counter-state replication ships
        -- p and n - u (max-merged) and the undos as a set, and needs them apart.
        ALTER TABLE scan_counts ADD COLUMN u INTEGER NOT NULL DEFAULT 0;
        """,
    )
    # Undos and lease voids negate another writer's entry, each once (the first event wins).
    undone: dict[tuple[str, str, str, str], int] = {}
    seen: set[str] = set()
    for kind, payload in conn.execute(
        "SELECT type, payload FROM events WHERE type IN ('scan.undone', 'lease_scans.voided') ORDER BY pos"
    ):
        p = unpack(payload)
        once = p["undoes"] if kind == "scan.undone" else p["conflict_id"]
        if once in seen:
            continue
        seen.add(once)
        if kind == "scan.undone":
            key = (p["session_id"], p["rack_id"] or "", p["code"], p["of_writer"])
            undone[key] = undone.get(key, 0) + p["qty"]
        else:
            for code, qty in p["codes"]:
                key = (p["session_id"], p["rack_id"], code, p["writer_id"])
                undone[key] = undone.get(key, 0) + qty
    conn.executemany(
        "UPDATE scan_counts SET u = ? WHERE session_id = ? AND rack_id = ? AND code = ? AND writer_id = ?",
        [(qty, *key) for key, qty in undone.items()],
    )


def m007_sku_nocase(conn: sqlite3.Connection) -> None:
    # A code that matches no barcode is tried as a SKU ignoring case; without this index that try
    # read the whole product master, once for every code a store scanned for the first time.
    run_script(conn, "CREATE INDEX products_sku_nocase ON products (sku COLLATE NOCASE);")


def m008_events_by_hlc(conn: sqlite3.Connection) -> None:
    # The log's time index keyed by hlc alone: the few events that share an hlc are ordered by a small
    # sort where a full order is asked for (a rebuild). Every event a box records or receives writes
    # an entry here, and without the writer's id in it a replicated event applied 0.8 µs faster (4 %).
    run_script(
        conn,
        """
        DROP INDEX events_by_hlc;
        CREATE INDEX events_by_hlc ON events (hlc);
        """,
    )


def m009_held_events(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        -- Whether a person is active is a last-writer-wins register (an admin deactivates one who left).
        ALTER TABLE users ADD COLUMN active_hlc INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE users ADD COLUMN active_writer TEXT NOT NULL DEFAULT '';

        -- The version vector of the session's writers when it was approved or voided (msgpack);
        -- events of the session beyond it are held (appliance/counting/held.py).
        ALTER TABLE sessions ADD COLUMN closed_vector BLOB;

        -- Who wrote into each session: the writers a closing vector names.
        CREATE TABLE session_writers (
            session_id  TEXT NOT NULL,
            writer_id   TEXT NOT NULL,
            PRIMARY KEY (session_id, writer_id)
        ) STRICT, WITHOUT ROWID;

        -- Events stored but held for a supervisor, with the effect each has on the counts. An event
        -- may be held by both rules ('closed': after the session's closing vector; 'checked': by the
        -- box its device's batch reached); its effect is left out once.
        CREATE TABLE held_events (
            event_id      TEXT NOT NULL,
            origin        TEXT NOT NULL CHECK (origin IN ('closed', 'checked')),
            session_id    TEXT NOT NULL,
            writer_id     TEXT NOT NULL,
            seq           INTEGER NOT NULL,
            type          TEXT NOT NULL,
            reason        TEXT NOT NULL,
            kind          TEXT NOT NULL CHECK (kind IN ('scan', 'damage', 'serial', 'none')),
            rack_id       TEXT NOT NULL,
            code          TEXT NOT NULL,
            entry_writer  TEXT NOT NULL,
            product_id    TEXT NOT NULL,
            dp            INTEGER NOT NULL,
            dn            INTEGER NOT NULL,
            hlc           INTEGER NOT NULL,
            PRIMARY KEY (event_id, origin)
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX held_events_by_session ON held_events (session_id);

        -- A supervisor's decision per held event: last writer wins by (hlc, writer_id).
        CREATE TABLE held_decisions (
            event_id   TEXT PRIMARY KEY,
            decision   TEXT NOT NULL CHECK (decision IN ('accepted', 'rejected')),
            reason     TEXT NOT NULL,
            by_user    TEXT NOT NULL,
            at_ms      INTEGER NOT NULL,
            hlc        INTEGER NOT NULL,
            writer_id  TEXT NOT NULL
        ) STRICT;

        -- Held events not accepted, one row each, with their effect.
        CREATE VIEW held_open AS
            SELECT event_id, session_id, kind, rack_id, code, entry_writer, product_id, dp, dn
            FROM held_events
            WHERE event_id NOT IN (SELECT event_id FROM held_decisions WHERE decision = 'accepted')
            GROUP BY event_id;

        -- What counts: every counter entry but those held back by quarantine, less held events.
        DROP VIEW counted_scans;
        CREATE VIEW counted_scans AS
            SELECT c.session_id, c.rack_id, c.code, c.writer_id,
                   c.p - coalesce(h.dp, 0) AS p, c.n - coalesce(h.dn, 0) AS n, c.u, c.last_hlc
            FROM scan_counts c
            LEFT JOIN (
                SELECT session_id, rack_id, code, entry_writer, sum(dp) AS dp, sum(dn) AS dn
                FROM held_open WHERE kind = 'scan' GROUP BY session_id, rack_id, code, entry_writer
            ) h ON h.session_id = c.session_id AND h.rack_id = c.rack_id AND h.code = c.code
               AND h.entry_writer = c.writer_id
            WHERE NOT EXISTS (
                SELECT 1 FROM quarantined q
                WHERE q.writer_id = c.writer_id AND q.session_id = c.session_id
                  AND coalesce(q.decision, '') != 'accepted'
            );
        DROP VIEW counted_damage;
        CREATE VIEW counted_damage AS
            SELECT c.session_id, c.product_id, c.writer_id,
                   c.p - coalesce(h.dp, 0) AS p, c.n - coalesce(h.dn, 0) AS n
            FROM damage_counts c
            LEFT JOIN (
                SELECT session_id, product_id, entry_writer, sum(dp) AS dp, sum(dn) AS dn
                FROM held_open WHERE kind = 'damage' GROUP BY session_id, product_id, entry_writer
            ) h ON h.session_id = c.session_id AND h.product_id = c.product_id AND h.entry_writer = c.writer_id
            WHERE NOT EXISTS (
                SELECT 1 FROM quarantined q
                WHERE q.writer_id = c.writer_id AND q.session_id = c.session_id
                  AND coalesce(q.decision, '') != 'accepted'
            );
        CREATE VIEW counted_serial_adds AS
            SELECT a.* FROM serial_adds a
            WHERE a.tag NOT IN (SELECT event_id FROM held_open WHERE kind = 'serial');
        """,
    )
    # Sessions written into before this version: the writers a closing vector will name.
    for session_id, writer_id in conn.execute(
        "SELECT DISTINCT session_id, writer_id FROM scan_counts UNION SELECT DISTINCT session_id, writer_id"
        " FROM damage_counts"
    ).fetchall():
        conn.execute(
            "INSERT OR IGNORE INTO session_writers (session_id, writer_id) VALUES (?, ?)", (session_id, writer_id)
        )


def m010_lock_designations(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        -- Which box grants the store's locks, for which epoch (appliance/counting/authority.py): every
        -- designation is kept; the highest epoch wins, and two boxes at that epoch are a conflict.
        CREATE TABLE lock_designations (
            epoch      INTEGER NOT NULL,
            node_id    TEXT NOT NULL,
            by_user    TEXT NOT NULL,
            hlc        INTEGER NOT NULL,
            writer_id  TEXT NOT NULL,
            PRIMARY KEY (epoch, node_id)
        ) STRICT, WITHOUT ROWID;

        -- The newest hlc among a lease's scans: a scan under a token of an epoch the store has moved
        -- past is late only if it was made after the move (appliance/counting/conflicts.py).
        ALTER TABLE lease_scans ADD COLUMN last_hlc INTEGER NOT NULL DEFAULT 0;
        """,
    )


def m011_scanners(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        -- Scanners plugged into a box of the store (appliance/counting/stations.py): each a writer of its
        -- own, remembered by its USB serial or port (identity), with how to read it and the station
        -- (session and rack) its codes count for.
        CREATE TABLE scanners (
            writer_id    TEXT PRIMARY KEY,
            identity     TEXT NOT NULL,
            node_id      TEXT NOT NULL,
            kind         TEXT NOT NULL,
            model        TEXT NOT NULL,
            vendor_id    TEXT NOT NULL,
            product_id   TEXT NOT NULL,
            serial       TEXT,
            name         TEXT NOT NULL,
            layout       TEXT NOT NULL DEFAULT 'us',
            variant      TEXT NOT NULL DEFAULT '',
            suffix       TEXT,
            baud         INTEGER NOT NULL DEFAULT 9600,
            session_id   TEXT,
            rack_id      TEXT,
            assigned_by  TEXT,
            assigned_at  INTEGER,
            -- Last writer wins, by (hlc, writer), for the station and for the settings: any box of the
            -- store may change them, and every replica must end with the same.
            assign_hlc   INTEGER NOT NULL DEFAULT 0,
            config_hlc   INTEGER NOT NULL DEFAULT 0,
            enrolled_at  INTEGER NOT NULL,
            UNIQUE (node_id, identity)
        ) STRICT;

        -- Codes a scanner read that no session took: it was assigned to none, or the session refused
        -- them. Kept for a supervisor, who counts them into a session or sets them aside.
        CREATE TABLE kept_scans (
            event_id     TEXT PRIMARY KEY,
            scanner_id   TEXT NOT NULL,
            code         TEXT NOT NULL,
            read_at      INTEGER NOT NULL,
            reason       TEXT NOT NULL,
            message      TEXT NOT NULL,
            decision     TEXT,
            decided_by   TEXT,
            decided_at   INTEGER,
            session_id   TEXT,
            rack_id      TEXT
        ) STRICT;
        CREATE INDEX kept_scans_open ON kept_scans (decision, read_at);
        """,
    )


def m012_reports(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        -- Saved snapshots of a run (appliance/reports/snapshots.py): immutable, from events, so they reach
        -- the store's other boxes and HQ. The rows are the run's facts at the moment it was taken.
        CREATE TABLE report_snapshots (
            snapshot_id  TEXT PRIMARY KEY,
            run_id       TEXT NOT NULL,
            name         TEXT NOT NULL,
            note         TEXT NOT NULL DEFAULT '',
            by_user      TEXT NOT NULL,
            taken_at     INTEGER NOT NULL,
            run_status   TEXT NOT NULL,
            sessions     TEXT NOT NULL,     -- JSON: the approved sessions included, with their closing vectors
            summary      TEXT NOT NULL,     -- JSON
            row_count    INTEGER NOT NULL,
            rows_hash    TEXT NOT NULL,     -- BLAKE2b of the rows as taken, to check a copy is whole
            rows_held    INTEGER NOT NULL DEFAULT 0
        ) STRICT;
        CREATE INDEX report_snapshots_by_run ON report_snapshots (run_id, taken_at);
        CREATE TABLE snapshot_rows (
            snapshot_id  TEXT NOT NULL,
            n            INTEGER NOT NULL,  -- the row's place in the snapshot
            session_id   TEXT NOT NULL,
            verifier_id  TEXT,
            verifier     TEXT,
            writer_id    TEXT NOT NULL,
            device       TEXT,
            floor        TEXT,
            rack_id      TEXT,
            rack         TEXT,
            product_id   TEXT,
            sku          TEXT,
            name         TEXT,
            category     TEXT,
            subcategory  TEXT,
            condition    TEXT,
            code         TEXT,              -- an unmatched code (no product)
            qty          INTEGER NOT NULL,
            damage       INTEGER NOT NULL,
            PRIMARY KEY (snapshot_id, n)
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE snapshot_expected (
            snapshot_id  TEXT NOT NULL,
            product_id   TEXT NOT NULL,
            sku          TEXT NOT NULL,
            expected     INTEGER NOT NULL,
            PRIMARY KEY (snapshot_id, product_id)
        ) STRICT, WITHOUT ROWID;

        -- Queries a supervisor saved by name (last writer wins by (hlc, writer)).
        CREATE TABLE saved_queries (
            query_id   TEXT PRIMARY KEY,
            name       TEXT NOT NULL,
            spec       TEXT NOT NULL,       -- JSON
            by_user    TEXT NOT NULL,
            saved_at   INTEGER NOT NULL,
            deleted    INTEGER NOT NULL DEFAULT 0,
            hlc        INTEGER NOT NULL,
            writer_id  TEXT NOT NULL
        ) STRICT;

        -- The column mapping a person set for an import source, remembered for next time (last writer wins).
        CREATE TABLE import_mappings (
            source     TEXT NOT NULL,       -- the name a person gives the file's origin ("ERP weekly")
            target     TEXT NOT NULL,       -- what it imports: products, scope
            mapping    TEXT NOT NULL,       -- JSON: {file column: our column}
            by_user    TEXT NOT NULL,
            saved_at   INTEGER NOT NULL,
            hlc        INTEGER NOT NULL,
            writer_id  TEXT NOT NULL,
            PRIMARY KEY (source, target)
        ) STRICT;

        -- Export jobs of this box (not replicated: a file on this box's disk, and its progress).
        CREATE TABLE export_jobs (
            job_id       TEXT PRIMARY KEY,
            what         TEXT NOT NULL,     -- JSON: the report, query or comparison exported
            format       TEXT NOT NULL CHECK (format IN ('csv', 'xlsx', 'pdf')),
            status       TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
            rows_done    INTEGER NOT NULL DEFAULT 0,
            rows_total   INTEGER,
            file         TEXT,
            bytes        INTEGER,
            error        TEXT,
            by_user      TEXT NOT NULL,
            created_at   INTEGER NOT NULL,
            finished_at  INTEGER
        ) STRICT;
        """,
    )


MIGRATIONS: list[tuple[int, Migration]] = [
    (1, m001_foundation),
    (2, m002_login_tokens),
    (3, m003_counting),
    (4, m004_devices),
    (5, m005_locks),
    (6, m006_replication),
    (7, m007_sku_nocase),
    (8, m008_events_by_hlc),
    (9, m009_held_events),
    (10, m010_lock_designations),
    (11, m011_scanners),
    (12, m012_reports),
]

LATEST = MIGRATIONS[-1][0]


def current_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
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
