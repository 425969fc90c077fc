"""The one root of every error replication raises, so a caller decides "later" or "a person" alone.

Replication runs unattended: a handheld's sender, a box's replicator, an HQ uplink. Each of them meets
the same two kinds of failure and must tell them apart without knowing which module raised what: one
that time heals (back off and try again) and one that comes back the same every time (stop and show
it, or the loop hammers a box forever). ``retryable`` says which; the branches say it for classes
whose answer never changes, and ``PeerError`` says it per instance, because the same peer call can end
either way::

    ReplicationError                     retryable from the class, or set per instance
    ├── Retryable                        the network, timeouts, 5xx, 429, a clock time will catch up
    │   ├── transport.Retryable          (also a SyncError)
    │   └── hlc.ClockDriftError          (also a ValueError)
    ├── NeedsPerson                      refused input, bad secret, forged page, revoked, not paired
    │   ├── transport.NeedsPerson        (also a SyncError)
    │   │   └── transport.PayloadTooLarge    413: the sender may split the batch first
    │   ├── protocol.ProtocolError       (also a ValueError)
    │   ├── codec.CodecError             (also a ValueError)
    │   ├── tls.TrustError               (also a ValueError)
    │   ├── payloads.PayloadError        (also a ValueError)
    │   ├── outbox.NotPaired             (also a RuntimeError)
    │   └── discovery.DiscoveryError
    ├── transport.SyncError              a device request the box did not answer with 2xx
    └── client.PeerError                 box ⇄ box ⇄ HQ; ``retryable`` given by whoever raises it

Each class lives where it always did, so existing imports, constructors, attributes and messages stay
as they were; the ones that were a ``ValueError`` or ``RuntimeError`` still are, so older ``except``
clauses keep catching them. Catch the root and read ``retryable`` rather than the branch when
``PeerError`` can be among what is caught. Whether an HTTP refusal is retryable is decided in one place,
``replication.retry.retryable_status``.
"""

from __future__ import annotations


class ReplicationError(Exception):
    """Anything replication raises on purpose.

    ``code`` is a class default that an instance may replace (the box's or peer's own code). A class
    that names none is known by its class name: that is what callers logging
    ``getattr(exc, "code", type(exc).__name__)`` saw before the root existed, so their logs and status
    rows read as before. ``retryable`` defaults to False: an error nobody classified is safer shown to
    a person than retried in a loop.
    """

    code: str = "ReplicationError"
    retryable: bool = False
    message: str

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if "code" not in vars(cls):
            cls.code = cls.__name__

    def __init__(self, *args: object, code: str | None = None, retryable: bool | None = None) -> None:
        # Positional arguments go to Exception untouched, so ``str()`` and ``args`` are what each class
        # produced before it had this root.
        super().__init__(*args)
        self.message = str(args[0]) if args else ""
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable


class Retryable(ReplicationError):
    """Nothing is wrong with what was asked; the way there or the other end is not well now."""

    retryable = True


class NeedsPerson(ReplicationError):
    """Asking again gets the same answer; someone has to pair, fix a secret, or look at the data."""

    retryable = False
