"""Browser routes: the pages and their static assets, all served from the box (no CDN)."""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, get
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

STATIC_DIR = Path(__file__).parent / "static"


@get("/", opt={"public": True}, media_type=MediaType.HTML, sync_to_thread=False, include_in_schema=False)
def index() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


ROUTES: list[ControllerRouterHandler] = [
    index,
    create_static_files_router(path="/static", directories=[STATIC_DIR], opt={"public": True}),
]
