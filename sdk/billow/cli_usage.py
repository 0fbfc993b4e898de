"""``billow usage`` and ``billow invoice``: metered use and invoice previews (the
``/v1/usage`` and ``/v1/invoices/{month}`` routes), as tables or CSV."""

from __future__ import annotations

import csv
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .cli_accounts import _LIMIT_NAMES, _call, _print

MonthOption = Annotated[
    str | None, typer.Option("--month", "-m", help="YYYY-MM (UTC); the current month if omitted.")
]
TeamOption = Annotated[
    str | None,
    typer.Option("--team", "-t", help="One team (deployment admins: any; team admins: theirs)."),
]
HOURS = ("cpu_hours", "gpu_hours", "memory_gib_hours", "spot_cpu_hours", "instances")


def _params(month: str | None, team: str | None) -> dict[str, str]:
    return {k: v for k, v in (("month", month), ("team", team)) if v}


def usage(
    month: MonthOption = None,
    team: TeamOption = None,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="One CSV row per team, user and cluster.")
    ] = False,
) -> None:
    """Show metered use of a month (CPU-, GPU- and memory-hours) by team, user and
    cluster, as far as you may see it, and your use against your limits."""
    from .cli import console

    report = _call("GET", "/v1/usage", params=_params(month, team))
    metered = report["metered"]
    rows = [("total", "all", metered["total"])]
    for group in ("team", "user", "cluster"):
        rows += [(group, k, v) for k, v in metered[f"by_{group}"].items()]
    if as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["month", "group", "name", *HOURS])
        for group, name, totals in rows:
            out.writerow([metered["month"], group, name, *(totals[h] for h in HOURS)])
        return
    table = Table("", "name", "CPU-hours", "GPU-hours", "memory GiB-hours", "spot CPU-hours")
    for group, name, totals in rows:
        table.add_row(group, escape(name), *(f"{totals[h]:,.3f}" for h in HOURS[:4]))
    _print(f"usage of {metered['month']} (as of {metered['as_of'][:16].replace('T', ' ')} UTC)")
    console.print(table)
    limits = Table("", *(n.replace("_", "-") for n in _LIMIT_NAMES))
    for who in ("user", "team"):
        part = report[who]
        use, caps = part.get("use"), part["limits"]

        def cell(name: str, use: Any = use, caps: Any = caps) -> str:
            used = "-" if use is None else f"{use[name]:g}"
            limit = caps.get(name)
            return f"{used} / {'no limit' if limit is None else f'{limit:g}'}"

        limits.add_row(f"{who} {escape(part['name'])}", *(cell(n) for n in _LIMIT_NAMES))
    console.print(limits)


def invoice(
    month: Annotated[str, typer.Argument(help="YYYY-MM (UTC).")],
    team: TeamOption = None,
) -> None:
    """Show the invoice preview of a month: Billow's tiers line by line, then the cloud
    cost estimate (what your cloud bills, shown apart)."""
    from .cli import console

    answer = _call("GET", f"/v1/invoices/{month}", params=_params(None, team))
    if not answer["invoices"]:
        _print(f"no usage in {answer['month']}: nothing to invoice")
    for bill in answer["invoices"]:
        _print(
            f"[bold]invoice preview: team {escape(bill['team'])}, {bill['month']}[/bold] "
            f"({bill['cpu_hours']} CPU-hours)"
        )
        table = Table("tier", "CPU-hours", "rate", "amount", "arithmetic")
        for line in bill["lines"]:
            table.add_row(
                line["description"],
                line["cpu_hours"],
                line["rate"],
                line["amount"],
                line["arithmetic"],
            )
        table.add_row(
            "[bold]total[/bold]", "", "", f"[bold]{bill['total']} {bill['currency']}[/bold]", ""
        )
        console.print(table)
        est = bill["cloud_estimate"]
        _print(
            f"cloud cost estimate (billed by your cloud, not Billow; list prices, "
            f"{est['source']} table of {est['updated']}): ${est['total']}"
            + (
                f", {est['unpriced_instances']} instance(s) of unknown price"
                if est["unpriced_instances"]
                else ""
            )
        )
