"""``stockverify provision``: the field tech's command, with each step shown as it ends."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from provisioning.provision import Plan, Step

_PATH = click.Path(path_type=Path)
_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


@click.command("provision")
@click.option("--data-dir", type=_PATH, help="the box's data folder (on a box: /var/lib/stockverify)")
@click.option("--plan", "plan_file", type=_FILE, help="a TOML plan with these options' names, for fleets")
@click.option("--store-id", help="the store's id, the same on every box of the store")
@click.option("--store-name", help="the store's name as people see it")
@click.option("--admin-user", "admin_username", help="the first admin's username (default admin)")
@click.option("--admin-password", envvar="STOCKVERIFY_ADMIN_PASSWORD", help="or STOCKVERIFY_ADMIN_PASSWORD")
@click.option("--root", type=_PATH, help="a staged filesystem to install units into (an image, a test)")
@click.option("--join", is_flag=True, default=None, help="a second box of the store: it forwards rack claims")
@click.option("--peer", "peers", multiple=True, help="another box of the store, https://host:8443 (repeat)")
@click.option("--hq-url", help="HQ's URL")
@click.option("--store-secret", envvar="STOCKVERIFY_STORE_SECRET", help="the store secret HQ and peers share")
@click.option("--hostname", "hostnames", multiple=True, help="a name the box answers to (repeat)")
@click.option("--address", "addresses", multiple=True, help="an IP address the box answers on (repeat)")
@click.option("--cert", "cert_file", type=_FILE, help="the retailer's certificate (PEM, with its chain)")
@click.option("--key", "key_file", type=_FILE, help="the key of that certificate (PEM)")
@click.option(
    "--ca-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), help="the store CA of the first box"
)
@click.option("--products", type=_FILE, help="the first product master (CSV or XLSX)")
@click.option("--no-units", "install_units", flag_value=False, default=None, help="do not install systemd units")
@click.option("--json", "as_json", is_flag=True, help="print what was done as JSON")
def provision_command(plan_file: Path | None, as_json: bool, **flags: Any) -> None:
    """Turn a fresh data folder into a store box; safe to run again (it changes only what differs)."""
    # Read when the command runs, so that every other command starts without the certificate machinery.
    from provisioning.provision import ProvisionError, provision, summary

    try:
        plan = _plan(plan_file, flags)
    except (ProvisionError, TypeError) as exc:
        raise click.ClickException(str(exc)) from None
    console = None if as_json else _console()
    try:
        outcome = provision(plan, report=(lambda step: _show(console, step)) if console else (lambda step: None))
    except ProvisionError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(summary(outcome), indent=2))
        return
    assert console is not None
    console.print()
    unchanged = "" if outcome.changed else " (nothing changed: the box was already provisioned)"
    console.print(f"[bold]Next[/bold]{unchanged}")
    for number, line in enumerate(outcome.next_steps, 1):
        console.print(f"  {number}. {line}")
    if outcome.ca_page and sys.stdout.isatty():
        import segno

        segno.make(outcome.ca_page).terminal(compact=True)


def _plan(plan_file: Path | None, flags: dict[str, Any]) -> Plan:
    from provisioning.provision import Plan, ProvisionError

    given = {key: value for key, value in flags.items() if value not in (None, ())}
    for key in ("peers", "hostnames", "addresses"):
        if key in given:
            given[key] = list(given[key])
    if plan_file is not None:
        return Plan.from_file(plan_file, **given)
    missing = [f"--{key.replace('_', '-')}" for key in ("data_dir", "store_id", "store_name") if key not in given]
    if missing:
        raise ProvisionError(f"say {', '.join(missing)} (or give a --plan file)")
    return Plan(**given)


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _show(console: Any, step: Step) -> None:
    mark = "[green]✓[/green]" if step.changed else "[dim]·[/dim]"
    console.print(f"{mark} [bold]{step.name:9}[/bold] {step.detail}")


@click.command("upgrade")
@click.option("--data-dir", type=_PATH, help="the box's data folder")
@click.option("--package", type=_FILE, help="the new release's wheel (without it: the code installed now)")
@click.option("--wheelhouse", type=click.Path(file_okay=False, path_type=Path), help="the previous release's wheel")
@click.option("--force", is_flag=True, help="upgrade even while racks are being counted")
@click.option("--restart-cmd", "restart", default="systemctl restart stockverify", show_default=True)
@click.option("--stop-cmd", "stop", default="systemctl stop stockverify", show_default=True)
@click.option("--health-url", default="", help="default: the box's own /api/health")
@click.option("--health-timeout", "health_timeout_s", type=float, default=60.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the steps as JSON")
def upgrade_command(data_dir: Path | None, as_json: bool, **flags: Any) -> None:
    """Install a new release: refuses while racks are counted, backs up, migrates, checks health, rolls back."""
    from appliance.settings import SettingsError, load_settings
    from provisioning.upgrade import Request, UpgradeError, upgrade

    try:
        settings = load_settings({"data_dir": data_dir} if data_dir else {})
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    console = None if as_json else _console()
    steps: list[dict[str, Any]] = []

    def report(step: Any) -> None:
        steps.append(step.to_dict())
        if console is not None:
            mark = "[green]✓[/green]" if step.ok else "[red]✗[/red]"
            console.print(f"{mark} [bold]{step.name:9}[/bold] {step.detail}")

    try:
        upgrade(settings, Request(**flags), report)
    except UpgradeError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "error": str(exc), "steps": steps}, indent=2))
            sys.exit(1)
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"ok": True, "steps": steps}, indent=2))
