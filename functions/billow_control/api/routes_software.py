"""Software routes: where the client uploads wheels of local code for package sync."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router

from ..core.auth import bearer
from ..core.service import ControlPlane
from ..core.software import UploadRequest


def software_router(plane: Callable[[], ControlPlane]) -> Router:
    router = Router()

    @router.post("/v1/software/uploads")
    def uploads(request: UploadRequest) -> dict[str, Any]:
        """Pre-signed ``PUT`` URLs for the wheels the object store does not have yet."""
        control = plane()
        user = control.authenticate(bearer(router.current_event.headers.get("authorization")))
        return control.software.uploads(user, request.files)

    return router
