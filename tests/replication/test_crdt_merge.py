"""Our SQL-backed merge against the reference CRDTs of the ``crdts`` package (DESIGN §4).

Random device histories reach two or three replicas of one store (real SQLite files, the real record
and replication paths) in random interleavings, with resends, refused gaps and partitions: each
replica holds a prefix of each device's stream, different replicas different prefixes. Then the
replicas pull from one another, sometimes one page, sometimes everything. Beside each replica runs a
model built from ``crdts`` objects, fed the same operations and merged the same way, and after every
step the replica must answer exactly what its model answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crdts import CounterSet, LWWRegister, ORSet, ScalarClock, StateUpdate
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.box import Box
from appliance.counting import items
from appliance.replica import counters
from appliance.store.eventlog import ChainError, version_vector
from replication.wire.codec import Event
from replication.wire.protocol import pack_page, unpack_page
from tests.replication.store_replicas import (
    CODE_SKUS,
    SKUS,
    WRITERS,
    DeviceStreams,
    Template,
    build_template,
    deliver,
    open_replica,
    pull,
)

PROPERTY = settings(max_examples=40, deadline=None)
SERIAL_NUMBERS = ("SN-1", "SN-2", "SN-3")
# Few attributes and values, so that devices often write the same register with different values.
ATTRIBUTE_VALUES: dict[str, tuple[Any, ...]] = {
    "mfg_date": ("2025-01-31", "2025-06-01", None),
    "mrp_minor": (1000, 1250, 0),
    "condition": ("good", "damaged", "expired", None),
}
QUANTITY_KINDS = ("scan", "scan", "scan", "undo", "undo", "adjust", "damage")
ITEM_KINDS = (*QUANTITY_KINDS, "attrs", "attrs", "attrs", "serial_add", "serial_add", "serial_remove")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return build_template(tmp_path_factory.mktemp("template") / "box")


# -- device histories -----------------------------------------------------------------------------
def _history(data: st.DataObject, template: Template, kinds: tuple[str, ...]) -> DeviceStreams:
    """Random device events of the given kinds into the template's one session.

    An undo or a serial removal names events its device has seen, and its HLC is past theirs: any
    device may undo any scan (two devices may undo the same one), and a removal carries the tags of a
    random subset of the adds of that serial, as a replica that had seen only those would send.
    """
    draw = data.draw
    streams = DeviceStreams()
    scans: list[Event] = []
    adds: list[Event] = []
    for _ in range(draw(st.integers(1, 30), label="events")):
        writer = draw(st.sampled_from(WRITERS))
        kind = draw(st.sampled_from(kinds))
        advance = draw(st.integers(0, 2))  # ms of wall time since the previous event
        product_id = template.product_ids[draw(st.sampled_from(SKUS))]
        base = {"session_id": template.session_id, "by": writer}
        if kind == "undo" and scans:
            scan = draw(st.sampled_from(scans))
            p = scan.payload
            undo = {"undoes": scan.event_id, "of_writer": scan.writer_id, "code": p["code"], "rack_id": p["rack_id"]}
            streams.append(writer, "scan.undone", {**base, **undo, "qty": p["qty"]}, advance, seen=scan.hlc)
        elif kind in ("scan", "undo"):
            scan_payload = {
                "code": draw(st.sampled_from(sorted(CODE_SKUS))),
                "qty": draw(st.integers(1, 5)),
                "rack_id": draw(st.sampled_from(["", template.rack_id])),
                "product_id": None,
                "token": None,
            }
            scans.append(streams.append(writer, "scan.recorded", {**base, **scan_payload}, advance))
        elif kind in ("adjust", "damage"):
            deltas = (-3, -2, -1, 1, 2, 3) if kind == "adjust" else (-2, -1, 1, 2, 4)
            adjusted = {"product_id": product_id, "delta": draw(st.sampled_from(deltas)), "target": 0}
            streams.append(
                writer, f"{'count' if kind == 'adjust' else 'damage'}.adjusted", {**base, **adjusted}, advance
            )
        elif kind == "attrs":
            names = draw(st.lists(st.sampled_from(sorted(ATTRIBUTE_VALUES)), min_size=1, max_size=2, unique=True))
            attrs = {name: draw(st.sampled_from(ATTRIBUTE_VALUES[name])) for name in names}
            streams.append(writer, "item.attributes_set", {**base, "product_id": product_id, "attrs": attrs}, advance)
        elif kind == "serial_remove" and adds:
            p = draw(st.sampled_from(adds)).payload
            same = [a for a in adds if (a.payload["product_id"], a.payload["serial"]) == (p["product_id"], p["serial"])]
            seen = draw(st.lists(st.sampled_from(same), min_size=1, unique_by=lambda e: e.event_id))
            removal = {"product_id": p["product_id"], "serial": p["serial"], "tags": [e.event_id for e in seen]}
            streams.append(writer, "serial.removed", {**base, **removal}, advance, seen=max(e.hlc for e in seen))
        else:
            added = {"product_id": product_id, "serial": draw(st.sampled_from(SERIAL_NUMBERS))}
            adds.append(streams.append(writer, "serial.added", {**base, **added}, advance))
    return streams


# -- reference models built from crdts ------------------------------------------------------------
def _clock_id(*parts: str) -> bytes:
    """One clock id per CRDT instance, the same at every replica: crdts refuses another's updates."""
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=16).digest()


