"""Scanners on the box as writers: enrolled once, assigned to stations, their codes through the record path.

A real store on disk (the demo catalogue), the domain called as the scanner service calls it: in the
box's write jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.auth.people import User
from appliance.box import Box, open_box
from appliance.counting import runs, sessions, stations
from appliance.demo.seed import seed_demo
from appliance.errors import StockVerifyError
from appliance.replica import store as replicas
from appliance.settings import Settings
from appliance.store.eventlog import rebuild, verify_writer_chain, version_vector
from appliance.store.identity import public_bytes
from hardware.udev import ScannerDevice, ScannerKind
from replication.wire.hlc import wall_ms
from tests.conftest import make_settings, person

ZEBRA = ScannerDevice(
    ScannerKind.HID,
    "/dev/input/event11",
    "usb:05e0:1200:S_N_2106",
    "05e0",
    "1200",
    "Symbol Bar Code Scanner",
    "S_N_2106",
)
DATALOGIC = ScannerDevice(
    ScannerKind.HID, "/dev/input/event13", "path:pci-0000:00:14.0-usb-0:3:1.0", "05f9", "2206", "Gryphon", None
)
ACM = ScannerDevice(ScannerKind.SERIAL, "/dev/ttyACM0", "usb:05e0:1900:ACM1", "05e0", "1900", "Symbol Scanner", "ACM1")


@dataclass
class Store:
    box: Box
    supervisor: User
    verifier: User
    run_id: str
    session_id: str
    racks: dict[str, str]  # code -> id
    products: list[tuple[str, str]]  # (GTIN-14, product_id)

    def write(self, job: Any) -> Any:
        return self.box.db.write(job)

    def enroll(self, device: ScannerDevice = ZEBRA) -> str:
        box = self.box
        return str(self.write(lambda conn: stations.enroll(conn, box.log, box.node, device))["writer_id"])

    def assign(self, scanner_id: str, rack: str | None = "G-01", session_id: str | None = None) -> dict[str, Any]:
        box, rack_id = self.box, self.racks.get(rack or "", rack)
        return dict(
            self.write(
                lambda conn: stations.assign(
                    conn, box.log, self.supervisor, scanner_id, session_id or self.session_id, rack_id
                )
            )
        )

    def read(self, scanner_id: str, *codes: str) -> list[stations.Result]:
        box, now = self.box, wall_ms()
        reads = [stations.Read(code, now + i) for i, code in enumerate(codes)]
        return list(self.write(lambda conn: stations.record_codes(conn, box.log, box.node, scanner_id, reads)))

    def counted(self, session_id: str | None = None) -> dict[str, int]:
        """Units per scanned code in the session, from the counters every report reads."""
        rows = self.box.db.read().execute(
            "SELECT code, sum(p - n) FROM scan_counts WHERE session_id = ? GROUP BY code",
            (session_id or self.session_id,),
        )
        return dict(rows)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    box = open_box(settings)
    seed_demo(box)
    supervisor, verifier = person(box, "supervisor"), person(box, "verifier")

    def plan(conn: Any) -> tuple[str, str]:
        run_id = runs.create_run(conn, box.log, supervisor, name="Back room", kind="hard")
        session_id = sessions.create_session(
            conn, box.log, supervisor, run_id, verifier_id=verifier.user_id, rack_codes=["G-01", "G-02"]
        )
        runs.start_run(conn, box.log, supervisor, run_id)
        sessions.start_session(conn, box.log, verifier, session_id)
        return run_id, session_id

    run_id, session_id = box.db.write(plan)
    conn = box.db.read()
    racks = {r[0]: r[1] for r in conn.execute("SELECT code, rack_id FROM racks WHERE code IN ('G-01', 'G-02', 'G-03')")}
    products = [(r[0], r[1]) for r in conn.execute("SELECT code, product_id FROM product_codes ORDER BY code LIMIT 3")]
    yield Store(box, supervisor, verifier, run_id, session_id, racks, products)
    box.close()


def _refused(code: str, job: Any) -> StockVerifyError:
    with pytest.raises(StockVerifyError) as caught:
        job()
    assert caught.value.code == code, caught.value.to_dict()
    return caught.value


# -- enrolment --------------------------------------------------------------------------------------
def test_a_scanner_is_enrolled_once_and_known_again_after_a_replug(store: Store) -> None:
    first = store.enroll(ZEBRA)
    again = store.enroll(ScannerDevice(**{**ZEBRA.__dict__, "devnode": "/dev/input/event19"}))  # another socket
    other = store.enroll(DATALOGIC)
    assert first == again != other
    conn = store.box.db.read()
    writer = conn.execute("SELECT kind, public_key FROM writers WHERE writer_id = ?", (first,)).fetchone()
    assert writer["kind"] == "scanner"
    # The box holds its key: derived from the node key, so a restored node key brings it back.
    assert writer["public_key"] == public_bytes(stations.scanner_key(store.box.node.key, first))
    names = {row["writer_id"]: row["name"] for row in stations.list_scanners(conn)}
    assert names == {first: "Symbol Bar Code Scanner (…2106)", other: "Gryphon (port 3)"}
    assert [r["suffix"] for r in stations.list_scanners(conn)] == ["enter", "enter"]


def test_settings_are_checked_before_they_are_kept(store: Store) -> None:
    box, hid, serial = store.box, store.enroll(ZEBRA), store.enroll(ACM)

    def configure(scanner_id: str, **changes: Any) -> Any:
        return lambda: store.write(
            lambda conn: stations.configure(conn, box.log, store.supervisor, scanner_id, **changes)
        )

    _refused("VALIDATION", configure(hid, layout="no-such-layout"))
    _refused("VALIDATION", configure(hid, suffix="cr"))  # a wedge scanner ends a code with a key
    _refused("VALIDATION", configure(serial, baud=12345))
    _refused("VALIDATION", configure(serial))
    done = configure(hid, layout="de", name="  Back room table  ")()
    assert (done["layout"], done["name"]) == ("de", "Back room table")
    assert configure(serial, suffix="crlf", baud=115200)()["suffix"] == "crlf"


# -- stations -----------------------------------------------------------------------------------------
def test_codes_of_a_station_count_in_its_session_with_their_gs1_fields(store: Store) -> None:
    scanner = store.enroll()
    station = store.assign(scanner)["station"]
    assert (station["rack"], station["verifier_name"], station["session_status"]) == (
        "G-01",
        "Vani (verifier)",
        "IN_PROGRESS",
    )
    (gtin, product_id), (other_gtin, _) = store.products[0], store.products[1]
    datamatrix = f"]d201{gtin}17271231" + "10LOT7\x1d21SN-0001"
    results = store.read(scanner, gtin[1:], f"]E0{other_gtin[1:]}", datamatrix, "NOT-IN-CATALOGUE", gtin[1:])
    assert [r.outcome for r in results] == ["counted"] * 5
    assert [r.counted_as for r in results] == [gtin[1:], other_gtin[1:], gtin, "NOT-IN-CATALOGUE", gtin[1:]]
    assert results[2].product_id == product_id and results[3].product_id is None
    assert results[2].fields == {
        "gtin": gtin,
        "batch": "LOT7",
        "expiry": "2027-12-31",
        "serial": "SN-0001",
        "symbology": "]d2",
    }
    assert store.counted() == {gtin[1:]: 2, other_gtin[1:]: 1, gtin: 1, "NOT-IN-CATALOGUE": 1}
    conn = store.box.db.read()
    attrs = dict(
        conn.execute(
            "SELECT name, value FROM item_attrs WHERE session_id = ? AND product_id = ?", (store.session_id, product_id)
        ).fetchall()
    )
    assert {k: attrs[k] for k in ("batch", "expiry_date")} == {"batch": "LOT7", "expiry_date": "2027-12-31"}
    serials = conn.execute("SELECT serial FROM serial_adds WHERE session_id = ?", (store.session_id,)).fetchall()
    assert [r[0] for r in serials] == ["SN-0001"]
    # The scanner's chain is whole and its signed head verifies with the key enrolled for it.
    report = verify_writer_chain(conn, scanner)
    assert report.ok, report.problems
    assert (report.events, report.signed_seq) == (7, 7)  # 5 scans, the DataMatrix's attributes and serial


def test_a_station_is_refused_where_every_code_would_be_held(store: Store) -> None:
    scanner = store.enroll()
    _refused("RACK_NOT_IN_SESSION", lambda: store.assign(scanner, rack="G-03"))
    _refused("RACK_NOT_IN_SESSION", lambda: store.assign(scanner, rack=None))
    _refused("SESSION_NOT_FOUND", lambda: store.assign(scanner, session_id="01NOSUCHSESSION0000000000"))
    box = store.box
    store.write(lambda conn: sessions.submit_session(conn, box.log, store.verifier, store.session_id))
    _refused("SESSION_NOT_OPEN", lambda: store.assign(scanner))
    assert stations.get_scanner(box.db.read(), scanner)["session_id"] is None


def test_codes_read_after_the_session_closed_are_stored_and_held(store: Store) -> None:
    scanner = store.enroll()
    store.assign(scanner)
    box = store.box
    store.write(lambda conn: sessions.submit_session(conn, box.log, store.verifier, store.session_id))
    results = store.read(scanner, store.products[0][0])
    assert [(r.outcome, r.reason) for r in results] == [("held", "SESSION_NOT_IN_PROGRESS")]
    held = box.db.read().execute("SELECT count(*) FROM held_events WHERE writer_id = ?", (scanner,)).fetchone()[0]
    assert held == 1


# -- kept codes ---------------------------------------------------------------------------------------
def test_codes_of_an_unassigned_scanner_are_kept_then_counted_by_a_supervisor(store: Store) -> None:
    scanner, gtin = store.enroll(), store.products[0][0]
    results = store.read(scanner, gtin, "]C1" + "X" * 70, gtin)
    assert [(r.outcome, r.reason) for r in results] == [("kept", "UNASSIGNED")] * 3
    assert store.counted() == {}
    box = store.box
    kept = stations.kept(box.db.read())
    assert [k["code"] for k in kept] == [gtin, "]C1" + "X" * 70, gtin]
    assert stations.list_scanners(box.db.read())[0]["kept_open"] == 3

    def decide(ids: list[str], decision: str, **how: Any) -> Any:
        return lambda: store.write(
            lambda conn: stations.decide_kept(conn, box.log, box.node, store.supervisor, ids, decision, **how)
        )

    ids = [k["event_id"] for k in kept]
    _refused("VALIDATION", decide([ids[0]], "discarded"))  # a reason is required
    _refused("VALIDATION", decide([ids[0]], "counted"))  # and a session to count in
    # The over-long code cannot be counted; nothing of the decision is then taken.
    _refused("CODE_TOO_LONG", decide(ids, "counted", session_id=store.session_id, rack_id=store.racks["G-02"]))
    assert store.counted() == {} and len(stations.kept(box.db.read())) == 3
    counted = decide([ids[0], ids[2]], "counted", session_id=store.session_id, rack_id=store.racks["G-02"])()
    assert [r.outcome for r in counted] == ["counted", "counted"]
    assert store.counted() == {gtin: 2}
    decide([ids[1]], "discarded", reason="a test label, not stock")()
    assert stations.kept(box.db.read()) == []
    _refused("ALREADY_DECIDED", decide([ids[0]], "discarded", reason="twice"))
    decided = {k["event_id"]: k["decision"] for k in stations.kept(box.db.read(), open_only=False)}
    assert decided == {ids[0]: "counted", ids[1]: "discarded", ids[2]: "counted"}


def test_a_code_too_long_to_count_is_kept_while_the_rest_count(store: Store) -> None:
    scanner, gtin = store.enroll(), store.products[0][0]
    store.assign(scanner)
    results = store.read(scanner, gtin, "Y" * 65, gtin)
    assert [(r.outcome, r.reason) for r in results] == [("counted", None), ("kept", "CODE_TOO_LONG"), ("counted", None)]
    assert store.counted() == {gtin: 2}


def test_a_peer_box_holds_the_same_scanners_and_scans_and_cannot_write_for_them(store: Store, tmp_path: Path) -> None:
    box = store.box
    scanner, gtin = store.enroll(), store.products[0][0]
    store.assign(scanner)
    store.read(scanner, gtin, f"]d201{gtin}17271231" + "10LOT7\x1d21SN-0002")
    store.write(lambda conn: stations.unassign(conn, box.log, store.supervisor, scanner))
    store.read(scanner, "READ-WHILE-UNASSIGNED")
    peer = open_box(make_settings(tmp_path / "peer", store_id=box.node.store_id))
    try:
        while page := replicas.delta(box.db.read(), box.node.store_id, version_vector(peer.db.read()), 2000):
            if not page["events"]:
                break
            peer.db.write(lambda conn, page=page: replicas.apply_page(conn, peer.log, box.node.store_id, page, None))
        ours, theirs = box.db.read(), peer.db.read()
        assert stations.list_scanners(theirs) == stations.list_scanners(ours)
        assert stations.kept(theirs, open_only=False) == stations.kept(ours, open_only=False)
        counts = "SELECT session_id, rack_id, code, writer_id, p, n FROM scan_counts ORDER BY 1, 2, 3, 4"
        assert [tuple(r) for r in theirs.execute(counts)] == [tuple(r) for r in ours.execute(counts)]
        assert verify_writer_chain(theirs, scanner).ok
        # Only the box the scanner is plugged into holds its key: a peer cannot write its chain.
        _refused(
            "SCANNER_ON_OTHER_BOX",
            lambda: peer.db.write(
                lambda conn: stations.record_codes(conn, peer.log, peer.node, scanner, [stations.Read(gtin, wall_ms())])
            ),
        )
    finally:
        peer.close()


def test_stations_and_kept_codes_fold_again_to_the_same_state(store: Store) -> None:
    first, second = store.enroll(ZEBRA), store.enroll(DATALOGIC)
    store.assign(first)
    store.assign(second, rack="G-02")
    box = store.box
    store.write(lambda conn: stations.unassign(conn, box.log, store.supervisor, second))
    store.read(second, "KEPT-1")
    store.write(lambda conn: stations.configure(conn, box.log, store.supervisor, first, layout="fr"))
    before = (stations.list_scanners(box.db.read()), stations.kept(box.db.read(), open_only=False))
    store.write(rebuild)
    assert (stations.list_scanners(box.db.read()), stations.kept(box.db.read(), open_only=False)) == before
    assert [s["station"] and s["station"]["rack"] for s in before[0]] == ["G-01", None]
