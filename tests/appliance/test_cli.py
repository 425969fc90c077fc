"""The ``stockverify`` command line on a real data dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.box import open_box
from appliance.cli import main
from tests.conftest import FAST_PASSWORD_ENV, make_settings


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env=FAST_PASSWORD_ENV)


def test_user_add_then_duplicate_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    args = [
        "user",
        "add",
        "--data-dir",
        str(tmp_path),
        "meera",
        "--role",
        "supervisor",
        "--password",
        "meera-pass",
    ]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "meera (supervisor)" in first.output
    again = runner.invoke(main, args)
    assert again.exit_code == 1
    assert "USER_EXISTS" in again.output
    short = runner.invoke(main, [*args[:4], "ravi", "--role", "verifier", "--password", "short"])
    assert short.exit_code == 1 and "at least 8" in short.output
    box = open_box(make_settings(tmp_path))
    try:
        row = box.db.read().execute("SELECT role, password_hash FROM users WHERE username = 'meera'").fetchone()
        assert row["role"] == "supervisor" and row["password_hash"].startswith("$argon2id$")
    finally:
        box.close()


def test_doctor_reports_a_healthy_box(runner: CliRunner, tmp_path: Path) -> None:
    open_box(make_settings(tmp_path)).close()
    result = runner.invoke(main, ["doctor", "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in json.loads(result.output)}
    assert {"disk", "integrity", "schema", "node", "node_key", "chain"} <= set(checks)
    assert all(c["status"] == "ok" for c in checks.values()), checks
    assert "latest" in checks["schema"]["detail"]


def test_doctor_fails_on_a_missing_key_and_an_empty_dir(runner: CliRunner, tmp_path: Path) -> None:
    empty = runner.invoke(main, ["doctor", "--data-dir", str(tmp_path / "nothing")])
    assert empty.exit_code == 1 and "does not exist" in empty.output
    open_box(make_settings(tmp_path)).close()
    (tmp_path / "keys" / "node.key").unlink()
    result = runner.invoke(main, ["doctor", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "[FAIL] node_key" in result.output


def test_rebuild_command(runner: CliRunner, tmp_path: Path) -> None:
    open_box(make_settings(tmp_path)).close()
    result = runner.invoke(main, ["rebuild", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "from 2 events" in result.output


def test_bad_setting_stops_with_its_name(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["doctor", "--data-dir", str(tmp_path)], env={"STOCKVERIFY_PORT": "x"})
    assert result.exit_code != 0
    assert "'port'" in result.output
