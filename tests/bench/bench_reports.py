"""How long reports take on a big count: snapshot, group-by, compare, and the exports of real report rows.

The count is ``bench_rollup``'s, with more people in it: a hard run over the demo store (6 floors, 300
racks, 5,000 SKUs), a session per rack counted by one of three verifiers, 200,000 scans spread over
each rack's shelf of 40 SKUs, damage on one item in ten, every session approved. Then:

- ``snapshot_ms``: saving a snapshot of the run (the facts, the events that carry them, their folds, one
  commit);
- ``query_group_by_ms``: the run's facts grouped by floor and category, and by verifier, with a filter
  (the median of both), and ``query_by_product_ms``: grouped by product with expected quantities and
  variance (every one of the 5,000 products);
- ``compare_ms``: two snapshots of the run (the second after a recount changed some racks), per
  product and rack;
- ``export_csv_100k_s``, ``export_xlsx_100k_s`` with ``export_xlsx_peak_rss_mb``, ``export_pdf_s``:
  ``tests/bench/bench_exports.py`` run on the snapshot's own rows (``--large`` repeats them to
  100,000 rows; ``--small`` is the grouped-by-product query, 5,000 rows, as a PDF).

Each figure with a baseline from the same run: one plain aggregate over the same counter rows.

    .venv/bin/python -m tests.bench.bench_reports [--scans 200000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.auth import people
from appliance.auth.people import User
from appliance.box import open_box
from appliance.counting import items, runs, sessions
from appliance.demo.seed import seed_demo
from appliance.reports import compare, facts, query, snapshots
from appliance.reports.table import Table
from appliance.settings import load_settings
from appliance.store.db import connect

TARGETS = {"snapshot_ms": 500, "query_group_by_ms": 200, "compare_ms": 200}
SHELF = 40


def timed(fn: Any, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def build(data_dir: Path, scans: int) -> tuple[str, float]:
    settings = load_settings({"data_dir": data_dir, "password_memory_kib": 1024, "password_time_cost": 1})
    box = open_box(settings)
    seed_demo(box)
    admin = User("bench-admin", "bench", "Bench", "admin")
    conn = box.db.read()
    racks = [r[0] for r in conn.execute("SELECT code FROM racks ORDER BY code")]
    products = [r[0] for r in conn.execute("SELECT product_id FROM products ORDER BY sku")]
    # What a scanner reads: the EAN-13 of products that have one, the SKU of those that have none.
    codes = dict(conn.execute("SELECT product_id, sku FROM products"))
    codes.update(conn.execute("SELECT product_id, substr(min(code), 2) FROM product_codes GROUP BY product_id"))
    rng = random.Random(7)
    started = time.perf_counter()

    def plan(c: sqlite3.Connection) -> tuple[str, list[User]]:
        made = []
        for name in ("anil", "bela", "chen"):
            user = people.add_user(c, box.log, name, name.capitalize(), "verifier", "x")
            made.append(user)
        return runs.create_run(c, box.log, admin, name="Bench count", kind="hard"), made

    run_id, verifiers = box.db.write(plan)
    per_rack = scans // len(racks)
    for index, rack in enumerate(racks):
        verifier = verifiers[index % len(verifiers)]

        def count(c: sqlite3.Connection, rack: str = rack, index: int = index, verifier: User = verifier) -> None:
            session_id = sessions.create_session(
                c, box.log, admin, run_id, verifier_id=verifier.user_id, rack_codes=[rack]
            )
            if index == 0:
                runs.start_run(c, box.log, admin, run_id)
            sessions.start_session(c, box.log, verifier, session_id)
            shelf = rng.sample(products, SHELF)
            for _ in range(per_rack):
                items.record_scan(c, box.log, verifier, session_id, code=codes[rng.choice(shelf)], rack_code=rack)
            for product_id in shelf[: SHELF // 10]:
                items.set_damage(c, box.log, verifier, session_id, product_id, 1)
            sessions.submit_session(c, box.log, verifier, session_id)
            sessions.approve_session(c, box.log, admin, session_id)

        box.db.write(count)
    box.close()
    return run_id, time.perf_counter() - started


def snapshot_table() -> Table:
    """The newest snapshot's rows, repeated to 100,000 (for ``bench_exports --large``)."""
    conn = connect(Path(os.environ["BENCH_REPORTS_DB"]), readonly=True)
    snapshot_id = conn.execute("SELECT snapshot_id FROM report_snapshots ORDER BY taken_at DESC LIMIT 1").fetchone()[0]
    table = snapshots.as_table(conn, snapshot_id)
    one_pass = table.rows

    def rows() -> Iterator[dict[str, Any]]:
        given = 0
        while given < 100_000:
            for row in one_pass():
                yield row
                given += 1
                if given == 100_000:
                    return

    return Table(table.title, table.columns, rows, total_rows=100_000, summary=table.summary, chart=table.chart)


