"""Rack claim latency with 20 concurrent claimants on distinct racks, against the real server.

A demo box runs as its own process; 20 verifier processes each hold a session and, in a loop, claim
their own racks one after another (and release them, to claim again). Every claim is a write that
must be on disk before it is answered; the box's group commit lets concurrent claims share an fsync.
The baseline is ``GET /api/health`` (no write) timed the same way in the same run.

    .venv/bin/python -m tests.bench.bench_claims [--claimants 20] [--cycles 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import DEMO_PASSWORDS, ServerProcess


def _claimer(
    url: str, run_id: str, person: dict[str, Any], racks: list[str], cycles: int, barrier: Any, out: Any, burst: bool
) -> None:
    """Claim and release ``racks`` ``cycles`` times; in a burst, one claim each, all at the same instant."""
    if burst:
        racks = racks[:1]
    latencies: list[float] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {person['token']}"}, timeout=30) as client:
        barrier.wait()
        for _ in range(cycles):
            for rack in racks:
                start = time.perf_counter()
                answer = client.post(
                    f"/api/runs/{run_id}/racks/{rack}/claim", json={"session_id": person["session_id"]}
                )
                latencies.append((time.perf_counter() - start) * 1000)
                assert answer.status_code == 201, answer.text
            for rack in racks:
                assert client.post(f"/api/runs/{run_id}/racks/{rack}/release").status_code == 200
    out.put(latencies)


def _health(url: str, count: int) -> list[float]:
    samples = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(count):
            start = time.perf_counter()
            client.get("/api/health")
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def _measure(
    url: str, run_id: str, people: list[dict[str, Any]], shares: list[list[str]], cycles: int, *, burst: bool
) -> tuple[list[float], float]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(people) + (0 if burst else 1))
    out = context.Queue()
    workers = [
        context.Process(target=_claimer, args=(url, run_id, person, rack_share, cycles, barrier, out, burst))
        for person, rack_share in zip(people, shares, strict=False)
    ]
    for worker in workers:
        worker.start()
    if not burst:
        barrier.wait()
    start = time.perf_counter()
    latencies = [ms for _ in workers for ms in out.get(timeout=600)]
    elapsed = time.perf_counter() - start
    for worker in workers:
        worker.join()
    return latencies, elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--claimants", type=int, default=20)
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "box", "--demo", env={"STOCKVERIFY_LOG_LEVEL": "warning"})
        try:
            server.wait_ready()
            admin = server.client(server.login("admin", DEMO_PASSWORDS["admin"]))
            boss = server.client(server.login("supervisor", DEMO_PASSWORDS["supervisor"]))
            run_id = boss.post("/api/runs", json={"name": "bench", "kind": "hard"}).json()["run_id"]
            people = []
            for n in range(args.claimants):
                name = f"bench{n:02d}"
                admin.post("/api/users", json={"username": name, "role": "verifier", "password": f"{name}-pass"})
                session = boss.post(f"/api/runs/{run_id}/sessions", json={"verifier": name}).json()
                people.append({"token": server.login(name, f"{name}-pass"), "session_id": session["session_id"]})
            boss.post(f"/api/runs/{run_id}/start")
            for person in people:
                server.client(person["token"]).post(f"/api/sessions/{person['session_id']}/start")
            racks = [r["code"] for r in boss.get("/api/racks").json()]
            share = len(racks) // args.claimants

            baseline = _health(server.url, 300)
            single, _ = _measure(server.url, run_id, people[:1], [racks[: share * 2]], args.cycles, burst=False)
            shares = [racks[i * share : (i + 1) * share] for i in range(args.claimants)]
            latencies, elapsed = _measure(server.url, run_id, people, shares, args.cycles, burst=False)
            bursts, _ = _measure(server.url, run_id, people, shares, 1, burst=True)
        finally:
            server.stop()

    print(f"claimants: {args.claimants}")
    print(f"claims: {len(latencies)}")
    print(f"claim_p50_ms: {statistics.median(latencies):.2f}")
    print(f"claim_p99_ms: {percentile(latencies, 0.99):.2f}")
    print(f"claims_per_s: {len(latencies) / elapsed:.0f}")
    print(f"writes_per_s: {2 * len(latencies) / elapsed:.0f}  (each claim is followed by a release)")
    print(f"burst_p50_ms: {statistics.median(bursts):.2f}  (all {args.claimants} claim at the same instant)")
    print(f"burst_p99_ms: {percentile(bursts, 0.99):.2f}")
    print(f"single_claimant_p50_ms: {statistics.median(single):.2f}")
    print(f"single_claimant_p99_ms: {percentile(single, 0.99):.2f}")
    print(f"baseline_health_p50_ms: {statistics.median(baseline):.2f}")
    print(f"ratio_p50_vs_health: {statistics.median(latencies) / statistics.median(baseline):.1f}")


if __name__ == "__main__":
    main()
