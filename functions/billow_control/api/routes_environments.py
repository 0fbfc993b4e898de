"""Software environment routes: named, revisioned specs of the caller's own.

Each route calls one ControlPlane method for the caller the guard authenticated
(``api.guard``), and returns. Environments are
owner-scoped: another tenant's environment answers the same 404 as a missing one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path, Query

from ..core.service import ControlPlane
from ..core.software import NAME_PATTERN, EnvironmentRequest
from .guard import caller
from .openapi import created
from .responses import json_response

Name = Annotated[str, Path(pattern=NAME_PATTERN, description="Lower-case letters, digits, dashes")]


def environment_router(plane: Callable[[], ControlPlane]) -> Router:
    router = Router()

    @router.post("/v1/environments/<name>", responses=created("The latest revision: same spec"))
    def create_environment(name: Name, request: EnvironmentRequest) -> Response[dict[str, Any]]:
        """A new revision of the environment (201), or its latest revision when that one
        has the same spec (200); ``created`` says which."""
        env, is_new = plane().software.create_environment(caller(router), name, request.spec)
        return json_response({**env, "created": is_new}, 201 if is_new else 200)

    @router.get("/v1/environments")
    def list_environments() -> dict[str, Any]:
        """The latest revision of each of your environments, without package lists."""
        return {"environments": plane().software.list_environments(caller(router))}

    @router.get("/v1/environments/<name>")
    def get_environment(
        name: Name, revision: Annotated[int | None, Query(ge=1)] = None
    ) -> dict[str, Any]:
        """One environment with its spec: the latest revision, or ``?revision=N``."""
        return plane().software.get_environment(caller(router), name, revision)

    @router.delete("/v1/environments/<name>")
    def delete_environment(name: Name) -> dict[str, Any]:
        """Delete every revision; running clusters keep the spec they started with."""
        return plane().software.delete_environment(caller(router), name)

    return router
