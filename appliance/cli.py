"""``stockverify``: the one command line for the box (serve, settings, users, products, locks, doctor, rebuild)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from appliance.logs import configure_logging
from appliance.settings import (
    CONFIG_FILE_NAME,
    ENV_PREFIX,
    SettingInfo,
    Settings,
    SettingsError,
    describe,
    load_settings,
    load_settings_with_sources,
)

if TYPE_CHECKING:  # uvicorn and the certificates load for serve alone
    import uvicorn

    from provisioning.certificates import ServerIdentity

log = logging.getLogger("stockverify")

DEMO_STORE_ID = "demo-store"
DEMO_STORE_NAME = "Demo Store"

data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="the box's data folder"
)
config_option = click.option(
    "--config", type=click.Path(dir_okay=False, path_type=Path), default=None, help="a TOML settings file"
)


def _settings(config: Path | None, **flags: Any) -> Settings:
    try:
        return load_settings(flags, config_file=config)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(package_name="stockverify-edge")
def main() -> None:
    """StockVerify Edge: the store box for offline inventory counts."""


class _ServeCommand(click.Command):
    """``serve``, whose help ends with every setting: the flags cover a few, the rest are set elsewhere."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Settings"):
            formatter.write_text(
                f"Set any of these as name = value in {CONFIG_FILE_NAME} in the data folder (or the file --config"
                f" names), or as {ENV_PREFIX}<NAME> in the environment; the environment beats the file and the"
                " flags above beat both. 'stockverify settings' shows the values in force."
            )
            formatter.write_paragraph()
            formatter.write_dl([(info.name, _epilog_line(info)) for info in describe()])


def _epilog_line(info: SettingInfo) -> str:
    default = _shown(info, info.default)
    return f"{info.help} [{info.env_var}" + (f"; default: {default}]" if default else "]")


def _shown(info: SettingInfo, value: Any) -> str:
    """A value as text a person reads; a secret says only whether it is set, never what it is."""
    if info.secret:
        return "(set)" if value else ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


@main.command(cls=_ServeCommand)
@data_dir_option
@config_option
@click.option("--host", default=None, help="address to listen on")
@click.option("--port", type=int, default=None, help="TCP port")
@click.option("--role", type=click.Choice(["box", "hq"]), default=None)
@click.option("--demo", is_flag=True, default=None, help="create the demo store on first start")
def serve(config: Path | None, **flags: Any) -> None:
    """Run the box's server: HTTPS on https_port when the data dir holds a server certificate (then the
    plain port serves only health, the store CA and redirects), plain HTTP on port otherwise."""
    import uvicorn

    from appliance.app import create_app
    from appliance.box import open_box
    from appliance.services import Tls

    if flags.get("demo"):
        flags.update(store_id=DEMO_STORE_ID, store_name=DEMO_STORE_NAME)
    settings = _settings(config, **flags)
    configure_logging(settings.log_level)
    identity = _server_identity(settings)  # before the box opens: a bad certificate stops the start cleanly
    box = open_box(settings)
    if settings.demo:
        from appliance.demo.seed import seed_demo

        seed_demo(box)
    tls = None
    if identity is not None:
        ca_fingerprint = _ca_fingerprint(identity)
        tls = Tls(port=settings.https_port, fingerprint=identity.fingerprint, ca_fingerprint=ca_fingerprint)
    log.info(
        "box starting",
        extra={
            "node_id": box.node.node_id,
            "store_id": box.node.store_id,
            "host": settings.host,
            "port": settings.port,
            "https_port": settings.https_port if tls else "none",
            "tls_fingerprint": tls.fingerprint if tls else "none",
            "data_dir": str(settings.data_dir),
        },
    )
    app = create_app(box, tls=tls)
    # Everything made so far lives as long as the process: out of the collector's sight, a full
    # collection no longer walks the product master and the app's routes, which trims latency spikes.
    gc.collect()
    gc.freeze()
    # The writer thread lets the GIL go for every SQLite statement and must take it back from the event
    # loop: at the default 5 ms switch interval a claim's twenty statements could wait that long each
    # while the loop is busy. 1 ms bounds the wait without the cost 0.5 ms had on ingest.
    sys.setswitchinterval(0.001)
    common: dict[str, Any] = {
        "host": settings.host,
        "log_config": None,
        "access_log": False,
        # Handhelds reach the box directly on the store LAN; no proxy's forwarded headers to trust.
        "proxy_headers": False,
        "timeout_graceful_shutdown": 10,
    }
    if identity is None:
        uvicorn.run(app, port=settings.port, **common)
        return
    from appliance.plain_http import plain_app

    ca_pem = identity.ca_path.read_bytes() if identity.ca_path is not None else None
    secure = uvicorn.Config(
        app,
        port=settings.https_port,
        ssl_certfile=str(identity.cert_path),
        ssl_keyfile=str(identity.key_path),
        **common,
    )
    plain = uvicorn.Config(
        plain_app(
            app,
            https_port=settings.https_port,
            store_name=settings.store_name,
            ca_pem=ca_pem,
            ca_fingerprint=tls.ca_fingerprint if tls else None,
        ),
        port=settings.port,
        lifespan="off",  # one app, one lifespan: the HTTPS server's
        **common,
    )
    # Bound here, before the app starts: a port already taken stops the start with uvicorn's one-line
    # message instead of leaving a box that serves HTTPS with no plain port beside it.
    sockets = (secure.bind_socket(), plain.bind_socket())
    served = identity

    def refresh() -> None:
        """Renew when due, and serve what the files hold: the next handshake uses the new certificate."""
        nonlocal served
        current = _server_identity(settings)
        context = secure.ssl  # the Config's context, which every new handshake reads
        if current is None or current.fingerprint == served.fingerprint or context is None:
            return
        context.load_cert_chain(current.cert_path, current.key_path)
        log.info(
            "server certificate reloaded",
            extra={"tls_fingerprint": current.fingerprint, "not_after": current.not_after.isoformat()},
        )
        served = current

    with asyncio.Runner(loop_factory=secure.get_loop_factory()) as runner:
        runner.run(_serve_together(_listener(secure), _listener(plain), sockets, (refresh, settings.tls_check_s)))


