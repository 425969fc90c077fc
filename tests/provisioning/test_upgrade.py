"""``stockverify upgrade`` in a process of its own: a box made by migration 1 upgraded through the command,
a new version that never turns healthy rolled back, and a count in progress refused."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from appliance.store.migrations import LATEST
from tests.conftest import DEMO_PASSWORDS, FAST_PASSWORD_ENV, ServerProcess, free_port

MAIN = Path(__file__).resolve().parents[2]
FIXTURE = MAIN / "tests" / "fixtures" / "m001_store"
FIXTURE_ENV = {**FAST_PASSWORD_ENV, "STOCKVERIFY_STORE_ID": "fixture-store", "STOCKVERIFY_MDNS": "false"}


def _upgrade(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "upgrade", "--data-dir", str(data_dir), "--json", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=MAIN,
        env={**os.environ, **(env or FIXTURE_ENV)},
        check=False,
    )
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        result = {"stderr": done.stderr}
    return done.returncode, result


def _schema(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "store.db") as conn:
        return int(conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0])


def _events(data_dir: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "store.db") as conn:
        return conn.execute("SELECT writer_id, seq, hash FROM events ORDER BY writer_id, seq").fetchall()


def test_a_box_made_by_migration_1_is_upgraded_through_the_command(tmp_path: Path) -> None:
    data = tmp_path / "box"
    shutil.copytree(FIXTURE, data)
    port, pid_file = free_port(), tmp_path / "server.pid"
    serve = (
        f"{shlex.quote(sys.executable)} -m appliance serve --data-dir {shlex.quote(str(data))} --port {port}"
        f" > {shlex.quote(str(tmp_path / 'server.log'))} 2>&1 & echo $! > {shlex.quote(str(pid_file))}"
    )
    code, result = _upgrade(
        data,
        *("--restart-cmd", f"sh -c {shlex.quote(serve)}", "--stop-cmd", "true"),
        *("--health-url", f"http://127.0.0.1:{port}/api/health", "--health-timeout", "60"),
    )
    try:
        assert code == 0, result
        steps = {step["step"]: step for step in result["steps"]}
        assert list(steps) == ["counting", "backup", "migrate", "restart", "health"]
        assert steps["migrate"]["detail"] == f"schema 1 → {LATEST}"
        assert _schema(data) == LATEST
        archives = list((data / "backups").glob("stockverify-fixture-store-*.tar*"))
        assert len(archives) == 1 and str(archives[0]) in steps["backup"]["detail"]
        login = httpx.post(
            f"http://127.0.0.1:{port}/api/auth/login", json={"username": "keeper", "password": "keeper-pass"}
        )
        assert login.status_code == 200, login.text
    finally:
        if pid_file.is_file():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            time.sleep(1)


def test_a_new_version_that_never_turns_healthy_is_rolled_back_to_the_backup(tmp_path: Path) -> None:
    data = tmp_path / "box"
    shutil.copytree(FIXTURE, data)
    before = _events(data)
    code, result = _upgrade(
        data,
        *("--restart-cmd", "true", "--stop-cmd", "true"),
        *("--health-url", f"http://127.0.0.1:{free_port()}/api/health", "--health-timeout", "2"),
    )
    assert code == 1 and result["ok"] is False
    assert "rolled back" in result["error"]
    names = [step["step"] for step in result["steps"]]
    assert names[:4] == ["counting", "backup", "migrate", "restart"] and "restore" in names
    assert next(s for s in result["steps"] if s["step"] == "failed")["detail"].startswith("the box was not healthy")
    assert _schema(data) == 1  # the data the box had, not a half-upgraded store
    assert _events(data)[: len(before)] == before


def test_a_count_in_progress_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "box", "--demo")
    try:
        server.wait_ready()
        boss = server.client(server.login("supervisor", DEMO_PASSWORDS["supervisor"]))
        vani = server.client(server.login("verifier", DEMO_PASSWORDS["verifier"]))
        run_id = boss.post("/api/runs", json={"name": "upgrade night", "kind": "hard"}).json()["run_id"]
        made = boss.post(f"/api/runs/{run_id}/sessions", json={"racks": ["G-03"], "verifier": "verifier"}).json()
        assert boss.post(f"/api/runs/{run_id}/start").status_code == 200
        assert vani.post(f"/api/sessions/{made['session_id']}/start").status_code == 200
        claimed = vani.post(f"/api/runs/{run_id}/racks/G-03/claim", json={"session_id": made["session_id"]})
        assert claimed.status_code == 201, claimed.text
    finally:
        server.stop()
    env = {**FAST_PASSWORD_ENV, "STOCKVERIFY_STORE_ID": "demo-store", "STOCKVERIFY_MDNS": "false"}
    code, result = _upgrade(tmp_path / "box", "--restart-cmd", "true", env=env)
    assert code != 0 and result["ok"] is False and result["steps"] == []
    assert "rack G-03" in result["error"] and "--force" in result["error"]
    assert not (tmp_path / "box" / "backups").exists()
