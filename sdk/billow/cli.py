"""The ``billow`` command: run the embedded server, log in, inspect and stop clusters."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from . import config
from .api import ControlPlaneClient
from .errors import BillowError

app = typer.Typer(help="Billow: Dask clusters in your own cloud account.", no_args_is_help=True)
cluster_app = typer.Typer(help="Inspect and stop clusters.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
console = Console()


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except BillowError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None


@app.command()
def server(
    data_dir: Path = typer.Option(None, help="State directory (default: billow.data-dir)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8787, help="Port to listen on; 0 picks a free one."),
    login_file: Path = typer.Option(None, help="Where to save the admin login on first start."),
) -> None:
    """Run the embedded control plane (SQLite store, local-process instances)."""
    import dask.config
    from pydantic import ValidationError

    from billow_control.core.settings import ControlSettings
    from billow_control.runtimes.embedded_server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = ControlSettings.from_values(dask.config.get("billow"))
    except ValidationError as e:
        first = e.errors()[0]
        key = str(first["loc"][0]).replace("_", "-") if first["loc"] else "?"
        console.print(f"[red]error:[/red] billow.{key}: {first['msg']}")
        raise typer.Exit(2) from None
    serve(data_dir or config.data_dir(), host, port, login_file or config.login_file(), settings)


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
    console.print(f"logged in to {server} as [bold]{who['name']}[/bold]")


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
