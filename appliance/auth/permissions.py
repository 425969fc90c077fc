"""Who may do what: every permission and the roles that hold it, declared in one table.

Every route names the permission it needs (``opt={"permission": ...}``) or says it is public
(``opt={"public": True}``). The app-wide guard denies any route that does neither, and ``create_app``
refuses to start if such a route exists, so a forgotten declaration can never become an open door.
"""

from __future__ import annotations

ROLES = ("verifier", "supervisor", "admin", "auditor")

# Paths open to anyone without a route-level declaration: the OpenAPI schema Litestar serves.
PUBLIC_PREFIXES = ("/schema",)

_ALL = frozenset(ROLES)
_MANAGERS = frozenset({"supervisor", "admin"})
_OVERSIGHT = frozenset({"supervisor", "admin", "auditor"})

PERMISSIONS: dict[str, frozenset[str]] = {
    # Everyone who can log in.
    "session.me": _ALL,
    "live.read": _ALL,
    "layout.read": _ALL,
    "products.read": _ALL,
    # Expected on-hand quantities are never shown to verifiers (blind counting).
    "products.read_expected": _OVERSIGHT,
    "products.import": _MANAGERS,
    "layout.write": frozenset({"admin"}),
    "users.read": frozenset({"admin", "auditor"}),
    "users.write": frozenset({"admin"}),
    # The raw log and chain verification: for audit and for diagnosis.
    "log.read": frozenset({"admin", "auditor"}),
    # Counting. Verifiers see and change only their own sessions (checked in the domain).
    "runs.read": _OVERSIGHT,
    "runs.manage": _MANAGERS,
    "sessions.read": _ALL,
    "sessions.count": frozenset({"verifier", "supervisor", "admin"}),
    "sessions.manage": _MANAGERS,
    "conflicts.read": _OVERSIGHT,
    "conflicts.resolve": _MANAGERS,
    "codes.map": _MANAGERS,
    "tolerances.write": _MANAGERS,
    # Handhelds: pairing codes, the device list, revocation and the quarantine it creates.
    "devices.read": _OVERSIGHT,
    "devices.manage": _MANAGERS,
    # Scanners plugged into the box: their list, settings and stations, and the codes no session took.
    # A station's own screen is open to its session's verifier too (checked in the route).
    "scanners.read": _OVERSIGHT,
    "scanners.manage": _MANAGERS,
    "stations.view": _ALL,
    # Reports: queries, snapshots, comparisons, insights, the audit report and their exports. An auditor
    # reads and exports them and changes nothing; saving a snapshot or a query, and importing, are the
    # managers'.
    "reports.read": _OVERSIGHT,
    "reports.write": _MANAGERS,
    "reports.import": _MANAGERS,
    # Replication with the store's other boxes and HQ: lag, pending events, errors.
    "replication.read": _OVERSIGHT,
    # Which box grants the store's locks: moving it voids every lease of the epoch before (DESIGN §6).
    "locks.authority": frozenset({"admin"}),
    # HQ only (a store box answers NOT_HQ): the stores HQ holds, and writing a store's product master
    # and planned runs into its replica, which every box of that store then pulls. Only admins write:
    # an HQ account may write for any store, a wider reach than a store supervisor's over one store.
    "hq.stores.read": _OVERSIGHT,
    "hq.stores.write": frozenset({"admin"}),
}


def allowed(permission: str, role: str) -> bool:
    return role in PERMISSIONS.get(permission, frozenset())
