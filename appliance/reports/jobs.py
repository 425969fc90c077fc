"""Exports as background jobs: queued, written one at a time by a worker thread, downloaded when done.

A large export takes seconds to minutes (100,000 rows of XLSX), longer than a request should wait, so a
route submits a job and answers at once; the person watches ``rows_done`` go up and downloads the file
when the job is ``done``. One worker thread writes one file at a time: an export is CPU work that would
compete with the scan path if several ran at once, and the jobs behind it wait in order.

The worker reads through its own read-only connection, inside one read transaction per job, so a
report's count and its rows come from the same moment even while scans are written. The job's row in
``export_jobs`` (status queued → running → done | failed, ``rows_done``, ``rows_total``, ``bytes``,
``error``) is kept through the box's one writer, progress at most every ``PROGRESS_EVERY_S``. The file
is written under a temporary name and renamed when whole, so a file under its real name is always
complete. ``export_jobs.file`` holds the name a download is saved as; on disk it is
``<data_dir>/exports/<job_id>.<ext>``.

A job's ``make_table`` lives only in memory: jobs a stopped box left queued or running cannot resume,
and are marked failed at the next start, with a message that says to export again.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from appliance.errors import Conflict, NotFound, StockVerifyError, ValidationFailed
from appliance.reports.exports import write_csv, write_xlsx
from appliance.reports.pdf import write_pdf
from appliance.reports.table import Table
from appliance.store.db import Database, connect
from appliance.store.eventlog import new_id

log = logging.getLogger(__name__)

Format = Literal["csv", "xlsx", "pdf"]
MakeTable = Callable[[sqlite3.Connection], Table]

WRITERS: dict[str, Callable[[Table, Path, Callable[[int], None]], None]] = {
    "csv": write_csv,
    "xlsx": write_xlsx,
    "pdf": write_pdf,
}
MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
}
PROGRESS_EVERY_S = 0.5  # a progress write at most this often: each is a commit (an fsync) on the writer
KEEP_DAYS = 7  # finished jobs and their files are removed after this long…
KEEP_JOBS = 50  # …or once this many newer jobs exist, so exports cannot fill the box's card
STOP_WAIT_S = 10.0
STOPPED = "the box stopped while it ran: export again"
_DAY_MS = 86_400_000
_COLUMNS = "job_id, what, format, status, rows_done, rows_total, file, bytes, error, by_user, created_at, finished_at"


class _Stopped(Exception):
    """Raised from a job's progress when the box stops: the job ends at once and its file is dropped."""


