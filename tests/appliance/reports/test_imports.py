"""Imports with a preview and a commit, on a real box on disk and through the real server: a mapping
remembered per source, rows previewed as they will be read, every error with its row, columns, value,
reason and fix, all-or-nothing commits, and the same file again changing nothing."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from appliance.auth.people import User
from appliance.box import Box
from appliance.catalog import layout, products
from appliance.counting import runs, sessions
from appliance.errors import StockVerifyError, ValidationFailed
from appliance.reports import imports
from appliance.store.eventlog import rebuild
from tests.conftest import DEMO_PASSWORDS, ServerProcess

ERP_HEADER = "Item Code,EAN,Desc,Dept,Price,Qty on hand,Colour"
ERP_MAPPING = {
    "Item Code": "sku",
    "EAN": "barcodes",
    "Desc": "name",
    "Dept": "category",
    "Price": "mrp",
    "Qty on hand": "expected_qty",
}
ERP_ROWS = [
    "A-1,5901234123457,Green Tea,Grocery,12.5,40,green",
    "A-2,012345678905,Biscuits,Grocery,30,12,",
    "A-3,96385074,Notebook,Stationery,45.00,7,blue",
]


def erp_file(*rows: str, header: str = ERP_HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def events(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


def make_user(box: Box, role: str = "supervisor") -> User:
    from appliance.auth import people

    passwords = people.Passwords(1024, 1)
    return box.db.write(
        lambda conn: people.add_user(conn, box.log, f"{role}-1", "", role, passwords.hash(f"{role}-pass"))
    )


def upload(data: bytes, **kwargs: Any) -> imports.Upload:
    return imports.Upload(kwargs.pop("target", "products"), data, kwargs.pop("filename", "erp.csv"), **kwargs)


def preview(box: Box, data: bytes, **kwargs: Any) -> dict[str, Any]:
    return imports.preview(box.db.read(), upload(data, **kwargs))


def commit(box: Box, user: User, data: bytes, **kwargs: Any) -> dict[str, Any]:
    return box.db.write(lambda conn: imports.commit(conn, box.log, user, upload(data, **kwargs)))


# -- mappings -----------------------------------------------------------------------------------------
def test_a_mapping_is_set_once_and_offered_whenever_the_source_is_named_again(box: Box) -> None:
    user = make_user(box)
    first = preview(box, erp_file(*ERP_ROWS), source="ERP weekly")
    assert first["mapping_from"] == "recognised" and first["valid"] is False
    missing = {error["column"]: error for error in first["errors"]}
    assert set(missing) == {"sku"}  # "Item Code" is no name of ours
    assert missing["sku"]["row"] == 1 and missing["sku"]["file_column"] is None
    assert "required column sku is not mapped" in missing["sku"]["reason"]
    assert "map the file's column" in missing["sku"]["fix"]
    assert [h["header"] for h in first["headers"]] == ERP_HEADER.split(",")
    assert first["headers"][0]["samples"] == ["A-1", "A-2", "A-3"]
    assert first["headers"][6] == {"position": 7, "header": "Colour", "samples": ["green", "blue"], "maps_to": None}

    before = events(box.db.read())
    saved = box.db.write(lambda conn: imports.save_mapping(conn, box.log, user, "products", "ERP weekly", ERP_MAPPING))
    assert saved["mapping"] == ERP_MAPPING and saved["by_user"] == user.user_id
    assert events(box.db.read()) == before + 1
    box.db.write(lambda conn: imports.save_mapping(conn, box.log, user, "products", " ERP  weekly ", ERP_MAPPING))
    assert events(box.db.read()) == before + 1  # the same mapping again records nothing

    again = preview(box, erp_file(*ERP_ROWS), source="ERP weekly")
    assert again["mapping_from"] == "remembered" and again["mapping"] == ERP_MAPPING
    assert again["valid"] is True and again["errors"] == []
    assert again["ignored"] == ["Colour"]
    assert {h["header"]: h["maps_to"] for h in again["headers"]}["Desc"] == "name"
    other = preview(box, erp_file(*ERP_ROWS), source="Supplier list")
    assert other["mapping_from"] == "recognised"  # a mapping belongs to its source
    listed = imports.list_mappings(box.db.read())
    assert [(m["target"], m["source"]) for m in listed] == [("products", "ERP weekly")]

    bad_mappings: list[dict[str, str]] = [
        {"Item Code": "sku", "EAN": "sku", "Desc": "name"},
        {"Desc": "name"},
        {"Item Code": "colour"},
    ]
    for bad in bad_mappings:

        def save(conn: sqlite3.Connection, bad: dict[str, str] = bad) -> dict[str, Any]:
            return imports.save_mapping(conn, box.log, user, "products", "X", bad)

        with pytest.raises(ValidationFailed) as caught:
            box.db.write(save)
        assert caught.value.code == "BAD_MAPPING"
    with pytest.raises(ValidationFailed):
        box.db.write(lambda conn: imports.save_mapping(conn, box.log, user, "prices", "X", ERP_MAPPING))

    later = {**ERP_MAPPING, "Colour": ""}
    box.db.write(lambda conn: imports.save_mapping(conn, box.log, user, "products", "ERP weekly", later))
    assert imports.remembered(box.db.read(), "products", "ERP weekly") == later
    kept = [tuple(r) for r in box.db.read().execute("SELECT * FROM import_mappings")]
    box.db.write(rebuild)
    assert [tuple(r) for r in box.db.read().execute("SELECT * FROM import_mappings")] == kept


def test_scope_preview_of_an_unknown_run_is_not_found(box: Box) -> None:
    with pytest.raises(StockVerifyError) as caught:
        preview(box, b"sku,expected_qty\nA,1\n", target="scope", run_id="01NOSUCHRUN")
    assert caught.value.code == "RUN_NOT_FOUND"
    with pytest.raises(StockVerifyError) as caught:
        preview(box, b"sku,expected_qty\nA,1\n", target="scope")
    assert caught.value.code == "RUN_REQUIRED"


# -- preview and dry run ------------------------------------------------------------------------------
def test_the_preview_shows_the_first_rows_as_they_will_be_read(box: Box) -> None:
    rows = [f"P-{n:02d},,Product {n},Grocery,{n}.5,{n}," for n in range(1, 26)]
    rows[0] = "P-01,012345678905 | 96385074,  Product   one ,Grocery,1.5,3,"
    answer = preview(box, erp_file(*rows), mapping=ERP_MAPPING)
    assert answer["valid"] is True and answer["rows"] == 25 and len(answer["preview"]) == imports.PREVIEW_ROWS
    assert answer["mapping_from"] == "given"
    assert answer["preview"][0] == {
        "row": 2,
        "sku": "P-01",
        "barcodes": ["00012345678905", "00000096385074"],
        "name": "Product one",
        "category": "Grocery",
        "subcategory": "",
        "uom": "EA",
        "mrp_minor": 150,
        "expected_qty": 3,
    }
    assert answer["preview"][9]["mrp_minor"] == 1050
    assert (answer["added"], answer["changed"], answer["unchanged"]) == (25, 0, 0)
    assert len(answer["headers"][0]["samples"]) == imports.SAMPLE_VALUES


def test_a_dry_run_lists_every_error_with_row_columns_value_reason_and_fix(box: Box) -> None:
    user = make_user(box)
    commit(box, user, erp_file("OWNED-1,4006381333931,Pencil,,,,"), mapping=ERP_MAPPING)
    data = erp_file(
        "A-1,5901234123457,Tea,Grocery,10.00,5,",  # 2: fine
        ",,No SKU,,,,",  # 3
        "A-3,5901234123458,Wrong check digit,,,,",  # 4
        "A-4,,Price,,Rs 10,,",  # 5
        "A-5,,Quantity,,,-2,",  # 6
        "A-6,4006381333931,Taken code,,,,",  # 7
        "A-1,,Again,,,,",  # 8
        "A-8,12345678905,Lost zero,,,1.5,",  # 9: two problems
    )
    before = events(box.db.read())
    answer = preview(box, data, mapping=ERP_MAPPING)
    assert answer["valid"] is False
    found = {(e["row"], e["column"]): e for e in answer["errors"]}
    assert set(found) == {
        (3, "sku"),
        (4, "barcodes"),
        (5, "mrp"),
        (6, "expected_qty"),
        (7, "barcodes"),
        (8, "sku"),
        (9, "barcodes"),
        (9, "expected_qty"),
    }
    assert found[(4, "barcodes")] == {
        "row": 4,
        "column": "barcodes",
        "file_column": "EAN",
        "value": "5901234123458",
        "reason": "check digit is wrong: expected 7",
        "fix": "type the code again from the pack; its last digit is computed from the others",
    }
    assert found[(5, "mrp")]["file_column"] == "Price" and found[(5, "mrp")]["value"] == "Rs 10"
    assert "no currency sign" in found[(5, "mrp")]["fix"]
    assert found[(6, "expected_qty")]["file_column"] == "Qty on hand"
    assert found[(7, "barcodes")]["reason"] == "barcode 4006381333931 already belongs to SKU OWNED-1"
    assert found[(8, "sku")]["reason"] == "SKU A-1 is also on line 2"
    assert "leading 0 was lost" in found[(9, "barcodes")]["reason"]
    assert "Text" in found[(9, "barcodes")]["fix"]
    assert all(e["reason"] and e["fix"] for e in answer["errors"])
    assert [e["row"] for e in answer["errors"]] == sorted(e["row"] for e in answer["errors"])

    with pytest.raises(ValidationFailed) as caught:
        commit(box, user, data, mapping=ERP_MAPPING)
    assert caught.value.code == "IMPORT_INVALID" and caught.value.details["errors"] == answer["errors"]
    conn = box.db.read()
    assert events(conn) == before and products.get(conn, "A-1") is None  # all or nothing


# -- commit, and the same file again ------------------------------------------------------------------
def test_the_same_file_again_changes_nothing_and_records_no_event(box: Box) -> None:
    user = make_user(box)
    data = erp_file(*ERP_ROWS)
    first = commit(box, user, data, source="ERP weekly", mapping=ERP_MAPPING)
    assert (first["added"], first["changed"], first["unchanged"]) == (3, 0, 0) and first["import_id"]
    conn = box.db.read()
    tea = products.get(conn, "A-1", with_expected=True)
    assert tea is not None and (tea["name"], tea["mrp_minor"], tea["expected_qty"]) == ("Green Tea", 1250, 40)
    assert imports.remembered(conn, "products", "ERP weekly") == ERP_MAPPING  # remembered by the commit

    before = events(conn)
    again = commit(box, user, data, source="ERP weekly")  # the remembered mapping, no mapping sent
    assert (again["added"], again["changed"], again["unchanged"]) == (0, 0, 3)
    assert again["import_id"] is None and again["message"] == "nothing to change"
    assert events(box.db.read()) == before
    shown = preview(box, data, source="ERP weekly")
    assert (shown["added"], shown["changed"], shown["unchanged"], shown["message"]) == (0, 0, 3, "nothing to change")

    edited = erp_file(ERP_ROWS[0], "A-2,012345678905,Biscuits,Grocery,30,13,", ERP_ROWS[2], "A-4,,Pens,,,,")
    third = commit(box, user, edited, source="ERP weekly")
    assert (third["added"], third["changed"], third["unchanged"]) == (1, 1, 2)
    payload = box.db.read().execute("SELECT payload FROM events ORDER BY pos DESC LIMIT 1").fetchone()[0]
    assert events(box.db.read()) == before + 1
    assert payload  # one event, carrying the two rows that changed
    from replication.wire.codec import unpack_payload

    assert sorted(row["sku"] for row in unpack_payload(payload)["rows"]) == ["A-2", "A-4"]


def test_a_mapped_file_leaves_the_columns_it_does_not_have_as_they_are(box: Box) -> None:
    user = make_user(box)
    commit(box, user, erp_file(*ERP_ROWS), mapping=ERP_MAPPING)
    stock = b"Article,Stock\nA-1,41\nA-2,12\n"
    answer = commit(box, user, stock, mapping={"Article": "sku", "Stock": "expected_qty"})
    assert (answer["added"], answer["changed"], answer["unchanged"]) == (0, 1, 1)
    tea = products.get(box.db.read(), "A-1", with_expected=True)
    assert tea is not None and (tea["name"], tea["mrp_minor"], tea["expected_qty"]) == ("Green Tea", 1250, 41)
    assert [code["raw"] for code in tea["codes"]] == ["5901234123457"]
    unnamed = preview(box, b"Article,Stock\nA-1,41\nNEW-1,3\n", mapping={"Article": "sku", "Stock": "expected_qty"})
    assert [(e["row"], e["column"], e["file_column"]) for e in unnamed["errors"]] == [(3, "name", None)]
    assert "NEW-1 is new to the master" in unnamed["errors"][0]["reason"]
    assert "description to name" in unnamed["errors"][0]["fix"] or unnamed["errors"][0]["fix"]
    unreadable = preview(box, b"\xd0\xcf\x11\xe0 an old workbook", filename="old.xls")
    assert unreadable["errors"][0]["row"] is None and ".xlsx" in unreadable["errors"][0]["fix"]


def test_an_xlsx_file_reads_through_a_mapping_too(box: Box) -> None:
    user = make_user(box)
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["Item Code", "EAN", "Desc", "Qty on hand"])
    sheet.append(["X-1", 5901234123457, "Numeric barcode", 12])
    buffer = io.BytesIO()
    book.save(buffer)
    mapping = {"Item Code": "sku", "EAN": "barcodes", "Desc": "name", "Qty on hand": "expected_qty"}
    answer = commit(box, user, buffer.getvalue(), filename="erp.xlsx", mapping=mapping)
    assert answer["added"] == 1
    assert commit(box, user, buffer.getvalue(), filename="erp.xlsx", mapping=mapping)["message"] == "nothing to change"


# -- a run's scope and expected quantities ------------------------------------------------------------
@pytest.fixture
def store(box: Box) -> tuple[Box, User, str]:
    user = make_user(box)
    commit(box, user, erp_file(*ERP_ROWS), mapping=ERP_MAPPING)

    def plan(conn: sqlite3.Connection) -> str:
        layout.add_floor(conn, box.log, "G", "Ground", 1)
        for code in ("G-01", "G-02"):
            layout.add_rack(conn, box.log, "G", code, code)
        return runs.create_run(conn, box.log, user, name="Tea aisle", kind="directed")

    return box, user, box.db.write(plan)


SCOPE_MAPPING = {"Article": "sku", "Bin": "rack", "Stock": "expected_qty"}


def run_expected(box: Box, run_id: str) -> dict[str, int]:
    rows = box.db.read().execute("SELECT product_id, expected_qty FROM run_expected WHERE run_id = ?", (run_id,))
    return {row[0]: row[1] for row in rows}


def test_a_scope_file_adds_to_the_run_and_sets_its_expected_quantities_once(store: tuple[Box, User, str]) -> None:
    box, user, run_id = store
    data = b"Article,Bin,Stock\nA-1,G-01,10\nA-1,G-02,5\nA-2,G-01,3\n"
    shown = preview(box, data, target="scope", run_id=run_id, mapping=SCOPE_MAPPING)
    assert shown["valid"] is True and (shown["added"], shown["changed"], shown["unchanged"]) == (2, 0, 0)
    assert shown["preview"][1] == {"row": 3, "sku": "A-1", "rack": "G-02", "expected_qty": 5}
    first = commit(box, user, data, target="scope", run_id=run_id, mapping=SCOPE_MAPPING, source="Planogram")
    assert first["added"] == 2 and first["import_id"]
    conn = box.db.read()
    ids = {p["sku"]: p["product_id"] for p in products.search(conn, "A-")["items"]}
    expected = run_expected(box, run_id)
    assert expected == {ids["A-1"]: 15, ids["A-2"]: 3}  # a SKU on two racks is expected in their sum
    assert conn.execute("SELECT count(*) FROM run_racks WHERE run_id = ?", (run_id,)).fetchone()[0] == 2
    tea = products.get(conn, "A-1", with_expected=True)
    assert tea is not None and tea["expected_qty"] == 40  # the master's book stock is left alone

    before = events(conn)
    again = commit(box, user, data, target="scope", run_id=run_id, source="Planogram")
    assert (again["added"], again["changed"], again["unchanged"], again["message"]) == (0, 0, 2, "nothing to change")
    assert events(box.db.read()) == before

    # Started, the run keeps the file's quantities rather than the master's, and refuses to move them.
    def start(conn: sqlite3.Connection) -> None:
        sessions.create_session(conn, box.log, user, run_id, verifier_id=user.user_id, rack_codes=["G-01"])
        runs.start_run(conn, box.log, user, run_id)

    box.db.write(start)
    expected = run_expected(box, run_id)
    assert expected == {ids["A-1"]: 15, ids["A-2"]: 3}
    moved_file = b"Article,Bin,Stock\nA-1,G-01,11\nA-1,G-02,5\nA-3,,2\n"
    moved = preview(box, moved_file, target="scope", run_id=run_id, source="Planogram")
    assert [(e["row"], e["column"]) for e in moved["errors"]] == [(2, "expected_qty")]
    assert "froze SKU A-1's expected quantity at 15" in moved["errors"][0]["reason"]
    assert moved["added"] == 1  # A-3 is new to the run: its quantity may still be set
    box.db.write(rebuild)
    assert run_expected(box, run_id) == expected


def test_scope_errors_are_every_row_and_nothing_is_written(store: tuple[Box, User, str]) -> None:
    box, user, run_id = store
    data = b"Article,Bin,Stock\nA-1,G-01,10\nNOPE-1,G-01,1\nA-2,Z-99,2\nA-3,G-01,\nA-1,G-01,4\nA-3,G-02,x\n"
    before = events(box.db.read())
    with pytest.raises(ValidationFailed) as caught:
        commit(box, user, data, target="scope", run_id=run_id, mapping=SCOPE_MAPPING)
    errors = caught.value.details["errors"]
    assert [(e["row"], e["column"], e["file_column"], e["value"]) for e in errors] == [
        (3, "sku", "Article", "NOPE-1"),
        (4, "rack", "Bin", "Z-99"),
        (5, "expected_qty", "Stock", ""),
        (6, "sku", "Article", "A-1"),
        (7, "expected_qty", "Stock", "x"),
    ]
    assert errors[0]["reason"] == "SKU NOPE-1 is not in the product master"
    assert errors[1]["reason"] == "rack Z-99 is not a rack of this store"
    assert errors[3]["reason"] == "SKU A-1 on rack G-01 is also on line 2"
    assert all(e["fix"] for e in errors)
    assert events(box.db.read()) == before
    no_qty = preview(box, b"Article,Bin\nA-1,G-01\n", target="scope", run_id=run_id, mapping={"Article": "sku"})
    assert [(e["column"], e["reason"]) for e in no_qty["errors"]] == [
        ("expected_qty", "required column expected_qty is not mapped to a column of the file")
    ]


# -- over HTTP, the real server -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A demo box of this module's own: its catalogue is changed here, which the shared one must not be."""
    box = ServerProcess(tmp_path_factory.mktemp("imports") / "box", "--demo")
    try:
        box.wait_ready()
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="module")
def tokens(server: ServerProcess) -> dict[str, str]:
    return {role: server.login(role, password) for role, password in DEMO_PASSWORDS.items()}


