"""Every endpoint by every role (and no token): only the roles its permission names get through."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from appliance.app import API_ROUTES
from appliance.auth.permissions import PERMISSIONS, ROLES
from tests.conftest import DEMO_PASSWORDS, ServerProcess


def _request(method: str, path: str) -> dict[str, Any]:
    """Any request reaches the guard, which runs before the body or the ids are looked at; with
    ids that do not exist and an empty body, an allowed role gets 400/404/422, never 401/403."""
    url = re.sub(r"\{[a-z_]+:str\}", "does-not-exist", path)
    if method in ("POST", "PUT", "PATCH"):
        return {"url": url, "json": {}}
    return {"url": url}


def _streams(answer: httpx.Response) -> bool:
    return answer.status_code == 200 and answer.headers.get("content-type", "").startswith("text/event-stream")


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
        declared = opt.get("public") or opt.get("device") or opt.get("node")
        assert declared or opt.get("permission") in PERMISSIONS, (method, path)


@pytest.mark.parametrize(("method", "path", "opt"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_only_allowed_roles_get_through(
    method: str, path: str, opt: dict[str, Any], demo_server: ServerProcess, demo_tokens: dict[str, str]
) -> None:
    for who in (None, *ROLES):
        sample = _request(method, path)
        token = demo_tokens.get(who) if who else None
        if path == "/api/auth/logout" and who:
            token = demo_server.login(who, DEMO_PASSWORDS[who])  # a token of its own to throw away
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.stream(
            method, demo_server.url + sample["url"], headers=headers, json=sample.get("json"), timeout=30
        ) as answer:
            # A live stream never ends: its status and headers are all this test needs.
            body = answer.read() and answer.json() if not _streams(answer) else {}
        if opt.get("public"):
            assert answer.status_code != 403 and answer.status_code < 500, (who, body)
            continue
        if opt.get("device"):  # a person's login is no device credential
            assert answer.status_code == 401, (who, answer.text)
            assert body["code"] == "UNAUTHENTICATED"
            continue
        if opt.get("node"):  # nor a node's signature: box-to-box routes refuse people outright
            assert answer.status_code in (400, 401), (who, answer.text)
            continue
        allowed = who is not None and who in PERMISSIONS[opt["permission"]]
        if who is None:
            assert answer.status_code == 401, answer.text
            assert body["code"] == "UNAUTHENTICATED"
        elif allowed:
            assert answer.status_code not in (401, 403), (who, body)
            assert answer.status_code < 500, (who, body)
        else:
            assert answer.status_code == 403, (who, answer.text)
            assert body["code"] == "FORBIDDEN"


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
    answer = httpx.post(demo_server.url + "/api/auth/login", json={"username": "auditor", "password": "nope-nope"})
    assert answer.status_code == 401
    assert answer.json()["code"] == "BAD_CREDENTIALS"


def test_openapi_schema_is_public(demo_server: ServerProcess) -> None:
    answer = httpx.get(demo_server.url + "/schema/openapi.json")
    assert answer.status_code == 200
    assert "/api/health" in answer.json()["paths"]
