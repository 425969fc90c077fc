"""The demo store: what ``make run`` shows a newcomer.

Deterministic in content (same floors, racks, products, users every time; only generated ids differ):
6 floors, 300 racks, 5,000 products with barcodes of every form, and one user per role. The demo
passwords are documented in the README; they are for a demo box only.
"""

from __future__ import annotations

import logging
import sqlite3

from appliance.auth import people
from appliance.box import Box
from appliance.catalog import layout, product_import
from appliance.demo.catalog import write_demo_products

log = logging.getLogger(__name__)

DEMO_FLOORS = [
    ("G", "Ground"),
    ("F1", "First"),
    ("F2", "Second"),
    ("UG", "Upper Godown"),
    ("BG", "Back Godown"),
    ("DMG", "Damage Area"),
]
RACKS_PER_FLOOR = 50
DEMO_PRODUCTS = 5000
# (username, role, password, display name)
DEMO_USERS = [
    ("admin", "admin", "admin-demo", "Asha (admin)"),
    ("supervisor", "supervisor", "supervisor-demo", "Sunil (supervisor)"),
    ("verifier", "verifier", "verifier-demo", "Vani (verifier)"),
    ("auditor", "auditor", "auditor-demo", "Arun (auditor)"),
]


def is_seeded(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM floors LIMIT 1").fetchone() is not None


def seed_demo(box: Box) -> None:
    """Fill an empty store with the demo layout, catalogue and users in one transaction."""
    if is_seeded(box.db.read()):
        log.info("demo store already present; leaving it as it is")
        return
    catalog_file = write_demo_products(box.settings.data_dir / "demo" / "products.csv", DEMO_PRODUCTS)
    plan = product_import.parse_file(catalog_file.read_bytes(), catalog_file.name)
    passwords = people.Passwords(box.settings.password_memory_kib, box.settings.password_time_cost)
    users = [(name, role, passwords.hash(pw), display) for name, role, pw, display in DEMO_USERS]

    def seed(conn: sqlite3.Connection) -> None:
        for position, (code, name) in enumerate(DEMO_FLOORS, start=1):
            layout.add_floor(conn, box.log, code, name, position)
            for number in range(1, RACKS_PER_FLOOR + 1):
                layout.add_rack(conn, box.log, code, f"{code}-{number:02d}", f"{name} rack {number}")
        for name, role, password_hash, display in users:
            people.add_user(conn, box.log, name, display, role, password_hash)
        product_import.commit(conn, box.log, plan)

    box.db.write(seed)
    log.info(
        "demo store seeded",
        extra={
            "floors": len(DEMO_FLOORS),
            "racks": len(DEMO_FLOORS) * RACKS_PER_FLOOR,
            "products": DEMO_PRODUCTS,
        },
    )
