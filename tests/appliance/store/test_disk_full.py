"""A full or read-only disk, on a real small filesystem made for the test.

The data dir is a tmpfs of a few megabytes (or a loop-mounted ext4 image for the read-only case)
mounted by the test itself, so SQLite meets a real ENOSPC or EROFS. The box must answer ``507`` with
``DISK_FULL`` / ``DISK_READ_ONLY`` (not ``500 INTERNAL``), say ``degraded`` on ``/api/health``, lose
nothing it acknowledged, and take the very same batch once space is back.

Mounting needs root. Locally a missing capability skips; under ``CI=true`` it fails.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.api.health import FREE_SPACE_TTL_S, REASON_FULL
from appliance.errors import InsufficientStorage
from appliance.store.db import Database
from replication.device import transport
from replication.device.outbox import Outbox
from replication.retry import retryable_status
from tests.conftest import ServerProcess, launch_chromium, need
from tests.replication.conftest import CountingBox, paired_outbox, scan_payload


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False)


def _unmount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        _run("umount", "-l", str(path))  # a server that would not let go; detach it all the same


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount`` syntax: ``8m``) at ``path``, unmounted on the way out."""
    if os.geteuid() != 0:
        need("mounting a small filesystem needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    if mounted.returncode != 0:
        need(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        _unmount(path)


@contextmanager
def small_ext4(path: Path, image: Path, size_mib: int) -> Iterator[str]:
    """An ext4 image loop-mounted at ``path`` that turns itself read-only on an error, as a box's card
    does; yields the device name under ``/sys/fs/ext4`` whose ``trigger_fs_error`` makes that error."""
    if os.geteuid() != 0:
        need("mounting a loop device needs root")
    with image.open("wb") as handle:
        handle.truncate(size_mib * 1024**2)
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    if made.returncode != 0:
        need(f"cannot make an ext4 image: {made.stderr.strip()}")
    path.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(path))
    if mounted.returncode != 0:
        need(f"cannot loop-mount an ext4 image: {mounted.stderr.strip()}")
    try:
        device = os.path.basename(_run("findmnt", "-no", "SOURCE", str(path)).stdout.strip())
        if not os.access(f"/sys/fs/ext4/{device}/trigger_fs_error", os.W_OK):
            need(f"/sys/fs/ext4/{device}/trigger_fs_error cannot be written here")
        yield device
    finally:
        _unmount(path)


def fs_error(device: str) -> None:
    """Make ext4 fail as on a bad card: with ``errors=remount-ro`` it stops taking writes (EROFS)."""
    with open(f"/sys/fs/ext4/{device}/trigger_fs_error", "w") as handle:
        handle.write("stockverify test\n")


def fill(folder: Path, name: str = "filler") -> Path:
    """Fill the filesystem under ``folder`` to the last byte; return the filler to delete."""
    filler = folder / name
    with filler.open("wb", buffering=0) as handle:
        for size in (256 * 1024, 4096, 1):  # big writes first, then what they left over
            try:
                while handle.write(bytes(size)):
                    pass
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler


def truncate_wal(db_path: Path) -> None:
    """Checkpoint the WAL and cut it to nothing, as an idle box's WAL can be: the next commit must then
    grow the file, which is what a full disk refuses (an old WAL's space would be reused)."""
    with sqlite3.connect(db_path) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    assert (db_path.parent / (db_path.name + "-wal")).stat().st_size == 0


# -- the writer thread, in process ------------------------------------------------------------------
def test_writer_turns_a_full_disk_into_507_and_forgets_it_after_the_next_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        db = Database(disk / "store.db")
        try:
            db.write(lambda conn: conn.execute("CREATE TABLE t (n INTEGER, blob BLOB)"))
            db.write(lambda conn: conn.execute("INSERT INTO t VALUES (1, randomblob(1000))"))
            truncate_wal(disk / "store.db")
            filler = fill(disk)
            assert db.storage_problem is None

            caplog.set_level(logging.INFO, logger="appliance.store.db")

            # A group of three: each job passes on its own, the COMMIT is what the disk refuses.
            def insert(n: int) -> Callable[[sqlite3.Connection], Any]:
                return lambda conn: conn.execute("INSERT INTO t VALUES (?, randomblob(20000))", (n,))

            futures: list[Future[Any]] = [db.submit(insert(n)) for n in (2, 3, 4)]
            refusals = []
            for future in futures:
                with pytest.raises(InsufficientStorage) as refused:
                    future.result(timeout=10)
                refusals.append(refused.value)
            for refusal in refusals:
                assert refusal.status == 507 and refusal.code == "DISK_FULL"
                assert isinstance(refusal.__cause__, sqlite3.OperationalError)
                assert refusal.__cause__.sqlite_errorcode == sqlite3.SQLITE_FULL
                assert refusal.to_dict()["details"] == {"retry_after_s": 5}
            assert len({id(refusal) for refusal in refusals}) == 3  # one each: awaited in different tasks
            with pytest.raises(InsufficientStorage):
                db.write(lambda conn: conn.execute("INSERT INTO t VALUES (5, randomblob(20000))"))

            problem = db.storage_problem
            assert problem is not None and problem["code"] == "DISK_FULL" and problem["refused"] == 4
            assert abs(problem["since_ms"] - time.time() * 1000) < 60_000
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1 and warnings[0].getMessage().startswith("disk full:")
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback per write
            assert [row[0] for row in db.read().execute("SELECT n FROM t ORDER BY n")] == [1]

            filler.unlink()
            db.write(lambda conn: conn.execute("INSERT INTO t VALUES (6, randomblob(20000))"))
            assert db.storage_problem is None
            assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
                "disk writable again: writes resumed"
            ]
            assert [row[0] for row in db.read().execute("SELECT n FROM t ORDER BY n")] == [1, 6]
        finally:
            db.close()


