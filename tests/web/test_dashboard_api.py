"""What the dashboard asks of the box beyond the counting API: stream tickets, the person's permissions,
the people who can count, conflicts per rack and in words, the pace of a run, the pairing QR code."""

from __future__ import annotations

import io
import json
import time
from urllib.parse import urlencode

import httpx
import pytest
import segno

from appliance.api.live import StreamTickets
from appliance.auth.permissions import PERMISSIONS
from appliance.errors import Unauthenticated
from tests.web.scenario import SPARE_VERIFIERS, WORK, CountScenario


def _open_stream(url: str, **params: str) -> tuple[int, str, dict[str, str]]:
    with httpx.stream("GET", url + "/api/events", params=params, timeout=10) as answer:
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            return answer.status_code, "", dict(answer.headers)
        return answer.status_code, answer.read().decode(), dict(answer.headers)


def test_a_stream_ticket_opens_the_live_stream_once(count: CountScenario) -> None:
    url = count.server.url
    with count.client("verifier") as vani:
        issued = vani.post("/api/events/ticket")
    assert issued.status_code == 201 and issued.json()["expires_in_s"] == 30
    ticket = issued.json()["ticket"]
    assert ticket not in (count.tokens["verifier"],) and len(ticket) >= 32

    status, _, headers = _open_stream(url, ticket=ticket)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    status, body, _ = _open_stream(url, ticket=ticket)  # spent
    assert status == 401 and json.loads(body)["code"] == "UNAUTHENTICATED"
    status, body, _ = _open_stream(url, ticket="made-up")
    assert status == 401 and json.loads(body)["code"] == "UNAUTHENTICATED"
    assert httpx.post(url + "/api/events/ticket").status_code == 401  # only a logged-in person gets one


def test_a_ticket_stream_carries_live_news(count: CountScenario) -> None:
    with count.client("supervisor") as boss:
        ticket = boss.post("/api/events/ticket").json()["ticket"]
    seen: list[dict[str, object]] = []
    with httpx.stream("GET", count.server.url + "/api/events", params={"ticket": ticket}, timeout=10) as stream:
        with count.client("meera") as meera:
            claimed = meera.post(
                f"/api/runs/{count.run_id}/racks/DMG-20/claim", json={"session_id": count.sessions["meera"]}
            )
        assert claimed.status_code == 201, claimed.text
        for line in stream.iter_lines():
            if line.startswith("data:"):
                seen.append(json.loads(line[5:]))
                if seen[-1].get("rack") == "DMG-20":
                    break
    assert seen[-1]["type"] == "rack.claimed" and seen[-1]["token"] == claimed.json()["token"]


def test_stream_tickets_expire_unused() -> None:
    book = StreamTickets(ttl_s=0.05)
    fresh, stale = book.issue("u1"), book.issue("u2")
    assert book.redeem(fresh) == "u1"
    time.sleep(0.1)
    with pytest.raises(Unauthenticated):
        book.redeem(stale)


def test_me_tells_the_page_what_the_role_may_do(count: CountScenario) -> None:
    for who, role in (("verifier", "verifier"), ("supervisor", "supervisor"), ("auditor", "auditor")):
        with count.client(who) as client:
            me = client.get("/api/auth/me").json()
        assert me["role"] == role
        assert me["permissions"] == sorted(p for p, roles in PERMISSIONS.items() if role in roles)
    with count.client("verifier") as vani:
        mine = set(vani.get("/api/auth/me").json()["permissions"])
    assert "products.read_expected" not in mine and "runs.read" not in mine and "sessions.count" in mine


def test_counters_are_the_people_who_can_count(count: CountScenario) -> None:
    with count.client("supervisor") as boss:
        people = boss.get("/api/counters").json()
    names = {p["username"]: p for p in people}
    assert {*WORK, *SPARE_VERIFIERS, "supervisor", "admin"} <= set(names)
    assert "auditor" not in names
    assert names["tara"] == {
        "user_id": names["tara"]["user_id"],
        "username": "tara",
        "display_name": "Tara",
        "role": "verifier",
    }
    with count.client("verifier") as vani:
        assert vani.get("/api/counters").status_code == 403


def test_the_rack_board_counts_open_conflicts_per_rack(count: CountScenario) -> None:
    with count.client("supervisor") as boss:
        board = boss.get(f"/api/runs/{count.run_id}/racks").json()
        queue = boss.get("/api/conflicts", params={"run_id": count.run_id}).json()
    assert queue, "the scenario makes conflicts"
    per_rack: dict[str, int] = {}
    for conflict in queue:
        assert conflict["racks"], conflict
        for rack in conflict["racks"]:
            per_rack[rack] = per_rack.get(rack, 0) + 1
    assert {t["rack"]: t["conflicts"] for t in board if t["conflicts"]} == per_rack
    with count.client("verifier") as vani:
        blind = vani.get(f"/api/runs/{count.run_id}/racks").json()
    assert blind and all("conflicts" not in tile for tile in blind)


