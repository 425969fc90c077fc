"""``stockverify backup`` and ``restore`` against real processes and files.

A demo box serves twenty handhelds sending signed batches while the CLI backs it up in a process of its
own; the archive, restored into a new data dir, must hold exactly what its manifest says: every
writer's events a prefix of the live box's, byte for byte, and projections that a rebuild leaves as
they are. A backup killed with SIGKILL halfway leaves the box serving and its database sound, and only
a ``.partial`` that restore refuses; a tampered archive and another store's archive are refused; the
restored box writes as a new writer, with the old chain kept whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.box import open_box
from appliance.store.eventlog import _PROJECTION_TABLES, verify_writer_chain
from provisioning.backup import BackupRefused, backup, copy_database, restore
from provisioning.doctor import run_checks
from replication.device import transport
from tests.conftest import ServerProcess, make_settings
from tests.replication.conftest import MAIN, CountingBox
from tests.replication.device.test_crash import Handheld

DEVICES = 20
FLOW_S = 9.0  # how long the handhelds send; both backups run inside this


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=MAIN,
        check=False,
        env={**os.environ, "STOCKVERIFY_MDNS": "false"},
    )


def read_only(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def projections(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    with contextlib.closing(read_only(db)) as conn:
        return {
            table: sorted((tuple(row) for row in conn.execute(f"SELECT * FROM {table}")), key=repr)
            for table in _PROJECTION_TABLES
        }


# -- the floor ----------------------------------------------------------------------------------------
class Floor:
    """Handhelds sending batches for ``FLOW_S`` seconds, each batch's latency noted with what ran then."""

    def __init__(self, box: CountingBox, devices: list[Handheld], context: dict[str, Any]) -> None:
        self.box = box
        self.devices = devices
        self.context = context
        self.phase = "before"  # what the backup is doing while a batch is in flight
        self.latencies: dict[str, list[float]] = {}
        self.problems: list[str] = []

    async def device(self, device: Handheld, until: float) -> None:
        async with transport.open_session(connections=2) as http:
            while time.monotonic() < until:
                start = device.next_seq
                while len(device.events) < start - 1 + device.rng.randint(5, 40):
                    device.make(**self.context)
                batch = device.events[start - 1 :]
                phase, began = self.phase, time.monotonic()
                answer = await transport.send_batch(
                    http, self.box.url, device.token, device.writer_id, batch, device.key
                )
                self.latencies.setdefault(phase, []).append(time.monotonic() - began)
                if answer["errors"]:
                    self.problems.append(f"{device.name}: {answer['errors'][:2]}")
                    return
                device.acked.update(answer["ok"])
                device.next_seq = answer["expected_seq"]
                device.clock.observe(answer["server_hlc"])
                await asyncio.sleep(device.rng.uniform(0, 0.05))

    async def run(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(self.device(d, until) for d in self.devices))

    def summary(self) -> str:
        parts = []
        for phase, values in self.latencies.items():
            values = sorted(values)
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            parts.append(
                f"{phase}: {len(values)} batches p50 {statistics.median(values) * 1000:.1f} ms p99 {p99 * 1000:.1f} ms"
            )
        return "; ".join(parts)


async def pair(box: CountingBox, rng: random.Random, count: int) -> list[Handheld]:
    made = []
    async with transport.open_session() as http:
        for n in range(1, count + 1):
            key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
            name = f"Backup handheld {n}"
            answer = await transport.pair(http, box.url, box.pairing_code(), name, key.public_key().public_bytes_raw())
            made.append(Handheld(name, answer["writer_id"], answer["device_token"], key, random.Random(n)))
    return made


