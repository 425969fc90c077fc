"""A provisioned box installs a wheel, not a checkout, and has no node: the wheel must carry the pages'
built third-party bundle (``web/static/vendor``, which ``make`` builds from ``package.json`` and git does
not hold) beside their own files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_built_assets(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("stockverify_edge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    vendor = {"web/static/vendor/handheld.js", "web/static/vendor/decoder.js", "web/static/vendor/zxing_reader.wasm"}
    assert vendor <= names, "the wheel lacks the bundle: run `make assets` before building it"
    shell = {"web/static/handheld/index.html", "web/static/handheld/sw.js", "web/static/handheld/js/app.js"}
    assert shell <= names
    assert not [n for n in names if "node_modules" in n or n.startswith("web/vendor/")]
