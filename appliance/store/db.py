"""SQLite access: one writer thread with group commit, and a reader connection per thread.

SQLite allows one writer at a time. Rather than let request threads fight over the write lock, every
write is a *job* (a function of a connection) handed to a single writer thread. The thread takes every
job that is waiting, runs each inside its own SAVEPOINT of one ``BEGIN IMMEDIATE`` transaction (a
lone job needs none) and commits once: many devices' batches share one fsync, which is what keeps a
slow SD card from capping throughput. A job's caller is answered only after that COMMIT returned, so
an acknowledgement always means "on disk" (WAL with ``synchronous=FULL``). A job that raises is rolled
back alone; the others in the group still commit.

Reads go through per-thread connections that never write (``query_only``); in WAL mode they read the
last committed state without blocking the writer.

A full or read-only disk is not the box's fault nor the caller's: a group that the disk refuses is
rolled back like any other failure, but its callers get ``InsufficientStorage`` (507, ``DISK_FULL`` or
``DISK_READ_ONLY``) rather than a bare sqlite3 error, and ``Database.storage_problem`` says so to
``/api/health`` until a COMMIT passes again. Nothing is retried here: SQLite keeps no half-written
transaction, so the device's own retry of the same batch is all recovery takes.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from appliance.errors import InsufficientStorage

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]
JobHook = Callable[[sqlite3.Connection], None]

BUSY_TIMEOUT_MS = 10_000
MAX_GROUP = 256  # jobs folded into one commit at most
ROWS_PER_STATEMENT = 500
WRITER_CACHE_KIB = 32 * 1024
STORAGE_RETRY_AFTER_S = 5  # what a refused caller is told to wait; space rarely returns sooner
# Below this much free space the box says it is degraded (``/api/health``) and ``stockverify doctor``
# fails: a count's scans fill megabytes an hour, so this is minutes to an hour from refused writes.
DISK_LOW_BYTES = 50 * 1024**2
PROBE_BYTES = 64 * 1024  # below this much free space an I/O error is taken for a full disk

DISK_FULL = "DISK_FULL"
DISK_READ_ONLY = "DISK_READ_ONLY"
_WARNINGS = {  # one line in journalctl when the disk first refuses, for the field tech
    DISK_FULL: "disk full: scans, batches and heartbeats are refused (507 DISK_FULL) until space is freed "
    "in the data dir; nothing acknowledged is lost, writes resume by themselves",
    DISK_READ_ONLY: "disk read-only: scans, batches and heartbeats are refused (507 DISK_READ_ONLY); restart "
    "the box, and replace its card if it stays read-only; nothing acknowledged is lost",
}
_MESSAGES = {
    DISK_FULL: "the box's disk is full: nothing of this request was stored. Free space on the box; "
    "writes resume by themselves",
    DISK_READ_ONLY: "the box's disk is read-only (a filesystem error or a failing card): nothing of this "
    "request was stored. Restart the box; if it stays read-only, its card needs replacing",
}


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open a connection with the pragmas every connection of the box needs."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    else:
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: the WAL is fsynced at every commit, so a committed scan survives power loss.
        conn.execute("PRAGMA synchronous = FULL")
        # The writer's page cache: 32 MB rather than 2. Folds touch counter rows and indexes all over
        # their B-trees; at HQ a million-event replica applied 7 % faster with it (36.0 µs an event
        # against 38.6), and a Pi has the memory.
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
    return conn


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]], tail: str = "") -> None:
    """``head VALUES (…), (…), … tail`` for up to ROWS_PER_STATEMENT rows per statement.

    ``executemany`` steps the statement once per row, and Python's sqlite3 gives up and retakes the
    GIL around every step; with the event loop (or a thread decoding the next page) busy, each retake
    waits up to the switch interval. One statement per 500 rows (5,500 parameters for an event, far
    under SQLite's limit) runs the inserts in one stretch without the GIL, beside the other threads.
    Statements of each length are prepared once and kept in the connection's statement cache.
    """
    if rows:
        insert_values(conn, head, len(rows[0]), [value for row in rows for value in row], tail)


def insert_values(conn: sqlite3.Connection, head: str, width: int, values: list[Any], tail: str = "") -> None:
    """``insert_rows`` for rows given as one flat list of ``width`` values each, for a caller that
    builds them by the thousand (the event log), so no tuple is made per row only to be unpacked."""
    marks = "(" + ", ".join("?" * width) + ")"
    step = ROWS_PER_STATEMENT * width
    for at in range(0, len(values), step):
        part = values[at : at + step]
        conn.execute(f"{head} VALUES {', '.join([marks] * (len(part) // width))}{tail}", part)


# ``blob(value)``: bytes as a parameter for a statement that binds thousands of them. Python's sqlite3
# binds ``bytes`` (and ``None``) only after looking for an adapter for it, about half a microsecond a
# parameter with the GIL held; ``bytearray`` it binds at once. The stored BLOB is the same and reads
# back as ``bytes``. An event's three blobs cost 1.3 to 2.4 µs of its apply this way (measured on
# pages of 5,000 at HQ). The type itself rather than a function around it: no frame per value.
blob = bytearray


class _CollectorPause:
    """Hold Python's cycle collector back while jobs build and drop thousands of objects.

    Applying a replicated page makes some 15,000 tracked objects (rows, events, parameter tuples) that
    live exactly as long as the job and are freed by reference counting; the collector would walk them
    several times over meanwhile. Paused around each page, three converging boxes used 7 % less CPU
    (eight paired runs) and HQ 14 % less (five). HQ decodes one page in a worker thread while its
    writer applies another, so the pause is counted: the collector resumes when the last holder is
    done. Cycles other threads make meanwhile wait for its next pass.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._resume = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0 and self._resume:
                    gc.enable()


collector_paused = _CollectorPause()


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` on a connection the caller owns (migrations, CLI tools)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def storage_refusal(exc: BaseException, folder: Path) -> str | None:
    """``DISK_FULL`` or ``DISK_READ_ONLY`` when the disk under ``folder`` refused ``exc``'s write, else None.

    SQLite names a full disk (SQLITE_FULL) and a database it cannot write (SQLITE_READONLY), but a
    write that fails with EROFS after the kernel remounted a failing card read-only, or an fsync or
    truncate that hits ENOSPC, comes back as a plain SQLITE_IOERR with the errno out of Python's reach;
    for those the disk itself is asked. Called only when a write has already failed.
    """
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return None
        primary = code & 0xFF  # the extended codes keep the primary one in their low byte
        if primary == sqlite3.SQLITE_FULL:
            return DISK_FULL
        if primary == sqlite3.SQLITE_READONLY:
            return DISK_READ_ONLY
        if primary == sqlite3.SQLITE_IOERR:
            return probe_disk(folder)
        return None
    if isinstance(exc, OSError):
        return _errno_refusal(exc.errno)
    return None


def _errno_refusal(number: int | None) -> str | None:
    if number in (errno.ENOSPC, errno.EDQUOT):
        return DISK_FULL
    if number == errno.EROFS:
        return DISK_READ_ONLY
    return None


def probe_disk(folder: Path) -> str | None:
    """Whether the disk under ``folder`` takes a small write now: None if it does, else why not.

    ext4 marks a filesystem it stopped writing after an error "emergency read-only" without setting
    the read-only flag ``statvfs`` reports, so only a real write tells."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    if stat.f_flag & os.ST_RDONLY:
        return DISK_READ_ONLY
    if stat.f_bavail * stat.f_frsize < PROBE_BYTES:
        return DISK_FULL
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, bytes(PROBE_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        return _errno_refusal(exc.errno)
    return None


class _StorageProblem:
    """What the disk refused, since when, and how many requests it cost."""

    __slots__ = ("code", "refused", "since_ms", "started")

    def __init__(self, code: str) -> None:
        self.code = code
        self.since_ms = int(time.time() * 1000)
        self.started = time.monotonic()
        self.refused = 0


class _Stop:
    pass


class Database:
    """The box's database file: ``write`` for changes (through the writer thread), ``read`` for queries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Job, Future[Any], bool] | _Stop] = queue.SimpleQueue()
        self._job_hooks: list[JobHook] = []
        self._job_failed_hooks: list[Callable[[], None]] = []
        self._commit_hooks: list[Callable[[], None]] = []
        self._rollback_hooks: list[Callable[[], None]] = []
        self._writer_conn = connect(path)
        self._thread = threading.Thread(target=self._run_writer, name="sqlite-writer", daemon=True)
        self._closed = False
        self.commits = 0  # how many COMMITs the writer made; lets tests and benches see group commit
        self._storage: _StorageProblem | None = None  # set and cleared by the writer thread only
        self._thread.start()

    # -- configuration -------------------------------------------------------------------------
    def add_job_hook(self, hook: JobHook) -> None:
        """Run ``hook`` inside every job's savepoint after the job succeeded (e.g. sign a chain head)."""
        self._job_hooks.append(hook)

    def add_commit_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` on the writer thread after every successful COMMIT (e.g. wake live listeners)."""
        self._commit_hooks.append(hook)

    def add_failure_hooks(self, job_failed: Callable[[], None], rolled_back: Callable[[], None]) -> None:
        """Run ``job_failed`` when a job is rolled back to its savepoint, ``rolled_back`` when a whole
        group is, so that whatever a hook collected for those jobs is forgotten."""
        self._job_failed_hooks.append(job_failed)
        self._rollback_hooks.append(rolled_back)

    @property
    def storage_problem(self) -> dict[str, Any] | None:
        """None while the disk takes writes; else ``{code, since_ms, refused}`` for health, from the first
        refused write until the next COMMIT that passes."""
        problem = self._storage
        if problem is None:
            return None
        return {
            "code": problem.code,
            "since_ms": problem.since_ms,
            "refused": problem.refused,
        }

    # -- reading -------------------------------------------------------------------------------
    def read(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # -- writing -------------------------------------------------------------------------------
    def submit(self, job: Callable[[sqlite3.Connection], T], *, bulk: bool = False) -> Future[T]:
        """Queue ``job`` for the writer. A ``bulk`` job (a replicated page: thousands of events) gets a
        transaction of its own, and the other jobs queued meanwhile are written before it."""
        if self._closed:
            raise RuntimeError("database is closed")
        future: Future[T] = Future()
        self._jobs.put((job, future, bulk))
        return future

    def write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` in the writer's transaction; return once its COMMIT is on disk."""
        return self.submit(job).result()

    async def awrite(self, job: Callable[[sqlite3.Connection], T], *, bulk: bool = False) -> T:
        return await asyncio.wrap_future(self.submit(job, bulk=bulk))

    def _run_writer(self) -> None:
        """Group commit, with bulk jobs one at a time between the groups.

        Every job queued is folded into one transaction, except bulk jobs: those wait, in the order
        they came, and each is written alone after the group of whatever else was queued. So a claim
        or a handheld's batch that arrives while a box catches up waits for the one page being
        written, not for every page queued (with two peers' pages queued it had waited for both, and
        shared their commit); and pages still get every other turn however busy the handhelds are.
        """
        conn = self._writer_conn
        held: deque[tuple[Job, Future[Any]]] = deque()  # bulk jobs, oldest first
        stopping = False
        while not stopping or held:
            group: list[tuple[Job, Future[Any]]] = []
            block = not held  # wait for work only when none is held back
            while not stopping and len(group) < MAX_GROUP:
                try:
                    item = self._jobs.get(block=block)
                except queue.Empty:
                    break
                block = False
                if isinstance(item, _Stop):
                    stopping = True
                elif item[2]:
                    held.append((item[0], item[1]))
                else:
                    group.append((item[0], item[1]))
            if group:
                self._run_group(conn, group)
            if held:
                self._run_group(conn, [held.popleft()])

    def _run_group(self, conn: sqlite3.Connection, group: list[tuple[Job, Future[Any]]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        # A lone job needs no savepoint: if it fails, the whole transaction is rolled back. At a
        # store's pace writes mostly come one at a time, and that is two statements (two waits for
        # the GIL) fewer for each.
        savepoints = len(group) > 1
        disk_refused = False  # a job of this group failed for want of disk: its COMMIT proves nothing
        committed = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job, _future in group:
                if savepoints:
                    conn.execute("SAVEPOINT job")
                try:
                    result = job(conn)
                    for hook in self._job_hooks:
                        hook(conn)
                except BaseException as exc:
                    if savepoints:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    elif conn.in_transaction:
                        conn.execute("ROLLBACK")
                    for forget in self._job_failed_hooks:
                        forget()
                    refusal = self._disk_refused(exc)
                    disk_refused = disk_refused or refusal is not exc
                    outcomes.append((False, refusal))
                else:
                    if savepoints:
                        conn.execute("RELEASE job")
                    outcomes.append((True, result))
            if conn.in_transaction:
                conn.execute("COMMIT")
                self.commits += 1
                committed = True
        except BaseException as exc:  # the commit itself failed: nothing of the group is on disk
            code = storage_refusal(exc, self.path.parent)
            if code is None:
                log.exception("write transaction failed; %d jobs rolled back", len(group))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for forget in self._rollback_hooks:
                forget()
            for _job, future in group:
                future.set_exception(exc if code is None else self._disk_refused(exc, code))
            return
        if self._storage is not None and committed and not disk_refused:
            self._disk_recovered()
        for notify in self._commit_hooks:
            try:
                notify()
            except Exception:
                log.exception("commit hook failed")
        for (_job, future), (ok, value) in zip(group, outcomes, strict=True):
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _disk_refused(self, exc: BaseException, code: str | None = None) -> BaseException:
        """``exc`` as the caller should see it: an ``InsufficientStorage`` when the disk refused it
        (noted for health, and logged once when the disk first refuses), else ``exc`` itself."""
        code = code or storage_refusal(exc, self.path.parent)
        if code is None:
            return exc
        problem = self._storage
        if problem is None or problem.code != code:
            problem = self._storage = _StorageProblem(code)
            log.warning(
                _WARNINGS[code],
                extra={"code": code, "data_dir": str(self.path.parent), "error": str(exc)},
            )
        problem.refused += 1
        refusal = InsufficientStorage(_MESSAGES[code], code=code, details={"retry_after_s": STORAGE_RETRY_AFTER_S})
        refusal.__cause__ = exc
        return refusal

    def _disk_recovered(self) -> None:
        problem = self._storage
        self._storage = None
        if problem is not None:
            log.info(
                "disk writable again: writes resumed",
                extra={
                    "code": problem.code,
                    "seconds": round(time.monotonic() - problem.started, 1),
                    "refused": problem.refused,
                },
            )

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._jobs.put(_Stop())
        self._thread.join()
        self._writer_conn.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
