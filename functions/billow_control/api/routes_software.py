"""Software routes: where the client uploads wheels of local code for package sync."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router

from ..core.service import ControlPlane
from ..core.software import UploadRequest
from .guard import caller


def software_router(plane: Callable[[], ControlPlane]) -> Router:
    router = Router()

    @router.post("/v1/software/uploads")
    def uploads(request: UploadRequest) -> dict[str, Any]:
        """Pre-signed ``PUT`` URLs for the wheels the object store does not have yet."""
        return plane().software.uploads(caller(router), request.files)

    return router
