"""A count in progress on the demo store, made through the HTTP API the way people and handhelds make
it: verifiers claim racks, scan, finish; some sessions are submitted, one approved; a few entries raise
conflicts; handhelds are paired and one sends heartbeats. The dashboard tests, its bench and the
screenshot script all start from this.

The box runs with long leases (``LONG_LEASES``) so that racks held in the scenario stay held while a
test or a screenshot looks at them, without a heartbeat loop running beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.store.identity import public_bytes
from tests.conftest import DEMO_PASSWORDS, ServerProcess

LONG_LEASES = {"STOCKVERIFY_LEASE_TTL_S": "3600", "STOCKVERIFY_LEASE_RENEW_S": "60"}
SPARE_VERIFIERS = ("tara", "sam")
TOLERANCE_UNITS = 2

# verifier -> racks counted to the end, then the rack left held and how ("active", "claimed", "paused")
WORK: dict[str, tuple[list[str], str | None, str | None]] = {
    "verifier": (["G-01", "G-02", "G-03", "G-04", "G-05", "G-06", "G-07", "G-08"], "G-09", "active"),
    "meera": (["F1-01", "F1-02", "F1-03", "F1-04", "F1-05", "F1-06"], "F1-07", "claimed"),
    "ravi": (["F2-01", "F2-02", "F2-03", "F2-04", "F2-05"], "F2-06", "paused"),
    "deepa": (["UG-01", "UG-02", "UG-03", "UG-04"], None, None),
    "kiran": (["BG-01", "BG-02", "BG-03"], None, None),
}
DISPLAY = {
    "meera": "Meera",
    "ravi": "Ravi",
    "deepa": "Deepa",
    "kiran": "Kiran",
    "tara": "Tara",
    "sam": "Sam",
}


def password(name: str) -> str:
    return DEMO_PASSWORDS.get(name, f"{name}-count-pass")


@dataclass
class CountScenario:
    server: ServerProcess
    run_id: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)
    skus: list[dict[str, Any]] = field(default_factory=list)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    submitted: str = ""  # a session waiting for approval
    approved: str = ""
    out_of_tolerance: list[str] = field(default_factory=list)  # SKUs over tolerance in the approved session

    def client(self, who: str) -> httpx.Client:
        return self.server.client(self.tokens[who])

    def ok(self, who: str, method: str, path: str, body: Any = None) -> Any:
        with self.client(who) as client:
            answer = client.request(method, path, json=body)
        assert answer.status_code in (200, 201), (who, method, path, answer.status_code, answer.text)
        return answer.json()


def build(server: ServerProcess) -> CountScenario:
    """The count the dashboard is shown with. Takes a few seconds on the demo store."""
    sc = CountScenario(server)
    sc.tokens["admin"] = server.login("admin", DEMO_PASSWORDS["admin"])
    sc.tokens["supervisor"] = server.login("supervisor", DEMO_PASSWORDS["supervisor"])
    sc.tokens["auditor"] = server.login("auditor", DEMO_PASSWORDS["auditor"])
    for name in [*WORK, *SPARE_VERIFIERS]:
        if name != "verifier":
            sc.ok(
                "admin",
                "POST",
                "/api/users",
                {"username": name, "role": "verifier", "password": password(name), "display_name": DISPLAY[name]},
            )
        sc.tokens[name] = server.login(name, password(name))

    listed = sc.ok("supervisor", "GET", "/api/products?limit=200")["items"]
    sc.skus = [p for p in listed if p["expected_qty"] > 3][:60]
    run = sc.ok(
        "supervisor",
        "POST",
        "/api/runs",
        {"name": "Weekly count: fast movers", "kind": "directed", "notes": "Ground to Back Godown"},
    )
    sc.run_id = run["run_id"]
    sc.ok("supervisor", "POST", f"/api/runs/{sc.run_id}/scope", {"skus": [p["sku"] for p in sc.skus]})
    for name in WORK:
        made = sc.ok("supervisor", "POST", f"/api/runs/{sc.run_id}/sessions", {"verifier": name})
        sc.sessions[name] = made["session_id"]
    sc.ok("supervisor", "POST", f"/api/runs/{sc.run_id}/start")
    sc.ok("supervisor", "PUT", "/api/tolerances", {"scope": "store", "units": TOLERANCE_UNITS, "pct_bp": 0})

    sku_at = 0
    for name, (finished, held, how) in WORK.items():
        session = sc.sessions[name]
        sc.ok(name, "POST", f"/api/sessions/{session}/start")
        for rack in finished:
            _claim(sc, name, rack, session)
            sc.ok(name, "POST", f"/api/runs/{sc.run_id}/racks/{rack}/start")
            for product in sc.skus[sku_at : sku_at + 2]:
                # Every third SKU is counted 5 over its book quantity: out of tolerance.
                over = 5 if sku_at % 3 == 0 else 0
                sc.ok(
                    name,
                    "POST",
                    f"/api/sessions/{session}/scans",
                    {"code": product["sku"], "qty": product["expected_qty"] + over, "rack": rack},
                )
                if over and name == "kiran":
                    sc.out_of_tolerance.append(product["sku"])
                sku_at = (sku_at + 1) % len(sc.skus)
            sc.ok(name, "POST", f"/api/runs/{sc.run_id}/racks/{rack}/finish")
        if held:
            _claim(sc, name, held, session)
            if how in ("active", "paused"):
                sc.ok(name, "POST", f"/api/runs/{sc.run_id}/racks/{held}/start")
                sc.ok(
                    name, "POST", f"/api/sessions/{session}/scans", {"code": sc.skus[-1]["sku"], "qty": 3, "rack": held}
                )
            if how == "paused":
                sc.ok(name, "POST", f"/api/runs/{sc.run_id}/racks/{held}/pause")
    sc.ok("supervisor", "POST", f"/api/runs/{sc.run_id}/racks/G-03/reverify", {"reason": "shelf label missing"})

    _conflicts(sc)
    for name in ("deepa", "kiran"):
        sc.ok(name, "POST", f"/api/sessions/{sc.sessions[name]}/submit")
    sc.ok("supervisor", "POST", f"/api/sessions/{sc.sessions['kiran']}/approve")
    sc.submitted, sc.approved = sc.sessions["deepa"], sc.sessions["kiran"]
    _devices(sc)
    return sc


def _claim(sc: CountScenario, name: str, rack: str, session: str) -> None:
    sc.ok(name, "POST", f"/api/runs/{sc.run_id}/racks/{rack}/claim", {"session_id": session})


def _conflicts(sc: CountScenario) -> None:
    """One of each kind a person can cause through the API: damage above the count, an impossible
    manufacturing date, and a barcode of one product scanned while verifying another."""
    vani = sc.sessions["verifier"]
    items = sc.ok("supervisor", "GET", f"/api/sessions/{vani}")["items"]
    first, second = items[0], items[1]
    sc.ok("verifier", "PUT", f"/api/sessions/{vani}/items/{first['product_id']}", {"damage_qty": first["qty"] + 3})
    meera = sc.sessions["meera"]
    item = sc.ok("supervisor", "GET", f"/api/sessions/{meera}")["items"][0]
    sc.ok(
        "meera", "PUT", f"/api/sessions/{meera}/items/{item['product_id']}", {"attributes": {"mfg_date": "2099-01-01"}}
    )
    sc.ok(
        "verifier",
        "POST",
        f"/api/sessions/{vani}/scans",
        {"code": sc.skus[-2]["sku"], "qty": 2, "rack": "G-09", "product_id": second["product_id"]},
    )


def _devices(sc: CountScenario) -> None:
    for name, beat in (("Zebra TC21 #1", {"queue_depth": 3, "app_version": "1.4.0"}), ("Counter tablet", None)):
        code = sc.ok("supervisor", "POST", "/api/devices/pairing-codes")["code"]
        key = Ed25519PrivateKey.generate()
        paired = httpx.post(
            sc.server.url + "/api/devices/pair",
            json={"code": code, "name": name, "public_key": public_bytes(key).hex()},
            timeout=30,
        ).json()
        sc.devices[name] = {**paired, "key": key}
        if beat is not None:
            answer = httpx.post(
                sc.server.url + "/api/sync/heartbeat",
                json=beat,
                headers={"Authorization": f"Device {paired['device_token']}"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
