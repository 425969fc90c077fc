"""A keyboard-wedge scanner's key events turned back into the codes it scanned.

A wedge scanner types each code as key presses in the keyboard layout it is set to, then a suffix key.
The box reads those events from evdev (grabbed, no console, no display server), so it must redo what a
desktop would: translate keycodes through the same layout, with the same modifiers, else a UK scanner's
``@`` arrives as ``"`` (InvenTree #10589) and an AZERTY scanner's digits as ``&é"'``. xkbcommon compiles
the layout from xkb-data exactly as a Linux desktop does, without X11.

GS (the GS1 FNC1 separator) has no key, so scanners send it in whichever form their manual offers: a
Ctrl chord (Ctrl+], or Ctrl+5), a Windows Alt code (Alt+0029 on the keypad), or a key of its own (often
F8) it was programmed to send; each must end up as ``"\\x1d"`` or the GS1 fields after it run together.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Final

from xkbcommon import xkb

GS: Final = "\x1d"

# evdev keycodes (linux/input-event-codes.h) this module names; xkb keycodes are these plus 8.
KEY_ENTER: Final = 28
KEY_KPENTER: Final = 96
KEY_TAB: Final = 15
KEY_LEFTCTRL: Final = 29
KEY_LEFTSHIFT: Final = 42
KEY_LEFTALT: Final = 56
KEY_RIGHTALT: Final = 100
KEY_NUMLOCK: Final = 69
KEY_SPACE: Final = 57
KEY_RIGHTBRACE: Final = 27
KEY_F8: Final = 66
# Windows builds Alt codes from the keypad's digits only; the top row's digits are not Alt codes.
_KP_DIGITS: Final = {82: 0, 79: 1, 80: 2, 81: 3, 75: 4, 76: 5, 77: 6, 71: 7, 72: 8, 73: 9}
_KEYPAD: Final = frozenset({*_KP_DIGITS, 55, 74, 78, 83, 96, 98, 117, 121})
_EVDEV_OFFSET: Final = 8

RELEASE, PRESS, REPEAT = 0, 1, 2

_SYM = xkb.keysym_from_name
_ENTER_SYMS: Final = frozenset({_SYM("Return"), _SYM("KP_Enter")})
_TAB_SYMS: Final = frozenset({_SYM("Tab"), _SYM("ISO_Left_Tab")})
# Editing keys make no sense inside a scan; their control characters would only corrupt the code.
_IGNORED_SYMS: Final = frozenset({_SYM("BackSpace"), _SYM("Escape"), _SYM("Delete")})
# A dead key alone has no character. A scanner typing ``^`` on a German layout sends the dead key and then
# a space, as a person would; composing is never wanted (a code's ``^a`` is two characters, not ``â``).
_DEAD_SPACING: Final = {
    _SYM(name): char
    for name, char in {
        "dead_grave": "`",
        "dead_acute": "\u00b4",
        "dead_circumflex": "^",
        "dead_tilde": "~",
        "dead_macron": "\u00af",
        "dead_breve": "\u02d8",
        "dead_abovedot": "\u02d9",
        "dead_diaeresis": "\u00a8",
        "dead_abovering": "\u00b0",
        "dead_doubleacute": "\u02dd",
        "dead_caron": "\u02c7",
        "dead_cedilla": "\u00b8",
        "dead_ogonek": "\u02db",
    }.items()
}

_AIM = re.compile(r"\][A-Za-z][0-9A-Za-z]")

# The cffi library behind the binding. Its Python wrappers build an IntFlag per call, which triples the
# cost of a key event; the hot path calls the C functions on the binding's own objects instead.
_lib: Any = xkb.lib
_EFFECTIVE: Final = int(_lib.XKB_STATE_MODS_EFFECTIVE)
_DEPRESSED: Final = int(_lib.XKB_STATE_MODS_DEPRESSED)
_DOWN: Final = int(_lib.XKB_KEY_DOWN)
_UP: Final = int(_lib.XKB_KEY_UP)

_compile_lock = threading.Lock()
_keymaps: dict[tuple[str, str, str], Any] = {}
_context: Any = None


def split_aim(code: str) -> tuple[str | None, str]:
    """Split off the AIM symbology identifier (``]C1``, ``]d2``, ``]E0``, ``]Q3``…) a scanner may prefix.

    It says which symbology was read (``]d2`` is a GS1 DataMatrix, ``]C1`` GS1-128), which a plain
    wedge code otherwise cannot tell.
    """
    if _AIM.match(code):
        return code[:3], code[3:]
    return None, code


def keymap_for(layout: str = "us", variant: str = "", keymap_text: str | None = None) -> Any:
    """The compiled xkb keymap, shared: compiling takes milliseconds, a keymap is immutable once built."""
    key = (layout, variant, keymap_text or "")
    with _compile_lock:
        if key not in _keymaps:
            _keymaps[key] = _compile(layout, variant, keymap_text)
        return _keymaps[key]


def _compile(layout: str, variant: str, keymap_text: str | None) -> Any:
    global _context
    if _context is None:
        # The box's environment must not pick the layout: each scanner has its own.
        _context = xkb.Context(no_environment_names=True)
    try:
        if keymap_text is not None:
            return _context.keymap_new_from_string(keymap_text)
        return _context.keymap_new_from_names(layout=layout, variant=variant or None)
    except xkb.XKBKeymapCreationFailure as e:
        what = "the keymap text" if keymap_text is not None else f"keyboard layout {layout!r} variant {variant!r}"
        raise ValueError(f"xkbcommon cannot compile {what} (is xkb-data installed?)") from e


def _new_state(keymap: Any) -> Any:
    """A state with Num Lock on: scanners that type digits on the keypad expect it, and nobody at a box
    with no console could switch it on."""
    state = keymap.state_new()
    raw = state._state
    _lib.xkb_state_update_key(raw, KEY_NUMLOCK + _EVDEV_OFFSET, _DOWN)
    _lib.xkb_state_update_key(raw, KEY_NUMLOCK + _EVDEV_OFFSET, _UP)
    return state


def _mods_of(keymap: Any, keycode: int) -> int:
    state = keymap.state_new()
    _lib.xkb_state_update_key(state._state, keycode + _EVDEV_OFFSET, _DOWN)
    return int(_lib.xkb_state_serialize_mods(state._state, _DEPRESSED))


_us_control: dict[int, str] | None = None


def _us_control_chars() -> dict[int, str]:
    """Control characters by the US position of the key typed with Ctrl.

    A scanner's Ctrl mode may send a control character as Ctrl plus the key where the US layout has its
    letter (GS as Ctrl with HID usage 0x30, US ``]``) whatever keyboard country it is set to; on a German
    or French layout that key is ``+`` or ``$``, which Ctrl does not turn into anything. Used only when the
    layout's own Ctrl transformation gives no control character.
    """
    global _us_control
    if _us_control is None:
        keymap = keymap_for("us")
        state = keymap.state_new()
        _lib.xkb_state_update_key(state._state, KEY_LEFTCTRL + _EVDEV_OFFSET, _DOWN)
        table = {}
        for xkb_code in keymap:
            cp = int(_lib.xkb_state_key_get_utf32(state._state, xkb_code))
            if 0 < cp < 0x20 and xkb_code - _EVDEV_OFFSET not in _KEYPAD:
                table[xkb_code - _EVDEV_OFFSET] = chr(cp)
        _us_control = table
    return _us_control


class KeyDecoder:
    """One scanner's key events, decoded through its layout into whole codes.

    One per device and not thread-safe: the reader of that device feeds it. ``codes`` and
    ``dropped_chars`` are counters for the scanner page and the bench.
    """

    def __init__(
        self,
        layout: str = "us",
        variant: str = "",
        suffix: str = "enter",
        *,
        gs_key: str | None = None,
        keymap_text: str | None = None,
        max_length: int = 4096,
    ) -> None:
        """``gs_key`` is the keysym name (``"F8"``) of a key the scanner was programmed to send for GS;
        ``keymap_text`` a full xkb keymap for a scanner no named layout describes; ``max_length`` bounds
        a code so a device that never sends its suffix cannot grow memory without end."""
        if suffix not in ("enter", "tab"):
            raise ValueError(f"suffix must be 'enter' or 'tab', not {suffix!r}")
        self._keymap = keymap_for(layout, variant, keymap_text)
        self._tab_ends = suffix == "tab"
        self._gs_sym: int | None = None
        if gs_key is not None:
            self._gs_sym = int(xkb.keysym_from_name(gs_key))
            if self._gs_sym == 0:
                raise ValueError(f"no keysym named {gs_key!r}")
        self._max_length = max_length
        self._ctrl_mask = _mods_of(self._keymap, KEY_LEFTCTRL)
        self._alt_mask = _mods_of(self._keymap, KEY_LEFTALT)
        self._us_control = _us_control_chars()
        self._chars: list[str] = []
        self._alt_digits: list[int] = []
        self._after_dead = False
        self._overflow = False  # this code passed max_length: the rest of it is dropped up to its suffix
        self._state: Any = _new_state(self._keymap)
        self._raw: Any = self._state._state
        self.codes = 0
        self.dropped_chars = 0

    @property
    def pending(self) -> int:
        """Characters of a code begun and not yet ended: an unplug now would lose them."""
        return len(self._chars)

    def feed(self, keycode: int, value: int) -> str | None:
        """Take one evdev key event; return the code it completes, if it does."""
        if value == REPEAT:
            # A scanner never holds a key; a repeat is a slow host, and typing it again would double a char.
            return None
        xkb_code = keycode + _EVDEV_OFFSET
        raw = self._raw
        if value == RELEASE:
            _lib.xkb_state_update_key(raw, xkb_code, _UP)
            if self._alt_digits and not _lib.xkb_state_serialize_mods(raw, _EFFECTIVE) & self._alt_mask:
                self._append(self._alt_code())
            return None
        # The character is read before the key updates the state, as xkbcommon prescribes for evdev clients.
        sym = int(_lib.xkb_state_key_get_one_sym(raw, xkb_code))
        cp = int(_lib.xkb_state_key_get_utf32(raw, xkb_code))
        mods = int(_lib.xkb_state_serialize_mods(raw, _EFFECTIVE))
        _lib.xkb_state_update_key(raw, xkb_code, _DOWN)
        if sym in _ENTER_SYMS or (self._tab_ends and sym in _TAB_SYMS):
            return self._finish()
        if mods & self._alt_mask:
            digit = _KP_DIGITS.get(keycode)
            if digit is not None:
                self._alt_digits.append(digit)
            return None  # other Alt chords are shortcuts, not text
        if self._gs_sym is not None and sym == self._gs_sym:
            self._append(GS)
            return None
        if mods & self._ctrl_mask:
            if not 0 < cp < 0x20:
                char = self._us_control.get(keycode)
                if char is None:
                    return None
                cp = ord(char)
            if cp == 0x0D or cp == 0x0A or (self._tab_ends and cp == 0x09):
                return self._finish()
            self._append(chr(cp))
            return None
        if sym in _DEAD_SPACING:
            self._after_dead = True
            self._append(_DEAD_SPACING[sym], dead=True)
            return None
        if cp == 0 or sym in _IGNORED_SYMS:
            return None
        if self._after_dead:
            self._after_dead = False
            if cp == 0x20:
                return None  # the space that spells the dead key's own character
        self._append(chr(cp))
        return None

    @property
    def overflowing(self) -> bool:
        """The code under way passed ``max_length``: its keys are being dropped until its suffix."""
        return self._overflow

    def feed_all(self, events: Iterable[tuple[int, int]]) -> list[str]:
        """Every code the events complete, in order."""
        codes = []
        for keycode, value in events:
            code = self.feed(keycode, value)
            if code is not None:
                codes.append(code)
        return codes

    def reset(self) -> str:
        """Drop a partial code and return it, for a scanner unplugged mid-code (the caller says how much
        was lost); modifiers held at the unplug are forgotten too, so none sticks on replug."""
        dropped = "".join(self._chars)
        self.dropped_chars += len(dropped) + len(self._alt_digits)
        self._chars.clear()
        self._alt_digits.clear()
        self._after_dead = False
        self._overflow = False
        self._state = _new_state(self._keymap)
        self._raw = self._state._state
        return dropped

    def _append(self, char: str | None, *, dead: bool = False) -> None:
        if not dead:
            self._after_dead = False
        if char is None:
            return
        if self._overflow or len(self._chars) >= self._max_length:
            # A code longer than any barcode is noise (a stuck key, a scanner in the wrong mode): all of
            # it is dropped, up to its suffix, rather than its tail passed on as a code of its own.
            self.dropped_chars += len(self._chars) + 1
            self._chars.clear()
            self._overflow = True
            return
        self._chars.append(char)

    def _finish(self) -> str | None:
        self._after_dead = False
        self._alt_digits.clear()
        if self._overflow:
            self._overflow = False
            return None
        if not self._chars:
            return None  # a bare suffix (a trigger pulled on nothing) is no code
        code = "".join(self._chars)
        self._chars.clear()
        self.codes += 1
        return code

    def _alt_code(self) -> str | None:
        """The character of a Windows Alt code, as a Windows host would read it.

        Below 128 both code pages are ASCII with its control characters, which is what scanners send
        Alt codes for (Alt+0029 is GS); a leading zero selects Windows-1252 above that, none the OEM page.
        """
        digits = self._alt_digits
        value = int("".join(map(str, digits)))
        leading_zero = digits[0] == 0
        digits.clear()
        if value < 128:
            return chr(value) if value else None
        if value < 256:
            return bytes([value]).decode("cp1252" if leading_zero else "cp437", errors="ignore") or None
        return None


def keystrokes(
    text: str,
    layout: str = "us",
    variant: str = "",
    *,
    control: str = "ctrl",
    gs_key: str | None = None,
    keymap_text: str | None = None,
) -> list[tuple[int, int]]:
    """The evdev key events a scanner set to this layout sends to type ``text``: the inverse of ``KeyDecoder``.

    For tests and the bench, which must feed the box what real scanners send in each layout. Each
    character is typed off the keypad if it can be, with the fewest modifiers that yield it (Shift,
    AltGr); ``"\\r"`` is Enter. A control character the keymap has no key for is sent as ``control`` says:
    ``"ctrl"`` (Ctrl with the key of its letter in this layout), ``"alt"`` (Alt+0ddd on the keypad), or
    ``"key"`` (GS only: the ``gs_key`` key).
    """
    index, dead = _char_index(layout, variant, keymap_text)
    events: list[tuple[int, int]] = []
    for char in text:
        if char in index:
            _chord(events, *index[char])
        elif char in dead:
            _chord(events, *dead[char])
            _chord(events, *index[" "])
        elif ord(char) < 0x20 and control == "ctrl":
            keycode, mods = index[chr(ord(char) | 0x40)]
            _chord(events, keycode, (KEY_LEFTCTRL, *mods))
        elif ord(char) < 0x20 and control == "alt":
            events.append((KEY_LEFTALT, PRESS))
            for digit in f"{ord(char):04d}":
                kp = next(k for k, d in _KP_DIGITS.items() if d == int(digit))
                events += [(kp, PRESS), (kp, RELEASE)]
            events.append((KEY_LEFTALT, RELEASE))
        elif char == GS and control == "key" and gs_key is not None:
            events += [(_key_for_sym(layout, variant, keymap_text, gs_key), PRESS)]
            events.append((events[-1][0], RELEASE))
        else:
            raise ValueError(f"layout {layout!r} has no key for {char!r}")
    return events


def _chord(events: list[tuple[int, int]], keycode: int, mods: Sequence[int]) -> None:
    events += [(mod, PRESS) for mod in mods]
    events += [(keycode, PRESS), (keycode, RELEASE)]
    events += [(mod, RELEASE) for mod in reversed(mods)]


_MOD_CHOICES: Final = ((), (KEY_LEFTSHIFT,), (KEY_RIGHTALT,), (KEY_LEFTSHIFT, KEY_RIGHTALT))
_Typing = dict[str, tuple[int, tuple[int, ...]]]  # character -> (keycode, modifier keys held)
_indexes: dict[tuple[str, str, str], tuple[_Typing, _Typing]] = {}


def _char_index(layout: str, variant: str, keymap_text: str | None) -> tuple[_Typing, _Typing]:
    """Which key and modifiers type each character, found by pressing every key in every modifier state:
    asking the state, not reading the keymap's levels, keeps key types and Num Lock out of it."""
    cache_key = (layout, variant, keymap_text or "")
    if cache_key in _indexes:
        return _indexes[cache_key]
    keymap = keymap_for(layout, variant, keymap_text)
    index: _Typing = {}
    dead: _Typing = {}
    # The keypad last: a scanner set to a layout types digits where that layout has them (Shift+& on AZERTY)
    # unless set to emulate a keypad.
    main = [c for c in keymap if c - _EVDEV_OFFSET not in _KEYPAD]
    keypad = [c for c in keymap if c - _EVDEV_OFFSET in _KEYPAD]
    for candidates, mods in [(keys, mods) for keys in (main, keypad) for mods in _MOD_CHOICES]:
        state = _new_state(keymap)
        for mod in mods:
            _lib.xkb_state_update_key(state._state, mod + _EVDEV_OFFSET, _DOWN)
        for xkb_code in candidates:
            keycode = xkb_code - _EVDEV_OFFSET
            if keycode in mods:
                continue
            sym = int(_lib.xkb_state_key_get_one_sym(state._state, xkb_code))
            cp = int(_lib.xkb_state_key_get_utf32(state._state, xkb_code))
            if sym in _DEAD_SPACING:
                dead.setdefault(_DEAD_SPACING[sym], (keycode, mods))
            elif cp and sym not in _IGNORED_SYMS:
                index.setdefault(chr(cp), (keycode, mods))
    _indexes[cache_key] = (index, dead)
    return index, dead


def _key_for_sym(layout: str, variant: str, keymap_text: str | None, name: str) -> int:
    keymap = keymap_for(layout, variant, keymap_text)
    state = _new_state(keymap)
    want = xkb.keysym_from_name(name)
    for xkb_code in keymap:
        if _lib.xkb_state_key_get_one_sym(state._state, xkb_code) == want:
            return int(xkb_code) - _EVDEV_OFFSET
    raise ValueError(f"no key sends {name!r} in this keymap")
