"""The ``stockverify`` command line on a real data dir."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.auth import people
from appliance.box import open_box
from appliance.cli import main
from appliance.settings import describe
from provisioning import certificates
from provisioning.backup import backup
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
    backup(make_settings(tmp_path))  # a healthy box has a recent backup
    certificates.ensure_store_ca(tmp_path, "Doctor Store")  # and serves HTTPS
    certificates.ensure_server_certificate(tmp_path, hostnames=["localhost"], addresses=["127.0.0.1"])
    result = runner.invoke(main, ["doctor", "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in json.loads(result.output)}
    assert {"disk", "integrity", "schema", "node", "node_key", "chain", "backup", "certificate"} <= set(checks)
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
    assert "from 3 events" in result.output  # writer.enrolled, store.created, lock_authority.designated


def test_rebuild_keeps_whoever_is_logged_in(runner: CliRunner, tmp_path: Path) -> None:
    """Login tokens point at people, a projection the rebuild empties and refolds."""
    box = open_box(make_settings(tmp_path))
    try:
        hashed = people.Passwords(8, 1).hash("a-long-password")
        made = box.db.write(lambda conn: people.add_user(conn, box.log, "sam", "Sam", "verifier", hashed))
        token, _ = box.db.write(lambda conn: people.issue_token(conn, made.user_id, 3600))
    finally:
        box.close()
    result = runner.invoke(main, ["rebuild", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    box = open_box(make_settings(tmp_path))
    try:
        assert people.user_for_token(box.db.read(), token).username == "sam"
    finally:
        box.close()


def test_bad_setting_stops_with_its_name(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["doctor", "--data-dir", str(tmp_path)], env={"STOCKVERIFY_PORT": "x"})
    assert result.exit_code != 0
    assert "'port'" in result.output


STORE_SECRET = "store-secret-0123456789"
HQ_SECRET = "hq-secret-abcdefghijklmn"


def test_settings_command_shows_values_and_where_they_came_from(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "stockverify.toml"
    path.write_text(f'store_name = "Corner Shop"\nstore_secret = "{STORE_SECRET}"\n')
    env = {"STOCKVERIFY_PORT": "9123", "STOCKVERIFY_HQ_SECRET": HQ_SECRET}
    result = runner.invoke(main, ["settings", "--data-dir", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = lines.index("store_name = Corner Shop")
    assert lines[at + 1] == f"    from {path}"
    assert lines[at + 2] == "    the store's name as people see it"
    at = lines.index("port = 9123")
    assert lines[at + 1] == "    from environment variable STOCKVERIFY_PORT"
    at = lines.index("host = 0.0.0.0")
    assert lines[at + 1] == "    from default"
    assert lines[lines.index(f"data_dir = {tmp_path}") + 1] == "    from command line"
    assert "store_secret = (set)" in lines and "hq_secret = (set)" in lines
    assert STORE_SECRET not in result.output and HQ_SECRET not in result.output

    as_json = runner.invoke(main, ["settings", "--data-dir", str(tmp_path), "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    assert STORE_SECRET not in as_json.output and HQ_SECRET not in as_json.output
    rows = {row["name"]: row for row in json.loads(as_json.output)}
    assert list(rows) == [info.name for info in describe()]
    assert rows["store_name"] == {
        "name": "store_name",
        "value": "Corner Shop",
        "source": str(path),
        "help": "the store's name as people see it",
    }
    assert rows["port"]["value"] == 9123 and rows["port"]["source"] == "environment variable STOCKVERIFY_PORT"
    assert rows["store_secret"]["value"] == "(set)" and rows["store_secret"]["source"] == str(path)
    assert rows["hq_secret"]["value"] == "(set)"
    assert rows["peers"]["value"] == [] and rows["peers"]["source"] == "default"


def test_settings_command_shows_an_unset_secret_as_empty(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["settings", "--data-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["store_secret"]["value"] == "" and rows["hq_secret"]["value"] == ""


def test_settings_command_names_a_bad_value(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "stockverify.toml").write_text('store_secret = "tiny-secret-xyz"\n')
    result = runner.invoke(main, ["settings", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "'store_secret'" in result.output and "at least 16 characters" in result.output
    assert "tiny-secret-xyz" not in result.output


def test_serve_help_lists_every_setting(runner: CliRunner) -> None:
    result = runner.invoke(main, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    _, _, epilog = result.output.partition("\nSettings:\n")
    assert epilog, result.output
    assert "stockverify.toml" in epilog and "STOCKVERIFY_<NAME>" in epilog
    flat = " ".join(epilog.split())
    for info in describe():
        assert re.search(rf"^\s+{info.name}\s", epilog, re.MULTILINE), info.name
        assert info.env_var in epilog, info.env_var
        assert " ".join(info.help.split()) in flat, info.name
