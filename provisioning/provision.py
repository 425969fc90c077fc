"""``stockverify provision``: a fresh data folder (and, with ``--root``, a staged filesystem) becomes a
store box, one step at a time, each safe to run again.

A field tech provisions many boxes, often from a script and sometimes twice by mistake, so every step
first looks at what is there and changes only what differs: a second run reports every step as
unchanged and touches nothing (the database, the keys, the certificate and its fingerprint stay as
they were). What the tech asked for comes from flags or a TOML plan file with the same names, so a
fleet is provisioned without questions.

Steps, in order: the settings file, the box itself (database, node key, store), the first admin, the
store CA and the server certificate (or a certificate the retailer supplies), HQ's first contact, the
systemd units and udev rules, the first product master. Then what a person does next.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.auth import people
from appliance.box import Box, open_box
from appliance.catalog import product_import
from appliance.settings import CONFIG_FILE_NAME, Settings, load_settings
from provisioning import certificates
from provisioning.files import write_if_changed, write_whole

UNITS_DIR = Path(__file__).resolve().parents[1] / "systemd"
UNIT_FILES = ("stockverify.service", "stockverify-backup.service", "stockverify-backup.timer")
UDEV_FILES = ("60-stockverify-scanners.rules",)
STATE_FILE = "provisioned.json"  # what provisioning did that the log does not say (the master's hash)
HQ_TIMEOUT_S = 3.0


class ProvisionError(Exception):
    """A step cannot go on; the message says what the tech does about it."""


@dataclass
class Plan:
    """What the field tech asked for."""

    data_dir: Path
    store_id: str
    store_name: str
    admin_username: str = "admin"
    admin_password: str | None = None
    root: Path = Path("/")
    join: bool = False  # a second box of the store: it forwards locks to the first
    peers: list[str] = field(default_factory=list)
    hq_url: str = ""
    store_secret: str = ""
    hostnames: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    cert_file: Path | None = None
    key_file: Path | None = None
    products: Path | None = None
    ca_dir: Path | None = None  # the store's CA (ca.pem, ca-key.pem) from its first box, for a box that joins
    install_units: bool = True

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> Plan:
        """A plan in TOML with the flags' names (``store_id``, ``admin_password``, ``peers``, …)."""
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ProvisionError(f"cannot read the plan {path}: {exc}") from None
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(table) - known)
        if unknown:
            raise ProvisionError(f"the plan {path} has unknown keys: {', '.join(unknown)}")
        values = {**table, **{k: v for k, v in overrides.items() if v not in (None, (), [])}}
        for key in ("data_dir", "root", "cert_file", "key_file", "products", "ca_dir"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        return cls(**values)


@dataclass(frozen=True)
class Step:
    name: str
    changed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "changed": self.changed, "detail": self.detail}


@dataclass
class Outcome:
    steps: list[Step] = field(default_factory=list)
    fingerprint: str = ""
    next_steps: list[str] = field(default_factory=list)
    ca_page: str = ""

    @property
    def changed(self) -> bool:
        return any(step.changed for step in self.steps)


def provision(plan: Plan, report: Callable[[Step], None] = lambda step: None) -> Outcome:
    """Run every step in order, telling ``report`` as each ends; stop at the first that cannot go on."""
    outcome = Outcome()

    def done(step: Step) -> None:
        outcome.steps.append(step)
        report(step)

    plan.data_dir.mkdir(parents=True, exist_ok=True)
    done(_settings_file(plan))
    existed = (plan.data_dir / "store.db").is_file()
    box = open_box(load_settings({"data_dir": plan.data_dir}))
    try:
        done(_the_box(box, existed))
        done(_admin(plan, box))
        tls, outcome.fingerprint = _tls(plan)
        done(tls)
        done(_hq(plan))
        if plan.install_units:
            done(_units(plan))
        done(_products(plan, box))
    finally:
        box.close()
    outcome.ca_page, outcome.next_steps = _next_steps(plan, box.settings, outcome.fingerprint)
    return outcome


