"""This box's export jobs: the list, one job's progress, and its file once done.

Jobs are submitted by the report, query and compare routes (``appliance.api.reports``); these routes
only follow them. The file is streamed from disk, never read whole into memory.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import get
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter
from litestar.response import File

from appliance.reports.jobs import MEDIA_TYPES, ExportJobs

MAX_LIST = 200


@get("/api/exports", opt={"permission": "reports.read"}, sync_to_thread=True)
def list_exports(exports: ExportJobs, limit: Annotated[int, Parameter(ge=1, le=MAX_LIST)] = 50) -> list[dict[str, Any]]:
    """The newest first."""
    return exports.list(limit)


@get("/api/exports/{job_id:str}", opt={"permission": "reports.read"}, sync_to_thread=True)
def get_export(exports: ExportJobs, job_id: str) -> dict[str, Any]:
    return exports.get(job_id)


@get(
    "/api/exports/{job_id:str}/download",
    opt={"permission": "reports.read", "token_in_query": True},
    sync_to_thread=True,
)
def download_export(exports: ExportJobs, job_id: str) -> File:
    """404 EXPORT_NOT_FOUND for no such job (or a file cleaned up), 409 EXPORT_NOT_READY while it is
    queued or running, 409 EXPORT_FAILED when it failed."""
    path = exports.path(job_id)
    job = exports.get(job_id)
    return File(
        path=path,
        filename=job["file"] or path.name,
        media_type=MEDIA_TYPES[job["format"]],
        content_disposition_type="attachment",
        headers={"Cache-Control": "no-store"},
    )


ROUTES: list[HTTPRouteHandler] = [list_exports, get_export, download_export]
