"""Scanners plugged into a running box: found, read, their codes committed in the station's session.

The real box process under umockdev (``tests.hardware.scanner_box``): its udev monitor, python-evdev
and pyserial readers meet a test bed whose scanners are described by three HID models and a CDC-ACM
one, and whose event and tty nodes are ptys the test types into. What the box stored is read from its
own database file, the way a report or a replica would read it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from hardware.keyboard import KeyDecoder, keystrokes
from replication.wire.codec import unpack
from tests.hardware.scanner_box import ScannerBox, station_session

EAN13 = "4006381333931"
UPCA = "036000291452"
CODE128 = "AB-12/x@#%+"  # a UK layout turns @ into " when read as US (InvenTree #10589)
GS = "\x1d"
WAIT_S = 10.0
SLACK = 2
HID = ["zebra_ds2208_hid", "honeywell_vuquest3310g_hid", "datalogic_gryphon_hid"]


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScannerBox]:
    started = ScannerBox(tmp_path_factory.mktemp("scanners") / "box", "--demo")
    yield started
    started.close()


@pytest.fixture(scope="module")
def station(box: ScannerBox) -> dict[str, Any]:
    return station_session(box.server)


def until(what: Callable[[], Any], message: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {message}")


def scanners(client: httpx.Client) -> dict[str, dict[str, Any]]:
    listed = client.get("/api/scanners").json()["scanners"]
    return {row["live"]["devnode"]: row for row in listed if row["live"]}


def reading(client: httpx.Client, box: ScannerBox, model: str) -> dict[str, Any]:
    devnode = box.devnodes[model]
    row: dict[str, Any] = until(
        lambda: (found := scanners(client).get(devnode)) and found["live"]["state"] == "reading" and found,
        f"{model} reading",
    )
    return row


def scans(box: ScannerBox, writer_id: str | None = None) -> list[dict[str, Any]]:
    """The scan events the box committed, from its database file, in each writer's order."""
    with sqlite3.connect(f"file:{box.server.data_dir / 'store.db'}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT writer_id, seq, payload FROM events WHERE type = 'scan.recorded'"
            + (" AND writer_id = ?" if writer_id else "")
            + " ORDER BY writer_id, seq",
            (writer_id,) if writer_id else (),
        ).fetchall()
    return [{"writer_id": w, "seq": s, **unpack(p)} for w, s, p in rows]


def configure(client: httpx.Client, writer_id: str, **changes: Any) -> None:
    answer = client.patch(f"/api/scanners/{writer_id}", json=changes)
    assert answer.status_code == 200, answer.text


