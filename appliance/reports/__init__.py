"""Reports for the manager and HQ: a run's facts, snapshots, queries and group-by, comparisons,
exports, imports, insights and the audit report. Everything here reads the counting domain's
projections; only snapshots, saved queries and import mappings are written, as events.

Importing the package registers the projectors of what it writes with the event log.
"""

from appliance.reports import imports, query, snapshots

__all__ = ["imports", "query", "snapshots"]
