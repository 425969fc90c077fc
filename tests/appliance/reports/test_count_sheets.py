"""Blind count sheets on a real demo box and through the real server: exported for a rack with no
expected quantity, filled in, read back as a supervisor's "set to N", and read back again to no effect."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openpyxl
import pytest

from appliance.auth.people import User
from appliance.box import Box, open_box
from appliance.counting import items, runs, sessions
from appliance.demo.seed import seed_demo
from appliance.errors import StockVerifyError, ValidationFailed
from appliance.reports import count_sheets
from appliance.settings import Settings
from tests.conftest import DEMO_PASSWORDS, ServerProcess, person

HEADER = ["rack", "sku", "barcode", "name", "uom", "counted", "damaged"]


@dataclass
class Store:
    box: Box
    supervisor: User
    verifier: User
    run_id: str
    session_id: str
    skus: list[str]  # the directed run's products, by SKU
    scanned: str  # a product counted on the rack by a scan, outside the run's list

    def quantities(self) -> dict[str, tuple[int, int]]:
        found = items.session_items(self.box.db.read(), self.session_id)["items"]
        return {item["sku"]: (item["qty"], item["damage_qty"]) for item in found}

    def events(self) -> int:
        return int(self.box.db.read().execute("SELECT count(*) FROM events").fetchone()[0])

    def load(self, data: bytes, filename: str) -> dict[str, Any]:
        return self.box.db.write(
            lambda conn: count_sheets.import_sheet(conn, self.box.log, self.supervisor, self.session_id, data, filename)
        )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    box = open_box(settings)
    seed_demo(box)
    supervisor, verifier = person(box, "supervisor"), person(box, "verifier")
    conn = box.db.read()
    skus = [r[0] for r in conn.execute("SELECT sku FROM products ORDER BY sku LIMIT 3")]
    scanned_sku = conn.execute("SELECT sku FROM products ORDER BY sku DESC LIMIT 1").fetchone()[0]

    def plan(conn: Any) -> tuple[str, str]:
        run_id = runs.create_run(conn, box.log, supervisor, name="Aisle one", kind="directed")
        runs.add_scope(conn, box.log, supervisor, run_id, skus=skus, rack_codes=["G-01", "G-02"])
        session_id = sessions.create_session(
            conn, box.log, supervisor, run_id, verifier_id=verifier.user_id, rack_codes=["G-01", "G-02"]
        )
        runs.start_run(conn, box.log, supervisor, run_id)
        sessions.start_session(conn, box.log, verifier, session_id)
        items.record_scan(conn, box.log, verifier, session_id, code=scanned_sku, qty=2, rack_code="G-01")
        return run_id, session_id

    run_id, session_id = box.db.write(plan)
    yield Store(box, supervisor, verifier, run_id, session_id, skus, scanned_sku)
    box.close()


def read_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def write_csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HEADER)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def test_a_sheet_is_blind_and_lists_the_racks_products(store: Store) -> None:
    name, data = count_sheets.export_sheet(store.box.db.read(), store.session_id, "g-01", "csv")
    assert name == "count-sheet-G-01.csv"
    assert data.decode("utf-8-sig").splitlines()[0] == ",".join(HEADER)
    rows = read_csv(data)
    assert [row["sku"] for row in rows] == sorted([*store.skus, store.scanned])
    assert all(row["rack"] == "G-01" and row["counted"] == "" and row["damaged"] == "" for row in rows)
    assert all(row["name"] and row["uom"] for row in rows)
    assert "expected" not in data.decode().lower()
    conn = store.box.db.read()
    expected = {str(r[0]) for r in conn.execute("SELECT expected_qty FROM products WHERE sku IN (?, ?, ?)", store.skus)}
    assert expected  # the master has expected quantities, and none of them is on the sheet as such

    for rack, code in (("G-03", "RACK_NOT_IN_SESSION"), ("NOPE", "RACK_NOT_FOUND")):
        with pytest.raises(StockVerifyError) as caught:
            count_sheets.export_sheet(conn, store.session_id, rack, "csv")
        assert caught.value.code == code


def test_a_filled_csv_sheet_sets_the_counts_and_again_changes_nothing(store: Store) -> None:
    _, data = count_sheets.export_sheet(store.box.db.read(), store.session_id, "G-01", "csv")
    rows = read_csv(data)
    filled = {store.skus[0]: ("7", "1"), store.skus[1]: ("0", ""), store.scanned: ("5", "")}
    for row in rows:
        row["counted"], row["damaged"] = filled.get(row["sku"], ("", ""))
    sheet = write_csv(rows)

    shown = store.box.db.read()
    dry = count_sheets.preview_sheet(shown, store.supervisor, store.session_id, sheet, "sheet.csv")
    assert dry["valid"] is True and (dry["changed"], dry["unchanged"]) == (2, 1)  # skus[1] is 0 already
    assert store.quantities()[store.scanned] == (2, 0)  # a dry run sets nothing

    first = store.load(sheet, "sheet.csv")
    assert (first["changed"], first["unchanged"]) == (2, 1)
    quantities = store.quantities()
    assert quantities[store.skus[0]] == (7, 1)
    assert quantities[store.scanned] == (5, 0)
    assert store.skus[2] not in quantities  # its cells were empty: not counted, left alone
    assert quantities.get(store.skus[1], (0, 0)) == (0, 0)

    before = store.events()
    again = store.load(sheet, "sheet.csv")
    assert (again["changed"], again["unchanged"], again["message"]) == (0, 3, "nothing to change")
    assert store.events() == before and store.quantities() == quantities


def test_an_xlsx_sheet_round_trips_without_a_mapping(store: Store) -> None:
    name, data = count_sheets.export_sheet(store.box.db.read(), store.session_id, "G-01", "xlsx")
    assert name == "count-sheet-G-01.xlsx"
    book = openpyxl.load_workbook(io.BytesIO(data))
    sheet = book.worksheets[0]
    values = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert values[0] == HEADER
    assert all(isinstance(row[2], str) or row[2] is None for row in values[1:])  # barcodes stay text
    counted = {sku: n for n, sku in enumerate(sorted([*store.skus, store.scanned]), start=3)}
    for row in sheet.iter_rows(min_row=2):
        row[5].value = counted[str(row[1].value)]
    out = io.BytesIO()
    book.save(out)

    store.load(out.getvalue(), name)
    assert {sku: qty for sku, (qty, _damage) in store.quantities().items()} == counted
    before = store.events()
    assert store.load(out.getvalue(), name)["changed"] == 0
    assert store.events() == before


def test_a_sheet_with_errors_sets_nothing_and_says_why(store: Store) -> None:
    rows = [
        {"rack": "G-01", "sku": store.skus[0], "counted": "4"},  # 2: fine
        {"rack": "G-01", "sku": store.skus[1], "counted": "-1"},  # 3
        {"rack": "G-01", "sku": "NO-SUCH-SKU", "counted": "2"},  # 4
        {"rack": "G-09", "sku": store.skus[2], "counted": "2"},  # 5: a rack of another session
        {"rack": "G-01", "sku": store.skus[0], "counted": "5"},  # 6: the same product again
        {"rack": "G-01", "barcode": "5901234123458", "counted": "1"},  # 7: nobody's barcode
        {"rack": "G-01", "sku": store.scanned, "counted": "2.5", "damaged": "x"},  # 8: two problems
        {"rack": "G-01", "sku": "NO-SUCH-SKU", "counted": ""},  # 9: not counted: left alone, no error
    ]
    sheet = write_csv([{column: row.get(column, "") for column in HEADER} for row in rows])
    before = store.events()
    with pytest.raises(ValidationFailed) as caught:
        store.load(sheet, "sheet.csv")
    assert caught.value.code == "IMPORT_INVALID"
    errors = caught.value.details["errors"]
    assert [(e["row"], e["column"]) for e in errors] == [
        (3, "counted"),
        (4, "sku"),
        (5, "rack"),
        (6, "sku"),
        (7, "barcode"),
        (8, "counted"),
        (8, "damaged"),
    ]
    assert errors[0]["value"] == "-1" and errors[0]["reason"] == "counted cannot be negative"
    assert errors[2]["reason"] == "rack G-09 is not part of this session"
    assert errors[3]["reason"] == f"SKU {store.skus[0]} is also on line 2"
    assert all(e["file_column"] == e["column"] and e["fix"] for e in errors)
    assert store.events() == before
    assert store.skus[0] not in store.quantities()


def test_the_sessions_own_rules_refuse_a_sheet_for_a_closed_session(store: Store) -> None:
    sheet = write_csv([{**dict.fromkeys(HEADER, ""), "sku": store.skus[0], "counted": "3"}])
    store.box.db.write(lambda conn: sessions.submit_session(conn, store.box.log, store.verifier, store.session_id))
    dry = count_sheets.preview_sheet(store.box.db.read(), store.supervisor, store.session_id, sheet, "s.csv")
    assert dry["valid"] is False and "SUBMITTED" in dry["errors"][0]["reason"]
    with pytest.raises(StockVerifyError) as caught:
        store.load(sheet, "s.csv")
    assert caught.value.code == "SESSION_NOT_IN_PROGRESS"


# -- over HTTP, the real server -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A demo box of this module's own: its sessions' counts are changed here."""
    box = ServerProcess(tmp_path_factory.mktemp("count-sheets") / "box", "--demo")
    try:
        box.wait_ready()
        yield box
    finally:
        box.stop()


