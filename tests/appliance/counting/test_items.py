"""Items on real SQLite boxes: quantities folded from scans, "set to N", undo, damage, attributes, serials,
where scans may go, and codes that resolve later; photos over real HTTP, kept on disk by their hash."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

from appliance.auth import people
from appliance.auth.people import User
from appliance.box import Box
from appliance.catalog import layout, product_import
from appliance.counting import codes, items, rollups, runs, sessions
from appliance.errors import StockVerifyError, ValidationFailed
from replication.wire.codec import unpack
from tests.conftest import DEMO_PASSWORDS, ServerProcess

T = TypeVar("T")

CATALOG = (
    b"sku,barcodes,name,category,uom,mrp,expected_qty\n"
    b"SKU-A,4006381333931,Alpha,Food,EA,10.00,5\n"
    b"SKU-B,5901234123457,Beta,Food,EA,2.50,3\n"
    b"SKU-C,,Gamma,Home,EA,1.00,0\n"
)
BARCODE_A = "4006381333931"
NEW_BARCODE = "9780306406157"  # known to no product until a later import


@dataclass
class Store:
    """A running hard count: v1 holds an IN_PROGRESS session on rack G-01, v2 one on G-02."""

    box: Box
    boss: User
    v1: User
    v2: User
    run_id: str
    s1: str
    s2: str
    a: str  # product ids
    b: str
    c: str

    def do(self, command: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.box.db.write(lambda conn: command(conn, self.box.log, *args, **kwargs))

    def refused(self, command: Callable[..., Any], *args: Any, **kwargs: Any) -> StockVerifyError:
        with pytest.raises(StockVerifyError) as caught:
            self.do(command, *args, **kwargs)
        return caught.value

    def read(self) -> sqlite3.Connection:
        return self.box.db.read()

    def log_position(self) -> int:
        return int(self.read().execute("SELECT coalesce(max(pos), 0) FROM events").fetchone()[0])

    def events_since(self, position: int) -> list[tuple[str, dict[str, Any]]]:
        rows = self.read().execute("SELECT type, payload FROM events WHERE pos > ? ORDER BY pos", (position,))
        return [(row["type"], unpack(row["payload"])) for row in rows]

    def qty(self, product_id: str, session_id: str | None = None) -> int:
        return items.item_quantity(self.read(), session_id or self.s1, product_id)

    def item(self, product_id: str, session_id: str | None = None) -> dict[str, Any]:
        held = items.session_items(self.read(), session_id or self.s1)["items"]
        found = [entry for entry in held if entry["product_id"] == product_id]
        assert len(found) == 1, held
        return found[0]


@pytest.fixture
def store(box: Box) -> Store:
    plan = product_import.parse_file(CATALOG, "catalog.csv")

    def job(conn: sqlite3.Connection) -> Store:
        log = box.log
        boss = people.add_user(conn, log, "boss", "Boss", "supervisor", "x")
        v1 = people.add_user(conn, log, "v1", "V1", "verifier", "x")
        v2 = people.add_user(conn, log, "v2", "V2", "verifier", "x")
        layout.add_floor(conn, log, "G", "Ground")
        for rack in ("G-01", "G-02"):
            layout.add_rack(conn, log, "G", rack)
        product_import.commit(conn, log, plan)
        run_id = runs.create_run(conn, log, boss, name="Hard count", kind="hard")
        s1 = sessions.create_session(conn, log, boss, run_id, verifier_id=v1.user_id, rack_codes=["G-01"])
        s2 = sessions.create_session(conn, log, boss, run_id, verifier_id=v2.user_id, rack_codes=["G-02"])
        runs.start_run(conn, log, boss, run_id)
        sessions.start_session(conn, log, v1, s1)
        sessions.start_session(conn, log, v2, s2)
        ids = {row["sku"]: row["product_id"] for row in conn.execute("SELECT sku, product_id FROM products")}
        return Store(box, boss, v1, v2, run_id, s1, s2, ids["SKU-A"], ids["SKU-B"], ids["SKU-C"])

    return box.db.write(job)


# -- quantities -----------------------------------------------------------------------------------
def test_the_qty_is_the_sum_of_the_scans_whatever_code_was_scanned(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A)
    store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A, qty=4)
    store.do(items.record_scan, store.v1, store.s1, code="sku-a", qty=2)  # the SKU typed, any case

    assert store.qty(store.a) == 7
    assert store.item(store.a)["qty"] == 7 and store.item(store.a)["sku"] == "SKU-A"
    assert store.qty(store.a, store.s2) == 0  # another session's count is its own


def test_a_scan_records_one_event_with_the_session_rack_and_claimed_product(store: Store) -> None:
    before = store.log_position()

    scan = store.do(items.record_scan, store.v1, store.s1, code=f"  {BARCODE_A} ", qty=2, product_id=store.a)

    recorded = store.events_since(before)
    assert [kind for kind, _ in recorded] == ["scan.recorded"]
    payload = recorded[0][1]
    assert payload == scan.payload
    rack = store.read().execute("SELECT rack_id FROM racks WHERE code = 'G-01'").fetchone()[0]
    assert (payload["code"], payload["qty"], payload["rack_id"], payload["product_id"]) == (BARCODE_A, 2, rack, store.a)
    assert payload["by"] == store.v1.user_id


@pytest.mark.parametrize("qty", [0, -1, 100_001, True])
def test_a_scan_qty_outside_1_to_100000_is_refused(store: Store, qty: int) -> None:
    error = store.refused(items.record_scan, store.v1, store.s1, code=BARCODE_A, qty=qty)

    assert error.code == "VALIDATION" and error.details == {"field": "qty"}
    assert store.qty(store.a) == 0


@pytest.mark.parametrize(("start", "target", "delta"), [(5, 2, -3), (2, 7, 5), (0, 4, 4), (3, 0, -3)])
def test_set_to_n_records_the_adjustment_and_the_item_shows_n(
    store: Store, start: int, target: int, delta: int
) -> None:
    if start:
        store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A, qty=start)
    before = store.log_position()

    store.do(items.set_quantity, store.v1, store.s1, store.a, target)

    recorded = store.events_since(before)
    assert [kind for kind, _ in recorded] == ["count.adjusted"]
    assert recorded[0][1] == {
        "session_id": store.s1,
        "product_id": store.a,
        "delta": delta,
        "target": target,
        "by": store.v1.user_id,
    }
    assert store.qty(store.a) == target and store.item(store.a)["qty"] == target


def test_set_to_the_current_qty_records_nothing(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A, qty=3)
    before = store.log_position()

    store.do(items.set_quantity, store.v1, store.s1, store.a, 3)

    assert store.events_since(before) == []


def test_scans_after_a_set_to_n_add_to_n(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A, qty=9)
    store.do(items.set_quantity, store.v1, store.s1, store.a, 4)

    store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A, qty=2)

    assert store.qty(store.a) == 6


def test_set_to_n_of_an_unknown_product_is_not_found(store: Store) -> None:
    error = store.refused(items.set_quantity, store.v1, store.s1, "no-such-product", 1)

    assert error.code == "PRODUCT_NOT_FOUND" and error.status == 404


def test_undo_records_scan_undone_and_drops_the_qty(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A, qty=2)
    wrong = store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A, qty=5)
    before = store.log_position()

    store.do(items.undo_scan, store.v1, store.s1, wrong.event_id)

    recorded = store.events_since(before)
    assert [kind for kind, _ in recorded] == ["scan.undone"]
    assert (recorded[0][1]["undoes"], recorded[0][1]["qty"], recorded[0][1]["code"]) == (wrong.event_id, 5, BARCODE_A)
    assert store.qty(store.a) == 2
    # The scan itself stays in the log: undo negates, it does not delete.
    assert store.read().execute("SELECT 1 FROM events WHERE event_id = ?", (wrong.event_id,)).fetchone()


def test_a_second_undo_of_the_same_scan_is_refused(store: Store) -> None:
    scan = store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A, qty=5)
    store.do(items.undo_scan, store.v1, store.s1, scan.event_id)

    error = store.refused(items.undo_scan, store.v1, store.s1, scan.event_id)

    assert error.code == "SCAN_ALREADY_UNDONE" and error.status == 409
    assert store.qty(store.a) == 0


def test_undo_of_a_scan_from_another_session_or_of_no_scan_is_not_found(store: Store) -> None:
    theirs = store.do(items.record_scan, store.v2, store.s2, code=BARCODE_A, qty=5)
    store.do(items.set_damage, store.v1, store.s1, store.a, 1)
    damage_event = store.read().execute("SELECT event_id FROM events WHERE type = 'damage.adjusted'").fetchone()[0]

    for event_id in (theirs.event_id, damage_event, "no-such-event"):
        assert store.refused(items.undo_scan, store.v1, store.s1, event_id).code == "SCAN_NOT_FOUND"
    assert store.qty(store.a, store.s2) == 5


def test_damage_is_set_to_n(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A, qty=6)
    store.do(items.set_damage, store.v1, store.s1, store.a, 4)
    before = store.log_position()

    store.do(items.set_damage, store.v1, store.s1, store.a, 1)

    recorded = store.events_since(before)
    assert [kind for kind, _ in recorded] == ["damage.adjusted"]
    assert (recorded[0][1]["delta"], recorded[0][1]["target"]) == (-3, 1)
    assert items.damage_quantity(store.read(), store.s1, store.a) == 1
    assert store.item(store.a)["damage_qty"] == 1 and store.item(store.a)["qty"] == 6


# -- attributes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("attrs", "field"),
    [
        ({"mfg_date": "2026-02-30"}, "mfg_date"),
        ({"mfg_date": "yesterday"}, "mfg_date"),
        ({"status": "done"}, "status"),
        ({"condition": "broken"}, "condition"),
        ({"mrp_minor": -1}, "mrp_minor"),
        ({"mrp_minor": "12.50"}, "mrp_minor"),
        ({"uom": "   "}, "uom"),
        ({"colour": "red"}, "colour"),
        ({"status": "finalized", "weight": 3}, "weight"),
    ],
)
def test_a_bad_attribute_is_a_validation_error_naming_the_field(
    store: Store, attrs: dict[str, Any], field: str
) -> None:
    before = store.log_position()

    error = store.refused(items.set_attributes, store.v1, store.s1, store.a, attrs)

    assert isinstance(error, ValidationFailed) and error.status == 422
    assert error.code == "VALIDATION" and error.details == {"field": field}
    assert store.events_since(before) == []


def test_good_attributes_are_stored_and_a_null_clears_one(store: Store) -> None:
    attrs = {"mfg_date": "2025-11-03", "status": "finalized", "condition": "opened", "mrp_minor": 1250, "uom": "PK"}
    store.do(items.set_attributes, store.v1, store.s1, store.a, attrs)

    assert store.item(store.a)["attributes"] == attrs
    assert store.item(store.a)["status"] == "finalized"

    store.do(items.set_attributes, store.v1, store.s1, store.a, {"condition": None, "status": "re-verify"})

    assert store.item(store.a)["attributes"]["condition"] is None
    assert store.item(store.a)["status"] == "re-verify"
    assert store.item(store.a)["attributes"]["mfg_date"] == "2025-11-03"


def test_an_item_without_a_status_is_partial(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A)

    assert store.item(store.a)["status"] == "partial"


# -- serials --------------------------------------------------------------------------------------
def test_serials_are_added_and_removed(store: Store) -> None:
    store.do(items.add_serial, store.v1, store.s1, store.a, " SN-2 ")
    store.do(items.add_serial, store.v1, store.s1, store.a, "SN-1")
    assert store.item(store.a)["serials"] == ["SN-1", "SN-2"]

    store.do(items.remove_serial, store.v1, store.s1, store.a, "SN-2")

    assert store.item(store.a)["serials"] == ["SN-1"]
    assert items.item_serials(store.read(), store.s1, store.a) == ["SN-1"]


def test_the_same_serial_twice_on_one_item_is_refused(store: Store) -> None:
    store.do(items.add_serial, store.v1, store.s1, store.a, "SN-1")
    before = store.log_position()

    error = store.refused(items.add_serial, store.v1, store.s1, store.a, "SN-1")

    assert error.code == "SERIAL_ALREADY_ON_ITEM" and error.status == 409
    assert store.events_since(before) == []


def test_a_removed_serial_can_be_added_again(store: Store) -> None:
    store.do(items.add_serial, store.v1, store.s1, store.a, "SN-1")
    store.do(items.remove_serial, store.v1, store.s1, store.a, "SN-1")

    store.do(items.add_serial, store.v1, store.s1, store.a, "SN-1")

    assert store.item(store.a)["serials"] == ["SN-1"]


@pytest.mark.parametrize("serial", ["", "   ", "X" * 65])
def test_a_blank_or_overlong_serial_is_refused(store: Store, serial: str) -> None:
    error = store.refused(items.add_serial, store.v1, store.s1, store.a, serial)

    assert error.code == "VALIDATION" and error.details == {"field": "serial"}


def test_removing_a_serial_the_item_does_not_hold_is_not_found(store: Store) -> None:
    store.do(items.add_serial, store.v2, store.s2, store.a, "SN-1")  # on another session's item

    error = store.refused(items.remove_serial, store.v1, store.s1, store.a, "SN-1")

    assert error.code == "SERIAL_NOT_FOUND"


# -- where scans may go ---------------------------------------------------------------------------
def test_a_scan_into_a_submitted_session_is_refused(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A)
    store.do(sessions.submit_session, store.v1, store.s1)

    error = store.refused(items.record_scan, store.v1, store.s1, code=BARCODE_A)

    assert error.code == "SESSION_NOT_IN_PROGRESS" and error.status == 409
    assert store.qty(store.a) == 1


def test_a_verifier_cannot_scan_into_another_verifiers_session(store: Store) -> None:
    error = store.refused(items.record_scan, store.v1, store.s2, code=BARCODE_A)

    assert error.code == "SESSION_NOT_YOURS" and error.status == 403


def test_a_scan_on_a_rack_outside_the_session_is_refused(store: Store) -> None:
    error = store.refused(items.record_scan, store.v1, store.s1, code=BARCODE_A, rack_code="G-02")

    assert error.code == "RACK_NOT_IN_SESSION" and error.status == 409
    assert store.refused(items.record_scan, store.v1, store.s1, code=BARCODE_A, rack_code="Z-99").code == (
        "RACK_NOT_FOUND"
    )
    assert store.qty(store.a) == 0


def test_a_scan_on_the_sessions_own_rack_is_kept_on_that_rack(store: Store) -> None:
    scan = store.do(items.record_scan, store.v1, store.s1, code=BARCODE_A, rack_code=" g-01 ")

    rack = store.read().execute("SELECT rack_id FROM racks WHERE code = 'G-01'").fetchone()[0]
    assert scan.payload["rack_id"] == rack
    assert store.read().execute("SELECT rack_id FROM scan_counts WHERE session_id = ?", (store.s1,)).fetchone()[0] == (
        rack
    )


# -- codes that resolve later ---------------------------------------------------------------------
def test_an_unmatched_code_mapped_later_re_resolves(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code="SHELF-TAG-77", qty=3)
    held = items.session_items(store.read(), store.s1)
    assert held == {"items": [], "unmatched": [{"code": "SHELF-TAG-77", "qty": 3}]}
    assert rollups.buckets(store.read(), store.run_id)["unmatched"] == 1

    mapped = store.do(codes.map_code, store.boss, "SHELF-TAG-77", "sku-c")

    assert mapped == {"code": "SHELF-TAG-77", "product_id": store.c}
    held = items.session_items(store.read(), store.s1)
    assert held["unmatched"] == []
    assert [(entry["product_id"], entry["qty"]) for entry in held["items"]] == [(store.c, 3)]
    assert rollups.buckets(store.read(), store.run_id)["unmatched"] == 0
    # Later scans of the code land on the product straight away.
    store.do(items.record_scan, store.v1, store.s1, code="SHELF-TAG-77")
    assert store.qty(store.c) == 4


def test_mapping_a_code_to_an_unknown_sku_is_not_found(store: Store) -> None:
    error = store.refused(codes.map_code, store.boss, "SHELF-TAG-77", "SKU-NOPE")

    assert error.code == "PRODUCT_NOT_FOUND"


def test_importing_a_master_with_a_previously_unknown_barcode_re_resolves_it(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code=NEW_BARCODE, qty=2)
    assert items.session_items(store.read(), store.s1)["unmatched"] == [{"code": NEW_BARCODE, "qty": 2}]

    plan = product_import.parse_file(
        b"sku,barcodes,name,category,uom,mrp,expected_qty\nSKU-D,9780306406157,Delta,Books,EA,9.00,1\n", "more.csv"
    )
    store.box.db.write(lambda conn: product_import.commit(conn, store.box.log, plan))

    d = store.read().execute("SELECT product_id FROM products WHERE sku = 'SKU-D'").fetchone()[0]
    held = items.session_items(store.read(), store.s1)
    assert held["unmatched"] == []
    assert [(entry["sku"], entry["qty"]) for entry in held["items"]] == [("SKU-D", 2)]
    assert store.qty(d) == 2


# -- over HTTP: photos and item edits ------------------------------------------------------------------
def _png() -> bytes:
    """A real 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffdb0043") + bytes(range(64)) + b"\xff\xd9"


