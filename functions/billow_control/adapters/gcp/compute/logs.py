"""Reading instance logs back from Cloud Logging (what ``startup_script`` has the Ops Agent
write): the newest lines of one instance, and the instances a cluster had, from the line
each startup script logs first (``STARTED``), once Compute Engine has forgotten them.

The Ops Agent writes each line of a file as ``jsonPayload.message``; ``text_of`` also
reads a ``textPayload``. Every read asks for the last ``LOOKBACK`` explicitly: without a
timestamp term the client library reads only the last 24 hours.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from ....core import tags as billow_tags
from ....core.models import InstanceInfo, InstanceRole, InstanceState

log = logging.getLogger(__name__)

RESOURCE_NAME_LABEL = "compute.googleapis.com/resource_name"  # set by the Ops Agent
STARTED = "billow: startup script started"  # the first line every startup script logs
LOOKBACK = timedelta(days=30)  # Logging's default retention
MAX_INSTANCES = 1000  # instances of one cluster read back from their first lines


def _since(now: datetime | None = None) -> str:
    return ((now or datetime.now(UTC)) - LOOKBACK).strftime("%Y-%m-%dT%H:%M:%SZ")


def log_filter(project: str, log_name: str, instance: str, now: datetime | None = None) -> str:
    """The Logging filter of the agent log of the instance called ``instance``."""
    return (
        f'logName="projects/{project}/logs/{log_name}" '
        f'AND labels."{RESOURCE_NAME_LABEL}"="{instance}" AND timestamp>="{_since(now)}"'
    )


def text_of(payload: Any) -> str:
    """An entry's line: a text payload, or the ``message`` of a JSON payload."""
    if isinstance(payload, dict):
        return str(payload.get("message", ""))
    return "" if payload is None else str(payload)


class InstanceLogs:
    """Reads the agent log. ``logging`` is a ``google.cloud.logging.Client``."""

    def __init__(self, logging: Any, project: str, log_name: str, deployment: str) -> None:
        self.client = logging
        self.project = project
        self.log_name = log_name
        self.deployment = deployment

    def tail(self, instance: str, lines: int) -> list[str]:
        """The last ``lines`` lines of ``instance``, oldest first; ``[]`` when there are
        none (yet). Raises ``GoogleAPICallError`` when Logging refuses."""
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

    def gone_instances(self, cluster_id: str) -> list[InstanceInfo]:
        """This deployment's instances of ``cluster_id`` known from their ``STARTED``
        lines, as terminated (Compute Engine forgets deleted instances; their logs stay).
        Best effort: ``[]`` when Logging cannot be read."""
        started = (
            f'logName="projects/{self.project}/logs/{self.log_name}" '
            f'AND labels."billow-deployment"="{self.deployment}" '
            f'AND labels."billow-cluster-id"="{cluster_id}" '
            f'AND jsonPayload.message="{STARTED}" AND timestamp>="{_since()}"'
        )
        prefix = f"billow-{cluster_id}-"
        found: dict[str, InstanceInfo] = {}
        try:
            entries = list(
                self.client.list_entries(
                    resource_names=[f"projects/{self.project}"],
                    filter_=started,
                    max_results=MAX_INSTANCES,
                    page_size=MAX_INSTANCES,
                )
            )
        except Exception as e:  # a read for display: never fail the caller
            log.warning("could not read the instances of %s from Cloud Logging: %s", cluster_id, e)
            return []
        for entry in entries:
            labels = entry.labels or {}
            instance = str(labels.get(RESOURCE_NAME_LABEL, ""))
            role = str(labels.get("billow-role", ""))
            if not instance.startswith(prefix) or role not in InstanceRole.__members__:
                continue
            name = instance[len(prefix) :]
            found.setdefault(
                instance,
                InstanceInfo(
                    id=instance,
                    cluster_id=cluster_id,
                    name=name,
                    role=InstanceRole(role),
                    state=InstanceState.terminated,
                    tags={
                        billow_tags.CLUSTER: cluster_id,
                        billow_tags.INSTANCE_NAME: name,
                        billow_tags.ROLE: role,
                    },
                    launched_at=entry.timestamp or datetime.now(UTC),
                ),
            )
        return sorted(found.values(), key=lambda i: i.launched_at)