def test_a_count_sheet_round_trips_over_http(server: ServerProcess) -> None:
    tokens = {role: server.login(role, password) for role, password in DEMO_PASSWORDS.items()}
    with server.client(tokens["supervisor"]) as boss, server.client(tokens["verifier"]) as verifier:
        skus = [p["sku"] for p in boss.get("/api/products", params={"limit": 3}).json()["items"]]
        run = boss.post("/api/runs", json={"name": "Sheet run", "kind": "directed"}).json()
        run_id = run["run_id"]
        assert boss.post(f"/api/runs/{run_id}/scope", json={"skus": skus, "racks": ["F1-01"]}).status_code == 200
        made = boss.post(f"/api/runs/{run_id}/sessions", json={"racks": ["F1-01"], "verifier": "verifier"})
        assert made.status_code == 201, made.text
        session_id = made.json()["session_id"]
        assert boss.post(f"/api/runs/{run_id}/start").status_code == 200
        assert verifier.post(f"/api/sessions/{session_id}/start").status_code == 200

        url = f"/api/sessions/{session_id}/racks/F1-01/count-sheet"
        refused = verifier.get(url)
        assert refused.status_code == 403
        exported = boss.get(url, params={"format": "csv"})
        assert exported.status_code == 200, exported.text
        assert "count-sheet-F1-01.csv" in exported.headers["content-disposition"]
        rows = read_csv(exported.content)
        assert [row["sku"] for row in rows] == sorted(skus) and "expected" not in exported.text
        for n, row in enumerate(rows, start=1):
            row["counted"] = str(n * 2)
        sheet = write_csv(rows)

        dry = boss.post(f"/api/sessions/{session_id}/count-sheet", params={"dry_run": True}, content=sheet)
        assert dry.status_code == 200 and dry.json()["changed"] == 3, dry.text
        loaded = boss.post(f"/api/sessions/{session_id}/count-sheet", params={"filename": "s.csv"}, content=sheet)
        assert loaded.status_code == 200 and loaded.json()["changed"] == 3, loaded.text
        held = boss.get(f"/api/sessions/{session_id}").json()
        counted = {item["sku"]: item["qty"] for item in held["items"]}
        assert counted == {row["sku"]: int(row["counted"]) for row in rows}
        again = boss.post(f"/api/sessions/{session_id}/count-sheet", content=sheet)
        assert again.json()["changed"] == 0 and again.json()["message"] == "nothing to change"

        xlsx = boss.get(url, params={"format": "xlsx"})
        assert xlsx.status_code == 200 and xlsx.headers["content-type"].startswith(count_sheets.XLSX_TYPE)
        assert openpyxl.load_workbook(io.BytesIO(xlsx.content)).worksheets[0]["F1"].value == "counted"
        assert boss.get(url, params={"format": "pdf"}).status_code in (400, 422)
