"""Pub/Sub event bus: the GCP runtime's ``EventBus``, publishing cluster lifecycle events
to the deployment's events topic with the names and schema of the EventBridge bus
(``core.events``; field list in ``adapters/aws/eventbridge_bus.py``).

One message per event:

* ``data``: JSON ``{"source": "billow", "detail-type": "billow.cluster.<kind>",
  "detail": {...}}``, the EventBridge event's own field names, so one consumer parses
  both clouds' events;
* ``attributes``: ``source``, ``type`` (the detail-type), ``deployment`` and
  ``cluster_id``, so subscriptions can filter without parsing
  (``attributes.type = "billow.cluster.ready"``).

Inbound commands (``billow.command``) arrive on a separate topic (``functions/gcp.py``);
events published here never reach that function.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ...core.events import DETAIL_TYPE_PREFIX, SOURCE, USAGE_PREFIX, detail_json, usage_detail
from ...core.models import ClusterRecord

log = logging.getLogger(__name__)

MAX_DETAIL_BYTES = 200_000  # Pub/Sub allows 10 MB; kept equal to EventBridge's bound
PUBLISH_TIMEOUT = 10.0


def event_message(deployment: str, kind: str, cluster: ClusterRecord, detail: dict | None) -> bytes:
    """The ``data`` of one event message (see the module docstring)."""
    body = detail_json(deployment, kind, cluster, detail, MAX_DETAIL_BYTES)
    return json.dumps(
        {"source": SOURCE, "detail-type": DETAIL_TYPE_PREFIX + kind, "detail": json.loads(body)}
    ).encode()


class PubSubBus:
    """Implements ``billow_control.core.ports.EventBus`` with Pub/Sub ``Publish``.

    Parameters
    ----------
    publisher
        A ``google.cloud.pubsub_v1.PublisherClient``.
    topic
        Full topic path, ``projects/<project>/topics/<name>``.
    deployment
        The deployment name, copied into every event.
    """

    def __init__(self, publisher: Any, topic: str, deployment: str) -> None:
        self.publisher = publisher
        self.topic = topic
        self.deployment = deployment

    def publish(self, kind: str, cluster: ClusterRecord, detail: dict | None = None) -> None:
        """Publish one event and wait (bounded) until Pub/Sub accepted it, so a function
        that returns right after has sent it. Failures (a missing topic, no permission, a
        timeout) are logged and swallowed: lifecycle progress never waits on observers."""
        try:
            data = event_message(self.deployment, kind, cluster, detail)
            self._send(data, DETAIL_TYPE_PREFIX + kind, cluster_id=cluster.id)
        except Exception:
            log.exception("could not publish event %s of cluster %s", kind, cluster.id)

    def publish_usage(self, kind: str, detail: dict) -> None:
        """Publish one usage event, ``billow.<kind>`` (``core.events.usage_detail``), and
        wait (bounded) for Pub/Sub; failures are logged and swallowed."""
        try:
            body = usage_detail(self.deployment, kind, detail)
            data = json.dumps(
                {"source": SOURCE, "detail-type": USAGE_PREFIX + kind, "detail": body},
                default=str,
            ).encode()
            self._send(data, USAGE_PREFIX + kind)
        except Exception:
            log.exception("could not publish usage event %s", kind)

    def _send(self, data: bytes, event_type: str, **attributes: str) -> None:
        """Publish ``data`` with the attributes every event carries; wait (bounded)."""
        future = self.publisher.publish(
            self.topic,
            data,
            source=SOURCE,
            type=event_type,
            deployment=self.deployment,
            **attributes,
        )
        future.result(timeout=PUBLISH_TIMEOUT)
