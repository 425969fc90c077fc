"""Export jobs on a real box on disk: queued, run by the worker, followed, downloaded, cleaned up, and
failed honestly when the report fails or the box stops."""

from __future__ import annotations

import csv
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from litestar import Litestar
from litestar.di import Provide
from litestar.testing import TestClient

from appliance.api import exports as exports_api
from appliance.app import _error_response
from appliance.box import Box, open_box
from appliance.errors import Conflict, NotFound
from appliance.reports import jobs as jobs_module
from appliance.reports.jobs import STOPPED, ExportJobs
from appliance.reports.table import Column, Table
from appliance.settings import Settings

COLUMNS = [Column("sku", "SKU"), Column("name", "Product"), Column("qty", "Qty", "int")]


def table_of(rows: int, *, pause_every: int = 0, gate: threading.Event | None = None) -> Callable[..., Table]:
    """A ``make_table`` whose table reads the box (its event count goes in the summary), then yields
    ``rows`` rows; ``pause_every`` slows it so progress can be watched, ``gate`` holds it at its first row."""

    def make(conn: sqlite3.Connection) -> Table:
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]

        def produce() -> Iterator[dict[str, Any]]:
            if gate is not None:
                assert gate.wait(10)
            for i in range(rows):
                if pause_every and i % pause_every == 0:
                    time.sleep(0.01)
                yield {"sku": f"SKU-{i:06d}", "name": "Café crème" if i % 2 else "Dal, toor", "qty": i}

        return Table("Counted — run 7", COLUMNS, produce, total_rows=rows, summary=[("Events", str(events))])

    return make


def wait_for(jobs: ExportJobs, job_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.get(job_id)
        if job["status"] in statuses:
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} stayed {jobs.get(job_id)['status']}")


@pytest.fixture
def jobs(box: Box) -> Iterator[ExportJobs]:
    exporting = ExportJobs(box.db, box.settings.data_dir, progress_every_s=0)
    exporting.start()
    yield exporting
    exporting.stop()


@pytest.mark.parametrize("fmt", ["csv", "xlsx", "pdf"])
def test_a_job_runs_to_done_and_its_file_is_whole(jobs: ExportJobs, fmt: str) -> None:
    job = jobs.submit(table_of(3_000), {"report": "counted", "run_id": "run-7"}, fmt, "user-1")
    assert job["status"] == "queued"
    assert job["what"] == {"report": "counted", "run_id": "run-7"}
    assert job["by_user"] == "user-1"

    done = wait_for(jobs, job["job_id"], "done", "failed")
    assert done["status"] == "done", done["error"]
    assert done["rows_done"] == done["rows_total"] == 3_000
    path = jobs.path(job["job_id"])
    assert path == jobs.folder / f"{job['job_id']}.{fmt}"
    assert done["bytes"] == path.stat().st_size
    assert done["file"].startswith("counted-run-7-") and done["file"].endswith(f".{fmt}")
    assert done["finished_at"] >= done["created_at"]
    assert [entry.name for entry in jobs.folder.iterdir()] == [path.name]  # no temporary file left
    if fmt == "csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == ["SKU", "Product", "Qty"]
        assert rows[2] == ["SKU-000001", "Café crème", "1"]
        assert sum(int(row[2]) for row in rows[1:]) == sum(range(3_000))
    elif fmt == "xlsx":
        workbook = openpyxl.load_workbook(path, read_only=True)
        cells = list(workbook.worksheets[0].iter_rows(values_only=True))
        workbook.close()
        assert len(cells) == 3_001
        assert cells[1] == ("SKU-000000", "Dal, toor", 0)
    else:
        assert path.read_bytes().startswith(b"%PDF")


def test_progress_goes_up_while_a_large_table_is_written(jobs: ExportJobs) -> None:
    job = jobs.submit(table_of(60_000, pause_every=500), {"report": "large"}, "csv", "user-1")
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = jobs.get(job["job_id"])
        if now["status"] == "running":
            seen.append(now["rows_done"])
            with pytest.raises(Conflict) as refused:
                jobs.path(job["job_id"])
            assert refused.value.code == "EXPORT_NOT_READY"
        if now["status"] in ("done", "failed"):
            break
        time.sleep(0.02)
    assert now["status"] == "done"
    assert now["rows_total"] == 60_000
    moving = sorted(set(seen))
    assert seen == sorted(seen)
    assert len([n for n in moving if 0 < n < 60_000]) >= 3, moving


