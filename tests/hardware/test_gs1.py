"""GS1 element strings as scanners send them, to an item's fields; invalid ones refused with a reason."""

from __future__ import annotations

import pytest

from hardware.gs1 import GS1Error, ItemFields, item_fields

NOTHING: ItemFields = {
    "gtin": None,
    "batch": None,
    "expiry": None,
    "production_date": None,
    "best_before": None,
    "serial": None,
    "symbology": None,
}


def fields(**given: str | None) -> ItemFields:
    return {**NOTHING, **given}  # type: ignore[typeddict-item]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # GS1 DataMatrix (pharmacy pack): AIM prefix, the variable-length batch ended by GS.
        (
            "]d2010400638133393110ABC123\x1d17260101",
            fields(gtin="04006381333931", batch="ABC123", expiry="2026-01-01", symbology="]d2"),
        ),
        # The same, as printed under the symbol (HRI), in another order and with a serial.
        (
            "(01)04006381333931(17)260101(10)ABC123(21)SN42",
            fields(gtin="04006381333931", batch="ABC123", expiry="2026-01-01", serial="SN42"),
        ),
        ("(01) 04006381333931 (17) 260101", fields(gtin="04006381333931", expiry="2026-01-01")),
        # GS1-128 on a carton: production date and best before, serial last (no GS needed at the end).
        (
            "]C101040063813339311125031515250915\x1d21A-7/B",
            fields(
                gtin="04006381333931",
                production_date="2025-03-15",
                best_before="2025-09-15",
                serial="A-7/B",
                symbology="]C1",
            ),
        ),
        # Without a prefix: FNC1 in first position sent as a leading GS, a GS after every field.
        (
            "\x1d0104006381333931\x1d10L1\x1d21S1\x1d",
            fields(gtin="04006381333931", batch="L1", serial="S1"),
        ),
        ("01040063813339311726013110B", fields(gtin="04006381333931", expiry="2026-01-31", batch="B")),
        ("]Q3010400638133393121QR1", fields(gtin="04006381333931", serial="QR1", symbology="]Q3")),
        ("]e00104006381333931", fields(gtin="04006381333931", symbology="]e0")),
        # A GTIN-8 or GTIN-12 in AI 01 is zero-padded to 14 digits by GS1 itself.
        ("]d20100000096385074", fields(gtin="00000096385074", symbology="]d2")),
        # Valid GS1 without AI 01 (an SSCC on a pallet): no item fields, not an error.
        ("]C100106141411234567897", fields(symbology="]C1")),
        ("]d21012\x1d1012", fields(batch="12", symbology="]d2")),  # the same AI twice, same value: allowed
        ("]d2010400638133393117260101\r\n", fields(gtin="04006381333931", expiry="2026-01-01", symbology="]d2")),
    ],
)
def test_element_strings_give_the_item_fields(raw: str, expected: ItemFields) -> None:
    assert item_fields(raw) == expected


@pytest.mark.parametrize(
    ("yymmdd", "date"),
    [
        ("260100", "2026-01-31"),
        ("260200", "2026-02-28"),
        ("280200", "2028-02-29"),  # a leap year
        ("261100", "2026-11-30"),
    ],
)
def test_day_00_in_an_expiry_is_the_end_of_the_month(yymmdd: str, date: str) -> None:
    assert item_fields(f"]d20104006381333931\x1d17{yymmdd}\x1d10X")["expiry"] == date
    assert item_fields(f"(01)04006381333931(15){yymmdd}")["best_before"] == date


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5901234123457", fields(gtin="05901234123457")),  # EAN-13
        ("]E05901234123457", fields(gtin="05901234123457", symbology="]E0")),
        ("012345678905", fields(gtin="00012345678905")),  # UPC-A
        ("]E0012345678905", fields(gtin="00012345678905", symbology="]E0")),
        ("]E496385074", fields(gtin="00000096385074", symbology="]E4")),  # EAN-8
        ("01234565", NOTHING),  # EAN-8 or UPC-E: two products, so no GTIN from the code alone
        ("]E401234565", fields(gtin="00000001234565", symbology="]E4")),  # …unless the symbology says
        ("]E001234565", fields(gtin="00012345000065", symbology="]E0")),
        ("SKU-4471/B", NOTHING),  # Code 128 text: a shop's own label, maybe a SKU
        ("]C0SKU-4471", fields(symbology="]C0")),
        ("5901234123458", NOTHING),  # a wrong check digit in a plain code is just not a GTIN
        ("1234567890123456", NOTHING),  # 16 digits not starting 01: not claimed as GS1
        ("]A0HELLO", fields(symbology="]A0")),  # Code 39
    ],
)
def test_a_plain_code_gives_its_gtin_or_nothing(raw: str, expected: ItemFields) -> None:
    assert item_fields(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("]d2010400638133393217260101", r"GTIN in AI \(01\).*check digit is wrong: expected 1"),
        ("(01)04006381333932(17)260101", r"GTIN in AI \(01\).*check digit is wrong: expected 1"),
        ("0104006381333932", r"check digit is wrong"),  # unprefixed, but 01 and 14 digits: GS1
        ("]d20100000000000000", "all-zero"),
        ("]d2010400638133393117261301", r"AI \(17\)"),  # month 13
        ("]d2010400638133393117260230", r"AI \(17\) date"),  # 30 February
        ("]d2010400638133393111250431", r"AI \(11\) date"),  # 31 April
        ("]d21012\x1d1013", r"AI \(10\) appears 2 times with different values"),
        ("]C100106141411234567890", r"AI \(00\).*SSCC check digit"),
        ("(10)ABC 123", "space"),  # biip would read ABC123: a batch rewritten
        ("(01)04006381333931(10)AB\x1dC", "space or control"),
        ("]d2", "empty"),
        ("]d2ABC", "not a valid GS1 string"),
        ("]C1010400638133393199", "not a valid GS1 string"),  # AI 99 needs a value
        ("(01)04006381333931(10)", r"AI \(10\) has no value"),  # biip would drop the batch
        ("(01)04006381333931(10)(17)260101", r"AI \(10\) has no value"),
        ("(01)04006381333931)(10)X", "not a valid GS1 string"),
        ("(01)04006381333931(1O)X", r"expected \(AI\)value"),  # a letter O typed for a zero
    ],
)
def test_an_invalid_gs1_string_is_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(GS1Error, match=reason) as refused:
        item_fields(raw)
    assert refused.value.reason == str(refused.value)
    assert refused.value.symbology == (raw[:3] if raw.startswith("]") else None)
