"""Cloud Functions (2nd gen) entry points of the GCP control plane
(``infra/gcp/deploy.sh``: ``--source functions --entry-point <name>``).

=============  ===========================================================================
function       triggered by
=============  ===========================================================================
``api``        HTTP: the shared powertools route table (the same OpenAPI as AWS and the
               embedded server)
``reconcile``  the reconcile topic: one step of a cluster's loop
               (``adapters/gcp/pubsub_orchestrator.py``)
``commands``   the commands topic: one ``billow.command`` (``core.commands``), the same
               model as on EventBridge
``reaper``     the reaper topic, published to by a Cloud Scheduler job every minute: one
               watchdog pass
=============  ===========================================================================

Each function parses its request, makes one call into the core through the runtime that
``billow_control.runtimes.gcp`` wires once per instance, and returns. A Pub/Sub function
that raises is retried by Pub/Sub (the subscription's backoff); malformed messages are
logged and acknowledged, never retried.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import sys
from typing import Any

_FUNCTIONS = os.path.dirname(os.path.abspath(__file__))
for _path in (_FUNCTIONS, os.path.join(os.path.dirname(_FUNCTIONS), "sdk")):
    if os.path.isdir(_path) and _path not in sys.path:
        sys.path.insert(0, _path)

import functions_framework  # noqa: E402

logging.basicConfig(level=os.environ.get("BILLOW_LOG_LEVEL", "INFO"))
logger = logging.getLogger("billow.gcp")


def runtime() -> Any:
    from billow_control.runtimes.gcp import get_runtime

    return get_runtime()


@functools.cache
def resolver() -> Any:
    """The one powertools route table (``billow_control.api.app.build_app``)."""
    from billow_control.api.app import build_app

    return build_app(lambda: runtime().plane)


def message_of(cloud_event: Any) -> tuple[str, dict[str, Any] | None]:
    """``(message id, JSON data)`` of a Pub/Sub CloudEvent; data ``None`` if not JSON."""
    message = (cloud_event.data or {}).get("message") or {}
    try:
        data = json.loads(base64.b64decode(message.get("data") or b""))
    except ValueError:
        data = None
    return str(message.get("messageId") or message.get("message_id") or ""), (
        data if isinstance(data, dict) else None
    )


@functions_framework.http
def api(request: Any) -> Any:
    from billow_control.runtimes.gcp import resolve_http

    status, headers, body = resolve_http(
        resolver(),
        request.method,
        request.path,
        request.query_string.decode("latin-1"),
        dict(request.headers),
        request.get_data(),
        request.remote_addr or "",
    )
    return body, status, headers


@functions_framework.cloud_event
def reconcile(cloud_event: Any) -> None:
    """One step of a cluster's reconcile loop; ``Busy`` answers 503 so Pub/Sub redelivers."""
    from billow_control.adapters.gcp.pubsub_orchestrator import Busy

    message_id, data = message_of(cloud_event)
    if data is None or not {"cluster_id", "loop", "seq"} <= data.keys():
        logger.error("dropping malformed reconcile message %s: %r", message_id, data)
        return
    rt = runtime()
    try:
        outcome = rt.loop.handle(data, rt.plane.lifecycle)
    except Busy as e:  # a 503 without a traceback: Pub/Sub redelivers after its backoff
        from werkzeug.exceptions import ServiceUnavailable

        logger.info("redeliver later: %s", e)
        raise ServiceUnavailable(str(e)) from None
    logger.info("reconcile %s step %s: %s", data["loop"], data["seq"], outcome)


@functions_framework.cloud_event
def commands(cloud_event: Any) -> None:
    """Carry out one ``billow.command`` as the user it names (``core.commands``)."""
    from billow_control.core.commands import Envelope, carry_out
    from billow_control.runtimes.gcp import project_of_source

    message_id, data = message_of(cloud_event)
    data = data or {}
    origin = project_of_source(cloud_event["source"])
    envelope = Envelope(
        id=message_id,
        kind=data.get("detail-type"),
        source=data.get("source"),
        origin=origin,
        detail=data.get("detail"),
    )
    # A message reaches this function only through the deployment's own topic; the
    # check runs whenever the event names the topic's project (the emulator's do not).
    own = runtime().clients.project if origin is not None else None
    logger.info("command %s: %s", message_id, carry_out(lambda: runtime().plane, envelope, own))


@functions_framework.cloud_event
def reaper(cloud_event: Any) -> None:
    """One watchdog pass (``core.watchdog``): reap, sweep orphans, release, resync."""
    logger.info("watchdog pass: %s", runtime().plane.watchdog.run_once().summary())
