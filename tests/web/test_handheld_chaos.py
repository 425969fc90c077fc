"""Chaos on the handheld page: 10,000 scans while the Wi-Fi comes and goes at random (a relay between the
browser and the box that resets every connection when cut), the tab is killed 20 times (its renderer
SIGKILLed, mid-scan and mid-send) and the box restarted 3 times (once by SIGKILL, a power cut).

What the device confirmed is what its IndexedDB holds; the box must end up holding exactly those
10,000 scans, each once, in one gap-free chain.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tests.web.handheld import Cable, Phone, Store, provisioned_server, trusting_browser, trusting_home
from tests.web.test_handheld import counting, writer_id

SCANS = 10_000
TAB_KILLS = 20
BOX_RESTARTS = 3
CHUNK = 250

# Scans typed into the page's field as a keyboard-wedge scanner's Enter delivers them, a chunk at a time
# and without waiting: the test kills the tab while they are being committed.
TYPE = """(codes) => {
    const field = document.getElementById("scan");
    for (const code of codes) {
        field.value = code;
        field.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true, cancelable: true }));
    }
}"""
DEVICE_SCANS = """() => import('/static/handheld/js/db.js')
    .then((db) => db.all('events'))
    .then((rows) => rows.filter((r) => r.type === 'scan.recorded'))
    .then((scans) => scans.map((r) => [r.seq, r.event_id, r.payload.code, r.state]))"""


@pytest.fixture
def box(tmp_path: Path) -> Iterator[ServerProcess]:
    # Leases outlive the box's restarts; heartbeats every 5 s bring the sender back after one.
    env = {"STOCKVERIFY_LEASE_TTL_S": "3600", "STOCKVERIFY_LEASE_RENEW_S": "5"}
    server = provisioned_server(tmp_path / "box", env=env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def renderers(profile: Path) -> list[int]:
    """The renderer processes of the chromium running ``profile``: descendants of its browser process."""
    children: dict[int, list[int]] = {}
    browser = None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(proc.name))
        if f"--user-data-dir={profile}".encode() in cmdline and not any(a.startswith(b"--type=") for a in cmdline):
            browser = int(proc.name)
    assert browser is not None, "the browser process was not found"
    found, todo = [], [browser]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            with contextlib.suppress(OSError):
                if b"--type=renderer" in (Path("/proc") / str(child) / "cmdline").read_bytes():
                    found.append(child)
    return found


def crash(phone: Phone, profile: Path) -> None:
    """SIGKILL the tab's renderer, as Android kills a backgrounded tab: no unload, no last words."""
    killed = renderers(profile)
    assert killed, "no renderer to kill"
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in killed):
        assert time.monotonic() < deadline, "the renderer outlived SIGKILL"
        time.sleep(0.01)
    phone.page.close()


def _state(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def box_events(server: ServerProcess, writer: str) -> list[tuple[int, str, str, bytes]]:
    conn = sqlite3.connect(f"file:{server.data_dir / 'store.db'}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT seq, event_id, type, payload FROM events WHERE writer_id = ? ORDER BY seq", (writer,)
        ).fetchall()
    finally:
        conn.close()


@pytest.mark.timeout(900)
def test_ten_thousand_scans_through_drops_kills_and_restarts(box: ServerProcess, tmp_path: Path) -> None:
    rng = random.Random(77)
    store = Store(box)
    home = trusting_home(tmp_path / "home", box.data_dir / "tls" / "ca.pem")
    assert box.https_port is not None
    wifi = Cable(box.https_port)
    with trusting_browser(home, tmp_path / "profile") as context:
        phone = Phone(context, box, url=wifi.url)
        counting(phone, store, "chaos", ["G-10"])
        writer = writer_id(phone)
        chunks = SCANS // CHUNK
        kill_at = set(rng.sample(range(1, chunks + 8), TAB_KILLS))
        restart_at = {8: False, 18: True, 30: False}  # chunk → SIGKILL?
        kills = restarts = offline_toggles = 0
        offline = False
        typed = 0
        confirmed: list[Any] = []
        started = time.monotonic()
        chunk = 0
        while True:
            confirmed = phone.page.evaluate(DEVICE_SCANS)
            if len(confirmed) >= SCANS:
                break
            chunk += 1
            want = min(CHUNK, SCANS - len(confirmed))
            codes = [f"CHAOS-{typed + i:06d}" for i in range(want)]
            typed += want
            if rng.random() < 0.5:
                offline = not offline
                wifi.set_cut(offline)
                offline_toggles += 1
            phone.page.evaluate(TYPE, codes)
            if chunk in kill_at and kills < TAB_KILLS:
                time.sleep(rng.uniform(0, 0.4))  # mid-scan, mid-send
                crash(phone, tmp_path / "profile")
                kills += 1
                phone.open()
                phone.page.wait_for_selector("body[data-view='count']", timeout=20000)
            else:
                phone.until(f"Number(document.body.dataset.scans || 0) >= {want}", 60)
                phone.page.evaluate("() => { document.body.dataset.scans = '0'; }")
            if chunk in restart_at and restarts < BOX_RESTARTS:
                box.restart(kill=restart_at[chunk])
                restarts += 1
        while kills < TAB_KILLS:  # the sample may have named chunks past the end
            crash(phone, tmp_path / "profile")
            kills += 1
            phone.open()
            phone.page.wait_for_selector("body[data-view='count']", timeout=20000)
        while restarts < BOX_RESTARTS:
            box.restart()
            restarts += 1
        wifi.set_cut(False)
        phone.wait_drained(120)
        confirmed = phone.page.evaluate(DEVICE_SCANS)
        elapsed = time.monotonic() - started

    assert len(confirmed) == SCANS
    assert Counter(state for *_rest, state in confirmed) == {"synced": SCANS}
    events = box_events(box, writer)
    assert [e[0] for e in events] == list(range(1, len(events) + 1))  # one gap-free chain
    scans = [e for e in events if e[2] == "scan.recorded"]
    assert len(scans) == SCANS
    assert sorted(e[1] for e in scans) == sorted(event_id for _seq, event_id, _code, _state in confirmed)
    codes = Counter(code for _seq, _id, code, _state in confirmed)
    assert max(codes.values()) == 1  # no scan was recorded twice on the device either
    assert (kills, restarts) == (TAB_KILLS, BOX_RESTARTS)
    print(
        f"{SCANS} scans, {kills} tab kills, {restarts} box restarts, {offline_toggles} Wi-Fi toggles, "
        f"{typed - SCANS} typed scans lost with a killed tab before they were confirmed, in {elapsed:.0f} s"
    )