class Reference:
    """A replica's model: crdts objects by key, merged the way crdts resynchronises replicas (each
    object's ``history`` fed to the other's ``update``)."""

    def __init__(self) -> None:
        self.crdts: dict[Any, Any] = {}

    def _new(self, key: Any) -> Any:
        raise NotImplementedError

    def _crdt(self, key: Any) -> Any:
        if key not in self.crdts:
            self.crdts[key] = self._new(key)
        return self.crdts[key]

    def feed(self, event: Event) -> None:
        raise NotImplementedError

    def answer(self) -> dict[Any, Any]:
        raise NotImplementedError

    def snapshot(self) -> dict[Any, tuple[StateUpdate, ...]]:
        """The state as crdts ships it to another replica, frozen now."""
        return {key: tuple(crdt.history()) for key, crdt in self.crdts.items()}

    def merge_snapshot(self, snapshot: dict[Any, tuple[StateUpdate, ...]]) -> None:
        for key, updates in snapshot.items():
            for update in updates:
                self._crdt(key).update(update)

    def merge(self, other: Reference) -> None:
        self.merge_snapshot(other.snapshot())


Counted = tuple[str, str]  # (sku, "qty" | "damage")
CounterUpdates = dict[str, list[tuple[Counted, StateUpdate]]]


def counter_updates(streams: DeviceStreams, template: Template) -> CounterUpdates:
    """What each event sends the other replicas, as crdts computes it on its device's own replica.

    Each device counts on a ``CounterSet`` of its own, in its own entry (counter id = writer id), and
    an event's update is what ``increase``/``decrease`` returned there. An undo negates one scan once
    however many devices undo it, so it is an entry of its own named after the scan and set to the
    scan's qty: max-merged, two undos of one scan count once, as ``scan_undos`` makes them in ours.
    """
    skus = template.skus
    out: CounterUpdates = {}
    for writer, stream in streams.events.items():
        local: dict[Counted, CounterSet] = {}
        for event in stream:
            p = event.payload
            out[event.event_id] = sent = []
            if event.type == "scan.recorded" and CODE_SKUS[p["code"]] is not None:
                key = (str(CODE_SKUS[p["code"]]), "qty")
                sent.append((key, local.setdefault(key, CounterSet(_clock_id(*key))).increase(writer, p["qty"])))
            elif event.type == "scan.undone" and CODE_SKUS[p["code"]] is not None:
                key = (str(CODE_SKUS[p["code"]]), "qty")
                counter = local.setdefault(key, CounterSet(_clock_id(*key)))
                undo = StateUpdate(counter.clock.uuid, counter.clock.read(), ("undo:" + p["undoes"], 0, p["qty"]))
                counter.update(undo)
                sent.append((key, undo))
            elif event.type in ("count.adjusted", "damage.adjusted"):
                key = (skus[p["product_id"]], "qty" if event.type == "count.adjusted" else "damage")
                counter = local.setdefault(key, CounterSet(_clock_id(*key)))
                change = counter.increase if p["delta"] > 0 else counter.decrease
                sent.append((key, change(writer, abs(p["delta"]))))
    return out


