"""The OpenAPI document against the running box, with schemathesis.

Every documented operation is fuzzed against ``stockverify serve --demo`` in a real process, as the
four roles (bearer tokens from ``POST /api/auth/login``; the handheld routes ``/api/sync/*`` as a device
paired for the purpose), with data that fits the schema and data that does not. Two cases in three, and
once more per role, carry real ids in the path and query (a run, sessions, a claimed rack and a scan
made through the API; the demo's racks, products and writers), so that requests reach the domain
rather than stopping at 404. Each answer must not be a 5xx, must use a documented status and content
type, and must match the documented schema.

Not fuzzed: ``GET /api/events`` (a Server-Sent Events stream never ends, so there is no response to
check), the replication node routes (``/api/replication/hello|pull|push|locks``: msgpack bodies signed
by an enrolled node, refused with 401 before anything else is read), and ``POST /api/auth/logout``,
which would end the very tokens the fuzzer uses; it is called once at the end with a token of its own.

The server is this module's own: the fuzzer changes the store (runs cancelled, users added, devices
revoked), which other tests sharing the session's demo server must not see.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import strategies as st
from litestar.testing import TestClient
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.schemas import BaseSchema

from appliance.app import API_ROUTES, create_app
from appliance.auth.permissions import ROLES
from appliance.box import open_box
from appliance.counting.conflicts import ACTIONS
from appliance.counting.locks import RACK_MOVES
from appliance.counting.runs import RUN_KINDS
from appliance.counting.variance import DECISIONS, SCOPES
from tests.conftest import DEMO_PASSWORDS, ServerProcess, make_settings

pytestmark = pytest.mark.timeout(300)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
NOT_FUZZED = {
    ("GET", "/api/events"),
    ("POST", "/api/replication/hello"),
    ("POST", "/api/replication/pull"),
    ("POST", "/api/replication/push"),
    ("POST", "/api/replication/locks"),
    ("POST", "/api/auth/logout"),
}
# Generated cases per operation and mode; each case goes out as one role drawn from the four.
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}

# Server errors still open in code outside the API layer, by operation, with the request that shows
# them: only that operation's parameter is expected to fail until the fix lands.
KNOWN_SERVER_ERRORS: dict[tuple[str, str], str] = {}


DEVICE_ROUTES = {
    (method, path.replace(":str}", "}"))
    for handler in API_ROUTES
    if handler.opt.get("device")
    for path in handler.paths
    for method in handler.http_methods
}


def _operations() -> list[Any]:
    found = []
    for handler in API_ROUTES:
        for path in sorted(handler.paths):
            for method in sorted(handler.http_methods):
                openapi_path = path.replace(":str}", "}").replace(":int}", "}")
                key = (method, openapi_path)
                if key in NOT_FUZZED:
                    continue
                marks = []
                if key in KNOWN_SERVER_ERRORS:
                    marks.append(pytest.mark.xfail(strict=False, reason=KNOWN_SERVER_ERRORS[key]))
                found.append(pytest.param(key, id=f"{method} {openapi_path}", marks=marks))
    return found


class Fuzz:
    """What every case needs: the schema the server publishes, a token per role, and real ids."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.schema: BaseSchema = schemathesis.openapi.from_url(server.url + "/schema/openapi.json")
        self.tokens = {role: server.login(role, password) for role, password in DEMO_PASSWORDS.items()}
        self.ids = _real_ids(server, self.tokens)
        self.device_token = _pair_device(server, self.tokens["supervisor"])
        self.session = requests.Session()
        self.requests = 0

    def send(self, case: Any, role: str) -> None:
        """As ``role``; a handheld's route (``/api/sync/*``) as the paired device instead."""
        self.requests += 1
        credential = (
            f"Device {self.device_token}"
            if (case.method.upper(), case.path) in DEVICE_ROUTES
            else f"Bearer {self.tokens[role]}"
        )
        case.call_and_validate(
            base_url=self.server.url,
            session=self.session,
            headers={"Authorization": credential},
            checks=CHECKS,
            timeout=30,
        )


