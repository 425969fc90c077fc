"""``stockverify device``: a handheld's side of the sync protocol from a shell.

For field techs and demos (pair a device, scan, watch the queue drain) and for load tests (``simulate``
scans a rack at a set rate while syncing). Everything a command knows lives in the device's data
folder (``outbox.db`` and ``device.key``, see ``replication.device.outbox``), so commands can run in separate
processes, be killed at any point, and pick up where the last one stopped.

Exit codes of ``sync`` and ``simulate --sync``: 0 when the queue drained, 1 when a person is needed
(refused records, revoked device), 2 when ``--timeout`` passed with records still pending. ``discover``
exits 1 when no box answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from replication.device.outbox import Identity, Outbox
from replication.device.payloads import PayloadError

if TYPE_CHECKING:  # aiohttp, zeroconf and the sender load only for the commands that need them
    import aiohttp

    from replication.device.sender import Sender
    from replication.discovery import PeerInfo

APP_VERSION = "stockverify-device/1"
HEARTBEAT_S = 20.0  # the lease renewal period of DESIGN §6

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="the device's data folder (its outbox and key)",
)


def _outbox(data_dir: Path, *, must_exist: bool = True) -> Outbox:
    if must_exist and not (data_dir / "outbox.db").exists():
        raise click.ClickException(f"{data_dir} holds no device; run `stockverify device pair` first")
    return Outbox(data_dir / "outbox.db")


@contextmanager
def _sender_lock(data_dir: Path) -> Iterator[None]:
    """One sender per outbox: two would send the same batches twice (harmless, but wasted airtime)."""
    fd = os.open(data_dir / "sender.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(f"another `device sync` is already sending from {data_dir}") from None
        yield
    finally:
        os.close(fd)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="log the sender's steps")
def device(verbose: bool) -> None:
    """A handheld's side of sync: discover, pair, scan, sync, status, simulate."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# -- pair -----------------------------------------------------------------------------------------
@device.command()
@click.option("--box", "box_url", default=None, help="the box's address, e.g. http://192.168.1.20:8000")
@click.option("--code", default=None, help="the pairing code a supervisor made (e.g. 483-205)")
@click.option(
    "--qr",
    default=None,
    help="the pairing QR's text (stockverify://pair?box=…&code=…&ca=…), standing in for --box, --code and the CA",
)
@click.option("--name", required=True, help="the device's name on the box's devices list")
@click.option(
    "--ca-fingerprint",
    default=None,
    help="an https box: the store CA's SHA-256 fingerprint, from the box's /ca page or the pairing QR (ca=)",
)
@click.option(
    "--ca-url",
    default=None,
    help="where to fetch the store CA in the clear (the pairing QR's ca_url) [default: http://<box>:8080/ca.pem]",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="an https box: the CA its certificate chains to, as a PEM file (instead of fetching it)",
)
@data_dir_option
def pair(
    box_url: str | None,
    code: str | None,
    qr: str | None,
    name: str,
    ca_fingerprint: str | None,
    ca_url: str | None,
    ca_file: Path | None,
    data_dir: Path,
) -> None:
    """Pair this device with a box: make its key, enrol it, keep the writer id and credential, and for
    an https box the CA every later connection must chain to."""
    from replication.device import transport
    from replication.wire import tls

    if qr is not None:
        fields = _pairing_qr(qr)
        box_url, code = box_url or fields.get("box"), code or fields.get("code")
        ca_fingerprint, ca_url = ca_fingerprint or fields.get("ca"), ca_url or fields.get("ca_url")
    if not box_url or not code:
        raise click.ClickException("say which box and code: --box and --code, or --qr")
    ca_pem = ca_file.read_bytes() if ca_file is not None else None
    if box_url.startswith("https://") and ca_pem is None and not ca_fingerprint:
        raise click.ClickException(
            "an https box needs its CA: give --ca-fingerprint (shown on http://<box>:8080/ca and in the pairing"
            " QR) or --ca-file"
        )
    try:
        if ca_pem is not None:
            ca_pem = tls.check_ca(ca_pem, ca_fingerprint) if ca_fingerprint else ca_pem
            tls.pinned_context(ca_pem)
        elif ca_fingerprint:
            tls.normal_fingerprint(ca_fingerprint)
    except tls.TrustError as exc:
        raise click.ClickException(str(exc)) from None

    with _outbox(data_dir, must_exist=False) as outbox:
        if outbox.identity() is not None:
            raise click.ClickException(f"{data_dir} is already paired; pair again with a new data folder")
        key = outbox.key()

        async def enrol() -> tuple[dict[str, Any], bytes | None]:
            trusted = ca_pem
            if trusted is None and ca_fingerprint:
                async with transport.open_session() as plain:
                    trusted = await transport.fetch_ca(plain, ca_url or transport.ca_url(box_url), ca_fingerprint)
            async with transport.open_session(ca_pem=trusted) as http:
                answer = await transport.pair(http, box_url, code, name, key.public_key().public_bytes_raw())
            return answer, trusted

        try:
            answer, trusted = asyncio.run(enrol())
        except transport.SyncError as exc:
            raise click.ClickException(str(exc)) from None
        outbox.save_identity(
            Identity(
                writer_id=answer["writer_id"],
                device_token=answer["device_token"],
                box_url=box_url.rstrip("/"),
                store_id=answer["store_id"],
                node_id=answer["node_id"],
                name=name,
                paired_at=int(time.time() * 1000),
                box_ca=trusted.decode("ascii") if trusted is not None else None,
            )
        )
        outbox.observe_server_hlc(int(answer["server_hlc"]))
    click.echo(f"paired as {answer['writer_id']} with store {answer['store_id']}")


