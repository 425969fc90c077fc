"""One error root and one retry rule for replication: every class under it, every caller on the rule."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

import replication
from replication import errors, retry
from replication.device import transport
from replication.peers import client
from replication.retry import Backoff, retryable_status


def exception_classes(package: ModuleType) -> dict[str, type[BaseException]]:
    """Every exception class defined (not merely imported) in ``package`` and its submodules."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                found[f"{info.name}.{name}"] = value
    return found


def strays(package: ModuleType) -> list[str]:
    return sorted(
        name for name, cls in exception_classes(package).items() if not issubclass(cls, errors.ReplicationError)
    )


# -- the tree ---------------------------------------------------------------------------------------
def test_every_exception_under_replication_hangs_under_the_root() -> None:
    found = exception_classes(replication)
    # The walk must see the known classes, or an empty walk would pass for a clean one.
    known = {
        "replication.errors.ReplicationError",
        "replication.errors.Retryable",
        "replication.errors.NeedsPerson",
        "replication.peers.client.PeerError",
        "replication.device.transport.SyncError",
        "replication.device.transport.Retryable",
        "replication.device.transport.NeedsPerson",
        "replication.device.transport.PayloadTooLarge",
        "replication.device.outbox.NotPaired",
        "replication.device.payloads.PayloadError",
        "replication.discovery.DiscoveryError",
        "replication.wire.protocol.ProtocolError",
        "replication.wire.codec.CodecError",
        "replication.wire.hlc.ClockDriftError",
    }
    assert known <= set(found)
    assert strays(replication) == []


def test_the_walk_catches_a_class_that_forgets_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "straypkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "mod.py").write_text(
        "from replication.errors import NeedsPerson\n"
        "class Fine(NeedsPerson): pass\n"
        "class Forgot(ValueError): pass\n"
        "from replication.wire.hlc import ClockDriftError  # imported, not defined here\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert strays(importlib.import_module("straypkg")) == ["straypkg.sub.mod.Forgot"]
    finally:
        for name in [n for n in sys.modules if n == "straypkg" or n.startswith("straypkg.")]:
            del sys.modules[name]


@pytest.mark.parametrize(
    ("cls", "old_base", "retryable"),
    [
        ("replication.wire.protocol.ProtocolError", ValueError, False),
        ("replication.wire.codec.CodecError", ValueError, False),
        ("replication.device.payloads.PayloadError", ValueError, False),
        ("replication.wire.hlc.ClockDriftError", ValueError, True),
        ("replication.device.outbox.NotPaired", RuntimeError, False),
        ("replication.discovery.DiscoveryError", Exception, False),
    ],
)
def test_older_errors_keep_their_base_message_and_gain_a_branch(
    cls: str, old_base: type[Exception], retryable: bool
) -> None:
    module, _, name = cls.rpartition(".")
    error_type = getattr(importlib.import_module(module), name)
    error = error_type("timestamp is 9 ms ahead")
    assert isinstance(error, old_base)  # older `except ValueError` / `except RuntimeError` still catch it
    assert isinstance(error, errors.Retryable if retryable else errors.NeedsPerson)
    assert error.retryable is retryable
    assert str(error) == error.message == "timestamp is 9 ms ahead"
    assert error.args == ("timestamp is 9 ms ahead",)
    assert error.code == name  # what `getattr(exc, "code", type(exc).__name__)` gave before


def test_device_errors_keep_their_messages_and_sit_on_both_trees() -> None:
    down = transport.Retryable("no answer", code="TIMEOUT", retry_after=3)
    assert (str(down), down.code, down.message) == ("TIMEOUT: no answer", "TIMEOUT", "no answer")
    assert (down.status, down.retry_after) == (0, 3)
    assert isinstance(down, transport.SyncError) and isinstance(down, errors.Retryable) and down.retryable
    big = transport.PayloadTooLarge("over 1 MiB", status=413, code="PAYLOAD_TOO_LARGE")
    assert isinstance(big, transport.NeedsPerson) and isinstance(big, errors.NeedsPerson) and not big.retryable
    assert str(transport.NeedsPerson("bare", code="")) == "bare"


def test_peer_error_takes_retryable_from_the_instance() -> None:
    later = client.PeerError("UNREACHABLE", "http://b: refused", retryable=True)
    never = client.PeerError("WRONG_STORE", "http://b serves store x", retryable=False, status=None)
    assert isinstance(later, errors.ReplicationError) and later.retryable and not never.retryable
    assert (str(later), later.code, later.message, later.status) == (
        "UNREACHABLE: http://b: refused",
        "UNREACHABLE",
        "http://b: refused",
        None,
    )
    assert client.PeerError.retryable is False  # the class default did not move with an instance


