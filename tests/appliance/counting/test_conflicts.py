"""The conflict queue on real SQLite boxes: each kind is found by looking at the counts, clears by itself
when the data is corrected, and every resolution (accept, reject with a reason, edit) is an event with
its compensating events; plus the queue and its refusals over real HTTP."""

from __future__ import annotations

import csv
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
from appliance.counting import conflicts, items, runs, sessions
from appliance.errors import Conflict, NotFound, StockVerifyError, ValidationFailed
from appliance.store.eventlog import EventLog
from replication.wire.codec import unpack
from tests.conftest import DEMO_PASSWORDS, ServerProcess

T = TypeVar("T")

CATALOG = (
    b"sku,barcodes,name,category,uom,mrp,expected_qty\n"
    b"SKU-A,4006381333931,Alpha,Food,EA,10.00,5\n"
    b"SKU-B,5901234123457,Beta,Food,EA,2.50,3\n"
    b"SKU-C,,Gamma,Home,EA,1.00,0\n"
)
BARCODE_B = "5901234123457"
FUTURE = "2999-01-01"
BEFORE_1970 = "1969-12-31"


@dataclass
class Store:
    """A running hard count: verifiers v1 and v2 each hold an IN_PROGRESS session on a rack of their own."""

    box: Box
    boss: User
    v1: User
    v2: User
    v3: User
    run_id: str
    s1: str
    s2: str
    a: str  # product ids
    b: str
    c: str

    def do(self, command: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one domain command in the writer's transaction, as the API does."""
        return self.box.db.write(lambda conn: command(conn, self.box.log, *args, **kwargs))

    def read(self) -> sqlite3.Connection:
        return self.box.db.read()

    def log_position(self) -> int:
        return int(self.read().execute("SELECT coalesce(max(pos), 0) FROM events").fetchone()[0])

    def events_since(self, position: int) -> list[tuple[str, dict[str, Any]]]:
        rows = self.read().execute("SELECT type, payload FROM events WHERE pos > ? ORDER BY pos", (position,))
        return [(row["type"], unpack(row["payload"])) for row in rows]

    def queue(self, status: str = "open") -> dict[str, dict[str, Any]]:
        return {c["conflict_id"]: c for c in conflicts.conflicts(self.read(), status=status)}

    def resolve(
        self, conflict_id: str, action: str, reason: str = "", edits: dict[str, Any] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """Resolve as the supervisor; return the events the resolution recorded, in order."""
        before = self.log_position()
        self.do(conflicts.resolve, self.boss, conflict_id, action=action, reason=reason, edits=edits)
        return self.events_since(before)

    def qty(self, session_id: str, product_id: str) -> int:
        return items.item_quantity(self.read(), session_id, product_id)

    def damage(self, session_id: str, product_id: str) -> int:
        return items.damage_quantity(self.read(), session_id, product_id)

    def attrs(self, session_id: str, product_id: str) -> dict[str, Any]:
        for entry in items.session_items(self.read(), session_id)["items"]:
            if entry["product_id"] == product_id:
                return dict(entry["attributes"])
        return {}


@pytest.fixture
def store(box: Box) -> Store:
    plan = product_import.parse_file(CATALOG, "catalog.csv")

    def job(conn: sqlite3.Connection) -> Store:
        log: EventLog = box.log
        boss = people.add_user(conn, log, "boss", "Boss", "supervisor", "x")
        v1, v2, v3 = (people.add_user(conn, log, name, name, "verifier", "x") for name in ("v1", "v2", "v3"))
        layout.add_floor(conn, log, "G", "Ground")
        for rack in ("G-01", "G-02", "G-03"):
            layout.add_rack(conn, log, "G", rack)
        product_import.commit(conn, log, plan)
        run_id = runs.create_run(conn, log, boss, name="Hard count", kind="hard")
        s1 = sessions.create_session(conn, log, boss, run_id, verifier_id=v1.user_id, rack_codes=["G-01"])
        s2 = sessions.create_session(conn, log, boss, run_id, verifier_id=v2.user_id, rack_codes=["G-02"])
        runs.start_run(conn, log, boss, run_id)
        sessions.start_session(conn, log, v1, s1)
        sessions.start_session(conn, log, v2, s2)
        ids = {row["sku"]: row["product_id"] for row in conn.execute("SELECT sku, product_id FROM products")}
        return Store(box, boss, v1, v2, v3, run_id, s1, s2, ids["SKU-A"], ids["SKU-B"], ids["SKU-C"])

    return box.db.write(job)


def _kinds(store: Store, status: str = "open") -> list[str]:
    return sorted(c["kind"] for c in store.queue(status).values())


def _mismatch(store: Store, qty: int = 3) -> str:
    """v1 verifies product A but scans B's barcode; returns the conflict id."""
    scan = store.do(items.record_scan, store.v1, store.s1, code=BARCODE_B, qty=qty, product_id=store.a)
    return f"barcode_mismatch:{scan.event_id}"


def _damaged(store: Store, qty: int = 2, damage: int = 5) -> str:
    store.do(items.record_scan, store.v1, store.s1, code="SKU-A", qty=qty)
    store.do(items.set_damage, store.v1, store.s1, store.a, damage)
    return f"damage_exceeds:{store.s1}:{store.a}"


def _dated(store: Store, mfg_date: str = FUTURE) -> str:
    store.do(items.set_attributes, store.v1, store.s1, store.a, {"mfg_date": mfg_date})
    return f"mfg_date_impossible:{store.s1}:{store.a}"


def _duplicated(store: Store, serial: str = "SN-1") -> str:
    store.do(items.add_serial, store.v1, store.s1, store.a, serial)
    store.do(items.add_serial, store.v2, store.s2, store.a, serial)
    return f"serial_duplicate:{store.run_id}:{serial}"


def _refused(store: Store, command: Callable[..., Any], *args: Any, **kwargs: Any) -> StockVerifyError:
    with pytest.raises(StockVerifyError) as caught:
        store.do(command, *args, **kwargs)
    return caught.value


# -- detection --------------------------------------------------------------------------------------
def test_a_clean_count_has_no_conflicts(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code="SKU-A", qty=4, product_id=store.a)
    store.do(items.set_damage, store.v1, store.s1, store.a, 4)
    store.do(items.set_attributes, store.v1, store.s1, store.a, {"mfg_date": "2020-05-01"})
    store.do(items.add_serial, store.v1, store.s1, store.a, "SN-1")
    store.do(items.add_serial, store.v2, store.s2, store.a, "SN-2")

    assert store.queue("all") == {}


def test_a_serial_on_items_in_two_sessions_of_one_run_is_a_duplicate(store: Store) -> None:
    conflict_id = _duplicated(store)

    found = store.queue()[conflict_id]
    assert found["kind"] == "serial_duplicate" and found["serial"] == "SN-1" and found["status"] == "open"
    claims = sorted((c["session_id"], c["product_id"]) for c in found["claims"])
    assert claims == sorted([(store.s1, store.a), (store.s2, store.a)])


def test_the_same_serial_in_two_runs_is_not_a_duplicate(store: Store) -> None:
    other_run = store.do(runs.create_run, store.boss, name="Second count", kind="hard")
    s3 = store.do(sessions.create_session, store.boss, other_run, verifier_id=store.v3.user_id, rack_codes=["G-03"])
    store.do(runs.start_run, store.boss, other_run)
    store.do(sessions.start_session, store.v3, s3)

    store.do(items.add_serial, store.v1, store.s1, store.a, "SN-1")
    store.do(items.add_serial, store.v3, s3, store.a, "SN-1")

    assert store.queue("all") == {}


def test_a_serial_duplicate_is_not_flagged_when_one_session_is_void(store: Store) -> None:
    conflict_id = _duplicated(store)
    assert conflict_id in store.queue()

    store.do(sessions.void_session, store.boss, store.s2, reason="counted the wrong rack")

    assert store.queue("all") == {}


def test_damage_above_the_counted_qty_is_flagged_and_clears_when_the_qty_is_raised(store: Store) -> None:
    conflict_id = _damaged(store, qty=2, damage=5)

    found = store.queue()[conflict_id]
    assert (found["kind"], found["damage_qty"], found["qty"]) == ("damage_exceeds", 5, 2)

    store.do(items.record_scan, store.v1, store.s1, code="SKU-A", qty=3)  # 5 counted, 5 damaged

    assert store.queue("all") == {}


def test_damage_on_an_item_nobody_counted_is_flagged(store: Store) -> None:
    store.do(items.set_damage, store.v1, store.s1, store.b, 1)

    assert list(store.queue()) == [f"damage_exceeds:{store.s1}:{store.b}"]


@pytest.mark.parametrize("impossible", [FUTURE, BEFORE_1970, "0001-01-01"])
def test_an_impossible_mfg_date_is_flagged_and_clears_when_edited_to_a_valid_date(
    store: Store, impossible: str
) -> None:
    conflict_id = _dated(store, impossible)

    found = store.queue()[conflict_id]
    assert (found["kind"], found["mfg_date"]) == ("mfg_date_impossible", impossible)

    store.do(items.set_attributes, store.v1, store.s1, store.a, {"mfg_date": "2021-07-15"})

    assert store.queue("all") == {}


@pytest.mark.parametrize("possible", ["1970-01-01", "2020-02-29"])
def test_a_possible_mfg_date_is_not_flagged(store: Store, possible: str) -> None:
    _dated(store, possible)

    assert store.queue("all") == {}


def test_a_scan_whose_code_names_another_product_is_a_barcode_mismatch(store: Store) -> None:
    conflict_id = _mismatch(store, qty=3)

    found = store.queue()[conflict_id]
    assert found["kind"] == "barcode_mismatch"
    assert (found["product_id"], found["resolves_to"], found["qty"], found["code"]) == (store.a, store.b, 3, BARCODE_B)
    assert found["session_id"] == store.s1 and found["run_id"] == store.run_id


def test_a_scan_of_the_verified_products_own_code_is_not_a_mismatch(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code="4006381333931", product_id=store.a)
    store.do(items.record_scan, store.v1, store.s1, code="SKU-A", product_id=store.a)

    assert store.queue("all") == {}


def test_a_barcode_mismatch_is_not_flagged_after_the_scan_is_undone(store: Store) -> None:
    conflict_id = _mismatch(store)
    event_id = conflict_id.split(":", 1)[1]

    store.do(items.undo_scan, store.v1, store.s1, event_id)

    assert store.queue("all") == {}


def test_the_queue_filters_by_run_and_by_status(store: Store) -> None:
    accepted = _damaged(store)
    still_open = _mismatch(store)
    store.resolve(accepted, "accept")

    conn = store.read()
    assert [c["conflict_id"] for c in conflicts.conflicts(conn, store.run_id, "open")] == [still_open]
    assert [c["conflict_id"] for c in conflicts.conflicts(conn, store.run_id, "resolved")] == [accepted]
    assert len(conflicts.conflicts(conn, store.run_id, "all")) == 2
    assert conflicts.conflicts(conn, "no-such-run", "all") == []


# -- accept -----------------------------------------------------------------------------------------
def test_accept_resolves_the_conflict_and_keeps_the_data(store: Store) -> None:
    conflict_id = _damaged(store, qty=2, damage=5)

    recorded = store.resolve(conflict_id, "accept")

    assert [kind for kind, _ in recorded] == ["conflict.resolved"]
    assert store.damage(store.s1, store.a) == 5 and store.qty(store.s1, store.a) == 2
    found = store.queue("resolved")[conflict_id]
    assert found["status"] == "resolved"
    assert found["resolution"]["action"] == "accept" and found["resolution"]["by_user"] == store.boss.user_id
    assert conflict_id not in store.queue("open")


def test_accept_of_a_barcode_mismatch_leaves_the_scan_on_the_scanned_product(store: Store) -> None:
    conflict_id = _mismatch(store, qty=3)

    store.resolve(conflict_id, "accept")

    assert (store.qty(store.s1, store.b), store.qty(store.s1, store.a)) == (3, 0)
    assert store.queue("resolved")[conflict_id]["status"] == "resolved"


# -- reject -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("reason", ["", "   "])
def test_reject_needs_a_reason(store: Store, reason: str) -> None:
    conflict_id = _damaged(store)
    before = store.log_position()

    error = _refused(store, conflicts.resolve, store.boss, conflict_id, action="reject", reason=reason)

    assert isinstance(error, ValidationFailed) and error.code == "REASON_REQUIRED" and error.status == 422
    assert store.events_since(before) == []
    assert store.damage(store.s1, store.a) == 5


def test_an_unknown_action_is_a_validation_error(store: Store) -> None:
    conflict_id = _damaged(store)

    error = _refused(store, conflicts.resolve, store.boss, conflict_id, action="ignore")

    assert error.code == "VALIDATION" and error.details == {"field": "action"}


def test_reject_of_a_barcode_mismatch_undoes_the_scan(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code=BARCODE_B, qty=2)  # a genuine count of B
    conflict_id = _mismatch(store, qty=3)
    assert store.qty(store.s1, store.b) == 5

    recorded = store.resolve(conflict_id, "reject", reason="scanned the shelf label of the neighbour")

    assert [kind for kind, _ in recorded] == ["scan.undone", "conflict.resolved"]
    assert recorded[0][1]["undoes"] == conflict_id.split(":", 1)[1] and recorded[0][1]["qty"] == 3
    assert store.qty(store.s1, store.b) == 2
    assert store.queue("all") == {}


def test_reject_of_damage_sets_the_damage_to_zero(store: Store) -> None:
    conflict_id = _damaged(store, qty=2, damage=5)

    recorded = store.resolve(conflict_id, "reject", reason="damage typed into the wrong field")

    assert [kind for kind, _ in recorded] == ["damage.adjusted", "conflict.resolved"]
    assert (recorded[0][1]["delta"], recorded[0][1]["target"]) == (-5, 0)
    assert store.damage(store.s1, store.a) == 0 and store.qty(store.s1, store.a) == 2
    assert store.queue("all") == {}


def test_reject_of_an_impossible_mfg_date_clears_the_date(store: Store) -> None:
    conflict_id = _dated(store, FUTURE)

    recorded = store.resolve(conflict_id, "reject", reason="typo")

    assert [kind for kind, _ in recorded] == ["item.attributes_set", "conflict.resolved"]
    assert recorded[0][1]["attrs"] == {"mfg_date": None}
    assert store.attrs(store.s1, store.a)["mfg_date"] is None
    assert store.queue("all") == {}


def test_reject_of_a_serial_duplicate_needs_the_session_to_take_it_from(store: Store) -> None:
    conflict_id = _duplicated(store)

    for edits in (None, {"session_id": "not-a-claimant"}):
        error = _refused(store, conflicts.resolve, store.boss, conflict_id, action="reject", reason="r", edits=edits)
        assert error.code == "EDIT_REQUIRED"
    assert conflict_id in store.queue()


def test_reject_of_a_serial_duplicate_removes_the_serial_from_the_named_session(store: Store) -> None:
    conflict_id = _duplicated(store)

    recorded = store.resolve(
        conflict_id, "reject", reason="v2 scanned the box next to it", edits={"session_id": store.s2}
    )

    assert [kind for kind, _ in recorded] == ["serial.removed", "conflict.resolved"]
    assert recorded[0][1]["session_id"] == store.s2
    assert items.item_serials(store.read(), store.s2, store.a) == []
    assert items.item_serials(store.read(), store.s1, store.a) == ["SN-1"]
    assert store.queue("all") == {}


# -- edit -------------------------------------------------------------------------------------------
def test_edit_of_the_damage_qty(store: Store) -> None:
    conflict_id = _damaged(store, qty=2, damage=5)

    recorded = store.resolve(conflict_id, "edit", edits={"damage_qty": 1})

    assert [kind for kind, _ in recorded] == ["damage.adjusted", "conflict.resolved"]
    assert recorded[0][1]["delta"] == -4
    assert (store.qty(store.s1, store.a), store.damage(store.s1, store.a)) == (2, 1)
    assert store.queue("all") == {}


def test_edit_of_the_counted_qty(store: Store) -> None:
    conflict_id = _damaged(store, qty=2, damage=5)

    recorded = store.resolve(conflict_id, "edit", edits={"qty": 6})

    assert [kind for kind, _ in recorded] == ["count.adjusted", "conflict.resolved"]
    assert (recorded[0][1]["delta"], recorded[0][1]["target"]) == (4, 6)
    assert (store.qty(store.s1, store.a), store.damage(store.s1, store.a)) == (6, 5)
    assert store.queue("all") == {}


def test_edit_of_both_qty_and_damage(store: Store) -> None:
    conflict_id = _damaged(store, qty=2, damage=5)

    recorded = store.resolve(conflict_id, "edit", edits={"qty": 4, "damage_qty": 3})

    assert [kind for kind, _ in recorded] == ["count.adjusted", "damage.adjusted", "conflict.resolved"]
    assert (store.qty(store.s1, store.a), store.damage(store.s1, store.a)) == (4, 3)


def test_edit_of_the_mfg_date(store: Store) -> None:
    conflict_id = _dated(store, BEFORE_1970)

    recorded = store.resolve(conflict_id, "edit", edits={"mfg_date": "2019-06-30"})

    assert [kind for kind, _ in recorded] == ["item.attributes_set", "conflict.resolved"]
    assert store.attrs(store.s1, store.a)["mfg_date"] == "2019-06-30"
    assert store.queue("all") == {}


def test_an_edit_to_a_malformed_mfg_date_is_refused_and_changes_nothing(store: Store) -> None:
    conflict_id = _dated(store, FUTURE)
    before = store.log_position()

    error = _refused(store, conflicts.resolve, store.boss, conflict_id, action="edit", edits={"mfg_date": "31/12/2020"})

    assert error.code == "VALIDATION" and error.details == {"field": "mfg_date"}
    assert store.events_since(before) == []
    assert store.queue()[conflict_id]["mfg_date"] == FUTURE


def test_edit_of_a_barcode_mismatch_can_count_the_scan_as_the_claimed_product(store: Store) -> None:
    store.do(items.record_scan, store.v1, store.s1, code="SKU-A", qty=1)
    conflict_id = _mismatch(store, qty=3)

    recorded = store.resolve(conflict_id, "edit", edits={"count_as": "claimed"})

    assert [kind for kind, _ in recorded] == ["scan.undone", "count.adjusted", "conflict.resolved"]
    assert recorded[1][1]["product_id"] == store.a and recorded[1][1]["delta"] == 3
    assert (store.qty(store.s1, store.a), store.qty(store.s1, store.b)) == (4, 0)
    assert store.queue("all") == {}


def test_edit_of_a_barcode_mismatch_can_keep_the_scan_on_the_scanned_product(store: Store) -> None:
    conflict_id = _mismatch(store, qty=3)

    recorded = store.resolve(conflict_id, "edit", edits={"count_as": "scanned"})

    assert [kind for kind, _ in recorded] == ["conflict.resolved"]
    assert (store.qty(store.s1, store.a), store.qty(store.s1, store.b)) == (0, 3)
    assert store.queue("resolved")[conflict_id]["resolution"]["action"] == "edit"


def test_edit_of_a_barcode_mismatch_refuses_another_count_as(store: Store) -> None:
    conflict_id = _mismatch(store)

    error = _refused(store, conflicts.resolve, store.boss, conflict_id, action="edit", edits={"count_as": "both"})

    assert error.code == "VALIDATION" and error.details == {"field": "count_as"}
    assert conflict_id in store.queue()


def test_edit_of_a_serial_duplicate_corrects_the_serial_in_the_named_session(store: Store) -> None:
    conflict_id = _duplicated(store, "SN-1")

    recorded = store.resolve(conflict_id, "edit", edits={"session_id": store.s2, "serial": "SN-7"})

    assert [kind for kind, _ in recorded] == ["serial.removed", "serial.added", "conflict.resolved"]
    assert items.item_serials(store.read(), store.s2, store.a) == ["SN-7"]
    assert items.item_serials(store.read(), store.s1, store.a) == ["SN-1"]
    assert store.queue("all") == {}


@pytest.mark.parametrize(
    ("make", "edits"),
    [
        (_damaged, {}),
        (_damaged, {"mfg_date": "2020-01-01"}),
        (_dated, {"qty": 3}),
        (_mismatch, {}),
        (_duplicated, {"session_id": "whatever"}),
    ],
    ids=["damage-nothing", "damage-given-a-date", "date-given-a-qty", "mismatch-nothing", "serial-without-serial"],
)
def test_an_edit_that_does_not_fit_the_conflict_is_refused(
    store: Store, make: Callable[[Store], str], edits: dict[str, Any]
) -> None:
    conflict_id = make(store)
    before = store.log_position()

    error = _refused(store, conflicts.resolve, store.boss, conflict_id, action="edit", edits=edits)

    assert error.code == "EDIT_REQUIRED"
    assert store.events_since(before) == []


# -- the resolution record ------------------------------------------------------------------------
def test_the_resolution_event_names_the_conflict_the_action_the_reason_and_who(store: Store) -> None:
    conflict_id = _dated(store, FUTURE)

    recorded = store.resolve(conflict_id, "reject", reason="  label misprinted  ")

    kind, payload = recorded[-1]
    assert kind == "conflict.resolved"
    assert payload == {
        "conflict_id": conflict_id,
        "kind": "mfg_date_impossible",
        "fingerprint": f'["{FUTURE}"]',  # the date the supervisor saw
        "action": "reject",
        "reason": "label misprinted",
        "by": store.boss.user_id,
    }
    stored = store.read().execute(
        "SELECT action, reason, by_user FROM conflict_resolutions WHERE conflict_id = ?", (conflict_id,)
    )
    assert tuple(stored.fetchone()) == ("reject", "label misprinted", store.boss.user_id)


def test_an_unknown_conflict_is_not_found(store: Store) -> None:
    _damaged(store)

    error = _refused(store, conflicts.resolve, store.boss, "damage_exceeds:nope:nope", action="accept")

    assert isinstance(error, NotFound) and error.code == "CONFLICT_NOT_FOUND" and error.status == 404


def test_a_conflict_that_cleared_by_itself_can_no_longer_be_resolved(store: Store) -> None:
    conflict_id = _damaged(store, qty=2, damage=5)
    store.do(items.set_damage, store.v1, store.s1, store.a, 0)

    error = _refused(store, conflicts.resolve, store.boss, conflict_id, action="accept")

    assert error.code == "CONFLICT_NOT_FOUND"


def test_a_supervisor_resolves_conflicts_on_a_submitted_session(store: Store) -> None:
    damage = _damaged(store, qty=2, damage=5)
    mismatch = _mismatch(store, qty=3)
    store.do(sessions.submit_session, store.v1, store.s1)

    store.resolve(damage, "edit", edits={"qty": 5})
    store.resolve(mismatch, "reject", reason="wrong shelf")

    assert (store.qty(store.s1, store.a), store.qty(store.s1, store.b)) == (5, 0)
    assert sessions.get_session(store.read(), store.s1)["status"] == "SUBMITTED"
    assert store.queue("all") == {}


def test_the_verifier_cannot_change_a_submitted_session(store: Store) -> None:
    _damaged(store)
    store.do(sessions.submit_session, store.v1, store.s1)

    error = _refused(store, items.set_damage, store.v1, store.s1, store.a, 0)

    assert error.code == "SESSION_NOT_IN_PROGRESS"


@pytest.mark.parametrize(
    ("make", "action", "edits"),
    [
        (_damaged, "reject", {}),
        (_damaged, "edit", {"damage_qty": 0}),
        (_dated, "reject", {}),
        (_mismatch, "reject", {}),
        (_mismatch, "edit", {"count_as": "claimed"}),
    ],
    ids=["damage-reject", "damage-edit", "date-reject", "mismatch-reject", "mismatch-edit"],
)
def test_nobody_changes_an_approved_session(
    store: Store, make: Callable[[Store], str], action: str, edits: dict[str, Any]
) -> None:
    conflict_id = make(store)
    store.do(sessions.submit_session, store.v1, store.s1)
    store.do(sessions.approve_session, store.boss, store.s1)
    before = store.log_position()
    items_before = items.session_items(store.read(), store.s1)

    error = _refused(store, conflicts.resolve, store.boss, conflict_id, action=action, reason="r", edits=edits)

    assert isinstance(error, Conflict) and error.code == "SESSION_CLOSED"
    assert store.events_since(before) == []
    assert items.session_items(store.read(), store.s1) == items_before
    assert store.queue()[conflict_id]["status"] == "open"


def test_a_serial_cannot_be_taken_from_an_approved_session(store: Store) -> None:
    conflict_id = _duplicated(store)
    store.do(sessions.submit_session, store.v2, store.s2)
    store.do(sessions.approve_session, store.boss, store.s2)

    error = _refused(
        store, conflicts.resolve, store.boss, conflict_id, action="reject", reason="r", edits={"session_id": store.s2}
    )
    assert error.code == "SESSION_CLOSED"

    store.resolve(conflict_id, "reject", reason="taken from the open session", edits={"session_id": store.s1})
    assert items.item_serials(store.read(), store.s1, store.a) == []
    assert items.item_serials(store.read(), store.s2, store.a) == ["SN-1"]


def test_a_rejected_conflict_that_comes_back_is_open_again(store: Store) -> None:
    """Rejecting took the damage back; the verifier then enters more damage than was counted again.
    That is a new problem the supervisor has not seen, so it must be in the open queue."""
    conflict_id = _damaged(store, qty=2, damage=5)
    store.resolve(conflict_id, "reject", reason="damage typed into the wrong field")
    assert store.queue("all") == {}

    store.do(items.set_damage, store.v1, store.s1, store.a, 7)

    assert conflict_id in store.queue("open")


# -- over HTTP ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("conflicts") / "box", "--demo")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _client(server: ServerProcess, username: str, password: str) -> httpx.Client:
    return server.client(server.login(username, password))


def _ok(answer: httpx.Response) -> Any:
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def _refusal(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, answer.json()["code"]


def test_the_queue_and_resolutions_over_http(server: ServerProcess) -> None:
    with (server.data_dir / "demo" / "products.csv").open(newline="", encoding="utf-8") as handle:
        claimed, scanned = list(csv.DictReader(handle))[:2]
    admin = _client(server, "admin", DEMO_PASSWORDS["admin"])
    boss = _client(server, "supervisor", DEMO_PASSWORDS["supervisor"])
    auditor = _client(server, "auditor", DEMO_PASSWORDS["auditor"])
    _ok(admin.post("/api/users", json={"username": "carla", "role": "verifier", "password": "carla-pass"}))
    verifier = _client(server, "carla", "carla-pass")
    claimed_id = _ok(boss.get(f"/api/products/{claimed['sku']}"))["product_id"]
    scanned_id = _ok(boss.get(f"/api/products/{scanned['sku']}"))["product_id"]

    run_id = _ok(boss.post("/api/runs", json={"name": "Conflicts", "kind": "hard"}))["run_id"]
    session = _ok(boss.post(f"/api/runs/{run_id}/sessions", json={"verifier": "carla", "racks": ["G-01"]}))
    _ok(boss.post(f"/api/runs/{run_id}/start"))
    _ok(verifier.post(f"/api/sessions/{session['session_id']}/start"))
    scan = _ok(
        verifier.post(
            f"/api/sessions/{session['session_id']}/scans",
            json={"code": scanned["sku"], "qty": 2, "product_id": claimed_id},
        )
    )
    assert scan["product_id"] == scanned_id

    queue = _ok(auditor.get("/api/conflicts", params={"run_id": run_id}))
    assert [(c["kind"], c["status"], c["qty"]) for c in queue] == [("barcode_mismatch", "open", 2)]
    conflict_id = queue[0]["conflict_id"]
    assert _refusal(verifier.get("/api/conflicts")) == (403, "FORBIDDEN")
    assert _refusal(auditor.post(f"/api/conflicts/{conflict_id}/resolve", json={"action": "accept"})) == (
        403,
        "FORBIDDEN",
    )
    assert _refusal(boss.get("/api/conflicts", params={"status": "closed"})) == (422, "VALIDATION")

    reject = f"/api/conflicts/{conflict_id}/resolve"
    assert _refusal(boss.post(reject, json={"action": "reject", "reason": " "})) == (422, "REASON_REQUIRED")
    unknown = boss.post("/api/conflicts/barcode_mismatch:NOPE/resolve", json={"action": "accept"})
    assert _refusal(unknown) == (404, "CONFLICT_NOT_FOUND")

    answer = _ok(boss.post(reject, json={"action": "reject", "reason": "scanned the neighbour"}))
    assert answer == {"conflict_id": conflict_id, "action": "reject"}
    assert _ok(boss.get("/api/conflicts", params={"run_id": run_id, "status": "all"})) == []
    view = _ok(boss.get(f"/api/sessions/{session['session_id']}"))
    assert [entry["qty"] for entry in view["items"] if entry["product_id"] == scanned_id] == [0]
