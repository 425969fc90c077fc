"""The plain HTTP port of a box that serves HTTPS: health, the store CA, and a way to the HTTPS port.

A handheld that has not yet trusted the store CA cannot open the box's HTTPS at all, so the CA itself
must come over plain HTTP, with a page a person can compare its fingerprint on. Health stays on plain
HTTP for monitoring and for devices that check the LAN before they pair. Everything else is a 308
to the same path on HTTPS: 308 keeps the method and body, so an old client's POST still lands, and
nothing but these three is ever answered in the clear.
"""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CA_MEDIA_TYPE = "application/x-x509-ca-cert"
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;margin:1.5rem;max-width:40rem}}
.fp{{font:1.1rem/1.6 ui-monospace,monospace;background:#f3f3f3;padding:.75rem;border-radius:.4rem}}
a.button{{display:inline-block;padding:.6rem 1rem;background:#1f5fbf;color:#fff;border-radius:.4rem;
text-decoration:none}}</style></head>
<body>{body}</body></html>
"""

_WITH_CA = """<h1>{store}: install the store's certificate</h1>
<p>This box serves the dashboard and the handhelds over HTTPS, with a certificate made by the store's own
certificate authority. Install that authority's certificate once on each handheld, tablet or computer.</p>
<p><a class="button" href="/ca.pem">Download the store certificate</a></p>
<p>Before you trust it, check that its SHA-256 fingerprint reads exactly:</p>
<p class="fp">{groups}</p>
<h2>Android and Zebra</h2>
<p>Settings &rsaquo; Security &rsaquo; Encryption &amp; credentials &rsaquo; Install a certificate &rsaquo;
CA certificate, then choose the downloaded file. Zebra devices can also take it by a StageNow CertMgr profile.</p>
<h2>iPhone and iPad</h2>
<p>Open this page in Safari and download the certificate, then Settings &rsaquo; General &rsaquo; VPN &amp; Device
Management &rsaquo; install the profile, and Settings &rsaquo; General &rsaquo; About &rsaquo;
Certificate Trust Settings: turn on full trust for it.</p>
<h2>Then</h2>
<p>Open <a href="{https}">{https}</a>.</p>
"""

_WITHOUT_CA = """<h1>{store}</h1>
<p>This box uses the retailer's own certificate; your device trusts it already if the retailer's
authority is installed. Open <a href="{https}">{https}</a>.</p>
"""


def grouped(fingerprint: str) -> str:
    """Byte pairs in rows of eight, upper case, as Android, iOS and browsers show a fingerprint."""
    pairs = [fingerprint[i : i + 2].upper() for i in range(0, len(fingerprint), 2)]
    return "<br>".join(" ".join(pairs[i : i + 8]) for i in range(0, len(pairs), 8))


def _host(scope: Scope) -> str:
    """The host the client asked for (without its port); a Host header that is not one is not echoed."""
    for name, value in scope.get("headers", []):
        if name == b"host":
            text = value.decode("latin-1")
            match = _HOST.match(text)
            if match:
                return match.group(1)
    server = scope.get("server")
    host = str(server[0]) if server else "localhost"
    return f"[{host}]" if ":" in host else host


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def plain_app(
    app: Callable[..., Awaitable[None]],
    *,
    https_port: int,
    store_name: str,
    ca_pem: bytes | None,
    ca_fingerprint: str | None,
) -> ASGIApp:
    """``app`` answers health itself (the same body, whichever port asked); the rest is answered here."""

    async def plain(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        https = f"https://{_host(scope)}:{https_port}"
        if method in ("GET", "HEAD") and path == "/api/health":
            await app(scope, receive, send)
        elif method in ("GET", "HEAD") and path == "/ca.pem":
            if ca_pem is None:
                text = b"this box uses the retailer's own certificate; there is no store CA to install\n"
                await _answer(send, 404, text, [(b"content-type", b"text/plain; charset=utf-8")])
                return
            headers = [
                (b"content-type", CA_MEDIA_TYPE.encode()),
                (b"content-disposition", b'attachment; filename="stockverify-store-ca.crt"'),
                (b"cache-control", b"no-store"),
            ]
            await _answer(send, 200, ca_pem, headers)
        elif method in ("GET", "HEAD") and path == "/ca":
            store = html.escape(store_name)
            if ca_fingerprint is None:
                body = _WITHOUT_CA.format(store=store, https=html.escape(https + "/"))
            else:
                body = _WITH_CA.format(store=store, groups=grouped(ca_fingerprint), https=html.escape(https + "/"))
            page = _PAGE.format(title=f"{store}: store certificate", body=body).encode()
            await _answer(send, 200, page, [(b"content-type", b"text/html; charset=utf-8")])
        else:
            target = https + scope.get("raw_path", path.encode()).decode("latin-1")
            if scope.get("query_string"):
                target += "?" + scope["query_string"].decode("latin-1")
            await _answer(send, 308, b"", [(b"location", target.encode("latin-1")), (b"content-length", b"0")])

    return plain
