"""EventBridge bus: the AWS runtime's ``EventBus``, publishing cluster lifecycle events.

Every event goes to the deployment's bus with

* ``source``: ``"billow"``
* ``detail-type``: ``"billow.cluster.<kind>"``, where ``kind`` is what the core publishes:
  ``requested``, ``provisioning``, ``ready``, ``scaled``, ``stopping``, ``stopped``,
  ``failing``, ``failed``, ``reaped``, ``warning``
* ``detail`` (JSON, schema version 1)::

      {
        "schema_version": 1,
        "deployment": "billow-prod",      # the billow:deployment tag value
        "kind": "ready",
        "cluster_id": "c-0123456789abcdef",
        "cluster_name": "demo",
        "owner": "u-...",                 # user id of the owner
        "status": "ready",                # ClusterStatus after the change
        "target": "running",              # ClusterTarget
        "desired_workers": 4,
        "stop_reason": null,              # e.g. "user", "idle", "worker-exited"
        "error": null,                    # failure message, when failed
        "time": "2026-01-01T00:00:00+00:00",
        "detail": {}                      # kind-specific, e.g. {"reason", "message"} for
                                          # failed/reaped, {"n_workers"} for scaled
      }

Events carry metadata only: no certificates, tokens or user data. Consumers should
ignore fields they do not know; a breaking change bumps ``schema_version``.

Inbound *commands* use the detail-type ``billow.command`` on the same bus (see
``functions/aws.py``); events published here never match that rule.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ...core.events import (
    DETAIL_TYPE_PREFIX,
    SOURCE,
    USAGE_PREFIX,
    detail_json,
    event_detail,
    usage_detail,
)
from ...core.models import ClusterRecord

__all__ = ["DETAIL_TYPE_PREFIX", "SOURCE", "EventBridgeBus", "event_detail"]

log = logging.getLogger(__name__)

MAX_DETAIL_BYTES = 200_000  # EventBridge allows 256 KB per entry, envelope included


class EventBridgeBus:
    """Implements ``billow_control.core.ports.EventBus`` with ``PutEvents``.

    Parameters
    ----------
    events
        A boto3 EventBridge (``events``) client.
    bus_name
        Name or ARN of the deployment's event bus.
    deployment
        The deployment name, copied into every event.
    """

    def __init__(self, events: Any, bus_name: str, deployment: str) -> None:
        self.events = events
        self.bus_name = bus_name
        self.deployment = deployment

    def publish(self, kind: str, cluster: ClusterRecord, detail: dict | None = None) -> None:
        """Put one event. Failures (throttling, a missing bus, a rejected entry) are
        logged and swallowed: lifecycle progress never waits on observers."""
        try:
            body = detail_json(self.deployment, kind, cluster, detail, MAX_DETAIL_BYTES)
            response = self.events.put_events(
                Entries=[
                    {
                        "Source": SOURCE,
                        "DetailType": DETAIL_TYPE_PREFIX + kind,
                        "Detail": body,
                        "EventBusName": self.bus_name,
                    }
                ]
            )
            if response.get("FailedEntryCount"):
                failed = [e for e in response.get("Entries", []) if e.get("ErrorCode")]
                log.warning("event %s of %s was rejected: %s", kind, cluster.id, failed)
        except Exception:
            log.exception("could not publish event %s of cluster %s", kind, cluster.id)

    def publish_usage(self, kind: str, detail: dict) -> None:
        """Put one usage event, ``billow.<kind>`` (``core.events.usage_detail``); failures
        are logged and swallowed."""
        try:
            body = json.dumps(usage_detail(self.deployment, kind, detail), default=str)
            entry = {
                "Source": SOURCE,
                "DetailType": USAGE_PREFIX + kind,
                "Detail": body,
                "EventBusName": self.bus_name,
            }
            response = self.events.put_events(Entries=[entry])
            if response.get("FailedEntryCount"):
                log.warning("usage event %s was rejected: %s", kind, response.get("Entries"))
        except Exception:
            log.exception("could not publish usage event %s", kind)
