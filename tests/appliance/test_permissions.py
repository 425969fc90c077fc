"""Every endpoint by every role (and no token): only the roles its permission names get through."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from appliance.app import API_ROUTES
from appliance.permissions import PERMISSIONS, ROLES
from tests.conftest import DEMO_PASSWORDS, ServerProcess

_counter = itertools.count()


def _sample(method: str, path: str, server: ServerProcess, admin: str) -> dict[str, Any]:
    """A plausible request for each route, so that allowed roles reach the handler itself."""
    unique = next(_counter)
    samples: dict[tuple[str, str], dict[str, Any]] = {
        ("GET", "/api/health"): {},
        ("POST", "/api/auth/login"): {"json": {"username": "nobody", "password": "wrong-password"}},
        ("POST", "/api/auth/logout"): {},
        ("GET", "/api/auth/me"): {},
        ("GET", "/api/users"): {},
        ("POST", "/api/users"): {
            "json": {"username": f"matrix{unique}", "role": "verifier", "password": "matrix-pass"}
        },
        ("GET", "/api/store"): {},
        ("GET", "/api/floors"): {},
        ("POST", "/api/floors"): {"json": {"code": f"MX{unique}", "name": "Matrix"}},
        ("GET", "/api/racks"): {},
        ("POST", "/api/racks"): {"json": {"floor": "G", "code": f"MX-{unique}"}},
        ("GET", "/api/products"): {},
        ("GET", "/api/products/resolve"): {"params": {"code": "not-a-code"}},
        ("GET", "/api/products/{sku:str}"): {"path": {"sku": "NO-SUCH-SKU"}},
        ("POST", "/api/products/import"): {
            "content": b"sku,name\n",
            "params": {"dry_run": "true", "filename": "p.csv"},
        },
        ("GET", "/api/writers"): {},
        ("GET", "/api/writers/{writer_id:str}/events"): {"path": {"writer_id": "x"}},
        ("GET", "/api/writers/{writer_id:str}/verify"): {"path": {"writer_id": "x"}},
    }
    return samples[(method, path)]


def _routes() -> list[tuple[str, str, Any]]:
    found = []
    for handler in API_ROUTES:
        for method in sorted(handler.http_methods - {"HEAD", "OPTIONS"}):  # type: ignore[union-attr]
            for path in handler.paths:  # type: ignore[union-attr]
                found.append((method, path, handler.opt))  # type: ignore[union-attr]
    return found


ROUTES = _routes()


def test_every_route_is_covered_and_declared() -> None:
    for method, path, opt in ROUTES:
        assert opt.get("public") or opt.get("permission") in PERMISSIONS, (method, path)


@pytest.mark.parametrize(("method", "path", "opt"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_only_allowed_roles_get_through(
    method: str, path: str, opt: dict[str, Any], demo_server: ServerProcess, demo_tokens: dict[str, str]
) -> None:
    for who in (None, *ROLES):
        sample = _sample(method, path, demo_server, demo_tokens["admin"])
        url = path
        for name, value in sample.get("path", {}).items():
            url = url.replace(f"{{{name}:str}}", value)
        token = demo_tokens.get(who) if who else None
        if path == "/api/auth/logout" and who:
            token = demo_server.login(who, DEMO_PASSWORDS[who])  # a token of its own to throw away
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answer = httpx.request(
            method,
            demo_server.url + url,
            headers=headers,
            json=sample.get("json"),
            content=sample.get("content"),
            params=sample.get("params"),
            timeout=30,
        )
        body = answer.json()
        if opt.get("public"):
            assert answer.status_code not in (403,), (who, answer.text)
            continue
        allowed = who is not None and who in PERMISSIONS[opt["permission"]]
        if who is None:
            assert answer.status_code == 401 and body["code"] == "UNAUTHENTICATED", answer.text
        elif allowed:
            assert answer.status_code not in (401, 403), (who, answer.text)
        else:
            assert answer.status_code == 403 and body["code"] == "FORBIDDEN", (who, answer.text)


def test_expired_or_bad_token_is_refused(demo_server: ServerProcess) -> None:
    answer = httpx.get(demo_server.url + "/api/auth/me", headers={"Authorization": "Bearer nonsense"})
    assert answer.status_code == 401
    assert answer.json()["code"] == "UNAUTHENTICATED"


def test_login_logout_cycle(demo_server: ServerProcess) -> None:
    token = demo_server.login("supervisor", DEMO_PASSWORDS["supervisor"])
    with demo_server.client(token) as client:
        assert client.get("/api/auth/me").json()["role"] == "supervisor"
        assert client.post("/api/auth/logout").status_code == 200
        assert client.get("/api/auth/me").status_code == 401


def test_wrong_password_has_its_code(demo_server: ServerProcess) -> None:
    answer = httpx.post(
        demo_server.url + "/api/auth/login", json={"username": "auditor", "password": "nope-nope"}
    )
    assert answer.status_code == 401
    assert answer.json()["code"] == "BAD_CREDENTIALS"


def test_openapi_schema_is_public(demo_server: ServerProcess) -> None:
    answer = httpx.get(demo_server.url + "/schema/openapi.json")
    assert answer.status_code == 200
    assert "/api/health" in answer.json()["paths"]
