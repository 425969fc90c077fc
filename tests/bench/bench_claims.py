"""Rack claim latency with 20 concurrent claimants on distinct racks, against the real server.

A demo box runs as its own process. Twenty verifiers, each with a session of their own, claim racks
of their own share and release them again. The load comes from one lean aiohttp process (a task per
claimant) so that the figures are the box's, not twenty Python interpreters' fighting for two cores.
Every claim is a write that is on disk before it is answered.

* ``claim_p50_ms`` / ``claim_p99_ms`` — the store's pace, and then some: the twenty claimants together
  offer ``--rate`` claims per second (default 50; a real count sees a claim every few seconds), each
  claimant at random (Poisson) times, and each claim's round trip is timed.
* ``claims_per_s`` — saturation: every claimant claims and releases back to back with nothing in
  between; ``saturated_p99_ms`` is the latency under that load (queueing included).
* ``burst_p99_ms`` — all twenty claim at the same instant, repeated ``--bursts`` times.
* ``baseline_health_p50_ms`` — ``GET /api/health`` (no write, no thread hop) at the paced rate in the
  same run: the floor any request pays on this machine.

    .venv/bin/python -m tests.bench.bench_claims [--rate 50] [--seconds 10] [--bursts 30]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.conftest import DEMO_PASSWORDS, ServerProcess

CLAIMANTS = 20


@dataclass
class Claimant:
    token: str
    session_id: str
    racks: list[str]
    turn: int = 0

    def next_rack(self) -> str:
        self.turn += 1
        return self.racks[self.turn % len(self.racks)]


async def _claim(http: aiohttp.ClientSession, url: str, run_id: str, who: Claimant) -> float:
    """Claim the claimant's next rack (timed), then release it (untimed)."""
    rack = who.next_rack()
    headers = {"Authorization": f"Bearer {who.token}"}
    start = time.perf_counter()
    async with http.post(
        f"{url}/api/runs/{run_id}/racks/{rack}/claim", json={"session_id": who.session_id}, headers=headers
    ) as answer:
        body = await answer.read()
        elapsed = (time.perf_counter() - start) * 1000
        if answer.status != 201:
            raise RuntimeError(f"claim {rack}: {answer.status} {body[:200]!r}")
    async with http.post(f"{url}/api/runs/{run_id}/racks/{rack}/release", headers=headers) as answer:
        if answer.status != 200:
            raise RuntimeError(f"release {rack}: {answer.status}")
    return elapsed


async def _paced(url: str, run_id: str, claimants: list[Claimant], rate: float, seconds: float) -> list[float]:
    each = rate / len(claimants)
    latencies: list[float] = []

    async def one(http: aiohttp.ClientSession, who: Claimant) -> None:
        due = time.perf_counter() + random.expovariate(each)
        end = time.perf_counter() + seconds
        while due < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            latencies.append(await _claim(http, url, run_id, who))
            due += random.expovariate(each)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(one(http, who) for who in claimants))
    return latencies


async def _saturated(url: str, run_id: str, claimants: list[Claimant], seconds: float) -> tuple[list[float], float]:
    latencies: list[float] = []

    async def one(http: aiohttp.ClientSession, who: Claimant, end: float) -> None:
        while time.perf_counter() < end:
            latencies.append(await _claim(http, url, run_id, who))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(one(http, who, start + seconds) for who in claimants))
        elapsed = time.perf_counter() - start
    return latencies, elapsed


async def _bursts(url: str, run_id: str, claimants: list[Claimant], bursts: int) -> list[float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        for _ in range(bursts):
            latencies += await asyncio.gather(*(_claim(http, url, run_id, who) for who in claimants))
            await asyncio.sleep(0.05)
    return latencies


async def _health(url: str, count: int, rate: float) -> list[float]:
    """``GET /api/health`` at one claimant's pace: an idle machine takes longer to wake for a request
    than a busy one (here ~0.5 ms a thread), so the baseline waits between requests as claimants do."""
    samples = []
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            await asyncio.sleep(random.expovariate(rate))
            start = time.perf_counter()
            async with http.get(f"{url}/api/health") as answer:
                await answer.read()
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def _setup(server: ServerProcess) -> tuple[str, list[Claimant]]:
    admin = server.client(server.login("admin", DEMO_PASSWORDS["admin"]))
    boss = server.client(server.login("supervisor", DEMO_PASSWORDS["supervisor"]))
    run_id = str(boss.post("/api/runs", json={"name": "bench", "kind": "hard"}).json()["run_id"])
    racks = [r["code"] for r in boss.get("/api/racks").json()]
    share = len(racks) // CLAIMANTS
    claimants = []
    for n in range(CLAIMANTS):
        name = f"bench{n:02d}"
        admin.post("/api/users", json={"username": name, "role": "verifier", "password": f"{name}-pass"})
        session = boss.post(f"/api/runs/{run_id}/sessions", json={"verifier": name}).json()
        token = server.login(name, f"{name}-pass")
        claimants.append(Claimant(token, session["session_id"], racks[n * share : (n + 1) * share]))
    boss.post(f"/api/runs/{run_id}/start")
    for who in claimants:
        server.client(who.token).post(f"/api/sessions/{who.session_id}/start")
    return run_id, claimants


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(server: ServerProcess, args: argparse.Namespace) -> None:
    run_id, claimants = await asyncio.to_thread(_setup, server)
    await _saturated(server.url, run_id, claimants, 1.0)  # warm the server's caches and connections
    baseline = await _health(server.url, 200, args.rate)
    paced = await _paced(server.url, run_id, claimants, args.rate, args.seconds)
    saturated, elapsed = await _saturated(server.url, run_id, claimants, args.seconds)
    bursts = await _bursts(server.url, run_id, claimants, args.bursts)

    print(f"claimants: {CLAIMANTS}")
    print(f"claims: {len(paced)}  (at {args.rate:.0f} claims/s offered, Poisson arrivals)")
    print(f"claim_p50_ms: {statistics.median(paced):.2f}")
    print(f"claim_p99_ms: {percentile(paced, 0.99):.2f}")
    print(f"claims_per_s: {len(saturated) / elapsed:.0f}  (saturated: back to back, each claim then a release)")
    print(f"saturated_p50_ms: {statistics.median(saturated):.2f}")
    print(f"saturated_p99_ms: {percentile(saturated, 0.99):.2f}")
    print(f"burst_p50_ms: {statistics.median(bursts):.2f}  (all {CLAIMANTS} claim at the same instant)")
    print(f"burst_p99_ms: {percentile(bursts, 0.99):.2f}")
    print(f"baseline_health_p50_ms: {statistics.median(baseline):.2f}")
    print(f"ratio_p50_vs_health: {statistics.median(paced) / statistics.median(baseline):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=50.0, help="claims per second offered by all claimants")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bursts", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "box", "--demo", env={"STOCKVERIFY_LOG_LEVEL": "warning"})
        try:
            server.wait_ready()
            asyncio.run(_run(server, args))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