def event_count(server: ServerProcess, tokens: dict[str, str]) -> int:
    with server.client(tokens["admin"]) as admin:
        return sum(w["head_seq"] for w in admin.get("/api/writers").json()["writers"])


def test_import_with_a_mapping_preview_errors_and_commit_over_http(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    params = {"target": "products", "source": "HTTP ERP", "filename": "erp.csv"}
    rows = [f"HTTP-{n},,Product {n},Grocery,{n}.25,{n},red" for n in range(1, 4)]
    with server.client(tokens["supervisor"]) as client:
        saved = client.put("/api/imports/mappings/products/HTTP ERP", json={"mapping": ERP_MAPPING})
        assert saved.status_code == 200, saved.text
        assert client.get("/api/imports/mappings").json()[0]["mapping"] == ERP_MAPPING

        bad = erp_file(*rows, "HTTP-9,5901234123458,Bad code,,1.234,,")
        shown = client.post("/api/imports/preview", params=params, content=bad)
        assert shown.status_code == 200, shown.text
        body = shown.json()
        assert body["mapping_from"] == "remembered" and body["ignored"] == ["Colour"]
        assert body["preview"][0]["mrp_minor"] == 125
        assert [(e["row"], e["column"], e["file_column"]) for e in body["errors"]] == [
            (5, "barcodes", "EAN"),
            (5, "mrp", "Price"),
        ]
        refused = client.post("/api/imports/commit", params=params, content=bad)
        assert refused.status_code == 422 and refused.json()["code"] == "IMPORT_INVALID"
        assert refused.json()["details"]["errors"] == body["errors"]
        assert client.get("/api/products/HTTP-1").status_code == 404

        good = erp_file(*rows)
        first = client.post("/api/imports/commit", params=params, content=good)
        assert first.status_code == 201, first.text
        assert (first.json()["added"], first.json()["changed"]) == (3, 0)
        assert client.get("/api/products/HTTP-2").json()["mrp_minor"] == 225
        before = event_count(server, tokens)
        again = client.post("/api/imports/commit", params=params, content=good)
        assert again.status_code == 201
        assert (again.json()["added"], again.json()["changed"], again.json()["unchanged"]) == (0, 0, 3)
        assert again.json()["message"] == "nothing to change"
        assert event_count(server, tokens) == before

        given = client.post(
            "/api/imports/preview",
            params={**params, "source": "", "mapping": json.dumps({"Item Code": "sku", "Desc": "name"})},
            content=good,
        )
        assert given.json()["mapping_from"] == "given" and given.json()["unchanged"] == 3  # the rest kept
        wrong = client.post("/api/imports/preview", params={**params, "mapping": "[1]"}, content=good)
        assert wrong.status_code == 422 and wrong.json()["code"] == "BAD_MAPPING"
        unknown = client.post("/api/imports/preview", params={**params, "target": "prices"}, content=good)
        assert unknown.status_code == 422 and unknown.json()["code"] == "UNKNOWN_IMPORT_TARGET"


def test_a_verifier_gets_none_of_it_and_an_auditor_changes_nothing(
    server: ServerProcess, tokens: dict[str, str], tmp_path: Path
) -> None:
    params = {"target": "products", "filename": "erp.csv", "mapping": json.dumps(ERP_MAPPING)}
    data = erp_file("DENIED-1,,Denied,,,,")
    calls = [
        ("POST", "/api/imports/preview", params, data),
        ("POST", "/api/imports/commit", params, data),
        ("GET", "/api/imports/mappings", {}, None),
        ("PUT", "/api/imports/mappings/products/Denied", {}, json.dumps({"mapping": ERP_MAPPING}).encode()),
        ("GET", "/api/sessions/01NOSUCHSESSION/racks/G-01/count-sheet", {}, None),
        ("POST", "/api/sessions/01NOSUCHSESSION/count-sheet", {}, b"sku,counted\n"),
    ]
    for role in ("verifier", "auditor"):
        with server.client(tokens[role]) as client:
            for method, path, query, content in calls:
                headers = {"Content-Type": "application/json"} if method == "PUT" else {}
                answer = client.request(method, path, params=query, content=content, headers=headers)
                assert answer.status_code == 403, (role, method, path, answer.text)
            assert client.get("/api/products/DENIED-1").status_code == 404
