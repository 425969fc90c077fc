"""The box's one settings object.

Every setting is declared once below with its default and help text. Values come, lowest precedence
first, from the defaults, the TOML file (``<data_dir>/stockverify.toml`` or ``STOCKVERIFY_CONFIG``),
``STOCKVERIFY_<NAME>`` environment variables, and finally command-line flags. They are checked once at
start; a bad value stops the start with a message that names the setting and where it came from, so a
field tech reading ``journalctl`` knows which line to fix.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "STOCKVERIFY_"
CONFIG_FILE_NAME = "stockverify.toml"
ROLES = ("box", "hq")


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


def _urls(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(_url(allow_empty=False)(item) for item in items if str(item).strip())


def _secret(value: Any) -> str:
    text = str(value)
    if text and len(text) < 16:
        raise ValueError("must be at least 16 characters (or empty to turn it off)")
    return text


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


@dataclass(frozen=True)
class Settings:
    """Everything the box can be told. Defaults suit a Raspberry Pi on a store LAN."""

    data_dir: Path = Path("data")
    host: str = "0.0.0.0"  # noqa: S104 - the box serves the store LAN
    port: int = 8080
    store_id: str = "store-001"
    store_name: str = "Store"
    role: str = "box"
    demo: bool = False
    log_level: str = "info"
    token_ttl_s: int = 12 * 3600
    lease_ttl_s: int = 60
    lease_renew_s: int = 20
    lock_authority: bool = True
    lock_authority_url: str = ""
    lock_forward_timeout_s: float = 3.0
    max_request_bytes: int = 8 * 1024 * 1024
    login_attempts_per_minute: int = 10
    password_memory_kib: int = 19_456
    password_time_cost: int = 2
    public_url: str = ""
    store_secret: str = ""
    peers: tuple[str, ...] = ()
    hq_url: str = ""
    hq_secret: str = ""
    hq_mode: str = "log"
    replicate_every_s: float = 0.5
    mdns: bool = True
    mdns_addresses: tuple[str, ...] = ()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "store.db"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "data_dir": _path,
    "host": _text(255),
    "port": _int(0, 65535),
    "store_id": _store_id,
    "store_name": _text(120),
    "role": _choice(*ROLES),
    "demo": _bool,
    "log_level": _choice("debug", "info", "warning", "error"),
    "token_ttl_s": _int(60, 30 * 24 * 3600),
    "lease_ttl_s": _int(2, 3600),
    "lease_renew_s": _int(1, 3600),
    "lock_authority": _bool,
    "lock_authority_url": _url(allow_empty=True),
    "lock_forward_timeout_s": _seconds(0.2, 60.0),
    "max_request_bytes": _int(1024, 1024 * 1024 * 1024),
    "login_attempts_per_minute": _int(1, 10_000),
    "password_memory_kib": _int(8, 4 * 1024 * 1024),
    "password_time_cost": _int(1, 50),
    "mdns": _bool,
    "mdns_addresses": _ipv4_list,
    "public_url": _url(allow_empty=True),
    "store_secret": _secret,
    "peers": _urls,
    "hq_url": _url(allow_empty=True),
    "hq_secret": _secret,
    "hq_mode": _choice("log", "counters"),
    "replicate_every_s": _seconds(0.05, 3600.0),
}

HELP: dict[str, str] = {
    "data_dir": "where the database, keys and photos live",
    "host": "address to listen on",
    "port": "TCP port for the API and dashboard",
    "store_id": "this store's id, the same on every box of the store",
    "store_name": "the store's name as people see it",
    "role": "box (in a store) or hq (the hub that receives every store)",
    "demo": "create the demo store on first start",
    "log_level": "debug, info, warning or error",
    "token_ttl_s": "seconds a login token stays valid",
    "lease_ttl_s": "seconds a rack lease lasts without a heartbeat",
    "lease_renew_s": "seconds between the heartbeats that renew a lease",
    "lock_authority": "whether this box grants rack and session locks for the store",
    "lock_authority_url": "the lock authority box's URL, for a box that forwards claims to it"
    " (empty: the peer box that says it is the authority)",
    "lock_forward_timeout_s": "seconds a forwarded claim waits for the lock authority before failing",
    "max_request_bytes": "largest request body accepted",
    "login_attempts_per_minute": "login attempts allowed per address and user each minute",
    "password_memory_kib": "memory (KiB) the password hash uses; higher is safer and slower",
    "password_time_cost": "passes the password hash makes",
    "mdns": "advertise the box on the LAN by mDNS and find the store's other boxes",
    "mdns_addresses": "IPv4 addresses to advertise, comma-separated (empty: every non-loopback one)",
    "public_url": "the URL other boxes reach this one at (default: found from the listening address)",
    "store_secret": "the secret every box of this store shares; proves a peer belongs to the store",
    "peers": "comma-separated URLs of this store's other boxes (mDNS finds them too)",
    "hq_url": "HQ's URL; the box pushes to it whenever it is reachable (empty: no HQ)",
    "hq_secret": "the secret shared with HQ at enrolment (on HQ: the one every store presents)",
    "hq_mode": "log (every event, for audit) or counters (only changed counter rows, for thin uplinks)",
    "replicate_every_s": "seconds between exchanges with a reachable peer box",
}


def _coerce(name: str, value: Any, source: str) -> Any:
    try:
        return _PARSERS[name](value)
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
    env = os.environ if environ is None else environ
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    known = {f.name for f in fields(Settings)}
    for name in flags:
        if name not in known:
            raise SettingsError(f"unknown setting {name!r}")

    values: dict[str, Any] = {}
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
            if name not in known:
                raise SettingsError(f"setting {name!r} (from {path}) is not a known setting")
            values[name] = _coerce(name, value, str(path))
    for name in known:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = _coerce(name, env[key], f"environment variable {key}")
    for name, value in flags.items():
        values[name] = _coerce(name, value, "command line")

    settings = replace(Settings(), **values)
    if settings.lease_renew_s >= settings.lease_ttl_s:
        raise SettingsError(
            f"setting 'lease_renew_s' ({settings.lease_renew_s}) must be below 'lease_ttl_s' "
            f"({settings.lease_ttl_s}) or leases lapse between heartbeats"
        )
    if settings.lock_authority and settings.lock_authority_url:
        raise SettingsError(
            "setting 'lock_authority_url' names another box as the lock authority, but 'lock_authority' is"
            " true here too: set lock_authority = false on a box that forwards its claims"
        )
    return settings