def test_a_job_the_disk_refuses_alone_is_a_507_and_its_group_still_commits(tmp_path: Path) -> None:
    """A job that writes a file (a photo) and meets ENOSPC is refused alone; the jobs beside it commit,
    and since the disk refused one of them that COMMIT does not count as the disk having recovered."""
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        db = Database(disk / "store.db")
        try:
            db.write(lambda conn: conn.execute("CREATE TABLE t (n INTEGER)"))

            def photo(conn: sqlite3.Connection) -> None:
                conn.execute("INSERT INTO t VALUES (2)")
                try:
                    (disk / "photo.jpg").write_bytes(bytes(8 * 1024**2))
                except OSError:
                    (disk / "photo.jpg").unlink()  # what the disk took of it, given back
                    raise

            futures: list[Future[Any]] = [
                db.submit(lambda conn: conn.execute("INSERT INTO t VALUES (1)")),
                db.submit(photo),
                db.submit(lambda conn: conn.execute("INSERT INTO t VALUES (3)")),
            ]
            futures[0].result(timeout=10)
            futures[2].result(timeout=10)
            with pytest.raises(InsufficientStorage) as refused:
                futures[1].result(timeout=10)
            assert refused.value.code == "DISK_FULL" and isinstance(refused.value.__cause__, OSError)
            assert [row[0] for row in db.read().execute("SELECT n FROM t ORDER BY n")] == [1, 3]
            assert db.storage_problem is not None  # other jobs committed, but one was refused for space
            db.write(lambda conn: conn.execute("INSERT INTO t VALUES (4)"))
            assert db.storage_problem is None
        finally:
            db.close()