def test_a_failing_report_fails_its_job_with_its_error(jobs: ExportJobs) -> None:
    def broken(conn: sqlite3.Connection) -> Table:
        raise ValueError("snapshot snap-1 has no rows held on this box")

    job = jobs.submit(broken, {"report": "snapshot"}, "xlsx", "user-1")
    failed = wait_for(jobs, job["job_id"], "done", "failed")
    assert failed["status"] == "failed"
    assert "snapshot snap-1 has no rows held on this box" in failed["error"]
    with pytest.raises(Conflict) as refused:
        jobs.path(job["job_id"])
    assert refused.value.code == "EXPORT_FAILED"

    # A report that fails half way leaves no file behind, and the next job still runs.
    def half(conn: sqlite3.Connection) -> Table:
        def produce() -> Iterator[dict[str, Any]]:
            yield {"sku": "A", "name": "a", "qty": 1}
            raise RuntimeError("rack R-12 vanished")

        return Table("Half", COLUMNS, produce)

    halfway = jobs.submit(half, {"report": "half"}, "pdf", "user-1")
    after = jobs.submit(table_of(10), {"report": "after"}, "csv", "user-1")
    assert "rack R-12 vanished" in wait_for(jobs, halfway["job_id"], "done", "failed")["error"]
    assert wait_for(jobs, after["job_id"], "done", "failed")["status"] == "done"
    assert sorted(entry.name for entry in jobs.folder.iterdir()) == [f"{after['job_id']}.csv"]


def test_jobs_wait_their_turn_and_the_list_is_newest_first(jobs: ExportJobs) -> None:
    gate = threading.Event()
    first = jobs.submit(table_of(10, gate=gate), {"n": 1}, "csv", "user-1")
    second = jobs.submit(table_of(10), {"n": 2}, "csv", "user-1")
    wait_for(jobs, first["job_id"], "running")
    assert jobs.get(second["job_id"])["status"] == "queued"
    assert [job["job_id"] for job in jobs.list(10)] == [second["job_id"], first["job_id"]]
    gate.set()
    assert wait_for(jobs, second["job_id"], "done")["status"] == "done"
    assert jobs.get(first["job_id"])["status"] == "done"


def test_unknown_jobs_and_formats_are_refused(jobs: ExportJobs) -> None:
    with pytest.raises(NotFound) as missing:
        jobs.get("no-such-job")
    assert missing.value.code == "EXPORT_NOT_FOUND"
    with pytest.raises(NotFound):
        jobs.path("no-such-job")
    with pytest.raises(Exception, match="format must be one of csv, xlsx, pdf"):
        jobs.submit(table_of(1), {}, "docx", "user-1")


def test_stopping_cancels_the_running_job_and_fails_the_queued(box: Box) -> None:
    jobs = ExportJobs(box.db, box.settings.data_dir)
    jobs.start()
    running = jobs.submit(table_of(1_000_000, pause_every=100), {"report": "huge"}, "csv", "user-1")
    queued = jobs.submit(table_of(10), {"report": "next"}, "csv", "user-1")
    wait_for(jobs, running["job_id"], "running")
    time.sleep(0.2)
    jobs.stop()
    for job_id in (running["job_id"], queued["job_id"]):
        stopped = jobs.get(job_id)
        assert stopped["status"] == "failed"
        assert stopped["error"] == STOPPED
    assert list(jobs.folder.iterdir()) == []  # the half-written file is gone


