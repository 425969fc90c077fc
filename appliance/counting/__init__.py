"""The counting domain: runs, sessions, items, conflicts, buckets, rollups and variance (DESIGN §7).

Importing the package registers every projector the domain owns with the event log.
"""

from appliance.counting import codes, conflicts, items, lifecycle, locks, photos, rollups, runs, sessions, variance

__all__ = ["codes", "conflicts", "items", "lifecycle", "locks", "photos", "rollups", "runs", "sessions", "variance"]