@pytest.mark.slow
def test_a_backup_taken_under_load_restores_exactly_what_its_manifest_says(tmp_path: Path) -> None:
    # Twenty pairings from one address inside a minute: more than a store's login throttle lets through.
    server = ServerProcess(tmp_path / "box", "--demo", env={"STOCKVERIFY_LOGIN_ATTEMPTS_PER_MINUTE": "100"})
    try:
        server.wait_ready()
        box = CountingBox(server)
        session_id = box.counting_session()
        context = {
            "session_id": session_id,
            "rack_id": box.rack_id(session_id),
            "by": box.verifier_id,
            "products": box.products(4),
        }
        devices = asyncio.run(pair(box, random.Random(7), DEVICES))
        floor = Floor(box, devices, context)
        archives = tmp_path / "archives"
        runs: dict[str, dict[str, Any]] = {}

        def take_backups() -> None:
            time.sleep(2.0)  # the floor at full pace first
            for method in ("vacuum", "backup"):
                floor.phase = method
                began = time.monotonic()
                done = cli("backup", "--data-dir", str(server.data_dir), "--to", str(archives / method), "--json",
                           "--method", method)  # fmt: skip
                runs[method] = {"done": done, "seconds": time.monotonic() - began}
                floor.phase = f"after {method}"
                time.sleep(1.0)

        backups = threading.Thread(target=take_backups)
        backups.start()
        asyncio.run(floor.run(FLOW_S))
        backups.join()
        assert not floor.problems, floor.problems
        for method, run in runs.items():
            assert run["done"].returncode == 0, (method, run["done"].stdout, run["done"].stderr)
        made = json.loads(runs["backup"]["done"].stdout)
        archive = Path(made["path"])
        assert archive.name.startswith("stockverify-demo-store-") and archive.suffix == ".tar"
        assert archive.stat().st_size == made["size"]
        assert sum(len(d.acked) for d in devices) > 1000  # the scans really flowed around the backup
    finally:
        server.stop()
    live = server.data_dir / "store.db"

    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert tar.getmembers()[-1].name == "manifest.json"
    assert manifest["store_id"] == "demo-store" and manifest["format"] == 1
    assert {"keys/node.key", "store.db"} <= {f["path"] for f in manifest["files"]}
    # the backup landed mid-flow: the live box went on past it
    with contextlib.closing(read_only(live)) as conn:
        live_count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert 0 < manifest["event_count"] < live_count

    target = tmp_path / "restored"
    began = time.monotonic()
    restored = cli("restore", str(archive), "--data-dir", str(target))
    restore_s = time.monotonic() - began
    assert restored.returncode == 0, restored.stderr
    for said in ("integrity_check: ok", "SHA-256", "chain", "the box writes as"):
        assert said in restored.stdout + restored.stderr, restored.stdout

    db = target / "store.db"
    old_writer, new_writer = manifest["node_id"], None
    with contextlib.closing(read_only(db)) as conn, contextlib.closing(read_only(live)) as source:
        new_writer = conn.execute("SELECT node_id FROM node").fetchone()[0]
        assert new_writer != old_writer
        heads = {row[0]: row[1] for row in conn.execute("SELECT writer_id, head_seq FROM writers")}
        assert heads.pop(new_writer) >= 1
        assert heads == manifest["writer_heads"]
        count = conn.execute("SELECT count(*) FROM events WHERE writer_id != ?", (new_writer,)).fetchone()[0]
        assert count == manifest["event_count"]
        columns = "seq, event_id, type, payload, hlc, occurred_at, prev_hash, hash"
        for writer_id, head in manifest["writer_heads"].items():
            mine = conn.execute(f"SELECT {columns} FROM events WHERE writer_id = ? ORDER BY seq", (writer_id,))
            theirs = source.execute(
                f"SELECT {columns} FROM events WHERE writer_id = ? AND seq <= ? ORDER BY seq", (writer_id, head)
            )
            assert [tuple(r) for r in mine] == [tuple(r) for r in theirs], writer_id  # a prefix, byte for byte
            assert verify_writer_chain(conn, writer_id).ok, writer_id
        # (d) the box's own writer is new, enrolled through the log; the old chain is whole and unchanged
        first = conn.execute(
            "SELECT type, payload FROM events WHERE writer_id = ? AND seq = 1", (new_writer,)
        ).fetchone()
        assert first["type"] == "writer.enrolled"
        assert verify_writer_chain(conn, new_writer).ok
        old = verify_writer_chain(conn, old_writer)
        assert old.ok and old.head_seq == manifest["writer_heads"][old_writer]
        designated = conn.execute("SELECT node_id FROM lock_designations ORDER BY epoch DESC LIMIT 1").fetchone()[0]
        assert designated == new_writer  # the old box granted the locks; the new one does now

    before = projections(db)
    rebuilt = cli("rebuild", "--data-dir", str(target))
    assert rebuilt.returncode == 0, rebuilt.stderr
    after = projections(db)
    assert {t for t in before if before[t] != after[t]} == set()

    # The restored box serves, and what it records is the new writer's.
    again = ServerProcess(target)
    try:
        again.wait_ready()
        boss = again.client(again.login("supervisor", "supervisor-demo"))
        assert boss.post("/api/runs", json={"name": "after the restore", "kind": "hard"}).status_code == 201
    finally:
        again.stop()
    with contextlib.closing(read_only(db)) as conn:
        last = conn.execute("SELECT writer_id FROM events WHERE type = 'run.created' ORDER BY pos DESC").fetchone()
        assert last[0] == new_writer
        assert (
            conn.execute("SELECT max(seq) FROM events WHERE writer_id = ?", (old_writer,)).fetchone()[0]
            == (manifest["writer_heads"][old_writer])
        )
        assert conn.execute("SELECT head_seq FROM writers WHERE writer_id = ?", (new_writer,)).fetchone()[0] > 1

    print(
        f"\nbackup under load: {manifest['event_count']} events,"
        f" backup_s {runs['backup']['seconds']:.2f} (vacuum {runs['vacuum']['seconds']:.2f}),"
        f" restore_s {restore_s:.2f}, archive {made['size'] / 1024**2:.1f} MiB; {floor.summary()}"
    )


