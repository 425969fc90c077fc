"""The counting domain: runs, sessions, items, conflicts, buckets, rollups and variance (DESIGN §7).

Importing the package registers every projector the domain owns with the event log.
"""

from appliance.counting import (
    authority,
    codes,
    conflicts,
    held,
    items,
    lifecycle,
    locks,
    photos,
    rollups,
    runs,
    sessions,
    stations,
    variance,
)

__all__ = [
    "authority",
    "codes",
    "conflicts",
    "held",
    "items",
    "lifecycle",
    "locks",
    "photos",
    "rollups",
    "runs",
    "sessions",
    "stations",
    "variance",
]