def _server_identity(settings: Settings) -> ServerIdentity | None:
    """The certificate to serve, renewed first when the store CA issued it and it is due: a box that
    restarts now and then never lets its certificate lapse. A box without the CA's key (it stays where
    certificates are issued) keeps what it has and says so."""
    from provisioning.certificates import (
        CertificateError,
        ensure_server_certificate,
        issued_names,
        load_server_identity,
    )

    try:
        identity = load_server_identity(settings.data_dir)
    except CertificateError as exc:
        raise click.ClickException(f"{exc} (docs/tls.md)") from None
    if identity is None or identity.ca_path is None:
        return identity
    hostnames, addresses = issued_names(identity.cert_path.read_bytes())
    try:
        renewed = ensure_server_certificate(settings.data_dir, hostnames=hostnames, addresses=addresses)
    except CertificateError as exc:
        log.warning(
            "server certificate not renewed",
            extra={"reason": str(exc), "not_after": identity.not_after.isoformat()},
        )
        return identity
    if renewed.fingerprint != identity.fingerprint:
        log.info(
            "server certificate renewed",
            extra={"tls_fingerprint": renewed.fingerprint, "not_after": renewed.not_after.isoformat()},
        )
    return renewed


def _ca_fingerprint(identity: ServerIdentity) -> str | None:
    from provisioning.certificates import fingerprint

    return fingerprint(identity.ca_path.read_bytes()) if identity.ca_path is not None else None


