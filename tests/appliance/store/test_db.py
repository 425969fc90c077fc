"""The writer thread: group commit, per-job rollback, answers only after COMMIT."""

from __future__ import annotations

import gc
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from appliance.store.db import Database, collector_paused, connect


@pytest.fixture
def db(tmp_path: Path) -> Database:
    conn = connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    conn.close()
    database = Database(tmp_path / "t.db")
    yield database  # type: ignore[misc]
    database.close()


def test_connections_use_wal_full_sync_and_foreign_keys(db: Database) -> None:
    conn = db.read()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL


def test_failing_job_rolls_back_alone(db: Database) -> None:
    gate = threading.Event()
    db.submit(lambda c: gate.wait(5))  # hold the writer so the next jobs form one group
    ok = db.submit(lambda c: c.execute("INSERT INTO t VALUES (1)"))
    bad = db.submit(lambda c: (c.execute("INSERT INTO t VALUES (2)"), c.execute("INSERT INTO t VALUES (1)")))
    also_ok = db.submit(lambda c: c.execute("INSERT INTO t VALUES (3)"))
    gate.set()
    ok.result(5)
    also_ok.result(5)
    with pytest.raises(sqlite3.IntegrityError):
        bad.result(5)
    assert [r[0] for r in db.read().execute("SELECT n FROM t ORDER BY n")] == [1, 3]


def test_a_lone_failing_job_leaves_nothing_and_the_writer_goes_on(db: Database) -> None:
    bad = db.submit(lambda c: (c.execute("INSERT INTO t VALUES (7)"), c.execute("INSERT INTO t VALUES (7)")))
    with pytest.raises(sqlite3.IntegrityError):
        bad.result(5)
    commits = db.commits
    assert db.write(lambda c: c.execute("INSERT INTO t VALUES (8)").rowcount) == 1
    assert db.commits == commits + 1
    assert [r[0] for r in db.read().execute("SELECT n FROM t ORDER BY n")] == [8]


def test_concurrent_writes_share_commits(db: Database) -> None:
    gate = threading.Event()
    db.submit(lambda c: gate.wait(5))
    futures = [db.submit(lambda c, n=n: c.execute("INSERT INTO t VALUES (?)", (n,))) for n in range(100)]
    commits_before = db.commits
    gate.set()
    for future in futures:
        future.result(5)
    assert db.read().execute("SELECT count(*) FROM t").fetchone()[0] == 100
    assert db.commits - commits_before <= 2  # 101 jobs, at most two fsyncs


def test_a_bulk_job_is_written_alone_after_the_jobs_queued_beside_it(db: Database) -> None:
    """A claim that arrives while replicated pages queue waits for the page being written, not for
    every page behind it."""
    started, gate = threading.Event(), threading.Event()
    db.submit(lambda c: (started.set(), gate.wait(5)))
    started.wait(5)  # the writer is busy: what follows queues up
    seen: list[tuple[str, int]] = []
    pages = [db.submit(lambda c, n=n: seen.append((f"page {n}", db.commits)), bulk=True) for n in (1, 2)]
    claims = [db.submit(lambda c, n=n: seen.append((f"claim {n}", db.commits))) for n in (1, 2, 3)]
    gate.set()
    for future in (*pages, *claims):
        future.result(5)
    assert [name for name, _ in seen] == ["claim 1", "claim 2", "claim 3", "page 1", "page 2"]
    commits = [at for _, at in seen]
    assert commits[0] == commits[1] == commits[2]  # the claims share one commit
    assert commits[3] == commits[2] + 1 and commits[4] == commits[3] + 1  # each page has its own


def test_pages_are_written_however_busy_the_other_writers_are(db: Database) -> None:
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            db.write(lambda c: c.execute("INSERT INTO t VALUES (NULL)"))

    writers = [threading.Thread(target=busy) for _ in range(4)]
    for writer in writers:
        writer.start()
    try:
        pages = [db.submit(lambda c: time.sleep(0.01), bulk=True) for _ in range(5)]
        for page in pages:
            page.result(10)  # a page held back for as long as other jobs queue would time out here
    finally:
        stop.set()
        for writer in writers:
            writer.join(10)
    assert db.read().execute("SELECT count(*) FROM t").fetchone()[0] > 0


def test_answer_comes_after_commit_is_visible(db: Database) -> None:
    db.write(lambda c: c.execute("INSERT INTO t VALUES (7)"))
    other = sqlite3.connect(db.path)
    assert other.execute("SELECT n FROM t").fetchall() == [(7,)]
    other.close()


def test_readers_cannot_write(db: Database) -> None:
    with pytest.raises(sqlite3.OperationalError):
        db.read().execute("INSERT INTO t VALUES (9)")


def test_the_collector_resumes_when_the_last_holder_of_a_pause_is_done() -> None:
    assert gc.isenabled()
    decoding, applying = collector_paused(), collector_paused()
    decoding.__enter__()  # HQ decodes one page in a worker thread ...
    applying.__enter__()  # ... while its writer applies the one before
    assert not gc.isenabled()
    decoding.__exit__(None, None, None)
    assert not gc.isenabled(), "the writer is still applying"
    applying.__exit__(None, None, None)
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a page that fails")
    assert gc.isenabled()


def test_a_pause_leaves_a_collector_that_was_off_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
