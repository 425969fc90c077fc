"""The handheld page's barcode rules (``web/static/handheld/js/barcodes.js``) against the box's own.

The handheld resolves scans offline, so its JavaScript must read every code exactly as
``hardware.barcodes.interpretations`` does and resolve it exactly as ``products.resolve_ids`` does. Both
run here over the same codes: the module is imported in Debian's chromium from a real demo box (as the
page will import it), and each answer is compared with Python's, every difference listed.

The corpus is seeded, so a failure names codes that fail again on the next run.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from biip.checksums import gs1_standard_check_digit
from biip.gs1_application_identifiers import _GS1_APPLICATION_IDENTIFIERS
from biip.upc import Upc

from appliance.catalog import products
from hardware.barcodes import KINDS, interpretations
from tests.conftest import ServerProcess

MODULE = "/static/handheld/js/barcodes.js"
GS = "\x1d"
AIM = ("]E0", "]E4", "]C1", "]d2", "]Q3", "]e0", "]I1", "]A0", "]X9")
# Python's whitespace (GS and U+0085 among it) and JavaScript's (U+FEFF, which Python keeps).
SPACES = (" ", "\t", "\n", "\r\n", "\x0b", "\x1c", GS, "\x1e", "\x1f", "\x85", "\xa0", "\u2007", "\u3000", "\ufeff")
# Other scripts' digits: Devanagari, Arabic-Indic, fullwidth, Osmanya (beyond U+FFFF), mathematical bold.
FOREIGN_ZEROS = (0x966, 0x660, 0xFF10, 0x104A0, 0x1D7CE)


# -- the corpus -----------------------------------------------------------------------------------------
def with_check(payload: str) -> str:
    return payload + str(gs1_standard_check_digit(payload))


def wrong_check(code: str) -> str:
    return code[:-1] + str((int(code[-1]) + 1 + len(code) % 9) % 10)


def digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


def upce(rng: random.Random) -> str:
    payload = rng.choice("01") + digits(rng, 6)
    return payload + str(Upc.parse(payload).check_digit)


def foreign(text: str, zero: int) -> str:
    """``text``'s ASCII digits written in the script whose zero is ``zero``."""
    return "".join(chr(zero + int(c)) if c.isascii() and c.isdigit() else c for c in text)


def yymmdd(rng: random.Random) -> str:
    return f"{rng.randint(0, 99):02d}{rng.randint(1, 12):02d}{rng.randint(0, 28):02d}"


def plain_codes(rng: random.Random) -> list[str]:
    """Valid and invalid codes of every length and kind, and the 8-digit codes that are two kinds."""
    codes: list[str] = []
    for _ in range(12):
        ean13 = with_check(digits(rng, 12))
        upca = with_check(rng.choice("016789") + digits(rng, 10))
        ean8 = with_check(digits(rng, 7))
        gtin14 = with_check(rng.choice("12345678") + digits(rng, 12))
        short_upce = upce(rng)
        codes += [ean13, wrong_check(ean13), upca, wrong_check(upca), ean8, wrong_check(ean8)]
        codes += [gtin14, wrong_check(gtin14), short_upce, wrong_check(short_upce)]
        codes += ["0" + upca, "00" + upca, "0" + ean13, "000000" + ean8, "0000" + ean8, "00000" + ean8]
        codes += [digits(rng, n) for n in (1, 5, 7, 9, 10, 11, 15, 16, 20)]
    both = 0
    while both < 8:  # an 8-digit code with a right check digit as EAN-8 and as UPC-E
        code = upce(rng)
        if code[-1] == str(gs1_standard_check_digit(code[:-1])):
            codes.append(code)
            both += 1
    codes += ["4006381333931", "04252614", "042100005264", "00000000", "000000000000", "0000000000000"]
    codes += ["00000000000000", "10000007", "01234565", "12345670", "96385074"]
    return codes


