"""A scanned code to the item fields it carries: GTIN, batch, dates and serial.

A GS1 DataMatrix on a pharmacy pack or a GS1-128 on a carton carries more than the product: the batch,
the expiry and the serial are what a count of perishable or recalled stock is for, so they go into the
item's fields instead of being read off the pack by hand. The parsing is the maintained ``biip``
library's; this module decides what counts as GS1, what a plain code gives, and refuses rather than
guesses: a string that claims to be GS1 and is not valid raises ``GS1Error`` saying why, because a
batch or expiry silently "repaired" would be recorded as if the pack said it.

Dates are GS1's ``YYMMDD`` with the century chosen by GS1's sliding window (biip's), and a day of
``00`` is read as the last day of the month: the meaning GS1 gives it for an expiry (AI 17) and a best
before date (AI 15). For a production date (AI 11) GS1 says only that ``00`` means "no day given";
biip reads it the same way, so such a production date is the month's last day.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple, TypedDict

from biip import ParseError
from biip.gs1_element_strings import GS1ElementString
from biip.gs1_messages import GS1Message
from biip.symbology import GS1Symbology, SymbologyIdentifier

from hardware.barcodes import BarcodeError, check, interpretations

_GS = "\x1d"  # FNC1 between fields, as scanners send it
_GS1_SYMBOLOGIES = GS1Symbology.with_gs1_messages()  # ]C1 ]e0 ]d2 ]Q3 ]J1: the symbol says "GS1"
# Unprefixed, a string is taken for GS1 only when nothing else could mean it: the HRI form, a GS, or
# AI 01 and its 14 digits at the start. Anything else may be a shop's own Code 128 label.
_UNPREFIXED_GS1 = re.compile(r"\(\d{2,4}\)|01\d{14}")
# In the HRI form a space (or a GS) next to a parenthesis is layout ("(01) 0400… (17) 2601…").
_HRI_LAYOUT = re.compile(r"[ \t\x1d]*([()])[ \t\x1d]*")
# biip reads the HRI form with a search that skips what it does not match, an "(10)" without a value
# included; the whole string must be fields for it to be read at all.
_HRI_FIELDS = re.compile(r"(?:\(\d+\)[^(]+)+")
_HRI_EMPTY_FIELD = re.compile(r"\((\d+)\)(?=\(|$)")


class ItemFields(TypedDict):
    """What a scan says about the item; ``None`` where the code does not say."""

    gtin: str | None  # 14 digits
    batch: str | None  # AI 10
    expiry: str | None  # AI 17, YYYY-MM-DD
    production_date: str | None  # AI 11, YYYY-MM-DD
    best_before: str | None  # AI 15, YYYY-MM-DD
    serial: str | None  # AI 21
    symbology: str | None  # the AIM symbology identifier the scanner prefixed, e.g. "]d2"


class GS1Error(ValueError):
    """A code that is GS1 by its symbology or its form is not a valid GS1 element string.

    The message says what is wrong in words a supervisor can act on; the raw code is kept by the caller.
    """

    def __init__(self, reason: str, *, symbology: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.symbology = symbology


def item_fields(raw: str) -> ItemFields:
    """The item fields in one scanned code, as a scanner sends it (AIM prefix and GS kept).

    A plain code (EAN-13, UPC-A, a Code 128 text) is never an error: it gives its GTIN when it has
    exactly one reading and nothing otherwise, since a text that is not a barcode may still be a SKU.
    Raises ``GS1Error`` for a GS1 string that is not valid.
    """
    code = raw.strip("\r\n")
    symbology = _symbology(code)
    if symbology is not None:
        code = code[len(symbology) :]
    aim = str(symbology) if symbology is not None else None
    if symbology is not None and symbology.gs1_symbology in _GS1_SYMBOLOGIES:
        return _gs1_fields(code, aim)
    if symbology is None and _looks_gs1(code):
        return _gs1_fields(code, aim)
    return _plain_fields(code, symbology, aim)


class Scanned(NamedTuple):
    """A code read by a scanner, as the box counts it."""

    code: str  # what the scan is counted under
    fields: ItemFields
    error: str | None  # why a code that claims to be GS1 gave no fields (it is counted as read)


def scanned(raw: str) -> Scanned:
    """What a code read by a scanner on the box is counted under, and what it says about the item.

    A GS1 element string is counted under its GTIN: its batch, dates and serial are the item's fields,
    not part of what is counted, or every serialised pack would be a line of its own and a supervisor
    would map each one. Any other code is counted as read, less the AIM prefix the scanner put before
    it. A GS1 string that is not valid is counted as read too (an unmatched code a supervisor sees),
    with the reason, never repaired.
    """
    code = raw.strip("\r\n")
    symbology = _symbology(code)
    aim = str(symbology) if symbology is not None else None
    text = code[len(aim) :] if aim else code
    gs1 = symbology.gs1_symbology in _GS1_SYMBOLOGIES if symbology is not None else _looks_gs1(text)
    try:
        fields = item_fields(raw)
    except GS1Error as exc:
        return Scanned(text, _empty(aim), exc.reason)
    if gs1 and fields["gtin"]:
        return Scanned(fields["gtin"], fields, None)
    return Scanned(text, fields, None)


def _symbology(code: str) -> SymbologyIdentifier | None:
    if not code.startswith("]"):
        return None
    try:
        return SymbologyIdentifier.extract(code)
    except ParseError:
        return None  # not an AIM prefix after all: the "]" is part of the code


def _looks_gs1(code: str) -> bool:
    return _GS in code or _UNPREFIXED_GS1.match(code) is not None


def _empty(symbology: str | None) -> ItemFields:
    return {
        "gtin": None,
        "batch": None,
        "expiry": None,
        "production_date": None,
        "best_before": None,
        "serial": None,
        "symbology": symbology,
    }


def _plain_fields(code: str, symbology: SymbologyIdentifier | None, aim: str | None) -> ItemFields:
    fields = _empty(aim)
    readings = interpretations(code)
    if len(readings) > 1 and symbology is not None:
        # An 8-digit code is EAN-8 or UPC-E; the symbology settles which (]E4 is EAN-8, ]E0 UPC-E).
        kind = "ean8" if symbology.gs1_symbology is GS1Symbology.EAN_8 else "upce"
        readings = [reading for reading in readings if reading[1] == kind]
    if len(readings) == 1:
        fields["gtin"] = readings[0][0]
    return fields


def _gs1_fields(code: str, aim: str | None) -> ItemFields:
    found: dict[str, str] = {}
    for element in _parse(code, aim).element_strings:
        ai = element.ai.ai
        if ai == "01":
            found[ai] = _gtin(element, aim)
        elif ai in ("10", "21"):
            found[ai] = element.value
        elif ai in ("11", "15", "17") and element.date is not None:
            found[ai] = element.date.isoformat()
        else:
            _check_embedded(element, aim)
    return {
        "gtin": found.get("01"),
        "batch": found.get("10"),
        "expiry": found.get("17"),
        "production_date": found.get("11"),
        "best_before": found.get("15"),
        "serial": found.get("21"),
        "symbology": aim,
    }


def _parse(code: str, aim: str | None) -> GS1Message:
    text = code.strip(" \t" + _GS)  # a GS at the start is FNC1 in first position, sent as GS
    if not text:
        raise GS1Error("the GS1 code is empty", symbology=aim)
    hri = text.startswith("(")
    if hri:
        text = _HRI_LAYOUT.sub(r"\1", text)
        if empty := _HRI_EMPTY_FIELD.search(text):
            raise GS1Error(f"AI ({empty[1]}) has no value", symbology=aim)
        if not _HRI_FIELDS.fullmatch(text):
            raise GS1Error("not a valid GS1 string: expected (AI)value(AI)value…", symbology=aim)
    # biip drops whitespace (and Python counts GS as whitespace) inside an HRI string; kept, it would
    # be a field's value rewritten, so anything left after the layout is refused.
    if any(char.isspace() and (hri or char != _GS) for char in text):
        raise GS1Error("a GS1 field contains a space or control character, which GS1 does not allow", symbology=aim)
    try:
        message = GS1Message.parse_hri(text) if hri else GS1Message.parse(text)
    except ParseError as exc:
        raise GS1Error(f"not a valid GS1 string: {exc}", symbology=aim) from None
    _check_repeats(message, aim)
    return message


def _check_repeats(message: GS1Message, aim: str | None) -> None:
    """The same AI twice with different values makes the code mean two things (GS1 forbids it)."""
    values: dict[str, set[str]] = {}
    for element in message.element_strings:
        values.setdefault(element.ai.ai, set()).add(element.value)
    clashes = sorted(ai for ai, seen in values.items() if len(seen) > 1)
    if clashes:
        counts = Counter(element.ai.ai for element in message.element_strings)
        ai = clashes[0]
        raise GS1Error(f"AI ({ai}) appears {counts[ai]} times with different values", symbology=aim)


def _gtin(element: GS1ElementString, aim: str | None) -> str:
    # The same rule as a typed or plain barcode (check digit, no all-zero product), one place for it.
    try:
        return check(element.value)[0][0]
    except BarcodeError as exc:
        raise GS1Error(f"the GTIN in AI (01) is not valid: {exc}", symbology=aim) from None


def _check_embedded(element: GS1ElementString, aim: str | None) -> None:
    """biip records a bad check digit in an SSCC or GLN instead of raising; the code is still invalid."""
    error = element.sscc_error or element.gln_error or element.gtin_error
    if error:
        raise GS1Error(f"AI ({element.ai.ai}) is not valid: {error}", symbology=aim)


__all__ = ["GS1Error", "ItemFields", "item_fields"]
