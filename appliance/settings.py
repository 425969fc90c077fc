"""The box's one settings object.

Every setting is declared once below with its default, parser and help text. Values come, lowest precedence
first, from the defaults, the TOML file (``<data_dir>/stockverify.toml`` or ``STOCKVERIFY_CONFIG``),
``STOCKVERIFY_<NAME>`` environment variables, and finally command-line flags. They are checked once at
start; a bad value stops the start with a message that names the setting and where it came from, so a
field tech reading ``journalctl`` knows which line to fix.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "STOCKVERIFY_"
CONFIG_FILE_NAME = "stockverify.toml"
ROLES = ("box", "hq")

_T = TypeVar("_T")


class SettingsError(ValueError):
    """A setting has a value the box cannot run with."""


def _path(value: Any) -> Path:
    return Path(str(value)).expanduser()


def _int(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"expected a number from {low} to {high}, got {number}")
        return number

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _text(max_len: int = 200) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        if not text:
            raise ValueError("must not be empty")
        if len(text) > max_len:
            raise ValueError(f"must be at most {max_len} characters")
        return text

    return parse


def _store_id(value: Any) -> str:
    text = _text(64)(value)
    if not all(c.isalnum() or c in "-_." for c in text):
        raise ValueError(f"may hold only letters, digits, '-', '_' and '.', got {text!r}")
    return text


def _ipv4_list(value: Any) -> tuple[str, ...]:
    """A TOML list or a comma-separated string; empty means "every non-loopback IPv4 address"."""
    items = value if isinstance(value, list | tuple) else str(value).replace(",", " ").split()
    found: list[str] = []
    for item in items:
        try:
            address = ipaddress.IPv4Address(str(item).strip())
        except ValueError:
            raise ValueError(f"expected IPv4 addresses, got {item!r}") from None
        if address.is_unspecified or address.is_multicast:
            raise ValueError(f"{address} is not an address a handheld can reach")
        found.append(str(address))
    return tuple(found)


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return text

    return parse


def _url(*, allow_empty: bool) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().rstrip("/")
        if not text and allow_empty:
            return ""
        if not text.startswith(("http://", "https://")) or len(text) > 500:
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return text

    return parse


def _pem_file(value: Any) -> str:
    """Empty, or a file that exists: a CA named but missing would leave HQ unreachable with no word why."""
    text = str(value).strip()
    if text and not Path(text).expanduser().is_file():
        raise ValueError(f"no such file: {text}")
    return str(Path(text).expanduser()) if text else ""


def _urls(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(_url(allow_empty=False)(item) for item in items if str(item).strip())


_USB_ID = re.compile(r"^[0-9a-f]{4}(:[0-9a-f]{4})?$")


def _usb_ids(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    ids = tuple(str(item).strip().lower() for item in items if str(item).strip())
    for usb_id in ids:
        if not _USB_ID.match(usb_id):
            raise ValueError(f"{usb_id!r} is not a USB id: 'vvvv' (a vendor) or 'vvvv:pppp' (a product), see lsusb")
    return ids


def _secret(value: Any) -> str:
    text = str(value)
    if text and len(text) < 16:
        raise ValueError("must be at least 16 characters (or empty to turn it off)")
    return text


def _optional_path(value: Any) -> str:
    text = str(value).strip()
    return str(Path(text).expanduser()) if text else ""


def _seconds(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number of seconds, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"expected {low} to {high} seconds, got {number}")
        return number

    return parse


def _per_s(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number per second, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number per second, got {value!r}") from None
        if not low <= number <= high:  # also refuses nan
            raise ValueError(f"expected {low} to {high} per second, got {number}")
        return number

    return parse


def setting(default: _T, parse: Callable[[Any], _T], help: str, *, secret: bool = False) -> _T:
    """A ``Settings`` field that carries its parser and help text, so a setting is declared in one place.

    ``secret`` marks a value that reports show only as set or unset.
    """
    return field(default=default, metadata={"parse": parse, "help": help, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Everything the box can be told. Defaults suit a Raspberry Pi on a store LAN."""

    data_dir: Path = setting(Path("data"), _path, "where the database, keys and photos live")  # noqa: RUF009 - setting() is a field()
    host: str = setting("0.0.0.0", _text(255), "address to listen on")  # noqa: S104 - the box serves the store LAN
    port: int = setting(
        8080,
        _int(0, 65535),
        "TCP port for the API and dashboard; on a box with a TLS certificate (docs/tls.md), plain HTTP serving only"
        " health, the store CA and a redirect to https_port",
    )
    https_port: int = setting(
        8443, _int(1, 65535), "TCP port for HTTPS, used when the data dir holds a server certificate (tls/)"
    )
    tls_check_s: int = setting(
        43_200,
        _int(1, 7 * 86_400),
        "seconds between checks of the server certificate while the box runs: renewed when due, and served"
        " from the next connection on when it was replaced (a retailer's new one)",
    )
    store_id: str = setting("store-001", _store_id, "this store's id, the same on every box of the store")
    store_name: str = setting("Store", _text(120), "the store's name as people see it")
    role: str = setting("box", _choice(*ROLES), "box (in a store) or hq (the hub that receives every store)")
    demo: bool = setting(False, _bool, "create the demo store on first start")
    log_level: str = setting("info", _choice("debug", "info", "warning", "error"), "debug, info, warning or error")
    token_ttl_s: int = setting(12 * 3600, _int(60, 30 * 24 * 3600), "seconds a login token stays valid")
    lease_ttl_s: int = setting(60, _int(2, 3600), "seconds a rack lease lasts without a heartbeat")
    lease_renew_s: int = setting(20, _int(1, 3600), "seconds between the heartbeats that renew a lease")
    lock_authority: bool = setting(
        True,
        _bool,
        "at start, designate this box the store's lock authority if the store has none yet as far as this box"
        " knows (its first box); set false on a box added to a store that has one. Moving it later: stockverify"
        " locks move-authority",
    )
    lock_authority_url: str = setting(
        "",
        _url(allow_empty=True),
        "the lock authority box's URL, for a box that forwards claims to it"
        " (empty: the box the store's replicated designation names)",
    )
    lock_forward_timeout_s: float = setting(
        3.0, _seconds(0.2, 60.0), "seconds a forwarded claim waits for the lock authority before failing"
    )
    max_request_bytes: int = setting(8 * 1024 * 1024, _int(1024, 1024 * 1024 * 1024), "largest request body accepted")
    # A phone's photo is 1-4 MiB; the bound is the protocol's (counting.ingest.MAX_PHOTO_BYTES), so a photo
    # the box took is never one a device's photo.attached event may not name.
    max_photo_bytes: int = setting(
        4 * 1024 * 1024, _int(1024, 16 * 1024 * 1024), "largest photo a handheld may upload, in bytes"
    )
    login_attempts_per_minute: int = setting(
        10, _int(1, 10_000), "login attempts allowed per address and user each minute"
    )
    # Per-device limits on the sync routes (auth.throttle). A handheld drains a backlog in batches of
    # 100-200 events, at most 2 in flight: a day offline is a few hundred batches, and the box takes a
    # few hundred a second from all its devices together, so a working handheld never meets them. They
    # hold a device caught in a loop to a sustained rate; the burst is what it gets before that. A
    # heartbeat (one every lease_renew_s) is one small write, cheap enough to allow as many at once.
    device_batches_per_s: float = setting(
        100.0, _per_s(0.01, 100_000.0), "sync batches each device may send per second, sustained"
    )
    device_batch_burst: int = setting(
        1000, _int(1, 1_000_000), "sync batches a device may send at once before device_batches_per_s applies"
    )
    device_heartbeats_per_s: float = setting(
        2.0, _per_s(0.01, 100_000.0), "heartbeats each device may send per second, sustained"
    )
    device_heartbeat_burst: int = setting(
        1000, _int(1, 1_000_000), "heartbeats a device may send at once before device_heartbeats_per_s applies"
    )
    password_memory_kib: int = setting(
        19_456, _int(8, 4 * 1024 * 1024), "memory (KiB) the password hash uses; higher is safer and slower"
    )
    password_time_cost: int = setting(2, _int(1, 50), "passes the password hash makes")
    public_url: str = setting(
        "",
        _url(allow_empty=True),
        "the URL other boxes reach this one at (default: found from the listening address)",
    )
    store_secret: str = setting(
        "", _secret, "the secret every box of this store shares; proves a peer belongs to the store", secret=True
    )
    peers: tuple[str, ...] = setting(
        (), _urls, "comma-separated URLs of this store's other boxes (mDNS finds them too)"
    )
    hq_url: str = setting(
        "", _url(allow_empty=True), "HQ's URL; the box pushes to it whenever it is reachable (empty: no HQ)"
    )
    hq_secret: str = setting(
        "",
        _secret,
        "the secret shared with HQ at enrolment (on HQ: the one every store presents)",
        secret=True,
    )
    hq_ca_file: str = setting(
        "",
        _pem_file,
        "the CA certificate (PEM) HQ's HTTPS certificate is checked against, given at enrolment"
        " (empty: the machine's trusted CAs)",
    )
    hq_mode: str = setting(
        "log",
        _choice("log", "counters"),
        "log (every event, for audit) or counters (only changed counter rows, for thin uplinks)",
    )
    replicate_every_s: float = setting(
        0.5, _seconds(0.05, 3600.0), "seconds between exchanges with a reachable peer box"
    )
    mdns: bool = setting(True, _bool, "advertise the box on the LAN by mDNS and find the store's other boxes")
    mdns_addresses: tuple[str, ...] = setting(
        (), _ipv4_list, "IPv4 addresses to advertise, comma-separated (empty: every non-loopback one)"
    )
    backup_dir: str = setting(
        "",
        _optional_path,
        "where stockverify backup writes its archives, the nightly ones too (empty: <data_dir>/backups)",
    )
    scanners: bool = setting(
        True,
        _bool,
        "read barcode scanners plugged into the box (keyboard-wedge and serial, found by udev); false on a box"
        " whose USB keyboards must stay keyboards",
    )
    scanner_allow: tuple[str, ...] = setting(
        (),
        _usb_ids,
        "more USB ids to take for scanners, comma-separated: a vendor 'vvvv' or one product 'vvvv:pppp'"
        " (the shipped udev rules know Zebra, Honeywell, Datalogic and Newland)",
    )
    scanner_layout: str = setting(
        "us",
        _text(32),
        "the keyboard layout a new keyboard-wedge scanner types in (us, gb, de, fr, …); each scanner can be"
        " changed on the dashboard's Scanners page",
    )
    backup_keep: int = setting(14, _int(1, 10_000), "how many of the newest backup archives backup_dir keeps")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "store.db"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def backups_dir(self) -> Path:
        return Path(self.backup_dir) if self.backup_dir else self.data_dir / "backups"


