"""Counter-state pages: what a store ships to HQ on a thin uplink, merged at HQ as the events would fold."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.auth.people import User
from appliance.box import Box
from appliance.counting import codes, held, items, sessions
from appliance.replica import counters
from tests.replication.store_replicas import DeviceStreams, Template, build_template, open_replica


@pytest.fixture
def template(tmp_path: Path) -> Template:
    return build_template(tmp_path / "template")


def _person(box: Box, username: str) -> User:
    row = box.db.read().execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
    return User(row["user_id"], row["username"], row["display_name"], row["role"])


def test_a_code_mapped_at_the_store_counts_for_its_product_at_hq(template: Template, tmp_path: Path) -> None:
    store, hq = open_replica(template, tmp_path / "store"), open_replica(template, tmp_path / "hq")
    try:
        verifier, admin = _person(store, "v1"), User("u-admin", "admin", "Admin", "admin")
        session_id = template.session_id
        store.db.write(lambda conn: sessions.start_session(conn, store.log, verifier, session_id))
        for _ in range(3):
            store.db.write(lambda conn: items.record_scan(conn, store.log, verifier, session_id, code="UNKNOWN-1"))
        sku_b = template.product_ids["SKU-B"]
        assert items.item_quantity(store.db.read(), session_id, sku_b) == 0  # an unmatched code counts for none

        # A supervisor maps the code after the scans: they move to SKU-B at the store...
        store.db.write(lambda conn: codes.map_code(conn, store.log, admin, "UNKNOWN-1", "SKU-B"))
        assert items.item_quantity(store.db.read(), session_id, sku_b) == 3

        # ...and, by the counter page alone, at HQ.
        page = counters.export(store.db.read(), template.store_id, {})
        assert page["code_mappings"] == [["UNKNOWN-1", sku_b, page["code_mappings"][0][2], store.node.node_id]]
        hq.db.write(lambda conn: counters.merge(conn, template.store_id, page))
        assert items.item_quantity(hq.db.read(), session_id, sku_b) == 3

        # An older mapping arriving late does not undo a newer one (last writer wins by HLC).
        stale = {**page, "code_mappings": [["UNKNOWN-1", template.product_ids["SKU-C"], 1, "dev-a"]]}
        hq.db.write(lambda conn: counters.merge(conn, template.store_id, stale))
        assert items.item_quantity(hq.db.read(), session_id, sku_b) == 3
    finally:
        store.close()
        hq.close()


def test_a_scan_held_at_the_store_stays_out_of_hqs_totals_until_a_supervisor_accepts_it(
    template: Template, tmp_path: Path
) -> None:
    store, hq = open_replica(template, tmp_path / "store"), open_replica(template, tmp_path / "hq")
    try:
        verifier, admin = _person(store, "v1"), User("u-admin", "admin", "Admin", "admin")
        session_id, product = template.session_id, template.product_ids["SKU-A"]
        store.db.write(lambda conn: sessions.start_session(conn, store.log, verifier, session_id))
        for _ in range(3):
            store.db.write(lambda conn: items.record_scan(conn, store.log, verifier, session_id, code="4006381333931"))
        store.db.write(lambda conn: sessions.submit_session(conn, store.log, verifier, session_id))
        store.db.write(lambda conn: sessions.approve_session(conn, store.log, admin, session_id))

        # A device's scan made offline reaches the store after the approval: held there.
        streams = DeviceStreams()
        late = streams.append(
            "dev-a",
            "scan.recorded",
            {"session_id": session_id, "code": "4006381333931", "qty": 40, "rack_id": template.rack_id,
             "product_id": None, "token": None, "by": verifier.user_id},
            advance=1,
        )  # fmt: skip
        store.db.write(lambda conn: store.log.append_run(conn, [late]))
        assert items.item_quantity(store.db.read(), session_id, product) == 3

        page = counters.export(store.db.read(), template.store_id, {})
        assert [row[0] for row in page["held_events"]] == [late.event_id]
        acked = hq.db.write(lambda conn: counters.merge(conn, template.store_id, page))
        assert items.item_quantity(hq.db.read(), session_id, product) == 3

        store.db.write(lambda conn: held.decide(conn, store.log, admin, [late.event_id], "accepted", "on the shelf"))
        assert items.item_quantity(store.db.read(), session_id, product) == 43
        hq.db.write(
            lambda conn: counters.merge(
                conn, template.store_id, counters.export(store.db.read(), template.store_id, acked)
            )
        )
        assert items.item_quantity(hq.db.read(), session_id, product) == 43
    finally:
        store.close()
        hq.close()