class CounterModel(Reference):
    """Quantity and damage per product: PN counters with one entry per writer, merged by max."""

    def __init__(self, updates: CounterUpdates) -> None:
        super().__init__()
        self.updates = updates

    def _new(self, key: Counted) -> CounterSet:
        return CounterSet(_clock_id(*key))

    def feed(self, event: Event) -> None:
        for key, update in self.updates[event.event_id]:
            self._crdt(key).update(update)

    def answer(self) -> dict[str, tuple[int, int]]:
        def read(key: Counted) -> int:
            return int(self.crdts[key].read()) if key in self.crdts else 0

        return {sku: (read((sku, "qty")), read((sku, "damage"))) for sku in SKUS}


class AttributeModel(Reference):
    """One ``LWWRegister`` per (product, attribute).

    Ours orders writes by (HLC, writer id). crdts orders by its timestamp, then on equal timestamps by
    the writer (``>``), then by the packed value; so the HLC is given as the timestamp and the writer id
    as the writer, and both compare writer ids as code points (Python ``str``; SQLite's BINARY on
    UTF-8). The value tie-break never decides: a writer's HLC rises with every event, so two writes
    with equal (HLC, writer) are one event. HLCs are never 0, crdts' starting timestamp, so a first
    write always wins over the empty register.
    """

    def __init__(self, template: Template) -> None:
        super().__init__()
        self.skus = template.skus

    def _new(self, key: tuple[str, str]) -> LWWRegister:
        return LWWRegister("/".join(key), clock=ScalarClock(uuid=_clock_id(*key)))

    def feed(self, event: Event) -> None:
        if event.type != "item.attributes_set":
            return
        for name, value in event.payload["attrs"].items():
            register = self._crdt((self.skus[event.payload["product_id"]], name))
            register.update(StateUpdate(register.clock.uuid, event.hlc, (event.writer_id, value)))

    def answer(self) -> dict[tuple[str, str], Any]:
        return {key: register.read() for key, register in self.crdts.items()}


class SerialModel(Reference):
    """One ``ORSet`` per product, whose members are the adds: (serial, tag), the tag being the add's
    event id.

    crdts' ORSet decides per member by timestamps (a remove wins over an add only with a later one;
    ties go to the add). With one member per add and the HLC as timestamp, that is our rule: a
    removal cancels exactly the tags it names, all of which its device had seen, so its HLC is past
    theirs; an add it did not see is another member and survives (add wins).
    """

    def __init__(self, template: Template) -> None:
        super().__init__()
        self.skus = template.skus

    def _new(self, sku: str) -> ORSet:
        return ORSet(clock=ScalarClock(uuid=_clock_id(sku, "serials")))

    def feed(self, event: Event) -> None:
        p = event.payload
        if event.type == "serial.added":
            serials = self._crdt(self.skus[p["product_id"]])
            serials.update(StateUpdate(serials.clock.uuid, event.hlc, ("o", (p["serial"], event.event_id))))
        elif event.type == "serial.removed":
            serials = self._crdt(self.skus[p["product_id"]])
            for tag in p["tags"]:
                serials.update(StateUpdate(serials.clock.uuid, event.hlc, ("r", (p["serial"], tag))))

    def answer(self) -> dict[str, list[str]]:
        held = {sku: {serial for serial, _tag in serials.read()} for sku, serials in self.crdts.items()}
        return {sku: sorted(held.get(sku, ())) for sku in SKUS}