_FIELDS: dict[str, Field[Any]] = {f.name: f for f in fields(Settings)}

DEFAULT_SOURCE = "default"
FLAG_SOURCE = "command line"


@dataclass(frozen=True)
class SettingInfo:
    """One setting as a person is told about it: in ``stockverify settings`` and ``serve --help``."""

    name: str
    default: Any
    help: str
    secret: bool

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


def describe() -> tuple[SettingInfo, ...]:
    """Every setting, in declaration order, for help and reports built from the one declaration."""
    return tuple(
        SettingInfo(f.name, f.default, f.metadata["help"], bool(f.metadata.get("secret"))) for f in _FIELDS.values()
    )


def _coerce(name: str, value: Any, source: str) -> Any:
    try:
        return _FIELDS[name].metadata["parse"](value)
    except ValueError as exc:
        raise SettingsError(f"setting {name!r} (from {source}): {exc}") from None


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Build the settings from defaults, the TOML file, the environment and ``overrides`` (flags).

    ``overrides`` with value ``None`` are ignored so that unset command-line flags fall through.
    """
    return load_settings_with_sources(overrides, environ=environ, config_file=config_file)[0]


def load_settings_with_sources(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> tuple[Settings, dict[str, str]]:
    """``load_settings``, plus where each value came from, so a person can see which layer to change.

    A source is ``DEFAULT_SOURCE``, the config file's path, ``environment variable STOCKVERIFY_<NAME>``
    or ``FLAG_SOURCE``: the same words a bad value's error uses.
    """
    env = os.environ if environ is None else environ
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    for name in flags:
        if name not in _FIELDS:
            raise SettingsError(f"unknown setting {name!r}")

    values: dict[str, Any] = {}
    sources = dict.fromkeys(_FIELDS, DEFAULT_SOURCE)
    # The data dir decides where the default config file is, so it is resolved first.
    data_dir_source = flags.get("data_dir") or env.get(ENV_PREFIX + "DATA_DIR") or Settings.data_dir
    data_dir = _coerce("data_dir", data_dir_source, "data_dir")
    path = config_file or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
    if path is None and (data_dir / CONFIG_FILE_NAME).is_file():
        path = data_dir / CONFIG_FILE_NAME
    if path is not None:
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        for name, value in table.items():
            if name not in _FIELDS:
                raise SettingsError(f"setting {name!r} (from {path}) is not a known setting")
            values[name] = _coerce(name, value, str(path))
            sources[name] = str(path)
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env:
            source = f"environment variable {key}"
            values[name] = _coerce(name, env[key], source)
            sources[name] = source
    for name, value in flags.items():
        values[name] = _coerce(name, value, FLAG_SOURCE)
        sources[name] = FLAG_SOURCE

    settings = replace(Settings(), **values)
    if settings.lease_renew_s >= settings.lease_ttl_s:
        raise SettingsError(
            f"setting 'lease_renew_s' ({settings.lease_renew_s}) must be below 'lease_ttl_s' "
            f"({settings.lease_ttl_s}) or leases lapse between heartbeats"
        )
    if settings.lock_authority and settings.lock_authority_url:
        raise SettingsError(
            "setting 'lock_authority_url' names another box as the lock authority, but 'lock_authority' is"
            " true here too, which would designate this box: set lock_authority = false on a box that forwards"
            " its claims"
        )
    return settings, sources
