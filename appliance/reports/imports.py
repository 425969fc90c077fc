"""Imports with a preview and a commit: the product master and a run's scope with its expected quantities.

A file arrives with whatever headers its origin gives it ("Item Code", "EAN", "Qty on hand"). A person
maps them to ours once per **source** (the name they give the file's origin, "ERP weekly"); the
mapping is an event (``import.mapping_saved``, last writer wins), so every box of the store and HQ
offer it the next time the same source is named. Without one, headers that are our names or their
aliases are recognised, and every other column is ignored and listed.

A preview shows the file's headers with a sample of each column to map from, the first rows *as they
will be read* (barcodes as GTIN-14, prices in minor units), every error with its row, both column names,
the value, the reason and how to fix it (an error that only says "invalid" sends a person hunting),
and what a commit would add, change and leave alone. A commit is all-or-nothing, and a file that adds
and changes nothing records no event: importing the same file again leaves the log as it was.

A run's scope file (``sku``, ``rack``, ``expected_qty``) adds products and racks to the run and sets the
run's own expected quantities (``run_expected``), not the master's: a directed count planned against
last week's book stock must not rewrite the book. A SKU on several rows (one per rack, as a bin-level
export has it) is expected in their sum. Once a run has started its expected quantities are frozen,
and a file that would move one is refused, row by row.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.auth.people import User
from appliance.catalog import product_import
from appliance.catalog.product_import import BadValue, Record, header_key
from appliance.counting import runs
from appliance.errors import ValidationFailed
from appliance.reports import import_errors
from appliance.store.eventlog import EventLog, new_id, projection_tables, projector
from replication.wire.codec import Event

projection_tables("import_mappings")

SCOPE_COLUMNS = ("sku", "rack", "expected_qty")
COLUMNS: dict[str, tuple[str, ...]] = {"products": product_import.COLUMNS, "scope": SCOPE_COLUMNS}
REQUIRED: dict[str, tuple[str, ...]] = {"products": product_import.MAPPED_REQUIRED, "scope": ("sku", "expected_qty")}
TARGETS = tuple(COLUMNS)
PREVIEW_ROWS = 20
SAMPLE_VALUES = 5
MAX_SOURCE = 100
MAX_MAPPED = 500  # file columns one mapping may name
MAX_HEADER = 200
_SCOPE_NAMES = {"sku": "sku", "rack": "rack", "rackcode": "rack", "expectedqty": "expected_qty"}
_SCOPE_NAMES |= {"expected": "expected_qty", "qty": "expected_qty", "quantity": "expected_qty"}
NOTHING_TO_CHANGE = "nothing to change"


# -- mappings -----------------------------------------------------------------------------------------
def check_target(target: str) -> str:
    if target not in COLUMNS:
        raise ValidationFailed(
            f"an import's target is one of {', '.join(TARGETS)}, not {target!r}",
            code="UNKNOWN_IMPORT_TARGET",
            details={"target": target, "targets": list(TARGETS)},
        )
    return target


def check_source(source: str) -> str:
    name = " ".join(source.split())
    if not name or len(name) > MAX_SOURCE:
        raise ValidationFailed(
            f"a source is named in 1 to {MAX_SOURCE} characters, such as 'ERP weekly'",
            code="BAD_SOURCE",
            details={"source": source},
        )
    return name


def check_mapping(target: str, mapping: Mapping[str, Any]) -> dict[str, str]:
    """{file column: our column, or "" to ignore it}; two file columns may not feed one of ours, and
    every required column of the target must be fed (a mapping that cannot import is not worth keeping)."""
    ours = COLUMNS[check_target(target)]
    problems: list[str] = []
    clean: dict[str, str] = {}
    if len(mapping) > MAX_MAPPED:
        problems.append(f"a mapping names at most {MAX_MAPPED} columns")
    for file_column, name in mapping.items():
        if not isinstance(file_column, str) or not file_column.strip() or len(file_column) > MAX_HEADER:
            problems.append(f"a file column is named in 1 to {MAX_HEADER} characters, not {file_column!r}")
            continue
        if name is None:
            name = ""
        if not isinstance(name, str) or (name and name not in ours):
            problems.append(f"{file_column!r} is mapped to {name!r}; our columns are {', '.join(ours)}")
            continue
        clean[file_column.strip()] = name
    fed: dict[str, list[str]] = {}
    for file_column, name in clean.items():
        if name:
            fed.setdefault(name, []).append(file_column)
    problems += [
        f"{' and '.join(map(repr, cols))} are all mapped to {name}" for name, cols in fed.items() if len(cols) > 1
    ]
    problems += [f"required column {name} is not mapped" for name in REQUIRED[target] if name not in fed]
    if problems:
        raise ValidationFailed("; ".join(problems), code="BAD_MAPPING", details={"problems": problems})
    return clean


def save_mapping(
    conn: sqlite3.Connection, log: EventLog, actor: User, target: str, source: str, mapping: Mapping[str, Any]
) -> dict[str, Any]:
    """Remember a mapping for a source; saving the one already remembered records nothing."""
    source = check_source(source)
    clean = check_mapping(target, mapping)
    if remembered(conn, target, source) != clean:
        log.record(
            conn, "import.mapping_saved", {"target": target, "source": source, "mapping": clean, "by": actor.user_id}
        )
    found = mapping_view(conn, target, source)
    assert found is not None  # just recorded, or already there
    return found


def remembered(conn: sqlite3.Connection, target: str, source: str) -> dict[str, str] | None:
    row = conn.execute(
        "SELECT mapping FROM import_mappings WHERE target = ? AND source = ?", (target, " ".join(source.split()))
    ).fetchone()
    if row is None:
        return None
    mapping: dict[str, str] = _json_loads(row[0])
    return mapping


def mapping_view(conn: sqlite3.Connection, target: str, source: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT m.*, u.display_name FROM import_mappings m LEFT JOIN users u ON u.user_id = m.by_user"
        " WHERE m.target = ? AND m.source = ?",
        (target, " ".join(source.split())),
    ).fetchone()
    return None if row is None else _mapping_dict(row)


def list_mappings(conn: sqlite3.Connection, target: str | None = None) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT m.*, u.display_name FROM import_mappings m LEFT JOIN users u ON u.user_id = m.by_user"
        " WHERE ?1 IS NULL OR m.target = ?1 ORDER BY m.target, m.source COLLATE NOCASE",
        (target,),
    )
    return [_mapping_dict(row) for row in rows]


def _mapping_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "target": row["target"],
        "source": row["source"],
        "mapping": _json_loads(row["mapping"]),
        "by_user": row["by_user"],
        "by": row["display_name"],
        "saved_at": row["saved_at"],
    }


@projector("import.mapping_saved")
def _mapping_saved(conn: sqlite3.Connection, event: Event) -> None:
    p = event.payload
    conn.execute(
        "INSERT INTO import_mappings (source, target, mapping, by_user, saved_at, hlc, writer_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, target) DO UPDATE SET mapping = excluded.mapping,"
        " by_user = excluded.by_user, saved_at = excluded.saved_at, hlc = excluded.hlc, writer_id = excluded.writer_id"
        " WHERE (excluded.hlc, excluded.writer_id) > (import_mappings.hlc, import_mappings.writer_id)",
        (p["source"], p["target"], _json_dumps(p["mapping"]), p["by"], event.occurred_at, event.hlc, event.writer_id),
    )


# -- a file read through a mapping --------------------------------------------------------------------
@dataclass
class Upload:
    """One file to import and what a person said about it."""

    target: str
    data: bytes
    filename: str = ""
    source: str = ""
    mapping: Mapping[str, Any] | None = None  # None: the source's remembered one, else recognised headers
    run_id: str | None = None


@dataclass
class Reading:
    """The file as read through the mapping chosen for it: nothing written yet."""

    target: str
    headers: list[dict[str, Any]]
    mapping: dict[str, str]
    mapping_from: str  # "given", "remembered" or "recognised"
    rows: list[dict[str, Any]]  # as read, in our columns
    errors: list[dict[str, Any]]
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    writes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # a scope's (event type, payload)
    plan: product_import.ImportPlan | None = None  # a product master's, committed by product_import

    def answer(self, upload: Upload) -> dict[str, Any]:
        nothing = not self.errors and not self.added and not self.changed
        return {
            "target": self.target,
            "source": upload.source,
            "filename": upload.filename,
            "run_id": upload.run_id,
            "headers": self.headers,
            "mapping": self.mapping,
            "mapping_from": self.mapping_from,
            "ignored": [h["header"] for h in self.headers if not h["maps_to"]],
            "rows": len(self.rows),
            "preview": self.rows[:PREVIEW_ROWS],
            "valid": not self.errors,
            "errors": self.errors,
            "added": self.added,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "message": NOTHING_TO_CHANGE if nothing else None,
        }


def preview(conn: sqlite3.Connection, upload: Upload) -> dict[str, Any]:
    """The dry run: everything a commit would do and every reason it would refuse, nothing written."""
    return read(conn, upload).answer(upload)


def commit(conn: sqlite3.Connection, log: EventLog, actor: User, upload: Upload) -> dict[str, Any]:
    """Write the whole file or nothing (one transaction, the caller's), and remember the mapping under
    the source named. A file that adds and changes nothing records nothing at all, not even its mapping
    (the log must not grow with each re-import; ``PUT /api/imports/mappings`` saves one on its own)."""
    reading = read(conn, upload)
    if reading.errors:
        raise ValidationFailed(
            f"{len(reading.errors)} problem(s) in {upload.filename or 'the file'}; nothing was imported",
            code="IMPORT_INVALID",
            details={"errors": reading.errors},
        )
    if not reading.added and not reading.changed:
        return {**_counts(upload, reading), "import_id": None, "message": NOTHING_TO_CHANGE}
    if upload.source.strip():
        save_mapping(conn, log, actor, upload.target, upload.source, reading.mapping)
    import_id: str | None = None
    if reading.plan is not None:
        import_id = product_import.commit(conn, log, reading.plan)["import_id"]
    elif reading.writes:
        import_id = new_id()
    for event_type, payload in reading.writes:
        if event_type == "run.scope_added":
            runs.add_scope(conn, log, actor, payload["run_id"], skus=payload["skus"], rack_codes=payload["racks"])
        else:
            log.record(conn, event_type, {**payload, "import_id": import_id, "by": actor.user_id})
    return {**_counts(upload, reading), "import_id": import_id, "message": None}


def _counts(upload: Upload, reading: Reading) -> dict[str, Any]:
    return {
        "target": upload.target,
        "run_id": upload.run_id,
        "rows": len(reading.rows),
        "added": reading.added,
        "changed": reading.changed,
        "unchanged": reading.unchanged,
    }


def read(conn: sqlite3.Connection, upload: Upload) -> Reading:
    target = check_target(upload.target)
    records, unreadable = product_import.read_records(upload.data, upload.filename)
    if unreadable is not None:
        mapping = dict(upload.mapping or {})
        chosen = "given" if upload.mapping is not None else ""
        return Reading(target, [], mapping, chosen, [], import_errors.explain([unreadable], mapping))
    _header_line, header = records[0]
    mapping, mapping_from = _choose_mapping(conn, upload, header)
    headers = _headers(header, records[1:], mapping)
    if target == "products":
        reading = _read_products(conn, upload, mapping, headers)
    else:
        reading = _read_scope(conn, upload, records, mapping, headers)
    reading.mapping_from = mapping_from
    return reading


def _choose_mapping(conn: sqlite3.Connection, upload: Upload, header: list[str]) -> tuple[dict[str, str], str]:
    if upload.mapping is not None:
        return {str(k).strip(): v or "" for k, v in upload.mapping.items()}, "given"
    if upload.source.strip():
        found = remembered(conn, upload.target, check_source(upload.source))
        if found is not None:
            return found, "remembered"
    return {cell: recognise(upload.target, cell) or "" for cell in header if cell}, "recognised"


def recognise(target: str, cell: str) -> str | None:
    """Our column a header stands for by its name alone."""
    if target == "products":
        return product_import.recognise(cell)
    return _SCOPE_NAMES.get(header_key(cell))


def _headers(header: list[str], body: list[Record], mapping: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each of the file's columns with a few of its values, for a person choosing what it maps to."""
    by_key = {header_key(k): v for k, v in mapping.items()}
    headers = []
    for position, cell in enumerate(header):
        if not cell:
            continue
        samples: list[str] = []
        for _line, cells in body:
            if position < len(cells) and cells[position] and cells[position] not in samples:
                samples.append(cells[position])
                if len(samples) == SAMPLE_VALUES:
                    break
        maps_to = mapping.get(cell, by_key.get(header_key(cell), "")) or None
        headers.append({"position": position + 1, "header": cell, "samples": samples, "maps_to": maps_to})
    return headers


# -- the product master -------------------------------------------------------------------------------
def _read_products(
    conn: sqlite3.Connection, upload: Upload, mapping: dict[str, str], headers: list[dict[str, Any]]
) -> Reading:
    plan = product_import.parse_file(upload.data, upload.filename, mapping)
    answer = product_import.preview(conn, plan)  # fills a mapped file's missing columns from the master
    rows = [_product_as_read(row) for row in plan.rows]
    errors = import_errors.explain(answer["errors"], mapping)
    reading = Reading("products", headers, mapping, "", rows, errors, plan=plan)
    reading.added, reading.changed, reading.unchanged = answer["added"], answer["changed"], answer["unchanged"]
    return reading


def _product_as_read(row: product_import.ProductRow) -> dict[str, Any]:
    return {
        "row": row.line,
        "sku": row.sku,
        "barcodes": list(dict.fromkeys(gtin for gtin, _kind, _raw in row.codes)),
        "name": row.name,
        "category": row.category,
        "subcategory": row.subcategory,
        "uom": row.uom,
        "mrp_minor": row.mrp_minor,
        "expected_qty": row.expected_qty,
    }


# -- a run's scope and expected quantities ------------------------------------------------------------
@dataclass
class _ScopeRow:
    line: int
    sku: str
    rack: str
    expected_qty: int | None


def _read_scope(
    conn: sqlite3.Connection,
    upload: Upload,
    records: list[Record],
    mapping: dict[str, str],
    headers: list[dict[str, Any]],
) -> Reading:
    if not upload.run_id:
        raise ValidationFailed("a scope import names its run (run_id)", code="RUN_REQUIRED")
    run = runs.get_run(conn, upload.run_id)
    (header_line, header), body = records[0], records[1:]
    columns, headed, errors = product_import.map_header(header_line, header, mapping, SCOPE_COLUMNS, REQUIRED["scope"])
    if run["status"] not in ("PLANNED", "IN_PROGRESS"):
        errors.insert(
            0, product_import.error(None, None, run["status"], f"the run is {run['status']}; its scope is fixed")
        )
    rows: list[_ScopeRow] = []
    if all(name in columns.values() for name in REQUIRED["scope"]):
        rows = [_scope_row(line, cells, columns, headed, errors) for line, cells in body]
        if not rows:
            errors.append(product_import.error(None, None, "", "the file has a header but no rows"))
    reading = Reading("scope", headers, mapping, "", [], [])
    reading.rows = [{"row": r.line, "sku": r.sku, "rack": r.rack or None, "expected_qty": r.expected_qty} for r in rows]
    _scope_changes(conn, run, rows, errors, reading)
    errors.sort(key=lambda e: e["line"] or 0)
    reading.errors = import_errors.explain(errors, mapping)
    if reading.errors:
        reading.writes = []
    return reading


def _scope_row(
    line: int, cells: list[str], columns: dict[int, str], headed: set[int], errors: list[dict[str, Any]]
) -> _ScopeRow:
    values = {name: cells[position] if position < len(cells) else "" for position, name in columns.items()}
    for position, cell in enumerate(cells):
        if cell and position not in headed:
            errors.append(
                product_import.error(line, None, cell, f"a value in column {position + 1}, which has no header")
            )
    row = _ScopeRow(line, "", values.get("rack", "").upper(), None)
    try:
        row.sku = product_import.read_sku(values.get("sku", ""))
    except BadValue as exc:
        errors.append(product_import.error(line, "sku", values.get("sku", ""), str(exc)))
    text = values.get("expected_qty", "")
    if not text:
        errors.append(product_import.error(line, "expected_qty", "", "expected_qty is blank"))
    else:
        try:
            row.expected_qty = product_import.read_quantity(text)
        except BadValue as exc:
            errors.append(product_import.error(line, "expected_qty", text, str(exc)))
    return row


def _scope_changes(
    conn: sqlite3.Connection, run: sqlite3.Row, rows: list[_ScopeRow], errors: list[dict[str, Any]], reading: Reading
) -> None:
    """Check each row against the store and the run, and count what the file would add and change."""
    run_id = run["run_id"]
    products = {sku.casefold(): (pid, sku) for pid, sku in conn.execute("SELECT product_id, sku FROM products")}
    racks = {code.upper(): rid for rid, code in conn.execute("SELECT rack_id, code FROM racks")}
    in_scope = {r[0] for r in conn.execute("SELECT product_id FROM run_products WHERE run_id = ?", (run_id,))}
    run_racks = {r[0] for r in conn.execute("SELECT rack_id FROM run_racks WHERE run_id = ?", (run_id,))}
    expected = dict(conn.execute("SELECT product_id, expected_qty FROM run_expected WHERE run_id = ?", (run_id,)))
    started = run["status"] != "PLANNED"
    totals: dict[str, int] = {}
    first: dict[str, _ScopeRow] = {}
    new_racks: dict[str, None] = {}
    seen: dict[tuple[str, str], int] = {}
    product_racks: dict[str, set[str]] = {}
    for row in rows:
        found = products.get(row.sku.casefold()) if row.sku else None
        if row.sku and found is None:
            errors.append(product_import.error(row.line, "sku", row.sku, f"SKU {row.sku} is not in the product master"))
        if row.rack and row.rack not in racks:
            errors.append(
                product_import.error(row.line, "rack", row.rack, f"rack {row.rack} is not a rack of this store")
            )
        if found is None:
            continue
        pid = found[0]
        key = (pid, row.rack)
        if key in seen:
            where = f" on rack {row.rack}" if row.rack else ""
            message = f"SKU {row.sku}{where} is also on line {seen[key]}"
            errors.append(product_import.error(row.line, "sku", row.sku, message))
            continue
        seen[key] = row.line
        first.setdefault(pid, row)
        totals[pid] = totals.get(pid, 0) + (row.expected_qty or 0)
        if row.rack in racks:
            product_racks.setdefault(pid, set()).add(racks[row.rack])
            if racks[row.rack] not in run_racks:
                new_racks[row.rack] = None
    moved: list[list[Any]] = []
    for pid, total in totals.items():
        before = expected.get(pid)
        if before != total:
            if started and before is not None:
                row = first[pid]
                message = f"the run has started and froze SKU {row.sku}'s expected quantity at {before}"
                message += f"; the file says {total}"
                errors.append(product_import.error(row.line, "expected_qty", str(total), message))
                continue
            moved.append([pid, total])
        if pid not in in_scope:
            reading.added += 1
        elif before != total or product_racks.get(pid, set()) - run_racks:
            reading.changed += 1
        else:
            reading.unchanged += 1
    new_skus = [products[first[pid].sku.casefold()][1] for pid in totals if pid not in in_scope]
    if new_skus or new_racks:
        reading.writes.append(("run.scope_added", {"run_id": run_id, "skus": new_skus, "racks": list(new_racks)}))
    if moved:
        reading.writes.append(("run.expected_imported", {"run_id": run_id, "expected": moved}))


@projector("run.expected_imported")
def _run_expected_imported(conn: sqlite3.Connection, event: Event) -> None:
    """The file's value wins over the master's frozen at start, whichever of the two a box folds first:
    the start inserts only where no row is (``INSERT OR IGNORE``), and this replaces what is there."""
    p = event.payload
    conn.executemany(
        "INSERT INTO run_expected (run_id, product_id, expected_qty) VALUES (?, ?, ?)"
        " ON CONFLICT (run_id, product_id) DO UPDATE SET expected_qty = excluded.expected_qty",
        [(p["run_id"], pid, qty) for pid, qty in p["expected"]],
    )


def _json_loads(text: str) -> Any:
    return json.loads(text)


def _json_dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
