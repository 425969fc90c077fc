"""A made-up but realistic product master for the demo store, benchmarks and tests.

``write_demo_products`` writes the same CSV for the same ``count`` and ``seed`` every time: products
across a store's usual categories, each with one or two barcodes in every form a store meets (EAN-13,
UPC-A, UPC-E, EAN-8, GTIN-14) and a few with only a SKU. Every check digit is biip's, and no two
products share any GTIN-14 reading (both readings of an 8-digit code count), so the file imports clean.

Tests that need "one product per barcode form" call ``examples(path)``: it reads the file back and
returns ``{kind: (raw_code, sku)}`` for each kind, plus ``"gs1"`` (a GS1 element string carrying an
EAN-13 product's GTIN in AI 01) and ``"sku"`` (a product with no barcode, looked up by SKU).

The first EAN-13 stationery product carries 4006381333931, the code the README's example looks up.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path

from biip.checksums import gs1_standard_check_digit
from biip.upc import Upc

from appliance.catalog.product_import import COLUMNS
from hardware.barcodes import BarcodeError, check, interpretations

FORMS = ("ean13", "upca", "upce", "ean8", "gtin14")
README_CODE = "4006381333931"

# category -> (SKU prefix, weight, MRP range in whole currency units, {subcategory: (items, sizes)})
_Subcategories = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
CATEGORIES: dict[str, tuple[str, int, tuple[int, int], _Subcategories]] = {
    "Grocery": (
        "GRO",
        30,
        (10, 900),
        {
            "Staples": (
                ("Basmati Rice", "Toor Dal", "Wheat Atta", "Sugar", "Iodised Salt"),
                ("1 kg", "5 kg"),
            ),
            "Snacks": (
                ("Potato Chips", "Salted Peanuts", "Masala Mixture", "Cream Biscuits"),
                ("75 g", "200 g"),
            ),
            "Beverages": (("Green Tea", "Filter Coffee", "Mango Drink", "Soda"), ("250 ml", "1 l", "100 g")),
            "Spices": (
                ("Turmeric Powder", "Red Chilli Powder", "Garam Masala", "Cumin Seeds"),
                ("50 g", "100 g"),
            ),
        },
    ),
    "Personal Care": (
        "PCR",
        15,
        (25, 700),
        {
            "Bath": (("Sandal Soap", "Body Wash", "Loofah"), ("75 g", "125 g", "250 ml")),
            "Hair": (("Herbal Shampoo", "Coconut Hair Oil", "Conditioner"), ("180 ml", "340 ml")),
            "Oral": (("Toothpaste", "Toothbrush Soft", "Mouthwash"), ("100 g", "pack of 2", "250 ml")),
        },
    ),
    "Household": (
        "HHD",
        15,
        (20, 1500),
        {
            "Cleaning": (
                ("Floor Cleaner", "Dishwash Liquid", "Glass Cleaner", "Scrub Pad"),
                ("500 ml", "1 l"),
            ),
            "Laundry": (("Detergent Powder", "Fabric Conditioner", "Bar Soap"), ("1 kg", "2 kg", "800 ml")),
            "Kitchen": (("Steel Tumbler", "Non-stick Tawa", "Storage Jar"), ("small", "medium", "large")),
        },
    ),
    "Apparel": (
        "APP",
        15,
        (199, 2999),
        {
            "Men": (("Cotton T-Shirt", "Formal Shirt", "Denim Jeans"), ("S", "M", "L", "XL")),
            "Women": (("Kurti", "Leggings", "Cotton Saree"), ("S", "M", "L", "free size")),
            "Kids": (("School Socks", "Printed Shorts", "Frock"), ("2-3 y", "4-5 y", "6-7 y")),
        },
    ),
    "Electronics": (
        "ELC",
        10,
        (99, 24999),
        {
            "Accessories": (("USB-C Cable", "Wall Charger", "Power Bank"), ("1 m", "20 W", "10000 mAh")),
            "Audio": (("Wired Earphones", "Bluetooth Speaker", "Neckband"), ("black", "blue")),
            "Lighting": (("LED Bulb", "LED Tube Light", "Torch"), ("9 W", "20 W", "rechargeable")),
        },
    ),
    "Stationery": (
        "STN",
        15,
        (5, 600),
        {
            "Writing": (("Ball Pen", "Gel Pen", "HB Pencil", "Highlighter"), ("blue", "black", "pack of 10")),
            "Paper": (("Ruled Notebook", "A4 Copier Paper", "Sticky Notes"), ("172 pages", "500 sheets")),
            "Office": (("Stapler", "Glue Stick", "Scissors"), ("small", "medium")),
        },
    ),
}
BRANDS = ("Sunleaf", "Kaveri", "Greenfield", "Nilgiri", "BrightHome", "Monsoon", "Saffron", "Lotus", "Coral")


def write_demo_products(path: Path, count: int = 5000, seed: int = 7) -> Path:
    """Write the demo product master CSV to ``path`` and return ``path``."""
    rng = random.Random(seed)
    used: set[str] = set()
    path.parent.mkdir(parents=True, exist_ok=True)
    readme_code_pending = _claim(README_CODE, used)  # reserved first, so no random code takes it
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for index in range(count):
            category = rng.choices(list(CATEGORIES), weights=[c[1] for c in CATEGORIES.values()])[0]
            prefix, _weight, (low, high), subcategories = CATEGORIES[category]
            subcategory = rng.choice(list(subcategories))
            items, sizes = subcategories[subcategory]
            name = f"{rng.choice(BRANDS)} {rng.choice(items)} {rng.choice(sizes)}"
            forms = _forms_of(index)
            codes = [_unique_code(rng, form, used) for form in forms]
            if readme_code_pending and category == "Stationery" and forms[:1] == ("ean13",):
                codes[0], readme_code_pending = README_CODE, False
            uom = "KG" if subcategory == "Staples" and index % 11 == 0 else "EA"
            writer.writerow(
                [
                    f"{prefix}-{index + 1:05d}",
                    "|".join(codes),
                    name,
                    category,
                    subcategory,
                    uom,
                    _money(rng.randint(low * 100, high * 100) // 50 * 50 + rng.choice((0, 0, 49))),
                    rng.randint(0, 120),
                ]
            )
    return path


def _forms_of(index: int) -> tuple[str, ...]:
    """Round-robin over the forms so any file of five or more products holds each one."""
    if index % 23 == 22:
        return ()  # known only by its SKU, like loose or house-brand goods
    first = FORMS[index % len(FORMS)]
    if index % 3:
        return (first,)
    return (first, FORMS[(index + 2) % len(FORMS)])


def _money(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


def _with_check_digit(payload: str) -> str:
    return f"{payload}{gs1_standard_check_digit(payload)}"


def _upce(payload: str) -> str:
    # Given the seven digits without a check digit, biip expands to UPC-A and computes it.
    return f"{payload}{Upc.parse(payload).check_digit}"


_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "ean13": lambda rng: _with_check_digit("890" + _digits(rng, 9)),  # 890: GS1 India
    "upca": lambda rng: _with_check_digit(rng.choice("01678") + _digits(rng, 10)),  # no RCN/coupons
    "upce": lambda rng: _upce("0" + _digits(rng, 6)),
    "ean8": lambda rng: _with_check_digit(rng.choice("3456789") + _digits(rng, 6)),  # no RCN (0, 2)
    "gtin14": lambda rng: _with_check_digit(rng.choice("12345678") + "890" + _digits(rng, 9)),
}


def _unique_code(rng: random.Random, form: str, used: set[str]) -> str:
    while True:
        code = _MAKERS[form](rng)
        if _claim(code, used):
            return code


def _claim(code: str, used: set[str]) -> bool:
    """Reserve every GTIN-14 reading of ``code``; False if the code is invalid or any reading is taken."""
    try:
        gtins = {gtin for gtin, _kind in check(code)}
    except BarcodeError:
        return False
    if gtins & used:
        return False
    used |= gtins
    return True


def examples(path: Path) -> dict[str, tuple[str, str]]:
    """One ``(code, sku)`` per barcode kind in a demo file, plus ``"gs1"`` and ``"sku"`` (see above).

    Only codes with a single reading are picked, so a test may also assert the kind it matched by.
    """
    found: dict[str, tuple[str, str]] = {}
    with path.open(encoding="utf-8", newline="") as source:
        for row in csv.DictReader(source):
            codes = row["barcodes"].split("|") if row["barcodes"] else []
            if not codes:
                found.setdefault("sku", (row["sku"], row["sku"]))
            for raw in codes:
                readings = interpretations(raw)
                if len(readings) == 1:
                    found.setdefault(readings[0][1], (raw, row["sku"]))
                    if readings[0][1] == "ean13":
                        found.setdefault("gs1", (f"01{readings[0][0]}21DEMO1", row["sku"]))
    return found