# -- steps ----------------------------------------------------------------------------------------
def _settings_file(plan: Plan) -> Step:
    path = plan.data_dir / CONFIG_FILE_NAME
    existing: dict[str, Any] = {}
    if path.is_file():
        existing = tomllib.loads(path.read_text(encoding="utf-8"))
        if existing.get("store_id", plan.store_id) != plan.store_id:
            raise ProvisionError(
                f"{path} belongs to store {existing['store_id']!r}, not {plan.store_id!r}: use another data folder"
            )
    wanted = {
        **existing,
        "store_id": plan.store_id,
        "store_name": plan.store_name,
        # The first box of a store grants its locks; a box that joins forwards them (DESIGN §6).
        "lock_authority": not plan.join,
    }
    if plan.peers:
        wanted["peers"] = list(plan.peers)
    if plan.hq_url:
        wanted["hq_url"] = plan.hq_url
    if plan.store_secret:
        wanted["store_secret"] = plan.store_secret
    if wanted == existing:
        return Step("settings", False, f"{path} already as asked")
    text = "".join(f"{key} = {_toml(value)}\n" for key, value in sorted(wanted.items()))
    write_whole(path, text.encode(), 0o600)  # it may hold the store secret
    load_settings({"data_dir": plan.data_dir})  # every value is read back as the box reads it
    return Step("settings", True, f"wrote {path}")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _the_box(box: Box, existed: bool) -> Step:
    node = box.node
    if existed:
        return Step("box", False, f"node {node.node_id} of store {node.store_id}")
    return Step("box", True, f"made node {node.node_id} of store {node.store_id}, its key and database")


def _admin(plan: Plan, box: Box) -> Step:
    found = box.db.read().execute("SELECT user_id FROM users WHERE username = ?", (plan.admin_username,)).fetchone()
    if found is not None:
        return Step("admin", False, f"{plan.admin_username} already exists")
    if not plan.admin_password:
        raise ProvisionError("the first admin needs a password: --admin-password or admin_password in the plan")
    name = people.check_new_user(plan.admin_username, "admin", plan.admin_password)
    settings = box.settings
    password_hash = people.Passwords(settings.password_memory_kib, settings.password_time_cost).hash(
        plan.admin_password
    )
    box.db.write(lambda conn: people.add_user(conn, box.log, name, "Administrator", "admin", password_hash))
    return Step("admin", True, f"added {plan.admin_username} (admin)")


def _tls(plan: Plan) -> tuple[Step, str]:
    before = certificates.load_server_identity(plan.data_dir)
    if plan.cert_file or plan.key_file:
        if not (plan.cert_file and plan.key_file):
            raise ProvisionError("a supplied certificate needs both --cert and --key")
        identity = certificates.install_supplied_certificate(
            plan.data_dir, plan.cert_file.read_bytes(), plan.key_file.read_bytes()
        )
        origin = f"the retailer's certificate from {plan.cert_file}"
    else:
        if plan.ca_dir is not None:
            copy_store_ca(plan.ca_dir, plan.data_dir)
        certificates.ensure_store_ca(plan.data_dir, plan.store_name)
        hostnames, addresses = certificates.default_names()
        slug = _slug(plan.store_name)
        names = list(dict.fromkeys([*plan.hostnames, *(f"{h}.local" for h in plan.hostnames), *hostnames]))
        if slug:
            names.append(f"{slug}.local")
        identity = certificates.ensure_server_certificate(
            plan.data_dir,
            hostnames=list(dict.fromkeys(names)),
            addresses=list(dict.fromkeys([*plan.addresses, *addresses])),
        )
        origin = "signed by the store CA"
    changed = before is None or before.fingerprint != identity.fingerprint
    detail = (
        f"server certificate {origin}, fingerprint {identity.fingerprint[:16]}…,"
        f" valid until {identity.not_after:%Y-%m-%d}"
    )
    return Step("tls", changed, detail), identity.fingerprint


