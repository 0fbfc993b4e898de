"""What every request passes before its route's parameters are validated: who is asking,
then whether its body can be read.

``RequestGuard`` runs once per request, in front of powertools' request validation, on
every route of the table: a route is authenticated by API token unless it says otherwise
with ``security=`` (``PUBLIC``, or the agent's own tokens, which its route checks). So
a caller without a valid token gets 401 whatever the body, and learns nothing about the
fields of a request it may not make. Then a query parameter the route does not take is
422, and the body is read (``api.body``): 415, 400 or 422 before powertools parses it,
so no body can make the parser fail. Routes find the
authenticated user with ``caller``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler.middlewares import BaseMiddlewareHandler

from ..core.auth import bearer
from ..core.errors import Invalid
from ..core.models import User
from ..core.service import ControlPlane
from .body import JSON_MEDIA_TYPE, check_content_type, decode_utf8, json_object

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.api_gateway import BaseRouter, Route
    from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
    from aws_lambda_powertools.event_handler.types import EventHandlerInstance

# OpenAPI security requirements (the schemes are in ``api.openapi``). A route declares
# one with ``security=``; a route that declares none needs an API token.
API_TOKEN = "apiToken"
USER: list[dict[str, list[str]]] = [{API_TOKEN: []}]
INSTANCE: list[dict[str, list[str]]] = [{"instanceToken": []}]
CLUSTER: list[dict[str, list[str]]] = [{"clusterToken": []}]
PUBLIC: list[dict[str, list[str]]] = []

_CALLER = "billow_caller"


def header(event: Any, name: str) -> str | None:
    """The request header ``name`` (lower case). API Gateway's HTTP API events, and the
    embedded server's, carry lower-cased names: read them as they are, without the
    case-insensitive copy of every header powertools makes on each ``headers`` access."""
    value = (event.raw_event.get("headers") or {}).get(name)
    return value if value is not None else event.headers.get(name)


def needs_api_token(route: Route) -> bool:
    """Whether the guard authenticates ``route`` (the default: no ``security=`` given)."""
    return route.security is None or route.security == USER


def registered_routes(app: EventHandlerInstance) -> list[Route]:
    """The routes of the table (powertools keeps them in two private lists)."""
    resolver: Any = getattr(app, "api_resolver", None) or app
    return [*resolver._static_routes, *resolver._dynamic_routes]


def caller(router: BaseRouter) -> User:
    """The user the guard authenticated for the current request."""
    return router.context[_CALLER]


class RequestGuard(BaseMiddlewareHandler):
    """Authenticate, then read the body, then hand over to powertools' validation.

    Installed as the resolver's request-validation middleware (``install``): powertools
    puts that one first in every route's chain, ahead of any middleware given to
    ``app.use``, and a guard behind validation could not answer 401 before 422.
    """

    def __init__(
        self, plane: Callable[[], ControlPlane], validation: BaseMiddlewareHandler | None
    ) -> None:
        self.plane = plane
        self.validation = validation

    @classmethod
    def install(cls, app: Any, plane: Callable[[], ControlPlane]) -> None:
        """Put the guard in front of ``app``'s request validation (before any request)."""
        app._request_validation_middleware = cls(
            plane, getattr(app, "_request_validation_middleware", None)
        )

    def handler(self, app: EventHandlerInstance, next_middleware: NextMiddleware) -> Any:
        route: Route = app.context["_route"]
        # The 404/405 answer is a route of its own, outside the table: nothing to guard.
        if any(route is known for known in registered_routes(app)):
            if needs_api_token(route):
                token = bearer(header(app.current_event, "authorization"))
                app.append_context(**{_CALLER: self.plane().authenticate(token)})
            self._refuse_unknown_query(app, route)
            self._read_body(app, route)
        if self.validation is None:
            return next_middleware(app)
        return self.validation.handler(app, next_middleware)

    @staticmethod
    def _refuse_unknown_query(app: EventHandlerInstance, route: Route) -> None:
        """A query parameter the route does not take is a mistake (422), not ignored, as
        unknown body fields are (``extra="forbid"``)."""
        known = {param.alias for param in route.dependant.query_params}
        for name in app.current_event.query_string_parameters or {}:
            if name not in known:
                takes = ", ".join(sorted(known)) or "none"
                raise Invalid(
                    f"{name[:40]}: unknown query parameter (this route takes {takes})",
                    field=name[:40],
                )

    @staticmethod
    def _read_body(app: EventHandlerInstance, route: Route) -> None:
        """Refuse a body that is not JSON, and parse it (``api.body.parse_json``, the
        resolver's deserializer) before powertools validates it."""
        event: Any = app.current_event
        raw = event.body or ""
        if not raw and not route.dependant.body_params:
            return
        content_type = header(event, "content-type")
        if raw or content_type:
            check_content_type(content_type)
            # powertools picks its parser by a case-sensitive prefix of the header.
            event.raw_event["headers"]["content-type"] = JSON_MEDIA_TYPE
        if raw:
            if event.is_base64_encoded:  # bytes that were not UTF-8 (or a binary type)
                decode_utf8(base64.b64decode(raw))
            body = event.json_body  # parsed once, cached for powertools
            if route.dependant.body_params:
                json_object(body)
