"""The hybrid logical clock never runs backwards and refuses timestamps from far in the future."""

from __future__ import annotations

import pytest

from replication.wire.hlc import ClockDriftError, HybridClock, encode, physical_ms


def test_monotonic_when_the_wall_clock_goes_back() -> None:
    walls = iter([1_000, 2_000, 1_500, 1_500, 3_000])
    clock = HybridClock(wall=lambda: next(walls))
    stamps = [clock.now() for _ in range(5)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 5
    assert physical_ms(stamps[2]) == 2_000  # held at the highest physical time seen


def test_observe_moves_past_remote_and_refuses_far_future() -> None:
    clock = HybridClock(wall=lambda: 10_000, max_drift_ms=1_000)
    remote = encode(10_500, 7)
    assert clock.observe(remote) > remote
    assert clock.now() > remote
    with pytest.raises(ClockDriftError):
        clock.observe(encode(20_000, 0))
