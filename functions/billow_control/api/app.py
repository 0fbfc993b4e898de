"""The one route table of the control plane, shared by Lambda, Cloud Functions and the
embedded server (which translates HTTP requests into API Gateway HTTP API events).

Every request passes ``RequestGuard`` first (authentication, then the body: see
``api.guard``), then powertools' validation of its parameters, then its route. Every
refusal is JSON of one shape, ``{"error", "message", "field"?}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)

from ..core.errors import (
    ApiError,
    MethodNotAllowed,
    UnsupportedMediaType,
    describe_validation_errors,
)
from ..core.service import ControlPlane
from .body import parse_json
from .guard import PUBLIC, RequestGuard, registered_routes
from .openapi import openapi_document
from .responses import json_response
from .routes_accounts import account_router
from .routes_agent import agent_router
from .routes_clusters import cluster_router
from .routes_environments import environment_router
from .routes_software import software_router
from .routes_ui import install_ui
from .routes_usage import usage_router

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


def build_app(plane: Callable[[], ControlPlane]) -> APIGatewayHttpResolver:
    """A resolver bound to ``plane`` (called per request, so Lambda can build it lazily)."""
    app = APIGatewayHttpResolver(enable_validation=True, json_body_deserializer=parse_json)
    RequestGuard.install(app, plane)
    # Routes are matched in the order they are added: the heartbeat is called the most.
    app.include_router(agent_router(plane))
    app.include_router(cluster_router(plane))
    app.include_router(account_router(plane))
    app.include_router(software_router(plane))
    app.include_router(environment_router(plane))
    app.include_router(usage_router(plane))
    install_ui(app)

    @app.get("/v1/health", include_in_schema=False, security=PUBLIC)
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/openapi.json", include_in_schema=False, security=PUBLIC)
    def openapi() -> Response[dict]:
        return json_response(openapi_document(app))

    @app.exception_handler(ApiError)
    def api_error(e: ApiError) -> Response:
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else None
        if isinstance(e, MethodNotAllowed):
            headers = {"Allow": ", ".join(e.allow)}
        return json_response(e.to_json(), e.status, headers)

    @app.exception_handler(RequestValidationError)
    def invalid(e: RequestValidationError) -> Response:
        message, details = describe_validation_errors(list(e.errors()))
        return json_response({"error": "invalid", "message": message, "detail": details}, 422)

    @app.exception_handler(RequestUnsupportedContentType)
    def unsupported(e: RequestUnsupportedContentType) -> Response:
        # The guard refuses such bodies first; this keeps powertools' own refusal a 415.
        return api_error(UnsupportedMediaType("the request body must be application/json"))

    @app.exception_handler(NotFoundError)
    def not_found(e: NotFoundError) -> Response:
        event = app.current_event
        path, method = event.path, event.http_method.upper()
        allow = sorted({r.method for r in registered_routes(app) if r.rule.match(path)})
        shown = path if len(path) <= 200 else path[:200] + "..."  # never echo a huge path
        if allow:
            return api_error(
                MethodNotAllowed(
                    f"{method} is not allowed on {shown}; use {', '.join(allow)}", allow=allow
                )
            )
        return json_response({"error": "not-found", "message": f"no route {shown}"}, 404)

    @app.exception_handler(Exception)
    def internal(e: Exception) -> Response:
        log.exception("unhandled error")
        return json_response({"error": "internal", "message": "internal server error"}, 500)

    return app
