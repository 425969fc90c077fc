"""The scanner udev rules: they parse, and a plugged-in device gets what the box needs and nothing more.

The udev of Debian 12 has no ``udevadm verify``, and a bad line is only logged when the rules load on a
box, so a strict parser of the rule syntax checks the file. It also evaluates the rules against the
devices a store plugs in (a scanner of each kind, a modem, a scanner being unplugged) as udev would, in
file order with GOTO and LABEL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "systemd" / "60-stockverify-scanners.rules"

MATCH_ONLY = {"ACTION", "DEVPATH", "KERNEL", "KERNELS", "SUBSYSTEM", "SUBSYSTEMS", "DRIVER", "DRIVERS", "ATTRS"}
MATCH_OR_ASSIGN = {"ATTR", "ENV", "TAG"}
ASSIGN_ONLY = {"OWNER", "GROUP", "MODE", "GOTO", "LABEL", "RUN", "SYMLINK", "OPTIONS"}
WITH_ATTRIBUTE = {"ATTR", "ATTRS", "ENV", "RUN"}
TOKEN = re.compile(r'\s*(?P<key>[A-Z]+)(?:\{(?P<attr>[^{}"]+)\})?\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>[^"]*)"\s*')


@dataclass(frozen=True)
class Token:
    key: str
    attr: str | None
    op: str
    value: str

    @property
    def matches(self) -> bool:
        return self.op in ("==", "!=")


def parse(text: str) -> list[list[Token]]:
    """Rules as udev reads them, refusing anything udev would ignore or only warn about."""
    rules: list[list[Token]] = []
    labels_ahead: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert not line.endswith("\\"), f"line {number}: no continued lines here, keep a rule on one line"
        tokens: list[Token] = []
        for part in _split(line, number):
            found = TOKEN.fullmatch(part)
            assert found, f'line {number}: {part!r} is not KEY[{{attr}}]OP"value"'
            token = Token(found["key"], found["attr"], found["op"], found["value"])
            known = MATCH_ONLY | MATCH_OR_ASSIGN | ASSIGN_ONLY
            assert token.key in known, f"line {number}: unknown key {token.key}"
            assert token.key not in MATCH_ONLY or token.matches, f"line {number}: {token.key} only matches"
            assert token.key not in ASSIGN_ONLY or not token.matches, f"line {number}: {token.key} only assigns"
            assert (token.attr is not None) == (token.key in WITH_ATTRIBUTE), f"line {number}: {token.key}{{…}}"
            if token.key in ("GOTO", "LABEL", "GROUP", "MODE"):
                assert token.op == "=", f"line {number}: {token.key} takes ="
            if token.key == "MODE":
                assert re.fullmatch(r"0[0-7]{3}", token.value), f"line {number}: MODE {token.value}"
            if token.key == "ENV":
                assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", token.attr or ""), f"line {number}: ENV name"
            if token.key == "ATTRS" and token.attr == "idVendor":
                assert re.fullmatch(r"[0-9a-f]{4}", token.value), f"line {number}: vendor ids are lower-case hex"
            tokens.append(token)
        keys = [token.key for token in tokens]
        assert keys.count("LABEL") == 0 or keys == ["LABEL"], f"line {number}: a LABEL stands alone"
        assert any(not token.matches for token in tokens), f"line {number}: a rule that does nothing"
        labels_ahead += [token.value for token in tokens if token.key == "GOTO"]
        if keys == ["LABEL"] and tokens[0].value in labels_ahead:
            labels_ahead = [label for label in labels_ahead if label != tokens[0].value]
        rules.append(tokens)
    assert labels_ahead == [], f"GOTO without a LABEL after it: {labels_ahead}"
    return rules


def _split(line: str, number: int) -> list[str]:
    parts, current, quoted = [], "", False
    for char in line:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    assert not quoted, f"line {number}: unclosed quote"
    return [*parts, current]


@dataclass
class Device:
    """A device node as udev sees it on an event: itself, then its parents up to the USB device."""

    kernel: str
    subsystem: str
    parents: list[tuple[str, dict[str, str]]]  # (subsystem, attributes)
    action: str = "add"
    env: dict[str, str] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    group: str = "root"
    mode: str = "0600"


def _glob(pattern: str, value: str) -> bool:
    return any(fnmatchcase(value, alternative) for alternative in pattern.split("|"))


def _holds(token: Token, value: str) -> bool:
    return _glob(token.value, value) == (token.op == "==")


def apply(rules: list[list[Token]], device: Device) -> Device:
    skip_to: str | None = None
    for tokens in rules:
        if skip_to is not None:
            if tokens[0].key == "LABEL" and tokens[0].value == skip_to:
                skip_to = None
            continue
        if tokens[0].key == "LABEL":
            continue
        if not _rule_matches(tokens, device):
            continue
        for token in tokens:
            if token.matches:
                continue
            if token.key == "ENV":
                device.env[token.attr or ""] = token.value
            elif token.key == "TAG":
                device.tags.add(token.value)
            elif token.key == "GROUP":
                device.group = token.value
            elif token.key == "MODE":
                device.mode = token.value
            elif token.key == "GOTO":
                skip_to = token.value
    return device


def _rule_matches(tokens: list[Token], device: Device) -> bool:
    own = {"ACTION": device.action, "KERNEL": device.kernel, "SUBSYSTEM": device.subsystem}
    upward: list[Token] = []
    for token in (t for t in tokens if t.matches):
        if token.key in own:
            if not _holds(token, own[token.key]):
                return False
        elif token.key == "ENV":
            if not _holds(token, device.env.get(token.attr or "", "")):
                return False
        elif token.key in ("SUBSYSTEMS", "ATTRS"):
            upward.append(token)
        else:
            raise AssertionError(f"the evaluator does not know {token.key}; teach it before using it")
    if not upward:
        return True
    # udev: every *S key of a rule must match one and the same device on the way up.
    return any(
        all(_holds(t, subsystem if t.key == "SUBSYSTEMS" else attrs.get(t.attr or "", "\0missing")) for t in upward)
        for subsystem, attrs in [(device.subsystem, {}), *device.parents]
    )


def _usb(vendor: str) -> tuple[str, dict[str, str]]:
    return ("usb", {"idVendor": vendor, "idProduct": "0001"})


def cdc_acm(vendor: str, kernel: str = "ttyACM0") -> Device:
    return Device(kernel, "tty", [("usb", {"bInterfaceClass": "02"}), _usb(vendor)])


def keyboard_wedge(vendor: str, kernel: str = "event5") -> Device:
    return Device(kernel, "input", [("input", {"name": "scanner"}), ("hid", {}), ("usb", {}), _usb(vendor)])


@pytest.fixture(scope="module")
def rules() -> list[list[Token]]:
    return parse(RULES.read_text())


@pytest.mark.parametrize("vendor", ["05e0", "0c2e", "0536", "05f9", "080c", "1eab"])
def test_a_serial_scanner_is_the_box_s_and_modemmanager_keeps_off(rules: list[list[Token]], vendor: str) -> None:
    for kernel in ("ttyACM0", "ttyUSB1"):
        device = apply(rules, cdc_acm(vendor, kernel))
        assert (device.group, device.mode) == ("dialout", "0660")
        assert device.env == {"STOCKVERIFY_SCANNER": "1", "ID_MM_DEVICE_IGNORE": "1"}
        assert device.tags == {"stockverify_scanner"}


@pytest.mark.parametrize("vendor", ["05e0", "0c2e", "0536", "05f9", "080c", "1eab"])
def test_a_keyboard_wedge_scanner_is_readable_by_the_input_group(rules: list[list[Token]], vendor: str) -> None:
    device = apply(rules, keyboard_wedge(vendor))
    assert (device.group, device.mode) == ("input", "0660")
    assert device.env == {"STOCKVERIFY_SCANNER": "1"}  # no ModemManager business for an input device
    assert device.tags == {"stockverify_scanner"}


def test_a_modem_and_a_keyboard_are_left_alone(rules: list[list[Token]]) -> None:
    modem = apply(rules, cdc_acm("1199"))  # Sierra Wireless: ModemManager's to probe
    keyboard = apply(rules, keyboard_wedge("046d"))  # Logitech
    for device in (modem, keyboard):
        assert (device.group, device.mode, device.env, device.tags) == ("root", "0600", {}, set())


def test_only_device_nodes_are_touched(rules: list[list[Token]]) -> None:
    parent = apply(rules, Device("input7", "input", [("hid", {}), ("usb", {}), _usb("05e0")]))
    unplugged = cdc_acm("0c2e")
    unplugged.action = "remove"
    for device in (parent, apply(rules, unplugged)):
        assert (device.env, device.tags) == ({}, set())


def test_a_vendor_added_by_a_field_tech_in_a_local_file_is_a_scanner(rules: list[list[Token]]) -> None:
    """The header's recipe: one line in 59-stockverify-scanners-local.rules, read before this file."""
    recipe = next(line for line in RULES.read_text().splitlines() if line.startswith("#   SUBSYSTEMS=="))
    local = parse(recipe.removeprefix("#").strip())
    device = apply(local + rules, cdc_acm("1a86", "ttyUSB0"))
    assert device.env == {"STOCKVERIFY_SCANNER": "1", "ID_MM_DEVICE_IGNORE": "1"}
    assert (device.group, device.mode) == ("dialout", "0660")


@pytest.mark.parametrize(
    "bad",
    [
        'KERNEL=="ttyACM*", MODE="660"',
        'KERNEL="ttyACM*", GROUP="dialout"',
        'KERNEL=="ttyACM*" GROUP="dialout"',
        'ATTRS{idVendor}=="05E0", ENV{STOCKVERIFY_SCANNER}="1"',
        'KERNEL=="ttyACM*", GOTO="nowhere"',
        'KERNEL=="ttyACM*"',
        'KERNAL=="ttyACM*", GROUP="dialout"',
        'KERNEL=="ttyACM*, GROUP="dialout"',
    ],
)
def test_the_parser_refuses_what_udev_would_ignore(bad: str) -> None:
    with pytest.raises(AssertionError):
        parse(bad)
