"""Logging in and out: a username and password buy an expiring bearer token."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from appliance.api.deps import SMALL_BODY, bearer_token
from appliance.auth.people import LoginThrottle, Passwords, User, find_login, issue_token, revoke_token
from appliance.auth.permissions import PERMISSIONS, allowed
from appliance.box import Box
from appliance.errors import Unauthenticated


class LoginForm(msgspec.Struct, forbid_unknown_fields=True):
    username: str
    password: str


@post(
    "/api/auth/login",
    opt={"public": True},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
def login(
    data: JSONBody[LoginForm],
    box: Box,
    login_throttle: LoginThrottle,
    passwords: Passwords,
    request: Request[Any, Any, State],
) -> dict[str, Any]:
    login_throttle.check(request.client.host if request.client else "?", data.username)
    user, stored_hash = find_login(box.db.read(), data.username)
    # Verified on this request thread: argon2 is slow on purpose and must not hold the writer.
    if not passwords.verify(stored_hash, data.password) or user is None:
        raise Unauthenticated("wrong username or password", code="BAD_CREDENTIALS")
    user_id = user.user_id
    token, expires_at = box.db.write(lambda conn: issue_token(conn, user_id, box.settings.token_ttl_s))
    return {"token": token, "expires_at": expires_at, "user": user.to_dict()}


@post("/api/auth/logout", opt={"permission": "session.me"}, sync_to_thread=True, status_code=200)
def logout(box: Box, request: Request[Any, Any, State]) -> dict[str, Any]:
    token = bearer_token(request)
    box.db.write(lambda conn: revoke_token(conn, token))
    return {"logged_out": True}


@get("/api/auth/me", opt={"permission": "session.me"}, sync_to_thread=False)
def me(user: User) -> dict[str, Any]:
    """With the person's permissions, so a page offers only what the box would allow (the box still
    checks every request)."""
    return {**user.to_dict(), "permissions": sorted(p for p in PERMISSIONS if allowed(p, user.role))}


ROUTES: list[HTTPRouteHandler] = [login, logout, me]
