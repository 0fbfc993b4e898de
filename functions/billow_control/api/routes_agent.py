"""Routes called from cluster instances: kit and bootstrap (instance token), heartbeat
(cluster token). Each checks its own token (``security=`` tells the guard not to ask for
an API token)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router

from ..core.auth import bearer
from ..core.models import Heartbeat
from ..core.service import ControlPlane
from .body import own_body, validated_body
from .guard import CLUSTER, INSTANCE, header


def agent_router(plane: Callable[[], ControlPlane]) -> Router:
    router = Router()

    def token() -> str | None:
        return bearer(header(router.current_event, "authorization"))

    @router.post("/v1/agent/kit", security=INSTANCE)
    def kit() -> dict[str, Any]:
        """What a bare instance downloads to start the agent (the token stays unused)."""
        return plane().agents.kit(token())

    @router.post("/v1/agent/bootstrap", security=INSTANCE)
    def bootstrap() -> dict[str, Any]:
        return plane().agents.bootstrap(token())

    own_body("POST", "/v1/clusters/{cluster_id}/heartbeat", Heartbeat)

    @router.post("/v1/clusters/<cluster_id>/heartbeat", security=CLUSTER)
    def heartbeat(cluster_id: str) -> dict[str, Any]:
        beat = validated_body(router.current_event, Heartbeat)
        return plane().agents.heartbeat(cluster_id, token(), beat)

    return router
