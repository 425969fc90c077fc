"""The box works inside the unit's seccomp filter and with write+execute memory refused.

``SystemCallFilter=`` and ``MemoryDenyWriteExecute=`` are the sandbox lines that could break the box at
run time rather than at load: a call CPython, uvloop, SQLite, argon2 or the network code makes outside
the filter fails with EPERM, a JIT or a libffi closure needs memory both writable and executable. A test
machine rarely runs systemd as PID 1, so the same restrictions are put on a real server process here by
the kernel interfaces systemd itself uses: a seccomp filter built from ``systemd-analyze
syscall-filter``'s groups (allowed: the unit's allow list minus its deny list; anything else: EPERM) and
``PR_SET_MDWE``. The box then starts, answers, logs people in, resolves a barcode, notifies and stops;
the nightly backup (the same filter in its own unit) writes its archive.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from appliance.box import open_box
from tests.conftest import FAST_PASSWORD_ENV, free_port, make_settings, need

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "stockverify.service"
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

# Runs in the process that becomes the server: no new privileges, MDWE, the filter, then exec.
LAUNCHER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(65, 1, 0, 0, 0) == 0, ctypes.get_errno()  # PR_SET_MDWE, refuse exec gain
seccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)
seccomp.seccomp_init.restype = ctypes.c_void_p
seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = seccomp.seccomp_init(0x00050000 | 1)  # SCMP_ACT_ERRNO(EPERM)
for name in open(sys.argv[1]).read().split():
    nr = seccomp.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:  # a name of another architecture does not resolve here
        assert seccomp.seccomp_rule_add(ctx, 0x7FFF0000, nr, 0) == 0, name  # SCMP_ACT_ALLOW
assert seccomp.seccomp_load(ctx) == 0
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def _expand(analyze: str, group: str, seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    seen.add(group)
    listing = subprocess.run([analyze, "syscall-filter", group], capture_output=True, text=True, check=True)
    names: set[str] = set()
    for line in listing.stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item.startswith("@"):
            if item not in seen:
                names |= _expand(analyze, item, seen)
        else:
            names.add(item)
    return names


def _unit_filter(analyze: str) -> set[str]:
    """The calls the unit's SystemCallFilter= lines leave allowed."""
    allowed: set[str] = set()
    for line in UNIT.read_text().splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.partition("=")[2]
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.removeprefix("~").split():
            names |= _expand(analyze, item) if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    return allowed


def _mdwe_available() -> bool:
    """Ask in a throwaway child: the setting cannot be undone in this process."""
    probe = "import ctypes; raise SystemExit(ctypes.CDLL(None).prctl(65, 0, 0, 0, 0))"
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


@pytest.mark.slow
def test_the_box_runs_inside_the_units_syscall_filter_with_mdwe(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        need("systemd-analyze is not installed (apt-get install systemd)")
    assert analyze is not None
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        need("libseccomp is not installed (apt-get install libseccomp2; systemd depends on it)")
    if not _mdwe_available():
        need("this kernel has no PR_SET_MDWE (Linux 6.3 or later)")
    allowed = _unit_filter(analyze)
    assert "setuid" not in allowed
    assert "setrlimit" not in allowed
    assert "openat" in allowed
    (tmp_path / "allowed").write_text("\n".join(sorted(allowed)))
    (tmp_path / "launcher.py").write_text(LAUNCHER)

    notify_name = f"stockverify-sandbox-{os.getpid()}-{time.monotonic_ns()}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind("\0" + notify_name)  # abstract: no path length to worry about
    notify.settimeout(60)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, str(tmp_path / "launcher.py"), str(tmp_path / "allowed")),
                *("-m", "appliance", "serve", "--data-dir", str(tmp_path / "box"), "--demo"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                **FAST_PASSWORD_ENV,
                "STOCKVERIFY_MDNS": "false",
                "NOTIFY_SOCKET": "@" + notify_name,
                "WATCHDOG_USEC": "1000000",
            },
        )
    try:
        heard: list[bytes] = []
        while b"READY=1" not in b"\n".join(heard):
            assert process.poll() is None, log_path.read_text(errors="replace")
            heard.append(notify.recv(4096))
        assert httpx.get(url + "/api/health", timeout=5).status_code == 200
        login = httpx.post(
            url + "/api/auth/login", json={"username": "supervisor", "password": "supervisor-demo"}, timeout=30
        )
        assert login.status_code == 200, login.text
        token = login.json()["token"]
        resolved = httpx.get(
            url + "/api/products/resolve",
            params={"code": "4006381333931"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert resolved.status_code == 200, resolved.text
        time.sleep(1.2)
        notify.settimeout(2)
        assert notify.recv(4096) == b"WATCHDOG=1"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        output = log_path.read_text(errors="replace")
        assert "Application shutdown complete" in output, output
        assert "Operation not permitted" not in output, output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notify.close()


@pytest.mark.slow
def test_the_backup_runs_inside_the_same_filter(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        need("systemd-analyze is not installed (apt-get install systemd)")
    assert analyze is not None
    if not _mdwe_available():
        need("this kernel has no PR_SET_MDWE (Linux 6.3 or later)")
    open_box(make_settings(tmp_path / "box")).close()
    (tmp_path / "allowed").write_text("\n".join(sorted(_unit_filter(analyze))))
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    done = subprocess.run(
        [
            *(sys.executable, str(tmp_path / "launcher.py"), str(tmp_path / "allowed")),
            *("-m", "appliance", "backup", "--data-dir", str(tmp_path / "box"), "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **FAST_PASSWORD_ENV, "STOCKVERIFY_MDNS": "false"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert Path(json.loads(done.stdout)["path"]).is_file()