class ItemModel(Reference):
    """Everything counter-state replication carries for an item: its counters, attributes, serials."""

    def __init__(self, updates: CounterUpdates, template: Template) -> None:
        super().__init__()
        self.parts: dict[str, Reference] = {
            "quantities": CounterModel(updates),
            "attributes": AttributeModel(template),
            "serials": SerialModel(template),
        }

    def feed(self, event: Event) -> None:
        for part in self.parts.values():
            part.feed(event)

    def answer(self) -> dict[str, Any]:
        return {name: part.answer() for name, part in self.parts.items()}

    def snapshot(self) -> dict[Any, tuple[StateUpdate, ...]]:
        return {(name, key): updates for name, part in self.parts.items() for key, updates in part.snapshot().items()}

    def merge_snapshot(self, snapshot: dict[Any, tuple[StateUpdate, ...]]) -> None:
        for (name, key), updates in snapshot.items():
            self.parts[name].merge_snapshot({key: updates})


# -- what our replicas answer ---------------------------------------------------------------------
def quantities(box: Box, template: Template) -> dict[str, tuple[int, int]]:
    conn = box.db.read()
    return {
        sku: (
            items.item_quantity(conn, template.session_id, product_id),
            items.damage_quantity(conn, template.session_id, product_id),
        )
        for sku, product_id in template.product_ids.items()
    }


def attributes(box: Box, template: Template) -> dict[tuple[str, str], Any]:
    listing = items.session_items(box.db.read(), template.session_id)
    return {(item["sku"], name): value for item in listing["items"] for name, value in item["attributes"].items()}


def serials(box: Box, template: Template) -> dict[str, list[str]]:
    conn = box.db.read()
    return {sku: items.item_serials(conn, template.session_id, pid) for sku, pid in template.product_ids.items()}


def item_state(box: Box, template: Template) -> dict[str, Any]:
    return {
        "quantities": quantities(box, template),
        "attributes": attributes(box, template),
        "serials": serials(box, template),
    }


