"""Reports: query and group-by, saved queries, snapshots, comparisons, and their exports.

Bodies are typed with their bounds so the document says what is accepted; what depends on the store
(a run or snapshot that does not exist, a filter value nobody has) is the domain's to answer.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Response, delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody, Parameter
from litestar.response import Stream

from appliance.api.deps import LIST_BODY, SMALL_BODY, one_of
from appliance.auth.people import User
from appliance.box import Box
from appliance.counting.runs import get_run
from appliance.errors import ValidationFailed
from appliance.reports import audit, insights, query, snapshots
from appliance.reports import compare as comparing
from appliance.reports import exports as files
from appliance.reports.jobs import ExportJobs
from appliance.reports.table import Table

Id = Annotated[str, msgspec.Meta(max_length=64)]
Value = Annotated[str, msgspec.Meta(max_length=200)]
Group = Annotated[str, one_of(query.GROUPS)]
FORMATS = ("csv", "xlsx", "pdf")
EXPORTABLE = ("query", "snapshot_id", "compare", "audit", "insight")


FilterValues = Annotated[list[Value], msgspec.Meta(max_length=query.MAX_VALUES)]


class Filters(msgspec.Struct, forbid_unknown_fields=True):
    """Each a list of the values to keep (any of them); an empty list filters nothing."""

    floor: FilterValues = []
    rack: FilterValues = []
    category: FilterValues = []
    subcategory: FilterValues = []
    condition: FilterValues = []
    verifier: FilterValues = []
    device: FilterValues = []
    sku: FilterValues = []


class QuerySpec(msgspec.Struct, forbid_unknown_fields=True):
    run_id: Id | None = None
    snapshot_id: Id | None = None
    filters: Filters = msgspec.field(default_factory=Filters)
    with_variance: bool = False
    damaged: bool = False
    unmatched: bool = False
    group_by: Annotated[list[Group], msgspec.Meta(max_length=len(query.GROUPS))] = []
    sort: Annotated[str, msgspec.Meta(max_length=40)] = ""
    descending: bool = False
    limit: Annotated[int, msgspec.Meta(ge=1, le=query.MAX_LIMIT)] = 1000
    offset: Annotated[int, msgspec.Meta(ge=0, le=2**31)] = 0

    def spec(self) -> query.Spec:
        data = msgspec.structs.asdict(self)
        data["filters"] = {name: values for name, values in msgspec.structs.asdict(self.filters).items() if values}
        return query.Spec.from_dict(data)


class SavedQuery(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=query.MAX_QUERY_NAME)]
    spec: QuerySpec


class NewSnapshot(msgspec.Struct, forbid_unknown_fields=True):
    run_id: Id
    name: Annotated[str, msgspec.Meta(max_length=snapshots.MAX_NAME)]
    note: Annotated[str, msgspec.Meta(max_length=snapshots.MAX_NOTE)] = ""


class SideSpec(msgspec.Struct, forbid_unknown_fields=True):
    snapshot_id: Id | None = None
    run_id: Id | None = None


class CompareSpec(msgspec.Struct, forbid_unknown_fields=True):
    a: SideSpec
    b: SideSpec
    changes: Annotated[list[Annotated[str, one_of(comparing.CHANGES)]], msgspec.Meta(min_length=1, max_length=4)] = (
        msgspec.field(default_factory=lambda: ["added", "removed", "changed"])
    )
    rack: Annotated[list[Value], msgspec.Meta(max_length=query.MAX_VALUES)] = []
    category: Annotated[list[Value], msgspec.Meta(max_length=query.MAX_VALUES)] = []
    sku: Annotated[list[Value], msgspec.Meta(max_length=query.MAX_VALUES)] = []
    sort: Annotated[str, one_of(comparing.SORTS)] = "abs_diff"
    descending: bool = True
    limit: Annotated[int, msgspec.Meta(ge=1, le=comparing.MAX_LIMIT)] = 1000
    offset: Annotated[int, msgspec.Meta(ge=0, le=2**31)] = 0

    def spec(self) -> comparing.Comparison:
        data = msgspec.structs.asdict(self)
        data["a"] = comparing.Side(**msgspec.structs.asdict(self.a))
        data["b"] = comparing.Side(**msgspec.structs.asdict(self.b))
        return comparing.Comparison(**data)


class AuditSpec(msgspec.Struct, forbid_unknown_fields=True):
    run_id: Id | None = None


class InsightSpec(msgspec.Struct, forbid_unknown_fields=True):
    kind: Annotated[str, one_of(insights.KINDS)]
    run_id: Id


class ExportRequest(msgspec.Struct, forbid_unknown_fields=True):
    format: Annotated[str, one_of(FORMATS)]
    query: QuerySpec | None = None
    snapshot_id: Id | None = None
    compare: CompareSpec | None = None
    audit: AuditSpec | None = None
    insight: InsightSpec | None = None


# -- query ------------------------------------------------------------------------------------------
@post(
    "/api/reports/query",
    opt={"permission": "reports.read"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=LIST_BODY,
)
def run_query(data: JSONBody[QuerySpec], box: Box) -> dict[str, Any]:
    return query.run_query(box.db.read(), data.spec())


@get("/api/reports/queries", opt={"permission": "reports.read"}, sync_to_thread=True)
def list_queries(box: Box) -> list[dict[str, Any]]:
    return query.list_queries(box.db.read())


@post(
    "/api/reports/queries",
    opt={"permission": "reports.write"},
    sync_to_thread=True,
    status_code=201,
    request_max_body_size=LIST_BODY,
)
def save_query(data: JSONBody[SavedQuery], box: Box, user: User) -> dict[str, Any]:
    spec = data.spec.spec()
    return box.db.write(lambda conn: query.save_query(conn, box.log, user, data.name, spec))


@delete(
    "/api/reports/queries/{query_id:str}", opt={"permission": "reports.write"}, sync_to_thread=True, status_code=200
)
def delete_query(query_id: str, box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: query.delete_query(conn, box.log, user, query_id))
    return {"query_id": query_id, "deleted": True}


# -- snapshots --------------------------------------------------------------------------------------
@post(
    "/api/reports/snapshots",
    opt={"permission": "reports.write"},
    sync_to_thread=True,
    status_code=201,
    request_max_body_size=SMALL_BODY,
)
def take_snapshot(data: JSONBody[NewSnapshot], box: Box, user: User) -> dict[str, Any]:
    return box.db.write(lambda conn: snapshots.take(conn, box.log, user, data.run_id, data.name, data.note))


@get("/api/reports/snapshots", opt={"permission": "reports.read"}, sync_to_thread=True)
def list_snapshots(box: Box, run_id: Annotated[str | None, Parameter(max_length=64)] = None) -> list[dict[str, Any]]:
    return snapshots.list_snapshots(box.db.read(), run_id)


@get("/api/reports/snapshots/{snapshot_id:str}", opt={"permission": "reports.read"}, sync_to_thread=True)
def get_snapshot(snapshot_id: str, box: Box) -> dict[str, Any]:
    return snapshots.get_snapshot(box.db.read(), snapshot_id)


@get(
    "/api/reports/snapshots/{snapshot_id:str}/export.csv",
    opt={"permission": "reports.read", "token_in_query": True},  # a browser's plain link, with ?ticket=
    media_type="text/csv",
)
async def snapshot_csv(snapshot_id: str, box: Box) -> Stream:
    """The whole snapshot as CSV, streamed as it is read: no size cap, and no file left on the box."""
    table = snapshots.as_table(box.db.read(), snapshot_id)  # refuses an unknown snapshot before streaming
    return _csv_stream(table, f"snapshot-{snapshot_id}.csv")


def _csv_stream(table: Table, filename: str) -> Stream:
    return Stream(
        files.csv_chunks(table),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# -- compare ----------------------------------------------------------------------------------------
@post(
    "/api/reports/compare",
    opt={"permission": "reports.read"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=LIST_BODY,
)
def compare(data: JSONBody[CompareSpec], box: Box) -> dict[str, Any]:
    return comparing.compare(box.db.read(), data.spec())


# -- audit ------------------------------------------------------------------------------------------
@get("/api/reports/audit", opt={"permission": "reports.read"}, sync_to_thread=True)
def audit_report(
    box: Box,
    run_id: Annotated[str | None, Parameter(max_length=64)] = None,
    limit: Annotated[int, Parameter(ge=1, le=audit.MAX_ENTRIES)] = 1000,
) -> dict[str, Any]:
    """Every writer's chain verified, and the decisions and administrative actions (of one run, or all)."""
    conn = box.db.read()
    if run_id is not None:
        get_run(conn, run_id)
    return audit.report(conn, run_id=run_id, limit=limit)