@dataclass
class Counting:
    server: ServerProcess
    boss: httpx.Client
    verifier: httpx.Client
    other: httpx.Client
    session_id: str
    other_session_id: str
    product_id: str


@pytest.fixture(scope="module")
def counting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Counting]:
    """A demo box with a running count: 'iris' holds an IN_PROGRESS session on G-01, 'ivan' one on G-02."""
    server = ServerProcess(tmp_path_factory.mktemp("items") / "box", "--demo")
    try:
        server.wait_ready()
        admin = server.client(server.login("admin", DEMO_PASSWORDS["admin"]))
        boss = server.client(server.login("supervisor", DEMO_PASSWORDS["supervisor"]))
        for name in ("iris", "ivan"):
            _ok(admin.post("/api/users", json={"username": name, "role": "verifier", "password": f"{name}-pass"}))
        iris = server.client(server.login("iris", "iris-pass"))
        ivan = server.client(server.login("ivan", "ivan-pass"))
        run_id = _ok(boss.post("/api/runs", json={"name": "Items", "kind": "hard"}))["run_id"]
        mine = _ok(boss.post(f"/api/runs/{run_id}/sessions", json={"verifier": "iris", "racks": ["G-01"]}))
        theirs = _ok(boss.post(f"/api/runs/{run_id}/sessions", json={"verifier": "ivan", "racks": ["G-02"]}))
        _ok(boss.post(f"/api/runs/{run_id}/start"))
        _ok(iris.post(f"/api/sessions/{mine['session_id']}/start"))
        _ok(ivan.post(f"/api/sessions/{theirs['session_id']}/start"))
        product = _ok(boss.get("/api/products", params={"limit": 1}))["items"][0]
        yield Counting(server, boss, iris, ivan, mine["session_id"], theirs["session_id"], product["product_id"])
    finally:
        server.stop()


