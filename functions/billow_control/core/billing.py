"""Invoices: Billow's price of a team's metered month, and a separate cloud cost estimate.

Billow's price is graduated over the team's CPU-hours of one calendar month (UTC), like
tax brackets: the hours from each threshold of ``ControlSettings.pricing_tiers`` up to
the next are charged at that threshold's rate. Seed defaults: 0-10,000 free, then $0.05
per CPU-hour up to 100,000, $0.04 up to 1,000,000, $0.03 beyond. Money is ``Decimal``:
each line's amount is hours x rate rounded half-up to the cent; the total is the sum of
the lines.

The cloud cost estimate is what the instances themselves cost the team at the cloud's
list prices, from the bundled table ``data/instance_prices.json`` (on-demand or spot as
each instance ran), shown apart from Billow's price: the cloud bills it, not Billow.
Instances of types the table lacks (the local provider's processes) are counted as
unpriced, never guessed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel

from .metering import MonthUsage, UsageRecord, month_seconds

CENT = Decimal("0.01")
HOURS = Decimal("0.000001")  # CPU-hours are shown to the micro-hour (better than a second)


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


class InvoiceLine(BaseModel):
    """One tier: ``cpu_hours`` of the month fell in ``[from_cpu_hours, to_cpu_hours)``."""

    description: str
    from_cpu_hours: Decimal
    to_cpu_hours: Decimal | None
    cpu_hours: Decimal
    rate: Decimal
    amount: Decimal
    arithmetic: str


class Invoice(BaseModel):
    team: str
    month: str
    currency: str
    cpu_hours: Decimal
    lines: list[InvoiceLine]
    total: Decimal
    usage: dict[str, Any]
    cloud_estimate: dict[str, Any]


def price_lines(cpu_hours: Decimal, tiers: Mapping[float, float]) -> list[InvoiceLine]:
    """The graduated lines of ``cpu_hours`` over ``tiers`` (threshold -> rate, from 0);
    tiers above the hours used get no line."""
    bounds = sorted((Decimal(str(k)), Decimal(str(v))) for k, v in tiers.items())
    lines = []
    for i, (start, rate) in enumerate(bounds):
        end = bounds[i + 1][0] if i + 1 < len(bounds) else None
        if cpu_hours <= start and not (start == 0 and cpu_hours == 0):
            break
        hours = (min(cpu_hours, end) if end is not None else cpu_hours) - start
        amount = _money(hours * rate)
        span = f"{start:,.0f}-{end:,.0f}" if end is not None else f"{start:,.0f}+"
        lines.append(
            InvoiceLine(
                description=f"CPU-hours {span}" + (" (free)" if rate == 0 else ""),
                from_cpu_hours=start,
                to_cpu_hours=end,
                cpu_hours=hours,
                rate=rate,
                amount=amount,
                arithmetic=f"{hours.normalize():,f} CPU-h x ${rate} = ${amount:,}",
            )
        )
    return lines


@cache
def instance_prices() -> dict[str, Any]:
    """The bundled price table (``data/instance_prices.json``), read once."""
    text = resources.files(__package__).joinpath("data/instance_prices.json").read_text()
    table: dict[str, Any] = json.loads(text)
    return table


def instance_type(machine_type: str) -> dict[str, Any] | None:
    """The bundled table's row of ``machine_type`` (vcpus, memory_gib, gpus, prices)."""
    table = instance_prices()
    for cloud in ("aws", "gcp"):
        entry: dict[str, Any] | None = table[cloud]["types"].get(machine_type)
        if entry is not None:
            return entry
    return None


def _price(machine_type: str, spot: bool) -> float | None:
    entry = instance_type(machine_type)
    return float(entry["spot" if spot else "on_demand"]) if entry is not None else None


def cloud_estimate(records: Iterable[UsageRecord], month: str, now: Any) -> dict[str, Any]:
    """What the month's instances cost at the bundled list prices, by type and purchase."""
    by_type: dict[str, dict[str, Any]] = {}
    total = Decimal(0)
    unpriced = 0
    for record in records:
        seconds = month_seconds(record, month, now)
        if seconds <= 0:
            continue
        price = _price(record.machine_type, record.spot) if record.machine_type else None
        if price is None:
            unpriced += 1
            continue
        key = f"{record.machine_type} ({'spot' if record.spot else 'on-demand'})"
        hours = Decimal(str(seconds)) / 3600
        cost = hours * Decimal(str(price))
        entry = by_type.setdefault(key, {"hours": Decimal(0), "rate": price, "cost": Decimal(0)})
        entry["hours"] += hours
        entry["cost"] += cost
        total += cost
    return {
        "source": instance_prices().get("source"),
        "updated": instance_prices().get("updated"),
        "total": str(_money(total)),
        "by_type": {
            k: {
                "hours": str(v["hours"].quantize(HOURS)),
                "rate": v["rate"],
                "cost": str(_money(v["cost"])),
            }
            for k, v in sorted(by_type.items())
        },
        "unpriced_instances": unpriced,
    }


def invoice(
    team: str,
    usage: MonthUsage,
    records: list[UsageRecord],
    tiers: Mapping[float, float],
    currency: str,
    now: Any,
) -> Invoice:
    """The invoice preview of ``team`` for ``usage.month`` (``records``: the month's)."""
    totals = usage.by_team.get(team)
    hours = Decimal(str(totals.cpu_hours)).quantize(HOURS) if totals else Decimal(0).quantize(HOURS)
    lines = price_lines(hours, tiers)
    mine = [r for r in records if r.team == team]
    return Invoice(
        team=team,
        month=usage.month,
        currency=currency,
        cpu_hours=hours,
        lines=lines,
        total=sum((line.amount for line in lines), Decimal("0.00")),
        usage=totals.rounded() if totals else {},
        cloud_estimate=cloud_estimate(mine, usage.month, now),
    )
