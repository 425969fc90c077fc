"""Rack claim latency with 20 concurrent claimants on distinct racks, against the real server.

A demo box runs as its own process. Twenty verifiers, each with a session of their own, claim racks
of their own share and release them again. The load comes from one process, a task and a keep-alive
connection per claimant speaking plain HTTP/1.1, so that the figures are the box's and not those of a
load generator sharing its two cores.
Every claim is a write that is on disk before it is answered.

* ``claim_p50_ms`` / ``claim_p99_ms`` — the store's pace, and then some: the twenty claimants together
  offer ``--rate`` claims per second (default 50; a real count sees a claim every few seconds), each
  claimant at random (Poisson) times, and each claim's round trip is timed. 30 s make some 1,500
  claims: the p99 of 500 is the fifth-slowest claim and moved by a quarter between runs.
* ``claims_per_s`` — saturation: every claimant claims and releases back to back with nothing in
  between; ``saturated_p99_ms`` is the latency under that load (queueing included).
* ``burst_p99_ms`` — all twenty claim at the same instant, repeated ``--bursts`` times.
* ``baseline_health_p50_ms`` — ``GET /api/health`` (no write, no thread hop) at the paced rate in the
  same run: the floor any request pays on this machine.

    .venv/bin/python -m tests.bench.bench_claims [--rate 50] [--seconds 30] [--bursts 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import DEMO_PASSWORDS, ServerProcess

CLAIMANTS = 20


class Connection:
    """One keep-alive HTTP/1.1 connection, as a handheld holds to its box: the request written in one
    piece, the answer read by its Content-Length. A general client (aiohttp) spent a millisecond of CPU
    per request on this machine's two cores, which the box then waited for; the latency measured is
    meant to be the box's."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader, self._writer, self._host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, _, port = url.removeprefix("http://").partition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.transport.set_write_buffer_limits(0)
        return cls(reader, writer, f"{host}:{port}")

    async def request(self, method: str, path: str, token: str | None = None, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Length: {len(body)}\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self._writer.write(head.encode() + b"\r\n" + body)
        status_line = await self._reader.readline()
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self._reader.readexactly(length)

    def close(self) -> None:
        self._writer.close()


@dataclass
class Claimant:
    token: str
    session_id: str
    racks: list[str]
    turn: int = 0

    def next_rack(self) -> str:
        self.turn += 1
        return self.racks[self.turn % len(self.racks)]


async def _claim(http: Connection, run_id: str, who: Claimant) -> float:
    """Claim the claimant's next rack (timed), then release it (untimed)."""
    rack = who.next_rack()
    body = json.dumps({"session_id": who.session_id}).encode()
    start = time.perf_counter()
    status, answer = await http.request("POST", f"/api/runs/{run_id}/racks/{rack}/claim", who.token, body)
    elapsed = (time.perf_counter() - start) * 1000
    if status != 201:
        raise RuntimeError(f"claim {rack}: {status} {answer[:200]!r}")
    status, answer = await http.request("POST", f"/api/runs/{run_id}/racks/{rack}/release", who.token)
    if status != 200:
        raise RuntimeError(f"release {rack}: {status} {answer[:200]!r}")
    return elapsed


async def _connections(url: str, count: int) -> list[Connection]:
    return list(await asyncio.gather(*(Connection.open(url) for _ in range(count))))


async def _paced(url: str, run_id: str, claimants: list[Claimant], rate: float, seconds: float) -> list[float]:
    each = rate / len(claimants)
    latencies: list[float] = []

    async def one(http: Connection, who: Claimant) -> None:
        due = time.perf_counter() + random.expovariate(each)
        end = time.perf_counter() + seconds
        while due < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            latencies.append(await _claim(http, run_id, who))
            due += random.expovariate(each)

    connections = await _connections(url, len(claimants))
    await asyncio.gather(*(one(http, who) for http, who in zip(connections, claimants, strict=True)))
    for http in connections:
        http.close()
    return latencies


async def _saturated(url: str, run_id: str, claimants: list[Claimant], seconds: float) -> tuple[list[float], float]:
    latencies: list[float] = []

    async def one(http: Connection, who: Claimant, end: float) -> None:
        while time.perf_counter() < end:
            latencies.append(await _claim(http, run_id, who))

    connections = await _connections(url, len(claimants))
    start = time.perf_counter()
    await asyncio.gather(*(one(http, who, start + seconds) for http, who in zip(connections, claimants, strict=True)))
    elapsed = time.perf_counter() - start
    for http in connections:
        http.close()
    return latencies, elapsed


async def _bursts(url: str, run_id: str, claimants: list[Claimant], bursts: int) -> list[float]:
    latencies: list[float] = []
    connections = await _connections(url, len(claimants))
    for _ in range(bursts):
        latencies += await asyncio.gather(
            *(_claim(http, run_id, who) for http, who in zip(connections, claimants, strict=True))
        )
        await asyncio.sleep(0.05)
    for http in connections:
        http.close()
    return latencies


async def _health(url: str, count: int, rate: float) -> list[float]:
    """``GET /api/health`` at one claimant's pace: an idle machine takes longer to wake for a request
    than a busy one (here ~0.5 ms a thread), so the baseline waits between requests as claimants do."""
    samples = []
    http = await Connection.open(url)
    for _ in range(count):
        await asyncio.sleep(random.expovariate(rate))
        start = time.perf_counter()
        status, _answer = await http.request("GET", "/api/health")
        samples.append((time.perf_counter() - start) * 1000)
        if status != 200:
            raise RuntimeError(f"health: {status}")
    http.close()
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
    print(f"baseline_health_p99_ms: {percentile(baseline, 0.99):.2f}")
    print(f"ratio_p50_vs_health: {statistics.median(paced) / statistics.median(baseline):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=50.0, help="claims per second offered by all claimants")
    parser.add_argument("--seconds", type=float, default=30.0)
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