def _ok(answer: httpx.Response) -> Any:
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def _photo_url(session_id: str, product_id: str) -> str:
    return f"/api/sessions/{session_id}/items/{product_id}/photos"


@pytest.mark.parametrize(("data", "content_type"), [(JPEG, "image/jpeg"), (_png(), "image/png")], ids=["jpeg", "png"])
def test_a_photo_is_kept_on_disk_by_its_hash_and_served_back(
    counting: Counting, data: bytes, content_type: str
) -> None:
    digest = hashlib.sha256(data).hexdigest()

    answer = counting.verifier.post(
        _photo_url(counting.session_id, counting.product_id), content=data, headers={"Content-Type": content_type}
    )

    assert answer.status_code == 201, answer.text
    assert answer.json() == {"sha256": digest, "size": len(data)}
    stored = counting.server.data_dir / "photos" / digest[:2] / digest
    assert stored.read_bytes() == data
    view = _ok(counting.verifier.get(f"/api/sessions/{counting.session_id}"))
    (item,) = [entry for entry in view["items"] if entry["product_id"] == counting.product_id]
    assert {"sha256": digest, "content_type": content_type} in item["photos"]
    served = counting.boss.get(f"/api/photos/{digest}")
    assert served.status_code == 200
    assert served.content == data and served.headers["content-type"].startswith(content_type)


