"""Telling systemd the box is ready and alive (``Type=notify`` with ``WatchdogSec=``).

systemd starts units that wait for the box (and reports it started) only when ``READY=1`` arrives, so it
is sent once the port answers: uvicorn runs the lifespan before it binds. ``STATUS=`` lines are what a
field tech reads in ``systemctl status stockverify``. ``STOPPING=1`` says the stop is the box's own
doing, not a crash.

The watchdog pings come from a task on the event loop on purpose: every route, the live stream and the
replicator run on that loop, so a loop stuck in a blocking call serves nothing. A stuck loop stops the
pings, ``WatchdogSec`` runs out and systemd restarts the box; a ping from a thread of its own would keep
a dead box "alive".

The sd_notify protocol is implemented here, a few lines, rather than through the python-systemd
binding: that one compiles against libsystemd's headers, which a box's image does not carry. A
notification is one datagram of ``KEY=VALUE`` lines sent to the ``AF_UNIX`` socket ``$NOTIFY_SOCKET``
names (a name starting with ``@`` is in the abstract namespace). Without the variable (run by hand, in
tests) nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

from replication.discovery import wait_until_listening
from replication.tasks import running

log = logging.getLogger(__name__)


class Notifier:
    """The box's line to systemd; every call is a no-op outside a unit that asked for notifications."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        # The abstract namespace has no file: '@' stands for the leading NUL byte.
        self.address: str | None = ("\0" + name[1:] if name.startswith("@") else name) or None
        self._sock: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one notification; True when systemd's socket took it.

        Never blocks: on a full queue the message is dropped rather than stalling the loop that sends
        it (a lost ping is made up by the next; a stalled loop is what the watchdog is there to catch).
        """
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._failing:
                log.warning("systemd did not take a notification", extra={"notification": lines[0], "error": str(exc)})
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between pings (half of ``WatchdogSec``, as systemd advises), or None when systemd does not
    watch this process: no ``$WATCHDOG_USEC``, or ``$WATCHDOG_PID`` names another process (a child that
    inherited the environment must not ping on its parent's behalf)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return usec / 2 / 1_000_000


async def ping_watchdog(notifier: Notifier, every_s: float) -> None:
    """Ping for as long as the loop runs callbacks in time."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(every_s)


async def _ready_when_listening(notifier: Notifier, host: str, ports: Sequence[int], status: str) -> None:
    if 0 in ports:
        log.warning("port 0: systemd is told the box is ready before uvicorn binds the port it picks")
    else:
        for port in ports:
            await wait_until_listening(host, port)
    notifier.ready(status)
    log.info("told systemd the box is ready", extra={"status": status})


@asynccontextmanager
async def notifying(
    host: str, ports: Sequence[int], serving: str, environ: Mapping[str, str] | None = None
) -> AsyncIterator[Notifier]:
    """A lifespan: pings while the server runs, ``READY=1`` once every port listens (plain HTTP and,
    with TLS, HTTPS: a box is ready only when handhelds and browsers both reach it), ``STOPPING=1`` on
    the way out.

    ``serving`` is the status line shown while the box serves (what it is and where it listens).
    """
    notifier = Notifier(environ)
    if not notifier.enabled:
        yield notifier
        return
    every_s = watchdog_interval(environ)
    notifier.status(f"starting: waiting for HTTP on port {', '.join(map(str, ports))}")
    try:
        async with (
            running(ping_watchdog(notifier, every_s), "systemd-watchdog") if every_s else contextlib.nullcontext(),
            running(_ready_when_listening(notifier, host, ports, serving), "systemd-ready"),
        ):
            yield notifier
            notifier.stopping("stopping: winding down background work, closing the database")
    finally:
        notifier.close()
