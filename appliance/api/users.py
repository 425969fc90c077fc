"""People and roles (admin)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from appliance.api.deps import SMALL_BODY, one_of
from appliance.auth import people
from appliance.auth.people import Passwords
from appliance.auth.permissions import ROLES
from appliance.box import Box
from appliance.counting.sessions import COUNTING_ROLES


class NewUser(msgspec.Struct, forbid_unknown_fields=True):
    username: str
    role: Annotated[str, one_of(ROLES)]
    password: str
    display_name: str = ""


@get("/api/users", opt={"permission": "users.read"}, sync_to_thread=True)
def list_users(box: Box) -> list[dict[str, Any]]:
    return people.list_users(box.db.read())


@get("/api/counters", opt={"permission": "runs.read"}, sync_to_thread=True)
def counters(box: Box) -> list[dict[str, Any]]:
    """The active people who can count, by name: whom a supervisor can give a session or a recount.
    Narrower than ``/api/users`` (admin), which a supervisor may not read."""
    return [
        {key: person[key] for key in ("user_id", "username", "display_name", "role")}
        for person in people.list_users(box.db.read())
        if person["active"] and person["role"] in COUNTING_ROLES
    ]


@post(
    "/api/users",
    opt={"permission": "users.write"},
    sync_to_thread=True,
    status_code=201,
    request_max_body_size=SMALL_BODY,
)
def add_user(data: JSONBody[NewUser], box: Box, passwords: Passwords) -> dict[str, Any]:
    username = people.check_new_user(data.username, data.role, data.password)
    password_hash = passwords.hash(data.password)
    user = box.db.write(
        lambda conn: people.add_user(conn, box.log, username, data.display_name, data.role, password_hash)
    )
    return user.to_dict()


class Activity(msgspec.Struct, forbid_unknown_fields=True):
    active: bool


@post(
    "/api/users/{user_id:str}/active",
    opt={"permission": "users.write"},
    sync_to_thread=True,
    status_code=200,
    request_max_body_size=SMALL_BODY,
)
def set_active(user_id: str, data: JSONBody[Activity], box: Box, user: people.User) -> dict[str, Any]:
    """Deactivate a person who left, or bring them back; their past counts stay as they are."""
    return box.db.write(lambda conn: people.set_active(conn, box.log, user, user_id, data.active))


ROUTES: list[HTTPRouteHandler] = [list_users, counters, add_user, set_active]
