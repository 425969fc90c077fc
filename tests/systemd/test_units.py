"""The unit files a real box installs: systemd itself checks them, and rates their sandbox.

``systemd-analyze verify`` loads each unit as systemd would; ``systemd-analyze security --offline``
scores its exposure (0 is a fully locked service, 10 an unprotected one). The ExecStart binary lives
under /opt only on a box, so the copies checked here point at an executable this machine has.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import need

UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
SERVICES = ("stockverify.service", "stockverify-backup.service")
UNITS = (*SERVICES, "stockverify-backup.timer")
BOX_BINARY = "/opt/stockverify/.venv/bin/stockverify"
MAX_EXPOSURE = 2.5


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        need("systemd-analyze is not installed (apt-get install systemd)")
    assert found is not None
    return found


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units as shipped, but for the box's binary: an executable that exists here."""
    stand_in = shutil.which("true")
    assert stand_in is not None
    for name in UNITS:
        text = (UNITS_DIR / name).read_text()
        (tmp_path / name).write_text(text.replace(BOX_BINARY, stand_in))
    return tmp_path


def _directives(name: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value, in order (a unit may repeat a key)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in (UNITS_DIR / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


def test_systemd_loads_the_units_without_a_complaint(units: Path) -> None:
    analyze = _analyze()
    done = subprocess.run(
        [analyze, "verify", *(str(units / name) for name in UNITS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # An unknown key or a bad value is only a warning to verify: any line about these units fails.
    complaints = [line for line in done.stderr.splitlines() if "stockverify" in line]
    assert complaints == [], done.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_exposure_is_at_most_2_5(units: Path, name: str) -> None:
    analyze = _analyze()
    usage = subprocess.run([analyze, "security", "--help"], capture_output=True, text=True, timeout=30).stdout
    if "--offline" not in usage:
        need("this systemd-analyze cannot rate a unit file offline (systemd 250 or later has --offline)")
    done = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(units / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert found, done.stdout + done.stderr
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, done.stdout


def test_the_box_unit_matches_what_the_box_does() -> None:
    """The app sends READY=1 and pings the watchdog from its main process; its data is the state dir."""
    service = _directives("stockverify.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30"]
    assert service["StateDirectory"] == ["stockverify"]
    assert service["Environment"] == ["STOCKVERIFY_DATA_DIR=/var/lib/stockverify"]
    assert service["ReadWritePaths"] == ["/var/lib/stockverify"]
    assert service["ExecStart"] == [f"{BOX_BINARY} serve"]
    assert sorted(service["DeviceAllow"]) == ["char-input rw", "char-ttyACM rw", "char-ttyUSB rw"]
    assert service["DevicePolicy"] == ["closed"]
    assert "PrivateDevices" not in service  # it would hide the scanners
    assert service["SupplementaryGroups"] == ["input dialout"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["AmbientCapabilities"] == [""]
    assert service["UMask"] == ["0077"]


def test_the_backup_runs_as_the_box_on_its_data_in_the_same_sandbox() -> None:
    box = _directives("stockverify.service")["Service"]
    backup = _directives("stockverify-backup.service")["Service"]
    assert backup["Type"] == ["oneshot"]
    assert backup["ExecStart"] == [f"{BOX_BINARY} backup"]
    for key in ("User", "Group", "StateDirectory", "Environment", "EnvironmentFile", "ReadWritePaths", "UMask"):
        assert backup[key] == box[key], key
    # Every hardening line of the box, but the scanners' devices and groups, which a backup never opens.
    scanners = {"DevicePolicy", "DeviceAllow", "SupplementaryGroups"}
    hardening = {key for key in box if key.startswith(("Protect", "Restrict", "Private", "SystemCall"))}
    hardening |= {"NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "LockPersonality"}
    hardening |= {"MemoryDenyWriteExecute", "RemoveIPC", "KeyringMode"}
    for key in hardening - scanners:
        assert backup[key] == box[key], key
    assert backup["PrivateDevices"] == ["yes"]


def test_the_backup_timer_is_nightly_and_catches_up() -> None:
    timer = _directives("stockverify-backup.timer")
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Timer"]["RandomizedDelaySec"] == ["30min"]
    assert re.fullmatch(r"\*-\*-\* \d\d:\d\d:00", timer["Timer"]["OnCalendar"][0])
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def test_the_backup_time_is_a_calendar_systemd_understands() -> None:
    analyze = _analyze()
    spec = _directives("stockverify-backup.timer")["Timer"]["OnCalendar"][0]
    done = subprocess.run([analyze, "calendar", spec], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "Next elapse:" in done.stdout