def _pairing_qr(text: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(text.strip())
    if parts.scheme != "stockverify" or parts.netloc != "pair":
        raise click.ClickException(f"not a pairing QR (stockverify://pair?…): {text!r}")
    return dict(parse_qsl(parts.query))


# -- scan -----------------------------------------------------------------------------------------
def _scan_payload(
    outbox: Outbox, session: str, code: str, qty: int, rack: str, by: str | None, product: str | None, token: int | None
) -> dict[str, Any]:
    """The person logged in on the device is remembered, as a handheld app keeps its login."""
    if by:
        outbox.set_meta({"user_id": by})
    user = by or outbox.get_meta("user_id")
    if not user:
        raise click.ClickException("say who scans with --by USER_ID (remembered for later scans)")
    return {
        "session_id": session,
        "code": code,
        "qty": qty,
        "rack_id": rack,
        "product_id": product,
        "token": token,
        "by": user,
    }


@device.command()
@data_dir_option
@click.option("--session", "session_id", required=True, help="the counting session")
@click.argument("code")
@click.option("--qty", type=int, default=1, show_default=True)
@click.option("--rack", "rack_id", default="", help="the rack's id ('' when none)")
@click.option("--by", "by", default=None, help="the user id of the person scanning (remembered)")
@click.option("--product", "product_id", default=None, help="the product being verified, if any")
@click.option("--token", type=int, default=None, help="the fencing token of the rack lease, if any")
def scan(
    data_dir: Path,
    session_id: str,
    code: str,
    qty: int,
    rack_id: str,
    by: str | None,
    product_id: str | None,
    token: int | None,
) -> None:
    """Record a scan in the outbox (on disk before this returns); the box need not be there."""
    with _outbox(data_dir) as outbox:
        payload = _scan_payload(outbox, session_id, code, qty, rack_id, by, product_id, token)
        try:
            record = outbox.append("scan.recorded", payload)
        except PayloadError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"seq {record.seq} {record.status} {record.event_id}")


# -- sync -----------------------------------------------------------------------------------------
def _sender_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option("--batch-size", type=click.IntRange(1, 500), default=150, show_default=True),
            click.option("--backoff-base", type=float, default=2.0, show_default=True, help="first wait, seconds"),
            click.option("--backoff-max", type=float, default=300.0, show_default=True, help="longest wait, seconds"),
            click.option("--timeout", type=float, default=None, help="give up after this many seconds"),
        ]
    ):
        func = option(func)
    return func


