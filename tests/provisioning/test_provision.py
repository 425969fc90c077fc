"""``stockverify provision`` as a field tech runs it: a process of its own, real files, a staged root."""

from __future__ import annotations

import json
import os
import sqlite3
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from provisioning import certificates
from tests.conftest import ServerProcess, free_port

MAIN = Path(__file__).resolve().parents[2]
CATALOG = (
    b"sku,barcodes,name,category,uom,mrp,expected_qty\n"
    b"RIV-1,4006381333931,Oat milk 1 l,Dairy,EA,2.49,12\n"
    b"RIV-2,,Rye bread,Bakery,EA,3.10,8\n"
)
PASSWORD = "long-password-1"


def _provision(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "provision", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=MAIN,
        env={
            **os.environ,
            "STOCKVERIFY_PASSWORD_MEMORY_KIB": "1024",
            "STOCKVERIFY_PASSWORD_TIME_COST": "1",
            **(env or {}),
        },
        check=False,
    )


def _flags(tmp_path: Path) -> list[str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    products = tmp_path / "master.csv"
    products.write_bytes(CATALOG)
    return [
        *("--data-dir", str(tmp_path / "data"), "--root", str(tmp_path / "root")),
        *("--store-id", "store-100", "--store-name", "Riverside Market"),
        *("--admin-password", PASSWORD, "--hostname", "riverside-box1", "--products", str(products)),
        "--json",
    ]


def _events(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "store.db") as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def _done(answer: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert answer.returncode == 0, answer.stderr
    result: dict[str, Any] = json.loads(answer.stdout)
    return result


def test_a_fresh_folder_becomes_a_box_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    first = _done(_provision(*_flags(tmp_path)))
    data, root = tmp_path / "data", tmp_path / "root"
    assert first["changed"] is True
    changed = {step["step"] for step in first["steps"] if step["changed"]}
    assert {"settings", "box", "admin", "tls", "units", "products"} <= changed

    settings_file = data / "stockverify.toml"
    assert stat.S_IMODE(settings_file.stat().st_mode) == 0o600
    assert (
        'store_id = "store-100"' in settings_file.read_text() and "lock_authority = true" in settings_file.read_text()
    )
    identity = certificates.load_server_identity(data)
    assert identity is not None and identity.fingerprint == first["fingerprint"]
    assert (root / "etc/systemd/system/stockverify.service").read_bytes() == (
        MAIN / "systemd/stockverify.service"
    ).read_bytes()
    assert (root / "etc/stockverify/environment").read_text() == f"STOCKVERIFY_DATA_DIR={data}\n"
    wants = root / "etc/systemd/system/multi-user.target.wants/stockverify.service"
    assert wants.is_symlink() and os.readlink(wants) == "../stockverify.service"
    with sqlite3.connect(data / "store.db") as conn:
        assert conn.execute("SELECT username, role FROM users").fetchall() == [("admin", "admin")]
        assert conn.execute("SELECT count(*) FROM products").fetchone()[0] == 2
    assert any("https://riverside-box1.local:" in line for line in first["next_steps"])

    events, toml_mtime, cert = _events(data), settings_file.stat().st_mtime_ns, identity.cert_path.read_bytes()
    again = _done(_provision(*_flags(tmp_path)))
    assert again["changed"] is False, [s for s in again["steps"] if s["changed"]]
    assert again["fingerprint"] == first["fingerprint"] and identity.cert_path.read_bytes() == cert
    assert _events(data) == events and settings_file.stat().st_mtime_ns == toml_mtime


def test_a_folder_of_another_store_is_refused_and_a_missing_password_is_said(tmp_path: Path) -> None:
    _done(_provision(*_flags(tmp_path)))
    flags = _flags(tmp_path)
    flags[flags.index("store-100")] = "store-200"
    refused = _provision(*flags)
    assert refused.returncode != 0 and "belongs to store 'store-100'" in refused.stderr

    fresh = [f for f in _flags(tmp_path / "other") if f != PASSWORD and f != "--admin-password"]
    missing = _provision(*fresh)
    assert missing.returncode != 0 and "admin needs a password" in missing.stderr


def test_a_plan_file_provisions_a_second_box_that_joins_with_the_stores_ca(tmp_path: Path) -> None:
    _done(_provision(*_flags(tmp_path / "first")))
    plan = tmp_path / "box2.toml"
    plan.write_text(
        f'data_dir = "{tmp_path / "second"}"\nroot = "{tmp_path / "root2"}"\nstore_id = "store-100"\n'
        f'store_name = "Riverside Market"\nadmin_password = "{PASSWORD}"\njoin = true\n'
        f'peers = ["https://riverside-box1.local:8443"]\nca_dir = "{tmp_path / "first/data/tls"}"\n'
    )
    second = _done(_provision("--plan", str(plan), "--json"))
    assert second["changed"] is True
    text = (tmp_path / "second/stockverify.toml").read_text()
    assert "lock_authority = false" in text and "riverside-box1.local" in text
    first_ca = (tmp_path / "first/data/tls/ca.pem").read_bytes()
    assert (tmp_path / "second/tls/ca.pem").read_bytes() == first_ca  # handhelds trust one CA per store


def test_the_provisioned_box_answers_https_with_a_chain_the_store_ca_verifies(tmp_path: Path) -> None:
    _done(_provision(*_flags(tmp_path)))
    data = tmp_path / "data"
    https_port = free_port()
    server = ServerProcess(data, env={"STOCKVERIFY_HTTPS_PORT": str(https_port)})
    try:
        server.wait_ready()
        trust = ssl.create_default_context(cafile=str(data / "tls/ca.pem"))
        answer = httpx.get(f"https://127.0.0.1:{https_port}/api/health", verify=trust, timeout=5)
        assert answer.status_code == 200 and answer.json()["store_id"] == "store-100"
        login = httpx.post(
            f"https://127.0.0.1:{https_port}/api/auth/login",
            json={"username": "admin", "password": PASSWORD},
            verify=trust,
            timeout=10,
        )
        assert login.status_code == 200, login.text
        stranger = ssl.create_default_context()  # the system's CAs do not know the store's
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{https_port}/api/health", verify=stranger, timeout=5)
    finally:
        server.stop()