def gs1_codes(rng: random.Random) -> list[str]:
    """GS1 element strings, plain with GS separators and in parentheses, good and broken."""
    codes: list[str] = []
    for _ in range(10):
        gtin = with_check(rng.choice("0123456789") + digits(rng, 12))
        lot = "".join(rng.choice("ABCXYZ0123-./") for _ in range(rng.randint(1, 20)))
        date = yymmdd(rng)
        codes += [
            "01" + gtin,
            "01" + wrong_check(gtin),
            f"01{gtin}17{date}10{lot}",
            f"01{gtin}10{lot}{GS}17{date}",
            f"10{lot}{GS}01{gtin}",
            f"01{gtin}{GS}",
            f"{GS}01{gtin}",
            f"01{gtin}{GS}{GS}21{lot}",
            f"01{gtin}21{lot}{GS}3103{digits(rng, 6)}",
            f"02{gtin}37{rng.randint(1, 999)}{GS}01{gtin}",
            f"00{with_check(digits(rng, 17))}01{gtin}",
            f"(01){gtin}",
            f"(01){gtin}(17){date}(10){lot}",
            f"(01) {gtin} (10) {lot}",
            f"(10){lot}(01){gtin}",
            f"(01){wrong_check(gtin)}",
            f"(01){gtin[:-1]}",
            f"(01){gtin}0",
            f"(01){gtin}(99)",
            f"(01){gtin}(9999){lot}",
            f"(01){gtin}junk)(17){date}",
            f"01{gtin}17{date}",
            f"01{gtin}9999{lot}",
            f"01{gtin[:10]}",
            f"{gtin}{gtin}",
            f"01{gtin}17{date[:4]}",
        ]
    gtin = "04006381333931"
    # Dates: month 13, day 32, day 00 (the month's last), 29 February in leap and other years, times.
    for date in ("991332", "250230", "240229", "250229", "000229", "250100", "251300", "251200", "250431"):
        codes += [f"01{gtin}17{date}", f"(01){gtin}(15){date}"]
    for stamp in ("2501010000", "2501012359", "2501012400", "2501019999", "2501019960", "2501012360", "2501011299"):
        codes += [f"01{gtin}7003{stamp}", f"(7003){stamp}(01){gtin}"]
    for stamp in ("25010112", "2501011230", "250101123059", "25010123", "250101235960", "2501011"):
        codes += [f"01{gtin}8008{stamp}", f"(01){gtin}(8008){stamp}"]
    for span in ("250101", "250101251231", "250101259999", "250101250132", "2501012"):
        codes += [f"(01){gtin}(7007){span}", f"01{gtin}7007{span}"]
    codes += [f"(01){gtin}(7011)250101", f"(01){gtin}(7011)2501011230", f"(01){gtin}(7011)2501012460"]
    codes += ["(01)", "()", "(", "(0)", "(01)(10)A", "((01)04006381333931", "(01)04006381333931)"]
    codes += [f"(01){foreign(gtin, 0x966)}", f"(०१){gtin}", "(01)00000000000000", "0100000000000000"]
    codes += [f"01{foreign(gtin, zero)}" for zero in FOREIGN_ZEROS]
    codes += [f"01{gtin}17{foreign('250131', zero)}" for zero in FOREIGN_ZEROS]
    codes += [f"(01){foreign(gtin, zero)}(17){foreign('250230', zero)}" for zero in FOREIGN_ZEROS]
    codes += [f"01{gtin[:2]}{foreign(gtin[2:], 0x660)}", f"0{chr(0x967)}{gtin}", "01" + "\u00b2" * 14]
    return codes


def dressed_codes(rng: random.Random, bases: list[str]) -> list[str]:
    """Codes as scanners and people send them: AIM prefixes, whitespace, GS at the ends."""
    codes: list[str] = []
    for base in rng.sample(bases, 40):
        aim = rng.choice(AIM)
        space = rng.choice(SPACES)
        codes += [aim + base, space + base + space, aim + space + base, space + aim + base, base + space]
        codes += [aim + base + rng.choice(SPACES), f"{aim}{aim}{base}"]
    codes += [*AIM, "]", "]E", "]E0 ", "]]]]", "]😀ab4006381333931", "]E😀4006381333931", "]😀😀😀"]
    return codes