async def _heartbeats(outbox: Outbox, http: aiohttp.ClientSession, sender: Sender) -> None:
    """Renew leases and report the queue; a heartbeat that gets through means the network is back."""
    from replication.device import transport

    identity = outbox.require_identity()
    while True:
        try:
            answer = await transport.heartbeat(
                http,
                identity.box_url,
                identity.device_token,
                queue_depth=outbox.status_counts()["pending"],
                app_version=APP_VERSION,
            )
        except transport.SyncError as exc:
            logging.getLogger(__name__).debug("heartbeat failed: %s", exc)
        else:
            outbox.observe_server_hlc(int(answer["server_hlc"]))
            if sender.next_retry_at is not None:
                sender.retry_now()
        await asyncio.sleep(HEARTBEAT_S)


async def _run_sender(
    outbox: Outbox,
    *,
    once: bool,
    timeout: float | None,
    batch_size: int,
    backoff: tuple[float, float],
    alongside: Callable[[Sender], Coroutine[Any, Any, Any]] | None = None,
) -> tuple[dict[str, Any], int]:
    """Run a sender until interrupted, or (``once``) until the queue drained or a person is needed.

    ``alongside`` runs next to it (the simulated scanner); with ``once`` the queue counts as drained
    only after it has finished.
    """
    from replication.device import transport
    from replication.device.sender import Sender, SenderSettings

    settings = SenderSettings(batch_size=batch_size, backoff_base_s=backoff[0], backoff_max_s=backoff[1])
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted.set)
    async with transport.open_session(ca_pem=outbox.require_identity().box_ca) as http:
        sender = Sender(outbox, http, settings)
        sender.start()

        async def drained() -> None:
            if alongside is not None:
                await alongside(sender)
            await sender.wait_idle()

        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(interrupted.wait(), name="device-interrupt")]
        if once:
            tasks.append(asyncio.create_task(drained(), name="device-drained"))
        else:
            tasks.append(asyncio.create_task(_heartbeats(outbox, http, sender), name="device-heartbeat"))
            if alongside is not None:
                tasks.append(asyncio.create_task(alongside(sender), name="device-alongside"))
        try:
            await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            await sender.stop()
        for result in results:
            if isinstance(result, Exception):
                raise result
        progress = sender.progress()
    figures = progress.to_dict()
    figures["events_per_s"] = round(progress.sent_events / max(figures["elapsed_s"], 1e-9), 1)
    if progress.stopped:
        return figures, 1
    return figures, 0 if progress.pending == 0 else 2


