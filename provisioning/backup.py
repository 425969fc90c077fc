"""``stockverify backup`` and ``stockverify restore``: the box's data in one archive, and back.

A backup is taken while the box serves. The database is copied with SQLite's online backup API from a
read connection of this process that holds one WAL snapshot for the whole copy: readers never block
the box's writer, so handhelds keep getting their ``ok`` while it runs, and the copy is one committed
state (a copy made step by step without the snapshot would restart each time a batch commits). The
database goes in first, then keys, settings, TLS files and photos: a photo is on disk before the
event that attaches it, so every photo the copied log names is in the archive. ``manifest.json`` is
the archive's last member and the archive is fsynced and renamed into place only after it, so a
backup cut off at any moment leaves a ``.partial`` file (or a tar without its manifest) that restore
refuses.

A restore checks everything before it touches the data dir — every file's size and SHA-256, ``PRAGMA
integrity_check``, every writer's chain, the store — and then swaps files, keeping the old ones aside.
The box's own writer is the one thing a backup cannot be trusted with: the dead box may have
published events after the backup was taken, so reusing its chain would give two different events the
same ``(writer, seq)``. The restored box therefore becomes a new writer unless the caller proves that
the backup holds the old writer's published head (docs/operations.md, "The sequence rule").
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import sqlite3
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

# The folds every event is applied with; importing the box registers them, as it does for serve.
import appliance.box  # noqa: F401
from appliance.counting import authority
from appliance.settings import CONFIG_FILE_NAME, Settings
from appliance.store.db import connect, transaction
from appliance.store.eventlog import EventLog, enroll_writer, new_id, verify_writer_chain
from appliance.store.identity import KEY_FILE, load_or_create_key, public_bytes
from appliance.store.migrations import current_version
from replication.wire.hlc import HybridClock

FORMAT = 1
MANIFEST = "manifest.json"
DB_NAME = "store.db"
PARTIAL = ".partial"
PREFIX = "stockverify-"
SUFFIX = ".tar"
# Pages copied per step of the online backup (4 KiB pages: 4 MiB a step). Between steps the copy lets
# the GIL and the disk go; the snapshot it holds keeps the steps one consistent state.
PAGES_PER_STEP = 1024
CHUNK = 1024 * 1024
# A ``.partial`` this old belongs to no backup still running (a night's backup of a large store takes
# minutes); the next backup clears it away.
STALE_PARTIAL_S = 6 * 3600
# What a data dir holds that a backup carries, besides the database; the rest (the demo's CSV, the
# backups themselves, WAL files) is not the box's state or is made again.
CARRIED = ("keys", "tls", "photos", CONFIG_FILE_NAME, "provisioned.json")

# A backup written flat out starves the box it copies: the kernel flushes the backup's dirty pages in
# bursts, and every commit of the box (an fsync each) waits behind them. Written at a steady pace and
# flushed as it goes, a backup costs the handhelds little; at this pace a 1,000,000-event store (about
# 400 MiB) still backs up within 10 s (docs/performance.md).
PACE_BYTES_PER_S = 96 * 1024**2
FLUSH_EVERY_BYTES = 2 * 1024**2

Progress = Callable[[str], None]


class _Pacer:
    """Keeps the bytes written to one file under a rate, and flushes them every few MiB."""

    def __init__(self, fd: int, rate: float = PACE_BYTES_PER_S) -> None:
        self._fd, self._rate = fd, rate
        self._started, self._done, self._unflushed = time.monotonic(), 0, 0

    def wrote(self, count: int) -> None:
        self._done += count
        self._unflushed += count
        if self._unflushed >= FLUSH_EVERY_BYTES:
            os.fdatasync(self._fd)
            self._unflushed = 0
            ahead = self._done / self._rate - (time.monotonic() - self._started)
            if ahead > 0:
                time.sleep(ahead)


class _PacedFile(io.RawIOBase):
    """The archive file as tarfile writes it, at the pacer's rate."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self._pacer = _Pacer(handle.fileno())

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._handle.tell()

    def write(self, data: Any) -> int:
        written = self._handle.write(data)
        self._pacer.wrote(written)
        return written


