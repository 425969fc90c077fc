"""Insights: how a count went, not what it found — productivity, damage, serials, racks, data quality, KPIs.

Every insight only reads, one run at a time (``damage_trend`` and ``kpis`` go over the store's runs, one
bounded read per run), and answers plain dicts; ``as_table`` turns any of them into the ``Table`` the page
and the exports share.

Two sources, chosen per question:

* **The counters** (``scan_counts``, ``counted_scans``, the approved facts): what was counted, cheap to
  sum whatever the number of scans. Everything that says "units counted" uses the same rule as the
  rollups (approved sessions, a later approved recount replacing the first counts).
* **The log** (``events``): when things happened. Per-scan times and rack moves exist only there. The
  run's events are read once through the HLC index, from shortly before the run's creation on, and only
  the payload fields needed are decoded; time is the physical part of the HLC (when the writer made the
  scan, as the activity chart has it), not when it reached the box.

Where each lives:

* ``productivity`` — per verifier: scans, units, active time (``active_ms``, ``IDLE_GAP_MS``), racks
  finished, first counts against recounts.
* ``damage`` — damaged units by category and floor (``damage``), and run over run (``damage_trend``).
* ``serials`` — every serial on an item of the run, duplicates first.
* ``heatmap`` — per rack and per floor: time, scans, units, variance rate.
* ``quality`` — the 0-100 data quality score (``score``, ``QUALITY_WEIGHTS``) per session and per run.
* ``kpis`` — one run's key figures (``run_kpis``) and every run's (``kpis``).
* ``kinds`` — ``KINDS`` and ``insight``, the answer of one kind, for the API and ``as_table``.
* ``tables`` — ``as_table``, an insight as the ``Table`` the exports take.
* ``_common`` — what several share: time from an HLC, rates, the run's sessions and its log read.
"""

from appliance.reports.insights._common import CLOCK_MARGIN_MS
from appliance.reports.insights.damage import damage, damage_trend
from appliance.reports.insights.heatmap import heatmap
from appliance.reports.insights.kinds import KINDS, insight
from appliance.reports.insights.kpis import kpis, run_kpis
from appliance.reports.insights.productivity import HOUR_MS, IDLE_GAP_MS, active_ms, productivity
from appliance.reports.insights.quality import QUALITY_WEIGHTS, RESOLVED_CONFLICT_COST, quality, score
from appliance.reports.insights.serials import serials
from appliance.reports.insights.tables import as_table

__all__ = [
    "CLOCK_MARGIN_MS",
    "HOUR_MS",
    "IDLE_GAP_MS",
    "KINDS",
    "QUALITY_WEIGHTS",
    "RESOLVED_CONFLICT_COST",
    "active_ms",
    "as_table",
    "damage",
    "damage_trend",
    "heatmap",
    "insight",
    "kpis",
    "productivity",
    "quality",
    "run_kpis",
    "score",
    "serials",
]
