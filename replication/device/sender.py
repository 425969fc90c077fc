"""The background sender: moves the outbox's pending records to the box, in order, and records the answers.

Rules (docs/sync-protocol.md §3.1, §4):

* Records go in seq order, in batches of ``batch_size`` (100 to 200 in the field), at most ``max_in_flight``
  (2) requests at a time: the second batch hides the first's round trip without flooding a box that
  serves the whole floor.
* ``ok`` → synced; an event named in ``conflicts`` → conflict (stored, a supervisor will look; the
  sender goes on, because a conflict must never block other scans).
* ``SEQUENCE_GAP`` → send again from the box's ``expected_seq`` at once. Two batches in flight can
  overtake each other on the way, so the sender first lets the other batch land, then resends.
* Network failures, timeouts, 5xx, 408, 429 (the rule of ``replication.retry``) and ``CLOCK_AHEAD``,
  which time heals → wait 2 s doubling to 5 min, each wait times a random factor in [0.5, 1.5] so
  that a floor of handhelds does not hit a box that comes back all in the same second; the wait
  starts over after a success.
* Anything else (a refused event, 400, 401, 403 REVOKED) → the records are failed and the sender
  stops: sending again would get the same answer, and a person has to look.

What is on disk is the whole state: a record is pending until an answer says otherwise, so a sender
killed at any point resends what it had in flight, and the box answers those ``ok`` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from replication.device import transport
from replication.device.outbox import Mark, Outbox, Record
from replication.retry import Backoff as Backoff  # re-exported: callers still import it from here

log = logging.getLogger(__name__)

RESEND_CODES = frozenset({"SEQUENCE_GAP", "NOT_PROCESSED"})
WAIT_CODES = frozenset({"CLOCK_AHEAD"})


@dataclass(frozen=True)
class SenderSettings:
    batch_size: int = 150
    max_in_flight: int = 2
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    poll_s: float = 1.0  # how often to look for records another process appended

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 500:
            raise ValueError("batch_size must be 1-500 (the box takes at most 500 events a batch)")
        if not 1 <= self.max_in_flight <= 2:
            raise ValueError("max_in_flight must be 1 or 2 (docs/sync-protocol.md §4)")
        if not 0 < self.backoff_base_s <= self.backoff_max_s:
            raise ValueError("backoff_base_s must be > 0 and <= backoff_max_s")


@dataclass
class Progress:
    """What a status line shows: this run's figures and the queue as it is on disk."""

    counts: dict[str, int]
    in_flight: int
    batches: int
    sent_events: int
    started_at: float
    last_error: str | None = None
    next_retry_at: float | None = None  # wall clock, seconds since the epoch
    stopped: str | None = None  # why the sender waits for a person

    @property
    def pending(self) -> int:
        return self.counts.get("pending", 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "in_flight": self.in_flight,
            "batches": self.batches,
            "sent_events": self.sent_events,
            "elapsed_s": round(time.time() - self.started_at, 3),
            "last_error": self.last_error,
            "next_retry_at": self.next_retry_at,
            "stopped": self.stopped,
        }


@dataclass
class _Round:
    """What the answers since the last quiet moment said about where to go on from."""

    hold: bool = False  # send nothing new until every batch in flight has landed
    gap: bool = False  # some answer said SEQUENCE_GAP
    expected_seq: int = 0  # the highest expected_seq of the round's answers: the box's latest word
    wait: bool = False  # back off before the next send (one step per round, however many batches failed)
    retry_after: float = 0.0  # the box's Retry-After, if it said one
    stop: str | None = None


@dataclass
class _Counters:
    batches: int = 0
    sent_events: int = 0
    started_at: float = field(default_factory=time.time)


