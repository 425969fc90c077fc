"""Wedge scanners' key streams decoded through real xkb layouts: each code exactly, GS in every form.

The streams come from ``keystrokes`` (an inverse lookup over the same xkbcommon keymap) and, where a
layout's quirk is the point, from key positions written out by hand, so a decoder and an inverse lookup
that agreed on a wrong layout would still fail.
"""

from __future__ import annotations

import re
import time

import pytest

from hardware.barcodes import interpretations
from hardware.keyboard import (
    GS,
    KEY_ENTER,
    KEY_F8,
    KEY_LEFTALT,
    KEY_LEFTCTRL,
    KEY_LEFTSHIFT,
    KEY_RIGHTALT,
    KEY_RIGHTBRACE,
    KEY_TAB,
    PRESS,
    RELEASE,
    REPEAT,
    KeyDecoder,
    keymap_for,
    keystrokes,
    split_aim,
)

LAYOUTS = ["us", "gb", "de", "fr"]
EAN13 = "4006381333931"
UPCA = "036000291452"
CODE128 = "AB-12/x@#%+"
DATAMATRIX = "]d2010400638133393110ABC123\x1d17260101"
CODES = [EAN13, UPCA, CODE128, DATAMATRIX, "]E0" + EAN13, "]E0" + UPCA, "]C0" + CODE128]
ENTER = [(KEY_ENTER, PRESS), (KEY_ENTER, RELEASE)]

# evdev keycodes written out by hand, from linux/input-event-codes.h
KEY_1, KEY_2, KEY_5, KEY_6, KEY_9 = 2, 3, 6, 7, 10
KEY_Q, KEY_Y, KEY_A, KEY_Z = 16, 21, 30, 44
KEY_APOSTROPHE, KEY_GRAVE, KEY_SPACE, KEY_CAPSLOCK = 40, 41, 57, 58
KEY_KP0, KEY_KP2, KEY_KP9 = 82, 80, 73


def tap(keycode: int, *mods: int) -> list[tuple[int, int]]:
    return [*((m, PRESS) for m in mods), (keycode, PRESS), (keycode, RELEASE), *((m, RELEASE) for m in reversed(mods))]


def gs_char_keymap() -> str:
    """A us keymap whose F8 key yields the GS character itself, as a scanner's custom keymap can."""
    text = keymap_for("us").get_as_string()
    patched = re.sub(r"key <FK08>[^;]*;", "key <FK08> { [ 0x100001d ] };", text)
    assert patched != text
    return patched


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("code", CODES)
def test_each_code_decodes_exactly_in_each_layout(layout: str, code: str) -> None:
    decoder = KeyDecoder(layout)
    assert decoder.feed_all(keystrokes(code, layout) + ENTER) == [code]
    assert decoder.codes == 1
    assert decoder.pending == 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_code_per_enter_in_a_long_stream(layout: str) -> None:
    decoder = KeyDecoder(layout)
    stream = [event for code in CODES for event in keystrokes(code + "\r", layout)]
    assert decoder.feed_all(stream) == CODES
    assert decoder.codes == len(CODES)
    assert decoder.dropped_chars == 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", ["ctrl", "alt", "key"])
def test_gs_in_each_form_a_scanner_sends_it(layout: str, form: str) -> None:
    decoder = KeyDecoder(layout, gs_key="F8")
    stream = keystrokes(DATAMATRIX + "\r", layout, control=form, gs_key="F8")
    assert (KEY_F8, PRESS) in stream if form == "key" else (KEY_F8, PRESS) not in stream
    [code] = decoder.feed_all(stream)
    assert code == DATAMATRIX
    assert code.count(GS) == 1
    assert split_aim(code) == ("]d2", "010400638133393110ABC123\x1d17260101")
    assert interpretations(code) == [("04006381333931", "gtin14")]


def test_gs_as_the_character_when_the_keymap_yields_it() -> None:
    keymap = gs_char_keymap()
    stream = keystrokes(DATAMATRIX + "\r", keymap_text=keymap)
    assert tap(KEY_F8) == stream[stream.index((KEY_F8, PRESS)) : stream.index((KEY_F8, PRESS)) + 2]
    assert (KEY_LEFTCTRL, PRESS) not in stream
    assert KeyDecoder(keymap_text=keymap).feed_all(stream) == [DATAMATRIX]


def test_the_configured_gs_key_is_only_gs_when_configured() -> None:
    stream = tap(KEY_A) + tap(KEY_F8) + tap(KEY_A) + ENTER
    assert KeyDecoder("us", gs_key="F8").feed_all(stream) == ["a\x1da"]
    assert KeyDecoder("us").feed_all(stream) == ["aa"]  # F8 types nothing by itself