def test_conflicts_name_their_products_people_and_racks(count: CountScenario) -> None:
    with count.client("supervisor") as boss:
        queue = {c["kind"]: c for c in boss.get("/api/conflicts", params={"run_id": count.run_id}).json()}
    mismatch = queue["barcode_mismatch"]
    assert set(mismatch["products"]) == {mismatch["product_id"], mismatch["resolves_to"]}
    assert mismatch["products"][mismatch["resolves_to"]]["sku"] == mismatch["code"]
    assert mismatch["verifiers"] == {count.sessions["verifier"]: "Vani (verifier)"}
    assert mismatch["racks"] == ["G-09"]  # the rack the scan was made on
    dated = queue["mfg_date_impossible"]
    assert dated["verifiers"] == {count.sessions["meera"]: "Meera"}
    assert set(dated["racks"]) <= set(WORK["meera"][0])
    assert "expected_qty" not in json.dumps(queue)


def test_the_pace_of_a_run(count: CountScenario) -> None:
    with count.client("supervisor") as boss:
        pace = boss.get(f"/api/runs/{count.run_id}/activity", params={"minutes": 30}).json()
        board = boss.get(f"/api/runs/{count.run_id}/racks").json()
        assert boss.get(f"/api/runs/{count.run_id}/activity", params={"minutes": 0}).status_code == 400
    assert len(pace["minute_ms"]) == len(pace["scans"]) == len(pace["racks_completed"]) == 30
    assert all(b - a == 60_000 for a, b in zip(pace["minute_ms"], pace["minute_ms"][1:], strict=False))
    assert pace["minute_ms"][-1] <= time.time() * 1000 < pace["minute_ms"][-1] + 60_000
    # Two scans on every rack counted to the end, one on each rack left active or paused, and the scan of
    # the wrong barcode (the tests before this one only claim).
    made = sum(2 * len(done) for done, _, _ in WORK.values()) + sum(
        how in ("active", "paused") for *_, how in WORK.values()
    )
    assert sum(pace["scans"]) == made + 1
    completed = sum(tile["state"] == "completed" for tile in board)
    assert pace["racks_completed"][-1] == completed == 25  # 26 finished, one sent back for re-verify
    assert pace["racks_total"] == 300


def test_the_pairing_qr_code_encodes_the_pairing_uri(count: CountScenario) -> None:
    with count.client("supervisor") as boss:
        made = boss.post("/api/devices/pairing-codes").json()
        qr = boss.get("/api/devices/pairing-qr", params={"code": made["code"]})
        assert boss.get("/api/devices/pairing-qr", params={"code": "12"}).status_code == 422
        store = httpx.get(count.server.url + "/api/health").json()["store_id"]
    assert qr.status_code == 200 and qr.headers["content-type"].startswith("image/svg+xml")
    uri = "stockverify://pair?" + urlencode({"box": count.server.url, "code": made["code"], "store": store})
    assert made["qr"] == uri
    drawn = io.BytesIO()
    segno.make_qr(uri, error="m").save(
        drawn,
        kind="svg",
        scale=6,
        border=2,
        dark="#000",
        light="#fff",
        xmldecl=False,
        title=f"Pairing code {made['code']}",
    )
    assert qr.content == drawn.getvalue()
    assert qr.content.startswith(b"<svg") and b'xmlns="http://www.w3.org/2000/svg"' in qr.content
    with count.client("auditor") as auditor:
        assert auditor.get("/api/devices/pairing-qr", params={"code": made["code"]}).status_code == 403


def _read_until_resumed(stream: httpx.Response, rack: str) -> list[dict[str, object]]:
    seen: list[dict[str, object]] = []
    for line in stream.iter_lines():
        if line.startswith("data:"):
            seen.append(json.loads(line[5:]))
            if seen[-1].get("type") == "rack.resumed" and seen[-1].get("rack") == rack:
                return seen
    return seen


def test_a_verifiers_stream_carries_the_scans_of_their_own_sessions_only(count: CountScenario) -> None:
    """A verifier may not read another's session (``GET`` answers SESSION_NOT_YOURS); the live stream
    must not tell them its scans either. Their own scans, and the floor's rack moves, they do hear."""
    with count.client("meera") as meera, count.client("verifier") as vani, count.client("supervisor") as boss:
        tickets = {
            who: c.post("/api/events/ticket").json()["ticket"]
            for who, c in (("meera", meera), ("vani", vani), ("boss", boss))
        }
    url = count.server.url + "/api/events"
    with (
        httpx.stream("GET", url, params={"ticket": tickets["meera"]}, timeout=10) as other,
        httpx.stream("GET", url, params={"ticket": tickets["vani"]}, timeout=10) as own,
        httpx.stream("GET", url, params={"ticket": tickets["boss"]}, timeout=10) as supervising,
    ):
        with count.client("verifier") as vani:
            session = count.sessions["verifier"]
            product = vani.get("/api/products", params={"limit": 1}).json()["items"][0]["sku"]
            scanned = vani.post(f"/api/sessions/{session}/scans", json={"code": product, "qty": 7, "rack": "G-09"})
            assert scanned.status_code == 201, scanned.text
            for move in ("pause", "resume"):  # a move every stream hears marks where to stop reading
                assert vani.post(f"/api/runs/{count.run_id}/racks/G-09/{move}").status_code == 200
        heard = {
            who: _read_until_resumed(stream, "G-09")
            for who, stream in (("meera", other), ("vani", own), ("boss", supervising))
        }

    def scans(who: str) -> list[dict[str, object]]:
        return [
            m for m in heard[who] if m.get("kind") == "scan" and m.get("session_id") == session and m.get("qty") == 7
        ]

    assert len(scans("vani")) == 1 and len(scans("boss")) == 1
    assert scans("meera") == []
    assert heard["meera"][-1]["type"] == "rack.resumed"  # meera's stream was live all along
