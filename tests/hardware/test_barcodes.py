"""Barcode normalisation: every form to GTIN-14, both readings of 8 digits, wrong check digits refused."""

from __future__ import annotations

import pytest
from biip import ParseError
from biip.checksums import gs1_standard_check_digit
from biip.gtin import Gtin
from hypothesis import given
from hypothesis import strategies as st

from hardware.barcodes import BarcodeError, check, interpretations


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5901234123457", [("05901234123457", "ean13")]),
        ("012345678905", [("00012345678905", "upca")]),
        ("96385074", [("00000096385074", "ean8")]),  # number system 9: no UPC-E reading
        ("04252614", [("00042100005264", "upce")]),  # EAN-8 check digit fails: UPC-E only
        ("10012345678902", [("10012345678902", "gtin14")]),
        ("0110012345678902", [("10012345678902", "gtin14")]),
        ("(01)10012345678902(21)ABC", [("10012345678902", "gtin14")]),
        ("0110012345678902\x1d21ABC", [("10012345678902", "gtin14")]),  # FNC1 as group separator
        ("01100123456789021720123110LOT7", [("10012345678902", "gtin14")]),
        ("]E05901234123457", [("05901234123457", "ean13")]),  # AIM symbology prefix
        ("  5901234123457\n", [("05901234123457", "ean13")]),
    ],
)
def test_each_form_normalises_to_gtin14(raw: str, expected: list[tuple[str, str]]) -> None:
    assert interpretations(raw) == expected
    assert check(raw) == expected


def test_eight_digits_valid_both_ways_give_both_readings() -> None:
    assert interpretations("01234565") == [("00000001234565", "ean8"), ("00012345000065", "upce")]


def test_one_item_in_every_spelling_is_one_gtin() -> None:
    upca = interpretations("012345000065")
    assert upca == [("00012345000065", "upca")]
    assert interpretations("0012345000065")[0][0] == upca[0][0]  # the EAN-13 spelling
    assert interpretations("00012345000065")[0][0] == upca[0][0]  # the GTIN-14 spelling
    assert ("00012345000065", "upce") in interpretations("01234565")  # the UPC-E it compresses to


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("5901234123458", "check digit is wrong: expected 7"),
        ("012345678904", "check digit is wrong: expected 5"),
        ("96385075", "check digit is wrong: expected 4"),
        ("10012345678903", "check digit is wrong: expected 2"),
        ("01234566", "check digit is wrong: expected 5"),  # both readings expect 5 here
        ("04252615", "check digit is wrong: expected 0 (as EAN-8) or 4 (as UPC-E)"),
        ("0110012345678903", "check digit of the GTIN in AI (01) is wrong: expected 2"),
        ("(01)10012345678903", "check digit of the GTIN in AI (01) is wrong: expected 2"),
    ],
)
def test_wrong_check_digit_is_refused_with_the_expected_digit(raw: str, message: str) -> None:
    assert interpretations(raw) == []
    with pytest.raises(BarcodeError) as caught:
        check(raw)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "the barcode is empty"),
        ("   ", "the barcode is empty"),
        ("1234567890", "a barcode has 8, 12, 13 or 14 digits, this one has 10"),
        ("123456789012345678", "a barcode has 8, 12, 13 or 14 digits, this one has 18"),
        ("SKU-0001", "not a barcode"),
        ("(21)ABC", "the GS1 string carries no GTIN (AI 01)"),
        ("00000000", "an all-zero code is not a product's barcode"),
        ("٠١٢٣٤٥٦٥", "not a barcode"),  # digits of another script are not what a scanner sends
    ],
)
def test_what_is_not_a_barcode_says_why(raw: str, message: str) -> None:
    assert interpretations(raw) == []
    with pytest.raises(BarcodeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check(raw)


def test_barcode_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="check digit"):
        check("5901234123458")


@given(st.sampled_from([7, 11, 12, 13]), st.data())
def test_any_payload_with_its_check_digit_is_read_and_any_other_digit_is_not(
    payload_length: int, data: st.DataObject
) -> None:
    payload = data.draw(st.text("0123456789", min_size=payload_length, max_size=payload_length))
    good = gs1_standard_check_digit(payload)
    readings = interpretations(f"{payload}{good}")
    if payload.strip("0"):
        assert readings and all(len(gtin) == 14 for gtin, _kind in readings)
    wrong = data.draw(st.integers(0, 9).filter(lambda digit: digit != good))
    bad = interpretations(f"{payload}{wrong}")
    assert all(kind == "upce" for _gtin, kind in bad)  # only the other 8-digit reading may survive


@given(st.sampled_from((12, 13, 14)).flatmap(lambda n: st.text("0123456789", min_size=n - 1, max_size=n - 1)))
def test_long_codes_read_exactly_as_biip_reads_them(body: str) -> None:
    """12- to 14-digit codes are checked without biip (they are the common case on the hot path); the
    reading must stay the one biip gives, and a wrong check digit must stay refused."""
    code = body + str(gs1_standard_check_digit(body))
    if set(code) == {"0"}:
        assert interpretations(code) == []
        return
    try:
        expected = Gtin.parse(code).as_gtin_14()
    except ParseError:
        expected = None
    got = interpretations(code)
    assert (got[0][0] if got else None) == expected
    wrong = body + str((int(code[-1]) + 1) % 10)
    assert interpretations(wrong) == []