def be_gentle() -> None:
    """Run the rest of this process below the box: a backup may take longer, the scans may not."""
    try:
        if os.nice(0) < 10:
            os.nice(10 - os.nice(0))
    except OSError:  # not allowed here; the pacing still holds
        pass


class BackupRefused(Exception):
    """An archive that must not be restored, or a target that must not be overwritten; the message
    says which and why, for the field tech."""


def _quiet(_line: str) -> None:
    pass


def _utc_stamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Hashing(io.RawIOBase):
    """Reads a file for tarfile while hashing it, so each file is read from the card once."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


# -- backing up ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    seconds: float
    manifest: dict[str, Any]
    removed: list[Path] = field(default_factory=list)  # older archives retention let go


def copy_database(source: Path, target: Path, *, method: str = "backup") -> None:
    """A consistent copy of the live database at ``target``, taken beside the running box.

    ``backup``: SQLite's backup API in steps, inside one read transaction (one WAL snapshot).
    ``vacuum``: ``VACUUM INTO``, which rebuilds the file compactly in one statement; slower on a card
    and the CPU, measured in docs/operations.md."""
    target.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout = 10000")
        if method == "vacuum":
            src.execute("VACUUM INTO ?", (str(target),))
        else:
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the snapshot now
            dst = sqlite3.connect(target, isolation_level=None)
            dst.execute("PRAGMA user_version").fetchone()  # the file exists now, to be flushed as it grows
            fd = os.open(target, os.O_RDONLY)
            pacer, page_size, copied = _Pacer(fd), src.execute("PRAGMA page_size").fetchone()[0], 0

            def paced(status: int, remaining: int, total: int) -> None:
                nonlocal copied
                pacer.wrote((total - remaining - copied) * page_size)
                copied = total - remaining

            try:
                src.backup(dst, pages=PAGES_PER_STEP, progress=paced)
                dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
            finally:
                dst.close()
                os.close(fd)
            src.execute("COMMIT")
    finally:
        src.close()
    if method == "vacuum":
        dst = sqlite3.connect(target, isolation_level=None)
        try:
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    with target.open("rb+") as handle:
        os.fsync(handle.fileno())


def describe_database(db: Path) -> dict[str, Any]:
    """What the manifest promises about a database copy: store, node, schema, events, heads."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        node = conn.execute("SELECT node_id, store_id FROM node").fetchone()
        if node is None:
            raise BackupRefused(f"{db} holds no store yet: start the box once before backing it up")
        heads = dict(conn.execute("SELECT writer_id, head_seq FROM writers ORDER BY writer_id"))
        return {
            "store_id": node[1],
            "node_id": node[0],
            "schema_version": current_version(conn),
            "event_count": conn.execute("SELECT count(*) FROM events").fetchone()[0],
            "writer_heads": heads,
        }
    finally:
        conn.close()


def _carried_files(data_dir: Path) -> Iterator[tuple[Path, str]]:
    """(path on disk, name in the archive) of each file a backup carries besides the database."""
    for name in CARRIED:
        top = data_dir / name
        if top.is_file():
            yield top, name
        elif top.is_dir():
            for path in sorted(top.rglob("*")):
                # ``.tmp``: a photo or key still being written, renamed into place when whole.
                if path.is_file() and not path.is_symlink() and path.suffix != ".tmp":
                    yield path, path.relative_to(data_dir).as_posix()


def _add(tar: tarfile.TarFile, name: str, handle: IO[bytes], size: int, mode: int, mtime: float) -> dict[str, Any]:
    info = tarfile.TarInfo("data/" + name)
    info.size, info.mode, info.mtime = size, mode, int(mtime)
    reader = _Hashing(handle)
    tar.addfile(info, reader)
    if reader.size != size:
        raise OSError(f"{name} changed size while it was copied ({size} then {reader.size} bytes)")
    return {"path": name, "size": size, "sha256": reader.digest.hexdigest()}