# -- killed halfway ---------------------------------------------------------------------------------------
def _fill_photos(data_dir: Path, count: int, size: int) -> None:
    rng = random.Random(1)
    for _ in range(count):
        data = rng.randbytes(size)
        digest = hashlib.sha256(data).hexdigest()
        path = data_dir / "photos" / digest[:2] / digest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.mark.slow
def test_a_backup_killed_halfway_leaves_the_box_as_it_was_and_a_partial_restore_refuses(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "box", "--demo")
    archives = tmp_path / "archives"
    try:
        server.wait_ready()
        _fill_photos(server.data_dir, 400, 1024**2)  # 400 MiB: the backup is seconds long
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "backup", "--data-dir", str(server.data_dir), "--to", str(archives)],
            cwd=MAIN,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        partial = None
        while time.monotonic() < deadline and process.poll() is None:
            found = list(archives.glob("*.tar.partial")) if archives.exists() else []
            if found and found[0].stat().st_size > 50 * 1024**2:  # well into the photos
                partial = found[0]
                break
            time.sleep(0.01)
        assert partial is not None and process.poll() is None, "the backup finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

        assert not list(archives.glob("*.tar")), "a killed backup left what looks like a whole archive"
        assert httpx.get(server.url + "/api/health").status_code == 200
        with contextlib.closing(read_only(server.data_dir / "store.db")) as conn:
            assert [row[0] for row in conn.execute("PRAGMA integrity_check")] == ["ok"]
    finally:
        server.stop()

    refused = cli("restore", str(partial), "--data-dir", str(tmp_path / "restored"))
    assert refused.returncode == 1 and "partial backup" in refused.stderr, refused.stderr
    assert not (tmp_path / "restored" / "store.db").exists()
    # renamed to look whole, it is still refused: it ends before the manifest the backup writes last
    renamed = partial.with_name(partial.name.removesuffix(".partial"))
    partial.rename(renamed)
    refused = cli("restore", str(renamed), "--data-dir", str(tmp_path / "restored"))
    assert refused.returncode == 1 and "did not finish" in refused.stderr, refused.stderr
    assert not (tmp_path / "restored" / "store.db").exists()


# -- refused archives, and the sequence rule ---------------------------------------------------------------
def _store(folder: Path, store_id: str) -> Path:
    settings = make_settings(folder, store_id=store_id)
    open_box(settings).close()
    return backup(settings, folder.parent / f"{folder.name}-archives").path