def test_a_photo_that_is_not_an_image_is_refused(counting: Counting) -> None:
    answer = counting.verifier.post(
        _photo_url(counting.session_id, counting.product_id),
        content=b"just some text",
        headers={"Content-Type": "text/plain"},
    )

    assert answer.status_code == 422 and answer.json()["code"] == "BAD_PHOTO"
    digest = hashlib.sha256(b"just some text").hexdigest()
    assert not (counting.server.data_dir / "photos" / digest[:2] / digest).exists()


def test_an_unknown_photo_is_not_found(counting: Counting) -> None:
    answer = counting.boss.get(f"/api/photos/{hashlib.sha256(b'never sent').hexdigest()}")

    assert answer.status_code == 404 and answer.json()["code"] == "PHOTO_NOT_FOUND"


def test_a_refused_photo_leaves_no_file_on_disk(counting: Counting) -> None:
    """A photo posted into another verifier's session is refused, and must not be kept either."""
    data = JPEG + b"not yours"
    digest = hashlib.sha256(data).hexdigest()

    answer = counting.verifier.post(
        _photo_url(counting.other_session_id, counting.product_id), content=data, headers={"Content-Type": "image/jpeg"}
    )

    assert answer.status_code == 403 and answer.json()["code"] == "SESSION_NOT_YOURS"
    assert not (counting.server.data_dir / "photos" / digest[:2] / digest).exists()