def test_other_write_failures_are_left_as_they_are(tmp_path: Path) -> None:
    db = Database(tmp_path / "store.db")
    try:
        db.write(lambda conn: conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)"))
        db.write(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
        with pytest.raises(sqlite3.IntegrityError):
            db.write(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
        assert db.storage_problem is None
    finally:
        db.close()


# -- the real server, a paired handheld -----------------------------------------------------------
def _send(box: CountingBox, outbox: Outbox, seqs: range) -> dict[str, Any]:
    identity = outbox.require_identity()
    events = [outbox.record(seq).event(identity.writer_id) for seq in seqs]  # type: ignore[union-attr]

    async def send() -> dict[str, Any]:
        async with transport.open_session() as http:
            return await transport.send_batch(
                http, box.url, identity.device_token, identity.writer_id, events, outbox.key()
            )

    return asyncio.run(send())


def _heartbeat(box: CountingBox, outbox: Outbox) -> dict[str, Any]:
    token = outbox.require_identity().device_token

    async def beat() -> dict[str, Any]:
        async with transport.open_session() as http:
            return await transport.heartbeat(http, box.url, token, queue_depth=50, app_version="test")

    return asyncio.run(beat())


def _health(box: CountingBox) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(box.url + "/api/health", timeout=10)
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


def _refused(call: Any) -> transport.SyncError:
    with pytest.raises(transport.SyncError) as refused:
        call()
    return refused.value


@pytest.fixture
def full_disk_box(tmp_path: Path) -> Iterator[CountingBox]:
    """A demo box whose whole data dir is a 96 MiB tmpfs."""
    with small_tmpfs(tmp_path / "box", "96m") as data_dir:
        server = ServerProcess(data_dir, "--demo")
        try:
            server.wait_ready()
            yield CountingBox(server)
        finally:
            server.stop()


@pytest.mark.slow
def test_a_full_disk_refuses_batches_with_507_says_so_and_recovers(full_disk_box: CountingBox, tmp_path: Path) -> None:
    box = full_disk_box
    data_dir = box.server.data_dir
    outbox = paired_outbox(box, tmp_path / "handheld", "Handheld")
    writer_id = outbox.require_identity().writer_id
    session = box.counting_session()
    for _ in range(100):
        outbox.append("scan.recorded", scan_payload(box, session))

    first = _send(box, outbox, range(1, 51))
    assert first["ok"] == list(range(1, 51))
    acknowledged = box.stored(writer_id)
    assert [seq for seq, _, _ in acknowledged] == list(range(1, 51))
    status, health = _health(box)
    assert status == 200 and health["status"] == "ok" and health["disk"]["problem"] is None

    # Nearly full: writes still pass, but health warns while there is time to act.
    almost = data_dir / "almost"
    almost.write_bytes(bytes(shutil.disk_usage(data_dir).free - 20 * 1024**2))
    time.sleep(FREE_SPACE_TTL_S)
    status, health = _health(box)
    assert status == 200 and health["status"] == "degraded", health
    assert health["disk"]["low"] is True and health["disk"]["problem"] is None
    assert "almost full" in health["reason"]

    truncate_wal(data_dir / "store.db")
    filler = fill(data_dir)

    refused = _refused(lambda: _send(box, outbox, range(51, 101)))
    assert isinstance(refused, transport.Retryable), refused  # the handheld keeps the batch and retries
    assert (refused.status, refused.code) == (507, "DISK_FULL")
    assert refused.details == {"retry_after_s": 5}
    assert refused.retry_after == 5  # the Retry-After header the sender waits for
    assert "disk is full" in refused.message
    assert retryable_status(507, "DISK_FULL")
    again = _refused(lambda: _send(box, outbox, range(51, 101)))
    assert (again.status, again.code) == (507, "DISK_FULL")
    beat = _refused(lambda: _heartbeat(box, outbox))
    assert (beat.status, beat.code) == (507, "DISK_FULL")

    time.sleep(FREE_SPACE_TTL_S)  # the free space health shows may be a second old
    status, health = _health(box)
    assert status == 200, health  # degraded, not down: discovery and connectivity checks still find it
    assert health["status"] == "degraded" and health["database"] == "ok"
    assert health["disk"]["problem"] == "DISK_FULL" and isinstance(health["disk"]["since"], int)
    assert health["disk"]["free_bytes"] < 1024**2
    assert health["reason"].startswith("The box's disk is full: scans are not being saved.")
    assert {"node_id", "store_id", "role", "version"} <= set(health)

    assert box.stored(writer_id) == acknowledged  # nothing acknowledged lost, nothing refused kept
    output = box.server.output()
    assert output.count("disk full:") == 1, output  # one line for journalctl, not one per refused write
    assert "INTERNAL" not in output and "Traceback" not in output

    filler.unlink()
    almost.unlink()
    started = time.monotonic()
    while True:
        try:
            second = _send(box, outbox, range(51, 101))
            break
        except transport.Retryable:
            assert time.monotonic() - started < 5, "writes did not resume after space came back"
            time.sleep(0.1)
    assert second["ok"] == list(range(51, 101)) and second["errors"] == []
    assert time.monotonic() - started < 5
    assert [seq for seq, _, _ in box.stored(writer_id)] == list(range(1, 101))
    assert box.stored(writer_id)[:50] == acknowledged
    assert _heartbeat(box, outbox)

    deadline = time.monotonic() + 5
    while (health := _health(box)[1])["status"] != "ok":
        assert time.monotonic() < deadline, health
        time.sleep(0.2)
    assert health["disk"]["problem"] is None and health["reason"] is None
    assert health["disk"]["free_bytes"] > 10 * 1024**2
    assert "disk writable again" in box.server.output()
    assert box.session_qty(session) == 100


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright, for this test alone: Playwright's sync API keeps an event loop
    running while it is open, and the device tests here need ``asyncio.run``."""
    with launch_chromium() as launched:
        yield launched


@pytest.mark.slow
def test_the_dashboard_shows_a_banner_while_the_disk_is_full(
    full_disk_box: CountingBox,
    chromium: Any,
) -> None:
    box = full_disk_box
    token = str(box.boss.headers["Authorization"]).split()[1]
    context = chromium.new_context()  # the page's own Content-Security-Policy stays on
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.clock.install()  # the banner's 10 s poll, run on demand
        page.goto(box.url + "/")
        page.wait_for_selector("#login-user")
        page.wait_for_load_state("networkidle")
        assert page.is_hidden("#disk-banner")

        truncate_wal(box.server.data_dir / "store.db")
        filler = fill(box.server.data_dir)
        # A write the page makes is refused: the banner asks health at once, not at its next poll.
        status = page.evaluate(
            """async (token) => {
                sessionStorage.setItem("stockverify.token", token);
                const api = await import("/static/js/api.js");
                try {
                    await api.post("/api/runs", { name: "while the disk is full", kind: "hard" });
                    return 0;
                } catch (error) {
                    return error.status;
                }
            }""",
            token,
        )
        assert status == 507
        page.wait_for_selector("#disk-banner:not([hidden])", timeout=5000)
        assert page.inner_text("#disk-banner") == REASON_FULL
        assert page.get_attribute("#disk-banner", "role") == "alert"

        filler.unlink()
        assert box.boss.post("/api/runs", json={"name": "after", "kind": "hard"}).status_code == 201
        time.sleep(FREE_SPACE_TTL_S)  # health's free space may be a second old, and the page's clock is not
        page.clock.run_for(10_500)
        page.wait_for_selector("#disk-banner", state="hidden", timeout=5000)
        assert errors == []
    finally:
        context.close()


@pytest.mark.slow
def test_a_disk_gone_read_only_refuses_with_507_disk_read_only(tmp_path: Path) -> None:
    with small_ext4(tmp_path / "box", tmp_path / "card.img", 96) as device:
        server = ServerProcess(tmp_path / "box", "--demo")
        try:
            server.wait_ready()
            box = CountingBox(server)
            outbox = paired_outbox(box, tmp_path / "handheld", "Handheld")
            writer_id = outbox.require_identity().writer_id
            session = box.counting_session()
            for _ in range(20):
                outbox.append("scan.recorded", scan_payload(box, session))
            assert _send(box, outbox, range(1, 11))["ok"] == list(range(1, 11))
            acknowledged = box.stored(writer_id)

            fs_error(device)
            refused = _refused(lambda: _send(box, outbox, range(11, 21)))
            assert isinstance(refused, transport.Retryable)
            assert (refused.status, refused.code) == (507, "DISK_READ_ONLY"), refused
            assert "read-only" in refused.message

            status, health = _health(box)
            assert status == 200 and health["status"] == "degraded", health
            assert health["disk"]["problem"] == "DISK_READ_ONLY"
            assert "read-only" in health["reason"]
            assert box.stored(writer_id) == acknowledged
            assert server.output().count("disk read-only:") == 1
        finally:
            server.stop()
