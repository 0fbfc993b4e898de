"""The ``billow`` command: run the embedded server, log in, inspect and stop clusters."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import config
from .api import ControlPlaneClient
from .errors import BillowError

app = typer.Typer(help="Billow: Dask clusters in your own cloud account.", no_args_is_help=True)
cluster_app = typer.Typer(help="Inspect and stop clusters.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
env_app = typer.Typer(
    help="Named software environments: create, list, inspect, delete.", no_args_is_help=True
)
app.add_typer(env_app, name="env")
setup_app = typer.Typer(help="Prepare a cloud account to run clusters.", no_args_is_help=True)
app.add_typer(setup_app, name="setup")
console = Console()
# Tokens, users and teams (sdk/billow/cli_accounts.py); `admin bootstrap` is below.
from .cli_accounts import admin_app, describe_login, token_app  # noqa: E402
from .cli_usage import invoice, usage  # noqa: E402

app.add_typer(token_app, name="token")
app.add_typer(admin_app, name="admin")
app.command("usage")(usage)
app.command("invoice")(invoice)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(1)


def _run(coro: Any, expected: tuple[type[Exception], ...] = ()) -> Any:
    """Run ``coro``; an expected failure (the API's errors, an unreachable server, and
    ``expected``) is one error message and exit status 1, never a traceback."""
    try:
        return asyncio.run(coro)
    except (BillowError, *expected) as e:
        raise _fail(str(e)) from None
    except httpx.TransportError as e:
        try:
            url = e.request.url
            where = f" at {url.scheme}://{url.netloc.decode()}"
        except RuntimeError:  # no request attached
            where = ""
        raise _fail(f"cannot reach the control plane{where}: {e}") from None


@app.command()
def server(
    data_dir: Path = typer.Option(None, help="State directory (default: billow.data-dir)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8787, help="Port to listen on; 0 picks a free one."),
    login_file: Path = typer.Option(None, help="Where to save the admin login on first start."),
    instance_dir: Path = typer.Option(
        None,
        help="Where instances work (default: billow.instance-dir, else "
        "/var/lib/billow-instances as root, <data-dir>/instances otherwise).",
    ),
) -> None:
    """Run the embedded control plane (SQLite store, local-process instances).

    As root, each user's instances run as an unprivileged OS user of their own and the
    server serves several users; otherwise it serves one (a second user is refused)."""
    import dask.config
    from pydantic import ValidationError

    from billow_control.core.settings import ControlSettings
    from billow_control.core.units import parse_bytes, parse_duration
    from billow_control.runtimes.embedded import InstanceOptions
    from billow_control.runtimes.embedded_server import serve
    from billow_control.runtimes.http_proxy import ServerLimits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = ControlSettings.from_values(dask.config.get("billow"))
    except ValidationError as e:
        first = e.errors()[0]
        key = str(first["loc"][0]).replace("_", "-") if first["loc"] else "?"
        console.print(f"[red]error:[/red] billow.{key}: {first['msg']}")
        raise typer.Exit(2) from None
    instance_dir = instance_dir or config.get("instance-dir")
    try:
        key = "request-read-timeout"
        read_timeout = parse_duration(dask.config.get(f"billow.{key}", "30s"))
        key = "instance-log-limit"
        log_limit = parse_bytes(dask.config.get(f"billow.{key}", "16MiB"))
        key = "warm-pool.size"
        warm_pool = int(dask.config.get(f"billow.{key}", 0))
        if warm_pool < 0:
            raise ValueError(f"must be 0 or more, not {warm_pool}")
    except ValueError as e:
        console.print(f"[red]error:[/red] billow.{key}: {e}")
        raise typer.Exit(2) from None
    limits = ServerLimits(read_timeout=read_timeout or ServerLimits.read_timeout)
    serve(
        data_dir or config.data_dir(),
        host,
        port,
        login_file or config.login_file(),
        settings,
        Path(instance_dir).expanduser() if instance_dir else None,
        limits,
        InstanceOptions(log_limit=log_limit, warm_pool=warm_pool),
    )


@app.command()
def login(
    server: str = typer.Option(..., help="Control plane URL, e.g. https://api.example.com"),
    token: str = typer.Option(..., prompt=True, hide_input=True, help="Your API token."),
) -> None:
    """Save the control plane URL and token for the SDK and CLI (file mode 0600)."""
    from billow_control.runtimes.embedded import write_login

    async def check() -> dict:
        async with ControlPlaneClient(server, token) as api:
            return await api.request("GET", "/v1/whoami")

    who = _run(check())
    write_login(config.login_file(), server, token)
    console.print(f"logged in to {server} {describe_login(who)}", highlight=False)


def _ago(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


@cluster_app.command("list")
def cluster_list(
    all_: bool = typer.Option(False, "--all", help="Include stopped clusters."),
) -> None:
    """List your clusters (active ones unless --all)."""

    async def go() -> list[dict]:
        async with ControlPlaneClient() as api:
            return await api.list_clusters(active=not all_)

    table = Table("id", "name", "status", "workers", "created", "stop reason")
    for c in _run(go()):
        table.add_row(
            c["id"],
            c["name"],
            c["status"],
            f"{c['workers']}/{c['desired_workers']}",
            _ago(c["created_at"]),
            c.get("stop_reason") or "",
        )
    console.print(table)


@cluster_app.command("status")
def cluster_status(cluster: str = typer.Argument(..., help="Cluster id or name.")) -> None:
    """Show one cluster's status, workers, addresses, stop reason and error."""

    async def go() -> dict:
        async with ControlPlaneClient() as api:
            return await api.resolve(cluster)

    c = _run(go())
    fields = [
        "id",
        "name",
        "status",
        "target",
        "desired_workers",
        "workers",
        "scheduler_address",
        "dashboard_address",
        "scheduler_public_address",
        "dashboard_public_address",
        "created_at",
        "ready_at",
        "stopped_at",
        "last_heartbeat_at",
        "stop_reason",
        "error",
    ]
    for key in fields:
        console.print(f"[bold]{key}:[/bold] {c.get(key) if c.get(key) is not None else '-'}")
    for warning in c.get("warnings") or []:
        console.print(f"[yellow]warning:[/yellow] {warning}", markup=True, highlight=False)
    for line in c.get("error_logs") or []:
        console.print(f"  {line}", markup=False)


