"""Software environment routes: named, revisioned specs of the caller's own.

Each route authenticates, calls one ControlPlane method, and returns. Environments are
owner-scoped: another tenant's environment answers the same 404 as a missing one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from ..core.auth import bearer
from ..core.models import User
from ..core.service import ControlPlane
from ..core.software import EnvironmentRequest
from .responses import json_response


def environment_router(plane: Callable[[], ControlPlane]) -> Router:
    router = Router()

    def user() -> User:
        return plane().authenticate(bearer(router.current_event.headers.get("authorization")))

    @router.post("/v1/environments/<name>")
    def create_environment(name: str, request: EnvironmentRequest) -> Response[dict[str, Any]]:
        """A new revision of the environment (201), or its latest revision when that one
        has the same spec (200); ``created`` says which."""
        env, created = plane().software.create_environment(user(), name, request.spec)
        return json_response({**env, "created": created}, 201 if created else 200)

    @router.get("/v1/environments")
    def list_environments() -> dict[str, Any]:
        """The latest revision of each of your environments, without package lists."""
        return {"environments": plane().software.list_environments(user())}

    @router.get("/v1/environments/<name>")
    def get_environment(
        name: str, revision: Annotated[int | None, Query()] = None
    ) -> dict[str, Any]:
        """One environment with its spec: the latest revision, or ``?revision=N``."""
        return plane().software.get_environment(user(), name, revision)

    @router.delete("/v1/environments/<name>")
    def delete_environment(name: str) -> dict[str, Any]:
        """Delete every revision; running clusters keep the spec they started with."""
        return plane().software.delete_environment(user(), name)

    return router
