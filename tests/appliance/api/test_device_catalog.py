"""The catalog a handheld keeps to resolve codes offline (docs/sync-protocol.md §3.5), against the demo
store's 5,000 products in ``stockverify serve`` in a real process: every product and every normalised
code, never an expected quantity, a version that an unchanged master keeps (``304``) and an import moves.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import ServerProcess
from tests.replication.conftest import CountingBox

MSGPACK = "application/msgpack"
PRODUCT_FIELDS = {"product_id", "sku", "name", "category", "subcategory", "uom", "mrp_minor"}
HEADER = "sku,barcodes,name,category,subcategory,uom,mrp,expected_qty"


class Catalog:
    """The module's demo box and a handheld paired with it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.box = CountingBox(server)
        key = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
        paired = httpx.post(
            server.url + "/api/devices/pair",
            json={"code": self.box.pairing_code(), "name": "Catalog handheld", "public_key": key},
            timeout=30,
        )
        assert paired.status_code == 201, paired.text
        self.token: str = paired.json()["device_token"]

    def get(self, **headers: str) -> httpx.Response:
        return httpx.get(
            self.server.url + "/api/sync/catalog",
            headers={"Authorization": f"Device {self.token}", **headers},
            timeout=60,
        )

    def database(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.server.data_dir / 'store.db'}?mode=ro", uri=True)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    server = ServerProcess(tmp_path_factory.mktemp("device-catalog") / "box", "--demo")
    try:
        server.wait_ready()
        yield Catalog(server)
    finally:
        server.stop()


def _json(answer: httpx.Response) -> dict[str, Any]:
    assert answer.status_code == 200, answer.text[:300]
    assert answer.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    return body


def test_every_product_and_every_code_of_the_master(catalog: Catalog) -> None:
    body = _json(catalog.get())
    assert set(body) == {"products", "codes", "version"}
    with catalog.database() as conn:
        conn.row_factory = sqlite3.Row
        products = [
            dict(row)
            for row in conn.execute("SELECT product_id, sku, name, category, subcategory, uom, mrp_minor FROM products")
        ]
        codes = [tuple(row) for row in conn.execute("SELECT code, product_id FROM product_codes")]
    assert len(body["products"]) == len(products) == 5000
    assert all(set(product) == PRODUCT_FIELDS for product in body["products"])
    by_id = {product["product_id"]: product for product in products}
    assert {product["product_id"]: product for product in body["products"]} == by_id
    assert sorted(map(tuple, body["codes"])) == sorted(codes)
    assert all(len(code) == 14 and code.isdigit() for code, _ in body["codes"])  # GTIN-14, as the box resolves
    # A code found through the catalog is the product the box resolves it to.
    code, product_id = body["codes"][0]
    resolved = catalog.box.boss.get("/api/products/resolve", params={"code": code})
    assert resolved.json()["product_id"] == product_id


def test_the_catalog_is_blind(catalog: Catalog) -> None:
    """Verifiers count blind: no expected quantity in any product, under any name, in either format."""
    answer = catalog.get()
    assert b"expected" not in answer.content
    packed = catalog.get(Accept=MSGPACK)
    assert b"expected" not in packed.content
    body = _json(answer)
    with catalog.database() as conn:
        expected = conn.execute("SELECT count(*) FROM products WHERE expected_qty > 0").fetchone()[0]
    assert expected > 0  # the demo master has expected quantities to leak
    assert all("expected_qty" not in product for product in body["products"])


def test_msgpack_when_accept_asks_for_it(catalog: Catalog) -> None:
    packed = catalog.get(Accept=MSGPACK)
    assert packed.status_code == 200
    assert packed.headers["content-type"].startswith(MSGPACK)
    assert msgpack.unpackb(packed.content, raw=False) == _json(catalog.get())
    assert packed.headers["etag"] == catalog.get().headers["etag"]


def test_an_unchanged_master_is_not_sent_again(catalog: Catalog) -> None:
    first = catalog.get()
    etag = first.headers["etag"]
    assert etag == f'"{first.json()["version"]}"'
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = catalog.get(**{"If-None-Match": header})
        assert again.status_code == 304, header
        assert again.content == b""
        assert again.headers["etag"] == etag
    assert catalog.get(**{"If-None-Match": '"another-version"'}).status_code == 200


def test_an_import_moves_the_version(catalog: Catalog) -> None:
    before = catalog.get()
    etag = before.headers["etag"]
    imported = catalog.box.boss.post(
        "/api/products/import",
        params={"filename": "new.csv"},
        content=f"{HEADER}\nCAT-NEW-1,5901234123457,Catalog newcomer,Snacks,Crisps,EA,25.00,40\n".encode(),
    )
    assert imported.status_code == 201, imported.text
    after = catalog.get(**{"If-None-Match": etag})
    assert after.status_code == 200
    body = after.json()
    assert after.headers["etag"] != etag and body["version"] != before.json()["version"]
    new = next(p for p in body["products"] if p["sku"] == "CAT-NEW-1")
    assert new == {
        "product_id": new["product_id"],
        "sku": "CAT-NEW-1",
        "name": "Catalog newcomer",
        "category": "Snacks",
        "subcategory": "Crisps",
        "uom": "EA",
        "mrp_minor": 2500,
    }
    assert ["05901234123457", new["product_id"]] in body["codes"]
    assert len(body["products"]) == len(before.json()["products"]) + 1
    assert catalog.get(**{"If-None-Match": after.headers["etag"]}).status_code == 304


def test_the_catalog_needs_a_paired_device(catalog: Catalog) -> None:
    for headers in ({}, {"Authorization": "Device not-a-token"}, dict(catalog.box.boss.headers)):
        answer = httpx.get(
            catalog.server.url + "/api/sync/catalog",
            headers={k: v for k, v in headers.items() if k.lower() == "authorization"},
            timeout=30,
        )
        assert answer.status_code == 401
        assert answer.json()["code"] == "UNAUTHENTICATED"