def test_a_restarted_box_fails_what_the_stopped_one_left_unfinished(settings: Settings) -> None:
    box = open_box(settings)
    try:
        before = ExportJobs(box.db, settings.data_dir)  # never started: as if the box died meanwhile
        queued = before.submit(table_of(10), {"report": "counted"}, "xlsx", "user-1")
        running = before.submit(table_of(10), {"report": "counted"}, "pdf", "user-1")
        box.db.write(
            lambda conn: conn.execute(
                "UPDATE export_jobs SET status = 'running' WHERE job_id = ?", (running["job_id"],)
            )
        )
        before.folder.mkdir(parents=True)
        (before.folder / f".{running['job_id']}.pdf.part").write_bytes(b"%PDF-1.4 half")
    finally:
        box.close()

    box = open_box(settings)
    try:
        after = ExportJobs(box.db, settings.data_dir)
        after.start()
        try:
            for job_id in (queued["job_id"], running["job_id"]):
                job = after.get(job_id)
                assert job["status"] == "failed"
                assert job["error"] == "the box stopped while it ran: export again"
                assert job["finished_at"] is not None
            assert list(after.folder.iterdir()) == []  # the interrupted temporary file was removed
            again = after.submit(table_of(10), {"report": "counted"}, "xlsx", "user-1")
            assert wait_for(after, again["job_id"], "done")["rows_done"] == 10
        finally:
            after.stop()
    finally:
        box.close()


def test_old_jobs_and_jobs_beyond_the_limit_are_cleaned_up(box: Box) -> None:
    jobs = ExportJobs(box.db, box.settings.data_dir, keep_jobs=2)
    jobs.start()
    try:
        made = []
        for n in range(4):
            job = jobs.submit(table_of(5), {"n": n}, "csv", "user-1")
            wait_for(jobs, job["job_id"], "done")
            made.append(job["job_id"])
            time.sleep(0.002)  # distinct created_at
        assert [job["job_id"] for job in jobs.list(10)] == made[:1:-1]
        assert sorted(entry.name for entry in jobs.folder.iterdir()) == sorted(f"{j}.csv" for j in made[2:])

        old = made[2]
        box.db.write(
            lambda conn: conn.execute("UPDATE export_jobs SET finished_at = 1 WHERE job_id = ?", (old,))  # 1970
        )
        assert jobs.clean() == 1
        assert [job["job_id"] for job in jobs.list(10)] == [made[3]]
        assert not (jobs.folder / f"{old}.csv").exists()
    finally:
        jobs.stop()


def test_the_routes_list_follow_and_download(jobs: ExportJobs) -> None:
    app = Litestar(
        route_handlers=exports_api.ROUTES,
        dependencies={"exports": Provide(lambda: jobs, sync_to_thread=False)},
        exception_handlers={Exception: _error_response},
    )
    gate = threading.Event()
    with TestClient(app) as client:
        held = jobs.submit(table_of(10, gate=gate), {"report": "held"}, "csv", "user-1")
        wait_for(jobs, held["job_id"], "running")
        answer = client.get(f"/api/exports/{held['job_id']}/download")
        assert answer.status_code == 409
        assert answer.json()["code"] == "EXPORT_NOT_READY"
        gate.set()
        wait_for(jobs, held["job_id"], "done")

        job = jobs.submit(table_of(2_000), {"report": "counted"}, "xlsx", "user-1")
        wait_for(jobs, job["job_id"], "done")
        listed = client.get("/api/exports").json()
        assert [row["job_id"] for row in listed] == [job["job_id"], held["job_id"]]
        one = client.get(f"/api/exports/{job['job_id']}").json()
        assert one["status"] == "done"
        assert one["rows_done"] == 2_000

        download = client.get(f"/api/exports/{job['job_id']}/download")
        assert download.status_code == 200
        assert download.headers["content-type"] == jobs_module.MEDIA_TYPES["xlsx"]
        assert download.headers["content-disposition"] == f'attachment; filename="{one["file"]}"'
        assert download.content == jobs.path(job["job_id"]).read_bytes()

        missing = client.get("/api/exports/nope/download")
        assert missing.status_code == 404
        assert missing.json()["code"] == "EXPORT_NOT_FOUND"


def test_download_names_are_plain_ascii() -> None:
    assert jobs_module.download_name("Café — dal, run 7", "pdf", 0).startswith("cafe-dal-run-7-")
    assert jobs_module.download_name("दाल", "csv", 0).startswith("export-")
    assert Path(jobs_module.download_name("../../etc", "csv", 0)).name.startswith("etc-")