def _print_figures(figures: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    counts = figures["counts"]
    click.echo(
        f"sent {figures['sent_events']} events in {figures['batches']} batches, {figures['elapsed_s']} s"
        f" ({figures['events_per_s']} events/s)"
    )
    click.echo("queue: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    if figures["stopped"]:
        click.echo(f"stopped, needs a person: {figures['stopped']}")
    elif figures["last_error"] and counts.get("pending"):
        click.echo(f"last error: {figures['last_error']}")


@device.command()
@data_dir_option
@click.option("--once", is_flag=True, help="exit when the queue is empty or a person is needed")
@click.option("--retry-failed", is_flag=True, help="send failed records again (after a person fixed the cause)")
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
@_sender_options
def sync(
    data_dir: Path,
    once: bool,
    retry_failed: bool,
    as_json: bool,
    batch_size: int,
    backoff_base: float,
    backoff_max: float,
    timeout: float | None,
) -> None:
    """Send the queue to the box in the background rules of the protocol, and print figures."""
    with _outbox(data_dir) as outbox, _sender_lock(data_dir):
        if retry_failed:
            click.echo(f"{outbox.retry_failed()} failed record(s) pending again")
        figures, code = asyncio.run(
            _run_sender(outbox, once=once, timeout=timeout, batch_size=batch_size, backoff=(backoff_base, backoff_max))
        )
    _print_figures(figures, as_json)
    sys.exit(code)


# -- status ---------------------------------------------------------------------------------------
@device.command()
@data_dir_option
@click.option("--json", "as_json", is_flag=True)
def status(data_dir: Path, as_json: bool) -> None:
    """The queue per status, the chain head and the last error, from the data folder alone."""
    with _outbox(data_dir) as outbox:
        identity = outbox.identity()
        head = outbox.head()
        report: dict[str, Any] = {
            "writer_id": identity.writer_id if identity else None,
            "box_url": identity.box_url if identity else None,
            "store_id": identity.store_id if identity else None,
            "counts": outbox.status_counts(),
            "head": {"seq": head.seq, "hash": head.hash.hex(), "hlc": head.hlc},
            "last_error": outbox.get_meta("last_error"),
            "last_answer_at": outbox.get_meta("last_answer_at"),
            "failed": [
                {"seq": r.seq, "code": r.code, "message": r.message} for r in outbox.records("failed", limit=20)
            ],
        }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"writer {report['writer_id']} -> {report['box_url']} (store {report['store_id']})")
    click.echo("queue: " + ", ".join(f"{name} {count}" for name, count in report["counts"].items()))
    click.echo(f"head: seq {head.seq} hash {head.hash.hex()[:16]}…")
    if report["last_error"]:
        click.echo(f"last error: {report['last_error']}")
    for failed in report["failed"]:
        click.echo(f"failed seq {failed['seq']}: {failed['code']} {failed['message'] or ''}")


# -- simulate -------------------------------------------------------------------------------------
def _codes(codes_file: Path | None, codes: str | None) -> list[str]:
    if codes_file is not None:
        found = [line.strip() for line in codes_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        found = [code.strip() for code in (codes or "").split(",") if code.strip()]
    if not found:
        raise click.ClickException("give the codes to scan with --codes-file F or --codes A,B,...")
    return found


async def _scan_at_rate(
    outbox: Outbox, payloads: Iterator[dict[str, Any]], count: int, rate: float, sender: Sender | None = None
) -> list[float]:
    """Append ``count`` scans, the i-th no earlier than i/rate seconds in; each append's latency in ms."""
    latencies: list[float] = []
    start = time.monotonic()
    for index, payload in zip(range(count), payloads, strict=False):
        if rate > 0:
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        began = time.perf_counter()
        await asyncio.to_thread(outbox.append, "scan.recorded", payload)
        latencies.append((time.perf_counter() - began) * 1000)
        if sender is not None:
            sender.wake()
    return latencies


@device.command()
@data_dir_option
@click.option("--session", "session_id", required=True)
@click.option("--codes-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--codes", default=None, help="comma-separated codes, scanned in turn")
@click.option("--rate", type=float, default=5.0, show_default=True, help="scans per second (0: as fast as possible)")
@click.option("--count", type=click.IntRange(min=1), required=True)
@click.option("--qty", type=int, default=1, show_default=True)
@click.option("--rack", "rack_id", default="")
@click.option("--by", "by", default=None)
@click.option("--sync", "also_sync", is_flag=True, help="send while scanning, and until the queue drains")
@click.option("--json", "as_json", is_flag=True)
@_sender_options
def simulate(
    data_dir: Path,
    session_id: str,
    codes_file: Path | None,
    codes: str | None,
    rate: float,
    count: int,
    qty: int,
    rack_id: str,
    by: str | None,
    also_sync: bool,
    as_json: bool,
    batch_size: int,
    backoff_base: float,
    backoff_max: float,
    timeout: float | None,
) -> None:
    """Scan a rack at a set rate (for demos and load), optionally syncing at the same time."""
    with _outbox(data_dir) as outbox:
        template = _scan_payload(outbox, session_id, "-", qty, rack_id, by, None, None)
        payloads = ({**template, "code": code} for code in itertools.cycle(_codes(codes_file, codes)))

        scanned: list[float] = []

        async def scanner(sender: Sender | None = None) -> None:
            scanned.extend(await _scan_at_rate(outbox, payloads, count, rate, sender))

        async def run() -> tuple[dict[str, Any] | None, int]:
            if not also_sync:
                await scanner()
                return None, 0
            return await _run_sender(
                outbox,
                once=True,
                timeout=timeout,
                batch_size=batch_size,
                backoff=(backoff_base, backoff_max),
                alongside=scanner,
            )

        started = time.monotonic()
        try:
            if also_sync:
                with _sender_lock(data_dir):
                    figures, code = asyncio.run(run())
            else:
                figures, code = asyncio.run(run())
        except PayloadError as exc:
            raise click.ClickException(str(exc)) from None
        elapsed = time.monotonic() - started
        latencies = scanned or [0.0]
    report: dict[str, Any] = {
        "scans": len(scanned),
        "elapsed_s": round(elapsed, 3),
        "append_ms_p50": round(statistics.median(latencies), 3),
        "append_ms_max": round(max(latencies), 3),
        "sync": figures,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(
            f"scanned {report['scans']} in {report['elapsed_s']} s (append p50 {report['append_ms_p50']} ms,"
            f" max {report['append_ms_max']} ms)"
        )
        if figures is not None:
            _print_figures(figures, as_json=False)
    sys.exit(code)


# -- discover -------------------------------------------------------------------------------------
DISCOVER_S = 3.0


def _print_peer(peer: PeerInfo, as_json: bool, change: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps({"change": change, **peer.to_dict()} if change else peer.to_dict()))
    else:
        prefix = f"{change:<6} " if change else ""
        click.echo(f"{prefix}{peer.url:<28} store {peer.store_id}  node {peer.node_id}  role {peer.role}")
    sys.stdout.flush()  # a field tech pipes --watch into grep; each box should show when it changes


async def _watch_boxes(store_id: str | None, timeout: float | None, as_json: bool) -> None:
    from replication.discovery import Discovery, PeerChange

    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted.set)

    def show(change: PeerChange) -> None:
        _print_peer(change.peer, as_json, change.kind)

    async with Discovery(store_id=store_id) as found:
        found.on_change(show)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(interrupted.wait(), timeout)


async def _list_boxes(store_id: str | None, timeout: float) -> list[PeerInfo]:
    from replication.discovery import Discovery

    async with Discovery(store_id=store_id) as found:
        await asyncio.sleep(timeout)
        await found.settle(1.0)
        return found.peers()


@device.command()
@click.option("--store", "store_id", default=None, help="list only the boxes of this store")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=None,
    help=f"seconds to listen [default: {DISCOVER_S:g}; with --watch, until interrupted]",
)
@click.option("--watch", is_flag=True, help="print boxes as they appear, change and leave")
@click.option("--json", "as_json", is_flag=True, help="print JSON (one object per line with --watch)")
def discover(store_id: str | None, timeout: float | None, watch: bool, as_json: bool) -> None:
    """Find the store's boxes on this LAN by mDNS, as a handheld does before pairing."""
    from replication.discovery import local_ipv4_addresses

    addresses = local_ipv4_addresses()
    if not addresses:
        raise click.ClickException("this machine has no network address besides loopback; join the store's LAN first")
    if watch:
        asyncio.run(_watch_boxes(store_id, timeout, as_json))
        return
    seconds = DISCOVER_S if timeout is None else timeout
    peers = asyncio.run(_list_boxes(store_id, seconds))
    if not peers:
        which = f"of store {store_id} " if store_id else ""
        raise click.ClickException(
            f"no box {which}answered on {', '.join(addresses)} within {seconds:g} s; check that this machine is "
            "on the store's LAN and that the network lets mDNS (multicast UDP 5353) through"
        )
    if as_json:
        click.echo(json.dumps([peer.to_dict() for peer in peers], indent=2))
        return
    for peer in peers:
        _print_peer(peer, as_json=False)