# -- the scenario ---------------------------------------------------------------------------------
class Replicas:
    """Two or three replicas of one store, each with its model and the vector the test expects."""

    def __init__(
        self,
        template: Template,
        streams: DeviceStreams,
        folder: Path,
        count: int,
        model: Callable[[], Reference],
        observe: Callable[[Box, Template], dict[Any, Any]],
    ) -> None:
        self.template, self.streams, self.observe = template, streams, observe
        self.boxes: list[Box] = []
        for index in range(count):
            self.boxes.append(open_replica(template, folder / f"replica-{index}"))
        self.models = [model() for _ in range(count)]
        self.held = [dict.fromkeys(WRITERS, 0) for _ in range(count)]

    def close(self) -> None:
        for box in self.boxes:
            box.close()

    def check(self, index: int) -> None:
        held = {writer: seq for writer, seq in self.held[index].items() if seq}
        assert {w: s for w, s in version_vector(self.boxes[index].db.read()).items() if w in WRITERS} == held
        assert self.observe(self.boxes[index], self.template) == self.models[index].answer(), f"replica {index}"

    def deliveries(self, data: st.DataObject, most: int = 24) -> None:
        """Batches from a device's stream, as a flaky link brings them: resends of what a replica
        holds, the next events, or a batch past a lost one (refused whole with SEQUENCE_GAP)."""
        draw = data.draw
        for _ in range(draw(st.integers(0, most), label="deliveries")):
            index = draw(st.integers(0, len(self.boxes) - 1))
            writer = draw(st.sampled_from(WRITERS))
            have = self.held[index][writer]
            start = draw(st.integers(1, have + 2))
            batch = self.streams.events[writer][start - 1 : start - 1 + draw(st.integers(1, 4))]
            if not batch:
                continue
            box = self.boxes[index]
            if start > have + 1:
                with pytest.raises(ChainError) as refused:
                    deliver(box, self.template.store_id, batch)
                assert refused.value.code == "SEQUENCE_GAP"
            else:
                assert deliver(box, self.template.store_id, batch) == max(0, batch[-1].seq - have)
                for event in batch:  # resent events too: both sides must take them as no news
                    self.models[index].feed(event)
                self.held[index][writer] = max(have, batch[-1].seq)
            self.check(index)

    def pulls(self, data: st.DataObject, most: int = 6) -> None:
        """Replicas meet in random pairs: one page of what it lacks, or everything."""
        draw = data.draw
        for _ in range(draw(st.integers(0, most), label="pulls")):
            dst, src = draw(st.permutations(range(len(self.boxes))))[:2]
            limit = draw(st.integers(1, 6))
            if draw(st.booleans()):
                pull(self.boxes[dst], self.boxes[src], self.template.store_id, limit)
                self.models[dst].merge(self.models[src])
                self.held[dst] = {w: max(self.held[dst][w], self.held[src][w]) for w in WRITERS}
            else:
                for event in pull(self.boxes[dst], self.boxes[src], self.template.store_id, limit, pages=1):
                    self.models[dst].feed(event)
                    self.held[dst][event.writer_id] = event.seq
            self.check(dst)

    def heal(self) -> None:
        """Every link comes back: each replica pulls everything from every other, twice round."""
        for _ in range(2):
            for dst in range(len(self.boxes)):
                for src in range(len(self.boxes)):
                    if src != dst:
                        pull(self.boxes[dst], self.boxes[src], self.template.store_id, 50)
                        self.models[dst].merge(self.models[src])
                        self.held[dst] = {w: max(self.held[dst][w], self.held[src][w]) for w in WRITERS}

    def union(self) -> dict[str, int]:
        return {w: max(held[w] for held in self.held) for w in WRITERS}


def _converges(
    data: st.DataObject,
    template: Template,
    folder: Path,
    kinds: tuple[str, ...],
    model: Callable[[DeviceStreams], Callable[[], Reference]],
    observe: Callable[[Box, Template], dict[Any, Any]],
) -> None:
    """Deliver, pull, heal, checking every replica against its model all the way."""
    streams = _history(data, template, kinds)
    make = model(streams)
    scene = Replicas(template, streams, folder, data.draw(st.integers(2, 3), label="replicas"), make, observe)
    try:
        scene.deliveries(data)
        scene.pulls(data)
        scene.heal()
        # Healed, every replica holds what any of them held, and answers what crdts answers for
        # exactly those events, fed in one go to a fresh model.
        union = scene.union()
        everything = make()
        for event in streams.held(union):
            everything.feed(event)
        expected = everything.answer()
        for index in range(len(scene.boxes)):
            scene.check(index)
            assert scene.held[index] == union
            assert scene.observe(scene.boxes[index], template) == expected
    finally:
        scene.close()


