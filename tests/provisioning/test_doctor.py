"""``stockverify doctor``'s disk check, on real small filesystems mounted by the test (root only)."""

from __future__ import annotations

from pathlib import Path

from appliance.box import open_box
from appliance.store.db import DISK_LOW_BYTES
from provisioning import certificates
from provisioning.doctor import DISK_FAIL_BYTES, Check, run_checks
from tests.appliance.store.test_disk_full import fs_error, small_ext4, small_tmpfs
from tests.conftest import ServerProcess, free_port, make_settings


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


def test_peers_and_hq_are_checked_for_an_answer_and_their_clock(tmp_path: Path) -> None:
    peer = ServerProcess(tmp_path / "peer", "--demo")
    try:
        peer.wait_ready()
        gone = f"http://127.0.0.1:{free_port()}"
        settings = make_settings(tmp_path / "box", peers=(peer.url,), hq_url=gone)
        open_box(settings).close()
        checks = {check.name: check for check in run_checks(settings)}
    finally:
        peer.stop()
    answered = checks[f"peer {peer.url}"]
    assert answered.status == "ok" and "its clock is" in answered.detail, answered
    assert abs(int(answered.detail.split("clock is ")[1].split(" s")[0])) <= 2
    assert checks[f"hq {gone}"].status == "fail" and "does not answer" in checks[f"hq {gone}"].detail


def test_the_certificate_is_checked_for_expiry(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "box")
    open_box(settings).close()
    assert {c.name: c for c in run_checks(settings)}["certificate"].status == "warn"  # plain HTTP
    certificates.ensure_store_ca(settings.data_dir, "Doctor Store")
    certificates.ensure_server_certificate(settings.data_dir, hostnames=["localhost"], addresses=["127.0.0.1"])
    check = {c.name: c for c in run_checks(settings)}["certificate"]
    assert check.status == "ok" and "valid until" in check.detail, check
