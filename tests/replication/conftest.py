"""A demo box prepared for devices: a supervisor, pairing codes, counting sessions, its event table."""

from __future__ import annotations

import asyncio
import csv
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.conftest
from replication.device import transport
from replication.device.outbox import Identity, Outbox
from tests.conftest import DEMO_PASSWORDS, ServerProcess

MAIN = Path(__file__).resolve().parents[2]


class CountingBox:
    """A running demo box and the people a device test needs on it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.boss = server.client(server.login("supervisor", DEMO_PASSWORDS["supervisor"]))
        self.verifier = server.client(server.login("verifier", DEMO_PASSWORDS["verifier"]))
        self.auditor = server.client(server.login("auditor", DEMO_PASSWORDS["auditor"]))
        self.verifier_id: str = self.verifier.get("/api/auth/me").json()["user_id"]
        self._racks = iter(f"G-{n:02d}" for n in range(1, 100))
        self._rack_ids: dict[str, str] = {}

    @property
    def url(self) -> str:
        return self.server.url

    def pairing_code(self) -> str:
        answer = self.boss.post("/api/devices/pairing-codes")
        assert answer.status_code == 201, answer.text
        code: str = answer.json()["code"]
        return code

    def counting_session(self) -> str:
        """A started run with one started session for the demo verifier, on a rack of its own."""
        rack = next(self._racks)
        run = self.boss.post("/api/runs", json={"name": f"device sync {rack}", "kind": "hard"})
        assert run.status_code == 201, run.text
        run_id = run.json()["run_id"]
        made = self.boss.post(f"/api/runs/{run_id}/sessions", json={"racks": [rack], "verifier": "verifier"})
        assert made.status_code == 201, made.text
        session_id: str = made.json()["session_id"]
        assert self.boss.post(f"/api/runs/{run_id}/start").status_code == 200
        started = self.verifier.post(f"/api/sessions/{session_id}/start")
        assert started.status_code == 200, started.text
        return session_id

    def rack_id(self, session_id: str) -> str:
        """The id of the session's rack: what a device's scans name (not the code on the shelf)."""
        if session_id not in self._rack_ids:
            self._rack_ids[session_id] = self.boss.get(f"/api/sessions/{session_id}").json()["rack_ids"][0]
        return self._rack_ids[session_id]

    def finish(self, session_id: str) -> None:
        """Submit the session so the demo verifier is free for the next one (one active session each)."""
        answer = self.verifier.post(f"/api/sessions/{session_id}/submit")
        assert answer.status_code == 200, answer.text

    def session_qty(self, session_id: str) -> int:
        items = self.boss.get(f"/api/sessions/{session_id}").json()["items"]
        return sum(int(item["qty"]) for item in items)

    def products(self, count: int) -> list[dict[str, str]]:
        """Demo products that have a barcode: ``sku``, ``barcode``, ``product_id``."""
        with (self.server.data_dir / "demo" / "products.csv").open(newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if row["barcodes"]][:count]
        return [
            {
                "sku": row["sku"],
                "barcode": row["barcodes"].split("|")[0],
                "product_id": self.boss.get(f"/api/products/{row['sku']}").json()["product_id"],
            }
            for row in rows
        ]

    def revoke(self, writer_id: str) -> None:
        answer = self.boss.post(f"/api/devices/{writer_id}/revoke", json={"reason": "lost in the car park"})
        assert answer.status_code == 200, answer.text

    def stored(self, writer_id: str) -> list[tuple[int, str, bytes]]:
        """(seq, event_id, hash) of every event the box holds for a writer, straight from its database."""
        with sqlite3.connect(f"file:{self.server.data_dir / 'store.db'}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT seq, event_id, hash FROM events WHERE writer_id = ? ORDER BY seq, pos", (writer_id,)
            ).fetchall()
        return [(int(seq), str(event_id), bytes(digest)) for seq, event_id, digest in rows]


@pytest.fixture(scope="module")
def counting_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountingBox]:
    server = ServerProcess(tmp_path_factory.mktemp("sync") / "box", "--demo")
    try:
        server.wait_ready()
        yield CountingBox(server)
    finally:
        server.stop()


def restart(server: ServerProcess, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """The same box again on the same port, so devices paired with it find it where they left it."""
    port = server.port
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tests.conftest, "free_port", lambda: port)
        return ServerProcess(server.data_dir, *args, env=env)


def paired_outbox(box: CountingBox, folder: Path, name: str = "Handheld") -> Outbox:
    """An outbox paired with ``box`` in this process (the CLI's pair, without a subprocess)."""
    outbox = Outbox(folder / "outbox.db")
    public_key = outbox.key().public_key().public_bytes_raw()

    async def enrol() -> dict[str, str]:
        async with transport.open_session() as http:
            return await transport.pair(http, box.url, box.pairing_code(), name, public_key)

    answer = asyncio.run(enrol())
    outbox.save_identity(
        Identity(answer["writer_id"], answer["device_token"], box.url, answer["store_id"], answer["node_id"], name, 0)
    )
    return outbox


def scan_payload(box: CountingBox, session_id: str, code: str = "4006381333931", **fields: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "session_id": session_id,
        "code": code,
        "qty": 1,
        "rack_id": fields.pop("rack_id") if "rack_id" in fields else box.rack_id(session_id),
        "product_id": None,
        "token": None,
        "by": box.verifier_id,
    }
    return {**payload, **fields}


def device_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``stockverify device …`` in a process of its own, as a field tech runs it."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", "device", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=MAIN,
        check=False,
    )


def device_cli_popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "appliance", "device", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=MAIN,
    )


def pair_device(box: CountingBox, data_dir: Path, name: str) -> str:
    done = device_cli(
        "pair", "--box", box.url, "--code", box.pairing_code(), "--name", name, "--data-dir", str(data_dir)
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[2]
