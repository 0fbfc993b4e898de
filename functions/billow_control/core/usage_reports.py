"""Usage and invoice reports for one caller, scoped by ``access.usage_scope``: the metered
month (``core.metering``) of what the caller may see, and invoice previews
(``core.billing``) of teams."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from . import access
from .accounts import User
from .billing import HOURS, invoice, price_lines
from .errors import BadRequest, Forbidden
from .metering import MonthUsage, UsageRecord, aggregate, month_bounds, month_of
from .ports import Ports

MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def parse_month(month: str | None, now: datetime) -> str:
    """``month`` checked (``YYYY-MM``, not in the future), or the current month."""
    if month is None:
        return month_of(now)
    if not MONTH.match(month) or month < "1970-01":
        raise BadRequest(
            f"month {month!r} is not YYYY-MM from 1970-01 on, e.g. {month_of(now)}", field="month"
        )
    if month > month_of(now):  # YYYY-MM strings order as the months do
        raise BadRequest(f"month {month} has not started yet", field="month")
    return month


def _daily(groups: dict[str, dict[str, float]], names: dict[str, str]) -> dict[str, Any]:
    return {
        names.get(k, k): {d: round(h, 6) for d, h in sorted(days.items())}
        for k, days in sorted(groups.items())
    }


class UsageReports:
    def __init__(self, ports: Ports) -> None:
        self.ports = ports

    def _records(
        self, month: str, owner: str | None, team: str | None
    ) -> tuple[list[UsageRecord], datetime]:
        now = self.ports.clock.now()
        start, end = month_bounds(month)
        records = [
            r
            for r in self.ports.store.list_usage(start)
            if r.started_at < end
            and (owner is None or r.owner == owner)
            and (team is None or r.team == team)
        ]
        return records, now

    def usage(self, user: User, month: str | None, team: str | None) -> dict[str, Any]:
        """The metered ``month`` of what ``user`` may see (``team``: narrowed to one)."""
        now = self.ports.clock.now()
        month = parse_month(month, now)
        owner, team = access.usage_scope(user, team)
        records, now = self._records(month, owner, team)
        usage = aggregate(records, month, now)
        names = {u.id: u.name for u in self.ports.store.list_users()} if owner is None else {}
        names[user.id] = user.name
        return {
            "month": month,
            "as_of": now.isoformat(),
            "scope": {"team": team, "user": user.name if owner else None},
            "total": usage.total.rounded(),
            "by_team": {k: v.rounded() for k, v in sorted(usage.by_team.items())},
            "by_user": {names.get(k, k): v.rounded() for k, v in sorted(usage.by_user.items())},
            "by_cluster": {k: v.rounded() for k, v in sorted(usage.by_cluster.items())},
            "by_day": {k: round(v, 6) for k, v in sorted(usage.by_day.items())},
            "daily_by_team": _daily(usage.daily_by_team, {}),
            "daily_by_user": _daily(usage.daily_by_user, names),
            "spend_by_day": self._spend(usage) if owner is None else None,
        }

    def _spend(self, usage: MonthUsage) -> dict[str, dict[str, str]]:
        """Each team's Billow price of the month so far, at the end of each day (USD):
        the graduated tiers over its cumulative CPU-hours."""
        out: dict[str, dict[str, str]] = {}
        for team, days in sorted(usage.daily_by_team.items()):
            total, spend = Decimal(0), {}
            for day, hours in sorted(days.items()):
                total += Decimal(str(hours))
                lines = price_lines(total.quantize(HOURS), self.ports.settings.pricing_tiers)
                spend[day] = str(sum((x.amount for x in lines), Decimal("0.00")))
            out[team] = spend
        return out

    def invoices(self, user: User, month: str, team: str | None) -> dict[str, Any]:
        """Invoice previews of ``month``: the caller's team (team admins and viewers), the
        asked team, or every team with usage (deployment admins). Members: ``Forbidden``."""
        now = self.ports.clock.now()
        month = parse_month(month, now)
        owner, scope = access.usage_scope(user, team)
        if owner is not None:
            raise Forbidden(
                f"invoices are for team admins; a member of team {user.team!r} sees "
                "their own usage (billow usage)"
            )
        records, now = self._records(month, None, scope)
        usage = aggregate(records, month, now)
        teams = [scope] if scope is not None else sorted(usage.by_team)
        s = self.ports.settings
        bills = [
            invoice(t, usage, records, s.pricing_tiers, s.pricing_currency, now).model_dump(
                mode="json"
            )
            for t in teams
        ]
        return {"month": month, "as_of": now.isoformat(), "invoices": bills}
