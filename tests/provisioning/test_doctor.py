"""``stockverify doctor``'s disk check, on real small filesystems mounted by the test (root only)."""

from __future__ import annotations

from pathlib import Path

from appliance.box import open_box
from appliance.store.db import DISK_LOW_BYTES
from provisioning.doctor import DISK_FAIL_BYTES, Check, run_checks
from tests.appliance.store.test_disk_full import fs_error, small_ext4, small_tmpfs
from tests.conftest import make_settings


def _disk_check(data_dir: Path) -> Check:
    settings = make_settings(data_dir)
    open_box(settings).close()
    checks = {check.name: check for check in run_checks(settings)}
    return checks["disk"]


def test_doctor_fails_where_health_says_degraded() -> None:
    assert DISK_FAIL_BYTES == DISK_LOW_BYTES


def test_a_nearly_full_disk_fails(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "box", "16m") as data_dir:
        check = _disk_check(data_dir)
    assert check.status == "fail", check
    assert "free space now" in check.detail and str(data_dir) in check.detail


def test_a_low_disk_warns(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "box", "200m") as data_dir:
        check = _disk_check(data_dir)
    assert check.status == "warn", check
    assert "plan to free space" in check.detail


def test_a_roomy_disk_is_ok(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "box", "2g") as data_dir:  # tmpfs takes memory only as it is written
        check = _disk_check(data_dir)
        assert not list(data_dir.glob(".write-probe-*"))  # the probe leaves nothing behind
    assert check.status == "ok", check


def test_a_disk_gone_read_only_fails_though_it_has_room(tmp_path: Path) -> None:
    with small_ext4(tmp_path / "box", tmp_path / "card.img", 128) as device:
        settings = make_settings(tmp_path / "box")
        open_box(settings).close()
        fs_error(device)
        checks = {check.name: check for check in run_checks(settings)}
    assert checks["disk"].status == "fail", checks
    assert "read-only" in checks["disk"].detail
    # and the database is still examined: the tech needs to know whether the data is sound
    assert all(checks[name].status == "ok" for name in ("integrity", "schema", "node", "node_key", "chain")), checks