def backup(
    settings: Settings,
    dest_dir: Path | None = None,
    *,
    method: str = "backup",
    keep: int | None = None,
    progress: Progress = _quiet,
) -> BackupResult:
    """Write ``stockverify-<store_id>-<UTC time>.tar`` into ``dest_dir`` (default: the ``backup_dir``
    setting) while the box serves, then keep only the newest ``keep`` (``backup_keep``) there."""
    started = time.monotonic()
    data_dir = settings.data_dir
    if not settings.db_path.is_file():
        raise BackupRefused(f"{settings.db_path} does not exist: nothing to back up")
    dest_dir = dest_dir or settings.backups_dir
    dest_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    store_id = _store_of(settings.db_path)
    final = dest_dir / f"{PREFIX}{store_id}-{_utc_stamp(now)}{SUFFIX}"
    partial = final.with_name(final.name + PARTIAL)
    db_copy = final.with_name(final.name + ".db" + PARTIAL)
    files: list[dict[str, Any]] = []
    try:
        with partial.open("wb") as raw:
            with tarfile.open(fileobj=_PacedFile(raw), mode="w", format=tarfile.PAX_FORMAT) as tar:
                progress(f"copying the database ({settings.db_path.stat().st_size / 1024**2:.1f} MiB)")
                copy_database(settings.db_path, db_copy, method=method)
                facts = describe_database(db_copy)
                with db_copy.open("rb") as handle:
                    files.append(_add(tar, DB_NAME, handle, db_copy.stat().st_size, 0o600, now))
                db_copy.unlink()
                carried = list(_carried_files(data_dir))
                progress(f"adding {len(carried)} files: keys, settings, tls, photos")
                for path, name in carried:
                    try:
                        handle = path.open("rb")
                    except FileNotFoundError:  # a photo let go of since it was listed
                        continue
                    with handle:
                        stat = os.fstat(handle.fileno())
                        files.append(_add(tar, name, handle, stat.st_size, stat.st_mode & 0o777, stat.st_mtime))
                manifest = {
                    "format": FORMAT,
                    **facts,
                    "created_at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
                    "host": socket.gethostname(),
                    "method": method,
                    "files": files,
                }
                body = json.dumps(manifest, indent=2, sort_keys=True).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mode, info.mtime = len(body), 0o600, int(now)
                tar.addfile(info, io.BytesIO(body))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, final)
        _fsync_dir(dest_dir)
    except BaseException:
        partial.unlink(missing_ok=True)
        db_copy.unlink(missing_ok=True)
        raise
    progress(f"wrote {final.name}")
    removed = prune(dest_dir, store_id, settings.backup_keep if keep is None else keep)
    return BackupResult(final, final.stat().st_size, time.monotonic() - started, manifest, removed)


def _store_of(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT store_id FROM node").fetchone()
    except sqlite3.Error:
        row = None
    finally:
        conn.close()
    if row is None:
        raise BackupRefused(f"{db} holds no store yet: start the box once before backing it up")
    return str(row[0])


def archives(folder: Path, store_id: str | None = None) -> list[Path]:
    """Complete archives in ``folder``, newest first (by the UTC time in their names)."""
    if not folder.is_dir():
        return []
    pattern = f"{PREFIX}{store_id}-*{SUFFIX}" if store_id else f"{PREFIX}*{SUFFIX}"
    return sorted(folder.glob(pattern), key=lambda p: (p.name[-len("YYYYmmddTHHMMSSZ.tar") :], p.name), reverse=True)


def prune(folder: Path, store_id: str, keep: int) -> list[Path]:
    """Keep the newest ``keep`` archives of the store; clear partial files no backup is still writing."""
    removed = archives(folder, store_id)[keep:]
    for path in removed:
        path.unlink(missing_ok=True)
    for path in folder.glob(f"{PREFIX}*{PARTIAL}"):
        with contextlib.suppress(FileNotFoundError):
            if time.time() - path.stat().st_mtime > STALE_PARTIAL_S:
                path.unlink()
                removed.append(path)
    return removed


# -- restoring -------------------------------------------------------------------------------------
@dataclass
class RestoreReport:
    archive: Path
    data_dir: Path
    store_id: str
    created_at: str
    files: int
    bytes: int
    events: int
    writers: int
    checks: list[str]
    writer_id: str  # the box's own writer from now on
    old_writer_id: str
    new_writer: bool
    aside: Path | None  # where the data dir's previous files were moved
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.__dict__.items() if not isinstance(v, Path)},
            "archive": str(self.archive),
            "data_dir": str(self.data_dir),
            "aside": str(self.aside) if self.aside else None,
        }


