"""The OpenAPI document against the running box, with schemathesis.

Every documented operation is fuzzed against ``stockverify serve --demo`` in a real process, as the
four roles (bearer tokens from ``POST /api/auth/login``; the handheld routes ``/api/sync/*`` as a device
paired for the purpose), first with schemathesis's coverage cases (each boundary, each required part
left out, wrong types, undeclared methods and content types), then with drawn data that fits the
schema and data that does not. Two cases in three, and once more per role, carry real ids in the path
and query (a run, sessions, a claimed rack and a scan made through the API; the demo's racks,
products and writers), so that requests reach the domain rather than stopping at 404.

Every check schemathesis registers is run on every answer (``CHECKS``): no 5xx; documented status,
content type, headers and schema; data that fits accepted, data that does not refused; credentials
enforced where the document asks for them; 405 with ``Allow`` for undeclared methods. Where what
decides is the store's data or a file's contents, which no schema carries, ``ALSO_ACCEPTED`` names the
extra status a fitting request may get, per operation, with its reason. ``use_after_free``,
``ensure_resource_availability`` and ``object_level_authorization`` judge sequences of calls and pairs
of identities from schemathesis's stateful runs; they are run here too, and find nothing to judge in
single calls. Generation is derandomized, so a failure comes back on the next run as it was.

The replication node routes (``/api/replication/hello|pull|push|locks``) are fuzzed as a node the box
enrolled through a real hello (``PeerClient``, with the store secret the server is started with):
every msgpack body is signed over its exact bytes as it is serialised, just before it is sent; and a
positive hello or push is, two times in three, a real one that the box accepts, so that enrolment and
applying a page are reached. ``POST /api/auth/logout`` is fuzzed with a token per role kept for it.
Not fuzzed: ``GET /api/events`` (a Server-Sent Events stream never ends, so there is no response to
check).

The server is this module's own: the fuzzer changes the store (runs cancelled, users added, devices
revoked), which other tests sharing the session's demo server must not see.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import hypothesis
import msgpack
import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import strategies as st
from litestar.testing import TestClient
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as REGISTERED_CHECKS
from schemathesis.checks import is_check_class, load_all_checks
from schemathesis.config import PositiveDataAcceptanceConfig, SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.schemas import BaseSchema
from schemathesis.transport import SerializationContext, register_serializer
from schemathesis.transport.serialization import Binary

from appliance.app import API_ROUTES, create_app
from appliance.auth.permissions import ROLES
from appliance.box import open_box
from appliance.counting.conflicts import ACTIONS
from appliance.counting.locks import RACK_MOVES
from appliance.counting.runs import RUN_KINDS
from appliance.counting.variance import DECISIONS, SCOPES
from replication.peers.client import Me, PeerClient
from replication.wire import protocol
from replication.wire.hlc import wall_ms
from tests.conftest import DEMO_PASSWORDS, ServerProcess, make_settings

pytestmark = pytest.mark.timeout(300)

load_all_checks()
CHECKS = [check for check in REGISTERED_CHECKS.get_all() if not is_check_class(check)]
NOT_FUZZED = {("GET", "/api/events")}
STORE_SECRET = "schema-fuzz-store-secret"
NODE_ROUTES = "/api/replication/"
LOGOUT = ("POST", "/api/auth/logout")
# Statuses a request that fits the document may also get, by operation, because what decides is the
# store's data or a file's contents, which no schema can carry: an answer ``positive_data_acceptance``
# would otherwise call a refusal of valid data.
ALSO_ACCEPTED: dict[tuple[str, str], tuple[list[str], str]] = {
    ("POST", "/api/runs/{run_id}/scope"): (["422"], "UNKNOWN_SCOPE: SKUs and racks must be the store's own"),
    ("POST", "/api/runs/{run_id}/sessions"): (["422"], "UNKNOWN_RACK: racks must be the store's own"),
    ("POST", "/api/products/import"): (["422"], "IMPORT_INVALID: the file's rows are checked, not its shape"),
    ("POST", "/api/runs/{run_id}/scope/import"): (["422"], "BAD_FILE: the list's columns are checked"),
    # Codes and usernames are letters and digits of any script (str.isalnum), which a JSON Schema
    # pattern (ECMA, where \w is ASCII) cannot say; the field's description says it instead.
    ("POST", "/api/users"): (["422"], "VALIDATION: username of letters and digits of any script"),
    ("POST", "/api/floors"): (["422"], "VALIDATION: floor code of letters and digits of any script"),
    ("POST", "/api/racks"): (["422"], "VALIDATION: rack code of letters and digits of any script"),
    # A batch is a chain of events signed by the device's key, and a page is deflated msgpack: the
    # document says the media type, and the box checks what is inside (ingest.decode_batch, unpack_page).
    ("POST", "/api/sync/batch"): (["400"], "VALIDATION: an envelope of chained, signed events"),
    # A photo is named by its own SHA-256: a body the document allows hashes to another name.
    ("PUT", "/api/sync/photos/{sha256}"): (["400"], "PHOTO_HASH_MISMATCH, BAD_PHOTO: the photo its path names"),
    ("POST", "/api/replication/push"): (["400"], "BAD_PAGE: a deflated msgpack page"),
    # A report names one source (a run or a snapshot; a comparison, one per side; an export, one thing to
    # export), takes each grouping once and sorts by a column of its answer: rules between fields, which a
    # schema of each field cannot say.
    ("POST", "/api/reports/query"): (["422"], "VALIDATION: one source, each grouping once, a sort it answers"),
    ("POST", "/api/reports/compare"): (["422"], "VALIDATION: one source a side"),
    ("POST", "/api/reports/exports"): (["422"], "VALIDATION: one thing to export, and its own rules"),
    ("POST", "/api/reports/queries"): (["422"], "VALIDATION: a name, and the query's own rules"),
    ("POST", "/api/reports/snapshots"): (["422"], "VALIDATION: a name that is not blank"),
    ("POST", "/api/hq/stores/{store_id}/reports/query"): (["422"], "VALIDATION: as POST /api/reports/query"),
    ("POST", "/api/hq/stores/{store_id}/reports/compare"): (["422"], "VALIDATION: as POST /api/reports/compare"),
    ("POST", "/api/hq/reports/query"): (["422"], "VALIDATION: as POST /api/reports/query"),
    ("POST", "/api/imports/preview"): (["422"], "BAD_MAPPING, RUN_REQUIRED: the mapping's JSON and a scope's run"),
    ("POST", "/api/imports/commit"): (["422"], "IMPORT_INVALID, BAD_MAPPING: the file's rows are checked"),
    ("PUT", "/api/imports/mappings/{target}/{source}"): (["422"], "BAD_MAPPING, BAD_SOURCE: what a mapping feeds"),
    ("POST", "/api/sessions/{session_id}/count-sheet"): (["422"], "IMPORT_INVALID: the sheet's rows are checked"),
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
        self.schema: BaseSchema = schemathesis.openapi.from_url(server.url + "/schema/openapi.json", config=_config())
        self.tokens = {role: server.login(role, password) for role, password in DEMO_PASSWORDS.items()}
        # Logout ends the token it is sent with: each role's first logout case ends this one, and the
        # rest find it ended (401). A login per case would soon meet the login throttle (429).
        self.logout_tokens = {role: server.login(role, password) for role, password in DEMO_PASSWORDS.items()}
        self.ids = _real_ids(server, self.tokens)
        self.device_token = _pair_device(server, self.tokens["supervisor"])
        self.node = _enrol_node(server, self.ids["store_id"][0])
        self.session = requests.Session()
        self.requests = 0
        self.answered: defaultdict[tuple[str, str], set[int]] = defaultdict(set)

    def send(self, case: Any, role: str) -> None:
        """As ``role``; a handheld's route (``/api/sync/*``) as the paired device instead."""
        self.requests += 1
        key = (case.operation.method.upper(), case.operation.path)
        token = (self.logout_tokens if key == LOGOUT else self.tokens)[role]
        credential = f"Device {self.device_token}" if key in DEVICE_ROUTES else f"Bearer {token}"
        response = case.call_and_validate(
            base_url=self.server.url,
            session=self.session,
            headers={} if _breaks_credential(case) else {"Authorization": credential},
            checks=CHECKS,
            timeout=30,
        )
        self.answered[key].add(response.status_code)