def by_product_table() -> Table:
    """The run grouped by product with expected quantities: every product of the master (``--small``)."""
    conn = connect(Path(os.environ["BENCH_REPORTS_DB"]), readonly=True)
    run_id = conn.execute("SELECT run_id FROM runs LIMIT 1").fetchone()[0]
    return query.as_table(conn, query.Spec(run_id=run_id, group_by=["product"]), "By product")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scans", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "box"
        run_id, build_s = build(data_dir, args.scans)
        settings = load_settings({"data_dir": data_dir, "password_memory_kib": 1024, "password_time_cost": 1})
        box = open_box(settings)
        admin = User("bench-admin", "bench", "Bench", "admin")
        conn = box.db.read()
        counters = conn.execute("SELECT count(*) FROM scan_counts").fetchone()[0]
        fact_rows = sum(1 for _ in facts.run_facts(conn, run_id))
        baseline_ms = timed(
            lambda: conn.execute("SELECT count(*), sum(p - n) FROM scan_counts").fetchone(), args.repeat
        )

        taken: list[dict[str, Any]] = []
        snapshot_ms = timed(
            lambda: taken.append(box.db.write(lambda c: snapshots.take(c, box.log, admin, run_id, f"s{len(taken)}"))),
            args.repeat,
        )
        first = taken[0]
        grouped_ms = timed(
            lambda: query.run_query(conn, query.Spec(run_id=run_id, group_by=["floor", "category"])), args.repeat
        )
        filtered_ms = timed(
            lambda: query.run_query(
                conn, query.Spec(run_id=run_id, group_by=["verifier"], filters={"floor": ["G", "F1"]}, damaged=True)
            ),
            args.repeat,
        )
        by_product_ms = timed(
            lambda: query.run_query(conn, query.Spec(run_id=run_id, group_by=["product"], limit=100_000)), args.repeat
        )
        snapshot_query_ms = timed(
            lambda: query.run_query(conn, query.Spec(snapshot_id=first["snapshot_id"], group_by=["floor", "category"])),
            args.repeat,
        )

        # A recount of ten racks' worth of products changes the run; a second snapshot takes it in.
        verifier = User(
            *conn.execute("SELECT user_id, username, display_name, role FROM users WHERE username = 'anil'").fetchone()
        )
        recounted = [r[0] for r in conn.execute("SELECT product_id FROM products ORDER BY sku LIMIT 50")]

        def recount(c: sqlite3.Connection) -> None:
            session_id = sessions.create_session(
                c, box.log, admin, run_id, verifier_id=verifier.user_id, product_ids=recounted, kind="recount"
            )
            sessions.start_session(c, box.log, verifier, session_id)
            for product_id in recounted:
                items.set_quantity(c, box.log, verifier, session_id, product_id, 3)
            sessions.submit_session(c, box.log, verifier, session_id)
            sessions.approve_session(c, box.log, admin, session_id)

        box.db.write(recount)
        second = box.db.write(lambda c: snapshots.take(c, box.log, admin, run_id, "after the recount"))
        spec = compare.Comparison(
            compare.Side(snapshot_id=first["snapshot_id"]), compare.Side(snapshot_id=second["snapshot_id"])
        )
        compare_ms = timed(lambda: compare.compare(conn, spec), args.repeat)
        changes = compare.compare(conn, spec)["counts"]
        box.close()

        env = {**os.environ, "BENCH_REPORTS_DB": str(data_dir / "store.db")}
        exported = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.bench.bench_exports",
                "--large",
                "tests.bench.bench_reports:snapshot_table",
                "--small",
                "tests.bench.bench_reports:by_product_table",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    group_by_ms = statistics.median([grouped_ms, filtered_ms])
    figures = {"snapshot_ms": snapshot_ms, "query_group_by_ms": group_by_ms, "compare_ms": compare_ms}
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}")
    print(
        f"count: {args.scans} scans, 300 racks, 5000 SKUs, 3 verifiers; counter_rows {counters}; fact_rows {fact_rows}"
    )
    print(f"build_s: {build_s:.1f}")
    print(f"baseline_aggregate_ms: {baseline_ms:.1f}  (one plain aggregate over the counter rows)")
    rows = first["row_count"]
    print(f"snapshot_ms: {snapshot_ms:.1f}  ({rows} rows; ratio_vs_baseline {snapshot_ms / baseline_ms:.0f})")
    print(
        f"query_group_by_ms: {group_by_ms:.1f}  (by floor and category {grouped_ms:.1f};"
        f" by verifier, two floors, damaged {filtered_ms:.1f})"
    )
    print(f"query_by_product_ms: {by_product_ms:.1f}  (every product with expected and variance)")
    print(f"query_snapshot_group_by_ms: {snapshot_query_ms:.1f}  (the same grouping over the snapshot's rows)")
    print(f"compare_ms: {compare_ms:.1f}  (two snapshots of {rows} and {second['row_count']} rows; {changes})")
    for name, value in figures.items():
        print(f"  {name} target <= {TARGETS[name]}: {'met' if value <= TARGETS[name] else 'MISSED'}")
    print("exports of the snapshot's rows (bench_exports):")
    print("\n".join("  " + line for line in exported.stdout.strip().splitlines()))
    if exported.returncode:
        print(exported.stderr[-2000:])


if __name__ == "__main__":
    main()