def read_manifest(tar: tarfile.TarFile, archive: Path) -> dict[str, Any]:
    """The manifest, which must be the archive's last member: only a backup that ran to its end wrote it."""
    try:
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BackupRefused(
            f"{archive} is not a whole backup archive ({exc}): the backup that wrote it did not finish, or the"
            " file is damaged; use another archive"
        ) from None
    if not members or members[-1].name != MANIFEST:
        raise BackupRefused(
            f"{archive} has no manifest at its end: the backup that wrote it did not finish; use another archive"
        )
    handle = tar.extractfile(members[-1])
    try:
        manifest: dict[str, Any] = json.loads(handle.read() if handle else b"")
    except ValueError as exc:
        raise BackupRefused(f"{archive}: the manifest is not readable JSON ({exc})") from None
    needed = ("format", "store_id", "node_id", "created_at", "event_count", "writer_heads", "files")
    missing = [key for key in needed if key not in manifest]
    if missing:
        raise BackupRefused(f"{archive}: the manifest lacks {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise BackupRefused(f"{archive}: backup format {manifest['format']} is not one this program reads ({FORMAT})")
    return manifest


def _safe_name(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BackupRefused(f"the archive names a file outside the data dir: {name!r}")
    return path.as_posix()


def _extract(tar: tarfile.TarFile, manifest: dict[str, Any], staging: Path, progress: Progress) -> int:
    """Every listed file into ``staging``, each checked against its size and SHA-256; returns bytes."""
    listed = {_safe_name(str(entry["path"])): entry for entry in manifest["files"]}
    if DB_NAME not in listed:
        raise BackupRefused("the archive's manifest lists no database")
    seen: set[str] = set()
    total = 0
    for member in tar.getmembers():
        if member.name == MANIFEST:
            continue
        if not member.name.startswith("data/") or not member.isfile():
            raise BackupRefused(f"the archive holds {member.name!r}, which no backup writes")
        name = _safe_name(member.name[len("data/") :])
        entry = listed.get(name)
        if entry is None or name in seen:
            raise BackupRefused(f"the archive holds {name}, which its manifest does not list (once)")
        seen.add(name)
        source = tar.extractfile(member)
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        assert source is not None
        with target.open("wb") as out:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(target, member.mode & 0o777 or 0o600)
        if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
            raise BackupRefused(
                f"{name} does not match the manifest ({size} bytes, sha256 {digest.hexdigest()[:16]}…; "
                f"the manifest says {entry['size']} bytes, {str(entry['sha256'])[:16]}…): the archive is damaged"
                " or was altered"
            )
        total += size
    missing = sorted(set(listed) - seen)
    if missing:
        raise BackupRefused(f"the manifest lists files the archive lacks: {', '.join(missing[:5])}")
    progress(f"{len(seen)} files match their sizes and SHA-256 ({total / 1024**2:.1f} MiB)")
    return total


def _check_database(db: Path, manifest: dict[str, Any], progress: Progress) -> tuple[list[str], int]:
    """integrity_check, the manifest's facts and every writer's chain, on the extracted copy."""
    checks: list[str] = []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            raise BackupRefused(f"the archive's database fails PRAGMA integrity_check: {'; '.join(result[:5])}")
        checks.append("PRAGMA integrity_check: ok")
        progress(checks[-1])
        facts = describe_database(db)
        for key in ("store_id", "node_id", "event_count", "writer_heads"):
            if facts[key] != manifest[key]:
                raise BackupRefused(f"the database's {key} is not what the manifest says it is")
        checks.append(f"{facts['event_count']} events and {len(facts['writer_heads'])} writers' heads as the manifest")
        progress(checks[-1])
        bad: list[str] = []
        for writer_id in facts["writer_heads"]:
            report = verify_writer_chain(conn, writer_id)
            if not report.ok:
                bad.append(f"{writer_id}: {'; '.join(report.problems[:3])}")
        if bad:
            raise BackupRefused("writers' chains do not verify: " + " | ".join(bad[:5]))
        checks.append(f"every writer's chain ({len(facts['writer_heads'])}) gap-free, linked and its signed head valid")
        progress(checks[-1])
        return checks, len(facts["writer_heads"])
    finally:
        conn.close()


def _target_store(data_dir: Path) -> str | None:
    db = data_dir / DB_NAME
    if not db.exists():
        return None
    try:
        return _store_of(db)
    except (BackupRefused, sqlite3.Error):
        return "(unreadable)"


def become_new_writer(staging: Path, manifest: dict[str, Any]) -> str:
    """Make the restored box a new writer: a new node id and key, enrolled by a ``writer.enrolled``
    event at the start of its own chain, exactly as a box's first start does. The old writer stays
    enrolled with its chain untouched, as history; the old key is not installed (it remains in the
    archive), so nothing on this box can extend that chain again. If the old box granted the store's
    locks, the new one takes over at the next epoch, or claims would go to a box that is gone."""
    old = str(manifest["node_id"])
    node_id = new_id()
    store_id = str(manifest["store_id"])
    (staging / "keys" / KEY_FILE).unlink(missing_ok=True)
    key, _ = load_or_create_key(staging / "keys")  # a new one, made as a box's first start makes it
    conn = connect(staging / DB_NAME)
    try:
        last_hlc = int(conn.execute("SELECT max(hlc) FROM events").fetchone()[0] or 0)
        event_log = EventLog(node_id, key, HybridClock(last_hlc))
        with transaction(conn):
            role = conn.execute("SELECT role FROM node").fetchone()[0]
            conn.execute("UPDATE node SET node_id = ?", (node_id,))
            enroll_writer(conn, node_id, "box", store_id, f"box {node_id}", public_bytes(key))
            event_log.record(
                conn,
                "writer.enrolled",
                {
                    "writer_id": node_id,
                    "kind": "box",
                    "store_id": store_id,
                    "name": f"box {node_id}",
                    "public_key": public_bytes(key),
                },
            )
            # A store from before lock authorities (an old schema, restored as it was) has none to move.
            has_authority = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'lock_designations'").fetchone()
            if role == "box" and has_authority and authority.designations(conn).nodes == (old,):
                authority.move(conn, event_log, f"restore of {old}", node_id)
            event_log.sign_head(conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return node_id


def check_same_writer_proof(proof: Path, manifest: dict[str, Any], db: Path) -> str:
    """Proof that the backup holds the old writer's published head: a peer's or HQ's copy of the store
    (its ``store.db``, or a ``stockverify backup`` archive of it), taken after the old box stopped. Its
    head for the box's writer, and the signature on it, must be at or below the backup's head and on
    the same chain; a head above it means the box published after this backup, and reusing the writer
    would fork its chain."""
    writer = str(manifest["node_id"])
    with contextlib.ExitStack() as stack:
        source = proof
        if tarfile.is_tarfile(proof):
            tar = stack.enter_context(tarfile.open(proof))
            peer_manifest = read_manifest(tar, proof)
            member = tar.extractfile("data/" + DB_NAME)
            if member is None:
                raise BackupRefused(f"{proof} holds no database")
            temp = db.with_name("proof.db")
            with temp.open("wb") as out:
                shutil.copyfileobj(member, out)
            stack.callback(temp.unlink, missing_ok=True)
            source = temp
            if peer_manifest["store_id"] != manifest["store_id"]:
                raise BackupRefused(f"{proof} is a copy of store {peer_manifest['store_id']}, not of this store")
        peer = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        stack.callback(peer.close)
        mine = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        stack.callback(mine.close)
        try:
            store = peer.execute("SELECT store_id FROM node").fetchone()
            row = peer.execute("SELECT head_seq, head_hash FROM writers WHERE writer_id = ?", (writer,)).fetchone()
            signed = peer.execute("SELECT max(seq) FROM chain_heads WHERE writer_id = ?", (writer,)).fetchone()
        except sqlite3.Error as exc:
            raise BackupRefused(f"{proof} is not a store's database ({exc})") from None
        if store is None or store[0] != manifest["store_id"]:
            raise BackupRefused(f"{proof} is not a copy of store {manifest['store_id']}")
        own_head = int(manifest["writer_heads"].get(writer, 0))
        peer_head = int(row[0]) if row else 0
        peer_signed = int(signed[0] or 0) if signed else 0
        if max(peer_head, peer_signed) > own_head:
            raise BackupRefused(
                f"the store's other copy holds box writer {writer} up to seq {max(peer_head, peer_signed)}, but this"
                f" backup only up to {own_head}: the box published after the backup. Restore without"
                " --same-writer (the box becomes a new writer), or with a newer backup"
            )
        if peer_head:
            stored = mine.execute(
                "SELECT hash FROM events WHERE writer_id = ? AND seq = ?", (writer, peer_head)
            ).fetchone()
            if stored is None or bytes(stored[0]) != bytes(row[1]):
                raise BackupRefused(f"the store's other copy holds a different chain for box writer {writer}")
        return f"the other copy holds box writer {writer} up to seq {peer_head}, the backup up to {own_head}"


_MOVED = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", *CARRIED)


def restore(
    archive: Path,
    data_dir: Path,
    *,
    expect_store_id: str | None = None,
    force: bool = False,
    same_writer_proof: Path | None = None,
    progress: Progress = _quiet,
) -> RestoreReport:
    """Check ``archive`` whole, then make ``data_dir`` hold it; the box must not be serving from it.

    Nothing in ``data_dir`` changes until every check has passed; its previous files are then moved to
    ``<data_dir>/before-restore-<time>`` (all of them back again if the swap fails), never deleted."""
    started = time.monotonic()
    archive = Path(archive)
    if archive.name.endswith(PARTIAL):
        raise BackupRefused(
            f"{archive} is a partial backup (its name ends in {PARTIAL}): the backup writing it was stopped"
            " before it finished. Use a complete archive (stockverify-<store>-<time>.tar)"
        )
    if not archive.is_file():
        raise BackupRefused(f"{archive} does not exist")
    data_dir = Path(data_dir)
    stamp = _utc_stamp(time.time())
    # Staged and set aside inside the data dir: the same filesystem however the card or disk is
    # mounted (so every move is a rename), and writable by the user the box runs as.
    staging = data_dir / f".restoring-{stamp}"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        try:
            tar = tarfile.open(archive, mode="r:*")  # noqa: SIM115 - entered just below, once opening is known to work
        except (tarfile.TarError, OSError) as exc:
            raise BackupRefused(f"{archive} is not a backup archive ({exc})") from None
        with tar:
            manifest = read_manifest(tar, archive)
            progress(
                f"archive of store {manifest['store_id']} from {manifest['created_at']}:"
                f" {len(manifest['files'])} files, {manifest['event_count']} events"
            )
            store_id = str(manifest["store_id"])
            here = _target_store(data_dir)
            if expect_store_id is not None and store_id != expect_store_id:
                raise BackupRefused(f"{archive} is a backup of store {store_id}, not of store {expect_store_id}")
            if here is not None and here != store_id:
                raise BackupRefused(
                    f"{data_dir} holds store {here}; {archive} is a backup of store {store_id}. Another store's"
                    " backup goes only into an empty data dir"
                )
            if here is not None and not force:
                raise BackupRefused(
                    f"{data_dir} already holds store {here}: stop the box and restore with --force to replace it"
                    " (its files are moved aside, not deleted)"
                )
            staging.mkdir()
            total = _extract(tar, manifest, staging, progress)
        checks = [f"{len(manifest['files'])} files match their sizes and SHA-256"]
        try:
            db_checks, writers = _check_database(staging / DB_NAME, manifest, progress)
        except sqlite3.DatabaseError as exc:
            raise BackupRefused(f"the archive's database cannot be read: {exc}") from None
        checks += db_checks
        checks.append("store " + store_id + (" (into an empty data dir)" if here is None else " (the same store)"))
        old_writer = str(manifest["node_id"])
        if same_writer_proof is not None:
            checks.append(check_same_writer_proof(same_writer_proof, manifest, staging / DB_NAME))
            progress(checks[-1])
            writer_id, new_writer = old_writer, False
        else:
            writer_id, new_writer = become_new_writer(staging, manifest), True
            progress(f"the box is now writer {writer_id}; {old_writer}'s chain is kept as history")
            conn = sqlite3.connect(f"file:{staging / DB_NAME}?mode=ro", uri=True)
            conn.row_factory = sqlite3.Row
            try:
                for writer in (old_writer, writer_id):
                    report = verify_writer_chain(conn, writer)
                    if not report.ok:
                        raise BackupRefused(f"writer {writer} after the change: {'; '.join(report.problems[:3])}")
            finally:
                conn.close()
            checks.append(f"new box writer {writer_id} enrolled; the old writer {old_writer}'s chain verifies")
        aside = _swap(staging, data_dir, stamp)
        progress(f"restored into {data_dir}" + (f"; the previous files are in {aside}" if aside else ""))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RestoreReport(
        archive=archive,
        data_dir=data_dir,
        store_id=store_id,
        created_at=str(manifest["created_at"]),
        files=len(manifest["files"]),
        bytes=total,
        events=int(manifest["event_count"]) + (0 if not new_writer else _added_events(data_dir, manifest)),
        writers=writers + (1 if new_writer else 0),
        checks=checks,
        writer_id=writer_id,
        old_writer_id=old_writer,
        new_writer=new_writer,
        aside=aside,
        seconds=time.monotonic() - started,
    )


def _added_events(data_dir: Path, manifest: dict[str, Any]) -> int:
    conn = sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0]) - int(manifest["event_count"])
    finally:
        conn.close()


def _swap(staging: Path, data_dir: Path, stamp: str) -> Path | None:
    """Move the data dir's files aside and the staged ones in; on any failure, put everything back."""
    aside = data_dir / f"before-restore-{stamp}"
    moved: list[str] = []
    placed: list[str] = []
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        for name in _MOVED:
            if (data_dir / name).exists():
                aside.mkdir(exist_ok=True)
                os.replace(data_dir / name, aside / name)
                moved.append(name)
        for name in _MOVED:
            if (staging / name).exists():
                os.replace(staging / name, data_dir / name)
                placed.append(name)
        _fsync_dir(data_dir)
    except BaseException:
        for name in placed:
            with contextlib.suppress(OSError):
                os.replace(data_dir / name, staging / name)
        for name in moved:
            with contextlib.suppress(OSError):
                os.replace(aside / name, data_dir / name)
        raise
    return aside if moved else None


# -- how old is the newest ------------------------------------------------------------------------
def newest_archive(settings: Settings) -> tuple[Path, float] | None:
    """The newest complete archive in ``backup_dir`` and its age in seconds, for ``doctor``."""
    found = archives(settings.backups_dir)
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime)
    return newest, max(time.time() - newest.stat().st_mtime, 0.0)
