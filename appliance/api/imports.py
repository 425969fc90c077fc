"""Imports with a preview and a commit, the mappings remembered per source, and blind count sheets.

The file is the request body itself (CSV or XLSX), as at ``/api/products/import``; what a person says
about it travels in the query: ``target`` (products, scope), ``source`` (the name of its origin, under
which its mapping is remembered), ``mapping`` (JSON, {file column: our column}; "" ignores a column),
``run_id`` for a scope and ``filename`` to tell CSV from XLSX. Handlers stay thin: the rules are in
``appliance.reports.imports`` and ``appliance.reports.count_sheets``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import msgspec
from litestar import Response, get, post, put
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody, Parameter, QueryParameter, RawBody

from appliance.api.deps import SMALL_BODY, one_of
from appliance.auth.people import User
from appliance.box import Box
from appliance.errors import ValidationFailed
from appliance.reports import count_sheets, imports

Target = Annotated[str, one_of(imports.TARGETS)]
MAX_MAPPING_TEXT = 64 * 1024


class MappingBody(msgspec.Struct, forbid_unknown_fields=True):
    mapping: dict[str, str]


def _upload(
    body: bytes, target: str, source: str, filename: str, mapping: str | None, run_id: str | None
) -> imports.Upload:
    return imports.Upload(target, body, filename, source, _mapping(mapping), run_id)


def _mapping(text: str | None) -> dict[str, Any] | None:
    """The query's mapping: a JSON object, or nothing (then the source's remembered one is offered)."""
    if text is None or not text.strip():
        return None
    if len(text) > MAX_MAPPING_TEXT:
        raise ValidationFailed("the mapping is too long", code="BAD_MAPPING")
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str | None) for v in value.values()):
        raise ValidationFailed(
            'mapping is a JSON object of file column to our column, such as {"Item Code": "sku", "Desc": "name"}',
            code="BAD_MAPPING",
        )
    return value


@post("/api/imports/preview", opt={"permission": "reports.import"}, sync_to_thread=True, status_code=200)
def preview(
    body: RawBody,
    box: Box,
    target: Target,
    source: str = "",
    filename: str = "",
    mapping: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The dry run: the file's headers with samples, the mapping used, the first rows as they will be
    read, every error, and what a commit would add, change and leave alone. Writes nothing."""
    upload = _upload(body, target, source, filename, mapping, run_id)
    return imports.preview(box.db.read(), upload)


@post("/api/imports/commit", opt={"permission": "reports.import"}, sync_to_thread=True, status_code=201)
def commit(
    body: RawBody,
    box: Box,
    user: User,
    target: Target,
    source: str = "",
    filename: str = "",
    mapping: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """201 with the counts (``message`` "nothing to change" when the file adds and changes nothing, and
    then no event was recorded), or 422 ``IMPORT_INVALID`` with every error and nothing written."""
    upload = _upload(body, target, source, filename, mapping, run_id)
    return box.db.write(lambda conn: imports.commit(conn, box.log, user, upload))


@get("/api/imports/mappings", opt={"permission": "reports.import"}, sync_to_thread=True)
def list_mappings(box: Box, target: Target | None = None) -> list[dict[str, Any]]:
    return imports.list_mappings(box.db.read(), target)


@put(
    "/api/imports/mappings/{target:str}/{source:str}",
    opt={"permission": "reports.import"},
    sync_to_thread=True,
    request_max_body_size=SMALL_BODY * 4,
)
def save_mapping(target: str, source: str, data: JSONBody[MappingBody], box: Box, user: User) -> dict[str, Any]:
    """Remember a mapping for a source; the next preview naming the source is offered it."""
    imports.check_target(target)
    return box.db.write(lambda conn: imports.save_mapping(conn, box.log, user, target, source, data.mapping))


@get(
    "/api/sessions/{session_id:str}/racks/{rack:str}/count-sheet",
    opt={"permission": "sessions.manage"},
    sync_to_thread=True,
)
def count_sheet(
    box: Box,
    session_id: str,
    rack: str,
    fmt: Annotated[Literal["csv", "xlsx"], QueryParameter(name="format")] = "csv",
) -> Response[bytes]:
    """The rack's blind sheet to fill in by hand: no expected quantity, an empty ``counted`` column."""
    name, data = count_sheets.export_sheet(box.db.read(), session_id, rack, fmt)
    media_type = "text/csv; charset=utf-8" if fmt == "csv" else count_sheets.XLSX_TYPE
    return Response(
        data,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


@post(
    "/api/sessions/{session_id:str}/count-sheet",
    opt={"permission": "sessions.manage"},
    sync_to_thread=True,
    status_code=200,
)
def import_count_sheet(
    body: RawBody,
    box: Box,
    user: User,
    session_id: str,
    filename: str = "",
    dry_run: Annotated[bool, Parameter(description="check and show the changes; set nothing")] = False,
) -> dict[str, Any]:
    """A filled sheet: each filled cell sets the session's quantity as the dashboard's "set to N" does;
    an empty cell leaves it alone. All or nothing: 422 ``IMPORT_INVALID`` with every error."""
    if dry_run:
        return count_sheets.preview_sheet(box.db.read(), user, session_id, body, filename)
    return box.db.write(lambda conn: count_sheets.import_sheet(conn, box.log, user, session_id, body, filename))


ROUTES: list[HTTPRouteHandler] = [preview, commit, list_mappings, save_mapping, count_sheet, import_count_sheet]