class Sender:
    """Sends one outbox's pending records to its box until stopped or a person is needed."""

    def __init__(
        self,
        outbox: Outbox,
        http: aiohttp.ClientSession,
        settings: SenderSettings | None = None,
        *,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.identity = outbox.require_identity()
        self.settings = settings or SenderSettings()
        self._http = http
        self._key = outbox.key()
        self._wall = wall
        self._backoff = Backoff(self.settings.backoff_base_s, self.settings.backoff_max_s, rng or random.Random())
        self._batch_size = self.settings.batch_size
        self._in_flight: set[asyncio.Task[None]] = set()
        self._round = _Round()
        self._counters = _Counters()
        self._cursor = 0  # highest seq handed to a batch in flight
        self._nudge = asyncio.Event()
        self._quiet = asyncio.Condition()
        self._asked = 0  # wait_idle calls so far
        self._quiet_for = 0  # the latest of them answered by a look that found nothing to send
        self._runner: asyncio.Task[None] | None = None
        self._ended = False
        self._closing = False
        self._last_error: str | None = outbox.get_meta("last_error")
        self._next_retry_at: float | None = None
        self._stopped: str | None = None
        self._warned = False

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=f"outbox-sender:{self.identity.writer_id}")

    async def stop(self) -> None:
        """Cancel the loop and every request in flight, and wait for them: nothing is left running.

        A batch cut off here stays pending on disk and is simply sent again next time.
        """
        self._closing = True  # the loop also checks this, so a lost cancel cannot keep it alive
        tasks = [t for t in (self._runner, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._runner = None
        self._in_flight.clear()

    def wake(self) -> None:
        """New records were appended: look now rather than at the next poll."""
        self._nudge.set()

    def retry_now(self) -> None:
        """The network is back (a heartbeat got through): cut the current wait short."""
        self._next_retry_at = None
        self._nudge.set()

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until a look at the outbox that began after this call found nothing pending or in
        flight, or the sender stopped for a person. Returns False if ``timeout`` passed first.

        "Began after this call" matters: records appended just before it must be sent, not missed
        by a look that was already under way.
        """
        self._asked += 1
        asked = self._asked
        self._nudge.set()

        async def quiet() -> None:
            async with self._quiet:
                await self._quiet.wait_for(lambda: self._quiet_for >= asked or self._finished)

        try:
            async with asyncio.timeout(timeout):
                await quiet()
        except TimeoutError:
            return False
        return True

    @property
    def _finished(self) -> bool:
        return self._ended or self._runner is None or (self._stopped is not None and not self._in_flight)

    async def _announce(self, asked: int | None) -> None:
        async with self._quiet:
            if asked is not None:
                self._quiet_for = max(self._quiet_for, asked)
            self._quiet.notify_all()

    @property
    def next_retry_at(self) -> float | None:
        return self._next_retry_at

    def progress(self) -> Progress:
        return Progress(
            counts=self.outbox.status_counts(),
            in_flight=len(self._in_flight),
            batches=self._counters.batches,
            sent_events=self._counters.sent_events,
            started_at=self._counters.started_at,
            last_error=self._last_error,
            next_retry_at=self._next_retry_at,
            stopped=self._stopped,
        )

    # -- the loop ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: say it, and let whoever waits on the sender go on
            log.exception("the sender failed")
            self._halt(f"internal error: {exc!r}")
        finally:
            self._ended = True
            await self._announce(None)

    async def _loop(self) -> None:
        failed = (await asyncio.to_thread(self.outbox.status_counts))["failed"]
        if failed:
            self._halt(f"{failed} failed record(s) wait for a person (then `device sync --retry-failed`)")
        while self._stopped is None and not self._closing:
            self._nudge.clear()  # before looking, so a batch that lands meanwhile still wakes the wait below
            asked = self._asked
            if not self._in_flight:
                await self._between_rounds()
                if self._stopped is not None:
                    break
            if self._next_retry_at is not None and self._wall() < self._next_retry_at:
                await self._sleep(self._next_retry_at - self._wall())
                continue
            self._next_retry_at = None
            if not await self._dispatch():
                await self._announce(asked)
            await self._sleep(self.settings.poll_s)
        # Stopped for a person: let the other batch land so its answer is kept.
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _between_rounds(self) -> None:
        """Every batch has landed: act on what the round's answers said, then start afresh."""
        decided, self._round = self._round, _Round()
        self._cursor = 0
        if decided.stop is not None:
            self._halt(decided.stop)
            return
        if decided.gap:
            # Usually the second batch overtook the first, and resending what is pending is all it takes.
            # But if the box wants a seq below everything pending, it lacks events we hold as synced
            # (it was restored from a backup, say): those are sent again.
            lowest = await asyncio.to_thread(self.outbox.pending, 1)
            if lowest and decided.expected_seq < lowest[0].seq:
                count = await asyncio.to_thread(self.outbox.requeue, decided.expected_seq)
                log.warning("the box lacks %d synced events; sending them again", count)
        if decided.wait:
            delay = max(self._backoff.next_delay(), decided.retry_after)
            self._next_retry_at = self._wall() + delay
            (log.debug if self._warned else log.warning)("%s; trying again in %.2f s", self._last_error, delay)
            self._warned = True  # a repeated failure is said once at warning level, then at debug

    async def _dispatch(self) -> bool:
        """Start batches while there is room; whether anything was started or is still in flight."""
        started = False
        while len(self._in_flight) < self.settings.max_in_flight and not self._round.hold and self._stopped is None:
            records = await asyncio.to_thread(self.outbox.pending, self._batch_size, after_seq=self._cursor)
            if not records:
                break
            records = _contiguous(records)
            self._cursor = records[-1].seq
            task = asyncio.create_task(self._send(records), name=f"outbox-batch:{records[0].seq}-{records[-1].seq}")
            self._in_flight.add(task)
            task.add_done_callback(self._landed)
            started = True
        return started or bool(self._in_flight)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not an answer: keep the records pending and let a person see it.
            log.error("a batch task failed", exc_info=task.exception())
            self._round.stop = f"internal error: {task.exception()!r}"
            self._round.hold = True
        self._nudge.set()

    async def _sleep(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that arrives as
        # the nudge is set, and then stop() would wait on a loop that never ends.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._nudge.wait()

    def _halt(self, reason: str) -> None:
        self._stopped = reason
        self._last_error = reason
        log.warning("sending stopped: %s", reason)

    # -- one batch --------------------------------------------------------------------------------
    async def _send(self, records: list[Record]) -> None:
        events = [r.event(self.identity.writer_id) for r in records]
        try:
            answer = await transport.send_batch(
                self._http,
                self.identity.box_url,
                self.identity.device_token,
                self.identity.writer_id,
                events,
                self._key,
            )
        except transport.PayloadTooLarge as exc:
            await self._too_large(records, exc)
        except transport.NeedsPerson as exc:
            await self._refused(records, exc)
        except transport.Retryable as exc:
            await self._unreachable(exc)
        else:
            self._counters.batches += 1
            self._counters.sent_events += len(records)
            await self._answered(records, answer)

    async def _answered(self, records: list[Record], answer: dict[str, Any]) -> None:
        ok = set(answer.get("ok") or [])
        conflicts = {c["seq"]: c for c in answer.get("conflicts") or []}
        errors = {e["seq"]: e for e in answer.get("errors") or []}
        marks: list[Mark] = []
        resend = wait = False
        refused: list[str] = []
        for record in records:
            error = errors.get(record.seq)
            if record.seq in ok:
                conflict = conflicts.get(record.seq)
                marks.append(
                    Mark(record.seq, "conflict", conflict=conflict) if conflict else Mark(record.seq, "synced")
                )
            elif error is None:
                resend = True  # neither stored nor refused: ask again
            elif error["code"] in RESEND_CODES:
                resend = True
            elif error["code"] in WAIT_CODES:
                wait = True
            else:
                marks.append(Mark(record.seq, "failed", code=error["code"], message=error.get("message")))
                refused.append(f"seq {record.seq}: {error['code']} {error.get('message', '')}".rstrip())
        meta: dict[str, str | None] = {"last_answer_at": str(int(self._wall() * 1000))}
        # A gap or a not-processed event is routine with two batches in flight, not an error to show.
        first_error = next(
            (errors[r.seq] for r in records if r.seq in errors and errors[r.seq]["code"] not in RESEND_CODES), None
        )
        if first_error is not None:
            self._last_error = f"{first_error['code']}: {first_error.get('message', '')}".rstrip(": ")
            meta["last_error"] = self._last_error
        await asyncio.to_thread(self.outbox.settle, marks, server_hlc=answer.get("server_hlc"), meta=meta)
        self._round.expected_seq = max(self._round.expected_seq, int(answer.get("expected_seq", 0)))
        if any(e["code"] == "SEQUENCE_GAP" for e in errors.values()):
            self._round.gap = True
        if refused:
            self._round.stop = "the box refused " + "; ".join(refused[:3]) + (" …" if len(refused) > 3 else "")
        if refused or resend or wait:
            self._round.hold = True
        if wait:
            self._round.wait = True
        elif not (refused or resend):
            self._backoff.reset()
            self._warned = False

    async def _refused(self, records: list[Record], exc: transport.NeedsPerson) -> None:
        """The whole request was refused (revoked, unknown token, bad envelope): nothing will pass."""
        message = f"{exc.code} (HTTP {exc.status}): {exc.message}"
        marks = [Mark(r.seq, "failed", code=exc.code, message=exc.message) for r in records]
        await asyncio.to_thread(self.outbox.settle, marks, meta={"last_error": message})
        self._last_error = message
        self._round.stop = message
        self._round.hold = True

    async def _too_large(self, records: list[Record], exc: transport.PayloadTooLarge) -> None:
        if len(records) == 1:
            await self._refused(records, exc)
            return
        self._batch_size = max(1, min(self._batch_size, len(records)) // 2)
        log.info("batch of %d was too large; sending %d at a time", len(records), self._batch_size)
        self._round.hold = True

    async def _unreachable(self, exc: transport.Retryable) -> None:
        self._last_error = f"{exc.code}: {exc.message}"
        await asyncio.to_thread(self.outbox.set_meta, {"last_error": self._last_error})
        self._round.hold = self._round.wait = True
        self._round.retry_after = max(self._round.retry_after, exc.retry_after)


def _contiguous(records: list[Record]) -> list[Record]:
    """The leading run of consecutive seqs: a batch may not have holes (the box refuses them)."""
    run = records[:1]
    for record in records[1:]:
        if record.seq != run[-1].seq + 1:
            break
        run.append(record)
    return run