def _slug(name: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def _hq(plan: Plan) -> Step:
    if not plan.hq_url:
        return Step("hq", False, "no HQ named: the box works alone until one is set (hq_url)")
    url = plan.hq_url.rstrip("/") + "/api/health"
    try:
        with urllib.request.urlopen(url, timeout=HQ_TIMEOUT_S) as answer:  # noqa: S310 - a URL the tech gave
            reachable = answer.status == 200
    except (urllib.error.URLError, OSError, TimeoutError):
        reachable = False
    if reachable:
        return Step("hq", False, f"HQ answers at {plan.hq_url}; the box enrols at its first exchange")
    return Step("hq", False, f"HQ at {plan.hq_url} does not answer now; the box keeps trying once it runs")


def _units(plan: Plan) -> Step:
    root = plan.root
    if root == Path("/") and os.geteuid() != 0:
        raise ProvisionError("installing the systemd units needs root: run with sudo, or pass --root DIR or --no-units")
    wanted: dict[Path, bytes] = {}
    for name in UNIT_FILES:
        source = UNITS_DIR / name
        if source.is_file():
            wanted[root / "etc/systemd/system" / name] = source.read_bytes()
    for name in UDEV_FILES:
        source = UNITS_DIR / name
        if source.is_file():
            wanted[root / "etc/udev/rules.d" / name] = source.read_bytes()
    wanted[root / "etc/stockverify/environment"] = f"STOCKVERIFY_DATA_DIR={plan.data_dir}\n".encode()
    links = {
        root / "etc/systemd/system/multi-user.target.wants/stockverify.service": Path("../stockverify.service"),
    }
    if (UNITS_DIR / "stockverify-backup.timer").is_file():
        links[root / "etc/systemd/system/timers.target.wants/stockverify-backup.timer"] = Path(
            "../stockverify-backup.timer"
        )
    written = [path for path, content in wanted.items() if write_if_changed(path, content)]
    for link, target in links.items():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        written.append(link)
    if not written:
        return Step("units", False, f"systemd units and udev rules already in place under {root}")
    return Step("units", True, f"installed {len(written)} file(s) under {root} (units enabled)")


def _products(plan: Plan, box: Box) -> Step:
    if plan.products is None:
        return Step("products", False, "no product master given: import one later (stockverify products import)")
    data = plan.products.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    state_path = plan.data_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("products_sha256") == digest:
        return Step("products", False, f"{plan.products.name} already imported")
    parsed = product_import.parse_file(data, plan.products.name)
    if parsed.errors:
        first = parsed.errors[0]
        raise ProvisionError(
            f"{plan.products.name}: {len(parsed.errors)} problem(s), nothing imported; line {first.get('line')}"
            f" {first.get('column')}: {first.get('reason')}"
        )
    result = box.db.write(lambda conn: product_import.commit(conn, box.log, parsed))
    write_if_changed(state_path, json.dumps({**state, "products_sha256": digest}, indent=2).encode())
    return Step("products", True, f"imported {result['rows']} products from {plan.products.name}")


def _next_steps(plan: Plan, settings: Settings, fingerprint: str) -> tuple[str, list[str]]:
    host = (plan.hostnames or [socket.gethostname()])[0]
    https_port = settings.https_port
    ca_page = f"http://{host}.local:{settings.port}/ca"
    groups = " ".join(fingerprint[i : i + 4] for i in range(0, min(len(fingerprint), 32), 4))
    return ca_page, [
        "sudo systemctl start stockverify (or reboot): the box starts, and serves HTTPS",
        f"open the dashboard: https://{host}.local:{https_port}/ and log in as {plan.admin_username}",
        f"on each handheld, install the store CA from {ca_page} (the QR below); its fingerprint starts {groups}",
        "a supervisor makes a pairing code on the dashboard's Devices page and pairs each handheld",
    ]


def summary(outcome: Outcome) -> dict[str, Any]:
    return {
        "changed": outcome.changed,
        "steps": [step.to_dict() for step in outcome.steps],
        "fingerprint": outcome.fingerprint,
        "ca_page": outcome.ca_page,
        "next_steps": outcome.next_steps,
    }


def copy_store_ca(source_dir: Path, data_dir: Path) -> bool:
    """A second box of a store uses the first box's CA, so handhelds trust one certificate per store."""
    target = data_dir / certificates.TLS_DIR
    changed = False
    for name in (certificates.CA_FILE, certificates.CA_KEY_FILE):
        source = source_dir / name
        if not source.is_file():
            raise ProvisionError(f"{source} is missing: copy ca.pem and ca-key.pem from the store's first box")
        destination = target / name
        if destination.is_file() and destination.read_bytes() == source.read_bytes():
            continue
        target.mkdir(parents=True, exist_ok=True)
        write_whole(destination, source.read_bytes(), 0o600)
        changed = True
    return changed
