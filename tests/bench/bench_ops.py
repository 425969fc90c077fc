"""What a field tech waits for: provisioning a box, a backup and a restore of a big store, and what a
backup costs the handhelds scanning while it runs.

* ``provision_s`` — ``stockverify provision`` on a fresh folder (units into a staged root) until the box
  it made answers ``/api/health`` over HTTPS with a chain the store CA verifies (packages installed).
* ``backup_s`` / ``restore_s`` — ``stockverify backup`` of a store of ``--events`` events (1,000,000 by
  default) while nothing else runs, and ``stockverify restore`` of that archive into a new folder.
* ``ingest_p99_idle_ms`` / ``ingest_p99_during_backup_ms`` — 20 handhelds at a store's pace (200
  scans/s, one scan per batch) against that same big box, first alone, then while a backup of it runs;
  the ratio is the cost of a backup to a verifier.

    .venv/bin/python -m tests.bench.bench_ops [--events 1000000] [--paced-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.bench.bench_ingest import DEVICES, _codes, _paced, _setup, percentile
from tests.bench.bench_replication import write_backlog
from tests.conftest import FAST_PASSWORD_ENV, ServerProcess, free_port

MAIN = Path(__file__).resolve().parents[2]
ENV = {**os.environ, **FAST_PASSWORD_ENV, "STOCKVERIFY_MDNS": "false", "STOCKVERIFY_LOG_LEVEL": "warning"}


def _stockverify(*args: str, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "appliance", *args], cwd=MAIN, env=env or ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return time.perf_counter() - start


def provision_s(folder: Path) -> float:
    data, https_port = folder / "data", free_port()
    start = time.perf_counter()
    _stockverify(
        "provision",
        *("--data-dir", str(data), "--root", str(folder / "root"), "--store-id", "bench-ops"),
        *("--store-name", "Bench Ops", "--admin-password", "bench-password-1", "--json"),
    )
    server = ServerProcess(data, env={"STOCKVERIFY_HTTPS_PORT": str(https_port)})
    try:
        trust = ssl.create_default_context(cafile=str(data / "tls" / "ca.pem"))
        while True:
            try:
                if httpx.get(f"https://127.0.0.1:{https_port}/api/health", verify=trust, timeout=1).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            assert time.perf_counter() - start < 120, server.output()[-2000:]
            time.sleep(0.05)
    finally:
        server.stop()


def big_box(folder: Path, events: int) -> Path:
    """The demo store, with a handheld's ``events`` scans in its log besides."""
    data = folder / "big"
    server = ServerProcess(data, "--demo")
    server.wait_ready()
    server.stop()
    os.environ["STOCKVERIFY_STORE_ID"] = "demo-store"  # write_backlog opens the box as this store
    write_backlog(data, events)
    return data


def paced_p99(server: ServerProcess, seconds: float, backup_to: Path) -> tuple[float, float, float]:
    """The handhelds' p99 alone, then while a backup runs; and how long that backup took."""
    devices = _setup(server, [Ed25519PrivateKey.generate() for _ in range(DEVICES)])
    codes = _codes(server)
    idle = percentile(asyncio.run(_paced(server.url, devices, codes, seconds, 200.0)), 0.99)
    command = ["backup", "--data-dir", str(server.data_dir), "--to", str(backup_to)]
    started = time.perf_counter()
    backup = subprocess.Popen([sys.executable, "-m", "appliance", *command], cwd=MAIN, env=_env())
    during = percentile(asyncio.run(_paced(server.url, devices, codes, seconds, 200.0)), 0.99)
    assert backup.wait(timeout=600) == 0
    return idle, during, time.perf_counter() - started


def _env() -> dict[str, str]:
    return {**ENV, "STOCKVERIFY_STORE_ID": "demo-store"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--paced-s", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        provisioned = provision_s(folder / "provision")
        data = big_box(folder, args.events)
        env = _env()
        backup_s = _stockverify("backup", "--data-dir", str(data), "--to", str(folder / "archives"), env=env)
        [archive] = sorted((folder / "archives").glob("stockverify-*.tar*"))
        restore_s = _stockverify("restore", str(archive), "--data-dir", str(folder / "restored"), env=env)
        server = ServerProcess(
            data, "--demo", env={"STOCKVERIFY_LOGIN_ATTEMPTS_PER_MINUTE": "1000", "STOCKVERIFY_LOG_LEVEL": "warning"}
        )
        try:
            server.wait_ready()
            idle, during, backup_during_s = paced_p99(server, args.paced_s, folder / "during")
        finally:
            server.stop()
        size = archive.stat().st_size
    print(f"events: {args.events}")
    print(f"provision_s: {provisioned:.2f}")
    print(f"backup_s: {backup_s:.2f}  ({size / 1024**2:.0f} MiB archive)")
    print(f"restore_s: {restore_s:.2f}")
    print(f"ingest_p99_idle_ms: {idle:.2f}")
    print(f"ingest_p99_during_backup_ms: {during:.2f}  (the backup beside it took {backup_during_s:.1f} s)")
    print(f"ratio_during_vs_idle: {during / idle:.2f}")


if __name__ == "__main__":
    main()
