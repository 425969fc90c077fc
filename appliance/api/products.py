"""The product master: import a file, list and look up products, resolve a scanned code.

Whether ``expected_qty`` appears is decided here from the caller's role, once per request: verifiers
count blind, so their answers never carry the key at all.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import Parameter, RawBody

from appliance.api.deps import SQL_INT_MAX
from appliance.auth.people import User
from appliance.auth.permissions import allowed
from appliance.box import Box
from appliance.catalog import product_import, products
from appliance.errors import NotFound

# A dry run answers 200 with the preview, beside the real import's 201.
DRY_RUN = {200: ResponseSpec(data_container=dict[str, Any], description="dry_run: the preview, nothing written")}


def _sees_expected(user: User) -> bool:
    return allowed("products.read_expected", user.role)


@post(
    "/api/products/import",
    opt={"permission": "products.import"},
    sync_to_thread=True,
    status_code=201,
    responses=DRY_RUN,
)
def import_products(body: RawBody, box: Box, filename: str = "", dry_run: bool = False) -> Response[dict[str, Any]]:
    """The request body is the CSV or XLSX file itself; ``filename`` only helps tell which it is.

    A dry run answers 200 with the preview even when the file has errors (showing them is its job);
    a real import answers 201, or 422 ``IMPORT_INVALID`` with every error and nothing written.
    """
    plan = product_import.parse_file(body, filename)
    if dry_run:
        return Response(product_import.preview(box.db.read(), plan), status_code=200)
    return Response(box.db.write(lambda conn: product_import.commit(conn, box.log, plan)), status_code=201)


@get("/api/products", opt={"permission": "products.read"}, sync_to_thread=True)
def list_products(
    box: Box,
    user: User,
    q: str | None = None,
    category: str | None = None,
    limit: Annotated[int, Parameter(ge=1, le=500)] = 50,
    offset: Annotated[int, Parameter(ge=0, le=SQL_INT_MAX)] = 0,
) -> dict[str, Any]:
    return products.search(box.db.read(), q, limit, offset, _sees_expected(user), category)


# Declared before ``/api/products/{sku}`` so that a reader sees which one "resolve" goes to.
@get("/api/products/resolve", opt={"permission": "products.read"}, sync_to_thread=True)
def resolve(box: Box, user: User, code: str) -> dict[str, Any]:
    found = products.resolve(box.db.read(), code, with_expected=_sees_expected(user))
    if found is None:
        raise NotFound(
            f"no product has the barcode or SKU {code.strip()!r}", code="UNKNOWN_CODE", details={"code": code}
        )
    return found


@get("/api/products/{sku:str}", opt={"permission": "products.read"}, sync_to_thread=True)
def product(box: Box, user: User, sku: str) -> dict[str, Any]:
    found = products.get(box.db.read(), sku, with_expected=_sees_expected(user))
    if found is None:
        raise NotFound(f"no product has the SKU {sku!r}", code="PRODUCT_NOT_FOUND", details={"sku": sku})
    return found


ROUTES: list[HTTPRouteHandler] = [import_products, list_products, resolve, product]
