"""``stockverify doctor``: what a field tech runs first when a box misbehaves.

It only reads: it never migrates, creates or repairs, so it is safe on a box that is in trouble. (The
disk check writes and deletes one small probe file beside the database: only a write shows that ext4
stopped taking them after an error, which ``statvfs`` does not report.)
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import pyudev

from appliance.counting.authority import CONFLICT, FORWARDING, GRANTING, LockAuthority
from appliance.settings import Settings
from appliance.store.db import DISK_FULL, DISK_LOW_BYTES, probe_disk
from appliance.store.eventlog import verify_writer_chain
from appliance.store.identity import KEY_FILE, load_or_create_key, public_bytes
from appliance.store.migrations import LATEST, current_version
from hardware.udev import DEFAULT_ALLOW, enumerate_scanners
from provisioning.backup import newest_archive
from provisioning.certificates import CA_FILE, TLS_DIR, load_server_identity

SCANNER_RULES = "60-stockverify-scanners.rules"  # what provisioning installs (provisioning.provision)
DISK_WARN_BYTES = 1024**3
CERT_WARN_DAYS = 30
NEIGHBOUR_TIMEOUT_S = 3.0
# A device's hlc more than 5 minutes ahead is refused (CLOCK_AHEAD): boxes that far apart would refuse
# each other's handhelds. A few seconds is what NTP on a store LAN keeps.
CLOCK_WARN_S = 5
CLOCK_FAIL_S = 300
# Where the box itself starts saying "degraded" on /api/health: the doctor fails at the same point, so
# the tech and the dashboard never disagree about whether the disk is the problem.
DISK_FAIL_BYTES = DISK_LOW_BYTES
# A nightly backup is at most a day old; a day and a half means one night was missed, a week that
# backups have stopped.
BACKUP_WARN_S = 36 * 3600
BACKUP_FAIL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn or fail
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _disk(path: Path) -> Check:
    free = shutil.disk_usage(path).free
    text = f"{free / 1024**3:.2f} GiB free at {path}"
    refused = probe_disk(path)
    if refused == DISK_FULL or free < DISK_FAIL_BYTES:
        return Check("disk", "fail", text + "; scans are not being saved or soon will not be, free space now")
    if refused is not None:
        return Check(
            "disk",
            "fail",
            f"{path} is read-only (a filesystem error or a failing card); restart the box, "
            "and replace the card if it stays read-only",
        )
    if free < DISK_WARN_BYTES:
        return Check("disk", "warn", text + "; plan to free space before the next count")
    return Check("disk", "ok", text)


def _backup(settings: Settings) -> Check:
    """A card dies without warning; how much of the store a dead box costs is the age of its newest
    archive (``stockverify backup``, nightly from ``stockverify-backup.timer``)."""
    found = newest_archive(settings)
    if found is None:
        return Check(
            "backup", "fail", f"no backup in {settings.backups_dir}; run 'stockverify backup' (docs/operations.md)"
        )
    path, age_s = found
    text = f"newest {path.name}, {age_s / 3600:.1f} h old"
    if age_s > BACKUP_FAIL_S:
        return Check("backup", "fail", text + "; backups have stopped: check stockverify-backup.timer and its journal")
    if age_s > BACKUP_WARN_S:
        return Check("backup", "warn", text + "; last night's backup did not happen")
    return Check("backup", "ok", text)


def _certificate(settings: Settings) -> Check:
    """An expired certificate stops every handheld at once (the browser refuses the page, the client
    refuses the box); the box renews its own at start, so one close to expiry means it has not restarted."""
    identity = load_server_identity(settings.data_dir)
    if identity is None:
        return Check(
            "certificate", "warn", "no server certificate: the box serves plain HTTP (run 'stockverify provision')"
        )
    left_days = (identity.not_after - datetime.now(UTC)).total_seconds() / 86400
    text = f"{identity.cert_path.name} valid until {identity.not_after:%Y-%m-%d} ({left_days:.0f} days)"
    if left_days <= 0:
        return Check("certificate", "fail", text + "; restart the box to renew it, or install the retailer's new one")
    if left_days < CERT_WARN_DAYS:
        return Check("certificate", "warn", text + "; the box renews it at its next start")
    return Check("certificate", "ok", text)


def _neighbours(settings: Settings) -> list[Check]:
    """Every peer and HQ: reachable, and their clock against ours (a box minutes apart from the others
    orders edits wrongly, and handhelds synced to it are refused as ahead elsewhere)."""
    checks = []
    store_ca = settings.data_dir / TLS_DIR / CA_FILE
    for kind, url, ca in [
        *(("peer", peer, store_ca) for peer in settings.peers),
        *(
            (("hq", settings.hq_url, Path(settings.hq_ca_file) if settings.hq_ca_file else None),)
            if settings.hq_url
            else ()
        ),
    ]:
        checks.append(_neighbour(kind, url, ca))
    return checks


def _neighbour(kind: str, url: str, ca: Path | None) -> Check:
    name = f"{kind} {url}"
    context = None
    if url.startswith("https://"):
        if ca is None or not ca.is_file():
            return Check(name, "fail", f"no CA to check its certificate with ({ca or 'hq_ca_file not set'})")
        context = ssl.create_default_context(cafile=str(ca))
    try:
        sent = time.time()
        health = url.rstrip("/") + "/api/health"  # an http(s) URL from the settings, checked when loaded
        with urllib.request.urlopen(health, timeout=NEIGHBOUR_TIMEOUT_S, context=context) as answer:  # noqa: S310
            received = time.time()
            date = answer.headers.get("Date")
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        return Check(name, "fail", f"does not answer: {getattr(exc, 'reason', exc)}")
    if not date:
        return Check(name, "warn", "answers, but says no time to compare clocks with")
    skew = parsedate_to_datetime(date).timestamp() - (sent + received) / 2  # the Date header has 1 s resolution
    text = f"answers; its clock is {skew:+.0f} s from ours"
    if abs(skew) > CLOCK_FAIL_S:
        return Check(name, "fail", text + "; fix NTP on the box that is wrong")
    if abs(skew) > CLOCK_WARN_S:
        return Check(name, "warn", text)
    return Check(name, "ok", text)


def _locks(conn: sqlite3.Connection, node: sqlite3.Row, settings: Settings) -> Check:
    """The same answer as ``locks`` in /api/health, from the log alone (a hello the running box heard is
    not in the database; its health says that part)."""
    if node["role"] == "hq":
        return Check("locks", "ok", "HQ grants no store's locks")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'lock_designations'").fetchone() is None:
        return Check("locks", "warn", "the lock authority is recorded at the next start (schema not migrated yet)")
    authority = LockAuthority(node["node_id"], settings.lock_authority_url)
    authority.load(conn)
    standing = authority.standing()
    if standing.role == CONFLICT:
        return Check("locks", "fail", standing.reason() or "two lock authorities")
    if standing.role == GRANTING:
        return Check("locks", "ok", f"this box grants the store's locks (epoch {standing.epoch})")
    if standing.role == FORWARDING and standing.node_id:
        text = f"box {standing.node_id} grants the store's locks (epoch {standing.epoch}); claims here go there"
        return Check("locks", "ok", text)
    if standing.role == FORWARDING:
        return Check("locks", "ok", f"claims here go to {settings.lock_authority_url} (lock_authority_url)")
    return Check(
        "locks",
        "warn",
        "no box of this store is designated the lock authority yet (or its designation has not reached this box):"
        " claims fail until one is; an admin can designate one with 'stockverify locks move-authority --to NODE_ID'",
    )


def _open(db_path: Path, checks: list[Check]) -> sqlite3.Connection:
    """The database, read-only; on a read-only disk as an immutable file.

    A reader of a WAL database needs its ``-shm`` file, which a cleanly stopped box has removed and a
    read-only disk will not let SQLite make again: the plain open fails exactly when the tech most
    needs the other checks. No one can write to a read-only disk, so reading the file as immutable is
    safe; only a WAL left behind goes unread, and the tech is told so.
    """
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
    conn = sqlite3.connect(f"file:{db_path}?mode=ro&immutable=1", uri=True)
    wal = db_path.with_name(db_path.name + "-wal")
    if wal.exists() and wal.stat().st_size:
        checks.append(
            Check(
                "database",
                "warn",
                f"read without its WAL ({wal.stat().st_size} bytes, on a disk that takes no writes): "
                "the newest writes are not checked",
            )
        )
    return conn


def run_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    data_dir = settings.data_dir
    if not data_dir.is_dir():
        return [Check("data_dir", "fail", f"{data_dir} does not exist; start the box or provision it first")]
    checks.append(_disk(data_dir))
    checks.append(_backup(settings))
    checks.append(_certificate(settings))
    checks.extend(_neighbours(settings))
    if not settings.db_path.exists():
        checks.append(Check("database", "fail", f"{settings.db_path} does not exist"))
        return checks

    conn = _open(settings.db_path, checks)
    conn.row_factory = sqlite3.Row
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if result == ["ok"]:
            checks.append(Check("integrity", "ok", "PRAGMA integrity_check: ok"))
        else:
            checks.append(Check("integrity", "fail", "; ".join(result[:5])))

        version = current_version(conn)
        if version == LATEST:
            checks.append(Check("schema", "ok", f"version {version} (latest)"))
        elif version < LATEST:
            checks.append(Check("schema", "warn", f"version {version}; the next start migrates to {LATEST}"))
        else:
            checks.append(Check("schema", "fail", f"version {version} is newer than this program ({LATEST})"))

        node = conn.execute("SELECT * FROM node").fetchone() if version >= 1 else None
        if node is None:
            checks.append(Check("node", "fail", "no store in this database yet"))
            return checks
        checks.append(Check("node", "ok", f"node {node['node_id']} of store {node['store_id']} ({node['role']})"))

        key_path = settings.keys_dir / KEY_FILE
        writer = conn.execute("SELECT public_key FROM writers WHERE writer_id = ?", (node["node_id"],)).fetchone()
        if not key_path.exists():
            checks.append(Check("node_key", "fail", f"{key_path} is missing; restore it from the backup"))
        else:
            key, _ = load_or_create_key(settings.keys_dir)
            if writer is not None and public_bytes(key) == writer["public_key"]:
                checks.append(Check("node_key", "ok", f"{key_path} matches the box's writer"))
            else:
                checks.append(Check("node_key", "fail", f"{key_path} does not match the box's enrolled key"))

        report = verify_writer_chain(conn, node["node_id"])
        if report.ok:
            checks.append(
                Check(
                    "chain",
                    "ok",
                    f"{report.events} events, gap-free and linked; head {report.signed_seq} signed",
                )
            )
        else:
            checks.append(Check("chain", "fail", "; ".join(report.problems[:5])))
        checks.append(_locks(conn, node, settings))
        if node["role"] == "box":
            checks.extend(_scanners(conn, node, settings))
    finally:
        conn.close()
    return checks


def _scanners(conn: sqlite3.Connection, node: sqlite3.Row, settings: Settings, root: Path = Path("/")) -> list[Check]:
    """Each scanner plugged into this box, what it counts for, and whether the box can read it; the
    rules that make a scanner readable by the box and keep ModemManager off serial ones."""
    if not settings.scanners:
        return [Check("scanners", "ok", "off (setting scanners): scanners plugged in are not read")]
    try:
        present = enumerate_scanners(pyudev.Context(), DEFAULT_ALLOW.extended(settings.scanner_allow))
    except Exception as exc:  # no udev on this machine
        return [Check("scanners", "warn", f"udev cannot be asked ({exc}): scanners plugged in cannot be found")]
    rules = root / "etc/udev/rules.d" / SCANNER_RULES
    checks = []
    missing_rules = (
        f"{rules} is missing (run 'stockverify provision'): scanners of other makers are not found, the box"
        " may lack the right to read them, and ModemManager may probe serial scanners"
    )
    if present and not rules.is_file():
        checks.append(Check("scanner_rules", "warn", missing_rules))
    known = (
        {row["identity"]: row for row in conn.execute("SELECT * FROM scanners WHERE node_id = ?", (node["node_id"],))}
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'scanners'").fetchone()
        else {}
    )
    for device in sorted(present.values(), key=lambda d: d.devnode):
        row = known.get(device.identity)
        name = f"scanner {device.devnode}"
        label = row["name"] if row is not None else f"{device.model} (not seen by the box yet)"
        if not os.access(device.devnode, os.R_OK | os.W_OK):
            checks.append(
                Check(
                    name, "fail", f"{label}: this user may not open {device.devnode}; check the udev rules and groups"
                )
            )
            continue
        if row is None or row["session_id"] is None:
            kept = (
                0
                if row is None
                else conn.execute(
                    "SELECT count(*) FROM kept_scans WHERE scanner_id = ? AND decision IS NULL", (row["writer_id"],)
                ).fetchone()[0]
            )
            checks.append(
                Check(
                    name,
                    "warn" if kept else "ok",
                    f"{label}: counts for no station; its codes are kept for a supervisor ({kept} waiting)",
                )
            )
            continue
        where = conn.execute(
            "SELECT s.status, u.display_name, r.code FROM sessions s LEFT JOIN users u ON u.user_id = s.verifier_id"
            " LEFT JOIN racks r ON r.rack_id = ? WHERE s.session_id = ?",
            (row["rack_id"], row["session_id"]),
        ).fetchone()
        text = f"{label}: counts for {where['display_name']}'s session" + (
            f", rack {where['code']}" if where["code"] else ""
        )
        if where["status"] != "IN_PROGRESS":
            checks.append(Check(name, "warn", f"{text}, which is {where['status']}: its codes are held"))
        else:
            checks.append(Check(name, "ok", text))
    if not present:
        note = "" if rules.is_file() else f"; before plugging one in: {missing_rules}"
        checks.append(Check("scanners", "ok", f"none plugged in ({len(known)} known to this box){note}"))
    return checks