def _breaks_credential(case: Any) -> bool:
    """A negative case that breaks the headers, where the only one documented is the credential (left
    out, or malformed): it goes as generated, or the refusal it is meant to provoke is never asked for."""
    return case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)


def _config() -> SchemathesisConfig:
    """The statuses in ALSO_ACCEPTED added, for their operation only, to what positive data may get."""
    default = PositiveDataAcceptanceConfig().expected_statuses
    return SchemathesisConfig.from_dict(
        {
            "operations": [
                {
                    "include-name": f"{method} {path}",
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*default, *statuses]}},
                }
                for (method, path), (statuses, _) in ALSO_ACCEPTED.items()
            ]
        }
    )


# The node the fuzzer signs node routes as, once a hello enrolled it; read by the serializer below.
SIGNER: list[Me] = []
# Positive cases sent with a real body, so that enrolment and applying a page are reached too: the
# real hello of SIGNER, and an empty page of its store. The body is swapped as it is serialised, as
# schemathesis counts any body given bytes after generation as invalid and would then expect it
# refused. The cases are held (not their ids, which a later case could reuse).
REAL_BODIES: list[tuple[Any, Any]] = []


def _enrol_node(server: ServerProcess, store_id: str) -> Me:
    key = Ed25519PrivateKey.generate()
    me = Me("schema-fuzz-node", store_id, key, key.public_key().public_bytes_raw())

    async def hello() -> None:
        async with aiohttp.ClientSession() as http:
            await PeerClient(http, server.url, me).hello("box", STORE_SECRET)

    asyncio.run(hello())
    SIGNER[:] = [me]
    return me


