"""``stockverify upgrade``: a new release onto a box that is counting, without losing a scan or the box.

The order is what makes it safe to run in a store: nothing starts while a rack is being counted
(unless a field tech forces it), a backup is taken before anything changes, and the new version must
answer healthy within a time limit or the box goes back to the version and the data it had. What
happened is printed step by step and kept in the journal.

Steps: check no rack lease or session lock is open; take a backup; install the new package (when one is
given); run the migrations; restart the service; wait for ``/api/health`` to say ok. A failure after
the backup rolls back: the previous package from the wheelhouse (when there is one), then the backup
restored (as ``stockverify restore`` does, so the box's own writer follows the restore rule of
docs/operations.md), then the service restarted again.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from appliance.box import open_box
from appliance.settings import Settings
from appliance.store.db import connect
from appliance.store.migrations import current_version
from replication.wire.hlc import wall_ms

DISTRIBUTION = "stockverify-edge"


class UpgradeError(Exception):
    """The upgrade did not start, or it was rolled back; the message says what happened and what next."""


@dataclass(frozen=True)
class Step:
    name: str
    detail: str
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Request:
    """What the field tech asked for."""

    force: bool = False
    package: Path | None = None  # a wheel of the new release; without one, the installed code is the new one
    wheelhouse: Path | None = None  # where the previous release's wheel is kept, for a rollback
    restart: str = "systemctl restart stockverify"
    stop: str = "systemctl stop stockverify"  # before a rollback's restore: no server writes meanwhile
    health_url: str = ""
    health_timeout_s: float = 60.0


@dataclass
class Outcome:
    steps: list[Step] = field(default_factory=list)
    backup: Path | None = None
    rolled_back: bool = False
    schema_before: int = 0
    schema_after: int = 0


def open_counting(settings: Settings) -> list[str]:
    """The racks and sessions someone holds right now: an upgrade would cut them off mid-count."""
    path = settings.data_dir / "store.db"
    if not path.is_file():
        return []
    conn = connect(path)
    try:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        held: list[str] = []
        if "rack_leases" in names:
            held += [
                f"rack {row[0]} ({row[1]})"
                for row in conn.execute(
                    "SELECT coalesce(r.code, l.rack_id), coalesce(u.display_name, l.user_id) FROM rack_leases l"
                    " LEFT JOIN racks r ON r.rack_id = l.rack_id LEFT JOIN users u ON u.user_id = l.user_id"
                    " WHERE l.expires_at > ? ORDER BY 1",
                    (wall_ms(),),
                )
            ]
        if "session_locks" in names:
            held += [
                f"session {row[0]} ({row[1]})"
                for row in conn.execute(
                    "SELECT l.session_id, coalesce(u.display_name, l.user_id) FROM session_locks l"
                    " LEFT JOIN users u ON u.user_id = l.user_id WHERE l.expires_at > ? ORDER BY 1",
                    (wall_ms(),),
                )
            ]
        return held
    finally:
        conn.close()


def upgrade(settings: Settings, request: Request, report: Callable[[Step], None] = lambda step: None) -> Outcome:
    from provisioning import backup as backups

    outcome = Outcome()

    def done(step: Step) -> None:
        outcome.steps.append(step)
        report(step)

    held = open_counting(settings)
    if held and not request.force:
        raise UpgradeError(
            f"{len(held)} rack(s) or session(s) are being counted: {', '.join(held[:5])}. Wait until they are"
            " finished or paused and their leases lapse, or pass --force"
        )
    done(Step("counting", "nothing held" if not held else f"forced past {len(held)} held: {', '.join(held[:5])}"))
    outcome.schema_before = _schema(settings)
    previous = _installed_version()
    taken = backups.backup(settings)
    outcome.backup = taken.path
    done(Step("backup", f"{taken.path} ({taken.size / 1024**2:.1f} MiB in {taken.seconds:.1f} s)"))
    try:
        if request.package is not None:
            _pip("install", "--no-deps", "--force-reinstall", str(request.package))
            done(Step("install", f"{request.package.name} over {DISTRIBUTION} {previous}"))
        _migrate(settings)
        outcome.schema_after = _schema(settings)
        done(Step("migrate", f"schema {outcome.schema_before} → {outcome.schema_after}"))
        _run(request.restart)
        done(Step("restart", request.restart))
        waited = _wait_healthy(_health_url(settings, request), request.health_timeout_s)
        done(Step("health", f"ok after {waited:.1f} s"))
        return outcome
    except UpgradeError as exc:
        done(Step("failed", str(exc), ok=False))
        _roll_back(settings, request, outcome, previous, done)
        raise UpgradeError(
            f"the upgrade failed ({exc}) and was rolled back to {DISTRIBUTION} {previous} and the backup"
            f" {outcome.backup}"
        ) from None


def _roll_back(
    settings: Settings, request: Request, outcome: Outcome, previous: str, done: Callable[[Step], None]
) -> None:
    from provisioning import backup as backups

    outcome.rolled_back = True
    if request.package is not None:
        wheel = _previous_wheel(request.wheelhouse, previous)
        if wheel is None:
            done(Step("reinstall", f"no wheel of {previous} in {request.wheelhouse}: reinstall it by hand", ok=False))
        else:
            _pip("install", "--no-deps", "--force-reinstall", str(wheel))
            done(Step("reinstall", f"{wheel.name}"))
    assert outcome.backup is not None
    try:
        _run(request.stop)
        done(Step("stop", request.stop))
    except UpgradeError as exc:
        done(Step("stop", str(exc), ok=False))
    try:
        backups.restore(outcome.backup, settings.data_dir, force=True)
    except backups.BackupRefused as exc:
        done(Step("restore", f"{exc}: restore {outcome.backup} by hand", ok=False))
        return
    done(Step("restore", f"{outcome.backup} (schema {_schema(settings)})"))
    try:
        _run(request.restart)
        done(Step("restart", request.restart))
    except UpgradeError as exc:
        done(Step("restart", str(exc), ok=False))


def _schema(settings: Settings) -> int:
    conn = connect(settings.data_dir / "store.db")
    try:
        return current_version(conn)
    finally:
        conn.close()


def _migrate(settings: Settings) -> None:
    """Opening the box runs every migration it lacks, each in its own transaction."""
    try:
        open_box(settings).close()
    except Exception as exc:  # the new schema would not apply: roll back
        raise UpgradeError(f"the migrations failed: {exc}") from exc


def _installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def _previous_wheel(wheelhouse: Path | None, version: str) -> Path | None:
    if wheelhouse is None or not wheelhouse.is_dir():
        return None
    prefix = DISTRIBUTION.replace("-", "_") + f"-{version}-"
    found = sorted(wheelhouse.glob(f"{prefix}*.whl"))
    return found[-1] if found else None


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UpgradeError(f"pip {args[0]} failed: {done.stderr.strip()[-500:]}")


def _run(command: str) -> None:
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise UpgradeError(f"{command!r} failed: {(done.stderr or done.stdout).strip()[-500:]}")


def _health_url(settings: Settings, request: Request) -> str:
    return request.health_url or f"http://127.0.0.1:{settings.port}/api/health"


def _wait_healthy(url: str, timeout_s: float) -> float:
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < timeout_s:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - the box's own URL
                body = json.loads(answer.read())
                if answer.status == 200 and body.get("status") == "ok":
                    return time.monotonic() - start
                last = f"status {body.get('status')}: {body.get('reason')}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise UpgradeError(f"the box was not healthy within {timeout_s:.0f} s at {url} ({last})")