def _listener(config: uvicorn.Config) -> uvicorn.Server:
    """A server that leaves SIGINT and SIGTERM to ``_serve_together``: each would otherwise take them
    for itself alone, and raise them again when it stops while the other still runs."""
    import uvicorn

    class Listener(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    return Listener(config)


async def _serve_together(
    secure: uvicorn.Server,
    plain: uvicorn.Server,
    sockets: tuple[socket.socket, socket.socket],
    refresh: tuple[Callable[[], None], float],
) -> None:
    """Both listeners in one event loop, so the app, its lifespan and the database exist once.

    HTTPS starts first: its lifespan starts the app whose health the plain port forwards to. When
    either stops (a signal, a port taken), both stop, gracefully unless a second signal insists.
    """
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in (secure, plain):
            server.force_exit = server.should_exit
            server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    tasks = [asyncio.create_task(secure.serve(sockets=[sockets[0]]), name="https")]
    while not secure.started and not tasks[0].done():
        await asyncio.sleep(0.05)
    if secure.started:
        tasks.append(asyncio.create_task(plain.serve(sockets=[sockets[1]]), name="http"))
    keeper = asyncio.create_task(_keep_certificate(*refresh), name="certificate")
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    keeper.cancel()
    for server in (plain, secure):
        server.should_exit = True
    for task in tasks:
        await task


async def _keep_certificate(refresh: Callable[[], None], every_s: float) -> None:
    """A box that runs for a year without a restart still never lets its certificate lapse."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(refresh)
        except Exception:
            log.exception("server certificate check failed; the box serves the one it has")


@main.command("settings")
@data_dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="print the settings as JSON")
def settings_command(config: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Show every setting: its value as the box would load it, where that came from, and what it does."""
    try:
        loaded, sources = load_settings_with_sources({"data_dir": data_dir}, config_file=config)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    infos = describe()
    if as_json:
        rows = [
            {
                "name": info.name,
                "value": _json_value(info, getattr(loaded, info.name)),
                "source": sources[info.name],
                "help": info.help,
            }
            for info in infos
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    for info in infos:
        click.echo(f"{info.name} = {_shown(info, getattr(loaded, info.name))}".rstrip())
        click.echo(f"    from {sources[info.name]}")
        click.echo(f"    {info.help}")


def _json_value(info: SettingInfo, value: Any) -> Any:
    """Numbers and flags stay typed for a script reading the JSON; a secret stays hidden there too."""
    if info.secret:
        return _shown(info, value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


@main.group()
def user() -> None:
    """Manage the people who use the box."""


@user.command("add")
@data_dir_option
@config_option
@click.argument("username")
@click.option("--role", type=click.Choice(["verifier", "supervisor", "admin", "auditor"]), required=True)
@click.option("--name", "display_name", default="", help="the name people see")
@click.password_option("--password", help="at least 8 characters")
def user_add(
    config: Path | None, data_dir: Path | None, username: str, role: str, display_name: str, password: str
) -> None:
    """Add a user with a role."""
    from appliance.auth import people
    from appliance.box import open_box
    from appliance.errors import StockVerifyError

    settings = _settings(config, data_dir=data_dir)
    box = open_box(settings)
    try:
        name = people.check_new_user(username, role, password)
        password_hash = people.Passwords(settings.password_memory_kib, settings.password_time_cost).hash(password)
        made = box.db.write(lambda conn: people.add_user(conn, box.log, name, display_name, role, password_hash))
    except StockVerifyError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    finally:
        box.close()
    click.echo(f"added {made.username} ({made.role}) as {made.user_id}")


@main.group()
def products() -> None:
    """The product master."""


@products.command("import")
@data_dir_option
@config_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="check the file and show its errors; import nothing")
def products_import(config: Path | None, data_dir: Path | None, file: Path, dry_run: bool) -> None:
    """Import products from a CSV or XLSX file, all rows or none."""
    from appliance.box import open_box
    from appliance.catalog import product_import
    from appliance.errors import StockVerifyError

    settings = _settings(config, data_dir=data_dir)
    box = open_box(settings)
    try:
        plan = product_import.parse_file(file.read_bytes(), file.name)
        if dry_run or plan.errors:
            preview = product_import.preview(box.db.read(), plan)
            click.echo(json.dumps(preview, indent=2))
            if preview["errors"]:
                sys.exit(1)
            return
        result = box.db.write(lambda conn: product_import.commit(conn, box.log, plan))
    except StockVerifyError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    finally:
        box.close()
    click.echo(json.dumps(result, indent=2))


@main.group()
def locks() -> None:
    """Which box of the store grants rack claims and session locks."""


def _locks_view(box: Any) -> dict[str, Any]:
    from appliance.counting import authority

    conn = box.db.read()
    box.authority.load(conn)
    return {
        "node_id": box.node.node_id,
        **box.authority.standing().to_dict(),
        "designations": authority.history(conn),
    }


def _echo_locks(view: dict[str, Any]) -> None:
    who = view["authority"] or (", ".join(view["rivals"]) if view["rivals"] else "none yet")
    click.echo(f"this box:  {view['node_id']} ({view['role']})")
    click.echo(f"authority: {who} at epoch {view['epoch']}")
    for d in view["designations"]:
        click.echo(f"  epoch {d['epoch']}: {d['node_id']}" + (f" (by {d['by']})" if d["by"] else " (first box)"))


@locks.command("show")
@data_dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
def locks_show(config: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Who grants the store's locks, at which epoch, and this box's part, as this box's log says."""
    from appliance.box import open_box

    box = open_box(_settings(config, data_dir=data_dir))
    try:
        view = _locks_view(box)
    finally:
        box.close()
    if as_json:
        click.echo(json.dumps(view, indent=2))
    else:
        _echo_locks(view)


@locks.command("move-authority")
@data_dir_option
@config_option
@click.option("--to", "node_id", required=True, help="the node id of the box that grants locks from now on")
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
def locks_move_authority(config: Path | None, data_dir: Path | None, node_id: str, as_json: bool) -> None:
    """Make another box (or this one) the store's lock authority, at the next epoch.

    Every token granted afterwards is larger than any before, leases of the earlier epoch are no longer
    honoured, and scans made under them are flagged. The way out when two boxes both grant."""
    import getpass

    from appliance.box import open_box
    from appliance.counting import authority
    from appliance.errors import StockVerifyError

    box = open_box(_settings(config, data_dir=data_dir))
    try:
        by = f"shell:{getpass.getuser()}"
        moved = box.db.write(lambda conn: authority.move(conn, box.log, by, node_id))
        view = _locks_view(box)
    except StockVerifyError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    finally:
        box.close()
    if as_json:
        click.echo(json.dumps({**moved, "here": view}, indent=2))
        return
    click.echo(f"the lock authority is now {moved['node_id']} at epoch {moved['epoch']}; the store's boxes learn it")
    click.echo("by replication, and the old authority stops granting as soon as it does")


@main.command()
@data_dir_option
@config_option
def rebuild(config: Path | None, data_dir: Path | None) -> None:
    """Drop every projection and refold it from the event log."""
    from appliance.box import open_box
    from appliance.store import eventlog

    box = open_box(_settings(config, data_dir=data_dir))
    try:
        count = box.db.write(eventlog.rebuild)
    finally:
        box.close()
    click.echo(f"rebuilt projections from {count} events")


@main.command()
@data_dir_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def doctor(config: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Check the box: database integrity, schema version, disk space, the box's own chain."""
    from provisioning.doctor import run_checks

    settings = _settings(config, data_dir=data_dir)
    checks = run_checks(settings)
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        for check in checks:
            click.echo(f"[{check.status.upper():4}] {check.name}: {check.detail}")
    if any(c.status == "fail" for c in checks):
        sys.exit(1)


@main.command("backup")
@data_dir_option
@config_option
@click.option(
    "--to",
    "dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="folder for the archive (default: the backup_dir setting)",
)
@click.option("--method", type=click.Choice(["backup", "vacuum"]), default="backup", help="how the database is copied")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def backup_command(config: Path | None, data_dir: Path | None, dest: Path | None, method: str, as_json: bool) -> None:
    """Back the box up while it serves: database, keys, settings, TLS files and photos in one archive."""
    from provisioning import backup as backups

    settings = _settings(config, data_dir=data_dir)
    say = (lambda _line: None) if as_json else (lambda line: click.echo(f"... {line}", err=True))
    try:
        backups.be_gentle()  # the box beside it keeps serving handhelds first
        made = backups.backup(settings, dest, method=method, progress=say)
    except (backups.BackupRefused, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        summary = {
            "path": str(made.path),
            "size": made.size,
            "seconds": round(made.seconds, 3),
            "store_id": made.manifest["store_id"],
            "event_count": made.manifest["event_count"],
            "files": len(made.manifest["files"]),
            "removed": [str(p) for p in made.removed],
        }
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{made.path}")
    click.echo(
        f"{made.size / 1024**2:.1f} MiB, {len(made.manifest['files'])} files, {made.manifest['event_count']} events,"
        f" in {made.seconds:.1f} s"
    )
    for path in made.removed:
        click.echo(f"removed {path.name} (backup_keep = {settings.backup_keep})")


@main.command("restore")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@data_dir_option
@config_option
@click.option("--store", "expect_store_id", default=None, help="refuse an archive of any other store")
@click.option("--force", is_flag=True, help="replace the store the data dir holds (its files are moved aside)")
@click.option(
    "--same-writer",
    "proof",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="keep the box's writer: give a peer's or HQ's copy of the store (store.db or its backup) taken after"
    " this box stopped, proving the backup holds everything the box published (docs/operations.md)",
)
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def restore_command(
    archive: Path,
    config: Path | None,
    data_dir: Path | None,
    expect_store_id: str | None,
    force: bool,
    proof: Path | None,
    as_json: bool,
) -> None:
    """Restore a backup into the data dir, after checking all of it; the box must be stopped."""
    from provisioning import backup as backups

    settings = _settings(config, data_dir=data_dir)
    say = (lambda _line: None) if as_json else (lambda line: click.echo(f"... {line}", err=True))
    try:
        report = backups.restore(
            archive,
            settings.data_dir,
            expect_store_id=expect_store_id,
            force=force,
            same_writer_proof=proof,
            progress=say,
        )
    except (backups.BackupRefused, OSError) as exc:
        raise click.ClickException(f"restore refused, nothing changed: {exc}") from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"restored store {report.store_id} (backup of {report.created_at}) into {report.data_dir}")
    for line in report.checks:
        click.echo(f"  checked: {line}")
    if report.new_writer:
        click.echo(f"  the box writes as {report.writer_id} from now on; {report.old_writer_id} is history")
    else:
        click.echo(f"  the box goes on writing as {report.old_writer_id}")
    if report.aside:
        click.echo(f"  the previous files are in {report.aside}")
    click.echo(f"  {report.files} files, {report.bytes / 1024**2:.1f} MiB, in {report.seconds:.1f} s")


from replication.device.cli import device  # noqa: E402  (registered last: the device group is its own module)

main.add_command(device)

from appliance.hq.cli import hq  # noqa: E402  (HQ staff's commands, a module of their own like device)

main.add_command(hq)

from provisioning.cli import provision_command, upgrade_command  # noqa: E402  (the field tech's commands)

main.add_command(provision_command)
main.add_command(upgrade_command)
