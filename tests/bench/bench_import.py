"""How long a 5,000-product master takes to import: parse, check and commit, on a fresh box each run.

Run it as a script (it is not a test): ``.venv/bin/python -m tests.bench.bench_import``. It prints the
median of five runs, and the ratio against merely reading the same CSV with the stdlib ``csv`` module,
which says how much of the time is our checking and the event log rather than the file itself.
"""

from __future__ import annotations

import csv
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from appliance.box import open_box
from appliance.catalog import product_import
from appliance.demo.catalog import write_demo_products
from appliance.settings import load_settings

ROWS = 5000
RUNS = 5


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def time_csv_read(data: bytes) -> float:
    started = time.perf_counter()
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    elapsed = time.perf_counter() - started
    assert len(rows) == ROWS + 1
    return elapsed


def time_import(data: bytes, data_dir: Path) -> tuple[float, float]:
    """Seconds to parse and to commit, on a box made for this run alone."""
    box = open_box(load_settings({"data_dir": data_dir}, environ={}))
    try:
        started = time.perf_counter()
        plan = product_import.parse_file(data, "products.csv")
        parsed = time.perf_counter()
        result = box.db.write(lambda conn: product_import.commit(conn, box.log, plan))
        committed = time.perf_counter()
    finally:
        box.close()
    assert result["created"] == ROWS, result
    return parsed - started, committed - parsed


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-import-") as scratch:
        root = Path(scratch)
        data = write_demo_products(root / "products.csv", ROWS).read_bytes()
        csv_read = statistics.median(time_csv_read(data) for _ in range(RUNS))
        runs = [time_import(data, root / f"box-{run}") for run in range(RUNS)]
    parse = statistics.median(p for p, _c in runs)
    commit = statistics.median(c for _p, c in runs)
    total = statistics.median(p + c for p, c in runs)
    print(f"rows: {ROWS}")
    print(f"runs: {RUNS}")
    print(f"import_{ROWS}_ms: {_ms(total)}")
    print(f"parse_ms: {_ms(parse)}")
    print(f"commit_ms: {_ms(commit)}")
    print(f"csv_read_ms: {csv_read * 1000:.1f}")
    print(f"ratio_vs_csv_read: {total / csv_read:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
