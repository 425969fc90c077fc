"""The product master on real SQLite files: import all-or-nothing, resolve every barcode form, blind reads."""

from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from litestar.testing import TestClient

from appliance.app import create_app
from appliance.auth import people
from appliance.box import Box
from appliance.catalog import product_import, products
from appliance.demo.catalog import FORMS, README_CODE, write_demo_products
from appliance.demo.catalog import examples as demo_examples
from appliance.errors import Conflict, ValidationFailed
from appliance.store.eventlog import new_id, rebuild
from tests.conftest import ServerProcess

HEADER = "sku,barcodes,name,category,subcategory,uom,mrp,expected_qty"


def csv_file(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def import_file(box: Box, data: bytes, filename: str = "products.csv") -> dict[str, Any]:
    plan = product_import.parse_file(data, filename)
    return box.db.write(lambda conn: product_import.commit(conn, box.log, plan))


def count(conn: sqlite3.Connection, sql: str) -> int:
    return int(conn.execute(sql).fetchone()[0])


def snapshot(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    return (
        [tuple(row) for row in conn.execute("SELECT * FROM products ORDER BY product_id")],
        [tuple(row) for row in conn.execute("SELECT * FROM product_codes ORDER BY code")],
    )


def error_at(errors: list[dict[str, Any]], line: int, column: str) -> dict[str, Any]:
    found = [error for error in errors if error["line"] == line and error["column"] == column]
    assert found, f"no error on line {line}, column {column}: {errors}"
    return found[0]


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_products(tmp_path_factory.mktemp("catalog") / "products.csv")


@pytest.fixture(scope="module")
def examples(demo_file: Path) -> dict[str, tuple[str, str]]:
    return demo_examples(demo_file)


# -- the demo catalogue -----------------------------------------------------------------------------
def test_demo_catalogue_is_deterministic_clean_and_has_every_form(demo_file: Path, tmp_path: Path) -> None:
    assert write_demo_products(tmp_path / "again.csv").read_bytes() == demo_file.read_bytes()
    assert write_demo_products(tmp_path / "other.csv", seed=8).read_bytes() != demo_file.read_bytes()
    plan = product_import.parse_file(demo_file.read_bytes(), demo_file.name)
    assert plan.errors == [] and len(plan.rows) == 5000
    kinds = {kind for row in plan.rows for _gtin, kind, _raw in row.codes}
    assert kinds == set(FORMS)
    assert any(not row.codes for row in plan.rows)
    assert any(len({raw for *_, raw in row.codes}) == 2 for row in plan.rows)
    assert {row.category for row in plan.rows} >= {"Grocery", "Apparel", "Electronics", "Stationery"}
    assert all(0 <= row.expected_qty <= 120 and row.mrp_minor is not None for row in plan.rows)
    small = product_import.parse_file(write_demo_products(tmp_path / "small.csv", count=10).read_bytes(), "s.csv")
    assert {kind for row in small.rows for _gtin, kind, _raw in row.codes} == set(FORMS)


# -- importing and resolving ------------------------------------------------------------------------
def test_demo_import_resolves_every_form_to_its_product(
    box: Box, demo_file: Path, examples: dict[str, tuple[str, str]]
) -> None:
    started = time.perf_counter()
    plan = product_import.parse_file(demo_file.read_bytes(), demo_file.name)
    result = box.db.write(lambda conn: product_import.commit(conn, box.log, plan))
    elapsed = time.perf_counter() - started
    assert result["rows"] == 5000 and result["created"] == 5000 and result["updated"] == 0
    assert elapsed < 2.0, f"5,000 rows took {elapsed:.2f} s to parse and commit"

    conn = box.db.read()
    assert count(conn, "SELECT count(*) FROM products") == 5000
    for kind in FORMS:
        code, sku = examples[kind]
        found = products.resolve(conn, code)
        assert found is not None, kind
        assert (found["sku"], found["matched_by"]) == (sku, kind)
        assert len(found["gtin"]) == 14
    gs1, sku = examples["gs1"]
    found = products.resolve(conn, gs1)
    assert found is not None and found["sku"] == sku and found["matched_by"] == "gtin14"
    gtin = found["gtin"]
    assert products.resolve(conn, f"(01){gtin}(21)DEMO1") == found  # the HRI form of the same scan
    assert products.resolve(conn, f" {gtin}\n") == {**found, "matched_by": "gtin14"}

    code, sku = examples["sku"]
    by_sku = products.resolve(conn, code.lower())
    assert by_sku is not None and by_sku["sku"] == sku and by_sku["matched_by"] == "sku"
    assert products.resolve(conn, "NO-SUCH-THING") is None
    assert products.resolve(conn, "5901234123457") is None  # a valid barcode nobody in the store has
    assert products.resolve(conn, "  ") is None


def test_a_code_with_a_wrong_check_digit_does_not_resolve(box: Box) -> None:
    import_file(box, csv_file("A-1,5901234123457,Tea,,,,,"))
    conn = box.db.read()
    assert products.resolve(conn, "5901234123457") is not None
    assert products.resolve(conn, "5901234123458") is None


def test_verifier_view_has_no_expected_qty(box: Box) -> None:
    import_file(box, csv_file("A-1,5901234123457,Tea,Grocery,Beverages,EA,12.50,40"))
    conn = box.db.read()
    blind = [
        products.resolve(conn, "5901234123457"),
        products.get(conn, "A-1"),
        *products.search(conn, "tea")["items"],
    ]
    assert all(item is not None and "expected_qty" not in item for item in blind)
    seen = [
        products.resolve(conn, "5901234123457", with_expected=True),
        products.get(conn, "A-1", with_expected=True),
        *products.search(conn, "tea", with_expected=True)["items"],
    ]
    assert all(item is not None and item["expected_qty"] == 40 for item in seen)


def test_bad_rows_import_nothing_and_every_bad_line_is_named(box: Box) -> None:
    import_file(box, csv_file("OWNED-1,4006381333931,Pencil,,,,,"))
    conn = box.db.read()
    before_products = count(conn, "SELECT count(*) FROM products")
    before_events = count(conn, "SELECT count(*) FROM events")
    data = csv_file(
        "A-1,5901234123457,Tea,Grocery,,EA,10.00,5",  # 2: fine
        ",012345678905,No SKU,,,,,",  # 3: blank sku
        "A-1,,Tea again,,,,,",  # 4: duplicate of line 2
        "A-3,5901234123458,Wrong check digit,,,,,",  # 5
        "A-4,5901234123457,Shares line 2's code,,,,,",  # 6
        "A-5,,Price,,,,12.345,",  # 7: three decimals
        "A-6,,Quantity,,,,,-1",  # 8
        "A-7,,,,,,,",  # 9: blank name
        f"A-8,,{'x' * 201},,,,,",  # 10: name too long
        "A-9,4006381333931,Taken code,,,,,",  # 11: owned by OWNED-1 in the store
        "A-10,12345,Too short,,,,abc,1.5",  # 12: three problems
    )
    plan = product_import.parse_file(data, "bad.csv")
    with pytest.raises(ValidationFailed) as caught:
        box.db.write(lambda conn: product_import.commit(conn, box.log, plan))
    assert caught.value.code == "IMPORT_INVALID"
    errors = caught.value.details["errors"]

    assert error_at(errors, 3, "sku")["message"] == "sku is blank"
    assert error_at(errors, 4, "sku")["message"] == "SKU A-1 is also on line 2"
    assert error_at(errors, 5, "barcodes") == {
        "line": 5,
        "column": "barcodes",
        "value": "5901234123458",
        "message": "check digit is wrong: expected 7",
    }
    assert error_at(errors, 6, "barcodes")["message"] == "barcode 5901234123457 is also on line 2 (SKU A-1)"
    assert "more than 2 decimals" in error_at(errors, 7, "mrp")["message"]
    assert error_at(errors, 8, "expected_qty") == {
        "line": 8,
        "column": "expected_qty",
        "value": "-1",
        "message": "expected_qty cannot be negative",
    }
    assert error_at(errors, 9, "name")["message"] == "name is blank"
    assert "at most 200" in error_at(errors, 10, "name")["message"]
    assert error_at(errors, 11, "barcodes")["message"] == "barcode 4006381333931 already belongs to SKU OWNED-1"
    assert "this one has 5" in error_at(errors, 12, "barcodes")["message"]
    assert error_at(errors, 12, "mrp")["value"] == "abc"
    assert "whole number" in error_at(errors, 12, "expected_qty")["message"]
    assert 2 not in {error["line"] for error in errors}
    assert [error["line"] for error in errors] == sorted(error["line"] for error in errors)

    assert count(conn, "SELECT count(*) FROM products") == before_products
    assert count(conn, "SELECT count(*) FROM events") == before_events
    assert product_import.preview(conn, plan)["errors"] == errors
    assert product_import.preview(conn, plan)["valid"] is False


@pytest.mark.parametrize(
    ("data", "line", "column", "message"),
    [
        (csv_file("A,,Tea,,,,,,", header=f"{HEADER},Colour"), 1, "Colour", "unknown column 'Colour'"),
        (b"sku,barcodes\nA-1,5901234123457\n", 1, "name", "required column name is missing"),
        (b"name\nTea\n", 1, "sku", "required column sku is missing"),
        (b"sku,name,sku\nA,B,C\n", 1, "sku", "column sku appears twice"),
        (b"", None, None, "the file is empty"),
        (b"sku,name\n", None, None, "no product rows"),
        (b"sku,name\nA-1,Caf\xe9\n", None, None, "not UTF-8"),
        (b"\xd0\xcf\x11\xe0rest of an old workbook", None, None, "save the sheet as .xlsx or CSV"),
        (b"PK\x03\x04 not really a zip", None, None, "not a readable .xlsx workbook"),
        (b"sku,name\nA-1,Tea,surprise\n", 2, None, "which has no header"),
    ],
)
def test_file_level_problems_are_errors_not_crashes(
    data: bytes, line: int | None, column: str | None, message: str
) -> None:
    plan = product_import.parse_file(data, "products.csv")
    assert any(
        error["line"] == line and error["column"] == column and message in error["message"] for error in plan.errors
    ), plan.errors
    assert plan.preview()["valid"] is False


def test_csv_quirks_bom_headers_quotes_and_separators(box: Box) -> None:
    data = (
        "\ufeffSKU , Barcodes,Name,Sub Category,UOM,MRP,Expected_Qty\r\n"
        'A-1,5901234123457 | 012345678905;96385074,"Tea, green",Leaf,kg,10,7\r\n'
        "\r\n"
        'A-2,,"Two-line\r\nname",,,,\r\n'
        "A-3,,Third,,,0.5,\r\n"
        "A-4,,Fourth,,,,x\r\n"
    ).encode()
    plan = product_import.parse_file(data, "quirks.csv")
    assert plan.errors == [
        {"line": 7, "column": "expected_qty", "value": "x", "message": "expected_qty must be a whole number"}
    ]
    first = plan.rows[0]
    assert (first.name, first.subcategory, first.uom, first.mrp_minor, first.expected_qty) == (
        "Tea, green",
        "Leaf",
        "KG",
        1000,
        7,
    )
    assert [kind for _gtin, kind, _raw in first.codes] == ["ean13", "upca", "ean8"]
    assert [row.line for row in plan.rows] == [2, 4, 6, 7]
    assert (plan.rows[1].name, plan.rows[1].uom, plan.rows[1].mrp_minor) == ("Two-line name", "EA", None)
    assert plan.rows[2].mrp_minor == 50
    preview = plan.preview()
    assert preview["rows"] == 4 and len(preview["sample"]) == 4 and preview["sample"][0]["line"] == 2


@pytest.mark.parametrize(
    ("mrp", "minor"),
    [("0", 0), ("123.45", 12345), ("123.4", 12340), ("99", 9900), ("", None), ("000.05", 5)],
)
def test_mrp_becomes_integer_minor_units(mrp: str, minor: int | None) -> None:
    plan = product_import.parse_file(csv_file(f"A,,Tea,,,,{mrp},"), "p.csv")
    assert plan.errors == [] and plan.rows[0].mrp_minor == minor


@pytest.mark.parametrize("mrp", ["-1", "12.345", "1,299.00", "Rs 10", "1e3", "NaN", "12.", ".5"])
def test_bad_mrp_is_a_row_error(mrp: str) -> None:
    plan = product_import.parse_file(csv_file(f'A,,Tea,,,,"{mrp}",'), "p.csv")
    assert [(error["line"], error["column"], error["value"]) for error in plan.errors] == [(2, "mrp", mrp)]


def test_xlsx_import_reads_numbers_as_the_codes_people_typed(box: Box) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["SKU", "Barcodes", "Name", "Category", "MRP", "Expected Qty"])
    sheet.append(["X-1", 5901234123457, "Numeric barcode", "Grocery", 123.45, 12])
    sheet.append(["X-2", "012345678905|96385074", "Text barcodes", "Grocery", 99, None])
    sheet.append([None, None, None, None, None, None])
    sheet.append(["X-3", 10012345678902, "After a blank row", "Household", 5.5, 3.0])
    buffer = io.BytesIO()
    book.save(buffer)
    data = buffer.getvalue()

    for filename in ("catalog.xlsx", "", "upload.bin"):  # by extension, and by sniffing the zip
        plan = product_import.parse_file(data, filename)
        assert plan.errors == [] and [row.line for row in plan.rows] == [2, 3, 5]
    result = import_file(box, data, "catalog.xlsx")
    assert result["created"] == 3
    conn = box.db.read()
    numeric = products.get(conn, "X-1", with_expected=True)
    assert numeric is not None and (numeric["mrp_minor"], numeric["expected_qty"]) == (12345, 12)
    after_blank = products.get(conn, "X-3", with_expected=True)
    assert after_blank is not None and (after_blank["mrp_minor"], after_blank["expected_qty"]) == (550, 3)
    assert products.resolve(conn, "96385074") is not None

    sheet.append(["X-4", 5901234123458, "Wrong check digit", "", "", ""])
    sheet.append(["X-5", 12345678905, "UPC-A typed as a number", "", "", ""])
    buffer = io.BytesIO()
    book.save(buffer)
    errors = product_import.parse_file(buffer.getvalue(), "catalog.xlsx").errors
    assert [(error["line"], error["column"]) for error in errors] == [(6, "barcodes"), (7, "barcodes")]
    assert "leading 0 was lost" in errors[1]["message"]


def test_reimport_updates_the_product_and_keeps_its_id(box: Box) -> None:
    import_file(box, csv_file("A-1,5901234123457|96385074,Tea,Grocery,,EA,10.00,5"))
    conn = box.db.read()
    first = products.get(conn, "A-1", with_expected=True)
    assert first is not None

    result = import_file(
        box, csv_file("a-1,012345678905,Green Tea,Grocery,Leaf,PK,12.00,9", "B-1,96385074,Biscuits,,,,,")
    )
    assert (result["created"], result["updated"]) == (1, 1)
    again = products.get(conn, "A-1", with_expected=True)
    assert again is not None and again["product_id"] == first["product_id"]
    assert (again["name"], again["uom"], again["mrp_minor"], again["expected_qty"]) == ("Green Tea", "PK", 1200, 9)
    assert [code["raw"] for code in again["codes"]] == ["012345678905"]
    assert products.resolve(conn, "5901234123457") is None  # the code the file took away
    moved = products.resolve(conn, "96385074")  # a code may move to another SKU of the same file
    assert moved is not None and moved["sku"] == "B-1"
    assert count(conn, "SELECT count(*) FROM products") == 2


def test_import_is_one_event_and_rebuild_reproduces_the_tables(box: Box, demo_file: Path) -> None:
    import_file(box, demo_file.read_bytes())
    import_file(box, csv_file("GRO-00003,5901234123457,Renamed,Grocery,,EA,1.00,1", "NEW-1,,New,,,,,"))
    conn = box.db.read()
    events = conn.execute("SELECT payload FROM events WHERE type = 'products.imported' ORDER BY pos").fetchall()
    assert len(events) == 2
    before = snapshot(conn)
    assert len(before[0]) == 5001

    assert box.db.write(rebuild) >= 2
    assert snapshot(box.db.read()) == before


def test_import_refuses_an_eight_digit_code_whose_other_reading_another_sku_has(box: Box) -> None:
    # 01234565 reads as EAN-8 00000001234565 and as UPC-E 00012345000065 (UPC-A 012345000065).
    plan = product_import.parse_file(csv_file("A-1,01234565,Tea,,,,,", "B-1,012345000065,Soap,,,,,"), "p.csv")
    assert [(error["line"], error["value"]) for error in plan.errors] == [(3, "012345000065")]
    assert "the same product code as 01234565 on line 2" in plan.errors[0]["message"]


def test_an_ambiguous_code_from_two_replicas_is_a_conflict_not_a_guess(box: Box) -> None:
    # Two boxes that imported before they met can each give one reading to a different product.
    def two_imports(conn: sqlite3.Connection) -> None:
        for sku, code in (
            ("A-1", ("00000001234565", "ean8", "01234565")),
            ("B-1", ("00012345000065", "upca", "012345000065")),
        ):
            row = product_import.ProductRow(line=2, sku=sku, name=f"product {sku}", codes=[code])
            box.log.record(conn, "products.imported", {"import_id": new_id(), "rows": [row.payload(new_id())]})

    box.db.write(two_imports)
    with pytest.raises(Conflict) as caught:
        products.resolve(box.db.read(), "01234565")
    assert caught.value.code == "AMBIGUOUS_BARCODE"
    assert {c["sku"] for c in caught.value.details["candidates"]} == {"A-1", "B-1"}
    found = products.resolve(box.db.read(), "012345000065")
    assert found is not None and found["sku"] == "B-1"


def test_resolving_many_codes_at_once_finds_what_one_at_a_time_finds(
    box: Box, demo_file: Path, examples: dict[str, tuple[str, str]]
) -> None:
    import_file(box, demo_file.read_bytes())
    import_file(box, csv_file("Tea-8,,Tea,,,,,"))

    def from_replicas(conn: sqlite3.Connection) -> None:
        # Two boxes gave one 8-digit code's readings to different products, and SKUs apart only in case.
        for sku, code in (
            ("A-1", ("00000001234565", "ean8", "01234565")),
            ("B-1", ("00012345000065", "upca", "012345000065")),
            ("tea-7", None),
            ("TEA-7", None),
        ):
            row = product_import.ProductRow(line=2, sku=sku, name=f"product {sku}", codes=[code] if code else [])
            box.log.record(conn, "products.imported", {"import_id": new_id(), "rows": [row.payload(new_id())]})

    box.db.write(from_replicas)
    conn = box.db.read()
    gtin = products.resolve(conn, examples["gs1"][0])["gtin"]  # type: ignore[index]
    codes = [code for code, _sku in examples.values()] + [
        f"(01){gtin}(21)X", f" {gtin}\n", examples["sku"][0].lower(), "tea-7", "TEA-7", "Tea-7", "tea-8", "TEA-8 ",
        "01234565", "012345000065", "5901234123457", "5901234123458", "NO-SUCH-THING", "  ", "ümlaut-1",
    ]  # fmt: skip

    def one_at_a_time(code: str) -> tuple[str | None, str]:
        try:
            found = products.resolve(conn, code)
        except Conflict:
            return None, "ambiguous"
        return (None, "unmatched") if found is None else (found["product_id"], found["matched_by"])

    expected = {code: one_at_a_time(code) for code in codes}
    assert products.resolve_ids(conn, codes) == expected
    assert expected["01234565"] == (None, "ambiguous") and expected["  "] == (None, "unmatched")
    assert len({expected[c][0] for c in ("tea-7", "TEA-7", "Tea-7")}) == 2  # exact case first, else the first SKU


def test_the_same_new_sku_from_two_replicas_folds_into_one_product(box: Box) -> None:
    # Each box gave the SKU its own new id; the fold keeps the first id and takes the later values.
    def two_imports(conn: sqlite3.Connection) -> None:
        for name, code in (("First", ("05901234123457", "ean13", "5901234123457")), ("Second", None)):
            row = product_import.ProductRow(line=2, sku="A-1", name=name, codes=[code] if code else [])
            box.log.record(conn, "products.imported", {"import_id": new_id(), "rows": [row.payload(new_id())]})

    box.db.write(two_imports)
    conn = box.db.read()
    assert count(conn, "SELECT count(*) FROM products") == 1
    assert count(conn, "SELECT count(*) FROM product_codes") == 0
    found = products.get(conn, "A-1")
    assert found is not None and found["name"] == "Second"
    before = snapshot(conn)
    box.db.write(rebuild)
    assert snapshot(box.db.read()) == before


def test_search_pages_filters_and_finds_by_barcode(box: Box, demo_file: Path) -> None:
    import_file(box, demo_file.read_bytes())
    conn = box.db.read()
    everything = products.search(conn, None, 50, 0, False)
    assert everything["total"] == 5000 and len(everything["items"]) == 50
    page2 = products.search(conn, None, 50, 50, False)
    assert {p["sku"] for p in page2["items"]}.isdisjoint(p["sku"] for p in everything["items"])

    pens = products.search(conn, "gel pen", 500, 0, False, "STATIONERY")
    assert pens["total"] > 0 and all("Gel Pen" in p["name"] and p["category"] == "Stationery" for p in pens["items"])
    by_prefix = products.search(conn, "stn-0007", 20, 0, False)["items"]
    assert by_prefix[0]["sku"].startswith("STN-0007")
    owner = products.resolve(conn, README_CODE)
    assert owner is not None
    by_code = products.search(conn, README_CODE, 10, 0, False)
    assert [p["sku"] for p in by_code["items"]] == [owner["sku"]]
    assert products.search(conn, "%", 10, 0, False)["total"] == 0  # LIKE wildcards are literal
    assert products.search(conn, None, 10_000, -5, False)["limit"] == 500


def test_get_returns_the_codes_and_none_when_missing(box: Box) -> None:
    import_file(box, csv_file("A-1,5901234123457|01234565,Tea,,,,,"))
    conn = box.db.read()
    found = products.get(conn, "A-1")
    assert found is not None and "expected_qty" not in found
    assert [(c["kind"], c["raw"]) for c in found["codes"]] == [
        ("ean13", "5901234123457"),
        ("ean8", "01234565"),
        ("upce", "01234565"),
    ]
    assert products.get(conn, "a-1") == found
    assert products.get(conn, "NOPE") is None


# -- over HTTP --------------------------------------------------------------------------------------
def test_import_over_http_in_process(box: Box) -> None:
    """The 201 path, on a private box so the shared demo server's catalogue stays as it was."""
    passwords = people.Passwords(1024, 1)
    user = box.db.write(
        lambda conn: people.add_user(conn, box.log, "boss", "", "supervisor", passwords.hash("boss-pass"))
    )
    token, _ = box.db.write(lambda conn: people.issue_token(conn, user.user_id, 600))
    with TestClient(create_app(box)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        answer = client.post(
            "/api/products/import?filename=p.csv",
            content=csv_file("A-1,5901234123457,Tea,,,,10.00,4"),
        )
        assert answer.status_code == 201, answer.text
        assert answer.json()["created"] == 1
        found = client.get("/api/products/resolve", params={"code": "5901234123457"})
        assert found.status_code == 200 and found.json()["expected_qty"] == 4


def test_verifier_never_sees_expected_qty_over_http(demo_server: ServerProcess, demo_tokens: dict[str, str]) -> None:
    for role, blind in (("verifier", True), ("supervisor", False), ("auditor", False)):
        with demo_server.client(demo_tokens[role]) as client:
            listing = client.get("/api/products", params={"limit": 500})
            assert listing.status_code == 200, listing.text
            items = listing.json()["items"]
            sku = items[0]["sku"]
            one = client.get(f"/api/products/{sku}")
            resolved = client.get("/api/products/resolve", params={"code": README_CODE})
            by_sku = client.get("/api/products/resolve", params={"code": sku})
            answers = [listing, one, resolved, by_sku]
            assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
            for answer in answers:
                assert ("expected_qty" in answer.text) is not blind, (role, answer.text[:200])
            assert len(items) == 500 and listing.json()["total"] == 5000


def test_unknown_codes_and_skus_are_404_over_http(demo_server: ServerProcess, demo_tokens: dict[str, str]) -> None:
    with demo_server.client(demo_tokens["verifier"]) as client:
        unknown = client.get("/api/products/resolve", params={"code": "5901234123457"})
        assert unknown.status_code == 404 and unknown.json()["code"] == "UNKNOWN_CODE"
        missing = client.get("/api/products/NO-SUCH-SKU")
        assert missing.status_code == 404 and missing.json()["code"] == "PRODUCT_NOT_FOUND"
        assert client.get("/api/products", params={"limit": 0}).status_code == 400
        refused = client.post("/api/products/import", content=csv_file("A,,B,,,,,"))
        assert refused.status_code == 403


def test_dry_run_and_bad_commit_over_http(demo_server: ServerProcess, demo_tokens: dict[str, str]) -> None:
    bad = csv_file(
        "HTTP-1,5901234123457,Fine,,,,,",
        "HTTP-2,5901234123458,Bad check digit,,,,,",
        f"HTTP-3,{README_CODE},Code of a demo product,,,,,",
        "HTTP-1,,Duplicate,,,,,",
    )
    with demo_server.client(demo_tokens["supervisor"]) as client:
        preview = client.post("/api/products/import", params={"dry_run": True, "filename": "bad.csv"}, content=bad)
        assert preview.status_code == 200, preview.text
        body = preview.json()
        assert body["valid"] is False and body["rows"] == 4
        assert [(e["line"], e["column"]) for e in body["errors"]] == [(3, "barcodes"), (4, "barcodes"), (5, "sku")]
        assert body["errors"][0]["message"] == "check digit is wrong: expected 7"
        owner = client.get("/api/products/resolve", params={"code": README_CODE}).json()["sku"]
        assert body["errors"][1]["message"] == f"barcode {README_CODE} already belongs to SKU {owner}"

        committed = client.post("/api/products/import", params={"filename": "bad.csv"}, content=bad)
        assert committed.status_code == 422
        assert committed.json()["code"] == "IMPORT_INVALID"
        assert committed.json()["details"]["errors"] == body["errors"]
        assert client.get("/api/products/HTTP-1").status_code == 404  # nothing was written

        good = client.post(
            "/api/products/import", params={"dry_run": "true"}, content=csv_file("GRO-00003,,Renamed,,,,,")
        )
        assert good.status_code == 200 and good.json()["valid"] is True
        assert (good.json()["created"], good.json()["updated"]) == (0, 1)
