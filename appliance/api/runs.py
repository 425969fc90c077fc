"""Count runs: plan, scope, lifecycle, rollups, variance, recounts and decisions (supervisors)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, get, patch, post, put
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody, Parameter

from appliance.api.deps import LIST_BODY, SMALL_BODY, one_of, user_id_for
from appliance.auth.people import User
from appliance.box import Box
from appliance.counting import activity, conflicts, rollups, runs, sessions, variance


class NewRun(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    kind: Annotated[str, one_of(runs.RUN_KINDS)] = "directed"
    notes: str = ""
    planned_start: str | None = None


class RunEdit(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None
    notes: str | None = None
    planned_start: str | None = None


class Scope(msgspec.Struct, forbid_unknown_fields=True):
    skus: list[str] = []
    racks: list[str] = []


class Transition(msgspec.Struct, forbid_unknown_fields=True):
    reason: str = ""
    force: bool = False


class NewSession(msgspec.Struct, forbid_unknown_fields=True):
    racks: list[str] = []
    verifier: str | None = None
    device_id: str | None = None


class Recount(msgspec.Struct, forbid_unknown_fields=True):
    skus: list[str]
    verifier: str
    racks: list[str] = []


class Decision(msgspec.Struct, forbid_unknown_fields=True):
    sku: str
    decision: Annotated[str, one_of(variance.DECISIONS)]
    reason_code: Annotated[str, one_of(variance.REASON_CODES)]
    note: str = ""


class Tolerance(msgspec.Struct, forbid_unknown_fields=True):
    scope: Annotated[str, one_of(variance.SCOPES)]
    units: int
    pct_bp: int
    code: str = ""


def run_view(box: Box, run_id: str) -> dict[str, Any]:
    conn = box.db.read()
    return {
        **runs.run_dict(runs.get_run(conn, run_id)),
        "sessions": sessions.list_sessions(conn, run_id=run_id),
        "buckets": rollups.buckets(conn, run_id),
        "open_conflicts": len(conflicts.conflicts(conn, run_id)),
    }


@get("/api/runs", opt={"permission": "runs.read"}, sync_to_thread=True)
def list_runs(box: Box) -> list[dict[str, Any]]:
    return runs.list_runs(box.db.read())


@post(
    "/api/runs",
    opt={"permission": "runs.manage"},
    sync_to_thread=True,
    status_code=201,
    request_max_body_size=SMALL_BODY,
)
def create_run(data: JSONBody[NewRun], box: Box, user: User) -> dict[str, Any]:
    run_id = box.db.write(
        lambda conn: runs.create_run(
            conn, box.log, user, name=data.name, kind=data.kind, notes=data.notes, planned_start=data.planned_start
        )
    )
    return run_view(box, run_id)


@get("/api/runs/{run_id:str}", opt={"permission": "runs.read"}, sync_to_thread=True)
def get_run(box: Box, run_id: str) -> dict[str, Any]:
    return run_view(box, run_id)


@patch(
    "/api/runs/{run_id:str}", opt={"permission": "runs.manage"}, sync_to_thread=True, request_max_body_size=SMALL_BODY
)
def edit_run(run_id: str, data: JSONBody[RunEdit], box: Box, user: User) -> dict[str, Any]:
    box.db.write(
        lambda conn: runs.edit_run(
            conn, box.log, user, run_id, name=data.name, notes=data.notes, planned_start=data.planned_start
        )
    )
    return run_view(box, run_id)


@post(
    "/api/runs/{run_id:str}/scope",
    opt={"permission": "runs.manage"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=LIST_BODY,
)
def add_scope(run_id: str, data: JSONBody[Scope], box: Box, user: User) -> dict[str, Any]:
    return box.db.write(lambda conn: runs.add_scope(conn, box.log, user, run_id, skus=data.skus, rack_codes=data.racks))


@post("/api/runs/{run_id:str}/scope/import", opt={"permission": "runs.manage"}, status_code=200)
async def import_scope(run_id: str, request: Request[Any, Any, State], box: Box, user: User) -> dict[str, Any]:
    """The directed list as CSV in the body: a ``sku`` and/or a ``rack`` column."""
    skus, racks = runs.parse_scope_csv(await request.body())
    return await box.db.awrite(lambda conn: runs.add_scope(conn, box.log, user, run_id, skus=skus, rack_codes=racks))


@post("/api/runs/{run_id:str}/start", opt={"permission": "runs.manage"}, sync_to_thread=True, status_code=200)
def start_run(run_id: str, box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: runs.start_run(conn, box.log, user, run_id))
    return run_view(box, run_id)


@post(
    "/api/runs/{run_id:str}/complete",
    opt={"permission": "runs.manage"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
def complete_run(run_id: str, box: Box, user: User, data: JSONBody[Transition | None] = None) -> dict[str, Any]:
    body = data or Transition()
    box.db.write(lambda conn: runs.complete_run(conn, box.log, user, run_id, force=body.force, reason=body.reason))
    return run_view(box, run_id)


@post("/api/runs/{run_id:str}/close", opt={"permission": "runs.manage"}, sync_to_thread=True, status_code=200)
def close_run(run_id: str, box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: runs.close_run(conn, box.log, user, run_id))
    return run_view(box, run_id)


@post(
    "/api/runs/{run_id:str}/cancel",
    opt={"permission": "runs.manage"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
def cancel_run(run_id: str, data: JSONBody[Transition], box: Box, user: User) -> dict[str, Any]:
    box.db.write(lambda conn: runs.cancel_run(conn, box.log, user, run_id, reason=data.reason))
    return run_view(box, run_id)


@post(
    "/api/runs/{run_id:str}/sessions",
    opt={"permission": "sessions.manage"},
    sync_to_thread=True,
    status_code=201,
    request_max_body_size=LIST_BODY,
)
def create_session(run_id: str, data: JSONBody[NewSession], box: Box, user: User) -> dict[str, Any]:
    def job(conn: Any) -> str:
        verifier_id = user_id_for(conn, data.verifier) if data.verifier else None
        return sessions.create_session(
            conn, box.log, user, run_id, verifier_id=verifier_id, device_id=data.device_id, rack_codes=data.racks
        )

    session_id = box.db.write(job)
    conn = box.db.read()
    return sessions.session_dict(conn, sessions.get_session(conn, session_id))


@get("/api/runs/{run_id:str}/rollup", opt={"permission": "runs.read"}, sync_to_thread=True)
def rollup(box: Box, run_id: str) -> dict[str, Any]:
    conn = box.db.read()
    runs.get_run(conn, run_id)
    return rollups.run_rollup(conn, run_id)


@get("/api/runs/{run_id:str}/buckets", opt={"permission": "runs.read"}, sync_to_thread=True)
def buckets(box: Box, run_id: str) -> dict[str, Any]:
    conn = box.db.read()
    runs.get_run(conn, run_id)
    return rollups.buckets(conn, run_id)


@get("/api/runs/{run_id:str}/activity", opt={"permission": "runs.read"}, sync_to_thread=True)
def run_activity(
    box: Box, run_id: str, minutes: Annotated[int, Parameter(ge=1, le=activity.MAX_MINUTES)] = 60
) -> dict[str, Any]:
    """Scans per minute and racks completed over time, for the dashboard's charts."""
    return activity.activity(box.db.read(), run_id, minutes)


