"""Insights against a real store on disk (the demo catalogue), with the box's clock set by the test so
that every time an insight reports is one the test chose.

The count, minute by minute from T0 (the run starts at T0):
  Vani claims G-01 at 1:00, scans 2 units of p0 five times, 30 s apart (2:00 to 4:00: 10 units in 2
  minutes of active time), adds serial SN-ONE and 1 damaged unit, finishes G-01 at 5:00.
  Meera on G-03: 17 of p2 at 6:40, an unmatched code at 6:50, 2 of p0 at 7:00, undone at 7:10.
  Ravi on G-04: 11 of p4 at 8:20; serial SN-DUP on p4 and on p5 (a duplicate); stays submitted.
  Vani's and Meera's sessions are approved; Asha recounts p2 (blind) at 11:40 and finds 16.
A second run is planned afterwards and never started.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from litestar.testing import TestClient

from appliance import app as box_app
from appliance.auth import people
from appliance.auth.people import User
from appliance.box import Box, open_box
from appliance.counting import conflicts, items, locks, rollups, runs, sessions, variance
from appliance.demo.seed import seed_demo
from appliance.errors import StockVerifyError
from appliance.reports import facts, insights
from replication.wire.hlc import wall_ms
from tests.conftest import make_settings, person

TTL_MS = 10 * 60_000


@dataclass
class Count:
    box: Box
    run_id: str
    second_run: str
    products: list[dict[str, Any]]
    sessions: dict[str, str]
    users: dict[str, User]
    t0: int

    def read(self, kind: str, *, every_run: bool = False) -> dict[str, Any]:
        return insights.insight(self.box.db.read(), kind, None if every_run else self.run_id)


@pytest.fixture(scope="module")
def count(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Count]:
    box = open_box(make_settings(tmp_path_factory.mktemp("insights") / "box"))
    t0 = wall_ms() + 60_000  # ahead of the box's clock, so the clock follows the times set here
    now = [t0]
    box.log.clock._wall = lambda: now[0]

    def at(seconds: int) -> None:
        now[0] = t0 + seconds * 1000

    seed_demo(box)
    supervisor, vani = person(box, "supervisor"), person(box, "verifier")
    hasher = people.Passwords(1024, 1)

    def add_verifiers(c: Any) -> None:
        for name in ("meera", "ravi", "asha"):
            people.add_user(c, box.log, name, name.title(), "verifier", hasher.hash(f"{name}-pass-1234"))

    box.db.write(add_verifiers)
    users = {"vani": vani, **{name: person(box, name) for name in ("meera", "ravi", "asha")}}
    conn = box.db.read()
    p = [
        dict(row)
        for row in conn.execute(
            "SELECT p.sku, p.product_id, p.category, substr(min(c.code), 2) AS barcode FROM products p"
            " JOIN product_codes c ON c.product_id = p.product_id WHERE c.kind = 'ean13'"
            " GROUP BY p.product_id ORDER BY p.sku LIMIT 6"
        )
    ]
    assert len(p) == 6

    def plan(c: Any) -> tuple[str, dict[str, str]]:
        run_id = runs.create_run(c, box.log, supervisor, name="Weekly", kind="hard")
        made = {
            who: sessions.create_session(
                c, box.log, supervisor, run_id, verifier_id=users[who].user_id, rack_codes=racks
            )
            for who, racks in (("vani", ["G-01", "G-02"]), ("meera", ["G-03"]), ("ravi", ["G-04"]))
        }
        runs.start_run(c, box.log, supervisor, run_id)
        return run_id, made

    at(-30)
    box.db.write(lambda c: variance.set_tolerance(c, box.log, supervisor, scope="store", units=1, pct_bp=0))
    at(0)
    run_id, made = box.db.write(plan)

    def step(seconds: int, fn: Any) -> Any:
        at(seconds)
        return box.db.write(fn)

    scan = items.record_scan

    def start(c: Any) -> None:
        for who in ("vani", "meera", "ravi"):
            sessions.start_session(c, box.log, users[who], made[who])

    step(30, start)
    step(
        60,
        lambda c: locks.claim_rack(
            c, box.log, vani, run_id=run_id, rack_code="G-01", session_id=made["vani"], device_id=None,
            ttl_ms=TTL_MS, authority=True,
        ),
    )  # fmt: skip
    for i in range(5):
        step(
            120 + 30 * i, lambda c: scan(c, box.log, vani, made["vani"], code=p[0]["barcode"], qty=2, rack_code="G-01")
        )
    step(250, lambda c: items.add_serial(c, box.log, vani, made["vani"], p[0]["product_id"], "SN-ONE"))
    step(260, lambda c: items.set_damage(c, box.log, vani, made["vani"], p[0]["product_id"], 1))
    step(
        300,
        lambda c: locks.move_rack(
            c, box.log, vani, run_id=run_id, rack_code="G-01", action="finish", ttl_ms=TTL_MS, authority=True
        ),
    )
    meera = users["meera"]
    step(400, lambda c: scan(c, box.log, meera, made["meera"], code=p[2]["barcode"], qty=17, rack_code="G-03"))
    step(410, lambda c: scan(c, box.log, meera, made["meera"], code="NO-SUCH-CODE", qty=1, rack_code="G-03"))
    undo = step(420, lambda c: scan(c, box.log, meera, made["meera"], code=p[0]["barcode"], qty=2, rack_code="G-03"))
    step(430, lambda c: items.undo_scan(c, box.log, meera, made["meera"], undo.event_id))
    ravi = users["ravi"]
    step(500, lambda c: scan(c, box.log, ravi, made["ravi"], code=p[4]["barcode"], qty=11, rack_code="G-04"))
    step(510, lambda c: items.add_serial(c, box.log, ravi, made["ravi"], p[4]["product_id"], "SN-DUP"))
    step(520, lambda c: items.add_serial(c, box.log, ravi, made["ravi"], p[5]["product_id"], "SN-DUP"))

    def close(c: Any) -> None:
        for who in ("vani", "meera", "ravi"):
            sessions.submit_session(c, box.log, users[who], made[who])
        sessions.approve_session(c, box.log, supervisor, made["vani"])
        sessions.approve_session(c, box.log, supervisor, made["meera"])
        made["recount"] = sessions.create_session(
            c, box.log, supervisor, run_id, verifier_id=users["asha"].user_id, rack_codes=["G-03"],
            product_ids=[p[2]["product_id"]], kind="recount",
        )  # fmt: skip
        sessions.start_session(c, box.log, users["asha"], made["recount"])

    step(600, close)
    asha = users["asha"]
    step(700, lambda c: scan(c, box.log, asha, made["recount"], code=p[2]["barcode"], qty=16, rack_code="G-03"))

    def approve_recount(c: Any) -> None:
        sessions.submit_session(c, box.log, asha, made["recount"])
        sessions.approve_session(c, box.log, supervisor, made["recount"])

    step(760, approve_recount)
    second = step(800, lambda c: runs.create_run(c, box.log, supervisor, name="Next week", kind="hard"))
    yield Count(box, run_id, second, p, made, users, t0)
    box.close()


def test_productivity_counts_active_time_between_scans(count: Count) -> None:
    answer = count.read("productivity")
    by = {v["verifier_id"]: v for v in answer["verifiers"]}
    vani = by[count.users["vani"].user_id]
    # 10 units in 2 minutes of active time: 300 units an hour; 5 scans: 150 scans an hour.
    assert (vani["scans"], vani["units"], vani["active_ms"]) == (5, 10, 120_000)
    assert (vani["units_per_hour"], vani["scans_per_hour"], vani["racks_finished"]) == (300.0, 150.0, 1)
    assert (vani["first_scan_ms"], vani["last_scan_ms"]) == (count.t0 + 120_000, count.t0 + 240_000)
    meera = by[count.users["meera"].user_id]
    # Three scans 10 s apart (the undone one was still work): 20 units in 20 s.
    assert (meera["scans"], meera["units"], meera["active_ms"], meera["units_per_hour"]) == (3, 20, 20_000, 3600.0)
    # Meera counted p2 first (17); the approved recount found 16: 1 apart, within the store's 1 unit.
    assert meera["recounted_products"] == 1 and meera["recount_abs_diff"] == 1
    assert meera["recount_within_tolerance"] == 1.0
    assert meera["recounts"][0]["first"] == 17 and meera["recounts"][0]["recount"] == 16
    asha = by[count.users["asha"].user_id]
    assert (asha["scans"], asha["active_ms"], asha["units_per_hour"]) == (1, 0, None)  # one scan: no span
    assert vani["recounted_products"] == 0 and vani["recount_within_tolerance"] is None
    assert insights.active_ms([0, 60_000, 60_000 + insights.IDLE_GAP_MS + 1, 60_000 + insights.IDLE_GAP_MS + 2]) == (
        60_001
    )


def test_damage_by_category_floor_and_across_runs(count: Count) -> None:
    p = count.products
    conn = count.box.db.read()
    answer = count.read("damage")
    rows = list(facts.run_facts(conn, count.run_id))
    counted: dict[str, int] = defaultdict(int)
    for row in rows:
        if row["product_id"]:
            counted[row["category"] or ""] += row["qty"]
    assert answer["damaged"] == 1 and answer["counted"] == sum(counted.values()) == 10 + 16
    by_category = {r["category"]: r for r in answer["by_category"]}
    damaged = by_category[p[0]["category"]]
    assert damaged["damaged"] == 1 and damaged["share"] == round(1 / counted[p[0]["category"]], 4)
    floors = {r["floor"]: r for r in answer["by_floor"]}
    assert floors["G"]["damaged"] == 1 and floors["G"]["counted"] == 26 and floors["G"]["share"] == round(1 / 26, 4)
    trend = count.read("damage", every_run=True)["runs"]
    assert [r["run_id"] for r in trend] == [count.run_id, count.second_run]
    assert (trend[0]["damaged"], trend[0]["share"]) == (1, round(1 / 26, 4)) and trend[1]["counted"] == 0


def test_serials_where_and_when_with_duplicates_first(count: Count) -> None:
    p = count.products
    answer = count.read("serials")
    assert answer["serials"] == 2 and answer["duplicates"] == ["SN-DUP"]
    seen = [(s["serial"], s["duplicate"], s["sku"], s["rack"], s["seen_ms"]) for s in answer["seen"]]
    assert seen == [
        ("SN-DUP", True, p[4]["sku"], "G-04", count.t0 + 510_000),
        ("SN-DUP", True, p[5]["sku"], "G-04", count.t0 + 520_000),
        ("SN-ONE", False, p[0]["sku"], "G-01", count.t0 + 250_000),
    ]
    assert answer["seen"][-1]["session_id"] == count.sessions["vani"]


def test_heatmap_has_each_racks_time_and_variance_rate(count: Count) -> None:
    p = count.products
    conn = count.box.db.read()
    expected = dict(conn.execute("SELECT product_id, expected_qty FROM run_expected WHERE run_id = ?", (count.run_id,)))
    answer = count.read("heatmap")
    racks = {r["rack"]: r for r in answer["racks"]}
    g01 = racks["G-01"]
    assert (g01["first_claim_ms"], g01["finished_ms"], g01["duration_ms"]) == (
        count.t0 + 60_000,
        count.t0 + 300_000,
        240_000,
    )
    assert (g01["state"], g01["scans"], g01["units"], g01["products"]) == ("completed", 5, 10, 1)
    assert g01["products_with_variance"] == int(expected.get(p[0]["product_id"], 0) != 10)
    g03 = racks["G-03"]  # Meera's three scans and the recount's one; the recount's 16 replaces her 17
    assert (g03["scans"], g03["units"], g03["duration_ms"], g03["products"]) == (4, 16, None, 1)
    assert g03["variance_rate"] == float(expected.get(p[2]["product_id"], 0) != 16)
    assert racks["G-04"]["units"] == 0 and racks["G-04"]["scans"] == 1  # Ravi's session is not approved
    floor = next(f for f in answer["floors"] if f["floor"] == "G")
    assert floor["racks_finished"] == 1 and floor["mean_rack_ms"] == 240_000
    assert floor["scans"] == sum(r["scans"] for r in answer["racks"] if r["floor"] == "G")
    assert floor["units"] == 26


def _points(name: str, rate: float) -> float:
    weight, zero_at = insights.QUALITY_WEIGHTS[name]
    return weight * (1 - min(1.0, rate / zero_at))


def test_quality_score_follows_the_documented_formula(count: Count) -> None:
    answer = count.read("quality")
    by = {s["session_id"]: s for s in answer["sessions"]}
    assert sum(w for w, _ in insights.QUALITY_WEIGHTS.values()) == 100
    clean = by[count.sessions["vani"]]
    assert clean["score"] == 100.0 and clean["units_scanned"] == 10
    meera = by[count.sessions["meera"]]
    # 20 units scanned: 1 unmatched, 2 undone; her one product (p2) was recounted afterwards.
    assert (meera["units_scanned"], meera["units_unmatched"], meera["units_undone"]) == (20, 1, 2)
    assert (meera["products_counted"], meera["products_recounted"]) == (1, 1)
    formula = (
        _points("unmatched", 1 / 20)
        + _points("conflicts", 0)
        + _points("recounts", 1)
        + _points("late", 0)
        + _points("undo", 2 / 20)
    )
    assert meera["score"] == round(formula, 1) == 62.5 < clean["score"]
    assert meera["parts"]["undo"] == {"rate": 0.1, "weight": 15.0, "zero_at": 0.2, "points": 7.5}
    ravi = by[count.sessions["ravi"]]  # the duplicate serial is an open conflict on his one product
    assert (ravi["conflicts_open"], ravi["products_counted"], ravi["score"]) == (1, 1, 75.0)
    run = answer["run"]
    assert (run["units_scanned"], run["units_unmatched"], run["units_undone"], run["conflicts_open"]) == (57, 1, 2, 1)
    rates = {"unmatched": 1 / 57, "conflicts": 1 / 3, "recounts": 1 / 3, "late": 0, "undo": 2 / 57}
    assert run["score"] == insights.score(rates)["score"]
    assert run["score"] == round(sum(_points(name, rate) for name, rate in rates.items()), 1)


def test_scans_under_a_lease_that_passed_on_are_late(box: Box) -> None:
    """Vani scans 4 units under her first lease on G-01; a supervisor force-releases the rack and she
    claims it again: those 4 of her 20 units were made under a lease that had passed on (late_lease)."""
    seed_demo(box)
    supervisor, vani = person(box, "supervisor"), person(box, "verifier")
    code = box.db.read().execute("SELECT substr(min(code), 2) FROM product_codes WHERE kind = 'ean13'").fetchone()[0]

    def plan(c: Any) -> tuple[str, str]:
        run_id = runs.create_run(c, box.log, supervisor, name="Late", kind="hard")
        session_id = sessions.create_session(
            c, box.log, supervisor, run_id, verifier_id=vani.user_id, rack_codes=["G-01"]
        )
        runs.start_run(c, box.log, supervisor, run_id)
        sessions.start_session(c, box.log, vani, session_id)
        return run_id, session_id

    run_id, session_id = box.db.write(plan)

    def claim(c: Any) -> None:
        locks.claim_rack(
            c, box.log, vani, run_id=run_id, rack_code="G-01", session_id=session_id, device_id=None,
            ttl_ms=TTL_MS, authority=True,
        )  # fmt: skip

    def first_lease(c: Any) -> None:
        claim(c)
        items.record_scan(c, box.log, vani, session_id, code=code, qty=4, rack_code="G-01")
        locks.supervise_rack(
            c, box.log, supervisor, run_id=run_id, rack_code="G-01", action="force_release", reason="stuck"
        )
        claim(c)
        items.record_scan(c, box.log, vani, session_id, code=code, qty=16, rack_code="G-01")

    box.db.write(first_lease)
    answer = insights.quality(box.db.read(), run_id)
    late = answer["sessions"][0]
    assert (late["units_scanned"], late["units_late"], late["conflicts_open"], late["units_undone"]) == (20, 4, 1, 0)
    assert late["parts"]["late"]["points"] == 0.0 and late["parts"]["conflicts"]["points"] == 0.0
    assert late["score"] == round(_points("unmatched", 0) + _points("recounts", 0) + _points("undo", 0), 1) == 60.0
    conflict_id = next(c["conflict_id"] for c in conflicts.conflicts(box.db.read(), run_id))
    box.db.write(
        lambda c: conflicts.resolve(c, box.log, supervisor, conflict_id, action="reject", reason="lease had passed")
    )
    after = insights.quality(box.db.read(), run_id)["sessions"][0]
    # Rejected: the 4 units no longer count, but they are late scans taken back, not undone by the verifier.
    assert (after["units_late"], after["units_undone"], after["conflicts_open"], after["conflicts_resolved"]) == (
        4,
        0,
        0,
        1,
    )
    assert after["parts"]["conflicts"]["rate"] == insights.RESOLVED_CONFLICT_COST


def test_kpis_per_run_in_creation_order(count: Count) -> None:
    conn = count.box.db.read()
    first, second = count.read("kpis", every_run=True)["runs"]
    counts = rollups.approved_counts(conn, count.run_id)
    lines = variance.variance_lines(conn, count.run_id)
    assert (first["run_id"], first["status"], first["sessions"], first["sessions_approved"]) == (
        count.run_id,
        "IN_PROGRESS",
        4,
        3,
    )
    assert first["units"] == sum(counts.values()) == 26 and first["skus_counted"] == 2
    assert first["accuracy"] == round(sum(line["within_tolerance"] for line in lines) / len(lines), 4)
    assert first["damage_share"] == round(1 / 26, 4)
    assert first["quality_score"] == count.read("quality")["run"]["score"]
    # From the run's start (count.t0) to its last scan (the recount's, at 11:40).
    assert (first["started_ms"], first["last_scan_ms"], first["duration_ms"]) == (count.t0, count.t0 + 700_000, 700_000)
    assert (second["run_id"], second["status"], second["units"], second["duration_ms"]) == (
        count.second_run,
        "PLANNED",
        0,
        None,
    )


def test_every_insight_is_a_table_and_bad_asks_are_refused(count: Count) -> None:
    conn = count.box.db.read()
    for kind in insights.KINDS:
        table = insights.as_table(conn, kind, count.run_id)
        rows = list(table.rows())
        assert rows and table.total_rows == len(rows)
        keys = {c.key for c in table.columns}
        assert all(keys <= set(row) for row in rows), kind
    heat = list(insights.as_table(conn, "heatmap", count.run_id).rows())
    assert next(r for r in heat if r["rack"] == "G-01")["duration_min"] == 4.0
    quality = list(insights.as_table(conn, "quality", count.run_id).rows())
    assert {r["session_id"]: r["score"] for r in quality}[count.sessions["meera"]] == 62.5
    assert len(list(insights.as_table(conn, "kpis", None).rows())) == 2
    for kind, run_id, code in [
        ("colour", count.run_id, "VALIDATION"),
        ("heatmap", None, "VALIDATION"),
        ("quality", "01NOSUCHRUN00000000000000", "RUN_NOT_FOUND"),
    ]:
        with pytest.raises(StockVerifyError) as caught:
            insights.insight(conn, kind, run_id)
        assert caught.value.code == code


def test_insights_over_http_for_oversight_only(count: Count) -> None:
    box = count.box
    supervisor, vani = person(box, "supervisor"), person(box, "verifier")

    def issue(c: Any) -> dict[str, str]:
        return {u.username: people.issue_token(c, u.user_id, 600)[0] for u in (supervisor, vani)}

    tokens = box.db.write(issue)
    with TestClient(box_app.create_app(box)) as client:
        client.headers["Authorization"] = f"Bearer {tokens['supervisor']}"
        for kind in insights.KINDS:
            answer = client.get(f"/api/reports/insights/{kind}", params={"run_id": count.run_id})
            assert answer.status_code == 200, answer.text
        quality = client.get("/api/reports/insights/quality", params={"run_id": count.run_id}).json()
        assert quality["run"]["score"] == count.read("quality")["run"]["score"]
        trends = client.get("/api/reports/trends").json()
        assert [r["run_id"] for r in trends["damage"]] == [count.run_id, count.second_run]
        assert [r["run_id"] for r in trends["kpis"]] == [count.run_id, count.second_run]
        colour = client.get("/api/reports/insights/colour", params={"run_id": count.run_id})
        assert colour.json()["code"] == "VALIDATION"
        assert client.get("/api/reports/insights/heatmap").status_code == 400  # a run is named
        client.headers["Authorization"] = f"Bearer {tokens['verifier']}"
        assert client.get("/api/reports/trends").status_code == 403