def test_bad_attributes_over_http_are_422_naming_the_field(counting: Counting) -> None:
    url = f"/api/sessions/{counting.session_id}/items/{counting.product_id}"
    for attributes, field in (
        ({"mfg_date": "2026-13-01"}, "mfg_date"),
        ({"status": "done"}, "status"),
        ({"x": 1}, "x"),
    ):
        answer = counting.verifier.put(url, json={"attributes": attributes})
        assert answer.status_code == 422, answer.text
        assert (answer.json()["code"], answer.json()["details"]) == ("VALIDATION", {"field": field})

    item = _ok(counting.verifier.put(url, json={"qty": 4, "damage_qty": 1, "attributes": {"status": "finalized"}}))
    assert (item["qty"], item["damage_qty"], item["status"]) == (4, 1, "finalized")


def test_scans_over_http_answer_the_items_new_qty_and_an_undo_twice_is_refused(counting: Counting) -> None:
    product = _ok(counting.boss.get("/api/products", params={"limit": 2}))["items"][1]
    url = f"/api/sessions/{counting.session_id}/scans"
    first = _ok(counting.verifier.post(url, json={"code": product["sku"], "qty": 2}))
    second = _ok(counting.verifier.post(url, json={"code": product["sku"], "qty": 3}))
    assert (first["item_qty"], second["item_qty"], second["matched_by"]) == (2, 5, "sku")

    undo = f"{url}/{second['event_id']}/undo"
    assert _ok(counting.verifier.post(undo)) == {"undone": second["event_id"]}
    again = counting.verifier.post(undo)
    assert again.status_code == 409 and again.json()["code"] == "SCAN_ALREADY_UNDONE"
    rack = counting.verifier.post(url, json={"code": product["sku"], "rack": "G-02"})
    assert rack.status_code == 409 and rack.json()["code"] == "RACK_NOT_IN_SESSION"
    view = _ok(counting.verifier.get(f"/api/sessions/{counting.session_id}"))
    assert [e["qty"] for e in view["items"] if e["product_id"] == product["product_id"]] == [2]