def test_a_tampered_archive_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    archive = _store(tmp_path / "a", "store-a")
    tampered = tmp_path / "tampered.tar"
    shutil.copy(archive, tampered)
    with tarfile.open(tampered) as tar:
        at = tar.getmember("data/store.db").offset_data + 3000
    with tampered.open("r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(BackupRefused, match=r"store\.db does not match the manifest"):
        restore(tampered, tmp_path / "new")
    assert not (tmp_path / "new" / "store.db").exists()
    assert not list((tmp_path / "new").glob(".restoring-*"))  # nothing staged is left behind


def test_another_stores_backup_is_refused(tmp_path: Path) -> None:
    theirs = _store(tmp_path / "b", "store-b")
    _store(tmp_path / "a", "store-a")
    before = (tmp_path / "a" / "store.db").read_bytes()
    with pytest.raises(BackupRefused, match="holds store store-a"):
        restore(theirs, tmp_path / "a", force=True)
    assert (tmp_path / "a" / "store.db").read_bytes() == before
    with pytest.raises(BackupRefused, match="not of store store-a"):
        restore(theirs, tmp_path / "empty", expect_store_id="store-a")
    done = cli("restore", str(theirs), "--data-dir", str(tmp_path / "a"), "--force")
    assert done.returncode == 1 and "another store's backup goes only into an empty data dir" in done.stderr.lower()
    # into an empty dir, with no store expected, it is simply that store
    assert restore(theirs, tmp_path / "empty").store_id == "store-b"


def test_a_restore_over_a_store_needs_force_and_keeps_the_old_files_aside(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "a", store_id="store-a")
    open_box(settings).close()
    archive = backup(settings).path  # in the data dir's own backups/, as the nightly timer leaves it
    with pytest.raises(BackupRefused, match="--force"):
        restore(archive, tmp_path / "a")
    report = restore(archive, tmp_path / "a", force=True)
    assert report.aside is not None and report.aside.parent == tmp_path / "a"
    assert (report.aside / "store.db").exists() and (report.aside / "keys" / "node.key").exists()
    assert archive.exists()  # backups/ stays where it is
    assert {c.name: c for c in run_checks(settings)}["chain"].status == "ok"


def test_the_same_writer_only_with_proof_that_the_backup_holds_its_published_head(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "a", store_id="store-a")
    box = open_box(settings)
    try:
        archive = backup(settings, tmp_path / "archives").path
        peer_then = tmp_path / "peer-then.db"
        copy_database(settings.db_path, peer_then)  # a peer that had all the box published by the backup
        box.db.write(lambda conn: box.log.record(conn, "store.renamed", {"name": "after the backup"}))
        writer = box.node.node_id
    finally:
        box.close()
    peer_now = tmp_path / "peer-now.db"
    copy_database(settings.db_path, peer_now)  # a peer that received what the box wrote after the backup

    with pytest.raises(BackupRefused, match="published after the backup"):
        restore(archive, tmp_path / "new", same_writer_proof=peer_now)
    assert not (tmp_path / "new" / "store.db").exists()
    kept = restore(archive, tmp_path / "new", same_writer_proof=peer_then)
    assert not kept.new_writer and kept.writer_id == writer
    with contextlib.closing(read_only(tmp_path / "new" / "store.db")) as conn:
        assert conn.execute("SELECT node_id FROM node").fetchone()[0] == writer
    assert (tmp_path / "new" / "keys" / "node.key").read_bytes() == (settings.keys_dir / "node.key").read_bytes()


def test_retention_keeps_the_newest_and_doctor_tells_the_age_of_the_newest(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "a", store_id="store-a", backup_keep=2)
    open_box(settings).close()
    checks = {c.name: c for c in run_checks(settings)}
    assert checks["backup"].status == "fail" and "no backup" in checks["backup"].detail
    folder = settings.backups_dir
    folder.mkdir(parents=True)
    for day in (1, 2, 3):  # older archives, by the UTC time in their names
        (folder / f"stockverify-store-a-2026010{day}T023000Z.tar").write_bytes(b"old")
    (folder / "stockverify-store-b-20260101T023000Z.tar").write_bytes(b"another store's: not pruned")
    made = backup(settings)
    left = sorted(p.name for p in folder.glob("*.tar"))
    assert left == sorted([made.path.name, "stockverify-store-a-20260103T023000Z.tar",
                           "stockverify-store-b-20260101T023000Z.tar"])  # fmt: skip
    assert {p.name for p in made.removed} == {
        "stockverify-store-a-20260101T023000Z.tar",
        "stockverify-store-a-20260102T023000Z.tar",
    }
    assert {c.name: c for c in run_checks(settings)}["backup"].status == "ok"
    for archive in folder.glob("*.tar"):
        os.utime(archive, (time.time() - 40 * 3600,) * 2)
    assert {c.name: c for c in run_checks(settings)}["backup"].status == "warn"
    for archive in folder.glob("*.tar"):
        os.utime(archive, (time.time() - 8 * 24 * 3600,) * 2)
    assert {c.name: c for c in run_checks(settings)}["backup"].status == "fail"


def test_a_tar_without_its_manifest_is_refused(tmp_path: Path) -> None:
    archive = _store(tmp_path / "a", "store-a")
    cut = tmp_path / "stockverify-store-a-cut.tar"
    with tarfile.open(archive) as whole, tarfile.open(cut, "w") as tar:
        for member in whole.getmembers()[:-1]:  # every file, and no manifest
            tar.addfile(member, whole.extractfile(member))
    with pytest.raises(BackupRefused, match="no manifest at its end"):
        restore(cut, tmp_path / "new")