def test_the_root_takes_a_code_and_retryable_for_new_errors() -> None:
    error = errors.ReplicationError("it broke", code="BROKE", retryable=True)
    assert (str(error), error.code, error.message, error.retryable) == ("it broke", "BROKE", "it broke", True)
    assert errors.ReplicationError.retryable is False and errors.ReplicationError.code == "ReplicationError"
    assert errors.Retryable().retryable and not errors.NeedsPerson().retryable


# -- the retry rule ---------------------------------------------------------------------------------
RULE = [
    (500, None, True),
    (502, "HTTP_502", True),
    (503, "UNAVAILABLE", True),
    (408, None, True),
    (429, "RATE_LIMITED", True),
    (400, "BAD_REQUEST", False),
    (401, "UNAUTHORIZED", False),
    (403, "REVOKED", False),
    (404, None, False),
    (409, "CONFLICT", False),
    (413, "PAYLOAD_TOO_LARGE", False),
    (422, "VALIDATION", False),
    (401, "NOT_ENROLLED", True),
    (403, "NOT_ENROLLED", True),
]


@pytest.mark.parametrize(("status", "code", "retryable"), RULE)
def test_retryable_status(status: int, code: str | None, retryable: bool) -> None:
    assert retryable_status(status, code) is retryable


@pytest.mark.parametrize(("status", "code", "retryable"), RULE)
def test_the_device_transport_and_the_peer_client_follow_the_same_rule(
    status: int, code: str | None, retryable: bool
) -> None:
    body = {"code": code or f"HTTP_{status}", "message": "said the box"}
    device = transport._failure(status, body, "reason", 0.0)
    assert isinstance(device, errors.Retryable if retryable else errors.NeedsPerson)
    assert isinstance(device, transport.PayloadTooLarge) is (status == 413)
    assert (device.status, device.code, device.message) == (status, body["code"], "said the box")
    peer = client._refusal(status, json.dumps(body).encode())
    assert (peer.retryable, peer.status, peer.code, peer.message) == (retryable, status, body["code"], "said the box")


# -- backoff ----------------------------------------------------------------------------------------
class Fixed(random.Random):
    """Always the same point of the jitter range: 0 for its low end, 1 for its high end."""

    def __init__(self, at: float) -> None:
        super().__init__(0)
        self.at = at

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.at


def nominal(n: int, base: float = 2.0, ceiling: float = 300.0) -> float:
    return min(ceiling, base * 2.0**n)


def test_backoff_doubles_to_its_ceiling() -> None:
    backoff = Backoff(2.0, 300.0, Fixed(0.5))
    waits = [backoff.next_delay() for _ in range(12)]
    assert waits == [nominal(n) for n in range(12)]
    assert waits[:8] == sorted(waits[:8]) and len(set(waits[:8])) == 8  # grows until the ceiling
    assert waits[-1] == 300.0 and backoff.attempts == 12


@pytest.mark.parametrize(("at", "factor"), [(0.0, 0.5), (1.0, 1.5)])
def test_backoff_jitter_spans_half_to_one_and_a_half(at: float, factor: float) -> None:
    backoff = Backoff(2.0, 300.0, Fixed(at))
    assert [backoff.next_delay() for _ in range(10)] == [factor * nominal(n) for n in range(10)]


@pytest.mark.parametrize("seed", range(5))
def test_backoff_stays_within_its_bounds_and_starts_over(seed: int) -> None:
    backoff = Backoff(2.0, 300.0, random.Random(seed))
    waits = [backoff.next_delay() for _ in range(40)]
    for n, wait in enumerate(waits):
        assert 0.5 * nominal(n) <= wait <= 1.5 * nominal(n)
    assert len({round(w / nominal(n), 9) for n, w in enumerate(waits)}) > 1  # jittered, not fixed
    backoff.reset()
    assert backoff.attempts == 0
    assert 1.0 <= backoff.next_delay() <= 3.0


def test_the_sender_still_hands_out_the_one_backoff() -> None:
    from replication.device import sender

    assert sender.Backoff is retry.Backoff


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        (b'{"code": "WRONG_STORE", "message": "store b"}', "WRONG_STORE", "store b"),
        (b'{"message": "no code"}', "HTTP_502", '{"message": "no code"}'),
        (b"[1, 2]", "HTTP_502", "[1, 2]"),
        (b"<html>Bad Gateway</html>", "HTTP_502", "<html>Bad Gateway</html>"),
    ],
)
def test_a_peer_refusal_without_our_error_body_keeps_its_status_as_the_code(
    payload: bytes, code: str, message: str
) -> None:
    refusal = client._refusal(502, payload)
    assert (refusal.code, refusal.message, refusal.status, refusal.retryable) == (code, message, 502, True)
