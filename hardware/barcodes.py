"""Barcodes as scanned or typed, normalised to GTIN-14.

Every retail code (EAN-13, UPC-A, UPC-E, EAN-8, GTIN-14, or a GS1 element string carrying AI 01) is
stored and looked up as a 14-digit GTIN, so one product is found whichever form a scanner sends. The
check-digit rules are the maintained ``biip`` library's, not ours.

An 8-digit code cannot say whether it is an EAN-8 or a UPC-E (both are 8 digits and a keyboard-wedge
scanner rarely sends the symbology), and the two readings give different GTINs; so a code yields
*every* valid reading and the caller decides what an ambiguity means.
"""

from __future__ import annotations

from contextlib import suppress

from biip import ParseError
from biip.checksums import gs1_standard_check_digit
from biip.gs1_messages import GS1Message
from biip.gtin import Gtin
from biip.upc import Upc

KINDS = ("ean13", "upca", "upce", "ean8", "gtin14")
_KIND_BY_LENGTH = {12: "upca", 13: "ean13", 14: "gtin14"}
_GS1_SEPARATOR = "\x1d"  # what scanners send for FNC1 between variable-length fields
_NO_PRODUCT = "0" * 14

Reading = tuple[str, str]  # (gtin14, kind)


class BarcodeError(ValueError):
    """A code is not a valid barcode; the message says why in words a person at the shelf can act on."""


def interpretations(raw: str) -> list[Reading]:
    """Every valid ``(gtin14, kind)`` reading of ``raw``; ``[]`` when it is not a valid barcode.

    The lenient form for lookups: a code that is not a barcode may still be a SKU.
    """
    try:
        return check(raw)
    except BarcodeError:
        return []


def check(raw: str) -> list[Reading]:
    """Like ``interpretations`` but strict: raise ``BarcodeError`` saying what is wrong (for imports)."""
    code = _strip_symbology(raw.strip())
    if not code:
        raise BarcodeError("the barcode is empty")
    if _digits(code) and len(code) in (8, 12, 13, 14):
        readings = _eight_digit(code) if len(code) == 8 else [_gtin(code, _KIND_BY_LENGTH[len(code)])]
    elif _looks_gs1(code):
        readings = [_gs1_gtin(code)]
    elif _digits(code):
        raise BarcodeError(_wrong_length(code))
    else:
        raise BarcodeError("not a barcode: expected 8, 12, 13 or 14 digits or a GS1 string with AI (01)")
    if any(gtin == _NO_PRODUCT for gtin, _kind in readings):
        raise BarcodeError("an all-zero code is not a product's barcode")
    return readings


def _digits(code: str) -> bool:
    # str.isdigit alone accepts other scripts' digits, which no scanner sends and biip would misread.
    return code.isascii() and code.isdigit()


def _looks_gs1(code: str) -> bool:
    return code.startswith("(") or _GS1_SEPARATOR in code or (len(code) > 14 and code[:2].isdigit())


def _wrong_length(code: str) -> str:
    return f"a barcode has 8, 12, 13 or 14 digits, this one has {len(code)}"


def _strip_symbology(code: str) -> str:
    """Drop an AIM symbology identifier (``]E0``, ``]C1``, …) that scanners may be set to prefix."""
    return code[3:] if code.startswith("]") and len(code) > 3 else code


def _gtin(code: str, kind: str) -> Reading:
    """A 12-, 13- or 14-digit code: valid when its GS1 check digit is right, and then its GTIN-14 is
    the code padded with zeros on the left (what biip's ``as_gtin_14`` gives, a fifth of the cost:
    this runs for every code a box sees for the first time)."""
    expected = gs1_standard_check_digit(code[:-1])
    if int(code[-1]) != expected:
        raise BarcodeError(_wrong_check_digit(expected))
    return code.zfill(14), kind


def _eight_digit(code: str) -> list[Reading]:
    readings: list[Reading] = []
    with suppress(ParseError):
        readings.append((Gtin.parse(code).as_gtin_14(), "ean8"))
    try:
        upce = Upc.parse(code).as_gtin_14()
    except ParseError:
        pass
    else:
        if all(gtin != upce for gtin, _kind in readings):
            readings.append((upce, "upce"))
    if not readings:
        raise BarcodeError(_eight_digit_error(code))
    return readings


def _eight_digit_error(code: str) -> str:
    ean8 = gs1_standard_check_digit(code[:-1])
    if code[0] not in "01":  # only number systems 0 and 1 have a UPC-E reading
        return _wrong_check_digit(ean8)
    # Seven digits of a UPC-E leave biip to compute the check digit the eighth should have been.
    upce = Upc.parse(code[:-1]).check_digit
    if upce == ean8:
        return _wrong_check_digit(ean8)
    return f"check digit is wrong: expected {ean8} (as EAN-8) or {upce} (as UPC-E)"


def _wrong_check_digit(expected: int) -> str:
    return f"check digit is wrong: expected {expected}"


def _gs1_gtin(code: str) -> Reading:
    """The GTIN in AI (01) of a GS1 element string, plain (``01…``) or human-readable (``(01)…``)."""
    try:
        message = GS1Message.parse_hri(code) if code.startswith("(") else GS1Message.parse(code)
    except ParseError as exc:
        reason = _wrong_length(code) if _digits(code) else f"not a readable GS1 string: {exc}"
        raise BarcodeError(reason) from None
    element = message.element_strings.get(ai="01")
    if element is None:
        raise BarcodeError("the GS1 string carries no GTIN (AI 01)")
    try:
        return Gtin.parse(element.value).as_gtin_14(), "gtin14"
    except ParseError:
        expected = gs1_standard_check_digit(element.value[:-1])
        raise BarcodeError(f"check digit of the GTIN in AI (01) is wrong: expected {expected}") from None


__all__ = ["KINDS", "BarcodeError", "Reading", "check", "interpretations"]
