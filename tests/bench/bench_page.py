"""Where an event's CPU goes when a page of the log is served and applied, in one process.

A box holding one handheld's scans (ten a code, as in ``bench_replication``) serves its log page by
page to a fresh replica: the delta is read and packed, then unpacked, decoded and hashed, applied
(chain check, insert, folds) and committed at the other end. Prints the CPU time of each stage in µs
an event, best of ``--rounds``, and a baseline from the same run: the page's rows inserted into a bare
table of the same columns, one transaction a page, with the same durability.

    .venv/bin/python -m tests.bench.bench_page [--pages 4] [--rounds 5] [--backlog DIR]

The clock of a shared machine moves by half between runs; an instruction count does not. With a
backlog kept in ``DIR`` (written by the first run), two runs under callgrind that differ only in
``--pages`` give the instructions an event costs::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m tests.bench.bench_page --backlog DIR --rounds 1 --no-baseline --pages 4

and the same with ``--pages 0``: the difference of the two totals over 4 x 5,000 events.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from appliance.box import open_box
from appliance.replica import store as replicas
from appliance.store.db import collector_paused, connect
from appliance.store.eventlog import version_vector
from replication.wire import protocol
from tests.bench.bench_replication import STORE, write_backlog
from tests.conftest import make_settings

PAGE = 5000
STAGES = ("delta", "pack", "unpack", "decode", "apply", "commit")


def one_round(source: sqlite3.Connection, target_dir: Path, pages: int) -> dict[str, float]:
    """Serve ``pages`` pages from ``source`` to a fresh replica; CPU seconds spent in each stage."""
    replica = open_box(make_settings(target_dir, store_id=STORE))
    replica.log.listeners.clear()  # nobody watches the live bus here
    conn = connect(target_dir / "store.db")
    spent = dict.fromkeys(STAGES, 0.0)
    theirs: dict[str, int] = {}
    try:
        with collector_paused():  # as the box applies a replicated page
            for _ in range(pages):
                t0 = time.process_time()
                page = replicas.delta(source, STORE, theirs, PAGE)
                t1 = time.process_time()
                packed = protocol.pack_page(page)
                t2 = time.process_time()
                unpacked = protocol.unpack_page(packed)
                t3 = time.process_time()
                checked = replicas.incoming(STORE, unpacked, version_vector(conn))
                t4 = time.process_time()
                conn.execute("BEGIN IMMEDIATE")
                replicas.apply_page(conn, replica.log, STORE, checked, None, len(packed))
                t5 = time.process_time()
                conn.execute("COMMIT")
                t6 = time.process_time()
                for stage, took in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
                    spent[stage] += took
                for row in page["events"]:
                    theirs[row[0]] = row[1]
                del page, unpacked, checked
    finally:
        conn.close()
        replica.close()
    return spent


def raw_round(source: sqlite3.Connection, target: Path, pages: int) -> float:
    """CPU seconds to insert the same rows, page by page, into a bare table with the same durability."""
    conn = sqlite3.connect(target, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(
        "CREATE TABLE events (pos INTEGER PRIMARY KEY, writer_id TEXT, seq INTEGER, event_id TEXT, type TEXT,"
        " payload BLOB, hlc INTEGER, occurred_at INTEGER, prev_hash BLOB, hash BLOB, received_at INTEGER)"
    )
    rows = source.execute(
        "SELECT pos, writer_id, seq, event_id, type, payload, hlc, occurred_at, prev_hash, hash, received_at"
        " FROM events ORDER BY pos LIMIT ?",
        (pages * PAGE,),
    ).fetchall()
    start = time.process_time()
    for at in range(0, len(rows), PAGE):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows[at : at + PAGE])
        conn.execute("COMMIT")
    took = time.process_time() - start
    conn.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=4, help="pages of 5,000 events served and applied")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backlog", type=Path, help="keep the source box here and reuse it")
    parser.add_argument("--no-baseline", action="store_true", help="leave out the bare-table inserts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
        root = Path(tmp)
        source_dir = args.backlog or root / "source"
        if not (source_dir / "store.db").exists():
            write_backlog(source_dir, max(args.pages, 4) * PAGE)
        source = connect(source_dir / "store.db")
        source.row_factory = sqlite3.Row
        events = args.pages * PAGE
        best = dict.fromkeys(STAGES, float("inf"))
        raw = float("inf")
        for index in range(args.rounds):
            spent = one_round(source, root / f"replica{index}", args.pages)
            best = {stage: min(best[stage], spent[stage]) for stage in STAGES}
            shutil.rmtree(root / f"replica{index}")
            if events and not args.no_baseline:
                raw = min(raw, raw_round(source, root / f"raw{index}.db", args.pages))
        source.close()
        if not events:
            return
        for stage in STAGES:
            print(f"{stage}_us_per_event: {best[stage] / events * 1e6:.2f}")
        served = (best["delta"] + best["pack"]) / events * 1e6
        received = sum(best[s] for s in STAGES[2:]) / events * 1e6
        print(f"served_us_per_event: {served:.2f}")
        print(f"received_us_per_event: {received:.2f}")
        if not args.no_baseline:
            print(f"raw_sqlite_us_per_event: {raw / events * 1e6:.2f}")
            print(f"ratio_received_vs_raw_sqlite: {received / (raw / events * 1e6):.1f}")


if __name__ == "__main__":
    main()
