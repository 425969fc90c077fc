"""A run's facts, queries, snapshots and comparisons against a real store on disk (the demo catalogue).

The count: two verifiers count racks G-01 to G-03 (scans, an unmatched code, a "set to N", damage, a
condition); a third session stays submitted (not counted); a blind recount of one product is approved
last, so its count replaces the first ones. Every figure a report shows is checked against the
rollups the dashboard shows, which only approved sessions feed.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.auth import people
from appliance.auth.people import User
from appliance.box import Box, open_box
from appliance.counting import items, rollups, runs, sessions
from appliance.demo.seed import seed_demo
from appliance.errors import StockVerifyError
from appliance.replica import store as replicas
from appliance.reports import audit, compare, facts, query, snapshots
from appliance.store.eventlog import rebuild, version_vector
from replication.wire.codec import pack, unpack
from tests.conftest import make_settings, person


@dataclass
class Count:
    box: Box
    supervisor: User
    run_id: str
    products: list[dict[str, Any]]  # sku, product_id, barcode (EAN-13), category
    sessions: dict[str, str]

    def q(self, **spec: Any) -> dict[str, Any]:
        return query.run_query(self.box.db.read(), query.Spec(**{"run_id": self.run_id, **spec}))


@pytest.fixture(scope="module")
def count(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Count]:
    box = open_box(make_settings(tmp_path_factory.mktemp("reports") / "box"))
    seed_demo(box)
    supervisor, vani = person(box, "supervisor"), person(box, "verifier")
    hasher = people.Passwords(1024, 1)
    meera = box.db.write(
        lambda c: people.add_user(c, box.log, "meera", "Meera", "verifier", hasher.hash("m-pass-1234"))
    )
    ravi = box.db.write(lambda c: people.add_user(c, box.log, "ravi", "Ravi", "verifier", hasher.hash("r-pass-1234")))
    conn = box.db.read()
    products = [
        dict(row)
        for row in conn.execute(
            "SELECT p.sku, p.product_id, p.category, substr(min(c.code), 2) AS barcode FROM products p"
            " JOIN product_codes c ON c.product_id = p.product_id WHERE c.kind = 'ean13'"
            " GROUP BY p.product_id ORDER BY p.sku LIMIT 6"
        )
    ]
    assert len(products) == 6

    def plan(c: Any) -> tuple[str, dict[str, str]]:
        run_id = runs.create_run(c, box.log, supervisor, name="Weekly", kind="hard")
        made = {
            "vani": sessions.create_session(
                c, box.log, supervisor, run_id, verifier_id=vani.user_id, rack_codes=["G-01", "G-02"]
            ),
            "meera": sessions.create_session(
                c, box.log, supervisor, run_id, verifier_id=meera.user_id, rack_codes=["G-03"]
            ),
            "ravi": sessions.create_session(
                c, box.log, supervisor, run_id, verifier_id=ravi.user_id, rack_codes=["G-04"]
            ),
        }
        runs.start_run(c, box.log, supervisor, run_id)
        return run_id, made

    run_id, made = box.db.write(plan)
    p = products

    def counting(c: Any) -> None:
        for who, user in (("vani", vani), ("meera", meera), ("ravi", ravi)):
            sessions.start_session(c, box.log, user, made[who])
        scan = items.record_scan
        for _ in range(3):
            scan(c, box.log, vani, made["vani"], code=p[0]["barcode"], rack_code="G-01")
        scan(c, box.log, vani, made["vani"], code=p[1]["barcode"], qty=5, rack_code="G-01")
        scan(c, box.log, vani, made["vani"], code=p[1]["barcode"], qty=2, rack_code="G-02")
        scan(c, box.log, vani, made["vani"], code="NO-SUCH-CODE", qty=4, rack_code="G-02")
        items.set_damage(c, box.log, vani, made["vani"], p[1]["product_id"], 1)
        items.set_attributes(c, box.log, vani, made["vani"], p[1]["product_id"], {"condition": "damaged"})
        scan(c, box.log, meera, made["meera"], code=p[2]["barcode"], qty=7, rack_code="G-03")
        scan(c, box.log, meera, made["meera"], code=p[0]["barcode"], qty=2, rack_code="G-03")
        items.set_quantity(c, box.log, meera, made["meera"], p[3]["product_id"], 9)  # typed on the item
        scan(c, box.log, ravi, made["ravi"], code=p[4]["barcode"], qty=11, rack_code="G-04")  # stays submitted
        for who, user in (("vani", vani), ("meera", meera), ("ravi", ravi)):
            sessions.submit_session(c, box.log, user, made[who])
        sessions.approve_session(c, box.log, supervisor, made["vani"])
        sessions.approve_session(c, box.log, supervisor, made["meera"])
        # A blind recount of p[2] by Vani (who did not count it first) finds 6, not 7.
        made["recount"] = sessions.create_session(
            c, box.log, supervisor, run_id, verifier_id=vani.user_id, rack_codes=["G-03"],
            product_ids=[p[2]["product_id"]], kind="recount",
        )  # fmt: skip
        sessions.start_session(c, box.log, vani, made["recount"])
        scan(c, box.log, vani, made["recount"], code=p[2]["barcode"], qty=6, rack_code="G-03")
        scan(c, box.log, vani, made["recount"], code=p[5]["barcode"], qty=1, rack_code="G-03")  # not its product
        sessions.submit_session(c, box.log, vani, made["recount"])
        sessions.approve_session(c, box.log, supervisor, made["recount"])

    box.db.write(counting)
    yield Count(box, supervisor, run_id, products, made)
    box.close()


def test_the_facts_count_what_the_rollup_counts(count: Count) -> None:
    conn = count.box.db.read()
    by_product: dict[str, int] = defaultdict(int)
    rows = list(facts.run_facts(conn, count.run_id))
    for row in rows:
        if row["product_id"]:
            by_product[row["product_id"]] += row["qty"]
    approved = rollups.approved_counts(conn, count.run_id)
    assert {k: v for k, v in by_product.items() if v} == {k: v for k, v in approved.items() if v}
    p = count.products
    assert by_product[p[2]["product_id"]] == 6  # the recount replaced the first count's 7
    assert p[4]["product_id"] not in by_product  # Ravi's session is only submitted
    assert p[5]["product_id"] not in by_product  # a recount counts only its own products
    assert sum(r["qty"] for r in rows) == rollups.run_rollup(conn, count.run_id)["total_counted"] + 4  # + unmatched
    unmatched = [r for r in rows if r["code"]]
    assert [(r["code"], r["qty"], r["rack"], r["floor"]) for r in unmatched] == [("NO-SUCH-CODE", 4, "G-02", "G")]
    damage = [r for r in rows if r["damage"]]
    assert [(r["sku"], r["damage"], r["rack"], r["condition"]) for r in damage] == [(p[1]["sku"], 1, None, "damaged")]


def test_group_by_any_keys_with_totals_and_filters(count: Count) -> None:
    p = count.products
    everything = count.q()
    conn = count.box.db.read()
    expected = dict(conn.execute("SELECT product_id, expected_qty FROM run_expected WHERE run_id = ?", (count.run_id,)))
    counted = {pid for pid, n in rollups.approved_counts(conn, count.run_id).items() if n}
    # Lines: the products the group holds, counted or expected (a hard count expects the whole master),
    # and the unmatched code.
    lines = len(counted | {pid for pid, n in expected.items() if n}) + 1
    total = sum(expected.values())
    assert everything["groups"] == [{"qty": 31, "damage": 1, "lines": lines, "expected": total, "variance": 31 - total}]
    by_rack = {g["rack"]: g["qty"] for g in count.q(group_by=["rack"])["groups"]}
    assert by_rack == {"G-01": 8, "G-02": 6, "G-03": 8, None: 9}  # the typed 9 has no rack; G-03: 2 + 6
    rollup = rollups.run_rollup(count.box.db.read(), count.run_id)
    assert {r["rack"]: r["units"] for r in rollup["racks"] if r["units"]} == {"G-01": 8, "G-02": 2, "G-03": 8}
    by_verifier = {g["verifier"]: (g["qty"], g["lines"]) for g in count.q(group_by=["verifier"])["groups"]}
    assert by_verifier == {"Vani (verifier)": (3 + 5 + 2 + 4 + 6, 4), "Meera": (2 + 9, 2)}
    two = count.q(group_by=["floor", "verifier"], filters={"rack": ["G-01", "G-02"]})
    assert [(g["floor"], g["verifier"], g["qty"]) for g in two["groups"]] == [("G", "Vani (verifier)", 14)]
    assert two["total"]["qty"] == 14 and "expected" not in two["total"]
    assert [g["code"] for g in count.q(group_by=["product"], unmatched=True)["groups"]] == ["NO-SUCH-CODE"]
    damaged = count.q(group_by=["product"], damaged=True)["groups"]
    assert [(g["sku"], g["qty"], g["damage"]) for g in damaged] == [(p[1]["sku"], 7, 1)]
    assert [g["condition"] for g in count.q(group_by=["condition"])["groups"]] == [None, "damaged"]


def test_grouped_by_product_every_expected_product_shows_with_its_variance(count: Count) -> None:
    conn = count.box.db.read()
    expected = dict(conn.execute("SELECT product_id, expected_qty FROM run_expected WHERE run_id = ?", (count.run_id,)))
    answer = count.q(group_by=["product"], limit=100_000)
    by_product = {g["product_id"]: g for g in answer["groups"] if g["product_id"]}
    assert set(by_product) == {pid for pid, qty in expected.items() if qty} | {
        pid for pid, n in rollups.approved_counts(conn, count.run_id).items() if n
    }
    for pid, group in by_product.items():
        assert group["expected"] == expected.get(pid, 0)
        assert group["variance"] == group["qty"] - group["expected"]
    assert answer["total"]["expected"] == sum(expected.values())
    variance = count.q(group_by=["product"], with_variance=True, limit=100_000)["groups"]
    assert all(g["variance"] != 0 for g in variance) and len(variance) >= 6
    by_category = count.q(group_by=["category"], sort="qty", descending=True)["groups"]
    assert by_category[0]["qty"] == max(g["qty"] for g in by_category)


def test_a_query_is_refused_for_what_it_cannot_mean(count: Count) -> None:
    for bad, code in [
        ({"group_by": ["colour"]}, "VALIDATION"),
        ({"filters": {"colour": ["red"]}}, "VALIDATION"),
        ({"sort": "price"}, "VALIDATION"),
        ({"run_id": "01NOSUCHRUN00000000000000"}, "RUN_NOT_FOUND"),
    ]:
        with pytest.raises(StockVerifyError) as caught:
            count.q(**bad)
        assert caught.value.code == code


def test_a_snapshot_keeps_the_facts_as_they_were_and_compares_with_the_run_now(count: Count, tmp_path: Path) -> None:
    box, p = count.box, count.products
    snap = box.db.write(lambda c: snapshots.take(c, box.log, count.supervisor, count.run_id, "Before Ravi"))
    conn = box.db.read()
    assert snap["complete"] and snap["row_count"] == len(list(facts.run_facts(conn, count.run_id)))
    assert [s["session_id"] for s in snap["sessions"]] == [count.sessions[k] for k in ("vani", "meera", "recount")]
    assert (
        snap["summary"]["qty"] == 31 and snap["summary"]["unmatched_codes"] == 1 and snap["run_status"] == "IN_PROGRESS"
    )
    rows = snapshots.snapshot_rows(conn, snap["snapshot_id"])
    assert rows == list(facts.run_facts(conn, count.run_id))
    assert snapshots.rows_hash([[r[f] for f in facts.FIELDS] for r in rows]) == snap["rows_hash"]
    for grouping in ([], ["rack"], ["product"], ["verifier", "category"]):
        live = count.q(group_by=grouping, limit=100_000)
        kept = query.run_query(conn, query.Spec(snapshot_id=snap["snapshot_id"], group_by=grouping, limit=100_000))
        assert kept["groups"] == live["groups"] and kept["total"] == live["total"]

    same = compare.compare(
        conn, compare.Comparison(compare.Side(snapshot_id=snap["snapshot_id"]), compare.Side(run_id=count.run_id))
    )
    assert same["counts"]["same"] == len({(r["rack_id"], r["product_id"], r["code"]) for r in rows})
    assert same["rows"] == [] and same["counts"]["added"] == same["counts"]["changed"] == 0

    ravi = person(box, "ravi")
    box.db.write(lambda c: sessions.approve_session(c, box.log, count.supervisor, count.sessions["ravi"]))
    assert snapshots.snapshot_rows(box.db.read(), snap["snapshot_id"]) == rows  # unchanged
    after = compare.compare(
        box.db.read(),
        compare.Comparison(compare.Side(snapshot_id=snap["snapshot_id"]), compare.Side(run_id=count.run_id)),
    )
    assert [(r["sku"], r["rack"], r["change"], r["a_qty"], r["b_qty"], r["diff"]) for r in after["rows"]] == [
        (p[4]["sku"], "G-04", "added", 0, 11, 11)
    ]
    assert after["a"]["qty"] == 31 and after["b"]["qty"] == 42 and ravi.username == "ravi"

    # Every replica holds the same snapshot once it has the box's events.
    peer = open_box(make_settings(tmp_path / "peer", store_id=box.node.store_id))
    try:
        while (page := replicas.delta(box.db.read(), box.node.store_id, version_vector(peer.db.read()), 5000))[
            "events"
        ]:
            peer.db.write(lambda c, page=page: replicas.apply_page(c, peer.log, box.node.store_id, page, None))
        copy = snapshots.get_snapshot(peer.db.read(), snap["snapshot_id"])
        assert copy["complete"] and copy["rows_hash"] == snap["rows_hash"]
        assert snapshots.snapshot_rows(peer.db.read(), snap["snapshot_id"]) == rows
    finally:
        peer.close()


def test_two_snapshots_compare_per_product_and_rack_with_filters_and_order(count: Count) -> None:
    box = count.box
    first = box.db.write(lambda c: snapshots.take(c, box.log, count.supervisor, count.run_id, "First"))
    vani = person(box, "verifier")
    # A second recount of the same product, later, replaces the first recount: 6 becomes 4.
    p = count.products

    def again(c: Any) -> None:
        s = sessions.create_session(
            c, box.log, count.supervisor, count.run_id, verifier_id=vani.user_id, rack_codes=["G-03"],
            product_ids=[p[2]["product_id"]], kind="recount",
        )  # fmt: skip
        sessions.start_session(c, box.log, vani, s)
        items.record_scan(c, box.log, vani, s, code=p[2]["barcode"], qty=4, rack_code="G-03")
        sessions.submit_session(c, box.log, vani, s)
        sessions.approve_session(c, box.log, count.supervisor, s)

    box.db.write(again)
    second = box.db.write(lambda c: snapshots.take(c, box.log, count.supervisor, count.run_id, "Second"))
    spec = compare.Comparison(
        compare.Side(snapshot_id=first["snapshot_id"]), compare.Side(snapshot_id=second["snapshot_id"])
    )
    answer = compare.compare(box.db.read(), spec)
    assert [(r["sku"], r["change"], r["diff"]) for r in answer["rows"]] == [(p[2]["sku"], "changed", -2)]
    spec.changes, spec.sort, spec.descending = ["same"], "sku", False
    same = compare.compare(box.db.read(), spec)["rows"]
    skus = [r["sku"] for r in same]
    assert skus == sorted(s for s in skus if s) + [None] * skus.count(None)  # an unmatched code has no SKU: last
    spec.rack = ["G-01"]
    assert {r["rack"] for r in compare.compare(box.db.read(), spec)["rows"]} == {"G-01"}
    listed = snapshots.list_snapshots(box.db.read(), count.run_id)
    assert [s["name"] for s in listed[:2]] == ["Second", "First"]


def test_saved_queries_and_snapshots_fold_again_to_the_same(count: Count) -> None:
    box = count.box
    spec = query.Spec(run_id=count.run_id, group_by=["rack"], filters={"floor": ["G"]})
    saved = box.db.write(lambda c: query.save_query(c, box.log, count.supervisor, "Ground floor by rack", spec))
    again = box.db.write(
        lambda c: query.save_query(
            c, box.log, count.supervisor, "Ground floor by rack", query.Spec(run_id=count.run_id)
        )
    )
    assert again["query_id"] == saved["query_id"] and again["spec"]["group_by"] == []
    other = box.db.write(lambda c: query.save_query(c, box.log, count.supervisor, "Everything", spec))
    box.db.write(lambda c: query.delete_query(c, box.log, count.supervisor, other["query_id"]))
    before = (query.list_queries(box.db.read()), snapshots.list_snapshots(box.db.read()))
    assert [q["name"] for q in before[0]] == ["Ground floor by rack"]
    box.db.write(rebuild)
    assert (query.list_queries(box.db.read()), snapshots.list_snapshots(box.db.read())) == before


def test_the_audit_report_verifies_every_chain_and_lists_who_decided_what(count: Count, tmp_path: Path) -> None:
    conn = count.box.db.read()
    found = audit.report(conn, run_id=count.run_id)
    assert found["chains_ok"] and {c["kind"] for c in found["chains"]} == {"box"}
    assert sum(c["events"] for c in found["chains"]) == conn.execute("SELECT count(*) FROM events").fetchone()[0]
    approvals = [d for d in found["decisions"] if d["type"] == "session.status_changed" and "APPROVED" in d["detail"]]
    assert {(d["by_name"], d["subject"]) for d in approvals} >= {
        ("Sunil (supervisor)", f"session_id={count.sessions[k]}") for k in ("vani", "meera", "recount")
    }
    assert any(a["type"] == "run.created" and a["by_name"] == "Sunil (supervisor)" for a in found["administration"])
    table = audit.as_table(conn, run_id=count.run_id)
    assert dict(table.summary)["Chains"] == "all whole and signed"
    assert len(list(table.rows())) == len(found["decisions"]) + len(found["administration"])

    # An event changed behind the box's back is found: its hash no longer matches its chain.
    copy = tmp_path / "tampered.db"
    with sqlite3.connect(copy) as dest:
        count.box.db.read().backup(dest)
    with sqlite3.connect(copy) as raw:
        raw.row_factory = sqlite3.Row
        pos, payload = raw.execute("SELECT pos, payload FROM events WHERE type = 'scan.recorded' LIMIT 1").fetchone()
        changed = unpack(payload)
        changed["qty"] += 100
        raw.execute("UPDATE events SET payload = ? WHERE pos = ?", (pack(changed), pos))
        tampered = audit.report(raw)
    assert not tampered["chains_ok"]
    assert any("content does not match its stored hash" in p for c in tampered["chains"] for p in c["problems"])