def odd_codes(rng: random.Random) -> list[str]:
    """Not barcodes at all, or barely: SKUs, letters, empty, very long, unicode."""
    codes = ["", " ", "\t\n", GS, GS * 3, "\ufeff", "\x85", "\u3000", "abc", "ABC-123", "sku 1", "İstanbul"]
    codes += ["ß", "😀", "4006381333931😀", "400638133393l", "4006381333931\x00", "4006 3813 3393 1"]
    codes += ["40063813339311", "+4006381333931", "-4006381333931"]
    codes += [foreign("4006381333931", zero) for zero in FOREIGN_ZEROS]
    codes += [foreign("04252614", 0x966), foreign("012345678901234", 0x966)]
    # str.isdigit() but not a decimal digit: superscripts, circled and dingbat digits, Kharoshthi.
    codes += ["\u00b2\u00b34006381333931", "\u2460\u246104006381333931", "\u2776" * 16, "\U00010a40" * 15]
    codes += ["1" * 1000, "01" + "1" * 5000, ("01" + "04006381333931") * 200, "(" * 3000, GS.join(["10A"] * 500)]
    codes += [f"(10){'A' * 20}" * 300, " " * 2000 + "4006381333931" + " " * 2000, "]E0" + "9" * 3000]
    return codes


def fuzz_codes(rng: random.Random, bases: list[str], count: int) -> list[str]:
    """Seeded random strings and random edits of real codes."""
    alphabet = "0123456789" * 4 + "()" * 3 + GS * 2 + " ]ABCabcxyz-./\t\n\u0966\u0967\ufeff😀"
    codes = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(count // 2)]
    for _ in range(count - len(codes)):
        code = list(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(code) + 1)
            edit = rng.randrange(3)
            if edit == 0 or not code:
                code.insert(at, rng.choice(alphabet))
            elif edit == 1:
                del code[min(at, len(code) - 1)]
            else:
                code[min(at, len(code) - 1)] = rng.choice(alphabet)
        codes.append("".join(code))
    return codes


def build_corpus(seed: int = 20261207) -> list[str]:
    rng = random.Random(seed)
    bases = plain_codes(rng) + gs1_codes(rng)
    codes = bases + dressed_codes(rng, bases) + odd_codes(rng) + fuzz_codes(rng, bases, 600)
    return list(dict.fromkeys(codes))


CORPUS = build_corpus()


# -- the box and the browser ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    box = ServerProcess(tmp_path_factory.mktemp("handheld") / "box", "--demo")
    try:
        box.wait_ready()
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="module")
def page(browser: Any, server: ServerProcess) -> Iterator[Any]:
    """A tab on the box, whose origin serves the module as the handheld page will import it."""
    context = browser.new_context()
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(server.url + "/")
    yield tab
    context.close()
    assert not errors, errors


def in_browser(page: Any, body: str, arg: Any) -> Any:
    """Run ``body`` with ``m`` the imported module and ``arg`` the argument."""
    return page.evaluate(f"async (arg) => {{ const m = await import('{MODULE}'); {body} }}", arg)


def differences(codes: list[str], python: list[Any], javascript: list[Any]) -> str:
    diffs = [(code, py, js) for code, py, js in zip(codes, python, javascript, strict=True) if py != js]
    lines = [f"  {code!r}:\n    python     {py!r}\n    javascript {js!r}" for code, py, js in diffs[:25]]
    more = f"\n  … and {len(diffs) - 25} more" if len(diffs) > 25 else ""
    return f"{len(diffs)} of {len(codes)} codes differ:\n" + "\n".join(lines) + more


