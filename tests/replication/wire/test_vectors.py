"""Version vectors: the arithmetic every exchange relies on, against plain sets of (writer, seq)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replication.wire import vectors

writers = st.sampled_from(["box-a", "box-b", "dev-1", "dev-2"])
vector_st = st.dictionaries(writers, st.integers(min_value=0, max_value=50), max_size=4)


def held(vector: dict[str, int]) -> set[tuple[str, int]]:
    """The events a replica with ``vector`` holds: each writer's stream is gap-free from 1."""
    return {(writer, seq) for writer, head in vector.items() for seq in range(1, head + 1)}


@given(vector_st, vector_st)
def test_lacking_counts_the_events_one_holds_and_the_other_does_not(
    theirs: dict[str, int], ours: dict[str, int]
) -> None:
    assert vectors.lacking(theirs, ours) == len(held(ours) - held(theirs))


@given(vector_st, vector_st)
def test_join_holds_exactly_what_either_holds(a: dict[str, int], b: dict[str, int]) -> None:
    joined = vectors.join(a, b)
    assert held(joined) == held(a) | held(b)
    assert held(vectors.join(b, a)) == held(joined)  # a writer at 0 holds nothing, present or not
    assert vectors.join(joined, a) == joined  # idempotent: a page applied twice changes nothing


def test_a_page_moves_each_writer_to_its_last_row_and_never_back() -> None:
    page = {"events": [["dev-1", 4], ["dev-1", 5], ["box-a", 2], ["dev-1", 6]]}
    assert vectors.after_page({"dev-1": 3, "box-a": 9, "dev-2": 1}, page) == {"dev-1": 6, "box-a": 9, "dev-2": 1}
    assert vectors.after_page({"dev-1": 3}, {"events": []}) == {"dev-1": 3}
    assert vectors.after_page({}, {}) == {}


@given(vector_st)
def test_a_vector_survives_the_wire_and_the_peers_table(vector: dict[str, int]) -> None:
    assert vectors.unpack(vectors.pack(vector)) == vector
    assert vectors.parse(vector) == vector
    assert vectors.unpack(None) == {} == vectors.parse(None)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ([["box-a", 1]], "a map of writer ids to seqs"),
        ({"box-a": -1}, "a whole number >= 0"),
        ({"box-a": "7"}, "a whole number >= 0"),
        ({"box-a": 1.5}, "a whole number >= 0"),
        ({"box-a": True}, "a whole number >= 0"),
    ],
)
def test_a_vector_that_is_not_one_is_refused_with_a_reason(value: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        vectors.parse(value)
