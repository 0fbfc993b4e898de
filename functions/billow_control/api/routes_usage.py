"""Usage and invoice routes: ``/v1/usage`` (limits and metered use) and
``/v1/invoices/{month}`` (invoice previews), scoped by ``core.access.usage_scope``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path, Query

from ..core import access
from ..core.access import Action
from ..core.accounts import TEAM_PATTERN
from ..core.service import ControlPlane
from .guard import caller

MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"
Month = Annotated[str, Path(pattern=MONTH_PATTERN, description="A calendar month, YYYY-MM.")]
MonthQuery = Annotated[
    str | None, Query(pattern=MONTH_PATTERN, description="YYYY-MM; the current month if omitted.")
]
TeamQuery = Annotated[
    str | None,
    Query(pattern=TEAM_PATTERN, description="One team (deployment admins: any; others: theirs)."),
]


def usage_router(plane: Callable[[], ControlPlane]) -> Router:
    router = Router()

    @router.get("/v1/usage")
    def usage(month: MonthQuery = None, team: TeamQuery = None) -> dict[str, Any]:
        """Your use (and your team's) against your limits, and the metered month: CPU-,
        GPU- and memory-hours by team, user, cluster and day, as far as you may see them
        (members: their own; team admins and viewers: their team's; admins: all)."""
        user = caller(router)
        access.require(user, Action.whoami)
        report = plane().quotas.report(user)
        report["metered"] = plane().usage.usage(user, month, team)
        return report

    @router.get("/v1/invoices/<month>")
    def invoices(month: Month, team: TeamQuery = None) -> dict[str, Any]:
        """Invoice previews of one month: Billow's graduated price of each team's
        CPU-hours, line by line, and a separate cloud cost estimate (team admins and
        viewers: their team; deployment admins: every team, or ``team``)."""
        user = caller(router)
        access.require(user, Action.whoami)
        return plane().usage.invoices(user, month, team)

    return router
