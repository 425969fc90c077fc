"""``stockverify hq``: HQ staff send a store its product master and planned runs from a shell.

It talks to HQ's server over HTTP, through the endpoints of ``appliance.api.hq``, rather than opening
HQ's data folder as ``stockverify products import`` does on a box: HQ staff work from their own
desks, not on HQ's server, and going through the server keeps its one writer per replica, its login
and its checks in charge. The person logs in with their HQ account for each command (and the token
is given back at the end), so what they wrote is recorded under their name.

Settings come from flags or the environment: ``--url`` / ``STOCKVERIFY_HQ_URL`` (the same setting a
box uses to reach HQ), ``--user`` / ``STOCKVERIFY_HQ_USER``, ``STOCKVERIFY_HQ_PASSWORD`` (asked for
when unset). Every refusal prints HQ's code and message and exits 1.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

TIMEOUT_S = 60.0
SHOWN_ERRORS = 50  # of a refused file's problems; --json prints them all


class HqError(Exception):
    """HQ refused the request or could not be reached; ``code`` is HQ's stable code (or NETWORK)."""

    def __init__(self, code: str, message: str, *, status: int = 0, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details = details


@dataclass
class HqClient:
    url: str
    username: str
    password: str
    timeout: float = TIMEOUT_S
    _token: str | None = field(default=None, repr=False)

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        payload: Any = None,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One authenticated request; logs in first if this client has no token yet."""
        if self._token is None:
            answer = self._send("POST", "/api/auth/login", {"username": self.username, "password": self.password})
            self._token = str(answer["token"])
        return self._send(method, path, payload, params=params, body=body, content_type=content_type)

    def close(self) -> None:
        if self._token is not None:
            # The token expires by itself; a failed logout must not hide the command's real answer.
            with contextlib.suppress(HqError):
                self._send("POST", "/api/auth/logout", None)
            self._token = None

    def _send(
        self,
        method: str,
        path: str,
        payload: Any,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        data = body if body is not None else (json.dumps(payload).encode() if payload is not None else None)
        if data is not None:
            headers["Content-Type"] = content_type
        # The scheme is checked when the URL is read (``_hq_url``), so urlopen never sees file: or ftp:.
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                raw = answer.read()
        except urllib.error.HTTPError as exc:
            raise _refusal(exc.code, exc.read(), exc.reason) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HqError("NETWORK", f"cannot reach HQ at {self.url} ({reason})") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise HqError("BAD_ANSWER", f"{self.url} did not answer like a StockVerify HQ") from None


def _refusal(status: int, raw: bytes, reason: str) -> HqError:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        return HqError(
            str(body["code"]), str(body.get("message") or reason), status=status, details=body.get("details")
        )
    return HqError(f"HTTP_{status}", reason or "HQ refused the request", status=status)


def _hq_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    url = value.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"expected an http:// or https:// URL, got {value!r}")
    return url


def _client(ctx: click.Context) -> HqClient:
    """Built on first use, so that a subcommand's ``--help`` asks for neither address nor password."""
    client: HqClient | None = ctx.obj.get("client")
    if client is None:
        if not ctx.obj["url"] or not ctx.obj["user"]:
            raise click.UsageError("say where HQ is and who you are: --url and --user (or STOCKVERIFY_HQ_URL/_USER)")
        password = ctx.obj["password"] or click.prompt(f"HQ password for {ctx.obj['user']}", hide_input=True)
        client = HqClient(ctx.obj["url"], ctx.obj["user"], password)
        ctx.obj["client"] = client
        ctx.find_root().call_on_close(client.close)
    return client


def _call(ctx: click.Context, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return _client(ctx).call(method, path, **kwargs)
    except HqError as exc:
        raise click.ClickException(_explain(exc)) from None


def _explain(exc: HqError) -> str:
    """HQ's code and message, then what a person needs to fix: a refused file's problems line by line."""
    lines = [f"{exc.code}: {exc.message}"]
    details = exc.details if isinstance(exc.details, dict) else {}
    problems = details.get("errors") or []
    for problem in problems[:SHOWN_ERRORS]:
        where = [f"line {problem['line']}"] if problem.get("line") else []
        where += [problem["column"]] if problem.get("column") else []
        lines.append(f"  {', '.join(where) or 'file'}: {problem.get('message')}")
    if len(problems) > SHOWN_ERRORS:
        lines.append(f"  … and {len(problems) - SHOWN_ERRORS} more")
    if exc.code == "UNKNOWN_SCOPE":
        lines.extend(
            f"  not at the store: {kind} {', '.join(details[kind])}" for kind in ("skus", "racks") if details.get(kind)
        )
    return "\n".join(lines)


def _store_path(store_id: str, tail: str = "") -> str:
    return f"/api/hq/stores/{urllib.parse.quote(store_id, safe='')}{tail}"


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _when(ms: int | None) -> str:
    return "never" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


store_option = click.option("--store", "store_id", required=True, help="the store's id, e.g. store-014")
create_option = click.option(
    "--create-store",
    is_flag=True,
    help="make HQ's replica of a store no box of which has reached HQ yet (it receives it on first contact)",
)
json_option = click.option("--json", "as_json", is_flag=True, help="print HQ's answer as JSON")


@click.group()
@click.option("--url", envvar="STOCKVERIFY_HQ_URL", callback=_hq_url, help="HQ's address, e.g. https://hq.example.com")
@click.option("--user", envvar="STOCKVERIFY_HQ_USER", help="your HQ username")
@click.option(
    "--password",
    envvar="STOCKVERIFY_HQ_PASSWORD",
    default=None,
    help="your HQ password (better in the environment, or typed when asked: flags show in `ps`)",
)
@click.pass_context
def hq(ctx: click.Context, url: str | None, user: str | None, password: str | None) -> None:
    """HQ staff: the stores HQ holds, and the product master and planned runs sent down to them."""
    ctx.ensure_object(dict)
    ctx.obj.update(url=url, user=user, password=password)


@hq.command("stores")
@json_option
@click.pass_context
def stores(ctx: click.Context, as_json: bool) -> None:
    """The stores HQ holds: events, products, runs, last contact, and whether HQ's writing got down."""
    answer = _call(ctx, "GET", "/api/hq/stores")
    if as_json:
        _echo_json(answer)
        return
    if not answer["stores"]:
        click.echo("HQ holds no store yet")
        return
    click.echo(
        f"{'store':<20} {'events':>8} {'products':>9} {'planned':>8} {'boxes':>6}  {'last contact':<21} sent down"
    )
    for store in answer["stores"]:
        delivered = store["hq_events_delivered"]
        sent = f"{delivered if delivered is not None else '-'}/{store['hq_events']}"
        click.echo(
            f"{store['store_id']:<20} {store['events']:>8} {store['products']:>9} "
            f"{store['runs'].get('PLANNED', 0):>8} {store['boxes']:>6}  {_when(store['last_contact_at']):<21} {sent}"
        )


@hq.group()
def products() -> None:
    """A store's product master."""


@products.command("import")
@store_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="check the file against the store's master; import nothing")
@create_option
@json_option
@click.pass_context
def products_import(
    ctx: click.Context, store_id: str, file: Path, dry_run: bool, create_store: bool, as_json: bool
) -> None:
    """Import a CSV or XLSX product master for a store, all rows or none; its boxes pull it from HQ."""
    params = {"filename": file.name, "dry_run": str(dry_run).lower(), "create": str(create_store).lower()}
    answer = _call(
        ctx,
        "POST",
        _store_path(store_id, "/products/import"),
        params=params,
        body=file.read_bytes(),
        content_type="application/octet-stream",
    )
    if as_json:
        _echo_json(answer)
    elif not dry_run:
        click.echo(
            f"{store_id}: imported {_count(answer['rows'], 'product')} ({answer['created']} new,"
            f" {answer['updated']} updated), import {answer['import_id']};"
            " the store's boxes receive them at their next pull from HQ"
        )
    elif answer["valid"]:
        click.echo(
            f"{store_id}: {file.name} is valid: {_count(answer['rows'], 'product')} ({answer['created']} new,"
            f" {answer['updated']} updated); nothing imported (dry run)"
        )
    if dry_run and not answer["valid"]:
        raise click.ClickException(
            _explain(
                HqError(
                    "IMPORT_INVALID", f"{len(answer['errors'])} problem(s) in {file.name} (dry run)", details=answer
                )
            )
        )


@hq.group()
def runs() -> None:
    """A store's count runs."""


@runs.command("plan")
@store_option
@click.option("--name", required=True, help="the run's name as the store's supervisor sees it")
@click.option("--kind", type=click.Choice(["directed", "hard"]), default="directed", show_default=True)
@click.option("--notes", default="", help="notes for the store")
@click.option("--planned-start", default=None, help="when the count should start, e.g. 2025-03-01T08:00")
@click.option("--sku", "skus", multiple=True, help="a SKU to count (repeat for more)")
@click.option("--rack", "racks", multiple=True, help="a rack code to count (repeat for more)")
@click.option(
    "--scope-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="a directed list as CSV with a 'sku' and/or 'rack' column",
)
@create_option
@json_option
@click.pass_context
def runs_plan(
    ctx: click.Context,
    store_id: str,
    name: str,
    kind: str,
    notes: str,
    planned_start: str | None,
    skus: tuple[str, ...],
    racks: tuple[str, ...],
    scope_file: Path | None,
    create_store: bool,
    as_json: bool,
) -> None:
    """Plan a count run for a store; it reaches the store PLANNED, with its scope, at the next pull."""
    from appliance.counting.runs import parse_scope_csv
    from appliance.errors import StockVerifyError

    listed_skus, listed_racks = list(skus), list(racks)
    if scope_file is not None:
        try:
            file_skus, file_racks = parse_scope_csv(scope_file.read_bytes())
        except StockVerifyError as exc:
            raise click.ClickException(f"{exc.code}: {scope_file.name}: {exc.message}") from None
        listed_skus += file_skus
        listed_racks += file_racks
    body = {"name": name, "kind": kind, "notes": notes, "planned_start": planned_start}
    scope = {"skus": listed_skus, "racks": listed_racks}
    answer = _call(
        ctx, "POST", _store_path(store_id, "/runs"), params={"create": str(create_store).lower()}, payload=body | scope
    )
    if as_json:
        _echo_json(answer)
        return
    click.echo(
        f"{store_id}: run {answer['run_id']} {answer['name']!r} planned ({answer['kind']},"
        f" {_count(len(set(listed_skus)), 'SKU')}, {_count(len(set(listed_racks)), 'rack')});"
        " the store receives it at its next pull"
    )


@runs.command("list")
@store_option
@json_option
@click.pass_context
def runs_list(ctx: click.Context, store_id: str, as_json: bool) -> None:
    """The store's runs as HQ holds them, newest first."""
    answer = _call(ctx, "GET", _store_path(store_id, "/runs"))
    if as_json:
        _echo_json(answer)
        return
    if not answer:
        click.echo(f"{store_id}: no runs")
    for run in answer:
        click.echo(f"{run['run_id']}  {run['status']:<11} {run['kind']:<8} {run['name']}")