def assert_same(codes: list[str], python: list[Any], javascript: list[Any]) -> None:
    assert len(javascript) == len(codes)
    assert python == javascript, differences(codes, python, javascript)


# -- interpretations ----------------------------------------------------------------------------------
def test_the_corpus_covers_every_kind_and_failure() -> None:
    """A parity test is only as good as its corpus: every kind, both 8-digit readings, and most codes
    read as nothing, so a module that always answered ``[]`` or always read a GTIN would fail."""
    readings = [interpretations(code) for code in CORPUS]
    kinds = {kind for found in readings for _gtin, kind in found}
    assert kinds == set(KINDS)
    assert any(len(found) == 2 for found in readings)
    assert any(gtin[:1] != "0" and not gtin.isascii() for found in readings for gtin, _kind in found)
    valid = sum(1 for found in readings if found)
    assert len(CORPUS) >= 300 and 150 < valid < len(CORPUS) - 150, (len(CORPUS), valid)


def test_interpretations_match_the_box(page: Any) -> None:
    python = [[list(reading) for reading in interpretations(code)] for code in CORPUS]
    javascript = in_browser(page, "return arg.map((code) => m.interpretations(code));", CORPUS)
    assert_same(CORPUS, python, javascript)


def test_strip_symbology_and_gs1_detection_match_the_box(page: Any) -> None:
    from hardware import barcodes

    python = [
        [barcodes._strip_symbology(code), barcodes._looks_gs1(barcodes._strip_symbology(code.strip()))]
        for code in CORPUS
    ]
    javascript = in_browser(page, "return arg.map((code) => [m.stripSymbology(code), m.looksGs1(code)]);", CORPUS)
    assert_same(CORPUS, python, javascript)
    assert in_browser(page, "return m.GS;", None) == GS


def test_the_gs1_table_is_biips(page: Any) -> None:
    """The module carries biip's table of Application Identifiers; an upgrade of biip that changes it
    must change the module too."""
    table = [[ai, entry.pattern] for ai, entry in _GS1_APPLICATION_IDENTIFIERS.items()]
    assert in_browser(page, "return m.gs1Table();", None) == table


# -- resolve ------------------------------------------------------------------------------------------
def compare_resolve(page: Any, conn: sqlite3.Connection, codes: list[str]) -> list[list[Any]]:
    codes = list(dict.fromkeys(codes))
    found = products.resolve_ids(conn, codes)
    python = [list(found[code]) for code in codes]
    javascript = in_browser(
        page,
        """const index = new m.CatalogIndex(arg.catalog);
        const plain = {byCode: index.byCode, bySku: index.bySku, bySkuFolded: index.bySkuFolded};
        return arg.codes.map((code) => {
          const found = index.resolve(code);
          const again = m.resolve(code, plain);
          if (again.product_id !== found.product_id || again.matched_by !== found.matched_by) throw new Error(code);
          return [found.product_id, found.matched_by];
        });""",
        {"catalog": products.catalog(conn), "codes": codes},  # what GET /api/sync/catalog sends
    )
    assert_same(codes, python, javascript)
    return python


def mutations(rng: random.Random, raw: str, gtin: str, sku: str) -> list[str]:
    """A real code as scanners, people and damaged labels present it."""
    return [
        raw,
        gtin,
        f" {raw} ",
        rng.choice(AIM) + raw,
        f"01{gtin}",
        f"(01){gtin}",
        f"01{gtin}{GS}10LOT{rng.randint(1, 99)}",
        f"(01){gtin}(17)261231",
        wrong_check(raw),
        raw[:-1],
        raw + "0",
        "0" + raw,
        raw.lstrip("0"),
        sku,
        sku.lower(),
        sku.swapcase(),
        f"\t{sku}\n",
        sku + " ",
        sku + "x",
        sku.replace("-", ""),
        foreign(sku, 0x966),
        rng.choice(AIM) + sku,
    ]