def _real_hello(me: Me) -> dict[str, Any]:
    return {
        "node_id": me.node_id,
        "store_id": me.store_id,
        "role": "box",
        "public_key": Binary(me.public_key),
        "proof": Binary(protocol.enrol_proof(STORE_SECRET, me.store_id, me.node_id, me.public_key)),
        "url": "",
    }


def _real_page(me: Me) -> bytes:
    return protocol.pack_page({"v": protocol.API_VERSION, "store": me.store_id, "writers": [], "events": []})


REAL = {"/api/replication/hello": _real_hello, "/api/replication/push": _real_page}


def _plain(value: Any) -> Any:
    """A generated value as msgpack takes it: ``format: binary`` strings as the bytes they stand for."""
    if isinstance(value, Binary):
        return value.data
    if isinstance(value, dict):
        return {name: _plain(item) for name, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _msgpack(ctx: SerializationContext, value: Any) -> dict[str, Any]:
    """msgpack bodies, and on the node routes the node's signature over exactly the bytes sent. The
    transport-level registration is used because it may add headers; the public decorator only
    returns the body."""
    value = _plain(next((body for case, body in REAL_BODIES if case is ctx.case), value))
    if isinstance(value, bytes):
        body = value
    else:
        try:
            body = msgpack.packb(value, use_bin_type=True)
        except (OverflowError, UnicodeEncodeError):
            hypothesis.reject()  # an integer or a string msgpack has no encoding for: no client can send it
    headers = {}
    if SIGNER and ctx.case.path.startswith(NODE_ROUTES):
        me = SIGNER[0]
        headers = protocol.signed_headers(me.key, me.node_id, ctx.case.method, ctx.case.formatted_path, body, wall_ms())
    return {"data": body, "headers": headers}


register_serializer(_msgpack, "application/msgpack", protocol.MEDIA_TYPE)


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
    server = ServerProcess(
        tmp_path_factory.mktemp("schema") / "box", "--demo", env={"STOCKVERIFY_STORE_SECRET": STORE_SECRET}
    )
    try:
        server.wait_ready()
        fuzz = Fuzz(server)
        started = time.monotonic()
        yield fuzz
        print(f"\nschemathesis: {fuzz.requests} cases in {time.monotonic() - started:.1f}s")
        # The signed routes were reached, not only refused: the signature and the enrolment held.
        for key in [(method, path) for method, path in fuzz.answered if path.startswith(NODE_ROUTES)] + [LOGOUT]:
            print(key, sorted(fuzz.answered[key]))
            assert 200 in fuzz.answered[key], (key, fuzz.answered[key])
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
            if mode is GenerationMode.POSITIVE and case.path in REAL:
                REAL_BODIES.append((case, REAL[case.path](fuzz.node)))
        fuzz.send(case, role)

    run()


def _cover(fuzz: Fuzz, operation: Any) -> None:
    """Schemathesis's coverage cases, made from the document rather than drawn: each boundary, each
    required part left out, wrong types, undeclared methods and content types. The checks that judge
    those (``missing_required_header``, ``unsupported_method``, ``allow_header_conformance``) look
    only at these. Sent as each role in turn, with real ids two times in three."""
    schema = fuzz.schema
    roles = sorted(fuzz.tokens)
    cases = schema.iter_coverage_cases(
        operation,
        generation_modes=list(GenerationMode),
        generation_config=schema.config.generation_for(operation=operation),
    )
    for turn, case in enumerate(cases):
        if turn % 3:
            _with_real_ids(case, fuzz.ids, turn)
        try:
            fuzz.send(case, roles[turn % len(roles)])
        except hypothesis.errors.UnsatisfiedAssumption:
            continue  # a value msgpack cannot encode (see _msgpack): not a request anyone can send


@pytest.mark.parametrize("key", _operations())
def test_operation_keeps_to_its_document(fuzz: Fuzz, key: tuple[str, str]) -> None:
    method, path = key
    operation = fuzz.schema[path][method.lower()]
    _cover(fuzz, operation)
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

    def referenced(schema: dict[str, Any]) -> Iterator[str]:
        if "$ref" in schema:
            yield schema["$ref"].rsplit("/", 1)[-1]
        for part in [*schema.get("oneOf", []), *schema.get("allOf", [])]:
            yield from referenced(part)

    bodies = {
        name
        for _, _, operation in _operations_in(document)
        for media in operation.get("requestBody", {}).get("content", {}).values()
        for name in referenced(media["schema"])
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