@pytest.mark.parametrize(
    ("layout", "stream"),
    [
        ("us", tap(KEY_RIGHTBRACE, KEY_LEFTCTRL)),  # Ctrl+]
        ("us", tap(KEY_5, KEY_LEFTCTRL)),  # Ctrl+5: xkbcommon's Ctrl transformation of "5" is GS
        ("gb", tap(KEY_RIGHTBRACE, KEY_LEFTCTRL)),
        ("de", tap(KEY_5, KEY_LEFTCTRL)),
        ("de", tap(KEY_9, KEY_LEFTCTRL, KEY_RIGHTALT)),  # Ctrl with AltGr+9, where de has "]"
        ("de", tap(KEY_RIGHTBRACE, KEY_LEFTCTRL)),  # the US "]" position, "+" on de
        ("fr", tap(KEY_RIGHTBRACE, KEY_LEFTCTRL)),  # the US "]" position, "$" on fr
        ("fr", tap(KEY_5, KEY_LEFTCTRL)),  # "(" on fr
    ],
)
def test_ctrl_chords_that_scanners_send_for_gs(layout: str, stream: list[tuple[int, int]]) -> None:
    decoder = KeyDecoder(layout)
    assert decoder.feed_all(stream + ENTER) == [GS]


def test_alt_code_is_built_from_keypad_digits_while_alt_is_held() -> None:
    decoder = KeyDecoder("de")
    digits = [event for keycode in (KEY_KP0, KEY_KP0, KEY_KP2, KEY_KP9) for event in tap(keycode)]
    alt_0029 = [(KEY_LEFTALT, PRESS), *digits, (KEY_LEFTALT, RELEASE)]
    assert decoder.feed_all(tap(KEY_5) + alt_0029 + tap(KEY_5) + ENTER) == ["5\x1d5"]
    # The top row's digits under Alt are a shortcut, not an Alt code, and type nothing.
    top_row = [(KEY_LEFTALT, PRESS), *tap(KEY_2), *tap(KEY_9), (KEY_LEFTALT, RELEASE)]
    assert decoder.feed_all(tap(KEY_5) + top_row + ENTER) == ["5"]


@pytest.mark.parametrize(
    ("layout", "text", "stream"),
    [
        ("us", "@", tap(KEY_2, KEY_LEFTSHIFT)),
        ("us", '"', tap(KEY_APOSTROPHE, KEY_LEFTSHIFT)),
        ("gb", "@", tap(KEY_APOSTROPHE, KEY_LEFTSHIFT)),
        ("gb", '"', tap(KEY_2, KEY_LEFTSHIFT)),
        ("de", "@", tap(KEY_Q, KEY_RIGHTALT)),
        ("de", "z", tap(KEY_Y)),
        ("de", "y", tap(KEY_Z)),
        ("fr", "1", tap(KEY_1, KEY_LEFTSHIFT)),
        ("fr", "-", tap(KEY_6)),
        ("fr", "a", tap(KEY_Q)),
    ],
)
def test_layout_positions_written_out_by_hand(layout: str, text: str, stream: list[tuple[int, int]]) -> None:
    assert keystrokes(text, layout) == stream
    assert KeyDecoder(layout).feed_all(stream + ENTER) == [text]


def test_a_gb_scanner_read_as_us_swaps_at_and_quote() -> None:
    """InvenTree #10589: the layout matters, and the decoder does use it."""
    stream = keystrokes('user@host"x"\r', "gb")
    assert KeyDecoder("gb").feed_all(stream) == ['user@host"x"']
    assert KeyDecoder("us").feed_all(stream) == ['user"host@x@']


def test_an_azerty_scanner_read_as_us_gives_no_digits() -> None:
    stream = keystrokes(EAN13 + "\r", "fr")
    [wrong] = KeyDecoder("us").feed_all(stream)
    assert wrong != EAN13
    assert not any(char.isdigit() for char in wrong)


def test_unplug_mid_code_drops_exactly_the_partial() -> None:
    decoder = KeyDecoder("gb")
    whole = keystrokes(CODE128 + "\r", "gb")
    partial = keystrokes("AB-1", "gb")
    # Cut while Shift is held for the next character: the held modifier must not survive the reset.
    cut = [*partial, (KEY_LEFTSHIFT, PRESS)]
    assert decoder.feed_all(whole + cut) == [CODE128]
    assert decoder.pending == 4
    assert decoder.reset() == "AB-1"
    assert decoder.dropped_chars == 4
    assert decoder.pending == 0
    assert decoder.feed_all(whole) == [CODE128]
    assert (decoder.codes, decoder.dropped_chars) == (2, 4)
    assert decoder.reset() == ""
    assert decoder.dropped_chars == 4