def test_resolve_matches_the_box_on_the_demo_store(page: Any, server: ServerProcess) -> None:
    rng = random.Random(7)
    with closing(sqlite3.connect(server.data_dir / "store.db")) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT c.raw, c.code, c.kind, p.sku FROM product_codes c JOIN products p USING (product_id)"
            " ORDER BY c.code"
        ).fetchall()
        skus_alone = [sku for (sku,) in conn.execute("SELECT sku FROM products ORDER BY sku")]
        assert len(rows) > 1000 and {kind for _raw, _code, kind, _sku in rows} == set(KINDS)
        codes: list[str] = []
        for raw, code, _kind, sku in rng.sample(rows, 300):
            codes += mutations(rng, raw, code, sku)
        codes += rng.sample(skus_alone, 100) + [sku.lower() for sku in rng.sample(skus_alone, 100)]
        codes += rng.sample(CORPUS, 300)
        answers = compare_resolve(page, conn, codes)
    matched = {by for _pid, by in answers}
    assert {"sku", "unmatched", *KINDS} <= matched, matched


def test_resolve_matches_the_box_on_ambiguity_and_case(page: Any, server: ServerProcess) -> None:
    """What the demo store never holds: SKUs that differ only in case (SQLite's NOCASE folds ASCII
    only), a SKU that is another product's barcode, an 8-digit code whose two readings are two
    products, and a code left pointing at no product."""
    # An 8-digit code right both as EAN-8 and as UPC-E, whose two readings are two GTINs.
    both = next(
        code for code in (with_check(f"0{n:06d}") for n in range(123456, 10**6)) if len(interpretations(code)) == 2
    )
    ean8_gtin, upce_gtin = (gtin for gtin, _kind in interpretations(both))
    product_rows = [
        ("p1", "ABC-1"),
        ("p2", "abc-1"),
        ("p3", "Abc-1"),
        ("p4", "ÄBC-1"),
        ("p5", "äbc-1"),
        ("p6", "4006381333931"),
        ("p7", "SKU-7"),
        ("p8", "SKU-8"),
        ("p9", "straße"),
        ("p10", "STRASSE"),
        ("p11", "x\U0001f600"),
        ("p12", "X\ufb01"),
        ("p13", " spaced "),
        ("p14", "ÖL-9"),  # "öl-9" finds nothing: only ASCII folds
    ]
    code_rows = [
        ("04006381333931", "p7"),
        (ean8_gtin, "p7"),
        (upce_gtin, "p8"),
        ("00042100005264", "p1"),
        ("00000000000017", "gone"),
    ]
    with closing(sqlite3.connect(server.data_dir / "store.db")) as source, closing(sqlite3.connect(":memory:")) as conn:
        conn.row_factory = sqlite3.Row
        for (sql,) in source.execute("SELECT sql FROM sqlite_master WHERE name IN ('products', 'product_codes')"):
            conn.execute(sql)
        conn.executemany(
            "INSERT INTO products (product_id, sku, name) VALUES (?, ?, ?)", [(*r, r[1]) for r in product_rows]
        )
        conn.executemany(
            "INSERT INTO product_codes (code, product_id, kind, raw) VALUES (?, ?, '', ?)",
            [(*r, r[0]) for r in code_rows],
        )
        codes = [sku for _pid, sku in product_rows]
        codes += [variant(sku) for _pid, sku in product_rows for variant in (str.lower, str.upper, str.swapcase)]
        codes += [both, f"]E0{both}", f"0000{both}", "04252614", "042100005264", "0000017", "00000000000017"]
        codes += ["4006381333931", " 4006381333931", "04006381333931", "abc-2", "SPACED", "spaced", "x\U0001f600"]
        answers = compare_resolve(page, conn, codes)
    matched = {by for _pid, by in answers}
    assert {"ambiguous", "sku", "unmatched", "ean13", "upce"} <= matched, matched
