"""The verifier's scanning page: its own entry (``/handheld/``), its manifest and its service worker.

The page is plain ES modules under ``/static/handheld``; its third-party code is bundled by ``make`` into
``/static/vendor`` (package.json). The service worker is served from ``/handheld/`` so that its scope
covers the page, with the shell's file list and a hash of their contents written in: a box upgraded in
place serves a changed worker, and handhelds pick up the new page the next time they reach the box.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache

from litestar import MediaType, Response, get
from litestar.types import ControllerRouterHandler

from web.routes import PAGE_HEADERS, STATIC_DIR

HANDHELD_DIR = STATIC_DIR / "handheld"
VENDOR_DIR = STATIC_DIR / "vendor"

# The page's policy adds to the dashboard's: WebAssembly for the camera decoder, the service worker,
# the manifest, and camera frames and photos as blob:/mediastream.
HANDHELD_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob: mediastream:",
        "connect-src 'self'",
        "worker-src 'self'",
        "manifest-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HANDHELD_HEADERS = {**PAGE_HEADERS, "Content-Security-Policy": HANDHELD_POLICY}

# What the page needs to open with the box out of reach; the camera decoder is cached when first used.
_SHELL_FILES = ("handheld.css", "icon-192.png")


class AssetsMissing(RuntimeError):
    """The vendor bundle was not built: ``make`` builds it (node and npm), a release wheel carries it."""


@cache
def shell() -> tuple[list[str], str]:
    """The shell's URLs and a hash of their contents, computed once per process (files change only
    with an upgrade, which restarts the box)."""
    vendor = VENDOR_DIR / "handheld.js"
    if not vendor.exists():
        raise AssetsMissing(f"{vendor} is missing: run `make assets` (needs node and npm) or install a release wheel")
    files = {
        "/handheld/": HANDHELD_DIR / "index.html",
        "/handheld/manifest.webmanifest": HANDHELD_DIR / "manifest.webmanifest",
        "/static/vendor/handheld.js": vendor,
    }
    files.update({f"/static/handheld/{name}": HANDHELD_DIR / name for name in _SHELL_FILES})
    files.update({f"/static/handheld/js/{path.name}": path for path in sorted((HANDHELD_DIR / "js").glob("*.js"))})
    digest = hashlib.sha256()
    for url, path in sorted(files.items()):
        digest.update(url.encode() + b"\0" + path.read_bytes() + b"\0")
    return sorted(files), digest.hexdigest()[:16]


# Litestar serves ``/handheld`` and ``/handheld/`` alike; the manifest and links use ``/handheld/``, inside
# the service worker's scope.
@get("/handheld", opt={"public": True}, media_type=MediaType.HTML, sync_to_thread=False, include_in_schema=False)
def handheld_page() -> Response[str]:
    return Response((HANDHELD_DIR / "index.html").read_text(encoding="utf-8"), headers=HANDHELD_HEADERS)


@get("/handheld/manifest.webmanifest", opt={"public": True}, sync_to_thread=False, include_in_schema=False)
def manifest() -> Response[bytes]:
    body = (HANDHELD_DIR / "manifest.webmanifest").read_bytes()
    return Response(body, media_type="application/manifest+json", headers={"Cache-Control": "no-cache"})


@get("/handheld/sw.js", opt={"public": True}, sync_to_thread=False, include_in_schema=False)
def service_worker() -> Response[str]:
    urls, version = shell()
    source = (HANDHELD_DIR / "sw.js").read_text(encoding="utf-8")
    source = source.replace("__VERSION__", version).replace("__SHELL__", json.dumps(urls))
    # no-cache: the browser checks for a new worker on every visit that reaches the box.
    return Response(source, media_type="text/javascript", headers={"Cache-Control": "no-cache"})


ROUTES: list[ControllerRouterHandler] = [handheld_page, manifest, service_worker]