def test_every_code_from_every_model_and_layout_is_one_committed_scan_in_the_station_session(
    box: ScannerBox, station: dict[str, Any]
) -> None:
    client = station["supervisor"]
    rack = station["racks"]["G-01"]
    writers: dict[str, str] = {}
    for model in [*HID, "zebra_cdc_acm"]:
        box.plug(model)
        writers[model] = reading(client, box, model)["writer_id"]
        answer = client.put(
            f"/api/scanners/{writers[model]}/station", json={"session_id": station["session_id"], "rack_id": rack}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["station"]["rack"] == "G-01"
    datamatrix = f"]d2010400638133393110ABC123{GS}17260101"
    typed: Counter[tuple[str, str]] = Counter()
    for layout in ["us", "gb", "de", "fr"]:
        for model in HID:
            configure(client, writers[model], layout=layout)
        for model in HID:  # each reopened with its new layout
            until(
                lambda m=model, lay=layout: reading(client, box, m)["live"]["opened_with"]["layout"] == lay,
                f"{model} in {layout}",
            )
        for model in HID:
            for code in [EAN13, UPCA, CODE128, datamatrix]:
                box.type(model, code + "\r", layout=layout)
                typed[(writers[model], code)] += 1
    for code in [EAN13, UPCA, CODE128, datamatrix]:
        box.send("zebra_cdc_acm", code + "\r")
        typed[(writers["zebra_cdc_acm"], code)] += 1
    total = sum(typed.values())
    until(lambda: len(scans(box)) >= total, f"{total} scans committed")
    time.sleep(0.3)  # nothing more arrives: no code was split or doubled
    stored = scans(box)
    assert len(stored) == total == 52
    counted_as = {EAN13: EAN13, UPCA: UPCA, CODE128: CODE128, datamatrix: "04006381333931"}
    expected = Counter({(w, counted_as[c]): n for (w, c), n in typed.items()})
    assert Counter((s["writer_id"], s["code"]) for s in stored) == expected
    assert {(s["session_id"], s["rack_id"], s["qty"]) for s in stored} == {(station["session_id"], rack, 1)}
    for writer_id in writers.values():  # each scanner's chain gap-free from 1
        assert [s["seq"] for s in stored if s["writer_id"] == writer_id] == sorted(
            s["seq"] for s in stored if s["writer_id"] == writer_id
        )
    live = scanners(client)
    assert sum(row["live"]["dropped_chars"] for row in live.values()) == 0
    for model in [*HID, "zebra_cdc_acm"]:
        box.unplug(model)
    until(lambda: not scanners(client), "all unplugged")


def test_an_unplug_mid_code_drops_only_that_code_and_the_replugged_scanner_goes_on(
    box: ScannerBox, station: dict[str, Any]
) -> None:
    client = station["supervisor"]
    box.plug("honeywell_vuquest3310g_hid")
    row = reading(client, box, "honeywell_vuquest3310g_hid")
    writer_id = row["writer_id"]
    client.put(
        f"/api/scanners/{writer_id}/station",
        json={"session_id": station["session_id"], "rack_id": station["racks"]["G-02"]},
    )
    configure(client, writer_id, layout="us")
    until(lambda: reading(client, box, "honeywell_vuquest3310g_hid")["live"]["opened_with"]["layout"] == "us", "in us")
    before = len(scans(box, writer_id))
    box.type("honeywell_vuquest3310g_hid", f"{EAN13}\r{UPCA}\r0123")  # two codes, then 4 keys of a third
    until(lambda: len(scans(box, writer_id)) == before + 2, "the two complete codes")
    box.unplug("honeywell_vuquest3310g_hid")
    until(lambda: "dropped characters" in box.server.output(), "the drop said in the journal")
    assert "chars=4 reason=vanished" in box.server.output()
    box.plug("honeywell_vuquest3310g_hid")
    again = reading(client, box, "honeywell_vuquest3310g_hid")
    assert again["writer_id"] == writer_id  # the same scanner: same writer, same station
    assert again["station"]["rack"] == "G-02"
    box.type("honeywell_vuquest3310g_hid", f"{EAN13}\r")
    until(lambda: len(scans(box, writer_id)) == before + 3, "the code after the replug")
    stored = scans(box, writer_id)[before:]
    assert [s["code"] for s in stored] == [EAN13, UPCA, EAN13]
    assert [s["seq"] for s in stored] == list(range(stored[0]["seq"], stored[0]["seq"] + 3))
    box.unplug("honeywell_vuquest3310g_hid")


def _resources(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def test_500_plug_cycles_leave_no_descriptor_or_thread_behind(box: ScannerBox, station: dict[str, Any]) -> None:
    """500 times udev says the scanner went and came back (the box closes its reader, forgets it, finds it
    and opens a new one), and 5 times it is really pulled out (its node hangs up under the reader;
    umockdev's test bed takes no more real replugs than a few dozen in one process)."""
    client = station["supervisor"]
    pid = box.server.process.pid
    model = "datalogic_gryphon_hid"
    box.plug(model)
    writer_id = reading(client, box, model)["writer_id"]
    client.delete(f"/api/scanners/{writer_id}/station")  # its codes are then kept, not counted
    configure(client, writer_id, layout="us")

    def reading_since() -> int:
        row = scanners(client).get(box.devnodes[model])
        return row["live"]["plugged_at"] if row and row["live"]["state"] == "reading" else 0  # type: ignore[no-any-return]

    def cycle(i: int) -> None:
        before = reading_since()
        box.udev_cycle(model)
        until(lambda: reading_since() > before, "found and read again")
        if i % 50 == 0:
            box.type(model, f"{UPCA}\r")
            until(lambda: scanners(client)[box.devnodes[model]]["live"]["codes"] == 1, "the code written")

    for i in range(3):  # first-use allocations: the keymap, umockdev's sockets, the HTTP pool
        cycle(i + 1)
    time.sleep(0.5)
    fds, threads = _resources(pid)
    counted = len(scans(box))
    for i in range(500):
        cycle(i)
    placeholders = 0
    for _ in range(5):
        placeholders = box.unplug(model)["placeholders"]
        until(lambda: box.devnodes[model] not in scanners(client), "unplugged")
        box.plug(model)
        reading(client, box, model)
    held_before = placeholders - 5

    def settled() -> tuple[int, int] | None:
        now_fds, now_threads = _resources(pid)
        # Per real replug the test bed keeps two descriptors: the harness's placeholder for the old pty's
        # master, and umockdev's ioctl socket for the old node.
        box_fds = now_fds - 2 * (placeholders - held_before)
        # A pool may still grow by one (the executor's threads, the test client's connections); a leak
        # per cycle would show hundreds.
        return (box_fds, now_threads) if box_fds <= fds + SLACK and now_threads <= threads + SLACK else None

    until(settled, f"descriptors and threads back to {(fds, threads)} (now {_resources(pid)})", timeout=15)
    assert len(scans(box)) == counted
    kept = client.get("/api/scanners/kept").json()
    assert sum(1 for k in kept if k["code"] == UPCA and k["reason"] == "UNASSIGNED") == 10
    assert "Traceback" not in box.server.output()
    box.unplug(model)


def test_doctor_lists_each_scanner_plugged_in_and_what_it_counts_for(box: ScannerBox, station: dict[str, Any]) -> None:
    client = station["supervisor"]
    box.plug("zebra_ds2208_hid")
    box.plug("datalogic_gryphon_hid")
    zebra = reading(client, box, "zebra_ds2208_hid")
    datalogic = reading(client, box, "datalogic_gryphon_hid")
    client.put(
        f"/api/scanners/{zebra['writer_id']}/station",
        json={"session_id": station["session_id"], "rack_id": station["racks"]["G-02"]},
    )
    client.delete(f"/api/scanners/{datalogic['writer_id']}/station")
    done = box.run("doctor", "--data-dir", str(box.server.data_dir), "--json")
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    zebra_check = checks[f"scanner {box.devnodes['zebra_ds2208_hid']}"]
    assert zebra_check["status"] == "ok"
    assert zebra_check["detail"] == f"{zebra['name']}: counts for Vani (verifier)'s session, rack G-02"
    datalogic_check = checks[f"scanner {box.devnodes['datalogic_gryphon_hid']}"]
    kept = sum(1 for k in client.get("/api/scanners/kept").json() if k["scanner_id"] == datalogic["writer_id"])
    assert datalogic_check["status"] == ("warn" if kept else "ok")
    assert datalogic_check["detail"].endswith(
        f"counts for no station; its codes are kept for a supervisor ({kept} waiting)"
    )
    assert checks["scanner_rules"]["status"] == "warn"  # this machine has not been provisioned
    box.unplug("zebra_ds2208_hid")
    box.unplug("datalogic_gryphon_hid")


def test_a_scanner_typing_in_another_layout_than_the_box_reads_is_pointed_out(
    box: ScannerBox, station: dict[str, Any]
) -> None:
    client = station["supervisor"]
    box.plug("zebra_ds2208_hid")
    writer_id = reading(client, box, "zebra_ds2208_hid")["writer_id"]
    for layout in ("us", "fr"):  # from another layout, so the reader is seen to reopen in French
        configure(client, writer_id, layout=layout)
        until(
            lambda lay=layout: reading(client, box, "zebra_ds2208_hid")["live"]["opened_with"]["layout"] == lay,
            f"read as {layout}",
        )
    box.type("zebra_ds2208_hid", f"{EAN13}\r", layout="us")  # the scanner itself is set to US
    row = until(
        lambda: (r := scanners(client)[box.devnodes["zebra_ds2208_hid"]])["live"]["recent"] and r, "the code read"
    )
    assert "keyboard layout" in row["live"]["error"]
    french = KeyDecoder("fr")
    read_as = french.feed_all(keystrokes(f"{EAN13}\r", "us"))
    assert row["live"]["recent"][0]["code"] == read_as[0] == '\'àà-"_&"""ç"&'  # the US keys, read as French
    configure(client, writer_id, layout="us")
    box.unplug("zebra_ds2208_hid")
