"""Run and session lifecycles on real SQLite boxes: every allowed move, every refused move with its code,
who may hold which session, send-back rounds, reassignment and the expected-quantity snapshot a run
freezes when it starts; plus the refusals over real HTTP."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

from appliance.auth import people
from appliance.auth.people import User
from appliance.box import Box
from appliance.catalog import layout, product_import
from appliance.counting import items, runs, sessions
from appliance.errors import Conflict, Forbidden, StockVerifyError, ValidationFailed
from replication.wire.codec import unpack
from tests.conftest import DEMO_PASSWORDS, ServerProcess

T = TypeVar("T")

HEADER = b"sku,barcodes,name,category,uom,mrp,expected_qty\n"
CATALOG = HEADER + (
    b"SKU-A,4006381333931,Alpha,Food,EA,10.00,5\nSKU-B,5901234123457,Beta,Food,EA,2.50,3\nSKU-C,,Gamma,Home,EA,1.00,0\n"
)


@dataclass
class Store:
    """Layout, products and people, and no run yet."""

    box: Box
    boss: User
    boss2: User
    v1: User
    v2: User
    v3: User
    auditor: User
    product: dict[str, str]  # sku -> product_id

    def do(self, command: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self.box.db.write(lambda conn: command(conn, self.box.log, *args, **kwargs))

    def refused(self, command: Callable[..., Any], *args: Any, **kwargs: Any) -> StockVerifyError:
        with pytest.raises(StockVerifyError) as caught:
            self.do(command, *args, **kwargs)
        return caught.value

    def read(self) -> sqlite3.Connection:
        return self.box.db.read()

    def run(self, kind: str = "hard") -> str:
        return self.do(runs.create_run, self.boss, name=f"{kind} count", kind=kind)

    def session(self, run_id: str, verifier: User | None, rack: str = "G-01", device_id: str | None = None) -> str:
        verifier_id = verifier.user_id if verifier else None
        return self.do(
            sessions.create_session, self.boss, run_id, verifier_id=verifier_id, device_id=device_id, rack_codes=[rack]
        )

    def running(self, verifier: User | None = None, kind: str = "hard") -> tuple[str, str]:
        """A started run with one IN_PROGRESS session held by ``verifier`` (v1 by default)."""
        holder = verifier or self.v1
        run_id = self.run(kind)
        session_id = self.session(run_id, holder)
        self.do(runs.start_run, self.boss, run_id)
        self.do(sessions.start_session, holder, session_id)
        return run_id, session_id

    def run_status(self, run_id: str) -> str:
        return str(runs.get_run(self.read(), run_id)["status"])

    def status(self, session_id: str) -> tuple[str, int]:
        row = sessions.get_session(self.read(), session_id)
        return row["status"], row["status_round"]

    def last_event(self, event_type: str) -> dict[str, Any]:
        row = (
            self.read()
            .execute("SELECT payload FROM events WHERE type = ? ORDER BY pos DESC LIMIT 1", (event_type,))
            .fetchone()
        )
        payload: dict[str, Any] = unpack(row["payload"])
        return payload

    def expected(self, run_id: str) -> dict[str, int]:
        rows = self.read().execute(
            "SELECT p.sku, e.expected_qty FROM run_expected e JOIN products p ON p.product_id = e.product_id"
            " WHERE e.run_id = ?",
            (run_id,),
        )
        return {row[0]: row[1] for row in rows}


@pytest.fixture
def store(box: Box) -> Store:
    plan = product_import.parse_file(CATALOG, "catalog.csv")

    def job(conn: sqlite3.Connection) -> Store:
        log = box.log
        boss = people.add_user(conn, log, "boss", "Boss", "supervisor", "x")
        boss2 = people.add_user(conn, log, "boss2", "Boss Two", "supervisor", "x")
        v1, v2, v3 = (people.add_user(conn, log, name, name, "verifier", "x") for name in ("v1", "v2", "v3"))
        auditor = people.add_user(conn, log, "audit", "Audit", "auditor", "x")
        layout.add_floor(conn, log, "G", "Ground")
        for rack in ("G-01", "G-02", "G-03"):
            layout.add_rack(conn, log, "G", rack)
        product_import.commit(conn, log, plan)
        ids = {row["sku"]: row["product_id"] for row in conn.execute("SELECT sku, product_id FROM products")}
        return Store(box, boss, boss2, v1, v2, v3, auditor, ids)

    return box.db.write(job)


def _counted_and_submitted(store: Store, run_id: str, session_id: str, verifier: User) -> None:
    store.do(items.record_scan, verifier, session_id, code="SKU-A", qty=2)
    store.do(sessions.submit_session, verifier, session_id)


# -- runs -----------------------------------------------------------------------------------------
def test_a_new_run_is_planned(store: Store) -> None:
    run_id = store.run("directed")

    row = runs.get_run(store.read(), run_id)
    assert (row["status"], row["kind"], row["created_by"]) == ("PLANNED", "directed", store.boss.user_id)


def test_a_run_starts_only_once_a_session_is_assigned(store: Store) -> None:
    run_id = store.run()
    assert store.refused(runs.start_run, store.boss, run_id).code == "RUN_NEEDS_ASSIGNED_SESSION"

    unassigned = store.session(run_id, None)  # CREATED: nobody to count it yet
    assert store.status(unassigned) == ("CREATED", 0)
    error = store.refused(runs.start_run, store.boss, run_id)
    assert isinstance(error, Conflict) and error.code == "RUN_NEEDS_ASSIGNED_SESSION"

    store.do(sessions.assign_session, store.boss, unassigned, verifier_id=store.v1.user_id)
    store.do(runs.start_run, store.boss, run_id)

    assert store.status(unassigned) == ("ASSIGNED", 0)
    assert store.run_status(run_id) == "IN_PROGRESS"


def test_a_run_starts_only_once(store: Store) -> None:
    run_id, _ = store.running()

    error = store.refused(runs.start_run, store.boss, run_id)

    assert error.code == "RUN_INVALID_TRANSITION"
    assert error.details == {"from": "IN_PROGRESS", "to": "IN_PROGRESS"}


@pytest.mark.parametrize(
    ("command", "target"),
    [(runs.close_run, "CLOSED"), (runs.complete_run, "COMPLETED")],
)
def test_a_planned_run_cannot_be_completed_or_closed(store: Store, command: Callable[..., Any], target: str) -> None:
    run_id = store.run()
    store.session(run_id, store.v1)

    error = store.refused(command, store.boss, run_id)

    assert error.code == "RUN_INVALID_TRANSITION" and error.details == {"from": "PLANNED", "to": target}
    assert store.run_status(run_id) == "PLANNED"


def test_a_run_with_open_sessions_cannot_complete(store: Store) -> None:
    run_id, s1 = store.running()
    s2 = store.session(run_id, store.v2, "G-02")

    error = store.refused(runs.complete_run, store.boss, run_id)

    assert error.code == "RUN_HAS_OPEN_SESSIONS" and error.status == 409
    assert sorted(s["session_id"] for s in error.details["sessions"]) == sorted([s1, s2])
    assert store.run_status(run_id) == "IN_PROGRESS"


@pytest.mark.parametrize("reason", ["", "  "])
def test_forcing_completion_needs_a_reason(store: Store, reason: str) -> None:
    run_id, _ = store.running()

    error = store.refused(runs.complete_run, store.boss, run_id, force=True, reason=reason)

    assert isinstance(error, ValidationFailed) and error.code == "REASON_REQUIRED"
    assert store.run_status(run_id) == "IN_PROGRESS"


def test_forcing_completion_with_a_reason_records_forced_and_the_open_sessions(store: Store) -> None:
    run_id, open_one = store.running()
    done = store.session(run_id, store.v2, "G-02")
    store.do(sessions.start_session, store.v2, done)
    _counted_and_submitted(store, run_id, done, store.v2)
    store.do(sessions.approve_session, store.boss, done)

    store.do(runs.complete_run, store.boss, run_id, force=True, reason=" store opens in ten minutes ")

    row = runs.get_run(store.read(), run_id)
    assert (row["status"], row["status_reason"]) == ("COMPLETED", "store opens in ten minutes")
    event = store.last_event("run.status_changed")
    assert event["status"] == "COMPLETED" and event["forced"] is True
    assert event["open_sessions"] == [open_one]
    assert event["reason"] == "store opens in ten minutes" and event["by"] == store.boss.user_id


def test_completing_with_every_session_closed_is_not_forced(store: Store) -> None:
    run_id, s1 = store.running()
    s2 = store.session(run_id, store.v2, "G-02")
    _counted_and_submitted(store, run_id, s1, store.v1)
    store.do(sessions.approve_session, store.boss, s1)
    store.do(sessions.void_session, store.boss, s2, reason="rack emptied")

    store.do(runs.complete_run, store.boss, run_id)

    event = store.last_event("run.status_changed")
    assert (event["status"], event["forced"], event["open_sessions"]) == ("COMPLETED", False, [])
    store.do(runs.close_run, store.boss, run_id)
    assert store.run_status(run_id) == "CLOSED"
    assert store.refused(runs.close_run, store.boss, run_id).code == "RUN_INVALID_TRANSITION"
    assert store.refused(runs.cancel_run, store.boss, run_id, reason="late").code == "RUN_INVALID_TRANSITION"


@pytest.mark.parametrize("started", [False, True])
def test_cancelling_a_run_needs_a_reason(store: Store, started: bool) -> None:
    if started:
        run_id, _ = store.running()
    else:
        run_id = store.run()

    error = store.refused(runs.cancel_run, store.boss, run_id, reason=" ")
    assert error.code == "REASON_REQUIRED"

    store.do(runs.cancel_run, store.boss, run_id, reason="stock transfer arrived")
    row = runs.get_run(store.read(), run_id)
    assert (row["status"], row["status_reason"]) == ("CANCELLED", "stock transfer arrived")
    assert store.refused(runs.start_run, store.boss, run_id).code == "RUN_INVALID_TRANSITION"


def test_a_run_is_editable_until_it_completes(store: Store) -> None:
    run_id, session_id = store.running()
    store.do(runs.edit_run, store.boss, run_id, name="Renamed", notes="aisle 3 first")
    assert runs.get_run(store.read(), run_id)["name"] == "Renamed"
    store.do(sessions.void_session, store.boss, session_id, reason="x")
    store.do(runs.complete_run, store.boss, run_id)

    edit = store.refused(runs.edit_run, store.boss, run_id, name="Too late")
    scope = store.refused(runs.add_scope, store.boss, run_id, skus=["SKU-A"])
    new_session = store.refused(sessions.create_session, store.boss, run_id, verifier_id=store.v2.user_id)

    assert (edit.code, scope.code, new_session.code) == ("RUN_NOT_EDITABLE", "RUN_NOT_EDITABLE", "RUN_NOT_OPEN")
    row = runs.get_run(store.read(), run_id)
    assert (row["name"], row["notes"]) == ("Renamed", "aisle 3 first")


# -- the snapshot ---------------------------------------------------------------------------------
def test_a_hard_runs_snapshot_freezes_the_expected_qty_at_start(store: Store) -> None:
    run_id, _ = store.running(kind="hard")
    frozen = {"SKU-A": 5, "SKU-B": 3, "SKU-C": 0}
    assert store.expected(run_id) == frozen

    changed = product_import.parse_file(
        HEADER + b"SKU-A,4006381333931,Alpha,Food,EA,10.00,50\nSKU-D,,Delta,Home,EA,,7\n"
    )
    store.box.db.write(lambda conn: product_import.commit(conn, store.box.log, changed))

    assert store.read().execute("SELECT expected_qty FROM products WHERE sku = 'SKU-A'").fetchone()[0] == 50
    assert store.expected(run_id) == frozen  # neither the new quantity nor the new product


def test_a_directed_runs_snapshot_covers_its_list_only(store: Store) -> None:
    run_id = store.run("directed")
    store.do(runs.add_scope, store.boss, run_id, skus=["SKU-B"])
    store.session(run_id, store.v1)

    store.do(runs.start_run, store.boss, run_id)

    assert store.expected(run_id) == {"SKU-B": 3}


# -- sessions: who may hold one -------------------------------------------------------------------
def test_a_verifier_holds_one_active_session_at_a_time(store: Store) -> None:
    run_id = store.run()
    first = store.session(run_id, store.v1)

    error = store.refused(sessions.create_session, store.boss, run_id, verifier_id=store.v1.user_id)

    assert isinstance(error, Conflict) and error.code == "VERIFIER_BUSY"
    assert error.details == {"session_id": first}
    other_run = store.run()
    assert (
        store.refused(sessions.create_session, store.boss, other_run, verifier_id=store.v1.user_id).code
        == "VERIFIER_BUSY"
    )


def test_a_verifier_is_free_again_once_the_session_is_submitted(store: Store) -> None:
    run_id, first = store.running()
    _counted_and_submitted(store, run_id, first, store.v1)

    second = store.session(run_id, store.v1, "G-02")

    assert store.status(second) == ("ASSIGNED", 0)


def test_a_device_holds_one_active_session_at_a_time(store: Store) -> None:
    run_id = store.run()
    first = store.session(run_id, store.v1, device_id="handheld-7")

    error = store.refused(
        sessions.create_session, store.boss, run_id, verifier_id=store.v2.user_id, device_id="handheld-7"
    )

    assert error.code == "DEVICE_BUSY" and error.details == {"session_id": first}
    store.session(run_id, store.v2, "G-02", device_id="handheld-8")


def test_an_auditor_cannot_count(store: Store) -> None:
    run_id = store.run()
    unassigned = store.session(run_id, None)

    created = store.refused(sessions.create_session, store.boss, run_id, verifier_id=store.auditor.user_id)
    assigned = store.refused(sessions.assign_session, store.boss, unassigned, verifier_id=store.auditor.user_id)

    assert created.code == assigned.code == "USER_CANNOT_COUNT"
    assert isinstance(created, ValidationFailed)
    assert store.status(unassigned) == ("CREATED", 0)


def test_a_session_starts_only_in_a_running_run(store: Store) -> None:
    run_id = store.run()
    session_id = store.session(run_id, store.v1)

    error = store.refused(sessions.start_session, store.v1, session_id)

    assert error.code == "RUN_NOT_IN_PROGRESS"
    assert store.status(session_id) == ("ASSIGNED", 0)


def test_a_verifier_acts_only_on_their_own_session(store: Store) -> None:
    run_id = store.run()
    session_id = store.session(run_id, store.v1)
    store.do(runs.start_run, store.boss, run_id)

    error = store.refused(sessions.start_session, store.v2, session_id)

    assert isinstance(error, Forbidden) and error.code == "SESSION_NOT_YOURS"


# -- sessions: moves ------------------------------------------------------------------------------
def _to_status(store: Store, status: str) -> str:
    """A session of a running run, held by v1, brought to ``status``."""
    run_id, session_id = store.running()
    if status == "ASSIGNED":
        session_id = store.session(run_id, store.v2, "G-02")
    elif status in ("SUBMITTED", "APPROVED"):
        _counted_and_submitted(store, run_id, session_id, store.v1)
        if status == "APPROVED":
            store.do(sessions.approve_session, store.boss, session_id)
    elif status == "VOID":
        store.do(sessions.void_session, store.boss, session_id, reason="wrong rack")
    assert store.status(session_id)[0] == status
    return session_id


def _holder(store: Store, session_id: str) -> User:
    return store.v1 if sessions.get_session(store.read(), session_id)["verifier_id"] == store.v1.user_id else store.v2


MOVES: dict[str, Callable[[Store, str], Any]] = {
    "start": lambda s, sid: s.do(sessions.start_session, _holder(s, sid), sid),
    "submit": lambda s, sid: s.do(sessions.submit_session, _holder(s, sid), sid),
    "approve": lambda s, sid: s.do(sessions.approve_session, s.boss, sid),
    "send back": lambda s, sid: s.do(sessions.send_back_session, s.boss, sid, reason="recount"),
    "void": lambda s, sid: s.do(sessions.void_session, s.boss, sid, reason="no"),
}


@pytest.mark.parametrize(
    ("status", "move"),
    [
        ("ASSIGNED", "submit"),
        ("ASSIGNED", "approve"),
        ("IN_PROGRESS", "start"),
        ("IN_PROGRESS", "approve"),
        ("IN_PROGRESS", "send back"),
        ("SUBMITTED", "submit"),
        ("APPROVED", "approve"),
        ("APPROVED", "void"),
        ("APPROVED", "send back"),
        ("APPROVED", "start"),
        ("VOID", "approve"),
        ("VOID", "void"),
        ("VOID", "start"),
    ],
)
def test_a_refused_session_move_has_its_code(store: Store, status: str, move: str) -> None:
    session_id = _to_status(store, status)

    with pytest.raises(StockVerifyError) as caught:
        MOVES[move](store, session_id)

    assert caught.value.code == "SESSION_INVALID_TRANSITION" and caught.value.status == 409
    assert caught.value.details["from"] == status
    assert store.status(session_id)[0] == status


def test_a_verifier_cannot_restart_a_submitted_session(store: Store) -> None:
    """Only a supervisor's send-back returns a submitted count (in a new round). A plain start must be
    refused, not accepted and logged as a status change that the fold then ignores."""
    run_id, session_id = store.running()
    _counted_and_submitted(store, run_id, session_id, store.v1)
    logged = store.read().execute("SELECT count(*) FROM events WHERE type = 'session.status_changed'").fetchone()[0]

    error = store.refused(sessions.start_session, store.v1, session_id)

    assert error.code == "SESSION_INVALID_TRANSITION"
    assert store.read().execute("SELECT count(*) FROM events WHERE type = 'session.status_changed'").fetchone()[0] == (
        logged
    )
    assert store.status(session_id) == ("SUBMITTED", 0)


def test_the_session_path_to_approval(store: Store) -> None:
    run_id = store.run()
    session_id = store.session(run_id, store.v1)
    store.do(runs.start_run, store.boss, run_id)
    seen = [store.status(session_id)[0]]
    for command, actor in (
        (sessions.start_session, store.v1),
        (sessions.submit_session, store.v1),
        (sessions.approve_session, store.boss),
    ):
        store.do(command, actor, session_id)
        seen.append(store.status(session_id)[0])

    assert seen == ["ASSIGNED", "IN_PROGRESS", "SUBMITTED", "APPROVED"]


def test_a_supervisor_cannot_approve_a_session_they_counted(store: Store) -> None:
    run_id, session_id = store.running(verifier=store.boss)
    _counted_and_submitted(store, run_id, session_id, store.boss)

    error = store.refused(sessions.approve_session, store.boss, session_id)

    assert isinstance(error, Forbidden) and error.code == "OWN_SESSION" and error.status == 403
    assert store.status(session_id) == ("SUBMITTED", 0)
    store.do(sessions.approve_session, store.boss2, session_id)
    assert store.status(session_id) == ("APPROVED", 0)


def test_send_back_starts_a_new_round_and_the_verifier_counts_again(store: Store) -> None:
    run_id, session_id = store.running()
    _counted_and_submitted(store, run_id, session_id, store.v1)

    store.do(sessions.send_back_session, store.boss, session_id, reason=" recount the top shelf ")

    row = sessions.get_session(store.read(), session_id)
    assert (row["status"], row["status_round"], row["status_reason"]) == ("IN_PROGRESS", 1, "recount the top shelf")
    store.do(items.record_scan, store.v1, session_id, code="SKU-A", qty=3)
    assert items.item_quantity(store.read(), session_id, store.product["SKU-A"]) == 5
    store.do(sessions.submit_session, store.v1, session_id)
    store.do(sessions.approve_session, store.boss, session_id)
    assert store.status(session_id) == ("APPROVED", 1)


def test_send_back_needs_a_reason(store: Store) -> None:
    run_id, session_id = store.running()
    _counted_and_submitted(store, run_id, session_id, store.v1)

    error = store.refused(sessions.send_back_session, store.boss, session_id, reason="")

    assert error.code == "REASON_REQUIRED"
    assert store.status(session_id) == ("SUBMITTED", 0)


def test_send_back_is_refused_while_the_verifier_holds_another_session(store: Store) -> None:
    run_id, session_id = store.running()
    _counted_and_submitted(store, run_id, session_id, store.v1)
    store.session(run_id, store.v1, "G-02")  # free again after submitting, so given the next rack

    error = store.refused(sessions.send_back_session, store.boss, session_id, reason="recount")

    assert error.code == "VERIFIER_BUSY"
    assert store.status(session_id) == ("SUBMITTED", 0)


def test_send_back_refuses_a_session_that_was_never_submitted(store: Store) -> None:
    """Send-back returns a SUBMITTED count for a recount. An ASSIGNED session of a run that has not
    started must not be pushed to IN_PROGRESS by it (that would let scans into a PLANNED run)."""
    run_id = store.run()
    session_id = store.session(run_id, store.v1)

    error = store.refused(sessions.send_back_session, store.boss, session_id, reason="recount")

    assert error.code == "SESSION_INVALID_TRANSITION"
    assert store.status(session_id) == ("ASSIGNED", 0)


def test_reassign_moves_the_session_to_a_free_verifier(store: Store) -> None:
    run_id, session_id = store.running()
    store.do(items.record_scan, store.v1, session_id, code="SKU-A", qty=2)

    store.do(sessions.assign_session, store.boss, session_id, verifier_id=store.v3.user_id)

    row = sessions.get_session(store.read(), session_id)
    assert (row["verifier_id"], row["status"]) == (store.v3.user_id, "IN_PROGRESS")
    assert store.refused(items.record_scan, store.v1, session_id, code="SKU-A").code == "SESSION_NOT_YOURS"
    store.do(items.record_scan, store.v3, session_id, code="SKU-A", qty=1)
    assert items.item_quantity(store.read(), session_id, store.product["SKU-A"]) == 3
    store.session(run_id, store.v1, "G-02")  # the first verifier is free for other work


def test_reassign_refuses_a_busy_verifier(store: Store) -> None:
    run_id, session_id = store.running()
    store.session(run_id, store.v2, "G-02")

    error = store.refused(sessions.assign_session, store.boss, session_id, verifier_id=store.v2.user_id)

    assert error.code == "VERIFIER_BUSY"
    assert sessions.get_session(store.read(), session_id)["verifier_id"] == store.v1.user_id


def test_a_submitted_session_cannot_be_reassigned(store: Store) -> None:
    run_id, session_id = store.running()
    _counted_and_submitted(store, run_id, session_id, store.v1)

    error = store.refused(sessions.assign_session, store.boss, session_id, verifier_id=store.v3.user_id)

    assert error.code == "SESSION_NOT_ASSIGNABLE"


def test_a_cancelled_run_takes_no_more_scans(store: Store) -> None:
    run_id, session_id = store.running()
    store.do(items.record_scan, store.v1, session_id, code="SKU-A", qty=2)
    store.do(runs.cancel_run, store.boss, run_id, reason="stock transfer arrived mid-count")

    error = store.refused(items.record_scan, store.v1, session_id, code="SKU-A", qty=5)

    assert error.code == "RUN_NOT_IN_PROGRESS"
    assert items.item_quantity(store.read(), session_id, store.product["SKU-A"]) == 2


def test_cancelling_a_run_frees_its_verifiers_for_the_next_run(store: Store) -> None:
    run_id, _ = store.running()
    store.do(runs.cancel_run, store.boss, run_id, reason="stock transfer arrived mid-count")

    next_run = store.run()
    session_id = store.session(next_run, store.v1)

    assert store.status(session_id) == ("ASSIGNED", 0)


# -- over HTTP ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("lifecycle") / "box", "--demo")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _refusal(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["code"]


def _ok(answer: httpx.Response) -> Any:
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def test_lifecycle_refusals_over_http(server: ServerProcess) -> None:
    admin = server.client(server.login("admin", DEMO_PASSWORDS["admin"]))
    boss = server.client(server.login("supervisor", DEMO_PASSWORDS["supervisor"]))
    _ok(admin.post("/api/users", json={"username": "lena", "role": "verifier", "password": "lena-pass"}))
    lena = server.client(server.login("lena", "lena-pass"))

    run_id = _ok(boss.post("/api/runs", json={"name": "Lifecycle", "kind": "hard"}))["run_id"]
    assert _refusal(boss.post(f"/api/runs/{run_id}/start")) == (409, "RUN_NEEDS_ASSIGNED_SESSION")
    auditor_session = boss.post(f"/api/runs/{run_id}/sessions", json={"verifier": "auditor", "racks": ["G-01"]})
    assert _refusal(auditor_session) == (422, "USER_CANNOT_COUNT")
    mine = _ok(boss.post(f"/api/runs/{run_id}/sessions", json={"verifier": "supervisor", "racks": ["G-01"]}))
    lenas = _ok(boss.post(f"/api/runs/{run_id}/sessions", json={"verifier": "lena", "racks": ["G-02"]}))
    busy = boss.post(f"/api/runs/{run_id}/sessions", json={"verifier": "lena", "racks": ["G-03"]})
    assert _refusal(busy) == (409, "VERIFIER_BUSY")
    assert _refusal(boss.post(f"/api/runs/{run_id}/close")) == (409, "RUN_INVALID_TRANSITION")
    _ok(boss.post(f"/api/runs/{run_id}/start"))
    assert _refusal(boss.post(f"/api/runs/{run_id}/start")) == (409, "RUN_INVALID_TRANSITION")

    own = f"/api/sessions/{mine['session_id']}"
    _ok(boss.post(f"{own}/start"))
    _ok(boss.post(f"{own}/scans", json={"code": "G-01-TAG", "qty": 1}))
    _ok(boss.post(f"{own}/submit"))
    assert _refusal(boss.post(f"{own}/approve")) == (403, "OWN_SESSION")
    assert _ok(admin.post(f"{own}/approve"))["status"] == "APPROVED"

    theirs = f"/api/sessions/{lenas['session_id']}"
    assert _refusal(lena.post(f"{theirs}/submit")) == (409, "SESSION_INVALID_TRANSITION")
    _ok(lena.post(f"{theirs}/start"))
    _ok(lena.post(f"{theirs}/submit"))
    assert _refusal(boss.post(f"{theirs}/send-back", json={"reason": ""})) == (422, "REASON_REQUIRED")
    again = _ok(boss.post(f"{theirs}/send-back", json={"reason": "count the bottom shelf too"}))
    assert (again["status"], again["round"], again["status_reason"]) == ("IN_PROGRESS", 1, "count the bottom shelf too")
    _ok(lena.post(f"{theirs}/scans", json={"code": "G-02-TAG", "qty": 2}))

    assert _refusal(boss.post(f"/api/runs/{run_id}/complete")) == (409, "RUN_HAS_OPEN_SESSIONS")
    forced = boss.post(f"/api/runs/{run_id}/complete", json={"force": True, "reason": ""})
    assert _refusal(forced) == (422, "REASON_REQUIRED")
    done = _ok(boss.post(f"/api/runs/{run_id}/complete", json={"force": True, "reason": "closing time"}))
    assert (done["status"], done["status_reason"]) == ("COMPLETED", "closing time")
    assert _refusal(boss.patch(f"/api/runs/{run_id}", json={"name": "late"})) == (409, "RUN_NOT_EDITABLE")
    assert _refusal(boss.post(f"/api/runs/{run_id}/cancel", json={"reason": " "})) == (422, "REASON_REQUIRED")
