"""``stockverify doctor``: what a field tech runs first when a box misbehaves.

It only reads: it never migrates, creates or repairs, so it is safe on a box that is in trouble.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.settings import Settings
from appliance.store.eventlog import verify_writer_chain
from appliance.store.identity import KEY_FILE, load_or_create_key, public_bytes
from appliance.store.migrations import LATEST, current_version

DISK_WARN_BYTES = 1024**3
DISK_FAIL_BYTES = 200 * 1024**2


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn or fail
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _disk(path: Path) -> Check:
    free = shutil.disk_usage(path).free
    text = f"{free / 1024**3:.1f} GiB free at {path}"
    if free < DISK_FAIL_BYTES:
        return Check("disk", "fail", text + "; scans cannot be stored safely, free space now")
    if free < DISK_WARN_BYTES:
        return Check("disk", "warn", text + "; plan to free space before the next count")
    return Check("disk", "ok", text)


def run_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    data_dir = settings.data_dir
    if not data_dir.is_dir():
        return [Check("data_dir", "fail", f"{data_dir} does not exist; start the box or provision it first")]
    checks.append(_disk(data_dir))
    if not settings.db_path.exists():
        checks.append(Check("database", "fail", f"{settings.db_path} does not exist"))
        return checks

    conn = sqlite3.connect(f"file:{settings.db_path}?mode=ro", uri=True)
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
    finally:
        conn.close()
    return checks
