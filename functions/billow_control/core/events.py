"""The lifecycle event schema every ``EventBus`` adapter publishes (EventBridge, Pub/Sub).

An event is named ``billow.cluster.<kind>`` (``kind`` as the core publishes it:
``requested``, ``provisioning``, ``ready``, ``scaled``, ``stopping``, ``stopped``,
``failing``, ``failed``, ``reaped``, ``warning``), comes from source ``billow`` and
carries the ``detail`` of ``event_detail`` (schema version 1; the field list is in
``adapters/aws/eventbridge_bus.py``). Metadata only: no certificates, tokens or user data.

Usage events (``billow.usage.month-closed``, see ``core.meter``) carry ``usage_detail``
instead: no cluster, the month's totals by team.
"""

from __future__ import annotations

import json
from typing import Any

from .models import ClusterRecord, utcnow

SOURCE = "billow"
DETAIL_TYPE_PREFIX = "billow.cluster."
SCHEMA_VERSION = 1


def event_detail(
    deployment: str, kind: str, cluster: ClusterRecord, detail: dict | None
) -> dict[str, Any]:
    """The ``detail`` object of one lifecycle event."""
    return {
        "schema_version": SCHEMA_VERSION,
        "deployment": deployment,
        "kind": kind,
        "cluster_id": cluster.id,
        "cluster_name": cluster.name,
        "owner": cluster.owner,
        "status": cluster.status.value,
        "target": cluster.target.value,
        "desired_workers": cluster.desired_workers,
        "stop_reason": cluster.stop_reason,
        "error": cluster.error,
        "time": utcnow().isoformat(),
        "detail": detail or {},
    }


USAGE_PREFIX = "billow."


def usage_detail(deployment: str, kind: str, detail: dict[str, Any]) -> dict[str, Any]:
    """The ``detail`` object of a usage event (``kind`` such as ``usage.month-closed``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "deployment": deployment,
        "kind": kind,
        "time": utcnow().isoformat(),
        "detail": detail,
    }


def detail_json(
    deployment: str, kind: str, cluster: ClusterRecord, detail: dict | None, max_bytes: int
) -> str:
    """``event_detail`` as JSON of at most about ``max_bytes``: an oversized ``detail`` is
    replaced by ``{"truncated": true}`` and the error cut to 1,000 characters."""
    body = json.dumps(event_detail(deployment, kind, cluster, detail), default=str)
    if len(body.encode()) > max_bytes:
        trimmed = event_detail(deployment, kind, cluster, {"truncated": True})
        trimmed["error"] = (cluster.error or "")[:1000] or None
        body = json.dumps(trimmed, default=str)
    return body