def _pair_device(server: ServerProcess, supervisor: str) -> str:
    code = server.client(supervisor).post("/api/devices/pairing-codes").raise_for_status().json()["code"]
    key = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    paired = httpx.post(server.url + "/api/devices/pair", json={"code": code, "name": "Fuzz", "public_key": key})
    token: str = paired.raise_for_status().json()["device_token"]
    return token


def _real_ids(server: ServerProcess, tokens: dict[str, str]) -> dict[str, list[str]]:
    """A run with sessions, a claimed rack and a scan, made through the API, and the demo's own ids."""
    boss = server.client(tokens["supervisor"])
    counter = server.client(tokens["verifier"])
    auditor = server.client(tokens["auditor"])
    racks = [rack["code"] for rack in boss.get("/api/racks").raise_for_status().json()[:3]]
    products = boss.get("/api/products", params={"limit": 3}).raise_for_status().json()["items"]
    run = boss.post("/api/runs", json={"name": "Schema run", "kind": "directed"}).raise_for_status().json()
    run_id = run["run_id"]
    boss.post(f"/api/runs/{run_id}/scope", json={"racks": racks}).raise_for_status()
    # A verifier holds one active session at a time: the second is the admin's.
    sessions = [
        boss.post(f"/api/runs/{run_id}/sessions", json={"racks": [rack], "verifier": who})
        .raise_for_status()
        .json()["session_id"]
        for rack, who in zip(racks[:2], ("verifier", "admin"), strict=True)
    ]
    boss.post(f"/api/runs/{run_id}/start").raise_for_status()
    counter.post(f"/api/sessions/{sessions[0]}/start").raise_for_status()
    counter.post(f"/api/runs/{run_id}/racks/{racks[0]}/claim", json={"session_id": sessions[0]}).raise_for_status()
    scan = counter.post(f"/api/sessions/{sessions[0]}/scans", json={"code": products[0]["sku"], "rack": racks[0]})
    scan.raise_for_status()
    writers = [w["writer_id"] for w in auditor.get("/api/writers").raise_for_status().json()["writers"]]
    return {
        "run_id": [run_id],
        "session_id": sessions,
        "rack": racks,
        "sku": [p["sku"] for p in products],
        "product_id": [p["product_id"] for p in products],
        "writer_id": writers,
        "event_id": [scan.json()["event_id"]] if scan.json().get("event_id") else [],
        "store_id": [httpx.get(server.url + "/api/health").json()["store_id"]],
    }


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    server = ServerProcess(tmp_path_factory.mktemp("schema") / "box", "--demo")
    try:
        server.wait_ready()
        fuzz = Fuzz(server)
        started = time.monotonic()
        yield fuzz
        print(f"\nschemathesis: {fuzz.requests} requests in {time.monotonic() - started:.1f}s")
        _logout_once(server)
        assert server.process.poll() is None, server.output()
    finally:
        server.stop()


def _logout_once(server: ServerProcess) -> None:
    token = server.login("auditor", DEMO_PASSWORDS["auditor"])
    assert server.client(token).post("/api/auth/logout").json() == {"logged_out": True}
    assert server.client(token).get("/api/auth/me").status_code == 401


def _with_real_ids(case: Any, ids: dict[str, list[str]], pick: int) -> None:
    """Path and query values named like an id (``run_id``, ``session_id``, ``rack``…) made real ones."""
    for part in ("path_parameters", "query"):
        values = getattr(case, part) or {}
        real = {name: ids[name][pick % len(ids[name])] for name in values if ids.get(name)}
        if real:
            setattr(case, part, {**values, **real})


def _run(fuzz: Fuzz, operation: Any, mode: GenerationMode, examples: int, *, each_role: bool) -> None:
    """``examples`` cases of ``mode``, each as a role drawn at random with its path ids real two times
    in three; or, with ``each_role``, as every role in turn with every path id real."""
    roles = sorted(fuzz.tokens)
    turns = iter(range(examples * 100))

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case: Any, data: st.DataObject) -> None:
        if each_role:
            role, real = roles[next(turns) % len(roles)], True
        else:
            role, real = data.draw(st.sampled_from(roles)), data.draw(st.integers(0, 2)) > 0
        if real:
            _with_real_ids(case, fuzz.ids, data.draw(st.integers(0, 2)))
        fuzz.send(case, role)

    run()