@dataclass(frozen=True)
class _Job:
    job_id: str
    make_table: MakeTable
    fmt: str


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def download_name(title: str, fmt: str, created_ms: int) -> str:
    """``damage-by-category-2026-12-07-0843.xlsx``: ASCII, so every browser saves it under that name."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ascii_title).strip("-").lower()[:60].strip("-") or "export"
    stamp = time.strftime("%Y-%m-%d-%H%M", time.localtime(created_ms / 1000))
    return f"{slug}-{stamp}.{fmt}"


def _job_dict(row: sqlite3.Row) -> dict[str, Any]:
    job = dict(row)
    job["what"] = json.loads(job["what"])
    return job


def _reason(exc: BaseException) -> str:
    """What a person reads when a job failed: our errors' own message, the disk's state, or the error."""
    if isinstance(exc, StockVerifyError):
        return exc.message
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the box's disk is full: free space on the box and export again"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ExportJobs:
    """This box's export jobs: ``submit`` from a route, ``get``/``list``/``path`` to follow and download.

    ``start``/``stop`` (or ``running()``, for a lifespan) own the worker. Stopping cancels a running
    job rather than waiting for it: it may have minutes left, the box is going down (systemd waits only
    so long), and a half-written file has no use; the job is marked failed with ``STOPPED`` and its
    temporary file removed, and jobs still queued are marked the same way."""

    def __init__(
        self,
        db: Database,
        data_dir: Path,
        *,
        keep_days: float = KEEP_DAYS,
        keep_jobs: int = KEEP_JOBS,
        progress_every_s: float = PROGRESS_EVERY_S,
    ) -> None:
        self.db = db
        self.folder = data_dir / "exports"
        self.keep_days = keep_days
        self.keep_jobs = keep_jobs
        self.progress_every_s = progress_every_s
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifespan ------------------------------------------------------------------------------
    def start(self) -> None:
        """Fail what a stopped box left unfinished, clean up, and start the worker."""
        self.folder.mkdir(parents=True, exist_ok=True)
        failed = self.db.write(self._fail_unfinished)
        if failed:
            log.warning("export jobs left unfinished by the last stop marked failed", extra={"jobs": failed})
        self.clean(strays=True)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._work, name="export-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        self._queue.put(None)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("export worker still busy at stop (a report's query); its job is marked failed at next start")
        self._thread = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ExportJobs]:
        """The worker for as long as the block lasts: the lifespan hook in ``appliance.services``."""
        await asyncio.to_thread(self.start)
        try:
            yield self
        finally:
            await asyncio.to_thread(self.stop)

    def _fail_unfinished(self, conn: sqlite3.Connection) -> int:
        cursor = conn.execute(
            "UPDATE export_jobs SET status = 'failed', error = ?, finished_at = ? "
            "WHERE status IN ('queued', 'running')",
            (STOPPED, _now_ms()),
        )
        return cursor.rowcount

    # -- asking --------------------------------------------------------------------------------
    def submit(self, make_table: MakeTable, what: dict[str, Any], fmt: str, user_id: str) -> dict[str, Any]:
        """Queue an export of the table ``make_table`` builds from a read connection; answer the job.

        ``what`` says what was exported (the report and its parameters), for the jobs list."""
        if fmt not in WRITERS:
            raise ValidationFailed(
                f"format must be one of {', '.join(WRITERS)}", code="EXPORT_FORMAT", details={"field": "format"}
            )
        job_id, created_at = new_id(), _now_ms()
        what_json = json.dumps(what, ensure_ascii=False, sort_keys=True)
        self.db.write(
            lambda conn: conn.execute(
                "INSERT INTO export_jobs (job_id, what, format, status, by_user, created_at) "
                "VALUES (?, ?, ?, 'queued', ?, ?)",
                (job_id, what_json, fmt, user_id, created_at),
            )
        )
        self._queue.put(_Job(job_id, make_table, fmt))
        # As written, not read back: the worker may already have taken it.
        return {
            "job_id": job_id,
            "what": json.loads(what_json),
            "format": fmt,
            "status": "queued",
            "rows_done": 0,
            "rows_total": None,
            "file": None,
            "bytes": None,
            "error": None,
            "by_user": user_id,
            "created_at": created_at,
            "finished_at": None,
        }

    def get(self, job_id: str) -> dict[str, Any]:
        row = self.db.read().execute(f"SELECT {_COLUMNS} FROM export_jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"export {job_id} does not exist (or was cleaned up)", code="EXPORT_NOT_FOUND")
        return _job_dict(row)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest jobs first."""
        rows = self.db.read().execute(
            f"SELECT {_COLUMNS} FROM export_jobs ORDER BY created_at DESC, job_id DESC LIMIT ?", (max(limit, 0),)
        )
        return [_job_dict(row) for row in rows]

    def file_path(self, job_id: str, fmt: str) -> Path:
        return self.folder / f"{job_id}.{fmt}"

    def path(self, job_id: str) -> Path:
        """The finished file of ``job_id``; 409 while it is being written or when it failed."""
        job = self.get(job_id)
        status = job["status"]
        if status in ("queued", "running"):
            raise Conflict(
                f"export {job_id} is {status}: download it once it is done",
                code="EXPORT_NOT_READY",
                details={"status": status, "rows_done": job["rows_done"], "rows_total": job["rows_total"]},
            )
        if status == "failed":
            raise Conflict(
                f"export {job_id} failed: {job['error']}", code="EXPORT_FAILED", details={"error": job["error"]}
            )
        path = self.file_path(job_id, job["format"])
        if not path.is_file():
            raise NotFound(f"the file of export {job_id} is gone: export again", code="EXPORT_NOT_FOUND")
        return path

    # -- the worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        conn = connect(self.db.path, readonly=True)
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    break
                if self._stopping.is_set():
                    self._update(job.job_id, status="failed", error=STOPPED, finished_at=_now_ms())
                    continue
                try:
                    self._run(conn, job)
                    self.clean(conn)
                except Exception:  # the job's row could not be written (the disk): keep serving the others
                    log.exception("export job bookkeeping failed", extra={"job_id": job.job_id})
        finally:
            conn.close()
        while True:  # whatever was submitted after stop() began
            try:
                left = self._queue.get_nowait()
            except queue.Empty:
                break
            if left is not None:
                self._update(left.job_id, status="failed", error=STOPPED, finished_at=_now_ms())

    def _update(self, job_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{name} = ?" for name in fields)
        values = [*fields.values(), job_id]
        self.db.write(lambda conn: conn.execute(f"UPDATE export_jobs SET {sets} WHERE job_id = ?", values))

    def _run(self, conn: sqlite3.Connection, job: _Job) -> None:
        self._update(job.job_id, status="running")
        final = self.file_path(job.job_id, job.fmt)
        part = self.folder / f".{job.job_id}.{job.fmt}.part"
        rows_done = 0
        last_write = time.monotonic()

        def progress(done: int) -> None:
            nonlocal rows_done, last_write
            rows_done = done
            if self._stopping.is_set():
                raise _Stopped
            now = time.monotonic()
            if now - last_write >= self.progress_every_s:
                last_write = now
                self._update(job.job_id, rows_done=done)

        try:
            conn.execute("BEGIN")  # one snapshot for the table's count and its rows
            try:
                table = job.make_table(conn)
                created = int(
                    conn.execute("SELECT created_at FROM export_jobs WHERE job_id = ?", (job.job_id,)).fetchone()[0]
                )
                self._update(job.job_id, rows_total=table.total_rows, file=download_name(table.title, job.fmt, created))
                WRITERS[job.fmt](table, part, progress)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            with part.open("rb") as whole:
                os.fsync(whole.fileno())
            part.replace(final)
        except _Stopped:
            part.unlink(missing_ok=True)
            self._update(job.job_id, status="failed", rows_done=rows_done, error=STOPPED, finished_at=_now_ms())
            return
        except Exception as exc:
            log.exception("export failed", extra={"job_id": job.job_id, "format": job.fmt})
            part.unlink(missing_ok=True)
            self._update(job.job_id, status="failed", rows_done=rows_done, error=_reason(exc), finished_at=_now_ms())
            return
        self._update(job.job_id, status="done", rows_done=rows_done, bytes=final.stat().st_size, finished_at=_now_ms())

    # -- keeping the folder small --------------------------------------------------------------
    def clean(self, conn: sqlite3.Connection | None = None, *, strays: bool = False) -> int:
        """Remove finished jobs older than ``keep_days`` or beyond the newest ``keep_jobs``, rows and files.

        With ``strays`` (at start, when nothing is being written) also files no job owns: the temporary
        file of a job a power cut interrupted."""
        reader = conn if conn is not None else self.db.read()
        cutoff = _now_ms() - int(self.keep_days * _DAY_MS)
        rows = reader.execute(
            "SELECT job_id, format FROM export_jobs WHERE status IN ('done', 'failed') AND ("
            " coalesce(finished_at, created_at) < ? OR job_id NOT IN ("
            "  SELECT job_id FROM export_jobs ORDER BY created_at DESC, job_id DESC LIMIT ?))",
            (cutoff, self.keep_jobs),
        ).fetchall()
        old = [(str(row["job_id"]), str(row["format"])) for row in rows]
        if old:
            # Rows first: a download that races the clean-up then answers 404 rather than a missing file.
            self.db.write(
                lambda conn: conn.executemany("DELETE FROM export_jobs WHERE job_id = ?", [(j,) for j, _f in old])
            )
            for job_id, fmt in old:
                self.file_path(job_id, fmt).unlink(missing_ok=True)
        if strays:
            kept = {
                f"{row['job_id']}.{row['format']}"
                for row in reader.execute("SELECT job_id, format FROM export_jobs WHERE status = 'done'")
            }
            for entry in self.folder.iterdir():
                if entry.is_file() and entry.name not in kept:
                    entry.unlink(missing_ok=True)
        return len(old)
