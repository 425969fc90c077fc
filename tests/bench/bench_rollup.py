"""How long the run rollup and buckets take on a big count.

A hard run over the demo store (6 floors, 300 racks, 5,000 SKUs), one session per rack, 200,000 scans
spread over the racks and SKUs, every session approved. Prints the median of several reads of the
rollup and of the run's buckets, and a baseline: one plain aggregate over the same counter rows.

    .venv/bin/python -m tests.bench.bench_rollup [--scans 200000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from appliance.auth import people
from appliance.auth.people import User
from appliance.box import open_box
from appliance.counting import items, rollups, runs, sessions
from appliance.demo.seed import seed_demo
from appliance.settings import load_settings


def timed(fn: object, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scans", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings({"data_dir": Path(tmp), "password_memory_kib": 1024, "password_time_cost": 1})
        box = open_box(settings)
        seed_demo(box)
        admin = User("bench-admin", "bench", "Bench", "admin")
        conn = box.db.read()
        racks = [r[0] for r in conn.execute("SELECT code FROM racks ORDER BY code")]
        skus = [r[0] for r in conn.execute("SELECT sku FROM products ORDER BY sku")]
        rng = random.Random(11)
        build_start = time.perf_counter()

        def plan(c: sqlite3.Connection) -> str:
            people.add_user(c, box.log, "benchv", "Bench verifier", "verifier", "x")
            return runs.create_run(c, box.log, admin, name="Bench hard count", kind="hard")

        run_id = box.db.write(plan)
        verifier_id = conn.execute("SELECT user_id FROM users WHERE username = 'benchv'").fetchone()[0]
        verifier = User(verifier_id, "benchv", "Bench verifier", "verifier")
        per_rack = args.scans // len(racks)
        for index, rack in enumerate(racks):

            def count(c: sqlite3.Connection, rack: str = rack, index: int = index) -> None:
                session_id = sessions.create_session(
                    c, box.log, admin, run_id, verifier_id=verifier_id, rack_codes=[rack]
                )
                if index == 0:
                    runs.start_run(c, box.log, admin, run_id)
                sessions.start_session(c, box.log, verifier, session_id)
                # Each rack holds a few dozen SKUs, scanned one unit at a time.
                shelf = rng.sample(skus, 40)
                for _ in range(per_rack):
                    items.record_scan(c, box.log, verifier, session_id, code=rng.choice(shelf))
                sessions.submit_session(c, box.log, verifier, session_id)
                sessions.approve_session(c, box.log, admin, session_id)

            box.db.write(count)
        build_s = time.perf_counter() - build_start
        counters = conn.execute("SELECT count(*) FROM scan_counts").fetchone()[0]

        baseline_ms = timed(
            lambda: conn.execute("SELECT count(*), sum(p - n) FROM scan_counts").fetchone(), args.repeat
        )
        rollup_ms = timed(lambda: rollups.run_rollup(conn, run_id), args.repeat)
        buckets_ms = timed(lambda: rollups.buckets(conn, run_id), args.repeat)
        both_ms = timed(lambda: (rollups.run_rollup(conn, run_id), rollups.buckets(conn, run_id)), args.repeat)
        total = rollups.run_rollup(conn, run_id)["total_counted"]
        box.close()

    print(f"scans: {per_rack * len(racks)}")
    print(f"racks: {len(racks)}")
    print(f"skus: {len(skus)}")
    print(f"counter_rows: {counters}")
    print(f"total_counted: {total}")
    print(f"build_s: {build_s:.1f}")
    print(f"baseline_aggregate_ms: {baseline_ms:.1f}")
    print(f"rollup_only_ms: {rollup_ms:.1f}")
    print(f"buckets_ms: {buckets_ms:.1f}")
    print(f"rollup_ms: {both_ms:.1f}")
    print(f"ratio_vs_baseline: {both_ms / baseline_ms:.1f}")


if __name__ == "__main__":
    main()