@cluster_app.command("stop")
def cluster_stop(cluster: str = typer.Argument(..., help="Cluster id or name.")) -> None:
    """Stop a cluster (its instances are terminated)."""

    async def go() -> dict:
        async with ControlPlaneClient() as api:
            found = await api.resolve(cluster)
            return await api.stop(found["id"])

    c = _run(go())
    console.print(f"stopping {c['name']} ({c['id']}): status {c['status']}")


@cluster_app.command("logs")
def cluster_logs(
    cluster: str = typer.Argument(..., help="Cluster id or name."),
    lines: int = typer.Option(100, help="Lines per instance."),
) -> None:
    """Print the last log lines of every instance of a cluster."""

    async def go() -> dict:
        async with ControlPlaneClient() as api:
            found = await api.resolve(cluster)
            return await api.logs(found["id"], lines)

    for inst in _run(go())["instances"]:
        console.rule(f"{inst['name']} ({inst['id']}, {inst['state']})")
        for line in inst["lines"]:
            console.print(line, markup=False, highlight=False)


# -- software environments -----------------------------------------------------------


@env_app.command("create")
def env_create(
    name: str = typer.Argument(..., help="Environment name (lower-case, digits, dashes)."),
    pip: list[str] = typer.Option(
        None, "--pip", help="A requirement such as pandas==2.2.3; repeat for more."
    ),
    requirements: Path = typer.Option(
        None, "-r", "--requirements", exists=True, dir_okay=False, help="A requirements file."
    ),
    uv_lock: Path = typer.Option(
        None, "--uv-lock", exists=True, help="A uv.lock: its project's locked dependencies."
    ),
    python: str = typer.Option(None, "--python", help="The cluster's Python, e.g. 3.11."),
) -> None:
    """Resolve requirements here and store them as the next revision of NAME."""
    from .environments import acreate_software_environment

    env = _run(
        acreate_software_environment(name, pip or [], requirements, uv_lock, python),
        expected=(ValueError,),
    )
    what = "created" if env.get("created", True) else "unchanged (same spec):"
    console.print(
        f"{what} [bold]{escape(env['name'])}[/bold] revision {env['revision']}: "
        f"{env['n_packages']} packages, Python {env['python']}, {env['platform']}",
        highlight=False,
    )


@env_app.command("list")
def env_list() -> None:
    """List your software environments (latest revision of each)."""

    async def go() -> list[dict]:
        async with ControlPlaneClient() as api:
            return await api.list_environments()

    table = Table("name", "revision", "python", "packages", "created")
    for env in _run(go()):
        table.add_row(
            env["name"],
            str(env["revision"]),
            env["python"],
            str(env["n_packages"]),
            _ago(env["created_at"]),
        )
    console.print(table)


