"""Browser routes: the dashboard page and its static assets, all served from the box (no CDN).

The page is one HTML shell; its views are ES modules under ``/static/js`` loaded as a person opens
them, with no build step. Its Content-Security-Policy lets it load and connect to the box alone, so even
a mistake in a page cannot make a store's browser reach another host.
"""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

STATIC_DIR = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",  # blob: for the pairing QR code, fetched with the login token
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@get("/", opt={"public": True}, media_type=MediaType.HTML, sync_to_thread=False, include_in_schema=False)
def dashboard() -> Response[str]:
    return Response((STATIC_DIR / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)


ROUTES: list[ControllerRouterHandler] = [
    dashboard,
    # no-cache: the browser revalidates, so a box upgraded in place never runs yesterday's modules.
    create_static_files_router(
        path="/static", directories=[STATIC_DIR], opt={"public": True}, cache_control=CacheControlHeader(no_cache=True)
    ),
]
