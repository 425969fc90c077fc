"""How long exports take, and how much memory the XLSX writer needs, against plain ``csv.writer``.

Run it as a script (it is not a test): ``.venv/bin/python -m tests.bench.bench_exports``. It prints

- ``export_csv_100k_s``: our CSV of 100,000 rows to a file (target: none; it streams);
- ``export_xlsx_100k_s`` and ``export_xlsx_peak_rss_mb``: the XLSX of the same rows, written in a child
  process whose peak RSS (``VmHWM``) is the figure (targets: ≤ 15 s, ≤ 150 MB);
- ``export_pdf_s``: the PDF of 5,000 rows (target: ≤ 5 s);

each with a ratio against a baseline measured in the same run: ``csv.writer`` writing the same rows to
``/dev/null`` (for memory: a child that does only that). The baseline includes making the rows, so a
ratio says what the writer costs beyond the report's own rows.

The tables are synthetic (a run's rows: SKU, product, category, floor, rack, quantities, time) unless
``--large`` and ``--small`` name factories ``module:function`` returning a ``Table``, e.g. tables made
from a real snapshot. They are called in the child process too, so they must build their own table.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.reports import exports, pdf
from appliance.reports.table import Chart, Column, Table

LARGE_ROWS = 100_000
SMALL_ROWS = 5_000
RUNS = 3
NAMES = ["Café crème 200 ml", "Toor dal 1 kg", "Basmati rice, 5 kg", "Ghee 1 L", "दाल मखनी", "Biscuits 'Marie'"]
CATEGORIES = ["Dairy", "Staples", "Grocery", "Bakery", "Frozen"]
COLUMNS = [
    Column("sku", "SKU"),
    Column("name", "Product"),
    Column("category", "Category"),
    Column("floor", "Floor"),
    Column("rack", "Rack"),
    Column("qty", "Counted", "int"),
    Column("expected", "Expected", "int"),
    Column("damage", "Damaged", "int"),
    Column("counted_at", "Counted at", "datetime"),
]
START = datetime(2026, 12, 7, 8, 0)


def synthetic(rows: int) -> Table:
    def produce() -> Iterator[dict[str, Any]]:
        for i in range(rows):
            yield {
                "sku": f"SKU-{i % 5000:05d}",
                "name": NAMES[i % len(NAMES)],
                "category": CATEGORIES[i % len(CATEGORIES)],
                "floor": f"F{i % 3}",
                "rack": f"R-{i % 300:03d}",
                "qty": (i * 7919) % 500,
                "expected": (i * 104729) % 500,
                "damage": (i % 11 == 0) * (i % 7),
                "counted_at": START + timedelta(seconds=i),
            }

    return Table(
        title="Run 7 — counted by rack",
        columns=COLUMNS,
        rows=produce,
        total_rows=rows,
        summary=[("Run", "December full count"), ("Racks", "300"), ("Sessions", "42 approved")],
        chart=Chart("Most damaged racks", label="rack", value="damage", top=15),
    )


def synthetic_large() -> Table:
    return synthetic(LARGE_ROWS)


def synthetic_small() -> Table:
    return synthetic(SMALL_ROWS)


def factory(name: str) -> Callable[[], Table]:
    module, _, function = name.partition(":")
    made: Callable[[], Table] = getattr(importlib.import_module(module), function)
    return made


def baseline(table: Table) -> float:
    """``csv.writer`` of the table's rows to /dev/null: the floor any writer stands on."""
    keys = [column.key for column in table.columns]
    started = time.perf_counter()
    with open(os.devnull, "w", newline="", encoding="utf-8") as sink:
        writer = csv.writer(sink)
        writer.writerow([column.label for column in table.columns])
        for row in table.rows():
            writer.writerow([row.get(key) for key in keys])
    return time.perf_counter() - started


def timed(write: Callable[[Table, Path], None], table: Table, path: Path) -> float:
    started = time.perf_counter()
    write(table, path)
    return time.perf_counter() - started


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), else getrusage's (kilobytes on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(what: str, large: str, path: str) -> int:
    """Run in a fresh interpreter: write the large table as ``what``; print seconds and peak RSS."""
    table = factory(large)()
    seconds = timed(exports.write_xlsx, table, Path(path)) if what == "xlsx" else baseline(table)
    print(f"{seconds} {peak_rss_mb()}")
    return 0


def in_child(what: str, large: str, path: Path) -> tuple[float, float]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_exports", "--child", what, "--large", large, "--out", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, rss = done.stdout.split()
    return float(seconds), float(rss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--large", default="tests.bench.bench_exports:synthetic_large")
    parser.add_argument("--small", default="tests.bench.bench_exports:synthetic_small")
    parser.add_argument("--child", choices=["xlsx", "baseline"])
    parser.add_argument("--out", default=os.devnull)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.large, args.out)

    large, small = factory(args.large)(), factory(args.small)()
    with tempfile.TemporaryDirectory(prefix="bench-exports-") as scratch:
        root = Path(scratch)
        base_large = statistics.median(baseline(large) for _ in range(RUNS))
        base_small = statistics.median(baseline(small) for _ in range(RUNS))
        csv_s = statistics.median(timed(exports.write_csv, large, root / "large.csv") for _ in range(RUNS))
        pdf_s = statistics.median(timed(pdf.write_pdf, small, root / "small.pdf") for _ in range(RUNS))
        base_child_s, base_rss = in_child("baseline", args.large, root / "none")
        xlsx_s, xlsx_rss = in_child("xlsx", args.large, root / "large.xlsx")
        children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        sizes = {name: (root / name).stat().st_size / 1024**2 for name in ("large.csv", "large.xlsx", "small.pdf")}

    print(f"rows_large: {LARGE_ROWS if args.large.endswith(':synthetic_large') else 'from ' + args.large}")
    print(f"rows_small: {SMALL_ROWS if args.small.endswith(':synthetic_small') else 'from ' + args.small}")
    print(f"runs: {RUNS} (median); xlsx: 1 run in a child process")
    print(f"baseline_csv_writer_100k_s: {base_large:.3f}")
    print(f"baseline_csv_writer_5k_s: {base_small:.3f}")
    print(f"export_csv_100k_s: {csv_s:.3f}")
    print(f"ratio_csv_vs_baseline: {csv_s / base_large:.1f}")
    print(f"export_xlsx_100k_s: {xlsx_s:.2f}")
    print(f"ratio_xlsx_vs_baseline: {xlsx_s / base_child_s:.1f}")
    print(f"export_xlsx_peak_rss_mb: {xlsx_rss:.0f}")
    print(f"baseline_child_peak_rss_mb: {base_rss:.0f}")
    print(f"ratio_xlsx_rss_vs_baseline: {xlsx_rss / base_rss:.1f}")
    print(f"children_peak_rss_mb (getrusage): {children_rss:.0f}")
    print(f"export_pdf_s: {pdf_s:.2f}")
    print(f"ratio_pdf_vs_baseline: {pdf_s / base_small:.1f}")
    print("file_mb: " + ", ".join(f"{name} {size:.1f}" for name, size in sizes.items()))
    targets = xlsx_s <= 15 and xlsx_rss <= 150 and pdf_s <= 5
    print(f"targets_met: {'yes' if targets else 'NO'} (xlsx ≤ 15 s in ≤ 150 MB, pdf ≤ 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