# -- the properties -------------------------------------------------------------------------------
@PROPERTY
@given(data=st.data())
def test_quantities_equal_crdts_pn_counters(
    data: st.DataObject, template: Template, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _converges(
        data,
        template,
        tmp_path_factory.mktemp("replicas"),
        QUANTITY_KINDS,
        lambda streams: lambda: CounterModel(counter_updates(streams, template)),
        quantities,
    )


@PROPERTY
@given(data=st.data())
def test_attributes_equal_crdts_lww_registers(
    data: st.DataObject, template: Template, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _converges(
        data,
        template,
        tmp_path_factory.mktemp("replicas"),
        ("attrs",),
        lambda _streams: lambda: AttributeModel(template),
        attributes,
    )


@PROPERTY
@given(data=st.data())
def test_serials_equal_crdts_or_set(
    data: st.DataObject, template: Template, tmp_path_factory: pytest.TempPathFactory
) -> None:
    kinds = ("serial_add", "serial_add", "serial_remove")
    _converges(
        data,
        template,
        tmp_path_factory.mktemp("replicas"),
        kinds,
        lambda _streams: lambda: SerialModel(template),
        serials,
    )


@PROPERTY
@given(data=st.data())
def test_counter_state_merge_at_hq_equals_crdts_merge(
    data: st.DataObject, template: Template, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Boxes ship counter rows to HQ (``counters.export``/``merge``) instead of events.

    Each page is exported against the vector HQ covered at that moment (or an older one, or none),
    and pages reach HQ late, out of order and more than once. HQ's quantities, attributes and serials
    after each merge must be crdts' merge of the states of the boxes whose pages it merged, as they
    were at export.
    """
    folder = tmp_path_factory.mktemp("replicas")
    streams = _history(data, template, ITEM_KINDS)
    updates = counter_updates(streams, template)
    scene = Replicas(
        template, streams, folder, data.draw(st.integers(2, 3)), lambda: ItemModel(updates, template), item_state
    )
    hq = open_replica(template, folder / "hq")
    hq_model = ItemModel(updates, template)
    store_id = template.store_id
    in_flight: list[tuple[dict[str, Any], dict[Any, tuple[StateUpdate, ...]]]] = []
    exported: list[tuple[dict[str, Any], dict[Any, tuple[StateUpdate, ...]]]] = []
    acked_before: list[dict[str, int]] = [{}]
    shipped: dict[str, int] = {}

    def merge_at_hq(page: dict[str, Any], snapshot: dict[Any, tuple[StateUpdate, ...]]) -> None:
        hq.db.write(lambda conn: counters.merge(conn, store_id, page))
        hq_model.merge_snapshot(snapshot)
        for writer, seq in page["vector"].items():
            shipped[writer] = max(shipped.get(writer, 0), seq)
        assert counters.covered(hq.db.read()) == shipped
        assert item_state(hq, template) == hq_model.answer()

    def export(index: int, acked: dict[str, int]) -> None:
        page = counters.export(scene.boxes[index].db.read(), store_id, acked)
        in_flight.append((unpack_page(pack_page(page)), scene.models[index].snapshot()))
        exported.append(in_flight[-1])

    try:
        for _ in range(data.draw(st.integers(1, 5), label="rounds")):
            scene.deliveries(data, most=12)
            scene.pulls(data, most=3)
            covered = counters.covered(hq.db.read())
            acked_before.append(covered)
            for index in data.draw(st.lists(st.integers(0, len(scene.boxes) - 1), max_size=3), label="exports"):
                export(index, data.draw(st.sampled_from(acked_before)))
            for _ in range(data.draw(st.integers(0, len(in_flight)), label="merges")):
                at = data.draw(st.integers(0, len(in_flight) - 1))
                page, snapshot = in_flight[at] if data.draw(st.booleans(), label="again later") else in_flight.pop(at)
                merge_at_hq(page, snapshot)
        # The link holds at last: every page still under way lands, then each box sends what HQ lacks.
        for page, snapshot in data.draw(st.permutations(in_flight), label="landing"):
            merge_at_hq(page, snapshot)
        for index in range(len(scene.boxes)):
            export(index, counters.covered(hq.db.read()))
            merge_at_hq(*in_flight[-1])
        # Old copies of every page still turn up afterwards (retries whose first try had got through);
        # they must be no news, however stale.
        for page, snapshot in data.draw(st.permutations(exported), label="late copies"):
            merge_at_hq(page, snapshot)
        everything = ItemModel(updates, template)
        for event in streams.held(scene.union()):
            everything.feed(event)
        assert item_state(hq, template) == everything.answer()
        covered = {w: s for w, s in counters.covered(hq.db.read()).items() if w in WRITERS}
        assert covered == {w: s for w, s in scene.union().items() if s}
    finally:
        hq.close()
        scene.close()