def test_autorepeat_events_are_ignored() -> None:
    stream = []
    for keycode, value in keystrokes(DATAMATRIX + "\r", "fr", control="alt"):
        stream.append((keycode, value))
        if value == PRESS:
            stream += [(keycode, REPEAT)] * 3
    assert KeyDecoder("fr").feed_all(stream) == [DATAMATRIX]


def test_keypad_digits_are_digits_with_no_num_lock_key_pressed() -> None:
    """Scanners set to emulate a keypad send KP keys and rely on Num Lock, which nobody at the box can press."""
    keypad = [event for keycode in (KEY_KP0, KEY_KP2, KEY_KP9) for event in tap(keycode)]
    assert KeyDecoder("fr").feed_all(keypad + ENTER) == ["029"]


def test_dead_keys_give_their_own_character_and_never_compose() -> None:
    decoder = KeyDecoder("de")
    # de's "^" is a dead key: a scanner types it as dead key then space, as a person would.
    assert keystrokes("^", "de") == tap(KEY_GRAVE) + tap(KEY_SPACE)
    assert decoder.feed_all(keystrokes("a^b^ c\r", "de")) == ["a^b^ c"]
    # Straight after a letter it must not become "â".
    assert decoder.feed_all(tap(KEY_GRAVE) + tap(KEY_A) + ENTER) == ["^a"]


def test_caps_lock_is_tracked() -> None:
    decoder = KeyDecoder("us")
    caps = tap(KEY_CAPSLOCK)
    assert decoder.feed_all(caps + keystrokes("ab1\r", "us") + caps + keystrokes("ab\r", "us")) == ["AB1", "ab"]


def test_tab_suffix_ends_a_code_and_is_kept_otherwise() -> None:
    stream = keystrokes("A1", "us") + tap(KEY_TAB) + keystrokes("B2", "us") + tap(KEY_TAB)
    assert KeyDecoder("us", suffix="tab").feed_all(stream) == ["A1", "B2"]
    assert KeyDecoder("us").feed_all(stream + ENTER) == ["A1\tB2\t"]


def test_bare_enter_is_no_code() -> None:
    decoder = KeyDecoder("us")
    assert decoder.feed_all(ENTER + ENTER) == []
    assert decoder.codes == 0


def test_a_code_that_never_ends_is_bounded() -> None:
    """All of an over-long code is dropped and counted, not its tail passed on as a code; the next code
    is read whole."""
    decoder = KeyDecoder("us", max_length=10)
    assert decoder.feed_all(keystrokes("x" * 25 + "\r" + "96385074\r", "us")) == ["96385074"]
    assert decoder.dropped_chars == 25


def test_unknown_layout_and_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="layout"):
        KeyDecoder("no-such-layout")
    with pytest.raises(ValueError, match="suffix"):
        KeyDecoder("us", suffix="space")
    with pytest.raises(ValueError, match="keysym"):
        KeyDecoder("us", gs_key="NotAKey")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("]C1" + "0104006381333931", ("]C1", "0104006381333931")),
        (DATAMATRIX, ("]d2", DATAMATRIX[3:])),
        ("]E0" + EAN13, ("]E0", EAN13)),
        ("]Q3" + "0104006381333931", ("]Q3", "0104006381333931")),
        (EAN13, (None, EAN13)),
        ("]C", (None, "]C")),
        ("]1C0123", (None, "]1C0123")),
        ("", (None, "")),
    ],
)
def test_split_aim(code: str, expected: tuple[str | None, str]) -> None:
    assert split_aim(code) == expected


def test_a_forty_character_code_decodes_well_under_a_millisecond() -> None:
    code = "]d2010400638133393110ABC123\x1d1726010121X9"  # GTIN, batch, GS, expiry, serial
    assert len(code) == 40
    decoder = KeyDecoder("fr")
    stream = keystrokes(code + "\r", "fr")
    rounds = 200
    start = time.perf_counter()
    for _ in range(rounds):
        decoder.feed_all(stream)
    mean = (time.perf_counter() - start) / rounds
    assert decoder.codes == rounds
    assert mean < 0.001, f"{mean * 1e6:.0f} µs per 40-character code"