@pytest.mark.parametrize("key", _operations())
def test_operation_keeps_to_its_document(fuzz: Fuzz, key: tuple[str, str]) -> None:
    method, path = key
    operation = fuzz.schema[path][method.lower()]
    for mode, examples in EXAMPLES.items():
        try:
            _run(fuzz, operation, mode, examples, each_role=False)
        except hypothesis.errors.Unsatisfiable:
            # Nothing to get wrong: no parameters and no body, so no request that breaks the schema.
            assert mode is GenerationMode.NEGATIVE, "a positive case always exists"
    _run(fuzz, operation, GenerationMode.POSITIVE, len(fuzz.tokens), each_role=True)


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The document as a box serves it, from an app in this process (no fuzzing needs it)."""
    box = open_box(make_settings(tmp_path_factory.mktemp("document") / "box"))
    try:
        with TestClient(create_app(box)) as client:
            yield client.get("/schema/openapi.json").json()
    finally:
        box.close()


def _operations_in(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield method.upper(), path, operation


def test_every_refusal_is_documented_as_the_error_body(document: dict[str, Any]) -> None:
    error_body = document["components"]["schemas"]["ErrorBody"]
    assert error_body["required"] == ["code", "details", "message"]
    assert {name: schema.get("type") for name, schema in error_body["properties"].items()} == {
        "code": "string",
        "message": "string",
        "details": None,
    }
    for method, path, operation in _operations_in(document):
        refusals = {status: answer for status, answer in operation["responses"].items() if int(status) >= 400}
        assert "400" in refusals, (method, path)
        for status, answer in refusals.items():
            schema = answer["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)


def test_statuses_follow_what_a_route_is(document: dict[str, Any]) -> None:
    def statuses(method: str, path: str) -> set[str]:
        return set(document["paths"][path][method.lower()]["responses"])

    assert {"401", "429"} <= statuses("POST", "/api/auth/login")
    assert "403" not in statuses("POST", "/api/auth/login")
    assert {"401", "429", "409"} <= statuses("POST", "/api/devices/pair")
    assert {"401", "403"} <= statuses("GET", "/api/runs")
    assert not {"404", "409", "507"} & statuses("GET", "/api/runs")
    assert {"404"} <= statuses("GET", "/api/runs/{run_id}")
    assert {"409", "413", "422", "507"} <= statuses("POST", "/api/runs/{run_id}/start")
    assert {"503"} <= statuses("POST", "/api/runs/{run_id}/racks/{rack}/claim")
    assert {"200", "201"} <= statuses("POST", "/api/products/import")


def test_bodies_that_refuse_unknown_fields_say_so(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    bodies = {
        schema["$ref"].rsplit("/", 1)[-1]
        for _, _, operation in _operations_in(document)
        for media in operation.get("requestBody", {}).get("content", {}).values()
        for schema in [media["schema"], *media["schema"].get("oneOf", [])]
        if "$ref" in schema
    }
    assert {"LoginForm", "NewRun", "PlannedRun", "Transition", "Claim"} <= bodies
    assert {name: schemas[name].get("additionalProperties") for name in bodies} == dict.fromkeys(bodies, False)
    assert "additionalProperties" not in schemas["ErrorBody"]


def test_fixed_vocabularies_are_enums(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]

    def enum(component: str, field: str) -> list[str]:
        values: list[str] = schemas[component]["properties"][field]["enum"]
        return values

    def parameter(method: str, path: str, name: str) -> list[str]:
        found = [p for p in document["paths"][path][method]["parameters"] if p["name"] == name]
        values: list[str] = found[0]["schema"]["enum"]
        return values

    assert enum("NewRun", "kind") == list(RUN_KINDS)
    assert enum("PlannedRun", "kind") == list(RUN_KINDS)
    assert enum("NewUser", "role") == list(ROLES)
    assert enum("Resolution", "action") == list(ACTIONS)
    assert enum("Decision", "decision") == list(DECISIONS)
    assert enum("Tolerance", "scope") == list(SCOPES)
    assert enum("QuarantineDecision", "decision") == ["accepted", "rejected"]
    assert parameter("get", "/api/conflicts", "status") == ["open", "resolved", "all"]
    assert parameter("post", "/api/runs/{run_id}/racks/{rack}/{action}", "action") == list(RACK_MOVES)
