"""Boxes of one store run as real processes, and the people and count that lock tests need on them."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.conftest
from tests.conftest import DEMO_PASSWORDS, ServerProcess

PASSWORD = "count-pass-1"


def start(data_dir: Path, port: int, *args: str, env: dict[str, str]) -> ServerProcess:
    """A box on a port chosen before it starts, so that its peers can be told where it listens."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tests.conftest, "free_port", lambda: port)
        return ServerProcess(data_dir, *args, env=env)


class Boxes:
    """Boxes by name ("a" holds the demo store); a running count at A; two verifiers, holder and rival,
    each with a started session; one login per person and box (logins are rate limited)."""

    def __init__(self, boxes: dict[str, ServerProcess]) -> None:
        self.boxes = boxes
        self._clients: dict[tuple[str, str], httpx.Client] = {}
        self.people: dict[str, dict[str, Any]] = {}
        self.run_id = ""

    def wait_caught_up(self) -> None:
        raise NotImplementedError

    def start_count(self, name: str) -> None:
        """A hard count at A with holder's and rival's sessions started, caught up on every box."""
        admin, boss = self.client("admin", "a"), self.client("supervisor", "a")
        self.run_id = boss.post("/api/runs", json={"name": name, "kind": "hard"}).json()["run_id"]
        for person in ("holder", "rival"):
            made = admin.post("/api/users", json={"username": person, "role": "verifier", "password": PASSWORD})
            assert made.status_code == 201, made.text
            session = boss.post(f"/api/runs/{self.run_id}/sessions", json={"verifier": person})
            assert session.status_code == 201, session.text
            self.people[person] = {"session_id": session.json()["session_id"]}
        assert boss.post(f"/api/runs/{self.run_id}/start").status_code == 200
        for person, facts in self.people.items():
            verifier = self.client(person, "a")
            me = verifier.get("/api/auth/me").json()
            facts.update(user_id=me["user_id"], display_name=me["display_name"])
            assert verifier.post(f"/api/sessions/{facts['session_id']}/start").status_code == 200
        self.wait_caught_up()

    def box(self, name: str) -> ServerProcess:
        return self.boxes[name]

    def query(self, name: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{self.box(name).data_dir / 'store.db'}?mode=ro", uri=True) as conn:
            return conn.execute(sql, args).fetchall()

    def vector(self, name: str) -> dict[str, int]:
        rows = self.query(name, "SELECT writer_id, head_seq FROM writers WHERE head_seq > 0")
        return {str(w): int(s) for w, s in rows}

    def client(self, who: str, at: str) -> httpx.Client:
        if (who, at) not in self._clients:
            box = self.box(at)
            self._clients[(who, at)] = box.client(box.login(who, DEMO_PASSWORDS.get(who, PASSWORD)))
        return self._clients[(who, at)]

    def claim(self, who: str, at: str, rack: str) -> httpx.Response:
        session_id = self.people[who]["session_id"]
        return self.client(who, at).post(f"/api/runs/{self.run_id}/racks/{rack}/claim", json={"session_id": session_id})

    def last_token(self, at: str) -> int:
        """The last token the box's sequence handed out."""
        epoch, counter = self.query(at, "SELECT epoch, counter FROM lock_authority")[0]
        return int(epoch) << 32 | int(counter)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        for box in self.boxes.values():
            box.stop()