@env_app.command("inspect")
def env_inspect(
    name: str = typer.Argument(..., help="Environment name."),
    revision: int = typer.Option(None, "--revision", help="A revision (default: the latest)."),
) -> None:
    """Show one environment: its revision, Python, platform, indexes and packages."""

    async def go() -> dict:
        async with ControlPlaneClient() as api:
            return await api.get_environment(name, revision)

    env = _run(go())
    spec = env["spec"]
    for key in ("name", "revision", "created_at", "python", "platform", "spec_key"):
        console.print(f"[bold]{key}:[/bold] {escape(str(env.get(key)))}", highlight=False)
    for key in ("index_url", "extra_index_urls", "find_links"):
        if spec.get(key):
            console.print(f"[bold]{key}:[/bold] {escape(str(spec[key]))}", highlight=False)
    table = Table("package", "version", "source")
    for pin in spec["packages"]:
        source = pin["source"]
        if source == "wheel":
            source = f"wheel {pin['filename']}"
        elif source == "vcs":
            source = pin["url"]
        table.add_row(pin["name"], pin["version"], escape(source))
    console.print(table)


@env_app.command("delete")
def env_delete(name: str = typer.Argument(..., help="Environment name.")) -> None:
    """Delete every revision of a software environment (running clusters keep theirs)."""

    async def go() -> dict:
        async with ControlPlaneClient() as api:
            return await api.delete_environment(name)

    _run(go())
    console.print(f"deleted [bold]{escape(name)}[/bold]", highlight=False)


# -- administration ------------------------------------------------------------------


@admin_app.command("bootstrap")
def admin_bootstrap(
    stack: str = typer.Option(..., help="CloudFormation stack of the deployment (billow-<stage>)."),
    region: str = typer.Option(None, help="Its region (default: your AWS configuration's)."),
) -> None:
    """Create the first admin of an AWS deployment with your own AWS credentials, and log
    in as it. Works once: a deployment that has users refuses."""
    from billow_control.runtimes.embedded import write_login

    from .aws_admin import bootstrap_first_admin

    try:
        admin = bootstrap_first_admin(stack, region)
    except BillowError as e:
        raise _fail(str(e)) from None
    path = config.login_file()
    write_login(path, admin.server, admin.token)
    console.print(
        f"created the first admin [bold]{escape(admin.name)}[/bold] of {escape(admin.server)}; "
        f"its login is saved in {escape(str(path))} (mode 0600)",
        highlight=False,
    )


@setup_app.command("aws")
def setup_aws(
    deployment: str = typer.Option(..., help="The deployment's name (billow:deployment tag)."),
    control_plane: str = typer.Option(
        None, help="Who assumes the role: the control plane's account id or role ARN."
    ),
    external_id: str = typer.Option(None, help="ExternalId to require (default: a new one)."),
    env_bucket: str = typer.Option(None, help="An environments bucket in this account."),
    region: str = typer.Option(None, help="Region (default: your AWS configuration's)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print every step and policy only."),
    yes: bool = typer.Option(False, "--yes", help="Do every step without asking."),
    remove: bool = typer.Option(False, "--remove", help="Delete what setup created."),
) -> None:
    """Create, in this AWS account, the IAM role the control plane assumes (with an
    ExternalId), the instance role and profile of cluster VMs, and their log group;
    asks before each step. --remove deletes exactly those."""
    import json

    from botocore.exceptions import BotoCoreError, ClientError

    from .aws_admin import _explain, _session
    from .aws_setup import Setup

    if not remove and not control_plane:
        raise _fail("--control-plane is required: the account id or role ARN that assumes the role")
    try:
        session = _session(region)
        setup = Setup(session, deployment, control_plane or "", env_bucket=env_bucket)
        if external_id:
            setup.external_id = external_id
        if remove:
            if dry_run:
                console.print(
                    f"would delete everything under IAM path {setup.path} and "
                    f"the log group {setup.log_group}",
                    highlight=False,
                )
                return
            if not yes and not typer.confirm(f"Delete what setup created for {deployment}?"):
                raise _fail("nothing deleted")
            for gone in setup.remove() or ["nothing was left"]:
                console.print(f"deleted {gone}", highlight=False, markup=False)
            return
        for number, step in enumerate(setup.steps(), 1):
            console.rule(f"step {number}: {escape(step.title)}")
            if step.policy is not None:
                console.print_json(json.dumps(step.policy))
            if dry_run:
                continue
            if not yes and not typer.confirm("Do this step?", default=True):
                raise _fail(f"stopped before step {number}; run again to go on")
            step.run()
    except (BotoCoreError, ClientError) as e:
        raise _fail(str(_explain(e, "setting up the account"))) from None
    except BillowError as e:
        raise _fail(str(e)) from None
    if dry_run:
        console.print("dry run: nothing was changed", highlight=False)
        return
    console.print("done. Configure the control plane with:", highlight=False)
    for key, value in setup.outputs().items():
        console.print(f"  {key}={value}", highlight=False, markup=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
