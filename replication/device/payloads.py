"""What a device may put in its chain: the event types and payloads of docs/sync-protocol.md §5.

A device checks every payload before it appends it, because an event enters a hash chain for good:
once the box has refused one with ``VALIDATION`` every later event of the writer is stuck behind it
until a person looks. Checking here costs microseconds and keeps bad data out of the chain.

The rules follow the page (the contract), not the box's code, so the two can be compared; where the
page says only "str", blank text is still refused. Fields are exact: a missing field, an unknown one,
or a value of the wrong type is refused, as the box does.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any

from replication.errors import NeedsPerson
from replication.wire.codec import CodecError, canonical

MAX_CODE = 64
MAX_SERIAL = 64
MAX_QTY = 100_000  # every quantity an event carries, so that no sum the box keeps can overflow
MAX_MRP_MINOR = 1_000_000_000  # a price in minor units; a register, never summed
MAX_ID = 64
MAX_TOKEN = 2**63 - 1
CONDITIONS = ("good", "damaged", "expired", "opened", "repackaged", "other")
ITEM_STATUSES = ("partial", "finalized", "re-verify")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

Check = Callable[[str, Any], None]


class PayloadError(NeedsPerson, ValueError):
    """A payload the box would refuse with ``VALIDATION``; the message names the field.

    Still a ``ValueError``, which is how callers checking a payload have always caught it.
    """


def _str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise PayloadError(f"{name} must be a string")


def _int(name: str, value: Any) -> None:
    # bool is an int in Python but a different msgpack type on the wire.
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{name} must be a whole number")


def _token(name: str, value: Any) -> None:
    if value is not None:
        _int(name, value)
        if not 0 <= value <= MAX_TOKEN:
            raise PayloadError(f"{name} must be from 0 to 2^63 - 1")


def _id(name: str, value: Any) -> None:
    _str(name, value)
    if len(value) > MAX_ID:
        raise PayloadError(f"{name} must be at most {MAX_ID} characters")


def _opt_id(name: str, value: Any) -> None:
    if value is not None:
        _id(name, value)


def _sized(limit: int) -> Check:
    def check(name: str, value: Any) -> None:
        _str(name, value)
        if not 0 < len(value.strip()) <= limit or len(value) > limit:
            raise PayloadError(f"{name} must be 1-{limit} characters")

    return check


def _qty(name: str, value: Any) -> None:
    _int(name, value)
    if not 1 <= value <= MAX_QTY:
        raise PayloadError(f"{name} must be from 1 to {MAX_QTY}")


def _delta(name: str, value: Any) -> None:
    _int(name, value)
    if not -MAX_QTY <= value <= MAX_QTY:
        raise PayloadError(f"{name} must be from -{MAX_QTY} to {MAX_QTY}; send a larger change as several")


def _non_zero(name: str, value: Any) -> None:
    _delta(name, value)
    if value == 0:
        raise PayloadError(f"{name} must not be 0")


def _at_least_zero(name: str, value: Any) -> None:
    _int(name, value)
    if not 0 <= value <= MAX_QTY:
        raise PayloadError(f"{name} must be from 0 to {MAX_QTY}")


def _price(name: str, value: Any) -> None:
    _int(name, value)
    if not 0 <= value <= MAX_MRP_MINOR:
        raise PayloadError(f"{name} must be from 0 to {MAX_MRP_MINOR}")


def _id_list(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) and len(item) <= MAX_ID for item in value):
        raise PayloadError(f"{name} must be a list of ids of at most {MAX_ID} characters")


def _attrs(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise PayloadError(f"{name} must be a map")
    for key, item in value.items():
        if key not in _ATTRIBUTES:
            raise PayloadError(f"{name}.{key} is not an attribute (one of {', '.join(_ATTRIBUTES)})")
        if item is not None:
            _ATTRIBUTES[key](f"{name}.{key}", item)


def _date(name: str, value: Any) -> None:
    _str(name, value)
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        dt.date.fromisoformat(value)
    except ValueError:
        raise PayloadError(f"{name} must be a date written YYYY-MM-DD") from None


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(name: str, value: Any) -> None:
        if value not in choices:
            raise PayloadError(f"{name} must be one of {', '.join(choices)}")

    return check


_ATTRIBUTES: dict[str, Check] = {
    "mfg_date": _date,
    "mrp_minor": _price,
    "uom": _sized(64),  # §5 says only "str"; a blank or endless one is refused by the box and is no UOM
    "condition": _one_of(CONDITIONS),
    "category": _sized(64),
    "subcategory": _sized(64),
    "status": _one_of(ITEM_STATUSES),
    "batch": _sized(64),
    "expiry_date": _date,
}

_COMMON: dict[str, Check] = {"session_id": _id, "by": _id}
_ADJUSTED: dict[str, Check] = {"product_id": _id, "delta": _delta, "target": _at_least_zero}

EVENT_TYPES: Mapping[str, Mapping[str, Check]] = {
    "scan.recorded": {
        **_COMMON,
        "code": _sized(MAX_CODE),
        "qty": _qty,
        "rack_id": _id,
        "product_id": _opt_id,
        "token": _token,
    },
    "scan.undone": {
        **_COMMON,
        "undoes": _id,
        "of_writer": _id,
        "code": _sized(MAX_CODE),
        "rack_id": _id,
        "qty": _qty,
    },
    "count.adjusted": {**_COMMON, **_ADJUSTED, "delta": _non_zero},
    "damage.adjusted": {**_COMMON, **_ADJUSTED},
    "item.attributes_set": {**_COMMON, "product_id": _id, "attrs": _attrs},
    "serial.added": {**_COMMON, "product_id": _id, "serial": _sized(MAX_SERIAL)},
    "serial.removed": {**_COMMON, "product_id": _id, "serial": _sized(MAX_SERIAL), "tags": _id_list},
}


def check_payload(event_type: str, payload: Mapping[str, Any]) -> None:
    """Raise ``PayloadError`` unless ``payload`` is a valid §5 payload of ``event_type``."""
    fields = EVENT_TYPES.get(event_type)
    if fields is None:
        raise PayloadError(f"a device may not send {event_type!r} events (one of {', '.join(EVENT_TYPES)})")
    if not isinstance(payload, Mapping):
        raise PayloadError("a payload must be a map")
    missing = sorted(set(fields) - set(payload))
    unknown = sorted(set(payload) - set(fields))
    if missing:
        raise PayloadError(f"{event_type}: missing {', '.join(missing)}")
    if unknown:
        raise PayloadError(f"{event_type}: unknown field {', '.join(map(str, unknown))}")
    try:
        canonical(dict(payload))
    except CodecError as exc:
        raise PayloadError(f"{event_type}: {exc}") from None
    for name, check in fields.items():
        check(name, payload[name])
