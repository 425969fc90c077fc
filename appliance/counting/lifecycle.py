"""Run and session lifecycles (DESIGN §7) as data: states, their rank, and the allowed moves.

Statuses are join-semilattices so replicas converge: a run's status is the highest-ranked one any
replica recorded. A session's status is ranked by ``(round, rank)``: sending a submitted session back
for recount starts a new round, which is how a deliberate backward move still merges forward.
Concurrent terminal states resolve deterministically: CANCELLED outranks CLOSED, VOID outranks
APPROVED (excluding a session is the safe side of a tie).
"""

from __future__ import annotations

RUN_RANK = {"PLANNED": 0, "IN_PROGRESS": 1, "COMPLETED": 2, "CLOSED": 3, "CANCELLED": 4}
RUN_MOVES = {
    "PLANNED": {"IN_PROGRESS", "CANCELLED"},
    "IN_PROGRESS": {"COMPLETED", "CANCELLED"},
    "COMPLETED": {"CLOSED", "CANCELLED"},
    "CLOSED": set(),
    "CANCELLED": set(),
}

SESSION_RANK = {"CREATED": 0, "ASSIGNED": 1, "IN_PROGRESS": 2, "SUBMITTED": 3, "APPROVED": 4, "VOID": 5}
# Each action names the states it may start from and the state it leads to; the same target can be
# reached by two actions (start, send back) from different states, so moves are checked per action.
SESSION_ACTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "assign": (("CREATED",), "ASSIGNED"),
    "start": (("ASSIGNED",), "IN_PROGRESS"),
    "submit": (("IN_PROGRESS",), "SUBMITTED"),
    "approve": (("SUBMITTED",), "APPROVED"),
    "send_back": (("SUBMITTED",), "IN_PROGRESS"),
    "void": (("CREATED", "ASSIGNED", "IN_PROGRESS", "SUBMITTED"), "VOID"),
}
# Sessions that tie their verifier (and device) up: nobody holds two of these at once.
ACTIVE_SESSION = ("ASSIGNED", "IN_PROGRESS")
TERMINAL_SESSION = ("APPROVED", "VOID")


def run_can_move(current: str, target: str) -> bool:
    return target in RUN_MOVES[current]


def session_can(action: str, current: str) -> bool:
    return current in SESSION_ACTIONS[action][0]