@get("/api/runs/{run_id:str}/variance", opt={"permission": "runs.read"}, sync_to_thread=True)
def variance_lines(box: Box, run_id: str, out_of_tolerance: bool = False) -> list[dict[str, Any]]:
    lines = variance.variance_lines(box.db.read(), run_id)
    return [line for line in lines if not line["within_tolerance"]] if out_of_tolerance else lines


@post(
    "/api/runs/{run_id:str}/recounts",
    opt={"permission": "runs.manage"},
    sync_to_thread=True,
    status_code=201,
    request_max_body_size=LIST_BODY,
)
def order_recount(run_id: str, data: JSONBody[Recount], box: Box, user: User) -> dict[str, Any]:
    def job(conn: Any) -> str:
        return variance.order_recount(
            conn,
            box.log,
            user,
            run_id,
            skus=data.skus,
            verifier_id=user_id_for(conn, data.verifier),
            rack_codes=data.racks,
        )

    session_id = box.db.write(job)
    conn = box.db.read()
    return sessions.session_dict(conn, sessions.get_session(conn, session_id))


@post(
    "/api/runs/{run_id:str}/decisions",
    opt={"permission": "runs.manage"},
    sync_to_thread=True,
    status_code=201,
    request_max_body_size=SMALL_BODY,
)
def decide(run_id: str, data: JSONBody[Decision], box: Box, user: User) -> dict[str, Any]:
    return box.db.write(
        lambda conn: variance.decide(
            conn,
            box.log,
            user,
            run_id,
            sku=data.sku,
            decision=data.decision,
            reason_code=data.reason_code,
            note=data.note,
        )
    )


@get("/api/tolerances", opt={"permission": "runs.read"}, sync_to_thread=True)
def list_tolerances(box: Box) -> list[dict[str, Any]]:
    rows = box.db.read().execute("SELECT scope, scope_id, units, pct_bp FROM tolerances ORDER BY scope, scope_id")
    return [dict(row) for row in rows]


@put("/api/tolerances", opt={"permission": "tolerances.write"}, sync_to_thread=True, request_max_body_size=SMALL_BODY)
def set_tolerance(data: JSONBody[Tolerance], box: Box, user: User) -> dict[str, Any]:
    return box.db.write(
        lambda conn: variance.set_tolerance(
            conn, box.log, user, scope=data.scope, code=data.code, units=data.units, pct_bp=data.pct_bp
        )
    )


ROUTES: list[HTTPRouteHandler] = [
    list_runs,
    create_run,
    get_run,
    edit_run,
    add_scope,
    import_scope,
    start_run,
    complete_run,
    close_run,
    cancel_run,
    create_session,
    rollup,
    buckets,
    run_activity,
    variance_lines,
    order_recount,
    decide,
    list_tolerances,
    set_tolerance,
]
