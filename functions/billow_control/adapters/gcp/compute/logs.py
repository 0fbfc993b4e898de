"""Reading instance logs back from Cloud Logging (what ``startup_script`` has the Ops Agent
write): the newest entries of the deployment's agent log for one instance name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

RESOURCE_NAME_LABEL = "compute.googleapis.com/resource_name"  # set by the Ops Agent
# How far back to read: Logging's default retention. Without a timestamp term the client
# library reads only the last 24 hours, and a finished cluster's logs would vanish then.
LOOKBACK = timedelta(days=30)


def log_filter(project: str, log_name: str, instance: str, now: datetime | None = None) -> str:
    """The Logging filter of the agent log of the instance called ``instance``, over the
    last ``LOOKBACK``."""
    since = ((now or datetime.now(UTC)) - LOOKBACK).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f'logName="projects/{project}/logs/{log_name}" '
        f'AND labels."{RESOURCE_NAME_LABEL}"="{instance}" AND timestamp>="{since}"'
    )


def text_of(payload: Any) -> str:
    """An entry's line: a text payload, or the ``message`` of a JSON payload."""
    if isinstance(payload, dict):
        return str(payload.get("message", ""))
    return "" if payload is None else str(payload)


class InstanceLogs:
    """Tails the agent log of instances. ``logging`` is a ``google.cloud.logging.Client``."""

    def __init__(self, logging: Any, project: str, log_name: str) -> None:
        self.client = logging
        self.project = project
        self.log_name = log_name

    def tail(self, instance: str, lines: int) -> list[str]:
        """The last ``lines`` lines, oldest first; ``[]`` when there are none (yet). Raises
        ``GoogleAPICallError`` when Logging refuses."""
        from google.cloud.logging import DESCENDING

        if lines <= 0:
            return []
        entries = self.client.list_entries(
            resource_names=[f"projects/{self.project}"],
            filter_=log_filter(self.project, self.log_name, instance),
            order_by=DESCENDING,
            max_results=min(lines, 1000),
            page_size=min(lines, 1000),
        )
        newest_first = [text_of(e.payload).rstrip("\n") for e in entries]
        return newest_first[::-1]