# -- exports ----------------------------------------------------------------------------------------
@post(
    "/api/reports/exports",
    opt={"permission": "reports.read"},
    sync_to_thread=True,
    status_code=202,
    request_max_body_size=LIST_BODY,
)
def export(data: JSONBody[ExportRequest], box: Box, user: User, exports: ExportJobs) -> Response[dict[str, Any]]:
    """Any report, query or comparison as a file, made in the background: the answer is the job, whose
    progress ``GET /api/exports/{job_id}`` shows and whose file it serves when done. What to export is
    checked now, so a job never fails for a request that was wrong from the start."""
    conn = box.db.read()
    chosen = [name for name in ("query", "snapshot_id", "compare", "audit") if getattr(data, name) is not None]
    if len(chosen) != 1:
        raise ValidationFailed("name one of query, snapshot_id, compare or audit to export", details={"field": "query"})
    if data.query is not None:
        spec = data.query.spec()
        query.check(conn, spec)
        what: dict[str, Any] = {"query": spec.to_dict()}

        def make(c: Any) -> Table:
            return query.as_table(c, spec, "Query")

    elif data.snapshot_id is not None:
        snapshot_id = data.snapshot_id
        snapshots.get_snapshot(conn, snapshot_id)
        what = {"snapshot_id": snapshot_id}

        def make(c: Any) -> Table:
            return snapshots.as_table(c, snapshot_id)

    elif data.insight is not None:
        kind, insight_run = data.insight.kind, data.insight.run_id
        if kind not in insights.KINDS:
            raise ValidationFailed(f"kind is one of {', '.join(insights.KINDS)}", details={"field": "kind"})
        get_run(conn, insight_run)
        what = {"insight": {"kind": kind, "run_id": insight_run}}

        def make(c: Any) -> Table:
            return insights.as_table(c, kind, insight_run)

    elif data.audit is not None:
        run_id = data.audit.run_id
        if run_id is not None:
            get_run(conn, run_id)
        what = {"audit": {"run_id": run_id}}

        def make(c: Any) -> Table:
            return audit.as_table(c, run_id=run_id)

    else:
        assert data.compare is not None
        comparison = data.compare.spec()
        comparison.check(conn)
        what = {"compare": msgspec.to_builtins(data.compare)}

        def make(c: Any) -> Table:
            return comparing.as_table(c, comparison)

    job = exports.submit(make, what, data.format, user.user_id)
    return Response(job, status_code=202)


ROUTES: list[HTTPRouteHandler] = [
    run_query,
    list_queries,
    save_query,
    delete_query,
    take_snapshot,
    list_snapshots,
    get_snapshot,
    snapshot_csv,
    compare,
    audit_report,
    export,
]
